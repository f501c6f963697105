//! Docker networks: `/networks` routes, and the network part of container create, inspect and
//! list. A network is a bridge in the VCH's network namespace (see `kic_portlayer::network`);
//! the endpoint adds a DNS responder per network and publishes ports (see `crate::net::ctl`).

use super::util;
use super::{ApiError, ApiResult, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kic_portlayer::network::{DEFAULT_NETWORK, NONE_NETWORK};
use kic_portlayer::{ContainerView, EndpointRequest, NetworkConfig, NetworkCreate};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/networks", get(list))
        .route("/networks/create", post(create))
        .route("/networks/prune", post(prune))
        .route("/networks/{id}", get(inspect).delete(remove))
        .route("/networks/{id}/connect", post(connect))
        .route("/networks/{id}/disconnect", post(disconnect))
}

/// The ID `none` has on this VCH (a stable pseudo network: loopback only).
pub fn none_id(s: &AppState) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("kic-none-{}", s.cfg.name)))
}

fn none_json(s: &AppState) -> Value {
    json!({
        "Name": NONE_NETWORK,
        "Id": none_id(s),
        "Created": s.cfg.created,
        "Scope": "local",
        "Driver": "null",
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": []},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Options": {},
        "Labels": {},
    })
}

/// A network as `GET /networks/{id}` shows it; `containers` adds the running endpoints.
pub fn network_json(s: &AppState, n: &NetworkConfig, containers: bool) -> Value {
    let mut ipam = json!({"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string()});
    if let Some(r) = n.ip_range {
        ipam["IPRange"] = json!(r.to_string());
    }
    // A DHCP container network: the segment is the server's business unless the VCH knows it.
    let ipam_config = if n.dhcp && !n.user_subnet {
        json!([])
    } else {
        json!([ipam])
    };
    let mut options = n.options.clone();
    options.insert("com.docker.network.bridge.name".into(), n.bridge.clone());
    if n.builtin && !n.external {
        options.insert(
            "com.docker.network.bridge.default_bridge".into(),
            "true".into(),
        );
    }
    let mut eps = serde_json::Map::new();
    if containers {
        for (v, a) in s.pl.network_endpoints(&n.id) {
            eps.insert(
                v.config.id.clone(),
                json!({
                    "Name": v.config.name,
                    "EndpointID": a.endpoint_id,
                    "MacAddress": a.mac,
                    "IPv4Address": format!("{}/{}", a.ip, a.prefix_len),
                    "IPv6Address": "",
                }),
            );
        }
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": {}, "Config": ipam_config},
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": eps,
        "Options": options,
        "Labels": n.labels,
    })
}

fn publish(s: &AppState, action: &str, n: &NetworkConfig, extra: BTreeMap<String, String>) {
    let mut a = extra;
    a.insert("name".into(), n.name.clone());
    a.insert("type".into(), n.driver.clone());
    s.events.publish("network", action, &n.id, a);
}

#[derive(Deserialize)]
struct ListQuery {
    filters: Option<String>,
}

/// Networks with `filters` (name, id, label, driver, type, scope, dangling) applied.
fn filtered(s: &AppState, raw: Option<&str>) -> ApiResult<Vec<(Value, bool)>> {
    let f = util::parse_filters(raw).map_err(ApiError::bad_request)?;
    util::check_filter_keys(
        &f,
        &["name", "id", "label", "driver", "type", "scope", "dangling"],
    )
    .map_err(ApiError::bad_request)?;
    for t in f.get("type").into_iter().flatten() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let dangling = match f.get("dangling").and_then(|d| d.first()) {
        Some(d) => Some(util::filter_bool("dangling", d).map_err(ApiError::bad_request)?),
        None => None,
    };
    let mut all: Vec<(Value, bool, bool, BTreeMap<String, String>)> =
        s.pl.network_list()
            .iter()
            .map(|n| {
                let used = !s.pl.network_endpoints(&n.id).is_empty();
                (network_json(s, n, true), n.builtin, used, n.labels.clone())
            })
            .collect();
    all.push((none_json(s), true, false, BTreeMap::new()));
    let any = |key: &str, m: &dyn Fn(&str) -> bool| {
        f.get(key)
            .map(|vals| vals.is_empty() || vals.iter().any(|x| m(x)))
            .unwrap_or(true)
    };
    Ok(all
        .into_iter()
        .filter(|(j, builtin, used, labels)| {
            let name = j["Name"].as_str().unwrap_or("");
            let id = j["Id"].as_str().unwrap_or("");
            any("name", &|x| name.contains(x))
                && any("id", &|x| id.starts_with(x))
                && any("driver", &|x| j["Driver"] == x)
                && any("scope", &|x| x == "local")
                && any("type", &|x| (x == "builtin") == *builtin)
                && f.get("label")
                    .map(|ls| ls.iter().all(|l| util::label_matches(labels, l)))
                    .unwrap_or(true)
                && dangling.is_none_or(|d| d == (!*used && !*builtin))
        })
        .map(|(j, b, _, _)| (j, b))
        .collect())
}

async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let nets: Vec<Value> = filtered(&s, q.filters.as_deref())?
        .into_iter()
        .map(|(mut j, _)| {
            // As dockerd 25+: the list does not carry the endpoints.
            j["Containers"] = json!({});
            j
        })
        .collect();
    Ok(Json(Value::Array(nets)))
}

