//! Image routes: pull, list, inspect, tag, remove, history, load, save, push, login, system df.
//!
//! Everything goes to the VCH's [`kic_image::ImageStore`] (`state.pl.images()`); which
//! containers use an image comes from the port layer. Names may hold slashes, a `:tag` or an
//! `@digest`, so `/images/{*rest}` is split on its last segment (`json`, `history`, `tag`,
//! `get`, `push`).

#[path = "images_filter.rs"]
pub mod filter;
#[path = "images_progress.rs"]
pub mod progress;
#[path = "images_transfer.rs"]
pub(crate) mod transfer;

use super::util::{flag, parse_filters, unix_of};
use super::{ApiError, ApiResult, AppState};
use crate::server::ApiVersion;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kic_image::{ErrorKind, ImageError, ImageRecord, PullOptions, PullProgress, Reference};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::sync::mpsc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images/create", post(create))
        .route("/images/json", get(list))
        .route("/images/search", get(search))
        .route("/images/get", get(transfer::save_many))
        .route("/images/load", post(transfer::load))
        .route("/images/prune", post(prune))
        .route(
            "/images/{*rest}",
            get(get_image).post(post_image).delete(delete_image),
        )
        .route("/auth", post(auth))
        .route("/system/df", get(system_df))
}

/// An image store error with dockerd's status.
pub(crate) fn image_error(e: ImageError) -> ApiError {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Invalid | ErrorKind::Unsafe => StatusCode::BAD_REQUEST,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unauthorized => {
            if e.to_string().starts_with("pull access denied") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::UNAUTHORIZED
            }
        }
        ErrorKind::Upstream | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

/// Runs blocking image-store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("image store task failed: {e}")))?
        .map_err(image_error)
}

fn short(id: &str) -> &str {
    let h = id.strip_prefix("sha256:").unwrap_or(id);
    &h[..h.len().min(12)]
}

/// The Go zero time dockerd prints for unknown times.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Registry access: whitelist, insecure registries, credentials.

/// `host[:port]` of a registry name as given to `docker login` or found in a reference.
fn registry_host(server: &str) -> String {
    let s = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    match s {
        "" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        s => s.to_string(),
    }
}

/// Does a whitelist entry (`host[:port]`, `*.domain`, `10.0.0.0/8`) allow `domain`?
fn whitelisted(entry: &str, domain: &str) -> bool {
    let raw = entry.trim();
    let is_cidr = raw
        .split_once('/')
        .is_some_and(|(n, b)| n.parse::<std::net::IpAddr>().is_ok() && b.parse::<u32>().is_ok());
    let entry = if is_cidr {
        raw.to_string()
    } else {
        registry_host(raw)
    };
    let (host, _) = split_port(domain);
    if entry == domain || entry == host {
        return true;
    }
    if let Some(suffix) = entry.strip_prefix("*.") {
        let (suffix, port) = split_port(suffix);
        let port_ok = match port {
            Some(p) => split_port(domain).1 == Some(p),
            None => true,
        };
        return port_ok && host.ends_with(&format!(".{suffix}"));
    }
    if let Some((net, bits)) = entry.split_once('/') {
        if let (Ok(net), Ok(bits), Ok(ip)) = (
            net.parse::<std::net::IpAddr>(),
            bits.parse::<u32>(),
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>(),
        ) {
            return match (net, ip) {
                (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) if bits <= 32 => {
                    let mask = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    u32::from(n) & mask == u32::from(i) & mask
                }
                (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) if bits <= 128 => {
                    let mask = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    u128::from(n) & mask == u128::from(i) & mask
                }
                _ => false,
            };
        }
    }
    false
}

fn split_port(d: &str) -> (&str, Option<&str>) {
    if d.starts_with('[') {
        return match d.rsplit_once("]:") {
            Some((h, p)) => (&d[..h.len() + 1], Some(p)),
            None => (d, None),
        };
    }
    match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (d, None),
    }
}

/// Refuses registries outside the VCH's whitelist, naming it.
pub(crate) fn check_whitelist(state: &AppState, domain: &str) -> ApiResult<()> {
    let wl = &state.cfg.registries.whitelist;
    if wl.is_empty() || wl.iter().any(|e| whitelisted(e, domain)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "Access denied to unauthorized registry ({domain}) while VCH is in whitelist mode; allowed registries: {}",
            wl.join(", ")
        ),
    ))
}

