//! A client for the OCI Distribution API: manifests and blobs, with Basic and Bearer auth.
//!
//! HTTPS with verified certificates by default. Registries listed as insecure (and loopback
//! hosts, as dockerd does) are tried over HTTPS without verification first, then plain HTTP.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::sync::Mutex;

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{manifest_accept, Descriptor};

/// Largest manifest or index accepted.
const MAX_MANIFEST: usize = 4 << 20;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` entries allowed over plain HTTP or unverified HTTPS.
    pub insecure_registries: Vec<String>,
    /// Username and password (or token) for Basic auth and token requests.
    pub credentials: Option<(String, String)>,
    /// PEM files of extra CAs trusted for registries' certificates (besides the system's).
    pub ca_files: Vec<std::path::PathBuf>,
}

/// True if `domain` may be reached without verified TLS.
pub fn is_insecure(domain: &str, insecure: &[String]) -> bool {
    let host = match domain.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => domain.rsplit_once(':').map(|(h, _)| h).unwrap_or(domain),
    };
    if host == "localhost" || host == "::1" || host.starts_with("127.") {
        return true;
    }
    insecure.iter().any(|i| {
        let i = i
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        i == domain || i == host
    })
}

enum Auth {
    None,
    Basic,
    Bearer(String),
}

/// A session with one repository of one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    familiar: String,
    creds: Option<(String, String)>,
    auth: Mutex<Auth>,
}

/// A fetched manifest-shaped document.
pub struct FetchedManifest {
    pub body: Vec<u8>,
    pub digest: Digest,
    pub content_type: Option<String>,
}

/// Reads PEM CA bundles for [`RegistryOptions::ca_files`].
pub fn load_cas(files: &[std::path::PathBuf]) -> Result<Vec<reqwest::Certificate>> {
    let mut out = Vec::new();
    for f in files {
        let pem = std::fs::read(f).map_err(|e| ImageError::io("read registry CA", f, e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ImageError::Invalid(format!(
                "registry CA file {} holds no usable PEM certificate: {e}",
                f.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(ImageError::Invalid(format!(
                "registry CA file {} holds no PEM certificate",
                f.display()
            )));
        }
        out.extend(certs);
    }
    Ok(out)
}

fn client(verify: bool, cas: &[reqwest::Certificate]) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder();
    for c in cas {
        b = b.add_root_certificate(c.clone());
    }
    b.danger_accept_invalid_certs(!verify)
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("kic-image/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImageError::Invalid(format!("cannot build HTTP client: {e}")))
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parses `Bearer realm="..",service="..",scope=".."` into its scheme and parameters.
pub fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, v)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, next) = if let Some(q) = v.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n)
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &q[end.min(q.len())..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim().to_string(), &v[end..])
        };
        params.push((k, val));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// Checks credentials against a registry's `/v2/` as `docker login` does: Basic auth directly,
/// or a Bearer token request to the challenge's realm. `Ok` means the registry accepted them.
/// Errors use dockerd's wording (`login attempt to ... failed with status: 401 Unauthorized`,
/// `Get "...": unauthorized: ...`).
pub async fn login(domain: &str, opts: &RegistryOptions) -> Result<()> {
    let host = if domain == crate::reference::DOCKER_HUB_DOMAIN {
        "registry-1.docker.io"
    } else {
        domain
    };
    let insecure = is_insecure(domain, &opts.insecure_registries);
    let cas = load_cas(&opts.ca_files)?;
    let mut attempts = vec![(format!("https://{host}"), client(!insecure, &cas)?)];
    if insecure {
        attempts.push((format!("http://{host}"), client(true, &cas)?));
    }
    let mut last = String::new();
    let mut reached = None;
    for (base, http) in attempts {
        let url = format!("{base}/v2/");
        match http.get(&url).send().await {
            Ok(resp) => {
                reached = Some((url, http, resp));
                break;
            }
            Err(e) => last = format!("Get \"{url}\": {}", err_chain(&e)),
        }
    }
    let Some((url, http, resp)) = reached else {
        return Err(ImageError::registry(domain, last));
    };
    if resp.status().is_success() {
        return Ok(());
    }
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Err(ImageError::registry(
            domain,
            format!(
                "login attempt to {url} failed with status: {}",
                resp.status()
            ),
        ));
    }
    let (user, pass) = opts.credentials.clone().unwrap_or_default();
    let challenge = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(parse_challenge)
        .find(|(s, _)| s == "bearer" || s == "basic");
    match challenge {
        Some((scheme, params)) if scheme == "bearer" => {
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let realm = get("realm")
                .ok_or_else(|| ImageError::registry(domain, "Bearer challenge without a realm"))?;
            let mut query: Vec<(&str, String)> = vec![("account", user.clone())];
            if let Some(s) = get("service") {
                query.push(("service", s));
            }
            let r = http
                .get(&realm)
                .query(&query)
                .basic_auth(&user, Some(&pass))
                .send()
                .await
                .map_err(|e| {
                    ImageError::registry(domain, format!("Get \"{realm}\": {}", err_chain(&e)))
                })?;
            if r.status().is_success() {
                return Ok(());
            }
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let detail = registry_error_text(&body)
                .unwrap_or_else(|| "incorrect username or password".to_string());
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                Err(ImageError::Unauthorized(format!(
                    "Get \"{url}\": unauthorized: {detail}"
                )))
            } else {
                Err(ImageError::registry(
                    domain,
                    format!("Get \"{realm}\": HTTP {status}: {detail}"),
                ))
            }
        }
        Some(_) => {
            let r = http
                .get(&url)
                .basic_auth(&user, Some(&pass))
                .send()
                .await
                .map_err(|e| {
                    ImageError::registry(domain, format!("Get \"{url}\": {}", err_chain(&e)))
                })?;
            if r.status().is_success() {
                Ok(())
            } else if r.status() == StatusCode::UNAUTHORIZED {
                Err(ImageError::Unauthorized(format!(
                    "login attempt to {url} failed with status: {} {}",
                    r.status().as_u16(),
                    r.status().canonical_reason().unwrap_or("")
                )))
            } else {
                Err(ImageError::registry(
                    domain,
                    format!("login attempt to {url} failed with status: {}", r.status()),
                ))
            }
        }
        None => Err(ImageError::Unauthorized(format!(
            "Get \"{url}\": unauthorized: the registry asks for authentication it does not name"
        ))),
    }
}

/// The first message of an OCI Distribution error body (`{"errors":[{"message":..}]}`), or
/// of a token server's `{"details":..}` / `{"error":..}`.
fn registry_error_text(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if let Some(m) = v
        .get("errors")
        .and_then(|e| e.get(0))
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
    {
        return Some(m.to_string());
    }
    ["details", "error", "message"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
}

impl RegistryClient {
    /// Finds how to talk to the registry of `r` (HTTPS, or HTTP if allowed) and pings `/v2/`.
    pub async fn connect(r: &Reference, opts: &RegistryOptions) -> Result<RegistryClient> {
        let host = r.api_host().to_string();
        let insecure = is_insecure(&r.domain, &opts.insecure_registries);
        let cas = load_cas(&opts.ca_files)?;
        let mut attempts = vec![(format!("https://{host}"), client(!insecure, &cas)?)];
        if insecure {
            attempts.push((format!("http://{host}"), client(true, &cas)?));
        }
        let mut last = String::new();
        for (base, http) in attempts {
            match http.get(format!("{base}/v2/")).send().await {
                Ok(_) => {
                    return Ok(RegistryClient {
                        http,
                        base,
                        registry: r.domain.clone(),
                        repository: r.repository.clone(),
                        familiar: r.familiar_repository(),
                        creds: opts.credentials.clone(),
                        auth: Mutex::new(Auth::None),
                    })
                }
                Err(e) => last = format!("{base}/v2/: {}", err_chain(&e)),
            }
        }
        let hint = if insecure {
            ""
        } else {
            "; if it serves plain HTTP or a certificate of a private CA, list it in insecure registries or trust that CA (registry CA files)"
        };
        Err(ImageError::registry(
            &r.domain,
            format!("cannot reach registry: {last}{hint}"),
        ))
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }

    async fn authorize(&self, resp: &Response) -> Result<()> {
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(parse_challenge)
            .find(|(s, _)| s == "bearer" || s == "basic");
        let Some((scheme, params)) = challenge else {
            return Err(self.denied());
        };
        if scheme == "basic" {
            if self.creds.is_none() {
                return Err(self.denied());
            }
            *self.auth.lock().await = Auth::Basic;
            return Ok(());
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| {
            ImageError::registry(&self.registry, "Bearer challenge without a realm")
        })?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = get("service") {
            query.push(("service", s));
        }
        query.push((
            "scope",
            get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository)),
        ));
        let mut req = self.http.get(&realm).query(&query);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| {
            ImageError::registry(
                &self.registry,
                format!("token request to {realm}: {}", err_chain(&e)),
            )
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(self.denied());
        }
        if !resp.status().is_success() {
            return Err(ImageError::registry(
                &self.registry,
                format!("token request to {realm}: HTTP {}", resp.status()),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(|e| {
            ImageError::registry(
                &self.registry,
                format!("bad token response from {realm}: {e}"),
            )
        })?;
        let token = t.token.or(t.access_token).ok_or_else(|| {
            ImageError::registry(
                &self.registry,
                format!("token response from {realm} holds no token"),
            )
        })?;
        *self.auth.lock().await = Auth::Bearer(token);
        Ok(())
    }

    fn denied(&self) -> ImageError {
        if self.creds.is_some() {
            ImageError::Unauthorized(format!(
                "unauthorized: authentication to {} failed for {}: incorrect username or password, or no pull access",
                self.registry, self.familiar
            ))
        } else {
            ImageError::Unauthorized(format!(
                "pull access denied for {}, repository does not exist or may require 'docker login'",
                self.familiar
            ))
        }
    }

    /// GET with auth: on 401, answer the challenge once and retry.
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<Response> {
        for attempt in 0..2 {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(ACCEPT, a.parse().expect("static header"));
            }
            let mut req = self.http.get(url).headers(headers);
            match &*self.auth.lock().await {
                Auth::None => {}
                Auth::Basic => {
                    if let Some((u, p)) = &self.creds {
                        req = req.basic_auth(u, Some(p));
                    }
                }
                Auth::Bearer(t) => req = req.header(AUTHORIZATION, format!("Bearer {t}")),
            }
            let resp = req.send().await.map_err(|e| {
                ImageError::registry(&self.registry, format!("GET {url}: {}", err_chain(&e)))
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.authorize(&resp).await?;
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                return Err(self.denied());
            }
            return Ok(resp);
        }
        Err(self.denied())
    }

    /// Fetches a manifest or index by tag or digest. Checks the body against the digest asked
    /// for, or against the registry's `Docker-Content-Digest` when fetched by tag.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest> {
        let url = self.url("manifests", reference);
        let resp = self.get(&url, Some(&manifest_accept())).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ImageError::ManifestUnknown(
                format!("{}:{reference}", self.familiar).replace(":sha256:", "@sha256:"),
            ));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ImageError::registry(
                &self.registry,
                format!("GET {url}: HTTP {status}: {}", body.trim()),
            ));
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ImageError::registry(&self.registry, format!("reading {url}: {}", err_chain(&e)))
            })?;
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST {
                return Err(ImageError::Invalid(format!(
                    "manifest {url} is larger than {MAX_MANIFEST} bytes"
                )));
            }
        }
        let digest = Digest::of(&body);
        let what = format!("manifest {}@{reference}", self.familiar);
        if let Ok(asked) = Digest::parse(reference) {
            asked.verify(&what, &digest)?;
        } else if let Some(h) = header_digest {
            h.verify(&what, &digest)?;
        }
        Ok(FetchedManifest {
            body,
            digest,
            content_type,
        })
    }

    /// Streams a blob into `out`, calling `progress(bytes_so_far)`, and verifies size and digest.
    pub async fn blob(
        &self,
        desc: &Descriptor,
        out: &mut tokio::fs::File,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt;
        let url = self.url("blobs", desc.digest.as_str());
        let resp = self.get(&url, None).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ImageError::registry(
                &self.registry,
                format!("GET blob {}: HTTP {status}", desc.digest),
            ));
        }
        let mut hasher = sha2::Sha256::new();
        let mut n = 0u64;
        let mut stream = resp.bytes_stream();
        let mut last = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ImageError::registry(
                    &self.registry,
                    format!("reading blob {}: {}", desc.digest, err_chain(&e)),
                )
            })?;
            n += chunk.len() as u64;
            if n > desc.size {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {} size", desc.digest),
                    expected: desc.size.to_string(),
                    actual: format!("more than {}", desc.size),
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io("write blob", "<tmp>", e))?;
            if n - last >= 512 * 1024 || n == desc.size {
                last = n;
                progress(n);
            }
        }
        out.flush()
            .await
            .map_err(|e| ImageError::io("write blob", "<tmp>", e))?;
        if n != desc.size {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {} size", desc.digest),
                expected: desc.size.to_string(),
                actual: n.to_string(),
            });
        }
        desc.digest.verify(
            &format!("blob {}", desc.digest),
            &Digest::from_hasher(hasher),
        )
    }
}

/// Docker's wording when a push is refused.
fn push_denied() -> ImageError {
    ImageError::Unauthorized("denied: requested access to the resource is denied".into())
}

impl RegistryClient {
    /// Sends a request built by `make` with the session's auth; on 401 answers the challenge
    /// (whose scope names what the registry wants, e.g. `pull,push`) and sends it again.
    async fn send_authed(
        &self,
        what: &str,
        make: &(dyn Fn() -> reqwest::RequestBuilder + Send + Sync),
    ) -> Result<Response> {
        for attempt in 0..2 {
            let mut req = make();
            match &*self.auth.lock().await {
                Auth::None => {}
                Auth::Basic => {
                    if let Some((u, p)) = &self.creds {
                        req = req.basic_auth(u, Some(p));
                    }
                }
                Auth::Bearer(t) => req = req.header(AUTHORIZATION, format!("Bearer {t}")),
            }
            let resp = req.send().await.map_err(|e| {
                ImageError::registry(&self.registry, format!("{what}: {}", err_chain(&e)))
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.authorize(&resp).await.map_err(|e| match e {
                    ImageError::Unauthorized(_) => push_denied(),
                    e => e,
                })?;
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                return Err(push_denied());
            }
            return Ok(resp);
        }
        Err(push_denied())
    }

    async fn fail(&self, what: &str, resp: Response) -> ImageError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let detail = registry_error_text(&body).unwrap_or_else(|| body.trim().to_string());
        ImageError::registry(&self.registry, format!("{what}: HTTP {status}: {detail}"))
    }

    /// The repository's tags (`GET /v2/<name>/tags/list`, following `Link` pages).
    pub async fn tags(&self) -> Result<Vec<String>> {
        let mut url = format!("{}/v2/{}/tags/list", self.base, self.repository);
        let mut out = Vec::new();
        for _ in 0..100 {
            let resp = self.get(&url, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(self.denied());
            }
            if !resp.status().is_success() {
                return Err(self.fail(&format!("GET {url}"), resp).await);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(u, _)| u.to_string());
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let t: Tags = resp.json().await.map_err(|e| {
                ImageError::registry(&self.registry, format!("bad tag list from {url}: {e}"))
            })?;
            out.extend(t.tags.unwrap_or_default());
            match next {
                Some(n) if n.starts_with('/') => url = format!("{}{n}", self.base),
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// Whether the repository already has a blob.
    pub async fn blob_exists(&self, d: &Digest) -> Result<bool> {
        let url = self.url("blobs", d.as_str());
        let resp = self
            .send_authed(&format!("HEAD {url}"), &|| self.http.head(&url))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&format!("HEAD {url}"), resp).await),
        }
    }

    /// Uploads a blob from a local file in one request (POST for an upload URL, then PUT with
    /// the digest), calling `progress(bytes sent)` as it goes.
    pub async fn push_blob(
        &self,
        d: &Digest,
        path: &std::path::Path,
        size: u64,
        progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<()> {
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let resp = self
            .send_authed(&format!("POST {start}"), &|| {
                self.http.post(&start).header("content-length", "0")
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
            return Err(self.fail(&format!("POST {start}"), resp).await);
        }
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ImageError::registry(&self.registry, format!("POST {start}: no upload Location"))
            })?
            .to_string();
        let mut url = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={d}"));
        let p = path.to_path_buf();
        let make = || {
            let p = p.clone();
            let progress = progress.clone();
            let stream = futures::stream::unfold(
                (None::<tokio::fs::File>, 0u64, p, progress),
                |(f, sent, p, progress)| async move {
                    use tokio::io::AsyncReadExt;
                    let mut f = match f {
                        Some(f) => f,
                        None => match tokio::fs::File::open(&p).await {
                            Ok(f) => f,
                            Err(e) => return Some((Err(e), (None, sent, p, progress))),
                        },
                    };
                    let mut buf = vec![0u8; 512 * 1024];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            let sent = sent + n as u64;
                            progress(sent);
                            Some((Ok(buf), (Some(f), sent, p, progress)))
                        }
                        Err(e) => Some((Err(e), (Some(f), sent, p, progress))),
                    }
                },
            );
            self.http
                .put(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("content-length", size.to_string())
                .body(reqwest::Body::wrap_stream(stream))
        };
        let resp = self.send_authed(&format!("PUT blob {d}"), &make).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&format!("PUT blob {d}"), resp).await);
        }
        Ok(())
    }

    /// Puts a manifest under `reference` (a tag); returns the digest the registry names.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Digest> {
        let url = self.url("manifests", reference);
        let body = body.to_vec();
        let resp = self
            .send_authed(&format!("PUT {url}"), &|| {
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(&format!("PUT {url}"), resp).await);
        }
        let ours = Digest::of(&body);
        if let Some(h) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok())
        {
            ours.verify(&format!("manifest pushed to {}", self.familiar), &h)?;
        }
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(
            p[2],
            (
                "scope".into(),
                "repository:library/busybox:pull,push".into()
            )
        );
        let (s, p) = parse_challenge(r#"Basic realm="kic""#);
        assert_eq!(s, "basic");
        assert_eq!(p, vec![("realm".into(), "kic".into())]);
    }

    #[test]
    fn ca_files_load_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=kic-test-ca", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            eprintln!("skipping: openssl is not available");
            return;
        }
        assert_eq!(load_cas(std::slice::from_ref(&cert)).unwrap().len(), 1);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = load_cas(&[cert.clone(), junk.clone()]).unwrap_err();
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let e = load_cas(&[dir.path().join("missing.pem")]).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn insecure_rules() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(!is_insecure("registry.example:5000", &[]));
        assert!(is_insecure(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(is_insecure(
            "registry.example",
            &["registry.example".into()]
        ));
    }
}
