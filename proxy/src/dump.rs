//! `kproxy dump`: what the kernel's datapath holds now, read back from the kernel (not
//! from an agent's memory), so it works while the agent is down or wedged.
//!
//! Both modes produce the same [`DumpedFrontend`] list: every frontend with its kind,
//! verdict, session affinity and endpoints. nftables frontends are decoded from the set
//! and map elements of kproxy's tables (`kproxy_nft::read_frontends`); eBPF frontends from
//! the pinned maps under `<bpffs>/kproxy/` (`kproxy_bpf::inspect`).
//!
//! nftables also gets a per-table summary: every chain with its rule count and every set
//! or map with its element count, with what each fixed set means. Class sets (`lb-n2`,
//! `lb-n3-masq`...) are named after what their chain does (endpoint count, masquerade,
//! eTP Local short-circuits), so their element counts say how many frontends are
//! load-balanced which way.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use kproxy_bpf::inspect::{InspectedFrontend, Inspection};
use kproxy_common::{
    FLAG_CLUSTER_IP, FLAG_DROP, FLAG_EXTERNAL_IP, FLAG_LOAD_BALANCER, FLAG_MASQUERADE,
    FLAG_NODE_PORT, FLAG_REJECT, FLAG_SOURCE_RANGES,
};
use kproxy_nft::{NftConfig, NftDataplane, ReadFrontend, ReadVerdict, TableDump};
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
    /// nftables: one entry per table kproxy owns, present or not (empty for eBPF).
    pub tables: Vec<TableSummary>,
    /// Every frontend the datapath serves, ordered by address, port, protocol and scope.
    pub frontends: Vec<DumpedFrontend>,
    /// eBPF: the pinned links (attached programs) under `<bpffs>/kproxy/links/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
}

