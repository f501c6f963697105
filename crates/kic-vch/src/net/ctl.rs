//! The endpoint's side of container networking: one DNS responder per network (on the
//! network's gateway address, inside the VCH's namespace) and the published ports of running
//! containers. Both are rebuilt when the endpoint starts, from the port layer's state and the
//! published ports kept on the datastore (`<datastore>/published/<id>.json`).

use super::dns::{self, Resolver};
use super::netns::Netns;
use super::proxy::{self, PortSpec, Proto, Published};
use crate::api::{ApiError, ApiResult, AppState};
use kic_portlayer::{NetworkConfig, PortLayer, Status};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use tokio::task::AbortHandle;

/// One published port as it is bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// `tcp` or `udp`.
    pub proto: String,
    pub container_port: u16,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

#[derive(Default)]
pub struct NetCtl {
    ns: Mutex<Option<Netns>>,
    published: Mutex<HashMap<String, (Published, Vec<PortMap>)>>,
    dns: Mutex<HashMap<String, AbortHandle>>,
}

impl PortMap {
    fn of(b: &proxy::BoundPort) -> PortMap {
        PortMap {
            proto: b.spec.proto.to_string(),
            container_port: b.spec.container_port,
            host_ip: b.spec.host_ip,
            host_port: b.host_port(),
        }
    }

    /// What to bind to publish this port again.
    fn spec(&self) -> PortSpec {
        PortSpec {
            proto: proto_of(&self.proto),
            host_ip: self.host_ip,
            host_port: self.host_port,
            container_port: self.container_port,
        }
    }
}

/// `tcp` or `udp` (as [`parse_port_key`] gives them) as the proxy's protocol.
fn proto_of(name: &str) -> Proto {
    if name == "udp" {
        Proto::Udp
    } else {
        Proto::Tcp
    }
}

fn parse_port_key(k: &str) -> ApiResult<(String, u16)> {
    let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return Err(ApiError::bad_request(format!(
            "invalid proto '{proto}' in port {k}: KIC publishes tcp and udp"
        )));
    }
    let p: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid containerPort: {port}")))?;
    Ok((proto, p))
}

/// The ports a container exposes: its `Config.ExposedPorts` and the image's.
pub fn exposed(s: &AppState, v: &kic_portlayer::ContainerView) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    let cfg = v.config.extra.get("docker").and_then(|d| d.get("Config"));
    let mine = cfg
        .and_then(|c| c.get("ExposedPorts"))
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let image =
        s.pl.images()
            .get(&v.config.image_id)
            .ok()
            .and_then(|i| i.config.config.exposed_ports.clone())
            .map(|m| m.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
    for k in mine.iter().chain(&image) {
        if let Ok(p) = parse_port_key(k) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// What a container asks to publish (`PortBindings`, and `PublishAllPorts` for the rest of
/// its exposed ports).
pub fn wanted(s: &AppState, v: &kic_portlayer::ContainerView) -> ApiResult<Vec<PortSpec>> {
    let hc = v
        .config
        .extra
        .get("docker")
        .and_then(|d| d.get("HostConfig"))
        .cloned()
        .unwrap_or(json!({}));
    let mut out: Vec<PortSpec> = Vec::new();
    if let Some(pb) = hc.get("PortBindings").and_then(Value::as_object) {
        for (k, binds) in pb {
            let (proto, cport) = parse_port_key(k)?;
            let list = binds.as_array().cloned().unwrap_or_default();
            let list = if list.is_empty() {
                vec![json!({})]
            } else {
                list
            };
            for b in list {
                let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
                let hp = b.get("HostPort").and_then(Value::as_str).unwrap_or("");
                let ip = match ip {
                    "" => None,
                    x => Some(x.parse::<IpAddr>().map_err(|_| {
                        ApiError::bad_request(format!("invalid host IP address {x:?} for port {k}"))
                    })?),
                };
                let hp = match hp {
                    "" => 0,
                    x => x.parse::<u16>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid host port {x:?} for port {k}: KIC takes one port (or none for a free one), not a range"
                        ))
                    })?,
                };
                out.push(PortSpec {
                    proto: proto_of(&proto),
                    host_ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    host_port: hp,
                    container_port: cport,
                });
            }
        }
    }
    if hc.get("PublishAllPorts").and_then(Value::as_bool) == Some(true) {
        for (proto, p) in exposed(s, v) {
            if !out
                .iter()
                .any(|w| w.proto.to_string() == proto && w.container_port == p)
            {
                out.push(PortSpec {
                    proto: proto_of(&proto),
                    host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    host_port: 0,
                    container_port: p,
                });
            }
        }
    }
    Ok(out)
}

fn ports_file(s: &AppState, id: &str) -> std::path::PathBuf {
    s.cfg.datastore.join("published").join(format!("{id}.json"))
}

