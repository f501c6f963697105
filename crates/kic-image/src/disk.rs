//! Turning an image's layers into its one read-only ext4 image disk.
//!
//! Layers are applied in order into a staging tree under `tmp/`, then `mke2fs -d` writes a
//! sparse raw ext4 file from it; the staging tree is deleted whatever happens.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::apply::{apply_tar, ApplyOptions, RootDir};
use crate::content::ContentStore;
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::layout::Layout;

/// One layer to apply: the blob digest (compressed) and the expected uncompressed digest.
#[derive(Debug, Clone)]
pub struct LayerRef {
    pub blob: Digest,
    pub diff_id: Digest,
}

/// Events for progress reporting while building (sent from a blocking thread).
#[derive(Debug, Clone)]
pub enum BuildEvent {
    Extracting {
        layer: Digest,
        current: u64,
        total: u64,
    },
    Complete {
        layer: Digest,
    },
}

/// Counts bytes read and reports them every 1 MiB.
struct Counting<R, F> {
    inner: R,
    n: u64,
    last: u64,
    f: F,
}

impl<R: Read, F: FnMut(u64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n - self.last >= 1 << 20 || k == 0 {
            self.last = self.n;
            (self.f)(self.n);
        }
        Ok(k)
    }
}

/// Applies `layers` in order onto `root`, verifying each layer's diff id.
pub fn apply_layers(
    content: &ContentStore,
    root: &RootDir,
    layers: &[LayerRef],
    max_bytes: Option<u64>,
    events: &mut dyn FnMut(BuildEvent),
) -> Result<()> {
    let mut used = 0u64;
    for l in layers {
        let blob = content.open(&l.blob)?;
        let total = blob.metadata().map(|m| m.len()).unwrap_or(0);
        let layer = l.blob.clone();
        let counted = Counting {
            inner: blob,
            n: 0,
            last: 0,
            f: |n| {
                events(BuildEvent::Extracting {
                    layer: layer.clone(),
                    current: n,
                    total,
                })
            },
        };
        let mut hr = HashingReader::new(decompressed(counted)?);
        let opts = ApplyOptions {
            max_bytes: max_bytes.map(|m| m.saturating_sub(used)),
            ..ApplyOptions::default()
        };
        let st = apply_tar(root, &mut hr, opts).map_err(|e| match e {
            ImageError::Invalid(m) => ImageError::Invalid(format!("layer {}: {m}", l.blob)),
            e => e,
        })?;
        used += st.bytes;
        let (got, _) = hr.finish().map_err(|e| {
            ImageError::Invalid(format!("layer {}: cannot read to its end: {e}", l.blob))
        })?;
        l.diff_id
            .verify(&format!("uncompressed layer {}", l.blob), &got)?;
        events(BuildEvent::Complete {
            layer: l.blob.clone(),
        });
    }
    Ok(())
}

/// Undoes a layer's compression, found by magic bytes (the media type may lie).
pub fn decompressed<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::io("read layer", "<blob>", e))?
        .to_vec();
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(r)
            .map_err(|e| ImageError::Invalid(format!("bad zstd layer: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

/// Bytes used by the files of a tree (hard links counted once).
pub fn tree_size(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && (m.nlink() == 1 || seen.insert(m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// Writes a sparse raw ext4 file of `size_bytes` holding the tree `staging`.
pub fn make_ext4(staging: &Path, out: &Path, size_bytes: u64) -> Result<()> {
    let kib = size_bytes / 1024;
    let output = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(staging)
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-L",
            "kic-image",
            "-F",
        ])
        .arg(out)
        .arg(format!("{kib}k"))
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "mke2fs".into(),
            message: format!("cannot run it ({e}); install e2fsprogs"),
        })?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let hint = if err.contains("Could not allocate")
            || err.contains("No space")
            || err.contains("too many")
        {
            format!("; the image does not fit in a {size_bytes}-byte disk, pull it with a larger disk size")
        } else {
            String::new()
        };
        return Err(ImageError::Tool {
            tool: "mke2fs".into(),
            message: format!("building {}: {}{hint}", out.display(), err.trim()),
        });
    }
    fs::set_permissions(out, fs::Permissions::from_mode(0o644))
        .map_err(|e| ImageError::io("chmod", out, e))
}

/// A new empty staging tree under `tmp/` (mode 0755, as an image's root), deleted when dropped.
pub(crate) fn staging_dir(layout: &Layout, prefix: &str) -> Result<tempfile::TempDir> {
    let tmp = layout.tmp_dir();
    let staging = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&tmp)
        .map_err(|e| ImageError::io("create staging directory in", &tmp, e))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io("chmod", staging.path(), e))?;
    Ok(staging)
}

/// Builds the image disk of `id` unless it exists: staging tree, layers, file manifest
/// ([`crate::files`]), mke2fs, rename.
/// Returns the size of the unpacked tree, or `None` if the disk was there already. Holds the
/// image's disk lock meanwhile.
pub fn build_disk(
    layout: &Layout,
    id: &Digest,
    layers: &[LayerRef],
    size_bytes: u64,
    events: &mut dyn FnMut(BuildEvent),
) -> Result<Option<u64>> {
    let lock_path = layout.disk_lock(id);
    let lock_file =
        File::create(&lock_path).map_err(|e| ImageError::io("create lock", &lock_path, e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| ImageError::io("lock", &lock_path, e.into()))?;
    let disk = layout.disk(id);
    if disk.exists() {
        return Ok(None);
    }
    let tmp = layout.tmp_dir();
    let staging = staging_dir(layout, "staging-")?;
    let root = RootDir::open(staging.path())?;
    apply_layers(
        &ContentStore::new(layout.clone()),
        &root,
        layers,
        Some(size_bytes),
        events,
    )?;
    // The image's file set, for `docker diff` and `commit` (before mke2fs adds /lost+found).
    crate::files::write_manifest(layout, id, &crate::files::scan_tree(staging.path())?)?;
    let size = tree_size(staging.path());
    let part = tmp.join(format!("{}.raw.part", id.hex()));
    let _ = fs::remove_file(&part);
    let res = make_ext4(staging.path(), &part, size_bytes).and_then(|_| {
        fs::rename(&part, &disk).map_err(|e| ImageError::io("move image disk to", &disk, e))
    });
    if res.is_err() {
        let _ = fs::remove_file(&part);
    }
    drop(root);
    staging
        .close()
        .map_err(|e| ImageError::io("remove staging directory", &tmp, e))?;
    res.map(|_| Some(size))
}
