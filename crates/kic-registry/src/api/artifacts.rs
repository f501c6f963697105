//! `/projects/{p}/repositories`, their artifacts and tags.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::projects::{need, resolve};
use super::{body, created, ok, paged, repo_param, time, ApiResult};
use crate::auth::Caller;
use crate::db::{Artifact, Project, Repository, Tag};
use crate::errors::ApiError;
use crate::oci::valid_tag;
use crate::rbac::{Act, Res};
use crate::state::St;

fn repo_json(r: &Repository) -> Value {
    json!({
        "id": r.id,
        "project_id": r.project_id,
        "name": r.name,
        "description": r.description,
        "artifact_count": r.artifact_count,
        "pull_count": r.pull_count,
        "creation_time": time(r.creation_time),
        "update_time": time(r.update_time),
    })
}

fn tag_json(t: &Tag) -> Value {
    json!({
        "id": t.id,
        "repository_id": t.repository_id,
        "artifact_id": t.artifact_id,
        "name": t.name,
        "push_time": time(t.push_time),
        "pull_time": time(t.pull_time),
        "immutable": false,
        "signed": false,
    })
}

/// Harbor's coarse artifact type.
fn harbor_type(a: &Artifact) -> &'static str {
    match a.config_media_type.as_str() {
        "application/vnd.oci.image.config.v1+json"
        | "application/vnd.docker.container.image.v1+json" => "IMAGE",
        "" if a.media_type.contains("index") || a.media_type.contains("list") => "IMAGE",
        "application/vnd.cncf.helm.config.v1+json" => "CHART",
        _ => "UNKNOWN",
    }
}

async fn artifact_json(st: &St, a: &Artifact, with_tags: bool) -> Result<Value, ApiError> {
    let refs = st.db.artifact_refs(a.id).await?;
    let mut references = vec![];
    for r in refs.iter().filter(|r| r.kind == "manifest") {
        let child = st
            .db
            .artifact_by_digest(&a.repository_name, &r.digest)
            .await?;
        let mut parts = r.platform.splitn(3, '/');
        let (os, arch, variant) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next(),
        );
        references.push(json!({
            "parent_id": a.id,
            "child_id": child.map(|c| c.id).unwrap_or(0),
            "child_digest": r.digest,
            "platform": {"os": os, "architecture": arch, "variant": variant},
        }));
    }
    let tags: Vec<Value> = if with_tags {
        st.db.tags_of(a.id).await?.iter().map(tag_json).collect()
    } else {
        vec![]
    };
    let annotations: Value = serde_json::from_str(&a.annotations).unwrap_or(json!({}));
    Ok(json!({
        "id": a.id,
        "type": harbor_type(a),
        "media_type": if a.config_media_type.is_empty() { &a.media_type } else { &a.config_media_type },
        "manifest_media_type": a.media_type,
        "artifact_type": a.artifact_type,
        "project_id": a.project_id,
        "repository_id": a.repository_id,
        "repository_name": a.repository_name,
        "digest": a.digest,
        "size": a.size,
        "push_time": time(a.push_time),
        "pull_time": time(a.pull_time),
        "annotations": annotations,
        "extra_attrs": {},
        "references": if references.is_empty() { Value::Null } else { Value::Array(references) },
        "tags": if tags.is_empty() { Value::Null } else { Value::Array(tags) },
        "labels": null,
        "accessories": null,
    }))
}

/// Project and full repository name from path parameters.
async fn repo_ctx(
    st: &St,
    headers: &HeaderMap,
    p: &str,
    r: &str,
) -> Result<(Project, String), ApiError> {
    let project = resolve(st, headers, p).await?;
    Ok((
        project.clone(),
        format!("{}/{}", project.name, repo_param(r)),
    ))
}

async fn find_repo(st: &St, name: &str) -> Result<Repository, ApiError> {
    st.db
        .repository(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("repository {name} not found")))
}

async fn find_artifact(st: &St, repo: &str, reference: &str) -> Result<Artifact, ApiError> {
    let a = if reference.starts_with("sha256:") {
        st.db.artifact_by_digest(repo, reference).await?
    } else {
        st.db.artifact_by_tag(repo, reference).await?
    };
    a.ok_or_else(|| ApiError::not_found(format!("artifact {repo}:{reference} not found")))
}

