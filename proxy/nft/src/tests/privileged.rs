//! Privileged tests: the real kernel, each test in network namespaces of its own.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::Arc,
    time::Duration,
};

use kproxy_model::{FrontendKind, InternalMasquerade, Protocol, ProxyModel, Verdict};

use super::{NetNs, PortBuilder, diff, enter, ep, fwd, local, many, model, net};
use crate::{
    Backend, NftConfig, NftDataplane, StaleFlow, TableDump, delete_udp_conntrack,
    error::Error,
    fake::FakeBackend,
    ir::{Element, Family, Op, Transaction, Value},
    netlink::NetlinkBackend,
};

/// What a fresh full sync of `m` should leave in the kernel, per the fake.
fn expected(m: &ProxyModel) -> Vec<(&'static str, Option<TableDump>)> {
    let mut dp = NftDataplane::with_backend(NftConfig::default(), Box::new(FakeBackend::default()));
    dp.sync_full(m).unwrap();
    dp.dump().unwrap()
}

/// A model using every feature.
fn mixed() -> ProxyModel {
    model([
        PortBuilder::tcp("web", "10.96.0.10", 80)
            .endpoints(vec![ep("10.1.0.1", 8080), local(ep("10.1.0.2", 8080))])
            .build(),
        PortBuilder::tcp("gone", "10.96.0.11", 80).build(),
        PortBuilder::tcp("lb", "10.96.0.12", 443)
            .endpoints(vec![local(ep("10.1.0.3", 8443)), ep("10.2.0.3", 8443)])
            .frontend(FrontendKind::LoadBalancer, "203.0.113.1", 443)
            .frontend(FrontendKind::NodePort, "192.0.2.1", 30443)
            .external_local(fwd(&[0]), &["10.0.0.0/8"])
            .source_ranges(&["198.51.100.0/24", "192.0.2.0/25"])
            .build(),
        PortBuilder::tcp("sticky", "10.96.0.13", 80)
            .endpoints(vec![ep("10.1.0.4", 80), ep("10.1.0.5", 80)])
            .frontend(FrontendKind::ExternalIp, "198.51.100.7", 80)
            .external_cluster()
            .affinity(10800)
            .build(),
        PortBuilder::tcp("local-only", "10.96.0.14", 80)
            .endpoints(vec![ep("10.2.0.9", 80)])
            .internal(Verdict::Drop)
            .build(),
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53)
            .endpoints(vec![ep("10.1.0.53", 53)])
            .build(),
        PortBuilder::new("telco", "sig", "sctp", Protocol::Sctp, "10.96.0.60", 3868)
            .endpoints(vec![ep("10.1.0.60", 3868)])
            .build(),
        PortBuilder::tcp("v6", "fd00:96::10", 80)
            .endpoints(vec![ep("fd00:1::1", 8080), ep("fd00:1::2", 8080)])
            .build(),
        PortBuilder::tcp("v6-sticky", "fd00:96::11", 80)
            .endpoints(vec![ep("fd00:1::3", 80)])
            .affinity(60)
            .build(),
    ])
}

