//! The benchmark's Services, rendered three ways: kproxy manifests (YAML files), kube-proxy's
//! iptables layout (an `iptables-restore` file) and kube-proxy's nftables layout (an
//! `nft -f` file), so every mode programs exactly the same Services.
//!
//! Service 0 is the *target*: its endpoints are real server pods and it has a TCP port, a
//! UDP port and a NodePort. Services 1..N are *fillers* with made-up endpoints that nothing
//! answers on; they are there to make the rulesets as large as a cluster's would be. Every
//! [`NODEPORT_EVERY`]-th filler is a NodePort, the rest are ClusterIPs.
//!
//! Addresses: ClusterIPs from [`SERVICE_CIDR`] (filler `i` gets `10.96.0.0 + i`, the target
//! `10.96.0.0`'s top end is never reached: at most 1M services fit), filler endpoints from
//! `10.128.0.0/9` (`10.128.0.0 + i * 16 + k`), pods from the lab's `100.64.0.0/16`. All of
//! this lives only inside lab namespaces.

use std::{
    collections::hash_map::DefaultHasher,
    fmt::Write as _,
    hash::{Hash as _, Hasher as _},
    net::Ipv4Addr,
};

/// The Service CIDR (kube-proxy's `--service-cluster-ip-range` default region).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Every filler `i` with `i % NODEPORT_EVERY == 0` is a NodePort (2.5 % of Services; the
/// NodePort range holds 2768 ports, enough for 100k Services).
pub const NODEPORT_EVERY: usize = 40;
/// The target's TCP service port and NodePort; UDP service port.
pub const TARGET_TCP_PORT: u16 = 80;
/// The target's NodePort (the top of the range, clear of the fillers').
pub const TARGET_NODE_PORT: u16 = 32700;
/// The target's UDP service port.
pub const TARGET_UDP_PORT: u16 = 53;
/// Server pods listen here (TCP) ...
pub const POD_TCP_PORT: u16 = 8080;
/// ... and here (UDP).
pub const POD_UDP_PORT: u16 = 8053;
/// The masquerade mark bit, as kube-proxy's default `--iptables-masquerade-bit 14`.
const MASQ_MARK: &str = "0x4000";
/// Namespace of every benchmark Service.
pub const NAMESPACE: &str = "bench";

/// One Service of the set, enough to render it in every layout.
#[derive(Debug, Clone)]
pub struct Svc {
    /// Service name.
    pub name: String,
    /// Its ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// NodePort of its TCP port, if it is a NodePort Service.
    pub node_port: Option<u16>,
    /// Whether it also has the UDP port (only the target).
    pub udp: bool,
    /// Endpoint IPs (ready, serving).
    pub endpoints: Vec<Ipv4Addr>,
}

/// The whole set: the target plus fillers.
#[derive(Debug, Clone)]
pub struct ServiceSet {
    /// Service 0 is the target.
    pub services: Vec<Svc>,
    /// The cluster's pod CIDR (masquerade decisions).
    pub cluster_cidr: String,
}

/// The ClusterIP of service `i`.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("service index fits u32");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i)
}

/// Filler `i`'s endpoint `k`: addresses nothing answers on.
pub fn filler_endpoint(i: usize, k: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("service index fits u32");
    let k = u32::try_from(k).expect("endpoint index fits u32");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + (k % 16))
}

impl ServiceSet {
    /// `services` Services in total (the target and `services - 1` fillers) with
    /// `endpoints` endpoints per filler; the target's endpoints are `target_endpoints`.
    pub fn new(
        services: usize,
        endpoints: usize,
        target_endpoints: Vec<Ipv4Addr>,
        cluster_cidr: &str,
    ) -> Self {
        let mut out = Vec::with_capacity(services.max(1));
        out.push(Svc {
            name: "target".into(),
            cluster_ip: cluster_ip(0),
            node_port: Some(TARGET_NODE_PORT),
            udp: true,
            endpoints: target_endpoints,
        });
        for i in 1..services {
            out.push(Svc {
                name: format!("svc-{i}"),
                cluster_ip: cluster_ip(i),
                node_port: (i % NODEPORT_EVERY == 0)
                    .then(|| 30000 + u16::try_from((i / NODEPORT_EVERY) % 2700).expect("fits")),
                udp: false,
                endpoints: (0..endpoints).map(|k| filler_endpoint(i, k)).collect(),
            });
        }
        Self {
            services: out,
            cluster_cidr: cluster_cidr.to_owned(),
        }
    }

