//! Turning a freshly booted VM into the container: pseudo filesystems, modules, the network
//! (`net`), the root disk.

use kic_proto::{ContainerSpec, Lease};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Lists of modules to load, in order, written by `kic-bootstrap` into the initramfs: the
/// first on the main thread, the second (filesystems) on a thread of its own at the same time.
pub const MODULE_LIST: &str = "/etc/kic/modules";
pub const BACKGROUND_MODULE_LIST: &str = "/etc/kic/modules.background";

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// Mounts the tether itself needs right after boot.
pub fn early_mounts() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    Ok(())
}

/// Load the modules of one list in its order.
pub fn load_modules(list: &str) -> Result<usize, String> {
    let list = match fs::read_to_string(list) {
        Ok(l) => l,
        Err(_) => return Ok(0),
    };
    let mut n = 0;
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = fs::File::open(path).map_err(|e| format!("open module {path}: {e}"))?;
        let params = CString::default();
        // SAFETY: finit_module with a valid fd and NUL-terminated params.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("load module {path}: {e}"));
            }
        }
        n += 1;
        milestone(&format!("loaded {path}"));
    }
    Ok(n)
}

/// The background module loading, waited for before the container's disk is mounted.
pub struct Background {
    result: std::sync::Mutex<Option<std::thread::JoinHandle<Result<usize, String>>>>,
}

pub static BACKGROUND_MODULES: Background = Background {
    result: std::sync::Mutex::new(None),
};

impl Background {
    pub fn start(&self) {
        let h = std::thread::spawn(|| load_modules(BACKGROUND_MODULE_LIST));
        *self.result.lock().expect("lock") = Some(h);
    }

    /// Wait for the loading to end (once; later calls return at once).
    pub fn wait(&self) -> Result<(), String> {
        let h = self.result.lock().expect("lock").take();
        match h {
            Some(h) => h
                .join()
                .map_err(|_| "module loading thread panicked".to_string())?
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The device node of the virtio-serial port called `name`.
pub fn find_port(name: &str) -> Result<PathBuf, String> {
    wait_for(
        &format!("virtio-serial port {name}"),
        Duration::from_secs(30),
        || {
            for e in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
                let n = fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Some(dev);
                    }
                }
            }
            None
        },
    )
}

fn dev_nodes(dev: &str) -> Result<(), String> {
    let nodes: [(&str, u64, u64, u32); 6] = [
        ("null", 1, 3, 0o666),
        ("zero", 1, 5, 0o666),
        ("full", 1, 7, 0o666),
        ("random", 1, 8, 0o666),
        ("urandom", 1, 9, 0o666),
        ("tty", 5, 0, 0o666),
    ];
    for (name, major, minor, mode) in nodes {
        let p = format!("{dev}/{name}");
        mknod(
            p.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod {p}: {e}"))?;
        // mknod honours the umask; make the mode exact.
        nix::sys::stat::fchmodat(
            None,
            p.as_str(),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("chmod {p}: {e}"))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, format!("{dev}/{link}"))
            .map_err(|e| format!("symlink {dev}/{link}: {e}"))?;
    }
    Ok(())
}

fn write_file(path: &str, content: &str) -> Result<(), String> {
    // Replace rather than write through: the image may have a symlink there.
    let _ = fs::remove_file(path);
    if let Some(parent) = Path::new(path).parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(path, content).map_err(|e| format!("write {path}: {e}"))
}

/// The container's `/etc/resolv.conf`, if the tether writes one: the host's, else, when the
/// first interface uses DHCP and its lease names DNS servers, theirs.
fn resolv_conf(spec: &ContainerSpec, leases: &[Lease]) -> Option<String> {
    if let Some(r) = &spec.resolv_conf {
        return Some(r.clone());
    }
    let first = spec.interfaces.first().filter(|i| i.dhcp)?;
    let lease = leases.iter().find(|l| l.mac == first.mac)?;
    if lease.dns.is_empty() {
        return None;
    }
    Some(
        lease
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect(),
    )
}

/// Configure the network, mount the container's root disk and volumes ([`mount_container`]),
/// and write its hostname, `/etc/hosts` and `/etc/resolv.conf`: everything before its main
/// process starts. The leases of the interfaces configured by DHCP.
pub fn enter_container(spec: &ContainerSpec) -> Result<Vec<Lease>, String> {
    let leases = crate::net::configure(&spec.interfaces)?;
    milestone("network configured");
    mount_container(spec)?;
    if !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
        write_file("/etc/hostname", &format!("{}\n", spec.hostname))?;
    }
    write_file("/etc/hosts", &spec.hosts)?;
    if let Some(r) = resolv_conf(spec, &leases) {
        write_file("/etc/resolv.conf", &r)?;
    }
    let _ = fs::create_dir_all("/tmp");
    Ok(leases)
}

