//! The content store: verified blobs addressed by digest.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::layout::Layout;

/// Blobs under `blobs/sha256/`, each checked against its digest before it lands.
#[derive(Debug, Clone)]
pub struct ContentStore {
    layout: Layout,
}

impl ContentStore {
    pub fn new(layout: Layout) -> Self {
        ContentStore { layout }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.layout.blob(d)
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.path(d);
        fs::read(&p).map_err(|e| ImageError::io("read blob", p, e))
    }

    pub fn open(&self, d: &Digest) -> Result<File> {
        let p = self.path(d);
        File::open(&p).map_err(|e| ImageError::io("open blob", p, e))
    }

    /// A temporary file in `tmp/` for a blob being written.
    pub fn temp(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.layout.tmp_dir();
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::io("create temporary file in", dir, e))
    }

    /// Stores bytes after checking them against `expected`.
    pub fn put_bytes(&self, what: &str, expected: &Digest, data: &[u8]) -> Result<()> {
        expected.verify(what, &Digest::of(data))?;
        if self.has(expected) {
            return Ok(());
        }
        let mut t = self.temp()?;
        t.write_all(data)
            .map_err(|e| ImageError::io("write", t.path().to_path_buf(), e))?;
        self.commit(t, expected)
    }

    /// Moves a fully written and already verified temporary file into place.
    pub fn commit(&self, t: tempfile::NamedTempFile, d: &Digest) -> Result<()> {
        let dest = self.path(d);
        let _ = fs::set_permissions(t.path(), fs::Permissions::from_mode(0o644));
        t.persist(&dest)
            .map_err(|e| ImageError::io("store blob", dest, e.error))?;
        Ok(())
    }

    /// Copies a blob from a reader (e.g. an OCI layout), verifying digest and size.
    pub fn put_reader(
        &self,
        what: &str,
        expected: &Digest,
        size: Option<u64>,
        r: impl Read,
    ) -> Result<()> {
        if self.has(expected) {
            return Ok(());
        }
        let mut t = self.temp()?;
        let mut hr = HashingReader::new(r);
        std::io::copy(&mut hr, t.as_file_mut())
            .map_err(|e| ImageError::io("copy blob to", t.path().to_path_buf(), e))?;
        let (got, n) = hr
            .finish()
            .map_err(|e| ImageError::io("read blob for", t.path().to_path_buf(), e))?;
        expected.verify(what, &got)?;
        if let Some(s) = size {
            if s != n {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} size"),
                    expected: s.to_string(),
                    actual: n.to_string(),
                });
            }
        }
        self.commit(t, expected)
    }

    pub fn remove(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io("remove blob", p, e))
            }
            _ => Ok(()),
        }
    }

    /// All digests present.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let dir = self.layout.blobs_dir();
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("list", dir.clone(), e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect())
    }
}
