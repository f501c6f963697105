//! The on-disk layout of an image store, drawn once. No other code builds store paths.
//!
//! ```text
//! <images_root>/                     (= <datastore>/images)
//! ├── blobs/sha256/<hex>             content store: indexes, manifests, configs, compressed
//! │                                  layers, each verified against its digest before landing
//! ├── disks/<id hex>.raw             one sparse, read-only ext4 image disk per image id (0644);
//! │                                  the lower layer of every container disk of that image
//! ├── meta/<id hex>.json             image metadata (config, manifest digests, layers, size)
//! ├── meta/<id hex>.files.json.gz    the image's file manifest (`files.rs`: diff and commit)
//! ├── repositories.json              references -> image id: tags (`docker.io/library/x:1`)
//! │                                  and digest references (`docker.io/library/x@sha256:..`)
//! ├── locks/store.lock               flock held while metadata changes
//! ├── locks/<id hex>.lock            flock held while an image disk is built
//! └── tmp/                           partial downloads, staging trees, disks being built;
//!                                    anything here is garbage after a crash
//! ```
//!
//! Every file lands by an atomic rename from `tmp/`, so a crash leaves the store consistent.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Typed paths of one image store.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub fn disks_dir(&self) -> PathBuf {
        self.root.join("disks")
    }

    /// The image disk of image `id`.
    pub fn disk(&self, id: &Digest) -> PathBuf {
        self.disks_dir().join(format!("{}.raw", id.hex()))
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.root.join("meta")
    }

    pub fn meta(&self, id: &Digest) -> PathBuf {
        self.meta_dir().join(format!("{}.json", id.hex()))
    }

    /// The gzipped file manifest of image `id` (see [`crate::files`]).
    pub fn files(&self, id: &Digest) -> PathBuf {
        self.meta_dir().join(format!("{}.files.json.gz", id.hex()))
    }

    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn store_lock(&self) -> PathBuf {
        self.locks_dir().join("store.lock")
    }

    pub fn disk_lock(&self, id: &Digest) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", id.hex()))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// All directories `ImageStore::open` creates.
    pub fn dirs(&self) -> [PathBuf; 5] {
        [
            self.blobs_dir(),
            self.disks_dir(),
            self.meta_dir(),
            self.locks_dir(),
            self.tmp_dir(),
        ]
    }
}
