//! Container routes: create, start, stop, kill, restart, wait, remove, rename, list, inspect,
//! logs, attach, resize, top, stats; and the restart/auto-remove policies that act when a
//! container exits.

use super::stream::{self, DetachScanner, Input};
use super::util::{self, flag};
use super::{archive, networks, volumes};
use super::{ApiError, ApiResult, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kic_portlayer::{ContainerView, CreateRequest, Status};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/containers/create", post(create))
        .route("/containers/json", get(list))
        .route("/containers/prune", post(prune))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/restart", post(restart))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}", axum::routing::delete(remove))
        .route("/containers/{id}/rename", post(rename))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/resize", post(resize))
        .route("/containers/{id}/top", get(top))
        .route("/containers/{id}/stats", get(stats))
        .route("/containers/{id}/update", post(update))
        .route("/containers/{id}/pause", post(pause))
        .route("/containers/{id}/unpause", post(pause))
        .route("/containers/{id}/export", get(archive::export))
        .route("/containers/{id}/changes", get(archive::changes))
        .route(
            "/containers/{id}/archive",
            get(archive::get).put(archive::put).head(archive::head),
        )
        .route("/commit", post(archive::commit))
        .route(
            "/containers/{id}/checkpoints",
            axum::routing::any(|| async { ApiError::unsupported("checkpoints") }),
        )
        .route(
            "/containers/{id}/checkpoints/{*rest}",
            axum::routing::any(|| async { ApiError::unsupported("checkpoints") }),
        )
}

async fn pause() -> ApiError {
    ApiError::unsupported("pausing a container")
}

// ---------------------------------------------------------------------------------------------
// create

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl StrOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrList::Str(s) => s.split_whitespace().map(str::to_string).collect(),
            StrOrList::List(l) => l,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    hostname: String,
    user: String,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    env: Option<Vec<String>>,
    cmd: Option<StrOrList>,
    entrypoint: Option<StrOrList>,
    image: String,
    working_dir: String,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    stop_timeout: Option<i64>,
    host_config: Option<HostConfigBody>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfigBody {
    memory: i64,
    nano_cpus: i64,
    cpu_count: i64,
    auto_remove: bool,
    restart_policy: Option<RestartPolicy>,
    network_mode: String,
    binds: Option<Vec<String>>,
    mounts: Option<Vec<Value>>,
    port_bindings: Option<BTreeMap<String, Value>>,
    publish_all_ports: bool,
    links: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    name: String,
    maximum_retry_count: i64,
}

#[derive(Deserialize)]
struct CreateQuery {
    name: Option<String>,
}

const MIB: i64 = 1024 * 1024;

async fn create(
    State(s): State<AppState>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let raw: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let b: CreateBody = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid container configuration: {e}")))?;
    if b.image.is_empty() {
        return Err(ApiError::bad_request("No image specified"));
    }
    let hc = b.host_config.clone().unwrap_or_default();
    let config_volumes: Vec<String> = raw
        .get("Volumes")
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let image_volumes: Vec<String> =
        s.pl.images()
            .get(&b.image)
            .ok()
            .and_then(|i| i.config.config.volumes.clone())
            .map(|v| v.into_keys().collect())
            .unwrap_or_default();
    let mount_specs = volumes::container_mounts(
        hc.binds.as_deref().unwrap_or(&[]),
        hc.mounts.as_deref().unwrap_or(&[]),
        &config_volumes,
        &image_volumes,
    )?;
    let endpoints: BTreeMap<String, networks::EndpointConfig> = raw
        .pointer("/NetworkingConfig/EndpointsConfig")
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid NetworkingConfig: {e}")))?
        .unwrap_or_default();
    let nets = networks::create_endpoints(
        &s,
        &hc.network_mode,
        &endpoints,
        hc.links.as_deref().unwrap_or(&[]),
    )?;
    let publishes = hc.port_bindings.as_ref().is_some_and(|p| !p.is_empty());
    if nets.is_empty() && publishes {
        return Err(ApiError::bad_request(
            "conflicting options: port publishing and the container type network mode",
        ));
    }
    let policy = hc.restart_policy.clone().unwrap_or_default();
    match policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" | "on-failure" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid restart policy '{other}'"
            )))
        }
    }
    if hc.auto_remove && !matches!(policy.name.as_str(), "" | "no") {
        return Err(ApiError::bad_request(
            "can't create 'AutoRemove' container with restart policy",
        ));
    }
    if hc.memory != 0 && hc.memory < 6 * MIB {
        return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
    }
    let memory_mib = (hc.memory > 0).then(|| ((hc.memory + MIB - 1) / MIB).max(64) as u64);
    let vcpus = if hc.nano_cpus > 0 {
        let host = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        if hc.nano_cpus > host * 1_000_000_000 {
            return Err(ApiError::bad_request(format!(
                "range of CPUs is from 0.01 to {host}.00, as there are only {host} CPUs available"
            )));
        }
        Some(((hc.nano_cpus + 999_999_999) / 1_000_000_000) as u32)
    } else if hc.cpu_count > 0 {
        Some(hc.cpu_count as u32)
    } else {
        None
    };
    let entrypoint = b.entrypoint.map(|e| {
        let v = e.into_vec();
        if v.len() == 1 && v[0].is_empty() {
            vec![]
        } else {
            v
        }
    });
    let mut docker = raw.clone();
    if let Some(o) = docker.as_object_mut() {
        o.remove("HostConfig");
        o.remove("NetworkingConfig");
    }
    let extra = json!({
        "docker": {
            "Config": docker,
            "HostConfig": raw.get("HostConfig").cloned().unwrap_or(json!({})),
            "StdinOnce": b.stdin_once,
        }
    });
    let mut req = CreateRequest {
        name: q.name.filter(|n| !n.is_empty()),
        image: b.image.clone(),
        cmd: b.cmd.map(StrOrList::into_vec),
        entrypoint,
        env: b.env.unwrap_or_default(),
        workdir: Some(b.working_dir).filter(|w| !w.is_empty()),
        user: Some(b.user).filter(|u| !u.is_empty()),
        hostname: Some(b.hostname).filter(|h| !h.is_empty()),
        tty: b.tty,
        open_stdin: b.open_stdin,
        labels: b.labels.unwrap_or_default(),
        memory_mib,
        vcpus,
        stop_signal: b.stop_signal.filter(|x| !x.is_empty()),
        stop_timeout: b.stop_timeout.filter(|t| *t >= 0).map(|t| t as u64),
        extra,
        mounts: Vec::new(),
        networks: nets,
    };
    if let Some(n) = &req.name {
        // Refuse a taken name before anything else, as dockerd does.
        if let Ok(v) = s.pl.inspect(n) {
            if v.config.name == n.trim_start_matches('/') {
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    v.config.name, v.config.id
                )));
            }
        }
    }
    let view = {
        // Limits are checked and the container reserved under one lock, so that concurrent
        // creates cannot overshoot them together.
        let _g = s.create_lock.lock().await;
        check_limits(&s, &req)?;
        let (mounts, anonymous) = volumes::prepare_mounts(&s, mount_specs).await?;
        req.mounts = mounts;
        match s.pl.create(req).await {
            Ok(v) => v,
            Err(e) => {
                volumes::discard(&s, &anonymous).await;
                return Err(e.into());
            }
        }
    };
    s.events.container(&view, "create", BTreeMap::new());
    watch_container(&s, &view.config.id);
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": view.config.id, "Warnings": []})),
    )
        .into_response())
}

