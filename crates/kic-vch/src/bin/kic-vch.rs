//! `kic-vch --config <state dir>/config.json`: serve one VCH's Docker Engine API until SIGTERM.

use anyhow::Context;
use clap::Parser;
use kic_vch::config::VchConfig;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "kic-vch",
    version,
    about = "KIC Virtual Container Host endpoint (Docker Engine API)"
)]
struct Args {
    /// The VCH configuration written by kic-machine.
    #[arg(long)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = VchConfig::load(&args.config)?;
    let level = if cfg.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KIC_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("{level},hyper=info,h2=info"))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(run(cfg))
}

async fn run(cfg: VchConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tracing::info!(
        "kic-vch {} starting VCH {} (datastore {}, libvirt {})",
        env!("CARGO_PKG_VERSION"),
        cfg.name,
        cfg.datastore.display(),
        cfg.target
    );
    let tls = kic_vch::server::tls_config(&cfg.endpoint)?;
    // Bind first: a port in use is reported before the (slower) port layer starts.
    let tcp = match &cfg.endpoint.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}: is another VCH or dockerd using it? (kic-machine configure can change the endpoint)"))?,
        ),
        None => None,
    };
    let mut pl_cfg = kic_portlayer::Config::new(&cfg.datastore, &cfg.name, &cfg.tether);
    pl_cfg.libvirt_uri = cfg.target.clone();
    pl_cfg.default_memory_mib = cfg.container_memory_mib;
    pl_cfg.default_vcpus = cfg.container_cpus;
    pl_cfg.extra_kernel_args = cfg.kernel_args.clone();
    pl_cfg.volume_stores = cfg.volume_stores.clone();
    let mut setup =
        kic_portlayer::NetworkSetup::for_vch(&cfg.name, cfg.bridge_network_range.as_deref())
            .map_err(|e| anyhow::anyhow!("bridge network range: {e}"))?;
    for n in &cfg.container_networks {
        let bad = |what: &str| anyhow::anyhow!("container network {}: invalid {what}", n.alias);
        setup
            .external
            .push(kic_portlayer::network::ExternalNetwork {
                alias: n.alias.clone(),
                bridge: n.bridge.clone(),
                gateway: (!n.gateway.is_empty())
                    .then(|| n.gateway.parse().map_err(|_| bad("gateway")))
                    .transpose()?,
                range: (!n.ip_range.is_empty())
                    .then(|| n.ip_range.parse().map_err(|_| bad("ip range")))
                    .transpose()?,
                dns: n
                    .dns
                    .iter()
                    .map(|d| d.parse().map_err(|_| bad("nameserver")))
                    .collect::<anyhow::Result<_>>()?,
            });
    }
    pl_cfg.network = Some(setup);
    let pl = kic_portlayer::PortLayer::open(pl_cfg)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the port layer: {e}"))?;
    tracing::info!(
        "port layer ready: domain type {}, boot image {}",
        pl.domain_type(),
        pl.boot_version()
    );
    let state = kic_vch::api::AppState::new(pl, Arc::new(cfg.clone()));
    state.net.init(&state).await;
    kic_vch::api::containers::start_policies(&state).await;
    let app = kic_vch::api::router(state.clone());
    let unix = match &cfg.endpoint.socket {
        Some(p) => Some(kic_vch::server::bind_unix(p)?),
        None => None,
    };
    if let Some(l) = tcp {
        tracing::info!(
            "serving the Docker API on {} ({:?} TLS)",
            l.local_addr()?,
            cfg.endpoint.tls
        );
        tokio::spawn(kic_vch::server::serve_tcp(l, tls, app.clone()));
    }
    if let Some(l) = unix {
        tracing::info!(
            "serving the Docker API on unix socket {:?}",
            cfg.endpoint.socket
        );
        tokio::spawn(kic_vch::server::serve_unix(l, app.clone()));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping the endpoint; containers keep running");
    if let Some(p) = &cfg.endpoint.socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
