//! Tests of the guest's side: archives written from a tree, listings, stats, and `docker cp`
//! extraction (hostile archives included) — on real files in a temporary directory.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kic_proto::{ArchiveSource, ArchiveSpec, FileEntry, PutSpec};

use crate::{list, put_archive, stat, write_archive, Error, RootDir};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// security.capability v2 with CAP_NET_RAW (13) permitted.
const CAP: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn setxattr(p: &Path, name: &str, v: &[u8]) {
    let (cp, cn) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn set_mtime(p: &Path, secs: i64) {
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        p,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A small container root: `/d` with every kind of file, `/l -> /d`, `/esc -> ../../..`.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let d = root.join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("f"), b"hello").unwrap();
    fs::write(d.join("sub/g"), b"below").unwrap();
    fs::hard_link(d.join("f"), d.join("h")).unwrap();
    std::os::unix::fs::symlink("../outside", d.join("s")).unwrap();
    std::os::unix::fs::symlink("/d", root.join("l")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("esc")).unwrap();
    nix::unistd::mkfifo(
        &d.join("p"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    if is_root() {
        nix::sys::stat::mknod(
            &d.join("c"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::chown(d.join("f"), Some(1000), Some(2000)).unwrap();
        setxattr(&d.join("f"), "security.capability", &CAP);
    }
    fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
    for p in ["f", "sub/g", "sub", "p", "s", "."] {
        set_mtime(&d.join(p), 1_500_000_000);
    }
    (tmp, root)
}

#[derive(Debug, PartialEq)]
struct Got {
    kind: char,
    mode: u32,
    /// The header's mode field as written (file type bits included).
    full_mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: String,
    data: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
    dev: (u32, u32),
}

fn read_tar(data: &[u8]) -> BTreeMap<String, Got> {
    let mut a = tar::Archive::new(data);
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((k.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let got = Got {
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap() & 0o7777,
            full_mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap())
                .unwrap_or_default(),
            data,
            xattrs,
            dev: (
                h.device_major().unwrap().unwrap_or(0),
                h.device_minor().unwrap().unwrap_or(0),
            ),
        };
        assert!(out.insert(name.clone(), got).is_none(), "{name} twice");
    }
    out
}

fn archive(root: &Path, spec: &ArchiveSpec) -> crate::Result<Vec<u8>> {
    let r = RootDir::open(root).unwrap();
    let mut out = Vec::new();
    write_archive(&r, spec, &mut out)?;
    Ok(out)
}

fn src(path: &str, name: &str, recursive: bool, follow: bool) -> ArchiveSource {
    ArchiveSource {
        path: path.into(),
        name: name.into(),
        recursive,
        follow,
    }
}

#[test]
fn archive_of_a_tree_keeps_every_kind_and_attribute() {
    let (_tmp, root) = tree();
    let spec = ArchiveSpec {
        sources: vec![src("/d", "x", true, false)],
        ..Default::default()
    };
    let t = read_tar(&archive(&root, &spec).unwrap());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    let mut want = vec!["x/", "x/f", "x/h", "x/p", "x/s", "x/sub/", "x/sub/g"];
    if is_root() {
        want.insert(1, "x/c");
    }
    assert_eq!(names, want);
    let d = &t["x/"];
    assert_eq!((d.kind, d.mode, d.mtime), ('5', 0o1777, 1_500_000_000));
    let f = &t["x/f"];
    assert_eq!(
        (f.kind, f.mode, f.data.as_slice()),
        ('0', 0o4755, &b"hello"[..])
    );
    assert_eq!(f.mtime, 1_500_000_000);
    // Go's archive/tar (dockerd) keeps the file type bits in the mode field; so do we.
    assert_eq!((d.full_mode, f.full_mode), (0o41777, 0o104755));
    // The second name of the same inode is a hard link to the first.
    assert_eq!((t["x/h"].kind, t["x/h"].link.as_str()), ('1', "x/f"));
    assert!(t["x/h"].data.is_empty());
    assert_eq!((t["x/s"].kind, t["x/s"].link.as_str()), ('2', "../outside"));
    assert_eq!((t["x/p"].kind, t["x/p"].mode), ('6', 0o640));
    assert_eq!(t["x/sub/g"].data, b"below");
    if is_root() {
        assert_eq!((f.uid, f.gid), (1000, 2000));
        assert_eq!(
            f.xattrs,
            vec![("security.capability".to_string(), CAP.to_vec())]
        );
        assert_eq!((t["x/c"].kind, t["x/c"].dev), ('3', (1, 3)));
    }
}

#[test]
fn archive_names_follow_and_parents_stay_inside() {
    let (_tmp, root) = tree();
    // Not recursive: the directory alone.
    let t = read_tar(
        &archive(
            &root,
            &ArchiveSpec {
                sources: vec![src("/d", "d", false, false)],
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(t.keys().collect::<Vec<_>>(), vec!["d/"]);
    // A symlink source is archived as a symlink unless followed.
    let t = read_tar(
        &archive(
            &root,
            &ArchiveSpec {
                sources: vec![src("/l", "l", true, false), src("/l", "m", true, true)],
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(t["l"].kind, '2');
    assert_eq!(t["l"].link, "/d");
    assert_eq!(t["m/"].kind, '5');
    assert_eq!(t["m/sub/g"].data, b"below");
    // Parents resolve through symlinks, `..` never above the root: /esc is the root itself.
    let t = read_tar(
        &archive(
            &root,
            &ArchiveSpec {
                sources: vec![src("/esc/l/sub/../f", "f", false, false)],
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(t["f"].data, b"hello");
    // An empty name puts the contents at the top, without an entry for the source itself;
    // whiteouts come after the sources.
    let t = read_tar(
        &archive(
            &root,
            &ArchiveSpec {
                sources: vec![src("/d/sub", "", true, false)],
                whiteouts: vec!["/etc/gone".into(), "/top".into()],
                one_fs: false,
            },
        )
        .unwrap(),
    );
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        vec![".wh.top", "etc/.wh.gone", "g"]
    );
    assert_eq!(
        (t["etc/.wh.gone"].kind, t["etc/.wh.gone"].data.len()),
        ('0', 0)
    );
    // A missing source is NotFound, named in Docker's words.
    let err = archive(
        &root,
        &ArchiveSpec {
            sources: vec![src("/nope", "nope", true, false)],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "Could not find the file /nope in container"
    );
}

/// A tmpfs mounted on a directory for the life of the guard (needs root).
struct Mounted(PathBuf);

impl Mounted {
    fn new(at: &Path) -> Option<Mounted> {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .ok()?;
        Some(Mounted(at.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount(&self.0);
    }
}

#[test]
fn one_fs_does_not_enter_other_filesystems() {
    let (_tmp, root) = tree();
    fs::create_dir(root.join("d/mnt")).unwrap();
    let Some(_m) = Mounted::new(&root.join("d/mnt")) else {
        eprintln!("SKIP one_fs_does_not_enter_other_filesystems: cannot mount a tmpfs");
        return;
    };
    fs::write(root.join("d/mnt/inner"), b"x").unwrap();
    let spec = |one_fs| ArchiveSpec {
        sources: vec![src("/d", "d", true, false)],
        one_fs,
        ..Default::default()
    };
    let t = read_tar(&archive(&root, &spec(true)).unwrap());
    assert!(t.contains_key("d/mnt/"));
    assert!(!t.contains_key("d/mnt/inner"));
    let t = read_tar(&archive(&root, &spec(false)).unwrap());
    assert!(t.contains_key("d/mnt/inner"));

    let r = RootDir::open(&root).unwrap();
    let paths = |one_fs| {
        let mut v = Vec::new();
        list(&r, "/d", one_fs, &mut |e| {
            v.push(e.path);
            Ok(())
        })
        .unwrap();
        v
    };
    assert!(paths(true).contains(&"/d/mnt".to_string()));
    assert!(!paths(true).contains(&"/d/mnt/inner".to_string()));
    assert!(paths(false).contains(&"/d/mnt/inner".to_string()));
}

#[test]
fn listing_is_lstat_of_every_file() {
    let (_tmp, root) = tree();
    let r = RootDir::open(&root).unwrap();
    let mut all: Vec<FileEntry> = Vec::new();
    list(&r, "/", false, &mut |e| {
        all.push(e);
        Ok(())
    })
    .unwrap();
    let by: BTreeMap<&str, &FileEntry> = all.iter().map(|e| (e.path.as_str(), e)).collect();
    assert_eq!(all[0].path, "/");
    // Parents come before their children, the root's symlinks are not entered.
    assert!(by.contains_key("/esc") && !by.contains_key("/esc/d"));
    assert_eq!(by["/l"].link, "/d");
    assert_eq!(by["/l"].mode & libc::S_IFMT, libc::S_IFLNK);
    let f = by["/d/f"];
    assert_eq!(
        (f.mode & 0o7777, f.size, f.mtime),
        (0o4755, 5, 1_500_000_000)
    );
    assert_eq!(by["/d/sub/g"].size, 5);
    if is_root() {
        assert_eq!((f.uid, f.gid), (1000, 2000));
        assert_eq!(f.capability, "0000000200200000000000000000000000000000");
        assert_eq!(by["/d/c"].rdev, libc::makedev(1, 3));
    }
    let pos = |p: &str| all.iter().position(|e| e.path == p).unwrap();
    assert!(pos("/d") < pos("/d/f") && pos("/d/sub") < pos("/d/sub/g"));
    // A missing path is NotFound; a symlinked parent is followed.
    let err = list(&r, "/nope", false, &mut |_| Ok(())).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let mut v = Vec::new();
    list(&r, "/l/sub", false, &mut |e| {
        v.push(e.path);
        Ok(())
    })
    .unwrap();
    assert_eq!(v, vec!["/d/sub", "/d/sub/g"]);
}

#[test]
fn stat_of_files_and_symlinks() {
    let (_tmp, root) = tree();
    let r = RootDir::open(&root).unwrap();
    let s = stat(&r, "/d/f", false).unwrap().unwrap();
    assert_eq!((s.name.as_str(), s.size), ("f", 5));
    assert_eq!(s.mode, libc::S_IFREG | 0o4755);
    assert_eq!(s.mtime, 1_500_000_000);
    assert!(s.link_target.is_empty());
    // A symlink: lstat, and the absolute path it resolves to inside the root.
    let s = stat(&r, "/l", false).unwrap().unwrap();
    assert_eq!(s.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!((s.name.as_str(), s.link_target.as_str()), ("l", "/d"));
    let s = stat(&r, "/d/s", false).unwrap().unwrap();
    assert_eq!(
        s.link_target, "/outside",
        "dangling, and clamped to the root"
    );
    // Followed: the target's stat under the asked name.
    let s = stat(&r, "/l", true).unwrap().unwrap();
    assert_eq!(
        (s.name.as_str(), s.mode & libc::S_IFMT),
        ("l", libc::S_IFDIR)
    );
    assert!(stat(&r, "/d/s", true).unwrap().is_none());
    assert!(stat(&r, "/nope", false).unwrap().is_none());
    assert!(stat(&r, "/d/f/x", false).unwrap().is_none());
    assert_eq!(stat(&r, "/", false).unwrap().unwrap().name, "/");
    assert_eq!(
        stat(&r, "/esc", true).unwrap().unwrap().mode & libc::S_IFMT,
        libc::S_IFDIR
    );
}

// ---- docker cp in ----

#[derive(Clone)]
enum K {
    File(&'static [u8]),
    Dir,
    Sym(&'static str),
    Hard(&'static str),
}

/// A tar with raw names (hostile ones included: no validation).
fn raw_tar(entries: &[(&str, K)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_600_000_000);
        let mut data: &[u8] = &[];
        match kind {
            K::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                data = d;
            }
            K::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
            }
            K::Sym(t) | K::Hard(t) => {
                h.set_entry_type(if matches!(kind, K::Sym(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Everything under `dir` with its type, mode, owner and content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let extra = if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            out.insert(
                rel,
                format!(
                    "{:o} {} {} {} {extra}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime()
                ),
            );
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn put(root: &Path, path: &str, tar: &[u8]) -> crate::Result<crate::ApplyStats> {
    let r = RootDir::open(root).unwrap();
    let spec = PutSpec {
        path: path.into(),
        ..Default::default()
    };
    put_archive(&r, &spec, tar)
}

#[test]
fn hostile_archives_change_nothing_outside_the_destination() {
    // (case, entries, whether it is accepted)
    type Case<'a> = (&'a str, Vec<(&'a str, K)>, bool);
    let cases: Vec<Case> = vec![
        ("dotdot", vec![("../x", K::File(b"evil"))], false),
        ("dotdot deep", vec![("a/../../x", K::File(b"evil"))], false),
        ("absolute", vec![("/x", K::File(b"evil"))], false),
        (
            "absolute etc",
            vec![("/etc/kic-hostile-probe", K::File(b"evil"))],
            false,
        ),
        (
            "symlink to the root, then through it",
            vec![("link", K::Sym("/")), ("link/f", K::File(b"confined"))],
            true,
        ),
        (
            "symlink climbing out, then through it",
            vec![("link", K::Sym("../../..")), ("link/x", K::File(b"evil"))],
            false,
        ),
        (
            "symlink to a sibling outside, then through it",
            vec![("link", K::Sym("../other")), ("link/x", K::File(b"evil"))],
            false,
        ),
        (
            "hard link to outside",
            vec![("h", K::Hard("../other/secret"))],
            false,
        ),
        ("hard link absolute", vec![("h", K::Hard("/d/f"))], false),
        (
            "directory then escape through a nested link",
            vec![
                ("a", K::Dir),
                ("a/up", K::Sym("..")),
                ("a/up/up2", K::Sym("..")),
                ("a/up/up2/x", K::File(b"evil")),
            ],
            false,
        ),
    ];
    for (name, entries, ok) in cases {
        let (_tmp, root) = tree();
        fs::create_dir(root.join("dest")).unwrap();
        fs::create_dir(root.join("other")).unwrap();
        fs::write(root.join("other/secret"), b"keep").unwrap();
        let outside_root = root.parent().unwrap().to_path_buf();
        fs::write(outside_root.join("host-file"), b"keep").unwrap();
        let before = snapshot(&outside_root);
        let result = put(&root, "/dest", &raw_tar(&entries));
        let mut after = snapshot(&outside_root);
        let mut before = before;
        // Only /dest may change.
        after.retain(|p, _| !p.starts_with("root/dest/") && p != Path::new("root/dest"));
        before.retain(|p, _| !p.starts_with("root/dest/") && p != Path::new("root/dest"));
        assert_eq!(
            after, before,
            "{name}: something outside the destination changed"
        );
        assert!(
            !Path::new("/etc/kic-hostile-probe").exists(),
            "{name}: wrote to /etc"
        );
        match result {
            Ok(_) if ok => {}
            Err(e @ (Error::Unsafe { .. } | Error::Invalid(_))) if !ok => {
                assert!(e.is_refusal(), "{name}: {e}")
            }
            r => panic!("{name}: unexpected {r:?}"),
        }
        if name.starts_with("symlink to the root") {
            // `/` in the archive means the destination: the file lands inside it.
            assert_eq!(fs::read(root.join("dest/f")).unwrap(), b"confined");
        }
    }
}

#[test]
fn put_destination_rules() {
    let (_tmp, root) = tree();
    let tar = raw_tar(&[("new", K::File(b"1")), ("./", K::Dir)]);
    // Through a symlink to a directory.
    put(&root, "/l", &tar).unwrap();
    assert_eq!(fs::read(root.join("d/new")).unwrap(), b"1");
    // The `./` entry leaves the destination's mode alone.
    assert_eq!(
        fs::metadata(root.join("d")).unwrap().mode() & 0o7777,
        0o1777
    );
    let err = put(&root, "/nope", &tar).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let err = put(&root, "/d/f", &tar).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.ends_with("is not a directory")),
        "{err}"
    );
    // /esc climbs above the root, which stays the root: the destination is the root.
    put(&root, "/esc", &raw_tar(&[("top", K::File(b"t"))])).unwrap();
    assert_eq!(fs::read(root.join("top")).unwrap(), b"t");
    assert!(!root.parent().unwrap().join("top").exists());
    // The kernel's filesystems are refused (the host's own /proc and /sys, read only here).
    let host = RootDir::open(Path::new("/")).unwrap();
    for p in ["/proc", "/sys"] {
        let spec = PutSpec {
            path: p.into(),
            ..Default::default()
        };
        let err = put_archive(&host, &spec, &raw_tar(&[("x", K::File(b"1"))])[..]).unwrap_err();
        assert!(err.to_string().contains("/proc or /sys"), "{err}");
    }
}

#[test]
fn put_owner_and_no_overwrite_dir_non_dir() {
    if !is_root() {
        eprintln!("SKIP put_owner_and_no_overwrite_dir_non_dir: needs root to chown");
        return;
    }
    let (_tmp, root) = tree();
    let r = RootDir::open(&root).unwrap();
    let tar = raw_tar(&[("o", K::Dir), ("o/f", K::File(b"1")), ("o/s", K::Sym("f"))]);
    let mut spec = PutSpec {
        path: "/d".into(),
        owner: Some((123, 456)),
        ..Default::default()
    };
    put_archive(&r, &spec, &tar[..]).unwrap();
    for p in ["d/o", "d/o/f", "d/o/s"] {
        let m = fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (123, 456), "{p}");
    }
    spec.owner = None;
    put_archive(&r, &spec, &tar[..]).unwrap();
    let m = fs::metadata(root.join("d/o/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8), "the archive's numeric owner");

    spec.no_overwrite_dir_non_dir = true;
    let disp = |p: &str| root.join(p).display().to_string();
    let err = put_archive(&r, &spec, &raw_tar(&[("sub", K::File(b"x"))])[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot overwrite directory {:?} with non-directory {:?}",
            disp("d/sub"),
            disp("d")
        )
    );
    let err = put_archive(&r, &spec, &raw_tar(&[("f", K::Dir)])[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot overwrite non-directory {:?} with directory {:?}",
            disp("d/f"),
            disp("d")
        )
    );
    assert!(root.join("d/sub/g").exists() && root.join("d/f").is_file());
    // Without the flag, the same archive replaces.
    spec.no_overwrite_dir_non_dir = false;
    put_archive(&r, &spec, &raw_tar(&[("sub", K::File(b"x"))])[..]).unwrap();
    assert!(root.join("d/sub").is_file());
}

#[test]
fn written_archives_unpack_to_the_same_tree() {
    let (_tmp, root) = tree();
    let spec = ArchiveSpec {
        sources: vec![src("/d", "d", true, false)],
        ..Default::default()
    };
    let data = archive(&root, &spec).unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    put(tmp2.path(), "/", &data).unwrap();
    let a = snapshot(&root.join("d"));
    let b = snapshot(&tmp2.path().join("d"));
    assert_eq!(a, b);
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&tmp2.path().join("d/f")), ino(&tmp2.path().join("d/h")));
    if is_root() {
        let mut cap = vec![0u8; 64];
        let (cp, cn) = (
            cpath(&tmp2.path().join("d/f")),
            CString::new("security.capability").unwrap(),
        );
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), cap.as_mut_ptr().cast(), cap.len())
        };
        assert_eq!(n, 20);
        cap.truncate(20);
        assert_eq!(cap, CAP);
    }
}

#[test]
fn dot_and_empty_names_put_the_contents_at_the_top() {
    let (_tmp, root) = tree();
    let names = |name: &str| -> Vec<String> {
        let spec = ArchiveSpec {
            sources: vec![src("/d/sub", name, true, false)],
            ..Default::default()
        };
        read_tar(&archive(&root, &spec).unwrap())
            .into_keys()
            .collect()
    };
    assert_eq!(names("."), vec!["g"]);
    assert_eq!(names(""), vec!["g"]);
    assert_eq!(names("x"), vec!["x/", "x/g"]);
}