fn check_limits(s: &AppState, req: &CreateRequest) -> ApiResult<()> {
    let l = &s.cfg.limits;
    let all = s.pl.list();
    let name = &s.cfg.name;
    if let Some(max) = l.containers {
        if all.len() as u64 >= max as u64 {
            return Err(ApiError::conflict(format!(
                "VCH {name} has reached its limit of {max} containers: remove containers, or raise the limit with `kic-machine configure {name} --containers N`"
            )));
        }
    }
    let mem = req.memory_mib.unwrap_or(s.cfg.container_memory_mib);
    if let Some(max) = l.memory_mib {
        let used: u64 = all.iter().map(|c| c.config.memory_mib).sum();
        if used + mem > max {
            return Err(ApiError::conflict(format!(
                "VCH {name} memory limit exceeded: this container needs {mem} MiB, its containers already hold {used} MiB of {max} MiB; remove containers, ask for less (-m), or raise the limit with `kic-machine configure {name} --memory`"
            )));
        }
    }
    let cpus = req.vcpus.unwrap_or(s.cfg.container_cpus);
    if let Some(max) = l.cpus {
        let used: u64 = all.iter().map(|c| c.config.vcpus as u64).sum();
        if used + cpus as u64 > max as u64 {
            return Err(ApiError::conflict(format!(
                "VCH {name} CPU limit exceeded: this container needs {cpus} vCPUs, its containers already hold {used} of {max}; remove containers, ask for fewer (--cpus), or raise the limit with `kic-machine configure {name} --cpu`"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the Docker shapes of a container

fn docker_part<'a>(v: &'a ContainerView, key: &str) -> Option<&'a Value> {
    v.config.extra.get("docker").and_then(|d| d.get(key))
}

fn host_config(v: &ContainerView) -> HostConfigBody {
    docker_part(v, "HostConfig")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default()
}

fn image_id(v: &ContainerView) -> String {
    if v.config.image_id.starts_with("sha256:") {
        v.config.image_id.clone()
    } else {
        format!("sha256:{}", v.config.image_id)
    }
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn status_text(v: &ContainerView) -> String {
    let now = chrono::Utc::now().timestamp();
    match v.state.status {
        Status::Running => {
            let since = util::unix_of(v.state.started_at.as_deref());
            format!("Up {}", util::human_duration(now - since))
        }
        Status::Exited => {
            let since = util::unix_of(v.state.finished_at.as_deref());
            format!(
                "Exited ({}) {} ago",
                v.state.exit_code.unwrap_or(0),
                util::human_duration(now - since)
            )
        }
        Status::Created => "Created".into(),
        Status::Dead => "Dead".into(),
    }
}

fn command_line(v: &ContainerView) -> String {
    v.config.spec.main.args.join(" ")
}

fn list_json(s: &AppState, v: &ContainerView) -> Value {
    let mode = networks::network_mode(s, v);
    json!({
        "Id": v.config.id,
        "Names": [format!("/{}", v.config.name)],
        "Image": v.config.image,
        "ImageID": image_id(v),
        "Command": command_line(v),
        "Created": util::unix_of(Some(&v.config.created)),
        "Ports": crate::net::ctl::ports_list_json(s, v),
        "Labels": v.config.labels,
        "State": v.state.status.as_str(),
        "Status": status_text(v),
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": networks::list_networks_json(s, v)},
        "Mounts": volumes::mounts_json(v),
    })
}

fn inspect_json(s: &AppState, v: &ContainerView) -> Value {
    let c = &v.config;
    let st = &v.state;
    let hc_raw = docker_part(v, "HostConfig").cloned().unwrap_or(json!({}));
    let mut hc = hc_raw.clone();
    if let Some(o) = hc.as_object_mut() {
        o.insert("Memory".into(), json!((c.memory_mib as i64) * MIB));
        let nano = hc_raw.get("NanoCpus").and_then(Value::as_i64).unwrap_or(0);
        o.insert("NanoCpus".into(), json!(nano));
        o.insert("NetworkMode".into(), json!(networks::network_mode(s, v)));
        o.entry("RestartPolicy")
            .or_insert(json!({"Name": "no", "MaximumRetryCount": 0}));
        o.entry("AutoRemove").or_insert(json!(false));
        o.entry("Binds").or_insert(Value::Null);
        o.entry("PortBindings").or_insert(json!({}));
        o.insert("Runtime".into(), json!("kic-vm"));
        // Output is kept per container and read back with `docker logs`; clients (docker-py)
        // look for a driver they know can be read back.
        o.insert(
            "LogConfig".into(),
            json!({"Type": "json-file", "Config": {}}),
        );
    }
    let dcfg = docker_part(v, "Config").cloned().unwrap_or(json!({}));
    let stdin_once = docker_part(v, "StdinOnce")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let main = &c.spec.main;
    let (path, args) = match main.args.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (String::new(), vec![]),
    };
    let dir = s.pl.container_dir(&c.id).unwrap_or_default();
    let cmd = dcfg
        .get("Cmd")
        .cloned()
        .filter(|x| !x.is_null())
        .unwrap_or_else(|| json!(main.args));
    json!({
        "Id": c.id,
        "Created": c.created,
        "Path": path,
        "Args": args,
        "State": {
            "Status": st.status.as_str(),
            "Running": st.status == Status::Running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": st.status == Status::Dead,
            "Pid": st.pid.unwrap_or(0),
            "ExitCode": st.exit_code.unwrap_or(0),
            "Error": st.error,
            "StartedAt": st.started_at.clone().unwrap_or_else(|| ZERO_TIME.into()),
            "FinishedAt": st.finished_at.clone().unwrap_or_else(|| ZERO_TIME.into()),
        },
        "Image": image_id(v),
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": dir.join("output.log"),
        "Name": format!("/{}", c.name),
        "RestartCount": st.restart_count,
        "Driver": "kic-vm",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": Value::Null,
        "HostConfig": hc,
        "GraphDriver": {
            "Name": "kic-qcow2",
            "Data": {"ContainerDisk": dir.join("disk.qcow2"), "ImageDisk": c.image_disk},
        },
        "Mounts": volumes::mounts_json(v),
        "Config": {
            "Hostname": c.spec.hostname,
            "Domainname": "",
            "User": main.user,
            "AttachStdin": dcfg.get("AttachStdin").cloned().unwrap_or(json!(false)),
            "AttachStdout": dcfg.get("AttachStdout").cloned().unwrap_or(json!(false)),
            "AttachStderr": dcfg.get("AttachStderr").cloned().unwrap_or(json!(false)),
            "Tty": main.tty,
            "OpenStdin": main.stdin,
            "StdinOnce": stdin_once,
            "Env": main.env,
            "Cmd": cmd,
            "Image": c.image,
            "Volumes": Value::Null,
            "WorkingDir": main.cwd,
            "Entrypoint": dcfg.get("Entrypoint").cloned().unwrap_or(Value::Null),
            "OnBuild": Value::Null,
            "Labels": c.labels,
            "StopSignal": signal_name(c.stop_signal),
            "StopTimeout": c.stop_timeout,
        },
        "NetworkSettings": networks::settings_json(s, v, crate::net::ctl::ports_json(s, v)),
        "KIC": {
            "VCH": c.vch,
            "Domain": c.domain,
            "MemoryMiB": c.memory_mib,
            "VCPUs": c.vcpus,
            "BootVersion": c.boot_version,
            "ConsoleLog": dir.join("console.log"),
        },
    })
}

fn signal_name(n: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(n as usize)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .unwrap_or_else(|| n.to_string())
}

// ---------------------------------------------------------------------------------------------
// list and inspect

#[derive(Deserialize)]
struct ListQuery {
    all: Option<String>,
    limit: Option<i64>,
    size: Option<String>,
    filters: Option<String>,
}

async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(
        &f,
        &[
            "status",
            "label",
            "name",
            "id",
            "ancestor",
            "exited",
            "before",
            "since",
            "network",
            "volume",
            "health",
            "isolation",
            "is-task",
            "publish",
            "expose",
        ],
    )
    .map_err(ApiError::bad_request)?;
    for st in f.get("status").into_iter().flatten() {
        if ![
            "created",
            "restarting",
            "running",
            "removing",
            "paused",
            "exited",
            "dead",
        ]
        .contains(&st.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'status={st}'"
            )));
        }
    }
    // As dockerd: a limit, or a filter on the exit state, looks at stopped containers too.
    let all = flag(&q.all)
        || q.limit.is_some_and(|l| l > 0)
        || f.contains_key("status")
        || f.contains_key("exited");
    let views = s.pl.list(); // newest first
    let bound = |key: &str| -> ApiResult<Option<String>> {
        match f.get(key).and_then(|v| v.first()) {
            None => Ok(None),
            Some(r) => {
                s.pl.inspect(r)
                    .map(|v| Some(v.config.created))
                    .map_err(ApiError::from)
            }
        }
    };
    let before = bound("before")?;
    let since = bound("since")?;
    let ancestors: Vec<String> = f
        .get("ancestor")
        .into_iter()
        .flatten()
        .filter_map(|a| s.pl.images().get(a).ok().map(|i| i.id))
        .collect();
    let mut out = Vec::new();
    for v in views {
        if !all && v.state.status != Status::Running {
            continue;
        }
        if !filters_match(&v, &f, &ancestors) {
            continue;
        }
        if before.as_ref().is_some_and(|b| v.config.created >= *b) {
            continue;
        }
        if since.as_ref().is_some_and(|b| v.config.created <= *b) {
            continue;
        }
        let mut j = list_json(&s, &v);
        if flag(&q.size) {
            j["SizeRw"] = json!(disk_usage(&s, &v.config.id));
            j["SizeRootFs"] = json!(0);
        }
        out.push(j);
        if q.limit.is_some_and(|l| l > 0 && out.len() as i64 >= l) {
            break;
        }
    }
    Ok(Json(Value::Array(out)))
}

