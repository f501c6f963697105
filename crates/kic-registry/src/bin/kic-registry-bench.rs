//! `kic-registry-bench`: runs kic-registry and CNCF Distribution (Debian's `docker-registry`)
//! side by side on this machine with the same data and the same client, and prints push/pull
//! throughput for one 256 MiB layer and for 200 small layers, manifest GETs per second under 32
//! concurrent clients, and peak RSS. The last line gives the ratios ours / Distribution.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest as _, Sha256};

#[derive(Parser)]
#[command(about = "Benchmark kic-registry against CNCF Distribution")]
struct Args {
    /// The kic-registry binary (build it with --release).
    #[arg(long)]
    ours: PathBuf,
    /// The Distribution binary.
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    /// Size of the big layer in MiB.
    #[arg(long, default_value_t = 256)]
    big_mib: usize,
    /// Number of small layers.
    #[arg(long, default_value_t = 200)]
    small_layers: usize,
    /// Size of each small layer in KiB.
    #[arg(long, default_value_t = 64)]
    small_kib: usize,
    /// Concurrent uploads/downloads for the small layers.
    #[arg(long, default_value_t = 4)]
    small_concurrency: usize,
    /// Concurrent clients for manifest GETs.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of manifest GETs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

struct Target {
    name: &'static str,
    child: Child,
    base: String,
    repo: String,
    auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn req(&self, c: &reqwest::Client, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        let r = c.request(m, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_up(url: &str) -> Result<()> {
    let c = reqwest::Client::new();
    for _ in 0..200 {
        if c.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

async fn start_ours(bin: &Path) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-password",
            "Bench12345",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("KIC_LOG", "kic_registry=warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    wait_up(&format!("{base}/api/v2.0/ping")).await?;
    let t = Target {
        name: "kic-registry",
        child,
        base,
        repo: "bench/app".into(),
        auth: Some(("admin".into(), "Bench12345".into())),
        _dir: dir,
    };
    let c = reqwest::Client::new();
    let r = t
        .req(&c, reqwest::Method::POST, "/api/v2.0/projects")
        .json(&json!({"project_name": "bench", "metadata": {"public": "true"}}))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("creating the bench project: {}", r.status());
    }
    Ok(t)
}

async fn start_distribution(bin: &Path) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    wait_up(&format!("{base}/v2/")).await?;
    Ok(Target {
        name: "distribution",
        child,
        base,
        repo: "bench/app".into(),
        auth: None,
        _dir: dir,
    })
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: fast, incompressible enough, reproducible.
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn location(base: &str, r: &reqwest::Response) -> Result<String> {
    let loc = r
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_string();
    Ok(if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    })
}

/// POST, PATCH the body in 1 MiB chunks, PUT ?digest.
async fn push_blob(t: &Target, c: &reqwest::Client, data: Bytes, d: &str) -> Result<()> {
    let r = t
        .req(
            c,
            reqwest::Method::POST,
            &format!("/v2/{}/blobs/uploads/", t.repo),
        )
        .send()
        .await?;
    if r.status() != 202 {
        bail!("{}: start upload: {}", t.name, r.status());
    }
    let loc = location(&t.base, &r)?;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(1 << 20)
        .map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len()))))
        .collect();
    let r = t
        .req(c, reqwest::Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("{}: patch: {}", t.name, r.status());
    }
    let loc = location(&t.base, &r)?;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = t
        .req(c, reqwest::Method::PUT, &format!("{loc}{sep}digest={d}"))
        .send()
        .await?;
    if r.status() != 201 {
        bail!(
            "{}: put: {} {}",
            t.name,
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn pull_blob(t: &Target, c: &reqwest::Client, d: &str, want: usize) -> Result<()> {
    let r = t
        .req(
            c,
            reqwest::Method::GET,
            &format!("/v2/{}/blobs/{d}", t.repo),
        )
        .send()
        .await?;
    if r.status() != 200 {
        bail!("{}: pull: {}", t.name, r.status());
    }
    let mut n = 0;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        n += chunk?.len();
    }
    if n != want {
        bail!("{}: pulled {n} bytes, want {want}", t.name);
    }
    Ok(())
}

struct Results {
    big_push: f64,
    big_pull: f64,
    small_push: f64,
    small_pull: f64,
    manifest_rps: f64,
    rss_mib: f64,
}

async fn measure(t: &Target, a: &Args, big: &Bytes, small: &[Bytes]) -> Result<Results> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mib = |bytes: usize, secs: f64| bytes as f64 / (1 << 20) as f64 / secs;

    let bd = digest(big);
    let t0 = Instant::now();
    push_blob(t, &c, big.clone(), &bd).await?;
    let big_push = mib(big.len(), t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    pull_blob(t, &c, &bd, big.len()).await?;
    let big_pull = mib(big.len(), t0.elapsed().as_secs_f64());

    let digests: Vec<String> = small.iter().map(|s| digest(s)).collect();
    let total: usize = small.iter().map(|s| s.len()).sum();
    let t0 = Instant::now();
    futures::stream::iter(small.iter().zip(&digests))
        .map(|(s, d)| push_blob(t, &c, s.clone(), d))
        .buffer_unordered(a.small_concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let small_push = mib(total, t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    futures::stream::iter(small.iter().zip(&digests))
        .map(|(s, d)| pull_blob(t, &c, d, s.len()))
        .buffer_unordered(a.small_concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let small_pull = mib(total, t0.elapsed().as_secs_f64());

    // An image manifest over the small layers (the first one doubles as config).
    let layers: Vec<_> = small
        .iter()
        .zip(&digests)
        .skip(1)
        .map(|(s, d)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s.len()}))
        .collect();
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0], "size": small[0].len()},
        "layers": layers,
    }))?;
    let r = t
        .req(
            &c,
            reqwest::Method::PUT,
            &format!("/v2/{}/manifests/latest", t.repo),
        )
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await?;
    if r.status() != 201 {
        bail!(
            "{}: manifest put: {} {}",
            t.name,
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let url = format!("{}/v2/{}/manifests/latest", t.base, t.repo);
    let mut tasks = vec![];
    for _ in 0..a.clients {
        let (count, url) = (count.clone(), url.clone());
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let want = m.len();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = c
                    .get(&url)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .map_err(anyhow::Error::from)?;
                if r.status() != 200 {
                    bail!("manifest get: {}", r.status());
                }
                if r.bytes().await?.len() != want {
                    bail!("manifest get: short body");
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let t0 = Instant::now();
    for task in tasks {
        task.await??;
    }
    let manifest_rps = count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    Ok(Results {
        big_push,
        big_pull,
        small_push,
        small_pull,
        manifest_rps,
        rss_mib: t.peak_rss_kib() as f64 / 1024.0,
    })
}

fn print(name: &str, r: &Results) {
    println!(
        "{name:<14} big push {:>8.1} MB/s  big pull {:>8.1} MB/s  small push {:>7.1} MB/s  small pull {:>7.1} MB/s  manifest GET {:>8.0} req/s  peak RSS {:>6.1} MiB",
        r.big_push, r.big_pull, r.small_push, r.small_pull, r.manifest_rps, r.rss_mib
    );
}

fn main() -> Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "workload: one {} MiB layer; {} layers of {} KiB ({} at a time); manifest GETs from {} clients for {} s",
            a.big_mib, a.small_layers, a.small_kib, a.small_concurrency, a.clients, a.seconds
        );
        let big = Bytes::from(random_bytes(a.big_mib << 20, 42));
        let small: Vec<Bytes> = (0..a.small_layers).map(|i| Bytes::from(random_bytes(a.small_kib << 10, 1000 + i as u64))).collect();
        // Distribution first, then ours, each on a fresh data directory.
        let dist = {
            let t = start_distribution(&a.distribution).await?;
            let r = measure(&t, &a, &big, &small).await?;
            print(t.name, &r);
            r
        };
        let ours = {
            let t = start_ours(&a.ours).await?;
            let r = measure(&t, &a, &big, &small).await?;
            print(t.name, &r);
            r
        };
        println!(
            "ratios ours/distribution: big push {:.2}  big pull {:.2}  small push {:.2}  small pull {:.2}  manifest GET {:.2}  peak RSS {:.2}  (goals: >=1.2 throughput, >=2 manifest GET, <=1 RSS)",
            ours.big_push / dist.big_push,
            ours.big_pull / dist.big_pull,
            ours.small_push / dist.small_push,
            ours.small_pull / dist.small_pull,
            ours.manifest_rps / dist.manifest_rps,
            ours.rss_mib / dist.rss_mib
        );
        Ok(())
    })
}
