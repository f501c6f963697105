//! The VCH's configuration: written by `kic-machine` (`<state dir>/config.json`), read by
//! `kic-vch` at start. This is the contract between the two programs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped when a field changes meaning; readers refuse newer versions.
pub const CONFIG_VERSION: u32 = 1;

/// Where `kic-machine` keeps VCHs: `<root>/<name>/config.json`.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/kic/vch";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain HTTP (`--no-tls`).
    None,
    /// Server certificate only (`--no-tlsverify`).
    Server,
    /// Server certificate and client certificates signed by `client_ca` (the default).
    Mutual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `address:port` of the TCP listener; `None` serves only the unix socket.
    pub tcp: Option<String>,
    /// Unix socket path (no TLS on it; its permission bits are the access control).
    pub socket: Option<PathBuf>,
    pub tls: TlsMode,
    /// PEM server certificate chain and key (needed unless `tls` is `None`).
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    /// PEM CA bundle client certificates must chain to (needed for `Mutual`).
    pub client_ca: Option<PathBuf>,
}

/// A host bridge mapped into the VCH as a Docker network (VIC's container network).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNetwork {
    /// The Docker network's name.
    pub alias: String,
    /// An existing Linux bridge on the host.
    pub bridge: String,
    /// The segment's gateway with its prefix length (`10.9.0.1/24`); may be empty with DHCP.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// The addresses containers get (a CIDR inside the segment); empty: a DHCP server on the
    /// segment gives them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip_range: String,
    /// Nameservers for containers on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// VCH-wide limits, enforced on every container create (`None` = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Total memory of all running + created containers, MiB.
    pub memory_mib: Option<u64>,
    /// Total vCPUs of all containers.
    pub cpus: Option<u32>,
    /// Number of containers (any state).
    pub containers: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registries {
    /// Registries reached over plain HTTP or unverified TLS (`host[:port]`).
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Extra PEM CA files trusted for registries.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// When non-empty, only these registries (`host[:port]`, `*.domain` patterns) may be used.
    #[serde(default)]
    pub whitelist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VchConfig {
    pub version: u32,
    pub name: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// libvirt connection URI (`qemu:///system`).
    pub target: String,
    /// The datastore directory this VCH's port layer uses (images, container disks); it is
    /// `<image store>/<name>` so that VCHs sharing a store see their own images only.
    pub datastore: PathBuf,
    /// The image store as given to `create` (a directory or `pool:<libvirt pool>`).
    pub image_store: String,
    /// Volume stores by label (`default` is the default store).
    #[serde(default)]
    pub volume_stores: BTreeMap<String, PathBuf>,
    /// Where container networks take their subnets from (`None`: 172.16.0.0/12); the
    /// default `bridge` network is its first block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_network_range: Option<String>,
    /// Container networks (VIC's `--container-network`): host bridges mapped into the VCH.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_networks: Vec<ContainerNetwork>,
    pub endpoint: Endpoint,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub registries: Registries,
    /// The static tether the bootstrap image is built with.
    pub tether: PathBuf,
    /// Default memory (MiB) and vCPUs of a container VM.
    pub container_memory_mib: u64,
    pub container_cpus: u32,
    #[serde(default)]
    pub debug: bool,
    /// Extra guest kernel arguments (`kic.debug` with `--debug`).
    #[serde(default)]
    pub kernel_args: String,
    /// The KIC version that created or last upgraded this VCH.
    pub kic_version: String,
}

impl VchConfig {
    pub fn load(path: &Path) -> anyhow::Result<VchConfig> {
        let b = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read VCH config {}: {e}", path.display()))?;
        let c: VchConfig = serde_json::from_slice(&b)
            .map_err(|e| anyhow::anyhow!("VCH config {} is not valid: {e}", path.display()))?;
        if c.version > CONFIG_VERSION {
            anyhow::bail!(
                "VCH config {} has version {} but this kic-vch reads up to {CONFIG_VERSION}: upgrade kic-vch",
                path.display(),
                c.version
            );
        }
        Ok(c)
    }

    /// Write atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
