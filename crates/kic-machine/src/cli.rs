//! Command-line syntax, and the translation of `create` flags into a `VchConfig` and back
//! (`inspect config`).

use crate::config::{
    ContainerNetwork, Endpoint, Limits, Registries, TlsMode, VchConfig, CONFIG_VERSION,
    DEFAULT_STATE_ROOT,
};
use crate::layout::{MachineMeta, Vch};
use crate::util::{parse_mib, shell_quote};
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_TARGET: &str = "qemu:///system";
pub const DEFAULT_IMAGE_STORE: &str = "/var/lib/kic/datastore";
pub const DEFAULT_CONTAINER_MEMORY_MIB: u64 = 512;

pub fn version_long() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("KIC_MACHINE_COMMIT"),
        ")"
    )
}

#[derive(Parser, Debug)]
#[command(
    name = "kic-machine",
    version = version_long(),
    about = "Create and manage KIC Virtual Container Hosts (Docker API endpoints whose containers are libvirt VMs)"
)]
pub struct Cli {
    /// Where VCH state lives (one directory per VCH).
    #[arg(long, global = true, env = "KIC_STATE_ROOT", default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Deploy a VCH.
    Create(Box<CreateArgs>),
    /// List VCHs.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a VCH (`inspect config NAME`: the create command that reproduces it).
    Inspect(InspectArgs),
    /// Change a VCH's limits, registries, volume stores or client CAs (restarts its endpoint).
    Configure(Box<ConfigureArgs>),
    /// Install this kic-machine's endpoint and tether in a VCH, or roll back.
    Upgrade(UpgradeArgs),
    /// Remove a VCH.
    Delete(DeleteArgs),
    /// Show where a VCH's logs are; change its log level.
    Debug(DebugArgs),
    /// Start a stopped VCH's endpoint (and its supervisor); `--all` for every VCH (at boot).
    Start(StartArgs),
    /// Stop a VCH's endpoint (containers keep running).
    Stop(NameArg),
    /// Show the version.
    Version,
    /// Run a VCH's endpoint under supervision (started by create; not for direct use).
    #[command(hide = true)]
    Supervise(NameArg),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// The VCH's name.
    #[arg(
        long = "name",
        value_name = "NAME",
        required_unless_present = "pos_name"
    )]
    pub flag_name: Option<String>,
    #[arg(value_name = "NAME", conflicts_with = "flag_name")]
    pub pos_name: Option<String>,
}

