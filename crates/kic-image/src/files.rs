//! The file manifest of an image: every file of its merged layers as [`FileEntry`] records,
//! the image side of `docker diff` and `docker commit` (see [`crate::changes`]).
//!
//! The manifest is taken from the staging tree an image disk is built from (so it is exactly
//! what the disk holds, except the `/lost+found` that `mke2fs` adds) and kept gzipped beside
//! the image's metadata as `meta/<id>.files.json.gz`. Images built before manifests existed
//! get theirs on first use, by applying their layers into a throwaway staging tree.
//!
//! Entries: paths are absolute and the root `/` **is** included (as the guest's listing
//! includes it); sorted by path; `lstat` values (symlinks not followed); mtimes as the tree
//! has them (tar layers carry whole seconds, so `mtime_nsec` is normally 0); the
//! `security.capability` xattr in lowercase hex.

use std::fs;
use std::io::Read;
use std::path::Path;

use kic_proto::FileEntry;
use serde::{Deserialize, Serialize};

use crate::apply::RootDir;
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::disk::{apply_layers, LayerRef};
use crate::error::{ImageError, Result};
use crate::layout::Layout;
use crate::store::{write_atomic, ImageStore};

/// Format version of the stored manifest.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    entries: Vec<FileEntry>,
}

/// Lists the tree at `root` as the guest would see it mounted at `/`: `/` and every path
/// under it, sorted, symlinks not followed. The same lister as the guest's (`kic-archive`), so
/// both sides of a diff describe files alike.
pub fn scan_tree(root: &Path) -> Result<Vec<FileEntry>> {
    let root = RootDir::open(root)?;
    let mut out = Vec::new();
    kic_archive::list(&root, "/", false, &mut |e| {
        out.push(e);
        Ok(())
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Stores the manifest of image `id` (gzipped JSON, atomically).
pub fn write_manifest(layout: &Layout, id: &Digest, entries: &[FileEntry]) -> Result<()> {
    let dest = layout.files(id);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    #[derive(Serialize)]
    struct Out<'a> {
        version: u32,
        entries: &'a [FileEntry],
    }
    serde_json::to_writer(
        &mut gz,
        &Out {
            version: VERSION,
            entries,
        },
    )
    .map_err(|e| ImageError::io("write", &dest, e.into()))?;
    let data = gz
        .finish()
        .map_err(|e| ImageError::io("compress", &dest, e))?;
    write_atomic(layout, &dest, &data)
}

/// Reads the stored manifest of `id`; `None` if there is none (or it is of another version).
pub fn read_manifest(layout: &Layout, id: &Digest) -> Result<Option<Vec<FileEntry>>> {
    let p = layout.files(id);
    let f = match fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io("open", p, e)),
    };
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(f))
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io("read", &p, e))?;
    let s: Stored = serde_json::from_slice(&data)
        .map_err(|e| ImageError::Invalid(format!("{} is corrupt: {e}", p.display())))?;
    Ok((s.version == VERSION).then_some(s.entries))
}

/// Removes the stored manifest of `id`, if any.
pub fn remove_manifest(layout: &Layout, id: &Digest) -> Result<()> {
    let p = layout.files(id);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ImageError::io("remove file manifest", p, e))
        }
        _ => Ok(()),
    }
}

/// Applies `layers` into a throwaway staging tree under `tmp/` and lists it.
fn regenerate(layout: &Layout, layers: &[LayerRef]) -> Result<Vec<FileEntry>> {
    let tmp = layout.tmp_dir();
    let staging = crate::disk::staging_dir(layout, "files-")?;
    let root = RootDir::open(staging.path())?;
    let res = apply_layers(
        &ContentStore::new(layout.clone()),
        &root,
        layers,
        None,
        &mut |_| {},
    )
    .and_then(|_| scan_tree(staging.path()));
    drop(root);
    staging
        .close()
        .map_err(|e| ImageError::io("remove staging directory", &tmp, e))?;
    res
}

impl ImageStore {
    /// The file manifest of an image (name, tag, or id; a full `sha256:` id also finds the
    /// manifest of an image removed while containers still use its disk). Made and stored on
    /// first use for images built before manifests existed.
    pub fn files(&self, name_or_id: &str) -> Result<Vec<FileEntry>> {
        if let Ok(id) = Digest::parse(name_or_id.trim()) {
            if let Some(v) = read_manifest(&self.layout, &id)? {
                return Ok(v);
            }
        }
        let repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        if let Some(v) = read_manifest(&self.layout, &id)? {
            return Ok(v);
        }
        let meta = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))?;
        let diff_ids = &meta.config.rootfs.diff_ids;
        if diff_ids.len() != meta.layers.len() {
            return Err(ImageError::Invalid(format!(
                "image {id} lists {} layers but its config has {} diff ids",
                meta.layers.len(),
                diff_ids.len()
            )));
        }
        let layers: Vec<LayerRef> = meta
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(b, d)| LayerRef {
                blob: b.clone(),
                diff_id: d.clone(),
            })
            .collect();
        let entries = regenerate(&self.layout, &layers)?;
        write_manifest(&self.layout, &id, &entries)?;
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scan_lists_root_and_everything_sorted_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), b"hello").unwrap();
        fs::set_permissions(r.join("a/b/f"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("l")).unwrap();
        fs::write(r.join("a.txt"), b"").unwrap();
        let v = scan_tree(r).unwrap();
        let paths: Vec<&str> = v.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a.txt", "/a/b", "/a/b/f", "/l"]);
        let f = &v[4];
        assert_eq!(f.mode, 0o104755);
        assert_eq!(f.size, 5);
        let l = &v[5];
        assert_eq!(l.mode & 0o170000, 0o120000);
        assert_eq!(l.link, "/etc");
        assert!(v[0].mode & 0o170000 == 0o040000);
    }

    #[test]
    fn manifest_round_trips_gzipped() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        for d in layout.dirs() {
            fs::create_dir_all(d).unwrap();
        }
        let id = Digest::of(b"x");
        assert!(read_manifest(&layout, &id).unwrap().is_none());
        let v = vec![
            FileEntry {
                path: "/".into(),
                mode: 0o040755,
                ..Default::default()
            },
            FileEntry {
                path: "/x".into(),
                mode: 0o100644,
                size: 3,
                mtime: 7,
                capability: "01".into(),
                ..Default::default()
            },
        ];
        write_manifest(&layout, &id, &v).unwrap();
        let raw = fs::read(layout.files(&id)).unwrap();
        assert_eq!(&raw[..2], &[0x1f, 0x8b], "stored gzipped");
        assert_eq!(read_manifest(&layout, &id).unwrap().unwrap(), v);
        remove_manifest(&layout, &id).unwrap();
        assert!(read_manifest(&layout, &id).unwrap().is_none());
    }
}
