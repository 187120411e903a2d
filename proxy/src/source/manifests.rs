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
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kproxy_model::{
    ClusterState, ObjectKey,
    manifest::{DocumentErrorReason, ManifestObject, parse_documents},
    validate_endpoint_slice, validate_node, validate_service,
};
use tracing::{debug, info, warn};

use super::{Source, SourceError};

/// How often the directory is scanned. Changes reach the model within this plus the sync
/// loop's minimum period.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A good object read from one document, shared so snapshots are pointer copies.
#[derive(Debug, Clone)]
enum Doc {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

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
    files: BTreeMap<PathBuf, FileState>,
    /// The state assembled after the last scan that changed anything.
    state: ClusterState,
    /// A change found by a scan and not yet reported by `changed()`.
    pending: bool,
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
            state: ClusterState::default(),
            pending: true,
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
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains_key(p));
        changed |= self.files.len() != before;
        for (path, fingerprint) in paths {
            let file = self.files.entry(path.clone()).or_default();
            if file.fingerprint == fingerprint && !file.docs.is_empty() {
                continue;
            }
            match fs::read_to_string(&path) {
                Ok(text) => {
                    file.docs = read_documents(&path, &text, &self.node_name, &file.docs);
                    file.fingerprint = fingerprint;
                    changed = true;
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest file; keeping its last good objects");
                    file.fingerprint = fingerprint;
                }
            }
        }
        if changed {
            self.state = self.assemble();
            self.pending = true;
        }
        changed
    }

    /// Builds the cluster state from every file's good documents. A later file wins when
    /// two define the same object (files are read in name order), with a warning.
    fn assemble(&self) -> ClusterState {
        let mut state = ClusterState::default();
        let mut seen: HashMap<(&'static str, ObjectKey), &Path> = HashMap::new();
        for (path, file) in &self.files {
            for doc in file.docs.iter().flatten() {
                let (kind, key) = match doc {
                    Doc::Service(s) => ("Service", key_of(&s.metadata)),
                    Doc::EndpointSlice(s) => ("EndpointSlice", key_of(&s.metadata)),
                    Doc::Node(n) => ("Node", key_of(&n.metadata)),
                };
                if let Some(first) = seen.insert((kind, key.clone()), path) {
                    warn!(kind, object = %format!("{}/{}", key.namespace, key.name), first = %first.display(), file = %path.display(), "object defined twice; the later file wins");
                }
                match doc {
                    Doc::Service(s) => {
                        state.services.insert(key, Arc::clone(s));
                    }
                    Doc::EndpointSlice(s) => {
                        state.slices.insert(key, Arc::clone(s));
                    }
                    Doc::Node(n) => state.node = Some(Arc::clone(n)),
                }
            }
        }
        state
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
        Some(self.state.clone())
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
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

/// Parses and validates every document of one file. A bad document is logged and replaced
/// by what the same position held when it was last good.
fn read_documents(
    path: &Path,
    text: &str,
    node_name: &str,
    previous: &[Option<Doc>],
) -> Vec<Option<Doc>> {
    let parsed_docs = parse_documents(text);
    // After a YAML syntax error the document boundaries themselves are in doubt, so the
    // whole file keeps what it last yielded rather than losing the documents after it.
    let syntax_errors: Vec<_> = parsed_docs
        .iter()
        .filter_map(|d| d.as_ref().err())
        .filter(|e| matches!(e.reason, DocumentErrorReason::Syntax { .. }))
        .collect();
    if !syntax_errors.is_empty() && !previous.is_empty() {
        for e in syntax_errors {
            warn!(file = %path.display(), "skipping manifest file with a syntax error, keeping its last good objects: {e}");
        }
        return previous.to_vec();
    }
    let mut docs = Vec::new();
    for (i, parsed) in parsed_docs.into_iter().enumerate() {
        let keep_previous = || previous.get(i).cloned().flatten();
        let doc = match parsed {
            Err(e) => {
                warn!(file = %path.display(), "skipping manifest {e}");
                keep_previous()
            }
            Ok(object) => match validated(object, node_name) {
                Ok(doc) => doc,
                Err((object, reason)) => {
                    warn!(file = %path.display(), document = i + 1, object = %object, reason = %reason, "skipping invalid manifest document; its last good version stays");
                    keep_previous()
                }
            },
        };
        docs.push(doc);
    }
    // An entirely empty file still counts as read.
    if docs.is_empty() {
        docs.push(None);
    }
    docs
}

/// Validates one object. Ok(None) for kinds the proxy ignores and for other nodes' Nodes.
fn validated(object: ManifestObject, node_name: &str) -> Result<Option<Doc>, (String, String)> {
    let name = |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{kind} {}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("<no name>")
        )
    };
    match object {
        ManifestObject::Service(s) => match validate_service(&s) {
            Ok(()) => Ok(Some(Doc::Service(Arc::new(s)))),
            Err(e) => Err((name("Service", &s.metadata), e.to_string())),
        },
        ManifestObject::EndpointSlice(s) => match validate_endpoint_slice(&s) {
            Ok(()) => Ok(Some(Doc::EndpointSlice(Arc::new(s)))),
            Err(e) => Err((name("EndpointSlice", &s.metadata), e.to_string())),
        },
        ManifestObject::Node(n) => {
            if n.metadata.name.as_deref() != Some(node_name) {
                debug!(node = ?n.metadata.name, "ignoring another node's Node");
                return Ok(None);
            }
            match validate_node(&n) {
                Ok(()) => Ok(Some(Doc::Node(Arc::new(n)))),
                Err(e) => Err((name("Node", &n.metadata), e.to_string())),
            }
        }
        ManifestObject::Ignored { api_version, kind } => {
            debug!(api_version, kind, "ignoring a kind the proxy does not read");
            Ok(None)
        }
    }
}
