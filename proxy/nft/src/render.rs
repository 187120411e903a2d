//! Model → IR, pure. Decides nothing: every verdict, endpoint list and masquerade choice
//! comes from the model; this module only spells it in nftables.
//!
//! A service port renders to [`PortRender`]: the set and map elements it owns, the
//! shared class chains its frontends use (by [`ClassSpec`], created on first use), and,
//! for ClientIP affinity only, chains and dynamic sets of its own.

use std::{fmt::Write as _, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use kproxy_model::{
    Endpoint, Frontend, FrontendKind, InternalMasquerade, ServicePort, Verdict as ModelVerdict,
};

use crate::{
    ir::{
        CmpOp, CtKey, ElemData, Element, EndpointList, Expr, Family, FibOn, Field, MetaKey, Name,
        NatKind, Reg, RejectKind, Rule, Set, Value, Verdict,
    },
    layout::{self, FixedSet, SHORTCUT_LIST_OFFSET},
    names,
};

/// A frontend's identity in every per-frontend set: `addr . proto . port`.
pub(crate) type FrontendKey = (IpAddr, u8, u16);

/// The key of `f` in service port `port`'s protocol.
pub(crate) fn frontend_key(port: &ServicePort, f: &Frontend) -> FrontendKey {
    (f.ip, port.key.name.protocol.number(), f.port)
}

/// Masquerade rule of internal traffic, from [`InternalMasquerade`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum MarkRule {
    None,
    All,
    Outside(Vec<IpNet>),
}

/// What a shared class chain does; frontends with equal specs share one chain.
/// Endpoint counts are part of the spec because `numgen … mod N` takes N as a constant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClassSpec {
    /// Masquerade rule evaluated first (internal traffic).
    pub(crate) mark: MarkRule,
    /// eTP Local: sources in these CIDRs use the cluster-wide list (`Some(n)`), or stop
    /// here without DNAT (`None`: the cluster verdict is not a forward).
    pub(crate) pods: Option<(Vec<IpNet>, ClusterList)>,
    /// eTP Local: node-local sources are masqueraded and use the cluster-wide list.
    pub(crate) node: Option<ClusterList>,
    /// The frontend's own list size, and whether to masquerade it (eTP Cluster).
    pub(crate) primary: Option<(u32, bool)>,
}

impl ClassSpec {
    /// True when the chain would do something; otherwise no class is needed.
    fn is_useful(&self) -> bool {
        self.primary.is_some() || self.pods.is_some() || self.node.is_some()
    }

    /// Readable chain/set name: `lb-n10-masq-out-10.0.0.0/8-pods-…-node-…`.
    pub(crate) fn name(&self) -> Name {
        let mut s = String::from("lb");
        match self.primary {
            Some((n, masq)) => {
                let _ = write!(s, "-n{n}");
                if masq {
                    s.push_str("-masq");
                }
            }
            None => s.push_str("-none"),
        }
        match &self.mark {
            MarkRule::None => {}
            MarkRule::All => s.push_str("-masq-all"),
            MarkRule::Outside(cidrs) => {
                let _ = write!(s, "-masq-out-{}", cidr_list(cidrs));
            }
        }
        if let Some((cidrs, n)) = &self.pods {
            let _ = write!(s, "-pods-{}-{}", cidr_list(cidrs), list_size(*n));
        }
        if let Some(n) = self.node {
            let _ = write!(s, "-node-{}", list_size(n));
        }
        names::fit(s)
    }

    /// What the chain does, for its comment.
    pub(crate) fn describe(&self) -> Name {
        let mut parts = Vec::new();
        match &self.mark {
            MarkRule::None => {}
            MarkRule::All => parts.push("masquerade all".to_owned()),
            MarkRule::Outside(c) => {
                parts.push(format!("masquerade sources outside {}", cidr_list(c)));
            }
        }
        if let Some((c, n)) = &self.pods {
            parts.push(format!(
                "sources in {} use the cluster list ({})",
                cidr_list(c),
                list_size(*n)
            ));
        }
        if let Some(n) = self.node {
            parts.push(format!(
                "node sources masqueraded to the cluster list ({})",
                list_size(n)
            ));
        }
        match self.primary {
            Some((n, true)) => parts.push(format!("masquerade, {n} endpoint(s)")),
            Some((n, false)) => parts.push(format!("{n} endpoint(s)")),
            None => parts.push("no DNAT".to_owned()),
        }
        parts.join("; ").into()
    }
}

