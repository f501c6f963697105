//! `docker diff`: what a container changed, compared with its image, with the semantics of
//! Docker's naive diff driver (`pkg/archive` `ChangesDirs`).
//!
//! Both sides are [`FileEntry`] listings with absolute paths: the image's from its file
//! manifest ([`crate::ImageStore::files`]), the container's from the guest. The rules:
//!
//! * **Add**: a path the image does not have.
//! * **Modify**: a path both have whose mode (type and permissions), owner, group, device
//!   number or `security.capability` differ; for anything but a directory also when size,
//!   symlink target or mtime differ. Mtimes are equal when the seconds match and the
//!   nanoseconds match or either is 0 (`mke2fs -d` and tar layers keep whole seconds).
//! * **Delete**: a path of the image the container lacks, reported only where its parent is
//!   still a directory in the container: a deleted directory is one change, not one per file;
//!   a directory replaced by a file is a Modify and nothing under it is reported.
//! * A directory other than `/` holding any change is reported as Modify if it is not already
//!   an Add or Modify (Docker needs it to restore the directory's metadata on commit).
//! * `/` itself is never reported.
//!
//! Paths the `ignore` predicate matches are left out of both listings, with everything under
//! them, before comparing: their parents are not marked changed because of them.

use std::collections::{BTreeMap, HashMap};

use kic_proto::FileEntry;
use serde::{Deserialize, Serialize};

/// Docker's change kinds, with the numbers of its API (`GET /containers/{id}/changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ChangeKind {
    Modify = 0,
    Add = 1,
    Delete = 2,
}

impl ChangeKind {
    /// The letter `docker diff` prints: `C`, `A` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modify => 'C',
            ChangeKind::Add => 'A',
            ChangeKind::Delete => 'D',
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

fn is_dir(e: &FileEntry) -> bool {
    e.mode & S_IFMT == S_IFDIR
}

/// The parent of an absolute path (`/a/b` -> `/a`, `/a` -> `/`); `None` for `/`.
fn parent(p: &str) -> Option<&str> {
    if p == "/" {
        return None;
    }
    match p.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&p[..i]),
        None => None,
    }
}

/// Whether `a` and `b` differ as Docker's `statDifferent` plus capability check see it.
pub fn entry_changed(a: &FileEntry, b: &FileEntry) -> bool {
    if a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.rdev != b.rdev
        || a.capability != b.capability
    {
        return true;
    }
    if is_dir(a) {
        return false;
    }
    let same_time = a.mtime == b.mtime
        && (a.mtime_nsec == b.mtime_nsec || a.mtime_nsec == 0 || b.mtime_nsec == 0);
    !same_time || a.size != b.size || a.link != b.link
}

/// Normalises a listed path: absolute, no trailing slash (except `/`).
fn norm(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

/// The entries of a listing by path, without ignored paths and what lies under them.
fn index<'a>(
    list: &'a [FileEntry],
    ignore: &dyn Fn(&str) -> bool,
    cache: &mut HashMap<String, bool>,
) -> BTreeMap<String, &'a FileEntry> {
    let mut out = BTreeMap::new();
    for e in list {
        let p = norm(&e.path);
        if !ignored(&p, ignore, cache) {
            out.insert(p, e);
        }
    }
    out
}

/// `ignore(p)` for `p` or any of its ancestors (memoised: listings share their directories).
fn ignored(p: &str, ignore: &dyn Fn(&str) -> bool, cache: &mut HashMap<String, bool>) -> bool {
    if p == "/" {
        return false;
    }
    if let Some(v) = cache.get(p) {
        return *v;
    }
    let v = ignore(p) || parent(p).is_some_and(|q| ignored(q, ignore, cache));
    cache.insert(p.to_string(), v);
    v
}

