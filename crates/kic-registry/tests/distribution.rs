//! Spec-level HTTP tests of OCI Distribution v1.1 against the running binary: every endpoint
//! family, with its error codes.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn setup() -> (Server, Api) {
    let srv = Server::start();
    let admin = srv.admin();
    admin.create_project("p", false).await;
    admin.create_project("pub", true).await;
    (srv, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn base_and_challenge() {
    let (srv, admin) = setup().await;
    let r = srv.client().get("/v2/").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        ch.starts_with(&format!("Bearer realm=\"{}/service/token\"", srv.base)),
        "{ch}"
    );
    assert!(ch.contains("service=\"kic-registry\""));
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    assert_eq!(admin.get("/v2/").await.status(), StatusCode::OK);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&srv.data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "data directory is private");
    let key = std::fs::metadata(srv.data.join("token.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key & 0o777, 0o600, "token key is private");
    assert_eq!(
        srv.client()
            .basic("admin", "wrong")
            .get("/v2/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // A pull of a private repository without credentials names the scope in its challenge.
    let r = srv.client().get("/v2/p/x/manifests/latest").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("scope=\"repository:p/x:pull\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_service_trims_actions() {
    let (srv, admin) = setup().await;
    admin.create_user("g").await;
    admin.add_member("p", "g", 3).await;
    let token = |api: Api, scope: &'static str| async move {
        let r = api
            .get(&format!(
                "/service/token?service=kic-registry&scope={scope}"
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["token"], v["access_token"]);
        let t = v["token"].as_str().unwrap().to_string();
        let claims = t.split('.').nth(1).unwrap().to_string();
        use base64::Engine;
        let c: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        (t, c["access"][0]["actions"].clone())
    };
    let anon = srv.client();
    assert_eq!(
        token(anon.clone(), "repository:pub/a:pull,push").await.1,
        json!(["pull"])
    );
    assert_eq!(
        token(anon.clone(), "repository:p/a:pull").await.1,
        json!([])
    );
    assert_eq!(
        token(admin.clone(), "repository:p/a:pull,push,delete")
            .await
            .1,
        json!(["pull", "push", "delete"])
    );
    let guest = srv.client().basic("g", "Passw0rd!");
    let (t, actions) = token(guest.clone(), "repository:p/a:pull,push").await;
    assert_eq!(actions, json!(["pull"]));
    assert_eq!(
        srv.client()
            .basic("g", "nope")
            .get("/service/token?scope=repository:p/a:pull")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // The pull-only token cannot start an upload: 401 with insufficient_scope.
    let r = srv
        .client()
        .req(Method::POST, "/v2/p/a/blobs/uploads/")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    // A push token works; a forged one does not.
    let (t, _) = token(admin.clone(), "repository:p/a:pull,push").await;
    let r = srv
        .client()
        .req(Method::POST, "/v2/p/a/blobs/uploads/")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let forged = format!("{}x", &t[..t.len() - 1]);
    let r = srv
        .client()
        .req(Method::POST, "/v2/p/a/blobs/uploads/")
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Any valid token opens /v2/, even an anonymous one.
    let (anon_t, _) = token(anon.clone(), "repository:pub/a:pull").await;
    let r = srv
        .client()
        .req(Method::GET, "/v2/")
        .bearer_auth(&anon_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Registry tokens do not open the Harbor API.
    let r = srv
        .client()
        .req(Method::GET, "/api/v2.0/users/current")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // OAuth2 password grant (docker login's first try).
    let r = srv
        .client()
        .req(Method::POST, "/service/token")
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PW),
            ("scope", "repository:p/a:pull"),
            ("service", "kic-registry"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_monolithic_chunked_streamed() {
    let (_srv, a) = setup().await;
    // Monolithic POST with digest.
    let d = a.push_blob("p/r", b"hello world").await;
    assert_eq!(
        a.get(&format!("/v2/p/r/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"hello world"
    );

    // POST then PUT with the whole body.
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("docker-upload-uuid"));
    let data = b"post-then-put";
    let r = a
        .req(Method::PUT, &format!("{loc}?digest={}", sha(data)))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], sha(data).as_str());
    assert_eq!(
        r.headers()["location"],
        format!("/v2/p/r/blobs/{}", sha(data)).as_str()
    );

    // Chunked: two PATCHes with Content-Range, status in between, an out-of-order chunk refused.
    let whole: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = a
        .req(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .header("content-range", "0-99999")
        .body(whole[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-99999");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-99999");
    let r = a
        .req(Method::PATCH, &loc)
        .header("content-range", "5-10")
        .body(vec![0u8; 6])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = a
        .req(Method::PATCH, &loc)
        .header("content-range", "100000-199999")
        .body(whole[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = a
        .req(Method::PUT, &format!("{loc}?digest={}", sha(&whole)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = a
        .get(&format!("/v2/p/r/blobs/{}", sha(&whole)))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &whole[..]);

    // Streamed PATCH without Content-Range.
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|i| Ok(vec![i as u8; 10_000])).collect();
    let all: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.as_ref().unwrap().clone())
        .collect();
    let r = a
        .req(Method::PATCH, &loc)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = a
        .req(Method::PUT, &format!("{loc}?digest={}", sha(&all)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Cancel.
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(a.delete(&loc).await.status(), StatusCode::NO_CONTENT);
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Wrong digest: refused, and the bytes never become readable.
    let r = a
        .req(
            Method::POST,
            &format!("/v2/p/r/blobs/uploads/?digest={}", sha(b"other")),
        )
        .body(b"mine".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/p/r/blobs/{}", sha(b"mine")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.req(Method::HEAD, &format!("/v2/p/r/blobs/{}", sha(b"other")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/?digest=sha256:nothex")
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Upload session ids from another repository are unknown here.
    let r = a
        .req(Method::POST, "/v2/p/r/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"]
        .to_str()
        .unwrap()
        .replace("/p/r/", "/p/other/");
    assert_eq!(a.get(&loc).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_get_range_mount_delete() {
    let (srv, a) = setup().await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let d = a.push_blob("p/r", &data).await;
    let r = a
        .req(Method::HEAD, &format!("/v2/p/r/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = a
        .req(Method::GET, &format!("/v2/p/r/blobs/{d}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = a
        .req(Method::GET, &format!("/v2/p/r/blobs/{d}"))
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[995..]);
    let r = a
        .req(Method::GET, &format!("/v2/p/r/blobs/{d}"))
        .header("range", "bytes=2000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = a.get(&format!("/v2/p/r/blobs/{}", sha(b"nope"))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // Not linked to another repository: invisible there.
    assert_eq!(
        a.get(&format!("/v2/p/elsewhere/blobs/{d}")).await.status(),
        StatusCode::NOT_FOUND
    );

    // Cross-repository mount.
    let r = a
        .req(
            Method::POST,
            &format!("/v2/pub/m/blobs/uploads/?mount={d}&from=p/r"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/pub/m/blobs/{d}").as_str()
    );
    assert_eq!(
        srv.client()
            .get(&format!("/v2/pub/m/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
    // A user who cannot read the source gets a plain upload session instead.
    a.create_user("u").await;
    a.create_project("mine", false).await;
    a.add_member("mine", "u", 2).await;
    let u = srv.client().basic("u", "Passw0rd!");
    let r = u
        .req(
            Method::POST,
            &format!("/v2/mine/x/blobs/uploads/?mount={d}&from=p/r"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        u.get(&format!("/v2/mine/x/blobs/{d}")).await.status(),
        StatusCode::NOT_FOUND
    );

    // Delete unlinks from one repository only.
    assert_eq!(
        a.delete(&format!("/v2/pub/m/blobs/{d}")).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        a.get(&format!("/v2/pub/m/blobs/{d}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get(&format!("/v2/p/r/blobs/{d}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.delete(&format!("/v2/pub/m/blobs/{d}")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_put_get_delete_and_errors() {
    let (_srv, a) = setup().await;
    let (m, _) = a.push_image_parts("p/img", b"layer-1").await;
    let md = sha(&m);
    let r = a.push_manifest("p/img", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    assert_eq!(
        r.headers()["location"],
        format!("/v2/p/img/manifests/{md}").as_str()
    );
    for reference in ["v1", md.as_str()] {
        let r = a.get(&format!("/v2/p/img/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
        let r = a
            .req(Method::HEAD, &format!("/v2/p/img/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], m.len().to_string().as_str());
    }
    // By digest: must match.
    assert_eq!(
        a.push_manifest("p/img", &md, OCI_MANIFEST, &m)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = a.push_manifest("p/img", &sha(b"x"), OCI_MANIFEST, &m).await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Unknown blobs, bad JSON, wrong media type, bad tag.
    let bad = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(b"nope"), "size": 4}, "layers": []});
    let r = a
        .push_manifest("p/img", "bad", OCI_MANIFEST, bad.to_string().as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = a
        .push_manifest("p/img", "bad", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = a
        .push_manifest(
            "p/img",
            "bad",
            "application/x-unknown",
            br#"{"schemaVersion":2}"#,
        )
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = a.push_manifest("p/img", "-bad-tag", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = a.get("/v2/p/img/manifests/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = a.get("/v2/NoCaps/img/manifests/v1").await;
    assert_eq!(error_code(r).await, "NAME_INVALID");
    let r = a
        .req(Method::POST, "/v2/p/img/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = a
        .push_manifest("nosuchproject/img", "v1", OCI_MANIFEST, &m)
        .await;
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    // Docker schema 2 manifest and manifest list.
    let (dm, _) = a.push_image_parts("p/dock", b"docker-layer").await;
    let mut dv: Value = serde_json::from_slice(&dm).unwrap();
    dv["mediaType"] = json!(DOCKER_MANIFEST);
    dv["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
    dv["layers"][0]["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
    let dm = serde_json::to_vec(&dv).unwrap();
    assert_eq!(
        a.push_manifest("p/dock", "amd64", DOCKER_MANIFEST, &dm)
            .await
            .status(),
        StatusCode::CREATED
    );
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": sha(&dm), "size": dm.len(), "platform": {"os": "linux", "architecture": "amd64"}}]});
    let lb = serde_json::to_vec(&list).unwrap();
    assert_eq!(
        a.push_manifest("p/dock", "latest", DOCKER_LIST, &lb)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        a.get("/v2/p/dock/manifests/latest").await.headers()["content-type"],
        DOCKER_LIST
    );
    // An index naming a manifest this repository lacks.
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(b"missing"), "size": 7}]});
    let r = a
        .push_manifest("p/dock", "broken", OCI_INDEX, idx.to_string().as_bytes())
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Delete by tag removes the tag only; by digest removes the manifest.
    a.push_manifest("p/img", "v2", OCI_MANIFEST, &m).await;
    assert_eq!(
        a.delete("/v2/p/img/manifests/v1").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        a.get("/v2/p/img/manifests/v1").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/v2/p/img/manifests/v2").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.delete(&format!("/v2/p/img/manifests/{md}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        a.get(&format!("/v2/p/img/manifests/{md}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/v2/p/img/manifests/v2").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.delete(&format!("/v2/p/img/manifests/{md}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_and_catalog_paginate() {
    let (srv, a) = setup().await;
    let (m, _) = a.push_image_parts("pub/t", b"l").await;
    for t in ["e", "a", "c", "b", "d"] {
        assert_eq!(
            a.push_manifest("pub/t", t, OCI_MANIFEST, &m).await.status(),
            StatusCode::CREATED
        );
    }
    let all = a.json("/v2/pub/t/tags/list").await;
    assert_eq!(
        all,
        json!({"name": "pub/t", "tags": ["a", "b", "c", "d", "e"]})
    );
    let r = a.get("/v2/pub/t/tags/list?n=2").await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/pub/t/tags/list?n=2&last=b>; rel=\"next\"");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["a", "b"]));
    let v = a.json("/v2/pub/t/tags/list?n=2&last=b").await;
    assert_eq!(v["tags"], json!(["c", "d"]));
    let r = a.get("/v2/pub/t/tags/list?n=2&last=d").await;
    assert!(!r.headers().contains_key("link"));
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["e"]));
    let r = a.get("/v2/pub/none/tags/list").await;
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    for repo in ["p/z", "p/y", "pub/x"] {
        a.push_manifest(
            repo,
            "1",
            OCI_MANIFEST,
            &a.push_image_parts(repo, b"l").await.0,
        )
        .await;
    }
    let v = a.json("/v2/_catalog").await;
    assert_eq!(v["repositories"], json!(["p/y", "p/z", "pub/t", "pub/x"]));
    let r = a.get("/v2/_catalog?n=3").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=3&last=pub/t>; rel=\"next\""
    );
    assert_eq!(
        a.json("/v2/_catalog?n=3&last=pub/t").await["repositories"],
        json!(["pub/x"])
    );
    // Anonymous callers see public repositories only.
    assert_eq!(
        srv.client().json("/v2/_catalog").await["repositories"],
        json!(["pub/t", "pub/x"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_with_artifact_type_filter() {
    let (_srv, a) = setup().await;
    let subject = a.push_image("p/app", "v1", b"app-layer").await;
    let empty = a.push_blob("p/app", b"{}").await;
    let mut digests = vec![];
    for (atype, payload) in [
        ("application/vnd.dev.cosign.sig", "sig"),
        ("application/spdx+json", "sbom"),
    ] {
        let blob = a.push_blob("p/app", payload.as_bytes()).await;
        let m = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": atype,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": blob, "size": payload.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
            "annotations": {"kind": payload},
        });
        let b = serde_json::to_vec(&m).unwrap();
        let r = a.push_manifest("p/app", &sha(&b), OCI_MANIFEST, &b).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["oci-subject"], subject.as_str());
        digests.push(sha(&b));
    }
    let r = a.get(&format!("/v2/p/app/referrers/{subject}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    let v: Value = r.json().await.unwrap();
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0]["artifactType"], "application/vnd.dev.cosign.sig");
    assert_eq!(ms[0]["annotations"]["kind"], "sig");
    let r = a
        .get(&format!(
            "/v2/p/app/referrers/{subject}?artifactType=application/spdx%2Bjson"
        ))
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], digests[1].as_str());
    // No referrers: an empty index, not an error.
    let v = a
        .json(&format!("/v2/p/app/referrers/{}", sha(b"none")))
        .await;
    assert_eq!(v["manifests"], json!([]));
    assert_eq!(
        error_code(a.get("/v2/p/app/referrers/sha256:bad").await).await,
        "DIGEST_INVALID"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_of_the_same_blob() {
    let (_srv, a) = setup().await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let d = sha(&data);
    let mut tasks = vec![];
    for i in 0..8 {
        let (a, data, d) = (a.clone(), data.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let repo = if i % 2 == 0 {
                "p/same".to_string()
            } else {
                format!("p/r{i}")
            };
            let r = a
                .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            let mut loc = r.headers()["location"].to_str().unwrap().to_string();
            for (n, chunk) in data.chunks(700_000).enumerate() {
                let start = n * 700_000;
                let r = a
                    .req(Method::PATCH, &loc)
                    .header(
                        "content-range",
                        format!("{start}-{}", start + chunk.len() - 1),
                    )
                    .body(chunk.to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                loc = r.headers()["location"].to_str().unwrap().to_string();
            }
            let r = a
                .req(Method::PUT, &format!("{loc}?digest={d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            repo
        }));
    }
    for t in tasks {
        let repo = t.await.unwrap();
        let got = a
            .get(&format!("/v2/{repo}/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha(&got), d);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn external_url_names_the_token_realm() {
    let srv = Server::start_with(&["--external-url", "https://reg.example.test/"]);
    let r = srv.client().get("/v2/").await;
    let ch = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        ch.starts_with("Bearer realm=\"https://reg.example.test/service/token\""),
        "{ch}"
    );
    let info = srv.client().json("/api/v2.0/systeminfo").await;
    assert_eq!(info["registry_url"], "reg.example.test");
    assert_eq!(info["external_url"], "https://reg.example.test");
}