/// Mount the container's root disk, give it `/proc`, `/sys`, `/dev`, move the tether into it
/// and mount the volumes: the container's files as its processes would see them. This is all
/// a maintenance VM (`Request::Mount`) does; it writes nothing of its own into the container.
pub fn mount_container(spec: &ContainerSpec) -> Result<(), String> {
    BACKGROUND_MODULES.wait()?;
    let root = "/mnt/root";
    let dev = spec.root_device.as_str();
    wait_for(&format!("root disk {dev}"), Duration::from_secs(30), || {
        Path::new(dev).exists().then_some(())
    })?;
    mnt(dev, root, "ext4", MsFlags::MS_NOATIME, None)
        .map_err(|e| format!("{e} (the container's root disk)"))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", &format!("{root}/proc"), "proc", nosuid, None)?;
    mnt(
        "sysfs",
        &format!("{root}/sys"),
        "sysfs",
        nosuid | MsFlags::MS_RDONLY,
        None,
    )?;
    let d = format!("{root}/dev");
    mnt(
        "tmpfs",
        &d,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    dev_nodes(&d)?;
    mnt(
        "devpts",
        &format!("{d}/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mnt(
        "shm",
        &format!("{d}/shm"),
        "tmpfs",
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    // The switch_root dance: the initramfs cannot be pivoted away, so move the new root over it.
    std::env::set_current_dir(root).map_err(|e| format!("chdir {root}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // Volumes are mounted from inside the new root, so that their targets resolve (symlinks
    // of the image included) as the container will see them.
    mount_volumes(&spec.mounts)
}

/// The block device (major, minor) of the disk whose serial number is `serial`.
fn find_disk(serial: &str) -> Result<(u64, u64), String> {
    wait_for(
        &format!("volume disk with serial {serial}"),
        Duration::from_secs(30),
        || {
            for e in fs::read_dir("/sys/block").ok()?.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim() == serial {
                    let dev = fs::read_to_string(e.path().join("dev")).ok()?;
                    let (ma, mi) = dev.trim().split_once(':')?;
                    return Some((ma.parse().ok()?, mi.parse().ok()?));
                }
            }
            None
        },
    )
}

/// Mount every volume disk at its target (shallow targets first), copying the image's content
/// at the target into a volume that is still empty (Docker's copy-up). Runs inside the new root.
fn mount_volumes(mounts: &[kic_proto::VolumeMount]) -> Result<(), String> {
    let mut order: Vec<&kic_proto::VolumeMount> = mounts.iter().collect();
    order.sort_by_key(|m| Path::new(&m.target).components().count());
    let stage = "/dev/.kic-volume";
    for m in order {
        let (major, minor) = find_disk(&m.serial)?;
        let node = "/dev/.kic-volume-disk";
        let _ = fs::remove_file(node);
        mknod(
            node,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod {node}: {e}"))?;
        let (flags, data) = if m.read_only {
            // `noload`: a read-only disk cannot have its journal replayed.
            (MsFlags::MS_RDONLY, Some("noload"))
        } else {
            (MsFlags::empty(), None)
        };
        let r = mnt(node, stage, "ext4", flags, data);
        let _ = fs::remove_file(node);
        r.map_err(|e| format!("{e} (the volume for {})", m.target))?;
        let stage_path = Path::new(stage);
        let target = Path::new(&m.target);
        let prepared = if m.read_only {
            Ok(())
        } else {
            prepare_volume(stage_path, target, m.copy_up)
        };
        let created = prepared.and_then(|_| match fs::symlink_metadata(target) {
            Ok(md) if md.is_dir() => Ok(()),
            Ok(md) if md.file_type().is_symlink() && target.is_dir() => Ok(()),
            Ok(_) => Err(format!(
                "cannot mount volume at {}: it is not a directory in the image",
                m.target
            )),
            Err(_) => fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", m.target)),
        });
        if let Err(e) = created {
            let _ = nix::mount::umount(stage);
            return Err(e);
        }
        mount(
            Some(stage),
            target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| format!("mount volume on {}: {e}", m.target))?;
        milestone(&format!("volume mounted on {}", m.target));
    }
    let _ = fs::remove_dir(stage);
    Ok(())
}

/// A volume is empty when it has nothing but mkfs's empty `lost+found`, which then goes (a new
/// Docker volume is an empty directory); with `copy_up`, the image's content at `target` is
/// copied in, with the ownership and mode of `target` itself.
fn prepare_volume(vol: &Path, target: &Path, copy_up: bool) -> Result<(), String> {
    let entries: Vec<_> = fs::read_dir(vol)
        .map_err(|e| format!("read volume for {}: {e}", target.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let lf = vol.join("lost+found");
    let only_lf = entries.iter().all(|n| n == "lost+found")
        && fs::read_dir(&lf)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
    if !only_lf {
        return Ok(());
    }
    let _ = fs::remove_dir(&lf);
    if !copy_up {
        return Ok(());
    }
    match fs::metadata(target) {
        Ok(md) if md.is_dir() => {
            copy_tree(target, vol)
                .map_err(|e| format!("copy {} into its volume: {e}", target.display()))?;
            copy_attrs(&md, vol, false)
                .map_err(|e| format!("copy {} into its volume: {e}", target.display()))
        }
        _ => Ok(()),
    }
}

fn copy_attrs(md: &fs::Metadata, dst: &Path, symlink: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    if !symlink {
        // After the chown, which clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        dst,
        &ts(md.atime(), md.atime_nsec()),
        &ts(md.mtime(), md.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// Copy a tree keeping owners, modes, times, symlinks and device nodes.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for e in fs::read_dir(src)? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let md = fs::symlink_metadata(&from)?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                continue; // sockets belong to a process, not to content
            };
            mknod(
                &to,
                kind,
                Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )
            .map_err(std::io::Error::from)?;
        }
        copy_attrs(&md, &to, ft.is_symlink())?;
    }
    Ok(())
}

/// With `kic.debug` on the kernel command line, print a boot milestone with the uptime.
pub fn milestone(what: &str) {
    if cmdline_has("kic.debug") {
        let up = fs::read_to_string("/proc/uptime").unwrap_or_default();
        eprintln!(
            "kic-tether: {} {what}",
            up.split_whitespace().next().unwrap_or("?")
        );
    }
}

/// Write everything to disk and end the VM (the domain is configured to stop on reboot).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// True when the kernel command line has `word` (as `word` or `word=...`).
pub fn cmdline_has(word: &str) -> bool {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == word || w.starts_with(&format!("{word}=")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kic-tether-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn resolv_conf_comes_from_the_host_or_the_first_interface_lease() {
        use kic_proto::NetInterface;
        let iface = |mac: &str, dhcp| NetInterface {
            mac: mac.into(),
            name: "eth0".into(),
            dhcp,
            ..Default::default()
        };
        let lease = |mac: &str, dns: &[&str]| Lease {
            mac: mac.into(),
            address: "10.99.7.50/24".into(),
            dns: dns.iter().map(|d| d.to_string()).collect(),
            server: "10.99.7.1".into(),
            lease_secs: 120,
            ..Default::default()
        };
        let mut spec = ContainerSpec {
            interfaces: vec![
                iface("02:42:0a:63:07:32", true),
                iface("02:42:0a:00:00:02", true),
            ],
            ..Default::default()
        };
        let leases = [
            lease("02:42:0a:63:07:32", &["10.99.7.53", "10.99.7.54"]),
            lease("02:42:0a:00:00:02", &["10.0.0.53"]),
        ];
        assert_eq!(
            resolv_conf(&spec, &leases).as_deref(),
            Some("nameserver 10.99.7.53\nnameserver 10.99.7.54\n")
        );
        // No DNS in the first lease: the image's file stays (the second one's does not count).
        assert_eq!(
            resolv_conf(&spec, &[lease("02:42:0a:63:07:32", &[]), leases[1].clone()]),
            None
        );
        // The host's file wins.
        spec.resolv_conf = Some("nameserver 192.0.2.1\n".into());
        assert_eq!(
            resolv_conf(&spec, &leases).as_deref(),
            Some("nameserver 192.0.2.1\n")
        );
        // A first interface with a fixed address: the image's file.
        spec.resolv_conf = None;
        spec.interfaces[0].dhcp = false;
        assert_eq!(resolv_conf(&spec, &leases), None);
        spec.interfaces.clear();
        assert_eq!(resolv_conf(&spec, &leases), None);
    }

    #[test]
    fn empty_volume_gets_the_image_content() {
        let (img, vol) = (tmp("img"), tmp("vol"));
        fs::create_dir_all(img.join("sub")).unwrap();
        fs::write(img.join("sub/f"), "hi").unwrap();
        fs::set_permissions(img.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("sub/f", img.join("link")).unwrap();
        fs::set_permissions(&img, fs::Permissions::from_mode(0o750)).unwrap();
        fs::create_dir(vol.join("lost+found")).unwrap();
        prepare_volume(&vol, &img, true).unwrap();
        assert!(!vol.join("lost+found").exists());
        assert_eq!(fs::read_to_string(vol.join("link")).unwrap(), "hi");
        assert_eq!(fs::read_link(vol.join("link")).unwrap(), Path::new("sub/f"));
        let md = fs::metadata(vol.join("sub/f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::metadata(&vol).unwrap().mode() & 0o7777,
            0o750,
            "the volume root takes the target's mode"
        );
        // A volume with content is left alone.
        fs::write(img.join("new"), "x").unwrap();
        prepare_volume(&vol, &img, true).unwrap();
        assert!(!vol.join("new").exists());
        let _ = fs::remove_dir_all(&img);
        let _ = fs::remove_dir_all(&vol);
    }

    #[test]
    fn nocopy_and_missing_target_leave_the_volume_empty() {
        let (img, vol) = (tmp("img2"), tmp("vol2"));
        fs::write(img.join("f"), "x").unwrap();
        fs::create_dir(vol.join("lost+found")).unwrap();
        prepare_volume(&vol, &img, false).unwrap();
        assert_eq!(fs::read_dir(&vol).unwrap().count(), 0);
        prepare_volume(&vol, &img.join("absent"), true).unwrap();
        assert_eq!(fs::read_dir(&vol).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&img);
        let _ = fs::remove_dir_all(&vol);
    }
}
