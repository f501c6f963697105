//! The port layer: container VMs over libvirt, their disks on the datastore, and the sessions
//! with each VM's tether (VIC's port layer: compute, storage, interaction, events).
//!
//! **Owns:** libvirt domains of its VCH, container directories on the datastore, tether
//! sessions. **Must not:** know any API personality: Docker's wording is produced here only as
//! error messages the personality passes through. **Callers:** `kic-vch` (the Docker
//! personality) and `kicctl` (a developer's direct front end).
//!
//! Words: a *datastore* is a directory (or libvirt dir pool) holding images, container disks and
//! volumes; an *image disk* is an image's read-only ext4 file; a *container disk* is a qcow2
//! copy-on-write file over an image disk, one per container; a *monitor* is the task in the host
//! process that holds a running container's tether session and stores its output and exit.
//!
//! State lives only in libvirt (each domain's `<metadata>`) and on the datastore
//! (`config.json`, `state.json`, `output.log`): a host process can be killed at any time and
//! the next one rebuilds everything in [`PortLayer::open`], re-attaching to running VMs; the
//! tether keeps output until the host has stored it, so nothing is lost in between.

pub mod container;
pub mod domain;
pub mod error;
pub mod guest;
pub mod kvm;
pub mod layout;
pub mod libvirt;
pub mod logfile;
pub mod network;
pub mod runtime;
pub mod tether;
pub mod volumes;

pub use container::{ContainerConfig, ContainerState, Mount, Status};
pub use error::{Error, Kind, Result};
pub use guest::{ArchiveStream, CommitOptions, Guest};
pub use network::{Attachment, EndpointRequest, NetworkConfig, NetworkCreate, NetworkSetup};
pub use runtime::{
    parse_signal, Config, ContainerView, CreateRequest, ExecProcess, MountRequest, PortLayer,
    StdinWriter,
};
pub use volumes::{Volume, VolumeCreate, VolumeMeta, VolumeStores};
