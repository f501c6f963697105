//! A container's files through its tether: `docker cp` both ways, `diff`, `export`, `commit`.
//!
//! The host never mounts a container's disk (its kernel should not parse filesystems a guest
//! wrote). A running container's tether session serves the request; a stopped one is booted
//! for **maintenance**: the same domain, the tether mounts the root disk and volumes
//! ([`Request::Mount`]) and starts no process, and the VM is powered off when the last use of
//! the [`Guest`] handle ends. The container's state does not change meanwhile; its start and
//! remove wait for the maintenance to end, and its volumes count as in use.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kic_image::changes::{Change, ChangeKind};
use kic_proto::{ArchiveSource, ArchiveSpec, FileEntry, PathStat, PutSpec};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::error::{Error, Kind, Result};
use crate::runtime::{Ctr, PortLayer};
use crate::tether::Session;

/// Paths the VM itself provides and Docker leaves out of `diff` and `commit` (its init layer
/// and bind mounts): name resolution files and the kernel's filesystems.
const RUNTIME_PATHS: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/proc",
    "/sys",
    "/dev",
    "/lost+found",
];

/// How long a maintenance VM stays up after its last use, for the next request: the docker
/// CLI stats a destination before it copies into it, and scripts copy several files.
const LINGER: Duration = Duration::from_secs(3);

/// A tether session to use for file operations, and what keeps a maintenance VM up.
#[derive(Clone)]
pub struct Guest {
    session: Arc<Session>,
    _use: Option<Arc<MaintenanceUse>>,
}

/// A container's maintenance VM between uses (see [`LINGER`]); `start` and `remove` end it
/// at once.
#[derive(Default)]
pub(crate) struct Linger {
    /// Bumped by every use and every end, so a timer only ends the VM it was set for.
    generation: u64,
    vm: Option<Arc<Maintenance>>,
}

impl Linger {
    /// Take the lingering VM (for a new use, or to end it by dropping it).
    pub(crate) fn take(&mut self) -> Option<Arc<Maintenance>> {
        self.generation += 1;
        self.vm.take()
    }
}

/// One use of a maintenance VM: when its last handle goes, the VM lingers for the next use.
struct MaintenanceUse(Arc<Maintenance>);

impl Drop for MaintenanceUse {
    fn drop(&mut self) {
        let ctr = self.0.ctr.clone();
        let generation = {
            let mut l = ctr.linger.lock().expect("lock");
            l.generation += 1;
            l.vm = Some(self.0.clone());
            l.generation
        };
        let timer_ctr = ctr.clone();
        let end = async move {
            tokio::time::sleep(LINGER).await;
            let vm = {
                let mut l = timer_ctr.linger.lock().expect("lock");
                if l.generation == generation {
                    l.take()
                } else {
                    None
                }
            };
            drop(vm);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(end);
            }
            Err(_) => drop(ctr.linger.lock().expect("lock").take()),
        }
    }
}

/// A stopped container's VM booted for maintenance; dropping the last handle powers it off.
pub(crate) struct Maintenance {
    pl: PortLayer,
    ctr: Arc<Ctr>,
    session: Arc<Session>,
    /// The monitor lock file and the maintenance guard, released in that order (a waiter on
    /// the guard may run at once on another thread and must find the file unlocked).
    guards: std::sync::Mutex<Option<(std::fs::File, tokio::sync::OwnedMutexGuard<()>)>>,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        let (pl, ctr, session) = (self.pl.clone(), self.ctr.clone(), self.session.clone());
        let guards = self.guards.lock().expect("lock").take();
        let end = async move {
            let domain = ctr.domain();
            if let Err(e) = session.power_off().await {
                tracing::debug!("container {}: maintenance power-off: {e}", ctr.id());
            }
            pl.wait_down(&domain, Duration::from_secs(10)).await;
            let _ = std::fs::remove_file(ctr.paths.socket());
            pl.inner.maintenance.lock().expect("lock").remove(&ctr.id());
            if let Some((lock, maint)) = guards {
                drop(lock);
                drop(maint);
            }
            tracing::debug!("container {}: maintenance VM ended", ctr.id());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(end);
            }
            Err(_) => tracing::warn!("maintenance VM left running: no runtime to end it"),
        }
    }
}

