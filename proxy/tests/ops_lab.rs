//! kproxy's operational surface with the real binary on lab nodes: health and
//! healthCheckNodePort answers, metrics after syncs, SIGTERM, `dump` against the traffic
//! it describes, and `cleanup`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use kproxy::{
    dump::{Dump, DumpedFrontend},
    health::rfc3339,
};
use kproxy_tests::{
    conformance::{Client, Mode, Proto, TCP_PORT, World},
    lab::{Host, client::ClientError},
};
use serde_json::Value;

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (cargo xtask test)"
    );
}

fn kproxy() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kproxy"))
}

const HC_PORT: u16 = 31999;
const LB_IP: &str = "198.51.100.20";

/// One HTTP/1.0 answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// GET `path` on `addr`; None when nothing listens.
fn get(addr: SocketAddr, path: &str) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let code = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        code,
        headers,
        body: body.to_owned(),
    })
}

/// GET from inside node `node`'s network namespace.
fn get_on(world: &World, node: &str, addr: SocketAddr, path: &str) -> Option<Reply> {
    let path = path.to_owned();
    world
        .node(node)
        .run(move || get(addr, &path))
        .expect("enter the node")
}

/// The node's own address on `port`.
fn node_addr(world: &World, node: &str, port: u16) -> SocketAddr {
    SocketAddr::new(world.node(node).ipv4().into(), port)
}

/// Polls `probe` until `done` holds for its value (the agents apply manifests within about
/// a second); panics with the last value after a minute.
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let v = probe();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nodes_yaml(world: &World, taint_a: &str) -> String {
    let mut out = String::new();
    for n in ["a", "b"] {
        let node = world.node(n);
        let extra = if n == "a" { taint_a } else { "" };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n{extra}status:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n",
            node.ipv4()
        );
    }
    out
}

/// `(pod, ready, serving, terminating)`.
type Ep = (&'static str, bool, bool, bool);

fn slice_yaml(world: &World, service: &str, eps: &[Ep], trigger: Option<SystemTime>) -> String {
    let annotations = trigger.map_or_else(String::new, |t| {
        format!(
            "  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{}\"}}\n",
            rfc3339(t)
        )
    });
    let mut out = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: ops\n  labels: {{kubernetes.io/service-name: {service}}}\n{annotations}addressType: IPv4\nports: [{{name: http, port: {TCP_PORT}, protocol: TCP}}]\nendpoints:\n"
    );
    if eps.is_empty() {
        out = out.replace("endpoints:\n", "endpoints: []\n");
    }
    for (pod, ready, serving, terminating) in eps {
        let p = world.pod(pod);
        let _ = write!(
            out,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n  nodeName: {}\n",
            p.ipv4(),
            p.node().name()
        );
    }
    out
}

fn lb_yaml() -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: ops}}\nspec:\n  type: LoadBalancer\n  clusterIP: {LB_IP}\n  clusterIPs: [{LB_IP}]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: {TCP_PORT}, nodePort: 31080}}\n"
    )
}

fn ready(pod: &'static str) -> Ep {
    (pod, true, true, false)
}

