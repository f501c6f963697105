//! Where a VCH's files live: `<state root>/<name>/...`, and kic-machine's own notes about it.

use crate::config::VchConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub struct Vch {
    pub name: String,
    pub dir: PathBuf,
}

impl Vch {
    pub fn new(root: &Path, name: &str) -> Vch {
        Vch {
            name: name.to_string(),
            dir: root.join(name),
        }
    }

    /// An existing VCH, or an error naming the VCHs that exist.
    pub fn open(root: &Path, name: &str) -> Result<Vch> {
        let v = Vch::new(root, name);
        if !v.config().exists() {
            let all = list(root);
            let hint = if all.is_empty() {
                format!("no VCHs exist under {}", root.display())
            } else {
                format!("VCHs under {}: {}", root.display(), all.join(", "))
            };
            bail!("VCH {name:?} not found ({hint}); see `kic-machine ls`");
        }
        Ok(v)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn machine(&self) -> PathBuf {
        self.dir.join("machine.json")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    /// The client CA bundle the endpoint checks client certificates against.
    pub fn client_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA kic-machine generated (signs the server certificate; also a client CA when
    /// kic-machine generated the client pair).
    pub fn generated_ca(&self) -> PathBuf {
        self.dir.join("generated-ca.pem")
    }
    /// Copies of the client CAs given with `--tls-ca`.
    pub fn tls_ca_dir(&self) -> PathBuf {
        self.dir.join("tls-ca")
    }
    /// Copies of the CAs given with `--registry-ca`.
    pub fn registry_ca_dir(&self) -> PathBuf {
        self.dir.join("registry-ca")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
    pub fn vch_log(&self) -> PathBuf {
        self.dir.join("vch.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    pub fn supervisor_lock(&self) -> PathBuf {
        self.dir.join("supervisor.lock")
    }
    pub fn vch_pid(&self) -> PathBuf {
        self.dir.join("vch.pid")
    }
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn bin_prev(&self) -> PathBuf {
        self.dir.join("bin.prev")
    }
    pub fn vch_bin(&self) -> PathBuf {
        self.bin().join("kic-vch")
    }
    pub fn tether_bin(&self) -> PathBuf {
        self.bin().join("kic-tether")
    }

    pub fn load(&self) -> Result<VchConfig> {
        VchConfig::load(&self.config())
    }
    pub fn save(&self, c: &VchConfig) -> Result<()> {
        c.save(&self.config())
            .with_context(|| format!("cannot write {}", self.config().display()))
    }
    pub fn load_meta(&self) -> Result<MachineMeta> {
        match std::fs::read(self.machine()) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not valid", self.machine().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineMeta::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.machine().display())),
        }
    }
    pub fn save_meta(&self, m: &MachineMeta) -> Result<()> {
        crate::util::write_file(&self.machine(), &serde_json::to_vec_pretty(m)?, 0o644)
    }
}

/// What kic-machine remembers about a VCH beyond `config.json` (the endpoint does not read it):
/// the flags as given, for `inspect config`, and what it created, for `delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineMeta {
    /// Where the client certificates and `<name>.env` were written.
    pub cert_path: PathBuf,
    /// `DOCKER_HOST` for clients (`tcp://host:port`).
    pub docker_host: String,
    pub tls_cname: Option<String>,
    /// `--tls-ca` files as given.
    pub tls_ca: Vec<PathBuf>,
    /// `--registry-ca` files as given.
    pub registry_ca: Vec<PathBuf>,
    /// Whether kic-machine generated the client pair (its CA is then in the client CA bundle).
    pub generated_client: bool,
    /// The libvirt storage pool kic-machine defined on the datastore.
    pub pool: Option<String>,
    /// Volume store directories kic-machine created (removed by `delete --force`).
    pub created_volume_stores: Vec<PathBuf>,
    /// `--endpoint` as given (None: chosen automatically).
    pub endpoint_arg: Option<String>,
}

/// Names of the VCHs under `root` (directories holding a config.json), sorted.
pub fn list(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("config.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}
