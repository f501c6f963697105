//! `docker cp` into a container: an archive unpacked into an existing directory, confined to it.

use std::io::Read;

use kic_proto::PutSpec;

use crate::apply::{apply_tar, ApplyOptions, ApplyStats};
use crate::root::{ResolvedDir, RootDir};
use crate::sys::{self, AsFdBorrowed};
use crate::write::not_found;
use crate::{Error, Result};

/// Unpacks the tar `reader` into the directory `spec.path` of `root`.
///
/// The destination is found as the container sees it (symlinks followed, never out of `root`)
/// and must be an existing directory ([`Error::NotFound`] when missing, [`Error::Invalid`] when
/// not a directory or on `/proc` or `/sys`). The archive is then applied with the destination as
/// its root: absolute names, `..` escapes, and symlinks or hard links leading out are refused
/// ([`Error::Unsafe`]) or stay inside it; nothing outside the destination changes. Whiteout
/// names are ordinary names here, and a `./` entry leaves the destination as it is.
pub fn put_archive<R: Read>(root: &RootDir, spec: &PutSpec, reader: R) -> Result<ApplyStats> {
    let (_, found) = root.lookup(&spec.path, true)?;
    let found = found.ok_or_else(|| not_found(&spec.path))?;
    if found.stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::Invalid(format!(
            "extraction point {} is not a directory",
            spec.path
        )));
    }
    let dir = ResolvedDir {
        fd: root
            .open_in_root(&found.path, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| Error::io("open directory", root.display_path(&found.path), e))?,
        path: found.path,
    };
    let fs = sys::fs_type(dir.fd.as_fd_borrowed())
        .map_err(|e| Error::io("statfs", root.display_path(&dir.path), e))?;
    if fs == sys::PROC_SUPER_MAGIC || fs == sys::SYSFS_MAGIC {
        return Err(Error::Invalid(format!(
            "cannot copy into {}: it is on the kernel's /proc or /sys filesystem, not the container's files",
            spec.path
        )));
    }
    let target = root.subdir(&dir)?;
    let opts = ApplyOptions {
        whiteouts: false,
        preserve_owner: true,
        max_bytes: None,
        owner: spec.owner,
        no_overwrite_dir_non_dir: spec.no_overwrite_dir_non_dir,
        root_entry: false,
    };
    apply_tar(&target, reader, opts)
}
