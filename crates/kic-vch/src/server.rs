//! Listeners: TCP (mutual TLS, server TLS or plain) and a unix socket, each connection served
//! by hyper with upgrades (attach and exec hijack the connection).
//!
//! Every request passes [`normalize`] first: `/v1.NN/...` is checked against the versions
//! served and stripped, so the router sees unversioned paths; every answer carries dockerd's
//! `Api-Version`, `Ostype` and `Server` headers.

use crate::api::{ApiError, API_VERSION, MIN_API_VERSION};
use crate::config::{Endpoint, TlsMode};
use anyhow::{anyhow, Context};
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Uri};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

/// The API version a request asked for (from its `/v1.NN` prefix; the newest when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (a, b) = s.split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
    pub fn newest() -> ApiVersion {
        ApiVersion::parse(API_VERSION).expect("valid constant")
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Strip and check the version prefix. `Err` is the answer to send instead.
pub fn normalize<B>(mut req: Request<B>) -> Result<Request<B>, ApiError> {
    let path = req.uri().path();
    let mut version = ApiVersion::newest();
    if let Some(rest) = path.strip_prefix("/v") {
        let (v, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some(asked) = ApiVersion::parse(v) {
            let min = ApiVersion::parse(MIN_API_VERSION).expect("valid constant");
            if asked > ApiVersion::newest() {
                return Err(ApiError::bad_request(format!(
                    "client version {asked} is too new. Maximum supported API version is {API_VERSION}"
                )));
            }
            if asked < min {
                return Err(ApiError::bad_request(format!(
                    "client version {asked} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                )));
            }
            version = asked;
            let tail = if tail.is_empty() { "/" } else { tail };
            let pq = match req.uri().query() {
                Some(q) => format!("{tail}?{q}"),
                None => tail.to_string(),
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(pq.parse().map_err(|_| ApiError::bad_request("bad path"))?);
            *req.uri_mut() =
                Uri::from_parts(parts).map_err(|_| ApiError::bad_request("bad path"))?;
        }
    }
    req.extensions_mut().insert(version);
    Ok(req)
}

fn add_headers(res: &mut Response<Body>) {
    let h = res.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert(
        "server",
        HeaderValue::from_static(concat!("KIC/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
}

/// Serve one connection (TLS already done) until it closes or is hijacked and finished.
async fn serve_conn<S>(io: S, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let mut res = match normalize(req.map(Body::new)) {
                Ok(req) => app.oneshot(req).await.unwrap_or_else(|e| match e {}),
                Err(e) => e.into_response(),
            };
            add_headers(&mut res);
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The rustls server configuration for an endpoint (`None` for plain HTTP).
pub fn tls_config(
    ep: &Endpoint,
) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
    use tokio_rustls::rustls;
    if ep.tls == TlsMode::None {
        return Ok(None);
    }
    let cert = ep
        .server_cert
        .as_deref()
        .ok_or_else(|| anyhow!("TLS needs endpoint.server_cert in the VCH config"))?;
    let key = ep
        .server_key
        .as_deref()
        .ok_or_else(|| anyhow!("TLS needs endpoint.server_key in the VCH config"))?;
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if ep.tls == TlsMode::Mutual {
        let ca = ep
            .client_ca
            .as_deref()
            .ok_or_else(|| anyhow!("mutual TLS needs endpoint.client_ca in the VCH config"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots
                .add(c)
                .with_context(|| format!("bad CA certificate in {}", ca.display()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .context("server certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// Accept TCP connections forever.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    app: Router,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => serve_conn(sock, app).await,
                Some(a) => {
                    match tokio::time::timeout(std::time::Duration::from_secs(30), a.accept(sock))
                        .await
                    {
                        Ok(Ok(tls)) => serve_conn(tls, app).await,
                        Ok(Err(e)) => tracing::info!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::info!("TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
}

/// Accept unix socket connections forever.
pub async fn serve_unix(listener: UnixListener, app: Router) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let app = app.clone();
                tokio::spawn(serve_conn(sock, app));
            }
            Err(e) => {
                tracing::warn!("accept on the unix socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Bind the unix socket (replacing a stale one), mode 0660.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(anyhow!(
            "{} is in use by another endpoint; stop it first (kic-machine ls shows VCHs)",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(uri: &str) -> Result<(String, ApiVersion), String> {
        let req = Request::builder().uri(uri).body(()).unwrap();
        normalize(req)
            .map(|r| {
                (
                    r.uri().to_string(),
                    *r.extensions().get::<ApiVersion>().unwrap(),
                )
            })
            .map_err(|e| e.message)
    }

    #[test]
    fn version_prefix_is_checked_and_stripped() {
        assert_eq!(
            path_of("/v1.47/containers/json?all=1").unwrap(),
            ("/containers/json?all=1".into(), ApiVersion(1, 47))
        );
        assert_eq!(
            path_of("/containers/json").unwrap(),
            ("/containers/json".into(), ApiVersion(1, 51))
        );
        assert_eq!(path_of("/v1.24/_ping").unwrap().1, ApiVersion(1, 24));
        assert_eq!(
            path_of("/v1.12/info").unwrap_err(),
            "client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"
        );
        assert_eq!(
            path_of("/v1.99/info").unwrap_err(),
            "client version 1.99 is too new. Maximum supported API version is 1.51"
        );
        // A path that merely starts with v is not a version.
        assert_eq!(path_of("/volumes").unwrap().0, "/volumes");
    }
}
