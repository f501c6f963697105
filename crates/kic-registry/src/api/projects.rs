//! `/projects`, their members and logs.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{body, created, ok, paged, require_login, time, ApiResult};
use crate::auth::{Caller, Principal};
use crate::db::{Member, Project};
use crate::errors::ApiError;
use crate::rbac::{self, Act, Res};
use crate::state::St;

/// Resolves `{project_name_or_id}` (Harbor's `X-Is-Resource-Name: true` forces a name).
pub async fn resolve(st: &St, headers: &HeaderMap, p: &str) -> Result<Project, ApiError> {
    let by_name = headers
        .get("X-Is-Resource-Name")
        .and_then(|v| v.to_str().ok())
        == Some("true");
    let found = match p.parse::<i64>() {
        Ok(id) if !by_name => st.db.project_by_id(id).await?,
        _ => st.db.project_by_name(p).await?,
    };
    found.ok_or_else(|| ApiError::not_found(format!("project {p} not found")))
}

/// Fails unless `c` may do `act` on `res` in `p`: 401 for anonymous callers, 403 otherwise.
pub async fn need(st: &St, c: &Caller, p: &Project, res: Res, act: Act) -> Result<(), ApiError> {
    if st.allowed(&c.principal, p, res, act).await? {
        Ok(())
    } else if c.anonymous() {
        Err(ApiError::unauthorized())
    } else {
        Err(ApiError::forbidden())
    }
}

pub fn valid_project_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
}

async fn project_json(st: &St, c: &Caller, p: &Project) -> Result<Value, ApiError> {
    let mut meta = p.metadata.clone();
    meta.insert("public".into(), Value::String(p.public.to_string()));
    let owner = st
        .db
        .user_by_id(p.owner_id)
        .await?
        .map(|u| u.username)
        .unwrap_or_default();
    let role = match &c.principal {
        Principal::User { id, .. } => st.db.role_of(p.id, *id).await?,
        _ => None,
    };
    Ok(json!({
        "project_id": p.id,
        "name": p.name,
        "owner_id": p.owner_id,
        "owner_name": owner,
        "creation_time": time(p.creation_time),
        "update_time": time(p.update_time),
        "deleted": false,
        "togglable": true,
        "registry_id": null,
        "repo_count": st.db.repository_count(p.id).await?,
        "current_user_role_id": role.unwrap_or(0),
        "current_user_role_ids": role.map(|r| vec![r]).unwrap_or_default(),
        "metadata": meta,
    }))
}

pub async fn list(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    let q = super::query_map(q.as_deref());
    let mut items = vec![];
    for p in st.db.projects().await? {
        if !st
            .allowed(&c.principal, &p, Res::Project, Act::Read)
            .await?
        {
            continue;
        }
        if q.get("name").is_some_and(|n| !p.name.contains(n.as_str())) {
            continue;
        }
        if q.get("public")
            .is_some_and(|v| v.parse::<bool>().ok() != Some(p.public))
        {
            continue;
        }
        let j = project_json(&st, &c, &p).await?;
        if q.get("owner")
            .is_some_and(|o| j["owner_name"] != o.as_str())
        {
            continue;
        }
        items.push(j);
    }
    paged(items, &q, "/api/v2.0/projects")
}

/// `HEAD /projects?project_name=`: does it exist?
pub async fn head(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    require_login(&c)?;
    let q = super::query_map(q.as_deref());
    let name = q
        .get("project_name")
        .ok_or_else(|| ApiError::bad("project_name is required"))?;
    match st.db.project_by_name(name).await? {
        Some(_) => Ok(ok()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

#[derive(Deserialize)]
struct ProjectReq {
    project_name: Option<String>,
    public: Option<bool>,
    metadata: Option<Map<String, Value>>,
}

fn public_of(r: &ProjectReq) -> Option<bool> {
    r.metadata
        .as_ref()
        .and_then(|m| m.get("public"))
        .and_then(|v| match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .or(r.public)
}

pub async fn create(State(st): State<St>, c: Caller, headers: HeaderMap, b: Bytes) -> ApiResult {
    require_login(&c)?;
    let Principal::User { id: owner, .. } = &c.principal else {
        return Err(ApiError::forbidden());
    };
    let r: ProjectReq = body(&b)?;
    let name = r.project_name.clone().unwrap_or_default();
    if !valid_project_name(&name) {
        return Err(ApiError::bad(format!("invalid project name {name:?}")));
    }
    let public = public_of(&r).unwrap_or(false);
    let mut meta = r.metadata.clone().unwrap_or_default();
    meta.remove("public");
    let id = st.db.create_project(&name, *owner, public, &meta).await?;
    st.audit.record(&c, "create", "project", &name, id).await;
    let by_name = headers
        .get("X-Resource-Name-In-Location")
        .and_then(|v| v.to_str().ok())
        == Some("true");
    Ok(created(if by_name {
        format!("/api/v2.0/projects/{name}")
    } else {
        format!("/api/v2.0/projects/{id}")
    }))
}

pub async fn get_one(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Project, Act::Read).await?;
    Ok(Json(project_json(&st, &c, &p).await?).into_response())
}

pub async fn update(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
    b: Bytes,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Project, Act::Update).await?;
    let r: ProjectReq = body(&b)?;
    let public = public_of(&r).unwrap_or(p.public);
    let mut meta = p.metadata.clone();
    for (k, v) in r.metadata.clone().unwrap_or_default() {
        if k != "public" {
            meta.insert(k, v);
        }
    }
    st.db.update_project(p.id, public, &meta).await?;
    st.audit
        .record(&c, "update", "project", &p.name, p.id)
        .await;
    Ok(ok())
}

pub async fn delete(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Project, Act::Delete).await?;
    st.db.delete_project(p.id).await?;
    st.invalidate_credentials();
    st.audit
        .record(&c, "delete", "project", &p.name, p.id)
        .await;
    Ok(ok())
}

pub async fn summary(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Project, Act::Read).await?;
    let mut out = json!({"repo_count": st.db.repository_count(p.id).await?});
    if st.allowed(&c.principal, &p, Res::Member, Act::List).await? {
        let ms = st.db.members(p.id).await?;
        let count = |r: i64| ms.iter().filter(|m| m.role_id == r).count();
        out["project_admin_count"] = count(rbac::PROJECT_ADMIN).into();
        out["maintainer_count"] = count(rbac::MAINTAINER).into();
        out["developer_count"] = count(rbac::DEVELOPER).into();
        out["guest_count"] = count(rbac::GUEST).into();
        out["limited_guest_count"] = count(rbac::LIMITED_GUEST).into();
    }
    Ok(Json(out).into_response())
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "project_id": m.project_id,
        "entity_name": m.username,
        "entity_id": m.user_id,
        "entity_type": "u",
        "role_id": m.role_id,
        "role_name": rbac::role_name(m.role_id),
        "creation_time": time(m.creation_time),
        "update_time": time(m.update_time),
    })
}

