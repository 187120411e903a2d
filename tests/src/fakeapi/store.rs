//! The fake API server's storage: one resourceVersion counter for everything, as etcd
//! has, the current objects, and a bounded history of events that watches replay.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::Arc,
};

use serde_json::Value;

/// How many events the history keeps; older ones are trimmed and watches or exact reads
/// from before them get 410 Gone, as from a real API server's watch cache.
const HISTORY_CAPACITY: usize = 10_000;

/// The resource types the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// `v1 Node`.
    Node,
}

impl Kind {
    /// Every kind the fake serves.
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// The `kind` field of an object of this type.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    /// The `apiVersion` field of an object of this type.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// Path of the cluster-wide collection, the only one the fake serves.
    pub fn collection_path(self) -> &'static str {
        match self {
            Self::Service => "/api/v1/services",
            Self::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
            Self::Node => "/api/v1/nodes",
        }
    }

    /// Whether objects of this type live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }

    pub(crate) fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }

    pub(crate) fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.collection_path() == path)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// Namespace ("" when cluster-scoped) and name.
pub(crate) type Key = (String, String);

/// The objects of one kind, ordered by key as the real server's lists are.
pub(crate) type Objects = BTreeMap<Key, Arc<Value>>;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One mutation. `prev` is what the object was before it: watches with selectors need it
/// to turn an update that leaves (enters) the selection into DELETED (ADDED), and exact
/// reads need it to undo history.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) key: Key,
    pub(crate) change: Change,
    /// The object after the event; for a deletion, the last state with the deletion's
    /// resourceVersion, as the real server sends it.
    pub(crate) object: Arc<Value>,
    pub(crate) prev: Option<Arc<Value>>,
}

/// Why an object cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The object is not a JSON object, or has no usable `kind`.
    #[error("object has no kind the fake serves (Service, EndpointSlice, Node): {kind:?}")]
    UnknownKind {
        /// The `kind` found, if any.
        kind: Option<String>,
    },
    /// `metadata.name` is missing or empty.
    #[error("{kind} has no metadata.name")]
    MissingName {
        /// The object's kind.
        kind: Kind,
    },
    /// The object did not serialize to JSON.
    #[error("object does not serialize to JSON")]
    Serialize(#[source] serde_json::Error),
}

/// The resourceVersion asked for is no longer in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone {
    /// The oldest resourceVersion still readable.
    pub(crate) oldest: u64,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Kind, Objects>,
    history: VecDeque<Event>,
    /// New watches and exact reads must start at or after this resourceVersion: every
    /// event after it is in the history.
    oldest: u64,
    /// A running watch that has not yet read up to this resourceVersion missed events
    /// that were trimmed or compacted away.
    lost_through: u64,
    next_uid: u64,
}

impl Default for Store {
    fn default() -> Self {
        // Like etcd, the counter never starts at zero: "0" means "any version" in requests.
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest: 1,
            lost_through: 0,
            next_uid: 1,
        }
    }
}

impl Store {
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or updates an object. Returns the resourceVersion after the call; an update
    /// that changes nothing is no write, as on the real server.
    pub(crate) fn apply(&mut self, mut object: Value) -> Result<u64, ApplyError> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::from_kind)
            .ok_or_else(|| ApplyError::UnknownKind {
                kind: object.get("kind").map(ToString::to_string),
            })?;
        let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApplyError::MissingName { kind });
        };
        let name = match metadata.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => return Err(ApplyError::MissingName { kind }),
        };
        let namespace = if kind.namespaced() {
            let ns = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ns = if ns.is_empty() { "default" } else { ns }.to_owned();
            metadata.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            metadata.remove("namespace");
            String::new()
        };
        object["apiVersion"] = Value::String(kind.api_version().into());
        let key = (namespace, name);

        let prev = self.objects.entry(kind).or_default().get(&key).cloned();
        // Server-owned fields survive an update that does not set them.
        for field in ["uid", "creationTimestamp"] {
            let kept = prev
                .as_ref()
                .and_then(|p| p["metadata"].get(field))
                .cloned();
            let value = kept.unwrap_or_else(|| match field {
                "uid" => {
                    self.next_uid += 1;
                    Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid))
                }
                _ => Value::String("2026-01-01T00:00:00Z".into()),
            });
            object["metadata"][field] = value;
        }
        if let Some(prev) = &prev {
            let mut unversioned = (**prev).clone();
            unversioned["metadata"]["resourceVersion"] = Value::Null;
            object["metadata"]["resourceVersion"] = Value::Null;
            if unversioned == object {
                return Ok(self.rv);
            }
        }

        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let object = Arc::new(object);
        self.objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), object.clone());
        let change = if prev.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        self.record(Event {
            rv: self.rv,
            kind,
            key,
            change,
            object,
            prev,
        });
        Ok(self.rv)
    }

    /// Deletes an object; returns whether it existed.
    pub(crate) fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (namespace.to_owned(), name.to_owned());
        let Some(prev) = self.objects.entry(kind).or_default().remove(&key) else {
            return false;
        };
        self.rv += 1;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(Event {
            rv: self.rv,
            kind,
            key,
            change: Change::Deleted,
            object: Arc::new(last),
            prev: Some(prev),
        });
        true
    }

    /// Forgets the whole history, as an etcd compaction does. The counter moves on (in a
    /// real cluster other writes, Leases for one, keep it moving), so a client that
    /// relists gets a version it can watch from, while any watch from before gets 410.
    pub(crate) fn compact(&mut self) {
        self.lost_through = self.rv;
        self.rv += 1;
        self.oldest = self.rv;
        self.history.clear();
    }

    fn record(&mut self, event: Event) {
        self.history.push_back(event);
        while self.history.len() > HISTORY_CAPACITY {
            let trimmed = self.history.pop_front().expect("history is not empty");
            self.oldest = self.oldest.max(trimmed.rv);
            self.lost_through = self.lost_through.max(trimmed.rv);
        }
    }

    /// The current objects of `kind`.
    pub(crate) fn current(&self, kind: Kind) -> Objects {
        self.objects.get(&kind).cloned().unwrap_or_default()
    }

    /// The objects of `kind` as they were at resourceVersion `rv`, undoing the history.
    pub(crate) fn at(&self, kind: Kind, rv: u64) -> Result<Objects, Gone> {
        if rv < self.oldest {
            return Err(Gone {
                oldest: self.oldest,
            });
        }
        let mut objects = self.current(kind);
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if event.kind != kind {
                continue;
            }
            match &event.prev {
                Some(prev) => objects.insert(event.key.clone(), prev.clone()),
                None => objects.remove(&event.key),
            };
        }
        Ok(objects)
    }

    /// Events of `kind` after `rv`, for a new watch (`fresh`) or a running one. A new
    /// watch needs the whole history after `rv`; a running one only lost something if
    /// events it had not read yet were dropped.
    pub(crate) fn events_after(
        &self,
        kind: Kind,
        rv: u64,
        fresh: bool,
    ) -> Result<Vec<Event>, Gone> {
        let lost = if fresh {
            rv < self.oldest
        } else {
            rv < self.lost_through
        };
        if lost {
            return Err(Gone {
                oldest: self.oldest,
            });
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.kind == kind)
            .cloned()
            .collect())
    }
}
