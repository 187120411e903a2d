//! The dataplane seam: one trait, two kernel backends (nftables, eBPF) and a fake.
//!
//! A dataplane only translates: it receives the model (and, for partial syncs, what changed)
//! and makes the kernel match it. It decides no policy.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use kproxy_model::{Endpoint, ModelDiff, ProxyModel, ServicePortKey};

/// `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// nftables through netlink.
    Nftables,
    /// eBPF: socket-level load balancing plus tc.
    Ebpf,
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nftables => "nftables",
            Self::Ebpf => "ebpf",
        })
    }
}

/// A sync that did not reach the kernel. The previous kernel state is still in place (the
/// backends guarantee it); the sync loop retries with a full sync.
#[derive(Debug, thiserror::Error)]
#[error("{mode} dataplane {operation} failed")]
pub struct DataplaneError {
    /// Which backend.
    pub mode: ProxyMode,
    /// `full sync` or `partial sync`.
    pub operation: &'static str,
    /// The backend's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Counts a sync reports, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Kernel objects written or deleted (rules, chains, map elements...).
    pub kernel_ops: usize,
}

/// A kernel dataplane.
pub trait Dataplane: Send {
    /// Which backend this is.
    fn mode(&self) -> ProxyMode;
    /// Replaces everything kproxy owns in the kernel with `model`, atomically where the
    /// kernel allows. Used at start (adopting what a previous agent left) and after failures.
    fn sync_full(&mut self, model: &ProxyModel) -> Result<Applied, DataplaneError>;
    /// Applies only what `diff` says changed since the last successful sync.
    fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<Applied, DataplaneError>;
    /// Forgets per-flow state that still points at endpoints no longer served (UDP and
    /// SCTP conntrack entries), so connectionless clients move to a live endpoint at once.
    /// Called after every successful sync that has stale endpoints; returns how many flows
    /// were removed.
    fn clear_stale_flows(
        &mut self,
        stale: &[(ServicePortKey, Endpoint)],
    ) -> Result<usize, DataplaneError> {
        let _ = stale;
        Ok(0)
    }
    /// The datapath's own decision counters, `(hook, verdict, total)`, for
    /// `kproxy_ebpf_verdicts_total`; empty for datapaths that keep none.
    fn verdict_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

/// An in-memory dataplane for tests of the sync loop: records what it was asked to do and
/// can be told to fail. Clones share state, so a test keeps one while the loop owns another.
#[derive(Debug, Clone, Default)]
pub struct FakeDataplane {
    inner: Arc<Mutex<FakeState>>,
}

/// What a [`FakeDataplane`] saw.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The model as last programmed.
    pub programmed: Option<ProxyModel>,
    /// Every call: "full" or "partial", in order.
    pub calls: Vec<&'static str>,
    /// Fail this many upcoming syncs.
    pub fail_next: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

impl FakeDataplane {
    /// The recorded state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.inner.lock().expect("fake dataplane lock")
    }

    fn call(&self, kind: &'static str, model: &ProxyModel) -> Result<Applied, DataplaneError> {
        let mut state = self.state();
        state.calls.push(kind);
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(DataplaneError {
                mode: ProxyMode::Nftables,
                operation: kind,
                source: Box::new(Injected),
            });
        }
        state.programmed = Some(model.clone());
        Ok(Applied {
            kernel_ops: model.ports.len(),
        })
    }
}

impl Dataplane for FakeDataplane {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }
    fn sync_full(&mut self, model: &ProxyModel) -> Result<Applied, DataplaneError> {
        self.call("full sync", model)
    }
    fn sync_partial(
        &mut self,
        model: &ProxyModel,
        _diff: &ModelDiff,
    ) -> Result<Applied, DataplaneError> {
        self.call("partial sync", model)
    }
}

impl Dataplane for Box<dyn Dataplane> {
    fn mode(&self) -> ProxyMode {
        (**self).mode()
    }
    fn sync_full(&mut self, model: &ProxyModel) -> Result<Applied, DataplaneError> {
        (**self).sync_full(model)
    }
    fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<Applied, DataplaneError> {
        (**self).sync_partial(model, diff)
    }
    fn clear_stale_flows(
        &mut self,
        stale: &[(ServicePortKey, Endpoint)],
    ) -> Result<usize, DataplaneError> {
        (**self).clear_stale_flows(stale)
    }
    fn verdict_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        (**self).verdict_counters()
    }
}
