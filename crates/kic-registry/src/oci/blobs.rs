//! Blob pull, delete, and the upload protocol (monolithic, chunked, streamed, mount, status).

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{authorize, hv, Cx, OciResult};
use crate::blobstore::FinishError;
use crate::digest::Digest;
use crate::errors::{OciCode, OciError};

fn parse_digest(d: &str) -> Result<Digest, OciError> {
    Digest::parse(d)
        .ok_or_else(|| OciError::msg(OciCode::DigestInvalid, format!("invalid digest {d:?}")))
}

/// Parses a single `bytes=` range against `size` into an inclusive (start, end).
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().ok()?.min(size - 1)
        };
        (s, e)
    };
    (start <= end && start < size).then_some((start, end))
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single byte ranges.
pub async fn get(cx: Cx<'_>, d: &str, body: bool) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "pull").await?;
    let d = parse_digest(d)?;
    let size = if body {
        cx.st.db.linked_blob(cx.repo, d.as_str()).await?
    } else {
        // A HEAD may precede a push that skips this blob: the existence check and the refresh
        // of `last_seen` happen under the GC lock, so GC cannot take the blob in between.
        let g = cx.st.push_guard().await?;
        let r = async {
            let size = cx.st.db.linked_blob(cx.repo, d.as_str()).await?;
            let every = (cx.st.config.gc_grace_secs / 4).min(30);
            if size.is_some()
                && cx
                    .st
                    .db
                    .blob(d.as_str())
                    .await?
                    .is_some_and(|(_, seen)| seen < crate::db::now() - every)
            {
                cx.st.db.touch_blob(d.as_str()).await?;
            }
            Ok::<_, crate::errors::StoreError>(size)
        }
        .await;
        g.release().await;
        r?
    }
    .ok_or_else(|| OciError::new(OciCode::BlobUnknown))? as u64;
    let range = match cx.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => Some(parse_range(r, size).ok_or_else(|| {
            OciError::msg(
                OciCode::RangeInvalid,
                format!("range {r} not satisfiable for {size} bytes"),
            )
        })?),
        None => None,
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut resp = if body {
        let stream = cx
            .st
            .store
            .stream(&d, start, len)
            .await
            .map_err(|_| OciError::new(OciCode::BlobUnknown))?;
        Body::from_stream(stream).into_response()
    } else {
        Body::empty().into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(header::CONTENT_TYPE, hv("application/octet-stream"));
    h.insert("Docker-Content-Digest", hv(d.as_str()));
    h.insert(header::ETAG, hv(&format!("\"{d}\"")));
    h.insert(header::ACCEPT_RANGES, hv("bytes"));
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{end}/{size}")),
        );
    }
    Ok(resp)
}