/// Credentials from `X-Registry-Auth` (base64url JSON `AuthConfig`).
pub(crate) fn registry_auth(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let raw = headers.get("x-registry-auth")?.to_str().ok()?.trim();
    if raw.is_empty() {
        return None;
    }
    let engines = [
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let bytes = engines.iter().find_map(|e| e.decode(raw).ok())?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    auth_config_credentials(&v)
}

/// Username and secret of a Docker `AuthConfig` (`username`/`password`, `auth`, or an
/// `identitytoken`).
fn auth_config_credentials(v: &Value) -> Option<(String, String)> {
    use base64::Engine as _;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (mut user, mut pass) = (s("username"), s("password"));
    if user.is_empty() {
        if let Some((u, p)) = base64::engine::general_purpose::STANDARD
            .decode(s("auth"))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|a| {
                a.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        {
            user = u;
            pass = p;
        }
    }
    if pass.is_empty() && !s("identitytoken").is_empty() {
        pass = s("identitytoken");
        if user.is_empty() {
            user = "<token>".into();
        }
    }
    (!user.is_empty()).then_some((user, pass))
}

pub(crate) fn pull_options(state: &AppState, headers: &HeaderMap) -> PullOptions {
    PullOptions {
        insecure_registries: state.cfg.registries.insecure.clone(),
        credentials: registry_auth(headers),
        ca_files: state.cfg.registries.ca.clone(),
        ..PullOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// POST /images/create (docker pull)

#[derive(Deserialize)]
struct CreateQuery {
    #[serde(rename = "fromImage")]
    from_image: Option<String>,
    #[serde(rename = "fromSrc")]
    from_src: Option<String>,
    tag: Option<String>,
    platform: Option<String>,
}

enum PullEvent {
    Progress(PullProgress),
    Done(Box<Result<ImageRecord, ImageError>>),
}

/// The reference a pull asks for: `fromImage` with `tag` (a tag or a digest).
fn pull_reference(from: &str, tag: Option<&str>) -> ApiResult<Reference> {
    let name = match tag.filter(|t| !t.is_empty()) {
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.to_string(),
    };
    Reference::parse(&name).map_err(image_error)
}

fn familiar_of(r: &Reference) -> String {
    let repo = r.familiar_repository();
    match (&r.digest, &r.tag) {
        (Some(d), _) => format!("{repo}@{d}"),
        (None, Some(t)) => format!("{repo}:{t}"),
        (None, None) => repo,
    }
}

fn check_platform(p: Option<&str>) -> ApiResult<()> {
    let Some(p) = p.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let mut parts = p.split('/');
    let os = parts.next().unwrap_or("");
    let arch = parts.next().unwrap_or("amd64");
    let ok = os == "linux" && matches!(arch, "amd64" | "x86_64" | "x86-64");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "no matching manifest for {p} in the manifest list entries: KIC runs linux/amd64 container VMs only"
        )))
    }
}

/// Does `fromImage` name a tag or digest itself (`busybox:1`, `x@sha256:..`)?
fn names_tag_or_digest(from: &str) -> bool {
    from.contains('@')
        || from
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CreateQuery>,
) -> ApiResult<Response> {
    if q.from_src.is_some() {
        return Err(ApiError::unsupported("docker import"));
    }
    let from = q
        .from_image
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage or fromSrc is required"))?;
    check_platform(q.platform.as_deref())?;
    let r = pull_reference(&from, q.tag.as_deref())?;
    check_whitelist(&state, &r.domain)?;
    let opts = pull_options(&state, &headers);
    let store = state.pl.images().clone();
    // No tag anywhere (`docker pull --all-tags`): every tag of the repository, as dockerd.
    let all_tags = q.tag.as_deref().unwrap_or("").is_empty() && !names_tag_or_digest(&from);
    let refs: Vec<Reference> = if all_tags {
        let tags = store
            .list_tags(&r.to_string(), &opts)
            .await
            .map_err(image_error)?;
        let mut refs = Vec::new();
        for t in tags {
            let mut x = r.clone();
            x.tag = Some(t);
            refs.push(x);
        }
        // dockerd starts with `latest`.
        refs.sort_by_key(|x| x.tag.as_deref() != Some("latest"));
        if refs.is_empty() {
            return Err(ApiError::not_found(format!(
                "repository {} has no tags",
                r.familiar_repository()
            )));
        }
        refs
    } else {
        vec![r.clone()]
    };
    let mut before = Vec::new();
    for x in &refs {
        let s = store.clone();
        let f = familiar_of(x);
        before.push(
            tokio::task::spawn_blocking(move || s.get(&f).ok().map(|r| r.id))
                .await
                .ok()
                .flatten(),
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PullEvent>();
    {
        let refs = refs.clone();
        tokio::spawn(async move {
            for x in refs {
                let ptx = tx.clone();
                let cb = move |p: PullProgress| {
                    let _ = ptx.send(PullEvent::Progress(p));
                };
                let res = store.pull(&x.to_string(), &opts, &cb).await;
                let failed = res.is_err();
                let _ = tx.send(PullEvent::Done(Box::new(res)));
                if failed {
                    break;
                }
            }
        });
    }
    // Nothing is written until the first event: errors before it get their HTTP status.
    let first = rx
        .recv()
        .await
        .ok_or_else(|| ApiError::internal("the pull ended without a result"))?;
    let first = match first {
        PullEvent::Done(res) => match *res {
            Err(e) => return Err(image_error(e)),
            ok => PullEvent::Done(Box::new(ok)),
        },
        p => p,
    };
    let (btx, brx) = mpsc::channel::<Bytes>(64);
    let events = state.events.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        let mut changed = false;
        for (i, x) in refs.iter().enumerate() {
            let familiar = familiar_of(x);
            let id_field = x
                .digest
                .as_ref()
                .map(|d| d.to_string())
                .or(x.tag.clone())
                .unwrap_or_else(|| "latest".into());
            let header =
                progress::status(&format!("Pulling from {}", x.repository), Some(&id_field));
            let _ = btx.send(progress::line(&header)).await;
            let mut held: Vec<Value> = Vec::new();
            let mut layer_work = false;
            loop {
                let ev = match next.take() {
                    Some(e) => e,
                    None => match rx.recv().await {
                        Some(e) => e,
                        None => return,
                    },
                };
                match ev {
                    PullEvent::Progress(p) => {
                        let line = progress::layer(&p.status, &p.id, p.current, p.total);
                        if p.status == "Already exists" && !layer_work {
                            // Shown only if this pull brings something new (else the whole
                            // image was there and dockerd lists no layers).
                            held.push(line);
                            continue;
                        }
                        layer_work = true;
                        for h in held.drain(..) {
                            let _ = btx.send(progress::line(&h)).await;
                        }
                        if btx.send(progress::line(&line)).await.is_err() {
                            tracing::debug!("pull client went away; the pull goes on");
                        }
                    }
                    PullEvent::Done(res) => {
                        let rec = match *res {
                            Ok(rec) => rec,
                            Err(e) => {
                                let _ = btx
                                    .send(progress::line(&progress::error(&e.to_string())))
                                    .await;
                                return;
                            }
                        };
                        let up_to_date = before[i].as_deref() == Some(rec.id.as_str());
                        changed |= !up_to_date;
                        let _ = btx
                            .send(progress::line(&progress::status(
                                &format!("Digest: {}", rec.manifest_digest),
                                None,
                            )))
                            .await;
                        if !all_tags {
                            let msg = if up_to_date {
                                format!("Status: Image is up to date for {familiar}")
                            } else {
                                format!("Status: Downloaded newer image for {familiar}")
                            };
                            let _ = btx
                                .send(progress::line(&progress::status(&msg, None)))
                                .await;
                        }
                        events.image("pull", &familiar, &familiar);
                        break;
                    }
                }
            }
        }
        if all_tags {
            let repo = refs[0].familiar_repository();
            let msg = if changed {
                format!("Status: Downloaded newer image for {repo}")
            } else {
                format!("Status: Image is up to date for {repo}")
            };
            let _ = btx
                .send(progress::line(&progress::status(&msg, None)))
                .await;
        }
    });
    Ok(json_stream(brx))
}

