//! Docker volumes: `/volumes` routes, and the volume part of container create, inspect and
//! remove. A volume is an ext4 disk on one of the VCH's volume stores (see
//! `kic_portlayer::volumes`), attached to each container VM that mounts it.

use super::util::{self, flag};
use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kic_portlayer::volumes::{invalid_name_message, valid_volume_name};
use kic_portlayer::{ContainerView, MountRequest, Volume, VolumeCreate};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// The label dockerd (23+) puts on anonymous volumes.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/volumes", get(list))
        .route("/volumes/create", post(create))
        .route("/volumes/prune", post(prune))
        .route("/volumes/{name}", get(inspect).delete(remove))
}

fn created_at(v: &Volume) -> String {
    chrono::DateTime::parse_from_rfc3339(&v.meta.created)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| v.meta.created.clone())
}

/// Bytes the volume's disk holds on its store (it is sparse).
fn allocated(v: &Volume) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(v.disk())
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

pub fn volume_json(v: &Volume) -> Value {
    json!({
        "Name": v.meta.name,
        "Driver": v.meta.driver,
        "Mountpoint": v.disk(),
        "CreatedAt": created_at(v),
        "Labels": v.meta.labels,
        "Scope": "local",
        "Options": v.meta.options,
        "Status": {
            "Capacity": v.meta.capacity,
            "VolumeStore": v.meta.store,
            "Disk": v.disk(),
        },
    })
}

fn publish(s: &AppState, action: &str, name: &str, mut attrs: BTreeMap<String, String>) {
    attrs.insert("driver".into(), kic_portlayer::volumes::DRIVER.into());
    s.events.publish("volume", action, name, attrs);
}

// ---------------------------------------------------------------------------------------------
// routes

#[derive(Deserialize)]
struct ListQuery {
    filters: Option<String>,
}

async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(&f, &["name", "label", "dangling", "driver"])
        .map_err(ApiError::bad_request)?;
    let dangling = match f.get("dangling").and_then(|d| d.first()) {
        Some(d) => Some(util::filter_bool("dangling", d).map_err(ApiError::bad_request)?),
        None => None,
    };
    let used = used_volumes(&s);
    let any = |key: &str, m: &dyn Fn(&str) -> bool| {
        f.get(key)
            .map(|vals| vals.is_empty() || vals.iter().any(|x| m(x)))
            .unwrap_or(true)
    };
    let vols: Vec<Value> =
        s.pl.volume_list()
            .iter()
            .filter(|v| {
                any("name", &|x| v.meta.name.contains(x))
                    && any("driver", &|x| x == v.meta.driver || x == "local")
                    && f.get("label")
                        .map(|ls| ls.iter().all(|l| util::label_matches(&v.meta.labels, l)))
                        .unwrap_or(true)
                    && dangling.is_none_or(|d| d != used.contains(&v.meta.name))
            })
            .map(volume_json)
            .collect();
    Ok(Json(json!({"Volumes": vols, "Warnings": null})))
}

/// Names of volumes any container (any state) has attached.
fn used_volumes(s: &AppState) -> HashSet<String> {
    s.pl.list()
        .iter()
        .flat_map(|c| c.config.mounts.iter().map(|m| m.volume.clone()))
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    driver_opts: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

fn check_driver(d: &str) -> ApiResult<()> {
    match d {
        "" | "local" | kic_portlayer::volumes::DRIVER => Ok(()),
        other => Err(ApiError::not_found(format!(
            "error looking up volume plugin {other}: plugin \"{other}\" not found (KIC volumes use the driver \"{}\" or \"local\")",
            kic_portlayer::volumes::DRIVER
        ))),
    }
}

fn random_name() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Create a volume, or answer the existing one when it was created with the same options and
/// labels (as dockerd does for a repeated `docker volume create NAME`).
async fn create_volume(s: &AppState, req: VolumeCreate) -> ApiResult<(Volume, bool)> {
    match s.pl.volume_create(req.clone()).await {
        Ok(v) => {
            publish(s, "create", &v.meta.name, BTreeMap::new());
            Ok((v, true))
        }
        Err(e) if e.kind == kic_portlayer::Kind::Conflict => {
            let v = s.pl.volume_get(&req.name)?;
            let asked_other = (!req.options.is_empty() && req.options != v.meta.options)
                || (!req.labels.is_empty() && req.labels != v.meta.labels);
            if asked_other {
                return Err(ApiError::conflict(format!(
                    "create {}: a volume with this name already exists with other options or labels ({}): remove it first (docker volume rm {}) or choose another name",
                    req.name,
                    v.meta
                        .options
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .chain(v.meta.labels.iter().map(|(k, v)| format!("label {k}={v}")))
                        .collect::<Vec<_>>()
                        .join(", "),
                    req.name
                )));
            }
            Ok((v, false))
        }
        Err(e) => Err(e.into()),
    }
}

async fn create(State(s): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let b: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid volume configuration: {e}")))?
    };
    check_driver(&b.driver)?;
    let name = if b.name.is_empty() {
        random_name()
    } else {
        b.name.clone()
    };
    if !valid_volume_name(&name) {
        return Err(ApiError::bad_request(invalid_name_message(&name)));
    }
    let req = VolumeCreate {
        name,
        labels: b.labels.unwrap_or_default(),
        options: b.driver_opts.unwrap_or_default(),
        anonymous: false,
    };
    let (v, _) = create_volume(&s, req).await?;
    Ok((StatusCode::CREATED, Json(volume_json(&v))).into_response())
}

