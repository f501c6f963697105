//! Writing a container's files as a tar stream (`docker cp` out, `export`, `commit`).
//!
//! Nothing is ever followed but a source asked to be (`ArchiveSource::follow`): symlinks below a
//! source are archived as symlinks, and every file is opened with `O_NOFOLLOW` relative to its
//! directory's fd. Owners are numeric; modes keep setuid/setgid/sticky; a file seen twice (same
//! device and inode) becomes a hard link to the first name; extended attributes of files and
//! directories go in PAX `SCHILY.xattr.*` records.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kic_proto::{ArchiveSource, ArchiveSpec};

use crate::root::{clean_container_path, join, Found, RootDir};
use crate::sys::{self, AsFdBorrowed};
use crate::{Error, Result};

/// Writes the tar of `spec` into `out`, then flushes it. A source that does not exist is
/// [`Error::NotFound`]; the stream then holds whatever came before (callers report the failure
/// instead of ending the stream as complete).
pub fn write_archive<W: Write>(root: &RootDir, spec: &ArchiveSpec, out: W) -> Result<()> {
    let mut w = Writer {
        root,
        b: tar::Builder::new(out),
        links: HashMap::new(),
        one_fs: spec.one_fs,
    };
    for src in &spec.sources {
        w.source(src)?;
    }
    for path in &spec.whiteouts {
        w.whiteout(path)?;
    }
    let mut out =
        w.b.into_inner()
            .map_err(|e| Error::io("write archive", "<stream>", e))?;
    out.flush()
        .map_err(|e| Error::io("write archive", "<stream>", e))
}

/// The message for a path that does not exist in the container (Docker's wording, without the
/// container's name, which the caller adds when it has it).
pub(crate) fn not_found(path: &str) -> Error {
    Error::NotFound(format!("Could not find the file {path} in container"))
}

struct Writer<'a, W: Write> {
    root: &'a RootDir,
    b: tar::Builder<W>,
    /// First name of every multiply-linked file archived, by (device, inode).
    links: HashMap<(u64, u64), Vec<u8>>,
    one_fs: bool,
}

/// Reads exactly `left` bytes: what the file has, then zeros if it shrank meanwhile (a tar
/// entry must be as long as its header says).
struct Exact<R> {
    inner: R,
    left: u64,
    eof: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = if self.eof {
            buf[..want].fill(0);
            want
        } else {
            match self.inner.read(&mut buf[..want])? {
                0 => {
                    self.eof = true;
                    buf[..want].fill(0);
                    want
                }
                n => n,
            }
        };
        self.left -= n as u64;
        Ok(n)
    }
}

fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

