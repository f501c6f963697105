//! Manifest pull, push and delete: Docker schema 2 manifests and lists, OCI manifests and
//! indexes, artifacts with `artifactType` and `subject`.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{
    authorize, hv, valid_tag, Cx, OciResult, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use crate::db::{Artifact, ArtifactRef, NewArtifact};
use crate::digest::Digest;
use crate::errors::{OciCode, OciError};

/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 4 << 20;

enum Reference {
    Tag(String),
    Digest(Digest),
}

fn parse_reference(r: &str) -> Result<Reference, OciError> {
    if r.contains(':') {
        Digest::parse(r)
            .map(Reference::Digest)
            .ok_or_else(|| OciError::msg(OciCode::DigestInvalid, format!("invalid digest {r:?}")))
    } else if valid_tag(r) {
        Ok(Reference::Tag(r.to_string()))
    } else {
        Err(OciError::msg(
            OciCode::ManifestInvalid,
            format!("invalid tag {r:?}"),
        ))
    }
}

async fn find(cx: &Cx<'_>, r: &Reference) -> Result<Artifact, OciError> {
    let a = match r {
        Reference::Tag(t) => cx.st.db.artifact_by_tag(cx.repo, t).await?,
        Reference::Digest(d) => cx.st.db.artifact_by_digest(cx.repo, d.as_str()).await?,
    };
    a.ok_or_else(|| OciError::new(OciCode::ManifestUnknown))
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
pub async fn get(cx: Cx<'_>, reference: &str, body: bool) -> OciResult {
    let project = authorize(cx.st, cx.c, cx.repo, "pull").await?;
    let r = parse_reference(reference)?;
    let a = find(&cx, &r).await?;
    let d = Digest::parse(&a.digest).ok_or_else(|| OciError::new(OciCode::Unknown))?;
    let mut resp = if body {
        let data = cx
            .st
            .store
            .read_all(&d)
            .await
            .map_err(|_| OciError::new(OciCode::ManifestUnknown))?;
        cx.st.count_pull(cx.repo, a.id);
        let resource = match &r {
            Reference::Tag(t) => format!("{}:{t}", cx.repo),
            Reference::Digest(d) => format!("{}@{d}", cx.repo),
        };
        cx.st
            .audit
            .record(cx.c, "pull", "artifact", &resource, project.id)
            .await;
        Body::from(data).into_response()
    } else {
        Body::empty().into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&a.media_type));
    h.insert(header::CONTENT_LENGTH, a.size.into());
    h.insert("Docker-Content-Digest", hv(&a.digest));
    h.insert(header::ETAG, hv(&format!("\"{}\"", a.digest)));
    Ok(resp)
}

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::msg(OciCode::ManifestInvalid, msg)
}

/// A descriptor's digest, size and media type.
fn descriptor(v: &Value, what: &str) -> Result<(Digest, i64, String), OciError> {
    let d = v
        .get("digest")
        .and_then(Value::as_str)
        .and_then(Digest::parse)
        .ok_or_else(|| invalid(format!("{what}: missing or invalid digest")))?;
    let size = v
        .get("size")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0)
        .ok_or_else(|| invalid(format!("{what}: missing size")))?;
    let mt = v
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((d, size, mt))
}

/// What a parsed manifest says about itself.
struct Parsed {
    media_type: String,
    config_media_type: String,
    artifact_type: String,
    subject: Option<String>,
    annotations: String,
    refs: Vec<ArtifactRef>,
}

