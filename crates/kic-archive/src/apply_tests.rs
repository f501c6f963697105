//! The hostile-tar table: each case writes its layers on the fly, applies them to a fresh target
//! next to a sentinel directory, and checks the outcome and that nothing outside changed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

#[derive(Clone)]
enum K {
    File(&'static [u8]),
    Dir,
    Sym(&'static str),
    Hard(&'static str),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Clone)]
struct E {
    name: &'static str,
    kind: K,
    mode: u32,
    uid: u64,
    xattrs: Vec<(&'static str, &'static [u8])>,
}

fn e(name: &'static str, kind: K) -> E {
    let mode = match kind {
        K::Dir => 0o755,
        _ => 0o644,
    };
    E {
        name,
        kind,
        mode,
        uid: 0,
        xattrs: vec![],
    }
}

const MTIME: u64 = 1_600_000_000;

/// Writes a tar with raw names (no validation: these tars are meant to be hostile).
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        if !en.xattrs.is_empty() {
            let v: Vec<(String, &[u8])> = en
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            b.append_pax_extensions(v.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        let name = en.name.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.uid);
        h.set_mtime(MTIME);
        let mut data: &[u8] = &[];
        match &en.kind {
            K::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                data = d;
            }
            K::Dir => h.set_entry_type(tar::EntryType::Directory),
            K::Sym(t) | K::Hard(t) => {
                h.set_entry_type(if matches!(en.kind, K::Sym(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            }
            K::Char(ma, mi) | K::Block(ma, mi) => {
                h.set_entry_type(if matches!(en.kind, K::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
            }
            K::Fifo => h.set_entry_type(tar::EntryType::Fifo),
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A listing of a tree: path -> (kind+mode, uid, size, content or link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let extra = if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            out.insert(
                rel,
                format!(
                    "{:o} {} {} {} {}",
                    m.mode(),
                    m.uid(),
                    m.len(),
                    m.mtime(),
                    extra
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

enum Want {
    /// Refused as unsafe, the error naming this entry.
    Unsafe(&'static str),
    /// Refused as invalid (not a safety issue), message containing this.
    Invalid(&'static str),
    /// Applied; the check runs on the target.
    Ok(fn(&Path)),
}

struct Case {
    name: &'static str,
    layers: Vec<Vec<E>>,
    want: Want,
}

fn run(case: &Case) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&target).unwrap();
    fs::create_dir(&sentinel).unwrap();
    fs::write(sentinel.join("secret"), b"keep").unwrap();
    fs::create_dir(sentinel.join("d")).unwrap();
    fs::write(sentinel.join("d/x"), b"keep too").unwrap();
    let before = snapshot(&sentinel);

    let root = RootDir::open(&target).unwrap();
    let mut result = Ok(ApplyStats::default());
    for layer in &case.layers {
        result = apply_tar(&root, &tar_of(layer)[..], ApplyOptions::default());
        if result.is_err() {
            break;
        }
    }
    assert_eq!(
        snapshot(&sentinel),
        before,
        "{}: sentinel changed",
        case.name
    );
    let top: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        top.len(),
        2,
        "{}: something was written next to the target: {top:?}",
        case.name
    );
    assert!(
        !Path::new("/etc/kic-hostile-probe").exists(),
        "{}: wrote to host /etc",
        case.name
    );
    match (&case.want, result) {
        (Want::Unsafe(entry), Err(Error::Unsafe { entry: got, reason })) => {
            assert_eq!(
                &got, entry,
                "{}: wrong entry named (reason: {reason})",
                case.name
            )
        }
        (Want::Invalid(msg), Err(err @ Error::Invalid(_))) => {
            assert!(err.to_string().contains(msg), "{}: {err}", case.name)
        }
        (Want::Ok(check), Ok(_)) => check(&target),
        (_, r) => panic!("{}: unexpected result {r:?}", case.name),
    }
}

fn file_mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn hostile_and_tricky_layers() {
    if !is_root() {
        eprintln!("SKIP hostile_and_tricky_layers: needs root for ownership, devices and caps");
        return;
    }
    let with_mode = |mut x: E, mode: u32, uid: u64| {
        x.mode = mode;
        x.uid = uid;
        x
    };
    let mut cap = e("bin/ping", K::File(b"ping"));
    cap.mode = 0o755;
    // security.capability v2: CAP_NET_RAW (13) permitted+effective.
    cap.xattrs = vec![(
        "security.capability",
        &[
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )];
    let mut user_x = e("f", K::File(b"x"));
    user_x.xattrs = vec![("user.kic", b"v")];

    let cases = vec![
        Case {
            name: "dotdot",
            layers: vec![vec![e("../x", K::File(b"evil"))]],
            want: Want::Unsafe("../x"),
        },
        Case {
            name: "dotdot into sentinel",
            layers: vec![vec![e("../sentinel/secret", K::File(b"evil"))]],
            want: Want::Unsafe("../sentinel/secret"),
        },
        Case {
            name: "absolute",
            layers: vec![vec![e("/etc/kic-hostile-probe", K::File(b"evil"))]],
            want: Want::Unsafe("/etc/kic-hostile-probe"),
        },
        Case {
            name: "inner dotdot climbs out",
            layers: vec![vec![e("a/../../x", K::File(b"evil"))]],
            want: Want::Unsafe("a/../../x"),
        },
        Case {
            name: "inner dotdot stays inside",
            layers: vec![vec![e("a/../b", K::File(b"ok"))]],
            want: Want::Ok(|t| assert_eq!(fs::read(t.join("b")).unwrap(), b"ok")),
        },
        Case {
            name: "symlink to ../../.. then a file through it",
            layers: vec![vec![e("l", K::Sym("../../..")), e("l/x", K::File(b"evil"))]],
            want: Want::Unsafe("l/x"),
        },
        Case {
            name: "symlink to sibling sentinel then overwrite",
            layers: vec![vec![
                e("l", K::Sym("../sentinel")),
                e("l/secret", K::File(b"evil")),
            ]],
            want: Want::Unsafe("l/secret"),
        },
        Case {
            name: "symlink escape set in an earlier layer",
            layers: vec![
                vec![e("l", K::Sym("../sentinel"))],
                vec![e("l/d/x", K::File(b"evil"))],
            ],
            want: Want::Unsafe("l/d/x"),
        },
        Case {
            name: "symlink chain escape",
            layers: vec![vec![
                e("a", K::Sym("b")),
                e("b", K::Sym("c/../..")),
                e("c", K::Dir),
                e("a/x", K::File(b"evil")),
            ]],
            want: Want::Unsafe("a/x"),
        },
        Case {
            name: "absolute symlink with dotdot",
            layers: vec![vec![
                e("l", K::Sym("/../sentinel")),
                e("l/new", K::File(b"evil")),
            ]],
            want: Want::Unsafe("l/new"),
        },
        Case {
            name: "hard link to /etc/passwd",
            layers: vec![vec![e("h", K::Hard("/etc/passwd"))]],
            want: Want::Unsafe("h"),
        },
        Case {
            name: "hard link to ../outside",
            layers: vec![vec![e("h", K::Hard("../sentinel/secret"))]],
            want: Want::Unsafe("h"),
        },
        Case {
            name: "hard link through escaping symlink",
            layers: vec![vec![
                e("l", K::Sym("../sentinel")),
                e("h", K::Hard("l/secret")),
            ]],
            want: Want::Unsafe("h"),
        },
        Case {
            name: "whiteout of ..",
            layers: vec![vec![e(".wh...", K::File(b""))]],
            want: Want::Unsafe(".wh..."),
        },
        Case {
            name: "whiteout climbing out",
            layers: vec![vec![e("../.wh.sentinel", K::File(b""))]],
            want: Want::Unsafe("../.wh.sentinel"),
        },
        Case {
            name: "whiteout through escaping symlink",
            layers: vec![vec![
                e("l", K::Sym("../sentinel")),
                e("l/.wh.secret", K::File(b"")),
            ]],
            want: Want::Unsafe("l/.wh.secret"),
        },
        Case {
            name: "opaque through escaping symlink",
            layers: vec![vec![
                e("l", K::Sym("../sentinel")),
                e("l/.wh..wh..opq", K::File(b"")),
            ]],
            want: Want::Unsafe("l/.wh..wh..opq"),
        },
        Case {
            name: "file over a symlink replaces the symlink",
            layers: vec![vec![
                e("s", K::Sym("../sentinel/secret")),
                e("s", K::File(b"new")),
            ]],
            want: Want::Ok(|t| {
                assert!(fs::symlink_metadata(t.join("s")).unwrap().is_file());
                assert_eq!(fs::read(t.join("s")).unwrap(), b"new");
            }),
        },
        Case {
            name: "absolute symlink /var/run -> /run stays inside",
            layers: vec![vec![
                e("run", K::Dir),
                e("var", K::Dir),
                e("var/run", K::Sym("/run")),
                e("var/run/pid", K::File(b"1")),
            ]],
            want: Want::Ok(|t| {
                assert_eq!(fs::read(t.join("run/pid")).unwrap(), b"1");
                assert_eq!(fs::read_link(t.join("var/run")).unwrap(), Path::new("/run"));
            }),
        },
        Case {
            name: "symlink to / then a file through it",
            layers: vec![vec![e("l", K::Sym("/")), e("l/x", K::File(b"in"))]],
            want: Want::Ok(|t| assert_eq!(fs::read(t.join("x")).unwrap(), b"in")),
        },
        Case {
            name: "usrmerge lib -> usr/lib across layers",
            layers: vec![
                vec![
                    e("usr", K::Dir),
                    e("usr/lib", K::Dir),
                    e("lib", K::Sym("usr/lib")),
                ],
                vec![
                    e("lib/libc.so", K::File(b"elf")),
                    e("lib/x/y", K::File(b"deep")),
                ],
            ],
            want: Want::Ok(|t| {
                assert_eq!(fs::read(t.join("usr/lib/libc.so")).unwrap(), b"elf");
                assert_eq!(fs::read(t.join("usr/lib/x/y")).unwrap(), b"deep");
                assert!(fs::symlink_metadata(t.join("lib"))
                    .unwrap()
                    .file_type()
                    .is_symlink());
            }),
        },
        Case {
            name: "device nodes and fifo",
            layers: vec![vec![
                e("dev", K::Dir),
                with_mode(e("dev/null", K::Char(1, 3)), 0o666, 0),
                with_mode(e("dev/loop0", K::Block(7, 0)), 0o660, 6),
                e("p", K::Fifo),
            ]],
            want: Want::Ok(|t| {
                let m = fs::metadata(t.join("dev/null")).unwrap();
                assert!(m.file_type().is_char_device());
                assert_eq!(m.rdev(), libc::makedev(1, 3));
                assert_eq!(m.mode() & 0o7777, 0o666);
                let m = fs::metadata(t.join("dev/loop0")).unwrap();
                assert!(m.file_type().is_block_device());
                assert_eq!(m.gid(), 6);
                assert!(fs::metadata(t.join("p")).unwrap().file_type().is_fifo());
            }),
        },
        Case {
            name: "setuid, setgid, sticky and owners",
            layers: vec![vec![
                with_mode(e("bin/su", K::File(b"su")), 0o4755, 0),
                with_mode(e("bin/wall", K::File(b"w")), 0o2755, 1000),
                with_mode(e("tmp", K::Dir), 0o1777, 0),
            ]],
            want: Want::Ok(|t| {
                assert_eq!(file_mode(&t.join("bin/su")) & 0o7777, 0o4755);
                let m = fs::metadata(t.join("bin/wall")).unwrap();
                assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2755, 1000, 1000));
                assert_eq!(file_mode(&t.join("tmp")) & 0o7777, 0o1777);
                assert_eq!(fs::metadata(t.join("tmp")).unwrap().mtime(), MTIME as i64);
                assert_eq!(
                    fs::metadata(t.join("bin/su")).unwrap().mtime(),
                    MTIME as i64
                );
                // Implied parent: created 0755.
                assert_eq!(file_mode(&t.join("bin")) & 0o7777, 0o755);
            }),
        },
        Case {
            name: "file capabilities and user xattrs",
            layers: vec![vec![cap.clone(), user_x.clone()]],
            want: Want::Ok(|t| {
                let v = getxattr(&t.join("bin/ping"), "security.capability");
                assert_eq!(v.len(), 20);
                assert_eq!(v[4], 0);
                assert_eq!(v[5], 0x20);
                assert_eq!(getxattr(&t.join("f"), "user.kic"), b"v");
            }),
        },
        Case {
            name: "opaque whiteout keeps what the same layer adds (marker first or last)",
            layers: vec![
                vec![
                    e("d/a", K::File(b"old")),
                    e("d/sub/b", K::File(b"old")),
                    e("d/sub/keep", K::File(b"old")),
                    e("o/old", K::File(b"old")),
                ],
                vec![
                    e("d/c", K::File(b"new")),
                    e("d/sub/n", K::File(b"new")),
                    e("d/.wh..wh..opq", K::File(b"")),
                    e("o/.wh..wh..opq", K::File(b"")),
                    e("o/new", K::File(b"new")),
                ],
            ],
            want: Want::Ok(|t| {
                let mut names: Vec<_> = walk_names(t);
                names.sort();
                assert_eq!(names, ["d", "d/c", "d/sub", "d/sub/n", "o", "o/new"]);
            }),
        },
        Case {
            name: "whiteouts remove lower entries, trees included",
            layers: vec![
                vec![
                    e("a", K::File(b"1")),
                    e("d/x", K::File(b"1")),
                    e("t/deep/z", K::File(b"1")),
                ],
                vec![
                    e(".wh.a", K::File(b"")),
                    e("d/.wh.x", K::File(b"")),
                    e(".wh.t", K::File(b"")),
                    e("d/.wh.absent", K::File(b"")),
                ],
            ],
            want: Want::Ok(|t| assert_eq!(walk_names(t), ["d"])),
        },
        Case {
            name: "hard link to a file from a previous layer",
            layers: vec![
                vec![e("f", K::File(b"data"))],
                vec![e("dir/h", K::Hard("f"))],
            ],
            want: Want::Ok(|t| {
                let a = fs::metadata(t.join("f")).unwrap();
                let b = fs::metadata(t.join("dir/h")).unwrap();
                assert_eq!(a.ino(), b.ino());
                assert_eq!(a.nlink(), 2);
            }),
        },
        Case {
            name: "hard link via usrmerge symlink",
            layers: vec![vec![
                e("usr/bin/busybox", K::File(b"bb")),
                e("bin", K::Sym("usr/bin")),
                e("bin/sh", K::Hard("bin/busybox")),
            ]],
            want: Want::Ok(|t| {
                assert_eq!(
                    fs::metadata(t.join("usr/bin/sh")).unwrap().ino(),
                    fs::metadata(t.join("usr/bin/busybox")).unwrap().ino()
                )
            }),
        },
        Case {
            name: "hard link to a symlink links the symlink itself",
            layers: vec![vec![e("s", K::Sym("/etc/passwd")), e("h", K::Hard("s"))]],
            want: Want::Ok(|t| {
                assert!(fs::symlink_metadata(t.join("h"))
                    .unwrap()
                    .file_type()
                    .is_symlink());
            }),
        },
        Case {
            name: "hard link to a missing target",
            layers: vec![vec![e("h", K::Hard("nope"))]],
            want: Want::Invalid("does not exist"),
        },
        Case {
            name: "directory replaced by symlink, then symlink by directory",
            layers: vec![
                vec![e("lib/a", K::File(b"1"))],
                vec![e("usr/lib", K::Dir), e("lib", K::Sym("usr/lib"))],
                vec![e("lib", K::Dir)],
            ],
            want: Want::Ok(|t| {
                assert!(fs::symlink_metadata(t.join("lib")).unwrap().is_dir());
                assert!(!t.join("lib/a").exists());
            }),
        },
        Case {
            name: "file under a regular file",
            layers: vec![vec![e("f", K::File(b"1")), e("f/x", K::File(b"2"))]],
            want: Want::Invalid("is not a directory"),
        },
        Case {
            name: "root entry sets the root's mode",
            layers: vec![vec![
                with_mode(e("./", K::Dir), 0o700, 0),
                e("./x", K::File(b"1")),
            ]],
            want: Want::Ok(|t| {
                assert_eq!(file_mode(t) & 0o7777, 0o700);
                assert!(t.join("x").exists());
            }),
        },
    ];
    assert!(cases.len() >= 20);
    for c in &cases {
        run(c);
    }
}

fn walk_names(t: &Path) -> Vec<String> {
    snapshot(t)
        .keys()
        .map(|p| p.display().to_string())
        .collect()
}

fn getxattr(p: &Path, name: &str) -> Vec<u8> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    buf
}

#[test]
fn docker_cp_mode_keeps_whiteout_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootDir::open(tmp.path()).unwrap();
    let opts = ApplyOptions {
        whiteouts: false,
        preserve_owner: false,
        ..ApplyOptions::default()
    };
    apply_tar(&root, &tar_of(&[e(".wh.x", K::File(b"1"))])[..], opts).unwrap();
    assert!(tmp.path().join(".wh.x").exists());
}

#[test]
fn apply_under_a_destination_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("t");
    fs::create_dir_all(target.join("real/dir")).unwrap();
    std::os::unix::fs::symlink("/real", target.join("link")).unwrap();
    std::os::unix::fs::symlink("../../..", target.join("real/out")).unwrap();
    let root = RootDir::open(&target).unwrap();
    let opts = ApplyOptions {
        whiteouts: false,
        preserve_owner: false,
        ..ApplyOptions::default()
    };
    // Through an absolute symlink inside the root, as `docker cp x ctr:/link/dir` would.
    let st = apply_tar_at(
        &root,
        "/link/dir",
        &tar_of(&[e("f", K::File(b"1")), e("h", K::Hard("f"))])[..],
        opts,
    )
    .unwrap();
    assert_eq!(st.entries, 2);
    assert_eq!(fs::read(target.join("real/dir/f")).unwrap(), b"1");
    assert_eq!(
        fs::metadata(target.join("real/dir/h")).unwrap().ino(),
        fs::metadata(target.join("real/dir/f")).unwrap().ino()
    );
    // A destination that escapes, or entries that climb above it, are refused.
    let err = apply_tar_at(
        &root,
        "real/out",
        &tar_of(&[e("x", K::File(b"1"))])[..],
        opts,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsafe { .. }), "{err}");
    let err = apply_tar_at(
        &root,
        "real",
        &tar_of(&[e("../x", K::File(b"1"))])[..],
        opts,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsafe { .. }), "{err}");
    let err = apply_tar_at(&root, "nope", &tar_of(&[e("x", K::File(b"1"))])[..], opts).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn byte_limit_stops_bombs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootDir::open(tmp.path()).unwrap();
    let opts = ApplyOptions {
        max_bytes: Some(5),
        ..ApplyOptions::default()
    };
    apply_tar(&root, &tar_of(&[e("a", K::File(b"12345"))])[..], opts).unwrap();
    let err = apply_tar(
        &root,
        &tar_of(&[e("a", K::File(b"123")), e("b", K::File(b"456"))])[..],
        opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 5 bytes"), "{err}");
}
