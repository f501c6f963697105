//! The Docker Engine API routes. Every handler takes [`AppState`] and answers errors as Docker
//! does: a status code and `{"message": "..."}`.

pub mod archive;
pub mod containers;
pub mod events;
pub mod exec;
pub mod images;
pub mod networks;
pub mod stream;
pub mod system;
pub mod util;
pub mod volumes;

use crate::config::VchConfig;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

/// The newest API version served, and the oldest accepted.
pub const API_VERSION: &str = "1.51";
pub const MIN_API_VERSION: &str = "1.24";

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pl: kic_portlayer::PortLayer,
    pub cfg: Arc<VchConfig>,
    pub events: events::EventBus,
    pub started: std::time::Instant,
    /// Held while limits are checked and a container is reserved.
    pub create_lock: Arc<tokio::sync::Mutex<()>>,
    /// Containers stopped or killed through the API: their restart policy stays quiet
    /// (dockerd's "manually stopped").
    pub stopped_by_user: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pub execs: exec::Execs,
    /// Published ports and DNS responders.
    pub net: Arc<crate::net::ctl::NetCtl>,
}

impl AppState {
    pub fn new(pl: kic_portlayer::PortLayer, cfg: Arc<VchConfig>) -> Self {
        AppState {
            pl,
            cfg,
            events: events::EventBus::new(),
            started: std::time::Instant::now(),
            create_lock: Default::default(),
            stopped_by_user: Default::default(),
            execs: Default::default(),
            net: Default::default(),
        }
    }
}

/// An error as the Docker API returns it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    /// 501 with the whole message given.
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, m)
    }
    /// What KIC does not do, said plainly (501).
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not supported by KIC (every container is a VM on libvirt; see docs/vch.md)"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("{}: {}", self.status, self.message);
        }
        (
            self.status,
            axum::Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

impl From<kic_portlayer::Error> for ApiError {
    fn from(e: kic_portlayer::Error) -> Self {
        use kic_portlayer::Kind;
        let status = match e.kind {
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.message)
    }
}

impl From<kic_image::ImageError> for ApiError {
    fn from(e: kic_image::ImageError) -> Self {
        kic_portlayer::Error::from(e).into()
    }
}

/// Every route of the API (unversioned paths; the server strips `/v1.NN`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(system::routes())
        .merge(containers::routes())
        .merge(exec::routes())
        .merge(images::routes())
        .merge(volumes::routes())
        .merge(networks::routes())
        .fallback(|| async { ApiError::not_found("page not found") })
        .with_state(state)
}
