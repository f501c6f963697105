//! `docker cp` (HEAD/GET/PUT `/containers/{id}/archive`), `docker diff` (`/changes`),
//! `docker export` and `docker commit`: the port layer's guest file operations in Docker's
//! shapes. A stopped container's files are reached through a maintenance boot of its VM
//! (see `kic_portlayer::guest`).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::TryStreamExt;
use kic_proto::PathStat;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::io::{ReaderStream, StreamReader};

use super::images::transfer::query_pairs;
use super::{ApiError, ApiResult, AppState};

const STAT_HEADER: &str = "x-docker-container-path-stat";

#[derive(Deserialize)]
pub struct PathQuery {
    path: Option<String>,
    #[serde(rename = "noOverwriteDirNonDir")]
    no_overwrite_dir_non_dir: Option<String>,
    #[serde(rename = "copyUIDGID")]
    copy_uid_gid: Option<String>,
}

fn path_of(q: &PathQuery) -> ApiResult<String> {
    match q.path.as_deref() {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(ApiError::bad_request("bad parameter: path cannot be empty")),
    }
}

/// Go's `os.FileMode` bits for a Unix `st_mode` (what the docker CLI decodes).
fn go_file_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    if st_mode & 0o4000 != 0 {
        m |= 1 << 23;
    }
    if st_mode & 0o2000 != 0 {
        m |= 1 << 22;
    }
    if st_mode & 0o1000 != 0 {
        m |= 1 << 20;
    }
    m | match st_mode & 0o170000 {
        0o040000 => 1 << 31,
        0o120000 => 1 << 27,
        0o010000 => 1 << 25,
        0o140000 => 1 << 24,
        0o060000 => 1 << 26,
        0o020000 => (1 << 26) | (1 << 21),
        _ => 0,
    }
}

/// The `X-Docker-Container-Path-Stat` header: base64 of Docker's `ContainerPathStat` JSON.
fn stat_header(st: &PathStat) -> HeaderValue {
    let mtime = chrono::DateTime::from_timestamp(st.mtime, st.mtime_nsec)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let body = json!({
        "name": st.name,
        "size": st.size,
        "mode": go_file_mode(st.mode),
        "mtime": mtime,
        "linkTarget": st.link_target,
    });
    let enc = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    HeaderValue::from_str(&enc).expect("base64 is a valid header value")
}

/// `HEAD /containers/{id}/archive?path=`
pub async fn head(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    let path = path_of(&q)?;
    let st = s.pl.path_stat(&id, &path).await?;
    let mut res = StatusCode::OK.into_response();
    res.headers_mut().insert(STAT_HEADER, stat_header(&st));
    Ok(res)
}

fn tar_response(reader: kic_portlayer::ArchiveStream) -> Response {
    let body = Body::from_stream(ReaderStream::with_capacity(reader, 64 << 10));
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    res
}

/// `GET /containers/{id}/archive?path=`: a tar of the path, named by its last element.
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    let path = path_of(&q)?;
    let (st, reader) = s.pl.archive_get(&id, &path).await?;
    let v = s.pl.inspect(&id)?;
    let mut attrs = BTreeMap::new();
    attrs.insert("path".to_string(), path);
    s.events.container(&v, "archive-path", attrs);
    let mut res = tar_response(reader);
    res.headers_mut().insert(STAT_HEADER, stat_header(&st));
    Ok(res)
}

/// `PUT /containers/{id}/archive?path=`: unpack the body (a tar) into the directory `path`.
pub async fn put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    body: Body,
) -> ApiResult<Response> {
    let path = path_of(&q)?;
    let no_overwrite = super::util::flag(&q.no_overwrite_dir_non_dir);
    // As dockerd: the archive's owners, except that `-a` gives everything to the container's
    // user when it has one.
    let to_user = super::util::flag(&q.copy_uid_gid);
    let reader =
        StreamReader::new(body.into_data_stream().map_err(|e| {
            std::io::Error::other(format!("reading the archive from the client: {e}"))
        }));
    s.pl.archive_put(&id, &path, reader, no_overwrite, to_user)
        .await?;
    let v = s.pl.inspect(&id)?;
    let mut attrs = BTreeMap::new();
    attrs.insert("path".to_string(), path);
    s.events.container(&v, "extract-to-dir", attrs);
    Ok(StatusCode::OK.into_response())
}

/// `GET /containers/{id}/changes`
pub async fn changes(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let list = s.pl.changes(&id).await?;
    Ok(Json(Value::Array(
        list.into_iter()
            .map(|c| json!({"Path": c.path, "Kind": c.kind as u8}))
            .collect(),
    )))
}

/// `GET /containers/{id}/export`
pub async fn export(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let reader = s.pl.export(&id).await?;
    let v = s.pl.inspect(&id)?;
    s.events.container(&v, "export", BTreeMap::new());
    Ok(tar_response(reader))
}