impl<W: Write> Writer<'_, W> {
    fn source(&mut self, src: &ArchiveSource) -> Result<()> {
        let (_, found) = self.root.lookup(&src.path, src.follow)?;
        let found = found.ok_or_else(|| not_found(&src.path))?;
        let mut name = join(&clean_container_path(src.name.as_bytes()));
        // `.` (`docker cp c:/dir/.`) is the contents at the top like an empty name: the tar
        // crate writes `./a` as `a` anyway, and tar readers take them as the same.
        if name == b"." {
            name.clear();
        }
        if name.is_empty() && kind(&found.stat) != libc::S_IFDIR {
            // Contents at the top make sense for a directory only; a file keeps its name.
            name = found.path.last().cloned().unwrap_or_default();
        }
        let dev = found.stat.st_dev;
        let Found {
            dir, leaf, stat, ..
        } = found;
        self.entry(&dir.fd, leaf.as_deref(), &stat, &name, src.recursive, dev)
    }

    fn io(&self, op: &'static str, name: &[u8], e: io::Error) -> Error {
        Error::io(op, Path::new(OsStr::from_bytes(name)), e)
    }

    fn header(st: &libc::stat, t: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        // Type bits included, as Go's archive/tar (dockerd) writes them; readers mask them.
        h.set_mode(st.st_mode & 0o177777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        h.set_mtime(st.st_mtime.max(0) as u64);
        h.set_size(0);
        // Numeric fields are written as numbers even when unused (strict readers want that).
        let _ = h.set_device_major(0);
        let _ = h.set_device_minor(0);
        h
    }

    fn xattrs(&mut self, fd: &OwnedFd, name: &[u8]) -> Result<()> {
        let names =
            sys::flistxattr(fd.as_fd_borrowed()).map_err(|e| self.io("list xattrs of", name, e))?;
        let mut records = Vec::new();
        for n in names {
            // POSIX ACLs (system.*) are not part of Docker's archives.
            if n.starts_with(b"system.") {
                continue;
            }
            let cn = sys::cstr(&n).map_err(|e| self.io("xattr of", name, e))?;
            if let Some(v) = sys::fgetxattr(fd.as_fd_borrowed(), &cn)
                .map_err(|e| self.io("read xattr of", name, e))?
            {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(&n);
                // PAX keys are UTF-8; a name that is not cannot be recorded.
                if let Ok(k) = String::from_utf8(key) {
                    records.push((k, v));
                }
            }
        }
        if !records.is_empty() {
            self.b
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| self.io("write archive entry", name, e))?;
        }
        Ok(())
    }

    /// One file (`leaf` in `parent`, or `parent` itself when `leaf` is `None`) named `name` in
    /// the tar, and with `recursive` what is below it.
    fn entry(
        &mut self,
        parent: &OwnedFd,
        leaf: Option<&CStr>,
        st: &libc::stat,
        name: &[u8],
        recursive: bool,
        dev: u64,
    ) -> Result<()> {
        let path = Path::new(OsStr::from_bytes(name));
        let open = |flags: libc::c_int| -> io::Result<OwnedFd> {
            match leaf {
                Some(l) => sys::openat(parent.as_fd_borrowed(), l, flags, 0),
                None => sys::openat(parent.as_fd_borrowed(), c".", flags, 0),
            }
        };
        match kind(st) {
            libc::S_IFDIR => {
                let fd = open(libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| self.io("open directory", name, e))?;
                if !name.is_empty() {
                    self.xattrs(&fd, name)?;
                    let mut h = Self::header(st, tar::EntryType::Directory);
                    let mut dname = name.to_vec();
                    dname.push(b'/');
                    self.b
                        .append_data(&mut h, Path::new(OsStr::from_bytes(&dname)), io::empty())
                        .map_err(|e| self.io("write archive entry", name, e))?;
                }
                if !recursive || (self.one_fs && st.st_dev != dev) {
                    return Ok(());
                }
                let mut children =
                    sys::list_dir(fd.as_fd_borrowed()).map_err(|e| self.io("list", name, e))?;
                children.sort();
                for child in children {
                    let cchild = sys::cstr(&child).map_err(|e| self.io("name in", name, e))?;
                    let cst = match sys::lstatat(fd.as_fd_borrowed(), &cchild) {
                        Ok(s) => s,
                        // Removed while we were reading the directory.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(self.io("stat", &child, e)),
                    };
                    let cname = if name.is_empty() {
                        child
                    } else {
                        let mut n = name.to_vec();
                        n.push(b'/');
                        n.extend_from_slice(&child);
                        n
                    };
                    self.entry(&fd, Some(&cchild), &cst, &cname, true, dev)?;
                }
                Ok(())
            }
            libc::S_IFREG => {
                let fd = match open(libc::O_RDONLY | libc::O_NONBLOCK) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(self.io("open", name, e)),
                };
                // The file as opened (it may have changed since the directory was read).
                let st =
                    sys::lstatat(fd.as_fd_borrowed(), c"").map_err(|e| self.io("stat", name, e))?;
                if kind(&st) != libc::S_IFREG {
                    // Replaced by something else meanwhile: archive what is there now.
                    return self.entry(parent, leaf, &st, name, recursive, dev);
                }
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key).cloned() {
                        let mut h = Self::header(&st, tar::EntryType::Link);
                        return self
                            .b
                            .append_link(&mut h, path, Path::new(OsStr::from_bytes(&first)))
                            .map_err(|e| self.io("write archive entry", name, e));
                    }
                    self.links.insert(key, name.to_vec());
                }
                self.xattrs(&fd, name)?;
                let mut h = Self::header(&st, tar::EntryType::Regular);
                let size = st.st_size.max(0) as u64;
                h.set_size(size);
                // SAFETY: a fresh fd handed over to File.
                let file = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
                let data = Exact {
                    inner: file,
                    left: size,
                    eof: false,
                };
                self.b
                    .append_data(&mut h, path, data)
                    .map_err(|e| self.io("archive", name, e))
            }
            libc::S_IFLNK => {
                let target = match leaf {
                    Some(l) => sys::readlinkat(parent.as_fd_borrowed(), l),
                    None => Err(io::Error::other("the root is not a symlink")),
                };
                let target = match target {
                    Ok(t) => t,
                    // Gone meanwhile (or a /proc link of a kernel thread).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(self.io("read symlink", name, e)),
                };
                let mut h = Self::header(st, tar::EntryType::Symlink);
                self.b
                    .append_link(&mut h, path, Path::new(OsStr::from_bytes(&target)))
                    .map_err(|e| self.io("write archive entry", name, e))
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                let t = match kind(st) {
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = Self::header(st, t);
                if t != tar::EntryType::Fifo {
                    h.set_device_major(libc::major(st.st_rdev))
                        .and_then(|_| h.set_device_minor(libc::minor(st.st_rdev)))
                        .map_err(|e| self.io("archive device node", name, e))?;
                }
                self.b
                    .append_data(&mut h, path, io::empty())
                    .map_err(|e| self.io("write archive entry", name, e))
            }
            // Sockets belong to a process, not to the filesystem's content (Docker skips them).
            _ => Ok(()),
        }
    }

    /// `dir/.wh.name` for a deleted `/dir/name`: an empty regular file.
    fn whiteout(&mut self, path: &str) -> Result<()> {
        let comps = clean_container_path(path.as_bytes());
        let Some((leaf, parent)) = comps.split_last() else {
            return Err(Error::Invalid(format!(
                "cannot record the deletion of {path:?}: the root cannot be deleted"
            )));
        };
        let mut name = if parent.is_empty() {
            Vec::new()
        } else {
            let mut n = join(parent);
            n.push(b'/');
            n
        };
        name.extend_from_slice(b".wh.");
        name.extend_from_slice(leaf);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        let _ = h.set_device_major(0);
        let _ = h.set_device_minor(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        h.set_mtime(now);
        self.b
            .append_data(&mut h, Path::new(OsStr::from_bytes(&name)), io::empty())
            .map_err(|e| self.io("write archive entry", &name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_exactly_as_long_as_their_header_says() {
        let read = |data: &'static [u8], left: u64| {
            let mut out = Vec::new();
            Exact {
                inner: data,
                left,
                eof: false,
            }
            .read_to_end(&mut out)
            .unwrap();
            out
        };
        // Shrunk since its stat: padded with zeros; grown: cut.
        assert_eq!(read(b"abc", 5), b"abc\0\0");
        assert_eq!(read(b"abcdef", 4), b"abcd");
        assert_eq!(read(b"", 0), b"");
    }

    #[test]
    fn symlink_loops_and_file_sources_without_a_name() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", tmp.path().join("b")).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        let spec = |path: &str, follow| ArchiveSpec {
            sources: vec![ArchiveSource {
                path: path.into(),
                name: String::new(),
                recursive: true,
                follow,
            }],
            ..Default::default()
        };
        let err = write_archive(&root, &spec("/a", true), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
        // Not followed, the loop is just a symlink; a file with no name keeps its own.
        let names = |path: &str| {
            let mut out = Vec::new();
            write_archive(&root, &spec(path, false), &mut out).unwrap();
            let mut a = tar::Archive::new(&out[..]);
            a.entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.header().entry_type(), e.path_bytes().into_owned())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names("/a"), vec![(tar::EntryType::Symlink, b"a".to_vec())]);
        assert_eq!(names("/f"), vec![(tar::EntryType::Regular, b"f".to_vec())]);
    }
}
