//! `docker commit`: a new image made of a base image plus one layer of a container's changes,
//! and the Dockerfile instructions `docker commit --change` may apply to its config.
//!
//! The caller (the Docker personality) writes the container's changes as an uncompressed
//! layer tar (relative names, `.wh.` whiteouts for deletions; see [`crate::changes`] for which
//! paths changed) and gives the runtime config the image should carry (the container's config
//! after [`apply_changes`] and dockerd's merge with the container's own config). The store
//! gzips the layer into its content store, writes config and manifest beside the base's,
//! builds the image disk (with its file manifest) and tags the image.
//!
//! As dockerd does, a layer tar without entries adds no layer: the new history entry is then
//! marked `empty_layer` and `rootfs.diff_ids` stay the base's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use chrono::SecondsFormat;

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{self, ContainerConfig, Descriptor, History, ImageConfig, Manifest};
use crate::store::{ImageRecord, ImageStore, Resolved};

/// What a commit needs from its caller.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The container's image (id, or any name the store resolves).
    pub base: String,
    /// An **uncompressed** layer tar of the container's changes: names relative to `/`,
    /// deletions as `.wh.<name>` whiteouts. Read, not removed.
    pub layer: PathBuf,
    /// The runtime config of the new image (the image config's `config`).
    pub config: ContainerConfig,
    /// `docker commit --author`; empty for none.
    pub author: String,
    /// `docker commit --message`; empty for none.
    pub comment: String,
    /// The history's `created_by`: the container's command joined by spaces, as dockerd.
    pub created_by: String,
    /// `repo[:tag]` to tag the image with (tag `latest` if missing); `None` leaves it untagged.
    pub reference: Option<String>,
    /// Size of the new image disk in bytes.
    pub disk_size: u64,
}

/// A layer gzipped into the content store.
struct StoredLayer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    /// The tar holds no entries (dockerd adds no layer for it).
    empty: bool,
}

