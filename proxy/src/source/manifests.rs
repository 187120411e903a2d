//! The manifests source: a directory of ordinary Kubernetes YAML/JSON, watched.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in the directory (not recursive) is read as a
//! stream of documents. Services, EndpointSlices and this node's Node are kept; other kinds
//! are skipped with a debug line. The directory is polled (every [`POLL_INTERVAL`]): a file
//! is re-read when its size, mtime or inode changes, so an editor's atomic rename is seen
//! too, and nothing needs inotify inside containers or netns.
//!
//! Bad input never takes anything away. A document that does not parse or validate is
//! skipped with one warning naming the file, the document, the object and the reason, and
//! whatever that document last yielded when it was good stays in the state. A file with a
//! YAML syntax error, or that cannot be read, keeps all its last good objects (document
//! boundaries cannot be trusted past a syntax error); a file that is removed takes them away.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use kproxy_model::{
    Changes, ClusterState, Interner, NodeInfo, ObjectKey, ServiceInfo, SliceInfo,
    manifest::{DocumentErrorReason, ManifestObject, for_each_document},
};
use tracing::{debug, info, warn};

use super::{Source, SourceError};

/// How often the directory is scanned. Changes reach the model within this plus the sync
/// loop's minimum period.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A good object read from one document, converted to the model's input and shared, so
/// snapshots are pointer copies.
#[derive(Debug, Clone)]
struct Doc {
    /// Which store the object goes to, and its key there.
    key: (Kind, ObjectKey),
    object: Object,
}

#[derive(Debug, Clone)]
enum Object {
    Service(Arc<ServiceInfo>),
    EndpointSlice(Arc<SliceInfo>),
    Node(Arc<NodeInfo>),
}

impl Doc {
    /// Which store the object goes to, and its key there.
    fn key(&self) -> (Kind, ObjectKey) {
        self.key.clone()
    }