/// Bytes the container disk holds on the datastore (its copy-on-write layer).
pub fn disk_usage(s: &AppState, id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    s.pl.container_dir(id)
        .ok()
        .and_then(|d| std::fs::metadata(d.join("disk.qcow2")).ok())
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn filters_match(
    v: &ContainerView,
    f: &BTreeMap<String, Vec<String>>,
    ancestors: &[String],
) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| -> bool {
        match f.get(key) {
            None => true,
            Some(vals) if vals.is_empty() => true,
            Some(vals) => vals.iter().any(|x| pred(x)),
        }
    };
    let all = |key: &str, pred: &dyn Fn(&str) -> bool| -> bool {
        f.get(key)
            .map(|vals| vals.iter().all(|x| pred(x)))
            .unwrap_or(true)
    };
    any("status", &|x| x == v.state.status.as_str())
        && all("label", &|x| util::label_matches(&v.config.labels, x))
        && any("name", &|x| {
            // dockerd matches the pattern against the name with and without its slash.
            let slashed = format!("/{}", v.config.name);
            [v.config.name.as_str(), slashed.as_str()].iter().any(|n| {
                match regex_lite_match(x, n) {
                    Some(m) => m,
                    None => n.contains(x),
                }
            })
        })
        && any("id", &|x| v.config.id.starts_with(x))
        && (f.get("ancestor").is_none()
            || ancestors
                .iter()
                .any(|a| a == &v.config.image_id || format!("sha256:{}", v.config.image_id) == *a)
            || f["ancestor"].iter().any(|a| a == &v.config.image))
        && any("exited", &|x| {
            v.state.status == Status::Exited && x.parse::<i32>().ok() == v.state.exit_code
        })
}