    /// Total endpoints (kube-proxy switches to its "large cluster" mode above 1000).
    pub fn total_endpoints(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }
}

// ---------------------------------------------------------------------------------------
// kproxy manifests

/// One Service and its EndpointSlice as YAML documents.
pub fn manifest(svc: &Svc, out: &mut String) {
    let (ty, np) = match svc.node_port {
        Some(p) => ("NodePort", format!(", nodePort: {p}")),
        None => ("ClusterIP", String::new()),
    };
    let ip = svc.cluster_ip;
    let name = &svc.name;
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  type: {ty}\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports:\n  \
         - {{name: http, port: {TARGET_TCP_PORT}, protocol: TCP, targetPort: {POD_TCP_PORT}{np}}}\n"
    );
    if svc.udp {
        let _ = writeln!(
            out,
            "  - {{name: dns, port: {TARGET_UDP_PORT}, protocol: UDP, targetPort: {POD_UDP_PORT}}}"
        );
    }
    let _ = write!(
        out,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
         ports:\n- {{name: http, port: {POD_TCP_PORT}, protocol: TCP}}\n"
    );
    if svc.udp {
        let _ = writeln!(out, "- {{name: dns, port: {POD_UDP_PORT}, protocol: UDP}}");
    }
    if svc.endpoints.is_empty() {
        out.push_str("endpoints: []\n");
    } else {
        out.push_str("endpoints:\n");
        for ep in &svc.endpoints {
            let _ = writeln!(
                out,
                "- {{addresses: [\"{ep}\"], conditions: {{ready: true, serving: true}}}}"
            );
        }
    }
}

