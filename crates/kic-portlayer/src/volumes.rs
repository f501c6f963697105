//! Volumes: formatted disk images on a volume store, attached to container VMs as extra
//! virtio-blk disks.
//!
//! ```text
//! <volume store>/volumes/<name>/
//!   meta.json                    VolumeMeta (written last: a directory without it is not a volume)
//!   disk.raw                     sparse ext4 image of the volume's capacity
//! ```
//! A volume store is a directory named by a label (`default` is the default store); the VCH's
//! configuration maps labels to directories.

use crate::container::now_rfc3339;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The driver name volumes report.
pub const DRIVER: &str = "kic";
/// Capacity of a volume created without `Capacity`.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The smallest volume `mkfs.ext4` makes a usable filesystem of.
pub const MIN_CAPACITY: u64 = 1 << 20;
/// ext4 with 4 KiB blocks ends at 16 TiB.
pub const MAX_CAPACITY: u64 = 16 << 40;
/// Label of the store used when none is named.
pub const DEFAULT_STORE: &str = "default";
/// The options a volume create accepts (Docker's `--opt`).
pub const OPT_CAPACITY: &str = "Capacity";
pub const OPT_STORE: &str = "VolumeStore";

/// What is stored about a volume (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The options as given at create (`Capacity`, `VolumeStore`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
    /// Created for a container (`-v /path`, `VOLUME` of an image) rather than by name.
    #[serde(default)]
    pub anonymous: bool,
    /// Label of the store holding it.
    pub store: String,
    /// Size of the disk in bytes.
    pub capacity: u64,
}

/// A volume as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub meta: VolumeMeta,
    /// The volume's directory on its store.
    pub dir: PathBuf,
}

impl Volume {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }
}

/// What a volume create asks for.
#[derive(Debug, Clone, Default)]
pub struct VolumeCreate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Docker's driver options; only `Capacity` and `VolumeStore` are known.
    pub options: BTreeMap<String, String>,
    pub anonymous: bool,
}

