//! The Harbor-compatible REST API (`/api/v2.0`): every endpoint family, Harbor's conventions
//! (pagination headers, `q=` filters, `201` + `Location`, error bodies) and its permission matrix.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn err(r: reqwest::Response) -> (StatusCode, String) {
    let s = r.status();
    let v: Value = r.json().await.unwrap();
    (
        s,
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn system_endpoints() {
    let srv = Server::start();
    let a = srv.admin();
    assert_eq!(
        srv.client()
            .get("/api/v2.0/ping")
            .await
            .text()
            .await
            .unwrap(),
        "Pong"
    );
    let h = srv.client().json("/api/v2.0/health").await;
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["components"].as_array().unwrap().len(), 3);
    let i = srv.client().json("/api/v2.0/systeminfo").await;
    assert_eq!(i["auth_mode"], "db_auth");
    assert_eq!(i["registry_url"], srv.host.as_str());
    assert_eq!(
        srv.client().get("/api/v2.0/statistics").await.status(),
        StatusCode::UNAUTHORIZED
    );
    a.create_project("pub", true).await;
    a.create_project("priv", false).await;
    a.push_image("priv/x", "1", b"l").await;
    let s = a.json("/api/v2.0/statistics").await;
    assert_eq!(s["total_project_count"], 2);
    assert_eq!(s["private_repo_count"], 1);
    assert_eq!(s["public_project_count"], 1);
    assert!(s["total_storage_consumption"].as_i64().unwrap() > 0);
    let (code, c) = err(a.get("/api/v2.0/nothing-here").await).await;
    assert_eq!((code, c.as_str()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread")]
async fn users_crud_and_pagination() {
    let srv = Server::start();
    let a = srv.admin();
    for i in 0..12 {
        a.create_user(&format!("user{i:02}")).await;
    }
    let (code, c) = err(a
        .post_json(
            "/api/v2.0/users",
            json!({"username": "user00", "password": "Passw0rd!", "email": "x@y"}),
        )
        .await)
    .await;
    assert_eq!((code, c.as_str()), (StatusCode::CONFLICT, "CONFLICT"));
    let (code, _) = err(a
        .post_json(
            "/api/v2.0/users",
            json!({"username": "short", "password": "x"}),
        )
        .await)
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let r = a
        .post_json(
            "/api/v2.0/users",
            json!({"username": "anonymous", "password": "Passw0rd!"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = a.get("/api/v2.0/users?page=1&page_size=5").await;
    assert_eq!(r.headers()["x-total-count"], "13");
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("</api/v2.0/users?page=2&page_size=5>; rel=\"next\""),
        "{link}"
    );
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        5
    );
    let r = a.get("/api/v2.0/users?page=3&page_size=5").await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("rel=\"prev\"") && !link.contains("rel=\"next\""));
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        3
    );
    let v = a.json("/api/v2.0/users?q=username%3D~user1").await;
    assert_eq!(v.as_array().unwrap().len(), 2);

    let u = srv.client().basic("user01", "Passw0rd!");
    assert_eq!(
        u.get("/api/v2.0/users").await.status(),
        StatusCode::FORBIDDEN
    );
    let me = u.json("/api/v2.0/users/current").await;
    assert_eq!(me["username"], "user01");
    let id = me["user_id"].as_i64().unwrap();
    assert_eq!(
        u.put_json(&format!("/api/v2.0/users/{id}"), json!({"realname": "One"}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.json(&format!("/api/v2.0/users/{id}")).await["realname"],
        "One"
    );
    let r = u
        .put_json(
            &format!("/api/v2.0/users/{id}/password"),
            json!({"old_password": "wrong", "new_password": "NewPassw0rd"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = u
        .put_json(
            &format!("/api/v2.0/users/{id}/password"),
            json!({"old_password": "Passw0rd!", "new_password": "NewPassw0rd"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        u.get("/api/v2.0/users/current").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let u = srv.client().basic("user01", "NewPassw0rd");
    assert_eq!(
        u.get("/api/v2.0/users/current").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.put_json(
            &format!("/api/v2.0/users/{id}/sysadmin"),
            json!({"sysadmin_flag": true})
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(u.get("/api/v2.0/users").await.status(), StatusCode::OK);
    assert_eq!(
        u.json("/api/v2.0/users/search?username=user0")
            .await
            .as_array()
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        a.delete(&format!("/api/v2.0/users/{id}")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.get(&format!("/api/v2.0/users/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        u.get("/api/v2.0/users/current").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn projects_members_and_roles() {
    let srv = Server::start();
    let a = srv.admin();
    let id = a.create_project("alpha", false).await;
    a.create_project("beta", true).await;
    let r = a
        .req(Method::POST, "/api/v2.0/projects")
        .header("X-Resource-Name-In-Location", "true")
        .json(&json!({"project_name": "gamma", "public": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/api/v2.0/projects/gamma");
    let (code, c) = err(a
        .post_json("/api/v2.0/projects", json!({"project_name": "alpha"}))
        .await)
    .await;
    assert_eq!((code, c.as_str()), (StatusCode::CONFLICT, "CONFLICT"));
    let (code, _) = err(a
        .post_json("/api/v2.0/projects", json!({"project_name": "Bad Name"}))
        .await)
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.req(Method::HEAD, "/api/v2.0/projects?project_name=alpha")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.req(Method::HEAD, "/api/v2.0/projects?project_name=zzz")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let p = a.json(&format!("/api/v2.0/projects/{id}")).await;
    assert_eq!(p["name"], "alpha");
    assert_eq!(p["metadata"]["public"], "false");
    assert_eq!(a.json("/api/v2.0/projects/alpha").await["project_id"], id);
    let r = a.get("/api/v2.0/projects?page_size=2").await;
    assert_eq!(r.headers()["x-total-count"], "3");
    assert!(r.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"next\""));
    assert_eq!(
        a.json("/api/v2.0/projects?q=name%3D~alp")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.json("/api/v2.0/projects?public=true")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Anonymous: public projects only; a private one is 401.
    let anon = srv.client();
    assert_eq!(
        anon.json("/api/v2.0/projects")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        anon.get("/api/v2.0/projects/alpha").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Toggle metadata.public.
    assert_eq!(
        a.put_json(
            "/api/v2.0/projects/alpha",
            json!({"metadata": {"public": "true"}})
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        anon.json("/api/v2.0/projects/alpha").await["metadata"]["public"],
        "true"
    );
    a.put_json(
        "/api/v2.0/projects/alpha",
        json!({"metadata": {"public": "false"}}),
    )
    .await;

    // Members with each role.
    for (user, role) in [("pa", 1), ("dev", 2), ("gst", 3), ("mnt", 4), ("lim", 5)] {
        a.create_user(user).await;
        a.add_member("alpha", user, role).await;
    }
    a.create_user("nobody").await;
    let who = |u: &str| srv.client().basic(u, "Passw0rd!");
    let members = a.json("/api/v2.0/projects/alpha/members").await;
    let names: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["entity_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "pa", "dev", "gst", "mnt", "lim"]);
    assert_eq!(members[2]["role_name"], "developer");
    // Who may list members and logs: not limited guests, not strangers.
    for (u, status) in [
        ("pa", 200),
        ("mnt", 200),
        ("dev", 200),
        ("gst", 200),
        ("lim", 403),
        ("nobody", 403),
    ] {
        assert_eq!(
            who(u)
                .get("/api/v2.0/projects/alpha/members")
                .await
                .status()
                .as_u16(),
            status,
            "{u} members"
        );
        assert_eq!(
            who(u)
                .get("/api/v2.0/projects/alpha/logs")
                .await
                .status()
                .as_u16(),
            status,
            "{u} logs"
        );
    }
    assert_eq!(
        who("lim")
            .get("/api/v2.0/projects/alpha/repositories")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        who("nobody").get("/api/v2.0/projects/alpha").await.status(),
        StatusCode::FORBIDDEN
    );
    // Only project admins manage members.
    let body = json!({"role_id": 3, "member_user": {"username": "nobody"}});
    assert_eq!(
        who("mnt")
            .post_json("/api/v2.0/projects/alpha/members", body.clone())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = who("pa")
        .post_json("/api/v2.0/projects/alpha/members", body.clone())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        who("pa")
            .post_json("/api/v2.0/projects/alpha/members", body)
            .await
            .status(),
        StatusCode::CONFLICT
    );
    let mid = loc.rsplit('/').next().unwrap();
    assert_eq!(
        a.json(&format!("/api/v2.0/projects/alpha/members/{mid}"))
            .await["role_name"],
        "guest"
    );
    assert_eq!(
        who("pa")
            .put_json(
                &format!("/api/v2.0/projects/alpha/members/{mid}"),
                json!({"role_id": 2})
            )
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.json(&format!("/api/v2.0/projects/alpha/members/{mid}"))
            .await["role_id"],
        2
    );
    assert_eq!(
        who("pa")
            .put_json(
                &format!("/api/v2.0/projects/alpha/members/{mid}"),
                json!({"role_id": 9})
            )
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        who("pa")
            .delete(&format!("/api/v2.0/projects/alpha/members/{mid}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        who("nobody").get("/api/v2.0/projects/alpha").await.status(),
        StatusCode::FORBIDDEN
    );
    // Only project admins change or delete the project.
    assert_eq!(
        who("mnt")
            .put_json(
                "/api/v2.0/projects/alpha",
                json!({"metadata": {"public": "true"}})
            )
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let summary = who("gst").json("/api/v2.0/projects/alpha/summary").await;
    assert_eq!(summary["developer_count"], 1);

    // Delete: refused while it has repositories.
    a.push_image("alpha/app", "1", b"x").await;
    assert_eq!(
        a.delete("/api/v2.0/projects/alpha").await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        a.delete("/api/v2.0/projects/alpha/repositories/app")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.delete("/api/v2.0/projects/alpha").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.get("/api/v2.0/projects/alpha").await.status(),
        StatusCode::NOT_FOUND
    );

    // The audit log recorded the changes.
    let logs = wait_until(
        "project audit",
        std::time::Duration::from_secs(5),
        || async {
            let v = a
                .json("/api/v2.0/audit-logs?q=resource_type%3Dproject&page_size=50")
                .await;
            (v.as_array()
                .unwrap()
                .iter()
                .any(|l| l["operation"] == "delete"))
            .then_some(v)
        },
    )
    .await;
    let ops: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["operation"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"create") && ops.contains(&"update") && ops.contains(&"delete"),
        "{ops:?}"
    );
    let members = a
        .json("/api/v2.0/audit-logs?q=resource_type%3Dmember,operation%3D{create%20delete}")
        .await;
    assert!(members.as_array().unwrap().len() >= 7);
    // Fuzzy, time range, paging with totals, unknown keys.
    let r = a.get("/api/v2.0/audit-logs?q=resource%3D~ALPHA,op_time%3D%5B2000-01-01%2000%3A00%3A00~2100-01-01%2000%3A00%3A00%5D&page_size=2").await;
    let total: usize = r.headers()["x-total-count"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= 8, "{total}");
    assert!(r.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"next\""));
    let page: Value = r.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert!(
        page[0]["id"].as_i64() > page[1]["id"].as_i64(),
        "newest first"
    );
    let none = a.json("/api/v2.0/audit-logs?q=op_time%3D%5B2000-01-01%2000%3A00%3A00~2001-01-01%2000%3A00%3A00%5D").await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    assert_eq!(
        a.get("/api/v2.0/audit-logs?q=bogus%3D1").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_artifacts_tags() {
    let srv = Server::start();
    let a = srv.admin();
    a.create_project("lib", false).await;
    let d1 = a.push_image("lib/team/app", "v1", b"one").await;
    let d2 = a.push_image("lib/team/app", "v2", b"two").await;
    a.push_image("lib/other", "latest", b"three").await;
    let repos = a.json("/api/v2.0/projects/lib/repositories").await;
    let names: Vec<&str> = repos
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["lib/other", "lib/team/app"]);
    let r = a
        .json("/api/v2.0/projects/lib/repositories/team%252Fapp")
        .await;
    assert_eq!(r["artifact_count"], 2);
    assert_eq!(
        a.put_json(
            "/api/v2.0/projects/lib/repositories/team%252Fapp",
            json!({"description": "d"})
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.json("/api/v2.0/projects/lib/repositories/team%252Fapp")
            .await["description"],
        "d"
    );
    let arts = a
        .json("/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts?with_tag=true")
        .await;
    assert_eq!(arts.as_array().unwrap().len(), 2);
    assert_eq!(arts[0]["digest"], d2.as_str());
    assert_eq!(arts[0]["tags"][0]["name"], "v2");
    assert_eq!(arts[0]["type"], "IMAGE");
    let r = a
        .get("/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts?page=2&page_size=1")
        .await;
    assert_eq!(r.headers()["x-total-count"], "2");
    assert!(r.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"prev\""));
    let p2: Value = r.json().await.unwrap();
    assert_eq!(p2[0]["digest"], d1.as_str());
    let one = a
        .json("/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/v1")
        .await;
    assert_eq!(one["digest"], d1.as_str());
    assert_eq!(
        a.json(&format!(
            "/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/{d1}"
        ))
        .await["id"],
        one["id"]
    );
    // Tags: add, list, conflict, delete.
    let base = format!("/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/{d1}/tags");
    assert_eq!(
        a.post_json(&base, json!({"name": "stable"})).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        a.post_json(&base, json!({"name": "stable"})).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(a.json(&base).await.as_array().unwrap().len(), 2);
    assert_eq!(
        a.get("/v2/lib/team/app/manifests/stable").await.headers()["docker-content-digest"],
        d1.as_str()
    );
    assert_eq!(
        a.delete(&format!("{base}/stable")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.delete(&format!("{base}/stable")).await.status(),
        StatusCode::NOT_FOUND
    );
    // Delete an artifact.
    assert_eq!(
        a.delete(&format!(
            "/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/{d1}"
        ))
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.get("/v2/lib/team/app/manifests/v1").await.status(),
        StatusCode::NOT_FOUND
    );
    let (code, c) = err(a
        .get("/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/v1")
        .await)
    .await;
    assert_eq!((code, c.as_str()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    // A developer may not delete artifacts; a guest may not add tags.
    a.create_user("dev").await;
    a.add_member("lib", "dev", 2).await;
    let dev = srv.client().basic("dev", "Passw0rd!");
    assert_eq!(
        dev.delete(&format!(
            "/api/v2.0/projects/lib/repositories/team%252Fapp/artifacts/{d2}"
        ))
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        dev.json("/api/v2.0/repositories")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let pulls = wait_until(
        "pull counter",
        std::time::Duration::from_secs(10),
        || async {
            a.get("/v2/lib/other/manifests/latest").await;
            let n = a.json("/api/v2.0/projects/lib/repositories/other").await["pull_count"]
                .as_i64()
                .unwrap();
            (n > 0).then_some(n)
        },
    )
    .await;
    assert!(pulls > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn robots_lifecycle() {
    let srv = Server::start();
    let a = srv.admin();
    let pid = a.create_project("ci", false).await;
    a.create_user("owner").await;
    a.add_member("ci", "owner", 1).await;
    a.create_user("dev").await;
    a.add_member("ci", "dev", 2).await;
    let owner = srv.client().basic("owner", "Passw0rd!");
    let perms = json!([{"kind": "project", "namespace": "ci", "access": [
        {"resource": "repository", "action": "pull"}, {"resource": "repository", "action": "push"}]}]);
    // Project admin creates a project robot; a developer may not; system robots need a sysadmin.
    let body = json!({"name": "builder", "level": "project", "duration": 30, "permissions": perms});
    assert_eq!(
        srv.client()
            .basic("dev", "Passw0rd!")
            .post_json("/api/v2.0/robots", body.clone())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = owner.post_json("/api/v2.0/robots", body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/api/v2.0/robots/"));
    let rb: Value = r.json().await.unwrap();
    let (name, secret, id) = (
        rb["name"].as_str().unwrap().to_string(),
        rb["secret"].as_str().unwrap().to_string(),
        rb["id"].as_i64().unwrap(),
    );
    assert_eq!(name, "robot$ci+builder");
    let exp = rb["expires_at"].as_i64().unwrap();
    assert!(
        (exp - chrono::Utc::now().timestamp() - 30 * 86400).abs() < 60,
        "expires in 30 days"
    );
    assert_eq!(
        owner.post_json("/api/v2.0/robots", body).await.status(),
        StatusCode::CONFLICT
    );
    let sys = json!({"name": "sys", "level": "system", "duration": -1, "permissions": perms});
    assert_eq!(
        owner
            .post_json("/api/v2.0/robots", sys.clone())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.post_json("/api/v2.0/robots", sys).await.status(),
        StatusCode::CREATED
    );

    // The robot pushes and pulls through basic auth.
    let robot = srv.client().basic(&name, &secret);
    robot.push_image("ci/app", "1", b"robot-layer").await;
    assert_eq!(
        robot.get("/v2/ci/app/manifests/1").await.status(),
        StatusCode::OK
    );
    // Its secret is not stored in clear anywhere in the metadata store.
    let hay = match &srv.pg {
        Some(pg) => pg.dump(),
        None => {
            let db = std::fs::read(srv.data.join("registry.db")).unwrap();
            let wal = std::fs::read(srv.data.join("registry.db-wal")).unwrap_or_default();
            [db, wal].concat()
        }
    };
    assert!(
        hay.windows(13).any(|w| w == b"robot$ci+buil"),
        "the dump holds the robots"
    );
    assert!(
        !hay.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret stored in clear"
    );

    // List by project, get, update (disable), refresh secret, delete.
    let list = owner
        .json(&format!(
            "/api/v2.0/robots?q=Level%3Dproject,ProjectID%3D{pid}"
        ))
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        owner.get("/api/v2.0/robots").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.json("/api/v2.0/robots").await.as_array().unwrap().len(),
        2
    );
    let got = owner.json(&format!("/api/v2.0/robots/{id}")).await;
    assert_eq!(got["permissions"][0]["namespace"], "ci");
    assert!(got.get("secret").is_none());
    let mut upd = got.clone();
    upd["disable"] = json!(true);
    assert_eq!(
        owner
            .put_json(&format!("/api/v2.0/robots/{id}"), upd)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        robot.get("/v2/ci/app/manifests/1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut upd = got.clone();
    upd["disable"] = json!(false);
    upd["permissions"][0]["access"] = json!([{"resource": "repository", "action": "pull"}]);
    assert_eq!(
        owner
            .put_json(&format!("/api/v2.0/robots/{id}"), upd)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        robot.get("/v2/ci/app/manifests/1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        robot
            .req(Method::POST, "/v2/ci/app/blobs/uploads/")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = owner
        .req(Method::PATCH, &format!("/api/v2.0/robots/{id}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new_secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        robot.get("/v2/ci/app/manifests/1").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        srv.client()
            .basic(&name, &new_secret)
            .get("/v2/ci/app/manifests/1")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        owner
            .delete(&format!("/api/v2.0/robots/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        srv.client()
            .basic(&name, &new_secret)
            .get("/v2/ci/app/manifests/1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let robots_log = wait_until("robot audit", std::time::Duration::from_secs(5), || async {
        let v = a
            .json("/api/v2.0/audit-logs?q=resource_type%3Drobot&page_size=50")
            .await;
        (v.as_array().unwrap().len() >= 5).then_some(v)
    })
    .await;
    assert_eq!(robots_log[0]["operation"], "delete");
}
