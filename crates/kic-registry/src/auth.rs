//! Who is calling, and what may they do.
//!
//! A request carries no credentials (anonymous), HTTP basic credentials of a user or a robot
//! account (`robot$...`), or a registry bearer token from [`crate::token`]. The [`Caller`]
//! extractor resolves them once per request; a handler that takes it cannot run without it.
//! Password and secret checks (Argon2id) are cached for a minute per credential pair, and the
//! cache is cleared on every change to users or robots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::errors::ApiError;
use crate::rbac::RobotPermission;
use crate::state::St;
use crate::token::Claims;

/// Robot account names start with this.
pub const ROBOT_PREFIX: &str = "robot$";

#[derive(Clone, Debug)]
pub enum Principal {
    Anonymous,
    User {
        id: i64,
        name: String,
        sysadmin: bool,
    },
    Robot {
        id: i64,
        name: String,
        level: String,
        project_id: i64,
        perms: Arc<Vec<RobotPermission>>,
    },
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User { name, .. } | Principal::Robot { name, .. } => name,
        }
    }

    pub fn is_sysadmin(&self) -> bool {
        matches!(self, Principal::User { sysadmin: true, .. })
    }

    pub fn user_id(&self) -> Option<i64> {
        match self {
            Principal::User { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// The resolved caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// Set when the request came with a registry bearer token: registry routes then check the
    /// token's granted actions instead of the principal's roles.
    pub token: Option<Claims>,
    pub client_ip: String,
    /// `http(s)://host` as the client addressed us, for challenges and `Link` headers.
    pub base_url: String,
}

impl Caller {
    pub fn anonymous(&self) -> bool {
        matches!(self.principal, Principal::Anonymous)
    }
}

static HASH_COST: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();

/// Sets the Argon2id cost (memory in KiB, iterations) of new hashes; existing hashes keep the
/// cost they were made with. Defaults to OWASP's 19 MiB, 2 iterations.
pub fn set_hash_cost(memory_kib: u32, iterations: u32) {
    let _ = HASH_COST.set((memory_kib, iterations));
}

/// Hashes a password or robot secret with Argon2id.
pub fn hash_secret(secret: &str) -> String {
    let (m, t) = *HASH_COST.get_or_init(|| {
        (
            argon2::Params::DEFAULT_M_COST,
            argon2::Params::DEFAULT_T_COST,
        )
    });
    let params = argon2::Params::new(m, t, 1, None).unwrap_or_default();
    let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    a.hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok()
    })
}

/// Checks a username/password (or robot name/secret) pair.
pub async fn verify_credentials(st: &St, user: &str, pass: &str) -> Option<Principal> {
    let key: [u8; 32] = Sha256::new_with_prefix(user)
        .chain_update([0])
        .chain_update(pass)
        .finalize()
        .into();
    if let Some((p, at)) = st.creds.lock().unwrap().get(&key) {
        if at.elapsed() < Duration::from_secs(60) {
            return Some(p.clone());
        }
    }
    let p = lookup_and_verify(st, user, pass).await?;
    st.creds
        .lock()
        .unwrap()
        .insert(key, (p.clone(), Instant::now()));
    Some(p)
}

async fn lookup_and_verify(st: &St, user: &str, pass: &str) -> Option<Principal> {
    let pass = pass.to_string();
    if user.starts_with(ROBOT_PREFIX) {
        let r = st.db.robot_by_name(user).await.ok()??;
        if r.disabled || (r.expires_at >= 0 && r.expires_at <= crate::db::now()) {
            return None;
        }
        let hash = r.secret_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_secret(&pass, &hash))
            .await
            .ok()?;
        ok.then(|| Principal::Robot {
            id: r.id,
            name: r.name.clone(),
            level: r.level.clone(),
            project_id: r.project_id,
            perms: Arc::new(serde_json::from_str(&r.permissions).unwrap_or_default()),
        })
    } else {
        let u = st.db.user_by_name(user).await.ok()??;
        let hash = u.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || verify_secret(&pass, &hash))
            .await
            .ok()?;
        ok.then_some(Principal::User {
            id: u.id,
            name: u.username,
            sysadmin: u.sysadmin,
        })
    }
}

