//! The table's Services and EndpointSlices, and its checks.

use std::fmt::Write as _;

use super::{Check, Client, Expect, Proto, Source, Target, World};
use crate::lab::Host;

/// One endpoint of a slice: pod name and conditions (ready, serving, terminating).
type Ep = (&'static str, bool, bool, bool);
const READY: (bool, bool, bool) = (true, true, false);
const TERMINATING: (bool, bool, bool) = (false, true, true);

fn ep(pod: &'static str, (r, s, t): (bool, bool, bool)) -> Ep {
    (pod, r, s, t)
}

/// A Service's YAML: `spec_extra` is indented spec lines; `status` optional YAML.
fn service(
    name: &str,
    ips: &[&str],
    ports: &[(&str, u16, &str, Option<u16>)],
    spec_extra: &str,
    status: &str,
) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: conf}}\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n",
        ips[0],
        ips.join(", ")
    );
    if ips.len() > 1 {
        out.push_str("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n");
    }
    out.push_str("  ports:\n");
    for (pname, port, proto, node_port) in ports {
        let target = if *proto == "UDP" {
            super::UDP_PORT
        } else {
            super::TCP_PORT
        };
        let _ = write!(
            out,
            "  - {{name: {pname}, port: {port}, protocol: {proto}, targetPort: {target}"
        );
        if let Some(np) = node_port {
            let _ = write!(out, ", nodePort: {np}");
        }
        out.push_str("}\n");
    }
    out.push_str(spec_extra);
    out.push_str(status);
    out
}

/// One EndpointSlice per family with the endpoints' pod addresses and both echo ports.
fn slices(world: &World, service: &str, eps: &[Ep], v6: bool) -> String {
    let mut out = String::new();
    let families: &[&str] = if v6 { &["IPv4", "IPv6"] } else { &["IPv4"] };
    for family in families {
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{}\n  namespace: conf\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: [{{name: http, port: {}, protocol: TCP}}, {{name: dns, port: {}, protocol: UDP}}]\nendpoints:{}\n",
            family.to_lowercase(),
            super::TCP_PORT,
            super::UDP_PORT,
            if eps.is_empty() { " []" } else { "" }
        );
        for (pod, ready, serving, terminating) in eps {
            let p = world.pod(pod);
            let ip = if *family == "IPv4" {
                p.ipv4().to_string()
            } else {
                p.ipv6().to_string()
            };
            let _ = write!(
                out,
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n  nodeName: {}\n  zone: zone-{}\n",
                p.node().name(),
                p.node().name()
            );
        }
    }
    out
}

fn node(world: &World, name: &str) -> String {
    let n = world.node(name);
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: zone-{name}}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n  - {{type: InternalIP, address: \"{}\"}}\n",
        n.ipv4(),
        n.ipv6()
    )
}

const HTTP: (&str, u16, &str, Option<u16>) = ("http", 80, "TCP", None);
const DNS: (&str, u16, &str, Option<u16>) = ("dns", 53, "UDP", None);

