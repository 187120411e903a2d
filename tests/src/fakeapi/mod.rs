//! A fake Kubernetes API server for kproxy's API source: a real HTTP/1.1 server on
//! `127.0.0.1:<ephemeral>` speaking the list/watch protocol for the three collections
//! kube-proxy reads, cluster-wide: `/api/v1/services`,
//! `/apis/discovery.k8s.io/v1/endpointslices` and `/api/v1/nodes`.
//!
//! It follows the documented semantics of the real server
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>) for what a client like
//! kube-rs' watcher relies on:
//! - one resourceVersion counter for everything, bumped by every write; lists carry it in
//!   `metadata.resourceVersion`, objects in `metadata.resourceVersion`;
//! - watches from a resourceVersion replay the events after it from a bounded history;
//!   a version older than the history gets a 410 `Expired` ERROR event (HTTP 200), as the
//!   real server's watch cache answers, and a too-old exact list or continue token gets
//!   HTTP 410;
//! - selected watches turn an update that leaves (enters) the selection into DELETED
//!   (ADDED);
//! - `resourceVersion` / `resourceVersionMatch` (`NotOlderThan`, `Exact`) on lists,
//!   `limit` / `continue` pagination, `timeoutSeconds`, `allowWatchBookmarks` (periodic
//!   BOOKMARKs and one when a watch times out), `sendInitialEvents` (streaming lists,
//!   ending with the `k8s.io/initial-events-end` bookmark);
//! - label selectors `key`, `!key`, `key=value`, `key!=value` and the field selectors the
//!   real server supports per kind (`metadata.name`, `spec.clusterIP`, ...).
//!
//! It does not do: writes over HTTP (tests write through [`FakeApiServer::apply`] and
//! [`FakeApiServer::delete`]), namespaced collection paths, other kinds, protobuf, TLS,
//! authentication, set-based selectors (refused with 400), defaulting or validation of
//! objects (a Service keeps the clusterIP the test gives it).
//!
//! The server runs on its own tokio runtime and thread, so it serves the same whether the
//! test is synchronous or async, and [`FakeApiServer::stop`] can take it away completely
//! (listener and every connection) and [`FakeApiServer::restart`] bring it back on the
//! same port.

mod http;
mod selector;
mod store;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{runtime::Runtime, sync::watch};

use self::store::Store;
pub use self::store::{ApplyError, Kind};

/// Interval of the BOOKMARK events a watch with `allowWatchBookmarks` gets, like the
/// real server's (about a minute), unless a test sets another.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_mins(1);

/// How long [`FakeApiServer::restart`] retries to listen on its old port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by the control handle and the server's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The current resourceVersion, so running watches wake on every write.
    written: watch::Sender<u64>,
    /// Bumped by [`FakeApiServer::drop_watches`]; every running watch then breaks.
    drops: watch::Sender<u64>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Lists still to fail, per kind (`None`: any kind).
    failing_lists: Mutex<BTreeMap<Option<Kind>, u32>>,
    bookmark_interval: Mutex<Duration>,
    open_watches: Mutex<usize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take the server down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn wrote(&self, store: &Store) {
        self.written.send_replace(store.resource_version());
    }

    /// Whether this list must fail, consuming one failure.
    pub(crate) fn take_list_failure(&self, kind: Kind) -> bool {
        let mut failing = lock(&self.failing_lists);
        for slot in [Some(kind), None] {
            if let Some(n) = failing.get_mut(&slot)
                && *n > 0
            {
                *n -= 1;
                return true;
            }
        }
        false
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        *lock(&self.bookmark_interval)
    }

    pub(crate) fn watch_opened(self: &Arc<Self>) -> OpenWatch {
        *lock(&self.open_watches) += 1;
        OpenWatch(self.clone())
    }
}

/// Counts a running watch until dropped (also when the runtime is shut down under it).
pub(crate) struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        *lock(&self.0.open_watches) -= 1;
    }
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method, `GET` for everything kube's watcher sends.
    pub method: String,
    /// Path and query as sent (percent-encoded).
    pub uri: String,
    /// The path.
    pub path: String,
    /// The query parameters, decoded.
    pub params: BTreeMap<String, String>,
}

impl RecordedRequest {
    /// Whether this is a watch (`watch=true`) rather than a list.
    pub fn is_watch(&self) -> bool {
        self.params
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }

    /// A query parameter, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// A running fake API server; see the module docs. Every method takes `&self`, so a test
/// can share it.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    port: u16,
    runtime: Mutex<Option<Runtime>>,
}

