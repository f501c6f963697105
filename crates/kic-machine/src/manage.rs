//! ls, inspect, configure, upgrade, delete, debug, start, stop, version.

use crate::cli::{
    create_command, parse_limit_mib, parse_limit_u32, ConfigureArgs, DebugArgs, DeleteArgs, Format,
    InspectArgs, LogLevel, UpgradeArgs,
};
use crate::config::{TlsMode, VchConfig};
use crate::create::{
    connect_command, env_line, install_binaries, install_registry_cas, install_tls_cas,
    read_pem_cert, write_client_ca_bundle,
};
use crate::layout::{self, Vch};
use crate::util::{parse_duration, parse_mib};
use crate::{checks, http, info, libvirt, supervise, warn};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `KicBootVersion` from the endpoint's `/version`.
pub fn boot_version(v: &Vch) -> Option<String> {
    let r = http::request(&v.socket(), "GET", "/version", T).ok()?;
    r.json()
        .ok()?
        .get("KicBootVersion")?
        .as_str()
        .map(String::from)
}

fn containers(v: &Vch) -> Result<Vec<Value>> {
    let r = http::request(&v.socket(), "GET", "/containers/json?all=1", T)?;
    if r.status != 200 {
        bail!(
            "listing containers failed: {} {}",
            r.status,
            r.text().trim()
        );
    }
    Ok(r.json()?.as_array().cloned().unwrap_or_default())
}

fn status(v: &Vch) -> &'static str {
    match (supervise::supervisor_pid(v).is_some(), supervise::ping(v)) {
        (_, true) => "running",
        (true, false) => "not answering",
        (false, false) => "stopped",
    }
}

struct Summary {
    name: String,
    cfg: Option<VchConfig>,
    meta: layout::MachineMeta,
    status: &'static str,
    containers: Option<usize>,
    running: Option<usize>,
}

fn summary(root: &Path, name: &str) -> Summary {
    let v = Vch::new(root, name);
    let st = status(&v);
    let cs = (st == "running").then(|| containers(&v).ok()).flatten();
    Summary {
        name: name.into(),
        cfg: v.load().ok(),
        meta: v.load_meta().unwrap_or_default(),
        status: st,
        running: cs
            .as_ref()
            .map(|c| c.iter().filter(|c| c["State"] == "running").count()),
        containers: cs.map(|c| c.len()),
    }
}

pub fn ls(root: &Path, format: Format) -> Result<()> {
    let all: Vec<Summary> = layout::list(root)
        .iter()
        .map(|n| summary(root, n))
        .collect();
    if format == Format::Json {
        let v: Vec<Value> = all
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "endpoint": s.meta.docker_host,
                    "status": s.status,
                    "containers": s.containers,
                    "running": s.running,
                    "version": s.cfg.as_ref().map(|c| c.kic_version.clone()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.meta.docker_host.clone(),
                s.status.to_string(),
                s.containers
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.cfg
                    .as_ref()
                    .map(|c| c.kic_version.clone())
                    .unwrap_or_else(|| "(bad config)".into()),
            ]
        })
        .collect();
    let head = ["NAME", "ENDPOINT", "STATUS", "CONTAINERS", "VERSION"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(())
}

fn limit<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|n| format!("{n}{unit}"))
        .unwrap_or_else(|| "unlimited".into())
}

