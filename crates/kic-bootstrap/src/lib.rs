//! Builds the bootstrap image every container VM boots from (VIC's `bootstrap.iso`).
//!
//! **Owns:** turning the host's installed Debian kernel package into an uncompressed `vmlinux`
//! (PVH direct boot, much faster than the compressed `vmlinuz` under TCG) and an uncompressed
//! initramfs holding the static `kic-tether` as `/init` plus exactly the modules it needs,
//! resolved from `modules.dep`. **Must not:** download anything. **Callers:** the port layer
//! (on start-up) and `make`.
//!
//! Layout of a boot store:
//! ```text
//! <root>/<version>/vmlinux        uncompressed kernel (ELF, PVH entry)
//! <root>/<version>/initrd.img     newc cpio: /init, /etc/kic/modules, /lib/modules/<rel>/...
//! <root>/<version>/manifest.json  BootManifest
//! ```
//! `<version>` is `<kernel release>-<hash of all inputs>`, so an image is rebuilt only when its
//! inputs change, and several versions can sit side by side (a VCH upgrade switches versions
//! while running containers keep theirs).

pub mod cpio;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped when the layout of what this crate writes changes.
const BUILDER_VERSION: &str = "4";

/// Device modules the tether loads first, in order (dependencies come first automatically:
/// `virtio_net` brings `net_failover` and `failover`). `virtio_pci` stays first: the others
/// bind to the devices it finds.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtio_blk", "virtio_net"];

/// Filesystem modules, loaded by a second thread at the same time as the device modules (they
/// share no dependencies); the container's disk is mounted once both are done.
/// `crc32c_generic` is ext4's soft dependency (`crypto-crc32c`), which `modules.dep` omits.
pub const DEFAULT_BACKGROUND_MODULES: &[&str] = &["crc32c_generic", "ext4"];

/// The kernel command line for container VMs, tuned for a fast boot.
/// `reboot=t` with libvirt's `on_reboot=destroy` lets the tether end the VM without ACPI.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check \
mitigations=off pci=lastbus=0 i8042.noaux i8042.nopnp i8042.dumbkbd cryptomgr.notests \
random.trust_cpu=on 8250.nr_uarts=1 rdinit=/init";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no installed kernel found: need /boot/vmlinuz-<release> and /lib/modules/<release> (install linux-image-amd64)")]
    NoKernel,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find an uncompressed kernel inside {0} (tried xz, gzip and zstd payloads; is xz-utils installed?)")]
    NoPayload(PathBuf),
    #[error("module {0} is not in modules.dep of kernel {1}")]
    NoModule(String, String),
    #[error("module file {0} is compressed; only uncompressed .ko modules are supported")]
    CompressedModule(PathBuf),
    #[error("{0} is not a statically linked x86-64 program and cannot be PID 1 of a container VM (build it with `make tether`)")]
    NotStatic(PathBuf),
}

type Result<T> = std::result::Result<T, BootstrapError>;

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| BootstrapError::Read {
        path: path.into(),
        source,
    })
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Write {
        path: path.into(),
        source,
    }
}

/// What an image was built from, and where its parts are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootManifest {
    pub version: String,
    pub kernel_release: String,
    pub modules: Vec<String>,
    pub tether_sha256: String,
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct BootImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub manifest: BootManifest,
}

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    pub tether: PathBuf,
    /// Kernel release; default: the newest one with both a `vmlinuz` and a modules directory.
    pub kernel_release: Option<String>,
    pub modules: Vec<String>,
    /// Modules loaded in parallel with `modules` (anything also needed by `modules` stays there).
    pub background_modules: Vec<String>,
    /// Where `/boot` and `/lib/modules` are (`/` normally; tests point elsewhere).
    pub sysroot: PathBuf,
}

impl BuildInputs {
    pub fn new(tether: impl Into<PathBuf>) -> Self {
        BuildInputs {
            tether: tether.into(),
            kernel_release: None,
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            background_modules: DEFAULT_BACKGROUND_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            sysroot: PathBuf::from("/"),
        }
    }
}

