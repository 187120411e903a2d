//! The datapath suite.
//!
//! Per mode and size, a fresh lab: node `a` is programmed by the mode (kproxy, or a
//! baseline's rules) and runs the client pod `cl` and server pods `s1..sM` (the target
//! Service's endpoints); node `z` runs no proxy at all and has the same client/server
//! pair (`zcl`, `zs`): the physical limit. External `x1` routes both nodes' pod ranges via
//! the nodes. Every server is `kproxy-bench serve`; every client is the load generator,
//! a process inside the client's namespace and cgroup.
//!
//! Scenarios, run in turn in short slices for several rounds so that noise hits all alike:
//!
//! | scenario | from | to |
//! |---|---|---|
//! | `tcp_clusterip` | `cl` | the target's ClusterIP:80 |
//! | `tcp_pod` | `cl` | `s1`:8080 directly (unrelated pod-to-pod traffic on a proxied node) |
//! | `tcp_noproxy` | `zcl` | `zs`:8080 (no proxy on the node) |
//! | `udp_clusterip`, `udp_pod`, `udp_noproxy` | the same | UDP 53 / 8053, a new flow per request |
//! | `tcp_nodeport` | `x1` | node a's NodePort 32700 |
//! | `tcp_ext_pod` | `x1` | `s1`:8080 routed through node a |
//! | `tcp_ext_noproxy` | `x1` | `zs`:8080 routed through node z |
//!
//! Figures: rate (completed requests/s), p50 and p99 latency per scenario, and the ratios
//! to the no-proxy scenario of the same kind.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Agent, Bounded, CLUSTER_CIDR, Config, Mode, Rows, Scratch, Suite,
    control::Tool,
    layout::{self, ServiceSet},
    load::LoadResult,
    run_bounded, start_server,
};
use crate::lab::{External, Host, Lab, Node, Pod, Process};

/// Every scenario, in the order they alternate.
const SCENARIOS: [&str; 9] = [
    "tcp_clusterip",
    "tcp_pod",
    "tcp_noproxy",
    "udp_clusterip",
    "udp_pod",
    "udp_noproxy",
    "tcp_nodeport",
    "tcp_ext_pod",
    "tcp_ext_noproxy",
];

/// Ratios reported: (name, numerator, denominator).
pub(super) const RATIOS: [(&str, &str, &str); 6] = [
    ("tcp_clusterip_vs_noproxy", "tcp_clusterip", "tcp_noproxy"),
    ("tcp_pod_vs_noproxy", "tcp_pod", "tcp_noproxy"),
    ("udp_clusterip_vs_noproxy", "udp_clusterip", "udp_noproxy"),
    ("udp_pod_vs_noproxy", "udp_pod", "udp_noproxy"),
    ("tcp_nodeport_vs_noproxy", "tcp_nodeport", "tcp_ext_noproxy"),
    ("tcp_ext_pod_vs_noproxy", "tcp_ext_pod", "tcp_ext_noproxy"),
];

pub(super) fn run(cfg: &Config, out: &mut Vec<super::Row>) {
    let mut exceeded: Vec<(Mode, usize)> = Vec::new();
    for &n in &cfg.services {
        for &mode in &cfg.modes {
            println!("datapath: {mode} at {n} services");
            let mut rows = Rows {
                out,
                suite: Suite::Datapath,
                mode,
                services: n,
                endpoints: cfg.endpoints,
            };
            if let Some((_, at)) = exceeded.iter().find(|(m, _)| *m == mode) {
                let t = cfg.timeout.as_secs_f64();
                rows.push(
                    "program_s",
                    Some(t),
                    "s",
                    &format!("timeout: programming took > {t} s already at {at} services; not run"),
                );
                continue;
            }
            match one(cfg, mode, n, &mut rows) {
                Ok(true) => {}
                Ok(false) => exceeded.push((mode, n)),
                Err(e) => rows.failed("program_s", "s", &format!("{e:#}").replace(',', ";")),
            }
        }
    }
}

/// Which client runs a scenario.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// The client pod on the proxied node.
    Cl,
    /// The client pod on the node without a proxy.
    Zcl,
    /// The external client.
    X1,
}

/// The datapath lab's hosts and servers.
struct Lab2 {
    a: Node,
    cl: Pod,
    servers: Vec<Pod>,
    zcl: Pod,
    zs: Pod,
    x1: External,
    _processes: Vec<Process>,
}