pub fn inspect(root: &Path, a: &InspectArgs) -> Result<()> {
    let (name, config_mode) = a.resolve()?;
    let v = Vch::open(root, &name)?;
    let c = v.load()?;
    let m = v.load_meta()?;
    if config_mode {
        println!("{}", create_command(&c, &m));
        return Ok(());
    }
    let s = summary(root, &name);
    let vch_version =
        checks::vch_version(&v.vch_bin()).unwrap_or_else(|e| format!("unknown ({e})"));
    let boot = (s.status == "running")
        .then(|| boot_version(&v))
        .flatten()
        .unwrap_or_else(|| "unknown (endpoint not answering)".into());
    let env = env_line(&c.endpoint.tls, &m.cert_path, &m.docker_host);
    let connect = connect_command(
        &c.endpoint.tls,
        &m.cert_path,
        &m.docker_host,
        m.generated_client,
    );
    if a.format == Format::Json {
        let j = json!({
            "name": c.name,
            "status": s.status,
            "supervisor_pid": supervise::supervisor_pid(&v),
            "vch_pid": supervise::vch_pid(&v),
            "docker_host": m.docker_host,
            "env": env,
            "connect": connect,
            "cert_path": m.cert_path,
            "containers": s.containers,
            "running": s.running,
            "versions": {
                "kic_machine": crate::cli::version_long(),
                "kic_vch": vch_version,
                "bootstrap": boot,
                "config": c.kic_version,
            },
            "state_dir": v.dir,
            "config": c,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let tls = match c.endpoint.tls {
        TlsMode::None => "none (plain HTTP)",
        TlsMode::Server => "server only (no client verification)",
        TlsMode::Mutual => "mutual (client certificates required)",
    };
    println!("VCH {}", c.name);
    println!("  Status:             {}", s.status);
    println!(
        "  Docker endpoint:    {} (listening on {})",
        m.docker_host,
        c.endpoint.tcp.as_deref().unwrap_or("-")
    );
    println!("  TLS:                {tls}");
    println!("  Admin socket:       {}", v.socket().display());
    println!("  libvirt target:     {}", c.target);
    println!(
        "  Image store:        {} (datastore {})",
        c.image_store,
        c.datastore.display()
    );
    for (l, p) in &c.volume_stores {
        println!("  Volume store:       {l}: {}", p.display());
    }
    println!(
        "  Bridge networks:    {} (namespace kic-{})",
        c.bridge_network_range.as_deref().unwrap_or("172.16.0.0/12"),
        c.name
    );
    for n in &c.container_networks {
        let or_dhcp = |v: &str| {
            if v.is_empty() {
                "from DHCP".to_string()
            } else {
                v.to_string()
            }
        };
        println!(
            "  Container network:  {}: host bridge {}, gateway {}, addresses {}",
            n.alias,
            n.bridge,
            or_dhcp(&n.gateway),
            or_dhcp(&n.ip_range)
        );
    }
    println!(
        "  Limits:             memory {}, vCPUs {}, containers {}",
        limit(c.limits.memory_mib, " MiB"),
        limit(c.limits.cpus, ""),
        limit(c.limits.containers, "")
    );
    println!(
        "  Container defaults: {} MiB, {} vCPU(s)",
        c.container_memory_mib, c.container_cpus
    );
    if let (Some(n), Some(r)) = (s.containers, s.running) {
        println!("  Containers:         {n} ({r} running)");
    }
    if !c.registries.insecure.is_empty() {
        println!(
            "  Insecure registries: {}",
            c.registries.insecure.join(", ")
        );
    }
    if !c.registries.whitelist.is_empty() {
        println!(
            "  Registry whitelist: {}",
            c.registries.whitelist.join(", ")
        );
    }
    for ca in &m.registry_ca {
        println!("  Registry CA:        {}", ca.display());
    }
    println!("  Debug:              {}", c.debug);
    println!(
        "  Versions:           kic-machine {}, kic-vch {vch_version}, bootstrap {boot} (configured by {})",
        crate::cli::version_long(),
        c.kic_version
    );
    println!("  Created:            {}", c.created);
    println!("  State:              {}", v.dir.display());
    println!();
    println!(
        "Docker environment (saved in {}):",
        m.cert_path.join(format!("{}.env", c.name)).display()
    );
    println!("  {env}");
    println!("Connect to docker:");
    println!("  {connect}");
    Ok(())
}

/// Restart a VCH's endpoint (stop the supervisor, start a new one, wait for `/_ping`).
pub fn restart(root: &Path, v: &Vch, timeout: Duration) -> Result<()> {
    if supervise::stop(v)? {
        info!("Stopped the endpoint");
    }
    start(root, v, timeout)
}

/// Make a saved configuration take effect: restart the endpoint if it runs.
fn apply(root: &Path, v: &Vch, timeout: Duration) -> Result<()> {
    if supervise::supervisor_pid(v).is_some() {
        restart(root, v, timeout)
    } else {
        info!(
            "The endpoint is stopped; the change takes effect at `kic-machine start {}`",
            v.name
        );
        Ok(())
    }
}

pub fn start(root: &Path, v: &Vch, timeout: Duration) -> Result<()> {
    let off = supervise::log_offset(v);
    let pid = supervise::start(root, v)?;
    info!("Starting the endpoint (supervisor pid {pid})");
    info!("Waiting for the endpoint to answer");
    supervise::wait_ready(v, timeout, off)?;
    info!("Endpoint answering on {}", v.socket().display());
    Ok(())
}

pub fn start_cmd(root: &Path, a: &crate::cli::StartArgs) -> Result<()> {
    let timeout = parse_duration(&a.timeout)?;
    if !a.all {
        let v = Vch::open(root, a.name.name()?)?;
        return start(root, &v, timeout);
    }
    let mut failed = Vec::new();
    for n in layout::list(root) {
        let v = Vch::new(root, &n);
        if supervise::supervisor_pid(&v).is_some() {
            info!("VCH {n}: running already");
            continue;
        }
        info!("VCH {n}:");
        if let Err(e) = start(root, &v, timeout) {
            crate::error!("VCH {n}: {e:#}");
            failed.push(n);
        }
    }
    if !failed.is_empty() {
        bail!("these VCHs did not start: {}", failed.join(", "));
    }
    Ok(())
}

pub fn configure(root: &Path, a: &ConfigureArgs) -> Result<()> {
    let name = a.name.name()?;
    let v = Vch::open(root, name)?;
    info!("### Configuring VCH {name} ####");
    let mut c = v.load()?;
    let mut m = v.load_meta()?;
    let old = c.clone();
    if let Some(s) = &a.memory {
        c.limits.memory_mib = parse_limit_mib(s)?;
    }
    if let Some(s) = &a.cpu {
        c.limits.cpus = parse_limit_u32(s, "--cpu")?;
    }
    if let Some(s) = &a.containers {
        c.limits.containers = parse_limit_u32(s, "--containers")?;
    }
    if let Some(s) = &a.container_memory {
        c.container_memory_mib = parse_mib(s)?;
    }
    if let Some(n) = a.container_cpu {
        if n == 0 {
            bail!("--container-cpu must be at least 1");
        }
        c.container_cpus = n;
    }
    if c.limits
        .memory_mib
        .is_some_and(|l| l < c.container_memory_mib)
    {
        bail!(
            "the memory limit ({} MiB) is less than one container's memory ({} MiB)",
            c.limits.memory_mib.unwrap_or(0),
            c.container_memory_mib
        );
    }
    if c.limits.cpus.is_some_and(|l| l < c.container_cpus) {
        bail!(
            "the vCPU limit ({}) is less than one container's vCPUs ({})",
            c.limits.cpus.unwrap_or(0),
            c.container_cpus
        );
    }
    let nonempty = |v: &Vec<String>| {
        v.iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
    };
    if let Some(r) = &a.insecure_registry {
        c.registries.insecure = nonempty(r);
    }
    if let Some(r) = &a.whitelist_registry {
        c.registries.whitelist = nonempty(r);
    }
    let mut new_registry_ca = None;
    if let Some(cas) = &a.registry_ca {
        let srcs: Vec<PathBuf> = cas
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| crate::util::absolute(p))
            .collect::<Result<_>>()?;
        for s in &srcs {
            read_pem_cert(s, "--registry-ca")?;
        }
        c.registries.ca = srcs
            .iter()
            .enumerate()
            .map(|(i, s)| crate::cli::registry_ca_copy(&v.dir, i, s))
            .collect();
        new_registry_ca = Some(srcs);
    }
    for s in &a.volume_store {
        let (label, path) = crate::cli::parse_volume_store(s)?;
        if let Some(p) = c.volume_stores.get(&label) {
            if *p != path {
                bail!("volume store {label:?} is {} already; a store cannot move (its volumes live there)", p.display());
            }
            continue;
        }
        if !path.exists() {
            m.created_volume_stores.push(path.clone());
        }
        checks::writable_dir(&path, &format!("volume store {label:?}"))?;
        info!("Adding volume store {label}: {}", path.display());
        c.volume_stores.insert(label, path);
    }
    if !a.container_networks.container_network.is_empty() {
        let nets = crate::cli::parse_container_networks(&a.container_networks)?;
        for n in &nets {
            info!(
                "Container network {}: host bridge {}, {} from {}",
                n.alias, n.bridge, n.gateway, n.ip_range
            );
        }
        c.container_networks = nets;
    }
    let mut new_tls_ca = None;
    if let Some(cas) = &a.tls_ca {
        if c.endpoint.tls != TlsMode::Mutual {
            bail!("--tls-ca needs client verification, but this VCH was created with --no-tls or --no-tlsverify");
        }
        let srcs: Vec<PathBuf> = cas
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| crate::util::absolute(p))
            .collect::<Result<_>>()?;
        for s in &srcs {
            read_pem_cert(s, "--tls-ca")?;
        }
        if srcs.is_empty() && !m.generated_client {
            bail!("no client CA would be left: the VCH was created with --tls-ca and no generated client pair");
        }
        new_tls_ca = Some(srcs);
    }
    if a.debug {
        c.debug = true;
        c.kernel_args = "kic.debug".into();
    }
    if a.no_debug {
        c.debug = false;
        c.kernel_args.clear();
    }
    if c == old && new_tls_ca.is_none() && new_registry_ca.is_none() {
        info!("Nothing to change");
        return Ok(());
    }
    if let Some(srcs) = new_registry_ca {
        install_registry_cas(&v, &srcs, &c.registries.ca)?;
        m.registry_ca = srcs;
    }
    if let Some(srcs) = new_tls_ca {
        install_tls_cas(&v, &srcs)?;
        write_client_ca_bundle(&v, m.generated_client)?;
        m.tls_ca = srcs;
        info!("Client CAs replaced");
    }
    let old_meta = v.load_meta()?;
    v.save(&c)?;
    v.save_meta(&m)?;
    info!(
        "Limits: memory {}, vCPUs {}, containers {}",
        limit(c.limits.memory_mib, " MiB"),
        limit(c.limits.cpus, ""),
        limit(c.limits.containers, "")
    );
    info!("Configuration saved in {}", v.config().display());
    if let Err(e) = apply(root, &v, parse_duration(&a.timeout)?) {
        crate::error!("{e:#}");
        crate::error!("Restoring the previous configuration");
        v.save(&old)?;
        v.save_meta(&old_meta)?;
        restart(root, &v, parse_duration(&a.timeout)?)?;
        bail!("the endpoint did not start with the new configuration; the previous one is back in effect");
    }
    info!("Completed successfully");
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn upgrade(root: &Path, a: &UpgradeArgs) -> Result<()> {
    let name = a.name.name()?;
    let v = Vch::open(root, name)?;
    let timeout = parse_duration(&a.timeout)?;
    let old_vch = checks::vch_version(&v.vch_bin()).unwrap_or_else(|_| "unknown".into());
    let old_boot = boot_version(&v).unwrap_or_else(|| "unknown".into());
    let prev = v.bin_prev();
    if a.rollback {
        info!("### Rolling back VCH {name} ####");
        if !prev.join("kic-vch").is_file() || !prev.join("config.json").is_file() {
            bail!(
                "nothing to roll back to: VCH {name} has not been upgraded (no {})",
                prev.display()
            );
        }
        supervise::stop(&v)?;
        swap_prev(&v)?;
        info!("Restored the binaries and configuration from before the upgrade");
    } else {
        info!("### Upgrading VCH {name} ####");
        let vch_bin = checks::find_vch_bin()?;
        let new_version = checks::vch_version(&vch_bin)?;
        let tether = checks::find_tether(a.tether.as_deref())?;
        checks::check_tether(&tether)?;
        if !a.force && same_file(&vch_bin, &v.vch_bin()) && same_file(&tether, &v.tether_bin()) {
            bail!(
                "VCH {name} already runs these binaries (kic-vch {new_version}); pass --force to reinstall"
            );
        }
        info!(
            "Installing kic-vch {new_version} from {} and tether {}",
            vch_bin.display(),
            tether.display()
        );
        // Stage the new binaries before touching the running VCH.
        let staged = v.dir.join("bin.new");
        let _ = std::fs::remove_dir_all(&staged);
        install_binaries(&staged, &vch_bin, &tether)?;
        supervise::stop(&v)?;
        // The current rollback target is kept aside until the new endpoint answers.
        let older = v.dir.join("bin.prev.old");
        let _ = std::fs::remove_dir_all(&older);
        if prev.exists() {
            std::fs::rename(&prev, &older)?;
        }
        std::fs::rename(v.bin(), &prev)?;
        std::fs::copy(v.config(), prev.join("config.json"))?;
        std::fs::rename(&staged, v.bin())?;
        let mut c = v.load()?;
        c.kic_version = env!("CARGO_PKG_VERSION").to_string();
        v.save(&c)?;
        info!(
            "Previous binaries and configuration kept in {} (for --rollback)",
            prev.display()
        );
        if let Err(e) = start(root, &v, timeout) {
            crate::error!("{e:#}");
            crate::error!("The upgraded endpoint does not start: rolling back");
            supervise::stop(&v)?;
            std::fs::remove_dir_all(v.bin())?;
            std::fs::rename(&prev, v.bin())?;
            VchConfig::load(&v.bin().join("config.json"))?.save(&v.config())?;
            std::fs::remove_file(v.bin().join("config.json"))?;
            if older.exists() {
                std::fs::rename(&older, &prev)?;
            }
            start(root, &v, timeout)?;
            bail!("upgrade failed; VCH {name} runs kic-vch {old_vch} again");
        }
        let _ = std::fs::remove_dir_all(&older);
    }
    if a.rollback {
        start(root, &v, timeout)?;
    }
    let new_vch = checks::vch_version(&v.vch_bin()).unwrap_or_else(|_| "unknown".into());
    let new_boot = boot_version(&v).unwrap_or_else(|| "unknown".into());
    info!("kic-vch: {old_vch} -> {new_vch}");
    info!("bootstrap: {old_boot} -> {new_boot}");
    info!("Completed successfully");
    Ok(())
}

/// Swap `bin` with `bin.prev` and `config.json` with `bin.prev/config.json` (the endpoint is
/// stopped).
fn swap_prev(v: &Vch) -> Result<()> {
    let prev = v.bin_prev();
    let tmp = v.dir.join("bin.swap");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::copy(v.config(), v.bin().join("config.json"))?;
    std::fs::rename(v.bin(), &tmp)?;
    std::fs::rename(&prev, v.bin())?;
    std::fs::rename(&tmp, &prev)?;
    VchConfig::load(&v.bin().join("config.json"))?.save(&v.config())?;
    std::fs::remove_file(v.bin().join("config.json"))?;
    Ok(())
}

pub fn delete(root: &Path, a: &DeleteArgs) -> Result<()> {
    let name = a.name.name()?;
    let v = Vch::open(root, name)?;
    let c = v.load()?;
    let m = v.load_meta()?;
    info!("### Removing VCH {name} ####");
    if supervise::ping(&v) {
        let cs = containers(&v)?;
        let running: Vec<String> = cs
            .iter()
            .filter(|c| c["State"] == "running")
            .map(cname)
            .collect();
        if !running.is_empty() && !a.force {
            bail!(
                "VCH {name} has running containers ({}): stop them first, or pass --force to remove them",
                running.join(", ")
            );
        }
        for ct in &cs {
            let id = ct["Id"].as_str().unwrap_or_default();
            info!("Removing container {}", cname(ct));
            let r = http::request(
                &v.socket(),
                "DELETE",
                &format!("/containers/{id}?force=1&v=1"),
                Duration::from_secs(120),
            )?;
            if !(200..300).contains(&r.status) && r.status != 404 {
                bail!(
                    "removing container {} failed: {} {}",
                    cname(ct),
                    r.status,
                    r.text().trim()
                );
            }
        }
    } else {
        info!("The endpoint is not answering: looking for container VMs in libvirt");
        let doms = libvirt::vch_domains(&c.target, name)?;
        let running: Vec<&str> = doms
            .iter()
            .filter(|d| d.running)
            .map(|d| d.name.as_str())
            .collect();
        if !running.is_empty() && !a.force {
            bail!(
                "VCH {name} has running container VMs ({}): start the endpoint (`kic-machine start {name}`) and stop them, or pass --force",
                running.join(", ")
            );
        }
        for d in &doms {
            info!("Removing container VM {}", d.name);
            libvirt::remove_domain(&c.target, &d.name)?;
        }
    }
    if supervise::stop(&v)? {
        info!("Stopped the endpoint");
    }
    remove_networks(name);
    if let Some(pool) = &m.pool {
        if let Err(e) = libvirt::remove_pool(&c.target, pool) {
            warn!("could not remove libvirt storage pool {pool}: {e:#}");
        } else {
            info!("Removed libvirt storage pool {pool}");
        }
    }
    if c.datastore.exists() {
        info!("Removing datastore {}", c.datastore.display());
        std::fs::remove_dir_all(&c.datastore)
            .with_context(|| format!("cannot remove {}", c.datastore.display()))?;
    }
    for (label, p) in &c.volume_stores {
        if !a.force {
            info!(
                "Volume store {label} kept: {} (delete --force removes it)",
                p.display()
            );
        } else if m.created_volume_stores.contains(p) {
            info!("Removing volume store {label}: {}", p.display());
            let _ = std::fs::remove_dir_all(p);
        } else {
            info!(
                "Volume store {label} kept: {} existed before the VCH",
                p.display()
            );
        }
    }
    std::fs::remove_dir_all(&v.dir)
        .with_context(|| format!("cannot remove {}", v.dir.display()))?;
    info!("Certificates kept in {}", m.cert_path.display());
    info!("Completed successfully");
    Ok(())
}

/// The VCH's network namespace (its bridges and uplink go with it) and its table in the
/// host's firewall, as kic-vch made them (`kic_portlayer::network`).
fn remove_networks(name: &str) {
    let ns = format!("kic-{name}");
    if std::path::Path::new("/run/netns").join(&ns).exists() {
        match std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status()
        {
            Ok(s) if s.success() => info!("Removed network namespace {ns}"),
            _ => {
                warn!("could not remove network namespace {ns}: remove it with `ip netns del {ns}`")
            }
        }
    }
    let table = format!("kic_{}", name.replace(['-', '.'], "_"));
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", &table])
        .stderr(std::process::Stdio::null())
        .status();
}

fn cname(c: &Value) -> String {
    c["Names"][0]
        .as_str()
        .map(|s| s.trim_start_matches('/').to_string())
        .unwrap_or_else(|| c["Id"].as_str().unwrap_or("?").chars().take(12).collect())
}

pub fn debug(root: &Path, a: &DebugArgs) -> Result<()> {
    let name = a.name.name()?;
    let v = Vch::open(root, name)?;
    let mut c = v.load()?;
    if let Some(level) = a.log_level {
        let want = level == LogLevel::Debug;
        if c.debug != want {
            c.debug = want;
            c.kernel_args = if want {
                "kic.debug".into()
            } else {
                String::new()
            };
            v.save(&c)?;
            info!("Log level set to {}", if want { "debug" } else { "info" });
            apply(root, &v, parse_duration(&a.timeout)?)?;
        } else {
            info!(
                "Log level is {} already",
                if want { "debug" } else { "info" }
            );
        }
    }
    println!(
        "VCH {name}: status {}, log level {}",
        status(&v),
        if c.debug { "debug" } else { "info" }
    );
    println!("  Endpoint log:    {}", v.vch_log().display());
    println!("  Supervisor log:  {}", v.supervisor_log().display());
    println!(
        "  Container logs:  {}/containers/<id>/console.log (VM console) and output.log",
        c.datastore.display()
    );
    println!("  Configuration:   {}", v.config().display());
    println!(
        "  Admin socket:    {} (curl --unix-socket {} http://kic/info)",
        v.socket().display(),
        v.socket().display()
    );
    if let Some(n) = a.tail {
        println!("--- last {n} lines of {}", v.vch_log().display());
        println!("{}", crate::util::tail(&v.vch_log(), n));
    }
    Ok(())
}

pub fn version() {
    println!("kic-machine {}", crate::cli::version_long());
    match checks::find_vch_bin().and_then(|b| checks::vch_version(&b).map(|v| (b, v))) {
        Ok((b, ver)) => println!("kic-vch {ver} ({})", b.display()),
        Err(e) => println!("kic-vch: not found ({e:#})"),
    }
}
