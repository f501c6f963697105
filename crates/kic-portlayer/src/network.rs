//! Container networks: what a network is (subnet, gateway, options), where it is stored, how
//! addresses are handed out, and the plumbing that makes it real.
//!
//! ```text
//! <datastore>/networks/<id>.json   NetworkConfig, one per network (the default `bridge` too)
//! ```
//! Every network of a VCH is a Linux bridge inside the VCH's own network namespace
//! (`/run/netns/<netns>`), which stands between the containers and the host the way VIC's
//! endpoint VM stood between its bridge and public networks: no container address ever
//! appears on the host's interfaces. The namespace reaches the host through one veth pair
//! (`uplink` inside, link-local addresses at both ends) with NAT on the way out, so containers
//! reach outside but nothing outside reaches them except through ports the endpoint publishes.
//! Bridges do not route to each other (the namespace's forward chain drops it), so containers
//! see only the networks they are on.
//!
//! A container's NIC is a tap device that libvirt makes in its own namespace when the VM is
//! created paused; [`Plumbing::attach_tap`] moves it into the VCH's namespace and onto the
//! network's bridge before the VM runs.

use crate::container::now_rfc3339;
use crate::error::{Error, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The network containers join when they name none.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The network mode without any interface but loopback.
pub const NONE_NETWORK: &str = "none";
/// The default `--bridge-network-range`.
pub const DEFAULT_RANGE: &str = "172.16.0.0/12";
/// The interface in the VCH's namespace that leads to the host.
const UPLINK: &str = "uplink";

/// How a VCH's networks are set up.
#[derive(Debug, Clone)]
pub struct NetworkSetup {
    /// Name of the VCH's network namespace (`/run/netns/<name>`).
    pub netns: String,
    /// Where networks created without a subnet take theirs from (`default` first).
    pub range: Ipv4Net,
    /// Host-side name of the uplink veth (at most 15 bytes).
    pub uplink_host: String,
    /// Link-local /30 of the uplink: `.1` on the host side, `.2` in the namespace.
    pub uplink_net: Ipv4Net,
    /// Container networks (VIC's): existing host bridges the admin maps into the VCH.
    pub external: Vec<ExternalNetwork>,
}

/// A host bridge mapped into the VCH as a Docker network (`kic-machine create
/// --container-network BRIDGE:alias`): containers on it get addresses of that segment from
/// `range` and are reached without NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalNetwork {
    /// The Docker network's name.
    pub alias: String,
    /// The Linux bridge in the host's (libvirtd's) network namespace.
    pub bridge: String,
    /// The segment's gateway and prefix (`10.9.0.1/24`); optional with DHCP.
    pub gateway: Option<Ipv4Net>,
    /// Addresses handed to containers (within the segment); `None`: containers ask a DHCP
    /// server on the segment.
    pub range: Option<Ipv4Net>,
    /// Nameservers for containers whose first network this is.
    pub dns: Vec<Ipv4Addr>,
}

impl NetworkSetup {
    /// The setup for VCH `vch` with bridge range `range` (`None`: [`DEFAULT_RANGE`]).
    pub fn for_vch(vch: &str, range: Option<&str>) -> Result<NetworkSetup> {
        let range: Ipv4Net = range.unwrap_or(DEFAULT_RANGE).parse().map_err(|_| {
            Error::invalid(format!(
                "invalid bridge network range {:?}: expected a CIDR such as 172.16.0.0/12",
                range.unwrap_or_default()
            ))
        })?;
        if range.prefix_len() > 24 {
            return Err(Error::invalid(format!(
                "bridge network range {range} is too small: use a /24 or larger"
            )));
        }
        // A stable /30 in 169.254.0.0/16 per VCH name (FNV-1a); /30 number 0 is never used.
        let mut h: u32 = 0x811c9dc5;
        for b in vch.bytes() {
            h = (h ^ b as u32).wrapping_mul(0x01000193);
        }
        let slot = 1 + h % 16383;
        let base = u32::from(Ipv4Addr::new(169, 254, 0, 0)) + slot * 4;
        Ok(NetworkSetup {
            netns: format!("kic-{vch}"),
            range: range.trunc(),
            uplink_host: format!("kicu{:08x}", h)[..12].to_string(),
            uplink_net: Ipv4Net::new(Ipv4Addr::from(base), 30).expect("valid /30"),
            external: Vec::new(),
        })
    }
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
    fn uplink_host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.uplink_net.network()) + 1)
    }
    fn uplink_ns_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.uplink_net.network()) + 2)
    }
}