/// The cluster-wide list a short-circuit uses: `n` endpoints, or none (no DNAT: the
/// filter sets decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ClusterList {
    Endpoints(u32),
    Nowhere,
}

impl ClusterList {
    fn size(self) -> Option<u32> {
        match self {
            Self::Endpoints(n) => Some(n),
            Self::Nowhere => None,
        }
    }
}

fn list_size(n: ClusterList) -> String {
    let n = n.size();
    n.map_or_else(|| "none".to_owned(), |n| format!("n{n}"))
}

fn cidr_list(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string().replace(':', "."))
        .collect::<Vec<_>>()
        .join("+")
}

/// Which set an element belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SetRef {
    Fixed(FixedSet),
    Class(Arc<ClassSpec>),
}

/// A chain a service port owns (affinity only), with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnChain {
    pub(crate) name: Name,
    pub(crate) rules: Vec<Rule>,
}

/// Everything one service port contributes to a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PortRender {
    /// Elements of every set but `@endpoints`.
    pub(crate) elements: Vec<(SetRef, Element)>,
    /// Elements of `@endpoints`, shared with a full sync's transaction (which would
    /// otherwise copy nearly all of its elements).
    pub(crate) endpoints: Arc<[EndpointList]>,
    /// Own chains in creation order (referenced chains first).
    pub(crate) chains: Vec<OwnChain>,
    /// Own dynamic sets (affinity).
    pub(crate) sets: Vec<Set>,
}

impl PortRender {
    /// True when the port contributes no element.
    pub(crate) fn has_no_elements(&self) -> bool {
        self.elements.is_empty() && self.endpoints.is_empty()
    }
}

/// Most endpoints one list can hold: slots of the second list start at
/// [`SHORTCUT_LIST_OFFSET`].
const MAX_LIST: usize = SHORTCUT_LIST_OFFSET as usize - 1;

/// The endpoint list a verdict forwards to, or `None`. Indices the port does not have
/// are skipped and lists are capped at [`MAX_LIST`] (far beyond what EndpointSlices
/// allow), each with a warning, so one bad port cannot fail a whole transaction.
fn forward_list<'a>(v: &'a ModelVerdict, port: &'a ServicePort) -> Option<Vec<&'a Endpoint>> {
    let ModelVerdict::Forward(set) = v else {
        return None;
    };
    let mut list: Vec<&Endpoint> = set
        .0
        .iter()
        .filter_map(|&i| port.endpoints.get(i as usize))
        .collect();
    if list.len() != set.len() {
        tracing::warn!(service = %port.key, "endpoint indices out of range ignored");
    }
    if list.len() > MAX_LIST {
        tracing::warn!(service = %port.key, endpoints = list.len(), kept = MAX_LIST, "too many endpoints; the rest are ignored");
        list.truncate(MAX_LIST);
    }
    (!list.is_empty()).then_some(list)
}

/// Endpoint count as a numgen modulus. Counts above the slot space cannot happen for
/// valid objects (EndpointSlices cap a Service far below 65536 endpoints per port).
fn modulus(list: &[&Endpoint]) -> u32 {
    u32::try_from(list.len())
        .unwrap_or(u32::MAX)
        .min(SHORTCUT_LIST_OFFSET - 1)
}

