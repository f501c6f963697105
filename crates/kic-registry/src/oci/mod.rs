//! OCI Distribution v1.1 routes (`/v2/...`).
//!
//! One wildcard route takes everything under `/v2/` and [`parse`] splits the repository name
//! (which may contain slashes) from the endpoint once. Every endpoint first calls
//! [`authorize`], which resolves the repository's project and checks the caller's right.

mod blobs;
mod manifests;
mod tags;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::db::Project;
use crate::errors::{ApiError, OciCode, OciError};
use crate::state::St;

pub type OciResult = Result<Response, OciError>;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An endpoint under `/v2/<name>/`.
#[derive(Debug, PartialEq)]
pub enum Endpoint<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    UploadStart,
    Upload(&'a str),
    Tags,
    Referrers(&'a str),
}

/// Splits `<name>/<endpoint>` (the path after `/v2/`).
pub fn parse(rest: &str) -> Option<(&str, Endpoint<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Endpoint::Tags));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some((name, Endpoint::UploadStart));
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some((name, Endpoint::Upload(last)));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some((name, Endpoint::Blob(last)));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some((name, Endpoint::Manifest(last)));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Some((name, Endpoint::Referrers(last)));
    }
    None
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'a'..=b'z' | b'0'..=b'9' => i += 1,
            b'.' | b'_' | b'-' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
                    i += 1;
                }
                let sep = &c[start..i];
                if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// OCI repository name grammar, plus Harbor's rule that the first component is a project.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 255 && name.contains('/') && name.split('/').all(valid_component)
}

/// Tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The `WWW-Authenticate` value pointing Docker clients at our token service.
fn challenge(st: &St, base: &str, scope: Option<String>, insufficient: bool) -> String {
    let mut s = format!(
        "Bearer realm=\"{base}/service/token\",service=\"{}\"",
        st.config.service
    );
    if let Some(scope) = scope {
        s.push_str(&format!(",scope=\"{scope}\""));
    }
    if insufficient {
        s.push_str(",error=\"insufficient_scope\"");
    }
    s
}

fn unauthorized(st: &St, base: &str, scope: Option<String>, insufficient: bool) -> OciError {
    let mut e = OciError::new(OciCode::Unauthorized);
    e.challenge = Some(challenge(st, base, scope, insufficient));
    e
}

/// Checks that `caller` may do registry `action` (`pull`, `push`, `delete`) on `repo`, and
/// returns the repository's project.
pub async fn authorize(st: &St, c: &Caller, repo: &str, action: &str) -> Result<Project, OciError> {
    let scope_actions = if action == "push" {
        "pull,push"
    } else {
        action
    };
    let scope = Some(format!("repository:{repo}:{scope_actions}"));
    let project_name = repo.split('/').next().unwrap_or_default();
    let project = st.project(project_name).await?;
    if let Some(claims) = &c.token {
        return match project {
            Some(p) if claims.allows(repo, action) => Ok(p),
            _ => Err(unauthorized(st, &c.base_url, scope, true)),
        };
    }
    let Some(project) = project else {
        return Err(if c.anonymous() {
            unauthorized(st, &c.base_url, scope, false)
        } else {
            OciError::msg(
                OciCode::NameUnknown,
                format!("project {project_name} not found"),
            )
        });
    };
    let (res, act) = crate::token::registry_permission(action).expect("known registry action");
    if st.allowed(&c.principal, &project, res, act).await? {
        Ok(project)
    } else if c.anonymous() {
        Err(unauthorized(st, &c.base_url, scope, false))
    } else {
        Err(OciError::msg(
            OciCode::Denied,
            format!("{} may not {action} {repo}", c.principal.name()),
        ))
    }
}

fn caller_or_challenge(
    st: &St,
    c: Result<Caller, ApiError>,
    headers: &HeaderMap,
) -> Result<Caller, OciError> {
    c.map_err(|_| {
        let base = st
            .config
            .base_url(headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        unauthorized(st, &base, None, false)
    })
}

/// `GET /v2/`: 200 for any authenticated caller, a bearer challenge otherwise.
pub async fn base(
    State(st): State<St>,
    headers: HeaderMap,
    c: Result<Caller, ApiError>,
) -> OciResult {
    let c = caller_or_challenge(&st, c, &headers)?;
    // Any valid token (even an anonymous one) or valid basic credentials will do.
    if c.anonymous() && c.token.is_none() {
        return Err(unauthorized(&st, &c.base_url, None, false));
    }
    Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
}

/// Adds `Docker-Distribution-API-Version` to every `/v2` answer.
pub async fn api_version_header(mut r: Response) -> Response {
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// `GET /v2/_catalog?n=&last=`: the repositories the caller may see.
pub async fn catalog(
    State(st): State<St>,
    headers: HeaderMap,
    c: Result<Caller, ApiError>,
    RawQuery(q): RawQuery,
) -> OciResult {
    let c = caller_or_challenge(&st, c, &headers)?;
    let q = crate::api::query_map(q.as_deref());
    let mut visible = vec![];
    let projects = st.db.projects().await?;
    for p in &projects {
        if st
            .allowed(
                &c.principal,
                p,
                crate::rbac::Res::Repository,
                crate::rbac::Act::List,
            )
            .await?
        {
            visible.extend(
                st.db
                    .repositories(Some(p.id))
                    .await?
                    .into_iter()
                    .map(|r| r.name),
            );
        }
    }
    visible.sort();
    let (page, next) = tags::paginate(visible, &q)?;
    let mut resp = axum::Json(serde_json::json!({ "repositories": page })).into_response();
    if let Some((n, last)) = next {
        let link = format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"");
        resp.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(|_| OciError::new(OciCode::Unknown))?,
        );
    }
    Ok(resp)
}

