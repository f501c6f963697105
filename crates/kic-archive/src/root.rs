//! A directory handle that everything inside a target is reached through.
//!
//! [`RootDir`] holds an `O_PATH` fd on the target. Paths inside it are resolved one component at
//! a time with the guest's semantics: an absolute symlink means "from the root of the target"
//! (`/var/run -> /run`, usrmerge `lib -> usr/lib`), and a relative symlink whose `..` would climb
//! above the root is refused as unsafe rather than silently clamped. Every open goes through
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` on the root fd, so even a path changed
//! under our feet cannot leave the target.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::{self, AsFdBorrowed};
use crate::{Error, Result};

/// Most symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// A cleaned, root-relative path: components with no `.`, `..` or empty parts.
pub type Components = Vec<Vec<u8>>;

/// Joins components into a root-relative path (`.` for the root itself).
pub fn join(c: &[Vec<u8>]) -> Vec<u8> {
    if c.is_empty() {
        return b".".to_vec();
    }
    c.join(&b'/')
}

/// Cleans an archive name: refuses absolute names and names that climb out with `..`;
/// drops `.` and empty components. `a/../b` is `b`.
pub fn clean_name(raw: &[u8], entry: &str, what: &str) -> Result<Components> {
    if raw.first() == Some(&b'/') {
        return Err(Error::unsafe_entry(
            entry,
            format!("{what} is an absolute path; archive entries must be relative to the target"),
        ));
    }
    if raw.contains(&0) {
        return Err(Error::unsafe_entry(
            entry,
            format!("{what} contains a NUL byte"),
        ));
    }
    let mut out: Components = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(Error::unsafe_entry(
                        entry,
                        format!("{what} climbs out of the target with '..'"),
                    ));
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// A target directory; all access to its contents goes through this handle.
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Cleans an absolute path in the container lexically, as the kernel would inside a chroot:
/// `..` at the root stays there, `.` and empty parts go.
pub fn clean_container_path(path: &[u8]) -> Components {
    let mut out: Components = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

/// A path found inside the root by [`RootDir::lookup`].
pub struct Found {
    /// The directory holding it (for the root itself: the root).
    pub dir: ResolvedDir,
    /// Its name in `dir`; `None` for the root itself.
    pub leaf: Option<CString>,
    /// Its real (symlink-free) path in the root.
    pub path: Components,
    /// Its `lstat`.
    pub stat: libc::stat,
}

/// A directory found inside the root: its fd and its real (symlink-free) path.
pub struct ResolvedDir {
    pub fd: OwnedFd,
    pub path: Components,
}

impl RootDir {
    /// Opens `path` as the root of all later operations.
    pub fn open(path: &Path) -> Result<RootDir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid(format!("bad path {}", path.display())))?;
        // SAFETY: NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::io(
                "open target directory",
                path,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh fd we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path, for messages only (never used to reach files).
    pub fn display_path(&self, rel: &[Vec<u8>]) -> PathBuf {
        let mut p = self.path.clone();
        for c in rel {
            p.push(String::from_utf8_lossy(c).as_ref());
        }
        p
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A root for a directory found inside this one (`docker cp`'s destination): every later
    /// operation is confined to it. Messages name it by this root's display path.
    pub fn subdir(&self, dir: &ResolvedDir) -> Result<RootDir> {
        let fd = self
            .open_in_root(&dir.path, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| Error::io("open directory", self.display_path(&dir.path), e))?;
        Ok(RootDir {
            fd,
            path: self.display_path(&dir.path),
        })
    }

    /// Finds `path` (absolute in the container; a relative one means the same) as a process
    /// chrooted here would: symlinks in its parents followed (absolute ones from this root, `..`
    /// never above it), the last component followed too when `follow`. `Ok(None)` when it does
    /// not exist; the second value is the real path that was looked for last (for a dangling
    /// symlink: where it points).
    pub fn lookup(&self, path: &str, follow: bool) -> Result<(Components, Option<Found>)> {
        let mut want = clean_container_path(path.as_bytes());
        let mut links = 0usize;
        loop {
            let Some((leaf, parent)) = want.split_last() else {
                let fd = self
                    .open_in_root(&[], libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(|e| Error::io("open", self.display_path(&[]), e))?;
                let stat = sys::lstatat(fd.as_fd_borrowed(), c"")
                    .map_err(|e| Error::io("stat", self.display_path(&[]), e))?;
                let found = Found {
                    dir: ResolvedDir {
                        fd,
                        path: Vec::new(),
                    },
                    leaf: None,
                    path: Vec::new(),
                    stat,
                };
                return Ok((want, Some(found)));
            };
            let Some(dir) = self.resolve_dir_as(parent, false, path, true)? else {
                return Ok((want, None));
            };
            let cleaf =
                sys::cstr(leaf).map_err(|e| Error::io("look up", self.display_path(&want), e))?;
            let mut real = dir.path.clone();
            real.push(leaf.clone());
            let stat = match sys::lstatat(dir.fd.as_fd_borrowed(), &cleaf) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((real, None)),
                Err(e) => return Err(Error::io("stat", self.display_path(&real), e)),
            };
            if follow && sys::is_symlink(&stat) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::Invalid(format!(
                        "{path}: too many levels of symbolic links"
                    )));
                }
                let target = sys::readlinkat(dir.fd.as_fd_borrowed(), &cleaf)
                    .map_err(|e| Error::io("read symlink", self.display_path(&real), e))?;
                let mut next = if target.first() == Some(&b'/') {
                    Vec::new()
                } else {
                    dir.path.clone()
                };
                next.push(target);
                want = clean_container_path(&join(&next));
                continue;
            }
            return Ok((
                real.clone(),
                Some(Found {
                    dir,
                    leaf: Some(cleaf),
                    path: real,
                    stat,
                }),
            ));
        }
    }

    /// Opens a root-relative, already resolved path with `openat2(RESOLVE_IN_ROOT)`.
    pub fn open_in_root(&self, rel: &[Vec<u8>], flags: libc::c_int) -> io::Result<OwnedFd> {
        let p = sys::cstr(&join(rel))?;
        sys::openat2(
            self.fd.as_fd(),
            &p,
            flags | libc::O_NOFOLLOW,
            sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
        )
    }

    /// Resolves the directory `comps` (already cleaned) inside the root, following symlinks the
    /// way the guest would and refusing any that would lead outside. With `create`, missing
    /// directories are made (0755, owned by the caller). Returns `Ok(None)` if a component is
    /// missing and `create` is false.
    pub fn resolve_dir(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        entry: &str,
    ) -> Result<Option<ResolvedDir>> {
        self.resolve_dir_as(comps, create, entry, false)
    }

    /// [`RootDir::resolve_dir`] with the kernel's semantics inside a chroot when `container`:
    /// `..` at the root stays at the root, and a component that is not a directory means the
    /// path does not exist (`Ok(None)`).
    fn resolve_dir_as(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        entry: &str,
        container: bool,
    ) -> Result<Option<ResolvedDir>> {
        let mut pending: VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut real: Components = Vec::new();
        let mut links = 0usize;
        let open_dir = |real: &Components| -> Result<OwnedFd> {
            self.open_in_root(real, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| Error::io("open directory", self.display_path(real), e))
        };
        let mut cur = open_dir(&real)?;
        while let Some(c) = pending.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                // Only symlink targets bring `..` here: entry names were cleaned already.
                if real.pop().is_none() && !container {
                    return Err(Error::unsafe_entry(
                        entry,
                        "its path is resolved through a symlink that points outside the target",
                    ));
                }
                cur = open_dir(&real)?;
                continue;
            }
            let name =
                sys::cstr(&c).map_err(|e| Error::io("resolve", self.display_path(&real), e))?;
            match sys::lstatat(cur.as_fd_borrowed(), &name) {
                Ok(st) if sys::is_dir(&st) => {
                    real.push(c);
                    cur = open_dir(&real)?;
                }
                Ok(st) if sys::is_symlink(&st) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Error::unsafe_entry(
                            entry,
                            "too many levels of symbolic links in its path",
                        ));
                    }
                    let target = sys::readlinkat(cur.as_fd_borrowed(), &name)
                        .map_err(|e| Error::io("read symlink", self.display_path(&real), e))?;
                    if target.first() == Some(&b'/') {
                        // Absolute: relative to the target's root, as the guest sees it.
                        real.clear();
                        cur = open_dir(&real)?;
                    }
                    for t in target.split(|b| *b == b'/').rev() {
                        if !t.is_empty() {
                            pending.push_front(t.to_vec());
                        }
                    }
                }
                Ok(_) if container => return Ok(None),
                Ok(_) => {
                    let mut p = real.clone();
                    p.push(c);
                    return Err(Error::Invalid(format!(
                        "cannot extract {entry:?}: /{} is not a directory",
                        String::from_utf8_lossy(&join(&p))
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match sys::mkdirat(cur.as_fd_borrowed(), &name, 0o755) {
                        Ok(()) => {
                            // Implied parents are 0755 whatever the process umask is.
                            let fd = sys::openat(
                                cur.as_fd_borrowed(),
                                &name,
                                libc::O_RDONLY | libc::O_DIRECTORY,
                                0,
                            )
                            .and_then(|fd| sys::fchmod(fd.as_fd_borrowed(), 0o755));
                            if let Err(e) = fd {
                                let mut p = real.clone();
                                p.push(c);
                                return Err(Error::io(
                                    "chmod new directory",
                                    self.display_path(&p),
                                    e,
                                ));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            let mut p = real.clone();
                            p.push(c);
                            return Err(Error::io("create directory", self.display_path(&p), e));
                        }
                    }
                    // Re-examine: it is a directory now (or something raced; the loop decides).
                    pending.push_front(c);
                }
                Err(e) => {
                    let mut p = real.clone();
                    p.push(c);
                    return Err(Error::io("stat", self.display_path(&p), e));
                }
            }
        }
        Ok(Some(ResolvedDir {
            fd: cur,
            path: real,
        }))
    }
}