/// The tar bytes of a container archive; holds the guest (and a maintenance VM) while read.
pub struct ArchiveStream {
    inner: crate::tether::ArchiveReader,
    _guest: Guest,
}

impl AsyncRead for ArchiveStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The container file `path` as text (empty when it is missing).
async fn read_text(session: &Session, path: &str) -> String {
    match session
        .request(kic_proto::Request::ReadFile { path: path.into() })
        .await
    {
        Ok(kic_proto::Response::File { data }) => String::from_utf8_lossy(&data).into_owned(),
        _ => String::new(),
    }
}

/// The `(id, primary group id)` of `name` (or of the numeric id) in passwd-format `text`.
fn passwd_ids(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && (f[0] == name || f[2] == name))
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// The id of group `name` (or of the numeric id) in group-format `text`.
fn group_id(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && (f[0] == name || f[2] == name))
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// The uid and gid of the container's `--user` (`name`, `uid`, `name:group`, `uid:gid`),
/// looked up in the container's own `/etc/passwd` and `/etc/group`.
async fn container_user(session: &Session, user: &str) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_text(session, "/etc/passwd").await;
    let (uid, mut gid) = match (passwd_ids(&passwd, u), u.parse::<u32>()) {
        (Some(ids), _) => ids,
        (None, Ok(n)) => (n, n),
        (None, Err(_)) => {
            return Err(Error::invalid(format!(
                "unable to find user {u}: no matching entries in passwd file"
            )))
        }
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_id(&read_text(session, "/etc/group").await, g).ok_or_else(|| {
                Error::invalid(format!(
                    "unable to find group {g}: no matching entries in group file"
                ))
            })?,
        };
    }
    Ok((uid, gid))
}

/// Docker's message for a path that is not in the container.
fn no_such_path(path: &str, name: &str) -> Error {
    Error::new(
        Kind::NotFound,
        format!("Could not find the file {path} in container {name}"),
    )
}

/// Turn a tether error on `path` into the caller's error.
fn file_err(e: io::Error, path: &str, name: &str) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => no_such_path(path, name),
        io::ErrorKind::InvalidInput => Error::invalid(e.to_string()),
        _ => Error::internal(format!("container {name}: {path}: {e}")),
    }
}

/// Cleans an absolute container path the way Docker does, keeping what says "follow the last
/// element" (a trailing `/` or `/.`).
fn container_path(path: &str) -> Result<(String, bool)> {
    if path.is_empty() {
        return Err(Error::invalid("Path cannot be empty"));
    }
    let follow = path.ends_with('/') || path.ends_with("/.") || path == ".";
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok((format!("/{}", parts.join("/")), follow))
}

/// The name of the archive's top entry: the last element of the path as asked (`.` for the
/// contents of a directory asked as `dir/.`).
fn archive_name(path: &str, clean: &str) -> String {
    if path.ends_with("/.") || path == "." {
        return ".".into();
    }
    match clean.rsplit('/').next() {
        Some("") | None => "/".into(),
        Some(n) => n.into(),
    }
}

impl PortLayer {
    /// A tether session for file operations: the running container's own, or a maintenance
    /// VM's for a stopped one.
    pub async fn guest(&self, name_or_id: &str) -> Result<Guest> {
        let ctr = self.find(name_or_id)?;
        loop {
            ctr.refresh();
            if ctr.state.borrow().running() {
                let session = self.session(&ctr).await?;
                return Ok(Guest {
                    session,
                    _use: None,
                });
            }
            let lingering = ctr.linger.lock().expect("lock").take();
            if let Some(m) = lingering.filter(|m| !m.session.is_closed()) {
                return Ok(Guest {
                    session: m.session.clone(),
                    _use: Some(Arc::new(MaintenanceUse(m))),
                });
            }
            let maint = ctr.maint.clone().lock_owned().await;
            ctr.refresh();
            if ctr.state.borrow().running() {
                // Started while we waited: use its session.
                drop(maint);
                continue;
            }
            return self.maintain(&ctr, maint).await;
        }
    }

