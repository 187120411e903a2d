//! kproxy's nftables dataplane.
//!
//! ```text
//! ProxyModel (+ ModelDiff) ──render (pure)──▶ PortRender per service port
//!        ──state (per family: claims, refcounts)──▶ Transaction (typed IR)
//!        ──Backend::apply──▶ netlink (one atomic nfnetlink batch) │ fake (tests)
//! ```
//!
//! kproxy owns the tables `ip kproxy` and `ip6 kproxy` entirely; see the `layout` module for the
//! chains, hooks, priorities, sets and why the layout scales to 100k services.
//! [`NftDataplane::sync_full`] replaces a table atomically (also adopting whatever a
//! previous process left); [`NftDataplane::sync_partial`] changes only what a
//! [`ModelDiff`] names. A failed transaction changes nothing in the kernel; the caller
//! then retries with a full sync.

mod conntrack;
mod error;
#[cfg(test)]
mod fake;
mod hash;
mod ir;
mod layout;
mod names;
mod netlink;
mod read;
mod render;
mod state;
#[cfg(test)]
mod tests;
mod wire;

use std::{collections::BTreeMap, time::Instant};

pub use conntrack::{StaleFlow, delete_udp_conntrack};
pub use error::Error;
use kproxy_model::{ModelDiff, ProxyModel};
pub use read::{FamilyFrontends, ReadFrontend, ReadVerdict, read_frontends};

use crate::{
    ir::{Family, Transaction},
    state::{FamilyState, Partial},
};

/// The only thing that touches the kernel: applies transactions atomically and reads
/// kproxy's tables back.
pub(crate) trait Backend {
    /// Applies every op of `tx`, or none of them.
    fn apply(&mut self, tx: &Transaction) -> Result<(), Error>;
    /// Summarises kproxy's table of `family`; `None` when it does not exist.
    fn list(&mut self, family: Family) -> Result<Option<TableDump>, Error>;
    /// Time the last [`Backend::apply`] spent in the kernel (send and replies), to tell
    /// kernel cost from encoding in [`SyncStats`]; zero when nothing was sent.
    fn last_kernel_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// What one of kproxy's tables holds, as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDump {
    /// Chain name → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Set or map name → number of elements.
    pub sets: BTreeMap<String, usize>,
}

/// Dataplane configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftConfig {
    /// Program `ip kproxy` (IPv4 service ports). A disabled family's table is left alone.
    pub ipv4: bool,
    /// Program `ip6 kproxy` (IPv6 service ports).
    pub ipv6: bool,
    /// Bit of the packet mark that requests masquerade (kube-proxy's `masqueradeBit`,
    /// default 14 → 0x4000). Other components must not rely on it.
    pub masquerade_bit: u8,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
            masquerade_bit: 14,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// True for a full (replace-everything) sync, including a partial sync that had to
    /// fall back to one.
    pub full: bool,
    /// Operations in the transaction (one per chain, set, rule, or element batch).
    pub ops: usize,
    /// Rules written.
    pub rules: usize,
    /// Set and map elements added or deleted.
    pub elements: usize,
    /// Shared class chains in use after the sync, over both families.
    pub classes: usize,
    /// Wall time to render, encode and commit.
    pub elapsed: std::time::Duration,
    /// Part of `elapsed` spent encoding and in the kernel (the rest is rendering).
    pub commit: std::time::Duration,
    /// Part of `commit` spent in the kernel: the batch's `sendmsg` (nf_tables parses,
    /// validates and commits the whole batch inside it) and reading the replies.
    pub kernel: std::time::Duration,
}

/// The nftables dataplane: owns kproxy's tables and keeps them equal to the model.
pub struct NftDataplane {
    backend: Box<dyn Backend + Send>,
    families: Vec<FamilyState>,
    /// False until a full sync succeeds and after any failure: partial syncs need an
    /// exact picture of the kernel state.
    in_sync: bool,
}