async fn inspect(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if id == NONE_NETWORK || (id.len() >= 12 && none_id(&s).starts_with(&id)) {
        return Ok(Json(none_json(&s)));
    }
    let n = s.pl.network_find(&id)?;
    Ok(Json(network_json(&s, &n, true)))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfig {
    subnet: String,
    #[serde(rename = "IPRange")]
    ip_range: String,
    gateway: String,
    auxiliary_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Ipam {
    driver: String,
    config: Option<Vec<IpamConfig>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    internal: bool,
    attachable: bool,
    ingress: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    ipam: Option<Ipam>,
    options: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

async fn create(State(s): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let b: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid network configuration: {e}")))?;
    if b.name.is_empty() {
        return Err(ApiError::bad_request("network name is required"));
    }
    if b.enable_ipv6 == Some(true) {
        return Err(ApiError::bad_request(
            "KIC networks are IPv4 only: create the network without --ipv6",
        ));
    }
    if b.ingress || b.driver == "overlay" {
        return Err(ApiError::not_implemented(
            "swarm networks (overlay, ingress) are not supported by KIC",
        ));
    }
    let ipam = b.ipam.unwrap_or_default();
    if !matches!(ipam.driver.as_str(), "" | "default") {
        return Err(ApiError::not_found(format!(
            "plugin \"{}\" not found: KIC networks use the default IPAM driver",
            ipam.driver
        )));
    }
    let cfgs = ipam.config.unwrap_or_default();
    if cfgs.len() > 1 {
        return Err(ApiError::bad_request(
            "KIC networks take one IPv4 subnet: give --subnet once",
        ));
    }
    let c = cfgs.into_iter().next().unwrap_or_default();
    if c.subnet.contains(':') {
        return Err(ApiError::bad_request(
            "KIC networks are IPv4 only: give an IPv4 --subnet",
        ));
    }
    if c.auxiliary_addresses.is_some_and(|a| !a.is_empty()) {
        return Err(ApiError::bad_request(
            "--aux-address is not supported by KIC networks",
        ));
    }
    let _ = b.attachable;
    let n =
        s.pl.network_create(NetworkCreate {
            name: b.name,
            driver: Some(b.driver).filter(|d| !d.is_empty()),
            subnet: Some(c.subnet).filter(|x| !x.is_empty()),
            gateway: Some(c.gateway).filter(|x| !x.is_empty()),
            ip_range: Some(c.ip_range).filter(|x| !x.is_empty()),
            internal: b.internal,
            labels: b.labels.unwrap_or_default(),
            options: b.options.unwrap_or_default(),
        })
        .await?;
    s.net.network_added(&s, &n).await;
    publish(&s, "create", &n, BTreeMap::new());
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": n.id, "Warning": ""})),
    )
        .into_response())
}

async fn remove(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    if id == NONE_NETWORK || id == "host" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{id} is a pre-defined network and cannot be removed"),
        ));
    }
    let n = s.pl.network_remove(&id).await?;
    s.net.network_removed(&n.id);
    publish(&s, "destroy", &n, BTreeMap::new());
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PruneQuery {
    filters: Option<String>,
}

