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
        Self::start_with(creds, false)
    }

    /// A registry serving HTTPS with a fresh self-signed certificate for 127.0.0.1.
    pub fn start_tls() -> Registry {
        Self::start_with(None, true)
    }

    fn start_with(creds: Option<(&str, &str)>, tls: bool) -> Registry {
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
        if tls {
            let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
            let st = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "openssl req failed");
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
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

    /// Uploads a single-image layout exactly as it is (no recompression) with the
    /// Distribution API: every blob by monolithic upload, then the manifest.
    pub async fn upload_layout(&self, layout: &Path, repo: &str, tag: &str) {
        let http = reqwest::Client::new();
        let base = format!("http://{}/v2/{repo}", self.host());
        for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            let r = http
                .post(format!("{base}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let loc = if loc.starts_with("http") {
                loc
            } else {
                format!("http://{}{loc}", self.host())
            };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = http
                .put(format!("{loc}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(std::fs::read(e.path()).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "upload {digest}");
        }
        let ix: kic_image::spec::Index =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let m = &ix.manifests[0];
        let body = std::fs::read(layout.join("blobs/sha256").join(m.digest.hex())).unwrap();
        let r = http
            .put(format!("{base}/manifests/{tag}"))
            .header("content-type", m.media_type.as_str())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "put manifest: {}",
            r.text().await.unwrap()
        );
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

/// Copies a flat directory tree (an OCI layout).
pub fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
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

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A token-auth front for a registry, as Docker Hub and Harbor do it: `/v2/...` answers 401
/// with a Bearer challenge unless the request carries the token that `/token` hands out (to
/// `user:pass` over Basic auth if given). Returns its port and the count of token requests.
pub async fn bearer_proxy(
    upstream: String,
    creds: Option<(&str, &str)>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tokens = Arc::new(AtomicUsize::new(0));
    let want_basic = creds.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
    let counter = tokens.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let http = http.clone();
            let upstream = upstream.clone();
            let want_basic = want_basic.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let reply = |status: &str, extra: Vec<(String, String)>, body: Vec<u8>| {
                    let mut r = format!(
                        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
                        body.len()
                    );
                    for (k, v) in extra {
                        r.push_str(&format!("{k}: {v}\r\n"));
                    }
                    r.push_str("\r\n");
                    let mut out = r.into_bytes();
                    out.extend(body);
                    out
                };
                let resp = if path.starts_with("/token") {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let ok_scope =
                        path.contains("scope=repository") && path.contains("service=kic-test");
                    if !ok_scope || (want_basic.is_some() && header("authorization") != want_basic)
                    {
                        reply("401 Unauthorized", vec![], b"{}".to_vec())
                    } else {
                        reply(
                            "200 OK",
                            vec![("Content-Type".into(), "application/json".into())],
                            br#"{"token":"t0k3n"}"#.to_vec(),
                        )
                    }
                } else if header("authorization").as_deref() != Some("Bearer t0k3n") {
                    let repo = path
                        .trim_start_matches("/v2/")
                        .split("/manifests/")
                        .next()
                        .unwrap_or("")
                        .split("/blobs/")
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let chal = format!(
                        "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"kic-test\",scope=\"repository:{repo}:pull\""
                    );
                    reply(
                        "401 Unauthorized",
                        vec![("WWW-Authenticate".into(), chal)],
                        b"{}".to_vec(),
                    )
                } else {
                    let mut req = http.get(format!("{upstream}{path}"));
                    if let Some(a) = header("accept") {
                        req = req.header("accept", a);
                    }
                    match req.send().await {
                        Ok(r) => {
                            let status = format!("{} X", r.status().as_u16());
                            let mut extra = vec![];
                            for k in ["content-type", "docker-content-digest"] {
                                if let Some(v) = r.headers().get(k).and_then(|v| v.to_str().ok()) {
                                    extra.push((k.to_string(), v.to_string()));
                                }
                            }
                            let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                            reply(&status, extra, body)
                        }
                        Err(_) => reply("502 Bad Gateway", vec![], vec![]),
                    }
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, tokens)
}