    /// Same object and same content.
    fn same(&self, other: &Doc) -> bool {
        self.key == other.key
            && match (&self.object, &other.object) {
                (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b) || a == b,
                (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b) || a == b,
                (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
    }

    /// Same `Arc`: the object did not change at all.
    fn identical(&self, other: &Object) -> bool {
        match (&self.object, other) {
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b),
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b),
            (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The three stores of [`ClusterState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
}

/// The definitions of one object, by file, sorted by path; the last one wins.
type Definitions = Vec<(Arc<Path>, Doc)>;

/// What the source remembers of one file.
#[derive(Debug, Default)]
struct FileState {
    /// Size, mtime (ns) and inode when last read; a change of any means re-read.
    fingerprint: (u64, i64, u64),
    /// The last good object of each document, by position; None where a document never
    /// was good (or is of a kind the proxy ignores).
    docs: Vec<Option<Doc>>,
}

/// The manifests source. It owns its state and scans inside [`Source::changed`], so no
/// background task or lock is needed.
#[derive(Debug)]
pub struct ManifestsSource {
    dir: PathBuf,
    node_name: String,
    files: BTreeMap<Arc<Path>, FileState>,
    /// Every definition of every object, by file: when two files define the same object
    /// the later file (in name order) wins, with a warning.
    /// Each list is sorted by path; nearly every object has one definition, which a Vec
    /// holds in one small allocation where a one-entry map would take a whole B-tree node.
    defs: HashMap<(Kind, ObjectKey), Definitions>,
    /// The state, shared copy-on-write with the sync loop: a change updates it in place
    /// unless a snapshot is still alive.
    state: Arc<ClusterState>,
    /// What changed since the last [`Source::snapshot_changes`].
    changes: Changes,
    /// A change found by a scan and not yet reported by `changed()`.
    pending: bool,
    /// Shares endpoint node names and zones among all slices read.
    strings: Interner,
    /// The directory could not be listed at the last scan (logged once per outage).
    dir_unreadable: bool,
}

impl ManifestsSource {
    /// Reads `dir` once. Fails only when `dir` is not a readable directory at start.
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Result<Self, SourceError> {
        let dir = dir.into();
        fs::read_dir(&dir).map_err(|e| SourceError::Start {
            source_kind: "manifests",
            reason: format!("cannot read directory {}: {e}", dir.display()),
        })?;
        let mut source = Self {
            dir,
            node_name: node_name.into(),
            files: BTreeMap::new(),
            defs: HashMap::new(),
            state: Arc::default(),
            changes: Changes::All,
            pending: true,
            strings: Interner::default(),
            dir_unreadable: false,
        };
        source.scan();
        Ok(source)
    }

    /// Scans the directory; returns true when the state changed.
    fn scan(&mut self) -> bool {
        let paths = match list_manifest_files(&self.dir) {
            Ok(paths) => {
                if std::mem::take(&mut self.dir_unreadable) {
                    info!(dir = %self.dir.display(), "manifests directory readable again");
                }
                paths
            }
            Err(e) => {
                if !self.dir_unreadable {
                    warn!(dir = %self.dir.display(), error = %e, "cannot list the manifests directory; keeping the last state");
                    self.dir_unreadable = true;
                }
                return false;
            }
        };
        let mut changed = false;
        let removed: Vec<Arc<Path>> = self
            .files
            .keys()
            .filter(|p| !paths.contains_key(&***p))
            .cloned()
            .collect();
        for path in removed {
            let file = self.files.remove(&path).unwrap_or_default();
            changed |= self.replace_docs(&path, &file.docs, &[]);
        }
        for (path, fingerprint) in paths {
            // One shared copy of each file's path, however many objects it defines.
            let path: Arc<Path> = match self.files.get_key_value(path.as_path()) {
                Some((known, _)) => Arc::clone(known),
                None => Arc::from(path),
            };
            let file = self.files.entry(Arc::clone(&path)).or_default();
            if file.fingerprint == fingerprint && !file.docs.is_empty() {
                continue;
            }
            file.fingerprint = fingerprint;
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let old = std::mem::take(&mut file.docs);
                    let read =
                        read_documents(&path, &text, &self.node_name, &mut self.strings, &old);
                    let new = reuse_unchanged(read, &old);
                    file.docs.clone_from(&new);
                    changed |= self.replace_docs(&path, &old, &new);
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest file; keeping its last good objects");
                }
            }
        }
        if changed {
            self.pending = true;
            self.strings.prune();
        }
        changed
    }

    /// Replaces what `path` defines (`old`) with `new` and updates the state for every
    /// object whose winning definition changed; true when any did.
    fn replace_docs(&mut self, path: &Arc<Path>, old: &[Option<Doc>], new: &[Option<Doc>]) -> bool {
        let mut touched = BTreeSet::new();
        for doc in old.iter().flatten() {
            let key = doc.key();
            if let Some(defs) = self.defs.get_mut(&key) {
                defs.retain(|(p, _)| p != path);
            }
            touched.insert(key);
        }
        for doc in new.iter().flatten() {
            let key = doc.key();
            let defs = self.defs.entry(key.clone()).or_default();
            match defs.binary_search_by(|(p, _)| (**p).cmp(&**path)) {
                Ok(at) => defs[at].1 = doc.clone(),
                Err(at) => defs.insert(at, (Arc::clone(path), doc.clone())),
            }
            if defs.len() == 2 {
                let first = defs[0].0.display().to_string();
                warn!(kind = ?key.0, object = %key.1, first, file = %path.display(), "object defined in two files; the later file wins");
            }
            touched.insert(key);
        }
        let mut changed = false;
        for key in touched {
            let winner = self
                .defs
                .get(&key)
                .and_then(|d| d.last().map(|(_, doc)| doc.clone()));
            if winner.is_none() {
                self.defs.remove(&key);
            }
            changed |= self.set(key, winner);
        }
        changed
    }

    /// Puts `doc` (or nothing) at `key` in the state; records the change. False when the
    /// state already held that very object.
    fn set(&mut self, (kind, key): (Kind, ObjectKey), doc: Option<Doc>) -> bool {
        let current = match kind {
            Kind::Service => self
                .state
                .services
                .get(&key)
                .map(|s| Object::Service(Arc::clone(s))),
            Kind::EndpointSlice => self
                .state
                .slices
                .get(&key)
                .map(|s| Object::EndpointSlice(Arc::clone(s))),
            Kind::Node => self
                .state
                .node
                .as_ref()
                .map(|n| Object::Node(Arc::clone(n))),
        };
        if match (&current, &doc) {
            (None, None) => true,
            (Some(a), Some(b)) => b.identical(a),
            _ => false,
        } {
            return false;
        }
        drop(current);
        let state = Arc::make_mut(&mut self.state);
        let mut services = BTreeSet::new();
        let mut slices = BTreeSet::new();
        let mut node = false;
        match (kind, doc.map(|d| d.object)) {
            (Kind::Service, Some(Object::Service(s))) => {
                state.services.insert(key.clone(), s);
                services.insert(key);
            }
            (Kind::Service, _) => {
                state.services.remove(&key);
                services.insert(key);
            }
            (Kind::EndpointSlice, Some(Object::EndpointSlice(s))) => {
                state.slices.insert(key.clone(), s);
                slices.insert(key);
            }
            (Kind::EndpointSlice, _) => {
                state.slices.remove(&key);
                slices.insert(key);
            }
            (Kind::Node, Some(Object::Node(n))) => {
                state.node = Some(n);
                node = true;
            }
            (Kind::Node, _) => {
                state.node = None;
                node = true;
            }
        }
        self.changes.merge(Changes::Keys {
            services,
            slices,
            node,
        });
        true
    }
}

impl Source for ManifestsSource {
    async fn changed(&mut self) -> Result<(), SourceError> {
        // Cancel-safe: the only await is the sleep; scanning is synchronous.
        while !std::mem::take(&mut self.pending) {
            tokio::time::sleep(POLL_INTERVAL).await;
            self.scan();
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Option<ClusterState> {
        Some((*self.state).clone())
    }

    fn snapshot_changes(&mut self) -> Option<(Arc<ClusterState>, Changes)> {
        Some((
            Arc::clone(&self.state),
            std::mem::replace(&mut self.changes, Changes::none()),
        ))
    }
}

/// Keeps the previous `Arc` of every object whose content did not change, so an edit to one
/// object of a big file changes one object, not all of them.
fn reuse_unchanged(new: Vec<Option<Doc>>, old: &[Option<Doc>]) -> Vec<Option<Doc>> {
    let by_key: HashMap<(Kind, ObjectKey), &Doc> =
        old.iter().flatten().map(|d| (d.key(), d)).collect();
    new.into_iter()
        .map(|doc| {
            doc.map(|d| match by_key.get(&d.key()) {
                Some(prev) if prev.same(&d) => (*prev).clone(),
                _ => d,
            })
        })
        .collect()
}

/// Manifest files in `dir` with their fingerprints.
fn list_manifest_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, (u64, i64, u64)>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        // Hidden files are editors' swap and temporary files.
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !is_manifest || hidden {
            continue;
        }
        if let Ok(meta) = fs::metadata(&path)
            && meta.is_file()
        {
            out.insert(
                path,
                (
                    meta.len(),
                    meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                    meta.ino(),
                ),
            );
        }
    }
    Ok(out)
}

/// Parses, validates and converts every document of one file, one at a time: each API
/// object is dropped as soon as it is converted. A bad document is logged and replaced by
/// what the same position held when it was last good.
fn read_documents(
    path: &Path,
    text: &str,
    node_name: &str,
    strings: &mut Interner,
    previous: &[Option<Doc>],
) -> Vec<Option<Doc>> {
    let mut docs = Vec::new();
    // After a YAML syntax error the document boundaries themselves are in doubt, so the
    // whole file keeps what it last yielded rather than losing the documents after it.
    // Warnings wait until that is known: a file kept whole warns about its syntax only.
    let mut syntax_errors = Vec::new();
    let mut skipped = Vec::new();
    for_each_document(text, |parsed| {
        let index = docs.len();
        let keep_previous = || previous.get(index).cloned().flatten();
        let doc = match parsed {
            Err(e) => {
                if matches!(e.reason, DocumentErrorReason::Syntax { .. }) {
                    syntax_errors.push(e.to_string());
                }
                skipped.push(Skipped::Document(e));
                keep_previous()
            }
            Ok(object) => match converted(&object, node_name, strings) {
                Ok(doc) => doc,
                Err((object, reason)) => {
                    skipped.push(Skipped::Invalid {
                        document: index + 1,
                        object,
                        reason,
                    });
                    keep_previous()
                }
            },
        };
        docs.push(doc);
    });
    if !syntax_errors.is_empty() && !previous.is_empty() {
        for e in syntax_errors {
            warn!(file = %path.display(), "skipping manifest file with a syntax error, keeping its last good objects: {e}");
        }
        return previous.to_vec();
    }
    for skip in skipped {
        match skip {
            Skipped::Document(e) => warn!(file = %path.display(), "skipping manifest {e}"),
            Skipped::Invalid {
                document,
                object,
                reason,
            } => {
                warn!(file = %path.display(), document, object = %object, reason = %reason, "skipping invalid manifest document; its last good version stays");
            }
        }
    }
    // An entirely empty file still counts as read.
    if docs.is_empty() {
        docs.push(None);
    }
    docs
}

/// A document that yielded nothing, to be logged once the file is read.
enum Skipped {
    /// It did not parse.
    Document(kproxy_model::manifest::DocumentError),
    /// It parsed but is not valid.
    Invalid {
        document: usize,
        object: String,
        reason: String,
    },
}

/// Validates and converts one object. Ok(None) for kinds the proxy ignores and for other
/// nodes' Nodes.
fn converted(
    object: &ManifestObject,
    node_name: &str,
    strings: &mut Interner,
) -> Result<Option<Doc>, (String, String)> {
    let name = |kind: &str, key: &ObjectKey| {
        let name = if key.name.is_empty() {
            "<no name>"
        } else {
            &*key.name
        };
        format!("{kind} {}/{name}", key.namespace)
    };
    let Some(key) = object.key() else {
        if let ManifestObject::Ignored { api_version, kind } = object {
            debug!(api_version, kind, "ignoring a kind the proxy does not read");
        }
        return Ok(None);
    };
    match object {
        ManifestObject::Service(s) => {
            let info = ServiceInfo::from_k8s(s);
            match info.validate() {
                Ok(()) => Ok(Some(Doc {
                    key: (Kind::Service, key),
                    object: Object::Service(Arc::new(info)),
                })),
                Err(e) => Err((name("Service", &key), e.to_string())),
            }
        }
        ManifestObject::EndpointSlice(s) => {
            let info = SliceInfo::from_k8s(s, strings);
            match info.validate() {
                Ok(()) => Ok(Some(Doc {
                    key: (Kind::EndpointSlice, key),
                    object: Object::EndpointSlice(Arc::new(info)),
                })),
                Err(e) => Err((name("EndpointSlice", &key), e.to_string())),
            }
        }
        ManifestObject::Node(n) => {
            if n.metadata.name.as_deref() != Some(node_name) {
                debug!(node = ?n.metadata.name, "ignoring another node's Node");
                return Ok(None);
            }
            let info = NodeInfo::from_k8s(n);
            match info.validate() {
                Ok(()) => Ok(Some(Doc {
                    key: (Kind::Node, key),
                    object: Object::Node(Arc::new(info)),
                })),
                Err(e) => Err((name("Node", &key), e.to_string())),
            }
        }
        ManifestObject::Ignored { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Names are not y/n/yes/no...: YAML 1.1 reads those as booleans, as kubectl's parser does.
    fn svc(name: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec: {{clusterIP: {ip}, clusterIPs: [{ip}], ports: [{{port: 80}}]}}\n"
        )
    }

    fn slice(name: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"]}}]\nports: [{{port: 8080}}]\n"
        )
    }

    fn service_info(yaml: &str) -> ServiceInfo {
        match kproxy_model::manifest::parse_documents(yaml).remove(0) {
            Ok(ManifestObject::Service(svc)) => ServiceInfo::from_k8s(&svc),
            other => panic!("not a Service: {other:?}"),
        }
    }

    fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
        names.iter().map(|n| ObjectKey::new("t", *n)).collect()
    }

    fn changes(src: &mut ManifestsSource) -> Changes {
        src.scan();
        src.snapshot_changes()
            .expect("manifests are always ready")
            .1
    }

    #[test]
    fn edits_report_exactly_the_objects_that_changed() {
        let dir =
            std::env::temp_dir().join(format!("kproxy-manifests-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        let text = |ep: &str| {
            format!(
                "{}{}{}{}",
                svc("p", "198.51.100.1"),
                slice("p", "100.64.1.1"),
                svc("q", "198.51.100.2"),
                slice("q", ep)
            )
        };
        fs::write(&file, text("100.64.1.2")).unwrap();
        let mut src = ManifestsSource::new(&dir, "n").unwrap();
        assert_eq!(
            changes(&mut src),
            Changes::All,
            "the first snapshot says everything changed"
        );
        assert_eq!(changes(&mut src), Changes::none());

        // One slice of a big file changes: only that slice is reported; the other objects
        // keep their Arcs.
        let before = src.snapshot_changes().unwrap().0;
        fs::write(&file, text("100.64.1.9")).unwrap();
        // Same length as before: the size stays, and the mtime may too within its
        // granularity, so forget the fingerprint.
        src.files.get_mut(file.as_path()).unwrap().fingerprint = (0, 0, 0);
        assert_eq!(
            changes(&mut src),
            Changes::Keys {
                services: keys(&[]),
                slices: keys(&["q-1"]),
                node: false
            }
        );
        let after = src.snapshot_changes().unwrap().0;
        assert!(Arc::ptr_eq(
            &before.services[&ObjectKey::new("t", "p")],
            &after.services[&ObjectKey::new("t", "p")]
        ));
        assert!(!Arc::ptr_eq(
            &before.slices[&ObjectKey::new("t", "q-1")],
            &after.slices[&ObjectKey::new("t", "q-1")]
        ));

        // A second file defining x again: the later file wins, x changes.
        fs::write(dir.join("b.yaml"), svc("p", "198.51.100.9")).unwrap();
        assert_eq!(
            changes(&mut src),
            Changes::Keys {
                services: keys(&["p"]),
                slices: keys(&[]),
                node: false
            }
        );
        assert_eq!(
            *src.snapshot().unwrap().services[&ObjectKey::new("t", "p")],
            service_info(&svc("p", "198.51.100.9"))
        );
        // Removing it brings a.yaml's x back.
        fs::remove_file(dir.join("b.yaml")).unwrap();
        assert_eq!(
            changes(&mut src),
            Changes::Keys {
                services: keys(&["p"]),
                slices: keys(&[]),
                node: false
            }
        );
        assert_eq!(
            *src.snapshot().unwrap().services[&ObjectKey::new("t", "p")],
            service_info(&svc("p", "198.51.100.1"))
        );

        // Removing the file removes everything it defined.
        assert_eq!(src.snapshot().unwrap().services.len(), 2);
        fs::remove_file(&file).unwrap();
        assert_eq!(
            changes(&mut src),
            Changes::Keys {
                services: keys(&["p", "q"]),
                slices: keys(&["p-1", "q-1"]),
                node: false
            }
        );
        let state = src.snapshot().unwrap();
        assert!(state.services.is_empty() && state.slices.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