async fn inspect(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(volume_json(&s.pl.volume_get(&name)?)))
}

#[derive(Deserialize)]
struct RemoveQuery {
    force: Option<String>,
}

async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Response> {
    if let Some(v) = s.pl.volume_remove(&name, flag(&q.force)).await? {
        publish(&s, "destroy", &v.meta.name, BTreeMap::new());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

async fn prune(State(s): State<AppState>, Query(q): Query<PruneQuery>) -> ApiResult<Json<Value>> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(&f, &["label", "label!", "all"]).map_err(ApiError::bad_request)?;
    let all = match f.get("all").and_then(|a| a.first()) {
        Some(a) => util::filter_bool("all", a).map_err(ApiError::bad_request)?,
        None => false,
    };
    let used = used_volumes(&s);
    let mut deleted = Vec::new();
    let mut space = 0u64;
    for v in s.pl.volume_list() {
        if used.contains(&v.meta.name) || !(all || v.meta.anonymous) {
            continue;
        }
        let labels = &v.meta.labels;
        if !f
            .get("label")
            .map(|ls| ls.iter().all(|l| util::label_matches(labels, l)))
            .unwrap_or(true)
            || f.get("label!")
                .is_some_and(|ls| ls.iter().any(|l| util::label_matches(labels, l)))
        {
            continue;
        }
        let size = allocated(&v);
        if let Ok(Some(_)) = s.pl.volume_remove(&v.meta.name, false).await {
            publish(&s, "destroy", &v.meta.name, BTreeMap::new());
            deleted.push(v.meta.name.clone());
            space += size;
        }
    }
    Ok(Json(
        json!({"VolumesDeleted": deleted, "SpaceReclaimed": space}),
    ))
}

// ---------------------------------------------------------------------------------------------
// containers

/// One mount a container create asks for, before volumes are looked up or created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountSpec {
    /// `None`: an anonymous volume.
    pub name: Option<String>,
    pub target: String,
    pub read_only: bool,
    pub no_copy: bool,
    /// Options and labels for a volume `--mount` creates.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

const HOST_BIND: &str = "host directory bind mounts are not supported by KIC: every container is a VM and cannot see the host's files; use a named volume (docker volume create) instead";

/// One `HostConfig.Binds` entry: `name:/path[:opts]` (or `/path` alone, an anonymous volume).
pub fn parse_bind(b: &str) -> ApiResult<MountSpec> {
    let parts: Vec<&str> = b.split(':').collect();
    let invalid = || ApiError::bad_request(format!("invalid volume specification: '{b}'"));
    let (src, target, mode) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [s, t] => (Some(*s), *t, ""),
        [s, t, m] => (Some(*s), *t, *m),
        _ => return Err(invalid()),
    };
    if target.is_empty() || src.is_some_and(str::is_empty) {
        return Err(invalid());
    }
    if let Some(src) = src {
        if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
            return Err(ApiError::bad_request(format!("{HOST_BIND} (asked: {b})")));
        }
        if !valid_volume_name(src) {
            return Err(ApiError::bad_request(invalid_name_message(src)));
        }
    }
    if !target.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "invalid volume specification: '{b}': invalid mount config for type \"volume\": invalid mount path: '{target}' mount path must be absolute"
        )));
    }
    let mut m = MountSpec {
        name: src.map(str::to_string),
        target: target.to_string(),
        ..Default::default()
    };
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" => m.no_copy = true,
            // SELinux relabelling and propagation mean nothing for a disk of a VM.
            "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid mode: {opt} (in volume specification '{b}')"
                )))
            }
        }
    }
    Ok(m)
}

