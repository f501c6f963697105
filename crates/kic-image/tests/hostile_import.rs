//! A refused layer leaves the store consistent: no image, no disk, no staging left behind,
//! and nothing outside the staging tree touched.

mod common;

use common::*;
use kic_image::oci::LayoutWriter;
use kic_image::spec::{self, ContainerConfig, ImageConfig};
use kic_image::{Digest, ImageError, ImageStore};

fn raw_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let data: &[u8] = if kind.is_file() { b"evil" } else { b"" };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn refused_layer_leaves_store_consistent() {
    if !have_tools("refused_layer_leaves_store_consistent", &["mke2fs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let store = ImageStore::open(&images).unwrap();
    // The staging tree lives in images/tmp/staging-*/: aim at images/ itself and the blobs.
    let evil = raw_tar(&[
        ("ok", tar::EntryType::Regular, ""),
        ("l", tar::EntryType::Symlink, "../../blobs"),
        ("l/x", tar::EntryType::Regular, ""),
    ]);
    let layout = tmp.path().join("layout");
    let lw = LayoutWriter::create(&layout).unwrap();
    let good = raw_tar(&[("fine", tar::EntryType::Regular, "")]);
    let l1 = lw.add_blob(spec::MT_OCI_LAYER_TAR, &good).unwrap();
    let l2 = lw.add_blob(spec::MT_OCI_LAYER_TAR, &evil).unwrap();
    let cfg = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: ContainerConfig::default(),
        ..Default::default()
    };
    let m = lw
        .add_image(&cfg, vec![(l1, Digest::of(&good)), (l2, Digest::of(&evil))])
        .unwrap();
    lw.write_index(m, "latest").unwrap();
    let before = std::fs::read_dir(images.join("blobs/sha256"))
        .unwrap()
        .count();

    let err = store
        .import_oci_layout(&layout, Some("evil:1"))
        .await
        .unwrap_err();
    match &err {
        ImageError::Unsafe { entry, .. } => assert_eq!(entry, "l/x"),
        e => panic!("expected Unsafe, got {e}"),
    }
    assert!(err.to_string().contains("l/x"), "{err}");
    assert_eq!(
        std::fs::read_dir(images.join("tmp")).unwrap().count(),
        0,
        "staging left behind"
    );
    assert_eq!(std::fs::read_dir(images.join("disks")).unwrap().count(), 0);
    assert!(store.list().unwrap().is_empty());
    assert!(!images.join("blobs/x").exists());
    let blobs: Vec<_> = std::fs::read_dir(images.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(blobs.len() >= before, "blobs changed: {blobs:?}");
    assert!(blobs.iter().all(|n| n.len() == 64), "{blobs:?}");
    assert_eq!(
        store.get("evil:1").unwrap_err().to_string(),
        "No such image: evil:1"
    );
}

/// Setuid bits, file capabilities (PAX xattrs), devices, fifos, hard links and whiteouts all
/// arrive in the image disk.
#[tokio::test]
async fn special_files_reach_the_disk() {
    if !have_tools("special_files_reach_the_disk", &["mke2fs", "debugfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str,
                   kind: tar::EntryType,
                   mode: u32,
                   data: &[u8],
                   link: &str,
                   pax: Option<(&str, &[u8])>| {
        if let Some((k, v)) = pax {
            b.append_pax_extensions([(k, v)]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        if link.is_empty() {
            b.append_data(&mut h, name, data).unwrap();
        } else {
            b.append_link(&mut h, name, link).unwrap();
        }
    };
    let cap: &[u8] = &[
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    add(
        "bin/ping",
        tar::EntryType::Regular,
        0o755,
        b"ping",
        "",
        Some(("SCHILY.xattr.security.capability", cap)),
    );
    add("bin/su", tar::EntryType::Regular, 0o4755, b"su", "", None);
    add("bin/su2", tar::EntryType::Link, 0o4755, b"", "bin/su", None);
    add("dev/null", tar::EntryType::Char, 0o666, b"", "", None);
    add("run/fifo", tar::EntryType::Fifo, 0o600, b"", "", None);
    add("gone", tar::EntryType::Regular, 0o644, b"x", "", None);
    let l1 = b.into_inner().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_data(&mut h, ".wh.gone", &b""[..]).unwrap();
    let l2 = b.into_inner().unwrap();

    let layout = tmp.path().join("layout");
    let lw = LayoutWriter::create(&layout).unwrap();
    let d1 = lw.add_blob(spec::MT_OCI_LAYER_TAR, &l1).unwrap();
    let d2 = lw.add_blob(spec::MT_OCI_LAYER_TAR, &l2).unwrap();
    let cfg = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    };
    let m = lw
        .add_image(&cfg, vec![(d1, Digest::of(&l1)), (d2, Digest::of(&l2))])
        .unwrap();
    lw.write_index(m, "latest").unwrap();
    let store = ImageStore::open(tmp.path().join("images")).unwrap();
    let rec = store
        .import_oci_layout(&layout, Some("special"))
        .await
        .unwrap();
    let ea = debugfs(&rec.disk, "ea_list /bin/ping");
    assert!(
        ea.contains("security.capability (20) = 00 00 00 02 00 20"),
        "{ea}"
    );
    let su = disk_stat(&rec.disk, "/bin/su");
    assert!(
        su.contains("Mode:  04755") && su.contains("Links: 2"),
        "{su}"
    );
    assert!(disk_stat(&rec.disk, "/dev/null").contains("Type: character special"));
    assert!(disk_stat(&rec.disk, "/run/fifo").contains("Type: FIFO"));
    assert!(
        debugfs(&rec.disk, "ls /").contains("bin") && !debugfs(&rec.disk, "ls /").contains("gone")
    );
}