/// A network as stored and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub id: String,
    pub name: String,
    /// Always `bridge`.
    pub driver: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where addresses are handed out from (the subnet when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    /// No way out of the namespace (Docker's `--internal`).
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
    /// The default network, made by the VCH and never removed.
    #[serde(default)]
    pub builtin: bool,
    /// Whether the subnet was given by the user (reported in IPAM.Config either way).
    #[serde(default)]
    pub user_subnet: bool,
    /// The bridge device inside the VCH's namespace (for a container network: the host's
    /// bridge).
    pub bridge: String,
    /// A container network: a host bridge, no namespace, no NAT.
    #[serde(default)]
    pub external: bool,
    /// Nameservers of a container network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    /// A container network whose addresses come from a DHCP server on the segment (its
    /// `subnet` and `gateway` are `0.0.0.0/32` and `0.0.0.0` unless the VCH was told them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
}

impl NetworkConfig {
    /// The subnet this network claims in the VCH's address plan (none for DHCP without a
    /// known segment).
    fn claimed(&self) -> Option<Ipv4Net> {
        (!self.dhcp || self.user_subnet).then_some(self.subnet)
    }
}

/// What `network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// One container's place on one network for one run: given at start, released at stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The tap device (on the host side of the VM's NIC).
    pub tap: String,
    /// Endpoint ID as Docker reports it.
    pub endpoint_id: String,
}

/// A container's wish to be on a network (its config; addresses come at start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Network ID.
    pub network_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `name:alias` (Docker's `--link`), resolved for this container only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// A fixed address (`--ip`); must lie in the network's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
}

