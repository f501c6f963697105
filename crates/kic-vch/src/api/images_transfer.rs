//! `docker save` (`GET /images/get`, `GET /images/{name}/get`), `docker load`
//! (`POST /images/load`) and `docker push`.

use super::progress;
use super::{blocking, image_error};
use crate::api::{ApiError, ApiResult, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use kic_image::Reference;
use std::io::Write;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Decodes `a=1&names=x&names=y` (percent escapes and `+`), keeping repeated keys.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// A `Write` that hands chunks to an async body (from a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

/// Which images a `docker save` of `names` writes, with the tags recorded for each, as dockerd
/// chooses them: an id saves the image untagged, `name:tag` that tag, a bare repository name
/// every tag of that repository.
fn save_set(
    state: &AppState,
    names: &[String],
) -> Result<Vec<(String, Vec<String>)>, kic_image::ImageError> {
    let store = state.pl.images();
    let all = store.list()?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |id: &str, tag: Option<String>| {
        let i = match out.iter().position(|(x, _)| x == id) {
            Some(i) => i,
            None => {
                out.push((id.to_string(), vec![]));
                out.len() - 1
            }
        };
        if let Some(t) = tag {
            if !out[i].1.contains(&t) {
                out[i].1.push(t);
            }
        }
    };
    for name in names {
        let img = store.get(name)?;
        let hex = img.id.strip_prefix("sha256:").unwrap_or(&img.id);
        if img.id.starts_with(name.as_str()) || hex.starts_with(name.as_str()) {
            add(&img.id, None);
            continue;
        }
        let r = Reference::parse(name)?;
        let explicit_tag = r.digest.is_none() && {
            let last = name.rsplit('/').next().unwrap_or(name);
            last.contains(':')
        };
        if r.digest.is_some() {
            add(&img.id, None);
        } else if explicit_tag {
            add(
                &img.id,
                r.tag_key().map(|k| kic_image::reference::familiar(&k)),
            );
        } else {
            for other in &all {
                for t in &other.repo_tags {
                    let same = Reference::parse(t)
                        .map(|x| x.full_repository() == r.full_repository())
                        .unwrap_or(false);
                    if same {
                        add(&other.id, Some(t.clone()));
                    }
                }
            }
        }
    }
    Ok(out)
}

async fn save(state: AppState, names: Vec<String>) -> ApiResult<Response> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no images given to save"));
    }
    let st = state.clone();
    let n = names.clone();
    let set = blocking(move || save_set(&st, &n)).await?;
    // Check every image can be exported before the first byte goes out.
    let store = state.pl.images().clone();
    let ids: Vec<String> = set.iter().map(|(i, _)| i.clone()).collect();
    blocking(move || {
        for id in ids {
            store.parts(&id)?;
        }
        Ok(())
    })
    .await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let store = state.pl.images().clone();
    for (id, _) in &set {
        state.events.image("save", id, id);
    }
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let res = store.write_archive(&set, &mut w).and_then(|_| {
            w.flush()
                .map_err(|e| kic_image::ImageError::Invalid(e.to_string()))
        });
        if let Err(e) = res {
            tracing::warn!("docker save of {names:?} failed: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(res)
}

/// `GET /images/get?names=a&names=b`
pub async fn save_many(State(state): State<AppState>, raw: RawQuery) -> ApiResult<Response> {
    let names: Vec<String> = query_pairs(raw.0.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v)
        .collect();
    save(state, names).await
}

/// `GET /images/{name}/get`
pub async fn save_one(state: AppState, name: String) -> ApiResult<Response> {
    save(state, vec![name]).await
}

/// `POST /images/load`: a Docker image archive or OCI layout tarball (plain or compressed).
pub async fn load(
    State(state): State<AppState>,
    raw: RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let quiet = query_pairs(raw.0.as_deref().unwrap_or(""))
        .iter()
        .any(|(k, v)| k == "quiet" && matches!(v.as_str(), "1" | "true" | "True"));
    let _ = quiet;
    let tmp_dir = state.pl.images().layout().tmp_dir();
    let tmp = tempfile::Builder::new()
        .prefix("load-upload-")
        .tempfile_in(&tmp_dir)
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot create a file in {}: {e}",
                tmp_dir.display()
            ))
        })?;
    let path = tmp.path().to_path_buf();
    {
        let f = tmp
            .reopen()
            .map_err(|e| ApiError::internal(format!("cannot open {}: {e}", path.display())))?;
        let mut f = tokio::fs::File::from_std(f);
        let mut body = req.into_body().into_data_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("reading the image archive from the client: {e}"))
            })?;
            n += chunk.len() as u64;
            f.write_all(&chunk)
                .await
                .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
        }
        f.flush()
            .await
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
        if n == 0 {
            return Err(ApiError::bad_request(
                "the request body holds no image archive (docker load reads it from stdin or -i FILE)",
            ));
        }
    }
    let loaded = state
        .pl
        .images()
        .load_archive(&path, kic_image::DEFAULT_DISK_SIZE)
        .await
        .map_err(|e| {
            let mut a = image_error(e);
            a.message = format!("loading the image archive: {}", a.message);
            a
        })?;
    drop(tmp);
    let mut body = Vec::new();
    for img in &loaded {
        for (name, old) in &img.retagged {
            body.extend_from_slice(&progress::line(&progress::stream(&format!(
                "The image {name} already exists, renaming the old one with ID {old} to empty string\n"
            ))));
        }
        if img.tags.is_empty() {
            body.extend_from_slice(&progress::line(&progress::stream(&format!(
                "Loaded image ID: {}\n",
                img.id
            ))));
        }
        for t in &img.tags {
            body.extend_from_slice(&progress::line(&progress::stream(&format!(
                "Loaded image: {t}\n"
            ))));
        }
        state.events.image("load", &img.id, &img.id);
    }
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// `POST /images/{name}/push`: the tag given (every tag of the repository without one),
/// streamed as dockerd does.
pub async fn push(
    state: AppState,
    name: String,
    tag: Option<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let base = Reference::parse(&name).map_err(image_error)?;
    super::check_whitelist(&state, &base.domain)?;
    let explicit = match &tag {
        Some(t) => Some(format!("{name}:{t}")),
        None if name.rsplit('/').next().is_some_and(|l| l.contains(':')) => Some(name.clone()),
        None => None,
    };
    let store = state.pl.images().clone();
    let targets: Vec<String> = match explicit {
        Some(r) => {
            let s = store.clone();
            let rr = r.clone();
            let found = tokio::task::spawn_blocking(move || s.get(&rr).is_ok())
                .await
                .unwrap_or(false);
            if !found {
                return Err(ApiError::not_found(format!(
                    "An image does not exist locally with the tag: {}",
                    base.familiar_repository()
                )));
            }
            vec![r]
        }
        None => {
            let s = store.clone();
            let all = blocking(move || s.list()).await?;
            let repo = base.full_repository();
            let v: Vec<String> = all
                .iter()
                .flat_map(|i| i.repo_tags.iter())
                .filter(|t| Reference::parse(t).is_ok_and(|r| r.full_repository() == repo))
                .cloned()
                .collect();
            if v.is_empty() {
                return Err(ApiError::not_found(format!(
                    "An image does not exist locally with the tag: {}",
                    base.familiar_repository()
                )));
            }
            v
        }
    };
    let opts = super::pull_options(&state, &headers);
    let (btx, brx) = mpsc::channel::<Bytes>(64);
    let events = state.events.clone();
    let repo_line = progress::status(
        &format!(
            "The push refers to repository [{}]",
            base.familiar_repository()
        ),
        None,
    );
    tokio::spawn(async move {
        let _ = btx.send(progress::line(&repo_line)).await;
        for target in targets {
            let (ptx, mut prx) = mpsc::unbounded_channel::<kic_image::PullProgress>();
            let cb = move |p: kic_image::PullProgress| {
                let _ = ptx.send(p);
            };
            let job = store.push(&target, &opts, &cb);
            tokio::pin!(job);
            let res = loop {
                tokio::select! {
                    r = &mut job => break r,
                    Some(p) = prx.recv() => {
                        let l = progress::layer(&p.status, &p.id, p.current, p.total);
                        let _ = btx.send(progress::line(&l)).await;
                    }
                }
            };
            while let Ok(p) = prx.try_recv() {
                let l = progress::layer(&p.status, &p.id, p.current, p.total);
                let _ = btx.send(progress::line(&l)).await;
            }
            match res {
                Ok((digest, size)) => {
                    let r = Reference::parse(&target).ok();
                    let tag = r.as_ref().and_then(|r| r.tag.clone()).unwrap_or_default();
                    let _ = btx
                        .send(progress::line(&progress::status(
                            &format!("{tag}: digest: {digest} size: {size}"),
                            None,
                        )))
                        .await;
                    let aux = serde_json::json!({
                        "progressDetail": {},
                        "aux": { "Tag": tag, "Digest": digest.to_string(), "Size": size },
                    });
                    let _ = btx.send(progress::line(&aux)).await;
                    let familiar = r
                        .map(|r| kic_image::reference::familiar(&r.to_string()))
                        .unwrap_or(target.clone());
                    events.image("push", &familiar, &familiar);
                }
                Err(e) => {
                    let _ = btx
                        .send(progress::line(&progress::error(&e.to_string())))
                        .await;
                    return;
                }
            }
        }
    });
    Ok(super::json_stream(brx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_keeps_repeats() {
        let q = query_pairs("names=busybox%3Alatest&names=127.0.0.1%3A5000%2Fx&quiet=1&a+b=c+d");
        assert_eq!(
            q,
            vec![
                ("names".to_string(), "busybox:latest".to_string()),
                ("names".to_string(), "127.0.0.1:5000/x".to_string()),
                ("quiet".to_string(), "1".to_string()),
                ("a b".to_string(), "c d".to_string()),
            ]
        );
        assert_eq!(query_pairs("x=%zz"), vec![("x".into(), "%zz".into())]);
    }
}