/// A Node object so kproxy knows its node's addresses (NodePorts on `primary`).
pub fn node_manifest(name: &str, ip: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  addresses: \
         [{{type: InternalIP, address: \"{ip}\"}}]\n"
    )
}

/// The manifest file holding service `i` when `per_file` Services share a file.
pub fn chunk_file(i: usize, per_file: usize) -> String {
    format!("services-{:05}.yaml", i / per_file.max(1))
}

/// The text of chunk `chunk` (Services `chunk * per_file ..`).
pub fn chunk_text(set: &ServiceSet, chunk: usize, per_file: usize) -> String {
    let per_file = per_file.max(1);
    let start = chunk * per_file;
    let end = (start + per_file).min(set.services.len());
    let mut out = String::with_capacity((end - start) * 900);
    for svc in &set.services[start..end] {
        manifest(svc, &mut out);
    }
    out
}

/// Number of chunk files.
pub fn chunks(set: &ServiceSet, per_file: usize) -> usize {
    set.services.len().div_ceil(per_file.max(1))
}

// ---------------------------------------------------------------------------------------
// Names: kube-proxy hashes with sha256 and base32; the exact hash does not change any cost,
// so the same lengths are kept with a cheaper hash.

fn base32_hash(input: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let mut a = h.finish();
    let mut h2 = DefaultHasher::new();
    (input, 1u8).hash(&mut h2);
    let mut b = h2.finish();
    (0..len)
        .map(|i| {
            let src = if i < 12 { &mut a } else { &mut b };
            let c = ALPHABET[usize::try_from(*src & 31).expect("5 bits")];
            *src >>= 5;
            char::from(c)
        })
        .collect()
}

/// iptables service chain suffix: 16 base32 characters, as kube-proxy's
/// `servicePortChainName` (`KUBE-SVC-` + 16).
fn ipt_hash(svc: &Svc, port: &str, proto: &str) -> String {
    base32_hash(&format!("{NAMESPACE}/{}:{port}{proto}", svc.name), 16)
}

fn ipt_sep(svc: &Svc, port: &str, proto: &str, ep: Ipv4Addr, ep_port: u16) -> String {
    base32_hash(
        &format!("{NAMESPACE}/{}:{port}{proto}{ep}:{ep_port}", svc.name),
        16,
    )
}

/// The Service ports as (port name, proto, service port, pod port, node port).
fn ports(svc: &Svc) -> Vec<(&'static str, &'static str, u16, u16, Option<u16>)> {
    let mut out = vec![("http", "tcp", TARGET_TCP_PORT, POD_TCP_PORT, svc.node_port)];
    if svc.udp {
        out.push(("dns", "udp", TARGET_UDP_PORT, POD_UDP_PORT, None));
    }
    out
}

// ---------------------------------------------------------------------------------------
// kube-proxy's iptables layout

/// Where in `KUBE-SERVICES` the target's rules go. kube-proxy writes Services in Go map
/// order, i.e. at random, so on average a new connection to any one Service walks half the
/// chain; the target sits in the middle to be that average Service.
fn target_position(set: &ServiceSet) -> usize {
    set.services.len() / 2
}

/// The order Services appear in `KUBE-SERVICES` (fillers, with the target in the middle).
fn ipt_order(set: &ServiceSet) -> Vec<usize> {
    let mut order: Vec<usize> = (1..set.services.len()).collect();
    order.insert(target_position(set).min(order.len()), 0);
    order
}

/// The complete ruleset kube-proxy's iptables mode would restore for `set` on a node
/// (one `iptables-restore --noflush` input: the filter and nat tables), including the jumps
/// from the built-in chains that kube-proxy installs with `iptables -I`.
pub fn iptables_full(set: &ServiceSet) -> String {
    let large = set.total_endpoints() > 1000;
    let mut out = String::with_capacity(set.total_endpoints() * 260 + 4096);
    iptables_filter(&mut out);
    out.push_str("*nat\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for svc in &set.services {
        for (port, proto, ..) in ports(svc) {
            let h = ipt_hash(svc, port, proto);
            let _ = writeln!(out, ":KUBE-SVC-{h} - [0:0]");
            if svc.node_port.is_some() && proto == "tcp" {
                let _ = writeln!(out, ":KUBE-EXT-{h} - [0:0]");
            }
            for ep in &svc.endpoints {
                let pod_port = if proto == "tcp" {
                    POD_TCP_PORT
                } else {
                    POD_UDP_PORT
                };
                let _ = writeln!(
                    out,
                    ":KUBE-SEP-{} - [0:0]",
                    ipt_sep(svc, port, proto, *ep, pod_port)
                );
            }
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    let _ = write!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
    );
    iptables_services_chain(set, large, &mut out);
    iptables_nodeports_chain(set, large, &mut out);
    for svc in &set.services {
        iptables_service_chains(set, svc, large, &mut out);
    }
    out.push_str("COMMIT\n");
    out
}

/// The filter table: kube-proxy's chains and the jumps into them. Upstream also counts
/// invalid packets with nfacct; the counter is left out (it does not change the path).
fn iptables_filter(out: &mut String) {
    out.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = write!(
        out,
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    );
}

fn comment(large: bool, text: &str) -> String {
    if large {
        String::new()
    } else {
        format!("-m comment --comment \"{text}\" ")
    }
}

/// `KUBE-SERVICES` in full: one rule per service port, then the jump to `KUBE-NODEPORTS`.
fn iptables_services_chain(set: &ServiceSet, large: bool, out: &mut String) {
    for i in ipt_order(set) {
        let svc = &set.services[i];
        for (port, proto, sport, ..) in ports(svc) {
            if svc.endpoints.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES {}-d {}/32 -p {proto} -m {proto} --dport {sport} -j KUBE-SVC-{}",
                comment(
                    large,
                    &format!("{NAMESPACE}/{}:{port} cluster IP", svc.name)
                ),
                svc.cluster_ip,
                ipt_hash(svc, port, proto)
            );
        }
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
}

fn iptables_nodeports_chain(set: &ServiceSet, large: bool, out: &mut String) {
    for svc in &set.services {
        for (port, proto, _, _, np) in ports(svc) {
            let Some(np) = np else { continue };
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS {}-p {proto} -m {proto} --dport {np} -j KUBE-EXT-{}",
                comment(large, &format!("{NAMESPACE}/{}:{port}", svc.name)),
                ipt_hash(svc, port, proto)
            );
        }
    }
}

/// `KUBE-SVC-*` (masquerade off-cluster sources, then the random walk over endpoints),
/// `KUBE-EXT-*` for NodePorts and one `KUBE-SEP-*` per endpoint.
fn iptables_service_chains(set: &ServiceSet, svc: &Svc, large: bool, out: &mut String) {
    for (port, proto, sport, pod_port, np) in ports(svc) {
        let h = ipt_hash(svc, port, proto);
        let spn = format!("{NAMESPACE}/{}:{port}", svc.name);
        if np.is_some() {
            let _ = writeln!(
                out,
                "-A KUBE-EXT-{h} {}-j KUBE-MARK-MASQ\n-A KUBE-EXT-{h} -j KUBE-SVC-{h}",
                comment(
                    large,
                    &format!("masquerade traffic for {spn} external destinations")
                )
            );
        }
        let _ = writeln!(
            out,
            "-A KUBE-SVC-{h} {}! -s {} -d {}/32 -p {proto} -m {proto} --dport {sport} -j KUBE-MARK-MASQ",
            comment(large, &format!("{spn} cluster IP")),
            set.cluster_cidr,
            svc.cluster_ip
        );
        let n = svc.endpoints.len();
        for (k, ep) in svc.endpoints.iter().enumerate() {
            let sep = ipt_sep(svc, port, proto, *ep, pod_port);
            let stat = if k + 1 < n {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / f64::from(u32::try_from(n - k).expect("fits"))
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A KUBE-SVC-{h} {}{stat}-j KUBE-SEP-{sep}",
                comment(large, &format!("{spn} -> {ep}:{pod_port}"))
            );
            let _ = writeln!(
                out,
                "-A KUBE-SEP-{sep} {}-s {ep}/32 -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-{sep} {}-p {proto} -m {proto} -j DNAT --to-destination {ep}:{pod_port}",
                comment(large, &spn),
                comment(large, &spn)
            );
        }
    }
}

/// What kube-proxy's partial sync restores when one endpoint of `svc` changed from `old`
/// to the Service's current endpoints (`svc` already changed): `--noflush` input that
/// rewrites the filter table's chains and nat's `KUBE-SERVICES`, `KUBE-NODEPORTS`,
/// `KUBE-POSTROUTING` and `KUBE-MARK-MASQ` in full (upstream always does), the changed
/// Service's chains, and deletes the stale endpoint chain.
pub fn iptables_partial(set: &ServiceSet, svc: &Svc, old: Ipv4Addr) -> String {
    let large = set.total_endpoints() > 1000;
    let mut out = String::with_capacity(set.services.len() * 120 + 4096);
    out.push_str(
        "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n",
    );
    let _ = write!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n"
    );
    for (port, proto, _, pod_port, np) in ports(svc) {
        let h = ipt_hash(svc, port, proto);
        let _ = writeln!(out, ":KUBE-SVC-{h} - [0:0]");
        if np.is_some() {
            let _ = writeln!(out, ":KUBE-EXT-{h} - [0:0]");
        }
        for ep in svc.endpoints.iter().chain([&old]) {
            // The stale chain is declared too, which empties it so `-X` can delete it.
            let _ = writeln!(
                out,
                ":KUBE-SEP-{} - [0:0]",
                ipt_sep(svc, port, proto, *ep, pod_port)
            );
        }
    }
    let _ = write!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
    );
    iptables_services_chain(set, large, &mut out);
    iptables_nodeports_chain(set, large, &mut out);
    iptables_service_chains(set, svc, large, &mut out);
    for (port, proto, _, pod_port, _) in ports(svc) {
        let _ = writeln!(
            out,
            "-X KUBE-SEP-{}",
            ipt_sep(svc, port, proto, old, pod_port)
        );
    }
    out.push_str("COMMIT\n");
    out
}

