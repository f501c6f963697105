//! Listings (`docker diff`, `commit`) and stats (`docker cp`'s HEAD) of a container's files.

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;

use kic_proto::{FileEntry, PathStat};

use crate::root::{clean_container_path, join, RootDir};
use crate::sys::{self, AsFdBorrowed};
use crate::write::not_found;
use crate::{Error, Result};

fn abs(comps: &[Vec<u8>]) -> String {
    if comps.is_empty() {
        return "/".into();
    }
    let mut p = b"/".to_vec();
    p.extend_from_slice(&join(comps));
    String::from_utf8_lossy(&p).into_owned()
}

/// What `docker cp` needs to know about `path` (its `lstat`, or `stat` when `follow`);
/// `Ok(None)` when it does not exist. `name` is the last element of `path` as asked;
/// `link_target` is, for a symlink, the absolute path in the container it resolves to.
pub fn stat(root: &RootDir, path: &str, follow: bool) -> Result<Option<PathStat>> {
    let (_, found) = root.lookup(path, follow)?;
    let Some(found) = found else { return Ok(None) };
    let st = found.stat;
    let link_target = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        let (target, _) = root.lookup(&abs(&found.path), true)?;
        abs(&target)
    } else {
        String::new()
    };
    let asked = clean_container_path(path.as_bytes());
    let name = match asked.last() {
        Some(n) => String::from_utf8_lossy(n).into_owned(),
        None => "/".into(),
    };
    Ok(Some(PathStat {
        name,
        size: st.st_size.max(0) as u64,
        mode: st.st_mode,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        link_target,
    }))
}

/// Every file at and below `path` (a symlink at `path` is listed, not followed), as `lstat`
/// sees it, parents before children and names sorted, handed to `f` one by one. With `one_fs`,
/// directories on another filesystem than `path` are listed but not entered. A missing `path`
/// is [`Error::NotFound`].
pub fn list(
    root: &RootDir,
    path: &str,
    one_fs: bool,
    f: &mut dyn FnMut(FileEntry) -> Result<()>,
) -> Result<()> {
    let (_, found) = root.lookup(path, false)?;
    let found = found.ok_or_else(|| not_found(path))?;
    let dev = found.stat.st_dev;
    let mut l = Lister { one_fs, dev, f };
    l.walk(
        &found.dir.fd,
        found.leaf.as_deref(),
        &found.stat,
        &found.path,
    )
}

struct Lister<'a> {
    one_fs: bool,
    dev: u64,
    f: &'a mut dyn FnMut(FileEntry) -> Result<()>,
}

impl Lister<'_> {
    fn walk(
        &mut self,
        parent: &OwnedFd,
        leaf: Option<&CStr>,
        st: &libc::stat,
        path: &[Vec<u8>],
    ) -> Result<()> {
        let display = abs(path);
        let io_err = |op: &'static str, e: io::Error| Error::io(op, &display, e);
        let open = |flags: libc::c_int| -> io::Result<OwnedFd> {
            sys::openat(parent.as_fd_borrowed(), leaf.unwrap_or(c"."), flags, 0)
        };
        let fmt = st.st_mode & libc::S_IFMT;
        let mut entry = FileEntry {
            path: display.clone(),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            ..FileEntry::default()
        };
        match fmt {
            libc::S_IFCHR | libc::S_IFBLK => entry.rdev = st.st_rdev,
            libc::S_IFLNK => {
                if let Some(l) = leaf {
                    match sys::readlinkat(parent.as_fd_borrowed(), l) {
                        Ok(t) => entry.link = String::from_utf8_lossy(&t).into_owned(),
                        // Gone meanwhile (or a /proc link of a kernel thread).
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                        Err(e) => return Err(io_err("read symlink", e)),
                    }
                }
            }
            libc::S_IFREG => match open(libc::O_RDONLY | libc::O_NONBLOCK) {
                Ok(fd) => {
                    if let Some(cap) = sys::fgetxattr(fd.as_fd_borrowed(), c"security.capability")
                        .map_err(|e| io_err("read capability of", e))?
                    {
                        entry.capability = hex(&cap);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Not readable (a write-only file of /proc or /sys): listed without its
                // capability, which such files do not have.
                Err(_) => {}
            },
            _ => {}
        }
        (self.f)(entry)?;
        if fmt != libc::S_IFDIR || (self.one_fs && st.st_dev != self.dev) {
            return Ok(());
        }
        let fd = match open(libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("open directory", e)),
        };
        let mut children = sys::list_dir(fd.as_fd_borrowed()).map_err(|e| io_err("list", e))?;
        children.sort();
        for child in children {
            let cchild = sys::cstr(&child).map_err(|e| io_err("name in", e))?;
            let cst = match sys::lstatat(fd.as_fd_borrowed(), &cchild) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat entry of", e)),
            };
            let mut cpath = path.to_vec();
            cpath.push(child);
            self.walk(&fd, Some(&cchild), &cst, &cpath)?;
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
