//! `/robots`: robot accounts with explicit per-project permissions and expiry. Secrets are
//! shown once, at creation or refresh, and stored as Argon2id hashes.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::projects::need;
use super::{body, paged, require_login, time, ApiResult};
use crate::auth::{hash_secret, Caller, ROBOT_PREFIX};
use crate::db::Robot;
use crate::errors::ApiError;
use crate::rbac::{Act, Res, RobotPermission};
use crate::state::St;

fn robot_json(r: &Robot) -> Value {
    let perms: Vec<RobotPermission> = serde_json::from_str(&r.permissions).unwrap_or_default();
    json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "level": r.level,
        "duration": r.duration,
        "editable": true,
        "disable": r.disabled,
        "expires_at": r.expires_at,
        "permissions": perms,
        "project_id": r.project_id,
        "creator": r.creator,
        "creation_time": time(r.creation_time),
        "update_time": time(r.update_time),
    })
}

fn new_secret() -> String {
    // Harbor's secrets are 32 characters with upper, lower case and digits.
    let b: [u8; 16] = rand::random();
    format!("Kr{}9", hex::encode(b).chars().take(29).collect::<String>())
}

fn expires(creation: i64, duration: i64) -> i64 {
    match duration {
        d if d < 0 => -1,
        0 => creation + 30 * 86400,
        d => creation + d * 86400,
    }
}

/// May the caller manage robots described by `level` and `perms`? Returns the project id.
async fn check_manage(
    st: &St,
    c: &Caller,
    level: &str,
    perms: &[RobotPermission],
    act: Act,
) -> Result<i64, ApiError> {
    require_login(c)?;
    if level == "system" {
        return if c.principal.is_sysadmin() {
            Ok(0)
        } else {
            Err(ApiError::forbidden())
        };
    }
    if level != "project" {
        return Err(ApiError::bad("level must be system or project"));
    }
    let [p] = perms else {
        return Err(ApiError::bad(
            "a project robot has permissions for exactly one project",
        ));
    };
    let project = st
        .db
        .project_by_name(&p.namespace)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {} not found", p.namespace)))?;
    need(st, c, &project, Res::Robot, act).await?;
    Ok(project.id)
}

async fn find(st: &St, id: &str) -> Result<Robot, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad("robot id must be a number"))?;
    st.db
        .robot_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("robot {id} not found")))
}

async fn check_existing(st: &St, c: &Caller, r: &Robot, act: Act) -> Result<(), ApiError> {
    require_login(c)?;
    if c.principal.is_sysadmin() {
        return Ok(());
    }
    if r.level != "project" {
        return Err(ApiError::forbidden());
    }
    let p = st
        .db
        .project_by_id(r.project_id)
        .await?
        .ok_or_else(|| ApiError::not_found("project not found"))?;
    need(st, c, &p, Res::Robot, act).await
}

/// `GET /robots[?q=Level=project,ProjectID=N]`.
pub async fn list(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    require_login(&c)?;
    let q = super::query_map(q.as_deref());
    let project_filter = q.get("q").and_then(|s| {
        s.split(',').find_map(|t| {
            t.strip_prefix("ProjectID=")
                .or_else(|| t.strip_prefix("project_id="))
                .and_then(|v| v.parse::<i64>().ok())
        })
    });
    let mut robots = st.db.robots().await?;
    match project_filter {
        Some(pid) => {
            let p = st
                .db
                .project_by_id(pid)
                .await?
                .ok_or_else(|| ApiError::not_found("project not found"))?;
            need(&st, &c, &p, Res::Robot, Act::List).await?;
            robots.retain(|r| r.level == "project" && r.project_id == pid);
        }
        None if c.principal.is_sysadmin() => {}
        None => return Err(ApiError::forbidden()),
    }
    let mut q2 = q.clone();
    // The project filter was applied above; other terms go through the generic filter.
    if let Some(query) = q.get("q") {
        let rest: Vec<&str> = query
            .split(',')
            .filter(|t| !t.starts_with("ProjectID=") && !t.starts_with("project_id="))
            .collect();
        q2.insert("q".into(), rest.join(","));
    }
    paged(
        robots.iter().map(robot_json).collect(),
        &q2,
        "/api/v2.0/robots",
    )
}

#[derive(Deserialize)]
struct RobotReq {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    duration: i64,
    level: String,
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    permissions: Vec<RobotPermission>,
    secret: Option<String>,
}

