//! Moving images in and out of the store without a registry: Docker image archives
//! (`docker save` / `docker load`, which since Docker 25 are also OCI layouts), plus the
//! reference and size bookkeeping the Docker personality needs (untag without delete, layer
//! sizes, the manifest and blobs of an image).
//!
//! An archive written here holds, like dockerd 25's: `blobs/sha256/<digest>` for the config,
//! every uncompressed layer and an OCI manifest; `index.json` and `oci-layout` (an OCI image
//! layout); `manifest.json` and `repositories` (the Docker archive format older clients and
//! `skopeo docker-archive:` read).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::disk::decompressed;
use crate::error::{ImageError, Result};
use crate::reference::{familiar, Reference};
use crate::registry::RegistryClient;
use crate::spec::{self, Descriptor, ImageConfig, Index, Manifest, ManifestKind};
use crate::store::{check_layer_media, ImageStore, Resolved};

/// Images resolved from an archive, each with the names it carries.
type NamedImages = Vec<(Resolved, Vec<String>)>;

/// One image's parts as the store holds them.
#[derive(Debug, Clone)]
pub struct ImageParts {
    pub id: Digest,
    /// The config blob exactly as stored (its digest is the id).
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    /// The image manifest (the linux/amd64 one when the image was pulled through an index).
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// Local paths of the layer blobs, in manifest order.
    pub layer_paths: Vec<PathBuf>,
}

/// An image an archive brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub id: String,
    /// Familiar names it was tagged with (empty: loaded by id only).
    pub tags: Vec<String>,
    /// Familiar names that pointed at another image before and were moved to this one.
    pub retagged: Vec<(String, String)>,
}

/// An entry of an archive's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn arch_err(m: impl Into<String>) -> ImageError {
    ImageError::Invalid(m.into())
}