/// Renders one service port. `owned(frontend)` tells whether this port owns the frontend
/// (duplicates across ports are resolved by the caller).
pub(crate) fn render_port(
    fam: Family,
    mark: u32,
    port: &ServicePort,
    owned: &dyn Fn(FrontendKey) -> bool,
) -> PortRender {
    let mut out = PortRender::default();
    // ClusterIP + per frontend: class and filter elements, and one endpoint list (usually).
    out.elements.reserve(1 + port.frontends.len() * 2);
    let mut endpoints = Vec::new();
    let comment = names::comment(&port.key.name);
    let affinity = port.affinity_timeout_secs;
    let mut affinity_lists = AffinityLists::default();
    let frontends = unique_frontends(port);
    for f in &frontends {
        if f.kind == FrontendKind::ClusterIp && fam_of(f.ip) == fam {
            out.elements.push((
                SetRef::Fixed(FixedSet::ClusterIps),
                Element::key(Value::Addr(f.ip)),
            ));
        }
    }
    for f in frontends {
        if fam_of(f.ip) != fam {
            tracing::warn!(service = %port.key, frontend = %f.ip, "frontend of the wrong family ignored");
            continue;
        }
        let key = frontend_key(port, f);
        if !owned(key) {
            continue;
        }
        let Some(plan) = FrontendPlan::of(port, f) else {
            tracing::warn!(service = %port.key, frontend = %f.ip, "external frontend without external traffic policy ignored");
            continue;
        };
        render_frontend(fam, port, f, &plan, &comment, &mut out);
        match affinity {
            Some(_) => affinity_lists.note(port, f, &plan, &mut out),
            None => {
                if plan.spec.is_useful() {
                    let el = Element {
                        key: fe_value(key),
                        data: None,
                        comment: Some(comment.clone()),
                    };
                    out.elements.push((SetRef::Class(plan.spec.clone()), el));
                    endpoint_elements(key, plan.primary.as_deref(), 0, &mut endpoints);
                    endpoint_elements(
                        key,
                        plan.cluster.as_deref(),
                        SHORTCUT_LIST_OFFSET,
                        &mut endpoints,
                    );
                }
            }
        }
    }
    out.endpoints = Arc::from(endpoints);
    // Kept for as long as the port is programmed: no spare capacity.
    out.elements.shrink_to_fit();
    hairpin_elements(fam, port, &mut out);
    if let Some(timeout) = affinity {
        affinity_lists.render(fam, mark, port, timeout, &mut out);
    }
    out
}

/// The port's frontends, one per key: a listed twice (e.g. an LB IP also given as an
/// externalIP) would make the same element twice. The ClusterIP kind wins, then
/// LoadBalancer (whose source ranges then apply).
fn unique_frontends(port: &ServicePort) -> Vec<&Frontend> {
    let rank = |k: &FrontendKind| match k {
        FrontendKind::ClusterIp => 0,
        FrontendKind::LoadBalancer => 1,
        FrontendKind::ExternalIp => 2,
        FrontendKind::NodePort => 3,
    };
    let mut v: Vec<&Frontend> = port.frontends.iter().collect();
    v.sort_by_key(|f| (frontend_key(port, f), rank(&f.kind)));
    v.dedup_by_key(|f| frontend_key(port, f));
    v
}

fn fam_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ip,
        IpAddr::V6(_) => Family::Ip6,
    }
}

fn fe_value((ip, proto, port): FrontendKey) -> Value {
    Value::Frontend(ip, proto, port)
}

/// The model's answer for one frontend, resolved into lists and a class spec.
struct FrontendPlan<'a> {
    spec: Arc<ClassSpec>,
    verdict: &'a ModelVerdict,
    primary: Option<Vec<&'a Endpoint>>,
    /// The cluster-wide list eTP Local short-circuits use (when any applies).
    cluster: Option<Vec<&'a Endpoint>>,
    external: bool,
}

impl<'a> FrontendPlan<'a> {
    fn of(port: &'a ServicePort, f: &Frontend) -> Option<Self> {
        if f.kind == FrontendKind::ClusterIp {
            let primary = forward_list(&port.internal, port);
            let mark = match &port.internal_masquerade {
                InternalMasquerade::Always => MarkRule::All,
                InternalMasquerade::SourceNotIn(c) if !c.is_empty() => MarkRule::Outside(c.clone()),
                InternalMasquerade::SourceNotIn(_) | InternalMasquerade::HairpinOnly => {
                    MarkRule::None
                }
            };
            let spec = ClassSpec {
                mark,
                pods: None,
                node: None,
                primary: primary.as_ref().map(|l| (modulus(l), false)),
            };
            return Some(Self {
                spec: Arc::new(spec),
                verdict: &port.internal,
                primary,
                cluster: None,
                external: false,
            });
        }
        let ext = port.external.as_ref()?;
        let primary = forward_list(&ext.verdict, port);
        let cluster_list = forward_list(&ext.cluster_verdict, port);
        let cluster_n = cluster_list
            .as_ref()
            .map_or(ClusterList::Nowhere, |l| ClusterList::Endpoints(modulus(l)));
        let pods = (!ext.pod_sources_use_cluster.is_empty())
            .then(|| (ext.pod_sources_use_cluster.clone(), cluster_n));
        let node = ext.node_sources_use_cluster.then_some(cluster_n);
        let shortcuts = pods.is_some() || node.is_some();
        let spec = ClassSpec {
            mark: MarkRule::None,
            pods,
            node,
            primary: primary.as_ref().map(|l| (modulus(l), ext.masquerade)),
        };
        let cluster = if shortcuts { cluster_list } else { None };
        Some(Self {
            spec: Arc::new(spec),
            verdict: &ext.verdict,
            primary,
            cluster,
            external: true,
        })
    }
}

