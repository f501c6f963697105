//! The endpoint's supervisor: a detached `kic-machine supervise --name N` process (its own
//! session, so it outlives the shell that created the VCH) that runs `bin/kic-vch`, restarts it
//! when it exits unexpectedly, and stops it on SIGTERM.

use crate::layout::Vch;
use crate::util::{pid_alive, read_pid};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Grace period between SIGTERM and SIGKILL when stopping kic-vch.
const STOP_GRACE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);

fn log(msg: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{now} {msg}");
}

fn append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The supervisor's main loop (runs in the detached process).
pub fn run(v: &Vch) -> Result<()> {
    // One supervisor per VCH: hold an exclusive lock for our lifetime.
    let lock = append(&v.supervisor_lock())?;
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another supervisor already runs VCH {}", v.name);
    }
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, h);
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let me = std::process::id();
    crate::util::write_file(&v.supervisor_pid(), format!("{me}\n").as_bytes(), 0o644)?;
    log(&format!("supervisor {me} started for VCH {}", v.name));
    let mut backoff = BACKOFF_MIN;
    let mut starts = 0u64;
    while !STOP.load(Ordering::SeqCst) {
        rotate(&v.vch_log());
        let out = append(&v.vch_log())?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(v.vch_bin());
        cmd.arg("--config")
            .arg(v.config())
            .current_dir(&v.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // If the supervisor itself dies (kill -9), its child gets SIGTERM instead of running on
        // unsupervised and holding the port against the next supervisor.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                log(&format!("cannot start {}: {e}", v.vch_bin().display()));
                if !sleep_unless_stopped(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        starts += 1;
        let pid = child.id();
        let _ = crate::util::write_file(&v.vch_pid(), format!("{pid}\n").as_bytes(), 0o644);
        log(&format!("kic-vch started (pid {pid}, start #{starts})"));
        let status = loop {
            if STOP.load(Ordering::SeqCst) {
                log(&format!("stopping kic-vch (pid {pid})"));
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                let deadline = Instant::now() + STOP_GRACE;
                let st = loop {
                    if let Some(st) = child.try_wait()? {
                        break st;
                    }
                    if Instant::now() > deadline {
                        log(&format!(
                            "kic-vch (pid {pid}) still running {}s after SIGTERM: SIGKILL",
                            STOP_GRACE.as_secs()
                        ));
                        let _ = child.kill();
                        break child.wait()?;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                log(&format!("kic-vch (pid {pid}) stopped: {st}"));
                let _ = std::fs::remove_file(v.vch_pid());
                let _ = std::fs::remove_file(v.supervisor_pid());
                log("supervisor exits");
                return Ok(());
            }
            if let Some(st) = child.try_wait()? {
                break st;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = std::fs::remove_file(v.vch_pid());
        let ran = started.elapsed();
        if ran >= STABLE {
            backoff = BACKOFF_MIN;
        }
        log(&format!(
            "kic-vch exited unexpectedly (pid {pid}, {status}, after {:.1}s); restarting in {:.1}s",
            ran.as_secs_f64(),
            backoff.as_secs_f64()
        ));
        if !sleep_unless_stopped(backoff) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let _ = std::fs::remove_file(v.supervisor_pid());
    log("supervisor exits");
    Ok(())
}

/// Keep one older log when the endpoint's log has grown large (checked at each start).
fn rotate(log: &Path) {
    const MAX: u64 = 64 << 20;
    if std::fs::metadata(log).is_ok_and(|m| m.len() > MAX) {
        let old = log.with_extension("log.1");
        if std::fs::rename(log, &old).is_ok() {
            self::log(&format!("{} rotated to {}", log.display(), old.display()));
        }
    }
}

fn sleep_unless_stopped(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if STOP.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !STOP.load(Ordering::SeqCst)
}

/// The running supervisor's pid (checked to be a kic-machine supervisor, not a recycled pid).
pub fn supervisor_pid(v: &Vch) -> Option<i32> {
    let pid = read_pid(&v.supervisor_pid())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.contains(&&b"supervise"[..]) && args.contains(&v.name.as_bytes());
    ours.then_some(pid)
}

pub fn vch_pid(v: &Vch) -> Option<i32> {
    supervisor_pid(v)?;
    read_pid(&v.vch_pid())
}

/// Start a detached supervisor for `v` (no-op if one runs). Returns its pid.
pub fn start(root: &Path, v: &Vch) -> Result<i32> {
    if let Some(p) = supervisor_pid(v) {
        return Ok(p);
    }
    let exe =
        std::env::current_exe().context("cannot find this program to start the supervisor")?;
    let log = append(&v.supervisor_log())?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--state-root")
        .arg(root)
        .arg("supervise")
        .arg("--name")
        .arg(&v.name)
        .current_dir(&v.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the supervisor")?;
    let pid = child.id() as i32;
    // Not waited for: it runs on after we exit (and is reparented).
    drop(child);
    // Wait until it holds its pid file (or died).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if supervisor_pid(v) == Some(pid) {
            return Ok(pid);
        }
        let mut st = 0;
        if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
            bail!(
                "the supervisor exited at once:\n{}",
                crate::util::tail(&v.supervisor_log(), 10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the supervisor did not start within 10s (see {})",
        v.supervisor_log().display()
    )
}

/// Stop the supervisor and its kic-vch. Returns whether one was running.
pub fn stop(v: &Vch) -> Result<bool> {
    let Some(pid) = supervisor_pid(v) else {
        // A kic-vch left behind by a supervisor that was killed hard.
        if let Some(c) = read_pid(&v.vch_pid()) {
            if is_our_vch(v, c) {
                unsafe { libc::kill(c, libc::SIGTERM) };
                wait_gone(c, STOP_GRACE);
            }
        }
        return Ok(false);
    };
    let child = read_pid(&v.vch_pid());
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !wait_gone(pid, STOP_GRACE + Duration::from_secs(10)) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(c) = child.filter(|c| is_our_vch(v, *c)) {
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
        wait_gone(pid, Duration::from_secs(5));
    }
    if let Some(c) = child {
        if is_our_vch(v, c) && !wait_gone(c, Duration::from_secs(5)) {
            bail!("kic-vch (pid {c}) of VCH {} did not stop", v.name);
        }
    }
    Ok(true)
}

fn is_our_vch(v: &Vch, pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*v.config().to_string_lossy()))
        .unwrap_or(false)
}

fn wait_gone(pid: i32, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        // Reap it if it is our child (it is not, normally).
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !pid_alive(pid)
}

/// Whether the endpoint answers `GET /_ping` with 200 on its socket.
pub fn ping(v: &Vch) -> bool {
    crate::http::request(&v.socket(), "GET", "/_ping", Duration::from_secs(5))
        .map(|r| r.status == 200)
        .unwrap_or(false)
}

/// Wait for the endpoint to answer, failing early if the supervisor dies or kic-vch exits.
pub fn wait_ready(v: &Vch, timeout: Duration, log_offset: u64) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ping(v) {
            return Ok(());
        }
        let log = std::fs::read(v.supervisor_log()).unwrap_or_default();
        let new = String::from_utf8_lossy(log.get(log_offset as usize..).unwrap_or(&[]));
        if new.contains("kic-vch exited unexpectedly") || new.contains("cannot start") {
            bail!(
                "the endpoint exited during startup; its log ({}) ends with:\n{}",
                v.vch_log().display(),
                crate::util::tail(&v.vch_log(), 25)
            );
        }
        if supervisor_pid(v).is_none() {
            bail!(
                "the supervisor died during startup; the end of {}:\n{}",
                v.supervisor_log().display(),
                crate::util::tail(&v.supervisor_log(), 15)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the endpoint did not answer on {} within {}s; the end of {}:\n{}",
                v.socket().display(),
                timeout.as_secs(),
                v.vch_log().display(),
                crate::util::tail(&v.vch_log(), 25)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Length of the supervisor log now (for `wait_ready`).
pub fn log_offset(v: &Vch) -> u64 {
    std::fs::metadata(v.supervisor_log())
        .map(|m| m.len())
        .unwrap_or(0)
}
