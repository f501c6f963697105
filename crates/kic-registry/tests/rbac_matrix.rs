//! Walks Harbor's permission matrix: every role (and a stranger, and anonymous) against the
//! registry and API operations of a private project, through the running binary.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Who: limitedGuest, guest, developer, maintainer, projectAdmin, non-member, anonymous.
const WHO: [&str; 7] = ["lim", "gst", "dev", "mnt", "pa", "stranger", "anonymous"];

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_roles() {
    let srv = Server::start();
    let a = srv.admin();
    a.create_project("p", false).await;
    for (u, role) in [("lim", 5), ("gst", 3), ("dev", 2), ("mnt", 4), ("pa", 1)] {
        a.create_user(u).await;
        a.add_member("p", u, role).await;
    }
    a.create_user("stranger").await;
    let base = a.push_image("p/app", "base", b"base-layer").await;

    // (operation, which of WHO may do it: lim gst dev mnt pa stranger anon)
    let table: &[(&str, [bool; 7])] = &[
        ("get project", [true, true, true, true, true, false, false]),
        (
            "list members",
            [false, true, true, true, true, false, false],
        ),
        ("list logs", [false, true, true, true, true, false, false]),
        (
            "list repositories",
            [true, true, true, true, true, false, false],
        ),
        (
            "list artifacts",
            [true, true, true, true, true, false, false],
        ),
        (
            "pull manifest",
            [true, true, true, true, true, false, false],
        ),
        ("push blob", [false, false, true, true, true, false, false]),
        ("add tag", [false, false, true, true, true, false, false]),
        (
            "delete tag",
            [false, false, false, true, true, false, false],
        ),
        (
            "delete artifact",
            [false, false, false, true, true, false, false],
        ),
        (
            "delete manifest (registry)",
            [false, false, false, true, true, false, false],
        ),
        (
            "copy artifact",
            [false, false, true, true, true, false, false],
        ),
        (
            "update project",
            [false, false, false, false, true, false, false],
        ),
        (
            "add member",
            [false, false, false, false, true, false, false],
        ),
        (
            "list project robots",
            [false, true, true, true, true, false, false],
        ),
        (
            "create project robot",
            [false, false, false, false, true, false, false],
        ),
    ];
    let mut failures = vec![];
    for (op, allowed) in table {
        for (i, who) in WHO.iter().enumerate() {
            let api = if *who == "anonymous" {
                srv.client()
            } else {
                srv.client().basic(who, "Passw0rd!")
            };
            // Fresh targets for operations that consume them.
            let tag = format!("t-{}-{i}", op.replace(' ', "-").replace(['(', ')'], ""));
            let fresh = a
                .push_image("p/app", &tag, format!("{op} {who}").as_bytes())
                .await;
            let status = match *op {
                "get project" => api.get("/api/v2.0/projects/p").await.status(),
                "list members" => api.get("/api/v2.0/projects/p/members").await.status(),
                "list logs" => api.get("/api/v2.0/projects/p/logs").await.status(),
                "list repositories" => api.get("/api/v2.0/projects/p/repositories").await.status(),
                "list artifacts" => api.get("/api/v2.0/projects/p/repositories/app/artifacts").await.status(),
                "pull manifest" => api.get("/v2/p/app/manifests/base").await.status(),
                "push blob" => api.req(Method::POST, "/v2/p/app/blobs/uploads/").send().await.unwrap().status(),
                "add tag" => {
                    api.post_json(&format!("/api/v2.0/projects/p/repositories/app/artifacts/{base}/tags"), json!({"name": format!("x{i}{}", op.len())}))
                        .await
                        .status()
                }
                "delete tag" => api.delete(&format!("/api/v2.0/projects/p/repositories/app/artifacts/{fresh}/tags/{tag}")).await.status(),
                "delete artifact" => api.delete(&format!("/api/v2.0/projects/p/repositories/app/artifacts/{fresh}")).await.status(),
                "delete manifest (registry)" => api.delete(&format!("/v2/p/app/manifests/{fresh}")).await.status(),
                "copy artifact" => api
                    .req(Method::POST, "/api/v2.0/projects/p/repositories/copy/artifacts?from=p/app:base")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                "update project" => api.put_json("/api/v2.0/projects/p", json!({"metadata": {"public": "false"}})).await.status(),
                "add member" => {
                    a.create_user(&format!("new{i}")).await;
                    api.post_json("/api/v2.0/projects/p/members", json!({"role_id": 3, "member_user": {"username": format!("new{i}")}}))
                        .await
                        .status()
                }
                "list project robots" => api.get("/api/v2.0/robots?q=Level%3Dproject,ProjectID%3D1").await.status(),
                "create project robot" => {
                    api.post_json("/api/v2.0/robots", json!({"name": format!("r{i}"), "level": "project", "duration": -1,
                        "permissions": [{"kind": "project", "namespace": "p", "access": [{"resource": "repository", "action": "pull"}]}]}))
                        .await
                        .status()
                }
                other => panic!("no operation {other}"),
            };
            let ok = status.is_success();
            let expected_denial = if *who == "anonymous" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            if ok != allowed[i]
                || (!ok
                    && status != expected_denial
                    && !(op.contains("manifest") || op.contains("blob")))
            {
                failures.push(format!("{op} as {who}: {status} (allowed: {})", allowed[i]));
            }
            if !ok
                && (op.contains("manifest") || op.contains("blob"))
                && *who != "anonymous"
                && allowed[i]
            {
                failures.push(format!("{op} as {who}: {status}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix violations:\n{}",
        failures.join("\n")
    );
}
