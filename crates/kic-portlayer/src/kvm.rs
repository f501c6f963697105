//! Is KVM really usable? `/dev/kvm` existing is not enough (nested or paravirtual hosts expose
//! it without being able to run ordinary guests), so run a one-instruction guest and see.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: libc::c_ulong) -> Result<i32, String> {
    // SAFETY: each call site passes a request and an argument of the kind the kernel expects.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        Err(format!(
            "ioctl {req:#x}: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(r)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned to us by the kernel and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Run `hlt` in a real-mode KVM guest; Ok when the vCPU comes back with a HLT exit.
fn probe_once() -> Result<(), String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let kfd = kvm.as_raw_fd();
    if ioctl(kfd, KVM_GET_API_VERSION, 0)? != 12 {
        return Err("unexpected KVM API version".into());
    }
    let vm = owned(ioctl(kfd, KVM_CREATE_VM, 0)?);
    // SAFETY: anonymous private mapping of one page.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    // SAFETY: `mem` is a fresh writable page; put `hlt` at guest address 0.
    unsafe { *(mem as *mut u8) = 0xf4 };
    let region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x1000,
        userspace_addr: mem as u64,
    };
    let result = (|| {
        ioctl(
            vm.as_raw_fd(),
            KVM_SET_USER_MEMORY_REGION,
            &region as *const _ as libc::c_ulong,
        )?;
        let vcpu = owned(ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU, 0)?);
        let size = ioctl(kfd, KVM_GET_VCPU_MMAP_SIZE, 0)? as usize;
        // SAFETY: mapping the vCPU's run structure as the KVM API documents.
        let run = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if run == libc::MAP_FAILED {
            return Err("mmap of kvm_run failed".to_string());
        }
        let mut sregs = [0u8; 312];
        ioctl(
            vcpu.as_raw_fd(),
            KVM_GET_SREGS,
            sregs.as_mut_ptr() as libc::c_ulong,
        )?;
        // cs is the first segment: base (u64) at 0, selector (u16) at 12.
        sregs[0..8].copy_from_slice(&0u64.to_ne_bytes());
        sregs[12..14].copy_from_slice(&0u16.to_ne_bytes());
        ioctl(
            vcpu.as_raw_fd(),
            KVM_SET_SREGS,
            sregs.as_ptr() as libc::c_ulong,
        )?;
        let mut regs = [0u64; 18]; // rax..r15, rip, rflags
        regs[17] = 2;
        ioctl(
            vcpu.as_raw_fd(),
            KVM_SET_REGS,
            regs.as_ptr() as libc::c_ulong,
        )?;
        let r = ioctl(vcpu.as_raw_fd(), KVM_RUN, 0);
        // SAFETY: exit_reason is the u32 at offset 8 of kvm_run.
        let reason = unsafe { *((run as *const u8).add(8) as *const u32) };
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(run, size) };
        r?;
        if reason == KVM_EXIT_HLT {
            Ok(())
        } else {
            Err(format!("test guest exited with reason {reason}, not HLT"))
        }
    })();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(mem, 0x1000) };
    result
}

/// Whether container VMs can use KVM here, with the reason when they cannot.
///
/// Two steps: a one-instruction guest through the KVM API (cheap: rules out hosts without
/// usable KVM at all), then the real bootstrap image booted by QEMU with `accel=kvm` and the
/// CPU model container VMs get (`-cpu host`), which must reach the tether within 10 s. The
/// second step is what catches hosts whose `/dev/kvm` runs toy guests but not Linux. The answer
/// is cached per bootstrap version and QEMU binary in `/run/kic`, which a host reboot clears.
pub fn usable(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(probe_once());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| Err("test guest did not come back within 5 s".into()))?;
    let stamp = std::fs::metadata(QEMU)
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let key = format!("{}|{}|{stamp}", kernel.display(), initrd.display());
    let cache = std::path::Path::new(crate::layout::SOCKET_DIR).join("kvm-probe.json");
    if let Some((k, r)) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<(String, Result<(), String>)>(&b).ok())
    {
        if k == key {
            return r;
        }
    }
    let r = boot_probe(kernel, initrd, cmdline);
    let _ = std::fs::create_dir_all(crate::layout::SOCKET_DIR);
    let _ = std::fs::write(&cache, serde_json::to_vec(&(key, &r)).unwrap_or_default());
    r
}