pub async fn repositories(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path(p): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = resolve(&st, &headers, &p).await?;
    need(&st, &c, &p, Res::Repository, Act::List).await?;
    let q = super::query_map(q.as_deref());
    let items = st
        .db
        .repositories(Some(p.id))
        .await?
        .iter()
        .map(repo_json)
        .collect();
    paged(
        items,
        &q,
        &format!("/api/v2.0/projects/{}/repositories", p.name),
    )
}

pub async fn all_repositories(State(st): State<St>, c: Caller, RawQuery(q): RawQuery) -> ApiResult {
    let q = super::query_map(q.as_deref());
    let mut items = vec![];
    for p in st.db.projects().await? {
        if st
            .allowed(&c.principal, &p, Res::Repository, Act::List)
            .await?
        {
            items.extend(st.db.repositories(Some(p.id)).await?.iter().map(repo_json));
        }
    }
    paged(items, &q, "/api/v2.0/repositories")
}

pub async fn repository(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r)): Path<(String, String)>,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Repository, Act::Read).await?;
    Ok(Json(repo_json(&find_repo(&st, &name).await?)).into_response())
}

#[derive(Deserialize)]
struct RepoReq {
    #[serde(default)]
    description: String,
}

pub async fn update_repository(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Repository, Act::Update).await?;
    find_repo(&st, &name).await?;
    let req: RepoReq = body(&b)?;
    st.db.update_repository(&name, &req.description).await?;
    Ok(ok())
}

pub async fn delete_repository(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r)): Path<(String, String)>,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Repository, Act::Delete).await?;
    st.db.delete_repository(&name).await?;
    st.audit
        .record(&c, "delete", "repository", &name, p.id)
        .await;
    Ok(ok())
}

pub async fn list(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Artifact, Act::List).await?;
    find_repo(&st, &name).await?;
    let q = super::query_map(q.as_deref());
    let with_tag = q.get("with_tag").is_none_or(|v| v != "false");
    let path = format!(
        "/api/v2.0/projects/{}/repositories/{}/artifacts",
        p.name,
        r.replace('/', "%252F")
    );
    let all = st.db.artifacts(&name).await?;
    if !q.contains_key("q") && !q.contains_key("sort") {
        // Plain paging: describe only the artifacts of the page (each costs a few queries).
        let (page, size) = super::page_params(&q)?;
        let size = size.unwrap_or(all.len().max(1));
        let mut items = vec![];
        for a in all.iter().skip((page - 1) * size).take(size) {
            items.push(artifact_json(&st, a, with_tag).await?);
        }
        return super::page_response(items, all.len(), page, size, &q, &path);
    }
    let mut items = vec![];
    for a in &all {
        items.push(artifact_json(&st, a, with_tag).await?);
    }
    paged(items, &q, &path)
}

pub async fn get_one(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r, a)): Path<(String, String, String)>,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Artifact, Act::Read).await?;
    let a = find_artifact(&st, &name, &a).await?;
    Ok(Json(artifact_json(&st, &a, true).await?).into_response())
}

pub async fn delete(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r, a)): Path<(String, String, String)>,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Artifact, Act::Delete).await?;
    let art = find_artifact(&st, &name, &a).await?;
    st.db.delete_artifact(art.id).await?;
    st.audit
        .record(
            &c,
            "delete",
            "artifact",
            &format!("{name}@{}", art.digest),
            p.id,
        )
        .await;
    Ok(ok())
}

pub async fn tags(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r, a)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Tag, Act::List).await?;
    let art = find_artifact(&st, &name, &a).await?;
    let q = super::query_map(q.as_deref());
    let items = st.db.tags_of(art.id).await?.iter().map(tag_json).collect();
    paged(
        items,
        &q,
        &format!(
            "/api/v2.0/projects/{}/repositories/{}/artifacts/{a}/tags",
            p.name,
            r.replace('/', "%252F")
        ),
    )
}

#[derive(Deserialize)]
struct TagReq {
    name: String,
}

pub async fn add_tag(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r, a)): Path<(String, String, String)>,
    b: Bytes,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Tag, Act::Create).await?;
    let art = find_artifact(&st, &name, &a).await?;
    let t: TagReq = body(&b)?;
    if !valid_tag(&t.name) {
        return Err(ApiError::bad(format!("invalid tag {:?}", t.name)));
    }
    st.db.add_tag(art.repository_id, art.id, &t.name).await?;
    st.audit
        .record(&c, "create", "tag", &format!("{name}:{}", t.name), p.id)
        .await;
    Ok(created(format!(
        "/api/v2.0/projects/{}/repositories/{}/artifacts/{}/tags/{}",
        p.name,
        r.replace('/', "%252F"),
        art.digest,
        t.name
    )))
}

