//! Pulls from a real CNCF Distribution registry started by each test on a free loopback port,
//! with images pushed by skopeo.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kic_image::mkimage::PushCompression;
use kic_image::spec::{self, ManifestKind};
use kic_image::{ErrorKind, ImageError, ImageStore, PullOptions, PullProgress};

const TOOLS: &[&str] = &["skopeo", "docker-registry", "mke2fs", "debugfs", "busybox"];

type Log = Arc<Mutex<Vec<PullProgress>>>;

fn recorder() -> (Log, impl Fn(PullProgress) + Send + Sync) {
    let log: Log = Arc::default();
    let l = log.clone();
    (log, move |p| l.lock().unwrap().push(p))
}

fn statuses(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|p| p.status.clone())
        .collect()
}

fn tmp_is_empty(store_root: &std::path::Path) -> bool {
    std::fs::read_dir(store_root.join("tmp")).unwrap().count() == 0
}

/// The layer media types of the manifest the store kept for an image.
fn layer_media_types(root: &std::path::Path, rec: &kic_image::ImageRecord) -> Vec<String> {
    let d = rec.manifest_digest.strip_prefix("sha256:").unwrap();
    let body = std::fs::read(root.join("blobs/sha256").join(d)).unwrap();
    match spec::parse_manifest(&body, None).unwrap() {
        ManifestKind::Image(m) => m.layers.into_iter().map(|l| l.media_type).collect(),
        ManifestKind::Index(_) => panic!("expected a manifest"),
    }
}

#[tokio::test]
async fn pull_by_tag_by_digest_and_shared_layers() {
    if !have_tools("pull_by_tag_by_digest_and_shared_layers", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "busybox:latest", PushCompression::Keep);
    reg.push(&layout, "other/bb:1", PushCompression::Keep);

    let root = tmp.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let opts = PullOptions::default();
    let (log, progress) = recorder();
    let name = format!("{}/busybox:latest", reg.host());
    let rec = store.pull(&name, &opts, &progress).await.unwrap();
    let st = statuses(&log);
    for want in [
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
    ] {
        assert!(st.iter().any(|s| s == want), "no {want:?} in {st:?}");
    }
    assert!(log.lock().unwrap().iter().all(|p| p.id.len() == 12));
    assert_eq!(rec.repo_tags, vec![name.clone()]);
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/busybox@{}", reg.host(), rec.manifest_digest)]
    );
    assert!(rec.disk.exists());
    assert!(debugfs(&rec.disk, "cat /etc/group").contains("user:x:1000:"));
    assert_eq!(
        layer_media_types(&root, &rec),
        vec![spec::MT_OCI_LAYER_GZIP]
    );
    assert!(tmp_is_empty(&root));

    // By digest: same image, nothing downloaded again.
    let (log, progress) = recorder();
    let by_digest = format!("{}/busybox@{}", reg.host(), rec.manifest_digest);
    let rec2 = store.pull(&by_digest, &opts, &progress).await.unwrap();
    assert_eq!(rec2.id, rec.id);
    assert_eq!(statuses(&log), vec!["Already exists"]);
    assert_eq!(store.get(&by_digest).unwrap().id, rec.id);

    // Another repository with the same layers: "Already exists".
    let (log, progress) = recorder();
    let other = format!("{}/other/bb:1", reg.host());
    let rec3 = store.pull(&other, &opts, &progress).await.unwrap();
    assert_eq!(rec3.id, rec.id);
    assert_eq!(statuses(&log), vec!["Already exists"]);
    let mut tags = store.get(&rec.id).unwrap().repo_tags;
    tags.sort();
    assert_eq!(tags, vec![name.clone(), other.clone()]);

    // Lookups, tag, remove.
    store.tag(&rec.id[7..19], "mybox").unwrap();
    assert_eq!(store.get("mybox:latest").unwrap().id, rec.id);
    assert!(store.get("docker.io/library/mybox").is_ok());
    assert_eq!(
        store.get("nope").unwrap_err().to_string(),
        "No such image: nope"
    );
    let e = store.remove(&rec.id).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        store.remove("mybox").unwrap(),
        vec!["Untagged: mybox:latest"]
    );
    store.remove(&other).unwrap();
    let out = store.remove(&name).unwrap();
    assert_eq!(out.last().unwrap(), &format!("Deleted: {}", rec.id));
    assert!(out.contains(&format!("Untagged: {by_digest}")), "{out:?}");
    assert!(store.list().unwrap().is_empty());
    assert!(!rec.disk.exists());
}