/// Docker matches `name` filters as regular expressions; the anchors `^` and `$` are what
/// people use, so those are honoured; anything else is a substring match.
fn regex_lite_match(pat: &str, name: &str) -> Option<bool> {
    let (a, z) = (pat.starts_with('^'), pat.ends_with('$'));
    if !a && !z {
        return None;
    }
    let core = pat.trim_start_matches('^').trim_end_matches('$');
    Some(match (a, z) {
        (true, true) => name == core,
        (true, false) => name.starts_with(core),
        (false, true) => name.ends_with(core),
        _ => unreachable!(),
    })
}

async fn inspect(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let v = s.pl.inspect(&id)?;
    let mut j = inspect_json(&s, &v);
    j["SizeRw"] = json!(disk_usage(&s, &v.config.id));
    Ok(Json(j))
}

// ---------------------------------------------------------------------------------------------
// lifecycle

async fn start(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    if v.state.running() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    s.stopped_by_user.lock().expect("lock").remove(&v.config.id);
    if let Err(e) = crate::net::ctl::start(&s, &id).await {
        // As dockerd: an auto-remove container that cannot start is removed (`docker run
        // --rm` waits for that).
        if host_config(&v).auto_remove && s.pl.remove(&v.config.id, true).await.is_ok() {
            s.events.container(&v, "destroy", BTreeMap::new());
            volumes::remove_anonymous(&s, &v).await;
        }
        return Err(e);
    }
    let v = s.pl.inspect(&id)?;
    volumes::mount_events(&s, &v, "mount");
    s.events.container(&v, "start", BTreeMap::new());
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct StopQuery {
    t: Option<i64>,
    timeout: Option<i64>,
    signal: Option<String>,
}

async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    if !v.state.running() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    do_stop(&s, &v, q.t.or(q.timeout), q.signal.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn do_stop(
    s: &AppState,
    v: &ContainerView,
    t: Option<i64>,
    signal: Option<&str>,
) -> ApiResult<()> {
    s.stopped_by_user
        .lock()
        .expect("lock")
        .insert(v.config.id.clone());
    let sig = match signal.filter(|x| !x.is_empty()) {
        Some(x) => kic_portlayer::parse_signal(x)?,
        None => v.config.stop_signal,
    };
    let mut a = BTreeMap::new();
    a.insert("signal".into(), sig.to_string());
    s.events.container(v, "kill", a);
    // A negative timeout waits for ever (dockerd's -1).
    let timeout = match t {
        Some(t) if t < 0 => Some(u64::MAX / 4),
        Some(t) => Some(t as u64),
        None => None,
    };
    if sig != v.config.stop_signal {
        let _ = s.pl.kill(&v.config.id, sig).await;
    }
    s.pl.stop(&v.config.id, timeout).await?;
    s.events.container(v, "stop", BTreeMap::new());
    Ok(())
}

#[derive(Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    let sig = match q.signal.as_deref().filter(|x| !x.is_empty()) {
        Some(x) => kic_portlayer::parse_signal(x)?,
        None => 9,
    };
    if !v.state.running() {
        return Err(ApiError::conflict(format!(
            "cannot kill container: {id}: container {} is not running",
            v.config.id
        )));
    }
    if sig == 9 || sig == 15 || sig == 2 {
        s.stopped_by_user
            .lock()
            .expect("lock")
            .insert(v.config.id.clone());
    }
    s.pl.kill(&v.config.id, sig).await?;
    let mut a = BTreeMap::new();
    a.insert("signal".into(), sig.to_string());
    s.events.container(&v, "kill", a);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restart(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    if v.state.running() {
        do_stop(&s, &v, q.t.or(q.timeout), q.signal.as_deref()).await?;
    }
    // The exit must be stored before the next boot.
    s.pl.settle(&v.config.id, Duration::from_secs(10)).await;
    s.stopped_by_user.lock().expect("lock").remove(&v.config.id);
    crate::net::ctl::start(&s, &v.config.id).await?;
    let v = s.pl.inspect(&v.config.id)?;
    s.events.container(&v, "start", BTreeMap::new());
    s.events.container(&v, "restart", BTreeMap::new());
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    condition: Option<String>,
}

async fn wait(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let cond = q.condition.unwrap_or_else(|| "not-running".into());
    if !["not-running", "next-exit", "removed", ""].contains(&cond.as_str()) {
        return Err(ApiError::bad_request(format!(
            "invalid condition: \"{cond}\""
        )));
    }
    let v = s.pl.inspect(&id)?;
    let mut rx = s.pl.subscribe(&v.config.id)?;
    let cid = v.config.id.clone();
    let pl = s.pl.clone();
    let body = async_stream(async move {
        let mut seen_running = rx.borrow().running();
        let done = |st: &kic_portlayer::ContainerState, seen: bool| -> bool {
            match cond.as_str() {
                "next-exit" => seen && !st.running(),
                "removed" => st.status == Status::Dead,
                _ => !st.running(),
            }
        };
        let mut code = None;
        loop {
            let st = rx.borrow_and_update().clone();
            seen_running |= st.running();
            if cond == "removed" && !st.running() && st.status != Status::Dead {
                code = code.or(st.exit_code);
            }
            if done(&st, seen_running) {
                code = code.or(st.exit_code);
                break;
            }
            if cond == "removed" && pl.inspect(&cid).is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => break, // the container is gone
            }
        }
        let v = json!({"StatusCode": code.unwrap_or(0), "Error": Value::Null});
        Bytes::from(format!("{v}\n"))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response"))
}

/// A body whose headers go out at once and whose only chunk is `fut`'s result.
fn async_stream<F>(fut: F) -> Body
where
    F: std::future::Future<Output = Bytes> + Send + 'static,
{
    let st = futures::stream::once(async move { Ok::<_, std::io::Error>(fut.await) });
    Body::from_stream(st)
}

#[derive(Deserialize)]
struct RemoveQuery {
    force: Option<String>,
    v: Option<String>,
}

async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    let force = flag(&q.force);
    if v.state.running() && !force {
        return Err(ApiError::conflict(format!(
            "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
            v.config.name
        )));
    }
    if v.state.running() {
        s.stopped_by_user
            .lock()
            .expect("lock")
            .insert(v.config.id.clone());
        let mut a = BTreeMap::new();
        a.insert("signal".into(), "9".into());
        s.events.container(&v, "kill", a);
    }
    s.pl.remove(&v.config.id, force).await?;
    s.net.container_stopped(&s, &v.config.id);
    s.events.container(&v, "destroy", BTreeMap::new());
    if flag(&q.v) {
        volumes::remove_anonymous(&s, &v).await;
    }
    // An image removed with -f while this container used it may now go.
    super::images::collect_orphan_disks(&s).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct RenameQuery {
    name: Option<String>,
}

async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RenameQuery>,
) -> ApiResult<Response> {
    let new = q.name.unwrap_or_default();
    if new.is_empty() {
        return Err(ApiError::bad_request(
            "Neither old nor new names may be empty",
        ));
    }
    let v = s.pl.inspect(&id)?;
    s.pl.rename(&v.config.id, &new).await?;
    let v2 = s.pl.inspect(&v.config.id)?;
    let mut a = BTreeMap::new();
    a.insert("oldName".into(), format!("/{}", v.config.name));
    s.events.container(&v2, "rename", a);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let _ = s.pl.inspect(&id)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if v.as_object().is_some_and(|o| {
        o.values()
            .any(|x| !x.is_null() && x != &json!(0) && x != &json!("") && x != &json!({}))
    }) {
        return Err(ApiError::unsupported(
            "changing a container's resources after create (docker update)",
        ));
    }
    Ok(Json(json!({"Warnings": []})))
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

async fn prune(State(s): State<AppState>, Query(q): Query<PruneQuery>) -> ApiResult<Json<Value>> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(&f, &["label", "until"]).map_err(ApiError::bad_request)?;
    let until = match f.get("until").and_then(|v| v.first()) {
        Some(u) => Some(util::parse_time_arg(u).map_err(ApiError::bad_request)? / 1_000_000_000),
        None => None,
    };
    let mut deleted = Vec::new();
    let mut space = 0u64;
    for v in s.pl.list() {
        if v.state.running() {
            continue;
        }
        if !f
            .get("label")
            .map(|ls| ls.iter().all(|l| util::label_matches(&v.config.labels, l)))
            .unwrap_or(true)
        {
            continue;
        }
        if until.is_some_and(|u| util::unix_of(Some(&v.config.created)) > u) {
            continue;
        }
        let size = disk_usage(&s, &v.config.id);
        if s.pl.remove(&v.config.id, false).await.is_ok() {
            s.events.container(&v, "destroy", BTreeMap::new());
            deleted.push(v.config.id.clone());
            space += size;
        }
    }
    Ok(Json(
        json!({"ContainersDeleted": deleted, "SpaceReclaimed": space}),
    ))
}

// ---------------------------------------------------------------------------------------------
// output: logs and attach

#[derive(Deserialize)]
struct LogsQuery {
    follow: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    since: Option<String>,
    until: Option<String>,
    timestamps: Option<String>,
    tail: Option<String>,
}

fn rfc3339_nanos(n: i64) -> String {
    chrono::DateTime::from_timestamp(n / 1_000_000_000, (n % 1_000_000_000) as u32)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string())
        .unwrap_or_default()
}

