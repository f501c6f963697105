//! `GET /images/json` filters as dockerd applies them: `reference` (Go `path.Match` globs
//! against the familiar name with and without its tag), `before`, `since`, `label`, `dangling`.

use crate::api::util::label_matches;
use kic_image::{ImageRecord, Reference};
use std::collections::BTreeMap;

/// Go's `path.Match`: `*` and `?` stop at `/`, `[...]` classes with ranges and `^` negation,
/// `\` escapes. A malformed pattern matches nothing.
pub fn path_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, chars consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let ch = *p.get(i)?;
            if ch == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let lo = if ch == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                ch
            };
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|x| *x != ']') {
                i += 1;
                hi = if p[i] == '\\' {
                    i += 1;
                    *p.get(i)?
                } else {
                    p[i]
                };
                i += 1;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Some((matched != negate, i))
    }
    fn m(p: &[char], s: &[char]) -> bool {
        if p.is_empty() {
            return s.is_empty();
        }
        match p[0] {
            '*' => {
                let rest = &p[1..];
                for k in 0..=s.len() {
                    if k > 0 && s[k - 1] == '/' {
                        break;
                    }
                    if m(rest, &s[k..]) {
                        return true;
                    }
                }
                false
            }
            '?' => !s.is_empty() && s[0] != '/' && m(&p[1..], &s[1..]),
            '[' => {
                if s.is_empty() || s[0] == '/' {
                    return false;
                }
                match class(&p[1..], s[0]) {
                    Some((true, n)) => m(&p[1 + n..], &s[1..]),
                    _ => false,
                }
            }
            '\\' => p.len() > 1 && !s.is_empty() && p[1] == s[0] && m(&p[2..], &s[1..]),
            c => !s.is_empty() && c == s[0] && m(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    m(&p, &s)
}

/// `reference.FamiliarMatch`: the pattern against `busybox:latest`, then against `busybox`.
pub fn familiar_match(pattern: &str, familiar_ref: &str) -> bool {
    if path_match(pattern, familiar_ref) {
        return true;
    }
    match Reference::parse(familiar_ref) {
        Ok(r) => path_match(pattern, &r.familiar_repository()),
        Err(_) => false,
    }
}

/// The filters of one `GET /images/json`, checked.
#[derive(Debug, Default)]
pub struct ImageFilters {
    pub reference: Vec<String>,
    pub labels: Vec<String>,
    pub dangling: Option<bool>,
    /// Created strictly before / after these Unix times.
    pub before: Option<i64>,
    pub since: Option<i64>,
}

impl ImageFilters {
    /// `lookup` resolves `before`/`since` images to their creation time.
    pub fn parse(
        f: &BTreeMap<String, Vec<String>>,
        lookup: impl Fn(&str) -> Result<i64, String>,
    ) -> Result<ImageFilters, String> {
        crate::api::util::check_filter_keys(
            f,
            &["reference", "before", "since", "label", "dangling", "until"],
        )?;
        let mut out = ImageFilters::default();
        if let Some(r) = f.get("reference") {
            out.reference = r.clone();
        }
        if let Some(l) = f.get("label") {
            out.labels = l.clone();
        }
        if let Some(d) = f.get("dangling") {
            for v in d {
                let b = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("Invalid filter 'dangling={v}'")),
                };
                out.dangling = Some(b);
            }
        }
        if let Some(b) = f.get("before") {
            for v in b {
                out.before = Some(lookup(v)?);
            }
        }
        if let Some(s) = f.get("since") {
            for v in s {
                out.since = Some(lookup(v)?);
            }
        }
        if let Some(u) = f.get("until") {
            for v in u {
                let u = crate::api::util::parse_time_arg(v)? / 1_000_000_000;
                out.before = Some(out.before.map_or(u, |b| b.min(u)));
            }
        }
        Ok(out)
    }

    /// Whether the image passes, and (with `reference`) which of its tags and digests to show.
    pub fn apply(&self, img: &ImageRecord, created: i64) -> Option<(Vec<String>, Vec<String>)> {
        // As dockerd: `dangling=true` keeps untagged images (digest references or not),
        // `dangling=false` drops only images without any reference.
        match self.dangling {
            Some(true) if !img.repo_tags.is_empty() => return None,
            Some(false) if img.repo_tags.is_empty() && img.repo_digests.is_empty() => return None,
            _ => {}
        }
        if let Some(b) = self.before {
            if created >= b {
                return None;
            }
        }
        if let Some(s) = self.since {
            if created <= s {
                return None;
            }
        }
        if !self.labels.is_empty() {
            let labels = img.config.config.labels.clone().unwrap_or_default();
            if !self.labels.iter().all(|l| label_matches(&labels, l)) {
                return None;
            }
        }
        if self.reference.is_empty() {
            return Some((img.repo_tags.clone(), img.repo_digests.clone()));
        }
        let keep = |refs: &[String]| -> Vec<String> {
            refs.iter()
                .filter(|r| self.reference.iter().any(|p| familiar_match(p, r)))
                .cloned()
                .collect()
        };
        let tags = keep(&img.repo_tags);
        let digests = keep(&img.repo_digests);
        if tags.is_empty() && digests.is_empty() {
            return None;
        }
        Some((tags, digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_match() {
        assert!(path_match("busy*", "busybox"));
        assert!(!path_match("busy*", "busybox/x"));
        assert!(path_match("busybox:*", "busybox:latest"));
        assert!(path_match("b?sybox", "busybox"));
        assert!(path_match("[a-c]usybox", "busybox"));
        assert!(!path_match("[^a-c]usybox", "busybox"));
        assert!(path_match("*/library/*", "127.0.0.1:5000/library/busybox"));
        assert!(!path_match("*", "a/b"));
        assert!(path_match("a\\*b", "a*b"));
        assert!(!path_match("[", "a"));
    }

    #[test]
    fn familiar_matching() {
        assert!(familiar_match("busybox", "busybox:latest"));
        assert!(familiar_match("busy*", "busybox:1.36"));
        assert!(familiar_match("busybox:1.*", "busybox:1.36"));
        assert!(!familiar_match("busybox:2*", "busybox:1.36"));
        assert!(!familiar_match("debian", "busybox:latest"));
        assert!(familiar_match(
            "127.0.0.1:5000/library/busybox",
            "127.0.0.1:5000/library/busybox:latest"
        ));
    }

    fn rec(tags: &[&str], labels: &[(&str, &str)]) -> ImageRecord {
        let mut config = kic_image::ImageConfig::default();
        if !labels.is_empty() {
            config.config.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        ImageRecord {
            id: format!("sha256:{}", "a".repeat(64)),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            manifest_digest: String::new(),
            config,
            disk: Default::default(),
            size: 0,
            created: String::new(),
        }
    }

    #[test]
    fn filters_apply() {
        let f = |j: &str| {
            ImageFilters::parse(
                &crate::api::util::parse_filters(Some(j)).unwrap(),
                |n| match n {
                    "old" => Ok(100),
                    _ => Err(format!("No such image: {n}")),
                },
            )
        };
        let img = rec(&["busybox:latest", "busybox:1", "other:x"], &[("a", "1")]);
        let only = f(r#"{"reference":["busybox:*"]}"#).unwrap();
        assert_eq!(
            only.apply(&img, 200).unwrap().0,
            vec!["busybox:latest", "busybox:1"]
        );
        assert!(f(r#"{"reference":["deb*"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_none());
        assert!(f(r#"{"label":["a=1"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_some());
        assert!(f(r#"{"label":["a=2"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_none());
        assert!(f(r#"{"dangling":["true"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_none());
        assert!(f(r#"{"dangling":["false"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_some());
        assert!(f(r#"{"dangling":["true"]}"#)
            .unwrap()
            .apply(&rec(&[], &[]), 200)
            .is_some());
        assert!(f(r#"{"since":["old"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_some());
        assert!(f(r#"{"before":["old"]}"#)
            .unwrap()
            .apply(&img, 200)
            .is_none());
        assert_eq!(
            f(r#"{"before":["nope"]}"#).unwrap_err(),
            "No such image: nope"
        );
        assert_eq!(
            f(r#"{"dangling":["maybe"]}"#).unwrap_err(),
            "Invalid filter 'dangling=maybe'"
        );
        assert_eq!(
            f(r#"{"colour":["x"]}"#).unwrap_err(),
            "invalid filter 'colour'"
        );
    }
}
