//! The lab's own suite: it builds real namespaces and sends real packets, so it needs
//! root. Every test ends by closing its lab and asserting nothing with its id is left,
//! so the suite also checks cleanup under parallel tests.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    panic,
    sync::Mutex,
    thread,
    time::Duration,
};

use kproxy_tests::lab::{
    self, External, Host, Lab, LabError, Node, Pod,
    client::{self, ClientError, EchoReply},
};

const TCP: u16 = 8080;
const UDP: u16 = 5353;
/// Bound for requests expected to succeed; never an assertion on timing.
const PATIENCE: Duration = Duration::from_secs(5);
/// Bound for requests expected to fail (most fail at once; this caps the rest).
const SHORT: Duration = Duration::from_secs(1);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab suite needs root: run it through `cargo xtask test`"
    );
}

/// Closes `lab`, surfacing teardown errors, and checks nothing with its id is left.
fn finish(lab: Lab) {
    let id = lab.id().to_owned();
    lab.close().expect("lab teardown");
    lab::assert_clean(&id);
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn expect_reply(
    result: Result<EchoReply, ClientError>,
    from: &impl Host,
    server: &impl Host,
    source: IpAddr,
) {
    let reply = result.unwrap_or_else(|e| {
        panic!(
            "{} -> {}: no reply: {e} ({e:?})",
            from.name(),
            server.name()
        )
    });
    assert_eq!(reply.name, server.name(), "the wrong server answered");
    assert_eq!(
        reply.seen_source.ip(),
        source,
        "the server saw another source"
    );
}

/// TCP and UDP, IPv4 and IPv6 from `from` to `server`'s echo, expecting the server
/// to see `from`'s own address.
fn assert_both_protocols(from: &impl Host, server: &impl Host, families: &[IpAddr]) {
    for &family in families {
        let to = server.ip_like(family);
        let source = from.ip_like(family);
        expect_reply(
            client::tcp_request(from, addr(to, TCP), PATIENCE),
            from,
            server,
            source,
        );
        expect_reply(
            client::udp_request(from, addr(to, UDP), PATIENCE),
            from,
            server,
            source,
        );
    }
}

const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

struct TwoNodes {
    lab: Lab,
    a: Node,
    b: Node,
    a1: Pod,
    a2: Pod,
    b1: Pod,
    x: External,
}

fn two_nodes(hint: &str) -> TwoNodes {
    require_root();
    let lab = Lab::new(hint).expect("lab");
    let a = lab.add_node("a").expect("node a");
    let b = lab.add_node("b").expect("node b");
    let a1 = a.add_pod("a1").expect("pod a1");
    let a2 = a.add_pod("a2").expect("pod a2");
    let b1 = b.add_pod("b1").expect("pod b1");
    let x = lab.add_external("x").expect("external x");
    TwoNodes {
        lab,
        a,
        b,
        a1,
        a2,
        b1,
        x,
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn pod_to_pod_on_one_node() {
    let t = two_nodes("pod_to_pod_on_one_node");
    let _echo = t.a2.start_echo(&[TCP], &[UDP]).expect("echo");
    assert_both_protocols(&t.a1, &t.a2, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn pod_to_pod_across_nodes() {
    let t = two_nodes("pod_to_pod_across_nodes");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    let _a1 = t.a1.start_echo(&[TCP], &[UDP]).expect("echo a1");
    assert_both_protocols(&t.a1, &t.b1, &[V4]);
    assert_both_protocols(&t.b1, &t.a1, &[V4]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_pod_to_pod_across_nodes() {
    let t = two_nodes("ipv6_pod_to_pod_across_nodes");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    assert_both_protocols(&t.a2, &t.b1, &[V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_to_remote_pod_uses_the_node_address() {
    let t = two_nodes("node_to_remote_pod");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    assert_both_protocols(&t.a, &t.b1, &[V4, V6]);
    // The node also reaches its own pods, from its LAN address.
    let _a1 = t.a1.start_echo(&[TCP], &[UDP]).expect("echo a1");
    assert_both_protocols(&t.a, &t.a1, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn external_reaches_a_node_address() {
    let t = two_nodes("external_to_node");
    let _echo = t.b.start_echo(&[TCP], &[UDP]).expect("echo on node b");
    assert_both_protocols(&t.x, &t.b, &[V4, V6]);
    // And the other way: nodes reach externals directly.
    let _x = t.x.start_echo(&[TCP], &[UDP]).expect("echo on x");
    assert_both_protocols(&t.a, &t.x, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn external_has_no_route_to_pods() {
    let t = two_nodes("external_to_pod");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    // The pod is up and reachable from the cluster...
    assert_both_protocols(&t.a, &t.b1, &[V4, V6]);
    // ...but not from outside it.
    for ip in [IpAddr::from(t.b1.ipv4()), t.b1.ipv6().into()] {
        let tcp = client::tcp_request(&t.x, addr(ip, TCP), SHORT);
        assert!(
            matches!(tcp, Err(ClientError::Unreachable)),
            "tcp to {ip}: {tcp:?}"
        );
        let udp = client::udp_request(&t.x, addr(ip, UDP), SHORT);
        assert!(
            matches!(udp, Err(ClientError::Unreachable)),
            "udp to {ip}: {udp:?}"
        );
    }
    // Routing alone was the obstacle: with a route via the pod's node (as a routed
    // pod network would announce) the same requests get through.
    t.x.route_via(t.b.pod_cidr_v4().into(), &t.b)
        .expect("v4 route");
    t.x.route_via(t.b.pod_cidr_v6().into(), &t.b)
        .expect("v6 route");
    assert_both_protocols(&t.x, &t.b1, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn closed_ports_are_refused() {
    let t = two_nodes("closed_ports");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    for ip in [IpAddr::from(t.b1.ipv4()), t.b1.ipv6().into()] {
        let tcp = client::tcp_request(&t.a1, addr(ip, TCP + 1), PATIENCE);
        assert!(
            matches!(tcp, Err(ClientError::Refused)),
            "tcp to {ip}: {tcp:?}"
        );
        let udp = client::udp_request(&t.a1, addr(ip, UDP + 1), PATIENCE);
        assert!(
            matches!(udp, Err(ClientError::Refused)),
            "udp to {ip}: {udp:?}"
        );
    }
    // Routing alone was the obstacle: with a route via the pod's node (as a routed
    // pod network would announce) the same requests get through.
    t.x.route_via(t.b.pod_cidr_v4().into(), &t.b)
        .expect("v4 route");
    t.x.route_via(t.b.pod_cidr_v6().into(), &t.b)
        .expect("v6 route");
    assert_both_protocols(&t.x, &t.b1, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn in_process_clients_run_in_the_namespace() {
    let t = two_nodes("in_process_clients");
    let _b1 = t.b1.start_echo(&[TCP], &[UDP]).expect("echo b1");
    let to = addr(t.b1.ipv4(), TCP);
    let reply =
        t.a1.run(|| client::tcp_request_here(to, PATIENCE))
            .expect("thread in a1")
            .expect("reply");
    assert_eq!(reply.name, "b1");
    assert_eq!(reply.seen_source.ip(), IpAddr::from(t.a1.ipv4()));
    let to = addr(t.b1.ipv6(), UDP);
    let reply =
        t.x.run(|| client::udp_request_here(to, SHORT))
            .expect("thread in x");
    assert!(matches!(reply, Err(ClientError::Unreachable)), "{reply:?}");
    // The test's own thread stayed in the root namespace: it has no route there.
    let own_ns = fs::read_link("/proc/thread-self/ns/net").expect("own netns");
    let pod_ns =
        t.a1.run(|| fs::read_link("/proc/thread-self/ns/net"))
            .expect("thread in a1")
            .expect("a1 netns");
    assert_ne!(own_ns, pod_ns);
    finish(t.lab);
}

/// The `0::` line of `/proc/<pid>/cgroup`: the process's cgroup2 path.
fn cgroup_of(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line")
        .to_owned()
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn processes_join_their_hosts_cgroup() {
    let t = two_nodes("cgroups");
    let id = t.lab.id().to_owned();
    let on_node = t.a.spawn("sleep", ["600"]).expect("sleep on a");
    assert_eq!(cgroup_of(on_node.pid()), format!("/{id}/node-a"));
    let procs = fs::read_to_string(t.a.cgroup_path().join("cgroup.procs")).expect("procs");
    assert!(
        procs.lines().any(|l| l == on_node.pid().to_string()),
        "{procs}"
    );
    let in_pod = t.a1.spawn("sleep", ["600"]).expect("sleep in a1");
    assert_eq!(cgroup_of(in_pod.pid()), format!("/{id}/node-a/pod-a1"));
    assert!(t.a1.cgroup_path().starts_with(t.a.cgroup_path()));
    let outside = t.x.spawn("sleep", ["600"]).expect("sleep on x");
    assert_eq!(cgroup_of(outside.pid()), format!("/{id}/ext-x"));
    // exec runs in the namespace too: the node sees its own LAN address.
    let addrs =
        t.a.exec("ip", ["-o", "addr", "show", "dev", "eth0"])
            .expect("ip");
    assert!(addrs.contains(&format!("{}/24", t.a.ipv4())), "{addrs}");
    // The node's bpffs is a real, private bpffs.
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let bpffs = t.a.bpffs_path().display().to_string();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {bpffs} ")) && l.contains(" - bpf ")),
        "{bpffs} is not a bpffs"
    );
    drop((on_node, in_pod, outside));
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn removed_pods_are_gone_and_names_reusable() {
    let t = two_nodes("pod_removal");
    let old_ip = t.a2.ipv4();
    let netns = t.a2.netns().to_owned();
    let _echo = t.a2.start_echo(&[TCP], &[]).expect("echo a2");
    t.a2.clone().remove().expect("remove a2");
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    let veths = t.a.exec("ip", ["-o", "link", "show"]).expect("links");
    assert!(!veths.contains("veth2@"), "host veth left: {veths}");
    let gone = client::tcp_request(&t.a1, addr(old_ip, TCP), SHORT);
    assert!(gone.is_err(), "removed pod answered: {gone:?}");

    let again = t.a.add_pod("a2").expect("re-add a2");
    assert_ne!(again.ipv4(), old_ip, "pod IPs are not reused");
    let _echo = again.start_echo(&[TCP], &[UDP]).expect("echo new a2");
    assert_both_protocols(&t.a1, &again, &[V4, V6]);
    finish(t.lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn bad_names_and_duplicates_are_rejected() {
    require_root();
    let lab = Lab::new("names").expect("lab");
    let node = lab.add_node("a").expect("node");
    assert!(matches!(
        lab.add_node("a"),
        Err(LabError::DuplicateName { .. })
    ));
    assert!(matches!(
        node.add_pod("a"),
        Err(LabError::DuplicateName { .. })
    ));
    assert!(matches!(
        lab.add_external("Bad Name"),
        Err(LabError::InvalidName { .. })
    ));
    finish(lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn close_kills_everything_and_handles_fail_afterwards() {
    let t = two_nodes("close");
    let id = t.lab.id().to_owned();
    // A process whose guard is forgotten: only the lab's cgroup.kill can end it.
    let orphan = t.a1.spawn("sleep", ["600"]).expect("sleep");
    let pid = orphan.pid();
    std::mem::forget(orphan);
    let _echo = t.b.start_echo(&[TCP], &[UDP]).expect("echo");
    let node = t.a.clone();
    finish(t.lab);
    let state = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()));
    // Never reaped by us, so a zombie ('Z') or already gone.
    assert!(
        matches!(state, None | Some('Z')),
        "pid {pid} state {state:?}"
    );
    assert!(matches!(
        node.add_pod("late"),
        Err(LabError::TornDown { .. })
    ));
    lab::assert_clean(&id);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_panic_inside_a_lab_still_cleans_up() {
    require_root();
    let id = Mutex::new(String::new());
    let outcome = panic::catch_unwind(|| {
        let t = two_nodes("panic");
        *id.lock().unwrap() = t.lab.id().to_owned();
        let _echo = t.b1.start_echo(&[TCP], &[UDP]).expect("echo");
        let _sleeper = t.a.spawn("sleep", ["600"]).expect("sleep");
        panic!("deliberate panic with a live lab");
    });
    assert!(outcome.is_err());
    let id = id.into_inner().unwrap();
    assert!(id.starts_with(lab::ID_PREFIX), "the lab was never built");
    lab::assert_clean(&id);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn labs_in_parallel_threads_are_isolated() {
    require_root();
    let ids: Vec<String> = thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|i| {
                scope.spawn(move || {
                    let lab = Lab::new(&format!("parallel-{i}")).expect("lab");
                    let a = lab.add_node("a").expect("node a");
                    let b = lab.add_node("b").expect("node b");
                    let p = a.add_pod("p").expect("pod p");
                    let q = b.add_pod("q").expect("pod q");
                    let _echo = q.start_echo(&[TCP], &[UDP]).expect("echo");
                    // Same addresses in every lab; each reply comes from this lab's q.
                    assert_both_protocols(&p, &q, &[V4, V6]);
                    let id = lab.id().to_owned();
                    drop(lab);
                    id
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "lab ids collided: {ids:?}");
    for id in &ids {
        lab::assert_clean(id);
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn leak_checks_see_a_live_lab() {
    // The cleanup assertions above are only worth something if the check can fail.
    require_root();
    let lab = Lab::new("leaks").expect("lab");
    let node = lab.add_node("a").expect("node");
    let _pod = node.add_pod("p").expect("pod");
    let found = lab::leaks(lab.id()).expect("leak check");
    assert_eq!(found.netns.len(), 3, "{found}");
    assert_eq!(found.cgroups, vec![lab.id().to_owned()], "{found}");
    assert_eq!(found.mounts.len(), 2, "cgroup2 and one bpffs: {found}");
    assert_eq!(found.dirs.len(), 1, "{found}");
    assert!(
        found.links.is_empty(),
        "links in the root namespace: {found}"
    );
    finish(lab);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn purge_stale_removes_only_labs_of_dead_owners() {
    require_root();
    let live = Lab::new("purge-live").expect("live lab");
    let stale = Lab::new("purge-stale").expect("stale lab");
    let node = stale.add_node("a").expect("node");
    let _pod = node.add_pod("p").expect("pod");
    let _echo = node.start_echo(&[TCP], &[]).expect("echo");
    // Pretend the stale lab's owner died: no process has pid 0.
    let owner = std::path::Path::new("/run/kproxy-lab")
        .join(stale.id())
        .join("owner");
    fs::write(&owner, "0 0 gone\n").expect("rewrite owner");
    let purged = lab::purge_stale().expect("purge");
    assert!(purged.contains(&stale.id().to_owned()), "{purged:?}");
    assert!(!purged.contains(&live.id().to_owned()), "{purged:?}");
    lab::assert_clean(stale.id());
    assert!(!lab::leaks(live.id()).expect("leaks").is_empty());
    // Closing a purged lab finds nothing left to do.
    finish(stale);
    finish(live);
}