/// Split a record into lines (each keeps the record's time), as json-file logs are.
fn lines_of(r: &kic_portlayer::logfile::LogRecord) -> Vec<(u8, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in r.data.iter().enumerate() {
        if *b == b'\n' {
            out.push((r.stream, r.time_nanos, r.data[start..=i].to_vec()));
            start = i + 1;
        }
    }
    if start < r.data.len() {
        out.push((r.stream, r.time_nanos, r.data[start..].to_vec()));
    }
    out
}

async fn logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    let (want_out, want_err) = (flag(&q.stdout), flag(&q.stderr));
    if !want_out && !want_err {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let since = match q.since.as_deref().filter(|x| !x.is_empty() && *x != "0") {
        Some(x) => Some(util::parse_time_arg(x).map_err(ApiError::bad_request)?),
        None => None,
    };
    let until = match q.until.as_deref().filter(|x| !x.is_empty() && *x != "0") {
        Some(x) => Some(util::parse_time_arg(x).map_err(ApiError::bad_request)?),
        None => None,
    };
    let tail: Option<usize> = match q.tail.as_deref() {
        None | Some("all") | Some("") => None,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n as usize),
            _ => None,
        },
    };
    let follow = flag(&q.follow);
    let timestamps = flag(&q.timestamps);
    let tty = v.config.spec.main.tty;
    let mut rx = s.pl.logs(&v.config.id, follow, false)?;
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let keep = |fd: u8, t: i64| -> bool {
            (if fd == 2 { want_err } else { want_out })
                && since.is_none_or(|x| t >= x)
                && until.is_none_or(|x| t <= x)
        };
        let fmt = |fd: u8, t: i64, data: &[u8]| -> Bytes {
            let mut d = Vec::new();
            if timestamps {
                d.extend_from_slice(rfc3339_nanos(t).as_bytes());
                d.push(b' ');
            }
            d.extend_from_slice(data);
            Bytes::from(stream::encode(tty, fd, &d))
        };
        if let Some(n) = tail {
            // Read what is stored, keep the last n lines, then go on live.
            let mut lines: std::collections::VecDeque<(u8, i64, Vec<u8>)> = Default::default();
            let mut live = false;
            loop {
                let r = if live {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => {
                            live = true;
                            for (fd, t, d) in lines.drain(..) {
                                if tx.send(Ok(fmt(fd, t, &d))).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                    }
                };
                let Some(r) = r else { break };
                for (fd, t, d) in lines_of(&r) {
                    if !keep(fd, t) {
                        continue;
                    }
                    if live {
                        if tx.send(Ok(fmt(fd, t, &d))).await.is_err() {
                            return;
                        }
                    } else {
                        lines.push_back((fd, t, d));
                        while lines.len() > n {
                            lines.pop_front();
                        }
                    }
                }
            }
            for (fd, t, d) in lines {
                if tx.send(Ok(fmt(fd, t, &d))).await.is_err() {
                    return;
                }
            }
        } else {
            while let Some(r) = rx.recv().await {
                for (fd, t, d) in lines_of(&r) {
                    if keep(fd, t) && tx.send(Ok(fmt(fd, t, &d))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream_of(body_rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            if tty {
                stream::RAW
            } else {
                stream::MULTIPLEXED
            },
        )
        .body(body)
        .expect("valid response"))
}

pub fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Deserialize)]
struct AttachQuery {
    stream: Option<String>,
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    logs: Option<String>,
    #[serde(rename = "detachKeys")]
    detach_keys: Option<String>,
}

async fn attach(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    let tty = v.config.spec.main.tty;
    let keys = match q.detach_keys.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => stream::parse_detach_keys(k).map_err(ApiError::bad_request)?,
        None => vec![16, 17],
    };
    let (want_out, want_err) = (flag(&q.stdout), flag(&q.stderr));
    let want_in = flag(&q.stdin) && v.config.spec.main.stdin;
    let stdin_once = docker_part(&v, "StdinOnce")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let live = flag(&q.stream);
    let mut rx = if live {
        s.pl.attach_output(&v.config.id, flag(&q.logs))?
    } else {
        s.pl.logs(&v.config.id, false, !flag(&q.logs))?
    };
    s.events.container(&v, "attach", BTreeMap::new());
    if !stream::wants_upgrade(&req) {
        // Output only, in the response body.
        let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let ok = if r.stream == 2 { want_err } else { want_out };
                if ok
                    && tx
                        .send(Ok(Bytes::from(stream::encode(tty, r.stream, &r.data))))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                if tty {
                    stream::RAW
                } else {
                    stream::MULTIPLEXED
                },
            )
            .body(Body::from_stream(tokio_stream_of(body_rx)))
            .expect("valid response"));
    }
    let cid = v.config.id.clone();
    let pl = s.pl.clone();
    Ok(stream::hijack(&mut req, tty, move |conn| async move {
        let (mut rd, mut wr) = tokio::io::split(conn);
        let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
        let mut detach_live = want_in;
        let input = if want_in {
            let pl = pl.clone();
            let cid = cid.clone();
            Some(tokio::spawn(async move {
                pump_stdin(&pl, &cid, &mut rd, keys, stdin_once, detach_tx).await
            }))
        } else {
            drop(detach_tx);
            None
        };
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => {
                        let ok = if r.stream == 2 { want_err } else { want_out };
                        if ok && stream::write_out(&mut wr, tty, r.stream, &r.data).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                r = &mut detach_rx, if detach_live => {
                    if r.is_ok() {
                        break;
                    }
                    // Input ended without the detach keys: keep sending output.
                    detach_live = false;
                }
            }
        }
        if let Some(h) = input {
            h.abort();
        }
        use tokio::io::AsyncWriteExt;
        let _ = wr.shutdown().await;
    }))
}