/// Everything else under `/v2/`.
#[allow(clippy::too_many_arguments)]
pub async fn dispatch(
    State(st): State<St>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    c: Result<Caller, ApiError>,
    body: Body,
) -> OciResult {
    let c = caller_or_challenge(&st, c, &headers)?;
    let Some((name, ep)) = parse(&rest) else {
        return Err(OciError::msg(OciCode::NameUnknown, "no such endpoint"));
    };
    if !valid_name(name) {
        return Err(OciError::msg(
            OciCode::NameInvalid,
            format!("invalid repository name {name:?} (want <project>/<name>)"),
        ));
    }
    let q = crate::api::query_map(q.as_deref());
    let cx = Cx {
        st: &st,
        c: &c,
        repo: name,
        headers: &headers,
        q: &q,
    };
    match (ep, method) {
        (Endpoint::Manifest(r), Method::GET) => manifests::get(cx, r, true).await,
        (Endpoint::Manifest(r), Method::HEAD) => manifests::get(cx, r, false).await,
        (Endpoint::Manifest(r), Method::PUT) => manifests::put(cx, r, body).await,
        (Endpoint::Manifest(r), Method::DELETE) => manifests::delete(cx, r).await,
        (Endpoint::Blob(d), Method::GET) => blobs::get(cx, d, true).await,
        (Endpoint::Blob(d), Method::HEAD) => blobs::get(cx, d, false).await,
        (Endpoint::Blob(d), Method::DELETE) => blobs::delete(cx, d).await,
        (Endpoint::UploadStart, Method::POST) => blobs::start_upload(cx, body).await,
        (Endpoint::Upload(id), Method::GET) => blobs::upload_status(cx, id).await,
        (Endpoint::Upload(id), Method::PATCH) => blobs::patch_upload(cx, id, body).await,
        (Endpoint::Upload(id), Method::PUT) => blobs::finish_upload(cx, id, body).await,
        (Endpoint::Upload(id), Method::DELETE) => blobs::cancel_upload(cx, id).await,
        (Endpoint::Tags, Method::GET) => tags::list(cx).await,
        (Endpoint::Referrers(d), Method::GET) => tags::referrers(cx, d).await,
        _ => Err(OciError::new(OciCode::Unsupported)),
    }
}

/// What every endpoint gets.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub st: &'a St,
    pub c: &'a Caller,
    pub repo: &'a str,
    pub headers: &'a HeaderMap,
    pub q: &'a std::collections::HashMap<String, String>,
}

pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_names_with_slashes() {
        assert_eq!(
            parse("a/b/c/manifests/latest"),
            Some(("a/b/c", Endpoint::Manifest("latest")))
        );
        assert_eq!(
            parse("a/blobs/blobs/sha256:x"),
            Some(("a/blobs", Endpoint::Blob("sha256:x")))
        );
        assert_eq!(
            parse("a/b/blobs/uploads/"),
            Some(("a/b", Endpoint::UploadStart))
        );
        assert_eq!(
            parse("a/b/blobs/uploads/u-1"),
            Some(("a/b", Endpoint::Upload("u-1")))
        );
        assert_eq!(parse("a/b/tags/list"), Some(("a/b", Endpoint::Tags)));
        assert_eq!(
            parse("a/b/referrers/sha256:x"),
            Some(("a/b", Endpoint::Referrers("sha256:x")))
        );
        assert_eq!(parse("a/b/nothing/x"), None);
    }

    #[test]
    fn names_and_tags() {
        assert!(valid_name("library/busy-box_x.y"));
        assert!(valid_name("a/b__c/d"));
        assert!(!valid_name("single"));
        assert!(!valid_name("A/b"));
        assert!(!valid_name("a/-b"));
        assert!(!valid_name("a//b"));
        assert!(!valid_name("a/b._c"));
        assert!(valid_tag("v1.0_rc-1"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