/// The image configuration a commit starts from: the container's own (its image's defaults
/// with what `docker create` set), as dockerd takes `container.Config`.
fn container_image_config(
    s: &AppState,
    v: &kic_portlayer::ContainerView,
) -> ApiResult<kic_image::ContainerConfig> {
    let mut cfg =
        s.pl.images()
            .get(&v.config.image_id)
            .map(|r| r.config.config)
            .unwrap_or_default();
    let req = v
        .config
        .extra
        .get("docker")
        .and_then(|d| d.get("Config"))
        .cloned()
        .unwrap_or(json!({}));
    let main = &v.config.spec.main;
    let strings = |x: &Value| -> Option<Vec<String>> {
        x.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
    };
    if let Some(ep) = req.get("Entrypoint").filter(|x| !x.is_null()) {
        cfg.entrypoint = strings(ep).filter(|e| !(e.len() == 1 && e[0].is_empty()));
        cfg.cmd = None;
    }
    if let Some(cmd) = req.get("Cmd").filter(|x| !x.is_null()) {
        cfg.cmd = strings(cmd);
    }
    cfg.env = Some(main.env.clone());
    cfg.user = (!main.user.is_empty()).then(|| main.user.clone());
    cfg.working_dir = (!main.cwd.is_empty()).then(|| main.cwd.clone());
    if !v.config.labels.is_empty() {
        cfg.labels = Some(v.config.labels.clone());
    }
    for key in ["ExposedPorts", "Volumes"] {
        if let Some(m) = req.get(key).and_then(Value::as_object) {
            let target = if key == "ExposedPorts" {
                &mut cfg.exposed_ports
            } else {
                &mut cfg.volumes
            };
            let t = target.get_or_insert_with(Default::default);
            for (k, x) in m {
                t.insert(k.clone(), x.clone());
            }
        }
    }
    Ok(cfg)
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&changes=`
pub async fn commit(
    State(s): State<AppState>,
    raw: RawQuery,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let pairs = query_pairs(raw.0.as_deref().unwrap_or(""));
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let container = one("container");
    if container.is_empty() {
        return Err(ApiError::bad_request("No container name or ID supplied"));
    }
    let v = s.pl.inspect(&container)?;
    let changes: Vec<String> = pairs
        .iter()
        .filter(|(n, _)| n == "changes")
        .flat_map(|(_, v)| v.lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    // As dockerd: the request's config, then the `--change`s, then what they leave empty
    // from the container's own config.
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))?
    };
    let container_cfg = container_image_config(&s, &v)?;
    // Without a config in the request (the docker CLI sends none) the changes apply to the
    // container's own.
    let mut cfg: kic_image::ContainerConfig = if body.is_null() {
        container_cfg.clone()
    } else {
        serde_json::from_value(body).map_err(|e| {
            ApiError::bad_request(format!("invalid container config in the request body: {e}"))
        })?
    };
    kic_image::commit::apply_changes(&mut cfg, &changes)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    kic_image::commit::merge_config(&mut cfg, &container_cfg);
    let (repo, tag) = (one("repo"), one("tag"));
    let reference = match (repo.is_empty(), tag.is_empty()) {
        (true, true) => None,
        (true, false) => {
            return Err(ApiError::bad_request(
                "invalid reference format: a tag needs a repository name",
            ))
        }
        (false, true) => Some(repo.clone()),
        (false, false) => Some(format!("{repo}:{tag}")),
    };
    let opts = kic_portlayer::CommitOptions {
        config: cfg,
        author: one("author"),
        comment: one("comment"),
        created_by: v.config.spec.main.args.join(" "),
        reference,
        disk_size: kic_image::DEFAULT_DISK_SIZE,
    };
    let rec = s.pl.commit(&v.config.id, opts).await?;
    let mut attrs = BTreeMap::new();
    attrs.insert("comment".to_string(), one("comment"));
    attrs.insert("imageID".to_string(), rec.id.clone());
    attrs.insert(
        "imageRef".to_string(),
        rec.repo_tags.first().cloned().unwrap_or_default(),
    );
    s.events.container(&v, "commit", attrs);
    Ok((StatusCode::CREATED, Json(json!({"Id": rec.id}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_file_modes_match_the_cli() {
        assert_eq!(go_file_mode(0o040755), (1 << 31) | 0o755);
        assert_eq!(go_file_mode(0o100644), 0o644);
        assert_eq!(go_file_mode(0o120777), (1 << 27) | 0o777);
        assert_eq!(go_file_mode(0o104755), (1 << 23) | 0o755);
        assert_eq!(go_file_mode(0o041777), (1 << 31) | (1 << 20) | 0o777);
        assert_eq!(go_file_mode(0o020620), (1 << 26) | (1 << 21) | 0o620);
    }

    #[test]
    fn the_stat_header_is_base64_json() {
        let h = stat_header(&PathStat {
            name: "f".into(),
            size: 3,
            mode: 0o100600,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            link_target: String::new(),
        });
        let raw = base64::engine::general_purpose::STANDARD
            .decode(h.to_str().unwrap())
            .unwrap();
        let v: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["name"], "f");
        assert_eq!(v["mode"], 0o600);
        assert_eq!(v["mtime"], "2023-11-14T22:13:20.000000005Z");
    }
}