/// One frontend as the kernel holds it, the same shape for both modes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpedFrontend {
    /// The service port (`ns/name:port/proto`). nftables keeps it in element comments; the
    /// eBPF maps carry no names, so it is `None` there.
    pub service: Option<String>,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalIP`. eBPF records the kind;
    /// nftables does not, so there a frontend on one of this node's addresses is reported
    /// as `NodePort`, one with source ranges as `LoadBalancer`, and any other as
    /// `External` (a LoadBalancer IP or an externalIP).
    pub kind: String,
    /// Frontend address.
    pub address: IpAddr,
    /// Frontend port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `forward`, `reject` (no usable endpoint), `drop` (a Local traffic policy without a
    /// local endpoint) or `none` (nftables: only short-circuited sources are DNAT'ed).
    pub verdict: String,
    /// ClientIP session affinity timeout.
    pub affinity_timeout_secs: Option<u32>,
    /// Endpoints new connections are sent to (the frontend's own list), in slot order.
    pub endpoints: Vec<SocketAddr>,
    /// eTP Local: the cluster-wide endpoints that pod and node sources are sent to
    /// instead (empty when no such short-circuit exists).
    pub cluster_endpoints: Vec<SocketAddr>,
    /// What else the datapath records: the nftables class chain (its name spells the
    /// endpoint count, masquerade rules and short-circuits) or the eBPF flags.
    pub detail: String,
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

fn protocol_name(p: u8) -> String {
    match p {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        132 => "SCTP".to_owned(),
        other => format!("proto-{other}"),
    }
}

fn family_name(a: IpAddr) -> String {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned()
}

/// This network namespace's own addresses: NodePort frontends are on them.
fn local_addresses() -> BTreeSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return BTreeSet::new();
    };
    addrs
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

fn from_nft(f: ReadFrontend, local: &BTreeSet<IpAddr>) -> DumpedFrontend {
    let kind = if f.cluster_ip {
        "ClusterIP"
    } else if f.source_ranges {
        "LoadBalancer"
    } else if local.contains(&f.address) {
        "NodePort"
    } else {
        "External"
    };
    let verdict = match f.verdict {
        ReadVerdict::Forward => "forward",
        ReadVerdict::Drop => "drop",
        ReadVerdict::Reject => "reject",
        ReadVerdict::None => "none",
    };
    DumpedFrontend {
        service: f.service,
        family: family_name(f.address),
        kind: kind.to_owned(),
        address: f.address,
        port: f.port,
        protocol: protocol_name(f.protocol),
        verdict: verdict.to_owned(),
        affinity_timeout_secs: f.affinity_timeout_secs,
        endpoints: f.endpoints,
        cluster_endpoints: f.cluster_endpoints,
        detail: [f.chain, f.source_ranges.then(|| "source-ranges".to_owned())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Merges the per-scope entries of each eBPF frontend: the `all` entry is the frontend's
/// own; a `pod` (else `node`) entry is the eTP Local short-circuit to the cluster-wide
/// endpoints.
fn from_bpf(entries: Vec<InspectedFrontend>) -> Vec<DumpedFrontend> {
    let mut by_frontend: BTreeMap<(IpAddr, u16, u8), Vec<InspectedFrontend>> = BTreeMap::new();
    for e in entries {
        by_frontend
            .entry((e.address, e.port, e.protocol))
            .or_default()
            .push(e);
    }
    by_frontend
        .into_iter()
        .filter_map(|((address, port, protocol), scopes)| {
            let scope = |s: &str| scopes.iter().find(|e| e.scope == s);
            let own = scope("all").or_else(|| scopes.first())?;
            let shortcut = scope("pod").or_else(|| scope("node"));
            let flag = |f: u16| own.flags & f != 0;
            let kind = [
                (FLAG_CLUSTER_IP, "ClusterIP"),
                (FLAG_NODE_PORT, "NodePort"),
                (FLAG_LOAD_BALANCER, "LoadBalancer"),
                (FLAG_EXTERNAL_IP, "ExternalIP"),
            ]
            .iter()
            .find(|(f, _)| flag(*f))
            .map_or("unknown", |(_, k)| k);
            let verdict = if flag(FLAG_REJECT) {
                "reject"
            } else if flag(FLAG_DROP) {
                "drop"
            } else {
                "forward"
            };
            let mut detail: Vec<String> = [
                (FLAG_MASQUERADE, "masquerade"),
                (FLAG_SOURCE_RANGES, "source-ranges"),
            ]
            .iter()
            .filter(|(f, _)| flag(*f))
            .map(|(_, n)| (*n).to_owned())
            .collect();
            let missing: u16 = scopes.iter().map(|e| e.missing_slots).sum();
            if missing > 0 {
                detail.push(format!("{missing} slot(s) missing"));
            }
            if scopes.len() > 1 {
                let names: Vec<&str> = scopes.iter().map(|e| e.scope).collect();
                detail.push(format!("scopes {}", names.join("+")));
            }
            Some(DumpedFrontend {
                service: None,
                family: family_name(address),
                kind: kind.to_owned(),
                address,
                port,
                protocol: protocol_name(protocol),
                verdict: verdict.to_owned(),
                affinity_timeout_secs: (own.affinity_timeout_secs > 0)
                    .then_some(own.affinity_timeout_secs),
                endpoints: own.backends.clone(),
                cluster_endpoints: shortcut
                    .filter(|s| s.scope != own.scope)
                    .map(|s| s.backends.clone())
                    .unwrap_or_default(),
                detail: detail.join(","),
            })
        })
        .collect()
}

/// Reads the live datapath of `mode` in this network namespace (eBPF: the pins under
/// `<bpffs>/kproxy/`). Fails when kproxy has installed nothing there.
pub fn read(mode: ProxyMode, bpffs: &Path) -> Result<Dump> {
    match mode {
        ProxyMode::Nftables => {
            // Opening changes nothing in the kernel; only a sync would.
            let mut dp = NftDataplane::new(NftConfig::default())
                .context("opening the nftables netlink socket")?;
            let tables = dp.dump().context("reading kproxy's nftables tables")?;
            if tables.iter().all(|(_, t)| t.is_none()) {
                bail!(
                    "nothing installed: no kproxy nftables table (ip kproxy, ip6 kproxy) in this network namespace"
                );
            }
            let local = local_addresses();
            let mut frontends: Vec<DumpedFrontend> = kproxy_nft::read_frontends(true, true)
                .context("reading the frontends of kproxy's nftables tables")?
                .into_iter()
                .flat_map(|(_, t)| t.unwrap_or_default())
                .map(|f| from_nft(f, &local))
                .collect();
            frontends.sort_by(|a, b| {
                (a.address, a.port, &a.protocol).cmp(&(b.address, b.port, &b.protocol))
            });
            Ok(Dump {
                mode: mode.to_string(),
                tables: tables
                    .into_iter()
                    .map(|(family, dump)| TableSummary::of(&format!("{family} kproxy"), dump))
                    .collect(),
                frontends,
                links: Vec::new(),
            })
        }
        ProxyMode::Ebpf => {
            let Some(Inspection { frontends, links }) = kproxy_bpf::inspect::inspect(bpffs)
                .with_context(|| {
                    format!("reading kproxy's pinned maps under {}", bpffs.display())
                })?
            else {
                bail!(
                    "nothing installed: no kproxy maps pinned under {}",
                    bpffs.join("kproxy").display()
                );
            };
            Ok(Dump {
                mode: mode.to_string(),
                tables: Vec::new(),
                frontends: from_bpf(frontends),
                links,
            })
        }
    }
}

/// Renders the frontends for people: one line each, endpoints listed.
pub fn render_frontends(frontends: &[DumpedFrontend]) -> String {
    let rows: Vec<[String; 7]> = frontends
        .iter()
        .map(|f| {
            let list = |l: &[SocketAddr]| {
                l.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let mut endpoints = list(&f.endpoints);
            if !f.cluster_endpoints.is_empty() {
                let _ = write!(
                    endpoints,
                    " | pod/node sources: {}",
                    list(&f.cluster_endpoints)
                );
            }
            let frontend = match f.address {
                IpAddr::V4(a) => format!("{a}:{}/{}", f.port, f.protocol),
                IpAddr::V6(a) => format!("[{a}]:{}/{}", f.port, f.protocol),
            };
            [
                frontend,
                f.kind.clone(),
                f.service.clone().unwrap_or_else(|| "-".to_owned()),
                f.verdict.clone(),
                f.affinity_timeout_secs
                    .map_or_else(|| "-".to_owned(), |t| format!("{t}s")),
                if f.detail.is_empty() {
                    "-".to_owned()
                } else {
                    f.detail.clone()
                },
                endpoints,
            ]
        })
        .collect();
    let header = [
        "FRONTEND",
        "KIND",
        "SERVICE",
        "VERDICT",
        "AFFINITY",
        "DETAIL",
        "ENDPOINTS",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]);
    }
    out
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
    let dump = read(args.proxy_mode, &args.bpffs)?;
    match args.output {
        OutputFormat::Table => {
            print!("{}", render_frontends(&dump.frontends));
            if !dump.links.is_empty() {
                println!("\npinned links: {}", dump.links.join(" "));
            }
            if !dump.tables.is_empty() {
                print!("\n{}", render_table(&dump));
            }
        }
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
            frontends: Vec::new(),
            links: Vec::new(),
        });
        assert!(
            text.contains("table ip kproxy: 4 load-balanced, 0 dropped, 4 rejected"),
            "{text}"
        );
        assert!(text.contains("table ip6 kproxy: absent"), "{text}");
        assert!(text.contains("no-endpoint-reject"), "{text}");
    }

    fn entry(scope: &'static str, flags: u16, backends: &[&str]) -> InspectedFrontend {
        InspectedFrontend {
            address: "192.0.2.1".parse().unwrap(),
            port: 30080,
            protocol: 6,
            scope,
            flags,
            affinity_timeout_secs: 0,
            service_id: 7,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            missing_slots: 0,
        }
    }

    #[test]
    fn ebpf_scopes_merge_into_one_frontend_with_its_short_circuit() {
        let got = from_bpf(vec![
            entry("all", FLAG_NODE_PORT | FLAG_DROP, &[]),
            entry("pod", FLAG_NODE_PORT, &["10.1.0.2:8080"]),
            entry("node", FLAG_NODE_PORT, &["10.1.0.2:8080"]),
        ]);
        assert_eq!(got.len(), 1, "{got:#?}");
        let f = &got[0];
        assert_eq!(f.kind, "NodePort");
        assert_eq!(f.verdict, "drop");
        assert!(f.endpoints.is_empty());
        assert_eq!(f.cluster_endpoints, vec!["10.1.0.2:8080".parse().unwrap()]);
        assert_eq!(f.protocol, "TCP");
        assert_eq!(f.service, None);
        let text = render_frontends(&got);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("FRONTEND"), "{text}");
        let row = lines.next().unwrap();
        assert!(row.starts_with("192.0.2.1:30080/TCP"), "{text}");
        assert!(row.contains("pod/node sources: 10.1.0.2:8080"), "{text}");
    }

    #[test]
    fn nftables_frontends_take_their_kind_from_the_sets_and_the_node_addresses() {
        let read = |addr: &str, cluster_ip: bool| ReadFrontend {
            family: "ip",
            service: Some("ns/web:http/tcp".into()),
            address: addr.parse().unwrap(),
            protocol: 17,
            port: 53,
            cluster_ip,
            source_ranges: false,
            verdict: ReadVerdict::Reject,
            chain: None,
            affinity_timeout_secs: None,
            endpoints: vec![],
            cluster_endpoints: vec![],
        };
        let local = BTreeSet::from(["192.0.2.1".parse().unwrap()]);
        let c = from_nft(read("10.96.0.10", true), &local);
        assert_eq!(
            (c.kind.as_str(), c.verdict.as_str()),
            ("ClusterIP", "reject")
        );
        assert_eq!(c.protocol, "UDP");
        assert_eq!(from_nft(read("192.0.2.1", false), &local).kind, "NodePort");
        assert_eq!(
            from_nft(read("203.0.113.9", false), &local).kind,
            "External"
        );
    }
}
