//! Shared fixtures: a real Distribution registry on a free loopback port, test images, and
//! disk inspection with debugfs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kic_image::mkimage;

/// True if every tool is installed; prints the reason to skip otherwise.
pub fn have_tools(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            eprintln!("SKIP {test}: {t} is not installed (apt-get install skopeo docker-registry e2fsprogs busybox-static)");
            return false;
        }
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (ownership and device nodes in image disks)");
        return false;
    }
    true
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it is true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A CNCF Distribution registry (`docker-registry serve`) with its own storage.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    pub creds: Option<(String, String)>,
}

impl Registry {
    pub fn start(creds: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((u, p)) = creds {
            let hash = bcrypt::hash(p, 5).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kic-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start docker-registry");
        let up = wait_until(20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "registry did not listen on {port}");
        Registry {
            port,
            dir,
            child,
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes an OCI layout into this registry as `name` (e.g. `busybox:latest`).
    pub fn push(&self, layout: &Path, name: &str, compression: mkimage::PushCompression) {
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        mkimage::push(
            layout,
            "latest",
            &format!("{}/{name}", self.host()),
            true,
            creds.as_deref(),
            compression,
        )
        .unwrap();
    }

    /// Path of a blob's data in the registry's storage (to corrupt it).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the busybox test image layout once per call into `dir`.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let out = dir.join("busybox-layout");
    mkimage::busybox(&out, Path::new("/bin/busybox"), "latest").unwrap();
    out
}

/// Runs a debugfs request against an image disk and returns its output.
pub fn debugfs(disk: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Numbers from debugfs `stat`: (mode octal string, uid, gid, links).
pub fn disk_stat(disk: &Path, path: &str) -> String {
    debugfs(disk, &format!("stat {path}"))
}
