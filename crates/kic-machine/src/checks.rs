//! Prerequisite checks, each failing with a message that says what to do.

use crate::layout;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}`.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 31
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!(
            "invalid VCH name {name:?}: use 1 to 31 characters, letters, digits, '_', '.' or '-', starting with a letter or digit"
        );
    }
    Ok(())
}

pub fn name_unused(root: &Path, name: &str) -> Result<()> {
    let d = root.join(name);
    if d.exists() {
        bail!(
            "a VCH named {name:?} already exists (state in {}): pick another --name, or remove it with `kic-machine delete --name {name}`",
            d.display()
        );
    }
    Ok(())
}

/// An ELF64 executable without a program interpreter (statically linked).
pub fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let Ok(phoff) = usize::try_from(u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])))
    else {
        return false;
    };
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    phnum > 0
        && (0..phnum).all(|i| {
            let o = phoff.saturating_add(i * phentsize);
            b.get(o..o.saturating_add(4))
                .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
        })
}

pub fn check_tether(p: &Path) -> Result<()> {
    let b = std::fs::read(p).with_context(|| {
        format!(
            "cannot read the tether {}: build it with `make tether` or pass --tether",
            p.display()
        )
    })?;
    if !is_static_elf(&b) {
        bail!(
            "the tether {} is not a statically linked x86-64 ELF program (it runs as PID 1 in container VMs, which have no libraries): build it with `make tether` (target x86_64-unknown-linux-gnu, static) or pass --tether",
            p.display()
        );
    }
    Ok(())
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The kic-vch binary to install: `$KIC_VCH_BIN`, else next to this program.
pub fn find_vch_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KIC_VCH_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("KIC_VCH_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let p = exe_dir()
        .map(|d| d.join("kic-vch"))
        .context("cannot find this program's directory")?;
    if !p.is_file() {
        bail!(
            "the endpoint program kic-vch was not found at {}: build it (`cargo build -p kic-vch`) next to kic-machine or set KIC_VCH_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// The tether: `--tether`, `$KIC_TETHER`, else `<exe dir>/../x86_64-unknown-linux-gnu/release/kic-tether`.
pub fn find_tether(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return crate::util::absolute(p);
    }
    if let Some(p) = std::env::var_os("KIC_TETHER") {
        return crate::util::absolute(Path::new(&p));
    }
    exe_dir()
        .map(|d| d.join("../x86_64-unknown-linux-gnu/release/kic-tether"))
        .context("cannot find this program's directory")
}

/// `kic-vch --version` of a binary.
pub fn vch_version(bin: &Path) -> Result<String> {
    let o = crate::util::run(
        std::process::Command::new(bin).arg("--version"),
        std::time::Duration::from_secs(20),
    )?;
    if !o.status.success() {
        bail!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok(s.strip_prefix("kic-vch ").unwrap_or(&s).to_string())
}

pub fn check_qemu() -> Result<()> {
    for p in ["qemu-system-x86_64", "qemu-img"] {
        if crate::util::which(p).is_none() {
            bail!("{p} not found on PATH: install QEMU (Debian: qemu-system-x86 and qemu-utils; see `make deps`)");
        }
    }
    Ok(())
}

/// Create `dir` if needed and check that files can be made in it; make it reachable by QEMU,
/// which runs as its own user.
pub fn writable_dir(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the {what} {}: check the path and permissions, or choose another",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".kic-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"x").with_context(|| {
        format!(
            "the {what} {} is not writable: fix its permissions or choose another",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Directories on the way to `dir` that other users cannot traverse (QEMU would not reach
/// the datastore's files).
pub fn untraversable_ancestors(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .filter(|a| {
            a.metadata()
                .map(|m| m.permissions().mode() & 0o001 == 0)
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
        .collect()
}

/// The TCP port can be listened on (bind test).
pub fn port_free(addr: SocketAddr) -> Result<()> {
    TcpListener::bind(addr).map(drop).with_context(|| {
        format!("cannot listen on {addr}: the port is in use or the address is not local; pass another --endpoint")
    })
}

/// `address:port` endpoints of all VCHs under `root` (running or not), with their names.
pub fn vch_endpoints(root: &Path) -> Vec<(String, SocketAddr)> {
    layout::list(root)
        .into_iter()
        .filter_map(|n| {
            let c = layout::Vch::new(root, &n).load().ok()?;
            let a = c.endpoint.tcp?.parse().ok()?;
            Some((n, a))
        })
        .collect()
}

fn conflicts(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Check an endpoint against the host (bind) and against other VCHs' configurations.
pub fn endpoint_available(root: &Path, addr: SocketAddr, except: Option<&str>) -> Result<()> {
    if let Some((n, _)) = vch_endpoints(root)
        .into_iter()
        .find(|(n, a)| Some(n.as_str()) != except && conflicts(a, &addr))
    {
        bail!(
            "port {} is assigned to VCH {n:?}: pass another --endpoint",
            addr.port()
        );
    }
    port_free(addr)
}

/// The first free endpoint from `start` up on `ip`.
pub fn pick_port(root: &Path, ip: std::net::IpAddr, start: u16) -> Result<SocketAddr> {
    for port in start..start.saturating_add(200) {
        let a = SocketAddr::new(ip, port);
        if endpoint_available(root, a, None).is_ok() {
            return Ok(a);
        }
    }
    bail!(
        "no free port in {start}..{} on {ip}: pass --endpoint",
        start.saturating_add(200)
    )
}

/// `--endpoint`: `addr:port`, `:port`, `port` or `addr` (port chosen). Returns the address and
/// the port if one was given.
pub fn parse_endpoint(s: &str) -> Result<(std::net::IpAddr, Option<u16>)> {
    let bad = || {
        anyhow::anyhow!("invalid --endpoint {s:?}: expected ADDRESS:PORT, :PORT, PORT or ADDRESS (e.g. 0.0.0.0:2376)")
    };
    if let Ok(p) = s.parse::<u16>() {
        return Ok(([0, 0, 0, 0].into(), Some(p)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    if let Some(p) = s.strip_prefix(':') {
        return Ok(([0, 0, 0, 0].into(), Some(p.parse().map_err(|_| bad())?)));
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok((ip, None));
    }
    if s == "localhost" {
        return Ok(([127, 0, 0, 1].into(), None));
    }
    if let Some(("localhost", p)) = s.split_once(':') {
        return Ok(([127, 0, 0, 1].into(), Some(p.parse().map_err(|_| bad())?)));
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vch1", "V.c_h-2", "0abc", &"x".repeat(31)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(32),
            "a:b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn static_elf() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me), "the test binary is dynamically linked");
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // A minimal ELF64 header with one PT_LOAD program header.
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert!(is_static_elf(&b));
        b[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(!is_static_elf(&b));
        let tether = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-unknown-linux-gnu/release/kic-tether");
        if let Ok(t) = std::fs::read(tether) {
            assert!(is_static_elf(&t));
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("2380").unwrap(),
            ([0, 0, 0, 0].into(), Some(2380))
        );
        assert_eq!(
            parse_endpoint(":2380").unwrap(),
            ([0, 0, 0, 0].into(), Some(2380))
        );
        assert_eq!(
            parse_endpoint("127.0.0.1:2380").unwrap(),
            ([127, 0, 0, 1].into(), Some(2380))
        );
        assert_eq!(
            parse_endpoint("127.0.0.1").unwrap(),
            ([127, 0, 0, 1].into(), None)
        );
        assert_eq!(
            parse_endpoint("localhost:9").unwrap(),
            ([127, 0, 0, 1].into(), Some(9))
        );
        assert!(parse_endpoint("host:99999").is_err());
        assert!(parse_endpoint("nope").is_err());
    }

    #[test]
    fn ports() {
        let d = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let used = l.local_addr().unwrap();
        assert!(port_free(used).is_err());
        let a = pick_port(d.path(), used.ip(), used.port()).unwrap();
        assert!(a.port() > used.port());
        assert!(conflicts(
            &"0.0.0.0:5".parse().unwrap(),
            &"127.0.0.1:5".parse().unwrap()
        ));
        assert!(!conflicts(
            &"127.0.0.2:5".parse().unwrap(),
            &"127.0.0.1:5".parse().unwrap()
        ));
    }
}