    async fn maintain(
        &self,
        ctr: &Arc<Ctr>,
        maint: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Guest> {
        let id = ctr.id();
        let lock = self.take_vm_lock(ctr).await?;
        let config = ctr.config.read().expect("config lock").clone();
        self.end_lingering_volume_users(&config).await;
        {
            let _v = self.inner.volume_lock.lock().await;
            self.check_volumes_free(&config)?;
            self.inner
                .maintenance
                .lock()
                .expect("lock")
                .insert(id.clone());
        }
        let booted = async {
            let _ = std::fs::remove_file(ctr.paths.socket());
            self.ensure_boot_version(ctr).await?;
            if self
                .inner
                .hv
                .is_active(&config.domain)
                .await
                .unwrap_or(false)
            {
                // Left over from a run that ended without powering off.
                self.inner.hv.destroy(&config.domain).await?;
            }
            tracing::debug!("container {id}: booting for maintenance");
            self.inner.hv.start(&config.domain).await?;
            let (hv, domain) = (self.inner.hv.clone(), config.domain.clone());
            let alive = move || {
                let (hv, d) = (hv.clone(), domain.clone());
                Box::pin(async move { hv.is_active(&d).await.unwrap_or(false) })
                    as futures::future::BoxFuture<'static, bool>
            };
            let session = Session::connect(&ctr.paths.socket(), &alive)
                .await
                .map_err(|e| {
                    Error::internal(format!(
                        "container {id}: the maintenance VM's tether did not answer ({e}); see {}",
                        ctr.paths.console().display()
                    ))
                })?;
            session.mount(config.spec.clone()).await.map_err(|e| {
                Error::internal(format!(
                    "container {id}: mounting its disks for maintenance: {e}"
                ))
            })?;
            Ok::<_, Error>(Arc::new(session))
        }
        .await;
        match booted {
            Ok(session) => Ok(Guest {
                session: session.clone(),
                _use: Some(Arc::new(MaintenanceUse(Arc::new(Maintenance {
                    pl: self.clone(),
                    ctr: ctr.clone(),
                    session,
                    guards: std::sync::Mutex::new(Some((lock, maint))),
                })))),
            }),
            Err(e) => {
                let _ = self.inner.hv.destroy(&config.domain).await;
                self.inner.maintenance.lock().expect("lock").remove(&id);
                Err(e)
            }
        }
    }

    /// Wait up to `limit` for a domain to end on its own, then end it.
    pub(crate) async fn wait_down(&self, domain: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if !self.inner.hv.is_active(domain).await.unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.inner.hv.destroy(domain).await;
    }

    /// `HEAD /containers/{id}/archive`: what is at `path`.
    pub async fn path_stat(&self, name_or_id: &str, path: &str) -> Result<PathStat> {
        let (clean, follow) = container_path(path)?;
        let name = name_or_id;
        let g = self.guest(name_or_id).await?;
        let mut st = g
            .session
            .stat(&clean, follow)
            .await
            .map_err(|e| file_err(e, path, name))?
            .ok_or_else(|| no_such_path(path, name))?;
        st.name = archive_name(path, &clean);
        Ok(st)
    }

    /// `GET /containers/{id}/archive`: a tar of `path` (named by its last element) and its stat.
    pub async fn archive_get(
        &self,
        name_or_id: &str,
        path: &str,
    ) -> Result<(PathStat, ArchiveStream)> {
        let (clean, follow) = container_path(path)?;
        let name = name_or_id;
        let top = archive_name(path, &clean);
        let g = self.guest(name_or_id).await?;
        let spec = ArchiveSpec {
            sources: vec![ArchiveSource {
                path: clean,
                name: if top == "/" {
                    String::new()
                } else {
                    top.clone()
                },
                recursive: true,
                follow,
            }],
            one_fs: false,
            whiteouts: vec![],
        };
        let (stat, reader) = g
            .session
            .archive_get(spec)
            .await
            .map_err(|e| file_err(e, path, name))?;
        let mut stat = stat.ok_or_else(|| no_such_path(path, name))?;
        stat.name = top;
        Ok((
            stat,
            ArchiveStream {
                inner: reader,
                _guest: g,
            },
        ))
    }

    /// `PUT /containers/{id}/archive`: unpack `tar` into the directory `path`. Entries keep
    /// the archive's owners, or with `to_user` (`docker cp -a`) belong to the container's user
    /// when it has one (as dockerd does).
    pub async fn archive_put(
        &self,
        name_or_id: &str,
        path: &str,
        tar: impl AsyncRead + Unpin + Send,
        no_overwrite_dir_non_dir: bool,
        to_user: bool,
    ) -> Result<()> {
        let (clean, _) = container_path(path)?;
        let name = name_or_id;
        let view = self.inspect(name_or_id)?;
        if view.config.mounts.iter().any(|m| {
            m.read_only && (clean == m.target || clean.starts_with(&format!("{}/", m.target)))
        }) {
            return Err(Error::invalid(format!(
                "mounted volume is marked read-only: {path} is on a read-only volume of container {name}"
            )));
        }
        let g = self.guest(name_or_id).await?;
        let user = &view.config.spec.main.user;
        let owner = if to_user && !user.is_empty() {
            Some(container_user(&g.session, user).await?)
        } else {
            None
        };
        g.session
            .archive_put(
                PutSpec {
                    path: clean,
                    no_overwrite_dir_non_dir,
                    owner,
                },
                tar,
            )
            .await
            .map_err(|e| file_err(e, path, name))
    }

    /// `docker diff`: what changed in the container's root filesystem against its image.
    pub async fn changes(&self, name_or_id: &str) -> Result<Vec<Change>> {
        let g = self.guest(name_or_id).await?;
        self.changes_with(name_or_id, &g).await
    }

    async fn changes_with(&self, name_or_id: &str, g: &Guest) -> Result<Vec<Change>> {
        let view = self.inspect(name_or_id)?;
        let images = self.inner.images.clone();
        let image_id = view.config.image_id.clone();
        let image = tokio::task::spawn_blocking(move || images.files(&image_id))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| {
                Error::internal(format!(
                    "listing the files of image {}: {e}",
                    view.config.image_id
                ))
            })?;
        let listed: Vec<FileEntry> = g
            .session
            .list("/", true)
            .await
            .map_err(|e| Error::internal(format!("listing the container's files: {e}")))?;
        let in_image: std::collections::HashSet<&str> =
            image.iter().map(|e| e.path.as_str()).collect();
        // The tether makes /tmp when an image has none; Docker's containers would not have it.
        let tmp_made = !in_image.contains("/tmp");
        let ignore = |p: &str| {
            RUNTIME_PATHS
                .iter()
                .any(|r| p == *r || (p.starts_with(r) && p.as_bytes().get(r.len()) == Some(&b'/')))
                || (tmp_made && p == "/tmp")
        };
        Ok(kic_image::changes::changes(&image, &listed, &ignore))
    }

