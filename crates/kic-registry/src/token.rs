//! Registry bearer tokens: HS256 JWTs in the shape Docker's token specification describes
//! (`access: [{type, name, actions}]`), signed with the key in `token.key`, and the token
//! service at `/service/token` that issues them, trimmed to what the caller may do.

use std::path::Path;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::{self, Principal};
use crate::errors::{ApiCode, ApiError};
use crate::rbac::{Act, Res};
use crate::state::St;

/// One granted scope.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenAccess {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<TokenAccess>,
}

impl Claims {
    /// Does the token grant `action` on repository `repo`?
    pub fn allows(&self, repo: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == repo
                && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

/// Signs and verifies registry tokens.
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// Loads the key from `path`, creating a random one on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<Signer> {
        if let Ok(key) = std::fs::read(path) {
            if key.len() >= 32 {
                return Ok(Signer { key });
            }
        }
        let key: [u8; 32] = rand::random();
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(Signer { key: key.to_vec() })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            B64.encode(mac.finalize().into_bytes())
        )
    }

    /// Verifies signature, algorithm, audience and validity window.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, b, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != "HS256" {
            return None;
        }
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(b.as_bytes());
        mac.verify_slice(&B64.decode(s).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&B64.decode(b).ok()?).ok()?;
        let now = crate::db::now();
        (claims.aud == audience && claims.exp > now && claims.nbf <= now + 60).then_some(claims)
    }
}

/// Parses `scope` strings such as `repository:lib/busybox:pull,push`.
pub fn parse_scope(s: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        kind.to_string(),
        name.to_string(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// Maps a registry action to the permission it needs.
pub fn registry_permission(action: &str) -> Option<(Res, Act)> {
    match action {
        "pull" => Some((Res::Repository, Act::Pull)),
        "push" => Some((Res::Repository, Act::Push)),
        "delete" | "*" => Some((Res::Artifact, Act::Delete)),
        _ => None,
    }
}

/// The actions of `wanted` that `p` may do on repository `repo`.
pub async fn grant(st: &St, p: &Principal, repo: &str, wanted: &[String]) -> Vec<String> {
    let Some(project) = repo.split('/').next().filter(|_| repo.contains('/')) else {
        return vec![];
    };
    let Ok(Some(project)) = st.project(project).await else {
        return vec![];
    };
    let mut out = vec![];
    for a in wanted {
        if let Some((res, act)) = registry_permission(a) {
            if st.allowed(p, &project, res, act).await.unwrap_or(false) && !out.contains(a) {
                out.push(a.clone());
            }
        }
    }
    out
}

async fn issue(st: &St, p: &Principal, scopes: &[String]) -> Response {
    let mut access = vec![];
    for s in scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
    {
        let Some((kind, name, actions)) = parse_scope(s) else {
            continue;
        };
        let granted = match kind.as_str() {
            "repository" => grant(st, p, &name, &actions).await,
            "registry" if name == "catalog" && !matches!(p, Principal::Anonymous) => {
                vec!["*".to_string()]
            }
            _ => vec![],
        };
        access.push(TokenAccess {
            kind,
            name,
            actions: granted,
        });
    }
    let now = crate::db::now();
    let claims = Claims {
        iss: "kic-registry-token-issuer".into(),
        sub: p.name().to_string(),
        aud: st.config.service.clone(),
        exp: now + st.config.token_ttl_secs,
        nbf: now - 10,
        iat: now,
        jti: hex::encode(rand::random::<[u8; 16]>()),
        access,
    };
    let token = st.signer.sign(&claims);
    let issued = chrono::DateTime::from_timestamp(now, 0)
        .unwrap_or_default()
        .to_rfc3339();
    Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": st.config.token_ttl_secs,
        "issued_at": issued,
    }))
    .into_response()
}

/// `GET /service/token?service=..&scope=..&scope=..` with optional basic auth.
pub async fn get_token(
    State(st): State<St>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = match auth::basic_principal(&st, &headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let scopes: Vec<String> = crate::api::query_pairs(q.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    issue(&st, &p, &scopes).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    scope: String,
}

/// `POST /service/token` (OAuth2 password grant, what `docker login` tries first).
pub async fn post_token(State(st): State<St>, Form(f): Form<TokenForm>) -> Response {
    if f.grant_type != "password" {
        return ApiError::new(ApiCode::BadRequest, "unsupported grant_type").into_response();
    }
    match auth::verify_credentials(&st, &f.username, &f.password).await {
        Some(p) => issue(&st, &p, &[f.scope]).await,
        None => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(&dir.path().join("k")).unwrap();
        let now = crate::db::now();
        let c = Claims {
            iss: "i".into(),
            sub: "u".into(),
            aud: "svc".into(),
            exp: now + 60,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![TokenAccess {
                kind: "repository".into(),
                name: "p/r".into(),
                actions: vec!["pull".into()],
            }],
        };
        let t = s.sign(&c);
        let v = s.verify(&t, "svc").unwrap();
        assert!(v.allows("p/r", "pull"));
        assert!(!v.allows("p/r", "push"));
        assert!(s.verify(&t, "other").is_none());
        let mut bad = t.clone();
        bad.insert(t.find('.').unwrap() + 2, 'x');
        assert!(s.verify(&bad, "svc").is_none());
        let s2 = Signer::load_or_create(&dir.path().join("k")).unwrap();
        assert!(s2.verify(&t, "svc").is_some(), "the key persists");
    }

    #[test]
    fn scopes_parse() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some((
                "repository".into(),
                "a/b".into(),
                vec!["pull".into(), "push".into()]
            ))
        );
        assert_eq!(
            parse_scope("registry:catalog:*").unwrap().2,
            vec!["*".to_string()]
        );
    }
}