pub async fn delete_tag(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r, a, t)): Path<(String, String, String, String)>,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Tag, Act::Delete).await?;
    let art = find_artifact(&st, &name, &a).await?;
    if !st.db.tags_of(art.id).await?.iter().any(|x| x.name == t) {
        return Err(ApiError::not_found(format!("tag {t} not found")));
    }
    st.db.delete_tag(&name, &t).await?;
    st.audit
        .record(&c, "delete", "tag", &format!("{name}:{t}"), p.id)
        .await;
    Ok(ok())
}

/// Copies one artifact (an index with its children) into `to`: links its blobs, records its
/// manifests. Holds the GC lock shared, as a push does.
async fn copy_artifact(
    st: &St,
    src: &Artifact,
    to: &str,
    project_id: i64,
    tag: Option<&str>,
) -> Result<(), ApiError> {
    let g = st.push_guard().await?;
    let r = async {
        let mut stack = vec![(src.clone(), tag.map(str::to_string))];
        let mut order = vec![];
        while let Some((a, t)) = stack.pop() {
            let refs = st.db.artifact_refs(a.id).await?;
            for r in refs.iter().filter(|r| r.kind == "manifest") {
                let child = st
                    .db
                    .artifact_by_digest(&a.repository_name, &r.digest)
                    .await?
                    .ok_or_else(|| {
                        ApiError::not_found(format!("child manifest {} not found", r.digest))
                    })?;
                stack.push((child, None));
            }
            order.push((a, t, refs));
        }
        // Children before their index.
        for (a, t, refs) in order.into_iter().rev() {
            for r in refs.iter().filter(|r| r.kind == "blob") {
                if st
                    .db
                    .linked_blob(&a.repository_name, &r.digest)
                    .await?
                    .is_none()
                {
                    return Err(ApiError::not_found(format!("blob {} not found", r.digest)));
                }
                st.db.put_blob(to, &r.digest, r.size).await?;
            }
            st.db
                .put_artifact(&crate::db::NewArtifact {
                    project_id,
                    repository: to,
                    digest: &a.digest,
                    media_type: &a.media_type,
                    config_media_type: &a.config_media_type,
                    artifact_type: &a.artifact_type,
                    size: a.size,
                    subject: a.subject.as_deref(),
                    annotations: &a.annotations,
                    refs: &refs,
                    tag: t.as_deref(),
                })
                .await?;
        }
        Ok::<_, ApiError>(())
    }
    .await;
    g.release().await;
    r
}

/// `POST /projects/{p}/repositories/{r}/artifacts?from=<project>/<repo>:<tag>|@<digest>`:
/// Harbor's artifact copy. Needs pull on the source and artifact creation on the target.
pub async fn copy(
    State(st): State<St>,
    c: Caller,
    headers: HeaderMap,
    Path((p, r)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (p, name) = repo_ctx(&st, &headers, &p, &r).await?;
    need(&st, &c, &p, Res::Artifact, Act::Create).await?;
    let q = super::query_map(q.as_deref());
    let from = q
        .get("from")
        .ok_or_else(|| ApiError::bad("from is required"))?;
    let (src_repo, reference, tag) = match from.split_once('@') {
        Some((repo, d)) => (repo.to_string(), d.to_string(), None),
        None => {
            let (repo, t) = from
                .rsplit_once(':')
                .ok_or_else(|| ApiError::bad("from must be <repo>:<tag> or <repo>@<digest>"))?;
            (repo.to_string(), t.to_string(), Some(t.to_string()))
        }
    };
    if !crate::oci::valid_name(&src_repo) || !crate::oci::valid_name(&name) {
        return Err(ApiError::bad("invalid repository name"));
    }
    let src_project = st
        .db
        .project_by_name(src_repo.split('/').next().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::not_found("source project not found"))?;
    need(&st, &c, &src_project, Res::Repository, Act::Pull).await?;
    let src = find_artifact(&st, &src_repo, &reference).await?;
    copy_artifact(&st, &src, &name, p.id, tag.as_deref()).await?;
    st.audit
        .record(
            &c,
            "create",
            "artifact",
            &format!("{name}@{} (copied from {from})", src.digest),
            p.id,
        )
        .await;
    Ok(created(format!(
        "/api/v2.0/projects/{}/repositories/{}/artifacts/{}",
        p.name,
        r.replace('/', "%252F"),
        src.digest
    )))
}