/// Every Service, slice and Node of the table, as one manifest file.
#[expect(
    clippy::too_many_lines,
    reason = "the table is data: a few lines per Service"
)]
pub fn cases_manifests(w: &World) -> String {
    let np = |port| ("http", 80, "TCP", Some(port));
    let mut out = String::new();
    let mut add = |svc: String, eps: String| {
        out.push_str("---\n");
        out.push_str(&svc);
        out.push_str(&eps);
    };
    let both = [ep("a-ep1", READY), ep("b-ep1", READY)];
    add(
        service(
            "web",
            &["198.51.100.10", "2001:db8:96::10"],
            &[HTTP, DNS],
            "",
            "",
        ),
        slices(w, "web", &both, true),
    );
    add(
        service(
            "empty",
            &["198.51.100.11"],
            &[np(30011), DNS],
            "  type: NodePort\n",
            "",
        ),
        slices(w, "empty", &[], false),
    );
    add(
        service(
            "np",
            &["198.51.100.12"],
            &[np(30080)],
            "  type: NodePort\n",
            "",
        ),
        slices(w, "np", &both, false),
    );
    let local = "  type: NodePort\n  externalTrafficPolicy: Local\n";
    add(
        service("np-local", &["198.51.100.13"], &[np(30081)], local, ""),
        slices(
            w,
            "np-local",
            &[ep("a-ep2", READY), ep("b-ep2", READY)],
            false,
        ),
    );
    add(
        service(
            "np-local-remote",
            &["198.51.100.14"],
            &[np(30082)],
            local,
            "",
        ),
        slices(w, "np-local-remote", &[ep("b-ep1", READY)], false),
    );
    let itp = "  internalTrafficPolicy: Local\n";
    add(
        service("itp", &["198.51.100.15"], &[HTTP], itp, ""),
        slices(w, "itp", &both, false),
    );
    add(
        service("itp-remote", &["198.51.100.16"], &[HTTP], itp, ""),
        slices(w, "itp-remote", &[ep("b-ep2", READY)], false),
    );
    add(
        service("term", &["198.51.100.17"], &[HTTP], "", ""),
        slices(
            w,
            "term",
            &[ep("a-ep1", TERMINATING), ep("b-ep1", TERMINATING)],
            false,
        ),
    );
    add(
        service("term-mixed", &["198.51.100.18"], &[HTTP], "", ""),
        slices(
            w,
            "term-mixed",
            &[ep("a-ep1", READY), ep("b-ep1", TERMINATING)],
            false,
        ),
    );
    add(
        service(
            "lb",
            &["198.51.100.19"],
            &[np(30090)],
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [\" 203.0.113.2/32 \"]\n",
            "status:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.200}]\n",
        ),
        slices(w, "lb", &both, false),
    );
    add(
        service(
            "extip",
            &["198.51.100.20"],
            &[HTTP],
            "  externalIPs: [198.51.100.150]\n",
            "",
        ),
        slices(w, "extip", &[ep("a-ep2", READY), ep("b-ep2", READY)], false),
    );
    let all = [
        ep("a-ep1", READY),
        ep("a-ep2", READY),
        ep("b-ep1", READY),
        ep("b-ep2", READY),
    ];
    add(
        service(
            "sticky",
            &["198.51.100.21"],
            &[HTTP],
            "  sessionAffinity: ClientIP\n",
            "",
        ),
        slices(w, "sticky", &all, false),
    );
    add(
        service("hairpin", &["198.51.100.22"], &[HTTP], "", ""),
        slices(w, "hairpin", &[ep("a-ep1", READY)], false),
    );
    out.push_str(&node(w, "a"));
    out.push_str(&node(w, "b"));
    out
}

const BOTH: &[&str] = &["a-ep1", "b-ep1"];

fn row(name: &'static str, from: Client, to: Target, proto: Proto, expect: Expect) -> Check {
    Check {
        name,
        from,
        to,
        proto,
        expect,
        ebpf: None,
    }
}

/// The checks, with kproxy started with `--cluster-cidr` covering every pod.
#[expect(
    clippy::too_many_lines,
    reason = "the table is data: one row per check"
)]
pub fn checks() -> Vec<Check> {
    use Client::{EndpointA1, NodeA, PodA, PodB, X1, X2};
    use Expect::{Dropped, Endpoints, Refused, Sticky};
    use Proto::{Tcp, Udp};
    use Source::{Any, Masqueraded, Preserved};
    use Target::{Addr, NodePort};
    vec![
        row(
            "ClusterIPGeneral: pod to ClusterIP (TCP)",
            PodA,
            Addr("198.51.100.10", 80),
            Tcp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "ClusterIPGeneral: pod to ClusterIP (UDP)",
            PodA,
            Addr("198.51.100.10", 53),
            Udp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "ClusterIPGeneral: remote node's pod to ClusterIP",
            PodB,
            Addr("198.51.100.10", 80),
            Tcp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "ClusterIPGeneral: node to ClusterIP",
            NodeA,
            Addr("198.51.100.10", 80),
            Tcp,
            Endpoints(BOTH, Any),
        ),
        row(
            "TracePacketV6: pod to IPv6 ClusterIP",
            PodA,
            Addr("2001:db8:96::10", 80),
            Tcp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "NoEndpointsReject: ClusterIP TCP",
            PodA,
            Addr("198.51.100.11", 80),
            Tcp,
            Refused,
        ),
        row(
            "NoEndpointsReject: ClusterIP UDP",
            PodA,
            Addr("198.51.100.11", 53),
            Udp,
            Refused,
        ),
        row(
            "NoEndpointsReject: NodePort from outside",
            X1,
            NodePort("a", 30011),
            Tcp,
            Refused,
        ),
        row(
            "ClusterIPGeneral: ClusterIP on a port the service lacks",
            PodA,
            Addr("198.51.100.10", 81),
            Tcp,
            Refused,
        ),
        row(
            "NodePorts: eTP Cluster from outside via node a",
            X1,
            NodePort("a", 30080),
            Tcp,
            Endpoints(BOTH, Masqueraded),
        ),
        row(
            "NodePorts: eTP Cluster from outside via node b",
            X1,
            NodePort("b", 30080),
            Tcp,
            Endpoints(BOTH, Masqueraded),
        ),
        row(
            "NodePorts: pod to the NodePort service's ClusterIP",
            PodA,
            Addr("198.51.100.12", 80),
            Tcp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "ExternalTrafficPolicyLocal: outside via node a -> local endpoint only",
            X1,
            NodePort("a", 30081),
            Tcp,
            Endpoints(&["a-ep2"], Preserved),
        ),
        row(
            "ExternalTrafficPolicyLocal: outside via node b -> local endpoint only",
            X1,
            NodePort("b", 30081),
            Tcp,
            Endpoints(&["b-ep2"], Preserved),
        ),
        row(
            "ExternalTrafficPolicyLocal: no local endpoint -> DROP",
            X1,
            NodePort("a", 30082),
            Tcp,
            Dropped,
        ),
        row(
            "ExternalTrafficPolicyLocal: pod source short-circuits to cluster endpoints",
            PodA,
            NodePort("a", 30082),
            Tcp,
            Endpoints(&["b-ep1"], Any),
        ),
        row(
            "ExternalTrafficPolicyLocal: node source goes to cluster endpoints",
            NodeA,
            NodePort("a", 30082),
            Tcp,
            Endpoints(&["b-ep1"], Any),
        ),
        row(
            "InternalTrafficPolicy: Local from node a's pod",
            PodA,
            Addr("198.51.100.15", 80),
            Tcp,
            Endpoints(&["a-ep1"], Preserved),
        ),
        row(
            "InternalTrafficPolicy: Local from node b's pod",
            PodB,
            Addr("198.51.100.15", 80),
            Tcp,
            Endpoints(&["b-ep1"], Preserved),
        ),
        row(
            "InternalTrafficPolicy: Local, no local endpoint -> DROP",
            PodA,
            Addr("198.51.100.16", 80),
            Tcp,
            Dropped,
        ),
        row(
            "TerminatingEndpoints: all terminating -> serving terminating ones",
            PodA,
            Addr("198.51.100.17", 80),
            Tcp,
            Endpoints(BOTH, Preserved),
        ),
        row(
            "TerminatingEndpoints: ready ones win over terminating",
            PodA,
            Addr("198.51.100.18", 80),
            Tcp,
            Endpoints(&["a-ep1"], Preserved),
        ),
        row(
            "LoadBalancer: allowed source range",
            X2,
            Addr("198.51.100.200", 80),
            Tcp,
            Endpoints(BOTH, Masqueraded),
        ),
        row(
            "LoadBalancer: source outside loadBalancerSourceRanges -> DROP",
            X1,
            Addr("198.51.100.200", 80),
            Tcp,
            Dropped,
        ),
        row(
            "externalIPs: from outside",
            X1,
            Addr("198.51.100.150", 80),
            Tcp,
            Endpoints(&["a-ep2", "b-ep2"], Masqueraded),
        ),
        row(
            "SessionAffinity ClientIP: one endpoint per client",
            PodA,
            Addr("198.51.100.21", 80),
            Tcp,
            Sticky(&["a-ep1", "a-ep2", "b-ep1", "b-ep2"]),
        ),
        Check {
            name: "Hairpin: endpoint to its own service is masqueraded (eBPF: socket LB needs no masquerade, the endpoint sees its own address)",
            from: EndpointA1,
            to: Addr("198.51.100.22", 80),
            proto: Tcp,
            expect: Endpoints(&["a-ep1"], Masqueraded),
            ebpf: Some(Endpoints(&["a-ep1"], Preserved)),
        },
    ]
}
