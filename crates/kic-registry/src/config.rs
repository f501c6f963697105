//! Server configuration (from the command line; see `main.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `kic-registry serve` needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Root of the data directory (see [`crate::layout`]).
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// PEM certificate chain and key; plain HTTP when absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `postgres://...`; SQLite in the data directory when absent.
    pub database_url: Option<String>,
    /// Password of the `admin` user created at first start (generated and printed if absent).
    pub admin_password: Option<String>,
    /// The `service` name in tokens and challenges.
    pub service: String,
    /// Registry JWT lifetime.
    pub token_ttl_secs: i64,
    /// A blob touched by a push within this many seconds is never collected.
    pub gc_grace_secs: i64,
    /// Run GC every this many seconds (0 = only on request).
    pub gc_interval_secs: u64,
    /// Abandoned upload sessions older than this are removed by GC.
    pub upload_ttl_secs: u64,
    /// How clients reach us (`https://registry.example.com`) when a proxy sits in front;
    /// otherwise derived from each request's `Host` header.
    pub external_url: Option<String>,
}

impl Config {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            data_dir,
            listen,
            tls_cert: None,
            tls_key: None,
            database_url: None,
            admin_password: None,
            service: "kic-registry".into(),
            token_ttl_secs: 1800,
            gc_grace_secs: 3600,
            gc_interval_secs: 0,
            upload_ttl_secs: 24 * 3600,
            external_url: None,
        }
    }

    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// `scheme://host[:port]` of this registry as a client addressed it.
    pub fn base_url(&self, host_header: Option<&str>) -> String {
        if let Some(u) = &self.external_url {
            return u.trim_end_matches('/').to_string();
        }
        let scheme = if self.tls() { "https" } else { "http" };
        let listen = self.listen.to_string();
        format!("{scheme}://{}", host_header.unwrap_or(&listen))
    }
}
