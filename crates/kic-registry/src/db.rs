//! The one metadata data layer, over SQLite (embedded default) or PostgreSQL.
//!
//! Both backends get the same schema (only the auto-increment key spelling differs) and the same
//! SQL, through sqlx's `Any` driver: `$N` placeholders, `ON CONFLICT` upserts and `RETURNING` are
//! understood by both. Times are Unix seconds (`BIGINT`), booleans are `0`/`1`.
//!
//! Room for later issues: `artifacts.subject` indexes every referrer (cosign signatures are
//! referrers or `sha256-<digest>.sig` tags), `projects.metadata` is a free JSON object for
//! per-project policy (e.g. signature enforcement), and replication policies get their own
//! tables beside `registries`-style endpoints without touching these.

use std::sync::Arc;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::errors::StoreError;

pub type Result<T> = std::result::Result<T, StoreError>;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
  id {PK}, username TEXT NOT NULL UNIQUE, email TEXT NOT NULL DEFAULT '',
  realname TEXT NOT NULL DEFAULT '', comment TEXT NOT NULL DEFAULT '', password_hash TEXT NOT NULL,
  sysadmin BIGINT NOT NULL DEFAULT 0, creation_time BIGINT NOT NULL, update_time BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
  id {PK}, name TEXT NOT NULL UNIQUE, owner_id BIGINT NOT NULL, public BIGINT NOT NULL DEFAULT 0,
  metadata TEXT NOT NULL DEFAULT '{}', creation_time BIGINT NOT NULL, update_time BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS project_members (
  id {PK}, project_id BIGINT NOT NULL, user_id BIGINT NOT NULL, role_id BIGINT NOT NULL,
  creation_time BIGINT NOT NULL, update_time BIGINT NOT NULL, UNIQUE (project_id, user_id));