/// Copy the client's input to the container's stdin until it ends (then close stdin when the
/// container was created with `StdinOnce`) or the detach keys are typed.
async fn pump_stdin<R: tokio::io::AsyncRead + Unpin>(
    pl: &kic_portlayer::PortLayer,
    cid: &str,
    rd: &mut R,
    keys: Vec<u8>,
    stdin_once: bool,
    detach: tokio::sync::oneshot::Sender<()>,
) {
    let mut scanner = DetachScanner::new(keys);
    let mut buf = vec![0u8; 32 * 1024];
    let mut writer: Option<kic_portlayer::StdinWriter> = None;
    loop {
        let (data, detached) = match scanner.next(rd, &mut buf).await {
            Input::Data(d) => (d, false),
            Input::Detached(d) => (d, true),
            Input::End => {
                if stdin_once {
                    if writer.is_none() {
                        writer = open_stdin(pl, cid).await;
                    }
                    if let Some(w) = writer.take() {
                        let _ = w.close().await;
                    }
                }
                return;
            }
        };
        if !data.is_empty() {
            if writer.is_none() {
                writer = open_stdin(pl, cid).await;
            }
            let Some(w) = writer.as_mut() else { return };
            if w.write(&data).await.is_err() {
                return;
            }
        }
        if detached {
            let _ = detach.send(());
            return;
        }
    }
}

