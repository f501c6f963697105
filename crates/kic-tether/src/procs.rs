//! The process table: starting processes as the container's user, their stdio, reaping.

use crate::output::{self, OutputBuf};
use crate::user;
use kic_proto::{Event, ProcessSpec, ProcessState, STDERR, STDOUT};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a process's stdin goes.
pub enum Stdin {
    Pipe(AsyncFd<OwnedFd>),
    Tty(Arc<AsyncFd<OwnedFd>>),
}

impl Stdin {
    fn fd(&self) -> &AsyncFd<OwnedFd> {
        match self {
            Stdin::Pipe(f) => f,
            Stdin::Tty(f) => f,
        }
    }

    /// Write all of `data`, waiting while the process does not read.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        let fd = self.fd();
        while !data.is_empty() {
            let mut g = fd.writable().await?;
            match g.try_io(|inner| {
                // SAFETY: `data` is valid for its length and the fd is open.
                let n = unsafe { libc::write(inner.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

pub struct Proc {
    pub pid: i32,
    pub tty: bool,
    pub outputs: Vec<(u8, Arc<OutputBuf>)>,
    pub stdin: Arc<tokio::sync::Mutex<Option<Stdin>>>,
    pub master: Option<Arc<AsyncFd<OwnedFd>>>,
    pub exit: Option<i32>,
    exited: watch::Sender<bool>,
}

impl Proc {
    pub fn output(&self, fd: u8) -> Option<Arc<OutputBuf>> {
        self.outputs
            .iter()
            .find(|(n, _)| *n == fd)
            .map(|(_, b)| b.clone())
    }
}

/// All processes the host has not yet been told about and acknowledged.
pub struct Table {
    pub procs: Mutex<HashMap<String, Proc>>,
    pub events: broadcast::Sender<Event>,
}

/// A process that could not start, with the exit code a shell would give.
#[derive(Debug)]
pub struct SpawnError {
    pub message: String,
    pub exit_code: i32,
}

fn spawn_err(message: impl Into<String>, exit_code: i32) -> SpawnError {
    SpawnError {
        message: message.into(),
        exit_code,
    }
}

fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn is_executable(p: &Path) -> Option<bool> {
    let m = std::fs::metadata(p).ok()?;
    Some(m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Find `prog` as `execvp` would, reporting Docker's wording when it is not there.
fn lookup(prog: &str, env: &[String], cwd: &Path) -> Result<PathBuf, SpawnError> {
    if prog.contains('/') {
        let p = cwd.join(prog);
        return match is_executable(&p) {
            Some(true) => Ok(p),
            Some(false) => Err(spawn_err(
                format!("exec: \"{prog}\": permission denied"),
                126,
            )),
            None => Err(spawn_err(
                format!("exec: \"{prog}\": stat {prog}: no such file or directory"),
                127,
            )),
        };
    }
    let path = env_get(env, "PATH").unwrap_or(DEFAULT_PATH);
    let mut denied = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = cwd.join(dir).join(prog);
        match is_executable(&p) {
            Some(true) => return Ok(p),
            Some(false) => denied = true,
            None => {}
        }
    }
    if denied {
        return Err(spawn_err(
            format!("exec: \"{prog}\": permission denied"),
            126,
        ));
    }
    Err(spawn_err(
        format!("exec: \"{prog}\": executable file not found in $PATH"),
        127,
    ))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Make `fd` non-blocking and register it with the reactor.
pub fn nonblocking(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: the OwnedFd stays open, and the same fd, for the AsyncFd's whole life.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

impl Table {
    pub fn new() -> Table {
        Table {
            procs: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
        }
    }

    pub fn states(&self) -> Vec<ProcessState> {
        let procs = self.procs.lock().expect("proc lock");
        let mut v: Vec<ProcessState> = procs
            .iter()
            .map(|(id, p)| ProcessState {
                id: id.clone(),
                pid: p.pid,
                exit_code: p.exit,
                tty: p.tty,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Start `spec` as process `id` inside the container (the tether already lives in its root).
    pub fn spawn(&self, id: &str, spec: &ProcessSpec) -> Result<i32, SpawnError> {
        if spec.args.is_empty() {
            return Err(spawn_err("no command specified", 126));
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let ident = user::resolve(&spec.user, &passwd, &group).map_err(|m| spawn_err(m, 126))?;
        let mut env = spec.env.clone();
        if env_get(&env, "PATH").is_none() {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if env_get(&env, "HOME").is_none() {
            env.push(format!("HOME={}", ident.home));
        }
        if spec.tty && env_get(&env, "TERM").is_none() {
            env.push("TERM=xterm".into());
        }
        let cwd = if spec.cwd.is_empty() {
            "/".to_string()
        } else {
            spec.cwd.clone()
        };
        if !Path::new(&cwd).is_dir() {
            std::fs::create_dir_all(&cwd).map_err(|e| {
                spawn_err(format!("cannot create working directory {cwd}: {e}"), 126)
            })?;
        }
        let prog = lookup(&spec.args[0], &env, Path::new(&cwd))?;
        let mut cmd = Command::new(&prog);
        cmd.arg0(&spec.args[0])
            .args(&spec.args[1..])
            .env_clear()
            .current_dir(&cwd);
        for kv in &env {
            match kv.split_once('=') {
                Some((k, v)) => cmd.env(k, v),
                None => cmd.env(kv, ""),
            };
        }
        let io_err = |e: std::io::Error| spawn_err(format!("cannot set up stdio: {e}"), 126);
        let mut outputs = Vec::new();
        let mut pumps = Vec::new();
        let (stdin, master);
        if spec.tty {
            let ws = spec.size.map(|(r, c)| nix::pty::Winsize {
                ws_row: r,
                ws_col: c,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = nix::pty::openpty(ws.as_ref(), None).map_err(|e| io_err(e.into()))?;
            // SAFETY: setting FD_CLOEXEC on the master we own; the child gets only the slave.
            unsafe { libc::fcntl(pty.master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            let slave = pty.slave;
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err)?));
            cmd.stdout(Stdio::from(slave.try_clone().map_err(io_err)?));
            cmd.stderr(Stdio::from(slave));
            let m = Arc::new(nonblocking(pty.master).map_err(io_err)?);
            let buf = Arc::new(OutputBuf::default());
            outputs.push((STDOUT, buf.clone()));
            pumps.push((m.clone(), buf));
            stdin = Some(Stdin::Tty(m.clone()));
            master = Some(m);
        } else {
            for fd in [STDOUT, STDERR] {
                let (r, w) = pipe().map_err(io_err)?;
                if fd == STDOUT {
                    cmd.stdout(Stdio::from(w));
                } else {
                    cmd.stderr(Stdio::from(w));
                }
                let buf = Arc::new(OutputBuf::default());
                outputs.push((fd, buf.clone()));
                pumps.push((Arc::new(nonblocking(r).map_err(io_err)?), buf));
            }
            if spec.stdin {
                let (r, w) = pipe().map_err(io_err)?;
                cmd.stdin(Stdio::from(r));
                stdin = Some(Stdin::Pipe(nonblocking(w).map_err(io_err)?));
            } else {
                cmd.stdin(Stdio::null());
                stdin = None;
            }
            master = None;
        }
        let tty = spec.tty;
        let (uid, gid, groups) = (ident.uid, ident.gid, ident.groups.clone());
        // The container's PID and mount namespaces: the main process creates them (it is their
        // PID 1, as in Docker); later processes join them through the main process's shim.
        // The container's PID and mount namespaces: the main process creates them (it is their
        // PID 1, as in Docker); later processes join them through the main process's shim.
        // Without a main process (the unit tests) processes run in the tether's namespaces.
        let is_main = id == kic_proto::MAIN_ID;
        let main_pid = self
            .procs
            .lock()
            .expect("proc lock")
            .get(kic_proto::MAIN_ID)
            .filter(|p| p.exit.is_none())
            .map(|p| p.pid);
        let join = match main_pid {
            Some(main_pid) if !is_main => {
                let open = |what: &str| {
                    std::fs::File::open(format!("/proc/{main_pid}/ns/{what}")).map_err(|e| {
                        spawn_err(
                            format!("cannot join the container's {what} namespace: {e}"),
                            126,
                        )
                    })
                };
                Some((open("mnt")?, open("pid_for_children")?))
            }
            _ => None,
        };
        let use_ns = is_main || join.is_some();
        let join_fds = join.as_ref().map(|(m, p)| (m.as_raw_fd(), p.as_raw_fd()));
        let cwd_c = std::ffi::CString::new(cwd.clone())
            .map_err(|_| spawn_err(format!("bad working directory {cwd:?}"), 126))?;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if use_ns {
                    crate::pidns::enter(join_fds, &cwd_c)?;
                }
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let gids: Vec<libc::gid_t> = groups.clone();
                if libc::setgroups(gids.len(), gids.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (exited_tx, exited_rx) = watch::channel(false);
        let mut procs = self.procs.lock().expect("proc lock");
        if procs.contains_key(id) {
            return Err(spawn_err(format!("process {id} exists already"), 126));
        }
        let child = cmd.spawn().map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            spawn_err(format!("exec: \"{}\": {e}", spec.args[0]), code)
        })?;
        let pid = child.id() as i32;
        drop(child); // reaped by the SIGCHLD loop, not by std
        drop(join);
        drop(cmd); // closes our copies of the child's ends
        for (fd, buf) in pumps {
            tokio::spawn(output::pump(fd, buf, exited_rx.clone()));
        }
        procs.insert(
            id.to_string(),
            Proc {
                pid,
                tty,
                outputs,
                stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
                master,
                exit: None,
                exited: exited_tx,
            },
        );
        let _ = self.events.send(Event::Started {
            id: id.to_string(),
            pid,
        });
        Ok(pid)
    }

    /// Reap every child that has ended, recording exits of our processes.
    pub fn reap(&self) {
        let mut procs = self.procs.lock().expect("proc lock");
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Some((id, p)) = procs
                .iter_mut()
                .find(|(_, p)| p.pid == pid.as_raw() && p.exit.is_none())
            {
                p.exit = Some(code);
                let _ = p.exited.send(true);
                let _ = self.events.send(Event::Exited {
                    id: id.clone(),
                    exit_code: code,
                });
            }
        }
    }

    pub fn signal(&self, id: &str, sig: i32) -> Result<(), String> {
        let procs = self.procs.lock().expect("proc lock");
        let p = procs
            .get(id)
            .ok_or_else(|| format!("no such process: {id}"))?;
        if p.exit.is_some() {
            return Err(format!("process {id} is not running"));
        }
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(p.pid, sig) } < 0 {
            return Err(format!(
                "cannot signal process {id}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_reports_docker_wording() {
        let env = vec!["PATH=/nonexistent-dir".to_string()];
        let e = lookup("nosuchprog", &env, Path::new("/")).unwrap_err();
        assert_eq!(e.exit_code, 127);
        assert_eq!(
            e.message,
            "exec: \"nosuchprog\": executable file not found in $PATH"
        );
        let ok = lookup("sh", &["PATH=/bin:/usr/bin".into()], Path::new("/")).unwrap();
        assert!(ok.ends_with("sh"));
    }

    #[tokio::test]
    async fn runs_a_process_and_collects_output_and_exit() {
        let t = Table::new();
        let mut ev = t.events.subscribe();
        let spec = ProcessSpec {
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            env: vec!["PATH=/bin:/usr/bin".into()],
            user: String::new(),
            ..Default::default()
        };
        // Runs as the current user when it is not root (identity from the host's own files).
        let me = nix::unistd::getuid().as_raw();
        let spec = ProcessSpec {
            user: me.to_string(),
            ..spec
        };
        t.spawn("p", &spec).unwrap();
        let mut sig =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).unwrap();
        let code = loop {
            t.reap();
            if let Ok(Event::Exited { exit_code, .. }) = ev.try_recv() {
                break exit_code;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), sig.recv()).await;
        };
        assert_eq!(code, 3);
        let out = t.procs.lock().unwrap()["p"].output(STDOUT).unwrap();
        out.wait_data(4).await;
        match out.read_from(0) {
            output::Chunk::Data { bytes, .. } => assert_eq!(bytes, b"out\n"),
            _ => panic!("no output"),
        }
    }
}