impl NameArg {
    pub fn name(&self) -> &str {
        self.flag_name
            .as_deref()
            .or(self.pos_name.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub name: NameArgOpt,
    /// Start every VCH under the state root that is not running.
    #[arg(long, conflicts_with_all = ["flag_name", "pos_name"])]
    pub all: bool,
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CreateArgs {
    /// Name of the VCH ([a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}).
    #[arg(long)]
    pub name: String,
    /// libvirt connection URI.
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Datastore for images and container disks: a directory, or `pool:<libvirt dir pool>`.
    #[arg(long, value_name = "DIR|pool:NAME", default_value = DEFAULT_IMAGE_STORE)]
    pub image_store: String,
    /// A volume store `PATH:label` (repeatable; the label `default` is docker's default).
    #[arg(long, value_name = "PATH:LABEL")]
    pub volume_store: Vec<String>,
    /// Private range container networks take their subnets from (the default `bridge`
    /// network is its first block; they live in the VCH's own network namespace).
    #[arg(long, value_name = "CIDR", default_value = "172.16.0.0/12", value_parser = parse_bridge_range)]
    pub bridge_network_range: String,
    #[command(flatten)]
    pub container_networks: ContainerNetworkArgs,
    /// Memory limit of the VCH (all its containers): MiB, or with a unit (4GiB).
    #[arg(long)]
    pub memory: Option<String>,
    /// vCPU limit of the VCH (all its containers).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Limit on the number of containers.
    #[arg(long)]
    pub containers: Option<u32>,
    /// Default memory of a container VM (MiB or with a unit).
    #[arg(long)]
    pub container_memory: Option<String>,
    /// Default vCPUs of a container VM.
    #[arg(long)]
    pub container_cpu: Option<u32>,
    /// Docker API listen address: ADDRESS:PORT, :PORT or ADDRESS (default: the first free port
    /// from 2376 up, 2375 up with --no-tls, on all addresses).
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub endpoint: Option<String>,
    /// Name (DNS or IP) clients use for the endpoint; put in the server certificate and DOCKER_HOST.
    #[arg(long)]
    pub tls_cname: Option<String>,
    /// PEM CA whose client certificates are accepted (repeatable; no client pair is generated then).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Vec<PathBuf>,
    /// TLS without client verification.
    #[arg(long, conflicts_with_all = ["no_tls", "tls_ca"])]
    pub no_tlsverify: bool,
    /// Plain HTTP (no TLS at all).
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cname"])]
    pub no_tls: bool,
    /// Registry reached over HTTP or unverified TLS, host[:port] (repeatable).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// PEM CA trusted for registries (repeatable).
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Only these registries may be used, host[:port] or *.domain (repeatable).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub whitelist_registry: Vec<String>,
    /// Verbose endpoint logs and guest kernel debug output.
    #[arg(long)]
    pub debug: bool,
    /// Where to write the client certificates and NAME.env (default ./NAME).
    #[arg(long, value_name = "DIR")]
    pub cert_path: Option<PathBuf>,
    /// The static guest agent (default $KIC_TETHER, else the release build next to kic-machine).
    #[arg(long, value_name = "FILE")]
    pub tether: Option<PathBuf>,
    /// How long to wait for the endpoint to answer (the first start builds the bootstrap image).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// `NAME`, or `config NAME` for the create command that reproduces the VCH.
    #[arg(value_name = "[config] NAME", num_args = 0..=2)]
    pub args: Vec<String>,
    #[arg(long = "name", value_name = "NAME")]
    pub flag_name: Option<String>,
    /// Print the create command that reproduces the VCH.
    #[arg(long)]
    pub config: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl InspectArgs {
    /// (name, config mode)
    pub fn resolve(&self) -> Result<(String, bool)> {
        let mut config = self.config;
        let mut rest: Vec<&str> = self.args.iter().map(String::as_str).collect();
        if rest.len() == 2 && rest[0] == "config" {
            config = true;
            rest.remove(0);
        }
        if rest.len() == 1 && rest[0] == "config" && self.flag_name.is_some() {
            config = true;
            rest.clear();
        }
        match (rest.as_slice(), &self.flag_name) {
            ([n], None) => Ok((n.to_string(), config)),
            ([], Some(n)) => Ok((n.clone(), config)),
            _ => bail!("usage: kic-machine inspect [config] NAME (or --name NAME)"),
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct ConfigureArgs {
    #[command(flatten)]
    pub name: NameArgOpt,
    /// VCH memory limit (MiB or with a unit; `unlimited` removes it).
    #[arg(long)]
    pub memory: Option<String>,
    /// VCH vCPU limit (`unlimited` removes it).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Container count limit (`unlimited` removes it).
    #[arg(long)]
    pub containers: Option<String>,
    #[arg(long)]
    pub container_memory: Option<String>,
    #[arg(long)]
    pub container_cpu: Option<u32>,
    /// Replaces the insecure registries (pass "" to clear).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Option<Vec<String>>,
    /// Replaces the registry CAs (pass "" to clear).
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<Vec<PathBuf>>,
    /// Replaces the registry whitelist (pass "" to clear).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub whitelist_registry: Option<Vec<String>>,
    /// Adds a volume store PATH:label (existing ones are kept).
    #[arg(long, value_name = "PATH:LABEL")]
    pub volume_store: Vec<String>,
    /// Container networks: when any `--container-network` is given, the list replaces the
    /// current one (repeat the ones to keep).
    #[command(flatten)]
    pub container_networks: ContainerNetworkArgs,
    /// Replaces the client CAs given at create (the generated CA, if any, stays trusted).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<Vec<PathBuf>>,
    #[arg(long, conflicts_with = "no_debug")]
    pub debug: bool,
    #[arg(long)]
    pub no_debug: bool,
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// VIC's container networks: existing host bridges that appear as Docker networks, where
/// containers get addresses of that segment and are reached without NAT.
#[derive(Args, Debug, Default, Clone, PartialEq)]
pub struct ContainerNetworkArgs {
    /// A host bridge mapped into the VCH as the Docker network ALIAS (repeatable).
    #[arg(long, value_name = "BRIDGE:ALIAS")]
    pub container_network: Vec<String>,
    /// The gateway of a container network, with its prefix length (required with an IP range;
    /// optional with DHCP, where the leases give the route).
    #[arg(long, value_name = "ALIAS:GATEWAY/LEN")]
    pub container_network_gateway: Vec<String>,
    /// The addresses containers get on it, a CIDR inside the segment; without it containers
    /// ask a DHCP server on the segment.
    #[arg(long, value_name = "ALIAS:CIDR")]
    pub container_network_ip_range: Vec<String>,
    /// A nameserver for containers on it (repeatable).
    #[arg(long, value_name = "ALIAS:IP")]
    pub container_network_dns: Vec<String>,
}

fn cidr(s: &str) -> Option<(std::net::Ipv4Addr, u32)> {
    let (a, l) = s.split_once('/')?;
    let l: u32 = l.parse().ok().filter(|l| *l <= 32)?;
    Some((a.parse().ok()?, l))
}

fn in_net(a: std::net::Ipv4Addr, net: std::net::Ipv4Addr, len: u32) -> bool {
    let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & m == u32::from(net) & m
}

/// Whether `bridge` is a Linux bridge here or in libvirtd's network namespace (where the taps
/// of container VMs are; kic-machine itself may run in another).
fn host_bridge_exists(bridge: &str) -> bool {
    if Path::new("/sys/class/net")
        .join(bridge)
        .join("bridge")
        .exists()
    {
        return true;
    }
    // libvirtd's namespace: where the taps of container VMs are made.
    let Some(pid) = std::fs::read_to_string("/run/libvirtd.pid")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-d", "-o", "link", "show", "dev", bridge])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(" bridge "))
        .unwrap_or(false)
}

/// The container networks the flags describe, checked (bridges must exist on this host).
pub fn parse_container_networks(a: &ContainerNetworkArgs) -> Result<Vec<ContainerNetwork>> {
    let mut out: Vec<ContainerNetwork> = Vec::new();
    for s in &a.container_network {
        let Some((bridge, alias)) = s
            .split_once(':')
            .filter(|(b, a)| !b.is_empty() && !a.is_empty())
        else {
            bail!("--container-network {s:?}: expected BRIDGE:ALIAS");
        };
        let ok_name = alias
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok_name || ["bridge", "none", "host"].contains(&alias) {
            bail!("--container-network {s:?}: {alias:?} cannot name a Docker network");
        }
        if out.iter().any(|o| o.alias == alias) {
            bail!("--container-network: alias {alias:?} given twice");
        }
        if !host_bridge_exists(bridge) {
            bail!("--container-network {s:?}: there is no Linux bridge {bridge:?} on this host (create it first, e.g. `ip link add {bridge} type bridge`)");
        }
        out.push(ContainerNetwork {
            alias: alias.to_string(),
            bridge: bridge.to_string(),
            ..Default::default()
        });
    }
    let per = |flag: &str, list: &[String]| -> Result<Vec<(String, String)>> {
        list.iter()
            .map(|s| {
                let (alias, v) = s
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--{flag} {s:?}: expected ALIAS:VALUE"))?;
                if !a
                    .container_network
                    .iter()
                    .any(|c| c.ends_with(&format!(":{alias}")))
                {
                    bail!("--{flag} {s:?}: no --container-network has the alias {alias:?}");
                }
                Ok((alias.to_string(), v.to_string()))
            })
            .collect()
    };
    for (alias, v) in per("container-network-gateway", &a.container_network_gateway)? {
        if cidr(&v).is_none() {
            bail!(
                "--container-network-gateway {alias}:{v}: expected GATEWAY/LEN such as 10.9.0.1/24"
            );
        }
        out.iter_mut()
            .find(|o| o.alias == alias)
            .expect("checked")
            .gateway = v;
    }
    for (alias, v) in per("container-network-ip-range", &a.container_network_ip_range)? {
        out.iter_mut()
            .find(|o| o.alias == alias)
            .expect("checked")
            .ip_range = v;
    }
    for (alias, v) in per("container-network-dns", &a.container_network_dns)? {
        if v.parse::<std::net::Ipv4Addr>().is_err() {
            bail!("--container-network-dns {alias}:{v}: expected an IPv4 address");
        }
        out.iter_mut()
            .find(|o| o.alias == alias)
            .expect("checked")
            .dns
            .push(v);
    }
    for o in &out {
        let gateway = cidr(&o.gateway);
        if !o.gateway.is_empty() && gateway.is_none() {
            bail!(
                "--container-network-gateway {}:{}: expected GATEWAY/LEN such as 10.9.0.1/24",
                o.alias,
                o.gateway
            );
        }
        if o.ip_range.is_empty() {
            // DHCP: a server on the segment gives the addresses (and the route).
            continue;
        }
        let Some((gw, len)) = gateway else {
            bail!("container network {}: an IP range needs --container-network-gateway {}:GATEWAY/LEN (or give neither, and containers use DHCP)", o.alias, o.alias);
        };
        let Some((r, rlen)) = cidr(&o.ip_range) else {
            bail!("--container-network-ip-range {}:{}: expected a CIDR inside the segment such as 10.9.0.16/28", o.alias, o.ip_range);
        };
        if rlen < len || !in_net(r, gw, len) {
            bail!(
                "--container-network-ip-range {}:{}: not inside the segment {}",
                o.alias,
                o.ip_range,
                o.gateway
            );
        }
    }
    Ok(out)
}

/// `--name NAME` or a positional NAME (flattened into commands with other flags).
#[derive(Args, Debug, Default)]
pub struct NameArgOpt {
    #[arg(long = "name", value_name = "NAME")]
    pub flag_name: Option<String>,
    #[arg(value_name = "NAME")]
    pub pos_name: Option<String>,
}

impl NameArgOpt {
    pub fn name(&self) -> Result<&str> {
        match (&self.flag_name, &self.pos_name) {
            (Some(n), None) | (None, Some(n)) => Ok(n),
            (Some(a), Some(b)) if a == b => Ok(a),
            (Some(_), Some(_)) => bail!("two different VCH names given"),
            (None, None) => bail!("which VCH? pass NAME or --name NAME (see `kic-machine ls`)"),
        }
    }
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub name: NameArgOpt,
    /// Go back to the binaries and configuration before the last upgrade.
    #[arg(long)]
    pub rollback: bool,
    /// Upgrade even when the installed binaries are the same.
    #[arg(long)]
    pub force: bool,
    /// The tether to install (default as for create).
    #[arg(long, value_name = "FILE")]
    pub tether: Option<PathBuf>,
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub name: NameArgOpt,
    /// Delete even while containers run (they are removed) and delete the volume stores.
    #[arg(long)]
    pub force: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
}

#[derive(Args, Debug)]
pub struct DebugArgs {
    #[command(flatten)]
    pub name: NameArgOpt,
    /// Set the endpoint's log level (restarts the endpoint).
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Also print the last N lines of the endpoint log.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// Facts `create` establishes before building the configuration.
pub struct Plan {
    pub vch: PathBuf,
    /// The image store directory (resolved from a pool if `pool:` was given).
    pub store_dir: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub cores: u32,
    pub created: String,
    pub version: String,
}

pub fn tls_mode(a: &CreateArgs) -> TlsMode {
    if a.no_tls {
        TlsMode::None
    } else if a.no_tlsverify {
        TlsMode::Server
    } else {
        TlsMode::Mutual
    }
}

/// `PATH:label` (the label defaults to `default`); PATH is made absolute.
/// An IPv4 CIDR of /24 or larger, normalised (`172.16.1.0/12` → `172.16.0.0/12`).
pub fn parse_bridge_range(s: &str) -> std::result::Result<String, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s} is not a CIDR such as 172.16.0.0/12"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s}: {addr} is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (1..=24).contains(l))
        .ok_or_else(|| format!("{s}: the prefix length must be 1 to 24"))?;
    let mask = u32::MAX << (32 - len);
    Ok(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

pub fn parse_volume_store(s: &str) -> Result<(String, PathBuf)> {
    let (path, label) = match s.rsplit_once(':') {
        Some((p, l)) if !l.contains('/') => (p, l),
        _ => (s, "default"),
    };
    if path.is_empty() {
        bail!(
            "invalid --volume-store {s:?}: expected PATH:LABEL, e.g. /var/lib/kic/volumes:default"
        );
    }
    if label.is_empty()
        || !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        bail!(
            "invalid volume store label {label:?} in {s:?}: use letters, digits, '_', '.' or '-'"
        );
    }
    Ok((label.to_string(), crate::util::absolute(Path::new(path))?))
}

/// Where a registry CA is copied in the VCH's state (index keeps equal basenames apart).
pub fn registry_ca_copy(vch: &Path, i: usize, src: &Path) -> PathBuf {
    let base = src
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ca.pem".into());
    vch.join("registry-ca").join(format!("{i}-{base}"))
}

fn limit_u32(s: &str, what: &str) -> Result<Option<u32>> {
    if s == "unlimited" {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => bail!("invalid {what} {s:?}: a positive number or `unlimited`"),
        Ok(n) => Ok(Some(n)),
    }
}

pub fn parse_limit_mib(s: &str) -> Result<Option<u64>> {
    if s == "unlimited" {
        return Ok(None);
    }
    parse_mib(s).map(Some)
}

pub fn parse_limit_u32(s: &str, what: &str) -> Result<Option<u32>> {
    limit_u32(s, what)
}

pub fn build_config(a: &CreateArgs, p: &Plan) -> Result<VchConfig> {
    let v = Vch {
        name: a.name.clone(),
        dir: p.vch.clone(),
    };
    let tls = tls_mode(a);
    let mut volume_stores = BTreeMap::new();
    for s in &a.volume_store {
        let (label, path) = parse_volume_store(s)?;
        if volume_stores.insert(label.clone(), path).is_some() {
            bail!("volume store label {label:?} given twice");
        }
    }
    for (what, n) in [
        ("--cpu", a.cpu),
        ("--containers", a.containers),
        ("--container-cpu", a.container_cpu),
    ] {
        if n == Some(0) {
            bail!("{what} must be at least 1");
        }
    }
    let container_cpus = a.container_cpu.unwrap_or_else(|| p.cores.clamp(1, 2));
    let container_memory_mib = match &a.container_memory {
        Some(m) => parse_mib(m)?,
        None => DEFAULT_CONTAINER_MEMORY_MIB,
    };
    let limits = Limits {
        memory_mib: a.memory.as_deref().map(parse_mib).transpose()?,
        cpus: a.cpu,
        containers: a.containers,
    };
    if limits.memory_mib.is_some_and(|m| m < container_memory_mib) {
        bail!(
            "--memory {} is less than one container's memory ({container_memory_mib} MiB): raise --memory or lower --container-memory",
            a.memory.as_deref().unwrap_or_default()
        );
    }
    if limits.cpus.is_some_and(|c| c < container_cpus) {
        bail!(
            "--cpu {} is less than one container's vCPUs ({container_cpus}): raise --cpu or lower --container-cpu",
            limits.cpus.unwrap_or_default()
        );
    }
    Ok(VchConfig {
        version: CONFIG_VERSION,
        name: a.name.clone(),
        created: p.created.clone(),
        target: a.target.clone(),
        datastore: p.store_dir.join(&a.name),
        image_store: a.image_store.clone(),
        volume_stores,
        bridge_network_range: Some(a.bridge_network_range.clone()),
        container_networks: parse_container_networks(&a.container_networks)?,
        endpoint: Endpoint {
            tcp: p.tcp.map(|t| t.to_string()),
            socket: Some(v.socket()),
            server_cert: (tls != TlsMode::None).then(|| v.server_cert()),
            server_key: (tls != TlsMode::None).then(|| v.server_key()),
            client_ca: (tls == TlsMode::Mutual).then(|| v.client_ca()),
            tls,
        },
        limits,
        registries: Registries {
            insecure: a.insecure_registry.clone(),
            ca: a
                .registry_ca
                .iter()
                .enumerate()
                .map(|(i, s)| registry_ca_copy(&p.vch, i, s))
                .collect(),
            whitelist: a.whitelist_registry.clone(),
        },
        tether: v.tether_bin(),
        container_memory_mib,
        container_cpus,
        debug: a.debug,
        kernel_args: if a.debug {
            "kic.debug".into()
        } else {
            String::new()
        },
        kic_version: p.version.clone(),
    })
}

/// The `create` arguments that reproduce a VCH (for `inspect config`).
pub fn create_flags(c: &VchConfig, m: &MachineMeta) -> Vec<String> {
    let mut f: Vec<String> = vec!["--name".into(), c.name.clone()];
    let mut add = |k: &str, v: String| {
        f.push(k.into());
        f.push(v);
    };
    if c.target != DEFAULT_TARGET {
        add("--target", c.target.clone());
    }
    if c.image_store != DEFAULT_IMAGE_STORE {
        add("--image-store", c.image_store.clone());
    }
    for (label, path) in &c.volume_stores {
        add("--volume-store", format!("{}:{label}", path.display()));
    }
    if let Some(r) = c
        .bridge_network_range
        .as_deref()
        .filter(|r| *r != "172.16.0.0/12")
    {
        add("--bridge-network-range", r.to_string());
    }
    for n in &c.container_networks {
        add("--container-network", format!("{}:{}", n.bridge, n.alias));
        if !n.gateway.is_empty() {
            add(
                "--container-network-gateway",
                format!("{}:{}", n.alias, n.gateway),
            );
        }
        if !n.ip_range.is_empty() {
            add(
                "--container-network-ip-range",
                format!("{}:{}", n.alias, n.ip_range),
            );
        }
        for d in &n.dns {
            add("--container-network-dns", format!("{}:{d}", n.alias));
        }
    }
    if let Some(tcp) = &c.endpoint.tcp {
        add("--endpoint", tcp.clone());
    }
    if let Some(m) = c.limits.memory_mib {
        add("--memory", format!("{m}MiB"));
    }
    if let Some(n) = c.limits.cpus {
        add("--cpu", n.to_string());
    }
    if let Some(n) = c.limits.containers {
        add("--containers", n.to_string());
    }
    if c.container_memory_mib != DEFAULT_CONTAINER_MEMORY_MIB {
        add(
            "--container-memory",
            format!("{}MiB", c.container_memory_mib),
        );
    }
    add("--container-cpu", c.container_cpus.to_string());
    if let Some(n) = &m.tls_cname {
        add("--tls-cname", n.clone());
    }
    for ca in &m.tls_ca {
        add("--tls-ca", ca.display().to_string());
    }
    for r in &c.registries.insecure {
        add("--insecure-registry", r.clone());
    }
    for ca in &m.registry_ca {
        add("--registry-ca", ca.display().to_string());
    }
    for r in &c.registries.whitelist {
        add("--whitelist-registry", r.clone());
    }
    match c.endpoint.tls {
        TlsMode::None => f.push("--no-tls".into()),
        TlsMode::Server => f.push("--no-tlsverify".into()),
        TlsMode::Mutual => {}
    }
    if c.debug {
        f.push("--debug".into());
    }
    f
}

pub fn create_command(c: &VchConfig, m: &MachineMeta) -> String {
    let mut s = String::from("kic-machine create");
    for a in create_flags(c, m) {
        s.push(' ');
        s.push_str(&shell_quote(&a));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kic-machine").chain(args.iter().copied()))
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut v = vec!["create"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().cmd {
            Cmd::Create(a) => *a,
            c => panic!("{c:?}"),
        }
    }

    fn plan(a: &CreateArgs) -> Plan {
        Plan {
            vch: PathBuf::from("/state").join(&a.name),
            store_dir: PathBuf::from(
                a.image_store
                    .strip_prefix("pool:")
                    .map(|_| "/pool")
                    .unwrap_or(&a.image_store),
            ),
            tcp: Some(
                a.endpoint
                    .as_deref()
                    .unwrap_or("0.0.0.0:2376")
                    .parse()
                    .unwrap(),
            ),
            cores: 8,
            created: "2026-11-23T00:00:00Z".into(),
            version: "0.1.0".into(),
        }
    }

    fn meta(a: &CreateArgs) -> MachineMeta {
        MachineMeta {
            tls_cname: a.tls_cname.clone(),
            tls_ca: a.tls_ca.clone(),
            registry_ca: a.registry_ca.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let a = create_args(&["--name", "v1"]);
        let c = build_config(&a, &plan(&a)).unwrap();
        assert_eq!(c.target, "qemu:///system");
        assert_eq!(c.image_store, "/var/lib/kic/datastore");
        assert_eq!(c.datastore, Path::new("/var/lib/kic/datastore/v1"));
        assert_eq!(c.endpoint.tls, TlsMode::Mutual);
        assert_eq!(
            c.endpoint.client_ca.as_deref(),
            Some(Path::new("/state/v1/ca.pem"))
        );
        assert_eq!(
            c.endpoint.socket.as_deref(),
            Some(Path::new("/state/v1/docker.sock"))
        );
        assert_eq!(c.tether, Path::new("/state/v1/bin/kic-tether"));
        assert_eq!((c.container_memory_mib, c.container_cpus), (512, 2));
        assert_eq!(c.limits, Limits::default());
        assert!(!c.debug && c.kernel_args.is_empty());
    }

    #[test]
    fn flags_map_to_config() {
        let a = create_args(&[
            "--name",
            "v2",
            "--memory",
            "4GiB",
            "--cpu",
            "8",
            "--containers",
            "10",
            "--volume-store",
            "/srv/vols:default",
            "--volume-store",
            "/srv/fast:fast",
            "--insecure-registry",
            "reg:5000",
            "--registry-ca",
            "/tmp/a/ca.pem",
            "--registry-ca",
            "/tmp/b/ca.pem",
            "--whitelist-registry",
            "*.example.com",
            "--no-tlsverify",
            "--debug",
            "--container-memory",
            "1G",
        ]);
        let c = build_config(&a, &plan(&a)).unwrap();
        assert_eq!(c.limits.memory_mib, Some(4096));
        assert_eq!(c.limits.cpus, Some(8));
        assert_eq!(c.limits.containers, Some(10));
        assert_eq!(c.volume_stores["fast"], Path::new("/srv/fast"));
        assert_eq!(c.volume_stores["default"], Path::new("/srv/vols"));
        assert_eq!(c.registries.ca.len(), 2);
        assert_ne!(c.registries.ca[0], c.registries.ca[1]);
        assert_eq!(c.endpoint.tls, TlsMode::Server);
        assert!(c.endpoint.client_ca.is_none() && c.endpoint.server_cert.is_some());
        assert_eq!(c.kernel_args, "kic.debug");
        assert_eq!(c.container_memory_mib, 1024);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["create", "--name", "x", "--no-tls", "--no-tlsverify"]).is_err());
        assert!(parse(&["create", "--name", "x", "--no-tls", "--tls-ca", "/a"]).is_err());
        assert!(parse(&["create", "--name", "x", "--cpu", "two"]).is_err());
        assert!(parse(&["create"]).is_err());
        for bad in [
            &["--name", "x", "--memory", "lots"][..],
            &[
                "--name",
                "x",
                "--memory",
                "256",
                "--container-memory",
                "512",
            ],
            &["--name", "x", "--cpu", "1", "--container-cpu", "2"],
            &[
                "--name",
                "x",
                "--volume-store",
                "/a:one",
                "--volume-store",
                "/b:one",
            ],
            &["--name", "x", "--volume-store", "/a:bad label"],
            &["--name", "x", "--containers", "0"],
        ] {
            let a = create_args(bad);
            assert!(build_config(&a, &plan(&a)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn volume_store_syntax() {
        assert_eq!(
            parse_volume_store("/a/b:lbl").unwrap(),
            ("lbl".into(), "/a/b".into())
        );
        assert_eq!(
            parse_volume_store("/a/b").unwrap(),
            ("default".into(), "/a/b".into())
        );
        assert!(parse_volume_store(":x").is_err());
    }

    #[test]
    fn inspect_config_reproduces_the_vch() {
        for args in [
            &["--name", "v1"][..],
            &[
                "--name",
                "v.2",
                "--target",
                "qemu+tls://h/system",
                "--image-store",
                "pool:default",
                "--volume-store",
                "/srv/my vols:default",
                "--endpoint",
                "127.0.0.1:2399",
                "--memory",
                "3GiB",
                "--cpu",
                "4",
                "--containers",
                "7",
                "--container-memory",
                "256",
                "--container-cpu",
                "1",
                "--tls-cname",
                "vch.example",
                "--tls-ca",
                "/etc/ca 1.pem",
                "--insecure-registry",
                "r:5000",
                "--registry-ca",
                "/x/ca.pem",
                "--whitelist-registry",
                "*.corp",
                "--debug",
            ],
            &["--name", "v3", "--no-tls", "--endpoint", "0.0.0.0:2375"],
            &[
                "--name",
                "v4",
                "--no-tlsverify",
                "--image-store",
                "/srv/store",
            ],
        ] {
            let a = create_args(args);
            let c = build_config(&a, &plan(&a)).unwrap();
            let cmd = create_command(&c, &meta(&a));
            // Split the printed command as a shell would (single quotes only).
            let mut words = Vec::new();
            let (mut cur, mut q, mut any) = (String::new(), false, false);
            for ch in cmd.chars() {
                match ch {
                    '\'' => {
                        q = !q;
                        any = true;
                    }
                    ' ' if !q => {
                        if any {
                            words.push(std::mem::take(&mut cur));
                        }
                        any = false;
                    }
                    c => {
                        cur.push(c);
                        any = true;
                    }
                }
            }
            words.push(cur);
            assert_eq!(&words[..2], ["kic-machine", "create"]);
            let w: Vec<&str> = words[2..].iter().map(String::as_str).collect();
            let b = create_args(&w);
            let c2 = build_config(&b, &plan(&b)).unwrap();
            assert_eq!(c, c2, "{cmd}");
            assert_eq!(meta(&a), meta(&b), "{cmd}");
        }
    }

    #[test]
    fn names_positional_or_flag() {
        match parse(&["delete", "v1", "--force"]).unwrap().cmd {
            Cmd::Delete(d) => assert_eq!((d.name.name().unwrap(), d.force), ("v1", true)),
            c => panic!("{c:?}"),
        }
        match parse(&["delete", "--name", "v1"]).unwrap().cmd {
            Cmd::Delete(d) => assert_eq!(d.name.name().unwrap(), "v1"),
            c => panic!("{c:?}"),
        }
        match parse(&["inspect", "config", "v1"]).unwrap().cmd {
            Cmd::Inspect(i) => assert_eq!(i.resolve().unwrap(), ("v1".into(), true)),
            c => panic!("{c:?}"),
        }
        match parse(&["inspect", "config"]).unwrap().cmd {
            Cmd::Inspect(i) => assert_eq!(i.resolve().unwrap(), ("config".into(), false)),
            c => panic!("{c:?}"),
        }
        match parse(&["inspect", "v1", "--config"]).unwrap().cmd {
            Cmd::Inspect(i) => assert_eq!(i.resolve().unwrap(), ("v1".into(), true)),
            c => panic!("{c:?}"),
        }
        match parse(&[
            "configure",
            "v1",
            "--memory",
            "unlimited",
            "--insecure-registry",
            "",
        ])
        .unwrap()
        .cmd
        {
            Cmd::Configure(c) => {
                assert_eq!(parse_limit_mib(c.memory.as_deref().unwrap()).unwrap(), None);
                assert_eq!(c.insecure_registry.unwrap(), vec![String::new()]);
            }
            c => panic!("{c:?}"),
        }
        assert!(parse(&["supervise", "--name", "v1"]).is_ok());
    }
}
