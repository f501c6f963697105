//! The port layer proper: container VMs from create to remove, the monitors that keep each
//! running container's output and exit code, and rebuilding all of it from libvirt and the
//! datastore when the host process starts.

use crate::container::{
    now_rfc3339, valid_name, ContainerConfig, ContainerState, Mount, Status, CONFIG_VERSION,
};
use crate::domain::{domain_xml, DomainSpec, Nic, VolumeDisk, MAX_VOLUMES};
use crate::error::{Error, Kind, Result};
use crate::layout::{ContainerPaths, Layout, SOCKET_DIR};
use crate::libvirt::Hypervisor;
use crate::logfile::{LogReader, LogRecord, LogWriter};
use crate::network::{
    mac_for, Attachment, EndpointRequest, NetworkConfig, NetworkCreate, NetworkSetup, Networks,
    Plumbing,
};
use crate::tether::Session;
use crate::volumes::{Volume, VolumeCreate, VolumeStores};
use futures::FutureExt;
use kic_proto::{
    frame, ContainerSpec, Event, ProcessSpec, Request, Response, MAIN_ID, STDERR, STDOUT,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// How the port layer is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub datastore: PathBuf,
    pub libvirt_uri: String,
    /// The VCH this port layer serves; its containers are the domains carrying this name.
    pub vch: String,
    /// The static `kic-tether` binary the bootstrap image is built with.
    pub tether: PathBuf,
    pub default_memory_mib: u64,
    pub default_vcpus: u32,
    /// Appended to the guest kernel command line (`kic.debug` prints the tether's boot steps
    /// with their uptime to the console log).
    pub extra_kernel_args: String,
    /// Volume stores by label (`default` is the default store).
    pub volume_stores: BTreeMap<String, PathBuf>,
    /// Container networks (`None`: containers get loopback only).
    pub network: Option<NetworkSetup>,
}

impl Config {
    pub fn new(datastore: impl Into<PathBuf>, vch: &str, tether: impl Into<PathBuf>) -> Self {
        Config {
            datastore: datastore.into(),
            libvirt_uri: "qemu:///system".into(),
            vch: vch.into(),
            tether: tether.into(),
            default_memory_mib: 512,
            // Two vCPUs (where the host has them): the guest loads its device and filesystem
            // modules in parallel, and under TCG each vCPU is a host thread.
            default_vcpus: std::thread::available_parallelism()
                .map(|n| n.get().min(2) as u32)
                .unwrap_or(1),
            extra_kernel_args: String::new(),
            volume_stores: BTreeMap::new(),
            network: None,
        }
    }
}

/// What `create` needs; `None` fields take the image's defaults.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub tty: bool,
    pub open_stdin: bool,
    pub labels: BTreeMap<String, String>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    pub extra: serde_json::Value,
    /// Volumes to attach; each must exist (see [`PortLayer::volume_create`]).
    pub mounts: Vec<MountRequest>,
    /// Networks to join, by name or ID in `network_id` (empty: loopback only).
    pub networks: Vec<EndpointRequest>,
}

/// A volume to mount into a new container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub volume: String,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    /// Docker's `volume-nocopy`: do not copy the image's content into an empty volume.
    pub no_copy: bool,
}

/// A container as callers see it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub config: ContainerConfig,
    pub state: ContainerState,
}

pub(crate) struct Ctr {
    pub(crate) paths: ContainerPaths,
    pub(crate) config: RwLock<ContainerConfig>,
    pub(crate) state: watch::Sender<ContainerState>,
    /// The live tether session, when this process monitors the container.
    session: tokio::sync::RwLock<Option<Arc<Session>>>,
    log_appended: Notify,
    start_result: Mutex<Option<oneshot::Sender<Result<()>>>>,
    exit_waiters: Mutex<HashMap<String, oneshot::Sender<i32>>>,
    monitored: AtomicBool,
    /// Orders state changes with reads of `state.json`, so that a refresh never brings back
    /// the state a concurrent update is replacing.
    state_io: Mutex<()>,
    /// Held while the container's VM is up for maintenance (files of a stopped container), and
    /// by start and remove, which wait for it.
    pub(crate) maint: Arc<tokio::sync::Mutex<()>>,
    /// A maintenance VM kept up a moment for the next file request.
    pub(crate) linger: Mutex<crate::guest::Linger>,
}

pub(crate) struct Inner {
    cfg: Config,
    pub(crate) layout: Layout,
    pub(crate) hv: Hypervisor,
    boot: kic_bootstrap::BootImage,
    pub(crate) images: kic_image::ImageStore,
    containers: Mutex<HashMap<String, Arc<Ctr>>>,
    volumes: VolumeStores,
    /// Held while volumes are created or removed, containers referencing them are created, and
    /// while a container's volumes are checked at start.
    pub(crate) volume_lock: tokio::sync::Mutex<()>,
    networks: Option<Networks>,
    /// Held while addresses are handed out and while networks are removed.
    net_lock: tokio::sync::Mutex<()>,
    /// Containers whose VM is up for maintenance: their volumes count as in use.
    pub(crate) maintenance: Mutex<std::collections::HashSet<String>>,
}

/// The port layer. Cheap to clone.
#[derive(Clone)]
pub struct PortLayer {
    pub(crate) inner: Arc<Inner>,
}

/// A new 64-hex-digit ID (containers, networks, endpoints).
pub(crate) fn random_id() -> String {
    random_hex(32)
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Parse a signal name or number as Docker accepts them (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::invalid(format!("Invalid signal: {s}")));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return Err(Error::invalid(format!("Invalid signal: {s}"))),
    };
    Ok(n)
}

/// Merge `KEY=value` lists: later entries replace earlier ones with the same key.
fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in base.iter().chain(over) {
        let key = kv.split('=').next().unwrap_or(kv);
        if let Some(slot) = out.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            *slot = kv.clone();
        } else {
            out.push(kv.clone());
        }
    }
    out
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "quiet", "sharp", "stoic", "tender", "vivid", "witty", "zen",
];
const NOUNS: &[&str] = &[
    "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace",
    "newton", "noether", "pascal", "ritchie", "shannon", "tesla", "turing", "wozniak", "yalow",
];

fn generated_name() -> String {
    use rand::seq::SliceRandom;
    let mut r = rand::thread_rng();
    format!(
        "{}_{}",
        ADJECTIVES.choose(&mut r).expect("nonempty"),
        NOUNS.choose(&mut r).expect("nonempty")
    )
}

/// Take the container's monitor lock; `None` when another process holds it.
pub(crate) fn try_lock(path: &Path) -> Option<File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

/// The serial number of the `i`-th volume disk, as the tether looks for it.
fn volume_serial(i: usize) -> String {
    format!("kicvol{i}")
}