pub async fn create(State(st): State<St>, c: Caller, b: Bytes) -> ApiResult {
    let r: RobotReq = body(&b)?;
    let project_id = check_manage(&st, &c, &r.level, &r.permissions, Act::Create).await?;
    if r.name.is_empty() || r.name.contains(['$', '+', ':', '/']) {
        return Err(ApiError::bad(format!("invalid robot name {:?}", r.name)));
    }
    let full = if r.level == "project" {
        format!("{ROBOT_PREFIX}{}+{}", r.permissions[0].namespace, r.name)
    } else {
        format!("{ROBOT_PREFIX}{}", r.name)
    };
    let secret = r
        .secret
        .clone()
        .filter(|s| s.len() >= 8)
        .unwrap_or_else(new_secret);
    let s2 = secret.clone();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&s2))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let now = crate::db::now();
    let exp = expires(now, r.duration);
    let perms = serde_json::to_string(&r.permissions).unwrap_or_default();
    let id = st
        .db
        .create_robot(
            &full,
            &r.description,
            &hash,
            &r.level,
            project_id,
            r.duration,
            exp,
            &perms,
            c.principal.name(),
        )
        .await?;
    if r.disable {
        st.db
            .update_robot(id, &r.description, true, r.duration, exp, &perms)
            .await?;
    }
    st.audit
        .record(&c, "create", "robot", &full, project_id)
        .await;
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({"id": id, "name": full, "secret": secret, "creation_time": time(now), "expires_at": exp})),
    )
        .into_response();
    resp.headers_mut().insert(
        axum::http::header::LOCATION,
        crate::oci::hv(&format!("/api/v2.0/robots/{id}")),
    );
    Ok(resp)
}

pub async fn get_one(State(st): State<St>, c: Caller, Path(id): Path<String>) -> ApiResult {
    let r = find(&st, &id).await?;
    check_existing(&st, &c, &r, Act::Read).await?;
    Ok(Json(robot_json(&r)).into_response())
}

#[derive(Deserialize)]
struct RobotUpdate {
    description: Option<String>,
    duration: Option<i64>,
    disable: Option<bool>,
    permissions: Option<Vec<RobotPermission>>,
}

pub async fn update(
    State(st): State<St>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult {
    let r = find(&st, &id).await?;
    check_existing(&st, &c, &r, Act::Update).await?;
    let u: RobotUpdate = body(&b)?;
    let perms = match u.permissions {
        Some(p) => {
            if r.level == "project"
                && (p.len() != 1
                    || st.db.project_by_name(&p[0].namespace).await?.map(|x| x.id)
                        != Some(r.project_id))
            {
                return Err(ApiError::bad(
                    "a project robot keeps permissions for its own project only",
                ));
            }
            serde_json::to_string(&p).unwrap_or_default()
        }
        None => r.permissions.clone(),
    };
    let duration = u.duration.unwrap_or(r.duration);
    let exp = if duration == r.duration {
        r.expires_at
    } else {
        expires(r.creation_time, duration)
    };
    st.db
        .update_robot(
            r.id,
            &u.description.unwrap_or(r.description.clone()),
            u.disable.unwrap_or(r.disabled),
            duration,
            exp,
            &perms,
        )
        .await?;
    st.invalidate_credentials();
    st.audit
        .record(&c, "update", "robot", &r.name, r.project_id)
        .await;
    Ok(super::ok())
}

pub async fn delete(State(st): State<St>, c: Caller, Path(id): Path<String>) -> ApiResult {
    let r = find(&st, &id).await?;
    check_existing(&st, &c, &r, Act::Delete).await?;
    st.db.delete_robot(r.id).await?;
    st.invalidate_credentials();
    st.audit
        .record(&c, "delete", "robot", &r.name, r.project_id)
        .await;
    Ok(super::ok())
}

#[derive(Deserialize)]
struct RefreshReq {
    secret: Option<String>,
}

/// `PATCH /robots/{id}`: a new secret (given, or generated and returned once).
pub async fn refresh(
    State(st): State<St>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult {
    let r = find(&st, &id).await?;
    check_existing(&st, &c, &r, Act::Update).await?;
    let req: RefreshReq = if b.is_empty() {
        RefreshReq { secret: None }
    } else {
        body(&b)?
    };
    let secret = req
        .secret
        .clone()
        .filter(|s| s.len() >= 8)
        .unwrap_or_else(new_secret);
    let s2 = secret.clone();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&s2))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    st.db.set_robot_secret(r.id, &hash).await?;
    st.invalidate_credentials();
    st.audit
        .record(&c, "update", "robot", &r.name, r.project_id)
        .await;
    Ok(Json(
        json!({"secret": if req.secret.is_some() { Value::Null } else { Value::String(secret) }}),
    )
    .into_response())
}
