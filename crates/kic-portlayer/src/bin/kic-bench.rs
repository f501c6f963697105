//! `kic-bench`: how close container start is to the machine's floor, measured in one run.
//!
//! * container start: from `create` to the moment the host has stored the process's first
//!   output (the log's own timestamp), for the busybox image;
//! * floor: the same bootstrap image booted by a bare QEMU (same machine, accelerator, memory)
//!   until its PID 1 prints, doing nothing else;
//! * idle VM memory: resident set of the QEMU process of an idle container VM.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kic_portlayer::{Config, CreateRequest, PortLayer};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// OCI layout of the busybox test image.
    #[arg(long, default_value = "build/images/busybox")]
    image: PathBuf,
    #[arg(long, default_value = "/var/tmp/kic-bench")]
    datastore: PathBuf,
    #[arg(long, env = "KIC_TETHER")]
    tether: PathBuf,
    /// Samples of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// vCPUs of the container VMs (and of the bare boot).
    #[arg(long)]
    vcpus: Option<u32>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn qemu_rss_mib(domain: &str) -> Result<u64> {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .context("QEMU pid file")?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.datastore)?;
    let mut cfg = Config::new(&a.datastore, "bench", &a.tether);
    if let Some(v) = a.vcpus {
        cfg.default_vcpus = v;
    }
    let (mem, vcpus) = (cfg.default_memory_mib, cfg.default_vcpus);
    let pl = PortLayer::open(cfg).await?;
    let image = pl
        .images()
        .import_oci_layout(&a.image, Some("kic-bench/busybox:latest"))
        .await?;
    let accel = pl.domain_type();
    println!(
        "hypervisor: {accel}  bootstrap: {}  runs: {}",
        pl.boot_version(),
        a.runs
    );

    let mut starts = Vec::new();
    for _ in 0..a.runs {
        let t0 = chrono::Utc::now();
        let v = pl
            .create(CreateRequest {
                image: image.id.clone(),
                cmd: Some(vec!["echo".into(), "first output".into()]),
                ..Default::default()
            })
            .await?;
        let id = v.config.id;
        pl.start(&id).await?;
        pl.wait(&id).await?;
        let mut logs = pl.logs(&id, false, false)?;
        let first = logs.recv().await.context("no output")?;
        let dt = (first.time_nanos - t0.timestamp_nanos_opt().unwrap_or(0)) as f64 / 1e9;
        starts.push(dt);
        pl.remove(&id, true).await?;
    }

    let boot = kic_bootstrap::build(
        &a.datastore.join("bootstrap"),
        &kic_bootstrap::BuildInputs::new(&a.tether),
    )?;
    let mut floors = Vec::new();
    for _ in 0..a.runs {
        floors.push(
            kic_portlayer::kvm::bare_boot(
                accel,
                mem,
                vcpus,
                &boot.kernel,
                &boot.initrd,
                kic_bootstrap::KERNEL_CMDLINE,
                Duration::from_secs(60),
            )
            .map_err(|e| anyhow::anyhow!("the bare boot never reached PID 1: {e}"))?
            .as_secs_f64(),
        );
    }

    let v = pl
        .create(CreateRequest {
            image: image.id.clone(),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            ..Default::default()
        })
        .await?;
    pl.start(&v.config.id).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = qemu_rss_mib(&v.config.domain);
    pl.remove(&v.config.id, true).await?;
    let rss = rss?;

    println!("container-start samples(s): {}", fmt(&starts));
    println!("bare-boot floor samples(s): {}", fmt(&floors));
    if starts.is_empty() || floors.is_empty() {
        bail!("no samples");
    }
    let (m, f) = (median(&mut starts), median(&mut floors));
    println!("idle-vm-rss-mib={rss}");
    println!(
        "container-start median={m:.3} floor={f:.3} ratio={:.2}",
        m / f
    );
    Ok(())
}