/// The container's stdin, once it runs (input may arrive before `start`, as with `docker run -i`).
async fn open_stdin(
    pl: &kic_portlayer::PortLayer,
    cid: &str,
) -> Option<kic_portlayer::StdinWriter> {
    for _ in 0..1200 {
        match pl.inspect(cid) {
            Ok(v) if v.state.running() && v.state.main_started => {
                return pl.attach_stdin(cid).await.ok();
            }
            Ok(v) if v.state.status == Status::Exited && v.state.started_at.is_some() => {
                return None
            }
            Ok(_) => {}
            Err(_) => return None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `?h=&w=` of the container and exec resize routes.
#[derive(Deserialize)]
pub(super) struct ResizeQuery {
    pub h: Option<u16>,
    pub w: Option<u16>,
}

async fn resize(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ResizeQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    if !v.state.running() {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            v.config.id
        )));
    }
    s.pl.resize(&v.config.id, None, q.h.unwrap_or(24), q.w.unwrap_or(80))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn top(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let v = s.pl.inspect(&id)?;
    if !v.state.running() {
        return Err(ApiError::conflict(format!(
            "container {} is not running",
            v.config.id
        )));
    }
    let (titles, procs) = s.pl.top(&v.config.id).await?;
    Ok(Json(json!({"Titles": titles, "Processes": procs})))
}

// ---------------------------------------------------------------------------------------------
// stats

#[derive(Deserialize)]
struct StatsQuery {
    stream: Option<String>,
    #[serde(rename = "one-shot")]
    one_shot: Option<String>,
}

/// Host CPU time in ns (all CPUs), as dockerd's `system_cpu_usage`.
fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let ticks: u64 = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

async fn sample(s: &AppState, v: &ContainerView) -> Value {
    let running =
        s.pl.inspect(&v.config.id)
            .map(|v| v.state.running())
            .unwrap_or(false);
    let (mem_kib, cpu_ns) = if running {
        s.pl.vm_usage(&v.config.id).await.unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    json!({
        "read": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu_ns, "usage_in_kernelmode": 0, "usage_in_usermode": cpu_ns},
            "system_cpu_usage": system_cpu_ns(),
            "online_cpus": v.config.vcpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": if running {
            json!({"usage": mem_kib * 1024, "limit": v.config.memory_mib * 1024 * 1024, "stats": {}})
        } else { json!({}) },
        "pids_stats": {},
        "blkio_stats": {},
        "num_procs": 0,
        "name": format!("/{}", v.config.name),
        "id": v.config.id,
    })
}