    /// `docker export`: the container's root filesystem as a tar (without volumes and the
    /// kernel's filesystems).
    pub async fn export(&self, name_or_id: &str) -> Result<ArchiveStream> {
        let name = name_or_id;
        let g = self.guest(name_or_id).await?;
        let spec = ArchiveSpec {
            sources: vec![ArchiveSource {
                path: "/".into(),
                name: String::new(),
                recursive: true,
                follow: false,
            }],
            one_fs: true,
            whiteouts: vec![],
        };
        let (_, reader) = g
            .session
            .archive_get(spec)
            .await
            .map_err(|e| file_err(e, "/", name))?;
        Ok(ArchiveStream {
            inner: reader,
            _guest: g,
        })
    }

    /// `docker commit`: the container's changes as a new layer over its image. `config` is the
    /// new image's runtime configuration (the caller merges the container's, the request's and
    /// `--change`s).
    pub async fn commit(
        &self,
        name_or_id: &str,
        opts: CommitOptions,
    ) -> Result<kic_image::ImageRecord> {
        let view = self.inspect(name_or_id)?;
        let g = self.guest(name_or_id).await?;
        let changes = self.changes_with(name_or_id, &g).await?;
        let mut spec = ArchiveSpec {
            one_fs: true,
            ..Default::default()
        };
        for c in &changes {
            match c.kind {
                ChangeKind::Delete => spec.whiteouts.push(c.path.clone()),
                ChangeKind::Add | ChangeKind::Modify => spec.sources.push(ArchiveSource {
                    path: c.path.clone(),
                    name: c.path.trim_start_matches('/').to_string(),
                    recursive: false,
                    follow: false,
                }),
            }
        }
        let tmp = self.inner.images.layout().tmp_dir();
        let file = tempfile::Builder::new()
            .prefix("commit-")
            .suffix(".tar")
            .tempfile_in(&tmp)
            .map_err(|e| Error::io(format!("create a layer file in {}", tmp.display()), e))?;
        {
            let (_, mut reader) =
                g.session.archive_get(spec).await.map_err(|e| {
                    Error::internal(format!("archiving the container's changes: {e}"))
                })?;
            let out = file
                .reopen()
                .map_err(|e| Error::io(format!("open {}", file.path().display()), e))?;
            let mut out = tokio::fs::File::from_std(out);
            tokio::io::copy(&mut reader, &mut out)
                .await
                .map_err(|e| Error::internal(format!("archiving the container's changes: {e}")))?;
            out.flush()
                .await
                .map_err(|e| Error::io(format!("write {}", file.path().display()), e))?;
        }
        drop(g);
        let req = kic_image::commit::CommitRequest {
            base: view.config.image_id.clone(),
            layer: file.path().to_path_buf(),
            config: opts.config,
            author: opts.author,
            comment: opts.comment,
            created_by: opts.created_by,
            reference: opts.reference,
            disk_size: opts.disk_size,
        };
        let images = self.inner.images.clone();
        let rec = tokio::task::spawn_blocking(move || images.commit(req))
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
        drop(file);
        Ok(rec)
    }
}