/// Resolves the principal named by a token's `sub` (users and robots can change after issue).
async fn principal_by_name(st: &St, name: &str) -> Option<Principal> {
    if name == "anonymous" {
        return Some(Principal::Anonymous);
    }
    if name.starts_with(ROBOT_PREFIX) {
        let r = st.db.robot_by_name(name).await.ok()??;
        (!r.disabled && (r.expires_at < 0 || r.expires_at > crate::db::now())).then(|| {
            Principal::Robot {
                id: r.id,
                name: r.name.clone(),
                level: r.level.clone(),
                project_id: r.project_id,
                perms: Arc::new(serde_json::from_str(&r.permissions).unwrap_or_default()),
            }
        })
    } else {
        let u = st.db.user_by_name(name).await.ok()??;
        Some(Principal::User {
            id: u.id,
            name: u.username,
            sysadmin: u.sysadmin,
        })
    }
}

fn basic_pair(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let dec = B64
        .decode(rest.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    Some(dec.and_then(|s| {
        s.split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))
    }))
}

/// The principal named by basic credentials, anonymous without them, an error if they are wrong.
pub async fn basic_principal(st: &St, headers: &HeaderMap) -> Result<Principal, ApiError> {
    match basic_pair(headers) {
        None => Ok(Principal::Anonymous),
        Some(None) => Err(ApiError::unauthorized()),
        Some(Some((u, p))) => verify_credentials(st, &u, &p)
            .await
            .ok_or_else(ApiError::unauthorized),
    }
}

impl FromRequestParts<St> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &St) -> Result<Caller, ApiError> {
        let client_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        let base_url = st.config.base_url(
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok()),
        );
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Some(tok) = auth.and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        }) {
            // Registry tokens are for `/v2` only; the Harbor API takes basic credentials.
            let path = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map(|u| u.0.path().to_string())
                .unwrap_or_else(|| parts.uri.path().to_string());
            if !path.starts_with("/v2") {
                return Err(ApiError::unauthorized());
            }
            let claims = st
                .signer
                .verify(tok.trim(), &st.config.service)
                .ok_or_else(ApiError::unauthorized)?;
            let principal = principal_by_name(st, &claims.sub)
                .await
                .ok_or_else(ApiError::unauthorized)?;
            return Ok(Caller {
                principal,
                token: Some(claims),
                client_ip,
                base_url,
            });
        }
        let principal = basic_principal(st, &parts.headers).await?;
        Ok(Caller {
            principal,
            token: None,
            client_ip,
            base_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::AppState;

    #[tokio::test]
    async fn expired_and_disabled_robots_cannot_log_in() {
        set_hash_cost(256, 1);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        cfg.admin_password = Some("Harbor12345".into());
        let (st, generated) = AppState::open(cfg).await.unwrap();
        assert!(generated.is_none());
        let now = crate::db::now();
        let h = hash_secret("s3cret-s3cret");
        for (name, expires, disabled) in [
            ("robot$ok", -1, false),
            ("robot$old", now - 1, false),
            ("robot$off", now + 3600, true),
        ] {
            let id = st
                .db
                .create_robot(name, "", &h, "system", 0, 1, expires, "[]", "admin")
                .await
                .unwrap();
            if disabled {
                st.db
                    .update_robot(id, "", true, 1, expires, "[]")
                    .await
                    .unwrap();
            }
        }
        assert!(verify_credentials(&st, "robot$ok", "s3cret-s3cret")
            .await
            .is_some());
        assert!(verify_credentials(&st, "robot$ok", "wrong").await.is_none());
        assert!(verify_credentials(&st, "robot$old", "s3cret-s3cret")
            .await
            .is_none());
        assert!(verify_credentials(&st, "robot$off", "s3cret-s3cret")
            .await
            .is_none());
        assert!(matches!(
            verify_credentials(&st, "admin", "Harbor12345").await,
            Some(Principal::User { sysadmin: true, .. })
        ));
        // Tokens issued to a robot stop working once it expires.
        assert!(principal_by_name(&st, "robot$old").await.is_none());
        assert!(principal_by_name(&st, "robot$ok").await.is_some());
    }
}