async fn prune(State(s): State<AppState>, Query(q): Query<PruneQuery>) -> ApiResult<Json<Value>> {
    let f = util::parse_filters(q.filters.as_deref()).map_err(ApiError::bad_request)?;
    util::check_filter_keys(&f, &["label", "label!", "until"]).map_err(ApiError::bad_request)?;
    let until = match f.get("until").and_then(|u| u.first()) {
        Some(u) => Some(util::parse_time_arg(u).map_err(ApiError::bad_request)?),
        None => None,
    };
    let mut deleted = Vec::new();
    for n in s.pl.network_list() {
        if n.builtin || !s.pl.network_endpoints(&n.id).is_empty() {
            continue;
        }
        let labels_ok = f
            .get("label")
            .map(|ls| ls.iter().all(|l| util::label_matches(&n.labels, l)))
            .unwrap_or(true)
            && f.get("label!")
                .map(|ls| !ls.iter().any(|l| util::label_matches(&n.labels, l)))
                .unwrap_or(true);
        if !labels_ok || until.is_some_and(|u| util::unix_of(Some(&n.created)) >= u) {
            continue;
        }
        if s.pl.network_remove(&n.id).await.is_ok() {
            s.net.network_removed(&n.id);
            publish(&s, "destroy", &n, BTreeMap::new());
            deleted.push(n.name);
        }
    }
    Ok(Json(json!({"NetworksDeleted": deleted})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointIpam {
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointConfig {
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<serde_json::Value>,
    links: Option<Vec<String>>,
    aliases: Option<Vec<String>>,
}

impl EndpointConfig {
    /// The port layer's request for network `network` (name or ID).
    pub fn request(&self, network: &str) -> ApiResult<EndpointRequest> {
        let ipam: EndpointIpam = self
            .ipam_config
            .clone()
            .filter(|v| !v.is_null())
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("invalid IPAMConfig: {e}")))?
            .unwrap_or_default();
        let ipv4 = match ipam.ipv4_address.as_str() {
            "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid IPv4 address: {a}")))?,
            ),
        };
        Ok(EndpointRequest {
            network_id: network.to_string(),
            aliases: self.aliases.clone().unwrap_or_default(),
            links: self.links.clone().unwrap_or_default(),
            ipv4,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectBody {
    container: String,
    endpoint_config: Option<EndpointConfig>,
    force: bool,
}

fn no_such_network_for(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("container cannot be disconnected from or connected to network {id}: it is a pre-defined network without endpoints"),
    )
}

/// What connect and disconnect both start with: the body, the network (not `none`), the
/// container.
fn endpoint_target(
    s: &AppState,
    id: &str,
    body: &[u8],
) -> ApiResult<(ConnectBody, NetworkConfig, ContainerView)> {
    let b: ConnectBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    if id == NONE_NETWORK {
        return Err(no_such_network_for(id));
    }
    let n = s.pl.network_find(id)?;
    let v = s.pl.inspect(&b.container)?;
    Ok((b, n, v))
}

fn publish_endpoint(s: &AppState, action: &str, n: &NetworkConfig, v: &ContainerView) {
    let mut a = BTreeMap::new();
    a.insert("container".into(), v.config.id.clone());
    publish(s, action, n, a);
}

async fn connect(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let (b, n, v) = endpoint_target(&s, &id, &body)?;
    let req = b.endpoint_config.unwrap_or_default().request(&n.id)?;
    s.pl.network_connect(&v.config.id, req).await?;
    publish_endpoint(&s, "connect", &n, &v);
    Ok(StatusCode::OK.into_response())
}

/// `Force` changes nothing: a running container is refused either way (no NIC hot-plug).
async fn disconnect(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let (_, n, v) = endpoint_target(&s, &id, &body)?;
    s.pl.network_disconnect(&v.config.id, &n.id).await?;
    publish_endpoint(&s, "disconnect", &n, &v);
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------------------------------------
// the network part of containers

/// The networks a create request joins, from `HostConfig.NetworkMode`,
/// `NetworkingConfig.EndpointsConfig` and `HostConfig.Links`.
pub fn create_endpoints(
    s: &AppState,
    mode: &str,
    endpoints: &BTreeMap<String, EndpointConfig>,
    links: &[String],
) -> ApiResult<Vec<EndpointRequest>> {
    let mode = match mode {
        "" | "default" => DEFAULT_NETWORK,
        m => m,
    };
    if mode == NONE_NETWORK {
        if endpoints.keys().any(|k| k != NONE_NETWORK) {
            return Err(ApiError::bad_request(
                "conflicting options: container cannot be connected to multiple networks with one of the networks in private (none) mode",
            ));
        }
        return Ok(Vec::new());
    }
    if mode == "host" {
        return Err(ApiError::not_implemented(
            "--network host is not supported by KIC: every container is its own VM with its own network stack",
        ));
    }
    if mode.starts_with("container:") {
        return Err(ApiError::not_implemented(
            "--network container:<name> is not supported by KIC: containers are separate VMs and cannot share a network stack",
        ));
    }
    if s.pl.network_setup().is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this VCH has no container networks: use --network none",
        ));
    }
    let primary = s.pl.network_find(mode)?;
    // The CLI keys the mode's endpoint by the mode as given (`default` too).
    let endpoints: BTreeMap<String, EndpointConfig> = endpoints
        .iter()
        .map(|(k, e)| {
            let k = if k == "default" { DEFAULT_NETWORK } else { k };
            (k.to_string(), e.clone())
        })
        .collect();
    let endpoints = &endpoints;
    // The mode's network first (it is eth0 and holds the default route), then the others.
    let mut out = Vec::new();
    let key_of = |k: &str| s.pl.network_find(k).map(|n| n.id);
    let mut first = endpoints
        .iter()
        .find(|(k, _)| key_of(k).ok().as_deref() == Some(primary.id.as_str()))
        .map(|(_, e)| e.request(&primary.id))
        .transpose()?
        .unwrap_or_else(|| EndpointRequest {
            network_id: primary.id.clone(),
            ..Default::default()
        });
    first.links.extend(links.iter().cloned());
    out.push(first);
    for (k, e) in endpoints {
        if key_of(k).ok().as_deref() == Some(primary.id.as_str()) {
            continue;
        }
        out.push(e.request(k)?);
    }
    Ok(out)
}

