//! Applying a tar layer (or a `docker cp` archive) onto a target directory, safely: the
//! applier lives in `kic-archive` (shared with the guest); these wrappers give its errors the
//! image store's type.

use std::io::Read;

pub use kic_archive::{clean_name, ApplyOptions, ApplyStats, Components, ResolvedDir, RootDir};

use crate::error::Result;

/// Applies the tar stream `reader` onto `root` (see [`kic_archive::apply_tar`]).
pub fn apply_tar<R: Read>(root: &RootDir, reader: R, opts: ApplyOptions) -> Result<ApplyStats> {
    Ok(kic_archive::apply_tar(root, reader, opts)?)
}

/// Applies the tar stream under `dest`, a directory inside the root (see
/// [`kic_archive::apply_tar_at`]).
pub fn apply_tar_at<R: Read>(
    root: &RootDir,
    dest: &str,
    reader: R,
    opts: ApplyOptions,
) -> Result<ApplyStats> {
    Ok(kic_archive::apply_tar_at(root, dest, reader, opts)?)
}