fn build(cfg: &Config, lab: &Lab) -> Result<Lab2> {
    let a = lab.add_node("a")?;
    let z = lab.add_node("z")?;
    let cl = a.add_pod("cl")?;
    let count = cfg.endpoints.clamp(1, 10);
    let servers: Vec<Pod> = (1..=count)
        .map(|k| a.add_pod(&format!("s{k}")))
        .collect::<Result<_, _>>()?;
    let zcl = z.add_pod("zcl")?;
    let zs = z.add_pod("zs")?;
    let x1 = lab.add_external("x1")?;
    x1.route_via(ipnet::IpNet::V4(a.pod_cidr_v4()), &a)?;
    x1.route_via(ipnet::IpNet::V4(z.pod_cidr_v4()), &z)?;
    let mut processes = Vec::new();
    for s in servers.iter().chain([&zs]) {
        processes.push(start_server(cfg, s, 2)?);
    }
    Ok(Lab2 {
        a,
        cl,
        servers,
        zcl,
        zs,
        x1,
        _processes: processes,
    })
}

/// One mode at one size. Ok(false) when programming ran past the bound.
fn one(cfg: &Config, mode: Mode, n: usize, rows: &mut Rows<'_>) -> Result<bool> {
    let lab = Lab::new("bench-datapath")?;
    let scratch = Scratch::new(cfg, lab.id())?;
    let l = build(cfg, &lab)?;
    let endpoints: Vec<_> = l.servers.iter().map(Host::ipv4).collect();
    let set = ServiceSet::new(n, cfg.endpoints, endpoints, CLUSTER_CIDR);

    let Programmed::Ready(agent) = program(cfg, mode, &l, &set, &scratch, rows)? else {
        return Ok(false);
    };

    let vip: IpAddr = layout::cluster_ip(0).into();
    let s1: IpAddr = l.servers[0].ipv4().into();
    let zs: IpAddr = l.zs.ipv4().into();
    let node_a: IpAddr = l.a.ipv4().into();
    let tcp = layout::POD_TCP_PORT;
    let udp = layout::POD_UDP_PORT;
    let scenarios: Vec<(&str, Who, &str, SocketAddr)> = vec![
        (
            "tcp_clusterip",
            Who::Cl,
            "tcp",
            SocketAddr::new(vip, layout::TARGET_TCP_PORT),
        ),
        ("tcp_pod", Who::Cl, "tcp", SocketAddr::new(s1, tcp)),
        ("tcp_noproxy", Who::Zcl, "tcp", SocketAddr::new(zs, tcp)),
        (
            "udp_clusterip",
            Who::Cl,
            "udp",
            SocketAddr::new(vip, layout::TARGET_UDP_PORT),
        ),
        ("udp_pod", Who::Cl, "udp", SocketAddr::new(s1, udp)),
        ("udp_noproxy", Who::Zcl, "udp", SocketAddr::new(zs, udp)),
        (
            "tcp_nodeport",
            Who::X1,
            "tcp",
            SocketAddr::new(node_a, layout::TARGET_NODE_PORT),
        ),
        ("tcp_ext_pod", Who::X1, "tcp", SocketAddr::new(s1, tcp)),
        ("tcp_ext_noproxy", Who::X1, "tcp", SocketAddr::new(zs, tcp)),
    ];
    debug_assert_eq!(scenarios.len(), SCENARIOS.len());

    // A short warm-up per scenario: ARP, conntrack, and a check that it answers at all.
    let mut broken: BTreeMap<&str, String> = BTreeMap::new();
    for (name, who, proto, to) in &scenarios {
        match load(cfg, &l, *who, proto, *to, Duration::from_millis(100)) {
            Ok(r) if r.ok > 0 => {}
            Ok(r) => {
                broken.insert(name, format!("no answer ({} errors)", r.errors));
            }
            Err(e) => {
                broken.insert(name, format!("{e:#}"));
            }
        }
    }
    let mut results: BTreeMap<&str, LoadResult> = BTreeMap::new();
    for _ in 0..cfg.rounds {
        for (name, who, proto, to) in &scenarios {
            if broken.contains_key(name) {
                continue;
            }
            match load(cfg, &l, *who, proto, *to, cfg.slice) {
                Ok(r) => results.entry(name).or_default().merge(&r),
                Err(e) => {
                    broken.insert(name, format!("{e:#}"));
                }
            }
        }
    }
    for name in SCENARIOS {
        if let Some(why) = broken.get(name) {
            rows.failed(&format!("{name}_rate"), "1/s", &why.replace(',', ";"));
            continue;
        }
        let Some(r) = results.get(name) else { continue };
        let note = format!("{} ok; {} errors", r.ok, r.errors);
        rows.push(&format!("{name}_rate"), Some(r.rate()), "1/s", &note);
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        let us = |q| r.hist.quantile(q).map(|v| v as f64);
        rows.push(&format!("{name}_p50_us"), us(0.5), "us", "");
        rows.push(&format!("{name}_p99_us"), us(0.99), "us", "");
    }
    for (ratio, num, den) in RATIOS {
        if let (Some(a), Some(b)) = (results.get(num), results.get(den))
            && b.rate() > 0.0
            && !broken.contains_key(num)
        {
            rows.value(ratio, a.rate() / b.rate(), "x");
        }
    }
    drop(agent);
    drop(l);
    drop(scratch);
    lab.close().context("closing the lab")?;
    Ok(true)
}

