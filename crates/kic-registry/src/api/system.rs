//! `ping`, `health`, `systeminfo`, `statistics`, `audit-logs` and garbage collection.

use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{require_login, require_sysadmin, time, ApiResult};
use crate::auth::Caller;
use crate::db::AuditLog;
use crate::rbac::{Act, Res};
use crate::state::St;

pub async fn ping() -> &'static str {
    "Pong"
}

pub async fn health(State(st): State<St>) -> ApiResult {
    let db_ok = st.db.ping().await;
    let store_ok = tokio::fs::metadata(st.store.layout().blobs_dir())
        .await
        .is_ok();
    let s = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    Ok(Json(json!({
        "status": s(db_ok && store_ok),
        "components": [
            {"name": "core", "status": "healthy"},
            {"name": "database", "status": s(db_ok)},
            {"name": "registry", "status": s(store_ok)},
        ]
    }))
    .into_response())
}

pub async fn systeminfo(State(st): State<St>, c: Caller) -> ApiResult {
    let host = c
        .base_url
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok(Json(json!({
        "with_notary": false,
        "with_chartmuseum": false,
        "auth_mode": "db_auth",
        "primary_auth_mode": false,
        "registry_url": host,
        "external_url": c.base_url,
        "project_creation_restriction": "everyone",
        "self_registration": false,
        "has_ca_root": false,
        "harbor_version": concat!("v2.11.0-kic-", env!("CARGO_PKG_VERSION")),
        "registry_storage_provider_name": "filesystem",
        "read_only": false,
        "notification_enable": false,
        "banner_message": "",
        "current_time": time(crate::db::now()),
        "database": st.db.backend(),
    }))
    .into_response())
}

pub async fn statistics(State(st): State<St>, c: Caller) -> ApiResult {
    require_login(&c)?;
    let (mut pubp, mut privp, mut pubr, mut privr) = (0, 0, 0, 0);
    for p in st.db.projects().await? {
        if !st
            .allowed(&c.principal, &p, Res::Project, Act::Read)
            .await?
        {
            continue;
        }
        let n = st.db.repository_count(p.id).await?;
        if p.public {
            pubp += 1;
            pubr += n;
        } else {
            privp += 1;
            privr += n;
        }
    }
    let mut out = json!({
        "private_project_count": privp,
        "private_repo_count": privr,
        "public_project_count": pubp,
        "public_repo_count": pubr,
        "total_project_count": pubp + privp,
        "total_repo_count": pubr + privr,
    });
    if c.principal.is_sysadmin() {
        out["total_storage_consumption"] = st.db.total_storage().await?.into();
    }
    Ok(Json(out).into_response())
}

pub fn audit_json(l: &AuditLog) -> Value {
    json!({
        "id": l.id,
        "username": l.username,
        "resource": l.resource,
        "resource_type": l.resource_type,
        "operation": l.operation,
        "op_time": time(l.op_time),
        "client_ip": l.client_ip,
        "project_id": l.project_id,
    })
}

/// Query keys of `q=` on audit logs and their columns.
pub const AUDIT_COLUMNS: &[(&str, &str)] = &[
    ("username", "username"),
    ("operation", "operation"),
    ("resource", "resource"),
    ("resource_type", "resource_type"),
    ("op_time", "op_time"),
    ("client_ip", "client_ip"),
];

/// One page of audit logs, filtered in the database (the table grows with every pull).
pub async fn audit_page(
    st: &St,
    projects: Option<&[i64]>,
    q: &std::collections::HashMap<String, String>,
    path: &str,
) -> ApiResult {
    let conds = super::q_conditions(q.get("q"), AUDIT_COLUMNS, "op_time")?;
    let (page, size) = super::page_params(q)?;
    let size = size.unwrap_or(100);
    let ascending = q.get("sort").is_some_and(|s| s == "op_time" || s == "id");
    let (logs, total) = st
        .db
        .audit_page(
            projects,
            &conds,
            ascending,
            ((page - 1) * size) as i64,
            size as i64,
        )
        .await?;
    super::page_response(
        logs.iter().map(audit_json).collect(),
        total as usize,
        page,
        size,
        q,
        path,
    )
}

/// `GET /audit-logs`: everything for system admins, else the logs of projects whose logs the
/// caller may list.
pub async fn audit_logs(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    require_login(&c)?;
    let q = super::query_map(q.as_deref());
    if c.principal.is_sysadmin() {
        return audit_page(&st, None, &q, "/api/v2.0/audit-logs").await;
    }
    let mut allowed = vec![];
    for p in st.db.projects().await? {
        if st.allowed(&c.principal, &p, Res::Log, Act::List).await? {
            allowed.push(p.id);
        }
    }
    audit_page(&st, Some(&allowed), &q, "/api/v2.0/audit-logs").await
}

/// `POST /system/gc/schedule`: runs a collection now and answers with its report.
pub async fn run_gc(State(st): State<St>, c: Caller) -> ApiResult {
    require_sysadmin(&c)?;
    let report = crate::gc::run(&st).await?;
    st.audit.record(&c, "create", "gc", "gc", 0).await;
    let mut r = super::created("/api/v2.0/system/gc/1".into());
    *r.body_mut() = axum::body::Body::from(serde_json::to_vec(&report).unwrap_or_default());
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

pub async fn gc_schedule(c: Caller) -> ApiResult {
    require_sysadmin(&c)?;
    Ok(Json(json!({"schedule": {"type": "None"}})).into_response())
}

pub async fn gc_history(State(st): State<St>, c: Caller) -> ApiResult {
    require_sysadmin(&c)?;
    let last = st.last_gc.lock().unwrap().clone();
    Ok(Json(last.into_iter().collect::<Vec<_>>()).into_response())
}