fn find_set<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| {
            o.get("set")
                .or_else(|| o.get("map"))
                .filter(|s| s["name"] == name)
        })
        .unwrap_or_else(|| panic!("no set {name}"))
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn full_and_partial_syncs_program_what_the_ir_says_and_nft_can_read_it() {
    let ns = NetNs::new("sync");
    let m1 = mixed();
    let (m1c, want1) = (m1.clone(), expected(&m1));
    let mut m2 = m1.clone();
    let web = m2
        .ports
        .keys()
        .find(|k| k.name.name == "web")
        .unwrap()
        .clone();
    m2.ports.get_mut(&web).unwrap().endpoints[0] = ep("10.1.0.99", 8080);
    let gone = m2
        .ports
        .keys()
        .find(|k| k.name.name == "gone")
        .unwrap()
        .clone();
    m2.ports.remove(&gone);
    let sticky = m2
        .ports
        .keys()
        .find(|k| k.name.name == "sticky")
        .unwrap()
        .clone();
    m2.ports.get_mut(&sticky).unwrap().endpoints[1] = ep("10.1.0.6", 80);
    let extra = PortBuilder::tcp("extra", "10.96.0.15", 80)
        .endpoints(vec![ep("10.1.0.7", 80); 1])
        .build();
    m2.ports.insert(extra.key.clone(), extra);
    let (d, want2) = (diff(&m1, &m2), expected(&m2));
    let m2c = m2.clone();
    let mut dp = ns.run(|| NftDataplane::new(NftConfig::default()).unwrap());
    dp.sync_full(&m1c).unwrap();
    assert_eq!(
        dp.dump().unwrap(),
        want1,
        "kernel content after the full sync"
    );
    let json = ns.nft_json("ip");
    let eps = find_set(&json, "endpoints");
    assert_eq!(
        eps["type"],
        serde_json::json!(["ipv4_addr", "inet_proto", "inet_service", "mark"])
    );
    // web 2, lb ClusterIP 2 + (1 local + 2 cluster) × 2 external frontends, dns 1, sctp 1.
    assert_eq!(eps["elem"].as_array().unwrap().len(), 2 + 2 + 3 * 2 + 1 + 1);
    let text = ns.exec(&["nft", "list", "table", "ip", "kproxy"]);
    assert!(
        text.contains(
            "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints"
        ),
        "{text}"
    );
    assert!(text.contains("comment \"default/web:http/tcp\""), "{text}");
    // nft prints the family's default (port unreachable) as a bare `reject`.
    assert!(
        text.contains("\t\treject with tcp reset\n\t\treject\n"),
        "{text}"
    );
    assert!(text.contains("masquerade fully-random"), "{text}");
    let text6 = ns.exec(&["nft", "list", "table", "ip6", "kproxy"]);
    assert!(
        text6.contains("\t\treject with tcp reset\n\t\treject\n"),
        "{text6}"
    );
    assert!(
        text6.contains("update @ep-default/v6-sticky/tcp/http__fd00.1..3/80"),
        "{text6}"
    );
    let stats = dp.sync_partial(&m2c, &d).unwrap();
    assert!(!stats.full);
    assert_eq!(
        dp.dump().unwrap(),
        want2,
        "kernel content after the partial sync"
    );
    ns.nft_json("ip");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_failing_transaction_leaves_the_previous_state_in_place() {
    let ns = NetNs::new("atomic");
    let m = many(100, 3);
    let mut dp = ns.run(|| NftDataplane::new(NftConfig::default()).unwrap());
    dp.sync_full(&m).unwrap();
    let before = dp.dump().unwrap();
    let result = ns.run(|| {
        let mut b = NetlinkBackend::open().unwrap();
        let mut tx = Transaction::default();
        let el = |i: u8| Element::key(Value::Addr(std::net::IpAddr::from([10, 99, 0, i])));
        tx.push(Op::AddElements(
            Family::Ip,
            "cluster-ips".into(),
            (1..=200).map(el).collect(),
        ));
        tx.push(Op::DeleteChain(Family::Ip, "services".into())); // referenced: EBUSY
        b.apply(&tx)
    });
    match result {
        Err(Error::Rejected { op, source, .. }) => {
            assert_eq!(op, "delete chain ip services");
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        dp.dump().unwrap(),
        before,
        "nothing of the failed transaction was applied"
    );
    // The dataplane itself still works afterwards.
    let m2 = many(101, 3);
    dp.sync_partial(&m2, &diff(&m, &m2)).unwrap();
    assert_eq!(dp.dump().unwrap(), expected(&m2));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn twenty_thousand_services_in_one_transaction() {
    let ns = NetNs::new("big");
    let m = many(20_000, 10);
    let mut dp = ns.run(|| NftDataplane::new(NftConfig::default()).unwrap());
    let stats = dp.sync_full(&m).unwrap();
    assert!(stats.elements >= 20_000 * 12);
    let dump = dp.dump().unwrap();
    let v4 = dump[0].1.as_ref().unwrap();
    assert_eq!(v4.sets["endpoints"], 200_000);
    assert_eq!(v4.sets["cluster-ips"], 20_000);
    assert_eq!(v4.sets["lb-n10-masq-out-10.0.0.0/8"], 20_000);
    // Replacing it (as a restart would) works too.
    dp.sync_full(&m).unwrap();
    let mut m2 = m.clone();
    let key = m2.ports.keys().nth(12_345).unwrap().clone();
    m2.ports.get_mut(&key).unwrap().endpoints[0] = ep("10.250.0.1", 8080);
    let stats = dp.sync_partial(&m2, &diff(&m, &m2)).unwrap();
    assert_eq!((stats.ops, stats.elements), (2, 2));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_new_process_adopts_the_tables_and_cleanup_removes_only_them() {
    let ns = NetNs::new("adopt");
    ns.exec(&["nft", "add", "table", "inet", "someone-else"]);
    let (a, b) = (many(30, 2), many(7, 1));
    let want = expected(&b);
    let dump = ns.run(move || {
        NftDataplane::new(NftConfig::default())
            .unwrap()
            .sync_full(&a)
            .unwrap();
        // "Restart": a new dataplane with no memory of the old one.
        let mut dp = NftDataplane::new(NftConfig::default()).unwrap();
        dp.sync_full(&b).unwrap();
        dp.dump().unwrap()
    });
    assert_eq!(dump, want);
    ns.run(|| NftDataplane::cleanup().unwrap());
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet someone-else");
    ns.run(|| NftDataplane::cleanup().unwrap()); // idempotent
}

/// Two namespaces joined by a veth: "node" (10.0.0.1, runs kproxy and the endpoints)
/// and "client" (10.0.0.2, routes TEST-NET service addresses through the node).
struct Lab {
    node: NetNs,
    client: NetNs,
}

impl Lab {
    fn new() -> Self {
        let node = NetNs::new("node");
        let client = NetNs::new("client");
        node.exec(&[
            "ip",
            "link",
            "add",
            "vn",
            "type",
            "veth",
            "peer",
            "name",
            "vc",
            "netns",
            &client.name,
        ]);
        node.exec(&["ip", "addr", "add", "10.0.0.1/24", "dev", "vn"]);
        node.exec(&["ip", "link", "set", "vn", "up"]);
        node.exec(&["ip", "route", "add", "default", "via", "10.0.0.2"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        client.exec(&["ip", "addr", "add", "10.0.0.2/24", "dev", "vc"]);
        client.exec(&["ip", "link", "set", "vc", "up"]);
        for net in ["192.0.2.0/24", "203.0.113.0/24"] {
            client.exec(&["ip", "route", "add", net, "via", "10.0.0.1"]);
        }
        Self { node, client }
    }

    /// A TCP server in the node namespace answering every connection with `reply`.
    fn serve(&self, addr: &str, reply: &'static str) {
        let path = format!("/run/netns/{}", self.node.name);
        let addr: SocketAddr = addr.parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let listener = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        rx.recv().unwrap();
    }
}

/// Connects from inside `ns` and returns what the server said, or the error kind.
fn fetch(ns: &NetNs, to: &str) -> Result<String, ErrorKind> {
    let to: SocketAddr = to.parse().unwrap();
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_millis(500)).map_err(|e| e.kind())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.kind())?;
        Ok(out)
    })
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn packets_follow_the_programmed_services() {
    let lab = Lab::new();
    lab.serve("10.0.0.1:8080", "ep1");
    lab.serve("10.0.0.1:8081", "ep2");
    let outside = InternalMasquerade::SourceNotIn(vec![net("10.244.0.0/16")]);
    let two = vec![ep("10.0.0.1", 8080), ep("10.0.0.1", 8081)];
    let m = model([
        PortBuilder::tcp("one", "192.0.2.10", 80)
            .endpoints(vec![ep("10.0.0.1", 8080)])
            .masquerade(outside.clone())
            .build(),
        PortBuilder::tcp("refused", "192.0.2.11", 80).build(),
        PortBuilder::tcp("two", "192.0.2.12", 80)
            .endpoints(two.clone())
            .build(),
        PortBuilder::tcp("sticky", "192.0.2.13", 80)
            .endpoints(two.clone())
            .affinity(600)
            .build(),
        PortBuilder::tcp("dropped", "192.0.2.14", 80)
            .endpoints(two)
            .internal(Verdict::Drop)
            .build(),
        PortBuilder::tcp("fw-closed", "192.0.2.15", 80)
            .endpoints(vec![ep("10.0.0.1", 8080)])
            .frontend(FrontendKind::LoadBalancer, "203.0.113.5", 80)
            .external_cluster()
            .source_ranges(&["198.51.100.0/24"])
            .build(),
        PortBuilder::tcp("fw-open", "192.0.2.16", 80)
            .endpoints(vec![ep("10.0.0.1", 8081)])
            .frontend(FrontendKind::LoadBalancer, "203.0.113.6", 80)
            .external_cluster()
            .source_ranges(&["10.0.0.0/24"])
            .build(),
    ]);
    let mut dp = lab.node.run(|| {
        NftDataplane::new(NftConfig {
            ipv6: false,
            ..NftConfig::default()
        })
        .unwrap()
    });
    dp.sync_full(&m).unwrap();
    // OUTPUT hook (from the node itself) and PREROUTING (from the client).
    assert_eq!(fetch(&lab.node, "192.0.2.10:80"), Ok("ep1".into()));
    assert_eq!(fetch(&lab.client, "192.0.2.10:80"), Ok("ep1".into()));
    // No endpoints: refused, from the node (output) and through it (forward).
    assert_eq!(
        fetch(&lab.node, "192.0.2.11:80"),
        Err(ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        fetch(&lab.client, "192.0.2.11:80"),
        Err(ErrorKind::ConnectionRefused)
    );
    // A ClusterIP on a port no service has: refused.
    assert_eq!(
        fetch(&lab.node, "192.0.2.10:81"),
        Err(ErrorKind::ConnectionRefused)
    );
    // Drop: nothing answers.
    assert_eq!(
        fetch(&lab.client, "192.0.2.14:80"),
        Err(ErrorKind::TimedOut)
    );
    // Load balancing reaches both endpoints (a miss has probability 2^-39).
    let seen: std::collections::BTreeSet<String> = (0..40)
        .map(|_| fetch(&lab.client, "192.0.2.12:80").unwrap())
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["ep1", "ep2"]);
    // Affinity: the same client always reaches the same endpoint.
    let first = fetch(&lab.client, "192.0.2.13:80").unwrap();
    for _ in 0..15 {
        assert_eq!(fetch(&lab.client, "192.0.2.13:80").unwrap(), first);
    }
    // Source ranges: 10.0.0.2 is outside 198.51.100.0/24 but inside 10.0.0.0/24.
    assert_eq!(
        fetch(&lab.client, "203.0.113.5:80"),
        Err(ErrorKind::TimedOut)
    );
    assert_eq!(fetch(&lab.client, "203.0.113.6:80"), Ok("ep2".into()));
    // A partial sync moving "one" to the other endpoint takes effect.
    let mut m2 = m.clone();
    let one = m2
        .ports
        .keys()
        .find(|k| k.name.name == "one")
        .unwrap()
        .clone();
    m2.ports.get_mut(&one).unwrap().endpoints[0].port = 8081;
    dp.sync_partial(&m2, &diff(&m, &m2)).unwrap();
    assert_eq!(fetch(&lab.client, "192.0.2.10:80"), Ok("ep2".into()));
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn stale_udp_flows_to_a_removed_endpoint_are_deleted() {
    let lab = Lab::new();
    let m = model([
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "192.0.2.53", 53)
            .endpoints(vec![ep("10.0.0.1", 5353)])
            .build(),
    ]);
    let mut dp = lab.node.run(|| {
        NftDataplane::new(NftConfig {
            ipv6: false,
            ..NftConfig::default()
        })
        .unwrap()
    });
    dp.sync_full(&m).unwrap();
    let server = Arc::new(lab.node.run(|| UdpSocket::bind("10.0.0.1:5353").unwrap()));
    let client = lab
        .client
        .run(|| UdpSocket::bind("10.0.0.2:40000").unwrap());
    client.send_to(b"q", "192.0.2.53:53").unwrap();
    let mut buf = [0; 8];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (_, from) = server
        .recv_from(&mut buf)
        .expect("the DNAT'ed datagram arrives");
    assert_eq!(from, "10.0.0.2:40000".parse().unwrap());
    let flows = |ns: &NetNs| ns.exec(&["conntrack", "-L", "-p", "udp"]).lines().count();
    assert_eq!(flows(&lab.node), 1);
    let other = StaleFlow {
        protocol: Protocol::Udp,
        endpoint: "10.0.0.1:5354".parse().unwrap(),
    };
    assert_eq!(
        lab.node
            .run(move || delete_udp_conntrack(&[other]).unwrap()),
        0
    );
    assert_eq!(flows(&lab.node), 1, "a flow to another endpoint is kept");
    let stale = StaleFlow {
        protocol: Protocol::Udp,
        endpoint: "10.0.0.1:5353".parse().unwrap(),
    };
    assert_eq!(
        lab.node
            .run(move || delete_udp_conntrack(&[stale]).unwrap()),
        1
    );
    assert_eq!(flows(&lab.node), 0);
}
