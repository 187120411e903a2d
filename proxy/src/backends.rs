//! The kernel backends behind [`Dataplane`]: construction from flags, and cleanup.

use anyhow::{Result, bail};

use crate::{
    cli::{CleanupArgs, RunArgs},
    dataplane::Dataplane,
};

/// Opens the dataplane `--proxy-mode` names.
pub fn open(args: &RunArgs) -> Result<Box<dyn Dataplane>> {
    bail!("{} dataplane not wired yet", args.proxy_mode)
}

/// Removes what kproxy installed for `--proxy-mode`.
pub fn cleanup(args: &CleanupArgs) -> Result<()> {
    bail!("{} cleanup not wired yet", args.proxy_mode)
}
