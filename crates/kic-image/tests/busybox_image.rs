//! Builds the busybox test image, imports it, and checks the image disk it becomes.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use kic_image::{ImageStore, PullOptions};

#[tokio::test]
async fn busybox_layout_is_deterministic_and_imports_to_a_good_disk() {
    if !have_tools("busybox_image", &["busybox", "mke2fs", "debugfs", "e2fsck"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = busybox_layout(tmp.path());
    let b = tmp.path().join("again");
    kic_image::mkimage::busybox(&b, std::path::Path::new("/bin/busybox"), "latest").unwrap();
    let ia = std::fs::read(a.join("index.json")).unwrap();
    assert_eq!(
        ia,
        std::fs::read(b.join("index.json")).unwrap(),
        "layouts differ between runs"
    );

    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let rec = store
        .import_oci_layout(&a, Some("busybox:latest"))
        .await
        .unwrap();
    assert_eq!(rec.repo_tags, vec!["busybox:latest"]);
    assert_eq!(
        rec.config.config.cmd.as_deref(),
        Some(&["sh".to_string()][..])
    );
    assert!(rec.config.config.env.as_ref().unwrap()[0].starts_with("PATH="));
    assert_eq!(rec.config.architecture, "amd64");
    assert!(rec.size > 1_000_000, "size {}", rec.size);
    assert_eq!(store.get("busybox").unwrap().id, rec.id);
    assert_eq!(store.get(&rec.id).unwrap().id, rec.id);
    assert_eq!(store.get(&rec.id[7..19]).unwrap().id, rec.id);

    // The disk: sparse, 0644, 8 GiB, a clean ext4 holding the image.
    let m = std::fs::metadata(&rec.disk).unwrap();
    assert_eq!(m.len(), 8 << 30);
    assert!(
        m.blocks() * 512 < 200 << 20,
        "disk is not sparse: {} blocks",
        m.blocks()
    );
    assert_eq!(m.permissions().mode() & 0o777, 0o644);
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&rec.disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let sh = disk_stat(&rec.disk, "/usr/bin/env");
    assert!(sh.contains("Links: "), "{sh}");
    let bb = disk_stat(&rec.disk, "/bin/busybox");
    let links: u32 = bb
        .split("Links: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(links > 200, "busybox has {links} links");
    let tmpd = disk_stat(&rec.disk, "/tmp");
    assert!(tmpd.contains("Mode:  01777"), "{tmpd}");
    let home = disk_stat(&rec.disk, "/home/user");
    assert!(home.contains("User:  1000"), "{home}");
    let passwd = debugfs(&rec.disk, "cat /etc/passwd");
    assert!(passwd.contains("user:x:1000:1000"), "{passwd}");
    // Staging is gone.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );

    // Remove: untag + delete disk and blobs.
    let out = store.remove("busybox").unwrap();
    assert_eq!(out[0], "Untagged: busybox:latest");
    assert_eq!(out.last().unwrap(), &format!("Deleted: {}", rec.id));
    assert!(!rec.disk.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let err = store.get("busybox").unwrap_err();
    assert_eq!(err.to_string(), "No such image: busybox");
    let _ = PullOptions::default();
}
