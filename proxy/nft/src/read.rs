//! Reads kproxy's tables back into frontends: what each frontend does and which endpoints
//! it sends to, decoded from the set and map elements (and, for session affinity, the
//! per-service chains) the kernel holds now. `kproxy dump` uses it, so it must not depend
//! on anything an agent keeps in memory.
//!
//! The layout (see `layout` and `render`): a load-balanced frontend is an element of one
//! class set (`lb-…`, named after what its chain does) and its endpoints are the
//! `frontend . slot → endpoint` elements of `@endpoints` (slots from
//! `SHORTCUT_LIST_OFFSET` on are the cluster-wide list of eTP Local short-circuits). A
//! frontend of an affinity service maps to its own chain in `@service-chains`; that chain
//! goes to pick chains whose rules go to one chain per endpoint, each DNAT'ing to an
//! immediate address and port. Filter sets say drop or reject; element comments name the
//! service port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::{
    error::Error,
    ir::Family,
    layout::{FixedSet, SHORTCUT_LIST_OFFSET, TABLE},
    netlink::{NetlinkBackend, attrs},
    wire::{self, MsgType},
};

// Attribute numbers of linux/netfilter/nf_tables.h that only decoding needs.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
/// `NFTNL_UDATA_SET_ELEM_COMMENT`: the TLV type of an element comment.
const UDATA_COMMENT: u8 = 0;

/// What the kernel does with new connections to a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadVerdict {
    /// DNAT to one of the endpoints.
    Forward,
    /// Dropped (`@no-endpoint-drop`: a Local traffic policy without a local endpoint).
    Drop,
    /// Rejected (`@no-endpoint-reject`: no usable endpoint).
    Reject,
    /// Neither DNAT'ed nor filtered: only short-circuited sources are load-balanced.
    None,
}

/// One frontend (`addr . proto . port`) of a kproxy table, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFrontend {
    /// `ip` or `ip6`.
    pub family: &'static str,
    /// The service port from the element comments (`ns/name:port/proto`), when an element
    /// of this frontend carries one.
    pub service: Option<String>,
    /// Frontend address.
    pub address: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// Frontend port.
    pub port: u16,
    /// The address is in `@cluster-ips`: a ClusterIP frontend. Other frontends (NodePorts,
    /// LoadBalancer IPs, externalIPs) look alike in the table.
    pub cluster_ip: bool,
    /// The frontend is in `@firewall-ips`: a LoadBalancer frontend with source ranges.
    pub source_ranges: bool,
    /// Drop, reject or forward.
    pub verdict: ReadVerdict,
    /// The shared class chain that load-balances it (its name says the endpoint count and
    /// masquerade rules), or the frontend's own chain for session affinity.
    pub chain: Option<String>,
    /// ClientIP affinity timeout, for a frontend of an affinity service.
    pub affinity_timeout_secs: Option<u32>,
    /// The endpoints in slot order.
    pub endpoints: Vec<SocketAddr>,
    /// The cluster-wide endpoints that pod and node sources of an eTP Local frontend are
    /// short-circuited to (empty when there is no such short-circuit).
    pub cluster_endpoints: Vec<SocketAddr>,
}

/// The frontends of one family's table (`ip` or `ip6`); `None` when the table does not
/// exist.
pub type FamilyFrontends = (&'static str, Option<Vec<ReadFrontend>>);

/// Reads the frontends of kproxy's table of each enabled family, in the calling thread's
/// network namespace. Changes nothing.
pub fn read_frontends(ipv4: bool, ipv6: bool) -> Result<Vec<FamilyFrontends>, Error> {
    let mut backend = NetlinkBackend::open()?;
    let families = [(ipv4, Family::Ip), (ipv6, Family::Ip6)];
    families
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, fam)| {
            if !backend.table_exists(fam)? {
                return Ok((fam.as_str(), None));
            }
            Ok((fam.as_str(), Some(read_family(&mut backend, fam)?)))
        })
        .collect()
}

/// A set element as decoded: key bytes, data, comment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RawElem {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    /// The chain of a jump/goto verdict.
    chain: Option<String>,
    comment: Option<String>,
}

/// What the rules of one chain refer to.
#[derive(Debug, Default, Clone)]
struct RawChain {
    /// Jump and goto targets, in rule order.
    targets: Vec<String>,
    /// Immediate data values, in rule order.
    values: Vec<Vec<u8>>,
}