impl ImageStore {
    /// Creates an image from `req` (see the module docs) and returns it as [`ImageStore::get`]
    /// would. Errors: the base image is gone (`No such image`), the reference is invalid
    /// (`invalid reference format...`, `refusing to create a tag with a digest reference`),
    /// the layer is not a tar or cannot be applied, the disk cannot be built.
    ///
    /// Blocking (it gzips the layer and builds a disk): call it from a blocking thread.
    pub fn commit(&self, req: CommitRequest) -> Result<ImageRecord> {
        let tag_key = match &req.reference {
            None => None,
            Some(r) => {
                let parsed = Reference::parse(r.trim())?;
                if parsed.digest.is_some() {
                    return Err(ImageError::Invalid(
                        "refusing to create a tag with a digest reference".into(),
                    ));
                }
                parsed.tag_key()
            }
        };
        let base = self.parts(&req.base)?;
        let layer = self.store_layer(&req.layer)?;

        let now = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let mut config: ImageConfig = base.config.clone();
        config.config = req.config.clone();
        config.created = Some(now.clone());
        config.author = non_empty(&req.author);
        // These describe the container that built the base, not this one.
        for k in ["container", "container_config", "docker_version"] {
            config.extra.remove(k);
        }
        if !layer.empty {
            config.rootfs.diff_ids.push(layer.diff_id.clone());
        }
        config.history.push(History {
            created: Some(now),
            created_by: Some(req.created_by.clone()),
            author: non_empty(&req.author),
            comment: non_empty(&req.comment),
            empty_layer: layer.empty.then_some(true),
        });
        let config_bytes = serde_json::to_vec(&config).expect("serialisable");
        let config_digest = Digest::of(&config_bytes);

        // The manifest keeps the base's kind (OCI or Docker schema 2).
        let oci = base.manifest.media_type.as_deref() == Some(spec::MT_OCI_MANIFEST)
            || (base.manifest.media_type.is_none()
                && base.manifest.config.media_type == spec::MT_OCI_CONFIG);
        let (mt_manifest, mt_config, mt_layer) = if oci {
            (
                spec::MT_OCI_MANIFEST,
                spec::MT_OCI_CONFIG,
                spec::MT_OCI_LAYER_GZIP,
            )
        } else {
            (
                spec::MT_DOCKER_MANIFEST,
                spec::MT_DOCKER_CONFIG,
                spec::MT_DOCKER_LAYER_GZIP,
            )
        };
        let desc = |media_type: &str, digest: &Digest, size: u64| Descriptor {
            media_type: media_type.into(),
            digest: digest.clone(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: vec![],
        };
        let mut layers = base.manifest.layers.clone();
        if !layer.empty {
            layers.push(desc(mt_layer, &layer.digest, layer.size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(mt_manifest.into()),
            config: desc(mt_config, &config_digest, config_bytes.len() as u64),
            layers,
            annotations: BTreeMap::new(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("serialisable");
        let manifest_digest = Digest::of(&manifest_bytes);
        self.content
            .put_bytes("image config", &config_digest, &config_bytes)?;
        self.content
            .put_bytes("manifest", &manifest_digest, &manifest_bytes)?;

        let resolved = Resolved {
            top: manifest_digest.clone(),
            manifest,
            config,
            docs: vec![manifest_digest.clone(), config_digest.clone()],
        };
        if let Err(e) = self.materialise_blocking(resolved, req.disk_size) {
            self.drop_unreferenced(&[&manifest_digest, &config_digest, &layer.digest]);
            return Err(e);
        }
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        if let Some(k) = tag_key {
            repos.refs.insert(k, config_digest.clone());
            self.save_repos(&repos)?;
        }
        let m = self
            .meta(&config_digest)?
            .ok_or_else(|| ImageError::NotFound(config_digest.to_string()))?;
        Ok(self.record(&m, &repos))
    }

    /// Gzips the layer tar at `path` into the content store, hashing both forms.
    fn store_layer(&self, path: &std::path::Path) -> Result<StoredLayer> {
        let mut f = File::open(path).map_err(|e| ImageError::io("open layer", path, e))?;
        // A tar without entries starts with its end-of-archive (zero) block, or is empty.
        let mut head = [0u8; 512];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::io("read layer", path, e)),
            }
        }
        let empty = head[..n].iter().all(|b| *b == 0);
        if !empty && n < head.len() {
            return Err(ImageError::Invalid(format!(
                "{} is not a tar archive: it ends inside its first header",
                path.display()
            )));
        }
        let f = File::open(path).map_err(|e| ImageError::io("open layer", path, e))?;
        let mut t = self.content.temp()?;
        let out = t
            .as_file_mut()
            .try_clone()
            .map_err(|e| ImageError::io("open", t.path().to_path_buf(), e))?;
        let mut hr = HashingReader::new(BufReader::with_capacity(256 * 1024, f));
        let mut gz = flate2::write::GzEncoder::new(
            HashingWriter::new(io::BufWriter::new(out)),
            flate2::Compression::default(),
        );
        io::copy(&mut hr, &mut gz).map_err(|e| ImageError::io("compress layer", path, e))?;
        let (diff_id, _) = hr
            .finish()
            .map_err(|e| ImageError::io("read layer", path, e))?;
        let hw = gz
            .finish()
            .map_err(|e| ImageError::io("compress layer", path, e))?;
        let (w, digest, size) = hw.finish();
        w.into_inner()
            .map_err(|e| {
                ImageError::io("write layer blob", t.path().to_path_buf(), e.into_error())
            })?
            .sync_all()
            .map_err(|e| ImageError::io("write layer blob", t.path().to_path_buf(), e))?;
        if !self.content.has(&digest) {
            self.content.commit(t, &digest)?;
        }
        Ok(StoredLayer {
            digest,
            size,
            diff_id,
            empty,
        })
    }

    /// Removes blobs of a failed commit that no image needs.
    fn drop_unreferenced(&self, blobs: &[&Digest]) {
        let Ok(_l) = self.lock() else { return };
        let Ok(all) = self.all_meta() else { return };
        for b in blobs {
            if !all.iter().any(|m| m.blobs.contains(b)) {
                let _ = self.content.remove(b);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// `docker commit --change`
// ---------------------------------------------------------------------------------------

/// The instructions dockerd accepts in `--change`.
const VALID: &[&str] = &[
    "cmd",
    "entrypoint",
    "healthcheck",
    "env",
    "expose",
    "label",
    "onbuild",
    "user",
    "volume",
    "workdir",
];

fn bad(m: impl Into<String>) -> ImageError {
    ImageError::Invalid(m.into())
}

/// The logical lines of the changes, as dockerd's Dockerfile parser sees them joined by
/// newlines: `\` at a line's end continues it, blank and `#` lines are skipped.
fn logical_lines(changes: &[String]) -> Vec<String> {
    let text = changes.join("\n");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut continuing = false;
    for line in text.split('\n') {
        let t = line.trim_start();
        if t.starts_with('#') || (t.trim_end().is_empty() && !continuing) {
            continue;
        }
        let body = line.trim_end_matches('\r');
        if let Some(stripped) = body.trim_end().strip_suffix('\\') {
            cur.push_str(stripped);
            continuing = true;
        } else {
            cur.push_str(body);
            out.push(std::mem::take(&mut cur));
            continuing = false;
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `inst rest` into the instruction (as written) and the trimmed rest.
fn split_instruction(line: &str) -> (&str, &str) {
    let t = line.trim();
    match t.find(char::is_whitespace) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    }
}

/// A JSON array of strings, if `rest` is one.
fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// Splits on unquoted whitespace, keeping quotes and escapes in the words (buildkit's
/// `parseWords`), for later expansion with [`expand`].
fn words(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut w = String::new();
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !w.is_empty() {
                    out.push(std::mem::take(&mut w));
                }
            }
            None if c == '\\' => {
                w.push(c);
                if let Some(n) = chars.next() {
                    w.push(n);
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                w.push(c);
            }
            Some(q) if c == q => {
                quote = None;
                w.push(c);
            }
            Some('"') if c == '\\' => {
                w.push(c);
                if let Some(n) = chars.next() {
                    w.push(n);
                }
            }
            _ => w.push(c),
        }
    }
    if !w.is_empty() {
        out.push(w);
    }
    out
}

fn env_get<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
}

/// Processes one word as Docker's shell lexer: quotes removed (`'...'` literal, `"..."` with
/// `\"`, `\$`, `\\` escapes), `\x` unquoted is `x`, `$VAR`, `${VAR}`, `${VAR:-w}`,
/// `${VAR-w}`, `${VAR:+w}`, `${VAR+w}` expanded from `env`.
fn expand(word: &str, env: &[String]) -> Result<String> {
    expand_word(word, env).map_err(|e| bad(format!("failed to process {word:?}: {e}")))
}

fn expand_word(word: &str, env: &[String]) -> Result<String> {
    let cs: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut dq = false;
    while i < cs.len() {
        let c = cs[i];
        match c {
            '\'' if !dq => {
                i += 1;
                while i < cs.len() && cs[i] != '\'' {
                    out.push(cs[i]);
                    i += 1;
                }
                if i >= cs.len() {
                    return Err(bad(
                        "unexpected end of statement while looking for matching single-quote",
                    ));
                }
                i += 1;
            }
            '"' => {
                dq = !dq;
                i += 1;
            }
            '\\' => match cs.get(i + 1) {
                Some(n) if !dq || matches!(n, '"' | '$' | '\\') => {
                    out.push(*n);
                    i += 2;
                }
                Some(_) => {
                    out.push('\\');
                    i += 1;
                }
                None => {
                    i += 1;
                }
            },
            '$' => {
                i += 1;
                let (v, ni) = variable(&cs, i, env)?;
                match v {
                    Some(v) => out.push_str(&v),
                    None => out.push('$'),
                }
                i = ni;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    if dq {
        return Err(bad(
            "unexpected end of statement while looking for matching double-quote",
        ));
    }
    Ok(out)
}

/// The value of the variable reference starting at `cs[i]` (after the `$`), and where the
/// reference ends; `None` if no name follows (a literal `$`).
fn variable(cs: &[char], mut i: usize, env: &[String]) -> Result<(Option<String>, usize)> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if cs.get(i) == Some(&'{') {
        i += 1;
        let start = i;
        while i < cs.len() && is_name(cs[i]) {
            i += 1;
        }
        let name: String = cs[start..i].iter().collect();
        if name.is_empty() {
            return Err(bad(format!(
                "bad substitution: {}",
                cs[start - 2..].iter().collect::<String>()
            )));
        }
        let val = env_get(env, &name).map(str::to_string);
        if cs.get(i) == Some(&'}') {
            return Ok((Some(val.unwrap_or_default()), i + 1));
        }
        let colon = cs.get(i) == Some(&':');
        if colon {
            i += 1;
        }
        let op = cs.get(i).copied();
        i += 1;
        let wstart = i;
        let mut depth = 0;
        while i < cs.len() && !(cs[i] == '}' && depth == 0) {
            if cs[i] == '{' {
                depth += 1;
            } else if cs[i] == '}' {
                depth -= 1;
            }
            i += 1;
        }
        if i >= cs.len() {
            return Err(bad("missing '}'"));
        }
        let word: String = cs[wstart..i].iter().collect();
        let set = match &val {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        let v = match op {
            Some('-') => {
                if set {
                    val.unwrap_or_default()
                } else {
                    expand_word(&word, env)?
                }
            }
            Some('+') => {
                if set {
                    expand_word(&word, env)?
                } else {
                    String::new()
                }
            }
            _ => {
                return Err(bad(format!(
                    "unsupported modifier ({}) in substitution",
                    op.unwrap_or(' ')
                )))
            }
        };
        return Ok((Some(v), i + 1));
    }
    let start = i;
    while i < cs.len() && is_name(cs[i]) {
        i += 1;
    }
    if i == start {
        return Ok((None, i));
    }
    let name: String = cs[start..i].iter().collect();
    Ok((Some(env_get(env, &name).unwrap_or("").to_string()), i))
}

/// `K=V ...` pairs or the legacy `K V` form of ENV and LABEL, expanded from `env`.
fn name_values(inst: &str, rest: &str, env: &[String]) -> Result<Vec<(String, String)>> {
    let ws = words(rest);
    if ws.is_empty() {
        return Err(bad(format!("{inst} requires at least one argument")));
    }
    let mut out = Vec::new();
    if !ws[0].contains('=') {
        // Legacy: the first word is the name, the rest of the line its value; dockerd splits
        // the raw text at the first whitespace (quotes do not group here).
        let Some((key, value)) = rest.split_once(char::is_whitespace) else {
            return Err(bad(format!("{inst} must have two arguments")));
        };
        out.push((expand(key, env)?, expand(value.trim_start(), env)?));
        return Ok(out);
    }
    for w in ws {
        let Some((k, v)) = w.split_once('=') else {
            return Err(bad(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )));
        };
        if k.is_empty() {
            return Err(bad(format!("{inst} names can not be blank")));
        }
        out.push((expand(k, env)?, expand(v, env)?));
    }
    Ok(out)
}

/// The shell a shell-form command runs with: the config's `Shell` or `/bin/sh -c`.
fn shell_of(c: &ContainerConfig) -> Vec<String> {
    c.extra
        .get("Shell")
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
}

/// CMD / ENTRYPOINT / HEALTHCHECK CMD arguments: a JSON array, or the shell form.
fn command_line(rest: &str, c: &ContainerConfig) -> (Vec<String>, bool) {
    match json_array(rest) {
        Some(v) => (v, false),
        None => {
            let mut v = shell_of(c);
            if !rest.is_empty() {
                v.push(rest.to_string());
            }
            (v, true)
        }
    }
}

/// Go's `path.Clean` for absolute paths.
fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Ports of one EXPOSE word: `80`, `80/udp`, `8000-8010/tcp`, `[ip:][host:]80` (the
/// container port counts).
fn expose_ports(word: &str) -> Result<Vec<String>> {
    let (spec, given_proto) = word.rsplit_once('/').unwrap_or((word, "tcp"));
    let proto = given_proto.to_ascii_lowercase();
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 2 {
        let ip = parts[..parts.len() - 2].join(":");
        let bare = ip.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(format!("Invalid ip address: {ip}")));
        }
    }
    let container = parts.last().copied().unwrap_or("");
    if container.is_empty() {
        return Err(bad(format!("No port specified: {word}<empty>")));
    }
    let invalid = || bad(format!("Invalid containerPort: {container}"));
    let port = |s: &str| s.parse::<u16>().map_err(|_| invalid());
    let (lo, hi) = match container.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(container)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(invalid());
    }
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad(format!("Invalid proto: {given_proto}")));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Go's `time.ParseDuration` (for HEALTHCHECK flags), in nanoseconds.
fn go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += num * mult;
    }
    Some(total as i64)
}

fn healthcheck(rest: &str) -> Result<serde_json::Value> {
    let mut rest = rest.trim();
    if rest.is_empty() {
        return Err(bad("HEALTHCHECK requires at least one argument"));
    }
    let mut flags: BTreeMap<&str, &str> = BTreeMap::new();
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (name, value) = f[..end].split_once('=').unwrap_or((&f[..end], ""));
        if !matches!(
            name,
            "interval" | "timeout" | "start-period" | "start-interval" | "retries"
        ) {
            return Err(bad(format!("Unknown flag: {name}")));
        }
        flags.insert(name, value);
        rest = f[end..].trim_start();
    }
    let (kind, args) = split_instruction(rest);
    let mut hc = serde_json::Map::new();
    match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !args.is_empty() {
                return Err(bad("HEALTHCHECK NONE takes no arguments"));
            }
            hc.insert("Test".into(), serde_json::json!(["NONE"]));
            return Ok(serde_json::Value::Object(hc));
        }
        "CMD" => {
            let test: Vec<String> = match json_array(args) {
                Some(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
                None => vec!["CMD-SHELL".into(), args.to_string()],
            };
            hc.insert("Test".into(), serde_json::json!(test));
        }
        other => {
            return Err(bad(format!(
                "Unknown type {other:?} in HEALTHCHECK (try CMD)"
            )))
        }
    }
    for (flag, key) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ] {
        if let Some(v) = flags.get(flag).filter(|v| !v.is_empty()) {
            let d = go_duration(v).ok_or_else(|| bad(format!("time: invalid duration {v:?}")))?;
            if d != 0 && d < 1_000_000 {
                return Err(bad(format!("Interval {flag:?} cannot be less than 1ms")));
            }
            if d != 0 {
                hc.insert(key.into(), serde_json::json!(d));
            }
        }
    }
    if let Some(v) = flags.get("retries").filter(|v| !v.is_empty()) {
        let n: i64 = v
            .parse()
            .map_err(|_| bad(format!("strconv.ParseInt: parsing {v:?}: invalid syntax")))?;
        if n < 0 {
            return Err(bad("--retries cannot be negative"));
        }
        if n > 0 {
            hc.insert("Retries".into(), serde_json::json!(n));
        }
    }
    Ok(serde_json::Value::Object(hc))
}

