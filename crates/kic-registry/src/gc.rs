//! Garbage collection of blobs no manifest references.
//!
//! Runs while pushes go on. The rule that keeps in-flight pushes safe: a push makes a blob
//! *referenced* (records a manifest naming it) while holding the GC lock shared
//! ([`AppState::push_guard`]), after checking the blob is there; GC re-checks and deletes each
//! batch while holding it exclusive ([`AppState::gc_guard`]). The lock is in-process and, on
//! PostgreSQL, also a cluster-wide advisory lock, so registries sharing one database and one
//! data directory keep the rule among themselves.
//! A blob an unfinished push is about to reference was uploaded, mounted or `HEAD`-checked by
//! that push, which sets its `last_seen`; GC spares every blob seen within the grace period
//! (`--gc-grace-secs`), so a push has that long between sending a blob and its manifest.
//!
//! [`AppState::push_guard`]: crate::state::AppState::push_guard
//! [`AppState::gc_guard`]: crate::state::AppState::gc_guard

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::digest::Digest;
use crate::errors::StoreError;
use crate::state::St;

#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    pub id: i64,
    pub job_status: String,
    pub creation_time: String,
    pub candidates: usize,
    pub deleted_blobs: usize,
    pub freed_bytes: u64,
    pub purged_uploads: usize,
    pub orphan_files: usize,
    pub duration_ms: u128,
}

/// One collection.
pub async fn run(st: &St) -> Result<GcReport, StoreError> {
    let started = Instant::now();
    let cutoff = crate::db::now() - st.config.gc_grace_secs;
    let candidates = st.db.gc_candidates(cutoff).await?;
    let (mut deleted, mut freed) = (0, 0);
    for batch in candidates.chunks(64) {
        let w = st.gc_guard().await?;
        let r = async {
            for d in batch {
                let Some(dg) = Digest::parse(d) else { continue };
                if st.db.gc_forget(d, cutoff).await? {
                    freed += st.store.size(&dg).await.unwrap_or(0);
                    st.store.delete(&dg).await?;
                    deleted += 1;
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        w.release().await;
        r?;
    }
    let orphan_files = sweep_orphans(st, cutoff).await?;
    let purged_uploads = st
        .store
        .purge_uploads(Duration::from_secs(st.config.upload_ttl_secs))
        .await?;
    let report = GcReport {
        id: crate::db::now(),
        job_status: "Success".into(),
        creation_time: crate::api::time(crate::db::now()),
        candidates: candidates.len(),
        deleted_blobs: deleted,
        freed_bytes: freed,
        purged_uploads,
        orphan_files,
        duration_ms: started.elapsed().as_millis(),
    };
    tracing::info!(?report, "garbage collection done");
    *st.last_gc.lock().unwrap() = Some(report.clone());
    Ok(report)
}

/// Removes files under `blobs/` that no database row knows (left by a crash between the rename
/// and the row insert) and that are older than the grace period.
async fn sweep_orphans(st: &St, cutoff: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    let root = st.store.layout().blobs_dir();
    let mut dirs = tokio::fs::read_dir(&root).await?;
    while let Some(dir) = dirs.next_entry().await? {
        let Ok(mut files) = tokio::fs::read_dir(dir.path()).await else {
            continue;
        };
        while let Some(f) = files.next_entry().await? {
            let name = f.file_name().to_string_lossy().to_string();
            let Some(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            let old = f
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| (t.as_secs() as i64) < cutoff);
            if !old || st.db.blob(d.as_str()).await?.is_some() {
                continue;
            }
            let w = st.gc_guard().await?;
            let r = async {
                if st.db.blob(d.as_str()).await?.is_none() {
                    st.store.delete(&d).await?;
                    return Ok::<_, StoreError>(true);
                }
                Ok(false)
            }
            .await;
            w.release().await;
            if r? {
                n += 1;
            }
        }
    }
    Ok(n)
}