/// Docker's rule for network names.
pub fn valid_network_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The MAC Docker derives from an IPv4 address (`02:42` + the four bytes).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The MAC of container `id`'s `i`-th NIC on a DHCP network: Docker's `02:42` prefix and four
/// bytes of the container ID, so that every start asks with the same one (and gets the same
/// address back from the server).
pub fn mac_for_dhcp(id: &str, i: usize) -> String {
    let n = u32::from_str_radix(id.get(..8).unwrap_or("0"), 16)
        .unwrap_or(0)
        .wrapping_add(i as u32);
    let o = n.to_be_bytes();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The prefix length of the blocks a range is cut into for networks without a subnet.
fn block_len(range: &Ipv4Net) -> u8 {
    (range.prefix_len() + 4).clamp(16, 28)
}

/// The networks of one VCH.
pub struct Networks {
    dir: PathBuf,
    pub setup: NetworkSetup,
    map: Mutex<BTreeMap<String, NetworkConfig>>,
}

impl Networks {
    /// Load the stored networks (making `bridge` the first time) and the plumbing for them.
    pub fn open(datastore: &Path, setup: NetworkSetup) -> Result<Networks> {
        let dir = datastore.join("networks");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let mut map = BTreeMap::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display(), e))? {
            let p = e.map_err(|e| Error::io(dir.display(), e))?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<NetworkConfig>(&b).map_err(|e| e.to_string())
            }) {
                Ok(n) => {
                    map.insert(n.id.clone(), n);
                }
                Err(e) => tracing::warn!("ignoring network file {}: {e}", p.display()),
            }
        }
        let nets = Networks {
            dir,
            setup,
            map: Mutex::new(map),
        };
        if !nets.map.lock().expect("lock").values().any(|n| n.builtin) {
            let subnet = nets.free_block(&[])?;
            nets.insert(NetworkConfig {
                id: crate::runtime::random_id(),
                name: DEFAULT_NETWORK.into(),
                driver: "bridge".into(),
                subnet,
                gateway: first_host(&subnet),
                ip_range: None,
                internal: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                created: now_rfc3339(),
                builtin: true,
                user_subnet: false,
                bridge: String::new(),
                external: false,
                dns: Vec::new(),
                dhcp: false,
            })?;
        }
        nets.sync_external()?;
        Ok(nets)
    }

    fn save(&self, n: &NetworkConfig) -> Result<()> {
        let p = self.dir.join(format!("{}.json", n.id));
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(n).expect("serializable"))
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| Error::io(p.display(), e))
    }

    /// Make the stored container networks match the configuration: new ones added, changed
    /// ones updated (same ID), dropped ones forgotten.
    fn sync_external(&self) -> Result<()> {
        let want = self.setup.external.clone();
        for n in self.list().into_iter().filter(|n| n.external) {
            if !want.iter().any(|w| w.alias == n.name) {
                self.forget(&n)?;
            }
        }
        for w in want {
            let old = self.list().into_iter().find(|n| n.name == w.alias);
            if let Some(o) = old.as_ref().filter(|o| !o.external) {
                return Err(Error::conflict(format!(
                    "container network {} clashes with the network {} of this VCH (id {}): remove that network or choose another alias",
                    w.alias, o.name, &o.id[..12]
                )));
            }
            let n = NetworkConfig {
                id: old
                    .as_ref()
                    .map(|o| o.id.clone())
                    .unwrap_or_else(crate::runtime::random_id),
                name: w.alias.clone(),
                driver: "external".into(),
                subnet: w
                    .gateway
                    .map(|g| g.trunc())
                    .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 32).expect("valid")),
                gateway: w.gateway.map(|g| g.addr()).unwrap_or(Ipv4Addr::UNSPECIFIED),
                ip_range: w.range,
                internal: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                created: old
                    .as_ref()
                    .map(|o| o.created.clone())
                    .unwrap_or_else(now_rfc3339),
                builtin: true,
                user_subnet: w.gateway.is_some(),
                bridge: w.bridge.clone(),
                external: true,
                dns: w.dns.clone(),
                dhcp: w.range.is_none(),
            };
            if old.as_ref() != Some(&n) {
                self.save(&n)?;
                self.map.lock().expect("lock").insert(n.id.clone(), n);
            }
        }
        Ok(())
    }

    fn insert(&self, mut n: NetworkConfig) -> Result<NetworkConfig> {
        n.bridge = format!("kb-{}", &n.id[..10]);
        self.save(&n)?;
        self.map
            .lock()
            .expect("lock")
            .insert(n.id.clone(), n.clone());
        Ok(n)
    }

    /// The first block of the range no network overlaps.
    fn free_block(&self, taken: &[Ipv4Net]) -> Result<Ipv4Net> {
        let used: Vec<Ipv4Net> = self
            .map
            .lock()
            .expect("lock")
            .values()
            .filter_map(NetworkConfig::claimed)
            .chain(taken.iter().copied())
            .collect();
        let r = self.setup.range;
        r.subnets(block_len(&r))
            .expect("block no larger than range")
            .find(|b| !used.iter().any(|u| overlaps(u, b)))
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network (the VCH's bridge network range {r} is used up): remove unused networks or give --subnet"
                ))
            })
    }

    pub fn list(&self) -> Vec<NetworkConfig> {
        self.map.lock().expect("lock").values().cloned().collect()
    }

    /// By exact name, exact ID or unique ID prefix, as Docker finds networks.
    pub fn find(&self, key: &str) -> Result<NetworkConfig> {
        let m = self.map.lock().expect("lock");
        if let Some(n) = m.values().find(|n| n.name == key) {
            return Ok(n.clone());
        }
        if let Some(n) = m.get(key) {
            return Ok(n.clone());
        }
        let hits: Vec<_> = m
            .values()
            .filter(|n| !key.is_empty() && n.id.starts_with(key))
            .collect();
        match hits.len() {
            1 => Ok(hits[0].clone()),
            0 => Err(Error::new(
                crate::error::Kind::NotFound,
                format!("network {key} not found"),
            )),
            _ => Err(Error::invalid(format!(
                "network {key} is ambiguous ({} matches found based on ID prefix)",
                hits.len()
            ))),
        }
    }

    pub fn by_id(&self, id: &str) -> Option<NetworkConfig> {
        self.map.lock().expect("lock").get(id).cloned()
    }

    /// Make a network: checks, storage, and its bridge.
    pub fn create(&self, req: NetworkCreate) -> Result<NetworkConfig> {
        if !valid_network_name(&req.name) {
            return Err(Error::invalid(format!(
                "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                req.name
            )));
        }
        if req.name == NONE_NETWORK || req.name == "host" {
            return Err(Error::new(
                crate::error::Kind::Forbidden,
                format!(
                    "{} is a pre-defined network and cannot be created",
                    req.name
                ),
            ));
        }
        match req.driver.as_deref() {
            None | Some("") | Some("bridge") => {}
            Some(d) => {
                return Err(Error::new(
                    crate::error::Kind::NotFound,
                    format!("plugin \"{d}\" not found: KIC networks use the bridge driver"),
                ))
            }
        }
        if let Some(k) = req
            .options
            .keys()
            .find(|k| !k.starts_with("com.docker.network."))
        {
            return Err(Error::invalid(format!(
                "unknown network option {k:?}: KIC bridge networks take no driver options"
            )));
        }
        if self.list().iter().any(|n| n.name == req.name) {
            return Err(Error::conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let parse = |what: &str, s: &str| -> Result<Ipv4Net> {
            s.parse::<Ipv4Net>().map_err(|_| {
                Error::invalid(format!(
                    "invalid {what} {s:?}: expected an IPv4 CIDR such as 10.1.0.0/24"
                ))
            })
        };
        let (subnet, user_subnet) = match req.subnet.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let n = parse("subnet", s)?;
                if n.prefix_len() > 30 {
                    return Err(Error::invalid(format!(
                        "subnet {n} is too small: use a /30 or larger"
                    )));
                }
                let n = n.trunc();
                if let Some(o) = self
                    .list()
                    .iter()
                    .find(|o| o.claimed().is_some_and(|c| overlaps(&c, &n)))
                {
                    return Err(Error::new(
                        crate::error::Kind::Forbidden,
                        format!(
                            "invalid pool request: Pool overlaps with other one on this address space (network {} has {})",
                            o.name, o.subnet
                        ),
                    ));
                }
                if overlaps(&n, &self.setup.uplink_net) {
                    return Err(Error::invalid(format!(
                        "subnet {n} overlaps the VCH's uplink {}",
                        self.setup.uplink_net
                    )));
                }
                (n, true)
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(Error::invalid(
                        "--gateway and --ip-range need --subnet".to_string(),
                    ));
                }
                (self.free_block(&[])?, false)
            }
        };
        let ip_range = match req.ip_range.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                let r = parse("ip-range", s)?.trunc();
                if !subnet.contains(&r) {
                    return Err(Error::invalid(format!(
                        "ip-range {r} is not within subnet {subnet}"
                    )));
                }
                Some(r)
            }
            None => None,
        };
        let gateway = match req.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => {
                let g: Ipv4Addr = g.parse().map_err(|_| {
                    Error::invalid(format!("invalid gateway {g:?}: expected an IPv4 address"))
                })?;
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(Error::invalid(format!(
                        "gateway {g} is not a host address of subnet {subnet}"
                    )));
                }
                g
            }
            None => first_host(&subnet),
        };
        let n = self.insert(NetworkConfig {
            id: crate::runtime::random_id(),
            name: req.name,
            driver: "bridge".into(),
            subnet,
            gateway,
            ip_range,
            internal: req.internal,
            labels: req.labels,
            options: req.options,
            created: now_rfc3339(),
            builtin: false,
            user_subnet,
            bridge: String::new(),
            external: false,
            dns: Vec::new(),
            dhcp: false,
        })?;
        if let Err(e) = Plumbing(&self.setup)
            .bridge_up(&n)
            .and_then(|_| self.firewall())
        {
            let _ = self.forget(&n);
            return Err(e);
        }
        Ok(n)
    }

    fn forget(&self, n: &NetworkConfig) -> Result<()> {
        let p = self.dir.join(format!("{}.json", n.id));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p.display(), e)),
        }
        self.map.lock().expect("lock").remove(&n.id);
        Ok(())
    }

    /// Remove a network (the caller has checked nobody is on it).
    pub fn remove(&self, n: &NetworkConfig) -> Result<()> {
        Self::check_removable(n)?;
        self.forget(n)?;
        Plumbing(&self.setup).bridge_down(n)?;
        self.firewall()
    }

    /// Refuses the networks only the VCH's configuration manages.
    pub fn check_removable(n: &NetworkConfig) -> Result<()> {
        if n.external {
            return Err(Error::new(
                crate::error::Kind::Forbidden,
                format!(
                    "{} is a container network of the VCH and cannot be removed here (kic-machine configure manages it)",
                    n.name
                ),
            ));
        }
        if n.builtin {
            return Err(Error::new(
                crate::error::Kind::Forbidden,
                format!("{} is a pre-defined network and cannot be removed", n.name),
            ));
        }
        Ok(())
    }

    /// Make the namespace, uplink, every bridge and the firewall (idempotent; at start-up).
    pub fn plumb(&self) -> Result<()> {
        let p = Plumbing(&self.setup);
        p.namespace()?;
        for n in self.list().into_iter().filter(|n| !n.external) {
            p.bridge_up(&n)?;
        }
        for n in self.list().into_iter().filter(|n| n.external) {
            if !Path::new("/sys/class/net")
                .join(&n.bridge)
                .join("bridge")
                .exists()
            {
                tracing::warn!(
                    "container network {}: host bridge {} does not exist (yet); containers on it cannot start",
                    n.name,
                    n.bridge
                );
            }
        }
        self.firewall()
    }

    fn firewall(&self) -> Result<()> {
        Plumbing(&self.setup).firewall(&self.list())
    }

    /// Pick an address on `net` for a container, avoiding `used`.
    pub fn allocate(
        &self,
        net: &NetworkConfig,
        want: Option<Ipv4Addr>,
        used: &BTreeSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        if let Some(ip) = want {
            check_fixed_ip(net, ip)?;
            if used.contains(&ip) || ip == net.gateway {
                return Err(Error::conflict(format!(
                    "Address already in use: {ip} on network {}",
                    net.name
                )));
            }
            return Ok(ip);
        }
        let pool = net.ip_range.unwrap_or(net.subnet);
        pool.hosts()
            .find(|ip| {
                *ip != net.gateway
                    && *ip != net.subnet.network()
                    && *ip != net.subnet.broadcast()
                    && !used.contains(ip)
            })
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "no available IPv4 addresses on network {} ({pool} is used up)",
                    net.name
                ))
            })
    }
}