/// A streamed `application/json` body from a channel of lines.
pub(crate) fn json_stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

// ---------------------------------------------------------------------------------------------
// GET /images/json

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
    filters: Option<String>,
    #[serde(rename = "shared-size")]
    shared_size: Option<String>,
    manifests: Option<String>,
    digests: Option<String>,
}

/// Containers per image id, from the port layer.
fn containers_by_image(state: &AppState) -> HashMap<String, Vec<(String, bool)>> {
    let mut m: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for c in state.pl.list() {
        m.entry(c.config.image_id.clone()).or_default().push((
            c.config.id.clone(),
            c.state.status == kic_portlayer::Status::Running,
        ));
    }
    m
}

fn summary(
    img: &ImageRecord,
    tags: Vec<String>,
    digests: Vec<String>,
    containers: i64,
    shared: i64,
) -> Value {
    json!({
        "Id": img.id,
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": unix_of(Some(&img.created)),
        "Size": img.size,
        "SharedSize": shared,
        "Labels": img.config.config.labels,
        "Containers": containers,
    })
}

async fn list(
    State(state): State<AppState>,
    version: Option<axum::Extension<ApiVersion>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let old = version.is_some_and(|v| v.0 < ApiVersion(1, 44));
    let _ = (&q.all, &q.manifests, &q.digests);
    let f = parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    collect_orphan_disks(&state).await;
    let store = state.pl.images().clone();
    let images = blocking(move || store.list()).await?;
    let lookup = state.pl.images().clone();
    let created_of = |name: &str| -> Result<i64, String> {
        lookup
            .get(name)
            .map(|i| unix_of(Some(&i.created)))
            .map_err(|e| e.to_string())
    };
    let filters = filter::ImageFilters::parse(&f, created_of).map_err(|m| {
        if m.starts_with("No such image") {
            ApiError::not_found(m)
        } else {
            ApiError::bad_request(m)
        }
    })?;
    let shared = if flag(&q.shared_size) {
        Some(shared_sizes(&state, &images).await?)
    } else {
        None
    };
    let mut out = Vec::new();
    for img in &images {
        let created = unix_of(Some(&img.created));
        if let Some((tags, digests)) = filters.apply(img, created) {
            let s = shared
                .as_ref()
                .and_then(|m| m.get(&img.id).copied())
                .unwrap_or(-1);
            let mut row = summary(img, tags, digests, -1, s);
            if old {
                row["VirtualSize"] = json!(img.size);
            }
            out.push(row);
        }
    }
    Ok(Json(Value::Array(out)))
}