/// Docker's rule for local volume names.
pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// dockerd's message for a name that is not a valid volume name.
pub fn invalid_name_message(name: &str) -> String {
    format!(
        "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )
}

/// Parse a capacity as Docker parses sizes (`512MB`, `2g`, `1GiB`, `1073741824`; the units are
/// binary, `k`/`kb`/`kib` all mean 1024).
pub fn parse_capacity(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "invalid Capacity {s:?}: give a size such as 512MB, 2GB, 1GiB or a number of bytes (at least 1MB)"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes > MAX_CAPACITY as f64 {
        return Err(Error::invalid(format!(
            "invalid Capacity {s:?}: the largest volume is 16TiB"
        )));
    }
    let bytes = bytes as u64;
    if bytes < MIN_CAPACITY {
        return Err(Error::invalid(format!(
            "invalid Capacity {s:?}: a volume needs at least 1MB"
        )));
    }
    // A whole number of 4 KiB blocks.
    Ok(bytes.div_ceil(4096) * 4096)
}

/// The volume stores of a VCH, by label.
#[derive(Debug, Clone, Default)]
pub struct VolumeStores {
    stores: BTreeMap<String, PathBuf>,
}

fn volumes_dir(store: &Path) -> PathBuf {
    store.join("volumes")
}

impl VolumeStores {
    pub fn new(stores: BTreeMap<String, PathBuf>) -> Self {
        VolumeStores { stores }
    }

    pub fn labels(&self) -> impl Iterator<Item = (&String, &PathBuf)> {
        self.stores.iter()
    }

    fn store(&self, label: Option<&str>) -> Result<(String, PathBuf)> {
        match label {
            None | Some("") => match self.stores.get(DEFAULT_STORE) {
                Some(p) => Ok((DEFAULT_STORE.to_string(), p.clone())),
                None => Err(Error::invalid(
                    "this VCH has no default volume store: add one with `kic-machine configure <vch> --volume-store PATH:default`, or name a store with --opt VolumeStore=<label>",
                )),
            },
            Some(l) => match self.stores.get(l) {
                Some(p) => Ok((l.to_string(), p.clone())),
                None => {
                    let known: Vec<&str> = self.stores.keys().map(String::as_str).collect();
                    Err(Error::invalid(format!(
                        "unknown volume store {l:?}: this VCH has {}; add one with `kic-machine configure <vch> --volume-store PATH:{l}`",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )))
                }
            },
        }
    }

    /// Check a create request without doing anything: name, options, store, capacity.
    pub fn check(&self, req: &VolumeCreate) -> Result<(String, PathBuf, u64)> {
        if !valid_volume_name(&req.name) {
            return Err(Error::invalid(invalid_name_message(&req.name)));
        }
        for k in req.options.keys() {
            if k != OPT_CAPACITY && k != OPT_STORE {
                return Err(Error::invalid(format!(
                    "create {}: unknown option: {k} (KIC volumes take Capacity and VolumeStore)",
                    req.name
                )));
            }
        }
        let capacity = match req.options.get(OPT_CAPACITY) {
            Some(c) => parse_capacity(c)?,
            None => DEFAULT_CAPACITY,
        };
        let (label, path) = self.store(req.options.get(OPT_STORE).map(String::as_str))?;
        Ok((label, path, capacity))
    }

    /// Find a volume by name on any store.
    pub fn get(&self, name: &str) -> Result<Volume> {
        if valid_volume_name(name) {
            for store in self.stores.values() {
                let dir = volumes_dir(store).join(name);
                if let Some(v) = read_volume(&dir) {
                    return Ok(v);
                }
            }
        }
        Err(Error::new(
            crate::error::Kind::NotFound,
            format!("get {name}: no such volume"),
        ))
    }

    /// Every volume on every store, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: BTreeMap<String, Volume> = BTreeMap::new();
        for store in self.stores.values() {
            let Ok(rd) = std::fs::read_dir(volumes_dir(store)) else {
                continue;
            };
            for e in rd.flatten() {
                if let Some(v) = read_volume(&e.path()) {
                    out.entry(v.meta.name.clone()).or_insert(v);
                }
            }
        }
        out.into_values().collect()
    }

    /// Create the volume: its directory, a sparse disk of its capacity formatted ext4, and its
    /// metadata. The caller makes sure the name is not taken (under its lock).
    pub fn create(&self, req: &VolumeCreate) -> Result<Volume> {
        let (label, store, capacity) = self.check(req)?;
        let vols = volumes_dir(&store);
        std::fs::create_dir_all(&vols)
            .map_err(|e| Error::io(format!("create {}", vols.display()), e))?;
        use std::os::unix::fs::PermissionsExt;
        // QEMU runs as its own user and must reach the disks.
        for d in [store.as_path(), vols.as_path()] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
        let dir = vols.join(&req.name);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                if read_volume(&dir).is_some() {
                    return Err(Error::conflict(format!(
                        "create {}: volume already exists",
                        req.name
                    )));
                }
                // A create that died half way: start again.
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir(&dir)
                    .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            } else {
                return Err(Error::io(format!("create {}", dir.display()), e));
            }
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        let meta = VolumeMeta {
            name: req.name.clone(),
            driver: DRIVER.into(),
            labels: req.labels.clone(),
            options: req.options.clone(),
            created: now_rfc3339(),
            anonymous: req.anonymous,
            store: label,
            capacity,
        };
        let v = Volume { meta, dir };
        if let Err(e) = format_disk(&v.disk(), capacity) {
            let _ = std::fs::remove_dir_all(&v.dir);
            return Err(e);
        }
        let json = serde_json::to_vec_pretty(&v.meta).expect("serialisable");
        let tmp = v.dir.join("meta.json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, v.dir.join("meta.json")))
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&v.dir);
                Error::io(format!("write {}", v.dir.join("meta.json").display()), e)
            })?;
        Ok(v)
    }

    /// Remove the volume's directory (metadata first, so a half-removed volume is gone).
    pub fn remove(&self, v: &Volume) -> Result<()> {
        std::fs::remove_file(v.dir.join("meta.json"))
            .map_err(|e| Error::io(format!("remove {}", v.meta.name), e))?;
        std::fs::remove_dir_all(&v.dir)
            .map_err(|e| Error::io(format!("remove {}", v.dir.display()), e))
    }
}

fn read_volume(dir: &Path) -> Option<Volume> {
    let b = std::fs::read(dir.join("meta.json")).ok()?;
    let meta: VolumeMeta = serde_json::from_slice(&b).ok()?;
    Some(Volume {
        meta,
        dir: dir.to_path_buf(),
    })
}

