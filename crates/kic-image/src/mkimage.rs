//! Test images without internet: busybox from the host's `busybox-static`, a minimal Debian by
//! debootstrap from the host's apt mirror, and a two-architecture index. Each is written as an
//! OCI image layout, optionally pushed to a registry with skopeo. Used by `kic-mkimage`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ImageError, Result};
use crate::oci::LayoutWriter;
use crate::spec::{ContainerConfig, History, ImageConfig};

/// Every mtime and the `created` of test images: 2026-01-01T00:00:00Z (or SOURCE_DATE_EPOCH).
pub fn epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_767_225_600)
}

fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn config(arch: &str, cmd: &[&str], created_by: &str) -> ImageConfig {
    let created = rfc3339(epoch());
    ImageConfig {
        created: Some(created.clone()),
        architecture: arch.into(),
        os: "linux".into(),
        config: ContainerConfig {
            env: Some(vec![PATH_ENV.into()]),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        },
        history: vec![History {
            created: Some(created),
            created_by: Some(created_by.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tool(cmd: &mut Command, name: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| ImageError::Tool {
        tool: name.into(),
        message: format!("cannot run it ({e}); install it with apt-get"),
    })?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(ImageError::Tool {
            tool: name.into(),
            message: format!(
                "{} ({})",
                msg.lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
                out.status
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if an ELF64 file asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, num) = (u16_at(0x36), u16_at(0x38));
    (0..num).any(|i| {
        let o = phoff + i * size;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// Splits a path into (parent dirs..., path) so parents are written first.
fn parents(p: &str) -> Vec<String> {
    let mut out = vec![];
    let mut acc = String::new();
    for c in p.split('/').filter(|c| !c.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(c);
        out.push(acc.clone());
    }
    out.pop();
    out
}

enum Node {
    Dir(u32, u64),
    File(u32, u64, Vec<u8>),
    Hard(String),
}

/// Builds the busybox image from a static `busybox` binary into an OCI layout at `out`.
/// Applets are hard links at the paths `busybox --list-full` gives.
pub fn busybox(out: &Path, busybox_bin: &Path, tag: &str) -> Result<()> {
    let bin = fs::read(busybox_bin).map_err(|e| ImageError::io("read", busybox_bin, e))?;
    if has_interpreter(&bin) {
        return Err(ImageError::Invalid(format!(
            "{} is dynamically linked; install busybox-static",
            busybox_bin.display()
        )));
    }
    let list = tool(Command::new(busybox_bin).arg("--list-full"), "busybox")?;
    let mut nodes: BTreeMap<Vec<String>, Node> = BTreeMap::new();
    let key = |p: &str| {
        p.split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for (d, mode, uid) in [
        ("bin", 0o755, 0),
        ("dev", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/user", 0o755, 1000),
        ("proc", 0o555, 0),
        ("root", 0o700, 0),
        ("sys", 0o555, 0),
        ("tmp", 0o1777, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("usr/sbin", 0o755, 0),
        ("sbin", 0o755, 0),
        ("var", 0o755, 0),
        ("var/tmp", 0o1777, 0),
    ] {
        nodes.insert(key(d), Node::Dir(mode, uid));
    }
    nodes.insert(key("bin/busybox"), Node::File(0o755, 0, bin));
    nodes.insert(
        key("etc/passwd"),
        Node::File(
            0o644,
            0,
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n".to_vec(),
        ),
    );
    nodes.insert(
        key("etc/group"),
        Node::File(
            0o644,
            0,
            b"root:x:0:\ntty:x:5:\nuser:x:1000:\nnogroup:x:65534:\n".to_vec(),
        ),
    );
    nodes.insert(
        key("etc/hostname"),
        Node::File(0o644, 0, b"busybox\n".to_vec()),
    );
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "bin/busybox" || line.contains("..") || line.starts_with('/') {
            continue;
        }
        for p in parents(line) {
            nodes.entry(key(&p)).or_insert(Node::Dir(0o755, 0));
        }
        nodes.insert(key(line), Node::Hard("bin/busybox".into()));
    }
    let lw = LayoutWriter::create(out)?;
    let mut layer = lw.layer()?;
    let t = epoch();
    // bin/busybox must precede its links: write it right after the directories it lives in.
    let mut deferred = vec![];
    for (k, n) in &nodes {
        let p = k.join("/");
        match n {
            Node::Dir(mode, uid) => layer.dir(&p, *mode, *uid, *uid, t)?,
            Node::File(mode, uid, data) => layer.file(&p, *mode, *uid, *uid, t, data)?,
            Node::Hard(target) => {
                if p.as_str() < target.as_str() {
                    deferred.push((p, target.clone()));
                } else {
                    layer.hardlink(&p, target, t)?
                }
            }
        }
    }
    for (p, target) in deferred {
        layer.hardlink(&p, &target, t)?;
    }
    let l = layer.finish()?;
    let cfg = config("amd64", &["sh"], "kic-mkimage busybox");
    let m = lw.add_image(&cfg, vec![l])?;
    lw.write_index(m, tag)
}

/// Builds an index with linux/amd64 = the busybox image and linux/arm64 = a one-file image.
pub fn multiarch(out: &Path, busybox_bin: &Path, tag: &str) -> Result<()> {
    busybox(out, busybox_bin, tag)?;
    let lw = LayoutWriter::create(out)?;
    let ip = out.join("index.json");
    let top: crate::spec::Index =
        serde_json::from_slice(&fs::read(&ip).map_err(|e| ImageError::io("read", &ip, e))?)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", ip.display())))?;
    let mut amd64 = top.manifests[0].clone();
    amd64.annotations.clear();
    let mut layer = lw.layer()?;
    layer.file("arch", 0o644, 0, 0, epoch(), b"arm64\n")?;
    let l = layer.finish()?;
    let mut cfg = config("arm64", &["sh"], "kic-mkimage multiarch");
    cfg.variant = Some("v8".into());
    let arm = lw.add_image(&cfg, vec![l])?;
    let ix = lw.add_index(vec![amd64, arm])?;
    lw.write_index(ix, tag)
}

/// The first mirror in this machine's apt sources that serves `suite` (never a built-in host).
pub fn apt_mirror(suite: &str) -> Result<String> {
    apt_mirror_from(Path::new("/etc/apt"), suite)
}

/// [`apt_mirror`] reading `<etc_apt>/sources.list` and `<etc_apt>/sources.list.d/*.{list,sources}`.
pub fn apt_mirror_from(etc_apt: &Path, suite: &str) -> Result<String> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let mut fields: BTreeMap<String, String> = BTreeMap::new();
                for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
                    if let Some((k, v)) = line.split_once(':') {
                        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let deb = fields
                    .get("types")
                    .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let enabled = fields.get("enabled").is_none_or(|e| e != "no");
                let suites = fields.get("suites").cloned().unwrap_or_default();
                if deb && enabled && suites.split_whitespace().any(|s| s == suite) {
                    if let Some(uri) = fields.get("uris").and_then(|u| u.split_whitespace().next())
                    {
                        return Ok(uri.to_string());
                    }
                }
            }
        } else if name.ends_with(".list") || name == "sources.list" {
            for line in text.lines().map(str::trim) {
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                let mut rest: Vec<&str> = words.collect();
                if rest.first().is_some_and(|w| w.starts_with('[')) {
                    while let Some(w) = rest.first().copied() {
                        rest.remove(0);
                        if w.ends_with(']') {
                            break;
                        }
                    }
                }
                if rest.len() >= 2 && rest[1] == suite {
                    return Ok(rest[0].to_string());
                }
            }
        }
    }
    Err(ImageError::Invalid(format!(
        "no apt source for suite {suite} in {}; pass --mirror",
        etc_apt.display()
    )))
}

/// Builds a minimal Debian (`debootstrap --variant=minbase`) image. The debootstrapped tree and
/// the downloaded packages are cached under `cache`, so a second run only re-packs the tree.
pub fn debian(
    out: &Path,
    cache: &Path,
    suite: &str,
    mirror: Option<&str>,
    tag: &str,
) -> Result<()> {
    fs::create_dir_all(cache).map_err(|e| ImageError::io("create", cache, e))?;
    let cache = fs::canonicalize(cache).map_err(|e| ImageError::io("resolve", cache, e))?;
    let tree = cache.join(format!("rootfs-{suite}-minbase"));
    let stamp = cache.join(format!("rootfs-{suite}-minbase.done"));
    if !stamp.exists() {
        let mirror = match mirror {
            Some(m) => m.to_string(),
            None => apt_mirror(suite)?,
        };
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).map_err(|e| ImageError::io("create", &debs, e))?;
        let work = cache.join(format!("rootfs-{suite}-minbase.tmp"));
        if work.exists() {
            unmount_under(&work);
            fs::remove_dir_all(&work).map_err(|e| ImageError::io("remove", &work, e))?;
        }
        if tree.exists() {
            fs::remove_dir_all(&tree).map_err(|e| ImageError::io("remove", &tree, e))?;
        }
        let res = tool(
            Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--cache-dir={}", debs.display()))
                .arg(suite)
                .arg(&work)
                .arg(&mirror),
            "debootstrap",
        );
        unmount_under(&work);
        res?;
        for junk in ["var/lib/apt/lists", "var/cache/apt/archives", "var/log"] {
            let d = work.join(junk);
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_file() || p.is_symlink() {
                        let _ = fs::remove_file(&p);
                    }
                }
            }
        }
        for f in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
            "var/cache/ldconfig/aux-cache",
        ] {
            let _ = fs::remove_file(work.join(f));
        }
        fs::rename(&work, &tree).map_err(|e| ImageError::io("rename", &work, e))?;
        fs::write(&stamp, mirror).map_err(|e| ImageError::io("write", &stamp, e))?;
    }
    let lw = LayoutWriter::create(out)?;
    let mut layer = lw.layer()?;
    layer.tree(&tree, epoch())?;
    let l = layer.finish()?;
    let cfg = config(
        "amd64",
        &["bash"],
        &format!("debootstrap --variant=minbase {suite}"),
    );
    let m = lw.add_image(&cfg, vec![l])?;
    lw.write_index(m, tag)
}

/// Unmounts anything debootstrap left mounted under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Rewrites a single-image layout so its layers are plain tar (for registries tests that need
/// uncompressed layers: skopeo compresses every layer it pushes to a registry, so such layouts
/// are pushed with a plain Distribution API upload instead).
pub fn decompress_layout(dir: &Path, tag: &str) -> Result<()> {
    use crate::spec::{Index, Manifest};
    let read = |p: PathBuf| fs::read(&p).map_err(|e| ImageError::io("read", &p, e));
    let blob = |d: &crate::Digest| dir.join("blobs/sha256").join(d.hex());
    let ix: Index = serde_json::from_slice(&read(dir.join("index.json"))?)
        .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
    let top = ix
        .manifests
        .first()
        .ok_or_else(|| ImageError::Invalid("empty layout".into()))?;
    let m: Manifest = serde_json::from_slice(&read(blob(&top.digest))?)
        .map_err(|e| ImageError::Invalid(format!("manifest: {e}")))?;
    let cfg: ImageConfig = serde_json::from_slice(&read(blob(&m.config.digest))?)
        .map_err(|e| ImageError::Invalid(format!("config: {e}")))?;
    let lw = LayoutWriter::create(dir)?;
    let mut layers = vec![];
    for (l, diff) in m.layers.iter().zip(&cfg.rootfs.diff_ids) {
        let f = fs::File::open(blob(&l.digest))
            .map_err(|e| ImageError::io("open", blob(&l.digest), e))?;
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut crate::disk::decompressed(f)?, &mut tar)
            .map_err(|e| ImageError::Invalid(format!("layer {}: {e}", l.digest)))?;
        layers.push((
            lw.add_blob(crate::spec::MT_OCI_LAYER_TAR, &tar)?,
            diff.clone(),
        ));
    }
    let md = lw.add_image(&cfg, layers)?;
    lw.write_index(md, tag)
}

/// Layer compression for [`push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushCompression {
    /// Keep the layout's gzip layers.
    Keep,
    /// Recompress layers with zstd.
    Zstd,
}

/// Copies the layout at `dir` (all manifests) to `docker://dest` with skopeo.
pub fn push(
    dir: &Path,
    tag: &str,
    dest: &str,
    insecure: bool,
    creds: Option<&str>,
    compression: PushCompression,
) -> Result<()> {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--all", "--quiet"]);
    if insecure {
        c.arg("--dest-tls-verify=false");
    }
    if let Some(cr) = creds {
        c.arg("--dest-creds").arg(cr);
    }
    match compression {
        PushCompression::Keep => {}
        PushCompression::Zstd => {
            c.args(["--dest-compress", "--dest-compress-format", "zstd"]);
        }
    }
    c.arg(format!("oci:{}:{tag}", dir.display()));
    c.arg(format!("docker://{dest}"));
    tool(&mut c, "skopeo").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("sources.list.d")).unwrap();
        fs::write(
            t.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\n# comment\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\n",
        )
        .unwrap();
        assert_eq!(
            apt_mirror_from(t.path(), "bookworm").unwrap(),
            "http://mirror.test/debian"
        );
        fs::write(
            t.path().join("sources.list"),
            "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://other.test/debian trixie main\n",
        )
        .unwrap();
        assert_eq!(
            apt_mirror_from(t.path(), "trixie").unwrap(),
            "http://other.test/debian"
        );
        assert!(apt_mirror_from(t.path(), "sid").is_err());
    }
}