/// The changes that turn `image` into `container` (Docker's naive diff), sorted by path.
pub fn changes(
    image: &[FileEntry],
    container: &[FileEntry],
    ignore: &dyn Fn(&str) -> bool,
) -> Vec<Change> {
    let mut cache = HashMap::new();
    let old = index(image, ignore, &mut cache);
    let new = index(container, ignore, &mut cache);
    let mut out: BTreeMap<String, ChangeKind> = BTreeMap::new();

    for (p, n) in &new {
        if p == "/" {
            continue;
        }
        match old.get(p) {
            None => {
                out.insert(p.clone(), ChangeKind::Add);
            }
            Some(o) if entry_changed(o, n) => {
                out.insert(p.clone(), ChangeKind::Modify);
            }
            Some(_) => {}
        }
    }
    for p in old.keys() {
        if p == "/" || new.contains_key(p) {
            continue;
        }
        // Reported only where the container still has the parent as a directory; `/` is
        // always there even if the listing left it out.
        let parent_dir = match parent(p) {
            Some("/") => new.get("/").is_none_or(|e| is_dir(e)),
            Some(q) => new.get(q).is_some_and(|e| is_dir(e)),
            None => false,
        };
        if parent_dir {
            out.insert(p.clone(), ChangeKind::Delete);
        }
    }
    // Directories holding a change are changed themselves. Paths come in sorted order, so an
    // ancestor already in `out` has had its own ancestors marked.
    let changed: Vec<String> = out.keys().cloned().collect();
    for p in changed {
        let mut q = parent(&p);
        while let Some(d) = q.filter(|d| *d != "/") {
            if out.contains_key(d) {
                break;
            }
            out.insert(d.to_string(), ChangeKind::Modify);
            q = parent(d);
        }
    }
    out.into_iter()
        .map(|(path, kind)| Change { path, kind })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> FileEntry {
        FileEntry {
            path: p.into(),
            mode: 0o040755,
            size: 4096,
            mtime: 100,
            ..Default::default()
        }
    }

    fn file(p: &str, size: u64) -> FileEntry {
        FileEntry {
            path: p.into(),
            mode: 0o100644,
            size,
            mtime: 100,
            ..Default::default()
        }
    }

    fn base() -> Vec<FileEntry> {
        vec![
            dir("/"),
            dir("/etc"),
            file("/etc/passwd", 10),
            file("/etc/hosts", 5),
            dir("/home"),
            dir("/home/u"),
            file("/home/u/.profile", 3),
            dir("/bin"),
            file("/bin/sh", 1000),
            FileEntry {
                path: "/bin/ls".into(),
                mode: 0o120777,
                size: 2,
                mtime: 100,
                link: "sh".into(),
                ..Default::default()
            },
            dir("/lost+found"),
        ]
    }

    fn show(v: &[Change]) -> Vec<String> {
        v.iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect()
    }

    fn none(_: &str) -> bool {
        false
    }

    fn with(f: impl FnOnce(&mut Vec<FileEntry>)) -> Vec<FileEntry> {
        let mut v = base();
        f(&mut v);
        v
    }

    fn get<'a>(v: &'a mut [FileEntry], p: &str) -> &'a mut FileEntry {
        v.iter_mut().find(|e| e.path == p).unwrap()
    }

    #[test]
    fn identical_listings_have_no_changes() {
        assert!(changes(&base(), &base(), &none).is_empty());
    }

    #[test]
    fn added_file_marks_its_parent_modified() {
        let c = with(|v| v.push(file("/etc/new", 1)));
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /etc", "A /etc/new"]);
    }

    #[test]
    fn added_tree_is_all_add_and_marks_ancestors_once() {
        let c = with(|v| {
            v.push(dir("/home/u/a"));
            v.push(dir("/home/u/a/b"));
            v.push(file("/home/u/a/b/c", 1));
        });
        assert_eq!(
            show(&changes(&base(), &c, &none)),
            [
                "C /home",
                "C /home/u",
                "A /home/u/a",
                "A /home/u/a/b",
                "A /home/u/a/b/c"
            ]
        );
    }

    #[test]
    fn top_level_add_does_not_report_root() {
        let c = with(|v| v.push(file("/zz", 1)));
        assert_eq!(show(&changes(&base(), &c, &none)), ["A /zz"]);
    }

    #[test]
    fn file_attributes_are_modifications() {
        type Edit = fn(&mut FileEntry);
        let edits: [(&str, Edit); 8] = [
            ("mode", |e| e.mode = 0o100600),
            ("uid", |e| e.uid = 1),
            ("gid", |e| e.gid = 1),
            ("size", |e| e.size += 1),
            ("mtime", |e| e.mtime += 1),
            ("nsec", |e| {
                e.mtime_nsec = 5;
            }),
            ("rdev", |e| e.rdev = 0x0103),
            ("capability", |e| e.capability = "0100000200".into()),
        ];
        for (what, edit) in edits {
            let mut img = base();
            if what == "nsec" {
                // Sub-second times compare only when both sides have them.
                get(&mut img, "/etc/passwd").mtime_nsec = 7;
            }
            let c = with(|v| edit(get(v, "/etc/passwd")));
            assert_eq!(
                show(&changes(&img, &c, &none)),
                ["C /etc", "C /etc/passwd"],
                "{what}"
            );
        }
    }

    #[test]
    fn zero_nanoseconds_on_either_side_match() {
        let mut img = base();
        get(&mut img, "/etc/passwd").mtime_nsec = 123;
        assert!(changes(&img, &base(), &none).is_empty());
        let c = with(|v| get(v, "/etc/passwd").mtime_nsec = 456_000);
        assert!(changes(&base(), &c, &none).is_empty());
        // The seconds still count.
        let c = with(|v| {
            let e = get(v, "/etc/passwd");
            e.mtime += 1;
            e.mtime_nsec = 0;
        });
        assert_eq!(changes(&img, &c, &none).len(), 2);
    }

    #[test]
    fn symlink_target_change_is_a_modification() {
        let c = with(|v| get(v, "/bin/ls").link = "sx".into());
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /bin", "C /bin/ls"]);
    }

    #[test]
    fn directory_size_and_mtime_are_not_changes_but_mode_and_owner_are() {
        let c = with(|v| {
            let e = get(v, "/etc");
            e.size = 8192;
            e.mtime = 999;
            e.mtime_nsec = 3;
        });
        assert!(changes(&base(), &c, &none).is_empty());
        let c = with(|v| get(v, "/home").mode = 0o040700);
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /home"]);
        let c = with(|v| get(v, "/home/u").uid = 1000);
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /home", "C /home/u"]);
    }

    #[test]
    fn deleted_file_marks_its_parent() {
        let c = with(|v| v.retain(|e| e.path != "/etc/passwd"));
        assert_eq!(
            show(&changes(&base(), &c, &none)),
            ["C /etc", "D /etc/passwd"]
        );
    }

    #[test]
    fn deleted_directory_is_reported_once() {
        let c = with(|v| v.retain(|e| !e.path.starts_with("/home")));
        assert_eq!(show(&changes(&base(), &c, &none)), ["D /home"]);
        let c = with(|v| v.retain(|e| !e.path.starts_with("/home/u")));
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /home", "D /home/u"]);
    }

    #[test]
    fn directory_replaced_by_file_hides_its_old_children() {
        let c = with(|v| {
            v.retain(|e| !e.path.starts_with("/home/u"));
            v.push(file("/home/u", 4));
        });
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /home", "C /home/u"]);
    }

    #[test]
    fn file_replaced_by_directory_adds_its_children() {
        let c = with(|v| {
            v.retain(|e| e.path != "/etc/passwd");
            v.push(dir("/etc/passwd"));
            v.push(file("/etc/passwd/x", 1));
        });
        assert_eq!(
            show(&changes(&base(), &c, &none)),
            ["C /etc", "C /etc/passwd", "A /etc/passwd/x"]
        );
    }

    #[test]
    fn ignored_paths_and_their_subtrees_do_not_count() {
        let ignore = |p: &str| p == "/etc/hosts" || p == "/lost+found" || p == "/proc";
        // Changed /etc/hosts, a missing /lost+found and a whole /proc tree: nothing.
        let c = with(|v| {
            get(v, "/etc/hosts").size = 99;
            v.retain(|e| e.path != "/lost+found");
            v.push(dir("/proc"));
            v.push(dir("/proc/1"));
            v.push(file("/proc/1/status", 0));
        });
        assert!(changes(&base(), &c, &ignore).is_empty());
        // Without the predicate they are changes.
        assert_eq!(
            show(&changes(&base(), &c, &none)),
            [
                "C /etc",
                "C /etc/hosts",
                "D /lost+found",
                "A /proc",
                "A /proc/1",
                "A /proc/1/status"
            ]
        );
        // Other changes next to an ignored one are still reported.
        let c = with(|v| {
            get(v, "/etc/hosts").size = 99;
            get(v, "/etc/passwd").size = 99;
        });
        assert_eq!(
            show(&changes(&base(), &c, &ignore)),
            ["C /etc", "C /etc/passwd"]
        );
    }

    #[test]
    fn output_is_sorted_and_kinds_have_docker_numbers() {
        let c = with(|v| {
            v.push(file("/zz", 1));
            v.push(file("/bin/f1", 1));
            v.retain(|e| e.path != "/etc/passwd");
        });
        let got = changes(&base(), &c, &none);
        let paths: Vec<&str> = got.iter().map(|c| c.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert_eq!(
            show(&got),
            ["C /bin", "A /bin/f1", "C /etc", "D /etc/passwd", "A /zz"]
        );
        assert_eq!(ChangeKind::Modify as u8, 0);
        assert_eq!(ChangeKind::Add as u8, 1);
        assert_eq!(ChangeKind::Delete as u8, 2);
    }

    #[test]
    fn listing_without_root_and_with_trailing_slashes_is_understood() {
        let c: Vec<FileEntry> = with(|v| {
            v.retain(|e| e.path != "/");
            get(v, "/etc").path = "/etc/".into();
            v.retain(|e| e.path != "/bin/sh");
        });
        assert_eq!(show(&changes(&base(), &c, &none)), ["C /bin", "D /bin/sh"]);
    }
}