fn format_disk(disk: &Path, capacity: u64) -> Result<()> {
    let f = std::fs::File::create(disk)
        .map_err(|e| Error::io(format!("create {}", disk.display()), e))?;
    f.set_len(capacity)
        .map_err(|e| Error::io(format!("size {}", disk.display()), e))?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0"])
        .arg(disk)
        .output()
        .map_err(|e| {
            Error::unavailable(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"))
        })?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "mkfs.ext4 {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_parse_like_docker_sizes() {
        assert_eq!(parse_capacity("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_capacity("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_capacity("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_capacity("64m").unwrap(), 64 << 20);
        assert_eq!(parse_capacity("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_capacity("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_capacity("1048577").unwrap(), (1 << 20) + 4096);
        for bad in ["", "MB", "12XB", "-5MB", "1.2.3G", "ten"] {
            assert!(
                parse_capacity(bad)
                    .unwrap_err()
                    .message
                    .contains("invalid Capacity"),
                "{bad}"
            );
        }
        assert!(parse_capacity("1000KB")
            .unwrap_err()
            .message
            .contains("at least 1MB"));
        assert!(parse_capacity("17TB")
            .unwrap_err()
            .message
            .contains("16TiB"));
    }

    #[test]
    fn names_follow_dockerd() {
        assert!(valid_volume_name("data"));
        assert!(valid_volume_name("a1_b.c-d"));
        assert!(!valid_volume_name("a"));
        assert!(!valid_volume_name("-data"));
        assert!(!valid_volume_name("da/ta"));
        assert!(!valid_volume_name("/data"));
        assert_eq!(
            invalid_name_message("a/b"),
            "create a/b: \"a/b\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        );
    }

    fn stores(dir: &Path) -> VolumeStores {
        let mut m = BTreeMap::new();
        m.insert("default".to_string(), dir.join("a"));
        m.insert("fast".to_string(), dir.join("b"));
        VolumeStores::new(m)
    }

    #[test]
    fn checks_options_and_stores() {
        let t = tempfile::tempdir().unwrap();
        let s = stores(t.path());
        let mut req = VolumeCreate {
            name: "v1".into(),
            ..Default::default()
        };
        let (label, path, cap) = s.check(&req).unwrap();
        assert_eq!((label.as_str(), cap), ("default", DEFAULT_CAPACITY));
        assert_eq!(path, t.path().join("a"));
        req.options.insert("VolumeStore".into(), "fast".into());
        assert_eq!(s.check(&req).unwrap().0, "fast");
        req.options.insert("VolumeStore".into(), "slow".into());
        let e = s.check(&req).unwrap_err().message;
        assert!(e.contains("unknown volume store \"slow\"") && e.contains("default, fast"));
        req.options.clear();
        req.options.insert("size".into(), "1G".into());
        assert!(s
            .check(&req)
            .unwrap_err()
            .message
            .contains("unknown option: size"));
        let none = VolumeStores::default();
        req.options.clear();
        assert!(none
            .check(&req)
            .unwrap_err()
            .message
            .contains("--volume-store PATH:default"));
    }

    #[test]
    fn create_list_get_remove_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let s = stores(t.path());
        let mut req = VolumeCreate {
            name: "data".into(),
            anonymous: false,
            ..Default::default()
        };
        req.options.insert("Capacity".into(), "8MB".into());
        req.options.insert("VolumeStore".into(), "fast".into());
        req.labels.insert("k".into(), "v".into());
        let v = s.create(&req).unwrap();
        assert_eq!(v.dir, t.path().join("b/volumes/data"));
        assert_eq!(std::fs::metadata(v.disk()).unwrap().len(), 8 << 20);
        // A real ext4 image: the superblock magic at 1024 + 0x38.
        let b = std::fs::read(v.disk()).unwrap();
        assert_eq!(&b[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        let got = s.get("data").unwrap();
        assert_eq!(got, v);
        assert_eq!(got.meta.store, "fast");
        assert_eq!(got.meta.labels["k"], "v");
        assert!(s
            .create(&req)
            .unwrap_err()
            .message
            .contains("already exists"));
        assert_eq!(s.list().len(), 1);
        s.remove(&got).unwrap();
        assert!(!v.dir.exists());
        assert!(s
            .get("data")
            .unwrap_err()
            .message
            .contains("no such volume"));
        assert!(s.list().is_empty());
    }
}