pub async fn members(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Member, Act::List).await?;
    let q = super::query_map(q.as_deref());
    let items = st
        .db
        .members(p.id)
        .await?
        .iter()
        .filter(|m| {
            q.get("entityname")
                .is_none_or(|n| m.username.contains(n.as_str()))
        })
        .map(member_json)
        .collect();
    paged(items, &q, &format!("/api/v2.0/projects/{}/members", p.name))
}

#[derive(Deserialize)]
struct MemberUser {
    user_id: Option<i64>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct MemberReq {
    role_id: i64,
    member_user: Option<MemberUser>,
}

pub async fn add_member(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
    b: Bytes,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Member, Act::Create).await?;
    let r: MemberReq = body(&b)?;
    if !rbac::valid_role(r.role_id) {
        return Err(ApiError::bad(format!("invalid role_id {}", r.role_id)));
    }
    let mu = r
        .member_user
        .ok_or_else(|| ApiError::bad("member_user is required (groups are not supported)"))?;
    let user = match (mu.user_id, mu.username) {
        (Some(id), _) if id > 0 => st.db.user_by_id(id).await?,
        (_, Some(name)) => st.db.user_by_name(&name).await?,
        _ => None,
    }
    .ok_or_else(|| ApiError::not_found("user not found"))?;
    let id = st.db.add_member(p.id, user.id, r.role_id).await?;
    st.audit
        .record(
            &c,
            "create",
            "member",
            &format!("{}:{}", p.name, user.username),
            p.id,
        )
        .await;
    Ok(created(format!(
        "/api/v2.0/projects/{}/members/{id}",
        p.name
    )))
}

async fn member_of(st: &St, p: &Project, m: &str) -> Result<Member, ApiError> {
    let id: i64 = m
        .parse()
        .map_err(|_| ApiError::bad("member id must be a number"))?;
    st.db
        .member(p.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("member {id} not found")))
}

pub async fn member(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, m)): Path<(String, String)>,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Member, Act::Read).await?;
    Ok(Json(member_json(&member_of(&st, &p, &m).await?)).into_response())
}

#[derive(Deserialize)]
struct RoleReq {
    role_id: i64,
}

pub async fn update_member(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, m)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Member, Act::Update).await?;
    let r: RoleReq = body(&b)?;
    if !rbac::valid_role(r.role_id) {
        return Err(ApiError::bad(format!("invalid role_id {}", r.role_id)));
    }
    let mem = member_of(&st, &p, &m).await?;
    st.db.update_member(p.id, mem.id, r.role_id).await?;
    st.audit
        .record(
            &c,
            "update",
            "member",
            &format!("{}:{}", p.name, mem.username),
            p.id,
        )
        .await;
    Ok(ok())
}

pub async fn delete_member(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, m)): Path<(String, String)>,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Member, Act::Delete).await?;
    let mem = member_of(&st, &p, &m).await?;
    st.db.delete_member(p.id, mem.id).await?;
    st.audit
        .record(
            &c,
            "delete",
            "member",
            &format!("{}:{}", p.name, mem.username),
            p.id,
        )
        .await;
    Ok(ok())
}

pub async fn logs(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Log, Act::List).await?;
    let q = super::query_map(q.as_deref());
    super::system::audit_page(
        &st,
        Some(&[p.id]),
        &q,
        &format!("/api/v2.0/projects/{}/logs", p.name),
    )
    .await
}