/// Filter elements of one frontend: no-endpoint drop/reject and source ranges.
fn render_frontend(
    fam: Family,
    port: &ServicePort,
    f: &Frontend,
    plan: &FrontendPlan<'_>,
    comment: &Name,
    out: &mut PortRender,
) {
    let key = frontend_key(port, f);
    let tagged = |v: Value| Element {
        key: v,
        data: None,
        comment: Some(comment.clone()),
    };
    match plan.verdict {
        ModelVerdict::Drop => out.elements.push((
            SetRef::Fixed(FixedSet::NoEndpointDrop),
            tagged(fe_value(key)),
        )),
        ModelVerdict::Reject => {
            out.elements.push((
                SetRef::Fixed(FixedSet::NoEndpointReject),
                tagged(fe_value(key)),
            ));
        }
        ModelVerdict::Forward(_) => {}
    }
    let ranges: Vec<IpNet> = port
        .source_ranges
        .iter()
        .filter(|r| fam_of(r.addr()) == fam)
        .copied()
        .collect();
    // Overlapping intervals would be refused by the kernel: merge them first.
    let ranges = IpNet::aggregate(&ranges);
    if f.kind == FrontendKind::LoadBalancer && !ranges.is_empty() {
        out.elements
            .push((SetRef::Fixed(FixedSet::FirewallIps), tagged(fe_value(key))));
        for r in ranges {
            let v = Value::FrontendSource(key.0, key.1, key.2, r.trunc());
            out.elements
                .push((SetRef::Fixed(FixedSet::FirewallAllow), Element::key(v)));
        }
    }
}

fn endpoint_elements(
    key: FrontendKey,
    list: Option<&[&Endpoint]>,
    offset: u32,
    out: &mut Vec<EndpointList>,
) {
    let targets: Box<[(IpAddr, u16)]> = list
        .unwrap_or_default()
        .iter()
        .map(|ep| (ep.ip, ep.port))
        .collect();
    if !targets.is_empty() {
        out.push(EndpointList {
            frontend: key,
            offset,
            targets,
        });
    }
}

/// `ip . ip` for every local endpoint this port forwards to: a connection DNAT'ed back
/// to its own source. Only local endpoints can hairpin here: a remote endpoint's own
/// traffic is DNAT'ed on its own node.
fn hairpin_elements(fam: Family, port: &ServicePort, out: &mut PortRender) {
    let mut ips: Vec<IpAddr> = port
        .endpoints
        .iter()
        .filter(|e| e.is_local && fam_of(e.ip) == fam)
        .map(|e| e.ip)
        .collect();
    ips.sort_unstable();
    ips.dedup();
    for ip in ips {
        out.elements.push((
            SetRef::Fixed(FixedSet::Hairpin),
            Element::key(Value::AddrPair(ip, ip)),
        ));
    }
}

/// The lists an affinity service's chains pick from.
#[derive(Default)]
struct AffinityLists<'a> {
    internal: Option<(MarkRule, List<'a>)>,
    /// Spec, primary list, cluster list.
    external: Option<(ClassSpec, List<'a>, List<'a>)>,
}

/// An endpoint list, or none.
type List<'a> = Option<Vec<&'a Endpoint>>;

impl<'a> AffinityLists<'a> {
    fn note(
        &mut self,
        port: &'a ServicePort,
        f: &Frontend,
        plan: &FrontendPlan<'a>,
        out: &mut PortRender,
    ) {
        if !plan.spec.is_useful() {
            return;
        }
        let chain = if plan.external {
            self.external.get_or_insert_with(|| {
                (
                    (*plan.spec).clone(),
                    plan.primary.clone(),
                    plan.cluster.clone(),
                )
            });
            names::external_chain(&port.key.name)
        } else {
            self.internal
                .get_or_insert_with(|| (plan.spec.mark.clone(), plan.primary.clone()));
            names::service_chain(&port.key.name)
        };
        let el = Element {
            key: fe_value(frontend_key(port, f)),
            data: Some(ElemData::Verdict(Verdict::Goto(chain))),
            comment: Some(names::comment(&port.key.name)),
        };
        out.elements
            .push((SetRef::Fixed(FixedSet::ServiceChains), el));
    }