impl FakeApiServer {
    /// Starts a server on an ephemeral port of 127.0.0.1, with no objects.
    ///
    /// # Panics
    /// If it cannot listen or start its runtime.
    pub fn start() -> Self {
        let (written, _) = watch::channel(0);
        let (drops, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            written,
            drops,
            requests: Mutex::default(),
            failing_lists: Mutex::default(),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            open_watches: Mutex::new(0),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("fake API server: bind");
        let port = listener
            .local_addr()
            .expect("fake API server: local address")
            .port();
        let server = Self {
            shared,
            port,
            runtime: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("fake API server: set_nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fakeapi")
            .enable_all()
            .build()
            .expect("fake API server: runtime");
        let router = http::router(self.shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .expect("fake API server: register the listener");
            axum::serve(listener, router)
                .await
                .expect("fake API server: serve");
        });
        *lock(&self.runtime) = Some(runtime);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Writes `dir/kubeconfig`, pointing at this server with no authentication, and
    /// returns its path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        // JSON is YAML, so any kubeconfig reader takes it.
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        });
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Creates or updates an object (a k8s-openapi Service, EndpointSlice or Node, or the
    /// same as a `serde_json::Value`); namespaced objects without a namespace go to
    /// `default`. Returns the resourceVersion after the write; an update that changes
    /// nothing is not a write.
    ///
    /// # Panics
    /// If the object is not one of the three kinds or has no name: that is a bug in the
    /// test.
    pub fn apply(&self, object: impl Serialize) -> u64 {
        self.try_apply(object)
            .unwrap_or_else(|e| panic!("fake API server: {e}"))
    }

    /// [`FakeApiServer::apply`], returning the error instead of panicking.
    pub fn try_apply(&self, object: impl Serialize) -> Result<u64, ApplyError> {
        let value = serde_json::to_value(object).map_err(ApplyError::Serialize)?;
        let mut store = self.shared.store();
        let rv = store.apply(value)?;
        self.shared.wrote(&store);
        Ok(rv)
    }

    /// Deletes an object (`namespace` is ignored for Nodes); returns whether it existed.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.store();
        let existed = store.delete(kind, namespace, name);
        self.shared.wrote(&store);
        existed
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Breaks every running watch abruptly: the connection closes in the middle of the
    /// chunked response, as when a load balancer or the server dies.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|generation| *generation += 1);
    }

    /// Forgets the event history, as an etcd compaction does: every new watch from a
    /// resourceVersion before this call gets 410 Gone, and the client must relist.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compact();
        self.shared.wrote(&store);
    }

    /// Takes the server away: stops listening and closes every connection. Objects and
    /// history are kept; writes while stopped are seen by clients after
    /// [`FakeApiServer::restart`]. Does nothing if already stopped.
    pub fn stop(&self) {
        let runtime = lock(&self.runtime).take();
        if let Some(runtime) = runtime {
            // Dropping a runtime blocks, which an async caller's thread must not do itself.
            std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(5)))
                .join()
                .expect("fake API server: shut down");
        }
    }

    /// Whether the server is listening (not [stopped](FakeApiServer::stop)).
    pub fn is_running(&self) -> bool {
        lock(&self.runtime).is_some()
    }

    /// Listens again on the same port (stopping first if running).
    ///
    /// # Panics
    /// If the port cannot be bound again within ten seconds.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match TcpListener::bind(self.addr()) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!(
                    "fake API server: cannot listen on {} again: {e}",
                    self.addr()
                ),
            }
        };
        self.serve(listener);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Makes the next `n` list requests (of any kind) fail with 500 InternalError.
    pub fn fail_next_lists(&self, n: u32) {
        *lock(&self.shared.failing_lists).entry(None).or_default() += n;
    }

    /// Makes the next `n` list requests of `kind` fail with 500 InternalError.
    pub fn fail_next_lists_of(&self, kind: Kind, n: u32) {
        *lock(&self.shared.failing_lists)
            .entry(Some(kind))
            .or_default() += n;
    }

    /// List failures still to come.
    pub fn pending_list_failures(&self) -> u32 {
        lock(&self.shared.failing_lists).values().sum()
    }

    /// Sets the interval of periodic BOOKMARK events for watches started from now on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval;
    }

    /// Watches currently open.
    pub fn open_watches(&self) -> usize {
        *lock(&self.shared.open_watches)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
