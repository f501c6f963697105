//! The filesystem blob store and upload sessions.
//!
//! Invariant: a file under `blobs/` is complete and matches its name. Bytes arrive in an upload
//! session (`uploads/<id>/data`, hashed as they stream in); finishing a session fsyncs the file,
//! compares its SHA-256 with the digest the client claims, and only then renames it into
//! `blobs/` and fsyncs the directory. A crash at any point leaves at worst an abandoned session,
//! never a partial blob. Two sessions committing the same digest rename identical bytes over each
//! other, which is safe.

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::digest::Digest;
use crate::layout::Layout;

/// State of one upload session.
pub struct Upload {
    pub repository: String,
    /// Bytes received so far.
    pub size: u64,
    /// Running hash of those bytes; `None` after a restart or a failed write (then the file is
    /// hashed again when the session finishes).
    hasher: Option<Sha256>,
}

/// Why finishing an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("provided digest did not match uploaded content (got {0})")]
    DigestMismatch(Digest),
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub type SessionRef = Arc<tokio::sync::Mutex<Upload>>;

pub struct BlobStore {
    layout: Layout,
    sessions: Mutex<HashMap<String, SessionRef>>,
}

fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn valid_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

async fn fsync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

impl BlobStore {
    pub async fn open(layout: Layout) -> io::Result<BlobStore> {
        fs::create_dir_all(layout.blobs_dir()).await?;
        fs::create_dir_all(layout.uploads_dir()).await?;
        Ok(BlobStore {
            layout,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Size of a committed blob, if present on disk.
    pub async fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.layout.blob(d))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Streams `len` bytes of a committed blob from `offset`. A blocking thread reads ahead
    /// (up to four 512 KiB chunks) while the network side sends, so disk and socket overlap.
    pub async fn stream(
        &self,
        d: &Digest,
        offset: u64,
        len: u64,
    ) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(self.layout.blob(d))?;
        f.seek(SeekFrom::Start(offset))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let n = left.min(512 * 1024) as usize;
                let mut buf = vec![0u8; n];
                let r = f.read_exact(&mut buf).map(|_| Bytes::from(buf));
                let failed = r.is_err();
                if tx.blocking_send(r).is_err() || failed {
                    return;
                }
                left -= n as u64;
            }
        });
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }))
    }

    pub async fn read_all(&self, d: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.layout.blob(d)).await
    }

    pub async fn delete(&self, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.layout.blob(d)).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Opens a new upload session for `repository`.
    pub async fn start(&self, repository: &str) -> io::Result<String> {
        let id = new_id();
        fs::create_dir_all(self.layout.upload_dir(&id)).await?;
        fs::write(self.layout.upload_repository(&id), repository).await?;
        File::create(self.layout.upload_data(&id)).await?;
        let up = Upload {
            repository: repository.to_string(),
            size: 0,
            hasher: Some(Sha256::new()),
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(up)));
        Ok(id)
    }

    /// Finds a session of `repository` (in memory, or on disk after a restart).
    pub async fn session(&self, id: &str, repository: &str) -> Option<SessionRef> {
        if !valid_id(id) {
            return None;
        }
        let found = self.sessions.lock().unwrap().get(id).cloned();
        let s = match found {
            Some(s) => s,
            None => {
                let repo = fs::read_to_string(self.layout.upload_repository(id))
                    .await
                    .ok()?;
                let size = fs::metadata(self.layout.upload_data(id)).await.ok()?.len();
                let up = Upload {
                    repository: repo,
                    size,
                    hasher: None,
                };
                let s = Arc::new(tokio::sync::Mutex::new(up));
                self.sessions
                    .lock()
                    .unwrap()
                    .entry(id.to_string())
                    .or_insert(s)
                    .clone()
            }
        };
        let ok = s.lock().await.repository == repository;
        ok.then_some(s)
    }

    /// Appends a byte stream to a session; returns the new size. On a broken stream the bytes
    /// that did arrive stay in the session.
    pub async fn append<S, E>(&self, id: &str, up: &mut Upload, mut body: S) -> io::Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let file = OpenOptions::new()
            .append(true)
            .open(self.layout.upload_data(id))
            .await?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut result = Ok(());
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => {
                    if let Err(e) = w.write_all(&c).await {
                        result = Err(e);
                        break;
                    }
                    if let Some(h) = up.hasher.as_mut() {
                        h.update(&c);
                    }
                    up.size += c.len() as u64;
                }
                Err(e) => {
                    result = Err(io::Error::other(format!("request body: {e}")));
                    break;
                }
            }
        }
        let flushed = w.flush().await;
        if result.is_err() || flushed.is_err() {
            // Trust the file, not our counters, and hash it again at the end.
            up.hasher = None;
            up.size = fs::metadata(self.layout.upload_data(id)).await?.len();
        }
        result?;
        flushed?;
        Ok(up.size)
    }

    /// Verifies a session against `expected` and commits it into `blobs/`. The session is gone
    /// afterwards, whatever the outcome.
    pub async fn finish(
        &self,
        id: &str,
        up: &mut Upload,
        expected: &Digest,
    ) -> Result<u64, FinishError> {
        let r = match self.verify(id, up, expected).await {
            Ok(size) => self
                .commit(id, expected)
                .await
                .map(|_| size)
                .map_err(FinishError::from),
            Err(e) => Err(e),
        };
        self.cancel(id).await;
        r
    }

    /// First half of finishing a session: fsyncs its bytes and checks them against
    /// `expected`; returns the size. Nothing becomes visible.
    pub async fn verify(
        &self,
        id: &str,
        up: &mut Upload,
        expected: &Digest,
    ) -> Result<u64, FinishError> {
        let data = self.layout.upload_data(id);
        let f = File::open(&data).await?;
        f.sync_all().await?;
        let size = f.metadata().await?.len();
        drop(f);
        let actual = match up.hasher.take() {
            Some(h) if up.size == size => Digest::from_hasher(h),
            _ => hash_file(&data).await?,
        };
        if &actual != expected {
            return Err(FinishError::DigestMismatch(actual));
        }
        Ok(size)
    }

    /// Second half: renames verified bytes into `blobs/` (atomic), fsyncs the directory and
    /// drops the session.
    pub async fn commit(&self, id: &str, d: &Digest) -> io::Result<()> {
        let r = self.commit_file(&self.layout.upload_data(id), d).await;
        self.cancel(id).await;
        r
    }

    async fn commit_file(&self, staged: &Path, d: &Digest) -> io::Result<()> {
        let dir = self.layout.blob_dir(d);
        fs::create_dir_all(&dir).await?;
        fs::rename(staged, self.layout.blob(d)).await?;
        fsync_dir(&dir).await
    }

    /// Drops a session and its bytes.
    pub async fn cancel(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
        if valid_id(id) {
            let _ = fs::remove_dir_all(self.layout.upload_dir(id)).await;
        }
    }

    /// Stores small content (a manifest) whose digest the caller computed.
    pub async fn put_small(&self, d: &Digest, data: &[u8]) -> io::Result<()> {
        if self.size(d).await == Some(data.len() as u64) {
            return Ok(());
        }
        let id = new_id();
        fs::create_dir_all(self.layout.upload_dir(&id)).await?;
        let path = self.layout.upload_data(&id);
        let r = async {
            let mut f = File::create(&path).await?;
            f.write_all(data).await?;
            f.sync_all().await?;
            drop(f);
            self.commit_file(&path, d).await
        }
        .await;
        let _ = fs::remove_dir_all(self.layout.upload_dir(&id)).await;
        r
    }

    /// Removes upload sessions not modified for `max_age`.
    pub async fn purge_uploads(&self, max_age: std::time::Duration) -> io::Result<usize> {
        let mut n = 0;
        let mut rd = fs::read_dir(self.layout.uploads_dir()).await?;
        while let Some(e) = rd.next_entry().await? {
            let id = e.file_name().to_string_lossy().to_string();
            let data = self.layout.upload_data(&id);
            let age = fs::metadata(&data)
                .await
                .or(e.metadata().await)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a > max_age) {
                self.sessions.lock().unwrap().remove(&id);
                let _ = fs::remove_dir_all(e.path()).await;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// SHA-256 of a file.
pub async fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = File::open(path).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_digest_never_becomes_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(Layout::new(dir.path())).await.unwrap();
        let id = store.start("p/r").await.unwrap();
        let s = store.session(&id, "p/r").await.unwrap();
        let mut up = s.lock().await;
        let body = futures::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"hello"))]);
        store.append(&id, &mut up, body).await.unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            store.finish(&id, &mut up, &wrong).await,
            Err(FinishError::DigestMismatch(_))
        ));
        assert!(store.size(&wrong).await.is_none());
        assert!(store.size(&Digest::of(b"hello")).await.is_none());
        assert!(store.session(&id, "p/r").await.is_none());
    }

    #[tokio::test]
    async fn session_survives_restart_and_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = BlobStore::open(Layout::new(dir.path())).await.unwrap();
            let id = store.start("p/r").await.unwrap();
            let s = store.session(&id, "p/r").await.unwrap();
            let mut up = s.lock().await;
            let body = futures::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"hel"))]);
            store.append(&id, &mut up, body).await.unwrap();
            id
        };
        let store = BlobStore::open(Layout::new(dir.path())).await.unwrap();
        assert!(store.session(&id, "other/repo").await.is_none());
        let s = store.session(&id, "p/r").await.unwrap();
        let mut up = s.lock().await;
        assert_eq!(up.size, 3);
        let body = futures::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"lo"))]);
        store.append(&id, &mut up, body).await.unwrap();
        let d = Digest::of(b"hello");
        assert_eq!(store.finish(&id, &mut up, &d).await.unwrap(), 5);
        assert_eq!(store.read_all(&d).await.unwrap(), b"hello");
    }
}