fn parse_manifest(body: &[u8], content_type: Option<&str>) -> Result<Parsed, OciError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if v.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let declared = v.get("mediaType").and_then(Value::as_str);
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = match (declared, ct) {
        (Some(d), Some(c)) if d != c => {
            return Err(invalid(format!(
                "mediaType {d} does not match Content-Type {c}"
            )));
        }
        (Some(d), _) => d.to_string(),
        (None, Some(c)) => c.to_string(),
        (None, None) if v.get("manifests").is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let mut refs = vec![];
    let mut config_media_type = String::new();
    let mut artifact_type = v
        .get("artifactType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = v.get("config").ok_or_else(|| invalid("config missing"))?;
            let (d, size, mt) = descriptor(config, "config")?;
            config_media_type = mt.clone();
            if artifact_type.is_empty() {
                artifact_type = mt.clone();
            }
            refs.push(ArtifactRef {
                digest: d.to_string(),
                kind: "blob".into(),
                size,
                media_type: mt,
                platform: String::new(),
            });
            let layers = v
                .get("layers")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("layers missing"))?;
            for l in layers {
                let (d, size, mt) = descriptor(l, "layer")?;
                // Foreign layers (with `urls`) live elsewhere.
                let kind = if l
                    .get("urls")
                    .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()))
                {
                    "foreign"
                } else {
                    "blob"
                };
                refs.push(ArtifactRef {
                    digest: d.to_string(),
                    kind: kind.into(),
                    size,
                    media_type: mt,
                    platform: String::new(),
                });
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let ms = v
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("manifests missing"))?;
            for m in ms {
                let (d, size, mt) = descriptor(m, "manifest")?;
                let p = m.get("platform");
                let field = |k: &str| {
                    p.and_then(|p| p.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let mut platform = format!("{}/{}", field("os"), field("architecture"));
                if !field("variant").is_empty() {
                    platform = format!("{platform}/{}", field("variant"));
                }
                refs.push(ArtifactRef {
                    digest: d.to_string(),
                    kind: "manifest".into(),
                    size,
                    media_type: mt,
                    platform,
                });
            }
        }
        other => {
            return Err(invalid(format!(
                "unsupported manifest media type {other:?}"
            )))
        }
    }
    let subject = match v.get("subject") {
        Some(s) => Some(descriptor(s, "subject")?.0.to_string()),
        None => None,
    };
    let annotations = v
        .get("annotations")
        .filter(|a| a.is_object())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "{}".into());
    Ok(Parsed {
        media_type,
        config_media_type,
        artifact_type,
        subject,
        annotations,
        refs,
    })
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub async fn put(cx: Cx<'_>, reference: &str, body: Body) -> OciResult {
    let project = authorize(cx.st, cx.c, cx.repo, "push").await?;
    let r = parse_reference(reference)?;
    let data = axum::body::to_bytes(body, MAX_MANIFEST)
        .await
        .map_err(|_| {
            OciError::msg(
                OciCode::SizeInvalid,
                format!("manifest larger than {MAX_MANIFEST} bytes"),
            )
        })?;
    let d = Digest::of(&data);
    if let Reference::Digest(want) = &r {
        if want != &d {
            return Err(OciError::msg(
                OciCode::DigestInvalid,
                format!("manifest has digest {d}, not {want}"),
            ));
        }
    }
    let ct = cx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = parse_manifest(&data, ct)?;
    let tag = match &r {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    {
        // Shared with other pushes, exclusive with a GC batch: nothing we find here can be
        // collected before our references are recorded.
        let g = cx.st.push_guard().await?;
        let r = async {
            for rf in &parsed.refs {
                let known = match rf.kind.as_str() {
                    "blob" => cx.st.db.linked_blob(cx.repo, &rf.digest).await?.is_some(),
                    "manifest" => cx.st.db.has_manifest(cx.repo, &rf.digest).await?,
                    _ => true,
                };
                if !known {
                    return Err(OciError::msg(
                        OciCode::ManifestBlobUnknown,
                        format!("unknown {} {}", rf.kind, rf.digest),
                    ));
                }
            }
            cx.st.store.put_small(&d, &data).await?;
            cx.st
                .db
                .put_artifact(&NewArtifact {
                    project_id: project.id,
                    repository: cx.repo,
                    digest: d.as_str(),
                    media_type: &parsed.media_type,
                    config_media_type: &parsed.config_media_type,
                    artifact_type: &parsed.artifact_type,
                    size: data.len() as i64,
                    subject: parsed.subject.as_deref(),
                    annotations: &parsed.annotations,
                    refs: &parsed.refs,
                    tag,
                })
                .await?;
            Ok(())
        }
        .await;
        g.release().await;
        r?;
    }
    let resource = match tag {
        Some(t) => format!("{}:{t}", cx.repo),
        None => format!("{}@{d}", cx.repo),
    };
    cx.st
        .audit
        .record(cx.c, "push", "artifact", &resource, project.id)
        .await;
    let mut resp: Response = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{}/manifests/{d}", cx.repo)),
    );
    h.insert("Docker-Content-Digest", hv(d.as_str()));
    h.insert(header::CONTENT_LENGTH, 0.into());
    if let Some(s) = &parsed.subject {
        h.insert("OCI-Subject", hv(s));
    }
    Ok(resp)
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest deletes the manifest and its tags, by
/// tag deletes only the tag.
pub async fn delete(cx: Cx<'_>, reference: &str) -> OciResult {
    let project = authorize(cx.st, cx.c, cx.repo, "delete").await?;
    match parse_reference(reference)? {
        Reference::Digest(d) => {
            let a = cx
                .st
                .db
                .artifact_by_digest(cx.repo, d.as_str())
                .await?
                .ok_or_else(|| OciError::new(OciCode::ManifestUnknown))?;
            cx.st.db.delete_artifact(a.id).await?;
            cx.st
                .audit
                .record(
                    cx.c,
                    "delete",
                    "artifact",
                    &format!("{}@{d}", cx.repo),
                    project.id,
                )
                .await;
        }
        Reference::Tag(t) => {
            if !cx.st.db.delete_tag(cx.repo, &t).await? {
                return Err(OciError::new(OciCode::ManifestUnknown));
            }
            cx.st
                .audit
                .record(
                    cx.c,
                    "delete",
                    "tag",
                    &format!("{}:{t}", cx.repo),
                    project.id,
                )
                .await;
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_manifest_with_subject() {
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": Digest::of(b"x").to_string(), "size": 1}
        });
        let p = parse_manifest(m.to_string().as_bytes(), None).unwrap();
        assert_eq!(p.artifact_type, "application/x-sig");
        assert_eq!(p.subject, Some(Digest::of(b"x").to_string()));
        assert_eq!(p.refs.len(), 1);
    }

    #[test]
    fn rejects_mismatched_media_type_and_bad_json() {
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        assert!(parse_manifest(m.to_string().as_bytes(), Some(DOCKER_LIST)).is_err());
        assert!(parse_manifest(m.to_string().as_bytes(), Some(OCI_INDEX)).is_ok());
        assert!(parse_manifest(b"{", None).is_err());
        assert!(parse_manifest(br#"{"schemaVersion":1}"#, None).is_err());
    }
}