fn read_family(b: &mut NetlinkBackend, fam: Family) -> Result<Vec<ReadFrontend>, Error> {
    // Set name → timeout (ms) of the sets of the table.
    let mut sets: BTreeMap<String, Option<u64>> = BTreeMap::new();
    b.dump(MsgType::GetSet, fam, &[], |p| {
        let (mut table, mut name, mut timeout) = (String::new(), String::new(), None);
        for (k, v) in attrs(p) {
            match k {
                wire::NFTA_SET_TABLE => table = text(v),
                wire::NFTA_SET_NAME => name = text(v),
                NFTA_SET_TIMEOUT => {
                    timeout = v.try_into().ok().map(u64::from_be_bytes);
                }
                _ => {}
            }
        }
        if table == TABLE {
            sets.insert(name, timeout);
        }
    })?;
    let mut elems: BTreeMap<String, Vec<RawElem>> = BTreeMap::new();
    let wanted = sets.keys().filter(|n| {
        n.starts_with("lb-")
            || [
                FixedSet::Endpoints,
                FixedSet::ServiceChains,
                FixedSet::NoEndpointDrop,
                FixedSet::NoEndpointReject,
                FixedSet::ClusterIps,
                FixedSet::FirewallIps,
            ]
            .iter()
            .any(|s| s.name() == n.as_str())
    });
    for set in wanted.cloned().collect::<Vec<_>>() {
        let list = read_elements(b, fam, &set)?;
        elems.insert(set, list);
    }
    let chains = if elems
        .get(FixedSet::ServiceChains.name())
        .is_some_and(|l| !l.is_empty())
    {
        read_chains(b, fam)?
    } else {
        BTreeMap::new()
    };
    Ok(assemble(fam, &sets, &elems, &chains))
}

fn read_elements(b: &mut NetlinkBackend, fam: Family, set: &str) -> Result<Vec<RawElem>, Error> {
    let mut out = Vec::new();
    let req = [
        (wire::NFTA_SET_ELEM_LIST_TABLE, TABLE),
        (wire::NFTA_SET_ELEM_LIST_SET, set),
    ];
    b.dump(MsgType::GetSetElem, fam, &req, |p| {
        for (k, v) in attrs(p) {
            if k == wire::NFTA_SET_ELEM_LIST_ELEMENTS {
                out.extend(
                    attrs(v)
                        .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                        .map(|(_, e)| decode_elem(e)),
                );
            }
        }
    })?;
    Ok(out)
}

/// Every chain of the table with the targets and immediates of its rules.
fn read_chains(b: &mut NetlinkBackend, fam: Family) -> Result<BTreeMap<String, RawChain>, Error> {
    let mut chains: BTreeMap<String, RawChain> = BTreeMap::new();
    b.dump(
        MsgType::GetRule,
        fam,
        &[(wire::NFTA_RULE_TABLE, TABLE)],
        |p| {
            let (mut table, mut chain, mut exprs) = (String::new(), String::new(), None);
            for (k, v) in attrs(p) {
                match k {
                    wire::NFTA_RULE_TABLE => table = text(v),
                    wire::NFTA_RULE_CHAIN => chain = text(v),
                    NFTA_RULE_EXPRESSIONS => exprs = Some(v),
                    _ => {}
                }
            }
            if table != TABLE {
                return;
            }
            let entry = chains.entry(chain).or_default();
            if let Some(exprs) = exprs {
                decode_rule(exprs, entry);
            }
        },
    )?;
    Ok(chains)
}

/// Collects the immediates (verdict targets and data values) of one rule's expressions.
fn decode_rule(exprs: &[u8], into: &mut RawChain) {
    for (_, e) in attrs(exprs).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
        let mut name = String::new();
        let mut data = None;
        for (k, v) in attrs(e) {
            match k {
                NFTA_EXPR_NAME => name = text(v),
                NFTA_EXPR_DATA => data = Some(v),
                _ => {}
            }
        }
        let (Some(data), "immediate") = (data, name.as_str()) else {
            continue;
        };
        for (k, v) in attrs(data) {
            if k != NFTA_IMMEDIATE_DATA {
                continue;
            }
            let (value, target) = decode_data(v);
            into.values.extend(value);
            into.targets.extend(target);
        }
    }
}