/// The newest kernel release that has both a `vmlinuz` and modules.
pub fn newest_kernel(sysroot: &Path) -> Result<String> {
    let mut releases: Vec<String> = fs::read_dir(sysroot.join("boot"))
        .map_err(|_| BootstrapError::NoKernel)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .filter(|r| {
            sysroot
                .join("lib/modules")
                .join(r)
                .join("modules.dep")
                .exists()
        })
        .collect();
    releases.sort_by_key(|r| version_key(r));
    releases.pop().ok_or(BootstrapError::NoKernel)
}

fn version_key(r: &str) -> Vec<u64> {
    r.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Order `wanted` modules and all their dependencies so each comes after what it needs.
pub fn resolve_modules(
    modules_dep: &str,
    wanted: &[String],
) -> std::result::Result<Vec<String>, String> {
    let norm = |s: &str| s.replace('-', "_");
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .and_then(|f| f.to_str())
            .map(|f| norm(f.split('.').next().unwrap_or(f)))
            .unwrap_or_default();
        deps.insert(
            name,
            (
                path.to_string(),
                rest.split_whitespace().map(String::from).collect(),
            ),
        );
    }
    let by_path: HashMap<&str, &str> = deps
        .iter()
        .map(|(n, (p, _))| (p.as_str(), n.as_str()))
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        by_path: &HashMap<&str, &str>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> std::result::Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, ds) = deps.get(name).ok_or_else(|| name.to_string())?;
        // modules.dep lists dependencies so that the last one must be loaded first.
        for d in ds.iter().rev() {
            let dn = by_path.get(d.as_str()).ok_or_else(|| d.clone())?;
            visit(dn, deps, by_path, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(&norm(w), &deps, &by_path, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Find the compressed kernel payload inside a bzImage and decompress it to an ELF `vmlinux`.
pub fn extract_vmlinux(vmlinuz: &Path) -> Result<Vec<u8>> {
    let data = read(vmlinuz)?;
    let formats: [(&[u8], &[&str]); 3] = [
        (
            &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
            &["xz", "-dc", "--single-stream"],
        ),
        (&[0x28, 0xb5, 0x2f, 0xfd], &["zstd", "-dcq"]),
        (&[0x1f, 0x8b, 0x08], &["gzip", "-dc"]),
    ];
    for (magic, cmd) in formats {
        let mut from = 0;
        while let Some(pos) = data[from..].windows(magic.len()).position(|w| w == magic) {
            let start = from + pos;
            from = start + 1;
            let Ok(mut child) = Command::new(cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            let mut stdin = child.stdin.take().expect("piped");
            let payload = data[start..].to_vec();
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
            let out = child.wait_with_output();
            let _ = feeder.join();
            if let Ok(out) = out {
                if out.stdout.starts_with(b"\x7fELF") {
                    return Ok(out.stdout);
                }
            }
        }
    }
    Err(BootstrapError::NoPayload(vmlinuz.into()))
}

const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Drop a module's appended signature. The guest kernel does not enforce signatures, and
/// checking one costs tens of milliseconds per module under TCG; the image's own hash (in its
/// version) already pins exactly which modules it carries.
pub fn strip_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(SIG_MAGIC) else {
        return module;
    };
    if body.len() < 12 {
        return module;
    }
    let info = &body[body.len() - 12..];
    let (signer_len, key_id_len) = (info[3] as usize, info[4] as usize);
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let total = 12 + sig_len + signer_len + key_id_len;
    if total > body.len() {
        return module;
    }
    &body[..body.len() - total]
}

/// True for an x86-64 ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Build (or find, when already built from the same inputs) a bootstrap image under `root`.
pub fn build(root: &Path, inputs: &BuildInputs) -> Result<BootImage> {
    let release = match &inputs.kernel_release {
        Some(r) => r.clone(),
        None => newest_kernel(&inputs.sysroot)?,
    };
    let vmlinuz = inputs
        .sysroot
        .join("boot")
        .join(format!("vmlinuz-{release}"));
    let moddir = inputs.sysroot.join("lib/modules").join(&release);
    let tether = read(&inputs.tether)?;
    if !is_static_elf(&tether) {
        return Err(BootstrapError::NotStatic(inputs.tether.clone()));
    }
    let kernel_bytes = read(&vmlinuz)?;
    let dep_path = moddir.join("modules.dep");
    let modules_dep = String::from_utf8_lossy(&read(&dep_path)?).into_owned();
    let no_module = |m| BootstrapError::NoModule(m, release.clone());
    let front = resolve_modules(&modules_dep, &inputs.modules).map_err(no_module)?;
    let background: Vec<String> = resolve_modules(&modules_dep, &inputs.background_modules)
        .map_err(no_module)?
        .into_iter()
        .filter(|m| !front.contains(m))
        .collect();
    let order: Vec<String> = front.iter().chain(&background).cloned().collect();
    let mut module_bytes = Vec::new();
    for m in &order {
        let p = moddir.join(m);
        if !m.ends_with(".ko") {
            return Err(BootstrapError::CompressedModule(p));
        }
        module_bytes.push(strip_signature(&read(&p)?).to_vec());
    }
    let tether_sha = sha256_hex(&[&tether]);
    let mut parts: Vec<&[u8]> = vec![
        BUILDER_VERSION.as_bytes(),
        &tether,
        &kernel_bytes,
        KERNEL_CMDLINE.as_bytes(),
    ];
    for (m, b) in order.iter().zip(&module_bytes) {
        parts.push(m.as_bytes());
        parts.push(b);
    }
    let version = format!("{release}-{}", &sha256_hex(&parts)[..12]);
    let dir = root.join(&version);
    let image = BootImage {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd.img"),
        dir: dir.clone(),
        manifest: BootManifest {
            version: version.clone(),
            kernel_release: release.clone(),
            modules: order.clone(),
            tether_sha256: tether_sha,
            cmdline: KERNEL_CMDLINE.to_string(),
        },
    };
    let manifest_path = dir.join("manifest.json");
    if let Ok(m) = fs::read(&manifest_path) {
        if serde_json::from_slice::<BootManifest>(&m).ok().as_ref() == Some(&image.manifest) {
            return Ok(image);
        }
    }
    // Build into a temporary directory and rename, so a half-built image is never used.
    let tmp = root.join(format!(".{version}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(write_err(&tmp))?;
    let vmlinux = extract_vmlinux(&vmlinuz)?;
    let kpath = tmp.join("vmlinux");
    fs::write(&kpath, &vmlinux).map_err(write_err(&kpath))?;
    let ipath = tmp.join("initrd.img");
    let f = fs::File::create(&ipath).map_err(write_err(&ipath))?;
    let mut w = cpio::Writer::new(std::io::BufWriter::new(f));
    let mut made = HashSet::new();
    let mut cpio_all = || -> std::io::Result<()> {
        for d in [
            "dev",
            "proc",
            "sys",
            "mnt",
            "mnt/root",
            "etc",
            "etc/kic",
            "lib",
            "lib/modules",
        ] {
            w.dir(d)?;
            made.insert(d.to_string());
        }
        w.entry("dev/console", cpio::S_IFCHR | 0o600, &[], (5, 1))?;
        w.file("init", 0o755, &tether)?;
        let (mut list, mut background_list) = (String::new(), String::new());
        for (m, b) in order.iter().zip(&module_bytes) {
            let rel = format!("lib/modules/{release}/{m}");
            let mut prefix = String::new();
            for comp in Path::new(&rel).parent().expect("has parent").components() {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(&comp.as_os_str().to_string_lossy());
                if made.insert(prefix.clone()) {
                    w.dir(&prefix)?;
                }
            }
            w.file(&rel, 0o644, b)?;
            let l = if background.contains(m) {
                &mut background_list
            } else {
                &mut list
            };
            l.push('/');
            l.push_str(&rel);
            l.push('\n');
        }
        w.file("etc/kic/modules", 0o644, list.as_bytes())?;
        w.file(
            "etc/kic/modules.background",
            0o644,
            background_list.as_bytes(),
        )?;
        Ok(())
    };
    cpio_all().map_err(write_err(&ipath))?;
    w.finish().map_err(write_err(&ipath))?;
    let mpath = tmp.join("manifest.json");
    fs::write(
        &mpath,
        serde_json::to_vec_pretty(&image.manifest).expect("serialisable"),
    )
    .map_err(write_err(&mpath))?;
    for p in [&kpath, &ipath, &mpath] {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o644));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(write_err(&dir))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\nkernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n";

    #[test]
    fn modules_come_after_their_dependencies_once() {
        let o = resolve_modules(
            DEP,
            &["virtio_pci".into(), "virtio-blk".into(), "ext4".into()],
        )
        .unwrap();
        let pos = |m: &str| {
            o.iter()
                .position(|p| p.ends_with(&format!("/{m}.ko")))
                .unwrap()
        };
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_pci"));
        assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
        assert!(pos("virtio") < pos("virtio_blk"));
        assert!(pos("jbd2") < pos("ext4") && pos("crc16") < pos("ext4"));
        assert_eq!(o.len(), 9);
        assert_eq!(
            resolve_modules(DEP, &["nosuch".into()]).unwrap_err(),
            "nosuch"
        );
    }

    #[test]
    fn signatures_are_stripped_exactly() {
        let mut m = b"\x7fELFmodule-body".to_vec();
        let body_len = m.len();
        m.extend_from_slice(b"SIGNATURE");
        m.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&9u32.to_be_bytes());
        m.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&m), &m[..body_len]);
        assert_eq!(strip_signature(b"unsigned"), b"unsigned");
    }

    #[test]
    fn newest_kernel_needs_modules() {
        let d = tempfile::tempdir().unwrap();
        for r in ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.2.0-1-amd64"] {
            fs::create_dir_all(d.path().join("boot")).unwrap();
            fs::write(d.path().join(format!("boot/vmlinuz-{r}")), b"").unwrap();
        }
        for r in ["6.1.0-9-amd64", "6.1.0-10-amd64"] {
            fs::create_dir_all(d.path().join(format!("lib/modules/{r}"))).unwrap();
            fs::write(d.path().join(format!("lib/modules/{r}/modules.dep")), b"").unwrap();
        }
        assert_eq!(newest_kernel(d.path()).unwrap(), "6.1.0-10-amd64");
    }

    /// Against the host's real kernel package, when installed (the project's set-up installs it).
    #[test]
    fn builds_from_the_installed_kernel_and_reuses_it() {
        let Ok(release) = newest_kernel(Path::new("/")) else {
            eprintln!("skipped: no kernel package installed");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        // Any static program will do as the tether here; busybox-static is installed by the set-up.
        let tether = d.path().join("tether");
        fs::copy("/bin/busybox", &tether).unwrap();
        let inputs = BuildInputs::new(&tether);
        let a = build(&d.path().join("boot"), &inputs).unwrap();
        assert!(a.manifest.version.starts_with(&release));
        // The network driver comes with its dependencies, after them, and after virtio_pci.
        let pos = |m: &str| {
            a.manifest
                .modules
                .iter()
                .position(|p| p.ends_with(&format!("/{m}.ko")))
                .unwrap_or_else(|| panic!("{m} missing from {:?}", a.manifest.modules))
        };
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("virtio_pci") < pos("virtio_net"));
        assert!(pos("virtio_blk") < pos("virtio_net"));
        let k = fs::read(&a.kernel).unwrap();
        assert!(k.starts_with(b"\x7fELF"));
        let mtime = fs::metadata(&a.initrd).unwrap().modified().unwrap();
        let b = build(&d.path().join("boot"), &inputs).unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(
            fs::metadata(&b.initrd).unwrap().modified().unwrap(),
            mtime,
            "rebuilt without a change"
        );
        let mut changed = fs::read(&tether).unwrap();
        changed.extend_from_slice(b"changed");
        fs::write(&tether, changed).unwrap();
        let c = build(&d.path().join("boot"), &inputs).unwrap();
        assert_ne!(a.manifest.version, c.manifest.version);
        // A dynamically linked program is refused with a clear error.
        let dynamic = BuildInputs::new("/bin/ls");
        let e = build(&d.path().join("boot"), &dynamic).unwrap_err();
        assert!(e.to_string().contains("not a statically linked"), "{e}");
    }
}