/// Whether a container may ask for `ip` on `net` (Docker's `--ip`): only on a subnet the user
/// gave, and only a host address of it.
pub fn check_fixed_ip(net: &NetworkConfig, ip: Ipv4Addr) -> Result<()> {
    if net.dhcp {
        return Err(dhcp_fixed_ip(net));
    }
    if !net.user_subnet {
        return Err(Error::invalid(
            "user specified IP address is supported only when connecting to networks with user configured subnets",
        ));
    }
    if !net.subnet.contains(&ip) || ip == net.subnet.network() || ip == net.subnet.broadcast() {
        return Err(Error::invalid(format!(
            "invalid IPv4 address {ip}: it is not a host address of network {}'s subnet {}",
            net.name, net.subnet
        )));
    }
    Ok(())
}

/// `--ip` on a network whose addresses come from DHCP.
pub fn dhcp_fixed_ip(net: &NetworkConfig) -> Error {
    Error::invalid(format!(
        "network {} gets its addresses from DHCP: an address (--ip) cannot be given on it",
        net.name
    ))
}

fn first_host(n: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(n.network()) + 1)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The commands that make networks real, all through iproute2 and nftables.
pub struct Plumbing<'a>(pub &'a NetworkSetup);

fn run(cmd: &mut Command, input: Option<&str>) -> Result<()> {
    use std::io::Write;
    let what = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::internal(format!(
                "cannot run {what}: {e} (install iproute2 and nftables)"
            ))
        })?;
    if let (Some(i), Some(mut s)) = (input, child.stdin.take()) {
        let _ = s.write_all(i.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::internal(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Plumbing<'_> {
    fn ip(&self) -> Command {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.0.netns);
        c
    }

    fn exists(&self, dev: &str) -> bool {
        self.ip()
            .args(["link", "show", "dev", dev])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The namespace with loopback, forwarding, and the uplink to the host.
    pub fn namespace(&self) -> Result<()> {
        let s = self.0;
        if s.netns_path().exists() && !self.exists("lo") {
            // A name without a namespace behind it: left by a mount namespace that has ended
            // (`ip netns add` run under `ip netns exec`).
            let _ = Command::new("ip")
                .args(["netns", "del", &s.netns])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = std::fs::remove_file(s.netns_path());
        }
        if !s.netns_path().exists() {
            run(Command::new("ip").args(["netns", "add", &s.netns]), None)?;
        }
        run(self.ip().args(["link", "set", "lo", "up"]), None)?;
        run(
            Command::new("ip").args([
                "netns",
                "exec",
                &s.netns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ]),
            None,
        )?;
        if !self.exists(UPLINK) {
            // A leftover host end (namespace deleted by hand) would block the new pair.
            let _ = Command::new("ip")
                .args(["link", "del", &s.uplink_host])
                .stderr(std::process::Stdio::null())
                .status();
            run(
                Command::new("ip").args([
                    "link",
                    "add",
                    &s.uplink_host,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    UPLINK,
                    "netns",
                    &s.netns,
                ]),
                None,
            )?;
            let host = format!("{}/30", s.uplink_host_addr());
            run(
                Command::new("ip").args(["addr", "add", &host, "dev", &s.uplink_host]),
                None,
            )?;
            run(
                Command::new("ip").args(["link", "set", &s.uplink_host, "up"]),
                None,
            )?;
            let ns = format!("{}/30", s.uplink_ns_addr());
            run(self.ip().args(["addr", "add", &ns, "dev", UPLINK]), None)?;
            run(self.ip().args(["link", "set", UPLINK, "up"]), None)?;
            run(
                self.ip().args([
                    "route",
                    "replace",
                    "default",
                    "via",
                    &s.uplink_host_addr().to_string(),
                ]),
                None,
            )?;
        }
        // The host side forwards and masquerades what comes up the uplink, like dockerd does
        // for its bridge; the table is the VCH's own, so removing the VCH removes exactly it.
        run(
            Command::new("sysctl").args(["-q", "-w", "net.ipv4.ip_forward=1"]),
            None,
        )?;
        let table = self.host_table();
        let rules = format!(
            "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {src} oifname != \"{up}\" masquerade\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{up}\" accept\n    oifname \"{up}\" ct state established,related accept\n  }}\n}}\n",
            src = s.uplink_ns_addr(),
            up = s.uplink_host,
        );
        run(Command::new("nft").args(["-f", "-"]), Some(&rules))
    }

    fn host_table(&self) -> String {
        format!(
            "kic_{}",
            self.0
                .netns
                .trim_start_matches("kic-")
                .replace(['-', '.'], "_")
        )
    }

    /// The namespace's firewall: masquerade out of the uplink for networks that are not
    /// internal, nothing routed between bridges.
    pub fn firewall(&self, nets: &[NetworkConfig]) -> Result<()> {
        let mut out = String::new();
        for n in nets.iter().filter(|n| !n.external) {
            // Traffic within one bridge passes this hook too where br_netfilter is loaded.
            out.push_str(&format!(
                "    iifname \"{b}\" oifname \"{b}\" accept\n",
                b = n.bridge
            ));
            if !n.internal {
                out.push_str(&format!(
                    "    iifname \"{}\" oifname \"{UPLINK}\" accept\n",
                    n.bridge
                ));
            }
        }
        let rules = format!(
            "table ip kic\ndelete table ip kic\ntable ip kic {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{UPLINK}\" masquerade\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n{out}  }}\n}}\n"
        );
        run(
            Command::new("ip").args(["netns", "exec", &self.0.netns, "nft", "-f", "-"]),
            Some(&rules),
        )
    }

    pub fn bridge_up(&self, n: &NetworkConfig) -> Result<()> {
        if !self.exists(&n.bridge) {
            run(
                self.ip().args(["link", "add", &n.bridge, "type", "bridge"]),
                None,
            )?;
            let a = format!("{}/{}", n.gateway, n.subnet.prefix_len());
            run(self.ip().args(["addr", "add", &a, "dev", &n.bridge]), None)?;
        }
        run(self.ip().args(["link", "set", &n.bridge, "up"]), None)
    }

    pub fn bridge_down(&self, n: &NetworkConfig) -> Result<()> {
        if self.exists(&n.bridge) {
            run(self.ip().args(["link", "del", &n.bridge]), None)?;
        }
        Ok(())
    }

    /// Put the tap `tap` (in the namespace of the QEMU process `qemu_pid`) on a host bridge
    /// of that namespace (container networks).
    pub fn attach_tap_host(&self, qemu_pid: u32, tap: &str, bridge: &str) -> Result<()> {
        run(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{qemu_pid}/ns/net"))
                .args(["ip", "link", "set", "dev", tap, "master", bridge, "up"]),
            None,
        )
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot put the container on host bridge {bridge}: {} (does the bridge exist?)",
                e.message
            ))
        })
    }

    /// Move the tap `tap` (in the namespace of the QEMU process `qemu_pid`) onto the bridge.
    pub fn attach_tap(&self, qemu_pid: u32, tap: &str, bridge: &str) -> Result<()> {
        if !self.exists(tap) {
            run(
                Command::new("nsenter")
                    .arg(format!("--net=/proc/{qemu_pid}/ns/net"))
                    .args(["ip", "link", "set", "dev", tap, "netns", &self.0.netns]),
                None,
            )?;
        }
        run(
            self.ip().args(["link", "set", tap, "master", bridge, "up"]),
            None,
        )
    }

    /// Remove the namespace (and with it the uplink and every bridge) and the host's table.
    pub fn teardown(&self) -> Result<()> {
        let _ = run(
            Command::new("nft").args(["delete", "table", "ip", &self.host_table()]),
            None,
        );
        if self.0.netns_path().exists() {
            run(
                Command::new("ip").args(["netns", "del", &self.0.netns]),
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(range: &str) -> (tempfile::TempDir, Networks) {
        let d = tempfile::tempdir().unwrap();
        let n = Networks::open(d.path(), NetworkSetup::for_vch("t", Some(range)).unwrap()).unwrap();
        (d, n)
    }

    #[test]
    fn default_bridge_takes_the_first_block_and_survives_reopen() {
        let (d, n) = nets("172.16.0.0/12");
        let b = n.find("bridge").unwrap();
        assert_eq!(b.subnet.to_string(), "172.16.0.0/16");
        assert_eq!(b.gateway, Ipv4Addr::new(172, 16, 0, 1));
        assert!(b.builtin);
        let again = Networks::open(d.path(), n.setup.clone()).unwrap();
        assert_eq!(again.list(), vec![b]);
    }

    #[test]
    fn names_ids_and_prefixes_find_networks() {
        let (_d, n) = nets("10.0.0.0/8");
        let b = n.find("bridge").unwrap();
        assert_eq!(n.find(&b.id).unwrap().name, "bridge");
        assert_eq!(n.find(&b.id[..5]).unwrap().name, "bridge");
        assert_eq!(
            n.find("nope").unwrap_err().message,
            "network nope not found"
        );
    }

    #[test]
    fn setup_is_stable_per_vch_and_link_local() {
        let a = NetworkSetup::for_vch("demo", None).unwrap();
        let b = NetworkSetup::for_vch("demo", None).unwrap();
        assert_eq!(a.uplink_net, b.uplink_net);
        assert!(a.uplink_host.len() <= 15);
        assert!(Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16)
            .unwrap()
            .contains(&a.uplink_net));
        assert_ne!(
            a.uplink_net,
            NetworkSetup::for_vch("other", None).unwrap().uplink_net
        );
        assert!(NetworkSetup::for_vch("x", Some("10.0.0.0/25")).is_err());
        assert!(NetworkSetup::for_vch("x", Some("nonsense")).is_err());
    }

    #[test]
    fn allocation_skips_gateway_used_and_honours_ranges() {
        let (_d, n) = nets("192.168.0.0/16");
        let mut net = n.find("bridge").unwrap();
        assert_eq!(net.subnet.to_string(), "192.168.0.0/20");
        let mut used = BTreeSet::new();
        let a = n.allocate(&net, None, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(192, 168, 0, 2));
        used.insert(a);
        assert_eq!(
            n.allocate(&net, None, &used).unwrap(),
            Ipv4Addr::new(192, 168, 0, 3)
        );
        // A fixed address only on user subnets, inside it, and not taken.
        assert!(n
            .allocate(&net, Some(Ipv4Addr::new(192, 168, 0, 9)), &used)
            .is_err());
        net.user_subnet = true;
        assert_eq!(
            n.allocate(&net, Some(Ipv4Addr::new(192, 168, 0, 9)), &used)
                .unwrap(),
            Ipv4Addr::new(192, 168, 0, 9)
        );
        assert!(n
            .allocate(&net, Some(a), &used)
            .unwrap_err()
            .message
            .contains("already in use"));
        assert!(n
            .allocate(&net, Some(Ipv4Addr::new(10, 0, 0, 1)), &used)
            .is_err());
        net.ip_range = Some("192.168.4.0/30".parse().unwrap());
        used.insert(Ipv4Addr::new(192, 168, 4, 1));
        assert_eq!(
            n.allocate(&net, None, &used).unwrap(),
            Ipv4Addr::new(192, 168, 4, 2)
        );
        used.insert(Ipv4Addr::new(192, 168, 4, 2));
        assert!(n
            .allocate(&net, None, &used)
            .unwrap_err()
            .message
            .contains("used up"));
    }

    #[test]
    fn dhcp_networks_claim_no_subnet_and_refuse_fixed_addresses() {
        let (_d, n) = nets("192.168.0.0/16");
        let mut net = n.find("bridge").unwrap();
        net.dhcp = true;
        net.external = true;
        assert!(check_fixed_ip(&net, Ipv4Addr::new(192, 168, 0, 9))
            .unwrap_err()
            .message
            .contains("gets its addresses from DHCP"));
        assert_eq!(net.claimed(), None);
        net.user_subnet = true;
        assert_eq!(net.claimed(), Some(net.subnet));
        // Stable per container and NIC, Docker's prefix, distinct per NIC.
        let id = "ae9e61866ba4b34c571f7aa4d5b700963a9ac87cc791f57972ea11331a7b5b1f";
        assert_eq!(mac_for_dhcp(id, 0), "02:42:ae:9e:61:86");
        assert_eq!(mac_for_dhcp(id, 1), "02:42:ae:9e:61:87");
    }

    #[test]
    fn free_blocks_avoid_overlaps() {
        let (_d, n) = nets("172.16.0.0/12");
        let taken = ["172.17.0.0/16".parse().unwrap()];
        assert_eq!(n.free_block(&taken).unwrap().to_string(), "172.18.0.0/16");
        assert_eq!(mac_for(Ipv4Addr::new(172, 17, 0, 2)), "02:42:ac:11:00:02");
        assert!(valid_network_name("my_net.1-a"));
        assert!(!valid_network_name("-x"));
        assert!(!valid_network_name("a b"));
        assert!(!valid_network_name(""));
    }
}
