//! Applying a tar layer (or a `docker cp` archive) onto a target directory, safely.
//!
//! This is the only code in KIC that turns untrusted archives into files. It never writes outside
//! its target, whatever the archive says:
//!
//! * entry names and hard-link targets are cleaned; absolute names and names that climb out with
//!   `..` are refused with [`Error::Unsafe`] naming the entry;
//! * parents are resolved inside the target by [`RootDir::resolve_dir`]: absolute symlinks mean
//!   "from the target's root" (as the guest sees them), relative ones that would climb above it
//!   are refused;
//! * the entry itself is created with `*at()` calls on the parent's fd and never followed if it
//!   is a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `linkat` without `AT_SYMLINK_FOLLOW`).
//!
//! Layer semantics (with [`ApplyOptions::whiteouts`]): `.wh.<name>` deletes `<name>` from lower
//! layers; `.wh..wh..opq` empties its directory of lower-layer content but keeps what the same
//! layer adds, whichever order the entries come in. Ownership (numeric), modes with
//! setuid/setgid/sticky, mtimes, device nodes, fifos, hard links and xattrs from PAX
//! `SCHILY.xattr.*` records (file capabilities among them) are applied.
//!
//! On error the target may hold part of the layer; callers apply into a staging directory they
//! delete on failure. Nothing outside the target is touched in any case.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, IntoRawFd};

use crate::root::{clean_name, join, Components, RootDir};
use crate::sys::{self, AsFdBorrowed};
use crate::{Error, Result};

/// What to honour while applying.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Interpret `.wh.` whiteout entries (image layers); off for plain archives (`docker cp`).
    pub whiteouts: bool,
    /// Set numeric owners from the archive (needs root); off to keep the caller's ids.
    pub preserve_owner: bool,
    /// Refuse archives whose regular files hold more than this many bytes (decompression
    /// bombs must not fill the datastore).
    pub max_bytes: Option<u64>,
    /// Owner (uid, gid) given to every entry written, whatever the archive says (`docker cp`
    /// into a container as its user); overrides `preserve_owner`.
    pub owner: Option<(u32, u32)>,
    /// Refuse to replace an existing directory with a non-directory or the reverse (Docker's
    /// `NoOverwriteDirNonDir`), with Docker's message.
    pub no_overwrite_dir_non_dir: bool,
    /// Apply the metadata of a `./` entry to the target directory itself (image layers); off
    /// for `docker cp`, which leaves the destination directory as it is.
    pub root_entry: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteouts: true,
            preserve_owner: true,
            max_bytes: None,
            owner: None,
            no_overwrite_dir_non_dir: false,
            root_entry: true,
        }
    }
}

/// Counts from one application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

struct Applier<'a> {
    root: &'a RootDir,
    /// Real path of the directory entries are relative to (empty: the root).
    base: Components,
    opts: ApplyOptions,
    /// Real paths this layer created, with all their ancestors (for opaque whiteouts).
    added: HashSet<Vec<u8>>,
    /// Opaque directories seen, pruned at the end against `added`.
    opaque: Vec<Components>,
    /// Directory mtimes, set last since adding entries changes them.
    dir_mtimes: BTreeMap<Components, i64>,
    stats: ApplyStats,
}

/// Applies the tar stream `reader` onto `root`. The reader is left wherever the tar ended.
pub fn apply_tar<R: Read>(root: &RootDir, reader: R, opts: ApplyOptions) -> Result<ApplyStats> {
    apply_tar_at(root, "", reader, opts)
}