#[tokio::test]
async fn pull_zstd_and_uncompressed_layers() {
    if !have_tools("pull_zstd_and_uncompressed_layers", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "bb:zstd", PushCompression::Zstd);
    let plain = tmp.path().join("plain");
    copy_dir(&layout, &plain);
    kic_image::mkimage::decompress_layout(&plain, "latest").unwrap();
    reg.upload_layout(&plain, "bb", "plain").await;
    let root = tmp.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let (_, progress) = recorder();
    let z = store
        .pull(
            &format!("{}/bb:zstd", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(layer_media_types(&root, &z), vec![spec::MT_OCI_LAYER_ZSTD]);
    assert!(debugfs(&z.disk, "stat /bin/busybox").contains("Links:"));
    store.remove(&format!("{}/bb:zstd", reg.host())).unwrap();
    let p = store
        .pull(
            &format!("{}/bb:plain", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(layer_media_types(&root, &p), vec![spec::MT_OCI_LAYER_TAR]);
    assert!(debugfs(&p.disk, "cat /etc/passwd").contains("root:x:0:0"));
    // Same config, so the same image id whatever the compression.
    assert_eq!(p.id, z.id);

    // Docker schema 2 (what `docker push` writes).
    let st = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/bb:v2s2", reg.host()))
        .status()
        .unwrap();
    assert!(st.success());
    let d = store
        .pull(
            &format!("{}/bb:v2s2", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(
        layer_media_types(&root, &d),
        vec![spec::MT_DOCKER_LAYER_GZIP]
    );
    assert!(debugfs(&d.disk, "cat /etc/passwd").contains("root:x:0:0"));
}

#[tokio::test]
async fn corrupt_layer_or_manifest_is_refused() {
    if !have_tools("corrupt_layer_or_manifest_is_refused", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "bad:layer", PushCompression::Keep);
    let root = tmp.path().join("images");
    let store = ImageStore::open(&root).unwrap();
    let (_, progress) = recorder();

    // Flip a byte in the middle of the stored layer (same size).
    let rec_layout: spec::Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = rec_layout.manifests[0].digest.clone();
    let mbody = std::fs::read(layout.join("blobs/sha256").join(mdig.hex())).unwrap();
    let ManifestKind::Image(m) = spec::parse_manifest(&mbody, None).unwrap() else {
        panic!()
    };
    let data = reg.blob_data(m.layers[0].digest.as_str());
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let err = store
        .pull(
            &format!("{}/bad:layer", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(m.layers[0].digest.as_str()),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(tmp_is_empty(&root));
    assert!(!root
        .join("blobs/sha256")
        .join(m.layers[0].digest.hex())
        .exists());

    // A manifest whose bytes no longer match the digest the registry announces.
    let reg2 = Registry::start(None);
    reg2.push(&layout, "bad:manifest", PushCompression::Keep);
    let data = reg2.blob_data(mdig.as_str());
    let mut body = std::fs::read(&data).unwrap();
    body.extend_from_slice(b"\n");
    std::fs::write(&data, &body).unwrap();
    let err = store
        .pull(
            &format!("{}/bad:manifest", reg2.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());

    // Unknown tag: Docker's wording.
    let err = store
        .pull(
            &format!("{}/bad:nope", reg2.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().starts_with("manifest for "), "{err}");
}

#[tokio::test]
async fn index_pull_picks_linux_amd64() {
    if !have_tools("index_pull_picks_linux_amd64", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = tmp.path().join("multi");
    kic_image::mkimage::multiarch(&layout, std::path::Path::new("/bin/busybox"), "latest").unwrap();
    reg.push(&layout, "multi:latest", PushCompression::Keep);
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let (_, progress) = recorder();
    let rec = store
        .pull(
            &format!("{}/multi:latest", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(rec.config.architecture, "amd64");
    assert!(debugfs(&rec.disk, "stat /bin/busybox").contains("Links:"));
    // The repo digest is the index's, as in Docker.
    let top: spec::Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(rec.manifest_digest, top.manifests[0].digest.as_str());
}

#[tokio::test]
async fn basic_auth_registry() {
    if !have_tools("basic_auth_registry", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(Some(("kic", "s3cret")));
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "private/bb:1", PushCompression::Keep);
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let (_, progress) = recorder();
    let name = format!("{}/private/bb:1", reg.host());
    let err = store
        .pull(&name, &PullOptions::default(), &progress)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().contains("docker login"), "{err}");
    let bad = PullOptions {
        credentials: Some(("kic".into(), "wrong".into())),
        ..Default::default()
    };
    let err = store.pull(&name, &bad, &progress).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let good = PullOptions {
        credentials: Some(("kic".into(), "s3cret".into())),
        ..Default::default()
    };
    let rec = store.pull(&name, &good, &progress).await.unwrap();
    assert_eq!(rec.repo_tags, vec![name]);
}

#[tokio::test]
async fn bearer_token_challenge() {
    if !have_tools("bearer_token_challenge", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "tok/bb:1", PushCompression::Keep);
    let (port, tokens) =
        bearer_proxy(format!("http://{}", reg.host()), Some(("robot", "pw"))).await;
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let (_, progress) = recorder();
    let name = format!("127.0.0.1:{port}/tok/bb:1");
    let err = store
        .pull(&name, &PullOptions::default(), &progress)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let opts = PullOptions {
        credentials: Some(("robot".into(), "pw".into())),
        ..Default::default()
    };
    let rec = store.pull(&name, &opts, &progress).await.unwrap();
    assert_eq!(rec.repo_tags, vec![name]);
    assert!(tokens.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn https_registry_with_self_signed_certificate_on_loopback() {
    if !have_tools(
        "https_registry",
        &["skopeo", "docker-registry", "mke2fs", "openssl"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start_tls();
    let plain = reqwest::get(format!("http://{}/v2/", reg.host()))
        .await
        .unwrap();
    assert_eq!(
        plain.status().as_u16(),
        400,
        "the registry should speak only TLS"
    );
    let layout = busybox_layout(tmp.path());
    reg.push(&layout, "tls/bb:1", PushCompression::Keep);
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let (_, progress) = recorder();
    // Loopback is insecure-allowed as in dockerd: HTTPS without verification, no HTTP needed
    // (this port speaks only TLS, so success proves HTTPS was used).
    let rec = store
        .pull(
            &format!("{}/tls/bb:1", reg.host()),
            &PullOptions::default(),
            &progress,
        )
        .await
        .unwrap();
    assert!(rec.disk.exists());
}

#[test]
fn pull_future_is_send() {
    fn is_send<T: Send>(_: &T) {}
    let store = ImageStore::open(tempfile::tempdir().unwrap().path().join("x")).unwrap();
    let opts = PullOptions::default();
    let progress = |_: PullProgress| {};
    let fut = store.pull("busybox", &opts, &progress);
    is_send(&fut);
}
