//! Socket load balancing against the real kernel: a lab node with the dataplane attached
//! to its cgroup, echo pods as endpoints, and clients that are processes on the node or
//! in a pod.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    ECHO_PORT, EchoLab, HeldConnection, REQUEST, assert_root, cluster_ip, endpoint, model, names,
    start_pong_server, view_from, with_node_port_local,
};
use kproxy_bpf::{BpfConfig, BpfDataplane};
use kproxy_common::counter;
use kproxy_model::{EndpointSet, Protocol, Verdict};
use kproxy_tests::lab::{
    Host, Node,
    client::{ClientError, tcp_request, udp_request},
};

const TRIES: usize = 40;

fn config(node: &Node) -> BpfConfig {
    BpfConfig {
        cgroup_path: node.cgroup_path().to_owned(),
        bpffs: node.bpffs_path().to_owned(),
    }
}

/// The dataplane, created on a thread inside the node's namespace (its netns cookie
/// tells node sockets from pod sockets).
fn dataplane(node: &Node) -> BpfDataplane {
    let cfg = config(node);
    node.run(move || BpfDataplane::new(&cfg))
        .expect("thread in the node's namespace")
        .unwrap_or_else(|e| panic!("creating the dataplane: {e:#?}"))
}

fn vip(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn cluster_ip_reaches_every_endpoint_and_shows_the_vip() {
    assert_root();
    let lab = EchoLab::new("bpf-clusterip");
    let mut dp = dataplane(&lab.a);
    let tcp = cluster_ip("web", Protocol::Tcp, vip(10), 80, lab.endpoints());
    let udp = cluster_ip("web", Protocol::Udp, vip(10), 53, lab.endpoints());
    let stats = dp.sync_full(&model([tcp, udp])).expect("sync");
    assert_eq!(stats.frontends, 2);

    let expected: std::collections::BTreeSet<String> =
        ["a1", "a2", "b1"].iter().map(ToString::to_string).collect();
    let to_tcp = SocketAddr::new(vip(10), 80);
    let to_udp = SocketAddr::new(vip(10), 53);
    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let tcp: Vec<_> = (0..TRIES).map(|_| host.tcp(to_tcp)).collect();
        assert!(tcp.iter().all(Result::is_ok), "TCP from the {who}: {tcp:?}");
        assert_eq!(
            names(&tcp),
            expected,
            "TCP from the {who} reaches every endpoint"
        );
        let udp: Vec<_> = (0..TRIES).map(|_| host.udp(to_udp)).collect();
        assert!(udp.iter().all(Result::is_ok), "UDP from the {who}: {udp:?}");
        assert_eq!(
            names(&udp),
            expected,
            "UDP from the {who} reaches every endpoint"
        );
    }

    for view in [view_from(&lab.a, to_udp), view_from(&lab.client, to_udp)] {
        let (name, from) = view.udp_from.expect("unconnected UDP gets a reply");
        assert!(expected.contains(&name), "{name}");
        assert_eq!(
            from, to_udp,
            "recvfrom shows the service address, not the backend's"
        );
        assert_eq!(
            view.udp_peer.expect("connected UDP"),
            to_udp,
            "getpeername on UDP"
        );
    }
    let view = view_from(&lab.client, to_tcp);
    let (name, peer) = view.tcp.expect("TCP");
    assert!(expected.contains(&name), "{name}");
    assert_eq!(peer, to_tcp, "getpeername on TCP shows the service address");

    let counters = dp.counters().expect("counters");
    assert!(
        counters[counter::TRANSLATED as usize] >= (4 * TRIES) as u64,
        "{counters:?}"
    );
    assert!(counters[counter::REVERSED as usize] > 0, "{counters:?}");
    assert_eq!(counters[counter::LOOKUP_MISS as usize], 0, "{counters:?}");
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

/// Requests from a node or a pod, through the lab's echo client.
trait HostRef {
    fn tcp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError>;
    fn udp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError>;
}

impl<H: Host> HostRef for H {
    fn tcp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError> {
        tcp_request(self, to, REQUEST)
    }
    fn udp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError> {
        udp_request(self, to, REQUEST)
    }
}
