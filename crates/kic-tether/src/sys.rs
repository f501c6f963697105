//! Turning a freshly booted VM into the container: pseudo filesystems, modules, the root disk.

use kic_proto::ContainerSpec;
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

/// Mount the container's root disk, give it `/proc`, `/sys`, `/dev`, and move the tether into it.
pub fn enter_container(spec: &ContainerSpec) -> Result<(), String> {
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
    if !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
        write_file("/etc/hostname", &format!("{}\n", spec.hostname))?;
    }
    write_file("/etc/hosts", &spec.hosts)?;
    if let Some(r) = &spec.resolv_conf {
        write_file("/etc/resolv.conf", r)?;
    }
    let _ = fs::create_dir_all("/tmp");
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