/// The healthCheckNodePort answer on `node`, once it has `code` and `count`.
fn hc_answer(world: &World, node: &str, code: u16, count: u64) -> Reply {
    let addr = node_addr(world, node, HC_PORT);
    let reply = wait_until(
        &format!("healthCheckNodePort on node {node}"),
        || get_on(world, node, addr, "/"),
        |r| {
            r.as_ref().is_some_and(|r| {
                r.code == code && r.json()["localEndpoints"].as_u64() == Some(count)
            })
        },
    )
    .expect("answered");
    // Every field, as kube-proxy answers.
    let body = reply.json();
    assert_eq!(body["service"]["namespace"], "ops", "{body}");
    assert_eq!(body["service"]["name"], "lb", "{body}");
    assert_eq!(body["serviceProxyHealthy"], true, "{body}");
    assert_eq!(
        reply.header("x-load-balancing-endpoint-weight"),
        Some(count.to_string().as_str()),
        "{reply:?}"
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply
}

fn healthz(world: &World, node: &str, path: &str) -> Reply {
    get_on(world, node, node_addr(world, node, 10256), path).expect("health server answers")
}

fn metrics_text(world: &World, node: &str) -> String {
    let r = get_on(world, node, "127.0.0.1:10249".parse().unwrap(), "/metrics")
        .expect("metrics server answers");
    assert_eq!(r.code, 200);
    r.body
}

/// The value of the series `series` (name with labels), if exported.
fn sample<T: std::str::FromStr>(text: &str, series: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn dump_on(world: &World, node: &str) -> Dump {
    let out = world
        .node(node)
        .exec(kproxy(), ["dump", "--output", "json"])
        .expect("kproxy dump");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("dump output is not the JSON dump ({e}): {out}"))
}

/// The dumped frontend `ip:port`/TCP.
fn frontend<'a>(d: &'a Dump, ip: &str, port: u16) -> &'a DumpedFrontend {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    d.frontends
        .iter()
        .find(|f| f.address == ip && f.port == port && f.protocol == "TCP")
        .unwrap_or_else(|| panic!("no frontend {ip}:{port} in {:#?}", d.frontends))
}

/// The endpoint pods behind `list` (TCP echo port), sorted; unknown addresses as is.
fn endpoint_pods(world: &World, list: &[SocketAddr]) -> Vec<String> {
    let mut names: Vec<String> = list
        .iter()
        .map(|ep| {
            ["a-ep1", "a-ep2", "b-ep1", "b-ep2"]
                .into_iter()
                .find(|p| ep.port() == TCP_PORT && IpAddr::V4(world.pod(p).ipv4()) == ep.ip())
                .map_or_else(|| ep.to_string(), str::to_owned)
        })
        .collect();
    names.sort();
    names
}