/// A nested `nft_data`: a value, or a jump/goto verdict's chain.
fn decode_data(v: &[u8]) -> (Option<Vec<u8>>, Option<String>) {
    let mut value = None;
    let mut chain = None;
    for (k, d) in attrs(v) {
        match k {
            NFTA_DATA_VALUE => value = Some(d.to_vec()),
            NFTA_DATA_VERDICT => {
                let mut code = 0i32;
                let mut target = None;
                for (k, x) in attrs(d) {
                    match k {
                        NFTA_VERDICT_CODE => {
                            code = x.try_into().map_or(0, i32::from_be_bytes);
                        }
                        NFTA_VERDICT_CHAIN => target = Some(text(x)),
                        _ => {}
                    }
                }
                if code == NFT_JUMP || code == NFT_GOTO {
                    chain = target;
                }
            }
            _ => {}
        }
    }
    (value, chain)
}

fn decode_elem(e: &[u8]) -> RawElem {
    let mut out = RawElem::default();
    for (k, v) in attrs(e) {
        match k {
            NFTA_SET_ELEM_KEY => out.key = decode_data(v).0.unwrap_or_default(),
            NFTA_SET_ELEM_DATA => (out.value, out.chain) = decode_data(v),
            NFTA_SET_ELEM_USERDATA => out.comment = comment(v),
            _ => {}
        }
    }
    out
}

/// The comment TLV of element user data.
fn comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            return Some(text(value));
        }
        udata = &udata[2 + len..];
    }
    None
}