    /// Endpoint chains and sets, pick chains, then the entry chains.
    fn render(
        self,
        fam: Family,
        mark: u32,
        port: &ServicePort,
        timeout: u32,
        out: &mut PortRender,
    ) {
        let name = &port.key.name;
        let mut all: Vec<&Endpoint> = Vec::new();
        let lists = [
            self.internal.as_ref().and_then(|i| i.1.as_ref()),
            self.external.as_ref().and_then(|e| e.1.as_ref()),
            self.external.as_ref().and_then(|e| e.2.as_ref()),
        ];
        for l in lists.into_iter().flatten() {
            all.extend(l.iter().copied());
        }
        all.sort_by_key(|e| (e.ip, e.port));
        all.dedup_by_key(|e| (e.ip, e.port));
        for ep in &all {
            let ep_name = names::endpoint(name, ep.ip, ep.port);
            out.sets
                .push(layout::affinity_set(fam, ep_name.clone(), timeout));
            out.chains.push(OwnChain {
                name: ep_name.clone(),
                rules: vec![rule(
                    [
                        vec![
                            Expr::Payload {
                                field: Field::Saddr(fam),
                                dreg: Reg::r32(0),
                            },
                            Expr::DynsetUpdate {
                                set: ep_name,
                                sreg: Reg::r32(0),
                                timeout_ms: u64::from(timeout) * 1000,
                            },
                        ],
                        dnat_immediate(fam, ep.ip, ep.port),
                    ]
                    .concat(),
                )],
            });
        }
        let pick =
            |role: &str, list: Option<&Vec<&Endpoint>>, out: &mut PortRender| -> Option<Name> {
                let list = list?;
                let chain = names::pick_chain(name, role);
                out.chains.push(OwnChain {
                    name: chain.clone(),
                    rules: pick_rules(fam, name, list),
                });
                Some(chain)
            };
        if let Some((mark_rule, list)) = &self.internal {
            let target = pick("internal", list.as_ref(), out);
            let mut rules = mark_rules(fam, mark, mark_rule);
            rules.extend(target.map(|t| rule(vec![Expr::Verdict(Verdict::Goto(t))])));
            out.chains.push(OwnChain {
                name: names::service_chain(name),
                rules,
            });
        }
        if let Some((spec, primary, cluster)) = &self.external {
            let to_cluster = pick("cluster", cluster.as_ref(), out);
            let to_primary = pick("external", primary.as_ref(), out);
            let rules = external_rules(fam, mark, spec, to_cluster.as_ref(), to_primary.as_ref());
            out.chains.push(OwnChain {
                name: names::external_chain(name),
                rules,
            });
        }
    }
}

/// Rules choosing an endpoint with affinity: a recent client goes back to its endpoint,
/// else a uniform random choice (rule k matches with probability 1/(N-k)).
fn pick_rules(fam: Family, name: &kproxy_model::ServicePortName, list: &[&Endpoint]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for ep in list {
        let ep_name = names::endpoint(name, ep.ip, ep.port);
        rules.push(rule(vec![
            Expr::Payload {
                field: Field::Saddr(fam),
                dreg: Reg::r32(0),
            },
            Expr::Lookup {
                set: ep_name.clone(),
                sreg: Reg::r32(0),
                dreg: None,
                invert: false,
            },
            Expr::Verdict(Verdict::Goto(ep_name)),
        ]));
    }
    let n = list.len();
    for (k, ep) in list.iter().enumerate() {
        let target = Expr::Verdict(Verdict::Goto(names::endpoint(name, ep.ip, ep.port)));
        if k + 1 == n {
            rules.push(rule(vec![target]));
        } else {
            let m = u32::try_from(n - k).unwrap_or(u32::MAX);
            rules.push(rule(vec![
                Expr::Numgen {
                    dreg: Reg::r32(0),
                    modulus: m,
                    offset: 0,
                },
                Expr::Cmp {
                    sreg: Reg::r32(0),
                    op: CmpOp::Eq,
                    data: 0u32.to_ne_bytes().to_vec(),
                },
                target,
            ]));
        }
    }
    rules
}

// ----- rule building blocks -----

pub(crate) fn rule(exprs: Vec<Expr>) -> Rule {
    Rule {
        exprs,
        comment: None,
    }
}

