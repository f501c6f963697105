//! The audit log: who did what, to what, when, from where.
//!
//! Records are queued and written in batches by one background task, so a pull never waits on
//! a database write; they become queryable within milliseconds.

use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::db::{AuditLog, Db};

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditLog>,
}

impl AuditSink {
    /// Starts the writer task.
    pub fn start(db: Db) -> AuditSink {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditLog>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 512).await > 0 {
                if let Err(e) = db.insert_audit(&batch).await {
                    tracing::error!("audit log write failed: {e}");
                }
                batch.clear();
            }
        });
        AuditSink { tx }
    }

    /// Records one operation (`push`, `pull`, `delete`, `create`, `update`) on a resource.
    pub fn record(
        &self,
        who: &Caller,
        operation: &str,
        resource_type: &str,
        resource: &str,
        project_id: i64,
    ) {
        let _ = self.tx.send(AuditLog {
            id: 0,
            username: who.principal.name().to_string(),
            operation: operation.to_string(),
            resource_type: resource_type.to_string(),
            resource: resource.to_string(),
            project_id,
            client_ip: who.client_ip.clone(),
            op_time: crate::db::now(),
        });
    }
}
