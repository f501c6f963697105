//! The VCH's event stream (`GET /events`): a bounded history for `since`, and live delivery.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One event in the Docker API's shape (`Type`, `Action`, `Actor`, `time`, `timeNano`), plus
/// the legacy `status`/`id`/`from` fields the older clients read.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    #[serde(rename = "Type")]
    pub typ: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

const HISTORY: usize = 1024;

/// Cheap to clone; every clone publishes to the same stream.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Message>,
    history: Arc<Mutex<VecDeque<Message>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(256).0,
            history: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY))),
        }
    }

    /// Publish an event of `typ` (`container`, `image`, `network`, `volume`, `daemon`).
    pub fn publish(&self, typ: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let now = chrono::Utc::now();
        let nano = now.timestamp_nanos_opt().unwrap_or(0);
        let legacy = matches!(typ, "container" | "image");
        let m = Message {
            typ: typ.into(),
            action: action.into(),
            actor: Actor {
                id: id.into(),
                attributes: attributes.clone(),
            },
            scope: "local".into(),
            time: nano / 1_000_000_000,
            time_nano: nano,
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| id.to_string()),
            from: if typ == "container" {
                attributes.get("image").cloned()
            } else {
                None
            },
        };
        {
            let mut h = self.history.lock().expect("event history lock");
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(m.clone());
        }
        let _ = self.tx.send(m);
    }

    /// An image event; `name` is the reference the user gave (Docker's `name` attribute).
    pub fn image(&self, action: &str, id_or_ref: &str, name: &str) {
        let mut a = BTreeMap::new();
        a.insert("name".to_string(), name.to_string());
        self.publish("image", action, id_or_ref, a);
    }

    /// The stored events (oldest first) and a receiver for those that follow, taken together
    /// so that none is missed or repeated.
    pub fn subscribe(&self) -> (Vec<Message>, broadcast::Receiver<Message>) {
        let h = self.history.lock().expect("event history lock");
        let rx = self.tx.subscribe();
        (h.iter().cloned().collect(), rx)
    }
}

impl EventBus {
    /// A container event with dockerd's attributes (`image`, `name`, labels, and `extra`).
    pub fn container(
        &self,
        v: &kic_portlayer::ContainerView,
        action: &str,
        extra: BTreeMap<String, String>,
    ) {
        let mut a: BTreeMap<String, String> = v.config.labels.clone();
        a.insert("image".into(), v.config.image.clone());
        a.insert("name".into(), v.config.name.clone());
        a.extend(extra);
        self.publish("container", action, &v.config.id, a);
    }
}
