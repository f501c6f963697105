//! `kic-machine create`.

use crate::certs::{looks_like_pem_cert, Ca};
use crate::checks;
use crate::cli::{build_config, tls_mode, CreateArgs, Plan};
use crate::config::{TlsMode, VchConfig};
use crate::layout::{MachineMeta, Vch};
use crate::util::{absolute, parse_duration, write_file};
use crate::{info, libvirt, supervise, warn};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Undo steps, run in reverse when create fails half-way.
#[derive(Default)]
struct Undo {
    /// Held from choosing the port until config.json is written, so that concurrent creates
    /// cannot pick the same port.
    lock: Option<std::fs::File>,
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    pool: Option<(String, String)>,
    supervised: Option<(PathBuf, String)>,
}

impl Undo {
    fn run(self) {
        if let Some((root, name)) = &self.supervised {
            let _ = supervise::stop(&Vch::new(root, name));
        }
        if let Some((uri, pool)) = &self.pool {
            let _ = libvirt::remove_pool(uri, pool);
        }
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `DOCKER_HOST`'s host: `--tls-cname`, else the listen address if specific, else the hostname.
pub fn client_host(cname: Option<&str>, listen: &SocketAddr) -> String {
    if let Some(c) = cname {
        return c.to_string();
    }
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    crate::util::hostname()
}

pub fn docker_host(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// The `NAME.env` line.
pub fn env_line(tls: &TlsMode, cert_path: &Path, docker_host: &str) -> String {
    match tls {
        TlsMode::None => format!("DOCKER_HOST={docker_host}"),
        _ => format!(
            "DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={} DOCKER_HOST={docker_host}",
            cert_path.display()
        ),
    }
}

/// The docker command line VIC prints after "Connect to docker:".
pub fn connect_command(
    tls: &TlsMode,
    cert_path: &Path,
    docker_host: &str,
    client_pair: bool,
) -> String {
    let h = docker_host.trim_start_matches("tcp://");
    let q = |f: &str| crate::util::shell_quote(&cert_path.join(f).to_string_lossy());
    match tls {
        TlsMode::None => format!("docker -H {h} info"),
        TlsMode::Server => format!("docker -H {h} --tlsverify --tlscacert={} info", q("ca.pem")),
        TlsMode::Mutual if client_pair => format!(
            "docker -H {h} --tlsverify --tlscacert={} --tlscert={} --tlskey={} info",
            q("ca.pem"),
            q("cert.pem"),
            q("key.pem")
        ),
        TlsMode::Mutual => format!(
            "docker -H {h} --tlsverify --tlscacert={} --tlscert=<your client cert> --tlskey=<your client key> info",
            q("ca.pem")
        ),
    }
}

/// Concatenate the client CAs into the bundle the endpoint reads.
pub fn write_client_ca_bundle(v: &Vch, generated_client: bool) -> Result<()> {
    let mut bundle = String::new();
    if generated_client {
        bundle.push_str(&std::fs::read_to_string(v.generated_ca())?);
    }
    let mut user: Vec<PathBuf> = std::fs::read_dir(v.tls_ca_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    user.sort();
    for p in user {
        let t = std::fs::read_to_string(&p)?;
        bundle.push_str(t.trim_end());
        bundle.push('\n');
    }
    write_file(&v.client_ca(), bundle.as_bytes(), 0o644)
}

/// Copy `--tls-ca` files into the state directory (replacing earlier ones).
pub fn install_tls_cas(v: &Vch, cas: &[PathBuf]) -> Result<()> {
    let dir = v.tls_ca_dir();
    let _ = std::fs::remove_dir_all(&dir);
    if cas.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    for (i, src) in cas.iter().enumerate() {
        let t = read_pem_cert(src, "--tls-ca")?;
        write_file(&dir.join(format!("{i:03}.pem")), t.as_bytes(), 0o644)?;
    }
    Ok(())
}

pub fn read_pem_cert(p: &Path, flag: &str) -> Result<String> {
    let t = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read {flag} {}", p.display()))?;
    if !looks_like_pem_cert(&t) {
        bail!(
            "{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            p.display()
        );
    }
    Ok(t)
}

/// Copy `--registry-ca` files to where the configuration says they are.
pub fn install_registry_cas(v: &Vch, srcs: &[PathBuf], dsts: &[PathBuf]) -> Result<()> {
    let _ = std::fs::remove_dir_all(v.registry_ca_dir());
    if srcs.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(v.registry_ca_dir())?;
    for (s, d) in srcs.iter().zip(dsts) {
        let t = read_pem_cert(s, "--registry-ca")?;
        write_file(d, t.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Copy the endpoint and tether binaries into `dir`.
pub fn install_binaries(dir: &Path, vch_bin: &Path, tether: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (src, name) in [(vch_bin, "kic-vch"), (tether, "kic-tether")] {
        let dst = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp)
            .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(())
}

/// Resolve `--image-store` to a directory, and whether it names a libvirt pool.
fn image_store_dir(target: &str, store: &str) -> Result<(PathBuf, bool)> {
    if let Some(pool) = store.strip_prefix("pool:") {
        return Ok((libvirt::pool_path(target, pool)?, true));
    }
    Ok((absolute(Path::new(store))?, false))
}

pub fn run(root: &Path, a: &CreateArgs) -> Result<()> {
    info!("### Installing VCH ####");
    let timeout = parse_duration(&a.timeout)?;
    let v = Vch::new(root, &a.name);
    let tls = tls_mode(a);

    info!("Validating supplied configuration");
    checks::validate_name(&a.name)?;
    checks::name_unused(root, &a.name)?;
    if v.socket().as_os_str().len() > 100 {
        bail!(
            "the endpoint's socket path {} is too long for a unix socket (limit about 100 bytes): use a shorter --state-root",
            v.socket().display()
        );
    }
    let vch_bin = checks::find_vch_bin()?;
    let vch_version = checks::vch_version(&vch_bin)
        .with_context(|| format!("the endpoint program {} does not run", vch_bin.display()))?;
    let tether = checks::find_tether(a.tether.as_deref())?;
    checks::check_tether(&tether)?;
    info!(
        "Endpoint program {} (kic-vch {vch_version}), tether {}",
        vch_bin.display(),
        tether.display()
    );
    libvirt::check(&a.target)?;
    info!("libvirt at {} answers", a.target);
    checks::check_qemu()?;

    let (store_dir, is_pool) = image_store_dir(&a.target, &a.image_store)?;
    checks::writable_dir(&store_dir, "image store")?;
    let bad = checks::untraversable_ancestors(&store_dir);
    if !bad.is_empty() {
        bail!(
            "QEMU runs as its own user and cannot reach the image store {}: {} not searchable by others; `chmod o+x` them or choose another --image-store",
            store_dir.display(),
            bad.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let datastore = store_dir.join(&a.name);
    let mut new_volume_stores = Vec::new();
    for s in &a.volume_store {
        let (label, path) = crate::cli::parse_volume_store(s)?;
        if !path.exists() {
            new_volume_stores.push(path.clone());
        }
        checks::writable_dir(&path, &format!("volume store {label:?}"))?;
    }

    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the state root {}", root.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(".create.lock"))
        .with_context(|| format!("cannot open {}", root.join(".create.lock").display()))?;
    // Blocks while another create is choosing its port.
    if unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", root.join(".create.lock").display());
    }
    let (ip, port) = match &a.endpoint {
        Some(e) => checks::parse_endpoint(e)?,
        None => ([0, 0, 0, 0].into(), None),
    };
    let listen = match port {
        Some(p) => {
            let addr = SocketAddr::new(ip, p);
            checks::endpoint_available(root, addr, None)?;
            addr
        }
        None => checks::pick_port(root, ip, if a.no_tls { 2375 } else { 2376 })?,
    };
    info!("Docker API endpoint will listen on {listen}");

    for p in &a.tls_ca {
        read_pem_cert(p, "--tls-ca")?;
    }
    for p in &a.registry_ca {
        read_pem_cert(p, "--registry-ca")?;
    }
    let cert_dir = absolute(a.cert_path.as_deref().unwrap_or(Path::new(&a.name)))?;
    for f in [
        "ca.pem",
        "ca-key.pem",
        "cert.pem",
        "key.pem",
        "server-cert.pem",
        "server-key.pem",
    ] {
        if cert_dir.join(f).exists() {
            bail!(
                "{} already holds certificates ({f}), perhaps of an earlier VCH named {:?}: move them away or pass --cert-path",
                cert_dir.display(),
                a.name
            );
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let plan = Plan {
        vch: v.dir.clone(),
        store_dir: store_dir.clone(),
        tcp: Some(listen),
        cores,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let cfg = build_config(a, &plan)?;
    let host = client_host(a.tls_cname.as_deref(), &listen);
    let dh = docker_host(&host, listen.port());
    let generated_client = tls == TlsMode::Mutual && a.tls_ca.is_empty();
    let meta = MachineMeta {
        cert_path: cert_dir.clone(),
        docker_host: dh.clone(),
        tls_cname: a.tls_cname.clone(),
        tls_ca: a
            .tls_ca
            .iter()
            .map(|p| absolute(p))
            .collect::<Result<_>>()?,
        registry_ca: a
            .registry_ca
            .iter()
            .map(|p| absolute(p))
            .collect::<Result<_>>()?,
        generated_client,
        pool: None,
        created_volume_stores: new_volume_stores.clone(),
        endpoint_arg: a.endpoint.clone(),
    };

    let mut undo = Undo {
        lock: Some(lock),
        ..Default::default()
    };
    match install(
        root,
        a,
        &v,
        cfg,
        meta,
        &mut undo,
        &vch_bin,
        &tether,
        is_pool,
        &datastore,
        timeout,
        &new_volume_stores,
    ) {
        Ok(()) => Ok(()),
        Err(e) => {
            warn!("Removing the partly created VCH {:?}", a.name);
            undo.run();
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn install(
    root: &Path,
    a: &CreateArgs,
    v: &Vch,
    cfg: VchConfig,
    mut meta: MachineMeta,
    undo: &mut Undo,
    vch_bin: &Path,
    tether: &Path,
    is_pool: bool,
    datastore: &Path,
    timeout: std::time::Duration,
    new_volume_stores: &[PathBuf],
) -> Result<()> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the state root {}", root.display()))?;
    std::fs::create_dir(&v.dir).with_context(|| format!("cannot create {}", v.dir.display()))?;
    undo.dirs.push(v.dir.clone());
    std::fs::set_permissions(&v.dir, std::fs::Permissions::from_mode(0o755))?;
    for d in new_volume_stores {
        undo.dirs.push(d.clone());
    }

    let tls = cfg.endpoint.tls.clone();
    let cert_dir = meta.cert_path.clone();
    if tls != TlsMode::None {
        info!("Generating certificates in {}", cert_dir.display());
        if !cert_dir.exists() {
            std::fs::create_dir_all(&cert_dir)
                .with_context(|| format!("cannot create {}", cert_dir.display()))?;
            undo.dirs.push(cert_dir.clone());
        }
        let listen: SocketAddr = cfg.endpoint.tcp.as_deref().unwrap_or_default().parse()?;
        let mut names: Vec<String> = a.tls_cname.iter().cloned().collect();
        names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        names.push(crate::util::hostname());
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        let ca = Ca::generate(&a.name)?;
        let server = ca.server(&names)?;
        let rel = |f: &str| {
            let p = cert_dir.join(f);
            std::env::current_dir()
                .ok()
                .and_then(|cwd| {
                    p.strip_prefix(cwd)
                        .ok()
                        .map(|r| format!("./{}", r.display()))
                })
                .unwrap_or_else(|| p.display().to_string())
        };
        let mut put = |f: &str, data: &str, mode: u32| -> Result<()> {
            let p = cert_dir.join(f);
            write_file(&p, data.as_bytes(), mode)?;
            undo.files.push(p);
            Ok(())
        };
        let capair = ca.pair();
        info!(
            "Generating CA certificate/key pair - private key in {}",
            rel("ca-key.pem")
        );
        put("ca.pem", &capair.cert_pem, 0o644)?;
        put("ca-key.pem", &capair.key_pem, 0o600)?;
        info!(
            "Generating server certificate/key pair for {} - private key in {}",
            names.join(", "),
            rel("server-key.pem")
        );
        put("server-cert.pem", &server.cert_pem, 0o644)?;
        put("server-key.pem", &server.key_pem, 0o600)?;
        if meta.generated_client {
            let client = ca.client(&a.name)?;
            info!(
                "Generating client certificate/key pair - private key in {}",
                rel("key.pem")
            );
            put("cert.pem", &client.cert_pem, 0o644)?;
            put("key.pem", &client.key_pem, 0o600)?;
        } else if tls == TlsMode::Mutual {
            info!(
                "Client certificates signed by the --tls-ca CA(s) are accepted; no client pair generated (put yours in {} as cert.pem and key.pem)",
                cert_dir.display()
            );
        }
        write_file(&v.server_cert(), server.cert_pem.as_bytes(), 0o644)?;
        write_file(&v.server_key(), server.key_pem.as_bytes(), 0o600)?;
        write_file(&v.generated_ca(), capair.cert_pem.as_bytes(), 0o644)?;
        if tls == TlsMode::Mutual {
            install_tls_cas(v, &meta.tls_ca)?;
            write_client_ca_bundle(v, meta.generated_client)?;
        }
    }
    install_registry_cas(v, &meta.registry_ca, &cfg.registries.ca)?;

    info!(
        "Installing the endpoint and tether in {}",
        v.bin().display()
    );
    install_binaries(&v.bin(), vch_bin, tether)?;

    info!("Creating image store {}", datastore.display());
    if !datastore.exists() {
        std::fs::create_dir_all(datastore)
            .with_context(|| format!("cannot create {}", datastore.display()))?;
        undo.dirs.push(datastore.to_path_buf());
    } else {
        warn!(
            "{} exists already: its images are reused",
            datastore.display()
        );
    }
    std::fs::set_permissions(datastore, std::fs::Permissions::from_mode(0o755))?;
    for d in cfg.volume_stores.values() {
        info!("Volume store {}", d.display());
    }
    if !is_pool {
        let pool = format!("kic-{}", a.name);
        if libvirt::pool_exists(&a.target, &pool) {
            warn!("libvirt storage pool {pool} exists already; left as it is");
        } else {
            match libvirt::define_pool(&a.target, &pool, datastore) {
                Ok(()) => {
                    info!("Defined libvirt storage pool {pool} on {}", datastore.display());
                    undo.pool = Some((a.target.clone(), pool.clone()));
                    meta.pool = Some(pool);
                }
                Err(e) => warn!("could not define libvirt storage pool {pool} (the directory works without it): {e:#}"),
            }
        }
    }
    v.save(&cfg)?;
    v.save_meta(&meta)?;
    undo.lock = None;

    info!("Starting the VCH endpoint");
    let off = supervise::log_offset(v);
    undo.supervised = Some((root.to_path_buf(), a.name.clone()));
    let pid = supervise::start(root, v)?;
    info!(
        "Supervisor running (pid {pid}); endpoint log {}",
        v.vch_log().display()
    );
    info!(
        "Waiting for the endpoint to answer (its first start builds the bootstrap image; up to {}s)",
        timeout.as_secs()
    );
    supervise::wait_ready(v, timeout, off)?;
    let boot = crate::manage::boot_version(v).unwrap_or_else(|| "unknown".into());
    info!("Initialization of the endpoint successful (bootstrap image {boot})");

    let env = env_line(&tls, &cert_dir, &meta.docker_host);
    let env_file = cert_dir.join(format!("{}.env", a.name));
    if !cert_dir.exists() {
        std::fs::create_dir_all(&cert_dir)?;
        undo.dirs.push(cert_dir.clone());
    }
    write_file(&env_file, format!("{env}\n").as_bytes(), 0o644)?;
    info!("");
    info!("Docker environment variables:");
    info!("{env}");
    info!("");
    info!("Environment saved in {}", env_file.display());
    info!("");
    info!("Connect to docker:");
    info!(
        "{}",
        connect_command(&tls, &cert_dir, &meta.docker_host, meta.generated_client)
    );
    info!("Installer completed successfully");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines() {
        let p = Path::new("/home/u/v1");
        assert_eq!(
            env_line(&TlsMode::Mutual, p, "tcp://vch.example:2376"),
            "DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/home/u/v1 DOCKER_HOST=tcp://vch.example:2376"
        );
        assert_eq!(
            env_line(&TlsMode::None, p, "tcp://h:2375"),
            "DOCKER_HOST=tcp://h:2375"
        );
        assert_eq!(docker_host("::1", 5), "tcp://[::1]:5");
        let l: SocketAddr = "127.0.0.1:2380".parse().unwrap();
        assert_eq!(client_host(Some("vch.example"), &l), "vch.example");
        assert_eq!(client_host(None, &l), "127.0.0.1");
        assert_eq!(
            client_host(None, &"0.0.0.0:1".parse().unwrap()),
            crate::util::hostname()
        );
        assert!(connect_command(&TlsMode::Mutual, p, "tcp://h:1", true)
            .contains("--tlscert=/home/u/v1/cert.pem"));
        assert_eq!(
            connect_command(&TlsMode::None, p, "tcp://h:1", false),
            "docker -H h:1 info"
        );
    }
}