/// The QEMU binary used for probes and bare boots (libvirt finds its own).
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// Why a bare boot did not reach PID 1.
#[derive(Debug)]
pub enum BareBootError {
    /// QEMU could not be started at all.
    Spawn(String),
    /// QEMU ended before the guest was up; its stderr.
    Exited(String),
    /// The guest was not up within the time allowed; QEMU's stderr.
    Timeout(String),
}

impl std::fmt::Display for BareBootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BareBootError::Spawn(e) => f.write_str(e),
            BareBootError::Exited(e) => write!(f, "QEMU ended before the guest was up: {e}"),
            BareBootError::Timeout(e) => write!(f, "the guest was not up in time: {e}"),
        }
    }
}

/// Boot the bootstrap image in probe mode (`kic.probe`: PID 1 prints a marker and ends) in a
/// bare QEMU, with the accelerator and CPU model container VMs get for `domain_type`; the time
/// from starting QEMU until the marker arrived. Used by the KVM probe and by `kic-bench`'s floor.
pub fn bare_boot(
    domain_type: &str,
    mem_mib: u64,
    vcpus: u32,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<Duration, BareBootError> {
    use std::io::Read;
    // Same CPU models as the domain XML (see `domain.rs`).
    let (accel, cpu) = if domain_type == "kvm" {
        ("kvm", "host")
    } else {
        ("tcg", "qemu64,+rdrand")
    };
    let t0 = std::time::Instant::now();
    let mut child = std::process::Command::new(QEMU)
        .args(["-machine", &format!("pc,accel={accel}"), "-cpu", cpu])
        .args(["-m", &mem_mib.to_string(), "-smp", &vcpus.to_string()])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{cmdline} kic.probe"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BareBootError::Spawn(format!("cannot run {QEMU}: {e}")))?;
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(15).any(|w| w == b"KIC-PROBE-READY") {
                let _ = tx.send(t0.elapsed());
                return;
            }
        }
    });
    // The reader ends without the marker only when QEMU's output ended, i.e. QEMU exited.
    let up = rx.recv_timeout(timeout);
    let _ = child.kill();
    let out = child.wait_with_output().ok();
    let err = out
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace('\n', "; ")
        })
        .unwrap_or_default();
    match up {
        Ok(d) => Ok(d),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(BareBootError::Exited(err)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(BareBootError::Timeout(err)),
    }
}

/// Boot the bootstrap image in probe mode under KVM; Ok when the tether says it is up.
pub fn boot_probe(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    cmdline: &str,
) -> Result<(), String> {
    let suffix = |err: String| {
        if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        }
    };
    match bare_boot(
        "kvm",
        128,
        1,
        kernel,
        initrd,
        cmdline,
        Duration::from_secs(10),
    ) {
        Ok(_) => Ok(()),
        Err(BareBootError::Spawn(e)) => Err(e),
        Err(BareBootError::Exited(e)) => {
            Err(format!("QEMU could not run a KVM guest{}", suffix(e)))
        }
        Err(BareBootError::Timeout(e)) => {
            Err(format!("a KVM guest did not boot within 10 s{}", suffix(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_probe_answers_without_hanging() {
        // Whatever this machine is, the first step must decide, not hang.
        let _ = super::probe_once();
    }

    #[test]
    fn boot_probe_fails_cleanly_on_a_missing_kernel() {
        let e = super::boot_probe(
            "/nonexistent/vmlinux".as_ref(),
            "/nonexistent/initrd".as_ref(),
            "",
        )
        .unwrap_err();
        assert!(
            e.contains("could not run a KVM guest") || e.contains("did not boot"),
            "{e}"
        );
    }
}
