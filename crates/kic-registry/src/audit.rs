//! The audit log: who did what, to what, when, from where.
//!
//! Changes (pushes, deletes, creations, updates) are written before the request answers, so a
//! client that saw success can find its record even after a `kill -9`. Pulls, the hot path, are
//! queued and written in batches by one background task; they become queryable within
//! milliseconds, and [`AuditSink::flush`] drains the queue at shutdown.

use tokio::sync::{mpsc, oneshot};

use crate::auth::Caller;
use crate::db::{AuditLog, Db};

enum Msg {
    Log(AuditLog),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditSink {
    db: Db,
    tx: mpsc::UnboundedSender<Msg>,
}

impl AuditSink {
    /// Starts the writer task of queued records.
    pub fn start(db: Db) -> AuditSink {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let writer = db.clone();
        tokio::spawn(async move {
            let mut msgs = Vec::new();
            while rx.recv_many(&mut msgs, 512).await > 0 {
                let mut logs = vec![];
                let mut waiters = vec![];
                for m in msgs.drain(..) {
                    match m {
                        Msg::Log(l) => logs.push(l),
                        Msg::Flush(w) => waiters.push(w),
                    }
                }
                if !logs.is_empty() {
                    if let Err(e) = writer.insert_audit(&logs).await {
                        tracing::error!("audit log write failed: {e}");
                    }
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        });
        AuditSink { db, tx }
    }

    /// Records one operation (`push`, `pull`, `delete`, `create`, `update`) on a resource.
    pub async fn record(
        &self,
        who: &Caller,
        operation: &str,
        resource_type: &str,
        resource: &str,
        project_id: i64,
    ) {
        let log = AuditLog {
            id: 0,
            username: who.principal.name().to_string(),
            operation: operation.to_string(),
            resource_type: resource_type.to_string(),
            resource: resource.to_string(),
            project_id,
            client_ip: who.client_ip.clone(),
            op_time: crate::db::now(),
        };
        if operation == "pull" {
            let _ = self.tx.send(Msg::Log(log));
        } else if let Err(e) = self.db.insert_audit(std::slice::from_ref(&log)).await {
            tracing::error!("audit log write failed: {e}");
        }
    }

    /// Waits until every queued record is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