/// Loads `daddr . l4proto . dport` into registers from r32(0); returns the next free one.
pub(crate) fn load_frontend(fam: Family, exprs: &mut Vec<Expr>) -> Reg {
    let a = fam.addr_len();
    exprs.push(Expr::Payload {
        field: Field::Daddr(fam),
        dreg: Reg::r32(0),
    });
    exprs.push(Expr::Meta {
        key: MetaKey::L4Proto,
        dreg: Reg::r32(0).after(a),
    });
    exprs.push(Expr::Payload {
        field: Field::ThDport,
        dreg: Reg::r32(0).after(a + 4),
    });
    Reg::r32(0).after(a + 8)
}

/// `ct state new`.
pub(crate) fn ct_state_new() -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: CtKey::State,
            dreg: Reg::r32(0),
        },
        Expr::Bitwise {
            sreg: Reg::r32(0),
            dreg: Reg::r32(0),
            mask: 8u32.to_ne_bytes().to_vec(), // NF_CT_STATE_BIT(IP_CT_NEW)
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: Reg::r32(0),
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ]
}

/// `ct status dnat`.
pub(crate) fn ct_status_dnat() -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: CtKey::Status,
            dreg: Reg::r32(0),
        },
        Expr::Bitwise {
            sreg: Reg::r32(0),
            dreg: Reg::r32(0),
            mask: 0x20u32.to_ne_bytes().to_vec(), // IPS_DST_NAT
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: Reg::r32(0),
            op: CmpOp::Neq,
            data: vec![0; 4],
        },
    ]
}

/// `meta mark set meta mark | mark`.
pub(crate) fn set_mark(mark: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::r32(0),
        },
        Expr::Bitwise {
            sreg: Reg::r32(0),
            dreg: Reg::r32(0),
            mask: (!mark).to_ne_bytes().to_vec(),
            xor: mark.to_ne_bytes().to_vec(),
        },
        Expr::MetaSetMark { sreg: Reg::r32(0) },
    ]
}

/// `ip saddr [!=|==] cidr`.
fn saddr_cidr(fam: Family, cidr: &IpNet, op: CmpOp) -> Vec<Expr> {
    let mut exprs = vec![Expr::Payload {
        field: Field::Saddr(fam),
        dreg: Reg::r32(0),
    }];
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    if cidr.prefix_len() < cidr.max_prefix_len() {
        exprs.push(Expr::Bitwise {
            sreg: Reg::r32(0),
            dreg: Reg::r32(0),
            mask: bytes(cidr.netmask()),
            xor: vec![0; bytes(cidr.netmask()).len()],
        });
    }
    exprs.push(Expr::Cmp {
        sreg: Reg::r32(0),
        op,
        data: bytes(cidr.network()),
    });
    exprs
}

/// `dnat to ip:port`.
fn dnat_immediate(fam: Family, ip: IpAddr, port: u16) -> Vec<Expr> {
    let addr = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let port_reg = Reg::r32(0).after(fam.addr_len());
    vec![
        Expr::Immediate {
            dreg: Reg::r32(0),
            data: addr,
        },
        Expr::Immediate {
            dreg: port_reg,
            data: port.to_be_bytes().to_vec(),
        },
        Expr::Nat {
            kind: NatKind::Dnat,
            family: fam,
            addr: Reg::r32(0),
            port: Some(port_reg),
        },
    ]
}

/// `dnat to daddr . l4proto . dport . numgen random mod n offset o map @endpoints`.
fn dnat_endpoints(fam: Family, n: u32, offset: u32) -> Vec<Expr> {
    let mut e = Vec::with_capacity(6);
    let slot = load_frontend(fam, &mut e);
    e.push(Expr::Numgen {
        dreg: slot,
        modulus: n,
        offset,
    });
    e.push(Expr::Lookup {
        set: FixedSet::Endpoints.name().into(),
        sreg: Reg::r32(0),
        dreg: Some(Reg::r32(0)),
        invert: false,
    });
    e.push(Expr::Nat {
        kind: NatKind::Dnat,
        family: fam,
        addr: Reg::r32(0),
        port: Some(Reg::r32(0).after(fam.addr_len())),
    });
    e
}