/// What `docker commit` asks for besides the container.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub config: kic_image::ContainerConfig,
    pub author: String,
    pub comment: String,
    pub created_by: String,
    /// `repo[:tag]` to tag the new image with.
    pub reference: Option<String>,
    pub disk_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_cleaned_and_say_when_to_follow() {
        assert_eq!(container_path("/etc/").unwrap(), ("/etc".into(), true));
        assert_eq!(container_path("/etc/.").unwrap(), ("/etc".into(), true));
        assert_eq!(
            container_path("etc//passwd").unwrap(),
            ("/etc/passwd".into(), false)
        );
        assert_eq!(container_path("/../../x").unwrap(), ("/x".into(), false));
        assert_eq!(container_path("/").unwrap(), ("/".into(), true));
        assert!(container_path("").is_err());
    }

    #[test]
    fn passwd_and_group_lines_give_ids_by_name_or_number() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        assert_eq!(passwd_ids(passwd, "www"), Some((33, 34)));
        assert_eq!(passwd_ids(passwd, "33"), Some((33, 34)));
        assert_eq!(passwd_ids(passwd, "nobody"), None);
        let group = "root:x:0:\nstaff:x:50:www\n";
        assert_eq!(group_id(group, "staff"), Some(50));
        assert_eq!(group_id(group, "wheel"), None);
    }

    #[test]
    fn archive_names_are_the_last_element_as_asked() {
        assert_eq!(archive_name("/etc/passwd", "/etc/passwd"), "passwd");
        assert_eq!(archive_name("/etc/", "/etc"), "etc");
        assert_eq!(archive_name("/etc/.", "/etc"), ".");
        assert_eq!(archive_name("/", "/"), "/");
    }
}
