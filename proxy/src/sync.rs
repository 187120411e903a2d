//! The sync loop: one task that owns the source, the last model and the dataplane.
//!
//! Bounded frequency, as kube-proxy's runner: an isolated change syncs at once, a burst is
//! coalesced so syncs run no closer than `--min-sync-period`, a full resync runs every
//! `--sync-period` (repairing anything changed behind kproxy's back), and a failed sync is
//! retried with exponential backoff as a full sync. Nothing is synced until the source has
//! its initial lists, so a starting agent never programs empty tables.

use std::{
    collections::HashSet,
    future::Future,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use kproxy_model::{Endpoint, Incremental, ModelConfig, ServicePortKey};
use tokio::time::sleep_until;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    health::{Health, node_eligible},
    metrics::SyncObserver,
    source::{Source, SourceError},
};

/// First retry delay after a failed sync; doubles up to `--sync-period`.
const RETRY_MIN: Duration = Duration::from_secs(1);

/// Timing and model configuration of the loop.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `--min-sync-period`: no two syncs closer than this.
    pub min_sync_period: Duration,
    /// `--sync-period`: a full resync at least this often.
    pub sync_period: Duration,
    /// Model inputs besides the cluster state.
    pub model: ModelConfig,
    /// Read the node's interface addresses before each sync (for `--nodeport-addresses`
    /// CIDRs); tests that pin `model.local_addresses` turn it off.
    pub discover_local_addresses: bool,
}

/// What one sync attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The source has not listed everything yet; nothing was programmed.
    NotReady,
    /// Nothing changed since the last successful sync.
    Unchanged,
    /// The dataplane was brought to the model.
    Synced {
        /// Full (true) or partial.
        full: bool,
    },
}

/// The loop's state. Generic over the source and the dataplane so tests run it with fakes.
pub struct SyncLoop<S, D> {
    source: S,
    dataplane: D,
    config: SyncConfig,
    health: Health,
    /// The model, updated from each snapshot's changes.
    model: Incremental,
    /// False until a sync reached the kernel: the first one is always full.
    synced_once: bool,
    /// Endpoints whose UDP flows must be cleared once a sync succeeds (kept across failed
    /// syncs so none is forgotten).
    stale: Vec<(ServicePortKey, Endpoint)>,
    /// Set by failures and periodic resyncs.
    need_full: bool,
    /// Warnings already logged, so each problem is logged once, not once per sync.
    logged_warnings: HashSet<String>,
    /// Metrics and healthCheckNodePort servers, told about every snapshot and sync.
    observer: SyncObserver,
}

impl<S: Source, D: Dataplane> SyncLoop<S, D> {
    /// A loop that has synced nothing yet.
    pub fn new(source: S, dataplane: D, config: SyncConfig, health: Health) -> Self {
        Self {
            source,
            dataplane,
            config,
            health,
            model: Incremental::default(),
            synced_once: false,
            stale: Vec::new(),
            need_full: true,
            logged_warnings: HashSet::new(),
            observer: SyncObserver::default(),
        }
    }

    /// Reports to `observer` (metrics, healthCheckNodePort servers) instead of a private one.
    #[must_use]
    pub fn with_observer(mut self, observer: SyncObserver) -> Self {
        self.observer = observer;
        self
    }

