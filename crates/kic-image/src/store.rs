//! The image store: references, image metadata, blobs and image disks under one root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::disk::{build_disk, BuildEvent, LayerRef};
use crate::error::{ImageError, Result};
use crate::layout::Layout;
use crate::reference::{familiar, Reference};
use crate::registry::{RegistryClient, RegistryOptions};
use crate::spec::{self, Descriptor, ImageConfig, Manifest, ManifestKind};

/// Default size of an image disk (sparse: only used blocks cost space).
pub const DEFAULT_DISK_SIZE: u64 = 8 << 30;

/// Layers downloaded at once (dockerd's default `max-concurrent-downloads` is 3).
const PARALLEL_DOWNLOADS: usize = 3;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// `host[:port]` of registries allowed over HTTP or unverified HTTPS (loopback always is).
    pub insecure_registries: Vec<String>,
    /// Username and password for the registry.
    pub credentials: Option<(String, String)>,
    /// Size of the image disk to build, in bytes.
    pub disk_size_bytes: u64,
    /// PEM files of extra CAs trusted for registry certificates.
    pub ca_files: Vec<PathBuf>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            credentials: None,
            disk_size_bytes: DEFAULT_DISK_SIZE,
            ca_files: Vec::new(),
        }
    }
}

/// One progress message, shaped like Docker's pull stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// Short layer id (12 hex).
    pub id: String,
    /// `Pulling fs layer`, `Downloading`, `Verifying Checksum`, `Download complete`,
    /// `Extracting`, `Pull complete` or `Already exists`.
    pub status: String,
    pub current: u64,
    pub total: Option<u64>,
}

/// An image as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<config digest>`.
    pub id: String,
    /// Display form: `busybox:latest`, `127.0.0.1:5000/x:1`.
    pub repo_tags: Vec<String>,
    /// Display form: `busybox@sha256:...`.
    pub repo_digests: Vec<String>,
    /// Digest of the manifest or index the image was pulled by.
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// The image disk (sparse raw ext4, read-only lower layer of container disks).
    pub disk: PathBuf,
    /// Bytes of the unpacked file tree.
    pub size: u64,
    /// Creation time from the config (RFC 3339), empty if unknown.
    pub created: String,
}

/// What the store keeps per image in `meta/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageMeta {
    pub(crate) id: Digest,
    pub(crate) manifest_digest: Digest,
    /// Every blob the image needs: indexes, manifests, config, layers.
    pub(crate) blobs: Vec<Digest>,
    pub(crate) layers: Vec<Digest>,
    pub(crate) config: ImageConfig,
    pub(crate) size: u64,
    pub(crate) disk_size: u64,
    /// Bytes of file content each layer holds, counted once on demand (history, df).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) layer_sizes: Option<Vec<u64>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Repositories {
    /// Full reference (`docker.io/library/busybox:latest` or `...@sha256:..`) -> image id.
    pub(crate) refs: BTreeMap<String, Digest>,
}

/// Owns `<datastore>/images/`. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) layout: Layout,
    pub(crate) content: ContentStore,
}

/// A resolved and verified image manifest, ready to be materialised.
pub(crate) struct Resolved {
    pub(crate) top: Digest,
    pub(crate) manifest: Manifest,
    pub(crate) config: ImageConfig,
    /// Index(es) and manifest digests, already in the content store.
    pub(crate) docs: Vec<Digest>,
}

pub(crate) fn write_atomic(layout: &Layout, dest: &Path, data: &[u8]) -> Result<()> {
    let tmp = layout.tmp_dir();
    let mut t = tempfile::Builder::new()
        .prefix("meta-")
        .tempfile_in(&tmp)
        .map_err(|e| ImageError::io("create temporary file in", &tmp, e))?;
    t.write_all(data)
        .and_then(|_| t.as_file().sync_all())
        .map_err(|e| ImageError::io("write", dest, e))?;
    t.persist(dest)
        .map_err(|e| ImageError::io("write", dest, e.error))?;
    Ok(())
}

