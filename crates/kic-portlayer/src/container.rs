//! A container's configuration (fixed at create) and state (its life), with the transition checks
//! that give Docker's conflict messages.

use crate::error::{Error, Result};
use kic_proto::ContainerSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Schema version of [`ContainerConfig`] as stored in libvirt metadata and `config.json`.
pub const CONFIG_VERSION: u32 = 1;

/// What a container is: everything decided at create. Stored in the domain's `<metadata>` and in
/// the container's directory on the datastore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub version: u32,
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    pub image_id: String,
    pub image_disk: PathBuf,
    /// What the tether gets: hostname, hosts file, and the main process.
    pub spec: ContainerSpec,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub stop_signal: i32,
    /// Seconds `stop` waits before it kills.
    pub stop_timeout: u64,
    pub labels: BTreeMap<String, String>,
    /// The bootstrap image version the VM boots.
    pub boot_version: String,
    pub vch: String,
    pub datastore: PathBuf,
    pub domain: String,
    /// Owned by the API personality (the Docker create request, host config...), kept verbatim.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Volumes attached as extra disks, in disk order (`vdb`, `vdc`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// The networks the container joins at start, in NIC order (none: loopback only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::network::EndpointRequest>,
}

/// A volume attached to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// The volume's disk (`<store>/volumes/<name>/disk.raw`).
    pub disk: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// What happens to a container over time; `state.json`, replaced atomically on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    pub status: Status,
    pub exit_code: Option<i32>,
    /// Why the last start failed, or why the VM ended abnormally.
    #[serde(default)]
    pub error: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The guest boot this state belongs to (set once the tether answered).
    pub boot_id: Option<String>,
    /// PID of the main process inside the VM.
    pub pid: Option<i32>,
    /// Log byte counts per stream (index 1 stdout, 2 stderr) when this boot started: the
    /// tether's offsets count from zero at every boot.
    #[serde(default)]
    pub log_base: [u64; 3],
    /// Whether the main process was started in this boot (so a restarted host does not start
    /// it twice).
    #[serde(default)]
    pub main_started: bool,
    #[serde(default)]
    pub restart_count: u32,
    /// Set by `stop`/`kill` so an abnormal VM end is not reported as a crash.
    #[serde(default)]
    pub stopping: bool,
    /// Addresses of the current (or last) run, one per network of the config; they count as
    /// taken only while the container runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<crate::network::Attachment>,
}

impl ContainerState {
    pub fn created() -> Self {
        ContainerState {
            status: Status::Created,
            exit_code: None,
            error: String::new(),
            started_at: None,
            finished_at: None,
            boot_id: None,
            pid: None,
            log_base: [0; 3],
            main_started: false,
            restart_count: 0,
            stopping: false,
            net: Vec::new(),
        }
    }

    pub fn running(&self) -> bool {
        self.status == Status::Running
    }

    /// May the container be started now?
    pub fn check_start(&self, id: &str) -> Result<()> {
        match self.status {
            Status::Created | Status::Exited => Ok(()),
            Status::Running => Err(Error::conflict(format!(
                "Container {id} is already running"
            ))),
            Status::Dead => Err(Error::conflict(format!(
                "Container {id} is marked for removal and cannot be started."
            ))),
        }
    }

    /// May the container be signalled now?
    pub fn check_kill(&self, id: &str) -> Result<()> {
        if self.running() {
            Ok(())
        } else {
            Err(Error::conflict(format!("Container {id} is not running")))
        }
    }

    /// May the container be removed now?
    pub fn check_remove(&self, id: &str, force: bool) -> Result<()> {
        if self.running() && !force {
            return Err(Error::conflict(format!(
                "cannot remove container \"{id}\": container is running: stop the container before removing or force remove"
            )));
        }
        Ok(())
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Docker's rule for container names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_answer_with_docker_wording() {
        let mut s = ContainerState::created();
        assert!(s.check_start("c1").is_ok());
        assert_eq!(
            s.check_kill("c1").unwrap_err().message,
            "Container c1 is not running"
        );
        s.status = Status::Running;
        assert_eq!(
            s.check_start("c1").unwrap_err().message,
            "Container c1 is already running"
        );
        assert!(s
            .check_remove("c1", false)
            .unwrap_err()
            .message
            .contains("container is running"));
        assert!(s.check_remove("c1", true).is_ok());
    }

    #[test]
    fn names_follow_docker_rules() {
        assert!(valid_name("web_1.a-b"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