/// Start a container: bind its published ports, boot it, then forward to it. A host port that
/// cannot be bound fails the start before the VM boots.
pub async fn start(s: &AppState, id: &str) -> ApiResult<()> {
    let v = s.pl.inspect(id)?;
    let specs = wanted(s, &v)?;
    if specs.is_empty() {
        s.pl.start(id).await?;
        return Ok(());
    }
    if v.config.networks.is_empty() {
        return Err(ApiError::bad_request(
            "conflicting options: port publishing and the container type network mode (none)",
        ));
    }
    let bound = match proxy::bind(&specs).await {
        Ok(b) => b,
        Err(e) => {
            let taken_by_us = s
                .net
                .published
                .lock()
                .expect("lock")
                .values()
                .any(|(_, maps)| {
                    maps.iter().any(|m| {
                        m.host_port == e.spec().host_port && m.proto == e.spec().proto.to_string()
                    })
                });
            let ep = &v.config.id[..12];
            let msg = if taken_by_us {
                format!(
                    "failed to set up container networking: driver failed programming external connectivity on endpoint {} ({ep}): Bind for {}:{} failed: port is already allocated",
                    v.config.name,
                    e.spec().host_ip,
                    e.spec().host_port
                )
            } else {
                format!(
                    "failed to set up container networking: driver failed programming external connectivity on endpoint {} ({ep}): {e}",
                    v.config.name
                )
            };
            return Err(ApiError::internal(msg));
        }
    };
    s.pl.start(id).await?;
    let v = s.pl.inspect(id)?;
    let Some(target) = v.state.net.first().map(|a| a.ip) else {
        return Ok(());
    };
    let Some(ns) = s.net.netns(s) else {
        return Ok(());
    };
    let maps = s.net.serve_ports(&v.config.id, bound, ns, target);
    let f = ports_file(s, &v.config.id);
    let _ = std::fs::create_dir_all(f.parent().expect("has parent"));
    let _ = std::fs::write(&f, serde_json::to_vec(&maps).expect("serializable"));
    Ok(())
}

impl NetCtl {
    /// Forward the bound ports to `target` from inside the namespace; what they are.
    fn serve_ports(
        &self,
        id: &str,
        bound: proxy::Bound,
        ns: Netns,
        target: Ipv4Addr,
    ) -> Vec<PortMap> {
        let maps: Vec<PortMap> = bound.ports().iter().map(PortMap::of).collect();
        let published = bound.serve(ns, target);
        self.published
            .lock()
            .expect("lock")
            .insert(id.to_string(), (published, maps.clone()));
        maps
    }

    fn netns(&self, s: &AppState) -> Option<Netns> {
        let mut g = self.ns.lock().expect("lock");
        if g.is_none() {
            let setup = s.pl.network_setup()?;
            match Netns::open(setup.netns_path()) {
                Ok(n) => *g = Some(n),
                Err(e) => tracing::error!("container networks: {e}"),
            }
        }
        g.clone()
    }

    /// At endpoint start: DNS for every network, ports of the running containers again.
    pub async fn init(&self, s: &AppState) {
        if s.pl.network_setup().is_none() {
            return;
        }
        for n in s.pl.network_list() {
            self.network_added(s, &n).await;
        }
        for v in s.pl.list() {
            let f = ports_file(s, &v.config.id);
            if v.state.status != Status::Running {
                let _ = std::fs::remove_file(&f);
                continue;
            }
            let Ok(b) = std::fs::read(&f) else { continue };
            let Ok(maps) = serde_json::from_slice::<Vec<PortMap>>(&b) else {
                continue;
            };
            let (Some(target), Some(ns)) = (v.state.net.first().map(|a| a.ip), self.netns(s))
            else {
                continue;
            };
            let specs: Vec<PortSpec> = maps.iter().map(PortMap::spec).collect();
            match proxy::bind(&specs).await {
                Ok(bound) => {
                    self.serve_ports(&v.config.id, bound, ns, target);
                }
                Err(e) => tracing::error!(
                    "container {}: cannot publish its ports again: {e}",
                    v.config.id
                ),
            }
        }
    }

    /// The container stopped (or went away): its ports are released.
    pub fn container_stopped(&self, s: &AppState, id: &str) {
        if let Some((p, _)) = self.published.lock().expect("lock").remove(id) {
            drop(p);
        }
        let _ = std::fs::remove_file(ports_file(s, id));
    }

    /// The published ports of a running container.
    pub fn ports(&self, id: &str) -> Vec<PortMap> {
        self.published
            .lock()
            .expect("lock")
            .get(id)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Serve DNS for network `n` on its gateway address.
    pub async fn network_added(&self, s: &AppState, n: &NetworkConfig) {
        if n.external {
            // A host segment: its own nameservers serve it.
            return;
        }
        let Some(ns) = self.netns(s) else { return };
        let addr = SocketAddr::V4(SocketAddrV4::new(n.gateway, 53));
        let sock = match ns.udp_bind(addr).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("network {}: no DNS responder: {e}", n.name);
                return;
            }
        };
        let upstream = dns::upstream_from_resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
        let r: Arc<dyn Resolver> = Arc::new(VchResolver { pl: s.pl.clone() });
        let name = n.name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = dns::serve(sock, r, upstream, Arc::new(dns::bind_for)).await {
                tracing::error!("network {name}: DNS responder ended: {e}");
            }
        });
        if let Some(old) = self
            .dns
            .lock()
            .expect("lock")
            .insert(n.id.clone(), task.abort_handle())
        {
            old.abort();
        }
    }

    pub fn network_removed(&self, id: &str) {
        if let Some(t) = self.dns.lock().expect("lock").remove(id) {
            t.abort();
        }
    }
}