/// A NUL-terminated (or not) string attribute.
fn text(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn addr(fam: Family, b: &[u8]) -> Option<IpAddr> {
    match fam {
        Family::Ip => {
            let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(Ipv4Addr::from(o).into())
        }
        Family::Ip6 => {
            let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(Ipv6Addr::from(o).into())
        }
    }
}

fn port_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// `addr . inet_proto . inet_service`, each field padded to 4 bytes.
type Key = (IpAddr, u8, u16);

fn frontend_key(fam: Family, b: &[u8]) -> Option<Key> {
    let a = fam.addr_len() as usize;
    Some((addr(fam, b)?, *b.get(a)?, port_at(b, a + 4)?))
}

/// `addr . inet_service` of an endpoint (map data or two immediates).
fn endpoint(fam: Family, b: &[u8]) -> Option<SocketAddr> {
    let a = fam.addr_len() as usize;
    Some(SocketAddr::new(addr(fam, b)?, port_at(b, a)?))
}

fn new_frontend(fam: Family, (address, protocol, port): Key) -> ReadFrontend {
    ReadFrontend {
        family: fam.as_str(),
        service: None,
        address,
        protocol,
        port,
        cluster_ip: false,
        source_ranges: false,
        verdict: ReadVerdict::None,
        chain: None,
        affinity_timeout_secs: None,
        endpoints: Vec::new(),
        cluster_endpoints: Vec::new(),
    }
}

/// Builds the frontends from the decoded elements and chains.
fn assemble(
    fam: Family,
    sets: &BTreeMap<String, Option<u64>>,
    elems: &BTreeMap<String, Vec<RawElem>>,
    chains: &BTreeMap<String, RawChain>,
) -> Vec<ReadFrontend> {
    let mut out: BTreeMap<Key, ReadFrontend> = BTreeMap::new();
    let list = |set: FixedSet| elems.get(set.name()).map_or(&[][..], Vec::as_slice);
    let touch = |e: &RawElem, out: &mut BTreeMap<Key, ReadFrontend>| -> Option<Key> {
        let key = frontend_key(fam, &e.key)?;
        let f = out.entry(key).or_insert_with(|| new_frontend(fam, key));
        if f.service.is_none() {
            f.service.clone_from(&e.comment);
        }
        Some(key)
    };
    for (set, list) in elems.iter().filter(|(n, _)| n.starts_with("lb-")) {
        for e in list {
            if let Some(k) = touch(e, &mut out) {
                out.get_mut(&k).expect("just added").chain = Some(set.clone());
            }
        }
    }
    for e in list(FixedSet::ServiceChains) {
        if let Some(k) = touch(e, &mut out) {
            let f = out.get_mut(&k).expect("just added");
            f.chain.clone_from(&e.chain);
            if let Some(own) = e.chain.as_deref() {
                affinity_endpoints(fam, own, sets, chains, f);
            }
        }
    }
    for (set, verdict) in [
        (FixedSet::NoEndpointDrop, ReadVerdict::Drop),
        (FixedSet::NoEndpointReject, ReadVerdict::Reject),
    ] {
        for e in list(set) {
            if let Some(k) = touch(e, &mut out) {
                out.get_mut(&k).expect("just added").verdict = verdict;
            }
        }
    }
    for e in list(FixedSet::FirewallIps) {
        if let Some(k) = touch(e, &mut out) {
            out.get_mut(&k).expect("just added").source_ranges = true;
        }
    }
    // `frontend . slot → endpoint`, ordered by slot within each frontend.
    let mut slots: Vec<(Key, u32, SocketAddr)> = list(FixedSet::Endpoints)
        .iter()
        .filter_map(|e| {
            let key = frontend_key(fam, &e.key)?;
            let a = fam.addr_len() as usize;
            let slot = u32::from_ne_bytes(e.key.get(a + 8..a + 12)?.try_into().ok()?);
            Some((key, slot, endpoint(fam, e.value.as_deref()?)?))
        })
        .collect();
    slots.sort_unstable();
    for (key, slot, ep) in slots {
        let f = out.entry(key).or_insert_with(|| new_frontend(fam, key));
        if slot >= SHORTCUT_LIST_OFFSET {
            f.cluster_endpoints.push(ep);
        } else {
            f.endpoints.push(ep);
        }
    }
    let cluster_ips: BTreeSet<IpAddr> = list(FixedSet::ClusterIps)
        .iter()
        .filter_map(|e| addr(fam, &e.key))
        .collect();
    for f in out.values_mut() {
        f.cluster_ip = cluster_ips.contains(&f.address);
        if f.verdict == ReadVerdict::None && !f.endpoints.is_empty() {
            f.verdict = ReadVerdict::Forward;
        }
    }
    out.into_values().collect()
}

/// Endpoints of a frontend with its own (affinity) chain: the service chain goes to pick
/// chains (`…/cluster` is the short-circuit list), whose rules go to one chain per
/// endpoint; that chain DNATs to an immediate address and port, and its set of recent
/// clients has the affinity timeout.
fn affinity_endpoints(
    fam: Family,
    own: &str,
    sets: &BTreeMap<String, Option<u64>>,
    chains: &BTreeMap<String, RawChain>,
    f: &mut ReadFrontend,
) {
    let Some(own_chain) = chains.get(own) else {
        return;
    };
    for pick in &own_chain.targets {
        let Some(pick_chain) = chains.get(pick) else {
            continue;
        };
        let into_cluster = pick.ends_with("/cluster");
        let mut seen = BTreeSet::new();
        for ep_chain in &pick_chain.targets {
            if !seen.insert(ep_chain) {
                continue;
            }
            if let Some(Some(ms)) = sets.get(ep_chain) {
                f.affinity_timeout_secs = u32::try_from(ms / 1000).ok();
            }
            let Some(c) = chains.get(ep_chain) else {
                continue;
            };
            let a = fam.addr_len() as usize;
            let ip = c.values.iter().find(|v| v.len() == a);
            let port = c.values.iter().find(|v| v.len() == 2);
            if let (Some(ip), Some(port)) = (ip, port) {
                let ep = endpoint(fam, &[ip.as_slice(), port.as_slice()].concat());
                let list = if into_cluster {
                    &mut f.cluster_endpoints
                } else {
                    &mut f.endpoints
                };
                list.extend(ep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut w = wire::Writer::default();
        w.attr(kind, body);
        w.buf
    }

    fn value(kind: u16, bytes: &[u8]) -> Vec<u8> {
        nest(kind, &nest(NFTA_DATA_VALUE, bytes))
    }

    fn goto(kind: u16, chain: &str) -> Vec<u8> {
        let mut v = nest(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
        let mut w = wire::Writer::default();
        w.attr_str(NFTA_VERDICT_CHAIN, chain);
        v.extend(w.buf);
        nest(kind, &nest(NFTA_DATA_VERDICT, &v))
    }

    fn fe_key(ip: [u8; 4], proto: u8, port: u16, slot: Option<u32>) -> Vec<u8> {
        let mut k = ip.to_vec();
        k.extend([proto, 0, 0, 0]);
        k.extend(port.to_be_bytes());
        k.extend([0, 0]);
        if let Some(s) = slot {
            k.extend(s.to_ne_bytes());
        }
        k
    }

    fn raw(key: Vec<u8>, comment: Option<&str>) -> RawElem {
        RawElem {
            key,
            comment: comment.map(str::to_owned),
            ..RawElem::default()
        }
    }

    #[test]
    fn elements_decode_key_data_and_comment() {
        let mut e = value(NFTA_SET_ELEM_KEY, &fe_key([10, 0, 0, 1], 6, 80, Some(1)));
        e.extend(value(NFTA_SET_ELEM_DATA, &[10, 1, 0, 2, 0x1f, 0x90]));
        let mut udata = vec![UDATA_COMMENT, 13];
        udata.extend(b"ns/web:http\0");
        udata.push(0);
        e.extend(nest(NFTA_SET_ELEM_USERDATA, &udata));
        let d = decode_elem(&e);
        assert_eq!(
            frontend_key(Family::Ip, &d.key),
            Some(("10.0.0.1".parse().unwrap(), 6, 80))
        );
        assert_eq!(
            endpoint(Family::Ip, d.value.as_deref().unwrap()),
            Some("10.1.0.2:8080".parse().unwrap())
        );
        assert_eq!(d.comment.as_deref(), Some("ns/web:http"));
        let v = decode_elem(&goto(NFTA_SET_ELEM_DATA, "svc-ns/web/tcp/http"));
        assert_eq!(v.chain.as_deref(), Some("svc-ns/web/tcp/http"));
    }

    #[test]
    fn frontends_combine_class_filter_and_endpoint_elements() {
        let web = fe_key([10, 0, 0, 1], 6, 80, None);
        let local = fe_key([192, 0, 2, 1], 6, 30080, None);
        let slot = |k: &[u8], s: u32, ep: [u8; 6]| RawElem {
            key: [k, &s.to_ne_bytes()[..]].concat(),
            value: Some(ep.to_vec()),
            ..RawElem::default()
        };
        let elems: BTreeMap<String, Vec<RawElem>> = [
            (
                "lb-n2".to_owned(),
                vec![raw(web.clone(), Some("ns/web:http/tcp"))],
            ),
            (
                "lb-none-node-n1".to_owned(),
                vec![raw(local.clone(), Some("ns/local:http/tcp"))],
            ),
            (
                "no-endpoint-drop".to_owned(),
                vec![raw(local.clone(), Some("ns/local:http/tcp"))],
            ),
            (
                "endpoints".to_owned(),
                vec![
                    slot(&web, 1, [10, 1, 0, 3, 0x1f, 0x90]),
                    slot(&web, 0, [10, 1, 0, 2, 0x1f, 0x90]),
                    slot(&local, SHORTCUT_LIST_OFFSET, [10, 2, 0, 2, 0x1f, 0x90]),
                ],
            ),
            ("cluster-ips".to_owned(), vec![raw(vec![10, 0, 0, 1], None)]),
        ]
        .into();
        let got = assemble(Family::Ip, &BTreeMap::new(), &elems, &BTreeMap::new());
        assert_eq!(got.len(), 2, "{got:#?}");
        let w = &got[0];
        assert_eq!(w.service.as_deref(), Some("ns/web:http/tcp"));
        assert!(w.cluster_ip);
        assert_eq!(w.verdict, ReadVerdict::Forward);
        assert_eq!(w.chain.as_deref(), Some("lb-n2"));
        assert_eq!(
            w.endpoints,
            vec![
                "10.1.0.2:8080".parse().unwrap(),
                "10.1.0.3:8080".parse().unwrap()
            ]
        );
        let l = &got[1];
        assert!(!l.cluster_ip);
        assert_eq!(l.verdict, ReadVerdict::Drop);
        assert!(l.endpoints.is_empty());
        assert_eq!(l.cluster_endpoints, vec!["10.2.0.2:8080".parse().unwrap()]);
    }

    #[test]
    fn affinity_frontends_follow_their_chains_to_the_endpoints() {
        let web = fe_key([10, 0, 0, 1], 6, 80, None);
        let mut sc = raw(web, Some("ns/web:http/tcp"));
        sc.chain = Some("svc-ns/web/tcp/http".into());
        let elems: BTreeMap<String, Vec<RawElem>> =
            [("service-chains".to_owned(), vec![sc])].into();
        let ep = "ep-ns/web/tcp/http__10.1.0.2/8080";
        let chains: BTreeMap<String, RawChain> = [
            (
                "svc-ns/web/tcp/http".to_owned(),
                RawChain {
                    targets: vec!["pick-ns/web/tcp/http/internal".into()],
                    values: vec![],
                },
            ),
            (
                "pick-ns/web/tcp/http/internal".to_owned(),
                RawChain {
                    targets: vec![ep.into(), ep.into()],
                    values: vec![0u32.to_ne_bytes().to_vec()],
                },
            ),
            (
                ep.to_owned(),
                RawChain {
                    targets: vec![],
                    values: vec![vec![10, 1, 0, 2], vec![0x1f, 0x90]],
                },
            ),
        ]
        .into();
        let sets = [(ep.to_owned(), Some(10_800_000))].into();
        let got = assemble(Family::Ip, &sets, &elems, &chains);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].affinity_timeout_secs, Some(10_800));
        assert_eq!(got[0].verdict, ReadVerdict::Forward);
        assert_eq!(got[0].endpoints, vec!["10.1.0.2:8080".parse().unwrap()]);
    }

    /// The real kernel: what a sync programs reads back as the model says.
    #[test]
    #[ignore = "needs root: run through cargo xtask test"]
    fn a_synced_model_reads_back_frontend_by_frontend() {
        use kproxy_model::{FrontendKind, Verdict};

        use crate::{
            NftConfig, NftDataplane,
            tests::{NetNs, PortBuilder, ep, fwd, local, model},
        };

        let ns = NetNs::new("read");
        let m = model([
            PortBuilder::tcp("web", "10.96.0.10", 80)
                .endpoints(vec![ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)])
                .build(),
            PortBuilder::tcp("gone", "10.96.0.11", 80).build(),
            PortBuilder::tcp("lb", "10.96.0.12", 443)
                .endpoints(vec![local(ep("10.1.0.3", 8443)), ep("10.2.0.3", 8443)])
                .frontend(FrontendKind::LoadBalancer, "203.0.113.1", 443)
                .external_local(fwd(&[0]), &["10.0.0.0/8"])
                .source_ranges(&["198.51.100.0/24"])
                .build(),
            PortBuilder::tcp("sticky", "10.96.0.13", 80)
                .endpoints(vec![ep("10.1.0.4", 80), ep("10.1.0.5", 80)])
                .affinity(10800)
                .build(),
            PortBuilder::tcp("local-only", "10.96.0.14", 80)
                .endpoints(vec![ep("10.2.0.9", 80)])
                .internal(Verdict::Drop)
                .build(),
            PortBuilder::tcp("v6-sticky", "fd00:96::11", 80)
                .endpoints(vec![ep("fd00:1::3", 80)])
                .affinity(60)
                .build(),
        ]);
        let tables = ns.run(move || {
            let mut dp = NftDataplane::new(NftConfig::default()).expect("netlink");
            dp.sync_full(&m).expect("sync");
            read_frontends(true, true).expect("read back")
        });
        let all: Vec<&ReadFrontend> = tables
            .iter()
            .flat_map(|(_, t)| t.as_deref().expect("both tables exist"))
            .collect();
        let find = |a: &str, port: u16| {
            let a: IpAddr = a.parse().unwrap();
            *all.iter()
                .find(|f| f.address == a && f.port == port)
                .unwrap_or_else(|| panic!("no frontend {a}:{port} in {all:#?}"))
        };
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let web = find("10.96.0.10", 80);
        assert_eq!(
            web.service.as_deref(),
            Some("default/web:http/tcp"),
            "{web:?}"
        );
        assert!(web.cluster_ip);
        assert_eq!(web.protocol, 6);
        assert_eq!(web.verdict, ReadVerdict::Forward);
        assert_eq!(
            web.endpoints,
            vec![sa("10.1.0.1:8080"), sa("10.1.0.2:8080")]
        );
        assert_eq!(find("10.96.0.11", 80).verdict, ReadVerdict::Reject);
        assert_eq!(find("10.96.0.14", 80).verdict, ReadVerdict::Drop);
        let lb = find("203.0.113.1", 443);
        assert!(!lb.cluster_ip);
        assert!(lb.source_ranges);
        assert_eq!(lb.endpoints, vec![sa("10.1.0.3:8443")]);
        assert_eq!(
            lb.cluster_endpoints,
            vec![sa("10.1.0.3:8443"), sa("10.2.0.3:8443")]
        );
        let sticky = find("10.96.0.13", 80);
        assert_eq!(sticky.affinity_timeout_secs, Some(10800));
        assert_eq!(sticky.verdict, ReadVerdict::Forward);
        assert_eq!(sticky.endpoints, vec![sa("10.1.0.4:80"), sa("10.1.0.5:80")]);
        let v6 = find("fd00:96::11", 80);
        assert_eq!(v6.family, "ip6");
        assert_eq!(v6.affinity_timeout_secs, Some(60));
        assert_eq!(v6.endpoints, vec![sa("[fd00:1::3]:80")]);
        assert_eq!(all.len(), 7, "{all:#?}");
    }
}
