//! Writing OCI image layouts and deterministic layers (used by `kic-mkimage` and tests).
//!
//! Reading layouts is [`crate::ImageStore::import_oci_layout`]'s job.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::digest::{Digest, HashingWriter};
use crate::error::{ImageError, Result};
use crate::spec::{self, Descriptor, ImageConfig, Index, Manifest, Platform};

/// An OCI image layout directory being written.
pub struct LayoutWriter {
    dir: PathBuf,
}

impl LayoutWriter {
    /// Creates `dir` (emptying `blobs/` is the caller's business) with `oci-layout`.
    pub fn create(dir: &Path) -> Result<LayoutWriter> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| ImageError::io("create", &blobs, e))?;
        let p = dir.join("oci-layout");
        fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| ImageError::io("write", &p, e))?;
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a blob and returns its descriptor.
    pub fn add_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let d = Digest::of(data);
        let p = self.dir.join("blobs").join("sha256").join(d.hex());
        fs::write(&p, data).map_err(|e| ImageError::io("write", &p, e))?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest: d,
            size: data.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
            urls: vec![],
        })
    }

    /// Starts a gzip layer; finish it with [`LayerWriter::finish`].
    pub fn layer(&self) -> Result<LayerWriter> {
        let dir = self.dir.join("blobs").join("sha256");
        let tmp = tempfile::Builder::new()
            .prefix(".layer-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::io("create layer in", &dir, e))?;
        let f = tmp
            .reopen()
            .map_err(|e| ImageError::io("open", tmp.path(), e))?;
        let gz = GzEncoder::new(HashingWriter::new(f), Compression::default());
        let mut tar = tar::Builder::new(HashingWriter::new(gz));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(LayerWriter {
            tar,
            tmp,
            dir,
            hardlinks: HashMap::new(),
        })
    }

    /// Writes config and manifest for `layers` and returns the manifest's descriptor
    /// (with its platform filled in).
    pub fn add_image(
        &self,
        config: &ImageConfig,
        layers: Vec<(Descriptor, Digest)>,
    ) -> Result<Descriptor> {
        let mut config = config.clone();
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = layers.iter().map(|(_, d)| d.clone()).collect();
        let cb = serde_json::to_vec(&config).expect("serialisable");
        let cd = self.add_blob(spec::MT_OCI_CONFIG, &cb)?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(spec::MT_OCI_MANIFEST.into()),
            config: cd,
            layers: layers.into_iter().map(|(d, _)| d).collect(),
            annotations: BTreeMap::new(),
        };
        let mut md = self.add_blob(
            spec::MT_OCI_MANIFEST,
            &serde_json::to_vec(&m).expect("serialisable"),
        )?;
        md.platform = Some(Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config.variant.clone(),
            os_version: None,
        });
        Ok(md)
    }

    /// Writes an image index blob over `manifests` and returns its descriptor.
    pub fn add_index(&self, manifests: Vec<Descriptor>) -> Result<Descriptor> {
        let ix = Index {
            schema_version: 2,
            media_type: Some(spec::MT_OCI_INDEX.into()),
            manifests,
            annotations: BTreeMap::new(),
        };
        self.add_blob(
            spec::MT_OCI_INDEX,
            &serde_json::to_vec(&ix).expect("serialisable"),
        )
    }

    /// Writes `index.json` naming `top` with the ref name `tag`.
    pub fn write_index(&self, mut top: Descriptor, tag: &str) -> Result<()> {
        top.annotations
            .insert(spec::ANNOTATION_REF_NAME.into(), tag.into());
        if top.media_type == spec::MT_OCI_INDEX {
            top.platform = None;
        }
        let ix = Index {
            schema_version: 2,
            media_type: Some(spec::MT_OCI_INDEX.into()),
            manifests: vec![top],
            annotations: BTreeMap::new(),
        };
        let p = self.dir.join("index.json");
        fs::write(&p, serde_json::to_vec_pretty(&ix).expect("serialisable"))
            .map_err(|e| ImageError::io("write", &p, e))
    }
}

type Inner = HashingWriter<GzEncoder<HashingWriter<File>>>;

/// A deterministic gzip layer: callers add entries in sorted order with fixed times.
pub struct LayerWriter {
    tar: tar::Builder<Inner>,
    tmp: tempfile::NamedTempFile,
    dir: PathBuf,
    hardlinks: HashMap<(u64, u64), PathBuf>,
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn ioerr(what: &str, p: &Path, e: io::Error) -> ImageError {
    ImageError::Invalid(format!("writing layer entry {what} {}: {e}", p.display()))
}

impl LayerWriter {
    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> Result<()> {
        let mut h = header(tar::EntryType::Directory, mode, uid, gid, mtime);
        let p = format!("{}/", path.trim_end_matches('/'));
        self.tar
            .append_data(&mut h, &p, io::empty())
            .map_err(|e| ioerr("dir", Path::new(path), e))
    }

    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut h = header(tar::EntryType::Regular, mode, uid, gid, mtime);
        h.set_size(data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .map_err(|e| ioerr("file", Path::new(path), e))
    }