CREATE TABLE IF NOT EXISTS robots (
  id {PK}, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '', secret_hash TEXT NOT NULL,
  level TEXT NOT NULL, project_id BIGINT NOT NULL DEFAULT 0, disabled BIGINT NOT NULL DEFAULT 0,
  duration BIGINT NOT NULL, expires_at BIGINT NOT NULL, permissions TEXT NOT NULL,
  creator TEXT NOT NULL DEFAULT '', creation_time BIGINT NOT NULL, update_time BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS repositories (
  id {PK}, project_id BIGINT NOT NULL, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
  pull_count BIGINT NOT NULL DEFAULT 0, creation_time BIGINT NOT NULL, update_time BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
  digest TEXT PRIMARY KEY, size BIGINT NOT NULL, creation_time BIGINT NOT NULL, last_seen BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS repo_blobs (
  repository TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (repository, digest));
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs (digest);
CREATE TABLE IF NOT EXISTS artifacts (
  id {PK}, repository_id BIGINT NOT NULL, project_id BIGINT NOT NULL, repository_name TEXT NOT NULL,
  digest TEXT NOT NULL, media_type TEXT NOT NULL, config_media_type TEXT NOT NULL,
  artifact_type TEXT NOT NULL, size BIGINT NOT NULL, subject TEXT, annotations TEXT NOT NULL DEFAULT '{}',
  push_time BIGINT NOT NULL, pull_time BIGINT NOT NULL DEFAULT 0, UNIQUE (repository_id, digest));
CREATE INDEX IF NOT EXISTS artifacts_subject ON artifacts (repository_id, subject);
CREATE INDEX IF NOT EXISTS artifacts_digest ON artifacts (digest);
CREATE TABLE IF NOT EXISTS artifact_refs (
  artifact_id BIGINT NOT NULL, digest TEXT NOT NULL, kind TEXT NOT NULL, size BIGINT NOT NULL,
  media_type TEXT NOT NULL, platform TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS artifact_refs_artifact ON artifact_refs (artifact_id);
CREATE INDEX IF NOT EXISTS artifact_refs_digest ON artifact_refs (digest);
CREATE TABLE IF NOT EXISTS tags (
  id {PK}, repository_id BIGINT NOT NULL, artifact_id BIGINT NOT NULL, name TEXT NOT NULL,
  push_time BIGINT NOT NULL, pull_time BIGINT NOT NULL DEFAULT 0, UNIQUE (repository_id, name));
CREATE INDEX IF NOT EXISTS tags_artifact ON tags (artifact_id);
CREATE TABLE IF NOT EXISTS audit_logs (
  id {PK}, username TEXT NOT NULL, operation TEXT NOT NULL, resource_type TEXT NOT NULL,
  resource TEXT NOT NULL, project_id BIGINT NOT NULL DEFAULT 0, client_ip TEXT NOT NULL DEFAULT '',
  op_time BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_logs_project ON audit_logs (project_id);
"#;

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    #[serde(skip)]
    pub password_hash: String,
    pub sysadmin: bool,
    pub creation_time: i64,
    pub update_time: i64,
}

#[derive(Clone, Debug)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub public: bool,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub creation_time: i64,
    pub update_time: i64,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub id: i64,
    pub project_id: i64,
    pub user_id: i64,
    pub username: String,
    pub role_id: i64,
    pub creation_time: i64,
    pub update_time: i64,
}

#[derive(Clone, Debug)]
pub struct Robot {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub secret_hash: String,
    pub level: String,
    pub project_id: i64,
    pub disabled: bool,
    pub duration: i64,
    pub expires_at: i64,
    pub permissions: String,
    pub creator: String,
    pub creation_time: i64,
    pub update_time: i64,
}

#[derive(Clone, Debug)]
pub struct Repository {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub description: String,
    pub pull_count: i64,
    pub artifact_count: i64,
    pub creation_time: i64,
    pub update_time: i64,
}

#[derive(Clone, Debug)]
pub struct Artifact {
    pub id: i64,
    pub repository_id: i64,
    pub project_id: i64,
    pub repository_name: String,
    pub digest: String,
    pub media_type: String,
    pub config_media_type: String,
    pub artifact_type: String,
    pub size: i64,
    pub subject: Option<String>,
    pub annotations: String,
    pub push_time: i64,
    pub pull_time: i64,
}

#[derive(Clone, Debug)]
pub struct Tag {
    pub id: i64,
    pub repository_id: i64,
    pub artifact_id: i64,
    pub name: String,
    pub push_time: i64,
    pub pull_time: i64,
}

/// What a manifest points at.
#[derive(Clone, Debug)]
pub struct ArtifactRef {
    pub digest: String,
    /// `blob` (config or layer) or `manifest` (child of an index).
    pub kind: String,
    pub size: i64,
    pub media_type: String,
    /// `os/architecture[/variant]` for index children, empty otherwise.
    pub platform: String,
}

#[derive(Clone, Debug)]
pub struct AuditLog {
    pub id: i64,
    pub username: String,
    pub operation: String,
    pub resource_type: String,
    pub resource: String,
    pub project_id: i64,
    pub client_ip: String,
    pub op_time: i64,
}

/// A new manifest to record.
pub struct NewArtifact<'a> {
    pub project_id: i64,
    pub repository: &'a str,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub config_media_type: &'a str,
    pub artifact_type: &'a str,
    pub size: i64,
    pub subject: Option<&'a str>,
    pub annotations: &'a str,
    pub refs: &'a [ArtifactRef],
    pub tag: Option<&'a str>,
}

fn user_row(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        email: r.try_get("email")?,
        realname: r.try_get("realname")?,
        comment: r.try_get("comment")?,
        password_hash: r.try_get("password_hash")?,
        sysadmin: r.try_get::<i64, _>("sysadmin")? != 0,
        creation_time: r.try_get("creation_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn project_row(r: &AnyRow) -> Result<Project> {
    let meta: String = r.try_get("metadata")?;
    Ok(Project {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        owner_id: r.try_get("owner_id")?,
        public: r.try_get::<i64, _>("public")? != 0,
        metadata: serde_json::from_str(&meta).unwrap_or_default(),
        creation_time: r.try_get("creation_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn member_row(r: &AnyRow) -> Result<Member> {
    Ok(Member {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        role_id: r.try_get("role_id")?,
        creation_time: r.try_get("creation_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn robot_row(r: &AnyRow) -> Result<Robot> {
    Ok(Robot {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        secret_hash: r.try_get("secret_hash")?,
        level: r.try_get("level")?,
        project_id: r.try_get("project_id")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        duration: r.try_get("duration")?,
        expires_at: r.try_get("expires_at")?,
        permissions: r.try_get("permissions")?,
        creator: r.try_get("creator")?,
        creation_time: r.try_get("creation_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn repo_row(r: &AnyRow) -> Result<Repository> {
    Ok(Repository {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        pull_count: r.try_get("pull_count")?,
        artifact_count: r.try_get("artifact_count")?,
        creation_time: r.try_get("creation_time")?,
        update_time: r.try_get("update_time")?,
    })
}

fn artifact_row(r: &AnyRow) -> Result<Artifact> {
    Ok(Artifact {
        id: r.try_get("id")?,
        repository_id: r.try_get("repository_id")?,
        project_id: r.try_get("project_id")?,
        repository_name: r.try_get("repository_name")?,
        digest: r.try_get("digest")?,
        media_type: r.try_get("media_type")?,
        config_media_type: r.try_get("config_media_type")?,
        artifact_type: r.try_get("artifact_type")?,
        size: r.try_get("size")?,
        subject: r.try_get("subject")?,
        annotations: r.try_get("annotations")?,
        push_time: r.try_get("push_time")?,
        pull_time: r.try_get("pull_time")?,
    })
}

fn tag_row(r: &AnyRow) -> Result<Tag> {
    Ok(Tag {
        id: r.try_get("id")?,
        repository_id: r.try_get("repository_id")?,
        artifact_id: r.try_get("artifact_id")?,
        name: r.try_get("name")?,
        push_time: r.try_get("push_time")?,
        pull_time: r.try_get("pull_time")?,
    })
}

fn ref_row(r: &AnyRow) -> Result<ArtifactRef> {
    Ok(ArtifactRef {
        digest: r.try_get("digest")?,
        kind: r.try_get("kind")?,
        size: r.try_get("size")?,
        media_type: r.try_get("media_type")?,
        platform: r.try_get("platform")?,
    })
}

fn audit_row(r: &AnyRow) -> Result<AuditLog> {
    Ok(AuditLog {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        operation: r.try_get("operation")?,
        resource_type: r.try_get("resource_type")?,
        resource: r.try_get("resource")?,
        project_id: r.try_get("project_id")?,
        client_ip: r.try_get("client_ip")?,
        op_time: r.try_get("op_time")?,
    })
}

const REPO_SELECT: &str = "SELECT r.id, r.project_id, r.name, r.description, r.pull_count, r.creation_time, r.update_time, \
     (SELECT COUNT(*) FROM artifacts a WHERE a.repository_id = r.id) AS artifact_count FROM repositories r";

const MEMBER_SELECT: &str =
    "SELECT m.id, m.project_id, m.user_id, u.username, m.role_id, m.creation_time, m.update_time \
     FROM project_members m JOIN users u ON u.id = m.user_id";

/// A write transaction. On SQLite it also holds the process-wide writer lock, so that two
/// read-then-write transactions can never dead-lock on SQLite's lock upgrade.
pub struct WriteTx<'a> {
    pub tx: Transaction<'static, Any>,
    _guard: Option<MutexGuard<'a, ()>>,
}

impl WriteTx<'_> {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// A cluster-wide PostgreSQL advisory lock (session level) held on a connection of its own.
/// Release it with [`ClusterLock::release`]; dropped unreleased (an early return), its
/// connection is closed instead of going back to the pool, which releases the lock too.
pub struct ClusterLock {
    conn: Option<sqlx::pool::PoolConnection<Any>>,
}

impl ClusterLock {
    pub async fn release(mut self) {
        if let Some(mut c) = self.conn.take() {
            if sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *c)
                .await
                .is_err()
            {
                drop(c.detach());
            }
        }
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            drop(c.detach());
        }
    }
}

/// Advisory lock key shared by pushes (shared) and garbage collection (exclusive).
const GC_LOCK_KEY: i64 = 0x6b69_6367; // "kicg"

/// Handle to the metadata store.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    /// PostgreSQL only: connections that hold advisory locks (never used for queries, so a
    /// lock holder waiting for a query connection cannot starve the others).
    lock_pool: Option<AnyPool>,
    writer: Option<Arc<Mutex<()>>>,
    backend: &'static str,
}

impl Db {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and creates the schema.
    pub async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let opts = AnyPoolOptions::new().max_connections(if sqlite { 8 } else { 16 });
        let opts = if sqlite {
            opts.after_connect(|conn, _| {
                Box::pin(async move {
                    for p in [
                        "PRAGMA journal_mode=WAL",
                        "PRAGMA busy_timeout=30000",
                        "PRAGMA synchronous=NORMAL",
                    ] {
                        sqlx::query(p).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
        } else {
            opts
        };
        let pool = opts.connect(url).await?;
        let lock_pool = if sqlite {
            None
        } else {
            Some(
                AnyPoolOptions::new()
                    .max_connections(32)
                    .min_connections(0)
                    .connect_lazy(url)?,
            )
        };
        let db = Db {
            pool,
            lock_pool,
            writer: sqlite.then(|| Arc::new(Mutex::new(()))),
            backend: if sqlite { "sqlite" } else { "postgresql" },
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Takes the cluster-wide GC lock (shared for pushes, exclusive for GC) when several
    /// registries may share this database (PostgreSQL); `None` on SQLite, which serves one
    /// process only (the in-process lock covers it).
    pub async fn cluster_lock(&self, exclusive: bool) -> Result<Option<ClusterLock>> {
        let Some(lp) = &self.lock_pool else {
            return Ok(None);
        };
        let mut conn = lp.acquire().await?;
        let q = if exclusive {
            "SELECT pg_advisory_lock($1)"
        } else {
            "SELECT pg_advisory_lock_shared($1)"
        };
        sqlx::query(q).bind(GC_LOCK_KEY).execute(&mut *conn).await?;
        Ok(Some(ClusterLock { conn: Some(conn) }))
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        let pk = if self.writer.is_some() {
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        } else {
            "BIGSERIAL PRIMARY KEY"
        };
        let schema = SCHEMA.replace("{PK}", pk);
        let mut tx = self.begin().await?;
        if self.writer.is_none() {
            // Several servers may start together on one PostgreSQL database.
            sqlx::query("SELECT pg_advisory_xact_lock(4242)")
                .execute(&mut *tx.tx)
                .await?;
        }
        for stmt in schema.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&mut *tx.tx).await?;
        }
        tx.commit().await
    }

    pub async fn begin(&self) -> Result<WriteTx<'_>> {
        let guard = match &self.writer {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        Ok(WriteTx {
            tx: self.pool.begin().await?,
            _guard: guard,
        })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- users -------------------------------------------------------------------------

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    pub async fn create_user(
        &self,
        username: &str,
        email: &str,
        realname: &str,
        comment: &str,
        password_hash: &str,
        sysadmin: bool,
    ) -> Result<i64> {
        let t = now();
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO users (username, email, realname, comment, password_hash, sysadmin, creation_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
        )
        .bind(username)
        .bind(email)
        .bind(realname)
        .bind(comment)
        .bind(password_hash)
        .bind(sysadmin as i64)
        .bind(t)
        .fetch_one(&mut *tx.tx)
        .await
        .map_err(|e| StoreError::from(e).conflict_on_unique("user"))?
        .try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row)
            .transpose()
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row)
            .transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_row)
            .collect()
    }

    pub async fn update_user(
        &self,
        id: i64,
        email: &str,
        realname: &str,
        comment: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET email = $1, realname = $2, comment = $3, update_time = $4 WHERE id = $5")
            .bind(email)
            .bind(realname)
            .bind(comment)
            .bind(now())
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    pub async fn set_user_password(&self, id: i64, hash: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $1, update_time = $2 WHERE id = $3")
            .bind(hash)
            .bind(now())
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    pub async fn set_user_sysadmin(&self, id: i64, sysadmin: bool) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET sysadmin = $1, update_time = $2 WHERE id = $3")
            .bind(sysadmin as i64)
            .bind(now())
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    pub async fn delete_user(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM project_members WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    // ---- projects ----------------------------------------------------------------------

    /// Creates a project; its creator becomes its project admin.
    pub async fn create_project(
        &self,
        name: &str,
        owner_id: i64,
        public: bool,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<i64> {
        let t = now();
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO projects (name, owner_id, public, metadata, creation_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        )
        .bind(name)
        .bind(owner_id)
        .bind(public as i64)
        .bind(serde_json::to_string(metadata).unwrap_or_default())
        .bind(t)
        .fetch_one(&mut *tx.tx)
        .await
        .map_err(|e| StoreError::from(e).conflict_on_unique("project"))?
        .try_get("id")?;
        sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role_id, creation_time, update_time) \
             VALUES ($1, $2, 1, $3, $3)",
        )
        .bind(id)
        .bind(owner_id)
        .bind(t)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        sqlx::query("SELECT * FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(project_row)
            .transpose()
    }

    pub async fn project_by_id(&self, id: i64) -> Result<Option<Project>> {
        sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(project_row)
            .transpose()
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        sqlx::query("SELECT * FROM projects ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(project_row)
            .collect()
    }

    pub async fn update_project(
        &self,
        id: i64,
        public: bool,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE projects SET public = $1, metadata = $2, update_time = $3 WHERE id = $4",
        )
        .bind(public as i64)
        .bind(serde_json::to_string(metadata).unwrap_or_default())
        .bind(now())
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    pub async fn delete_project(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM repositories WHERE project_id = $1")
            .bind(id)
            .fetch_one(&mut *tx.tx)
            .await?
            .try_get("n")?;
        if n > 0 {
            return Err(StoreError::Conflict(
                "the project contains repositories, can not be deleted".into(),
            ));
        }
        sqlx::query("DELETE FROM project_members WHERE project_id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM robots WHERE level = 'project' AND project_id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    // ---- members -----------------------------------------------------------------------

    pub async fn role_of(&self, project_id: i64, user_id: i64) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT role_id FROM project_members WHERE project_id = $1 AND user_id = $2",
        )
        .bind(project_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get("role_id"))
        .transpose()?)
    }

    /// Every (project, role) of a user.
    pub async fn roles_of_user(&self, user_id: i64) -> Result<Vec<(i64, i64)>> {
        sqlx::query("SELECT project_id, role_id FROM project_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("project_id")?, r.try_get("role_id")?)))
            .collect()
    }

    pub async fn members(&self, project_id: i64) -> Result<Vec<Member>> {
        sqlx::query(&format!(
            "{MEMBER_SELECT} WHERE m.project_id = $1 ORDER BY m.id"
        ))
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(member_row)
        .collect()
    }

    pub async fn member(&self, project_id: i64, id: i64) -> Result<Option<Member>> {
        sqlx::query(&format!(
            "{MEMBER_SELECT} WHERE m.project_id = $1 AND m.id = $2"
        ))
        .bind(project_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(member_row)
        .transpose()
    }

    pub async fn add_member(&self, project_id: i64, user_id: i64, role_id: i64) -> Result<i64> {
        let t = now();
        let mut tx = self.begin().await?;
        let id = sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role_id, creation_time, update_time) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
        )
        .bind(project_id)
        .bind(user_id)
        .bind(role_id)
        .bind(t)
        .fetch_one(&mut *tx.tx)
        .await
        .map_err(|e| StoreError::from(e).conflict_on_unique("member"))?
        .try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn update_member(&self, project_id: i64, id: i64, role_id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE project_members SET role_id = $1, update_time = $2 WHERE project_id = $3 AND id = $4")
            .bind(role_id)
            .bind(now())
            .bind(project_id)
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    pub async fn delete_member(&self, project_id: i64, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND id = $2")
            .bind(project_id)
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    // ---- robots ------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn create_robot(
        &self,
        name: &str,
        description: &str,
        secret_hash: &str,
        level: &str,
        project_id: i64,
        duration: i64,
        expires_at: i64,
        permissions: &str,
        creator: &str,
    ) -> Result<i64> {
        let t = now();
        let mut tx = self.begin().await?;
        let id = sqlx::query(
            "INSERT INTO robots (name, description, secret_hash, level, project_id, disabled, duration, expires_at, \
             permissions, creator, creation_time, update_time) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $10) \
             RETURNING id",
        )
        .bind(name)
        .bind(description)
        .bind(secret_hash)
        .bind(level)
        .bind(project_id)
        .bind(duration)
        .bind(expires_at)
        .bind(permissions)
        .bind(creator)
        .bind(t)
        .fetch_one(&mut *tx.tx)
        .await
        .map_err(|e| StoreError::from(e).conflict_on_unique("robot"))?
        .try_get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn robot_by_id(&self, id: i64) -> Result<Option<Robot>> {
        sqlx::query("SELECT * FROM robots WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(robot_row)
            .transpose()
    }

    pub async fn robot_by_name(&self, name: &str) -> Result<Option<Robot>> {
        sqlx::query("SELECT * FROM robots WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(robot_row)
            .transpose()
    }

    pub async fn robots(&self) -> Result<Vec<Robot>> {
        sqlx::query("SELECT * FROM robots ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(robot_row)
            .collect()
    }

    pub async fn update_robot(
        &self,
        id: i64,
        description: &str,
        disabled: bool,
        duration: i64,
        expires_at: i64,
        permissions: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE robots SET description = $1, disabled = $2, duration = $3, expires_at = $4, permissions = $5, \
             update_time = $6 WHERE id = $7",
        )
        .bind(description)
        .bind(disabled as i64)
        .bind(duration)
        .bind(expires_at)
        .bind(permissions)
        .bind(now())
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    pub async fn set_robot_secret(&self, id: i64, hash: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE robots SET secret_hash = $1, update_time = $2 WHERE id = $3")
            .bind(hash)
            .bind(now())
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    pub async fn delete_robot(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM robots WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    // ---- repositories ------------------------------------------------------------------

    pub async fn repository(&self, name: &str) -> Result<Option<Repository>> {
        sqlx::query(&format!("{REPO_SELECT} WHERE r.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(repo_row)
            .transpose()
    }

    /// Repositories of one project, or of all projects, sorted by name.
    pub async fn repositories(&self, project_id: Option<i64>) -> Result<Vec<Repository>> {
        let rows = match project_id {
            Some(p) => {
                sqlx::query(&format!(
                    "{REPO_SELECT} WHERE r.project_id = $1 ORDER BY r.name"
                ))
                .bind(p)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{REPO_SELECT} ORDER BY r.name"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(repo_row).collect()
    }

    pub async fn repository_count(&self, project_id: i64) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM repositories WHERE project_id = $1")
                .bind(project_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    pub async fn update_repository(&self, name: &str, description: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE repositories SET description = $1, update_time = $2 WHERE name = $3")
            .bind(description)
            .bind(now())
            .bind(name)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Deletes a repository with its artifacts, tags and blob links (blobs stay for GC).
    pub async fn delete_repository(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let id: Option<i64> = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
        let Some(id) = id else {
            return Err(StoreError::NotFound(format!("repository {name} not found")));
        };
        for q in [
            "DELETE FROM artifact_refs WHERE artifact_id IN (SELECT id FROM artifacts WHERE repository_id = $1)",
            "DELETE FROM tags WHERE repository_id = $1",
            "DELETE FROM artifacts WHERE repository_id = $1",
            "DELETE FROM repositories WHERE id = $1",
        ] {
            sqlx::query(q).bind(id).execute(&mut *tx.tx).await?;
        }
        sqlx::query("DELETE FROM repo_blobs WHERE repository = $1")
            .bind(name)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Adds `n` to a repository's pull counter.
    /// Adds `n` pulls of artifact `artifact_id` to its repository's counter and stamps the
    /// artifact's pull time.
    pub async fn add_pulls(&self, repo: &str, artifact_id: i64, n: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE repositories SET pull_count = pull_count + $1 WHERE name = $2")
            .bind(n)
            .bind(repo)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("UPDATE artifacts SET pull_time = $1 WHERE id = $2")
            .bind(now())
            .bind(artifact_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    // ---- blobs -------------------------------------------------------------------------

    /// Records a committed blob (or refreshes its `last_seen`) and links it to `repo`.
    pub async fn put_blob(&self, repo: &str, digest: &str, size: i64) -> Result<()> {
        let t = now();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO blobs (digest, size, creation_time, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (digest) DO UPDATE SET last_seen = $3",
        )
        .bind(digest)
        .bind(size)
        .bind(t)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query(
            "INSERT INTO repo_blobs (repository, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(digest)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Size of a blob linked to `repo`.
    pub async fn linked_blob(&self, repo: &str, digest: &str) -> Result<Option<i64>> {
        Ok(sqlx::query(
            "SELECT b.size FROM repo_blobs l JOIN blobs b ON b.digest = l.digest WHERE l.repository = $1 AND l.digest = $2",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get("size"))
        .transpose()?)
    }

    /// (size, last_seen) of a blob, wherever it is linked.
    pub async fn blob(&self, digest: &str) -> Result<Option<(i64, i64)>> {
        Ok(
            sqlx::query("SELECT size, last_seen FROM blobs WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get("size")?, r.try_get("last_seen")?)))
                .transpose()?,
        )
    }

    /// Marks a blob as just used by a push, protecting it from GC for the grace period.
    pub async fn touch_blob(&self, digest: &str) -> Result<()> {
        sqlx::query("UPDATE blobs SET last_seen = $1 WHERE digest = $2")
            .bind(now())
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM repo_blobs WHERE repository = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Blobs that no manifest references and no push touched since `cutoff`.
    pub async fn gc_candidates(&self, cutoff: i64) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT b.digest FROM blobs b WHERE b.last_seen < $1 \
             AND NOT EXISTS (SELECT 1 FROM artifact_refs r WHERE r.digest = b.digest) \
             AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.digest = b.digest)",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("digest")?))
        .collect()
    }

    /// Re-checks a GC candidate and forgets it if still unreferenced. The caller holds the GC
    /// write lock, so no push can reference it between the check and the delete.
    pub async fn gc_forget(&self, digest: &str, cutoff: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "DELETE FROM blobs WHERE digest = $1 AND last_seen < $2 \
             AND NOT EXISTS (SELECT 1 FROM artifact_refs r WHERE r.digest = $1) \
             AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.digest = $1)",
        )
        .bind(digest)
        .bind(cutoff)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query("DELETE FROM repo_blobs WHERE digest = $1")
                .bind(digest)
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- artifacts and tags ------------------------------------------------------------

    /// Records a manifest (creating its repository if needed), its references and its tag.
    pub async fn put_artifact(&self, a: &NewArtifact<'_>) -> Result<(i64, bool)> {
        let t = now();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO repositories (project_id, name, creation_time, update_time) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET update_time = $3",
        )
        .bind(a.project_id)
        .bind(a.repository)
        .bind(t)
        .execute(&mut *tx.tx)
        .await?;
        let repo_id: i64 = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(a.repository)
            .fetch_one(&mut *tx.tx)
            .await?
            .try_get("id")?;
        // Insert-or-find, safe against a concurrent push of the same manifest on PostgreSQL.
        let inserted: Option<i64> = sqlx::query(
            "INSERT INTO artifacts (repository_id, project_id, repository_name, digest, media_type, \
             config_media_type, artifact_type, size, subject, annotations, push_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (repository_id, digest) DO NOTHING RETURNING id",
        )
        .bind(repo_id)
        .bind(a.project_id)
        .bind(a.repository)
        .bind(a.digest)
        .bind(a.media_type)
        .bind(a.config_media_type)
        .bind(a.artifact_type)
        .bind(a.size)
        .bind(a.subject)
        .bind(a.annotations)
        .bind(t)
        .fetch_optional(&mut *tx.tx)
        .await?
        .map(|r| r.try_get("id"))
        .transpose()?;
        let created = inserted.is_some();
        let art_id = match inserted {
            Some(id) => {
                for r in a.refs {
                    sqlx::query(
                        "INSERT INTO artifact_refs (artifact_id, digest, kind, size, media_type, platform) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(&r.digest)
                    .bind(&r.kind)
                    .bind(r.size)
                    .bind(&r.media_type)
                    .bind(&r.platform)
                    .execute(&mut *tx.tx)
                    .await?;
                }
                id
            }
            None => {
                sqlx::query("SELECT id FROM artifacts WHERE repository_id = $1 AND digest = $2")
                    .bind(repo_id)
                    .bind(a.digest)
                    .fetch_one(&mut *tx.tx)
                    .await?
                    .try_get("id")?
            }
        };
        if let Some(tag) = a.tag {
            sqlx::query(
                "INSERT INTO tags (repository_id, artifact_id, name, push_time) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET artifact_id = $2, push_time = $4",
            )
            .bind(repo_id)
            .bind(art_id)
            .bind(tag)
            .bind(t)
            .execute(&mut *tx.tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO blobs (digest, size, creation_time, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (digest) DO UPDATE SET last_seen = $3",
        )
        .bind(a.digest)
        .bind(a.size)
        .bind(t)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok((art_id, created))
    }

    pub async fn artifact_by_digest(&self, repo: &str, digest: &str) -> Result<Option<Artifact>> {
        sqlx::query("SELECT * FROM artifacts WHERE repository_name = $1 AND digest = $2")
            .bind(repo)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(artifact_row)
            .transpose()
    }

    pub async fn artifact_by_tag(&self, repo: &str, tag: &str) -> Result<Option<Artifact>> {
        sqlx::query(
            "SELECT a.* FROM tags t JOIN repositories r ON r.id = t.repository_id \
             JOIN artifacts a ON a.id = t.artifact_id WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(artifact_row)
        .transpose()
    }

    /// Whether a manifest with `digest` exists in `repo` (for index children).
    pub async fn has_manifest(&self, repo: &str, digest: &str) -> Result<bool> {
        Ok(self.artifact_by_digest(repo, digest).await?.is_some())
    }

    pub async fn artifacts(&self, repo: &str) -> Result<Vec<Artifact>> {
        sqlx::query(
            "SELECT * FROM artifacts WHERE repository_name = $1 ORDER BY push_time DESC, id DESC",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(artifact_row)
        .collect()
    }

    pub async fn referrers(&self, repo: &str, subject: &str) -> Result<Vec<Artifact>> {
        sqlx::query(
            "SELECT * FROM artifacts WHERE repository_name = $1 AND subject = $2 ORDER BY id",
        )
        .bind(repo)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(artifact_row)
        .collect()
    }

    pub async fn artifact_refs(&self, artifact_id: i64) -> Result<Vec<ArtifactRef>> {
        sqlx::query("SELECT * FROM artifact_refs WHERE artifact_id = $1")
            .bind(artifact_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(ref_row)
            .collect()
    }

    /// Deletes a manifest, its tags and references (its blobs stay for GC).
    pub async fn delete_artifact(&self, id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        for q in [
            "DELETE FROM artifact_refs WHERE artifact_id = $1",
            "DELETE FROM tags WHERE artifact_id = $1",
            "DELETE FROM artifacts WHERE id = $1",
        ] {
            sqlx::query(q).bind(id).execute(&mut *tx.tx).await?;
        }
        tx.commit().await
    }

    /// Tags of a repository, sorted by name.
    pub async fn tags(&self, repo: &str) -> Result<Vec<Tag>> {
        sqlx::query(
            "SELECT t.* FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = $1 ORDER BY t.name",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(tag_row)
        .collect()
    }

    pub async fn tags_of(&self, artifact_id: i64) -> Result<Vec<Tag>> {
        sqlx::query("SELECT * FROM tags WHERE artifact_id = $1 ORDER BY name")
            .bind(artifact_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(tag_row)
            .collect()
    }

    pub async fn add_tag(&self, repository_id: i64, artifact_id: i64, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO tags (repository_id, artifact_id, name, push_time) VALUES ($1, $2, $3, $4)")
            .bind(repository_id)
            .bind(artifact_id)
            .bind(name)
            .bind(now())
            .execute(&mut *tx.tx)
            .await
            .map_err(|e| StoreError::from(e).conflict_on_unique("tag"))?;
        tx.commit().await
    }

    pub async fn delete_tag(&self, repo: &str, name: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "DELETE FROM tags WHERE name = $1 AND repository_id IN (SELECT id FROM repositories WHERE name = $2)",
        )
        .bind(name)
        .bind(repo)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn total_storage(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM blobs")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    // ---- audit -------------------------------------------------------------------------

    pub async fn insert_audit(&self, logs: &[AuditLog]) -> Result<()> {
        let mut tx = self.begin().await?;
        for l in logs {
            sqlx::query(
                "INSERT INTO audit_logs (username, operation, resource_type, resource, project_id, client_ip, op_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&l.username)
            .bind(&l.operation)
            .bind(&l.resource_type)
            .bind(&l.resource)
            .bind(l.project_id)
            .bind(&l.client_ip)
            .bind(l.op_time)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await
    }

    /// One page of audit records matching `conds`, newest first (oldest first with
    /// `ascending`), limited to `projects` when given; also returns the total match count.
    pub async fn audit_page(
        &self,
        projects: Option<&[i64]>,
        conds: &[(&'static str, Cond)],
        ascending: bool,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AuditLog>, i64)> {
        let mut wheres = vec![];
        let mut binds: Vec<Bind> = vec![];
        let ph = |b: Bind, binds: &mut Vec<Bind>| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(ps) = projects {
            if ps.is_empty() {
                return Ok((vec![], 0));
            }
            let list: Vec<String> = ps.iter().map(|p| ph(Bind::I(*p), &mut binds)).collect();
            wheres.push(format!("project_id IN ({})", list.join(", ")));
        }
        for (col, c) in conds {
            match c {
                Cond::Eq(v) => {
                    wheres.push(format!("{col} = {}", ph(Bind::S(v.clone()), &mut binds)))
                }
                Cond::Contains(v) => {
                    let esc = v
                        .to_lowercase()
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    wheres.push(format!(
                        "LOWER({col}) LIKE {} ESCAPE '\\'",
                        ph(Bind::S(format!("%{esc}%")), &mut binds)
                    ));
                }
                Cond::AnyOf(vs) => {
                    let list: Vec<String> = vs
                        .iter()
                        .map(|v| ph(Bind::S(v.clone()), &mut binds))
                        .collect();
                    wheres.push(format!("{col} IN ({})", list.join(", ")));
                }
                Cond::Between(a, b) => {
                    if let Some(a) = a {
                        wheres.push(format!("{col} >= {}", ph(Bind::I(*a), &mut binds)));
                    }
                    if let Some(b) = b {
                        wheres.push(format!("{col} <= {}", ph(Bind::I(*b), &mut binds)));
                    }
                }
            }
        }
        let filter = if wheres.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", wheres.join(" AND "))
        };
        let order = if ascending { "ASC" } else { "DESC" };
        let count_sql = format!("SELECT COUNT(*) AS n FROM audit_logs{filter}");
        let mut q = sqlx::query(&count_sql);
        for b in &binds {
            q = b.bind(q);
        }
        let total: i64 = q.fetch_one(&self.pool).await?.try_get("n")?;
        let page_sql = format!(
            "SELECT * FROM audit_logs{filter} ORDER BY id {order} LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        );
        let mut q = sqlx::query(&page_sql);
        for b in &binds {
            q = b.bind(q);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok((rows.iter().map(audit_row).collect::<Result<_>>()?, total))
    }
}

/// A condition of a filtered query (from Harbor's `q=` syntax).
#[derive(Clone, Debug)]
pub enum Cond {
    Eq(String),
    Contains(String),
    AnyOf(Vec<String>),
    Between(Option<i64>, Option<i64>),
}

enum Bind {
    I(i64),
    S(String),
}

impl Bind {
    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Bind::I(i) => q.bind(*i),
            Bind::S(s) => q.bind(s.as_str()),
        }
    }
}
