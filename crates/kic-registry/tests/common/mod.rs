//! Test kit: start the real `kic-registry` binary, talk to it over HTTP, build OCI image
//! layouts from the host's busybox, run skopeo.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const ADMIN_PW: &str = "Harbor12345";

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A running registry process with its own data directory.
pub struct Server {
    pub child: Child,
    /// A private PostgreSQL server when the suite runs on PostgreSQL.
    pub pg: Option<Pg>,
    pub base: String,
    pub host: String,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a registry on a fresh data directory. With `KIC_REGISTRY_TEST_BACKEND=postgres`
    /// (and no `--database-url` among `args`) each server gets its own PostgreSQL server, so
    /// the whole suite can run on PostgreSQL.
    pub fn start_with(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let pg = (std::env::var("KIC_REGISTRY_TEST_BACKEND").as_deref() == Ok("postgres")
            && !args.contains(&"--database-url"))
        .then(Pg::start);
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(pg) = &pg {
            all.extend(["--database-url".to_string(), pg.url()]);
        }
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut s = Server::spawn(&data, &refs);
        s._tmp = Some(tmp);
        s.pg = pg;
        s
    }

    /// Starts on an existing data directory.
    pub fn spawn(data: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kic-registry"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(["--admin-password", ADMIN_PW])
            // Cheap hashes: the debug build's Argon2 at full cost takes a second per hash.
            .args(["--argon2-memory-kib", "256", "--argon2-iterations", "1"])
            .args(args)
            .env("KIC_LOG", "kic_registry=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn kic-registry");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("kic-registry listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("registry did not start");
        let host = base.split("://").nth(1).unwrap().to_string();
        Server {
            child,
            pg: None,
            base,
            host,
            data: data.to_path_buf(),
            _tmp: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills (SIGKILL) and starts again on the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<String> = self.args.clone();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let tmp = self._tmp.take();
        let pg = self.pg.take();
        *self = Server::spawn(&self.data.clone(), &refs);
        self._tmp = tmp;
        self.pg = pg;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn client(&self) -> Api {
        Api {
            c: Client::new(),
            base: self.base.clone(),
            auth: None,
        }
    }

    pub fn admin(&self) -> Api {
        self.client().basic("admin", ADMIN_PW)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small HTTP client with optional basic credentials.
#[derive(Clone)]
pub struct Api {
    pub c: Client,
    pub base: String,
    pub auth: Option<(String, String)>,
}

impl Api {
    pub fn basic(&self, u: &str, p: &str) -> Api {
        Api {
            auth: Some((u.into(), p.into())),
            ..self.clone()
        }
    }

    pub fn anon(&self) -> Api {
        Api {
            auth: None,
            ..self.clone()
        }
    }

    pub fn req(&self, m: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let r = self.c.request(m, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    pub async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Response {
        self.req(Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_json(&self, path: &str, body: Value) -> Response {
        self.req(Method::PUT, path)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.unwrap()
    }

    /// Creates a project; returns its id.
    pub async fn create_project(&self, name: &str, public: bool) -> i64 {
        let r = self
            .post_json(
                "/api/v2.0/projects",
                json!({"project_name": name, "metadata": {"public": public.to_string()}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "create project {name}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        loc.rsplit('/').next().unwrap().parse().unwrap()
    }

    /// Creates a user with password `Passw0rd!`; returns its id.
    pub async fn create_user(&self, name: &str) -> i64 {
        let r = self
            .post_json(
                "/api/v2.0/users",
                json!({"username": name, "email": format!("{name}@x.test"), "realname": name, "password": "Passw0rd!"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "create user {name}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        loc.rsplit('/').next().unwrap().parse().unwrap()
    }

    pub async fn add_member(&self, project: &str, user: &str, role: i64) {
        let r = self
            .post_json(
                &format!("/api/v2.0/projects/{project}/members"),
                json!({"role_id": role, "member_user": {"username": user}}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "add member {user} to {project}"
        );
    }

    /// Uploads a blob monolithically; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "push blob to {repo}: {}",
            r.text().await.unwrap()
        );
        d
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a small image (random layer); returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> String {
        let (m, _) = self.push_image_parts(repo, layer).await;
        let r = self.push_manifest(repo, tag, OCI_MANIFEST, &m).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "manifest: {}",
            r.text().await.unwrap()
        );
        sha(&m)
    }

    /// Uploads config and layer; returns the manifest bytes (not pushed) and the layer digest.
    pub async fn push_image_parts(&self, repo: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let cfg = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}})
            .to_string()
            .into_bytes();
        let cd = self.push_blob(repo, &cfg).await;
        let ld = self.push_blob(repo, layer).await;
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
        });
        (serde_json::to_vec(&m).unwrap(), ld)
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Polls `f` until it returns `Some` or the deadline passes.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- OCI image layouts for skopeo ------------------------------------------------------

/// Writes an OCI image layout at `dir` holding one tag per (tag, files, arch) entry: each image
/// has one gzip layer per file set; `index_tag` adds a multi-arch index of all of them.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: vec![],
        }
    }

    fn put(&self, data: &[u8]) -> String {
        let d = sha(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        d
    }

    /// Adds an image whose layers hold the given host files (path on host, path in image).
    /// Returns the manifest descriptor.
    pub fn image(
        &mut self,
        tag: Option<&str>,
        layers: &[Vec<(PathBuf, String)>],
        arch: &str,
    ) -> Value {
        let mut descs = vec![];
        let mut diff_ids = vec![];
        for files in layers {
            let mut b = tar::Builder::new(Vec::new());
            b.mode(tar::HeaderMode::Deterministic);
            for (host, inside) in files {
                b.append_path_with_name(host, inside).unwrap();
            }
            let raw = b.into_inner().unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw).unwrap();
            let gz = gz.finish().unwrap();
            diff_ids.push(sha(&raw));
            let d = self.put(&gz);
            descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
        }
        let cfg = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let cd = self.put(&cfg);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": descs,
        }))
        .unwrap();
        let md = self.put(&m);
        let mut desc = json!({"mediaType": OCI_MANIFEST, "digest": md, "size": m.len(),
            "platform": {"os": "linux", "architecture": arch}});
        if let Some(t) = tag {
            let mut d = desc.clone();
            d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
            self.index.push(d);
        }
        desc["annotations"] = Value::Null;
        desc.as_object_mut().unwrap().remove("annotations");
        desc
    }

    /// Adds a multi-arch index of `children` under `tag`.
    pub fn multi_arch(&mut self, tag: &str, children: &[Value]) -> String {
        let idx = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}),
        )
        .unwrap();
        let d = self.put(&idx);
        self.index.push(
            json!({"mediaType": OCI_INDEX, "digest": d, "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}),
        );
        d
    }

    pub fn finish(&self) {
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }
}

/// The host's busybox binary (from `busybox-static`).
pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: run tests/registry/deps.sh");
}

/// Builds the test layout: `busybox` (one layer), `debian` (three layers of Debian files),
/// `multi` (an index of an amd64 and an arm64 image).
pub fn test_layout(dir: &Path) -> Layout {
    let mut l = Layout::new(dir);
    let bb = busybox();
    l.image(
        Some("busybox"),
        &[vec![(bb.clone(), "bin/busybox".into())]],
        "amd64",
    );
    let deb_files = |names: &[&str]| -> Vec<(PathBuf, String)> {
        names
            .iter()
            .filter(|n| Path::new(n).exists())
            .map(|n| (PathBuf::from(n), n.trim_start_matches('/').to_string()))
            .collect()
    };
    l.image(
        Some("debian"),
        &[
            vec![(bb.clone(), "bin/busybox".into())],
            deb_files(&["/etc/debian_version", "/etc/os-release", "/etc/issue"]),
            deb_files(&["/bin/bash", "/usr/bin/env"]),
        ],
        "amd64",
    );
    let a = l.image(None, &[vec![(bb.clone(), "bin/busybox".into())]], "amd64");
    let b = l.image(
        None,
        &[vec![
            (PathBuf::from("/etc/os-release"), "etc/os-release".into()),
            (bb, "bin/busybox".into()),
        ]],
        "arm64",
    );
    l.multi_arch("multi", &[a, b]);
    l.finish();
    l
}

/// Runs skopeo with a private, empty auth file; returns (success, stderr).
pub fn skopeo(home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("skopeo")
        .args(args)
        .env("HOME", home)
        .env("REGISTRY_AUTH_FILE", home.join("auth.json"))
        .env("XDG_RUNTIME_DIR", home)
        .output()
        .expect("skopeo not installed: run tests/registry/deps.sh");
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), err)
}

// ---- PostgreSQL ------------------------------------------------------------------------

/// A PostgreSQL server from Debian's packages in a temporary directory (run as the `postgres`
/// user when we are root), listening on 127.0.0.1 only; stopped on drop.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries not found: run tests/registry/deps.sh")
}

impl Pg {
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = nix_is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Pg {
            dir,
            bin: pg_bin(),
            port,
            as_postgres,
        };
        let data = pg.dir.path().join("data");
        let data = data.to_str().unwrap();
        pg.run(
            "initdb",
            &[
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
        pg
    }

    /// A plain SQL dump of the database.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