    pub fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, mtime);
        self.tar
            .append_link(&mut h, path, target)
            .map_err(|e| ioerr("symlink", Path::new(path), e))
    }

    pub fn hardlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<()> {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0, mtime);
        self.tar
            .append_link(&mut h, path, target)
            .map_err(|e| ioerr("hard link", Path::new(path), e))
    }

    /// Adds a whole host tree (sorted, every mtime set to `mtime`), keeping owners, modes,
    /// hard links, symlinks, devices, fifos and xattrs. Sockets are skipped.
    pub fn tree(&mut self, root: &Path, mtime: u64) -> Result<()> {
        let mut names = vec![];
        collect(root, root, &mut names)?;
        names.sort();
        for rel in names {
            self.host_entry(root, &rel, mtime)?;
        }
        Ok(())
    }

    fn host_entry(&mut self, root: &Path, rel: &Path, mtime: u64) -> Result<()> {
        let p = root.join(rel);
        let m = fs::symlink_metadata(&p).map_err(|e| ImageError::io("stat", &p, e))?;
        let ft = m.file_type();
        let (uid, gid, mode) = (m.uid() as u64, m.gid() as u64, m.mode() & 0o7777);
        let xattrs = read_xattrs(&p);
        if !xattrs.is_empty() {
            let v: Vec<(String, Vec<u8>)> = xattrs
                .into_iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
                .collect();
            self.tar
                .append_pax_extensions(v.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| ioerr("xattrs", rel, e))?;
        }
        let relp = rel.to_path_buf();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, mode, uid, gid, mtime);
            let mut name = relp.into_os_string();
            name.push("/");
            self.tar
                .append_data(&mut h, name, io::empty())
                .map_err(|e| ioerr("dir", rel, e))
        } else if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(|e| ImageError::io("readlink", &p, e))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, mtime);
            self.tar
                .append_link(&mut h, &relp, t)
                .map_err(|e| ioerr("symlink", rel, e))
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = self.hardlinks.get(&(m.dev(), m.ino())) {
                    let mut h = header(tar::EntryType::Link, mode, uid, gid, mtime);
                    return self
                        .tar
                        .append_link(&mut h, &relp, first)
                        .map_err(|e| ioerr("hard link", rel, e));
                }
                self.hardlinks.insert((m.dev(), m.ino()), relp.clone());
            }
            let mut h = header(tar::EntryType::Regular, mode, uid, gid, mtime);
            h.set_size(m.len());
            let f = File::open(&p).map_err(|e| ImageError::io("open", &p, e))?;
            self.tar
                .append_data(&mut h, &relp, f)
                .map_err(|e| ioerr("file", rel, e))
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = header(kind, mode, uid, gid, mtime);
            let rdev = m.rdev();
            h.set_device_major(libc::major(rdev))
                .map_err(|e| ioerr("device", rel, e))?;
            h.set_device_minor(libc::minor(rdev))
                .map_err(|e| ioerr("device", rel, e))?;
            self.tar
                .append_data(&mut h, &relp, io::empty())
                .map_err(|e| ioerr("device", rel, e))
        } else {
            Ok(())
        }
    }

    /// Ends the layer: returns its descriptor (gzip media type) and diff id.
    pub fn finish(self) -> Result<(Descriptor, Digest)> {
        let inner = self
            .tar
            .into_inner()
            .map_err(|e| ImageError::Invalid(format!("finishing layer: {e}")))?;
        let (gz, diff_id, _) = inner.finish();
        let hw = gz
            .finish()
            .map_err(|e| ImageError::Invalid(format!("finishing layer: {e}")))?;
        let (mut f, digest, size) = hw.finish();
        f.flush()
            .map_err(|e| ImageError::io("write", self.tmp.path(), e))?;
        let dest = self.dir.join(digest.hex());
        fs::set_permissions(self.tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(|e| ImageError::io("chmod", self.tmp.path(), e))?;
        self.tmp
            .persist(&dest)
            .map_err(|e| ImageError::io("write", &dest, e.error))?;
        Ok((
            Descriptor {
                media_type: spec::MT_OCI_LAYER_GZIP.into(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
                urls: vec![],
            },
            diff_id,
        ))
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))? {
        let e = e.map_err(|e| ImageError::io("list", dir, e))?;
        let p = e.path();
        out.push(p.strip_prefix(root).expect("under root").to_path_buf());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

/// Extended attributes of a path (not following symlinks).
pub fn read_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(cp) = CString::new(p.as_os_str().as_bytes()) else {
        return vec![];
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe {
        libc::llistxattr(
            cp.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    if n <= 0 {
        return vec![];
    }
    names.truncate(n as usize);
    let mut out = vec![];
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else { continue };
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let k = unsafe {
            libc::lgetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                val.as_mut_ptr() as *mut libc::c_void,
                val.len(),
            )
        };
        if k >= 0 {
            val.truncate(k as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), val));
        }
    }
    out.sort();
    out
}
