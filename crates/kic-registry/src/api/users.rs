//! `/users`: local users, managed by system admins; each user may see and edit themselves.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, created, ok, paged, require_login, require_sysadmin, time, ApiResult};
use crate::auth::{hash_secret, Caller, ROBOT_PREFIX};
use crate::db::User;
use crate::errors::ApiError;
use crate::state::St;

pub fn user_json(u: &User) -> Value {
    json!({
        "user_id": u.id,
        "username": u.username,
        "email": u.email,
        "realname": u.realname,
        "comment": u.comment,
        "sysadmin_flag": u.sysadmin,
        "admin_role_in_auth": false,
        "creation_time": time(u.creation_time),
        "update_time": time(u.update_time),
    })
}

async fn user(st: &St, id: &str) -> Result<User, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad("user id must be a number"))?;
    st.db
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} not found")))
}

fn self_or_admin(c: &Caller, u: &User) -> Result<(), ApiError> {
    require_login(c)?;
    if c.principal.is_sysadmin() || c.principal.user_id() == Some(u.id) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.len() < 8 || p.len() > 128 {
        return Err(ApiError::bad("password must be 8 to 128 characters long"));
    }
    Ok(())
}

pub async fn list(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    require_sysadmin(&c)?;
    let q = super::query_map(q.as_deref());
    paged(
        st.db.users().await?.iter().map(user_json).collect(),
        &q,
        "/api/v2.0/users",
    )
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    realname: String,
    password: String,
    #[serde(default)]
    comment: String,
}

pub async fn create(State(st): State<St>, c: Caller, b: Bytes) -> ApiResult {
    require_sysadmin(&c)?;
    let u: NewUser = body(&b)?;
    if u.username.is_empty()
        || u.username.len() > 255
        || u.username.starts_with(ROBOT_PREFIX)
        || u.username == "anonymous"
        || u.username.contains([':', '/', '"'])
    {
        return Err(ApiError::bad("invalid username"));
    }
    check_password(&u.password)?;
    let pw = u.password.clone();
    let h = tokio::task::spawn_blocking(move || hash_secret(&pw))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let id = st
        .db
        .create_user(&u.username, &u.email, &u.realname, &u.comment, &h, false)
        .await?;
    st.audit.record(&c, "create", "user", &u.username, 0).await;
    Ok(created(format!("/api/v2.0/users/{id}")))
}

pub async fn current(State(st): State<St>, c: Caller) -> ApiResult {
    require_login(&c)?;
    let id = c
        .principal
        .user_id()
        .ok_or_else(|| ApiError::not_found("robot accounts have no user record"))?;
    let u = st
        .db
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(Json(user_json(&u)).into_response())
}

pub async fn search(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    require_login(&c)?;
    let q = super::query_map(q.as_deref());
    let needle = q
        .get("username")
        .cloned()
        .unwrap_or_default()
        .to_lowercase();
    let items = st
        .db
        .users()
        .await?
        .iter()
        .filter(|u| u.username.to_lowercase().contains(&needle))
        .map(|u| json!({"user_id": u.id, "username": u.username}))
        .collect();
    paged(items, &q, "/api/v2.0/users/search")
}

pub async fn get_one(State(st): State<St>, c: Caller, Path(id): Path<String>) -> ApiResult {
    let u = user(&st, &id).await?;
    self_or_admin(&c, &u)?;
    Ok(Json(user_json(&u)).into_response())
}

#[derive(Deserialize)]
struct UserProfile {
    email: Option<String>,
    realname: Option<String>,
    comment: Option<String>,
}

pub async fn update(
    State(st): State<St>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult {
    let u = user(&st, &id).await?;
    self_or_admin(&c, &u)?;
    let p: UserProfile = body(&b)?;
    st.db
        .update_user(
            u.id,
            &p.email.unwrap_or(u.email),
            &p.realname.unwrap_or(u.realname),
            &p.comment.unwrap_or(u.comment),
        )
        .await?;
    Ok(ok())
}

pub async fn delete(State(st): State<St>, c: Caller, Path(id): Path<String>) -> ApiResult {
    require_sysadmin(&c)?;
    let u = user(&st, &id).await?;
    if c.principal.user_id() == Some(u.id) || u.username == "admin" {
        return Err(ApiError::forbidden());
    }
    st.db.delete_user(u.id).await?;
    st.invalidate_credentials();
    st.audit.record(&c, "delete", "user", &u.username, 0).await;
    Ok(ok())
}

#[derive(Deserialize)]
struct PasswordReq {
    #[serde(default)]
    old_password: String,
    new_password: String,
}

pub async fn password(
    State(st): State<St>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult {
    let u = user(&st, &id).await?;
    self_or_admin(&c, &u)?;
    let p: PasswordReq = body(&b)?;
    check_password(&p.new_password)?;
    if !c.principal.is_sysadmin() {
        let name = u.username.clone();
        if crate::auth::verify_credentials(&st, &name, &p.old_password)
            .await
            .is_none()
        {
            return Err(ApiError::bad("the old password is wrong"));
        }
    }
    let pw = p.new_password.clone();
    let h = tokio::task::spawn_blocking(move || hash_secret(&pw))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    st.db.set_user_password(u.id, &h).await?;
    st.invalidate_credentials();
    Ok(ok())
}

#[derive(Deserialize)]
struct SysadminReq {
    sysadmin_flag: bool,
}

pub async fn sysadmin(
    State(st): State<St>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult {
    require_sysadmin(&c)?;
    let u = user(&st, &id).await?;
    let r: SysadminReq = body(&b)?;
    st.db.set_user_sysadmin(u.id, r.sysadmin_flag).await?;
    st.invalidate_credentials();
    Ok(ok())
}