/// `DELETE /v2/<name>/blobs/<digest>`: unlinks the blob from the repository.
pub async fn delete(cx: Cx<'_>, d: &str) -> OciResult {
    let project = authorize(cx.st, cx.c, cx.repo, "delete").await?;
    let d = parse_digest(d)?;
    if !cx.st.db.unlink_blob(cx.repo, d.as_str()).await? {
        return Err(OciError::new(OciCode::BlobUnknown));
    }
    cx.st
        .audit
        .record(
            cx.c,
            "delete",
            "blob",
            &format!("{}@{d}", cx.repo),
            project.id,
        )
        .await;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn upload_response(status: StatusCode, repo: &str, id: &str, size: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    h.insert(header::RANGE, hv(&format!("0-{}", size.saturating_sub(1))));
    h.insert("Docker-Upload-UUID", hv(id));
    h.insert(header::CONTENT_LENGTH, 0.into());
    resp
}

fn blob_created(repo: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{d}")));
    h.insert("Docker-Content-Digest", hv(d.as_str()));
    h.insert(header::CONTENT_LENGTH, 0.into());
    resp
}

/// `POST /v2/<name>/blobs/uploads/[?digest=|?mount=&from=]`.
pub async fn start_upload(cx: Cx<'_>, body: Body) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "push").await?;
    if let Some(m) = cx.q.get("mount") {
        let d = parse_digest(m)?;
        if let Some(from) = cx.q.get("from").filter(|f| super::valid_name(f)) {
            let readable = authorize(cx.st, cx.c, from, "pull").await.is_ok();
            if readable {
                let g = cx.st.push_guard().await?;
                let r = async {
                    match cx.st.db.linked_blob(from, d.as_str()).await? {
                        Some(size) => cx
                            .st
                            .db
                            .put_blob(cx.repo, d.as_str(), size)
                            .await
                            .map(|_| true),
                        None => Ok(false),
                    }
                }
                .await;
                g.release().await;
                if r? {
                    return Ok(blob_created(cx.repo, &d));
                }
            }
        }
    }
    let id = cx.st.store.start(cx.repo).await?;
    if let Some(d) = cx.q.get("digest") {
        let d = parse_digest(d)?;
        return finish(cx, &id, &d, body).await;
    }
    Ok(upload_response(StatusCode::ACCEPTED, cx.repo, &id, 0))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much has arrived.
pub async fn upload_status(cx: Cx<'_>, id: &str) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "push").await?;
    let s = cx
        .st
        .store
        .session(id, cx.repo)
        .await
        .ok_or_else(|| OciError::new(OciCode::BlobUploadUnknown))?;
    let size = s.lock().await.size;
    Ok(upload_response(StatusCode::NO_CONTENT, cx.repo, id, size))
}

/// Checks an optional `Content-Range: <start>-<end>` against the bytes already received.
fn check_content_range(cx: &Cx<'_>, have: u64) -> Result<(), OciError> {
    let Some(v) = cx
        .headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let v = v
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let start: Option<u64> = v
        .split(['-', '/'])
        .next()
        .and_then(|s| s.trim().parse().ok());
    match start {
        Some(s) if s == have => Ok(()),
        _ => Err(OciError::msg(
            OciCode::RangeInvalid,
            format!("upload has {have} bytes, chunk range {v} does not follow"),
        )),
    }
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: a chunk (with `Content-Range`) or a stream.
pub async fn patch_upload(cx: Cx<'_>, id: &str, body: Body) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "push").await?;
    let s = cx
        .st
        .store
        .session(id, cx.repo)
        .await
        .ok_or_else(|| OciError::new(OciCode::BlobUploadUnknown))?;
    let mut up = s.lock().await;
    check_content_range(&cx, up.size)?;
    let size = cx
        .st
        .store
        .append(id, &mut up, body.into_data_stream())
        .await
        .map_err(|e| OciError::msg(OciCode::BlobUploadInvalid, e.to_string()))?;
    Ok(upload_response(StatusCode::ACCEPTED, cx.repo, id, size))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the last bytes, then verify and commit.
pub async fn finish_upload(cx: Cx<'_>, id: &str, body: Body) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "push").await?;
    let d =
        cx.q.get("digest")
            .ok_or_else(|| OciError::msg(OciCode::DigestInvalid, "digest parameter missing"))?;
    let d = parse_digest(d)?;
    finish(cx, id, &d, body).await
}

async fn finish(cx: Cx<'_>, id: &str, d: &Digest, body: Body) -> OciResult {
    let s = cx
        .st
        .store
        .session(id, cx.repo)
        .await
        .ok_or_else(|| OciError::new(OciCode::BlobUploadUnknown))?;
    let mut up = s.lock().await;
    check_content_range(&cx, up.size)?;
    if let Err(e) = cx
        .st
        .store
        .append(id, &mut up, body.into_data_stream())
        .await
    {
        cx.st.store.cancel(id).await;
        return Err(OciError::msg(OciCode::BlobUploadInvalid, e.to_string()));
    }
    if let Some(len) = cx.q.get("size").and_then(|s| s.parse::<u64>().ok()) {
        if len != up.size {
            cx.st.store.cancel(id).await;
            return Err(OciError::new(OciCode::SizeInvalid));
        }
    }
    // fsync and hashing happen outside the GC lock; only the rename and the row need it.
    let size = match cx.st.store.verify(id, &mut up, d).await {
        Ok(size) => size,
        Err(e) => {
            cx.st.store.cancel(id).await;
            return Err(match e {
                FinishError::DigestMismatch(actual) => OciError::msg(
                    OciCode::DigestInvalid,
                    format!("content has digest {actual}, not {d}"),
                ),
                FinishError::Io(e) => e.into(),
            });
        }
    };
    let g = cx.st.push_guard().await?;
    let r = async {
        cx.st.store.commit(id, d).await?;
        cx.st.db.put_blob(cx.repo, d.as_str(), size as i64).await
    }
    .await;
    g.release().await;
    r?;
    Ok(blob_created(cx.repo, d))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`.
pub async fn cancel_upload(cx: Cx<'_>, id: &str) -> OciResult {
    authorize(cx.st, cx.c, cx.repo, "push").await?;
    cx.st
        .store
        .session(id, cx.repo)
        .await
        .ok_or_else(|| OciError::new(OciCode::BlobUploadUnknown))?;
    cx.st.store.cancel(id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
