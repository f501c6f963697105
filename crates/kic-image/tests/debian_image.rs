//! Debian by debootstrap from this machine's apt mirror, imported into a store.
//! Slow the first time (downloads ~80 packages), so it runs with `--ignored`; the cache in
//! `KIC_MKIMAGE_CACHE` (default /var/cache/kic-mkimage) makes later runs fast.

mod common;

use common::*;
use kic_image::ImageStore;

#[tokio::test]
#[ignore = "slow: runs debootstrap (cargo test -p kic-image --test debian_image -- --ignored)"]
async fn debian_minbase_imports_with_usrmerge() {
    if !have_tools("debian_minbase", &["debootstrap", "mke2fs", "debugfs"]) {
        return;
    }
    let cache =
        std::env::var("KIC_MKIMAGE_CACHE").unwrap_or_else(|_| "/var/cache/kic-mkimage".into());
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("debian");
    kic_image::mkimage::debian(
        &layout,
        std::path::Path::new(&cache),
        "bookworm",
        None,
        "latest",
    )
    .unwrap();
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let rec = store
        .import_oci_layout(&layout, Some("debian:bookworm"))
        .await
        .unwrap();
    assert_eq!(
        rec.config.config.cmd.as_deref(),
        Some(&["bash".to_string()][..])
    );
    assert!(rec.size > 50 << 20, "size {}", rec.size);
    // usrmerge: /bin is a symlink into /usr, and bash is there.
    let bin = disk_stat(&rec.disk, "/bin");
    assert!(bin.contains("Type: symlink"), "{bin}");
    assert!(disk_stat(&rec.disk, "/usr/bin/bash").contains("Type: regular"));
    let os = debugfs(&rec.disk, "cat /usr/lib/os-release");
    assert!(os.contains("bookworm"), "{os}");
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
}