fn mark_rules(fam: Family, mark: u32, m: &MarkRule) -> Vec<Rule> {
    match m {
        MarkRule::None => vec![],
        MarkRule::All => vec![rule(set_mark(mark))],
        MarkRule::Outside(cidrs) => {
            let mut e: Vec<Expr> = cidrs
                .iter()
                .flat_map(|c| saddr_cidr(fam, c, CmpOp::Neq))
                .collect();
            e.extend(set_mark(mark));
            vec![rule(e)]
        }
    }
}

/// Rules of an external chain: short-circuits, then the primary list. `cluster` and
/// `primary` say how to reach a list: a pick chain (affinity) or `None` for the shared
/// endpoints map.
fn external_rules(
    fam: Family,
    mark: u32,
    spec: &ClassSpec,
    cluster: Option<&Name>,
    primary: Option<&Name>,
) -> Vec<Rule> {
    let to = |target: Option<&Name>, n: Option<u32>, offset: u32| -> Vec<Expr> {
        // `n` is None only for a short-circuit to no endpoint.
        match (target, n) {
            (Some(chain), _) => vec![Expr::Verdict(Verdict::Goto(chain.clone()))],
            (None, Some(n)) => dnat_endpoints(fam, n, offset),
            (None, None) => vec![Expr::Verdict(Verdict::Return)],
        }
    };
    let mut rules = mark_rules(fam, mark, &spec.mark);
    if let Some((cidrs, n)) = &spec.pods {
        for c in cidrs {
            let mut e = saddr_cidr(fam, c, CmpOp::Eq);
            e.extend(to(cluster, n.size(), SHORTCUT_LIST_OFFSET));
            rules.push(rule(e));
        }
    }
    if let Some(n) = spec.node {
        let mut e = vec![
            Expr::Fib {
                on: FibOn::Saddr,
                dreg: Reg::r32(0),
            },
            Expr::Cmp {
                sreg: Reg::r32(0),
                op: CmpOp::Eq,
                data: 2u32.to_ne_bytes().to_vec(),
            }, // RTN_LOCAL
        ];
        e.extend(set_mark(mark));
        e.extend(to(cluster, n.size(), SHORTCUT_LIST_OFFSET));
        rules.push(rule(e));
    }
    if let Some((n, masq)) = spec.primary {
        let mut e = if masq { set_mark(mark) } else { vec![] };
        e.extend(to(primary, Some(n), 0));
        rules.push(rule(e));
    }
    rules
}

/// Rules of a shared class chain.
pub(crate) fn class_rules(fam: Family, mark: u32, spec: &ClassSpec) -> Vec<Rule> {
    external_rules(fam, mark, spec, None, None)
}

/// Rules of the fixed chains (base chains, `services` head, reject helper).
pub(crate) fn fixed_rules(fam: Family, mark: u32) -> Vec<(&'static str, Rule)> {
    let mut rules = filter_rules(fam);
    rules.extend(nat_rules(fam, mark));
    rules
}

/// Set membership of the registers from r32(0).
fn member(set: FixedSet, invert: bool) -> Expr {
    Expr::Lookup {
        set: set.name().into(),
        sreg: Reg::r32(0),
        dreg: None,
        invert,
    }
}

/// `head`, the frontend loaded from r32(0), then `tail`.
fn with_frontend(fam: Family, mut head: Vec<Expr>, tail: Vec<Expr>) -> Rule {
    load_frontend(fam, &mut head);
    head.extend(tail);
    rule(head)
}