/// Normalises an archive member name; `None` for names that leave the archive.
fn clean_member(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Counts the file bytes of one (possibly compressed) layer tar.
pub fn layer_content_size(r: impl Read) -> Result<u64> {
    let mut ar = tar::Archive::new(decompressed(r)?);
    let mut total = 0u64;
    let entries = ar
        .entries()
        .map_err(|e| arch_err(format!("layer is not a tar archive: {e}")))?;
    for e in entries {
        let e = e.map_err(|e| arch_err(format!("reading layer: {e}")))?;
        if e.header().entry_type().is_file() {
            total += e.header().size().unwrap_or(0);
        }
    }
    Ok(total)
}

impl ImageStore {
    /// Removes one reference (tag or digest) without ever deleting the image. When the last
    /// tag of a repository goes, that repository's digest references go with it, as in Docker.
    /// Returns the image id and the familiar names removed.
    pub fn untag(&self, reference: &str) -> Result<(String, Vec<String>)> {
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        let r = Reference::parse(reference.trim())?;
        let key = r
            .digest_key()
            .or_else(|| r.tag_key())
            .expect("a parsed reference has a tag or a digest");
        let id = repos
            .refs
            .remove(&key)
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let mut out = vec![familiar(&key)];
        if r.digest.is_none() {
            let repo = r.full_repository();
            let same_repo = |k: &str| {
                Reference::parse(k)
                    .map(|x| x.full_repository() == repo)
                    .unwrap_or(false)
            };
            let tag_left = repos
                .refs
                .iter()
                .any(|(k, v)| *v == id && !k.contains('@') && same_repo(k));
            if !tag_left {
                let digests: Vec<String> = repos
                    .refs
                    .iter()
                    .filter(|(k, v)| **v == id && k.contains('@') && same_repo(k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in digests {
                    repos.refs.remove(&k);
                    out.push(familiar(&k));
                }
            }
        }
        self.save_repos(&repos)?;
        Ok((id.to_string(), out))
    }

    /// Image disks whose image is gone (kept by [`ImageStore::remove_image_with`]) and that
    /// are older than `min_age` (a disk being built lands before its metadata).
    pub fn orphan_disks(&self, min_age: std::time::Duration) -> Result<Vec<PathBuf>> {
        let dir = self.layout.disks_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ImageError::io("list", &dir, e))? {
            let e = e.map_err(|e| ImageError::io("list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".raw") else {
                continue;
            };
            let Ok(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old && self.meta(&id)?.is_none() {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    /// Deletes an orphan image disk (see [`ImageStore::orphan_disks`]); refuses disks of images
    /// that exist.
    pub fn remove_orphan_disk(&self, path: &Path) -> Result<()> {
        let _l = self.lock()?;
        let hex = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".raw"))
            .ok_or_else(|| arch_err(format!("{} is not an image disk", path.display())))?;
        let id = Digest::parse(&format!("sha256:{hex}"))?;
        if path != self.layout.disk(&id) || self.meta(&id)?.is_some() {
            return Err(arch_err(format!(
                "{} belongs to an image of this store",
                path.display()
            )));
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io("remove image disk", path, e))
            }
            // Its file manifest (for `docker diff`) goes with it.
            _ => crate::files::remove_manifest(&self.layout, &id),
        }
    }

    /// The stored references (full keys) of an image.
    pub fn references_of(&self, id: &str) -> Result<Vec<String>> {
        let repos = self.repos()?;
        let id = self.resolve(id, &repos)?;
        Ok(repos
            .refs
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect())
    }

    /// Bytes of file content in each layer of an image (computed once, then kept).
    pub fn layer_sizes(&self, name_or_id: &str) -> Result<Vec<u64>> {
        let repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        let meta = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))?;
        if let Some(s) = &meta.layer_sizes {
            if s.len() == meta.layers.len() {
                return Ok(s.clone());
            }
        }
        let mut sizes = Vec::new();
        for l in &meta.layers {
            sizes.push(layer_content_size(BufReader::new(self.content.open(l)?))?);
        }
        let _l = self.lock()?;
        if let Some(mut m) = self.meta(&id)? {
            m.layer_sizes = Some(sizes.clone());
            crate::store::write_atomic(
                &self.layout,
                &self.layout.meta(&id),
                &serde_json::to_vec_pretty(&m).expect("serialisable"),
            )?;
        }
        Ok(sizes)
    }

    /// The manifest, config and layer blobs of an image, for `docker save` and push.
    pub fn parts(&self, name_or_id: &str) -> Result<ImageParts> {
        let repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        let meta = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))?;
        let mut mbytes = self.content.read(&meta.manifest_digest)?;
        let manifest = loop {
            match spec::parse_manifest(&mbytes, None).map_err(ImageError::Invalid)? {
                ManifestKind::Image(m) => break m,
                ManifestKind::Index(ix) => {
                    let d = spec::pick_platform(&ix, "linux", "amd64")
                        .or_else(|| ix.manifests.iter().find(|d| meta.blobs.contains(&d.digest)))
                        .ok_or_else(|| {
                            arch_err(format!("image {id}: its index has no linux/amd64 manifest"))
                        })?;
                    mbytes = self.content.read(&d.digest)?;
                }
            }
        };
        if manifest.config.digest != id {
            return Err(arch_err(format!(
                "image {id}: its stored manifest names config {}",
                manifest.config.digest
            )));
        }
        let config_bytes = self.content.read(&id)?;
        let layer_paths = manifest
            .layers
            .iter()
            .map(|l| self.content.path(&l.digest))
            .collect();
        Ok(ImageParts {
            id,
            config: meta.config,
            config_bytes,
            manifest,
            manifest_bytes: mbytes,
            layer_paths,
        })
    }

    /// The tags of `reference`'s repository in its registry (`docker pull --all-tags`).
    pub async fn list_tags(
        &self,
        reference: &str,
        opts: &crate::PullOptions,
    ) -> Result<Vec<String>> {
        let r = Reference::parse(reference)?;
        let client = RegistryClient::connect(
            &r,
            &crate::registry::RegistryOptions {
                insecure_registries: opts.insecure_registries.clone(),
                credentials: opts.credentials.clone(),
                ca_files: opts.ca_files.clone(),
            },
        )
        .await?;
        client.tags().await
    }

    /// Pushes the image `reference` (a tag) names to its registry: layers the repository
    /// lacks, the config, then the stored manifest under the tag (so its digest is the one the
    /// image was pulled with). Records the digest reference and returns it with the manifest
    /// size. Progress ids are the layers' short diff ids, as dockerd's.
    pub async fn push(
        &self,
        reference: &str,
        opts: &crate::PullOptions,
        progress: &(dyn Fn(crate::PullProgress) + Send + Sync),
    ) -> Result<(Digest, u64)> {
        let r = Reference::parse(reference)?;
        let tag = r.tag.clone().ok_or_else(|| {
            arch_err(format!(
                "push needs a tag, not a digest reference: {reference}"
            ))
        })?;
        let store = self.clone();
        let name = reference.to_string();
        let p = tokio::task::spawn_blocking(move || store.parts(&name))
            .await
            .map_err(|e| arch_err(format!("image store task failed: {e}")))??;
        let client = RegistryClient::connect(
            &r,
            &crate::registry::RegistryOptions {
                insecure_registries: opts.insecure_registries.clone(),
                credentials: opts.credentials.clone(),
                ca_files: opts.ca_files.clone(),
            },
        )
        .await?;
        let diff_ids = p.config.rootfs.diff_ids.clone();
        let short = |i: usize| -> String {
            diff_ids
                .get(i)
                .map(|d| d.short().to_string())
                .unwrap_or_else(|| p.manifest.layers[i].digest.short().to_string())
        };
        let say = |id: &str, status: &str, current: u64, total: Option<u64>| {
            progress(crate::PullProgress {
                id: id.to_string(),
                status: status.into(),
                current,
                total,
            })
        };
        for i in 0..p.manifest.layers.len() {
            say(&short(i), "Preparing", 0, None);
        }
        for (i, l) in p.manifest.layers.iter().enumerate() {
            let id = short(i);
            if client.blob_exists(&l.digest).await? {
                say(&id, "Layer already exists", 0, None);
                continue;
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            let cb: std::sync::Arc<dyn Fn(u64) + Send + Sync> = std::sync::Arc::new(move |n| {
                let _ = tx.send(n);
            });
            let total = l.size;
            let upload = client.push_blob(&l.digest, &p.layer_paths[i], l.size, cb);
            tokio::pin!(upload);
            let res = loop {
                tokio::select! {
                    r = &mut upload => break r,
                    Some(n) = rx.recv() => say(&id, "Pushing", n, Some(total)),
                }
            };
            res?;
            say(&id, "Pushed", 0, None);
        }
        if !client.blob_exists(&p.id).await? {
            client
                .push_blob(
                    &p.id,
                    &self.content.path(&p.id),
                    p.config_bytes.len() as u64,
                    std::sync::Arc::new(|_| {}),
                )
                .await?;
        }
        let media = p
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| spec::MT_OCI_MANIFEST.to_string());
        let digest = client.put_manifest(&tag, &media, &p.manifest_bytes).await?;
        self.content
            .put_bytes("manifest", &digest, &p.manifest_bytes)?;
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        repos
            .refs
            .insert(format!("{}@{}", r.full_repository(), digest), p.id.clone());
        self.save_repos(&repos)?;
        Ok((digest, p.manifest_bytes.len() as u64))
    }

    /// Writes a Docker image archive (also an OCI layout) of `images` to `out`. Each image is
    /// given by id with the familiar tags to record for it (none: saved by id). Layers are
    /// written uncompressed, each checked against its diff id on the way.
    pub fn write_archive(&self, images: &[(String, Vec<String>)], out: impl Write) -> Result<()> {
        let mut tar = tar::Builder::new(out);
        let mut written: BTreeSet<String> = BTreeSet::new();
        let mut manifest_json = Vec::new();
        let mut index = Index {
            schema_version: 2,
            media_type: Some(spec::MT_OCI_INDEX.into()),
            manifests: vec![],
            annotations: BTreeMap::new(),
        };
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let werr = |e: io::Error| arch_err(format!("writing image archive: {e}"));
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            tar.append_data(&mut h, dir, io::empty()).map_err(werr)?;
        }
        for (name, tags) in images {
            let p = self.parts(name)?;
            let diff_ids = &p.config.rootfs.diff_ids;
            if diff_ids.len() != p.layer_paths.len() {
                return Err(arch_err(format!(
                    "image {}: {} layers but {} diff ids",
                    p.id,
                    p.layer_paths.len(),
                    diff_ids.len()
                )));
            }
            let mut layer_descs = Vec::new();
            for (path, diff) in p.layer_paths.iter().zip(diff_ids) {
                let member = format!("blobs/sha256/{}", diff.hex());
                // Uncompress to a temporary file: the tar header needs the size first.
                let mut t = self.content.temp()?;
                let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
                let mut hr = HashingReader::new(decompressed(BufReader::new(f))?);
                io::copy(&mut hr, t.as_file_mut())
                    .map_err(|e| ImageError::io("uncompress layer to", t.path(), e))?;
                let (got, size) = hr
                    .finish()
                    .map_err(|e| ImageError::io("read layer", path, e))?;
                diff.verify(&format!("uncompressed layer {}", path.display()), &got)?;
                layer_descs.push(Descriptor {
                    media_type: spec::MT_OCI_LAYER_TAR.into(),
                    digest: diff.clone(),
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                });
                if written.insert(member.clone()) {
                    t.as_file_mut()
                        .rewind()
                        .map_err(|e| ImageError::io("rewind", t.path(), e))?;
                    let mut h = file_header(size);
                    tar.append_data(&mut h, &member, t.as_file_mut())
                        .map_err(werr)?;
                }
            }
            let config_member = format!("blobs/sha256/{}", p.id.hex());
            if written.insert(config_member.clone()) {
                let mut h = file_header(p.config_bytes.len() as u64);
                tar.append_data(&mut h, &config_member, p.config_bytes.as_slice())
                    .map_err(werr)?;
            }
            let m = Manifest {
                schema_version: 2,
                media_type: Some(spec::MT_OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: spec::MT_OCI_CONFIG.into(),
                    digest: p.id.clone(),
                    size: p.config_bytes.len() as u64,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                },
                layers: layer_descs,
                annotations: BTreeMap::new(),
            };
            let mb = serde_json::to_vec(&m).expect("serialisable");
            let md = Digest::of(&mb);
            let mmember = format!("blobs/sha256/{}", md.hex());
            if written.insert(mmember.clone()) {
                let mut h = file_header(mb.len() as u64);
                tar.append_data(&mut h, &mmember, mb.as_slice())
                    .map_err(werr)?;
            }
            let desc = |ann: BTreeMap<String, String>| Descriptor {
                media_type: spec::MT_OCI_MANIFEST.into(),
                digest: md.clone(),
                size: mb.len() as u64,
                platform: None,
                annotations: ann,
                urls: vec![],
            };
            if tags.is_empty() {
                index.manifests.push(desc(BTreeMap::new()));
            }
            for t in tags {
                let r = Reference::parse(t)?;
                let mut ann = BTreeMap::new();
                if let Some(k) = r.tag_key() {
                    ann.insert(spec::ANNOTATION_IMAGE_NAME.to_string(), k);
                }
                if let Some(tag) = &r.tag {
                    ann.insert(spec::ANNOTATION_REF_NAME.to_string(), tag.clone());
                    repositories
                        .entry(r.familiar_repository())
                        .or_default()
                        .insert(
                            tag.clone(),
                            diff_ids
                                .last()
                                .map(|d| d.hex().to_string())
                                .unwrap_or_default(),
                        );
                }
                index.manifests.push(desc(ann));
            }
            manifest_json.push(ArchiveEntry {
                config: config_member,
                repo_tags: Some(
                    tags.iter()
                        .filter_map(|t| Reference::parse(t).ok())
                        .filter_map(|r| r.tag_key())
                        .map(|k| familiar(&k))
                        .collect(),
                ),
                layers: diff_ids
                    .iter()
                    .map(|d| format!("blobs/sha256/{}", d.hex()))
                    .collect(),
            });
        }
        let mut put = |name: &str, data: Vec<u8>| -> Result<()> {
            let mut h = file_header(data.len() as u64);
            tar.append_data(&mut h, name, data.as_slice()).map_err(werr)
        };
        put(
            "index.json",
            serde_json::to_vec(&index).expect("serialisable"),
        )?;
        put(
            "manifest.json",
            serde_json::to_vec(&manifest_json).expect("serialisable"),
        )?;
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
        if !repositories.is_empty() {
            put(
                "repositories",
                serde_json::to_vec(&repositories).expect("serialisable"),
            )?;
        }
        tar.into_inner().map_err(werr)?.flush().map_err(werr)?;
        Ok(())
    }

    /// Loads every image of a Docker image archive or OCI layout tarball (plain, gzip, zstd)
    /// at `archive`: blobs into the content store, an image disk each, tags as recorded.
    pub async fn load_archive(&self, archive: &Path, disk_size: u64) -> Result<Vec<LoadedImage>> {
        let store = self.clone();
        let a = archive.to_path_buf();
        let (dir, resolved) = tokio::task::spawn_blocking(move || store.read_archive(&a))
            .await
            .map_err(|e| arch_err(format!("archive reader panicked: {e}")))??;
        let mut out = Vec::new();
        for (res, tags) in resolved {
            let id = res.manifest.config.digest.clone();
            self.materialise(res, disk_size, &|_| {}, false).await?;
            let _l = self.lock()?;
            let mut repos = self.repos()?;
            let mut loaded = LoadedImage {
                id: id.to_string(),
                tags: vec![],
                retagged: vec![],
            };
            for t in tags {
                let Some(k) = Reference::parse(&t).ok().and_then(|r| r.tag_key()) else {
                    continue;
                };
                if let Some(old) = repos.refs.insert(k.clone(), id.clone()) {
                    if old != id {
                        loaded.retagged.push((familiar(&k), old.to_string()));
                    }
                }
                loaded.tags.push(familiar(&k));
            }
            self.save_repos(&repos)?;
            out.push(loaded);
        }
        drop(dir);
        Ok(out)
    }

    /// Unpacks the archive into a private directory (regular files only; links resolved inside
    /// the archive) and resolves its images with their tags.
    fn read_archive(&self, archive: &Path) -> Result<(tempfile::TempDir, NamedImages)> {
        let tmp = self.layout.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("load-")
            .tempdir_in(&tmp)
            .map_err(|e| ImageError::io("create directory in", &tmp, e))?;
        let f = File::open(archive).map_err(|e| ImageError::io("open", archive, e))?;
        let mut ar = tar::Archive::new(decompressed(BufReader::new(f))?);
        let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
        let entries = ar
            .entries()
            .map_err(|e| arch_err(format!("the archive is not a tar file: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| arch_err(format!("reading the archive: {e}")))?;
            let raw = e
                .path()
                .map_err(|e| arch_err(format!("bad member name in the archive: {e}")))?
                .into_owned();
            let Some(name) = clean_member(&raw) else {
                return Err(ImageError::unsafe_entry(
                    raw.display().to_string(),
                    "the name leaves the archive",
                ));
            };
            if name.as_os_str().is_empty() {
                continue;
            }
            let kind = e.header().entry_type();
            let dest = dir.path().join(&name);
            if kind.is_dir() {
                fs::create_dir_all(&dest).map_err(|e| ImageError::io("create", &dest, e))?;
            } else if kind.is_file() {
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p).map_err(|e| ImageError::io("create", p, e))?;
                }
                let mut out =
                    File::create(&dest).map_err(|e| ImageError::io("create", &dest, e))?;
                io::copy(&mut e, &mut out).map_err(|e| ImageError::io("write", &dest, e))?;
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = e
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| arch_err(format!("link {} has no target", raw.display())))?
                    .into_owned();
                let base = if kind.is_symlink() {
                    name.parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default()
                        .join(target)
                } else {
                    target
                };
                let Some(t) = clean_member(&base) else {
                    return Err(ImageError::unsafe_entry(
                        raw.display().to_string(),
                        "the link points out of the archive",
                    ));
                };
                links.push((name, t));
            }
        }
        // Links (legacy archives link repeated layers): copy the target's content.
        for _ in 0..8 {
            let mut left = Vec::new();
            for (name, target) in links {
                let src = dir.path().join(&target);
                let dest = dir.path().join(&name);
                if src.is_file() {
                    if let Some(p) = dest.parent() {
                        fs::create_dir_all(p).map_err(|e| ImageError::io("create", p, e))?;
                    }
                    fs::hard_link(&src, &dest)
                        .or_else(|_| fs::copy(&src, &dest).map(|_| ()))
                        .map_err(|e| ImageError::io("link", &dest, e))?;
                } else {
                    left.push((name, target));
                }
            }
            links = left;
            if links.is_empty() {
                break;
            }
        }
        let root = dir.path();
        let images = if root.join("manifest.json").is_file() {
            self.resolve_docker_archive(root)?
        } else if root.join("index.json").is_file() {
            self.resolve_oci_archive(root)?
        } else {
            return Err(arch_err(
                "the archive holds neither manifest.json (docker save) nor index.json (OCI layout); is it an image archive?",
            ));
        };
        Ok((dir, images))
    }

    fn resolve_docker_archive(&self, root: &Path) -> Result<NamedImages> {
        let mp = root.join("manifest.json");
        let b = fs::read(&mp).map_err(|e| ImageError::io("read", &mp, e))?;
        let entries: Vec<ArchiveEntry> = serde_json::from_slice(&b)
            .map_err(|e| arch_err(format!("manifest.json of the archive is not valid: {e}")))?;
        let member = |name: &str| -> Result<PathBuf> {
            let p = clean_member(Path::new(name))
                .map(|n| root.join(n))
                .filter(|p| p.is_file())
                .ok_or_else(|| arch_err(format!("the archive has no file {name:?}")))?;
            Ok(p)
        };
        let mut out = Vec::new();
        for e in entries {
            let cb = fs::read(member(&e.config)?)
                .map_err(|x| arch_err(format!("reading {}: {x}", e.config)))?;
            let cd = Digest::of(&cb);
            self.content.put_bytes("image config", &cd, &cb)?;
            let config: ImageConfig = serde_json::from_slice(&cb)
                .map_err(|x| arch_err(format!("image config {} is not valid: {x}", e.config)))?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let p = member(l)?;
                let mut f = File::open(&p).map_err(|x| ImageError::io("open", &p, x))?;
                let mut head = [0u8; 4];
                let n = f.read(&mut head).unwrap_or(0);
                let media = if n >= 2 && head[..2] == [0x1f, 0x8b] {
                    spec::MT_DOCKER_LAYER_GZIP
                } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
                    spec::MT_OCI_LAYER_ZSTD
                } else {
                    "application/vnd.docker.image.rootfs.diff.tar"
                };
                let f = File::open(&p).map_err(|x| ImageError::io("open", &p, x))?;
                let mut hr = HashingReader::new(BufReader::new(f));
                io::copy(&mut hr, &mut io::sink()).map_err(|x| ImageError::io("read", &p, x))?;
                let (d, size) = hr.finish().map_err(|x| ImageError::io("read", &p, x))?;
                let f = File::open(&p).map_err(|x| ImageError::io("open", &p, x))?;
                self.content
                    .put_reader(&format!("layer {l}"), &d, Some(size), f)?;
                layers.push(Descriptor {
                    media_type: media.into(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(spec::MT_DOCKER_MANIFEST.into()),
                config: Descriptor {
                    media_type: spec::MT_DOCKER_CONFIG.into(),
                    digest: cd.clone(),
                    size: cb.len() as u64,
                    platform: None,
                    annotations: BTreeMap::new(),
                    urls: vec![],
                },
                layers,
                annotations: BTreeMap::new(),
            };
            let mb = serde_json::to_vec(&manifest).expect("serialisable");
            let md = Digest::of(&mb);
            self.content.put_bytes("manifest", &md, &mb)?;
            out.push((
                Resolved {
                    top: md.clone(),
                    manifest,
                    config,
                    docs: vec![md, cd],
                },
                e.repo_tags.unwrap_or_default(),
            ));
        }
        Ok(out)
    }

    fn resolve_oci_archive(&self, root: &Path) -> Result<NamedImages> {
        let ip = root.join("index.json");
        let b = fs::read(&ip).map_err(|e| ImageError::io("read", &ip, e))?;
        let index: Index = serde_json::from_slice(&b)
            .map_err(|e| arch_err(format!("index.json of the archive is not valid: {e}")))?;
        if index.manifests.is_empty() {
            return Err(arch_err("index.json of the archive lists no image"));
        }
        // One image per manifest digest, with every name the index gives it.
        let mut by_digest: Vec<(Descriptor, Vec<String>)> = Vec::new();
        for d in &index.manifests {
            let name = d
                .annotations
                .get(spec::ANNOTATION_IMAGE_NAME)
                .or(d.annotations.get(spec::ANNOTATION_REF_NAME))
                .filter(|n| Reference::parse(n).is_ok() && (n.contains(':') || n.contains('/')))
                .cloned();
            match by_digest.iter_mut().find(|(x, _)| x.digest == d.digest) {
                Some((_, names)) => names.extend(name),
                None => by_digest.push((d.clone(), name.into_iter().collect())),
            }
        }
        let mut out = Vec::new();
        for (d, names) in by_digest {
            out.push((self.resolve_layout_entry(root, &d)?, names));
        }
        Ok(out)
    }

    /// Resolves one manifest or index of an OCI layout at `dir` (linux/amd64 from an index),
    /// copying its documents and layers into the content store.
    pub(crate) fn resolve_layout_entry(&self, dir: &Path, entry: &Descriptor) -> Result<Resolved> {
        let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
        let load = |d: &Descriptor, what: &str| -> Result<Vec<u8>> {
            let p = blob(&d.digest);
            let b = fs::read(&p).map_err(|e| ImageError::io("read", &p, e))?;
            self.content.put_bytes(what, &d.digest, &b)?;
            Ok(b)
        };
        let mut docs = Vec::new();
        let top = entry.digest.clone();
        let body = load(entry, "manifest")?;
        docs.push(top.clone());
        let manifest = match spec::parse_manifest(&body, Some(&entry.media_type))
            .map_err(ImageError::Invalid)?
        {
            ManifestKind::Image(m) => m,
            ManifestKind::Index(ix) => {
                let d = spec::pick_platform(&ix, "linux", "amd64")
                    .ok_or_else(|| arch_err("no linux/amd64 image in the layout's index"))?
                    .clone();
                let b = load(&d, "manifest")?;
                docs.push(d.digest.clone());
                match spec::parse_manifest(&b, Some(&d.media_type)).map_err(ImageError::Invalid)? {
                    ManifestKind::Image(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(arch_err("nested image indexes are not supported"))
                    }
                }
            }
        };
        load(&manifest.config, "image config")?;
        docs.push(manifest.config.digest.clone());
        for l in &manifest.layers {
            check_layer_media(l)?;
            let p = blob(&l.digest);
            let f = File::open(&p).map_err(|e| ImageError::io("open", &p, e))?;
            self.content
                .put_reader(&format!("layer {}", l.digest), &l.digest, Some(l.size), f)?;
        }
        let config = self.read_config(&manifest.config.digest)?;
        Ok(Resolved {
            top,
            manifest,
            config,
            docs,
        })
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}
