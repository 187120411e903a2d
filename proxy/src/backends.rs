//! The kernel backends behind [`Dataplane`]: construction from flags, and cleanup.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use kproxy_bpf::{BpfConfig, BpfDataplane};
use kproxy_model::{Endpoint, ModelDiff, ProxyModel, ServicePortKey};
use kproxy_nft::{NftConfig, NftDataplane, StaleFlow};

use crate::{
    cli::{CleanupArgs, RunArgs},
    dataplane::{Applied, Dataplane, DataplaneError, ProxyMode},
    mounts,
};

/// Opens the dataplane `--proxy-mode` names.
pub fn open(args: &RunArgs) -> Result<Box<dyn Dataplane>> {
    match args.proxy_mode {
        ProxyMode::Nftables => {
            let dp = NftDataplane::new(NftConfig::default())
                .context("opening the nftables dataplane")?;
            Ok(Box::new(Nft(dp)))
        }
        ProxyMode::Ebpf => {
            let config = BpfConfig {
                cgroup_path: match &args.cgroup_path {
                    Some(p) => p.clone(),
                    None => mounts::cgroup2_root()?,
                },
                bpffs: mounts::ensure_bpffs(&args.bpffs)?,
                devices: args.devices.clone(),
            };
            let dp = BpfDataplane::new(&config).context("loading the eBPF dataplane")?;
            Ok(Box::new(Bpf(dp)))
        }
    }
}

/// Removes what kproxy installed for `--proxy-mode`.
pub fn cleanup(args: &CleanupArgs) -> Result<()> {
    match args.proxy_mode {
        ProxyMode::Nftables => {
            NftDataplane::cleanup().context("deleting the kproxy nftables tables")
        }
        ProxyMode::Ebpf => BpfDataplane::cleanup(&args.bpffs)
            .context("removing kproxy's eBPF pins (which detaches its programs)"),
    }
}

/// The nftables backend, adapted to the trait.
struct Nft(NftDataplane);

/// Wraps a backend's error with the mode and the operation that failed.
fn dp_err<E: std::error::Error + Send + Sync + 'static>(
    mode: ProxyMode,
    operation: &'static str,
) -> impl FnOnce(E) -> DataplaneError {
    move |e| DataplaneError {
        mode,
        operation,
        source: Box::new(e),
    }
}

impl Dataplane for Nft {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn sync_full(&mut self, model: &ProxyModel) -> Result<Applied, DataplaneError> {
        let stats = self
            .0
            .sync_full(model)
            .map_err(dp_err(ProxyMode::Nftables, "full sync"))?;
        Ok(Applied {
            kernel_ops: stats.rules + stats.elements,
        })
    }

    fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<Applied, DataplaneError> {
        let stats = self
            .0
            .sync_partial(model, diff)
            .map_err(dp_err(ProxyMode::Nftables, "partial sync"))?;
        Ok(Applied {
            kernel_ops: stats.rules + stats.elements,
        })
    }

    fn clear_stale_flows(
        &mut self,
        stale: &[(ServicePortKey, Endpoint)],
    ) -> Result<usize, DataplaneError> {
        let flows: Vec<StaleFlow> = stale
            .iter()
            .map(|(key, ep)| StaleFlow {
                protocol: key.name.protocol,
                endpoint: SocketAddr::new(ep.ip, ep.port),
            })
            .collect();
        kproxy_nft::delete_udp_conntrack(&flows)
            .map_err(dp_err(ProxyMode::Nftables, "conntrack cleanup"))
    }
}

/// The eBPF backend, adapted to the trait.
struct Bpf(BpfDataplane);

/// What each slot of the eBPF counter map means, as `(hook, verdict)` labels.
const BPF_COUNTERS: [(u32, &str, &str); 11] = {
    use kproxy_common::counter as c;
    [
        (c::TRANSLATED, "socket", "translated"),
        (c::REJECTED, "socket", "rejected"),
        (c::DROPPED, "socket", "dropped"),
        (c::LOOKUP_MISS, "socket", "lookup_miss"),
        (c::AFFINITY_HIT, "socket", "affinity_hit"),
        (c::REVERSED, "socket", "reversed"),
        (c::TC_TRANSLATED, "tc", "translated"),
        (c::TC_REJECTED, "tc", "rejected"),
        (c::TC_DROPPED, "tc", "dropped"),
        (c::TC_REVERSED, "tc", "reversed"),
        (c::TC_FAILED, "tc", "failed"),
    ]
};

impl Dataplane for Bpf {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ebpf
    }

    fn verdict_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        match self.0.counters() {
            Ok(values) => BPF_COUNTERS
                .iter()
                .filter_map(|&(i, hook, verdict)| {
                    values.get(i as usize).map(|v| (hook, verdict, *v))
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "reading the eBPF counters failed");
                Vec::new()
            }
        }
    }

    fn sync_full(&mut self, model: &ProxyModel) -> Result<Applied, DataplaneError> {
        let stats = self
            .0
            .sync_full(model)
            .map_err(dp_err(ProxyMode::Ebpf, "full sync"))?;
        Ok(Applied {
            kernel_ops: stats.updates + stats.deletes,
        })
    }

    fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<Applied, DataplaneError> {
        let stats = self
            .0
            .sync_partial(model, diff)
            .map_err(dp_err(ProxyMode::Ebpf, "partial sync"))?;
        Ok(Applied {
            kernel_ops: stats.updates + stats.deletes,
        })
    }
}
