//! A `kill -9` in the middle of an upload never leaves a partial blob readable, and the upload
//! can be resumed from what reached the disk.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};

/// Every file under `blobs/` must hash to its own name.
fn assert_blobs_whole(data: &Path) {
    let root = data.join("blobs/sha256");
    for dir in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let bytes = std::fs::read(f.path()).unwrap();
            assert_eq!(
                &sha(&bytes)[7..],
                f.file_name().to_string_lossy(),
                "blob file {:?} is partial or corrupt",
                f.path()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_mid_upload_leaves_no_partial_blob() {
    let mut srv = Server::start();
    let a = srv.admin();
    a.create_project("p", false).await;
    let whole: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let digest = sha(&whole);

    // Stream 5 MiB of 8 through one PATCH, then hang, and kill the server meanwhile.
    let r = a
        .req(Method::POST, "/v2/p/big/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let patch = tokio::spawn({
        let req = a.req(Method::PATCH, &loc).body(body);
        async move { req.send().await }
    });
    for chunk in whole[..5 << 20].chunks(256 << 10) {
        tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    let id = loc.rsplit('/').next().unwrap().to_string();
    let upload_file = srv.data.join("uploads").join(&id).join("data");
    wait_until("bytes on disk", Duration::from_secs(20), || async {
        (std::fs::metadata(&upload_file)
            .map(|m| m.len())
            .unwrap_or(0)
            >= 4 << 20)
            .then_some(())
    })
    .await;
    // A concurrent monolithic push of the same content is in flight too.
    let mono = tokio::spawn({
        let req = a
            .req(
                Method::POST,
                &format!("/v2/p/big2/blobs/uploads/?digest={digest}"),
            )
            .body(reqwest::Body::wrap_stream(
                futures::stream::iter(
                    whole[..3 << 20]
                        .chunks(1 << 20)
                        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                        .collect::<Vec<_>>(),
                )
                .chain(futures::stream::pending()),
            ));
        async move { req.send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.restart();
    drop(tx);
    let _ = patch.await;
    let _ = mono.await;

    // Nothing readable, nothing partial on disk.
    let a = srv.admin();
    for repo in ["p/big", "p/big2"] {
        let r = a
            .req(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert!(!srv
        .data
        .join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..])
        .exists());
    assert_blobs_whole(&srv.data);

    // The session survived: its status says how much arrived; resume from there.
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let range = r.headers()["range"].to_str().unwrap().to_string();
    let have: usize = range.split('-').nth(1).unwrap().parse::<usize>().unwrap() + 1;
    assert!((4 << 20..=5 << 20).contains(&have), "range {range}");
    // A wrong digest is refused after the restart too (the session is re-hashed from disk).
    let r = a
        .req(Method::PATCH, &loc)
        .header("content-range", format!("{have}-{}", whole.len() - 1))
        .body(whole[have..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = a
        .req(Method::PUT, &format!("{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = a
        .get(&format!("/v2/p/big/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&got), digest);
    assert_blobs_whole(&srv.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn resumed_upload_with_wrong_digest_is_refused() {
    let mut srv = Server::start();
    let a = srv.admin();
    a.create_project("p", false).await;
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    a.req(Method::PATCH, &loc)
        .header("content-range", "0-4")
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    srv.restart();
    let a = srv.admin();
    let r = a
        .req(Method::PUT, &format!("{loc}?digest={}", sha(b"HELLO")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/p/r/blobs/{}", sha(b"hello")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_blobs_whole(&srv.data);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_queued_pulls_and_audit_records() {
    let mut srv = Server::start();
    let a = srv.admin();
    a.create_project("p", true).await;
    a.push_image("p/app", "1", b"layer").await;
    let anon = srv.client();
    for _ in 0..7 {
        assert_eq!(
            anon.get("/v2/p/app/manifests/1").await.status(),
            StatusCode::OK
        );
    }
    let pid = srv.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    srv.restart();
    let a = srv.admin();
    assert_eq!(
        a.json("/api/v2.0/projects/p/repositories/app").await["pull_count"],
        7
    );
    let logs = a
        .json("/api/v2.0/audit-logs?q=operation%3Dpull&page_size=100")
        .await;
    assert_eq!(logs.as_array().unwrap().len(), 7);
    assert!(logs
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["username"] == "anonymous"));
    // Pushes are on record before the push answered.
    let pushes = a.json("/api/v2.0/audit-logs?q=operation%3Dpush").await;
    assert_eq!(pushes[0]["resource"], "p/app:1");
}
