//! Docker's PID 1: the container's main process is the init of its own PID namespace (so
//! signals it has no handler for are ignored, as in Docker), with a `/proc` of that namespace.
//!
//! Runs between fork and exec ([`enter`] is called from `pre_exec`): the forked child enters
//! or creates the namespaces and forks again. The grandchild goes on to exec the process; the
//! child stays as a *shim* the tether knows as the process: it forwards every signal it can
//! catch to the grandchild and ends as the grandchild ends (same code, or the same signal).
//! SIGKILL of the shim takes the grandchild with it (parent-death signal).

use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Create the namespaces (`join` is `None`: the main process) or join them (`(mnt, pid)` file
/// descriptors of the main process's shim; the working directory `cwd` is set again), then
/// fork; returns only in the grandchild.
///
/// # Safety
/// Call only in a forked child before exec: it forks and never returns in the shim.
pub unsafe fn enter(join: Option<(i32, i32)>, cwd: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY (whole body): async-signal-safe libc calls on values we own.
    unsafe {
        match join {
            None => {
                if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) < 0 {
                    return Err(last_err());
                }
            }
            Some((mnt, pid)) => {
                // Entering a mount namespace moves the working directory to its root.
                if libc::setns(mnt, libc::CLONE_NEWNS) < 0
                    || libc::setns(pid, libc::CLONE_NEWPID) < 0
                    || libc::chdir(cwd.as_ptr()) < 0
                {
                    return Err(last_err());
                }
            }
        }
        let child = libc::fork();
        if child < 0 {
            return Err(last_err());
        }
        if child == 0 {
            // The process itself. Die with the shim.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if join.is_none() {
                // A /proc that shows this namespace, in a mount namespace of the container's
                // own (the tether keeps its view).
                let root = c"/";
                let (proc_, fstype) = (c"/proc", c"proc");
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) < 0
                    || libc::mount(
                        fstype.as_ptr(),
                        proc_.as_ptr(),
                        fstype.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ) < 0
                {
                    return Err(last_err());
                }
            }
            return Ok(());
        }
        // The shim: no files (the process's stdio and std's exec-error pipe stay with it).
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        CHILD.store(child, Ordering::Relaxed);
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = if sig == libc::SIGCHLD {
                libc::SIG_DFL
            } else {
                forward as *const () as usize
            };
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}
