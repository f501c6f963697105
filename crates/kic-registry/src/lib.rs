//! kic-registry: KIC's OCI registry.
//!
//! It owns everything a `docker push`/`skopeo copy` needs on the server side: OCI Distribution
//! v1.1 (`/v2/...`), a Docker-compatible token service (`/service/token`), projects, users,
//! Harbor roles and robot accounts, an audit log, garbage collection and a Harbor-compatible
//! REST API (`/api/v2.0/...`).
//!
//! Layering (arrows point down, never up):
//!
//! ```text
//!   server (router, TLS)
//!     ├── oci::*   (distribution routes)    ├── api::* (Harbor routes)   ├── token (token service)
//!     └──────────── auth (principals, RBAC, JWT) ─── audit ─── gc
//!                   db (one data layer, SQLite or PostgreSQL)    blobstore (+ layout)
//! ```
//!
//! Handlers never build storage paths (only [`layout`] does) and never pick HTTP status codes by
//! hand: they return [`errors::OciError`] or [`errors::ApiError`], whose tables say the status.
//! Every route that needs a caller takes the [`auth::Caller`] extractor, so it cannot forget to
//! authenticate.
//!
//! It must not depend on any other KIC crate: the registry stands alone.

pub mod api;
pub mod audit;
pub mod auth;
pub mod blobstore;
pub mod config;
pub mod db;
pub mod digest;
pub mod errors;
pub mod gc;
pub mod layout;
pub mod oci;
pub mod rbac;
pub mod server;
pub mod state;
pub mod token;