/// `NetworkSettings.Ports` of a container: every exposed or published port, with its host
/// bindings while it runs.
pub fn ports_json(s: &AppState, v: &kic_portlayer::ContainerView) -> Value {
    if v.state.status != Status::Running {
        return json!({});
    }
    let mut o: BTreeMap<String, Value> = BTreeMap::new();
    for (proto, p) in exposed(s, v) {
        o.insert(format!("{p}/{proto}"), Value::Null);
    }
    for m in s.net.ports(&v.config.id) {
        let k = format!("{}/{}", m.container_port, m.proto);
        let e = o.entry(k).or_insert(Value::Null);
        if e.is_null() {
            *e = json!([]);
        }
        e.as_array_mut().expect("array").push(json!({
            "HostIp": m.host_ip.to_string(),
            "HostPort": m.host_port.to_string(),
        }));
    }
    json!(o)
}

/// `Ports` of `docker ps`.
pub fn ports_list_json(s: &AppState, v: &kic_portlayer::ContainerView) -> Value {
    let mut out = Vec::new();
    let maps = if v.state.status == Status::Running {
        s.net.ports(&v.config.id)
    } else {
        Vec::new()
    };
    for (proto, p) in exposed(s, v) {
        if !maps
            .iter()
            .any(|m| m.container_port == p && m.proto == proto)
        {
            out.push(json!({"PrivatePort": p, "Type": proto}));
        }
    }
    for m in maps {
        out.push(json!({
            "IP": m.host_ip.to_string(),
            "PrivatePort": m.container_port,
            "PublicPort": m.host_port,
            "Type": m.proto,
        }));
    }
    Value::Array(out)
}

/// Names of running containers as the containers that share a network with them see them:
/// container name, short ID, network aliases, and the asking container's link aliases. On
/// the default bridge only links resolve (as in Docker).
struct VchResolver {
    pl: PortLayer,
}

impl VchResolver {
    fn client(&self, client: Ipv4Addr) -> Option<kic_portlayer::ContainerView> {
        self.pl.list().into_iter().find(|v| {
            v.state.status == Status::Running && v.state.net.iter().any(|a| a.ip == client)
        })
    }
}

impl Resolver for VchResolver {
    fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
        let me = self.client(client)?;
        let mut out = Vec::new();
        for e in &me.config.networks {
            let Ok(net) = self.pl.network_find(&e.network_id) else {
                continue;
            };
            let eps = self.pl.network_endpoints(&net.id);
            for l in &e.links {
                let (target, alias) = l.split_once(':').unwrap_or((l, l));
                let target = target.trim_start_matches('/');
                let alias = alias.rsplit('/').next().unwrap_or(alias);
                if alias.eq_ignore_ascii_case(name) || target.eq_ignore_ascii_case(name) {
                    if let Some((_, a)) = eps.iter().find(|(v, _)| v.config.name == target) {
                        out.push(a.ip);
                    }
                }
            }
            if net.builtin {
                continue;
            }
            let suffix = format!(".{}", net.name.to_ascii_lowercase());
            let bare = name.strip_suffix(&suffix).unwrap_or(name);
            for (v, a) in &eps {
                let aliases = v
                    .config
                    .networks
                    .iter()
                    .find(|x| x.network_id == net.id)
                    .map(|x| x.aliases.clone())
                    .unwrap_or_default();
                let hit = v.config.name.eq_ignore_ascii_case(bare)
                    || v.config.id[..12].eq_ignore_ascii_case(bare)
                    || aliases.iter().any(|x| x.eq_ignore_ascii_case(bare));
                if hit && !out.contains(&a.ip) {
                    out.push(a.ip);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn reverse(&self, client: Ipv4Addr, addr: Ipv4Addr) -> Option<String> {
        let me = self.client(client)?;
        for e in &me.config.networks {
            let Ok(net) = self.pl.network_find(&e.network_id) else {
                continue;
            };
            if net.builtin {
                continue;
            }
            if let Some((v, _)) = self
                .pl
                .network_endpoints(&net.id)
                .into_iter()
                .find(|(_, a)| a.ip == addr)
            {
                return Some(format!("{}.{}", v.config.name, net.name));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_keys() {
        assert_eq!(parse_port_key("80/tcp").unwrap(), ("tcp".into(), 80));
        assert_eq!(parse_port_key("53/UDP").unwrap(), ("udp".into(), 53));
        assert_eq!(parse_port_key("8080").unwrap(), ("tcp".into(), 8080));
        assert!(parse_port_key("80/sctp").is_err());
        assert!(parse_port_key("0/tcp").is_err());
        assert!(parse_port_key("x/tcp").is_err());
    }
}