async fn stats(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StatsQuery>,
) -> ApiResult<Response> {
    let v = s.pl.inspect(&id)?;
    let streaming = q
        .stream
        .as_deref()
        .map(|x| x != "0" && x != "false")
        .unwrap_or(true);
    let one_shot = flag(&q.one_shot);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut prev = if one_shot {
            json!({})
        } else {
            sample(&s, &v).await
        };
        // One sample (`docker stats --no-stream`): the CLI gives up when it has nothing after
        // 2 s, so its CPU delta is taken over half a second; a stream samples every second.
        let gap = if streaming {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(500)
        };
        loop {
            if !one_shot {
                tokio::time::sleep(gap).await;
            }
            let mut cur = sample(&s, &v).await;
            cur["precpu_stats"] = prev.get("cpu_stats").cloned().unwrap_or(json!({}));
            cur["preread"] = prev.get("read").cloned().unwrap_or(json!(ZERO_TIME));
            if tx.send(Ok(Bytes::from(format!("{cur}\n")))).await.is_err() || !streaming {
                return;
            }
            prev = cur;
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream_of(rx)))
        .expect("valid response"))
}

// ---------------------------------------------------------------------------------------------
// policies: events for exits, auto-remove, restart policies

/// Watch every container this VCH has (at endpoint start), and apply the policies of those that
/// exited while no endpoint ran.
pub async fn start_policies(s: &AppState) {
    for v in s.pl.list() {
        let hc = host_config(&v);
        if v.state.status == Status::Exited && hc.auto_remove {
            tracing::info!(
                "removing {} (auto-remove; it exited while the endpoint was down)",
                v.config.id
            );
            if s.pl.remove(&v.config.id, false).await.is_ok() {
                s.events.container(&v, "destroy", BTreeMap::new());
                volumes::remove_anonymous(s, &v).await;
            }
            continue;
        }
        watch_container(s, &v.config.id);
    }
}

/// Follow one container: publish `die`, then remove it (`--rm`) or restart it (`--restart`).
pub fn watch_container(s: &AppState, id: &str) {
    let Ok(mut rx) = s.pl.subscribe(id) else {
        return;
    };
    let (s, id) = (s.clone(), id.to_string());
    tokio::spawn(async move {
        let mut was_running = rx.borrow().running();
        let mut retries = 0i64;
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let st = rx.borrow_and_update().clone();
            if st.status == Status::Dead {
                return;
            }
            if st.running() {
                was_running = true;
                continue;
            }
            if !was_running {
                continue;
            }
            was_running = false;
            s.net.container_stopped(&s, &id);
            let Ok(v) = s.pl.inspect(&id) else { return };
            let mut a = BTreeMap::new();
            a.insert("exitCode".into(), st.exit_code.unwrap_or(0).to_string());
            s.events.container(&v, "die", a);
            volumes::mount_events(&s, &v, "unmount");
            let hc = host_config(&v);
            if hc.auto_remove {
                s.pl.settle(&id, Duration::from_secs(10)).await;
                if s.pl.remove(&id, false).await.is_ok() {
                    s.events.container(&v, "destroy", BTreeMap::new());
                    volumes::remove_anonymous(&s, &v).await;
                }
                return;
            }
            let policy = hc.restart_policy.unwrap_or_default();
            let by_user = s.stopped_by_user.lock().expect("lock").contains(&id);
            let code = st.exit_code.unwrap_or(0);
            let again = !by_user
                && match policy.name.as_str() {
                    "always" | "unless-stopped" => true,
                    "on-failure" => {
                        code != 0
                            && (policy.maximum_retry_count <= 0
                                || retries < policy.maximum_retry_count)
                    }
                    _ => false,
                };
            if again {
                retries += 1;
                let delay = Duration::from_millis(100u64 << retries.min(8) as u64);
                let (s2, id2) = (s.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    s2.pl.settle(&id2, Duration::from_secs(10)).await;
                    if s2.stopped_by_user.lock().expect("lock").contains(&id2) {
                        return;
                    }
                    match crate::net::ctl::start(&s2, &id2).await {
                        Ok(()) => {
                            if let Ok(v) = s2.pl.inspect(&id2) {
                                s2.events.container(&v, "start", BTreeMap::new());
                            }
                        }
                        Err(e) => tracing::warn!("restart policy: cannot restart {id2}: {e}"),
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_into_lines() {
        let r = kic_portlayer::logfile::LogRecord {
            stream: 1,
            time_nanos: 5,
            data: b"a\nbc\nd".to_vec(),
        };
        let l = lines_of(&r);
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].2, b"bc\n");
        assert_eq!(l[2].2, b"d");
    }

    #[test]
    fn name_filter_anchors() {
        assert_eq!(regex_lite_match("^web$", "web"), Some(true));
        assert_eq!(regex_lite_match("^web$", "web1"), Some(false));
        assert_eq!(regex_lite_match("^we", "web1"), Some(true));
        assert_eq!(regex_lite_match("web", "web1"), None);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "40");
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        assert_eq!(
            rfc3339_nanos(1_500_000_001),
            "1970-01-01T00:00:01.500000001Z"
        );
    }
}
