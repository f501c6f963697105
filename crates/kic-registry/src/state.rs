//! Shared server state and the permission check every route goes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::audit::AuditSink;
use crate::auth::{hash_secret, Principal};
use crate::blobstore::BlobStore;
use crate::config::Config;
use crate::db::{Db, Project};
use crate::layout::Layout;
use crate::rbac::{self, Act, Res};
use crate::token::Signer;

pub type St = Arc<AppState>;

pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub store: BlobStore,
    pub signer: Signer,
    pub audit: AuditSink,
    /// Verified credential pairs (key: SHA-256 of `user\0secret`).
    pub creds: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Pushes hold it shared while they make a blob referenced; GC holds it exclusively while
    /// it re-checks and deletes a batch. See [`crate::gc`].
    pub gc_lock: RwLock<()>,
    /// Pull counts not yet written to the database.
    pub pulls: Mutex<HashMap<(String, i64), i64>>,
    /// Report of the last garbage collection.
    pub last_gc: Mutex<Option<crate::gc::GcReport>>,
}

impl AppState {
    /// Opens the data directory and the metadata store; creates `admin` on first start and
    /// returns the generated password if one was generated.
    pub async fn open(config: Config) -> anyhow::Result<(St, Option<String>)> {
        let layout = Layout::new(&config.data_dir);
        if !layout.root().exists() {
            // Password hashes and the token key live here: owner only.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(layout.root())?;
        }
        let url = match &config.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", layout.sqlite_db().display()),
        };
        let db = Db::connect(&url).await?;
        let store = BlobStore::open(layout.clone()).await?;
        let signer = Signer::load_or_create(&layout.token_key())?;
        let mut generated = None;
        if db.user_by_name("admin").await?.is_none() {
            let pw = match &config.admin_password {
                Some(p) => p.clone(),
                None => {
                    let p = hex::encode(rand::random::<[u8; 12]>());
                    generated = Some(p.clone());
                    p
                }
            };
            let h = tokio::task::spawn_blocking(move || hash_secret(&pw)).await?;
            match db
                .create_user("admin", "admin@example.com", "system admin", "", &h, true)
                .await
            {
                Ok(_) | Err(crate::errors::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let audit = AuditSink::start(db.clone());
        let st = Arc::new(AppState {
            config,
            db,
            store,
            signer,
            audit,
            creds: Mutex::new(HashMap::new()),
            gc_lock: RwLock::new(()),
            pulls: Mutex::new(HashMap::new()),
            last_gc: Mutex::new(None),
        });
        Ok((st, generated))
    }

    pub async fn project(&self, name: &str) -> crate::db::Result<Option<Project>> {
        self.db.project_by_name(name).await
    }

    /// May `p` do `act` on `res` in `project`? Harbor's rules: system admins everything; members
    /// by role; robots by their explicit list; anyone may read a public project.
    pub async fn allowed(
        &self,
        p: &Principal,
        project: &Project,
        res: Res,
        act: Act,
    ) -> crate::db::Result<bool> {
        let by_identity = match p {
            Principal::Anonymous => false,
            Principal::User { sysadmin: true, .. } => true,
            Principal::User { id, .. } => match self.db.role_of(project.id, *id).await? {
                Some(role) => rbac::role_allows(role, res, act),
                None => false,
            },
            Principal::Robot {
                level,
                project_id,
                perms,
                ..
            } => {
                (level == "system" || *project_id == project.id)
                    && rbac::robot_allows(perms, &project.name, res, act)
            }
        };
        Ok(by_identity || (project.public && rbac::public_allows(res, act)))
    }

    /// Taken by a push while it makes blobs referenced or fresh (see [`crate::gc`]): the
    /// in-process lock shared, plus the cluster-wide one on PostgreSQL.
    pub async fn push_guard(&self) -> crate::db::Result<GcGuard<RwLockReadGuard<'_, ()>>> {
        let local = self.gc_lock.read().await;
        let cluster = self.db.cluster_lock(false).await?;
        Ok(GcGuard {
            _local: local,
            cluster,
        })
    }

    /// Taken by GC around each batch it re-checks and deletes: both locks exclusive.
    pub async fn gc_guard(&self) -> crate::db::Result<GcGuard<RwLockWriteGuard<'_, ()>>> {
        let local = self.gc_lock.write().await;
        let cluster = self.db.cluster_lock(true).await?;
        Ok(GcGuard {
            _local: local,
            cluster,
        })
    }

    /// Forgets cached credentials (after any change to users or robots).
    pub fn invalidate_credentials(&self) {
        self.creds.lock().unwrap().clear();
    }

    /// Counts a pull; counts reach the database in batches.
    pub fn count_pull(&self, repo: &str, artifact_id: i64) {
        *self
            .pulls
            .lock()
            .unwrap()
            .entry((repo.to_string(), artifact_id))
            .or_default() += 1;
    }

    pub async fn flush_pulls(&self) {
        let pulls = std::mem::take(&mut *self.pulls.lock().unwrap());
        for ((repo, artifact), n) in pulls {
            let _ = self.db.add_pulls(&repo, artifact, n).await;
        }
    }
}

/// The GC lock pair held by a push or a GC batch; call [`GcGuard::release`] when done.
pub struct GcGuard<L> {
    _local: L,
    cluster: Option<crate::db::ClusterLock>,
}

impl<L> GcGuard<L> {
    pub async fn release(self) {
        if let Some(c) = self.cluster {
            c.release().await;
        }
    }
}
