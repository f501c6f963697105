//! Small helpers: the VIC-style transcript, unit parsing, files, processes.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Start the transcript clock (seconds in `INFO[0003]` count from here).
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// One transcript line, in VIC's (logrus') text format: `INFO[0003] message`.
pub fn emit(level: &str, msg: &str) {
    let secs = START.get_or_init(Instant::now).elapsed().as_secs();
    let mut out = std::io::stdout().lock();
    if msg.is_empty() {
        let _ = writeln!(out, "{level}[{secs:04}]");
    } else {
        for line in msg.lines() {
            let _ = writeln!(out, "{level}[{secs:04}] {line}");
        }
    }
    let _ = out.flush();
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::util::emit("INFO", &format!($($t)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::util::emit("WARN", &format!($($t)*)) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::util::emit("ERRO", &format!($($t)*)) };
}

/// Memory sizes: a plain number is MiB; suffixes `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`
/// (binary units, case-insensitive, optional `B`). Returns MiB.
pub fn parse_mib(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        bail!("invalid size {s:?}: expected a number of MiB or a number with a unit such as 512MiB or 4GiB");
    }
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: number too large"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mib = match unit {
        "" | "m" => Some(n),
        "k" => {
            if n % 1024 != 0 {
                bail!("invalid size {s:?}: must be a whole number of MiB");
            }
            Some(n / 1024)
        }
        "g" => n.checked_mul(1024),
        "t" => n.checked_mul(1024 * 1024),
        _ => bail!("invalid size {s:?}: unknown unit {unit:?} (use MiB, GiB or TiB)"),
    };
    let mib = mib.with_context(|| format!("invalid size {s:?}: too large"))?;
    if mib == 0 {
        bail!("invalid size {s:?}: must be at least 1 MiB");
    }
    Ok(mib)
}

/// Durations: `300`, `300s`, `5m`, `1h`, `2m30s`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("invalid duration {s:?} (examples: 300s, 5m, 1h)"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => bail!("invalid duration {s:?}: unknown unit {c:?} (use s, m or h)"),
        };
    }
    if !num.is_empty() {
        bail!("invalid duration {s:?}: a unit (s, m, h) must follow {num}");
    }
    Ok(Duration::from_secs(total))
}

/// Write a file atomically (temporary file + rename) with the given mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}tmp",
        path.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The last `n` lines of a file (empty if it does not exist).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut b = Vec::new();
    let _ = f.read_to_end(&mut b);
    let s = String::from_utf8_lossy(&b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a command, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {desc}"))?;
    // Read the pipes on threads so a chatty command cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let to = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let te = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
    })
}

/// Whether a process exists (signal 0).
pub fn pid_alive(pid: i32) -> bool {
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// A pid from a pid file, if the file exists and the process runs.
pub fn read_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An absolute version of `p` (relative to the current directory), without resolving links.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// Find a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Quote a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("4GiB").unwrap(), 4096);
        assert_eq!(parse_mib("4G").unwrap(), 4096);
        assert_eq!(parse_mib("4gb").unwrap(), 4096);
        assert_eq!(parse_mib("256MiB").unwrap(), 256);
        assert_eq!(parse_mib("1TiB").unwrap(), 1024 * 1024);
        assert_eq!(parse_mib("2048KiB").unwrap(), 2);
        assert!(parse_mib("1000KiB").is_err());
        assert!(parse_mib("GiB").is_err());
        assert!(parse_mib("4XB").is_err());
        assert!(parse_mib("0").is_err());
        assert!(parse_mib("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("2m30s").unwrap().as_secs(), 150);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b:c"), "/a/b:c");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn atomic_write_mode_and_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.pem");
        write_file(&p, b"a\nb\nc\n", 0o600).unwrap();
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(tail(&p, 2), "b\nc");
        assert_eq!(tail(&d.path().join("none"), 2), "");
    }
}
