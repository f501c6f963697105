//! # kic-archive: tar archives in and out of container filesystems, safely
//!
//! **Owns** the one code path where untrusted tar archives become files ([`apply_tar`],
//! [`apply_tar_at`], [`put_archive`]) and the one that turns a container's files into archives,
//! listings and stats ([`write_archive`], [`list`], [`stat`]).
//!
//! **Used by** `kic-image` on the host (image layers onto a staging directory) and `kic-tether`
//! in the guest (`docker cp`, `diff`, `commit`, `export`). It stays small: the tether is a
//! static binary, so no async runtime and nothing heavy here; callers bridge to their I/O.
//!
//! Everything inside a target goes through [`RootDir`]: paths are resolved one component at a
//! time with the container's semantics (absolute symlinks mean "from the root"), never out of
//! it.

mod apply;
mod error;
mod list;
mod put;
mod root;
mod sys;
mod write;

pub use apply::{apply_tar, apply_tar_at, ApplyOptions, ApplyStats};
pub use error::{Error, Result};
pub use list::{list, stat};
pub use put::put_archive;
pub use root::{clean_container_path, clean_name, join, Components, Found, ResolvedDir, RootDir};
pub use write::write_archive;

#[cfg(test)]
mod guest_tests;
