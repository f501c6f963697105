//! Garbage collection while pushes go on: unreferenced blobs go, nothing a push uses is lost.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn on_disk(srv: &Server, d: &str) -> bool {
    srv.data
        .join("blobs/sha256")
        .join(&d[7..9])
        .join(&d[7..])
        .exists()
}

async fn run_gc(a: &Api) -> Value {
    let r = a
        .req(Method::POST, "/api/v2.0/system/gc/schedule")
        .json(&serde_json::json!({"schedule": {"type": "Manual"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_under_concurrent_pushes_loses_nothing() {
    let srv = Server::start_with(&["--gc-grace-secs", "3"]);
    let a = srv.admin();
    a.create_project("p", false).await;

    // Before: a kept image, an orphan blob, a deleted image, an old blob a push will reuse.
    let kept = a.push_image("p/kept", "1", b"kept-layer").await;
    let orphan = a.push_blob("p/junk", b"orphan-blob").await;
    let (m, deleted_layer) = a.push_image_parts("p/gone", b"gone-layer").await;
    a.push_manifest("p/gone", "1", OCI_MANIFEST, &m).await;
    assert_eq!(
        a.delete(&format!("/v2/p/gone/manifests/{}", sha(&m)))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let reused = a.push_blob("p/late", b"reused-later").await;
    tokio::time::sleep(Duration::from_millis(4100)).await;

    // During: pushers and a GC loop race for 4 seconds.
    let stop = Instant::now() + Duration::from_secs(4);
    let pushed = Arc::new(tokio::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut tasks = vec![];
    for w in 0..4 {
        let (a, pushed) = (a.clone(), pushed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop && i < 12 {
                let repo = format!("p/w{w}");
                let layer = format!("worker {w} layer {i}").repeat(100);
                let (m, _) = a.push_image_parts(&repo, layer.as_bytes()).await;
                // Leave GC a chance to run between the blobs and their manifest.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let r = a
                    .push_manifest(&repo, &format!("t{i}"), OCI_MANIFEST, &m)
                    .await;
                assert_eq!(
                    r.status(),
                    StatusCode::CREATED,
                    "push {repo}:t{i}: {}",
                    r.text().await.unwrap()
                );
                pushed.lock().await.push((repo, sha(&m)));
                i += 1;
            }
        }));
    }
    // A slow push that re-uses an old blob: it checks the blob exists (HEAD), GC runs, then it
    // sends the manifest.
    let slow = {
        let a = a.clone();
        let reused = reused.clone();
        let (m0, _) = a.push_image_parts("p/late", b"late-layer").await;
        // The HEAD comes before the GC loop starts (it is what makes the push "in flight").
        let r = a
            .req(Method::HEAD, &format!("/v2/p/late/blobs/{reused}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut v: Value = serde_json::from_slice(&m0).unwrap();
            v["layers"].as_array_mut().unwrap().push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": reused, "size": 12}));
            let m = serde_json::to_vec(&v).unwrap();
            let r = a.push_manifest("p/late", "1", OCI_MANIFEST, &m).await;
            assert_eq!(
                r.status(),
                StatusCode::CREATED,
                "slow push: {}",
                r.text().await.unwrap()
            );
            sha(&m)
        })
    };
    let mut gcs = 0;
    let mut deleted = 0;
    while Instant::now() < stop {
        let rep = run_gc(&a).await;
        deleted += rep["deleted_blobs"].as_u64().unwrap();
        gcs += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let late = slow.await.unwrap();
    assert!(gcs >= 5, "gc ran {gcs} times");
    assert!(
        deleted >= 3,
        "orphan, deleted layer and config collected ({deleted})"
    );

    // After: everything pushed is whole, the garbage is gone.
    let pushed = pushed.lock().await.clone();
    assert!(pushed.len() >= 20, "only {} pushes", pushed.len());
    let mut all = pushed.clone();
    all.push(("p/kept".into(), kept));
    all.push(("p/late".into(), late));
    for (repo, md) in &all {
        let r = a.get(&format!("/v2/{repo}/manifests/{md}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{repo}@{md}");
        let m: Value = r.json().await.unwrap();
        let mut descs = vec![m["config"].clone()];
        descs.extend(m["layers"].as_array().unwrap().iter().cloned());
        for d in descs {
            let d = d["digest"].as_str().unwrap();
            let r = a.get(&format!("/v2/{repo}/blobs/{d}")).await;
            assert_eq!(r.status(), StatusCode::OK, "{repo} blob {d} lost");
            assert_eq!(sha(&r.bytes().await.unwrap()), d);
        }
    }
    for d in [&orphan, &deleted_layer] {
        assert!(!on_disk(&srv, d), "{d} should be collected");
    }
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/p/junk/blobs/{orphan}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert!(on_disk(&srv, &reused));
    let last = a.json("/api/v2.0/system/gc").await;
    assert_eq!(last[0]["job_status"], "Success");
}