/// Applies `docker commit --change` instructions to `config` as dockerd's `BuildFromConfig`
/// does: CMD, ENTRYPOINT (JSON or shell form; an ENTRYPOINT clears CMD unless a CMD came
/// earlier in the same changes), ENV (`K=V ...` or `K V`), EXPOSE, HEALTHCHECK, LABEL,
/// ONBUILD, USER, VOLUME, WORKDIR (relative to the previous one), with `$VAR`
/// expansion from the environment where Docker expands. Any other instruction is refused
/// with dockerd's `<instruction> is not a valid change command`. On error `config` is left as
/// it was. The caller then merges with the container's config as dockerd does.
pub fn apply_changes(config: &mut ContainerConfig, changes: &[String]) -> Result<()> {
    let lines = logical_lines(changes);
    for l in &lines {
        let (inst, _) = split_instruction(l);
        let lower = inst.to_ascii_lowercase();
        if !VALID.contains(&lower.as_str()) {
            return Err(bad(format!("{lower} is not a valid change command")));
        }
    }
    let mut c = config.clone();
    let mut cmd_set = false;
    for l in &lines {
        let (inst, rest) = split_instruction(l);
        let env = c.env.clone().unwrap_or_default();
        match inst.to_ascii_lowercase().as_str() {
            "cmd" => {
                c.cmd = Some(command_line(rest, &c).0);
                cmd_set = true;
            }
            "entrypoint" => {
                c.entrypoint = Some(command_line(rest, &c).0);
                if !cmd_set {
                    c.cmd = None;
                }
            }
            "env" => {
                let mut e = env.clone();
                for (k, v) in name_values("ENV", rest, &env)? {
                    let kv = format!("{k}={v}");
                    match e
                        .iter_mut()
                        .find(|x| x.split('=').next() == Some(k.as_str()))
                    {
                        Some(x) => *x = kv,
                        None => e.push(kv),
                    }
                }
                c.env = Some(e);
            }
            "expose" => {
                let ws = words(rest);
                if ws.is_empty() {
                    return Err(bad("EXPOSE requires at least one argument"));
                }
                let ports = c.exposed_ports.get_or_insert_with(BTreeMap::new);
                for w in ws {
                    for p in expand(&w, &env)?.split_whitespace() {
                        for port in expose_ports(p)? {
                            ports.insert(port, serde_json::json!({}));
                        }
                    }
                }
            }
            "healthcheck" => {
                let hc = healthcheck(rest)?;
                c.extra.insert("Healthcheck".into(), hc);
            }
            "label" => {
                let kvs = name_values("LABEL", rest, &env)?;
                let labels = c.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in kvs {
                    labels.insert(k, v);
                }
            }
            "onbuild" => {
                if rest.is_empty() {
                    return Err(bad("ONBUILD requires at least one argument"));
                }
                let (trigger, _) = split_instruction(rest);
                match trigger.to_ascii_uppercase().as_str() {
                    "ONBUILD" => {
                        return Err(bad("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"))
                    }
                    t @ ("FROM" | "MAINTAINER") => {
                        return Err(bad(format!("{t} isn't allowed as an ONBUILD trigger")))
                    }
                    _ => {}
                }
                let list = c
                    .extra
                    .entry("OnBuild")
                    .or_insert_with(|| serde_json::json!([]));
                if !list.is_array() {
                    *list = serde_json::json!([]);
                }
                // Kept as written after the keyword (dockerd keeps trailing blanks too).
                let raw = l.trim_start();
                let raw = raw[inst.len()..].trim_start();
                list.as_array_mut()
                    .expect("array")
                    .push(serde_json::Value::String(raw.to_string()));
            }
            "user" => {
                if rest.is_empty() {
                    return Err(bad("USER requires exactly one argument"));
                }
                c.user = Some(expand(rest, &env)?);
            }
            "volume" => {
                let vols = match json_array(rest) {
                    Some(v) => v,
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                if vols.is_empty() {
                    return Err(bad("VOLUME requires at least one argument"));
                }
                let mut add = Vec::new();
                for v in vols {
                    let v = expand(&v, &env)?;
                    let v = v.trim();
                    if v.is_empty() {
                        return Err(bad("VOLUME specified can not be an empty string"));
                    }
                    add.push(v.to_string());
                }
                let map = c.volumes.get_or_insert_with(BTreeMap::new);
                for v in add {
                    map.insert(v, serde_json::json!({}));
                }
            }
            "workdir" => {
                if rest.is_empty() {
                    return Err(bad("WORKDIR requires exactly one argument"));
                }
                let w = expand(rest, &env)?;
                let joined = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", c.working_dir.as_deref().unwrap_or("/"))
                };
                c.working_dir = Some(clean_abs(&joined));
            }
            other => return Err(bad(format!("{other} is not a valid change command"))),
        }
    }
    *config = c;
    Ok(())
}