/// `NetworkSettings` of a container, as dockerd reports it; `ports` are the published ports.
pub fn settings_json(s: &AppState, v: &ContainerView, ports: Value) -> Value {
    let running = v.state.status == kic_portlayer::Status::Running;
    let mut nets = serde_json::Map::new();
    if v.config.networks.is_empty() {
        nets.insert(
            NONE_NETWORK.into(),
            endpoint_json(&none_id(s), None, &EndpointRequest::default(), v),
        );
    }
    let mut first: Option<kic_portlayer::Attachment> = None;
    for e in &v.config.networks {
        let name =
            s.pl.network_find(&e.network_id)
                .map(|n| n.name)
                .unwrap_or_else(|_| e.network_id.clone());
        let a = running
            .then(|| v.state.net.iter().find(|a| a.network_id == e.network_id))
            .flatten();
        if first.is_none() {
            first = a.cloned();
        }
        nets.insert(name, endpoint_json(&e.network_id, a, e, v));
    }
    let f = first.as_ref();
    let default_bridge = v
        .config
        .networks
        .first()
        .and_then(|e| s.pl.network_find(&e.network_id).ok())
        .is_some_and(|n| n.builtin && !n.external);
    // Docker fills the top-level address fields for the default bridge only.
    let top = |x: Option<String>| {
        if default_bridge {
            x.unwrap_or_default()
        } else {
            String::new()
        }
    };
    json!({
        "Bridge": "",
        "SandboxID": if running { v.config.id.clone() } else { String::new() },
        "SandboxKey": "",
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports,
        "SecondaryIPAddresses": null,
        "SecondaryIPv6Addresses": null,
        "EndpointID": top(f.map(|a| a.endpoint_id.clone())),
        "Gateway": top(f.map(|a| a.gateway.to_string())),
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": top(f.map(|a| a.ip.to_string())),
        "IPPrefixLen": if default_bridge { f.map(|a| a.prefix_len).unwrap_or(0) } else { 0 },
        "IPv6Gateway": "",
        "MacAddress": top(f.map(|a| a.mac.clone())),
        "Networks": nets,
    })
}

fn endpoint_json(
    network_id: &str,
    a: Option<&kic_portlayer::Attachment>,
    e: &EndpointRequest,
    v: &ContainerView,
) -> Value {
    let mut dns = vec![v.config.name.clone(), v.config.id[..12].to_string()];
    dns.extend(e.aliases.iter().cloned());
    json!({
        "IPAMConfig": e.ipv4.map(|ip| json!({"IPv4Address": ip.to_string()})),
        "Links": if e.links.is_empty() { Value::Null } else { json!(e.links) },
        "Aliases": if e.aliases.is_empty() { Value::Null } else { json!(e.aliases) },
        "MacAddress": a.map(|a| a.mac.clone()).unwrap_or_default(),
        "DriverOpts": null,
        "GwPriority": 0,
        "NetworkID": network_id,
        "EndpointID": a.map(|a| a.endpoint_id.clone()).unwrap_or_default(),
        "Gateway": a.map(|a| a.gateway.to_string()).unwrap_or_default(),
        "IPAddress": a.map(|a| a.ip.to_string()).unwrap_or_default(),
        "IPPrefixLen": a.map(|a| a.prefix_len).unwrap_or(0),
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": if a.is_some() && !e.aliases.is_empty() { json!(dns) } else { Value::Null },
    })
}

/// `NetworkSettings.Networks` of `docker ps` (addresses of the running networks).
pub fn list_networks_json(s: &AppState, v: &ContainerView) -> Value {
    settings_json(s, v, json!({}))["Networks"].clone()
}

/// What `HostConfig.NetworkMode` reports.
pub fn network_mode(s: &AppState, v: &ContainerView) -> String {
    match v.config.networks.first() {
        None => NONE_NETWORK.into(),
        Some(e) => match s.pl.network_find(&e.network_id) {
            Ok(n) if n.builtin && !n.external => DEFAULT_NETWORK.into(),
            Ok(n) => n.name,
            Err(_) => e.network_id.clone(),
        },
    }
}
