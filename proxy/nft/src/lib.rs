//! kproxy's nftables dataplane.

mod error;
mod ir;
mod layout;
mod netlink;
mod wire;

use std::collections::BTreeMap;

pub use error::Error;

/// The only thing that touches the kernel: applies transactions atomically and reads
/// kproxy's tables back.
pub(crate) trait Backend {
    /// Applies every op of `tx`, or none of them.
    fn apply(&mut self, tx: &ir::Transaction) -> Result<(), Error>;
    /// Summarises kproxy's table of `family`; `None` when it does not exist.
    fn list(&mut self, family: ir::Family) -> Result<Option<TableDump>, Error>;
}

/// What one of kproxy's tables holds, as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDump {
    /// Chain name → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Set or map name → number of elements.
    pub sets: BTreeMap<String, usize>,
}

#[cfg(test)]
mod exp;