fn layer_refs(m: &Manifest, c: &ImageConfig) -> Result<Vec<LayerRef>> {
    if m.layers.len() != c.rootfs.diff_ids.len() {
        return Err(ImageError::Invalid(format!(
            "image manifest lists {} layers but its config has {} diff ids",
            m.layers.len(),
            c.rootfs.diff_ids.len()
        )));
    }
    Ok(m.layers
        .iter()
        .zip(&c.rootfs.diff_ids)
        .map(|(l, d)| LayerRef {
            blob: l.digest.clone(),
            diff_id: d.clone(),
        })
        .collect())
}

pub(crate) fn check_layer_media(d: &Descriptor) -> Result<()> {
    let mt = d.media_type.as_str();
    // Foreign and non-distributable layers are still tars; the registry must serve them.
    let ok = mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.");
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "layer {} has media type {mt:?}, which is not a filesystem layer KIC can apply",
            d.digest
        )))
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store rooted at `images_root`.
    pub fn open(images_root: impl AsRef<Path>) -> Result<ImageStore> {
        let layout = Layout::new(images_root.as_ref());
        for d in layout.dirs() {
            fs::create_dir_all(&d).map_err(|e| ImageError::io("create directory", &d, e))?;
        }
        // QEMU (user libvirt-qemu) must reach the disks whatever our umask was.
        for d in [layout.root().to_path_buf(), layout.disks_dir()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                .map_err(|e| ImageError::io("chmod", &d, e))?;
        }
        let store = ImageStore {
            content: ContentStore::new(layout.clone()),
            layout,
        };
        store.clean_stale_tmp();
        Ok(store)
    }

    /// Deletes leftovers of crashed operations in `tmp/` (older than a day, so another process
    /// working on the same datastore is never disturbed).
    fn clean_stale_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.layout.tmp_dir()) else {
            return;
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if old {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    /// The typed paths of this store.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn lock(&self) -> Result<nix::fcntl::Flock<File>> {
        let p = self.layout.store_lock();
        let f = File::create(&p).map_err(|e| ImageError::io("create lock", &p, e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::io("lock", &p, e.into()))
    }

    pub(crate) fn repos(&self) -> Result<Repositories> {
        let p = self.layout.repositories();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::Invalid(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(ImageError::io("read", p, e)),
        }
    }

    pub(crate) fn save_repos(&self, r: &Repositories) -> Result<()> {
        let data = serde_json::to_vec_pretty(r).expect("serialisable");
        write_atomic(&self.layout, &self.layout.repositories(), &data)
    }

    pub(crate) fn meta(&self, id: &Digest) -> Result<Option<ImageMeta>> {
        let p = self.layout.meta(id);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageError::Invalid(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", p, e)),
        }
    }

    pub(crate) fn all_meta(&self) -> Result<Vec<ImageMeta>> {
        let dir = self.layout.meta_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ImageError::io("list", &dir, e))? {
            let e = e.map_err(|e| ImageError::io("list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if let Some(m) = self.meta(&id)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub(crate) fn record(&self, m: &ImageMeta, repos: &Repositories) -> ImageRecord {
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for (k, v) in &repos.refs {
            if v == &m.id {
                if k.contains('@') {
                    repo_digests.push(familiar(k));
                } else {
                    repo_tags.push(familiar(k));
                }
            }
        }
        ImageRecord {
            id: m.id.to_string(),
            repo_tags,
            repo_digests,
            manifest_digest: m.manifest_digest.to_string(),
            created: m.config.created.clone().unwrap_or_default(),
            config: m.config.clone(),
            disk: self.layout.disk(&m.id),
            size: m.size,
        }
    }

    /// Finds the image id for a name, tag, digest reference, full id or unique id prefix.
    pub(crate) fn resolve(&self, name_or_id: &str, repos: &Repositories) -> Result<Digest> {
        let not_found = || ImageError::NotFound(name_or_id.to_string());
        let s = name_or_id.trim();
        if let Some(hex) = s.strip_prefix("sha256:") {
            return self.by_prefix(hex, name_or_id)?.ok_or_else(not_found);
        }
        if let Ok(r) = Reference::parse(s) {
            if let Some(k) = r.digest_key() {
                if let Some(id) = repos.refs.get(&k) {
                    return Ok(id.clone());
                }
                return Err(not_found());
            }
            if let Some(id) = r.tag_key().and_then(|k| repos.refs.get(&k)) {
                return Ok(id.clone());
            }
        }
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            if let Some(id) = self.by_prefix(&s.to_ascii_lowercase(), name_or_id)? {
                return Ok(id);
            }
        }
        Err(not_found())
    }

    fn by_prefix(&self, hex: &str, asked: &str) -> Result<Option<Digest>> {
        if hex.is_empty() {
            return Ok(None);
        }
        let ids: Vec<Digest> = self
            .all_meta()?
            .into_iter()
            .map(|m| m.id)
            .filter(|id| id.hex().starts_with(hex))
            .collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.into_iter().next()),
            _ => Err(ImageError::Invalid(format!(
                "multiple IDs found with provided prefix: {asked}"
            ))),
        }
    }

    /// Looks an image up; `No such image: <x>` if absent.
    pub fn get(&self, name_or_id: &str) -> Result<ImageRecord> {
        let repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        let m = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))?;
        Ok(self.record(&m, &repos))
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let repos = self.repos()?;
        let mut v: Vec<ImageRecord> = self
            .all_meta()?
            .iter()
            .map(|m| self.record(m, &repos))
            .collect();
        v.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Adds the tag `new_ref` (default tag `latest`) to an image.
    pub fn tag(&self, name_or_id: &str, new_ref: &str) -> Result<()> {
        let r = Reference::parse(new_ref)?;
        if r.digest.is_some() {
            return Err(ImageError::Invalid(format!(
                "refusing to create a tag with a digest reference: {new_ref}"
            )));
        }
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        if self.meta(&id)?.is_none() {
            return Err(ImageError::NotFound(name_or_id.to_string()));
        }
        repos.refs.insert(r.tag_key().expect("tag present"), id);
        self.save_repos(&repos)
    }

    /// Removes a reference; when no tag remains, deletes the image, its disk and unshared
    /// blobs. Returns Docker's lines: `Untagged: busybox:latest`, `Deleted: sha256:...`.
    /// Callers check that no container uses the image first.
    pub fn remove(&self, name_or_id: &str) -> Result<Vec<String>> {
        self.remove_image(name_or_id, false)
    }

    /// [`ImageStore::remove`] with Docker's `force`: removing by id an image tagged in several
    /// repositories needs it.
    pub fn remove_image(&self, name_or_id: &str, force: bool) -> Result<Vec<String>> {
        self.remove_image_with(name_or_id, force, false)
    }

    /// [`ImageStore::remove_image`]; with `keep_disk` the image disk stays in place (containers
    /// made from the image still boot from it) while the image itself is gone. Such disks are
    /// listed by [`ImageStore::orphan_disks`] for their owner to delete later.
    pub fn remove_image_with(
        &self,
        name_or_id: &str,
        force: bool,
        keep_disk: bool,
    ) -> Result<Vec<String>> {
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        let id = self.resolve(name_or_id, &repos)?;
        let meta = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))?;
        let mut out = Vec::new();
        // Removing by reference untags just that reference.
        let by_ref = Reference::parse(name_or_id.trim()).ok().and_then(|r| {
            let k = r.digest_key().or_else(|| r.tag_key())?;
            (repos.refs.get(&k) == Some(&id)).then_some(k)
        });
        let mine: Vec<String> = repos
            .refs
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        match by_ref {
            Some(k) => {
                repos.refs.remove(&k);
                out.push(format!("Untagged: {}", familiar(&k)));
                let tags_left = repos.refs.iter().any(|(k, v)| *v == id && !k.contains('@'));
                if !tags_left {
                    // The last tag takes the digest references with it, as in Docker.
                    for k in mine.iter().filter(|k| k.contains('@')) {
                        if repos.refs.remove(k).is_some() {
                            out.push(format!("Untagged: {}", familiar(k)));
                        }
                    }
                }
            }
            None => {
                let repos_named: BTreeSet<String> = mine
                    .iter()
                    .filter(|k| !k.contains('@'))
                    .filter_map(|k| Reference::parse(k).ok().map(|r| r.full_repository()))
                    .collect();
                if repos_named.len() > 1 && !force {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        &id.hex()[..12]
                    )));
                }
                for k in &mine {
                    repos.refs.remove(k);
                    out.push(format!("Untagged: {}", familiar(k)));
                }
            }
        }
        if repos.refs.values().any(|v| *v == id) {
            self.save_repos(&repos)?;
            return Ok(out);
        }
        // Nothing refers to it any more: delete disk, metadata and blobs no other image needs.
        let disk = self.layout.disk(&id);
        if !keep_disk {
            match fs::remove_file(&disk) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::io("remove image disk", disk, e))
                }
                _ => {}
            }
        }
        let mp = self.layout.meta(&id);
        let _ = fs::remove_file(&mp);
        if !keep_disk {
            // A kept disk keeps its file manifest: its containers still diff against it.
            let _ = crate::files::remove_manifest(&self.layout, &id);
        }
        self.save_repos(&repos)?;
        let still: BTreeSet<Digest> = self.all_meta()?.into_iter().flat_map(|m| m.blobs).collect();
        for b in meta.blobs.iter().filter(|b| !still.contains(*b)) {
            self.content.remove(b)?;
        }
        let _ = fs::remove_file(self.layout.disk_lock(&id));
        out.push(format!("Deleted: {id}"));
        Ok(out)
    }

    /// Pulls `reference` from its registry, builds the image disk, and tags it.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<ImageRecord> {
        let r = Reference::parse(reference)?;
        let client = RegistryClient::connect(
            &r,
            &RegistryOptions {
                insecure_registries: opts.insecure_registries.clone(),
                credentials: opts.credentials.clone(),
                ca_files: opts.ca_files.clone(),
            },
        )
        .await?;
        let resolved = self.fetch_manifests(&client, &r).await?;
        let id = resolved.manifest.config.digest.clone();
        let already = self.meta(&id)?.is_some() && self.layout.disk(&id).exists();
        for l in &resolved.manifest.layers {
            check_layer_media(l)?;
        }
        if already {
            for l in &resolved.manifest.layers {
                progress(PullProgress {
                    id: l.digest.short().to_string(),
                    status: "Already exists".into(),
                    current: 0,
                    total: None,
                });
            }
        } else {
            // As dockerd: every layer to fetch is announced, those beyond the parallel
            // downloads wait for a slot.
            let mut queued = 0;
            for l in &resolved.manifest.layers {
                if self.content.has(&l.digest) {
                    continue;
                }
                let id = l.digest.short().to_string();
                progress(PullProgress {
                    id: id.clone(),
                    status: "Pulling fs layer".into(),
                    current: 0,
                    total: None,
                });
                if queued >= PARALLEL_DOWNLOADS {
                    progress(PullProgress {
                        id,
                        status: "Waiting".into(),
                        current: 0,
                        total: None,
                    });
                }
                queued += 1;
            }
            let mut downloads = Vec::new();
            for l in &resolved.manifest.layers {
                downloads.push(self.download_layer(&client, l, progress));
            }
            let results: Vec<Result<()>> = futures::stream::iter(downloads)
                .buffered(PARALLEL_DOWNLOADS)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
        }
        let top = resolved.top.clone();
        self.materialise(resolved, opts.disk_size_bytes, progress, already)
            .await?;
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        if let Some(k) = r.tag_key() {
            repos.refs.insert(k, id.clone());
        }
        repos
            .refs
            .insert(format!("{}@{}", r.full_repository(), top), id.clone());
        self.save_repos(&repos)?;
        let m = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        Ok(self.record(&m, &repos))
    }

    async fn fetch_manifests(&self, client: &RegistryClient, r: &Reference) -> Result<Resolved> {
        let top = client.manifest(&r.manifest_ref()).await?;
        let mut docs = Vec::new();
        self.content.put_bytes("manifest", &top.digest, &top.body)?;
        docs.push(top.digest.clone());
        let parsed = spec::parse_manifest(&top.body, top.content_type.as_deref())
            .map_err(ImageError::Invalid)?;
        let manifest = match parsed {
            ManifestKind::Image(m) => m,
            ManifestKind::Index(ix) => {
                let d = spec::pick_platform(&ix, "linux", "amd64").ok_or_else(|| {
                    ImageError::Invalid(format!(
                        "no matching manifest for linux/amd64 in the manifest list entries of {r}"
                    ))
                })?;
                let m = client.manifest(d.digest.as_str()).await?;
                self.content.put_bytes("manifest", &m.digest, &m.body)?;
                docs.push(m.digest.clone());
                match spec::parse_manifest(&m.body, m.content_type.as_deref())
                    .map_err(ImageError::Invalid)?
                {
                    ManifestKind::Image(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(ImageError::Invalid(format!(
                            "{r}: nested image indexes are not supported"
                        )))
                    }
                }
            }
        };
        let cd = &manifest.config;
        if !self.content.has(&cd.digest) {
            let mut t = self.content.temp()?;
            let f = t
                .as_file_mut()
                .try_clone()
                .map_err(|e| ImageError::io("open", "<tmp>", e))?;
            let mut f = tokio::fs::File::from_std(f);
            client.blob(cd, &mut f, &mut |_| {}).await?;
            drop(f);
            let _ = t.as_file_mut();
            self.content.commit(t, &cd.digest)?;
        }
        let config = self.read_config(&cd.digest)?;
        docs.push(cd.digest.clone());
        Ok(Resolved {
            top: top.digest,
            manifest,
            config,
            docs,
        })
    }

    pub(crate) fn read_config(&self, d: &Digest) -> Result<ImageConfig> {
        let b = self.content.read(d)?;
        serde_json::from_slice(&b)
            .map_err(|e| ImageError::Invalid(format!("image config {d} is not valid: {e}")))
    }

    async fn download_layer(
        &self,
        client: &RegistryClient,
        l: &Descriptor,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<()> {
        let id = l.digest.short().to_string();
        let p = |status: &str, current: u64, total: Option<u64>| {
            progress(PullProgress {
                id: id.clone(),
                status: status.into(),
                current,
                total,
            })
        };
        if self.content.has(&l.digest) {
            p("Already exists", 0, None);
            return Ok(());
        }
        let mut t = self.content.temp()?;
        let f = t
            .as_file_mut()
            .try_clone()
            .map_err(|e| ImageError::io("open", t.path().to_path_buf(), e))?;
        let mut f = tokio::fs::File::from_std(f);
        let total = l.size;
        client
            .blob(l, &mut f, &mut |n| p("Downloading", n, Some(total)))
            .await?;
        drop(f);
        p("Verifying Checksum", 0, None);
        self.content.commit(t, &l.digest)?;
        p("Download complete", 0, None);
        Ok(())
    }

    /// Builds the disk (in a blocking thread) and writes the image metadata.
    pub(crate) async fn materialise(
        &self,
        res: Resolved,
        disk_size: u64,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
        quiet: bool,
    ) -> Result<()> {
        let id = res.manifest.config.digest.clone();
        let layers = layer_refs(&res.manifest, &res.config)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
        let layout = self.layout.clone();
        let bid = id.clone();
        let blayers = layers.clone();
        let handle = tokio::task::spawn_blocking(move || {
            build_disk(&layout, &bid, &blayers, disk_size, &mut |e| {
                let _ = tx.send(e);
            })
        });
        while let Some(ev) = rx.recv().await {
            if quiet {
                continue;
            }
            progress(match ev {
                BuildEvent::Extracting {
                    layer,
                    current,
                    total,
                } => PullProgress {
                    id: layer.short().to_string(),
                    status: "Extracting".into(),
                    current,
                    total: Some(total),
                },
                BuildEvent::Complete { layer } => PullProgress {
                    id: layer.short().to_string(),
                    status: "Pull complete".into(),
                    current: 0,
                    total: None,
                },
            });
        }
        let built = handle
            .await
            .map_err(|e| ImageError::Invalid(format!("disk builder panicked: {e}")))??;
        self.record_meta(res, &layers, built, disk_size)
    }

    /// Builds the disk and writes the metadata in the calling thread (no progress).
    pub(crate) fn materialise_blocking(&self, res: Resolved, disk_size: u64) -> Result<()> {
        let id = res.manifest.config.digest.clone();
        let layers = layer_refs(&res.manifest, &res.config)?;
        let built = build_disk(&self.layout, &id, &layers, disk_size, &mut |_| {})?;
        self.record_meta(res, &layers, built, disk_size)
    }

    /// Writes `meta/<id>.json` for an image whose disk is built (`built`: the tree size if it
    /// was built just now).
    fn record_meta(
        &self,
        res: Resolved,
        layers: &[LayerRef],
        built: Option<u64>,
        disk_size: u64,
    ) -> Result<()> {
        let id = res.manifest.config.digest.clone();
        let _l = self.lock()?;
        let old = self.meta(&id)?;
        let size = match built.or(old.as_ref().map(|m| m.size)) {
            Some(s) => s,
            // The disk outlived an earlier removal (kept for containers): count the layers.
            None => {
                let mut total = 0;
                for l in layers {
                    let f = self.content.open(&l.blob)?;
                    total += crate::transfer::layer_content_size(std::io::BufReader::new(f))?;
                }
                total
            }
        };
        let mut blobs: BTreeSet<Digest> = res.docs.into_iter().collect();
        blobs.extend(layers.iter().map(|l| l.blob.clone()));
        if let Some(o) = &old {
            blobs.extend(o.blobs.iter().cloned());
        }
        let meta = ImageMeta {
            id: id.clone(),
            manifest_digest: res.top,
            blobs: blobs.into_iter().collect(),
            layers: layers.iter().map(|l| l.blob.clone()).collect(),
            config: res.config,
            size,
            disk_size,
            layer_sizes: old.and_then(|o| o.layer_sizes),
        };
        write_atomic(
            &self.layout,
            &self.layout.meta(&id),
            &serde_json::to_vec_pretty(&meta).expect("serialisable"),
        )
    }

    /// Imports an image from an OCI image layout directory (`skopeo copy ... oci:DIR`), picking
    /// linux/amd64 from an index, and tags it `tag` if given (else the layout's ref name if it
    /// is a full reference, else the image is untagged).
    pub async fn import_oci_layout(&self, dir: &Path, tag: Option<&str>) -> Result<ImageRecord> {
        self.import_oci_layout_with(dir, tag, DEFAULT_DISK_SIZE)
            .await
    }

    /// [`ImageStore::import_oci_layout`] with a chosen disk size.
    pub async fn import_oci_layout_with(
        &self,
        dir: &Path,
        tag: Option<&str>,
        disk_size: u64,
    ) -> Result<ImageRecord> {
        let tag_ref = tag.map(Reference::parse).transpose()?;
        let store = self.clone();
        let d = dir.to_path_buf();
        let (resolved, name) = tokio::task::spawn_blocking(move || store.read_layout(&d))
            .await
            .map_err(|e| ImageError::Invalid(format!("layout reader panicked: {e}")))??;
        let id = resolved.manifest.config.digest.clone();
        self.materialise(resolved, disk_size, &|_| {}, false)
            .await?;
        let _l = self.lock()?;
        let mut repos = self.repos()?;
        let r = tag_ref.or_else(|| name.and_then(|n| Reference::parse(&n).ok()));
        if let Some(r) = r {
            if let Some(k) = r.tag_key() {
                repos.refs.insert(k, id.clone());
            }
        }
        self.save_repos(&repos)?;
        let m = self
            .meta(&id)?
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        Ok(self.record(&m, &repos))
    }

    pub(crate) fn read_layout(&self, dir: &Path) -> Result<(Resolved, Option<String>)> {
        let index_path = dir.join("index.json");
        let ib = fs::read(&index_path)
            .map_err(|e| ImageError::io("read OCI layout index", &index_path, e))?;
        let index: spec::Index = serde_json::from_slice(&ib).map_err(|e| {
            ImageError::Invalid(format!("{} is not an OCI index: {e}", index_path.display()))
        })?;
        let entry = match index.manifests.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ImageError::Invalid(format!(
                    "{} lists no image",
                    index_path.display()
                )))
            }
            many => spec::pick_platform(&index, "linux", "amd64")
                .cloned()
                .unwrap_or_else(|| many[0].clone()),
        };
        let name = entry
            .annotations
            .get(spec::ANNOTATION_IMAGE_NAME)
            .or(entry.annotations.get(spec::ANNOTATION_REF_NAME))
            .filter(|n| n.contains(':') || n.contains('/'))
            .cloned();
        Ok((self.resolve_layout_entry(dir, &entry)?, name))
    }
}
