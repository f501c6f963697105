//! The datastore's on-disk layout, drawn once; no other code builds datastore paths.
//!
//! ```text
//! <datastore>/
//!   images/                      owned by kic-image (blobs, image disks)
//!   bootstrap/<version>/         vmlinux, initrd.img, manifest.json (kic-bootstrap)
//!   containers/<id>/
//!     config.json                ContainerConfig (also in the libvirt domain's <metadata>)
//!     state.json                 ContainerState, replaced atomically
//!     disk.qcow2                 the container disk: copy-on-write over the image disk
//!     output.log                 the main process's stdout/stderr frames (see `logfile`)
//!     console.log                the VM's serial console (kernel and tether messages)
//!     monitor.lock               flock held by the host process serving this container
//! ```
//! The tether channel's unix socket lives in [`SOCKET_DIR`], because socket paths are limited to
//! 108 bytes and a datastore path can be long.

use std::path::{Path, PathBuf};

pub const SOCKET_DIR: &str = "/run/kic";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn bootstrap(&self) -> PathBuf {
        self.root.join("bootstrap")
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container(&self, id: &str) -> ContainerPaths {
        ContainerPaths {
            dir: self.containers().join(id),
            id: id.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
    id: String,
}

impl ContainerPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("output.log")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("monitor.lock")
    }
    pub fn socket(&self) -> PathBuf {
        Path::new(SOCKET_DIR).join(format!("{}.sock", self.id))
    }
}
