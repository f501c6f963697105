//! The HTTP(S) server: router assembly, background tasks, plain or TLS listening.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tower::ServiceExt;

use crate::state::St;

/// The whole router.
pub fn router(st: St) -> Router {
    let v2 = Router::new()
        .route("/v2/", get(crate::oci::base))
        .route("/v2", get(crate::oci::base))
        .route("/v2/_catalog", get(crate::oci::catalog))
        .route("/v2/{*rest}", axum::routing::any(crate::oci::dispatch))
        .layer(axum::middleware::map_response(
            crate::oci::api_version_header,
        ));
    Router::new()
        .merge(v2)
        .route(
            "/service/token",
            get(crate::token::get_token).post(crate::token::post_token),
        )
        .nest("/api/v2.0", crate::api::router())
        .layer(axum::middleware::from_fn(access_log))
        .with_state(st)
}

/// One debug line per request (`KIC_LOG=kic_registry::access=debug`).
async fn access_log(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !tracing::enabled!(target: "kic_registry::access", tracing::Level::DEBUG) {
        return next.run(req).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        target: "kic_registry::access",
        "{peer} {method} {path} {} {}ms",
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    resp
}

/// Starts periodic work: pull counters and scheduled GC.
pub fn spawn_background(st: St) {
    let s = st.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            s.flush_pulls().await;
        }
    });
    if st.config.gc_interval_secs > 0 {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(st.config.gc_interval_secs)).await;
                if let Err(e) = crate::gc::run(&st).await {
                    tracing::error!("scheduled gc failed: {e}");
                }
            }
        });
    }
}

fn tls_config(st: &St) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert = st.config.tls_cert.as_ref().context("no certificate")?;
    let key = st
        .config
        .tls_key
        .as_ref()
        .context("--tls-key is required with --tls-cert")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves on an already bound listener until SIGTERM/SIGINT, then finishes in-flight requests
/// (plain HTTP) and writes queued audit records and pull counts.
pub async fn serve(st: St, listener: TcpListener) -> anyhow::Result<()> {
    spawn_background(st.clone());
    let app = router(st.clone());
    if !st.config.tls() {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    } else {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&st)?);
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = &mut stop => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    app.map_request(move |mut r: axum::http::Request<hyper::body::Incoming>| {
                        r.extensions_mut().insert(ConnectInfo(peer));
                        r.map(axum::body::Body::new)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc))
                    .await;
            });
        }
    }
    st.audit.flush().await;
    st.flush_pulls().await;
    tracing::info!("stopped");
    Ok(())
}
