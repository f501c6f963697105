//! The same registry on PostgreSQL: a real server from Debian's packages, started by the test
//! in a temporary directory (as the `postgres` user when we are root).

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn registry_on_postgresql() {
    let pg = Pg::start();
    let url = pg.url();
    let mut srv = Server::start_with(&["--database-url", &url, "--gc-grace-secs", "1"]);
    assert!(
        !srv.data.join("registry.db").exists(),
        "no SQLite file with PostgreSQL"
    );
    let a = srv.admin();
    assert_eq!(
        a.json("/api/v2.0/systeminfo").await["database"],
        "postgresql"
    );
    a.create_project("library", true).await;
    a.create_project("team", false).await;
    a.create_user("guest").await;
    a.add_member("team", "guest", 3).await;

    // skopeo in and out, including the multi-arch index.
    let tmp = tempfile::tempdir().unwrap();
    test_layout(&tmp.path().join("src"));
    let creds = format!("admin:{ADMIN_PW}");
    for (tag, dst, all) in [
        ("busybox", "library/busybox:1", false),
        ("multi", "team/multi:1", true),
    ] {
        let src = format!("oci:{}:{tag}", tmp.path().join("src").display());
        let dst = format!("docker://{}/{dst}", srv.host);
        let mut args = vec!["copy", "--dest-tls-verify=false", "--dest-creds", &creds];
        if all {
            args.push("--all");
        }
        args.extend([src.as_str(), dst.as_str()]);
        let (ok, err) = skopeo(tmp.path(), &args);
        assert!(ok, "push {tag}: {err}");
    }
    let dst = format!("docker://{}/team/multi:1", srv.host);
    let (ok, err) = skopeo(
        tmp.path(),
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "guest:Passw0rd!",
            &dst,
        ],
    );
    assert!(ok, "guest pull: {err}");
    let src = format!("oci:{}:busybox", tmp.path().join("src").display());
    let (ok, _) = skopeo(
        tmp.path(),
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "guest:Passw0rd!",
            &src,
            &dst,
        ],
    );
    assert!(!ok, "guest push refused");

    // Spec paths that exercise most queries.
    let subject = a.push_image("team/app", "v1", b"pg-layer").await;
    let empty = a.push_blob("team/app", b"{}").await;
    let sig = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}, "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}});
    let b = serde_json::to_vec(&sig).unwrap();
    assert_eq!(
        a.push_manifest("team/app", &sha(&b), OCI_MANIFEST, &b)
            .await
            .status(),
        StatusCode::CREATED
    );
    let refs = a
        .json(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application/x-sig"
        ))
        .await;
    assert_eq!(refs["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        a.json("/v2/_catalog").await["repositories"],
        json!(["library/busybox", "team/app", "team/multi"])
    );
    let arts = a
        .json("/api/v2.0/projects/team/repositories/multi/artifacts")
        .await;
    assert_eq!(
        arts.as_array().unwrap().len(),
        3,
        "index and its two children"
    );
    let r = a
        .post_json("/api/v2.0/robots", json!({"name": "ci", "level": "project", "duration": -1, "permissions": [
            {"kind": "project", "namespace": "team", "access": [{"resource": "repository", "action": "pull"}]}]}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rb: serde_json::Value = r.json().await.unwrap();
    let robot = srv
        .client()
        .basic(rb["name"].as_str().unwrap(), rb["secret"].as_str().unwrap());
    assert_eq!(
        robot.get("/v2/team/app/manifests/v1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        robot
            .req(Method::POST, "/v2/team/app/blobs/uploads/")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // GC on PostgreSQL.
    let orphan = a.push_blob("team/junk", b"pg-orphan").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = a
        .req(Method::POST, "/api/v2.0/system/gc/schedule")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/team/junk/blobs/{orphan}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get(&format!("/v2/team/app/manifests/{subject}"))
            .await
            .status(),
        StatusCode::OK
    );

    // Everything survives a kill -9 of the registry.
    srv.restart();
    let a = srv.admin();
    assert_eq!(
        a.json("/v2/team/app/tags/list").await["tags"],
        json!(["v1"])
    );
    let logs = a.json("/api/v2.0/audit-logs?page_size=100").await;
    assert!(logs
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["operation"] == "push" && l["resource"] == "library/busybox:1"));
    let r = a
        .get("/api/v2.0/audit-logs?q=resource%3D~BUSYBOX,operation%3D{push%20pull},op_time%3D%5B2000-01-01%2000%3A00%3A00~%5D&page_size=1")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= 1
    );
    let dst = format!("docker://{}/team/multi:1", srv.host);
    let (ok, err) = skopeo(
        tmp.path(),
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
            &dst,
            &format!("oci:{}:out", tmp.path().join("out").display()),
        ],
    );
    assert!(ok, "pull after restart: {err}");
}

/// Two registries on one PostgreSQL database and one data directory (the scale-out layout):
/// pushes through one while the other collects garbage in a loop lose nothing.
#[tokio::test(flavor = "multi_thread")]
async fn two_registries_share_a_database_and_gc_safely() {
    let pg = Pg::start();
    let url = pg.url();
    let args = ["--database-url", url.as_str(), "--gc-grace-secs", "2"];
    let a_srv = Server::start_with(&args);
    let b_srv = Server::spawn(&a_srv.data, &args);
    let a = a_srv.admin();
    let b = b_srv.admin();
    a.create_project("p", false).await;
    let orphan = a.push_blob("p/junk", b"shared-orphan").await;
    // Seen through the other registry at once.
    assert_eq!(b.json("/api/v2.0/projects/p").await["name"], "p");
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;

    let stop = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let pusher = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut pushed = vec![];
            let mut i = 0;
            while std::time::Instant::now() < stop {
                let (m, _) = a
                    .push_image_parts("p/app", format!("layer {i}").repeat(50).as_bytes())
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let r = a
                    .push_manifest("p/app", &format!("t{i}"), OCI_MANIFEST, &m)
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
                pushed.push(sha(&m));
                i += 1;
            }
            pushed
        })
    };
    let mut deleted = 0;
    while std::time::Instant::now() < stop {
        let r = b
            .req(Method::POST, "/api/v2.0/system/gc/schedule")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        deleted += r.json::<serde_json::Value>().await.unwrap()["deleted_blobs"]
            .as_u64()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pushed = pusher.await.unwrap();
    assert!(pushed.len() >= 5, "{} pushes", pushed.len());
    assert!(deleted >= 1, "the orphan was collected");
    for md in &pushed {
        // Pull through the registry that collected.
        let m: serde_json::Value = b.json(&format!("/v2/p/app/manifests/{md}")).await;
        for desc in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            let d = desc["digest"].as_str().unwrap();
            let r = b.get(&format!("/v2/p/app/blobs/{d}")).await;
            assert_eq!(r.status(), StatusCode::OK, "blob {d} lost");
            assert_eq!(sha(&r.bytes().await.unwrap()), d);
        }
    }
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/p/junk/blobs/{orphan}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}
