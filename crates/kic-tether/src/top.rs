//! `docker top`: the container's processes in `ps -ef` columns, read from `/proc`.

use kic_proto::Response;
use std::fs;

fn user_name(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// One row per process except the tether itself and kernel threads.
pub fn top() -> Response {
    let titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        .map(String::from)
        .to_vec();
    let mut rows = Vec::new();
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    let hz = clock_ticks();
    // The tether's shims (one per process, see pidns.rs) carry the tether's own command line.
    let tether = fs::read("/proc/1/cmdline").unwrap_or_default();
    for pid in pids.into_iter().filter(|p| *p != 1) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() || cmdline == tether {
            continue; // kernel thread, or a shim
        }
        let cmd = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ");
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1).copied().unwrap_or("0").to_string();
        let tty_nr: u64 = f.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
        let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let secs = (utime + stime) / hz;
        let tty = if tty_nr == 0 {
            "?".to_string()
        } else {
            format!("pts/{}", (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00))
        };
        let uid: u32 = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        rows.push(vec![
            user_name(uid),
            pid.to_string(),
            if ppid == "1" { "0".into() } else { ppid },
            "0".into(),
            "-".into(),
            tty,
            format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            cmd,
        ]);
    }
    Response::Top {
        titles,
        processes: rows,
    }
}