/// Per image: bytes of its layers that other images share, and the size of every distinct
/// layer (for `LayersSize`).
async fn layer_table(
    state: &AppState,
    images: &[ImageRecord],
) -> ApiResult<(HashMap<String, Vec<(String, u64)>>, BTreeMap<String, u64>)> {
    let store = state.pl.images().clone();
    let ids: Vec<String> = images.iter().map(|i| i.id.clone()).collect();
    blocking(move || {
        let mut per_image = HashMap::new();
        let mut layers = BTreeMap::new();
        for id in ids {
            let parts = store.parts(&id)?;
            let sizes = store.layer_sizes(&id)?;
            let v: Vec<(String, u64)> = parts
                .manifest
                .layers
                .iter()
                .map(|l| l.digest.to_string())
                .zip(sizes)
                .collect();
            for (d, s) in &v {
                layers.insert(d.clone(), *s);
            }
            per_image.insert(id, v);
        }
        Ok((per_image, layers))
    })
    .await
}

async fn shared_sizes(state: &AppState, images: &[ImageRecord]) -> ApiResult<HashMap<String, i64>> {
    let (per_image, _) = layer_table(state, images).await?;
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for v in per_image.values() {
        for (d, _) in v {
            *uses.entry(d.as_str()).or_default() += 1;
        }
    }
    Ok(per_image
        .iter()
        .map(|(id, v)| {
            let s: u64 = v
                .iter()
                .filter(|(d, _)| uses.get(d.as_str()).copied().unwrap_or(0) > 1)
                .map(|(_, s)| *s)
                .sum();
            (id.clone(), s as i64)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// /images/{name}/json, /history, /tag, /push, /get and DELETE /images/{name}

/// Splits `busybox:latest/json` into (`busybox:latest`, `json`).
fn split_action(rest: &str) -> (&str, &str) {
    let rest = rest.trim_start_matches('/');
    match rest.rsplit_once('/') {
        Some((name, action)) => (name, action),
        None => (rest, ""),
    }
}

async fn get_image(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    version: Option<axum::Extension<ApiVersion>>,
    raw: axum::extract::RawQuery,
) -> ApiResult<Response> {
    let (name, action) = split_action(&rest);
    let version = version.map(|v| v.0).unwrap_or_else(ApiVersion::newest);
    match action {
        "json" => inspect(&state, name, version)
            .await
            .map(|j| j.into_response()),
        "history" => history(&state, name).await.map(|j| j.into_response()),
        "get" => transfer::save_one(state, name.to_string()).await,
        _ => {
            let _ = raw;
            Err(ApiError::not_found(format!(
                "page not found: GET /images/{rest}"
            )))
        }
    }
}

async fn post_image(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    raw: axum::extract::RawQuery,
) -> ApiResult<Response> {
    let (name, action) = split_action(&rest);
    let q = transfer::query_pairs(raw.0.as_deref().unwrap_or(""));
    let one = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match action {
        "tag" => tag(&state, name, one("repo"), one("tag")).await,
        "push" => transfer::push(state, name.to_string(), one("tag"), headers).await,
        _ => Err(ApiError::not_found(format!(
            "page not found: POST /images/{rest}"
        ))),
    }
}

/// The container-config fields dockerd showed in an image's `Config` before API 1.50.
const LEGACY_CONFIG: [(&str, bool); 9] = [
    ("Hostname", false),
    ("Domainname", false),
    ("AttachStdin", true),
    ("AttachStdout", true),
    ("AttachStderr", true),
    ("Tty", true),
    ("OpenStdin", true),
    ("StdinOnce", true),
    ("Image", false),
];

/// dockerd's image config as `docker image inspect` shows it.
fn config_json(img: &ImageRecord, legacy: bool) -> Value {
    let mut c = match serde_json::to_value(&img.config.config) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if legacy {
        for (k, boolean) in LEGACY_CONFIG {
            c.entry(k.to_string())
                .or_insert(if boolean { json!(false) } else { json!("") });
        }
    }
    for (k, default) in [
        ("User", json!("")),
        ("Env", Value::Null),
        ("Cmd", Value::Null),
        ("WorkingDir", json!("")),
        ("Entrypoint", Value::Null),
        ("OnBuild", Value::Null),
        ("Labels", Value::Null),
    ] {
        c.entry(k.to_string()).or_insert(default);
    }
    Value::Object(c)
}

async fn inspect(state: &AppState, name: &str, version: ApiVersion) -> ApiResult<Json<Value>> {
    let store = state.pl.images().clone();
    let n = name.to_string();
    let img = blocking(move || store.get(&n)).await?;
    let extra = &img.config.extra;
    let s = |k: &str| {
        extra
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let comment = img
        .config
        .history
        .last()
        .and_then(|h| h.comment.clone())
        .unwrap_or_default();
    let mut v = json!({
        "Id": img.id,
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Parent": "",
        "Comment": comment,
        "Created": if img.created.is_empty() { ZERO_TIME.to_string() } else { img.created.clone() },
        "DockerVersion": s("docker_version"),
        "Author": img.config.author.clone().unwrap_or_default(),
        "Config": config_json(&img, version < ApiVersion(1, 50)),
        "Architecture": img.config.architecture,
        "Os": img.config.os,
        "Size": img.size,
        "GraphDriver": {
            "Name": "kic-image-disk",
            "Data": { "ImageDisk": img.disk.display().to_string() },
        },
        "RootFS": {
            "Type": "layers",
            "Layers": img.config.rootfs.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "Metadata": { "LastTagTime": ZERO_TIME },
    });
    if let Some(var) = &img.config.variant {
        v["Variant"] = json!(var);
    }
    if version < ApiVersion(1, 44) {
        v["VirtualSize"] = json!(img.size);
    }
    if version < ApiVersion(1, 45) {
        v["Container"] = json!("");
        let mut cc = Map::new();
        for (k, boolean) in LEGACY_CONFIG {
            cc.insert(k.into(), if boolean { json!(false) } else { json!("") });
        }
        for k in ["Env", "Cmd", "Volumes", "Entrypoint", "OnBuild", "Labels"] {
            cc.insert(k.into(), Value::Null);
        }
        cc.insert("User".into(), json!(""));
        cc.insert("WorkingDir".into(), json!(""));
        v["ContainerConfig"] = Value::Object(cc);
    }
    if let Some(osv) = extra.get("os.version") {
        v["OsVersion"] = osv.clone();
    }
    Ok(Json(v))
}

async fn history(state: &AppState, name: &str) -> ApiResult<Json<Value>> {
    let store = state.pl.images().clone();
    let n = name.to_string();
    let (img, sizes) = blocking(move || {
        let img = store.get(&n)?;
        let sizes = store.layer_sizes(&img.id)?;
        Ok((img, sizes))
    })
    .await?;
    let mut rows = Vec::new();
    let mut layer = 0usize;
    if img.config.history.is_empty() {
        for (i, s) in sizes.iter().enumerate() {
            rows.push(json!({
                "Id": "<missing>",
                "Created": unix_of(Some(&img.created)),
                "CreatedBy": "",
                "Tags": Value::Null,
                "Size": s,
                "Comment": format!("layer {}", i + 1),
            }));
        }
    } else {
        for h in &img.config.history {
            let size = if h.empty_layer.unwrap_or(false) {
                0
            } else {
                let s = sizes.get(layer).copied().unwrap_or(0);
                layer += 1;
                s
            };
            rows.push(json!({
                "Id": "<missing>",
                "Created": unix_of(h.created.as_deref()),
                "CreatedBy": h.created_by.clone().unwrap_or_default(),
                "Tags": Value::Null,
                "Size": size,
                "Comment": h.comment.clone().unwrap_or_default(),
            }));
        }
    }
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top["Id"] = json!(img.id);
        top["Tags"] = if img.repo_tags.is_empty() {
            Value::Null
        } else {
            json!(img.repo_tags)
        };
    }
    Ok(Json(Value::Array(rows)))
}

async fn tag(
    state: &AppState,
    name: &str,
    repo: Option<String>,
    tag: Option<String>,
) -> ApiResult<Response> {
    let repo = repo
        .ok_or_else(|| ApiError::bad_request("repository name must have at least one component"))?;
    let new_ref = match tag {
        Some(t) => format!("{repo}:{t}"),
        None => repo,
    };
    let r = Reference::parse(&new_ref).map_err(image_error)?;
    if r.digest.is_some() {
        return Err(ApiError::bad_request(
            "refusing to create a tag with a digest reference",
        ));
    }
    let store = state.pl.images().clone();
    let n = name.to_string();
    let nr = new_ref.clone();
    let id = blocking(move || {
        let img = store.get(&n)?;
        store.tag(&img.id, &nr)?;
        Ok(img.id)
    })
    .await?;
    state.events.image("tag", &id, &familiar_of(&r));
    Ok(StatusCode::CREATED.into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    force: Option<String>,
    noprune: Option<String>,
}

/// dockerd's `isSingleReference`: at most one tag, and every reference in one repository.
fn single_reference(refs: &[String]) -> bool {
    if refs.len() <= 1 {
        return refs.len() == 1;
    }
    let repo = |k: &str| {
        Reference::parse(k)
            .map(|r| r.full_repository())
            .unwrap_or_default()
    };
    let mut single: Option<&String> = None;
    let mut canonical = BTreeSet::new();
    for r in refs {
        if r.contains('@') {
            canonical.insert(repo(r));
        } else if single.is_none() {
            single = Some(r);
        } else {
            return false;
        }
    }
    let single = single.unwrap_or(&refs[0]);
    canonical.len() == 1 && canonical.contains(&repo(single))
}

/// What stands in the way of deleting an image (dockerd's `checkImageDeleteConflict`).
pub(crate) fn delete_conflict(
    image_id: &str,
    users: &[(String, bool)],
    hard_only: bool,
    refs_left: bool,
) -> Option<(ApiError, bool)> {
    let img = short(image_id);
    if let Some((c, _)) = users.iter().find(|(_, running)| *running) {
        return Some((
            ApiError::conflict(format!(
                "conflict: unable to delete {img} (cannot be forced) - image is being used by running container {}",
                short(c)
            )),
            true,
        ));
    }
    if hard_only {
        return None;
    }
    if refs_left {
        return Some((
            ApiError::conflict(format!(
                "conflict: unable to delete {img} (must be forced) - image is referenced in multiple repositories"
            )),
            false,
        ));
    }
    if let Some((c, _)) = users.first() {
        return Some((
            ApiError::conflict(format!(
                "conflict: unable to delete {img} (must be forced) - image is being used by stopped container {}",
                short(c)
            )),
            true,
        ));
    }
    None
}

async fn delete_image(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let _ = &q.noprune;
    let force = flag(&q.force);
    let name = name.trim_start_matches('/').to_string();
    let store = state.pl.images().clone();
    let n = name.clone();
    let (img, refs) = blocking(move || {
        let img = store.get(&n)?;
        let refs = store.references_of(&img.id)?;
        Ok((img, refs))
    })
    .await?;
    let users = containers_by_image(&state)
        .remove(&img.id)
        .unwrap_or_default();
    let hex = img.id.strip_prefix("sha256:").unwrap_or(&img.id);
    let by_id = img.id.starts_with(&name) || hex.starts_with(&name);
    let mut records: Vec<Value> = Vec::new();
    let store = state.pl.images().clone();
    let quiet;
    if !by_id {
        if !force && single_reference(&refs) {
            if let Some((c, _)) = users.first() {
                return Err(ApiError::conflict(format!(
                    "conflict: unable to remove repository reference {name:?} (must force) - container {} is using its referenced image {}",
                    short(c),
                    short(&img.id)
                )));
            }
        }
        let n = name.clone();
        let s = store.clone();
        let (_, untagged) = blocking(move || s.untag(&n)).await?;
        for u in untagged {
            state.events.image("untag", &img.id, &img.id);
            records.push(json!({ "Untagged": u }));
        }
        let s = store.clone();
        let id = img.id.clone();
        let left = blocking(move || s.references_of(&id)).await?;
        if !left.is_empty() {
            return Ok(Json(Value::Array(records)));
        }
        quiet = true;
    } else {
        if single_reference(&refs) {
            if let Some((e, _)) = delete_conflict(&img.id, &users, force, false) {
                return Err(e);
            }
            for r in &refs {
                let s = store.clone();
                let k = r.clone();
                // Removing a repository's last tag took its digest references along.
                let gone = |e: &ImageError| e.kind() == ErrorKind::NotFound;
                let untagged = match tokio::task::spawn_blocking(move || s.untag(&k)).await {
                    Ok(Ok((_, u))) => u,
                    Ok(Err(e)) if gone(&e) => continue,
                    Ok(Err(e)) => return Err(image_error(e)),
                    Err(e) => {
                        return Err(ApiError::internal(format!("image store task failed: {e}")))
                    }
                };
                for u in untagged {
                    state.events.image("untag", &img.id, &img.id);
                    records.push(json!({ "Untagged": u }));
                }
            }
        }
        quiet = false;
    }
    // dockerd's imageDeleteHelper.
    let s = store.clone();
    let id = img.id.clone();
    let left = blocking(move || s.references_of(&id)).await?;
    if let Some((e, used)) = delete_conflict(&img.id, &users, force, !left.is_empty()) {
        if quiet && used {
            // The last reference went; the image stays (dangling) for its containers.
            return Ok(Json(Value::Array(records)));
        }
        return Err(e);
    }
    // Stopped containers (force) keep the image id, as with dockerd, and their disks stay
    // backed by the image disk: it is kept until the last of them is removed.
    let s = store.clone();
    let id = img.id.clone();
    let keep_disk = !users.is_empty();
    let lines = blocking(move || s.remove_image_with(&id, true, keep_disk)).await?;
    for l in lines {
        if let Some(u) = l.strip_prefix("Untagged: ") {
            state.events.image("untag", &img.id, &img.id);
            records.push(json!({ "Untagged": u }));
        } else if let Some(d) = l.strip_prefix("Deleted: ") {
            state.events.image("delete", &img.id, &img.id);
            records.push(json!({ "Deleted": d }));
        }
    }
    collect_orphan_disks(&state).await;
    Ok(Json(Value::Array(records)))
}

/// Deletes image disks kept for containers (an image removed with `rmi -f` while stopped
/// containers used it) once no container of this VCH uses them. Cheap (one directory listing);
/// run after image removals, on listings, and worth calling after a container is removed.
pub async fn collect_orphan_disks(state: &AppState) {
    let in_use: BTreeSet<std::path::PathBuf> = state
        .pl
        .list()
        .into_iter()
        .map(|c| c.config.image_disk)
        .collect();
    let store = state.pl.images().clone();
    let res = blocking(move || {
        // A disk being built lands a moment before its image's metadata: leave young ones.
        for d in store.orphan_disks(std::time::Duration::from_secs(60))? {
            if !in_use.contains(&d) {
                tracing::info!(
                    "removing image disk {} (its image is gone, no container uses it)",
                    d.display()
                );
                store.remove_orphan_disk(&d)?;
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = res {
        tracing::warn!("collecting unused image disks: {}", e.message);
    }
}

// ---------------------------------------------------------------------------------------------
// POST /images/prune

async fn prune(
    State(state): State<AppState>,
    raw: axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
    let q = transfer::query_pairs(raw.0.as_deref().unwrap_or(""));
    let filters = q
        .iter()
        .find(|(k, _)| k == "filters")
        .map(|(_, v)| v.clone());
    let f = parse_filters(filters.as_deref()).map_err(ApiError::bad_request)?;
    super::util::check_filter_keys(&f, &["dangling", "label", "until"])
        .map_err(ApiError::bad_request)?;
    let all = f
        .get("dangling")
        .is_some_and(|v| v.iter().any(|x| x == "false" || x == "0"));
    let store = state.pl.images().clone();
    let images = blocking(move || store.list()).await?;
    let used = containers_by_image(&state);
    let nofilter =
        |_: &str| -> Result<i64, String> { Err("before/since are not prune filters".into()) };
    let mut pf = f.clone();
    pf.remove("dangling");
    let filters = filter::ImageFilters::parse(&pf, nofilter).map_err(ApiError::bad_request)?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for img in images {
        // dockerd's prune: dangling means no reference at all (tag or digest).
        let dangling = img.repo_tags.is_empty() && img.repo_digests.is_empty();
        if used.contains_key(&img.id) || (!all && !dangling) {
            continue;
        }
        if filters.apply(&img, unix_of(Some(&img.created))).is_none() {
            continue;
        }
        let s = state.pl.images().clone();
        let id = img.id.clone();
        let lines = blocking(move || s.remove_image(&id, true)).await?;
        for l in lines {
            if let Some(u) = l.strip_prefix("Untagged: ") {
                state.events.image("untag", &img.id, &img.id);
                deleted.push(json!({ "Untagged": u }));
            } else if let Some(d) = l.strip_prefix("Deleted: ") {
                state.events.image("delete", &img.id, &img.id);
                deleted.push(json!({ "Deleted": d }));
                reclaimed += img.size;
            }
        }
    }
    collect_orphan_disks(&state).await;
    Ok(Json(json!({
        "ImagesDeleted": if deleted.is_empty() { Value::Null } else { Value::Array(deleted) },
        "SpaceReclaimed": reclaimed,
    })))
}

// ---------------------------------------------------------------------------------------------
// GET /images/search, POST /auth

async fn search() -> ApiError {
    ApiError::unsupported("docker search")
}

async fn auth(State(state): State<AppState>, Json(body): Json<Value>) -> ApiResult<Json<Value>> {
    let server = body
        .get("serveraddress")
        .and_then(Value::as_str)
        .unwrap_or("");
    let domain = registry_host(server);
    check_whitelist(&state, &domain)?;
    let creds = auth_config_credentials(&body);
    let opts = kic_image::registry::RegistryOptions {
        insecure_registries: state.cfg.registries.insecure.clone(),
        credentials: creds,
        ca_files: state.cfg.registries.ca.clone(),
    };
    kic_image::registry::login(&domain, &opts)
        .await
        .map_err(image_error)?;
    Ok(Json(
        json!({ "Status": "Login Succeeded", "IdentityToken": "" }),
    ))
}

// ---------------------------------------------------------------------------------------------
// GET /system/df

async fn system_df(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    collect_orphan_disks(&state).await;
    let store = state.pl.images().clone();
    let images = blocking(move || store.list()).await?;
    let (per_image, layers) = layer_table(&state, &images).await?;
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for v in per_image.values() {
        for (d, _) in v {
            *uses.entry(d.as_str()).or_default() += 1;
        }
    }
    let by_image = containers_by_image(&state);
    let mut out_images = Vec::new();
    for img in &images {
        let shared: u64 = per_image
            .get(&img.id)
            .map(|v| {
                v.iter()
                    .filter(|(d, _)| uses.get(d.as_str()).copied().unwrap_or(0) > 1)
                    .map(|(_, s)| *s)
                    .sum()
            })
            .unwrap_or(0);
        let n = by_image.get(&img.id).map(|v| v.len()).unwrap_or(0) as i64;
        out_images.push(summary(
            img,
            img.repo_tags.clone(),
            img.repo_digests.clone(),
            n,
            shared as i64,
        ));
    }
    let sizes: HashMap<&str, u64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
    let ds = kic_portlayer::layout::Layout::new(state.pl.datastore());
    let now = chrono::Utc::now().timestamp();
    let mut containers = Vec::new();
    for c in state.pl.list() {
        let disk = ds.container(&c.config.id).disk();
        let rw = std::fs::metadata(&disk)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .unwrap_or(0);
        let st = &c.state;
        let status = match st.status {
            kic_portlayer::Status::Running => format!(
                "Up {}",
                super::util::human_duration(now - unix_of(st.started_at.as_deref()))
            ),
            kic_portlayer::Status::Created => "Created".to_string(),
            kic_portlayer::Status::Exited | kic_portlayer::Status::Dead => format!(
                "Exited ({}) {} ago",
                st.exit_code.unwrap_or(0),
                super::util::human_duration(now - unix_of(st.finished_at.as_deref()))
            ),
        };
        let command = c
            .config
            .spec
            .main
            .args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        containers.push(json!({
            "Id": c.config.id,
            "Names": [format!("/{}", c.config.name)],
            "Image": c.config.image,
            "ImageID": c.config.image_id,
            "Command": command,
            "Created": unix_of(Some(&c.config.created)),
            "State": st.status.as_str(),
            "Status": status,
            "SizeRw": rw,
            "SizeRootFs": rw + sizes.get(c.config.image_id.as_str()).copied().unwrap_or(0),
            "Labels": c.config.labels,
            "Ports": [],
            "Mounts": [],
            "HostConfig": { "NetworkMode": "default" },
            "NetworkSettings": { "Networks": {} },
        }));
    }
    let volumes: Vec<Value> = state
        .pl
        .volume_list()
        .iter()
        .map(|v| {
            use std::os::unix::fs::MetadataExt;
            let size = std::fs::metadata(v.disk())
                .map(|m| m.blocks() * 512)
                .unwrap_or(0);
            let mut j = super::volumes::volume_json(v);
            j["UsageData"] = json!({
                "Size": size,
                "RefCount": state.pl.volume_users(&v.meta.name).len(),
            });
            j
        })
        .collect();
    Ok(Json(json!({
        "LayersSize": layers.values().sum::<u64>(),
        "Images": out_images,
        "Containers": containers,
        "Volumes": volumes,
        "BuildCache": [],
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitelist_entries() {
        assert!(whitelisted("127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(whitelisted("127.0.0.1", "127.0.0.1:5000"));
        assert!(!whitelisted("127.0.0.1:5001", "127.0.0.1:5000"));
        assert!(whitelisted("*.example.com", "reg.example.com"));
        assert!(whitelisted("*.example.com", "reg.example.com:443"));
        assert!(!whitelisted("*.example.com", "example.org"));
        assert!(whitelisted("10.0.0.0/8", "10.1.2.3:5000"));
        assert!(!whitelisted("10.0.0.0/8", "11.1.2.3:5000"));
        assert!(whitelisted("https://index.docker.io/v1/", "docker.io"));
    }

    #[test]
    fn auth_header_decodes() {
        use base64::Engine as _;
        let mut h = HeaderMap::new();
        let j = r#"{"username":"u","password":"p?>","serveraddress":"127.0.0.1:5000"}"#;
        let enc = base64::engine::general_purpose::URL_SAFE.encode(j);
        h.insert("x-registry-auth", enc.parse().unwrap());
        assert_eq!(registry_auth(&h), Some(("u".into(), "p?>".into())));
        let a = base64::engine::general_purpose::STANDARD.encode("x:y");
        let j = format!(r#"{{"auth":"{a}"}}"#);
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j);
        h.insert("x-registry-auth", enc.parse().unwrap());
        assert_eq!(registry_auth(&h), Some(("x".into(), "y".into())));
        h.insert("x-registry-auth", "e30=".parse().unwrap());
        assert_eq!(registry_auth(&h), None);
    }

    #[test]
    fn pull_references() {
        let r = pull_reference("busybox", Some("latest")).unwrap();
        assert_eq!(familiar_of(&r), "busybox:latest");
        let d = format!("sha256:{}", "b".repeat(64));
        let r = pull_reference("127.0.0.1:5000/library/busybox", Some(&d)).unwrap();
        assert_eq!(
            familiar_of(&r),
            format!("127.0.0.1:5000/library/busybox@{d}")
        );
        assert_eq!(r.repository, "library/busybox");
        assert!(pull_reference("Bad", None).is_err());
        assert!(check_platform(Some("linux/amd64")).is_ok());
        assert!(check_platform(Some("linux/arm64")).is_err());
        assert!(names_tag_or_digest("busybox:1"));
        assert!(names_tag_or_digest("127.0.0.1:5000/x:1"));
        assert!(names_tag_or_digest(&format!("x@{d}")));
        assert!(!names_tag_or_digest("127.0.0.1:5000/x"));
        assert!(!names_tag_or_digest("busybox"));
    }

    #[test]
    fn action_split() {
        assert_eq!(
            split_action("127.0.0.1:5000/library/busybox:latest/json"),
            ("127.0.0.1:5000/library/busybox:latest", "json")
        );
        assert_eq!(split_action("/busybox/tag"), ("busybox", "tag"));
    }

    #[test]
    fn single_references() {
        let d = format!("docker.io/library/busybox@sha256:{}", "c".repeat(64));
        assert!(single_reference(&[
            "docker.io/library/busybox:latest".into()
        ]));
        assert!(single_reference(&[
            "docker.io/library/busybox:latest".into(),
            d.clone()
        ]));
        assert!(!single_reference(&[
            "docker.io/library/busybox:latest".into(),
            "docker.io/library/busybox:1".into()
        ]));
        assert!(!single_reference(&[]));
    }

    #[test]
    fn conflicts_read_like_dockerd() {
        let img = format!("sha256:{}", "1".repeat(64));
        let c = "2".repeat(64);
        let (e, used) = delete_conflict(&img, &[(c.clone(), true)], true, false).unwrap();
        assert!(used);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(
            e.message,
            "conflict: unable to delete 111111111111 (cannot be forced) - image is being used by running container 222222222222"
        );
        assert!(delete_conflict(&img, &[(c.clone(), false)], true, false).is_none());
        let (e, _) = delete_conflict(&img, &[(c, false)], false, false).unwrap();
        assert_eq!(
            e.message,
            "conflict: unable to delete 111111111111 (must be forced) - image is being used by stopped container 222222222222"
        );
        let (e, used) = delete_conflict(&img, &[], false, true).unwrap();
        assert!(!used);
        assert!(e
            .message
            .ends_with("image is referenced in multiple repositories"));
    }
}