    /// The dataplane, for inspection after the loop (tests).
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Runs until `shutdown` resolves (Ok) or the source ends (Err). The datapath stays
    /// programmed either way: only `kproxy cleanup` removes it.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Self, SourceError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pending = true;
        let mut not_before = Instant::now();
        let mut next_full = Instant::now() + self.config.sync_period;
        let mut retry = RETRY_MIN;
        loop {
            let wake = if pending { not_before } else { next_full };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(self),
                changed = self.source.changed() => {
                    changed?;
                    self.observer.queued();
                    if !pending {
                        self.health.queued(SystemTime::now());
                    }
                    pending = true;
                }
                () = sleep_until(wake.into()) => {
                    if !pending {
                        // Periodic resync: repairs anything changed behind our back.
                        self.need_full = true;
                        pending = true;
                        self.health.queued(SystemTime::now());
                        continue;
                    }
                    let started = Instant::now();
                    match self.sync_once().await {
                        Ok(Outcome::NotReady) => pending = false,
                        Ok(outcome) => {
                            pending = false;
                            retry = RETRY_MIN;
                            not_before = started + self.config.min_sync_period;
                            if matches!(outcome, Outcome::Synced { full: true }) {
                                next_full = started + self.config.sync_period;
                            }
                        }
                        Err(e) => {
                            self.observer.failed(self.dataplane.mode());
                            warn!(error = %e, cause = %error_chain(&e), retry_in = ?retry, "sync failed; the previous kernel state stays; retrying with a full sync");
                            self.need_full = true;
                            not_before = Instant::now() + retry;
                            retry = (retry * 2).min(self.config.sync_period.max(RETRY_MIN));
                        }
                    }
                }
            }
        }
    }

    /// One sync: snapshot, build, apply (full or partial).
    pub async fn sync_once(&mut self) -> Result<Outcome, DataplaneError> {
        let span = info_span!("sync", mode = %self.dataplane.mode(), full = tracing::field::Empty);
        async {
            let Some((state, changes)) = self.source.snapshot_changes() else {
                debug!("waiting for the source's initial lists");
                return Ok(Outcome::NotReady);
            };
            self.health.set_node_eligible(node_eligible(state.node.as_deref()));
            self.observer.snapshot(&state, &changes);
            let started = Instant::now();
            let mut model_config = self.config.model.clone();
            if self.config.discover_local_addresses {
                model_config.local_addresses = local_addresses();
            }
            let update = self.model.update(&state, &changes, &model_config);
            // Let the source change its state in place again (it shares it copy-on-write).
            drop(state);
            self.log_new_warnings();
            self.stale.extend(update.diff.stale_udp_endpoints.iter().cloned());
            let full = self.need_full || !self.synced_once;
            tracing::Span::current().record("full", full);
            let model = self.model.model();
            let applied = if full {
                self.dataplane.sync_full(model)?
            } else if update.diff.is_empty() {
                debug!("nothing changed");
                self.observer.synced(None, started.elapsed(), model);
                self.health.updated(SystemTime::now());
                return Ok(Outcome::Unchanged);
            } else {
                self.dataplane.sync_partial(model, &update.diff)?
            };
            info!(
                service_ports = model.ports.len(),
                model_rebuilt = update.full,
                added = update.diff.added.len(),
                updated = update.diff.updated.len(),
                removed = update.diff.removed.len(),
                kernel_ops = applied.kernel_ops,
                elapsed = ?started.elapsed(),
                "synced"
            );
            if !self.stale.is_empty() {
                // The new state is in the kernel; flows still pinned to removed endpoints
                // would black-hole UDP clients until they time out.
                let gone = std::mem::take(&mut self.stale);
                let cleanup_started = Instant::now();
                let result = self.dataplane.clear_stale_flows(&gone);
                self.observer.stale_flows_cleared(cleanup_started.elapsed(), result.as_ref().ok().copied());
                match result {
                    Ok(n) => debug!(stale = gone.len(), flows_deleted = n, "cleared stale UDP flows"),
                    Err(e) => warn!(error = %e, cause = %error_chain(&e), "clearing stale UDP flows failed"),
                }
            }
            self.observer.synced(Some(full), started.elapsed(), self.model.model());
            self.observer.verdicts(&self.dataplane.verdict_counters());
            self.synced_once = true;
            self.need_full = false;
            self.health.updated(SystemTime::now());
            Ok(Outcome::Synced { full })
        }
        .instrument(span)
        .await
    }

    /// Logs each model warning once, when it first appears.
    fn log_new_warnings(&mut self) {
        let current: HashSet<String> = self
            .model
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect();
        for w in &current {
            if !self.logged_warnings.contains(w) {
                warn!("{w}");
            }
        }
        self.logged_warnings = current;
    }
}

/// The error and its causes, joined, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out.join(": ")
}

/// Addresses configured on this network namespace's interfaces.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