// ---------------------------------------------------------------------------------------
// kube-proxy's nftables layout (v1.34/v1.35, "G2" in shared/reference/kube-proxy.md)

/// nft chain-name hash: 8 base32 characters, as kube-proxy's `hashAndTruncate`.
fn nft_hash(suffix: &str) -> String {
    base32_hash(suffix, 8)
}

fn nft_service_chain(svc: &Svc, port: &str, proto: &str) -> String {
    let suffix = format!("{NAMESPACE}/{}/{proto}/{port}", svc.name);
    format!("service-{}-{suffix}", nft_hash(&suffix))
}

fn nft_external_chain(svc: &Svc, port: &str, proto: &str) -> String {
    let suffix = format!("{NAMESPACE}/{}/{proto}/{port}", svc.name);
    format!("external-{}-{suffix}", nft_hash(&suffix))
}

fn nft_endpoint_chain(svc: &Svc, port: &str, proto: &str, ep: Ipv4Addr, pod_port: u16) -> String {
    let suffix = format!("{NAMESPACE}/{}/{proto}/{port}__{ep}/{pod_port}", svc.name);
    format!("endpoint-{}-{suffix}", nft_hash(&suffix))
}

const T: &str = "ip kube-proxy";

/// The complete `nft -f` transaction kube-proxy's nftables mode writes on its first sync
/// for `set`, with `node_ip` as the only NodePort address.
pub fn nft_full(set: &ServiceSet, node_ip: Ipv4Addr) -> String {
    let mut out = String::with_capacity(set.total_endpoints() * 330 + 8192);
    nft_base(set, node_ip, &mut out);
    for svc in &set.services {
        nft_service(set, svc, &mut out);
    }
    out
}

