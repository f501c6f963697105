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