fn ipv4_table(d: &Dump) -> &kproxy::dump::TableSummary {
    d.tables
        .iter()
        .find(|t| t.table == "ip kproxy")
        .expect("the ip table is listed")
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn health_check_node_ports_health_metrics_and_sigterm() {
    assert_root();
    let world = World::new("opshealth", kproxy(), Mode::Nftables).expect("lab");
    world
        .write_manifest("nodes.yaml", &nodes_yaml(&world, ""))
        .unwrap();
    world
        .write_manifest(
            "lb.yaml",
            &(lb_yaml() + &slice_yaml(&world, "lb", &[ready("a-ep1")], None)),
        )
        .unwrap();
    world
        .start_agents(&["--cluster-cidr", "100.64.0.0/16"])
        .expect("agents");

    // One local ready endpoint on a, none on b.
    hc_answer(&world, "a", 200, 1);
    hc_answer(&world, "b", 503, 0);

    // /healthz and /livez: kube-proxy's bodies.
    let h = healthz(&world, "a", "/healthz");
    assert_eq!(h.code, 200, "{h:?}");
    let body = h.json();
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert_eq!(body["healthy"], true, "{body}");
    assert!(
        body["lastUpdated"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    assert!(
        body["currentTime"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    let l = healthz(&world, "a", "/livez");
    assert_eq!(l.code, 200);
    assert!(l.json().get("nodeEligible").is_none(), "{}", l.body);

    // Endpoints move to b (two pods), with a trigger time after the agents started.
    world
        .write_manifest(
            "lb.yaml",
            &(lb_yaml()
                + &slice_yaml(
                    &world,
                    "lb",
                    &[ready("b-ep1"), ready("b-ep2")],
                    Some(SystemTime::now()),
                )),
        )
        .unwrap();
    hc_answer(&world, "b", 200, 2);
    hc_answer(&world, "a", 503, 0);

    // Metrics on a, after these syncs: every listed metric with its type.
    let text = metrics_text(&world, "a");
    for (name, kind) in kproxy::metrics::EXPORTED_FAMILIES {
        let line = format!("# TYPE {name} {kind}");
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    let s = |series: &str| -> u64 {
        sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"))
    };
    assert_eq!(
        s("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}"),
        1,
        "eTP Local with endpoints only on b drops on a"
    );
    assert_eq!(
        s("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"}"),
        0
    );
    assert!(s("kubeproxy_sync_full_proxy_rules_duration_seconds_count") >= 1);
    assert!(s("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 2);
    assert!(s("kubeproxy_sync_proxy_rules_service_changes_total") >= 1);
    assert!(
        s("kubeproxy_network_programming_duration_seconds_count") >= 1,
        "the slice's trigger time was measured"
    );
    assert!(s("kubeproxy_proxy_healthz_total{code=\"200\"}") >= 1);
    assert_eq!(s("kproxy_datapath_elements{kind=\"service_ports\"}"), 1);
    assert_eq!(s("kproxy_datapath_elements{kind=\"endpoints\"}"), 2);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last: f64 =
        sample(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds").expect("last sync");
    assert!(last > 0.0 && last <= now, "{last} vs {now}");
    let mode = get_on(
        &world,
        "a",
        "127.0.0.1:10249".parse().unwrap(),
        "/proxyMode",
    )
    .unwrap();
    assert_eq!((mode.code, mode.body.trim()), (200, "nftables"));
    let mh = get_on(&world, "a", "127.0.0.1:10249".parse().unwrap(), "/healthz").unwrap();
    assert_eq!(mh.code, 200);

    // Not ready and terminating endpoints do not count.
    world
        .write_manifest(
            "lb.yaml",
            &(lb_yaml()
                + &slice_yaml(
                    &world,
                    "lb",
                    &[("b-ep1", false, false, false), ("b-ep2", false, true, true)],
                    None,
                )),
        )
        .unwrap();
    hc_answer(&world, "b", 503, 0);

    // Node a tainted for scale-down: /healthz 503 (proxier still healthy), /livez 200.
    let taint = "spec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}]\n";
    world
        .write_manifest("nodes.yaml", &nodes_yaml(&world, taint))
        .unwrap();
    let h = wait_until(
        "healthz 503 on a tainted node",
        || healthz(&world, "a", "/healthz"),
        |r| r.code == 503,
    );
    assert_eq!(h.json()["nodeEligible"], false, "{}", h.body);
    assert_eq!(h.json()["healthy"], true, "{}", h.body);
    assert_eq!(healthz(&world, "a", "/livez").code, 200);
    assert_eq!(
        healthz(&world, "b", "/healthz").code,
        200,
        "node b is not tainted"
    );
    let text = metrics_text(&world, "a");
    assert!(sample::<u64>(&text, "kubeproxy_proxy_healthz_total{code=\"503\"}").unwrap() >= 1);

    // Being deleted: the same.
    let deleting =
        "  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n  finalizers: [example.com/hold]\n";
    world
        .write_manifest(
            "nodes.yaml",
            &nodes_yaml(&world, "").replacen("  name: a\n", &format!("  name: a\n{deleting}"), 1),
        )
        .unwrap();
    let h = wait_until(
        "healthz while node a is being deleted",
        || healthz(&world, "a", "/healthz"),
        |r| r.code == 503 && r.json()["nodeEligible"] == false,
    );
    assert_eq!(h.json()["healthy"], true);
    world
        .write_manifest("nodes.yaml", &nodes_yaml(&world, ""))
        .unwrap();
    wait_until(
        "healthz back to 200",
        || healthz(&world, "a", "/healthz"),
        |r| r.code == 200,
    );

    // The Service goes: its healthCheckNodePort closes.
    std::fs::remove_file(world.manifests_dir().join("lb.yaml")).unwrap();
    let b_hc = node_addr(&world, "b", HC_PORT);
    wait_until(
        "healthCheckNodePort closed",
        || get_on(&world, "b", b_hc, "/").map(|r| r.code),
        Option::is_none,
    );

    // SIGTERM: servers stop, the datapath stays.
    world
        .write_manifest(
            "lb.yaml",
            &(lb_yaml() + &slice_yaml(&world, "lb", &[ready("a-ep1")], None)),
        )
        .unwrap();
    hc_answer(&world, "a", 200, 1);
    let status = world.stop_agent(0).expect("SIGTERM");
    assert!(status.success(), "kproxy exits 0 on SIGTERM: {status:?}");
    assert!(get_on(&world, "a", node_addr(&world, "a", 10256), "/healthz").is_none());
    assert!(get_on(&world, "a", "127.0.0.1:10249".parse().unwrap(), "/metrics").is_none());
    assert!(get_on(&world, "a", node_addr(&world, "a", HC_PORT), "/").is_none());
    let d = dump_on(&world, "a");
    assert!(
        ipv4_table(&d).present,
        "the datapath stays after SIGTERM: {d:?}"
    );
    let reply = world
        .request(
            Client::PodA,
            Proto::Tcp,
            SocketAddr::new(LB_IP.parse().unwrap(), 80),
            Duration::from_secs(3),
        )
        .expect("the ClusterIP still answers after SIGTERM");
    assert_eq!(reply.name, "a-ep1");
    world.close().expect("clean lab");
}

/// The Services both dump tests program: two endpoints on two nodes, none, and a NodePort
/// with eTP Local whose only endpoint is on node b.
fn dump_services(world: &World) -> String {
    let svc = |name: &str, ip: &str, extra: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ops}}\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n{extra}  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: {TCP_PORT}{}}}\n",
            if extra.is_empty() {
                ""
            } else {
                ", nodePort: 31081"
            }
        )
    };
    nodes_yaml(world, "")
        + &svc("two", "198.51.100.21", "")
        + &slice_yaml(world, "two", &[ready("a-ep1"), ready("b-ep1")], None)
        + &svc("none", "198.51.100.22", "")
        + &svc(
            "local",
            "198.51.100.23",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
        )
        + &slice_yaml(world, "local", &[ready("b-ep1")], None)
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn dump_matches_the_traffic_and_cleanup_removes_every_table() {
    assert_root();
    let world = World::new("opsdump", kproxy(), Mode::Nftables).expect("lab");
    world
        .write_manifest("svc.yaml", &dump_services(&world))
        .unwrap();
    world
        .start_agents(&["--cluster-cidr", "100.64.0.0/16"])
        .expect("agents");

    // What the conformance table checks, for these services.
    let to = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 80);
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let r = world
            .request(
                Client::PodA,
                Proto::Tcp,
                to("198.51.100.21"),
                Duration::from_secs(3),
            )
            .expect("two answers");
        seen.insert(r.name);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["a-ep1".to_owned(), "b-ep1".to_owned()])
    );
    assert!(matches!(
        world.request(
            Client::PodA,
            Proto::Tcp,
            to("198.51.100.22"),
            Duration::from_secs(3)
        ),
        Err(ClientError::Refused)
    ));
    assert!(matches!(
        world.request(
            Client::X1,
            Proto::Tcp,
            node_addr(&world, "a", 31081),
            Duration::from_secs(2)
        ),
        Err(ClientError::Timeout)
    ));

    // The dump says the same: one rejected frontend (none's ClusterIP), one dropped (local's
    // NodePort on a), three ClusterIPs, and the endpoint lists behind the others.
    let d = dump_on(&world, "a");
    assert_eq!(d.mode, "nftables");
    let t = ipv4_table(&d);
    assert!(t.present);
    assert_eq!(t.rejected_frontends, 1, "{t:#?}");
    assert_eq!(t.dropped_frontends, 1, "{t:#?}");
    assert_eq!(t.cluster_ips, 3, "{t:#?}");
    assert!(t.load_balanced_frontends >= 2, "{t:#?}");
    assert!(
        t.endpoint_entries >= 3,
        "two's 2 endpoints and local's 1: {t:#?}"
    );
    assert!(
        t.sets
            .iter()
            .any(|(n, c)| n.starts_with("lb-n2") && *c >= 1),
        "a two-endpoint class holds two's ClusterIP: {t:#?}"
    );
    let two = frontend(&d, "198.51.100.21", 80);
    assert_eq!(
        (two.kind.as_str(), two.verdict.as_str()),
        ("ClusterIP", "forward")
    );
    assert_eq!(two.service.as_deref(), Some("ops/two:http/tcp"));
    assert_eq!(endpoint_pods(&world, &two.endpoints), ["a-ep1", "b-ep1"]);
    assert_eq!(frontend(&d, "198.51.100.22", 80).verdict, "reject");
    let np = frontend(&d, &world.node("a").ipv4().to_string(), 31081);
    assert_eq!(
        (np.kind.as_str(), np.verdict.as_str()),
        ("NodePort", "drop")
    );
    assert_eq!(endpoint_pods(&world, &np.cluster_endpoints), ["b-ep1"]);
    let table = world
        .node("a")
        .exec(kproxy(), ["dump"])
        .expect("table output");
    assert!(table.contains("1 dropped, 1 rejected frontends"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("198.51.100.21:80/TCP") && l.contains("ops/two:http/tcp")),
        "{table}"
    );

    // The agent down: the kernel state, and so the dump, are unchanged.
    world.kill_agents();
    assert_eq!(
        dump_on(&world, "a"),
        d,
        "dump reads the kernel, not the agent"
    );

    // `kproxy cleanup` on a, kube-proxy's `--cleanup` on b: nothing of kproxy's is left.
    world
        .node("a")
        .exec(kproxy(), ["cleanup", "--proxy-mode", "nftables"])
        .expect("cleanup");
    world
        .node("b")
        .exec(kproxy(), ["--cleanup", "--proxy-mode=nftables"])
        .expect("--cleanup");
    for n in ["a", "b"] {
        let err = world
            .node(n)
            .exec(kproxy(), ["dump"])
            .expect_err("dump fails when nothing is installed");
        assert!(
            err.to_string().contains("nothing installed"),
            "node {n}: {err:#}"
        );
        let tables = world.node(n).exec("nft", ["list", "tables"]).expect("nft");
        assert!(!tables.contains("kproxy"), "node {n}: {tables}");
    }
    world.close().expect("clean lab");
}

/// `BPF_PROG_QUERY`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// Programs attached directly to `target` (a cgroup fd or an ifindex) for `attach_type`.
fn attached(target: u32, attach_type: u32) -> u32 {
    let mut q = ProgQuery {
        target,
        attach_type,
        ..ProgQuery::default()
    };
    // SAFETY: q is a valid, writable bpf_attr prefix of the size passed; with prog_ids
    // null the kernel writes only prog_cnt (and revision).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut q,
            size_of::<ProgQuery>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_QUERY({target}, {attach_type}): {}",
        std::io::Error::last_os_error()
    );
    q.prog_cnt
}