/// One `HostConfig.Mounts` entry (`--mount`).
pub fn parse_mount(v: &Value) -> ApiResult<MountSpec> {
    let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let typ = get("Type");
    match typ {
        "volume" => {}
        "bind" => {
            return Err(ApiError::bad_request(format!(
                "{HOST_BIND} (asked: --mount type=bind,source={})",
                get("Source")
            )))
        }
        "" => {
            return Err(ApiError::bad_request(
                "invalid mount config: mount type unknown",
            ))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "mounts of type {other} are not supported by KIC: use type=volume"
            )))
        }
    }
    let target = get("Target");
    if target.is_empty() {
        return Err(ApiError::bad_request(
            "invalid mount config for type \"volume\": field Target must not be empty",
        ));
    }
    let src = get("Source");
    if !src.is_empty() && !valid_volume_name(src) {
        return Err(ApiError::bad_request(invalid_name_message(src)));
    }
    let vo = v.get("VolumeOptions");
    let strmap = |x: Option<&Value>| -> BTreeMap<String, String> {
        x.and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(d) = vo
        .and_then(|o| o.get("DriverConfig"))
        .and_then(|d| d.get("Name"))
        .and_then(Value::as_str)
    {
        check_driver(d)?;
    }
    Ok(MountSpec {
        name: (!src.is_empty()).then(|| src.to_string()),
        target: target.to_string(),
        read_only: v.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false),
        no_copy: vo
            .and_then(|o| o.get("NoCopy"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        options: strmap(
            vo.and_then(|o| o.get("DriverConfig"))
                .and_then(|d| d.get("Options")),
        ),
        labels: strmap(vo.and_then(|o| o.get("Labels"))),
    })
}

fn clean(target: &str) -> String {
    let p: std::path::PathBuf = std::path::Path::new(target).components().collect();
    p.to_string_lossy().into_owned()
}

/// Every mount of a container create, in Docker's order of precedence: `Binds`, `Mounts`, then
/// `Config.Volumes` and the image's `VOLUME`s for paths not already covered (anonymous).
pub fn container_mounts(
    binds: &[String],
    mounts: &[Value],
    config_volumes: &[String],
    image_volumes: &[String],
) -> ApiResult<Vec<MountSpec>> {
    let mut out: Vec<MountSpec> = Vec::new();
    for b in binds {
        out.push(parse_bind(b)?);
    }
    for m in mounts {
        let m = parse_mount(m)?;
        if out.iter().any(|o| clean(&o.target) == clean(&m.target)) {
            return Err(ApiError::bad_request(format!(
                "Duplicate mount point: {}",
                clean(&m.target)
            )));
        }
        out.push(m);
    }
    for t in config_volumes.iter().chain(image_volumes) {
        if !t.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "invalid volume specification: '{t}': mount path must be absolute"
            )));
        }
        if out.iter().any(|o| clean(&o.target) == clean(t)) {
            continue;
        }
        out.push(MountSpec {
            target: t.clone(),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Look up or create the volumes of a container create. Returns the mounts for the port layer
/// and the anonymous volumes created (to remove if the create fails).
pub async fn prepare_mounts(
    s: &AppState,
    specs: Vec<MountSpec>,
) -> ApiResult<(Vec<MountRequest>, Vec<String>)> {
    let mut reqs = Vec::new();
    let mut created = Vec::new();
    for m in specs {
        let r = async {
            let name = match &m.name {
                Some(n) => {
                    if s.pl.volume_get(n).is_err() {
                        // As dockerd: a named volume that does not exist is created.
                        create_volume(
                            s,
                            VolumeCreate {
                                name: n.clone(),
                                labels: m.labels.clone(),
                                options: m.options.clone(),
                                anonymous: false,
                            },
                        )
                        .await?;
                    }
                    n.clone()
                }
                None => {
                    let mut labels = m.labels.clone();
                    labels.insert(ANONYMOUS_LABEL.into(), String::new());
                    let (v, _) = create_volume(
                        s,
                        VolumeCreate {
                            name: random_name(),
                            labels,
                            options: m.options.clone(),
                            anonymous: true,
                        },
                    )
                    .await?;
                    created.push(v.meta.name.clone());
                    v.meta.name
                }
            };
            Ok::<_, ApiError>(name)
        }
        .await;
        match r {
            Ok(volume) => reqs.push(MountRequest {
                volume,
                target: m.target,
                read_only: m.read_only,
                no_copy: m.no_copy,
            }),
            Err(e) => {
                discard(s, &created).await;
                return Err(e);
            }
        }
    }
    Ok((reqs, created))
}

/// Remove anonymous volumes made for a create that failed.
pub async fn discard(s: &AppState, names: &[String]) {
    for n in names {
        if let Ok(Some(_)) = s.pl.volume_remove(n, true).await {
            publish(s, "destroy", n, BTreeMap::new());
        }
    }
}

/// After a container is removed: remove its anonymous volumes no other container uses
/// (`docker rm -v`, `--rm`).
pub async fn remove_anonymous(s: &AppState, v: &ContainerView) {
    for m in &v.config.mounts {
        let anonymous =
            s.pl.volume_get(&m.volume)
                .map(|x| x.meta.anonymous)
                .unwrap_or(false);
        if anonymous {
            match s.pl.volume_remove(&m.volume, false).await {
                Ok(Some(_)) => publish(s, "destroy", &m.volume, BTreeMap::new()),
                Ok(None) => {}
                Err(e) => tracing::info!("keeping volume {}: {e}", m.volume),
            }
        }
    }
}

/// `mount`/`unmount` events for a container's volumes (dockerd's attributes).
pub fn mount_events(s: &AppState, v: &ContainerView, action: &str) {
    for m in &v.config.mounts {
        let mut a = BTreeMap::new();
        a.insert("container".into(), v.config.id.clone());
        if action == "mount" {
            a.insert("destination".into(), m.target.clone());
            a.insert("propagation".into(), String::new());
            a.insert("read/write".into(), (!m.read_only).to_string());
        }
        publish(s, action, &m.volume, a);
    }
}

/// The `Mounts` of a container in inspect and list.
pub fn mounts_json(v: &ContainerView) -> Value {
    Value::Array(
        v.config
            .mounts
            .iter()
            .map(|m| {
                json!({
                    "Type": "volume",
                    "Name": m.volume,
                    "Source": m.disk,
                    "Destination": m.target,
                    "Driver": kic_portlayer::volumes::DRIVER,
                    "Mode": if m.read_only { "ro" } else { "" },
                    "RW": !m.read_only,
                    "Propagation": "",
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_and_host_paths_are_refused() {
        let m = parse_bind("data:/data").unwrap();
        assert_eq!(m.name.as_deref(), Some("data"));
        assert_eq!(m.target, "/data");
        assert!(!m.read_only);
        let m = parse_bind("data:/data:ro,nocopy").unwrap();
        assert!(m.read_only && m.no_copy);
        assert!(parse_bind("data:/data:z").is_ok());
        let e = parse_bind("/srv:/data").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e
            .message
            .starts_with("host directory bind mounts are not supported by KIC"));
        assert!(e.message.contains("docker volume create"));
        assert!(parse_bind("a/b:/data")
            .unwrap_err()
            .message
            .contains("includes invalid characters"));
        assert!(parse_bind("data:rel")
            .unwrap_err()
            .message
            .contains("absolute"));
        assert!(parse_bind("data:/d:bogus")
            .unwrap_err()
            .message
            .contains("invalid mode: bogus"));
        assert!(parse_bind("a:b:c:d").is_err());
        let anon = parse_bind("/only").unwrap();
        assert_eq!((anon.name, anon.target.as_str()), (None, "/only"));
    }

    #[test]
    fn mounts_parse_and_combine_with_volumes() {
        let m = parse_mount(&json!({"Type": "volume", "Source": "v1", "Target": "/x",
            "ReadOnly": true, "VolumeOptions": {"NoCopy": true,
            "DriverConfig": {"Name": "local", "Options": {"Capacity": "64MB"}}}}))
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("v1"));
        assert!(m.read_only && m.no_copy);
        assert_eq!(m.options["Capacity"], "64MB");
        assert!(
            parse_mount(&json!({"Type": "bind", "Source": "/etc", "Target": "/x"}))
                .unwrap_err()
                .message
                .contains("not supported by KIC")
        );
        assert!(parse_mount(&json!({"Type": "tmpfs", "Target": "/x"})).is_err());
        let all = container_mounts(
            &["a1:/data".into()],
            &[json!({"Type": "volume", "Target": "/logs"})],
            &["/data/".into(), "/cache".into()],
            &["/cache".into(), "/img".into()],
        )
        .unwrap();
        let t: Vec<(&str, Option<&str>)> = all
            .iter()
            .map(|m| (m.target.as_str(), m.name.as_deref()))
            .collect();
        assert_eq!(
            t,
            [
                ("/data", Some("a1")),
                ("/logs", None),
                ("/cache", None),
                ("/img", None)
            ]
        );
        assert!(container_mounts(
            &["a1:/data".into()],
            &[json!({"Type": "volume", "Source": "b2", "Target": "/data"})],
            &[],
            &[]
        )
        .unwrap_err()
        .message
        .contains("Duplicate mount point: /data"));
    }
}