/// Filter chains: source ranges, services without endpoints, invalid ClusterIP ports.
fn filter_rules(fam: Family) -> Vec<(&'static str, Rule)> {
    use layout::{
        FILTER_FORWARD, FILTER_INPUT, FILTER_OUTPUT, FILTER_OUTPUT_PRE_DNAT,
        FILTER_PREROUTING_PRE_DNAT, REJECT_CHAIN,
    };
    // Firewall: a frontend with source ranges, from a source outside all of them.
    let firewall = {
        let mut e = ct_state_new();
        let next = load_frontend(fam, &mut e);
        e.push(member(FixedSet::FirewallIps, false));
        e.push(Expr::Payload {
            field: Field::Saddr(fam),
            dreg: next,
        });
        e.push(member(FixedSet::FirewallAllow, true));
        e.push(Expr::Verdict(Verdict::Drop));
        Rule {
            exprs: e,
            comment: Some("loadBalancerSourceRanges".into()),
        }
    };
    let drop = with_frontend(
        fam,
        ct_state_new(),
        vec![
            member(FixedSet::NoEndpointDrop, false),
            Expr::Verdict(Verdict::Drop),
        ],
    );
    let reject = with_frontend(
        fam,
        ct_state_new(),
        vec![
            member(FixedSet::NoEndpointReject, false),
            Expr::Verdict(Verdict::Goto(REJECT_CHAIN.into())),
        ],
    );
    let cluster_ips = {
        let mut e = ct_state_new();
        e.push(Expr::Payload {
            field: Field::Daddr(fam),
            dreg: Reg::r32(0),
        });
        e.push(member(FixedSet::ClusterIps, false));
        e.push(Expr::Verdict(Verdict::Goto(REJECT_CHAIN.into())));
        Rule {
            exprs: e,
            comment: Some("ClusterIP on a port no service has".into()),
        }
    };
    let reject_tcp = rule(vec![
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: Reg::r32(0),
        },
        Expr::Cmp {
            sreg: Reg::r32(0),
            op: CmpOp::Eq,
            data: vec![6],
        },
        Expr::Reject(RejectKind::TcpReset),
    ]);
    let reject_other = rule(vec![Expr::Reject(RejectKind::PortUnreachable(fam))]);
    vec![
        (FILTER_PREROUTING_PRE_DNAT, firewall.clone()),
        (FILTER_OUTPUT_PRE_DNAT, firewall),
        (FILTER_INPUT, drop.clone()),
        (FILTER_INPUT, reject.clone()),
        (FILTER_FORWARD, drop.clone()),
        (FILTER_FORWARD, reject.clone()),
        (FILTER_FORWARD, cluster_ips.clone()),
        (FILTER_OUTPUT, drop),
        (FILTER_OUTPUT, reject),
        (FILTER_OUTPUT, cluster_ips),
        (REJECT_CHAIN, reject_tcp),
        (REJECT_CHAIN, reject_other),
    ]
}

/// Nat chains: service dispatch and masquerade.
fn nat_rules(fam: Family, mark: u32) -> Vec<(&'static str, Rule)> {
    use layout::{NAT_OUTPUT, NAT_POSTROUTING, NAT_PREROUTING, SERVICES};
    let jump_services = rule(vec![Expr::Verdict(Verdict::Jump(SERVICES.into()))]);
    let service_chains = with_frontend(
        fam,
        vec![],
        vec![Expr::Lookup {
            set: FixedSet::ServiceChains.name().into(),
            sreg: Reg::r32(0),
            dreg: Some(Reg::VERDICT),
            invert: false,
        }],
    );
    let masquerade_marked = {
        let mut e = vec![
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: Reg::r32(0),
            },
            Expr::Bitwise {
                sreg: Reg::r32(0),
                dreg: Reg::r32(1),
                mask: mark.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: Reg::r32(1),
                op: CmpOp::Eq,
                data: mark.to_ne_bytes().to_vec(),
            },
            Expr::Bitwise {
                sreg: Reg::r32(0),
                dreg: Reg::r32(0),
                mask: (!mark).to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::MetaSetMark { sreg: Reg::r32(0) },
        ];
        e.push(Expr::MasqueradeFullyRandom);
        rule(e)
    };
    let masquerade_hairpin = {
        let mut e = ct_status_dnat();
        e.push(Expr::Payload {
            field: Field::Saddr(fam),
            dreg: Reg::r32(0),
        });
        e.push(Expr::Payload {
            field: Field::Daddr(fam),
            dreg: Reg::r32(0).after(fam.addr_len()),
        });
        e.push(member(FixedSet::Hairpin, false));
        e.push(Expr::MasqueradeFullyRandom);
        Rule {
            exprs: e,
            comment: Some("hairpin".into()),
        }
    };
    vec![
        (NAT_PREROUTING, jump_services.clone()),
        (NAT_OUTPUT, jump_services),
        (NAT_POSTROUTING, masquerade_marked),
        (NAT_POSTROUTING, masquerade_hairpin),
        (SERVICES, service_chains),
    ]
}

/// The dispatch rule of one class in `services`.
pub(crate) fn class_dispatch(fam: Family, name: &Name) -> Rule {
    let mut e = Vec::new();
    load_frontend(fam, &mut e);
    e.push(Expr::Lookup {
        set: name.clone(),
        sreg: Reg::r32(0),
        dreg: None,
        invert: false,
    });
    e.push(Expr::Verdict(Verdict::Goto(name.clone())));
    rule(e)
}
