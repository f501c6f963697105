//! System routes: ping, version, info, events; and plain answers for what KIC does not do.

use super::events::Message;
use super::util;
use super::{ApiError, ApiResult, AppState, API_VERSION, MIN_API_VERSION};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use kic_portlayer::Status;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/events", get(events));
    for (path, what) in UNSUPPORTED {
        let what = *what;
        // The request body is read (and dropped) first: a client still uploading, as
        // `docker build` does its context, would otherwise see a broken pipe instead of the
        // answer.
        let h = move |body: Body| async move {
            drain(body).await;
            ApiError::unsupported(what)
        };
        r = r.route(path, any(h));
        r = r.route(&format!("{path}/{{*rest}}"), any(h));
    }
    r
}

/// Read a request body to its end (at most 1 GiB or 30 s), discarding it.
async fn drain(body: Body) {
    use futures::StreamExt;
    let mut st = body.into_data_stream();
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, st.next()).await {
        total += chunk.len();
        if total > 1 << 30 {
            break;
        }
    }
}

/// Families of the Engine API KIC does not serve, with what they are called in the error.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("/swarm", "swarm mode"),
    ("/nodes", "swarm mode (nodes)"),
    ("/services", "swarm services"),
    ("/tasks", "swarm tasks"),
    ("/secrets", "swarm secrets"),
    ("/configs", "swarm configs"),
    ("/plugins", "Docker plugins"),
    ("/build", "docker build"),
    ("/session", "BuildKit sessions (docker build)"),
    ("/grpc", "BuildKit (docker build)"),
    ("/distribution", "the distribution endpoint"),
];

async fn ping() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .header(header::PRAGMA, "no-cache")
        .header("builder-version", "1")
        .header("swarm", "inactive")
        .body(Body::from("OK"))
        .expect("valid response")
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn version(State(s): State<AppState>) -> Json<Value> {
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "KIC (KVM Integrated Containers)"},
        "Components": [
            {"Name": "Engine", "Version": v, "Details": {
                "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux", "Arch": "amd64", "KernelVersion": kernel_version(),
                "DomainType": s.pl.domain_type(),
            }},
            {"Name": "kic-bootstrap", "Version": s.pl.boot_version(), "Details": {}},
        ],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": option_env!("KIC_GIT_COMMIT").unwrap_or("unknown"),
        "GoVersion": "n/a (Rust)",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": kernel_version(),
        "BuildTime": "",
        "KicBootVersion": s.pl.boot_version(),
        "KicDomainType": s.pl.domain_type(),
    }))
}

fn host_mem_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| k * 1024)
        .unwrap_or(0)
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

async fn info(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let cs = s.pl.list();
    let running = cs
        .iter()
        .filter(|c| c.state.status == Status::Running)
        .count();
    let images = s.pl.images().list().map(|l| l.len()).unwrap_or(0);
    let cfg = &s.cfg;
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let lim = |v: Option<u64>| {
        v.map(|x| x.to_string())
            .unwrap_or_else(|| "unlimited".into())
    };
    let mut driver_status = vec![
        json!(["VCH", cfg.name]),
        json!(["Image store", cfg.image_store]),
        json!(["Datastore", cfg.datastore]),
        json!(["libvirt", cfg.target]),
        json!(["Domain type", s.pl.domain_type()]),
        json!(["Boot image", s.pl.boot_version()]),
        json!(["VCH memory limit (MiB)", lim(cfg.limits.memory_mib)]),
        json!(["VCH CPU limit", lim(cfg.limits.cpus.map(u64::from))]),
        json!([
            "VCH container limit",
            lim(cfg.limits.containers.map(u64::from))
        ]),
        json!([
            "Container VM memory (MiB)",
            cfg.container_memory_mib.to_string()
        ]),
        json!(["Container VM vCPUs", cfg.container_cpus.to_string()]),
    ];
    for (label, path) in &cfg.volume_stores {
        driver_status.push(json!([format!("Volume store {label}"), path]));
    }
    let mut warnings = Vec::new();
    if let Some(n) = s.pl.kvm_note() {
        warnings.push(format!("WARNING: container VMs run without KVM: {n}"));
    }
    Ok(Json(json!({
        "ID": cfg.name,
        "Containers": cs.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": cs.len() - running,
        "Images": images,
        "Driver": "kic-vm",
        "DriverStatus": driver_status,
        "Plugins": {"Volume": [], "Network": ["none"], "Authorization": Value::Null, "Log": ["kic"]},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": false,
        "CpuCfsQuota": false,
        "CPUShares": false,
        "CPUSet": false,
        "PidsLimit": false,
        "IPv4Forwarding": false,
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": cfg.debug,
        "NFd": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
        "OomKillDisable": false,
        "NGoroutines": 0,
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "LoggingDriver": "kic",
        "CgroupDriver": "none",
        "CgroupVersion": "",
        "NEventsListener": 0,
        "KernelVersion": kernel_version(),
        "OperatingSystem": format!("KIC VCH on {}", os_name()),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": "x86_64",
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "InsecureRegistryCIDRs": [],
            "IndexConfigs": cfg.registries.insecure.iter().map(|r| (r.clone(), json!({"Name": r, "Mirrors": [], "Secure": false, "Official": false}))).collect::<serde_json::Map<_, _>>(),
            "Mirrors": [],
        },
        "NCPU": cfg.limits.cpus.map(u64::from).unwrap_or(host_cpus),
        "MemTotal": cfg.limits.memory_mib.map(|m| m * 1024 * 1024).unwrap_or_else(host_mem_bytes),
        "GenericResources": Value::Null,
        "DockerRootDir": cfg.datastore,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": cfg.name,
        "Labels": [format!("kic.vch={}", cfg.name)],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"kic-vm": {"path": "libvirt"}},
        "DefaultRuntime": "kic-vm",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": Value::Null},
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": ""},
        "RuncCommit": {"ID": ""},
        "InitCommit": {"ID": ""},
        "SecurityOptions": [],
        "Warnings": warnings,
    })))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

