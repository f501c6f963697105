//! `kic-registry`: the registry binary. `serve` runs it; see `docs/registry.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kic_registry::config::Config;
use kic_registry::state::AppState;

#[derive(Parser)]
#[command(
    name = "kic-registry",
    version,
    about = "KIC's OCI registry with a Harbor-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the registry.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory (blobs, uploads, SQLite database, token key).
    #[arg(
        long,
        env = "KIC_REGISTRY_DATA_DIR",
        default_value = "/var/lib/kic-registry"
    )]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "KIC_REGISTRY_LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// PEM certificate chain; serves HTTPS when given.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user@host/db) instead of SQLite in the data directory.
    #[arg(long, env = "KIC_REGISTRY_DATABASE_URL")]
    database_url: Option<String>,
    /// Password for the `admin` user created on first start (generated and printed if absent).
    #[arg(long, env = "KIC_REGISTRY_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Blobs touched by a push within this many seconds are never garbage collected.
    #[arg(long, default_value_t = 3600)]
    gc_grace_secs: i64,
    /// Run garbage collection every this many seconds (0: only via the API).
    #[arg(long, default_value_t = 0)]
    gc_interval_secs: u64,
    /// Argon2id memory cost (KiB) for new password and secret hashes.
    #[arg(long, default_value_t = 19456)]
    argon2_memory_kib: u32,
    /// Argon2id iterations for new password and secret hashes.
    #[arg(long, default_value_t = 2)]
    argon2_iterations: u32,
    /// How clients reach the registry (e.g. https://registry.example.com) when a proxy sits in
    /// front; used in token challenges and `systeminfo`. Default: each request's Host header.
    #[arg(long, env = "KIC_REGISTRY_EXTERNAL_URL")]
    external_url: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 1800)]
    token_ttl_secs: i64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KIC_LOG")
                .unwrap_or_else(|_| "kic_registry=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Cmd::Serve(a) = Cli::parse().cmd;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        kic_registry::auth::set_hash_cost(a.argon2_memory_kib, a.argon2_iterations);
        let mut cfg = Config::new(a.data_dir, a.listen);
        cfg.tls_cert = a.tls_cert;
        cfg.tls_key = a.tls_key;
        cfg.database_url = a.database_url;
        cfg.admin_password = a.admin_password.filter(|p| !p.is_empty());
        cfg.gc_grace_secs = a.gc_grace_secs;
        cfg.gc_interval_secs = a.gc_interval_secs;
        cfg.token_ttl_secs = a.token_ttl_secs;
        cfg.external_url = a.external_url;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let local = listener.local_addr()?;
        let scheme = if cfg.tls() { "https" } else { "http" };
        let (st, generated) = AppState::open(cfg).await.context("opening the registry")?;
        if let Some(p) = generated {
            println!("generated admin password (shown once): {p}");
        }
        println!("kic-registry listening on {scheme}://{local}");
        kic_registry::server::serve(st, listener).await
    })
}
