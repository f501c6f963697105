//! What kic-machine asks of libvirt, through `virsh` (the endpoint owns the real libvirt work).

use crate::util::run;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let mut c = Command::new("virsh");
    c.arg("-q").arg("-c").arg(uri).args(args);
    let o = run(&mut c, TIMEOUT).map_err(|e| {
        if crate::util::which("virsh").is_none() {
            anyhow::anyhow!("virsh is not installed: install libvirt-clients (see `make deps`)")
        } else {
            e
        }
    })?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let err = err
            .trim()
            .trim_start_matches("error: ")
            .replace("\nerror: ", ": ");
        bail!("virsh {}: {}", args.join(" "), err);
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Check that libvirtd answers at `uri`.
pub fn check(uri: &str) -> Result<()> {
    virsh(uri, &["uri"]).map(|_| ()).map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to libvirt at {uri}: {e:#}\nStart libvirtd (see `make deps`) or pass --target with a reachable libvirt URI"
        )
    })
}

fn xml_text(xml: &str, outer: &str, inner: &str) -> Option<String> {
    let o = xml.find(&format!("<{outer}"))?;
    let rest = &xml[o..];
    let end = rest.find(&format!("</{outer}>"))?;
    let rest = &rest[..end];
    let i0 = rest.find(&format!("<{inner}"))?;
    let i = rest[i0..].find('>')? + i0 + 1;
    let j = rest[i..].find(&format!("</{inner}>"))? + i;
    Some(unescape(rest[i..j].trim()))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The target directory of an existing storage pool (`--image-store pool:<name>`).
pub fn pool_path(uri: &str, pool: &str) -> Result<PathBuf> {
    let xml = virsh(uri, &["pool-dumpxml", pool]).with_context(|| {
        format!("libvirt storage pool {pool:?} not found at {uri}: list pools with `virsh pool-list --all`")
    })?;
    let ty = xml
        .split("type='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or("");
    if ty != "dir" {
        bail!(
            "libvirt storage pool {pool:?} is of type {ty:?}; KIC needs a `dir` pool (a directory)"
        );
    }
    xml_text(&xml, "target", "path")
        .map(PathBuf::from)
        .with_context(|| format!("libvirt storage pool {pool:?} has no target path"))
}

pub fn pool_exists(uri: &str, pool: &str) -> bool {
    virsh(uri, &["pool-info", pool]).is_ok()
}

/// Define, build, start and autostart a `dir` pool on `path`.
pub fn define_pool(uri: &str, pool: &str, path: &std::path::Path) -> Result<()> {
    let p = path.to_string_lossy();
    virsh(uri, &["pool-define-as", pool, "dir", "--target", &p])?;
    let r = virsh(uri, &["pool-start", pool]).and_then(|_| virsh(uri, &["pool-autostart", pool]));
    if let Err(e) = r {
        let _ = virsh(uri, &["pool-undefine", pool]);
        return Err(e);
    }
    Ok(())
}

pub fn remove_pool(uri: &str, pool: &str) -> Result<()> {
    let _ = virsh(uri, &["pool-destroy", pool]);
    virsh(uri, &["pool-undefine", pool]).map(|_| ())
}

pub struct Domain {
    pub name: String,
    pub running: bool,
}

/// Container VMs of VCH `vch`: domains named `kic-<vch>-*` whose KIC metadata names this VCH.
pub fn vch_domains(uri: &str, vch: &str) -> Result<Vec<Domain>> {
    let prefix = format!("kic-{vch}-");
    let mut out = Vec::new();
    for name in virsh(uri, &["list", "--all", "--name"])?.lines() {
        let name = name.trim();
        if !name.starts_with(&prefix) {
            continue;
        }
        let Ok(xml) = virsh(uri, &["dumpxml", name]) else {
            continue;
        };
        let meta = xml_text(&xml, "metadata", "kic:container")
            .or_else(|| xml_text(&xml, "metadata", "container"))
            .unwrap_or_default();
        let owner = serde_json::from_str::<serde_json::Value>(&meta)
            .ok()
            .and_then(|v| v.get("vch").and_then(|v| v.as_str()).map(String::from));
        if owner.as_deref() != Some(vch) {
            continue;
        }
        let state = virsh(uri, &["domstate", name]).unwrap_or_default();
        out.push(Domain {
            name: name.to_string(),
            running: state.trim() != "shut off",
        });
    }
    Ok(out)
}

pub fn remove_domain(uri: &str, name: &str) -> Result<()> {
    let _ = virsh(uri, &["destroy", name]);
    virsh(uri, &["undefine", name]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pool_and_metadata_xml() {
        let pool = "<pool type='dir'><name>p</name><target>\n<path>/srv/a&amp;b</path>\n<permissions/></target></pool>";
        assert_eq!(xml_text(pool, "target", "path").unwrap(), "/srv/a&b");
        let dom = "<domain><metadata><kic:container xmlns:kic='https://kic.dev/xmlns/container/1'>{&quot;vch&quot;:&quot;v1&quot;}</kic:container></metadata></domain>";
        assert_eq!(
            xml_text(dom, "metadata", "kic:container").unwrap(),
            "{\"vch\":\"v1\"}"
        );
    }
}
