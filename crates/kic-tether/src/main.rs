//! `kic-tether`: PID 1 of every KIC container VM.
//!
//! **Owns:** everything inside the guest: mounting, module loading, the container's root, its
//! processes, their stdio and exit codes. **Must not:** decide policy (what to run, limits): the
//! host says. **Talks to:** the host's port layer over one virtio-serial port (`kic-proto`).
//!
//! Boot sequence: mount `/proc`, `/sys`, `/dev`; load the initramfs's modules; find the port;
//! serve host sessions. The first `Start` request mounts the container's disk, moves the tether
//! into it and starts the main process. When the host has stored the main process's exit, the
//! tether syncs and ends the VM. A `Mount` request instead mounts the disks of a stopped
//! container without starting anything (maintenance: `docker cp`, `diff`, `commit`, `export`
//! through the archive and listing streams, `files`), and `PowerOff` ends such a VM.

mod dhcp;
mod files;
mod net;
mod output;
mod pidns;
mod procs;
mod session;
mod sys;
mod top;
mod user;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

fn fatal(msg: &str) -> ! {
    eprintln!("kic-tether: fatal: {msg}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    sys::power_off()
}

fn open_port(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    Ok(f.into())
}

fn boot_id() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..16).map(|_| format!("{:02x}", r.gen::<u8>())).collect()
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("kic-tether is the init process of a KIC container VM; it does nothing as an ordinary program");
        std::process::exit(2);
    }
    if let Err(e) = sys::early_mounts() {
        fatal(&e);
    }
    if sys::cmdline_has("kic.probe") {
        // Boot-time floor measurement: say we are up and end at once.
        println!("KIC-PROBE-READY");
        sys::power_off();
    }
    sys::milestone("init");
    sys::BACKGROUND_MODULES.start();
    if let Err(e) = sys::load_modules(sys::MODULE_LIST) {
        fatal(&e);
    }
    sys::milestone("modules loaded");
    let port = sys::find_port(kic_proto::CHANNEL_NAME).unwrap_or_else(|e| fatal(&e));
    sys::milestone("channel found");
    let port = open_port(&port).unwrap_or_else(|e| fatal(&format!("open {}: {e}", port.display())));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&e.to_string()));
    rt.block_on(async move {
        let t = Arc::new(session::Tether {
            table: procs::Table::new(),
            started: Mutex::new(false),
            maintenance: Mutex::new(session::Maintenance::No),
            boot_id: boot_id(),
            files_root: files::CONTAINER_ROOT.into(),
        });
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .unwrap_or_else(|e| fatal(&format!("SIGCHLD handler: {e}")));
        let reaper = t.clone();
        tokio::spawn(async move {
            loop {
                reaper.table.reap();
                sigchld.recv().await;
            }
        });
        session::serve(t, port).await;
    });
}
