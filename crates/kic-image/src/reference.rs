//! Image references, normalised the way Docker does.
//!
//! `busybox` is stored as `docker.io/library/busybox:latest` and displayed as `busybox:latest`;
//! `127.0.0.1:5000/x/y:1` stays as it is; `name@sha256:<hex>` pins a manifest digest.

use std::fmt;

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// Docker Hub's canonical domain and the host its API really lives on.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry domain, e.g. `docker.io` or `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if the reference names one (a digest-only reference has none).
    pub tag: Option<String>,
    /// Manifest digest, if pinned.
    pub digest: Option<Digest>,
}

fn invalid(s: &str, why: &str) -> ImageError {
    ImageError::Invalid(format!("invalid reference format: {why}: {s:?}"))
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok || i >= b.len() {
            return false;
        }
        if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    // host[:port], host made of dns labels or an IPv6 literal in brackets
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
}

impl Reference {
    /// Parses and normalises a reference as Docker does.
    pub fn parse(s: &str) -> Result<Reference> {
        if s.is_empty() {
            return Err(invalid(s, "empty reference"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(Digest::parse(d).map_err(|_| invalid(s, "bad digest"))?),
            ),
            None => (s, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(invalid(s, "bad tag"));
            }
        }
        if name.is_empty() {
            return Err(invalid(s, "empty name"));
        }
        let (domain, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB_DOMAIN.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB_DOMAIN.to_string()
        } else {
            domain
        };
        if !valid_domain(&domain) {
            return Err(invalid(s, "bad registry host"));
        }
        let repository = if domain == DOCKER_HUB_DOMAIN && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageError::Invalid(format!(
                "invalid reference format: repository name ({repository}) must be lowercase"
            )));
        }
        if repository.len() > 255 || !repository.split('/').all(valid_path_component) {
            return Err(invalid(s, "bad repository name"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            domain,
            repository,
            tag,
            digest,
        })
    }

    /// `docker.io/library/busybox` style full repository name.
    pub fn full_repository(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }

    /// Docker's short display form of the repository: `busybox`, `user/app`, `host:5000/x`.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DOCKER_HUB_DOMAIN {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.full_repository()
        }
    }

    /// Storage key for a tag reference: `docker.io/library/busybox:latest`.
    pub fn tag_key(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{}", self.full_repository(), t))
    }

    /// Storage key for a digest reference: `docker.io/library/busybox@sha256:...`.
    pub fn digest_key(&self) -> Option<String> {
        self.digest
            .as_ref()
            .map(|d| format!("{}@{}", self.full_repository(), d))
    }

    /// The host name to talk to for this reference's registry.
    pub fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            &self.domain
        }
    }

    /// Tag or digest to ask the registry for (`latest` if neither, which parse prevents).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

/// Converts a stored key (`docker.io/library/busybox:latest`) to Docker's display form
/// (`busybox:latest`).
pub fn familiar(key: &str) -> String {
    match Reference::parse(key) {
        Ok(r) => {
            let repo = r.familiar_repository();
            match (&r.digest, &r.tag) {
                (Some(d), _) => format!("{repo}@{d}"),
                (None, Some(t)) => format!("{repo}:{t}"),
                (None, None) => repo,
            }
        }
        Err(_) => key.to_string(),
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.full_repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.tag_key().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        let r = Reference::parse("127.0.0.1:5000/busybox:1").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(familiar(&r.tag_key().unwrap()), "127.0.0.1:5000/busybox:1");
        let r = Reference::parse("user/app:v2").unwrap();
        assert_eq!(r.full_repository(), "docker.io/user/app");
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.domain, "localhost");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(
            r.digest_key().unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert!(Reference::parse("BusyBox").is_err());
        assert!(Reference::parse("a//b").is_err());
        assert!(Reference::parse("x:").is_err());
        assert!(Reference::parse("x@sha256:zz").is_err());
        assert!(Reference::parse("").is_err());
    }
}