/// dockerd's `merge` after `--change`s: what the new config leaves empty comes from the
/// container's config (`base`): user, ports (union), env (base entries whose names the new
/// one lacks), labels (union), cmd/entrypoint (when no entrypoint: an empty cmd takes the
/// base's, a missing entrypoint takes the base's), healthcheck, working dir, volumes (union)
/// and stop signal.
pub fn merge_config(user: &mut ContainerConfig, base: &ContainerConfig) {
    if user.user.as_deref().unwrap_or("").is_empty() {
        user.user = base.user.clone();
    }
    match (&mut user.exposed_ports, &base.exposed_ports) {
        (Some(u), Some(b)) if !u.is_empty() => {
            for (k, v) in b {
                u.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        (_, b) => {
            if user.exposed_ports.as_ref().is_none_or(|u| u.is_empty()) {
                user.exposed_ports = b.clone();
            }
        }
    }
    let user_env = user.env.clone().unwrap_or_default();
    if user_env.is_empty() {
        user.env = base.env.clone();
    } else {
        let mut e = user_env;
        for be in base.env.iter().flatten() {
            let k = be.split('=').next().unwrap_or("");
            if !e.iter().any(|u| u.split('=').next() == Some(k)) {
                e.push(be.clone());
            }
        }
        user.env = Some(e);
    }
    let labels = user.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in base.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if user.entrypoint.as_ref().is_none_or(|e| e.is_empty()) {
        if user.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            user.cmd = base.cmd.clone();
            match base.extra.get("ArgsEscaped") {
                Some(v) => user.extra.insert("ArgsEscaped".into(), v.clone()),
                None => user.extra.remove("ArgsEscaped"),
            };
        }
        if user.entrypoint.is_none() {
            user.entrypoint = base.entrypoint.clone();
        }
    }
    if let Some(bh) = base.extra.get("Healthcheck") {
        match user.extra.get_mut("Healthcheck") {
            None => {
                user.extra.insert("Healthcheck".into(), bh.clone());
            }
            Some(uh) => {
                if let (Some(u), Some(b)) = (uh.as_object_mut(), bh.as_object()) {
                    for (k, v) in b {
                        let empty = match u.get(k) {
                            None | Some(serde_json::Value::Null) => true,
                            Some(serde_json::Value::Array(a)) => a.is_empty(),
                            Some(serde_json::Value::Number(n)) => n.as_i64() == Some(0),
                            _ => false,
                        };
                        if empty {
                            u.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }
    if user.working_dir.as_deref().unwrap_or("").is_empty() {
        user.working_dir = base.working_dir.clone();
    }
    match (&mut user.volumes, &base.volumes) {
        (Some(u), Some(b)) if !u.is_empty() => {
            for (k, v) in b {
                u.insert(k.clone(), v.clone());
            }
        }
        (_, b) => {
            if user.volumes.as_ref().is_none_or(|u| u.is_empty()) {
                user.volumes = b.clone();
            }
        }
    }
    if user.stop_signal.as_deref().unwrap_or("").is_empty() {
        user.stop_signal = base.stop_signal.clone();
    }
}

/// For callers writing the layer tar: the digest of a tar without entries.
pub fn empty_tar_digest() -> Digest {
    Digest::of(&[0u8; 1024])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerConfig {
        ContainerConfig {
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "HOME=/root".into(),
            ]),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        }
    }

    fn apply(changes: &[&str]) -> Result<ContainerConfig> {
        let mut c = base();
        let v: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut c, &v).map(|_| c)
    }

    fn err(changes: &[&str]) -> String {
        apply(changes).unwrap_err().to_string()
    }

    fn s(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn forbidden_and_unknown_instructions_are_refused_in_dockers_words() {
        for (c, want) in [
            ("RUN x", "run is not a valid change command"),
            ("FROM busybox", "from is not a valid change command"),
            ("COPY a b", "copy is not a valid change command"),
            ("ADD a b", "add is not a valid change command"),
            ("SHELL [\"/bin/sh\"]", "shell is not a valid change command"),
            ("ARG x", "arg is not a valid change command"),
            ("MAINTAINER me", "maintainer is not a valid change command"),
            ("BOGUS x", "bogus is not a valid change command"),
        ] {
            assert_eq!(err(&[c]), want);
        }
        // Nothing is applied when one change is refused, even after valid ones.
        let mut c = base();
        assert!(apply_changes(&mut c, &["USER x".into(), "RUN y".into()]).is_err());
        assert_eq!(c, base());
    }

    #[test]
    fn cmd_and_entrypoint_json_and_shell_forms() {
        let c = apply(&["CMD [\"a\",\"b c\"]"]).unwrap();
        assert_eq!(c.cmd, s(&["a", "b c"]));
        let c = apply(&["cmd echo hi"]).unwrap();
        assert_eq!(c.cmd, s(&["/bin/sh", "-c", "echo hi"]));
        let c = apply(&["CMD ["]).unwrap();
        assert_eq!(c.cmd, s(&["/bin/sh", "-c", "["]));
        let c = apply(&["CMD"]).unwrap();
        assert_eq!(c.cmd, s(&["/bin/sh", "-c"]));
        // ENTRYPOINT drops the image's CMD unless a CMD came first.
        let c = apply(&["ENTRYPOINT a b"]).unwrap();
        assert_eq!(c.entrypoint, s(&["/bin/sh", "-c", "a b"]));
        assert_eq!(c.cmd, None);
        let c = apply(&["CMD y", "ENTRYPOINT [\"x\"]"]).unwrap();
        assert_eq!(c.entrypoint, s(&["x"]));
        assert_eq!(c.cmd, s(&["/bin/sh", "-c", "y"]));
        // A configured SHELL is used for the shell form.
        let mut b = base();
        b.extra
            .insert("Shell".into(), serde_json::json!(["/bin/bash", "-xc"]));
        apply_changes(&mut b, &["CMD ls".into()]).unwrap();
        assert_eq!(b.cmd, s(&["/bin/bash", "-xc", "ls"]));
    }

    #[test]
    fn env_forms_expansion_and_errors() {
        let c = apply(&["ENV A=1 B=\"two words\" HOME=/home/x"]).unwrap();
        let env = c.env.unwrap();
        assert!(env.contains(&"A=1".to_string()));
        assert!(env.contains(&"B=two words".to_string()));
        assert!(env.contains(&"HOME=/home/x".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        let c = apply(&["ENV A 1 2"]).unwrap();
        assert!(c.env.unwrap().contains(&"A=1 2".to_string()));
        let c = apply(&["ENV A \"q r\""]).unwrap();
        assert!(c.env.unwrap().contains(&"A=q r".to_string()));
        // Values expand from the environment before the instruction.
        let c = apply(&["ENV A=$HOME:/x B=${A} C=${NOPE:-d} D='$HOME'"]).unwrap();
        let env = c.env.unwrap();
        assert!(env.contains(&"A=/root:/x".to_string()), "{env:?}");
        assert!(env.contains(&"B=".to_string()), "{env:?}");
        assert!(env.contains(&"C=d".to_string()), "{env:?}");
        assert!(env.contains(&"D=$HOME".to_string()), "{env:?}");
        let c = apply(&["ENV D=${HOME:+alt} E=${HOME}x F=\"a\\\"b\" G=a\\\\b H=\"a\\\\b\" I=$"])
            .unwrap();
        let env = c.env.unwrap();
        for want in ["D=alt", "E=/rootx", "F=a\"b", "G=a\\b", "H=a\\b", "I=$"] {
            assert!(env.contains(&want.to_string()), "{want} not in {env:?}");
        }
        let c = apply(&["ENV A=1", "ENV B=$A"]).unwrap();
        assert!(c.env.unwrap().contains(&"B=1".to_string()));
        assert_eq!(err(&["ENV"]), "ENV requires at least one argument");
        assert_eq!(err(&["ENV A"]), "ENV must have two arguments");
        assert_eq!(err(&["ENV =1"]), "ENV names can not be blank");
        assert_eq!(
            err(&["ENV A=1 B"]),
            "Syntax error - can't find = in \"B\". Must be of the form: name=value"
        );
    }

    #[test]
    fn expose_ports_ranges_protocols_and_errors() {
        let c = apply(&[
            "EXPOSE 80/udp 443",
            "EXPOSE 8000-8002/TCP 9/sctp 8053:53 127.0.0.1:1:53",
        ])
        .unwrap();
        let keys: Vec<String> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(
            keys,
            ["443/tcp", "53/tcp", "80/udp", "8000/tcp", "8001/tcp", "8002/tcp", "9/sctp"]
        );
        assert_eq!(err(&["EXPOSE"]), "EXPOSE requires at least one argument");
        assert_eq!(err(&["EXPOSE abc"]), "Invalid containerPort: abc");
        assert_eq!(err(&["EXPOSE 70000"]), "Invalid containerPort: 70000");
        assert_eq!(err(&["EXPOSE 82-80"]), "Invalid containerPort: 82-80");
        assert_eq!(err(&["EXPOSE 1:2:53"]), "Invalid ip address: 1");
        assert_eq!(err(&["EXPOSE 80/xyz"]), "Invalid proto: xyz");
        assert_eq!(err(&["EXPOSE 80/XYZ"]), "Invalid proto: XYZ");
    }

    #[test]
    fn label_onbuild_stopsignal_user() {
        let c = apply(&["LABEL a=b \"c d\"=e f=g\\ h", "LABEL legacy value here"]).unwrap();
        let l = c.labels.unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["c d"], "e");
        assert_eq!(l["f"], "g h");
        assert_eq!(l["legacy"], "value here");
        assert_eq!(err(&["LABEL"]), "LABEL requires at least one argument");
        assert_eq!(err(&["LABEL a"]), "LABEL must have two arguments");
        assert_eq!(err(&["LABEL =1"]), "LABEL names can not be blank");
        // The legacy form splits at whitespace whatever the quotes say.
        assert_eq!(
            err(&["LABEL \"a b\""]),
            "failed to process \"\\\"a\": unexpected end of statement while looking for matching double-quote"
        );

        let c = apply(&["ONBUILD run x", "ONBUILD   ENV A=1  "]).unwrap();
        assert_eq!(
            c.extra["OnBuild"],
            serde_json::json!(["run x", "ENV A=1  "])
        );
        assert_eq!(err(&["ONBUILD"]), "ONBUILD requires at least one argument");
        assert_eq!(
            err(&["ONBUILD FROM x"]),
            "FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err(&["ONBUILD maintainer x"]),
            "MAINTAINER isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err(&["ONBUILD ONBUILD x"]),
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );

        // dockerd's list for commit leaves STOPSIGNAL out (checked on a live dockerd).
        assert_eq!(
            err(&["STOPSIGNAL SIGKILL"]),
            "stopsignal is not a valid change command"
        );

        assert_eq!(apply(&["USER a b"]).unwrap().user.as_deref(), Some("a b"));
        assert_eq!(apply(&["USER $NOPE"]).unwrap().user.as_deref(), Some(""));
        assert_eq!(
            apply(&["USER ${HOME}"]).unwrap().user.as_deref(),
            Some("/root")
        );
        assert_eq!(err(&["USER"]), "USER requires exactly one argument");
    }

    #[test]
    fn volume_workdir_healthcheck() {
        let c = apply(&["VOLUME /a /b", "VOLUME [\"/c\",\"/d\"]"]).unwrap();
        let v: Vec<String> = c.volumes.unwrap().into_keys().collect();
        assert_eq!(v, ["/a", "/b", "/c", "/d"]);
        assert_eq!(err(&["VOLUME"]), "VOLUME requires at least one argument");
        assert_eq!(
            err(&["VOLUME [\"\"]"]),
            "VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err(&["VOLUME \"\""]),
            "VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err(&["VOLUME /a \"/b c\""]),
            "failed to process \"\\\"/b\": unexpected end of statement while looking for matching double-quote"
        );

        assert_eq!(
            apply(&["WORKDIR rel"]).unwrap().working_dir.as_deref(),
            Some("/rel")
        );
        assert_eq!(
            apply(&["WORKDIR /x", "WORKDIR y/../z"])
                .unwrap()
                .working_dir
                .as_deref(),
            Some("/x/z")
        );
        assert_eq!(
            apply(&["WORKDIR a b"]).unwrap().working_dir.as_deref(),
            Some("/a b")
        );
        assert_eq!(
            apply(&["WORKDIR $HOME/w"]).unwrap().working_dir.as_deref(),
            Some("/root/w")
        );
        assert_eq!(err(&["WORKDIR"]), "WORKDIR requires exactly one argument");

        let c = apply(&["HEALTHCHECK --interval=5s --retries=2 CMD [\"a\",\"b\"]"]).unwrap();
        assert_eq!(
            c.extra["Healthcheck"],
            serde_json::json!({"Test": ["CMD", "a", "b"], "Interval": 5_000_000_000i64, "Retries": 2})
        );
        let c = apply(&["HEALTHCHECK --timeout=1m30s CMD curl -f x"]).unwrap();
        assert_eq!(
            c.extra["Healthcheck"],
            serde_json::json!({"Test": ["CMD-SHELL", "curl -f x"], "Timeout": 90_000_000_000i64})
        );
        let c = apply(&["HEALTHCHECK NONE"]).unwrap();
        assert_eq!(
            c.extra["Healthcheck"],
            serde_json::json!({"Test": ["NONE"]})
        );
        assert_eq!(err(&["HEALTHCHECK --bogus=1 CMD x"]), "Unknown flag: bogus");
        assert_eq!(
            err(&["HEALTHCHECK"]),
            "HEALTHCHECK requires at least one argument"
        );
    }

    #[test]
    fn lines_continue_and_comments_are_skipped() {
        let c = apply(&["CMD echo \\", " hi"]).unwrap();
        assert_eq!(c.cmd, s(&["/bin/sh", "-c", "echo  hi"]));
        let c = apply(&["# c", "", "cmd x"]).unwrap();
        assert_eq!(c.cmd, s(&["/bin/sh", "-c", "x"]));
        // One change may hold several lines.
        let c = apply(&["USER u\nWORKDIR /w"]).unwrap();
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
    }

    #[test]
    fn merge_fills_what_the_changes_left_empty() {
        let container = ContainerConfig {
            user: Some("u".into()),
            env: Some(vec!["A=1".into(), "B=2".into()]),
            cmd: Some(vec!["sh".into()]),
            labels: Some([("l".to_string(), "1".to_string())].into()),
            working_dir: Some("/w".into()),
            ..Default::default()
        };
        // ENTRYPOINT [] leaves cmd empty: the container's comes back, entrypoint stays empty.
        let mut c = container.clone();
        apply_changes(&mut c, &["ENTRYPOINT []".into(), "ENV B=3 C=4".into()]).unwrap();
        merge_config(&mut c, &container);
        assert_eq!(c.cmd, s(&["sh"]));
        assert_eq!(c.entrypoint, Some(vec![]));
        assert_eq!(c.env, s(&["A=1", "B=3", "C=4"]));
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.labels.unwrap()["l"], "1");
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("30s"), Some(30_000_000_000));
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(go_duration("5"), None);
        assert_eq!(go_duration("x"), None);
    }

    #[test]
    fn empty_tar_digest_is_dockers() {
        assert_eq!(
            empty_tar_digest().as_str(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
    }
}