/// How programming a node ended.
enum Programmed {
    /// It ran past the bound.
    Timeout,
    /// Done; the agent (kproxy modes) keeps running during the measurement.
    Ready(Option<Agent>),
}

/// Programs node a for `mode`.
fn program(
    cfg: &Config,
    mode: Mode,
    l: &Lab2,
    set: &ServiceSet,
    scratch: &Scratch,
    rows: &mut Rows<'_>,
) -> Result<Programmed> {
    let timeout = |rows: &mut Rows<'_>| {
        let t = cfg.timeout.as_secs_f64();
        rows.push("program_s", Some(t), "s", &format!("timeout: > {t} s"));
    };
    if mode.kproxy_flag().is_none() {
        let tool = Tool::for_mode(mode)?;
        let file = scratch.0.join("rules");
        fs::write(&file, tool.full(set, l.a.ipv4()))?;
        return match run_bounded(tool.command(&l.a, &file)?, cfg.timeout)? {
            Bounded::Done(d) => {
                rows.value("program_s", d.as_secs_f64(), "s");
                Ok(Programmed::Ready(None))
            }
            Bounded::Timeout => {
                timeout(rows);
                Ok(Programmed::Timeout)
            }
            Bounded::Failed(e) => bail!("{e}"),
        };
    }
    let manifests = scratch.0.join("manifests");
    fs::create_dir_all(&manifests)?;
    for chunk in 0..layout::chunks(set, cfg.per_file) {
        fs::write(
            manifests.join(layout::chunk_file(chunk * cfg.per_file, cfg.per_file)),
            layout::chunk_text(set, chunk, cfg.per_file),
        )?;
    }
    fs::write(
        manifests.join("node.yaml"),
        layout::node_manifest(l.a.name(), l.a.ipv4()),
    )?;
    let started = Instant::now();
    let mut agent = Agent::start(cfg, &l.a, mode, &manifests, &scratch.0.join("kproxy.log"))?;
    match agent.wait_healthy(&l.a, cfg.timeout) {
        Ok(()) => {
            rows.value("program_s", started.elapsed().as_secs_f64(), "s");
            Ok(Programmed::Ready(Some(agent)))
        }
        Err(e) if e.to_string() == "timeout" => {
            timeout(rows);
            Ok(Programmed::Timeout)
        }
        Err(e) => bail!("{e:#}"),
    }
}

/// One slice of load from `host` (its namespace and cgroup).
fn load(
    cfg: &Config,
    l: &Lab2,
    who: Who,
    proto: &str,
    to: SocketAddr,
    duration: Duration,
) -> Result<LoadResult> {
    let mut cmd = match who {
        Who::Cl => l.cl.command(&cfg.bench_bin)?,
        Who::Zcl => l.zcl.command(&cfg.bench_bin)?,
        Who::X1 => l.x1.command(&cfg.bench_bin)?,
    };
    cmd.args(["load", "--proto", proto, "--to", &to.to_string()])
        .args(["--conns", &cfg.conns.to_string()])
        .args(["--ms", &duration.as_millis().to_string()]);
    let out = cmd.output().context("running the load generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "load generator failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    LoadResult::parse(text.trim()).with_context(|| format!("unexpected load output {text:?}"))
}
