//! # kic-image: the image store of a KIC datastore
//!
//! **Owns** `<datastore>/images/` (see [`layout`] for the tree): a content store of verified
//! blobs, one metadata file per image, the reference map, and one **image disk** per image — a
//! sparse, read-only raw ext4 file holding the image's merged layers. Container disks (qcow2
//! overlays made by the port layer) are backed by it, so nothing of an image is copied per
//! container.
//!
//! **Does**: pull from OCI Distribution registries ([`ImageStore::pull`]: Basic and Bearer
//! auth, Docker schema 2 and OCI manifests and indexes, gzip/zstd/plain layers, every digest
//! verified), import OCI layouts, tag, look up, list and remove images, and apply untrusted
//! tar archives safely ([`apply`], shared with `docker cp`).
//!
//! **Does not**: know about containers (callers check an image is unused before removing it),
//! talk to libvirt, or serve HTTP. Called by the port layer and the Docker personality.
//!
//! The `kic-mkimage` binary in this crate builds test images (busybox, Debian, a multi-arch
//! index) as OCI layouts without internet access.

pub mod apply;
pub mod changes;
pub mod commit;
pub mod content;
pub mod digest;
pub mod disk;
pub mod error;
pub mod files;
pub mod layout;
pub mod mkimage;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod spec;
mod store;
pub mod transfer;

pub use changes::{changes, Change, ChangeKind};
pub use commit::{apply_changes, merge_config, CommitRequest};
pub use digest::Digest;
pub use error::{ErrorKind, ImageError};
pub use reference::Reference;
pub use spec::{ContainerConfig, ImageConfig};
pub use store::{ImageRecord, ImageStore, PullOptions, PullProgress, DEFAULT_DISK_SIZE};
pub use transfer::{ImageParts, LoadedImage};