/// Table, base chains, helper chains, sets and maps (kube-proxy's `setupNFTables`).
fn nft_base(set: &ServiceSet, node_ip: Ipv4Addr, out: &mut String) {
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (chain, ty, hook, prio) in [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
        ("filter-output-pre-dnat", "filter", "output", "-110"),
        ("filter-input", "filter", "input", "0"),
        ("filter-forward", "filter", "forward", "0"),
        ("filter-output", "filter", "output", "0"),
        ("nat-prerouting", "nat", "prerouting", "-100"),
        ("nat-output", "nat", "output", "-100"),
        ("nat-postrouting", "nat", "postrouting", "100"),
    ] {
        let _ = writeln!(
            out,
            "add chain {T} {chain} {{ type {ty} hook {hook} priority {prio} ; }}"
        );
    }
    for chain in [
        "cluster-ips-check",
        "firewall-check",
        "masquerading",
        "mark-for-masquerade",
        "nodeport-endpoints-check",
        "reject-chain",
        "service-endpoints-check",
        "services",
    ] {
        let _ = writeln!(out, "add chain {T} {chain}");
    }
    let _ = writeln!(
        out,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add rule {T} filter-prerouting-pre-dnat ct state new jump firewall-check\n\
         add rule {T} filter-output-pre-dnat ct state new jump firewall-check\n\
         add rule {T} filter-input ct state new jump nodeport-endpoints-check\n\
         add rule {T} filter-input ct state new jump service-endpoints-check\n\
         add rule {T} filter-forward ct state new jump service-endpoints-check\n\
         add rule {T} filter-forward ct state new jump cluster-ips-check\n\
         add rule {T} filter-output ct state new jump service-endpoints-check\n\
         add rule {T} filter-output ct state new jump cluster-ips-check\n\
         add rule {T} nat-prerouting jump services\n\
         add rule {T} nat-output jump services\n\
         add rule {T} nat-postrouting jump masquerading\n\
         add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {T} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule {T} masquerading meta mark & {MASQ_MARK} == 0 return\n\
         add rule {T} masquerading meta mark set meta mark ^ {MASQ_MARK}\n\
         add rule {T} masquerading masquerade fully-random\n\
         add rule {T} mark-for-masquerade meta mark set meta mark | {MASQ_MARK}\n\
         add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule {T} reject-chain reject\n\
         add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add element {T} nodeport-ips {{ {node_ip} }}"
    );
    let _ = set;
}

/// One Service's chains, rules and map elements.
fn nft_service(set: &ServiceSet, svc: &Svc, out: &mut String) {
    let _ = writeln!(out, "add element {T} cluster-ips {{ {} }}", svc.cluster_ip);
    for (port, proto, sport, pod_port, np) in ports(svc) {
        let sc = nft_service_chain(svc, port, proto);
        let _ = writeln!(out, "add chain {T} {sc}");
        for ep in &svc.endpoints {
            let ec = nft_endpoint_chain(svc, port, proto, *ep, pod_port);
            let _ = writeln!(
                out,
                "add chain {T} {ec}\n\
                 add rule {T} {ec} ip saddr {ep} jump mark-for-masquerade\n\
                 add rule {T} {ec} meta l4proto {proto} dnat to {ep}:{pod_port}"
            );
        }
        // After the endpoint chains: the vmap's gotos need them to exist.
        nft_service_rules(set, svc, port, proto, sport, pod_port, out);
        let _ = writeln!(
            out,
            "add element {T} service-ips {{ {} . {proto} . {sport} : goto {sc} }}",
            svc.cluster_ip
        );
        if let Some(np) = np {
            let xc = nft_external_chain(svc, port, proto);
            let _ = writeln!(
                out,
                "add chain {T} {xc}\n\
                 add rule {T} {xc} jump mark-for-masquerade\n\
                 add rule {T} {xc} goto {sc}\n\
                 add element {T} service-nodeports {{ {proto} . {np} : goto {xc} }}"
            );
        }
    }
}

