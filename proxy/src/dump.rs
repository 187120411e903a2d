//! `kproxy dump`: what the kernel's datapath holds now, read back from the kernel (not
//! from an agent's memory), so it works while the agent is down or wedged.
//!
//! nftables: for each of kproxy's tables (`ip kproxy`, `ip6 kproxy`), every chain with its
//! rule count and every set or map with its element count, with what each fixed set
//! means. Class sets (`lb-n2`, `lb-n3-masq`...) are named after what their chain does
//! (endpoint count, masquerade, eTP Local short-circuits), so their element counts say how
//! many frontends are load-balanced which way.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, Result, bail};
use kproxy_nft::{NftConfig, NftDataplane, TableDump};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{DumpArgs, OutputFormat},
    dataplane::ProxyMode,
};

/// What the datapath holds, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    /// The mode read.
    pub mode: String,
    /// One entry per table kproxy owns, present or not.
    pub tables: Vec<TableSummary>,
}

/// One nftables table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSummary {
    /// `ip kproxy` or `ip6 kproxy`.
    pub table: String,
    /// False when the table does not exist (nothing programmed for this family).
    pub present: bool,
    /// Frontends load-balanced (elements of the class sets and the session-affinity
    /// dispatch map).
    pub load_balanced_frontends: usize,
    /// Frontends dropped (a Local traffic policy without a local endpoint).
    pub dropped_frontends: usize,
    /// Frontends rejected (no usable endpoint).
    pub rejected_frontends: usize,
    /// `frontend . slot → endpoint` entries: the sum over frontends of their endpoint lists.
    pub endpoint_entries: usize,
    /// Active ClusterIPs.
    pub cluster_ips: usize,
    /// Chain name → rules.
    pub chains: BTreeMap<String, usize>,
    /// Set or map name → elements.
    pub sets: BTreeMap<String, usize>,
}

/// What kproxy-nft's fixed sets mean, for the table output.
const SET_MEANINGS: &[(&str, &str)] = &[
    ("endpoints", "frontend . slot -> endpoint"),
    ("service-chains", "frontends with session affinity"),
    (
        "no-endpoint-drop",
        "frontends dropped: Local policy, no local endpoint",
    ),
    (
        "no-endpoint-reject",
        "frontends rejected: no usable endpoint",
    ),
    ("cluster-ips", "active ClusterIPs"),
    ("firewall-ips", "LoadBalancer frontends with source ranges"),
    ("firewall-allow", "frontend . allowed source range"),
    ("hairpin", "local endpoint . itself"),
];

impl TableSummary {
    fn of(table: &str, dump: Option<TableDump>) -> Self {
        let Some(dump) = dump else {
            return Self {
                table: table.to_owned(),
                ..Self::default()
            };
        };
        let count = |name: &str| dump.sets.get(name).copied().unwrap_or(0);
        let classes: usize = dump
            .sets
            .iter()
            .filter(|(name, _)| name.starts_with("lb-"))
            .map(|(_, n)| n)
            .sum();
        Self {
            table: table.to_owned(),
            present: true,
            load_balanced_frontends: classes + count("service-chains"),
            dropped_frontends: count("no-endpoint-drop"),
            rejected_frontends: count("no-endpoint-reject"),
            endpoint_entries: count("endpoints"),
            cluster_ips: count("cluster-ips"),
            chains: dump.chains,
            sets: dump.sets,
        }
    }
}

/// Reads the live datapath of `mode` in this network namespace.
pub fn read(mode: ProxyMode) -> Result<Dump> {
    match mode {
        ProxyMode::Nftables => {
            // Opening changes nothing in the kernel; only a sync would.
            let mut dp = NftDataplane::new(NftConfig::default())
                .context("opening the nftables netlink socket")?;
            let tables = dp.dump().context("reading kproxy's nftables tables")?;
            Ok(Dump {
                mode: mode.to_string(),
                tables: tables
                    .into_iter()
                    .map(|(family, dump)| TableSummary::of(&format!("{family} kproxy"), dump))
                    .collect(),
            })
        }
        ProxyMode::Ebpf => bail!("dump of the ebpf datapath is not available in this build yet"),
    }
}

/// Renders `dump` for people.
pub fn render_table(dump: &Dump) -> String {
    let mut out = String::new();
    for t in &dump.tables {
        if !t.present {
            let _ = writeln!(out, "table {}: absent (nothing programmed)\n", t.table);
            continue;
        }
        let _ = writeln!(
            out,
            "table {}: {} load-balanced, {} dropped, {} rejected frontends; {} endpoint entries; {} ClusterIPs",
            t.table,
            t.load_balanced_frontends,
            t.dropped_frontends,
            t.rejected_frontends,
            t.endpoint_entries,
            t.cluster_ips
        );
        let width = t
            .sets
            .keys()
            .chain(t.chains.keys())
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(out, "  {:<width$}  {:>8}  meaning", "SET", "ELEMENTS");
        for (name, n) in &t.sets {
            let meaning = SET_MEANINGS.iter().find(|(s, _)| s == name).map_or_else(
                || {
                    if name.starts_with("lb-") {
                        "frontends load-balanced by this class chain"
                    } else {
                        "session affinity: recent clients of one endpoint"
                    }
                },
                |(_, m)| m,
            );
            let _ = writeln!(out, "  {name:<width$}  {n:>8}  {meaning}");
        }
        let _ = writeln!(out, "  {:<width$}  {:>8}", "CHAIN", "RULES");
        for (name, n) in &t.chains {
            let _ = writeln!(out, "  {name:<width$}  {n:>8}");
        }
        out.push('\n');
    }
    out
}

/// `kproxy dump`.
pub fn run(args: &DumpArgs) -> Result<()> {
    let dump = read(args.proxy_mode)?;
    match args.output {
        OutputFormat::Table => print!("{}", render_table(&dump)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&dump)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_frontends_by_what_the_sets_mean() {
        let dump = TableDump {
            chains: [("services".to_owned(), 3), ("lb-n2".to_owned(), 2)].into(),
            sets: [
                ("lb-n2".to_owned(), 2),
                ("lb-n1-masq".to_owned(), 1),
                ("service-chains".to_owned(), 1),
                ("no-endpoint-reject".to_owned(), 4),
                ("endpoints".to_owned(), 5),
                ("cluster-ips".to_owned(), 3),
            ]
            .into(),
        };
        let t = TableSummary::of("ip kproxy", Some(dump));
        assert_eq!(t.load_balanced_frontends, 4);
        assert_eq!(t.rejected_frontends, 4);
        assert_eq!(t.dropped_frontends, 0);
        assert_eq!(t.endpoint_entries, 5);
        let text = render_table(&Dump {
            mode: "nftables".into(),
            tables: vec![t, TableSummary::of("ip6 kproxy", None)],
        });
        assert!(
            text.contains("table ip kproxy: 4 load-balanced, 0 dropped, 4 rejected"),
            "{text}"
        );
        assert!(text.contains("table ip6 kproxy: absent"), "{text}");
        assert!(text.contains("no-endpoint-reject"), "{text}");
    }
}
