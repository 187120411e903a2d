//! Sources of cluster state: a manifests directory or the Kubernetes API.
//!
//! A source is level-triggered: it says *that* something may have changed, and hands out
//! the whole current state on request. The sync loop coalesces bursts between the two, so a
//! source never has to batch or debounce.

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use kproxy_model::{Changes, ClusterState};

/// Errors a source can end with. Transient failures (a dropped watch, an API server that
/// is down) are not errors: the source keeps its last state and retries by itself.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot start (bad kubeconfig, unreadable directory, ...).
    #[error("cannot start the {source_kind} source: {reason}")]
    Start {
        /// `manifests` or `kube`.
        source_kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The source's background task ended; no further changes will come.
    #[error("the {source_kind} source stopped")]
    Stopped {
        /// `manifests` or `kube`.
        source_kind: &'static str,
    },
}

/// A source of cluster state.
pub trait Source: Send {
    /// Resolves when the state may differ from the last [`Source::snapshot`] (at least once
    /// after the initial list completes). Spurious wake-ups are allowed.
    fn changed(&mut self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The whole current state, or None while the initial list of any input (Services,
    /// EndpointSlices, Node) is incomplete: the first sync waits for it, so a starting agent
    /// never programs empty tables.
    fn snapshot(&mut self) -> Option<ClusterState>;

    /// The whole current state, shared, with which objects changed since the previous call
    /// (kube-proxy's change trackers): the model rebuilds only those. The default knows no
    /// better than [`Changes::All`]; sources that track changes override it. None while the
    /// initial lists are incomplete.
    fn snapshot_changes(&mut self) -> Option<(Arc<ClusterState>, Changes)> {
        self.snapshot().map(|s| (Arc::new(s), Changes::All))
    }
}