/// The service chain's rules: masquerade off-cluster sources, then the random vmap.
fn nft_service_rules(
    set: &ServiceSet,
    svc: &Svc,
    port: &str,
    proto: &str,
    sport: u16,
    pod_port: u16,
    out: &mut String,
) {
    let sc = nft_service_chain(svc, port, proto);
    let _ = writeln!(
        out,
        "add rule {T} {sc} ip daddr {} {proto} dport {sport} ip saddr != {} jump mark-for-masquerade",
        svc.cluster_ip, set.cluster_cidr
    );
    if svc.endpoints.is_empty() {
        return;
    }
    let arms: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, ep)| {
            format!(
                "{k} : goto {}",
                nft_endpoint_chain(svc, port, proto, *ep, pod_port)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "add rule {T} {sc} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        arms.join(" , ")
    );
}

/// kube-proxy's partial nftables sync after one endpoint of `svc` changed from `old`: the
/// service chain is flushed and rewritten, the new endpoint chain added, and the stale
/// endpoint chain flushed (upstream deletes it a second later, in another transaction).
pub fn nft_partial(set: &ServiceSet, svc: &Svc, old: Ipv4Addr) -> String {
    let mut out = String::new();
    for (port, proto, sport, pod_port, _) in ports(svc) {
        let sc = nft_service_chain(svc, port, proto);
        let _ = writeln!(out, "flush chain {T} {sc}");
        for ep in &svc.endpoints {
            let ec = nft_endpoint_chain(svc, port, proto, *ep, pod_port);
            let _ = writeln!(
                out,
                "add chain {T} {ec}\nflush chain {T} {ec}\n\
                 add rule {T} {ec} ip saddr {ep} jump mark-for-masquerade\n\
                 add rule {T} {ec} meta l4proto {proto} dnat to {ep}:{pod_port}"
            );
        }
        nft_service_rules(set, svc, port, proto, sport, pod_port, &mut out);
        let stale = nft_endpoint_chain(svc, port, proto, old, pod_port);
        let _ = writeln!(out, "flush chain {T} {stale}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ServiceSet {
        ServiceSet::new(
            n,
            3,
            vec![Ipv4Addr::new(100, 64, 1, 2), Ipv4Addr::new(100, 64, 1, 3)],
            "100.64.0.0/16",
        )
    }

    #[test]
    fn addresses_are_distinct() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(cluster_ip(99_999), Ipv4Addr::new(10, 97, 134, 160));
        assert_ne!(filler_endpoint(1, 9), filler_endpoint(2, 9));
    }

    #[test]
    fn iptables_layout_has_every_chain_and_probabilities() {
        let s = set(41);
        let text = iptables_full(&s);
        // One KUBE-SERVICES rule per service port: 41 TCP + the target's UDP.
        let svc_rules = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains("KUBE-SVC-"))
            .count();
        assert_eq!(svc_rules, 42);
        // Two NodePorts: the target and filler 40.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("-A KUBE-NODEPORTS"))
                .count(),
            2
        );
        assert!(text.contains("--probability 0.3333333333"));
        assert!(text.contains("--probability 0.5000000000"));
        assert!(text.contains("--to-destination 100.64.1.3:8053"));
        // Every referenced chain is declared.
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(target) = l.split(" -j ").nth(1) {
                let target = target.split_whitespace().next().expect("target");
                if target.starts_with("KUBE-") {
                    assert!(text.contains(&format!(":{target} ")), "{target}");
                }
            }
        }
    }

    #[test]
    fn nft_layout_has_maps_and_random_vmaps() {
        let s = set(3);
        let text = nft_full(&s, Ipv4Addr::new(198, 18, 0, 1));
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.96.0.1 . udp . 53 : goto service-"
        ));
        assert!(text.contains(
            "add element ip kube-proxy service-nodeports { tcp . 32700 : goto external-"
        ));
        let partial = nft_partial(&s, &s.services[1], filler_endpoint(1, 0));
        assert!(partial.starts_with("flush chain ip kube-proxy service-"));
    }

    #[test]
    fn manifests_chunk() {
        let s = set(250);
        assert_eq!(chunks(&s, 100), 3);
        assert_eq!(chunk_file(199, 100), "services-00001.yaml");
        let text = chunk_text(&s, 2, 100);
        assert_eq!(text.matches("kind: Service\n").count(), 50);
        assert_eq!(text.matches("kind: EndpointSlice\n").count(), 50);
    }
}