/// Applies the tar stream under `dest`, a directory inside the root (`docker cp`'s destination,
/// absolute or relative: both mean "inside the root"). `dest` is resolved as the guest would
/// (symlinks followed, never out of the root) and must exist; entries are confined to the root.
pub fn apply_tar_at<R: Read>(
    root: &RootDir,
    dest: &str,
    reader: R,
    opts: ApplyOptions,
) -> Result<ApplyStats> {
    let want = clean_name(
        dest.trim_start_matches('/').as_bytes(),
        dest,
        "the destination",
    )?;
    let base = root
        .resolve_dir(&want, false, dest)?
        .ok_or_else(|| Error::Invalid(format!("destination directory {dest:?} does not exist")))?
        .path;
    let mut archive = tar::Archive::new(reader);
    let mut ap = Applier {
        root,
        base,
        opts,
        added: HashSet::new(),
        opaque: Vec::new(),
        dir_mtimes: BTreeMap::new(),
        stats: ApplyStats::default(),
    };
    let entries = archive
        .entries()
        .map_err(|e| Error::Invalid(format!("layer is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Invalid(format!("corrupt tar archive: {e}")))?;
        ap.entry(&mut entry)?;
    }
    ap.finish()?;
    Ok(ap.stats)
}

/// Fields of a tar entry the applier needs, PAX records included.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
    let h = entry.header();
    let bad = |e: io::Error| Error::Invalid(format!("bad tar header for {name:?}: {e}"));
    let mut m = Meta {
        mode: h.mode().map_err(bad)? & 0o7777,
        // Empty numeric fields (seen in hand-made tars) mean 0, as in Go's archive/tar.
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mtime: h.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions().map_err(bad)? {
        for ext in exts {
            let ext = ext.map_err(bad)?;
            let Ok(key) = ext.key() else { continue };
            let val = ext.value_bytes();
            let num = || {
                std::str::from_utf8(val)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
            };
            if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                m.xattrs.push((x.as_bytes().to_vec(), val.to_vec()));
            } else if key == "uid" {
                m.uid = num().unwrap_or(m.uid as i64) as u32;
            } else if key == "gid" {
                m.gid = num().unwrap_or(m.gid as i64) as u32;
            } else if key == "mtime" {
                m.mtime = num().unwrap_or(m.mtime);
            }
        }
    }
    Ok(m)
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let mut comps = self.base.clone();
        comps.extend(clean_name(&raw, &name, "its name")?);
        let kind = entry.header().entry_type();
        self.stats.entries += 1;

        let (parent, leaf) = match comps.split_last() {
            Some((leaf, parent)) => (parent.to_vec(), Some(leaf.clone())),
            None => (Vec::new(), None),
        };

        if self.opts.whiteouts {
            if let Some(leaf) = &leaf {
                if leaf.starts_with(WHITEOUT_PREFIX) {
                    return self.whiteout(&parent, leaf, &name);
                }
            }
        }

        let meta = read_meta(entry, &name)?;
        let Some(leaf) = leaf else {
            // "./": the root directory itself.
            if !kind.is_dir() {
                return Err(Error::unsafe_entry(
                    &name,
                    "only a directory may name the target root",
                ));
            }
            if !self.opts.root_entry {
                return Ok(());
            }
            return self.root_dir_meta(&meta, &name);
        };

        let dir = self
            .root
            .resolve_dir(&parent, true, &name)?
            .expect("resolve_dir with create returns a directory");
        let mut real = dir.path.clone();
        real.push(leaf.clone());
        self.mark_added(&real);
        let pfd = dir.fd.as_fd_borrowed();
        let cleaf = sys::cstr(&leaf).map_err(|e| self.io("name", &real, e))?;

        // What is there now decides whether we replace it.
        let existing = match sys::lstatat(pfd, &cleaf) {
            Ok(st) => Some(st),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io("stat", &real, e)),
        };
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(sys::is_dir);
        if self.opts.no_overwrite_dir_non_dir {
            if let Some(st) = &existing {
                let (path, dest) = (
                    self.root.display_path(&real),
                    self.root.display_path(&self.base),
                );
                if sys::is_dir(st) && !kind.is_dir() {
                    return Err(Error::Invalid(format!(
                        "cannot overwrite directory {:?} with non-directory {:?}",
                        path.display().to_string(),
                        dest.display().to_string()
                    )));
                }
                if !sys::is_dir(st) && kind.is_dir() {
                    return Err(Error::Invalid(format!(
                        "cannot overwrite non-directory {:?} with directory {:?}",
                        path.display().to_string(),
                        dest.display().to_string()
                    )));
                }
            }
        }
        if existing.is_some() && !keep_dir {
            if kind.is_hard_link() {
                // Linking a name onto itself (seen in some layers) is a no-op.
                let target = self.link_target(entry, &name)?;
                if target == comps {
                    return Ok(());
                }
            }
            sys::remove_all_at(pfd, &cleaf).map_err(|e| self.io("replace", &real, e))?;
        }

        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                let fd = sys::openat(
                    pfd,
                    &cleaf,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(|e| self.io("create file", &real, e))?;
                // SAFETY: a fresh fd handed over to File.
                let mut file = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
                let room = self
                    .opts
                    .max_bytes
                    .map_or(u64::MAX, |m| m.saturating_sub(self.stats.bytes));
                let n = io::copy(&mut entry.take(room.saturating_add(1)), &mut file)
                    .map_err(|e| self.io("write file", &real, e))?;
                if n > room {
                    return Err(Error::Invalid(format!(
                        "archive unpacks to more than {} bytes (at {name:?}); use a larger disk size",
                        self.opts.max_bytes.unwrap_or(0)
                    )));
                }
                self.stats.bytes += n;
                self.fd_meta(&file, &meta, &real)?;
                sys::set_mtime_at(file.as_fd_borrowed(), c"", meta.mtime)
                    .map_err(|e| self.io("set mtime", &real, e))?;
            }
            T::Directory => {
                if !keep_dir {
                    sys::mkdirat(pfd, &cleaf, 0o700)
                        .map_err(|e| self.io("create directory", &real, e))?;
                }
                let fd = sys::openat(pfd, &cleaf, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| self.io("open directory", &real, e))?;
                // SAFETY: a fresh fd handed over to File.
                let file = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
                self.fd_meta(&file, &meta, &real)?;
                self.dir_mtimes.insert(real.clone(), meta.mtime);
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::Invalid(format!("symlink {name:?} has no target")))?
                    .into_owned();
                if target.is_empty() {
                    return Err(Error::Invalid(format!(
                        "symlink {name:?} has an empty target"
                    )));
                }
                let ctarget = CString::new(target).map_err(|_| {
                    Error::unsafe_entry(&name, "symlink target contains a NUL byte")
                })?;
                sys::symlinkat(&ctarget, pfd, &cleaf)
                    .map_err(|e| self.io("create symlink", &real, e))?;
                if let Some((uid, gid)) = self.owner(&meta) {
                    sys::lchownat(pfd, &cleaf, uid, gid).map_err(|e| self.io("chown", &real, e))?;
                }
                sys::set_mtime_at(pfd, &cleaf, meta.mtime)
                    .map_err(|e| self.io("set mtime", &real, e))?;
            }
            T::Link => {
                let target = self.link_target(entry, &name)?;
                let Some((tleaf, tparent)) = target.split_last() else {
                    return Err(Error::unsafe_entry(&name, "hard link to the target root"));
                };
                let tdir = self
                    .root
                    .resolve_dir(tparent, false, &name)?
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "hard link {name:?}: target /{} does not exist",
                            String::from_utf8_lossy(&join(&target))
                        ))
                    })?;
                let ctleaf = sys::cstr(tleaf).map_err(|e| self.io("name", &target, e))?;
                match sys::lstatat(tdir.fd.as_fd_borrowed(), &ctleaf) {
                    Ok(st) if sys::is_dir(&st) => {
                        return Err(Error::Invalid(format!(
                            "hard link {name:?}: target is a directory"
                        )));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(Error::Invalid(format!(
                            "hard link {name:?}: target /{} does not exist",
                            String::from_utf8_lossy(&join(&target))
                        )))
                    }
                    Err(e) => return Err(self.io("stat hard-link target", &target, e)),
                }
                sys::linkat(tdir.fd.as_fd_borrowed(), &ctleaf, pfd, &cleaf)
                    .map_err(|e| self.io("create hard link", &real, e))?;
            }
            T::Char | T::Block | T::Fifo => {
                let h = entry.header();
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                sys::mknodat(pfd, &cleaf, fmt | (meta.mode & 0o777), dev)
                    .map_err(|e| self.io("create device node", &real, e))?;
                if let Some((uid, gid)) = self.owner(&meta) {
                    sys::lchownat(pfd, &cleaf, uid, gid).map_err(|e| self.io("chown", &real, e))?;
                }
                sys::fchmodat(pfd, &cleaf, meta.mode).map_err(|e| self.io("chmod", &real, e))?;
                sys::set_mtime_at(pfd, &cleaf, meta.mtime)
                    .map_err(|e| self.io("set mtime", &real, e))?;
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unhandled tar entry type {:?} for {name:?}",
                    other.as_byte() as char
                )));
            }
        }
        Ok(())
    }

    fn link_target<R: Read>(&self, entry: &tar::Entry<'_, R>, name: &str) -> Result<Components> {
        let t = entry
            .link_name_bytes()
            .ok_or_else(|| Error::Invalid(format!("hard link {name:?} has no target")))?;
        let mut c = self.base.clone();
        c.extend(clean_name(&t, name, "its hard-link target")?);
        if c.is_empty() {
            return Err(Error::unsafe_entry(name, "hard link to the target root"));
        }
        Ok(c)
    }

    /// Who an entry written now belongs to; `None` leaves it to the caller's ids.
    fn owner(&self, meta: &Meta) -> Option<(u32, u32)> {
        self.opts
            .owner
            .or(self.opts.preserve_owner.then_some((meta.uid, meta.gid)))
    }

    fn io(&self, op: &'static str, rel: &[Vec<u8>], e: io::Error) -> Error {
        Error::io(op, self.root.display_path(rel), e)
    }

    fn mark_added(&mut self, real: &[Vec<u8>]) {
        for i in 1..=real.len() {
            self.added.insert(join(&real[..i]));
        }
    }

    /// Owner, mode and xattrs on an open fd (order matters: chown clears setuid bits).
    fn fd_meta(&self, file: &File, meta: &Meta, real: &[Vec<u8>]) -> Result<()> {
        let fd = file.as_fd_borrowed();
        if let Some((uid, gid)) = self.owner(meta) {
            sys::fchown(fd, uid, gid).map_err(|e| self.io("chown", real, e))?;
        }
        sys::fchmod(fd, meta.mode).map_err(|e| self.io("chmod", real, e))?;
        for (k, v) in &meta.xattrs {
            let ck = sys::cstr(k).map_err(|e| self.io("xattr name", real, e))?;
            if let Err(e) = sys::fsetxattr(fd, &ck, v) {
                // Namespaces the host refuses (e.g. trusted.* unprivileged) are skipped.
                if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::ENOTSUP)
                {
                    tracing::warn!(xattr = %String::from_utf8_lossy(k), path = %self.root.display_path(real).display(), "skipping xattr: {e}");
                    continue;
                }
                return Err(self.io("set xattr", real, e));
            }
        }
        Ok(())
    }

    fn root_dir_meta(&mut self, meta: &Meta, name: &str) -> Result<()> {
        let fd = self
            .root
            .open_in_root(&[], libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| self.io("open target root", &[], e))?;
        // SAFETY: a fresh fd handed over to File.
        let file = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
        let _ = name;
        self.fd_meta(&file, meta, &[])?;
        self.dir_mtimes.insert(Vec::new(), meta.mtime);
        Ok(())
    }

    fn whiteout(&mut self, parent: &[Vec<u8>], leaf: &[u8], name: &str) -> Result<()> {
        self.stats.whiteouts += 1;
        if leaf == WHITEOUT_OPAQUE {
            let dir = self.root.resolve_dir(parent, true, name)?.expect("created");
            self.mark_added(&dir.path);
            self.opaque.push(dir.path);
            return Ok(());
        }
        if leaf.starts_with(WHITEOUT_META_PREFIX) {
            // Other aufs metadata (.wh..wh.plnk, ...): nothing to do.
            return Ok(());
        }
        let victim = &leaf[WHITEOUT_PREFIX.len()..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(Error::unsafe_entry(
                name,
                "whiteout names no entry inside its directory (empty, '.' or '..')",
            ));
        }
        let Some(dir) = self.root.resolve_dir(parent, false, name)? else {
            return Ok(());
        };
        let cv = sys::cstr(victim).map_err(|e| self.io("name", parent, e))?;
        let mut real = dir.path.clone();
        real.push(victim.to_vec());
        sys::remove_all_at(dir.fd.as_fd_borrowed(), &cv)
            .map_err(|e| self.io("remove whited-out entry", &real, e))
    }

    /// Empties opaque directories of everything this layer did not add, then sets directory
    /// mtimes.
    fn finish(&mut self) -> Result<()> {
        for dir in std::mem::take(&mut self.opaque) {
            let fd = self
                .root
                .open_in_root(&dir, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| self.io("open opaque directory", &dir, e))?;
            self.prune(&fd, &dir)?;
        }
        for (dir, mtime) in std::mem::take(&mut self.dir_mtimes) {
            match self
                .root
                .open_in_root(&dir, libc::O_RDONLY | libc::O_DIRECTORY)
            {
                Ok(fd) => sys::set_mtime_at(fd.as_fd_borrowed(), c"", mtime)
                    .map_err(|e| self.io("set mtime", &dir, e))?,
                // Removed or replaced later in the same layer.
                Err(_) => continue,
            }
        }
        Ok(())
    }

    fn prune(&self, fd: &std::os::fd::OwnedFd, dir: &[Vec<u8>]) -> Result<()> {
        let names = sys::list_dir(fd.as_fd_borrowed()).map_err(|e| self.io("list", dir, e))?;
        for n in names {
            let mut p = dir.to_vec();
            p.push(n.clone());
            let cn = sys::cstr(&n).map_err(|e| self.io("name", &p, e))?;
            if self.added.contains(&join(&p)) {
                let st =
                    sys::lstatat(fd.as_fd_borrowed(), &cn).map_err(|e| self.io("stat", &p, e))?;
                if sys::is_dir(&st) {
                    let sub = sys::openat(
                        fd.as_fd_borrowed(),
                        &cn,
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )
                    .map_err(|e| self.io("open", &p, e))?;
                    self.prune(&sub, &p)?;
                }
            } else {
                sys::remove_all_at(fd.as_fd_borrowed(), &cn)
                    .map_err(|e| self.io("remove (opaque directory)", &p, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