fn event_matches(m: &Message, f: &std::collections::BTreeMap<String, Vec<String>>) -> bool {
    let any = |key: &str, pred: &dyn Fn(&str) -> bool| -> bool {
        match f.get(key) {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => v.iter().any(|x| pred(x)),
        }
    };
    let name = m
        .actor
        .attributes
        .get("name")
        .map(String::as_str)
        .unwrap_or("");
    any("type", &|x| x == m.typ)
        && any("event", &|x| {
            x == m.action || m.action.split(':').next() == Some(x)
        })
        && any("container", &|x| {
            m.typ == "container" && (m.actor.id.starts_with(x) || name == x)
        })
        && any("image", &|x| {
            m.actor
                .attributes
                .get("image")
                .map(|i| i == x)
                .unwrap_or(false)
                || (m.typ == "image" && (m.actor.id == x || name == x))
        })
        && f.get("label")
            .map(|ls| {
                ls.iter()
                    .all(|l| util::label_matches(&m.actor.attributes, l))
            })
            .unwrap_or(true)
}

async fn events(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> ApiResult<Response> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(
        &f,
        &[
            "type",
            "event",
            "container",
            "image",
            "label",
            "network",
            "volume",
            "daemon",
            "scope",
            "node",
            "service",
            "plugin",
            "config",
            "secret",
        ],
    )
    .map_err(ApiError::bad_request)?;
    let parse = |v: &Option<String>| -> ApiResult<Option<i64>> {
        match v.as_deref().filter(|x| !x.is_empty()) {
            Some(x) => util::parse_time_arg(x)
                .map(Some)
                .map_err(ApiError::bad_request),
            None => Ok(None),
        }
    };
    let since = parse(&q.since)?;
    let until = parse(&q.until)?;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let (history, mut rx) = s.events.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let line = |m: &Message| {
        Bytes::from(format!(
            "{}\n",
            serde_json::to_string(m).expect("serialisable")
        ))
    };
    tokio::spawn(async move {
        if since.is_some() || until.is_some() {
            for m in history.iter() {
                if since.is_some_and(|x| m.time_nano < x) || until.is_some_and(|x| m.time_nano > x)
                {
                    continue;
                }
                if event_matches(m, &f) && tx.send(Ok(line(m))).await.is_err() {
                    return;
                }
            }
        }
        if until.is_some_and(|u| u <= now) {
            return;
        }
        let deadline = until.map(|u| {
            tokio::time::Instant::now() + std::time::Duration::from_nanos((u - now).max(0) as u64)
        });
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            tokio::select! {
                r = next => match r {
                    None => return,
                    Some(Ok(m)) => {
                        if event_matches(&m, &f) && tx.send(Ok(line(&m))).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Some(Err(_)) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(super::containers::tokio_stream_of(
            body_rx,
        )))
        .expect("valid response")
        .into_response())
}
