//! `docker save` / `docker load` archives: what the store writes reads back (and through
//! skopeo's docker-archive and oci-archive readers), untag keeps images, kept disks are found.

mod common;

use std::process::Command;

use common::*;
use kic_image::{ErrorKind, ImageStore};

const TOOLS: &[&str] = &["busybox", "mke2fs", "debugfs", "skopeo"];

fn members(tar_path: &std::path::Path) -> Vec<String> {
    let f = std::fs::File::open(tar_path).unwrap();
    let mut ar = tar::Archive::new(f);
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[tokio::test]
async fn save_load_round_trip_and_foreign_readers() {
    if !have_tools("save_load_round_trip_and_foreign_readers", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    let a = ImageStore::open(tmp.path().join("a")).unwrap();
    let rec = a
        .import_oci_layout(&layout, Some("busybox:latest"))
        .await
        .unwrap();
    a.tag(&rec.id, "127.0.0.1:5000/x/bb:2").unwrap();

    // Write: both tags, one image.
    let path = tmp.path().join("save.tar");
    let f = std::fs::File::create(&path).unwrap();
    a.write_archive(
        &[(
            rec.id.clone(),
            vec!["busybox:latest".into(), "127.0.0.1:5000/x/bb:2".into()],
        )],
        f,
    )
    .unwrap();
    let m = members(&path);
    for want in ["manifest.json", "index.json", "oci-layout", "repositories"] {
        assert!(m.iter().any(|x| x == want), "{want} missing from {m:?}");
    }
    let hex = rec.id.strip_prefix("sha256:").unwrap();
    assert!(m.contains(&format!("blobs/sha256/{hex}")), "{m:?}");
    let diff = rec.config.rootfs.diff_ids[0].hex().to_string();
    assert!(
        m.contains(&format!("blobs/sha256/{diff}")),
        "layer not stored by diff id: {m:?}"
    );

    // Read back into another store: same id, both tags, a disk.
    let b = ImageStore::open(tmp.path().join("b")).unwrap();
    let loaded = b
        .load_archive(&path, kic_image::DEFAULT_DISK_SIZE)
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, rec.id);
    assert_eq!(
        loaded[0].tags,
        vec![
            "busybox:latest".to_string(),
            "127.0.0.1:5000/x/bb:2".to_string()
        ]
    );
    let got = b.get("busybox").unwrap();
    assert_eq!(got.id, rec.id);
    assert!(got.disk.exists());
    assert!(debugfs(&got.disk, "cat /etc/group").contains("root:x:0:"));

    // Loading again over a tag pointing elsewhere reports the move.
    b.untag("127.0.0.1:5000/x/bb:2").unwrap();
    let again = b
        .load_archive(&path, kic_image::DEFAULT_DISK_SIZE)
        .await
        .unwrap();
    assert!(again[0].retagged.is_empty());
    assert_eq!(b.get("127.0.0.1:5000/x/bb:2").unwrap().id, rec.id);

    // skopeo reads it as a docker archive and as an OCI archive.
    // (Two tags make two index entries: the OCI reader is told which by its ref name.)
    for (transport, pick) in [("docker-archive", ""), ("oci-archive", ":latest")] {
        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                &format!("{transport}:{}{pick}", path.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An archive skopeo writes (gzip-compressed legacy layers) loads too.
    let sk = tmp.path().join("skopeo.tar");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            &format!("oci:{}", layout.display()),
            &format!("docker-archive:{}:other/bb:sk", sk.display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let c = ImageStore::open(tmp.path().join("c")).unwrap();
    let l = c
        .load_archive(&sk, kic_image::DEFAULT_DISK_SIZE)
        .await
        .unwrap();
    assert_eq!(l[0].id, rec.id);
    assert_eq!(l[0].tags, vec!["other/bb:sk".to_string()]);

    // Not an archive: a clear error, nothing left in tmp/.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"hello").unwrap();
    let e = c
        .load_archive(&junk, kic_image::DEFAULT_DISK_SIZE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("c/tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn untag_keeps_the_image_and_kept_disks_are_orphans() {
    if !have_tools("untag_keeps_the_image_and_kept_disks_are_orphans", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout(tmp.path());
    let s = ImageStore::open(tmp.path().join("s")).unwrap();
    let rec = s
        .import_oci_layout(&layout, Some("busybox:latest"))
        .await
        .unwrap();
    let (id, removed) = s.untag("busybox").unwrap();
    assert_eq!(id, rec.id);
    assert_eq!(removed, vec!["busybox:latest".to_string()]);
    // Dangling, not deleted.
    assert!(s.get(&rec.id).unwrap().repo_tags.is_empty());
    assert_eq!(s.untag("busybox").unwrap_err().kind(), ErrorKind::NotFound);
    let sizes = s.layer_sizes(&rec.id).unwrap();
    assert_eq!(sizes.len(), 1);
    assert!(sizes[0] > 1_000_000, "{sizes:?}");

    // Removed with its disk kept: the disk becomes an orphan once old enough.
    let lines = s.remove_image_with(&rec.id, true, true).unwrap();
    assert_eq!(lines, vec![format!("Deleted: {}", rec.id)]);
    assert!(rec.disk.exists());
    assert!(s
        .orphan_disks(std::time::Duration::from_secs(3600))
        .unwrap()
        .is_empty());
    let orphans = s.orphan_disks(std::time::Duration::ZERO).unwrap();
    assert_eq!(orphans, vec![rec.disk.clone()]);
    s.remove_orphan_disk(&rec.disk).unwrap();
    assert!(!rec.disk.exists());
}
