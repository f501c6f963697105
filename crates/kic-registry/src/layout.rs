//! The on-disk layout of a registry data directory, drawn once. No other module builds paths.
//!
//! ```text
//! <data-dir>/
//! ├── registry.db                      SQLite metadata (absent when --database-url is PostgreSQL)
//! ├── token.key                        HMAC-SHA256 key signing registry JWTs (mode 0600)
//! ├── blobs/sha256/<hex[0..2]>/<hex>   committed content: layers, configs and manifests.
//! │                                    A file appears here only by rename(2) after fsync and
//! │                                    digest verification, so it is always complete.
//! └── uploads/<uuid>/                  one in-progress upload session, never served
//!     ├── data                         the bytes received so far
//!     └── repository                   the repository the session belongs to
//! ```
//!
//! Manifests and small staged files are written under `uploads/` too (a session of their own),
//! so every rename into `blobs/` stays on one filesystem.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Typed paths inside one data directory.
#[derive(Clone, Debug)]
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

    pub fn sqlite_db(&self) -> PathBuf {
        self.root.join("registry.db")
    }

    pub fn token_key(&self) -> PathBuf {
        self.root.join("token.key")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(&d.hex()[..2])
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blob_dir(d).join(d.hex())
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    pub fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads_dir().join(id)
    }

    pub fn upload_data(&self, id: &str) -> PathBuf {
        self.upload_dir(id).join("data")
    }

    pub fn upload_repository(&self, id: &str) -> PathBuf {
        self.upload_dir(id).join("repository")
    }
}