impl std::fmt::Debug for NftDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftDataplane")
            .field("in_sync", &self.in_sync)
            .finish_non_exhaustive()
    }
}

impl NftDataplane {
    /// Opens the nf_tables netlink socket in the calling thread's network namespace. No
    /// kernel state changes until the first sync.
    pub fn new(config: NftConfig) -> Result<Self, Error> {
        Ok(Self::with_backend(
            config,
            Box::new(netlink::NetlinkBackend::open()?),
        ))
    }

    pub(crate) fn with_backend(config: NftConfig, backend: Box<dyn Backend + Send>) -> Self {
        let mark = 1u32 << config.masquerade_bit.min(31);
        let mut families = Vec::new();
        if config.ipv4 {
            families.push(FamilyState::new(Family::Ip, mark));
        }
        if config.ipv6 {
            families.push(FamilyState::new(Family::Ip6, mark));
        }
        Self {
            backend,
            families,
            in_sync: false,
        }
    }

    /// Replaces everything kproxy owns with the model, in one atomic transaction. Use at
    /// start (it adopts a previous process's tables without a gap) and after any failure.
    pub fn sync_full(&mut self, model: &ProxyModel) -> Result<SyncStats, Error> {
        let start = Instant::now();
        self.in_sync = false;
        let mut tx = Transaction::default();
        for fam in &mut self.families {
            fam.full(model, &mut tx);
        }
        self.commit(&tx, true, start)
    }

    /// Applies only what `diff` says changed (per-service objects and elements); the
    /// work is proportional to the change. Falls back to a full sync when the change
    /// cannot be expressed incrementally (the endpoint map would overflow its size).
    pub fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<SyncStats, Error> {
        if !self.in_sync {
            return Err(Error::NeedFullSync);
        }
        let start = Instant::now();
        self.in_sync = false;
        let mut tx = Transaction::default();
        for fam in &mut self.families {
            if let Partial::NeedsFull = fam.partial(model, diff, &mut tx) {
                tracing::info!("endpoint map full: partial sync replaced by a full sync");
                return self.sync_full(model);
            }
        }
        self.commit(&tx, false, start)
    }

    fn commit(&mut self, tx: &Transaction, full: bool, start: Instant) -> Result<SyncStats, Error> {
        let commit = Instant::now();
        self.backend.apply(tx)?;
        let commit = commit.elapsed();
        self.in_sync = true;
        let stats = SyncStats {
            full,
            ops: tx.ops.len(),
            rules: tx.rule_count(),
            elements: tx.element_count(),
            classes: self.families.iter().map(FamilyState::class_count).sum(),
            elapsed: start.elapsed(),
            commit,
            kernel: self.backend.last_kernel_time(),
        };
        tracing::debug!(?stats, "nftables sync");
        Ok(stats)
    }

    /// Reads back what kproxy's table of each enabled family holds (`None`: no table).
    pub fn dump(&mut self) -> Result<Vec<(&'static str, Option<TableDump>)>, Error> {
        let fams: Vec<Family> = self.families.iter().map(FamilyState::family).collect();
        fams.into_iter()
            .map(|f| Ok((f.as_str(), self.backend.list(f)?)))
            .collect()
    }

    /// Deletes the tables `ip kproxy` and `ip6 kproxy` if present, in the calling
    /// thread's network namespace, and nothing else.
    pub fn cleanup() -> Result<(), Error> {
        let mut backend = netlink::NetlinkBackend::open()?;
        backend.apply(&cleanup_tx())
    }
}

/// Add-then-delete makes the delete succeed whether or not the table exists.
fn cleanup_tx() -> Transaction {
    let mut tx = Transaction::default();
    for f in [Family::Ip, Family::Ip6] {
        tx.push(ir::Op::AddTable(f));
        tx.push(ir::Op::DeleteTable(f));
    }
    tx
}