/// Socket programs on node `n`'s cgroup, tc (tcx) programs on its devices.
fn programs_on(world: &World, n: &str) -> (u32, u32) {
    let node = world.node(n);
    let cgroup = std::fs::File::open(node.cgroup_path()).expect("open the node's cgroup");
    let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&cgroup)).unwrap();
    let sock = attached(fd, BPF_CGROUP_INET4_CONNECT);
    let tc = node
        .run(|| {
            nix::net::if_::if_nameindex()
                .expect("devices")
                .iter()
                .map(|i| attached(i.index(), BPF_TCX_INGRESS) + attached(i.index(), BPF_TCX_EGRESS))
                .sum::<u32>()
        })
        .expect("in the node's netns");
    (sock, tc)
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn ebpf_dump_matches_the_traffic_and_cleanup_detaches_and_unpins_everything() {
    assert_root();
    let world = World::new("opsbpf", kproxy(), Mode::Ebpf).expect("lab");
    world
        .write_manifest("svc.yaml", &dump_services(&world))
        .unwrap();
    world
        .start_agents(&["--cluster-cidr", "100.64.0.0/16"])
        .expect("agents");
    let to = SocketAddr::new("198.51.100.21".parse().unwrap(), 80);
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let r = world
            .request(Client::PodA, Proto::Tcp, to, Duration::from_secs(3))
            .expect("two answers");
        seen.insert(r.name);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["a-ep1".to_owned(), "b-ep1".to_owned()])
    );

    let bpffs = world.node("a").bpffs_path().to_string_lossy().into_owned();
    let dump = || -> Dump {
        let out = world
            .node("a")
            .exec(
                kproxy(),
                [
                    "dump",
                    "--proxy-mode",
                    "ebpf",
                    "-o",
                    "json",
                    "--bpffs",
                    &bpffs,
                ],
            )
            .expect("kproxy dump");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not the JSON dump ({e}): {out}"))
    };
    let d = dump();
    assert_eq!(d.mode, "ebpf");
    assert!(!d.links.is_empty(), "pinned links are listed: {d:?}");
    let two = frontend(&d, "198.51.100.21", 80);
    assert_eq!(
        (two.kind.as_str(), two.verdict.as_str()),
        ("ClusterIP", "forward")
    );
    assert_eq!(endpoint_pods(&world, &two.endpoints), ["a-ep1", "b-ep1"]);
    assert_eq!(frontend(&d, "198.51.100.22", 80).verdict, "reject");
    let np = frontend(&d, &world.node("a").ipv4().to_string(), 31081);
    assert_eq!(
        (np.kind.as_str(), np.verdict.as_str()),
        ("NodePort", "drop")
    );
    let table = world
        .node("a")
        .exec(
            kproxy(),
            ["dump", "--proxy-mode", "ebpf", "--bpffs", &bpffs],
        )
        .expect("table output");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("198.51.100.21:80/TCP") && l.contains("ClusterIP")),
        "{table}"
    );

    // The agent down: the pins keep the datapath, and the dump says the same.
    world.kill_agents();
    assert_eq!(dump(), d, "dump reads the pinned maps, not the agent");
    let (sock, tc) = programs_on(&world, "a");
    assert!(
        sock > 0 && tc > 0,
        "attached before cleanup: {sock} socket, {tc} tc"
    );

    let cgroup = world.node("a").cgroup_path().to_string_lossy().into_owned();
    world
        .node("a")
        .exec(
            kproxy(),
            [
                "cleanup",
                "--proxy-mode",
                "ebpf",
                "--bpffs",
                &bpffs,
                "--cgroup-path",
                &cgroup,
            ],
        )
        .expect("cleanup");
    let root = world.node("a").bpffs_path().join("kproxy");
    let pins: Vec<_> = walk(&root);
    assert!(pins.is_empty(), "pins left after cleanup: {pins:?}");
    // Unpinned links are released by the kernel after their last reference goes.
    wait_until(
        "programs detached after cleanup",
        || programs_on(&world, "a"),
        |&(sock, tc)| sock == 0 && tc == 0,
    );
    let err = world
        .node("a")
        .exec(
            kproxy(),
            ["dump", "--proxy-mode", "ebpf", "--bpffs", &bpffs],
        )
        .expect_err("dump fails when nothing is installed");
    assert!(err.to_string().contains("nothing installed"), "{err:#}");
    world.close().expect("clean lab");
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}
