//! Black-box tests with a real client: skopeo copies images in and out, inspects and deletes
//! them, and is refused where Harbor's roles say so.

mod common;

use common::*;
use serde_json::json;

struct Kit {
    srv: Server,
    tmp: tempfile::TempDir,
}

impl Kit {
    fn new() -> Kit {
        let srv = Server::start();
        let tmp = tempfile::tempdir().unwrap();
        test_layout(&tmp.path().join("src"));
        Kit { srv, tmp }
    }

    fn src(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.tmp.path().join("src").display())
    }

    fn dst(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.srv.host)
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        skopeo(self.tmp.path(), args)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_inspect_delete() {
    let k = Kit::new();
    let admin = k.srv.admin();
    admin.create_project("library", true).await;
    let creds = format!("admin:{ADMIN_PW}");

    // busybox, OCI format.
    let (ok, err) = k.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &k.src("busybox"),
        &k.dst("library/busybox:1.36"),
    ]);
    assert!(ok, "push busybox: {err}");
    // debian, converted to Docker schema 2 on the way.
    let (ok, err) = k.run(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &k.src("debian"),
        &k.dst("library/debian:12"),
    ]);
    assert!(ok, "push debian: {err}");
    // multi-arch index with both images.
    let (ok, err) = k.run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &k.src("multi"),
        &k.dst("library/multi:latest"),
    ]);
    assert!(ok, "push multi-arch: {err}");

    // inspect, anonymously (public project).
    let (ok, out) = k.run(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &k.dst("library/debian:12"),
    ]);
    assert!(ok, "inspect: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    let (ok, out) = k.run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--no-creds",
        &k.dst("library/debian:12"),
    ]);
    assert!(ok);
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw["mediaType"], DOCKER_MANIFEST);
    let (ok, out) = k.run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--no-creds",
        &k.dst("library/multi:latest"),
    ]);
    assert!(ok);
    let raw: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    let (ok, out) = k.run(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        "--override-arch",
        "arm64",
        &k.dst("library/multi:latest"),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("arm64"));

    // copy out and compare with the source, byte for byte on every blob.
    let out_dir = k.tmp.path().join("out");
    for (repo, all) in [
        ("library/busybox:1.36", false),
        ("library/multi:latest", true),
        ("library/debian:12", false),
    ] {
        let tag = repo.rsplit(':').next().unwrap();
        let mut args = vec!["copy", "--src-tls-verify=false", "--src-no-creds"];
        if all {
            args.push("--all");
        }
        let src = k.dst(repo);
        let dst = format!("oci:{}:{tag}", out_dir.display());
        args.extend([src.as_str(), dst.as_str()]);
        let (ok, err) = k.run(&args);
        assert!(ok, "pull {repo}: {err}");
    }
    let bb_layer = std::fs::read_dir(k.tmp.path().join("src/blobs/sha256"))
        .unwrap()
        .count();
    assert!(bb_layer > 0);
    for e in std::fs::read_dir(out_dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha(&data)[7..],
            e.file_name().to_string_lossy(),
            "pulled blob matches its digest"
        );
    }

    // Harbor's artifact copy: the multi-arch index with its children, into a private project.
    admin.create_project("prod", false).await;
    let r = admin
        .req(
            reqwest::Method::POST,
            "/api/v2.0/projects/prod/repositories/multi/artifacts?from=library/multi:latest",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (ok, err) = k.run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &k.dst("prod/multi:latest"),
        &format!("oci:{}:copied", k.tmp.path().join("copied").display()),
    ]);
    assert!(ok, "pull the copy: {err}");
    let arts = admin
        .json("/api/v2.0/projects/prod/repositories/multi/artifacts")
        .await;
    assert_eq!(arts.as_array().unwrap().len(), 3);

    // tags and artifacts visible through both APIs.
    let tags = admin.json("/v2/library/busybox/tags/list").await;
    assert_eq!(tags["tags"], json!(["1.36"]));

    // delete by tag → gone.
    let (ok, err) = k.run(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &creds,
        &k.dst("library/busybox:1.36"),
    ]);
    assert!(ok, "delete: {err}");
    let (ok, _) = k.run(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &k.dst("library/busybox:1.36"),
    ]);
    assert!(!ok, "deleted image is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_robots_are_enforced() {
    let k = Kit::new();
    let admin = k.srv.admin();
    admin.create_project("private", false).await;
    admin.create_user("guest1").await;
    admin.create_user("dev1").await;
    admin.create_user("outsider").await;
    admin.add_member("private", "guest1", 3).await;
    admin.add_member("private", "dev1", 2).await;
    let src = k.src("busybox");
    let dst = k.dst("private/busybox:1");

    // Unauthenticated push refused.
    let (ok, err) = k.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &src,
        &dst,
    ]);
    assert!(!ok, "anonymous push must fail");
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );
    // Guest push refused.
    let (ok, err) = k.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "guest1:Passw0rd!",
        &src,
        &dst,
    ]);
    assert!(!ok, "guest push must fail: {err}");
    // Developer push allowed.
    let (ok, err) = k.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "dev1:Passw0rd!",
        &src,
        &dst,
    ]);
    assert!(ok, "developer push: {err}");
    // Guest pull allowed.
    let (ok, err) = k.run(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "guest1:Passw0rd!",
        &dst,
    ]);
    assert!(ok, "guest pull: {err}");
    // Non-member and anonymous refused on a private project.
    let (ok, _) = k.run(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "outsider:Passw0rd!",
        &dst,
    ]);
    assert!(!ok, "non-member must not pull a private project");
    let (ok, _) = k.run(&["inspect", "--tls-verify=false", "--no-creds", &dst]);
    assert!(!ok, "anonymous must not pull a private project");
    // Developer may not delete (maintainer and up).
    let (ok, _) = k.run(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        "dev1:Passw0rd!",
        &dst,
    ]);
    assert!(!ok, "developer must not delete");

    // A robot limited to pull.
    let r = admin
        .post_json(
            "/api/v2.0/robots",
            json!({"name": "puller", "level": "project", "duration": 1, "permissions": [
                {"kind": "project", "namespace": "private", "access": [{"resource": "repository", "action": "pull"}]}
            ]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let robot: serde_json::Value = r.json().await.unwrap();
    let rcreds = format!(
        "{}:{}",
        robot["name"].as_str().unwrap(),
        robot["secret"].as_str().unwrap()
    );
    assert_eq!(robot["name"], "robot$private+puller");
    let (ok, err) = k.run(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &rcreds,
        &dst,
        &format!("oci:{}:x", k.tmp.path().join("rob").display()),
    ]);
    assert!(ok, "robot pull: {err}");
    let (ok, _) = k.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &rcreds,
        &src,
        &k.dst("private/other:1"),
    ]);
    assert!(!ok, "pull-only robot must not push");

    // The audit log saw the pushes and pulls, with who and from where.
    let logs = wait_until(
        "audit records",
        std::time::Duration::from_secs(5),
        || async {
            let v = admin.json("/api/v2.0/audit-logs?page_size=100").await;
            let a = v.as_array().unwrap().clone();
            (a.iter()
                .any(|l| l["operation"] == "pull" && l["username"] == "robot$private+puller"))
            .then_some(a)
        },
    )
    .await;
    assert!(logs.iter().any(|l| l["operation"] == "push"
        && l["username"] == "dev1"
        && l["client_ip"] == "127.0.0.1"));
    assert!(logs
        .iter()
        .any(|l| l["operation"] == "pull" && l["username"] == "guest1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_serves_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl");
    let srv = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(srv.base.starts_with("https://"));
    test_layout(&tmp.path().join("src"));
    // reqwest is built without TLS here: curl creates the project, skopeo is the TLS client.
    let out = std::process::Command::new("curl")
        .args([
            "-skf",
            "-u",
            &format!("admin:{ADMIN_PW}"),
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"{"project_name":"library"}"#)
        .arg(srv.url("/api/v2.0/projects"))
        .output()
        .unwrap();
    assert!(out.status.success(), "create project over https");
    let creds = format!("admin:{ADMIN_PW}");
    let dst = format!("docker://{}/library/bb:1", srv.host);
    let src = format!("oci:{}:busybox", tmp.path().join("src").display());
    let (ok, err) = skopeo(
        tmp.path(),
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &src,
            &dst,
        ],
    );
    assert!(ok, "push over TLS: {err}");
    let (ok, err) = skopeo(
        tmp.path(),
        &["inspect", "--tls-verify=false", "--creds", &creds, &dst],
    );
    assert!(ok, "inspect over TLS: {err}");
    // Plain HTTP to the TLS port is refused.
    let plain = std::process::Command::new("curl")
        .args(["-sf"])
        .arg(srv.url("/v2/").replace("https", "http"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
}