/// Docker's checks of mount destinations.
fn check_mount_targets(mounts: &[MountRequest]) -> Result<()> {
    if mounts.len() > MAX_VOLUMES {
        return Err(Error::invalid(format!(
            "a KIC container can have at most {MAX_VOLUMES} volumes ({} asked)",
            mounts.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for m in mounts {
        if !m.target.starts_with('/') {
            return Err(Error::invalid(format!(
                "invalid mount config: mount path must be absolute: {}",
                m.target
            )));
        }
        let norm = Path::new(&m.target)
            .components()
            .collect::<PathBuf>()
            .to_string_lossy()
            .into_owned();
        if norm == "/" {
            return Err(Error::invalid(
                "invalid specification: destination can't be '/'",
            ));
        }
        if m.target.split('/').any(|c| c == "..") {
            return Err(Error::invalid(format!(
                "invalid mount config: mount path must not contain '..': {}",
                m.target
            )));
        }
        if !seen.insert(norm.clone()) {
            return Err(Error::invalid(format!("Duplicate mount point: {norm}")));
        }
    }
    Ok(())
}

fn io_err(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(what, e)
}

impl PortLayer {
    /// Open the datastore, connect to libvirt, build (or find) the bootstrap image, and adopt
    /// every container of this VCH that libvirt and the datastore know.
    pub async fn open(cfg: Config) -> Result<PortLayer> {
        let layout = Layout::new(&cfg.datastore);
        for d in [
            layout.containers(),
            layout.bootstrap(),
            layout.images(),
            PathBuf::from(SOCKET_DIR),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        // QEMU runs as its own user and must reach the datastore's files.
        use std::os::unix::fs::PermissionsExt;
        for d in [
            layout.root().to_path_buf(),
            layout.containers(),
            layout.bootstrap(),
        ] {
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
        }
        let (broot, inputs) = (
            layout.bootstrap(),
            kic_bootstrap::BuildInputs::new(&cfg.tether),
        );
        let boot = tokio::task::spawn_blocking(move || kic_bootstrap::build(&broot, &inputs))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| Error::unavailable(format!("bootstrap image: {e}")))?;
        let hv = Hypervisor::connect(&cfg.libvirt_uri, &boot).await?;
        let images = kic_image::ImageStore::open(layout.images())?;
        let volumes = VolumeStores::new(cfg.volume_stores.clone());
        let networks = match cfg.network.clone() {
            Some(setup) => {
                let ds = layout.root().to_path_buf();
                Some(
                    tokio::task::spawn_blocking(move || {
                        let n = Networks::open(&ds, setup)?;
                        n.plumb()?;
                        Ok::<_, Error>(n)
                    })
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?
                    .map_err(|e| {
                        Error::unavailable(format!("container networks: {}", e.message))
                    })?,
                )
            }
            None => None,
        };
        let pl = PortLayer {
            inner: Arc::new(Inner {
                volumes,
                volume_lock: tokio::sync::Mutex::new(()),
                networks,
                net_lock: tokio::sync::Mutex::new(()),
                maintenance: Mutex::new(Default::default()),
                cfg,
                layout,
                hv,
                boot,
                images,
                containers: Mutex::new(HashMap::new()),
            }),
        };
        pl.adopt().await?;
        Ok(pl)
    }

    pub fn images(&self) -> &kic_image::ImageStore {
        &self.inner.images
    }

    pub fn domain_type(&self) -> &'static str {
        self.inner.hv.domain_type
    }

    pub fn kvm_note(&self) -> Option<&str> {
        self.inner.hv.kvm_note.as_deref()
    }

    pub fn boot_version(&self) -> &str {
        &self.inner.boot.manifest.version
    }

    pub fn datastore(&self) -> &Path {
        self.inner.layout.root()
    }

    /// Rebuild the view from libvirt's domains and the datastore; start monitors for running VMs.
    async fn adopt(&self) -> Result<()> {
        let domains = self.inner.hv.list().await?;
        for d in domains {
            let Ok(meta) = serde_json::from_str::<ContainerConfig>(&d.metadata) else {
                continue;
            };
            if meta.vch != self.inner.cfg.vch || meta.datastore != self.inner.cfg.datastore {
                continue;
            }
            let paths = self.inner.layout.container(&meta.id);
            // The datastore copy is the newer one (a rename writes only the file).
            let config = std::fs::read(paths.config())
                .ok()
                .and_then(|b| serde_json::from_slice::<ContainerConfig>(&b).ok())
                .unwrap_or(meta);
            let state = std::fs::read(paths.state())
                .ok()
                .and_then(|b| serde_json::from_slice::<ContainerState>(&b).ok())
                .unwrap_or_else(ContainerState::created);
            let ctr = Arc::new(Ctr::new(paths, config, state));
            let id = ctr.config.read().expect("config lock").id.clone();
            self.inner
                .containers
                .lock()
                .expect("containers lock")
                .insert(id.clone(), ctr.clone());
            if d.active && !ctr.state.borrow().running() {
                // A maintenance VM whose host process went away: nothing runs in it.
                tracing::info!("container {id}: ending a leftover maintenance VM");
                let _ = self.inner.hv.destroy(&d.name).await;
            } else if d.active {
                self.ensure_monitor(&ctr);
            } else if ctr.state.borrow().running() {
                // The VM ended while nobody watched; the log has what was stored.
                self.vm_ended(&ctr).await;
            }
        }
        Ok(())
    }

    pub(crate) fn find(&self, name_or_id: &str) -> Result<Arc<Ctr>> {
        let cs = self.inner.containers.lock().expect("containers lock");
        let key = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if let Some(c) = cs.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = cs
            .values()
            .find(|c| c.config.read().expect("config lock").name == key)
        {
            return Ok(c.clone());
        }
        let matches: Vec<_> = if key.is_empty() {
            vec![]
        } else {
            cs.iter().filter(|(id, _)| id.starts_with(key)).collect()
        };
        match matches.len() {
            1 => Ok(matches[0].1.clone()),
            0 => Err(Error::no_such_container(name_or_id)),
            _ => Err(Error::invalid(format!(
                "multiple IDs found with provided prefix: {key}"
            ))),
        }
    }

    /// Every container of this VCH.
    pub fn list(&self) -> Vec<ContainerView> {
        let cs: Vec<Arc<Ctr>> = self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .values()
            .cloned()
            .collect();
        let mut v: Vec<ContainerView> = cs.iter().map(|c| c.view()).collect();
        v.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        v
    }

    pub fn inspect(&self, name_or_id: &str) -> Result<ContainerView> {
        let c = self.find(name_or_id)?;
        c.refresh();
        Ok(c.view())
    }

    /// The VCH's volume stores.
    /// The VCH's network setup, when containers get networks.
    pub fn network_setup(&self) -> Option<&NetworkSetup> {
        self.inner.networks.as_ref().map(|n| &n.setup)
    }

    fn networks(&self) -> Result<&Networks> {
        self.inner.networks.as_ref().ok_or_else(|| {
            Error::unavailable(
                "this VCH has no container networks (its endpoint runs without a bridge network)",
            )
        })
    }

    pub fn network_list(&self) -> Vec<NetworkConfig> {
        self.inner
            .networks
            .as_ref()
            .map(|n| n.list())
            .unwrap_or_default()
    }

    /// By name, ID or unique ID prefix.
    pub fn network_find(&self, key: &str) -> Result<NetworkConfig> {
        self.networks()?.find(key)
    }

    pub async fn network_create(&self, req: NetworkCreate) -> Result<NetworkConfig> {
        self.networks()?;
        let _g = self.inner.net_lock.lock().await;
        let pl = self.clone();
        tokio::task::spawn_blocking(move || pl.networks()?.create(req))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
    }

    /// Running containers with an address on network `id`: (container, its attachment).
    pub fn network_endpoints(&self, id: &str) -> Vec<(ContainerView, Attachment)> {
        self.list()
            .into_iter()
            .filter(|v| v.state.status == Status::Running)
            .filter_map(|v| {
                let a = v.state.net.iter().find(|a| a.network_id == id)?.clone();
                Some((v, a))
            })
            .collect()
    }

    /// Remove a network nobody runs on; containers merely configured for it keep the
    /// reference (their next start fails, as in Docker).
    pub async fn network_remove(&self, key: &str) -> Result<NetworkConfig> {
        let n = self.network_find(key)?;
        Networks::check_removable(&n)?;
        let _g = self.inner.net_lock.lock().await;
        let active = self.network_endpoints(&n.id);
        if let Some((v, _)) = active.first() {
            return Err(Error::new(
                Kind::Forbidden,
                format!(
                    "error while removing network: network {} has active endpoints (name:\"{}\" id:\"{}\")",
                    n.name,
                    v.config.name,
                    &v.config.id[..12]
                ),
            ));
        }
        let (pl, n2) = (self.clone(), n.clone());
        tokio::task::spawn_blocking(move || pl.networks()?.remove(&n2))
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
        Ok(n)
    }

    /// Network names or IDs of a create request resolved to IDs, with Docker's checks.
    fn resolve_endpoints(&self, reqs: &[EndpointRequest]) -> Result<Vec<EndpointRequest>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let nets = self.networks()?;
        if reqs.len() > 10 {
            return Err(Error::invalid("a container can be on at most 10 networks"));
        }
        let mut out: Vec<EndpointRequest> = Vec::new();
        for r in reqs {
            let n = nets.find(&r.network_id)?;
            if out.iter().any(|o| o.network_id == n.id) {
                return Err(Error::conflict(format!(
                    "container is already connected to network {}",
                    n.name
                )));
            }
            if n.builtin && !r.aliases.is_empty() {
                return Err(Error::invalid(
                    "network-scoped alias is supported only for containers in user defined networks",
                ));
            }
            if let Some(ip) = r.ipv4 {
                crate::network::check_fixed_ip(&n, ip)?;
            }
            for l in &r.links {
                if l.split(':').next().unwrap_or("").is_empty() {
                    return Err(Error::invalid(format!(
                        "invalid link {l:?}: expected name:alias"
                    )));
                }
            }
            out.push(EndpointRequest {
                network_id: n.id,
                ..r.clone()
            });
        }
        Ok(out)
    }

    /// Addresses for a starting container, one per network of its config.
    fn allocate(&self, id: &str, c: &ContainerConfig) -> Result<Vec<Attachment>> {
        if c.networks.is_empty() {
            return Ok(Vec::new());
        }
        let nets = self.networks()?;
        let mut out = Vec::new();
        for (i, e) in c.networks.iter().enumerate() {
            let n = nets.by_id(&e.network_id).ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    format!("network {} not found", e.network_id),
                )
            })?;
            if n.dhcp {
                if e.ipv4.is_some() {
                    return Err(crate::network::dhcp_fixed_ip(&n));
                }
                // The address comes with the lease at start; the MAC stays the same across
                // starts, so the server gives the same address back.
                out.push(Attachment {
                    network_id: n.id.clone(),
                    ip: std::net::Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: n.gateway,
                    mac: crate::network::mac_for_dhcp(id, i),
                    tap: format!("kt{}{i}", &id[..11]),
                    endpoint_id: random_id(),
                });
                continue;
            }
            let used = self
                .network_endpoints(&n.id)
                .into_iter()
                .filter(|(v, _)| v.config.id != id)
                .map(|(_, a)| a.ip)
                .collect();
            let ip = nets.allocate(&n, e.ipv4, &used)?;
            out.push(Attachment {
                network_id: n.id.clone(),
                ip,
                prefix_len: n.subnet.prefix_len(),
                gateway: n.gateway,
                mac: mac_for(ip),
                tap: format!("kt{}{i}", &id[..11]),
                endpoint_id: random_id(),
            });
        }
        Ok(out)
    }

    /// Boot the VM paused, put its NICs on their bridges, then let it run.
    async fn start_networked(&self, c: &ContainerConfig, net: &[Attachment]) -> Result<()> {
        let hv = &self.inner.hv;
        hv.define(self.domain_xml_with(c, net)).await?;
        hv.start_paused(&c.domain).await?;
        let plumbed = async {
            let pid = hv.qemu_pid(&c.domain)?;
            let nets = self.networks()?;
            let mut taps = Vec::new();
            for a in net {
                let n = nets.by_id(&a.network_id).ok_or_else(|| {
                    Error::new(
                        Kind::NotFound,
                        format!("network {} not found", a.network_id),
                    )
                })?;
                taps.push((a.tap.clone(), n.bridge, n.external));
            }
            let setup = nets.setup.clone();
            tokio::task::spawn_blocking(move || {
                let p = Plumbing(&setup);
                taps.iter().try_for_each(|(tap, br, external)| {
                    if *external {
                        p.attach_tap_host(pid, tap, br)
                    } else {
                        p.attach_tap(pid, tap, br)
                    }
                })
            })
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
            hv.resume(&c.domain).await
        }
        .await;
        if plumbed.is_err() {
            let _ = hv.destroy(&c.domain).await;
        }
        plumbed
    }

    /// What the tether gets at start: the create-time spec plus this run's addresses, the
    /// hosts file that names them, and the VCH's DNS responder on the first network.
    fn run_spec(&self, c: &ContainerConfig, net: &[Attachment]) -> ContainerSpec {
        let mut spec = c.spec.clone();
        if net.is_empty() {
            return spec;
        }
        let nets = self.inner.networks.as_ref();
        let dhcp = |a: &Attachment| {
            nets.and_then(|n| n.by_id(&a.network_id))
                .is_some_and(|n| n.dhcp)
        };
        spec.interfaces = net
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if dhcp(a) {
                    kic_proto::NetInterface {
                        mac: a.mac.clone(),
                        name: format!("eth{i}"),
                        dhcp: true,
                        ..Default::default()
                    }
                } else {
                    kic_proto::NetInterface {
                        mac: a.mac.clone(),
                        name: format!("eth{i}"),
                        address: format!("{}/{}", a.ip, a.prefix_len),
                        gateway: (i == 0).then(|| a.gateway.to_string()),
                        dhcp: false,
                    }
                }
            })
            .collect();
        let mut hosts = spec.hosts.clone();
        if !net[0].ip.is_unspecified() {
            hosts.push_str(&format!("{}\t{}\n", net[0].ip, spec.hostname));
        }
        // Legacy links: the linked container's address under the alias, as Docker writes it.
        for (e, a) in c.networks.iter().zip(net) {
            for l in &e.links {
                let (name, alias) = l.split_once(':').unwrap_or((l, l));
                let target = self
                    .network_endpoints(&a.network_id)
                    .into_iter()
                    .find(|(v, _)| v.config.name == name.trim_start_matches('/'));
                if let Some((v, t)) = target {
                    let alias = alias.rsplit('/').next().unwrap_or(alias);
                    hosts.push_str(&format!(
                        "{}\t{} {} {}\n",
                        t.ip,
                        alias,
                        &v.config.id[..12],
                        v.config.name
                    ));
                }
            }
        }
        spec.hosts = hosts;
        // The VCH's DNS responder sits on its own networks' gateways; a container network's
        // containers use that network's nameservers.
        let first = self
            .inner
            .networks
            .as_ref()
            .and_then(|n| n.by_id(&net[0].network_id));
        spec.resolv_conf = match first.filter(|n| n.external) {
            // DHCP without nameservers of its own: the lease's (the tether writes them).
            Some(n) if n.dhcp && n.dns.is_empty() => None,
            Some(n) => Some(n.dns.iter().map(|d| format!("nameserver {d}\n")).collect()),
            None => Some(format!("nameserver {}\noptions ndots:0\n", net[0].gateway)),
        };
        spec
    }

    /// Add a network to a container that is not running (it gets its address at start).
    pub async fn network_connect(&self, name_or_id: &str, req: EndpointRequest) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let n = self.network_find(&req.network_id)?;
        let _g = self.inner.net_lock.lock().await;
        ctr.refresh();
        let running = ctr.state.borrow().status == Status::Running;
        {
            let c = ctr.config.read().expect("config lock");
            if c.networks.iter().any(|e| e.network_id == n.id) {
                return Err(Error::new(
                    Kind::Forbidden,
                    format!(
                        "endpoint with name {} already exists in network {}",
                        c.name, n.name
                    ),
                ));
            }
        }
        if running {
            return Err(Error::conflict(format!(
                "KIC cannot connect a running container to a network yet: stop {name_or_id} first, connect it to {}, and start it again",
                n.name
            )));
        }
        let mut all = ctr.config.read().expect("config lock").networks.clone();
        all.push(EndpointRequest {
            network_id: n.id.clone(),
            ..req
        });
        let all = self.resolve_endpoints(&all)?;
        ctr.config.write().expect("config lock").networks = all;
        self.save_config(&ctr)
    }

    /// Take a network away from a container that is not running.
    pub async fn network_disconnect(&self, name_or_id: &str, network: &str) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let n = self.network_find(network)?;
        let _g = self.inner.net_lock.lock().await;
        ctr.refresh();
        let name = ctr.config.read().expect("config lock").name.clone();
        if !ctr
            .config
            .read()
            .expect("config lock")
            .networks
            .iter()
            .any(|e| e.network_id == n.id)
        {
            return Err(Error::new(
                Kind::Forbidden,
                format!("container {name} is not connected to network {}", n.name),
            ));
        }
        if ctr.state.borrow().status == Status::Running {
            return Err(Error::conflict(format!(
                "KIC cannot disconnect a running container from a network yet: stop {name} first"
            )));
        }
        ctr.config
            .write()
            .expect("config lock")
            .networks
            .retain(|e| e.network_id != n.id);
        self.save_config(&ctr)
    }

    fn save_config(&self, ctr: &Ctr) -> Result<()> {
        let config = ctr.config.read().expect("config lock").clone();
        let json = serde_json::to_vec_pretty(&config).expect("serialisable");
        write_atomic(&ctr.paths.config(), &json).map_err(io_err("write config.json"))
    }

    pub fn volume_stores(&self) -> &VolumeStores {
        &self.inner.volumes
    }

    /// Create a volume (a formatted disk on its store). A taken name is a conflict.
    pub async fn volume_create(&self, req: VolumeCreate) -> Result<Volume> {
        self.inner.volumes.check(&req)?;
        let _g = self.inner.volume_lock.lock().await;
        if self.inner.volumes.get(&req.name).is_ok() {
            return Err(Error::conflict(format!(
                "create {}: volume already exists",
                req.name
            )));
        }
        let pl = self.clone();
        tokio::task::spawn_blocking(move || pl.inner.volumes.create(&req))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
    }

    pub fn volume_list(&self) -> Vec<Volume> {
        self.inner.volumes.list()
    }

    pub fn volume_get(&self, name: &str) -> Result<Volume> {
        self.inner.volumes.get(name)
    }

    /// The containers (any state) that have the volume attached.
    pub fn volume_users(&self, name: &str) -> Vec<ContainerView> {
        self.list()
            .into_iter()
            .filter(|c| c.config.mounts.iter().any(|m| m.volume == name))
            .collect()
    }

    /// Remove a volume no container uses. With `force`, a missing volume is not an error.
    pub async fn volume_remove(&self, name: &str, force: bool) -> Result<Option<Volume>> {
        let _g = self.inner.volume_lock.lock().await;
        let v = match self.inner.volumes.get(name) {
            Ok(v) => v,
            Err(_) if force => return Ok(None),
            Err(e) => return Err(e),
        };
        let users: Vec<String> = self
            .volume_users(name)
            .into_iter()
            .map(|c| c.config.id)
            .collect();
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        self.inner.volumes.remove(&v)?;
        Ok(Some(v))
    }

    /// Refuse a start that would give a volume to two running containers unless both mount it
    /// read-only (each VM has its own filesystem driver: two writers would corrupt it).
    pub(crate) fn check_volumes_free(&self, config: &ContainerConfig) -> Result<()> {
        if config.mounts.is_empty() {
            return Ok(());
        }
        let maintained = self.inner.maintenance.lock().expect("lock").clone();
        for other in self.list() {
            if other.config.id == config.id
                || !(other.state.running() || maintained.contains(&other.config.id))
            {
                continue;
            }
            for m in &config.mounts {
                if let Some(o) = other.config.mounts.iter().find(|o| o.volume == m.volume) {
                    if !(m.read_only && o.read_only) {
                        return Err(Error::conflict(format!(
                            "volume {} is in use by running container {} (/{}): a volume can be mounted by several running containers only if all of them mount it read-only (:ro); stop that container first",
                            m.volume, other.config.id, other.config.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Create a container: its disk (copy-on-write over the image disk, no image data copied),
    /// its directory on the datastore and its libvirt domain (defined, not started).
    pub async fn create(&self, req: CreateRequest) -> Result<ContainerView> {
        let image = self.inner.images.get(&req.image)?;
        let ic = &image.config.config;
        let entry = req
            .entrypoint
            .clone()
            .or_else(|| ic.entrypoint.clone())
            .unwrap_or_default();
        let cmd = match (&req.entrypoint, &req.cmd) {
            (_, Some(c)) => c.clone(),
            (Some(_), None) => vec![],
            (None, None) => ic.cmd.clone().unwrap_or_default(),
        };
        let args: Vec<String> = entry.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(Error::invalid("no command specified"));
        }
        let id = random_hex(32);
        let name = match &req.name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n).to_string();
                if !valid_name(&n) {
                    return Err(Error::invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n
            }
            None => {
                // A generated name must not be one in use (there are a few hundred pairs).
                let cs = self.inner.containers.lock().expect("containers lock");
                let taken = |n: &str| {
                    cs.values()
                        .any(|c| c.config.read().expect("config lock").name == n)
                };
                let mut n = generated_name();
                let mut tries = 0u32;
                while taken(&n) {
                    tries += 1;
                    n = if tries < 10 {
                        generated_name()
                    } else {
                        format!("{}{}", generated_name(), tries)
                    };
                }
                n
            }
        };
        let hostname = req
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id[..12].to_string());
        let mut env = merge_env(ic.env.as_deref().unwrap_or(&[]), &req.env);
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.insert(0, format!("HOSTNAME={hostname}"));
        }
        let stop_signal = match req.stop_signal.as_deref().or(ic.stop_signal.as_deref()) {
            Some(s) => parse_signal(s)?,
            None => 15,
        };
        let mut labels = ic.labels.clone().unwrap_or_default();
        labels.extend(req.labels.clone());
        let spec = ContainerSpec {
            id: id.clone(),
            hostname: hostname.clone(),
            hosts: "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".into(),
            resolv_conf: None,
            root_device: "/dev/vda".into(),
            main: ProcessSpec {
                args,
                env,
                cwd: req.workdir.clone().filter(|w| !w.is_empty()).or_else(|| ic.working_dir.clone()).unwrap_or_default(),
                user: req.user.clone().or_else(|| ic.user.clone()).unwrap_or_default(),
                tty: req.tty,
                stdin: req.open_stdin,
                size: None,
            },
            mounts: req
                .mounts
                .iter()
                .enumerate()
                .map(|(i, m)| kic_proto::VolumeMount {
                    serial: volume_serial(i),
                    target: m.target.clone(),
                    read_only: m.read_only,
                    copy_up: !m.no_copy && !m.read_only,
                })
                .collect(),
            interfaces: Vec::new(),
        };
        let domain = format!("kic-{}-{}-{}", self.inner.cfg.vch, name, &id[..12]);
        check_mount_targets(&req.mounts)?;
        let mut config = ContainerConfig {
            version: CONFIG_VERSION,
            id: id.clone(),
            name: name.clone(),
            created: now_rfc3339(),
            image: req.image.clone(),
            image_id: image.id.clone(),
            image_disk: image.disk.clone(),
            spec,
            memory_mib: req.memory_mib.unwrap_or(self.inner.cfg.default_memory_mib),
            vcpus: req.vcpus.unwrap_or(self.inner.cfg.default_vcpus),
            stop_signal,
            stop_timeout: req.stop_timeout.unwrap_or(10),
            labels,
            boot_version: self.inner.boot.manifest.version.clone(),
            vch: self.inner.cfg.vch.clone(),
            datastore: self.inner.cfg.datastore.clone(),
            domain: domain.clone(),
            extra: req.extra.clone(),
            mounts: Vec::new(),
            networks: self.resolve_endpoints(&req.networks)?,
        };
        let paths = self.inner.layout.container(&id);
        // Volumes are looked up and the container reserved under the volume lock, so a volume
        // cannot be removed in between.
        let volume_guard = self.inner.volume_lock.lock().await;
        for m in &req.mounts {
            let v = self.inner.volumes.get(&m.volume)?;
            config.mounts.push(Mount {
                volume: m.volume.clone(),
                disk: v.disk(),
                target: m.target.clone(),
                read_only: m.read_only,
            });
        }
        let ctr = Arc::new(Ctr::new(
            paths.clone(),
            config.clone(),
            ContainerState::created(),
        ));
        {
            // Reserve the name: of two concurrent creates with one name, exactly one wins.
            let mut cs = self.inner.containers.lock().expect("containers lock");
            if let Some(other) = cs
                .values()
                .find(|c| c.config.read().expect("config lock").name == name)
            {
                let oid = other.config.read().expect("config lock").id.clone();
                return Err(Error::conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{oid}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            cs.insert(id.clone(), ctr.clone());
        }
        drop(volume_guard);
        match self.create_on_disk(&ctr, &config, &image.disk).await {
            Ok(()) => Ok(ctr.view()),
            Err(e) => {
                self.inner
                    .containers
                    .lock()
                    .expect("containers lock")
                    .remove(&id);
                let _ = self.inner.hv.undefine(&domain).await;
                let _ = std::fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }

    async fn create_on_disk(
        &self,
        ctr: &Ctr,
        config: &ContainerConfig,
        image_disk: &Path,
    ) -> Result<()> {
        let paths = &ctr.paths;
        std::fs::create_dir_all(&paths.dir).map_err(io_err("create the container directory"))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o755));
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image_disk)
            .arg(paths.disk())
            .output()
            .await
            .map_err(|e| {
                Error::unavailable(format!("cannot run qemu-img (install qemu-utils): {e}"))
            })?;
        if !out.status.success() {
            return Err(Error::internal(format!(
                "qemu-img create {}: {}",
                paths.disk().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let json = serde_json::to_vec_pretty(config).expect("serialisable");
        write_atomic(&paths.config(), &json).map_err(io_err("write config.json"))?;
        ctr.save_state().map_err(io_err("write state.json"))?;
        File::create(paths.log()).map_err(io_err("create the container log"))?;
        self.inner.hv.define(self.domain_xml(config)).await
    }

    fn domain_xml(&self, c: &ContainerConfig) -> String {
        self.domain_xml_with(c, &[])
    }

    fn domain_xml_with(&self, c: &ContainerConfig, net: &[Attachment]) -> String {
        let nics: Vec<Nic> = net
            .iter()
            .map(|a| Nic {
                mac: &a.mac,
                tap: &a.tap,
            })
            .collect();
        let p = self.inner.layout.container(&c.id);
        let boot_dir = self.inner.layout.bootstrap().join(&c.boot_version);
        let meta = serde_json::to_string(c).expect("serialisable");
        let serials: Vec<String> = (0..c.mounts.len()).map(volume_serial).collect();
        let volumes: Vec<VolumeDisk> = c
            .mounts
            .iter()
            .zip(&serials)
            .map(|(m, serial)| VolumeDisk {
                path: &m.disk,
                serial,
                read_only: m.read_only,
            })
            .collect();
        domain_xml(&DomainSpec {
            name: &c.domain,
            title: &format!("KIC container {} ({})", c.name, c.image),
            domain_type: self.inner.hv.domain_type,
            memory_mib: c.memory_mib,
            vcpus: c.vcpus,
            kernel: &boot_dir.join("vmlinux"),
            initrd: &boot_dir.join("initrd.img"),
            cmdline: format!(
                "{} {}",
                kic_bootstrap::KERNEL_CMDLINE,
                self.inner.cfg.extra_kernel_args
            )
            .trim_end(),
            disk: &p.disk(),
            socket: &p.socket(),
            console: &p.console(),
            metadata: &meta,
            volumes: &volumes,
            nics: &nics,
        })
    }

    /// Boot the container's VM and start its main process; returns once it runs (or failed to).
    pub async fn start(&self, name_or_id: &str) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        // A maintenance VM (docker cp into a stopped container) ends before the real start.
        drop(ctr.linger.lock().expect("lock").take());
        let _maint = ctr.maint.clone().lock_owned().await;
        ctr.refresh();
        let id = ctr.id();
        ctr.state.borrow().check_start(&id)?;
        let lock = self.take_vm_lock(&ctr).await?;
        let config = ctr.config.read().expect("config lock").clone();
        self.end_lingering_volume_users(&config).await;
        // Addresses are handed out under the network lock, and taken once the state says
        // running (below), so two starts never get the same one.
        let net_guard = self.inner.net_lock.lock().await;
        let net = self.allocate(&id, &config)?;
        // Checked and marked running under the volume lock: two starts cannot both pass.
        let volume_guard = self.inner.volume_lock.lock().await;
        self.check_volumes_free(&config)?;
        let (tx, rx) = oneshot::channel();
        *ctr.start_result.lock().expect("lock") = Some(tx);
        let log_base = LogWriter::open(&ctr.paths.log())
            .map(|w| [0, w.offset(STDOUT), w.offset(STDERR)])
            .unwrap_or([0; 3]);
        let was_started = ctr.state.borrow().started_at.is_some();
        ctr.update(|s| {
            s.status = Status::Running;
            s.exit_code = None;
            s.error.clear();
            s.started_at = Some(now_rfc3339());
            s.finished_at = None;
            s.boot_id = None;
            s.pid = None;
            s.log_base = log_base;
            s.main_started = false;
            s.stopping = false;
            s.net = net.clone();
            if was_started {
                s.restart_count += 1;
            }
        });
        drop(volume_guard);
        drop(net_guard);
        let _ = std::fs::remove_file(ctr.paths.socket());
        self.ensure_boot_version(&ctr).await?;
        tracing::debug!("container {id}: starting domain {}", config.domain);
        let started = if net.is_empty() {
            self.inner.hv.start(&config.domain).await
        } else {
            self.start_networked(&config, &net).await
        };
        if let Err(e) = started {
            ctr.update(|s| {
                s.status = Status::Exited;
                s.exit_code = Some(128);
                s.error = e.message.clone();
                s.finished_at = Some(now_rfc3339());
            });
            return Err(e);
        }
        tracing::debug!("container {id}: domain started");
        self.spawn_monitor(&ctr, lock);
        match rx.await {
            Ok(r) => r,
            Err(_) => {
                ctr.refresh();
                let st = ctr.state.borrow().clone();
                Err(Error::internal(format!(
                    "container {id} stopped while starting: {}",
                    st.error
                )))
            }
        }
    }

    /// The lock that says this process runs the container's VM (held by its monitor, or by a
    /// maintenance boot). A VM that just ended may still be let go by its monitor: wait for it.
    pub(crate) async fn take_vm_lock(&self, ctr: &Ctr) -> Result<File> {
        let id = ctr.id();
        self.settle(&id, Duration::from_secs(10)).await;
        try_lock(&ctr.paths.lock()).ok_or_else(|| {
            Error::conflict(format!(
                "container {id} is being started or managed by another host process"
            ))
        })
    }

    /// End the lingering maintenance VMs of other containers that mount one of `config`'s
    /// volumes (a `docker cp` into them just ended), so that they do not hold the volume.
    pub(crate) async fn end_lingering_volume_users(&self, config: &ContainerConfig) {
        if config.mounts.is_empty() {
            return;
        }
        let others: Vec<Arc<Ctr>> = self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .values()
            .filter(|c| {
                let c = c.config.read().expect("config lock");
                c.id != config.id
                    && c.mounts
                        .iter()
                        .any(|m| config.mounts.iter().any(|n| n.volume == m.volume))
            })
            .cloned()
            .collect();
        for c in others {
            if c.linger.lock().expect("lock").take().is_none() {
                continue;
            }
            let id = c.id();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while self.inner.maintenance.lock().expect("lock").contains(&id)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The boot image may have been rebuilt (upgrade): boot the version this container uses
    /// if it still exists, else the current one.
    pub(crate) async fn ensure_boot_version(&self, ctr: &Ctr) -> Result<()> {
        let v = ctr.config.read().expect("config lock").boot_version.clone();
        if !self.inner.layout.bootstrap().join(&v).exists() {
            let v = self.inner.boot.manifest.version.clone();
            ctr.config.write().expect("config lock").boot_version = v;
            let c = ctr.config.read().expect("config lock").clone();
            self.inner.hv.define(self.domain_xml(&c)).await?;
        }
        Ok(())
    }

    fn ensure_monitor(&self, ctr: &Arc<Ctr>) {
        if ctr.monitored.load(Ordering::SeqCst) {
            return;
        }
        match try_lock(&ctr.paths.lock()) {
            Some(lock) => self.spawn_monitor(ctr, lock),
            None => {
                // Another process serves it; try again later in case that process goes away.
                let (pl, ctr) = (self.clone(), ctr.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    ctr.refresh();
                    if ctr.state.borrow().running()
                        && pl.inner.hv.is_active(&ctr.domain()).await.unwrap_or(false)
                    {
                        pl.ensure_monitor(&ctr);
                    }
                });
            }
        }
    }

    fn spawn_monitor(&self, ctr: &Arc<Ctr>, lock: File) {
        ctr.monitored.store(true, Ordering::SeqCst);
        let (pl, ctr) = (self.clone(), ctr.clone());
        tokio::spawn(async move {
            ctr.refresh_from_disk();
            pl.monitor(&ctr).await;
            *ctr.session.write().await = None;
            ctr.monitored.store(false, Ordering::SeqCst);
            drop(lock);
            // Wake followers and waiters.
            ctr.log_appended.notify_waiters();
        });
    }

    /// Serve one running container until its VM has ended.
    async fn monitor(&self, ctr: &Arc<Ctr>) {
        let log = match LogWriter::open(&ctr.paths.log()) {
            Ok(l) => Arc::new(Mutex::new(l)),
            Err(e) => {
                tracing::error!("container {}: cannot open its log: {e}", ctr.id());
                return;
            }
        };
        let sock = ctr.paths.socket();
        loop {
            let (hv, domain) = (self.inner.hv.clone(), ctr.domain());
            let alive = move || {
                let (hv, d) = (hv.clone(), domain.clone());
                async move { hv.is_active(&d).await.unwrap_or(false) }.boxed()
            };
            let session = match Session::connect(&sock, &alive).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    if !self
                        .inner
                        .hv
                        .is_active(&ctr.domain())
                        .await
                        .unwrap_or(false)
                    {
                        tracing::info!("container {}: VM ended ({e})", ctr.id());
                        self.vm_ended(ctr).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            tracing::debug!(
                "container {}: tether session up (boot {})",
                ctr.id(),
                session.boot_id
            );
            if ctr.state.borrow().boot_id.as_deref() != Some(session.boot_id.as_str()) {
                let b = session.boot_id.clone();
                ctr.update(|s| s.boot_id = Some(b));
            }
            if !session.started {
                let spec = self.run_spec(
                    &ctr.config.read().expect("config lock"),
                    &ctr.state.borrow().net,
                );
                match session
                    .request(Request::Start {
                        spec: Box::new(spec),
                    })
                    .await
                {
                    Ok(Response::Started { pid, leases }) => {
                        tracing::debug!("container {}: main process started (pid {pid})", ctr.id());
                        ctr.update(|s| {
                            s.pid = Some(pid);
                            s.main_started = true;
                            apply_leases(&mut s.net, &leases);
                        });
                        ctr.finish_start(Ok(()));
                    }
                    Ok(Response::Error { message, exit_code }) => {
                        let code = exit_code.unwrap_or(126);
                        ctr.update(|s| {
                            s.status = Status::Exited;
                            s.exit_code = Some(code);
                            s.error = message.clone();
                            s.finished_at = Some(now_rfc3339());
                        });
                        let mut err = Error::new(
                            Kind::Invalid,
                            format!("failed to start container {}: {message}", ctr.id()),
                        );
                        err.exit_code = Some(code);
                        ctr.finish_start(Err(err));
                        let _ = session
                            .request(Request::AckExit { id: MAIN_ID.into() })
                            .await;
                        self.wait_vm_down(ctr).await;
                        return;
                    }
                    _ => continue,
                }
            } else {
                ctr.finish_start(Ok(()));
            }
            *ctr.session.write().await = Some(session.clone());
            match self.serve_session(ctr, &session, &log).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(
                        "container {}: tether session lost ({e}); reconnecting",
                        ctr.id()
                    );
                    *ctr.session.write().await = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Store the main process's output and wait for its exit; `Ok` once the exit is stored.
    async fn serve_session(
        &self,
        ctr: &Arc<Ctr>,
        session: &Arc<Session>,
        log: &Arc<Mutex<LogWriter>>,
    ) -> io::Result<()> {
        let mut events = session.events().await?;
        let tty = ctr.config.read().expect("config lock").spec.main.tty;
        let base = ctr.state.borrow().log_base;
        let mut pumps = tokio::task::JoinSet::new();
        let fds: &[u8] = if tty { &[STDOUT] } else { &[STDOUT, STDERR] };
        for &fd in fds {
            let have = log
                .lock()
                .expect("log lock")
                .offset(fd)
                .saturating_sub(base[fd as usize]);
            let (start, stream) = session.output(MAIN_ID, fd, have).await?;
            if start > have {
                tracing::warn!(
                    "container {}: output {fd} has a gap from {have} to {start}",
                    ctr.id()
                );
            }
            let (log, ctr) = (log.clone(), ctr.clone());
            pumps.spawn(async move { pump_to_log(stream, fd, start, &log, &ctr).await });
        }
        let mut main_exit: Option<i32> = None;
        loop {
            if let Some(code) = main_exit {
                if pumps.is_empty() {
                    ctr.update(|s| {
                        s.status = Status::Exited;
                        s.exit_code = Some(code);
                        s.pid = None;
                        s.finished_at = Some(now_rfc3339());
                    });
                    ctr.log_appended.notify_waiters();
                    let _ = session
                        .request(Request::AckExit { id: MAIN_ID.into() })
                        .await;
                    self.wait_vm_down(ctr).await;
                    return Ok(());
                }
            }
            tokio::select! {
                ev = frame::read::<_, Event>(&mut events) => match ev? {
                    Some(Event::Snapshot { processes }) => {
                        for p in processes {
                            if let Some(code) = p.exit_code {
                                if p.id == MAIN_ID { main_exit = Some(code) } else { ctr.exec_exited(&p.id, code) }
                            }
                        }
                    }
                    Some(Event::Exited { id, exit_code }) => {
                        if id == MAIN_ID { main_exit = Some(exit_code) } else { ctr.exec_exited(&id, exit_code) }
                    }
                    Some(Event::Started { .. }) => {}
                    None => return Err(io::Error::new(io::ErrorKind::NotConnected, "events stream ended")),
                },
                Some(r) = pumps.join_next(), if !pumps.is_empty() => {
                    r.map_err(io::Error::other)??;
                }
            }
        }
    }

    /// After the main process's exit was acknowledged the tether ends the VM; make sure.
    async fn wait_vm_down(&self, ctr: &Ctr) {
        let d = ctr.domain();
        for _ in 0..100 {
            if !self.inner.hv.is_active(&d).await.unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.inner.hv.destroy(&d).await;
    }

    /// The VM is gone without a stored exit (killed from outside, crashed, or destroyed by stop).
    async fn vm_ended(&self, ctr: &Ctr) {
        ctr.refresh_from_disk();
        let st = ctr.state.borrow().clone();
        if st.running() {
            ctr.update(|s| {
                s.status = Status::Exited;
                if s.exit_code.is_none() {
                    s.exit_code = Some(137);
                }
                if !s.stopping && s.error.is_empty() {
                    s.error =
                        "the container VM stopped unexpectedly (see console.log on the datastore)"
                            .into();
                }
                s.pid = None;
                s.finished_at = Some(now_rfc3339());
            });
        }
        ctr.finish_start(Err(Error::internal(format!(
            "container {} VM stopped before its process started; see {}",
            ctr.id(),
            ctr.paths.console().display()
        ))));
        ctr.log_appended.notify_waiters();
    }

    /// The live session of a running container served by this process.
    pub(crate) async fn session(&self, ctr: &Arc<Ctr>) -> Result<Arc<Session>> {
        ctr.refresh();
        ctr.state.borrow().check_kill(&ctr.id())?;
        if !ctr.monitored.load(Ordering::SeqCst) {
            self.ensure_monitor(ctr);
        }
        for _ in 0..200 {
            if let Some(s) = ctr.session.read().await.clone() {
                if !s.is_closed() {
                    return Ok(s);
                }
            }
            if !ctr.state.borrow().running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ctr.state.borrow().check_kill(&ctr.id())?;
        Err(Error::unavailable(format!(
            "container {} is running but its tether does not answer",
            ctr.id()
        )))
    }

    /// Send a signal to the main process.
    pub async fn kill(&self, name_or_id: &str, signal: i32) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let s = self.session(&ctr).await?;
        if signal == 9 {
            ctr.update(|s| s.stopping = true);
        }
        s.request_ok(Request::Signal {
            id: MAIN_ID.into(),
            signal,
        })
        .await
        .map_err(|e| Error::conflict(format!("Cannot kill container: {}: {e}", ctr.id())))
    }

    /// Docker's stop: the stop signal, `timeout` seconds, then SIGKILL, then the VM is powered off.
    pub async fn stop(&self, name_or_id: &str, timeout: Option<u64>) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        ctr.refresh();
        if !ctr.state.borrow().running() {
            return Ok(());
        }
        let timeout = timeout.unwrap_or(ctr.config.read().expect("config lock").stop_timeout);
        let sig = ctr.config.read().expect("config lock").stop_signal;
        ctr.update(|s| s.stopping = true);
        if let Ok(s) = self.session(&ctr).await {
            let _ = s
                .request(Request::Signal {
                    id: MAIN_ID.into(),
                    signal: sig,
                })
                .await;
            if self
                .wait_not_running(&ctr, Duration::from_secs(timeout))
                .await
            {
                return Ok(());
            }
            let _ = s
                .request(Request::Signal {
                    id: MAIN_ID.into(),
                    signal: 9,
                })
                .await;
            if self.wait_not_running(&ctr, Duration::from_secs(5)).await {
                return Ok(());
            }
        }
        // The tether does not answer: power the VM off.
        self.inner.hv.destroy(&ctr.domain()).await?;
        if !self.wait_not_running(&ctr, Duration::from_secs(10)).await {
            self.vm_ended(&ctr).await;
        }
        Ok(())
    }

    async fn wait_not_running(&self, ctr: &Arc<Ctr>, d: Duration) -> bool {
        let mut rx = ctr.state.subscribe();
        let deadline = tokio::time::Instant::now() + d;
        loop {
            ctr.refresh();
            if !ctr.state.borrow().running() {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }

    /// Wait (up to `limit`) until this process has finished serving a stopped container, so
    /// that a short-lived host process does not leave before the VM was told to end.
    pub async fn settle(&self, name_or_id: &str, limit: Duration) {
        let Ok(ctr) = self.find(name_or_id) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        while ctr.monitored.load(Ordering::SeqCst)
            && !ctr.state.borrow().running()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the container is not running; its exit code.
    pub async fn wait(&self, name_or_id: &str) -> Result<i32> {
        let ctr = self.find(name_or_id)?;
        while !self.wait_not_running(&ctr, Duration::from_secs(3600)).await {}
        let code = ctr.state.borrow().exit_code.unwrap_or(0);
        Ok(code)
    }

    /// Remove a container: its VM, domain, disk and log. `force` stops it first.
    pub async fn remove(&self, name_or_id: &str, force: bool) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        drop(ctr.linger.lock().expect("lock").take());
        let _maint = ctr.maint.clone().lock_owned().await;
        ctr.refresh();
        let id = ctr.id();
        ctr.state.borrow().check_remove(&id, force)?;
        let has_volumes = !ctr.config.read().expect("config lock").mounts.is_empty();
        if ctr.state.borrow().running() && has_volumes {
            // Volumes outlive the container: let the tether end the VM (it syncs the disks)
            // rather than cutting it off with writes still in the guest's page cache.
            let killed = tokio::time::timeout(Duration::from_secs(5), self.kill(&id, 9)).await;
            if matches!(killed, Ok(Ok(()))) {
                self.wait_not_running(&ctr, Duration::from_secs(10)).await;
            }
        }
        if ctr.state.borrow().running() {
            ctr.update(|s| s.stopping = true);
            self.inner.hv.destroy(&ctr.domain()).await?;
            self.wait_not_running(&ctr, Duration::from_secs(10)).await;
        }
        // An exited container's VM may still be shutting down: let its monitor finish, and
        // make sure no VM outlives its definition.
        self.settle(&id, Duration::from_secs(10)).await;
        if self
            .inner
            .hv
            .is_active(&ctr.domain())
            .await
            .unwrap_or(false)
        {
            self.inner.hv.destroy(&ctr.domain()).await?;
        }
        self.inner.hv.undefine(&ctr.domain()).await?;
        std::fs::remove_dir_all(&ctr.paths.dir)
            .map_err(|e| Error::io(format!("remove {}", ctr.paths.dir.display()), e))?;
        let _ = std::fs::remove_file(ctr.paths.socket());
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .remove(&id);
        // Dead only once it is gone from the list: `wait --condition removed` returns here,
        // and the client's next request (an rmi of the image) must not find it.
        ctr.state.send_modify(|s| s.status = Status::Dead);
        Ok(())
    }

    /// The container log's records; with `follow`, keeps going until the container stops.
    /// `from_end` skips what is already there.
    pub fn logs(
        &self,
        name_or_id: &str,
        follow: bool,
        from_end: bool,
    ) -> Result<mpsc::Receiver<LogRecord>> {
        self.read_log(name_or_id, from_end, move |running, _| follow && running)
    }

    /// Output for an attached client: what follows (or, with `stored`, everything), until the
    /// container's next exit. The container may not have started yet (`docker run` attaches
    /// before it starts) or be stopped (`docker start -a`).
    pub fn attach_output(
        &self,
        name_or_id: &str,
        stored: bool,
    ) -> Result<mpsc::Receiver<LogRecord>> {
        let ctr = self.find(name_or_id)?;
        ctr.refresh();
        let finished0 = ctr.state.borrow().finished_at.clone();
        self.read_log(name_or_id, !stored, move |running, st| {
            running || (st.finished_at == finished0 && st.status != Status::Dead)
        })
    }

    /// Send the log's records; after each pass, `go_on(running, state)` says whether to wait
    /// for more.
    fn read_log(
        &self,
        name_or_id: &str,
        from_end: bool,
        go_on: impl Fn(bool, &ContainerState) -> bool + Send + 'static,
    ) -> Result<mpsc::Receiver<LogRecord>> {
        let ctr = self.find(name_or_id)?;
        let mut reader =
            LogReader::open(&ctr.paths.log()).map_err(io_err("open the container log"))?;
        if from_end {
            while let Ok(Some(_)) = reader.next_record() {}
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let notified = ctr.log_appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Take the state before reading: if it says stopped, what follows is complete.
                ctr.refresh();
                let st = ctr.state.borrow().clone();
                let running = st.running();
                while let Ok(Some(r)) = reader.next_record() {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
                if !go_on(running, &st) || tx.is_closed() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            }
        });
        Ok(rx)
    }

    /// Write to the main process's stdin (it must have been created with `open_stdin`).
    pub async fn attach_stdin(&self, name_or_id: &str) -> Result<StdinWriter> {
        let ctr = self.find(name_or_id)?;
        let s = self.session(&ctr).await?;
        StdinWriter::open(s, MAIN_ID).await
    }

    pub async fn resize(
        &self,
        name_or_id: &str,
        process: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let s = self.session(&ctr).await?;
        s.request_ok(Request::Resize {
            id: process.unwrap_or(MAIN_ID).into(),
            rows,
            cols,
        })
        .await
        .map_err(|e| Error::conflict(e.to_string()))
    }

    /// Start a further process in a running container.
    pub async fn exec(&self, name_or_id: &str, spec: ProcessSpec) -> Result<ExecProcess> {
        let ctr = self.find(name_or_id)?;
        let session = self.session(&ctr).await?;
        let exec_id = format!("exec-{}", random_hex(16));
        let (exit_tx, exit_rx) = oneshot::channel();
        ctr.exit_waiters
            .lock()
            .expect("lock")
            .insert(exec_id.clone(), exit_tx);
        let fds: Vec<u8> = if spec.tty {
            vec![STDOUT]
        } else {
            vec![STDOUT, STDERR]
        };
        let want_stdin = spec.stdin;
        match session
            .request(Request::Exec {
                id: exec_id.clone(),
                spec,
            })
            .await
        {
            Ok(Response::Started { .. }) => {}
            Ok(Response::Error { message, exit_code }) => {
                ctr.exit_waiters.lock().expect("lock").remove(&exec_id);
                let mut e = Error::new(Kind::Invalid, message);
                e.exit_code = exit_code;
                return Err(e);
            }
            Ok(other) => return Err(Error::internal(format!("unexpected exec answer {other:?}"))),
            Err(e) => return Err(Error::unavailable(format!("exec in {}: {e}", ctr.id()))),
        }
        let (out_tx, out_rx) = mpsc::channel(64);
        let mut pumps = tokio::task::JoinSet::new();
        for fd in fds {
            let (_, stream) = session
                .output(&exec_id, fd, 0)
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
            let tx = out_tx.clone();
            pumps.spawn(async move { pump_to_channel(stream, fd, tx).await });
        }
        drop(out_tx);
        let stdin = if want_stdin {
            Some(StdinWriter::open(session.clone(), &exec_id).await?)
        } else {
            None
        };
        let (done_tx, done_rx) = oneshot::channel();
        let id = exec_id.clone();
        tokio::spawn(async move {
            while pumps.join_next().await.is_some() {}
            let code = exit_rx.await.unwrap_or(-1);
            let _ = session.request(Request::AckExit { id }).await;
            let _ = done_tx.send(code);
        });
        Ok(ExecProcess {
            id: exec_id,
            output: out_rx,
            stdin,
            exit: done_rx,
        })
    }

    /// Follow a container's state: the receiver sees every change this process makes or
    /// reads from the datastore.
    pub fn subscribe(&self, name_or_id: &str) -> Result<watch::Receiver<ContainerState>> {
        let ctr = self.find(name_or_id)?;
        ctr.refresh();
        Ok(ctr.state.subscribe())
    }

    /// Give a container a new name (Docker's rename): the datastore copy of the configuration.
    pub async fn rename(&self, name_or_id: &str, new_name: &str) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name).to_string();
        if !valid_name(&new_name) {
            return Err(Error::invalid(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let id = ctr.id();
        {
            let cs = self.inner.containers.lock().expect("containers lock");
            if let Some(other) = cs.values().find(|c| {
                let c = c.config.read().expect("config lock");
                c.name == new_name && c.id != id
            }) {
                let oid = other.config.read().expect("config lock").id.clone();
                return Err(Error::conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{oid}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            let mut c = ctr.config.write().expect("config lock");
            if c.name == new_name {
                return Err(Error::invalid(
                    "Renaming a container with the same name as its current name",
                ));
            }
            c.name = new_name;
        }
        self.save_config(&ctr)?;
        // The domain keeps its name and its metadata the old name: libvirt cannot redefine
        // a domain under a new name, and the datastore copy, which adoption prefers, has it.
        Ok(())
    }

    /// Resident memory (KiB) and CPU time (ns) of a running container's VM.
    pub async fn vm_usage(&self, name_or_id: &str) -> Result<(u64, u64)> {
        let ctr = self.find(name_or_id)?;
        self.inner.hv.info(&ctr.domain()).await
    }

    /// Where the container's files are on the datastore (log, console, disk).
    pub fn container_dir(&self, name_or_id: &str) -> Result<PathBuf> {
        Ok(self.find(name_or_id)?.paths.dir.clone())
    }

    /// `docker top`: the processes inside the VM.
    pub async fn top(&self, name_or_id: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let ctr = self.find(name_or_id)?;
        let s = self.session(&ctr).await?;
        match s.request(Request::Top).await {
            Ok(Response::Top { titles, processes }) => Ok((titles, processes)),
            Ok(other) => Err(Error::internal(format!("unexpected top answer {other:?}"))),
            Err(e) => Err(Error::unavailable(e.to_string())),
        }
    }
}

/// Addresses the tether got by DHCP into the attachments of the same MACs.
fn apply_leases(net: &mut [Attachment], leases: &[kic_proto::Lease]) {
    for l in leases {
        let Some(a) = net.iter_mut().find(|a| a.mac.eq_ignore_ascii_case(&l.mac)) else {
            continue;
        };
        if let Ok(addr) = l.address.parse::<ipnet::Ipv4Net>() {
            a.ip = addr.addr();
            a.prefix_len = addr.prefix_len();
        }
        if let Some(g) = l.gateway.as_deref().and_then(|g| g.parse().ok()) {
            a.gateway = g;
        }
    }
}

async fn pump_to_log(
    stream: kic_proto::mux::MuxStream,
    fd: u8,
    mut pos: u64,
    log: &Mutex<LogWriter>,
    ctr: &Ctr,
) -> io::Result<()> {
    // One task reads and acknowledges: a yamux stream must not be driven by two tasks (it keeps
    // one waker for a blocked sender).
    let mut st = stream;
    let mut buf = Vec::new();
    loop {
        let len = st.read_u32().await? as usize;
        if len == 0 {
            return Ok(());
        }
        buf.resize(len, 0);
        st.read_exact(&mut buf).await?;
        log.lock().expect("log lock").append(fd, &buf)?;
        pos += len as u64;
        ctr.log_appended.notify_waiters();
        st.write_u64(pos).await?;
    }
}

async fn pump_to_channel(
    stream: kic_proto::mux::MuxStream,
    fd: u8,
    tx: mpsc::Sender<(u8, Vec<u8>)>,
) -> io::Result<()> {
    let mut st = stream;
    let mut pos = 0u64;
    loop {
        let len = st.read_u32().await? as usize;
        if len == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; len];
        st.read_exact(&mut buf).await?;
        pos += len as u64;
        let _ = tx.send((fd, buf)).await;
        st.write_u64(pos).await?;
    }
}

/// Writes to a process's stdin; `close` is the explicit end of input.
pub struct StdinWriter {
    session: Arc<Session>,
    id: String,
    stream: kic_proto::mux::MuxStream,
}

impl StdinWriter {
    async fn open(session: Arc<Session>, id: &str) -> Result<StdinWriter> {
        let stream = session
            .stdin(id)
            .await
            .map_err(|e| Error::unavailable(e.to_string()))?;
        Ok(StdinWriter {
            session,
            id: id.to_string(),
            stream,
        })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.stream
            .write_all(data)
            .await
            .map_err(|e| Error::unavailable(format!("stdin: {e}")))?;
        self.stream
            .flush()
            .await
            .map_err(|e| Error::unavailable(format!("stdin: {e}")))
    }

    pub async fn close(mut self) -> Result<()> {
        let _ = self.stream.flush().await;
        // Make sure every byte written is in before the end of input.
        let _ = self.stream.shutdown().await;
        self.session
            .request_ok(Request::CloseStdin {
                id: self.id.clone(),
            })
            .await
            .map_err(|e| Error::unavailable(format!("close stdin: {e}")))
    }
}

/// A process started by [`PortLayer::exec`].
pub struct ExecProcess {
    pub id: String,
    /// `(fd, bytes)` until the process's output ends.
    pub output: mpsc::Receiver<(u8, Vec<u8>)>,
    pub stdin: Option<StdinWriter>,
    exit: oneshot::Receiver<i32>,
}

impl ExecProcess {
    /// Wait for the exit code (after all output was delivered).
    pub async fn wait(self) -> i32 {
        self.exit.await.unwrap_or(-1)
    }

    /// Read all output (stdout, stderr) and the exit code.
    pub async fn collect(mut self) -> (Vec<u8>, Vec<u8>, i32) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some((fd, b)) = self.output.recv().await {
            if fd == STDERR {
                err.extend(b)
            } else {
                out.extend(b)
            }
        }
        (out, err, self.exit.await.unwrap_or(-1))
    }
}

impl Ctr {
    fn new(paths: ContainerPaths, config: ContainerConfig, state: ContainerState) -> Self {
        Ctr {
            paths,
            config: RwLock::new(config),
            state: watch::channel(state).0,
            session: tokio::sync::RwLock::new(None),
            log_appended: Notify::new(),
            start_result: Mutex::new(None),
            exit_waiters: Mutex::new(HashMap::new()),
            monitored: AtomicBool::new(false),
            state_io: Mutex::new(()),
            maint: Arc::new(tokio::sync::Mutex::new(())),
            linger: Mutex::new(Default::default()),
        }
    }

    pub(crate) fn id(&self) -> String {
        self.config.read().expect("config lock").id.clone()
    }

    pub(crate) fn domain(&self) -> String {
        self.config.read().expect("config lock").domain.clone()
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            config: self.config.read().expect("config lock").clone(),
            state: self.state.borrow().clone(),
        }
    }

    fn save_state(&self) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&*self.state.borrow()).expect("serialisable");
        write_atomic(&self.paths.state(), &json)
    }

    /// Change the state, store it, and tell watchers.
    fn update(&self, f: impl FnOnce(&mut ContainerState)) {
        let _io = self.state_io.lock().expect("state io lock");
        self.state.send_modify(f);
        if let Err(e) = self.save_state() {
            tracing::error!("container {}: cannot store its state: {e}", self.id());
        }
    }

    fn refresh_from_disk(&self) {
        let _io = self.state_io.lock().expect("state io lock");
        if let Some(s) = std::fs::read(self.paths.state())
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerState>(&b).ok())
        {
            self.state.send_if_modified(|cur| {
                if *cur != s {
                    *cur = s;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// When another process monitors this container, its state file is the truth.
    pub(crate) fn refresh(&self) {
        if !self.monitored.load(Ordering::SeqCst) {
            self.refresh_from_disk();
        }
    }

    fn finish_start(&self, r: Result<()>) {
        if let Some(tx) = self.start_result.lock().expect("lock").take() {
            let _ = tx.send(r);
        }
    }

    fn exec_exited(&self, id: &str, code: i32) {
        if let Some(tx) = self.exit_waiters.lock().expect("lock").remove(id) {
            let _ = tx.send(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_by_key() {
        let m = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn signals_parse_as_docker_does() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert_eq!(
            parse_signal("SIGNOPE").unwrap_err().message,
            "Invalid signal: SIGNOPE"
        );
    }
}
