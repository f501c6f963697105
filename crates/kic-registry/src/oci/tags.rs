//! Tag listing, pagination (`n`/`last`) and the referrers API.

use std::collections::HashMap;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use serde_json::json;

use super::{authorize, hv, Cx, OciResult, OCI_INDEX};
use crate::digest::Digest;
use crate::errors::{OciCode, OciError};

/// Applies `n` and `last` to a sorted list; returns the page and, if more remain, `(n, last)`
/// for the next link.
/// A page and, when more remain, `(n, last)` for the next link.
pub type Page = (Vec<String>, Option<(usize, String)>);

pub fn paginate(all: Vec<String>, q: &HashMap<String, String>) -> Result<Page, OciError> {
    let n = match q.get("n") {
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| OciError::msg(OciCode::Unsupported, "invalid n"))?,
        ),
        None => None,
    };
    let rest: Vec<String> = match q.get("last") {
        Some(last) => all
            .into_iter()
            .filter(|t| t.as_str() > last.as_str())
            .collect(),
        None => all,
    };
    match n {
        Some(n) if rest.len() > n => {
            let page: Vec<String> = rest.into_iter().take(n).collect();
            let last = page.last().cloned().unwrap_or_default();
            Ok((page, (n > 0).then_some((n, last))))
        }
        _ => Ok((rest, None)),
    }
}

/// `GET /v2/<name>/tags/list?n=&last=`.
pub async fn list(cx: Cx<'_>) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "pull").await?;
    if cx.st.db.repository(cx.repo).await?.is_none() {
        return Err(OciError::new(OciCode::NameUnknown));
    }
    let tags: Vec<String> = cx
        .st
        .db
        .tags(cx.repo)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let (page, next) = paginate(tags, cx.q)?;
    let mut resp = axum::Json(json!({"name": cx.repo, "tags": page})).into_response();
    if let Some((n, last)) = next {
        let link = format!(
            "</v2/{}/tags/list?n={n}&last={last}>; rel=\"next\"",
            cx.repo
        );
        resp.headers_mut().insert(header::LINK, hv(&link));
    }
    Ok(resp)
}

/// `GET /v2/<name>/referrers/<digest>?artifactType=`.
pub async fn referrers(cx: Cx<'_>, d: &str) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "pull").await?;
    let d = Digest::parse(d)
        .ok_or_else(|| OciError::msg(OciCode::DigestInvalid, format!("invalid digest {d:?}")))?;
    let filter = cx.q.get("artifactType");
    let mut manifests = vec![];
    for a in cx.st.db.referrers(cx.repo, d.as_str()).await? {
        if filter.is_some_and(|f| f != &a.artifact_type) {
            continue;
        }
        let mut desc = json!({
            "mediaType": a.media_type,
            "digest": a.digest,
            "size": a.size,
            "artifactType": a.artifact_type,
        });
        let ann: serde_json::Value = serde_json::from_str(&a.annotations).unwrap_or(json!({}));
        if ann.as_object().is_some_and(|o| !o.is_empty()) {
            desc["annotations"] = ann;
        }
        manifests.push(desc);
    }
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        resp.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
