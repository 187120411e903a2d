//! How the eBPF dataplane's sync scales: full syncs of N services × 10 endpoints (the
//! control-plane bench's layout), then at the largest N one-endpoint partial syncs and a
//! restart (recovery from the pinned maps and its first full sync), against the real kernel.
//!
//! Everything lives in a lab node (its own network namespace, cgroup and bpffs), so the
//! root namespace is never programmed. Prints wall and thread CPU times (CPU time leaves
//! out waiting for a CPU other work holds); asserts none.
//!
//! ```text
//! cargo run --release -p kproxy-bpf --example sync_scale [-- N...]
//! ```
//! Default sizes: 10000 50000 100000. Needs root. `SYNC_SCALE_VERBOSE=1` also lists the
//! slowest partial syncs.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use kproxy_bpf::{BpfConfig, BpfDataplane};
use kproxy_model::{
    Endpoint, EndpointSet, ExternalTraffic, Frontend, FrontendKind, InternalMasquerade, IpFamily,
    ModelDiff, Protocol, ProxyModel, ServicePort, ServicePortKey, ServicePortName, Verdict,
};
use kproxy_tests::lab::{Host as _, Lab, Node};

/// Endpoints per service, as in the control-plane bench.
const ENDPOINTS: u32 = 10;
/// Every this many services one is a NodePort (the control-plane bench's ratio).
const NODEPORT_EVERY: u32 = 40;
/// One-endpoint changes timed at the largest size.
const CHANGES: u32 = 200;

fn endpoint(ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(ip),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        is_local: false,
    }
}

/// Service `i`: ClusterIP `10.96.0.0 + 1 + i`, endpoints `10.128.0.0 + 16 i + k` (unique
/// per service, as the bench's fillers), every 40th one also a NodePort on `node_ip`.
fn service(i: u32, node_ip: IpAddr, generation: u32) -> ServicePort {
    let vip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i));
    let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
        .map(|k| {
            // A later generation moves the first endpoint to a fresh address.
            let ip = if k == 0 && generation > 0 {
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + generation)
            } else {
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + k)
            };
            endpoint(ip)
        })
        .collect();
    let internal = Verdict::Forward(EndpointSet((0..ENDPOINTS).collect()));
    let mut frontends = vec![Frontend {
        kind: FrontendKind::ClusterIp,
        ip: vip,
        port: 80,
    }];
    let mut external = None;
    let mut node_port = None;
    if i.is_multiple_of(NODEPORT_EVERY) {
        let np = 30000 + u16::try_from((i / NODEPORT_EVERY) % 2700).expect("fits");
        node_port = Some(np);
        frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: node_ip,
            port: np,
        });
        external = Some(ExternalTraffic {
            verdict: internal.clone(),
            masquerade: true,
            pod_sources_use_cluster: Vec::new(),
            node_sources_use_cluster: false,
            cluster_verdict: internal.clone(),
        });
    }
    ServicePort {
        key: ServicePortKey {
            family: IpFamily::V4,
            name: ServicePortName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                protocol: Protocol::Tcp,
            },
        },
        cluster_ip: vip,
        port: 80,
        node_port,
        frontends,
        source_ranges: Vec::new(),
        affinity_timeout_secs: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints,
        internal,
        internal_masquerade: InternalMasquerade::HairpinOnly,
        external,
        local_ready_endpoints: 0,
    }
}

fn model(n: u32, node_ip: IpAddr) -> ProxyModel {
    let mut m = ProxyModel::default();
    for i in 0..n {
        let p = service(i, node_ip, 0);
        m.ports.insert(p.key.clone(), p);
    }
    m
}

/// CPU time of the calling thread (user and kernel): unlike wall time, it does not count
/// waiting for a CPU the machine's other work holds.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "the thread CPU clock");
    Duration::new(
        u64::try_from(ts.tv_sec).expect("non-negative"),
        u32::try_from(ts.tv_nsec).expect("below a second"),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A fresh dataplane (fresh bpffs pins) in a new lab node, synced in full at `n`.
fn full(lab: &Lab, n: u32) -> Result<(Node, BpfDataplane, ProxyModel)> {
    let node = lab.add_node(&format!("n{n}"))?;
    let cfg = BpfConfig {
        cgroup_path: node.cgroup_path().to_owned(),
        bpffs: node.bpffs_path().to_owned(),
        devices: Vec::new(),
    };
    let mut dp = node
        .run(move || BpfDataplane::new(&cfg))?
        .context("creating the dataplane")?;
    let node_ip = IpAddr::V4(node.ipv4());
    let t = Instant::now();
    let m = model(n, node_ip);
    let built = t.elapsed();
    let (t, c) = (Instant::now(), thread_cpu());
    let stats = dp.sync_full(&m)?;
    let (first, first_cpu) = (t.elapsed(), thread_cpu().saturating_sub(c));
    let (t, c) = (Instant::now(), thread_cpu());
    let again = dp.sync_full(&m)?;
    let (second, second_cpu) = (t.elapsed(), thread_cpu().saturating_sub(c));
    println!(
        "n={n:>6}: model {:>6.1} ms; first full sync {:>8.1} ms wall, {:>8.1} ms CPU ({} frontends, \
         {} updates); unchanged full sync {:>7.1} ms wall, {:>7.1} ms CPU ({} updates)",
        ms(built),
        ms(first),
        ms(first_cpu),
        stats.frontends,
        stats.updates,
        ms(second),
        ms(second_cpu),
        again.updates
    );
    Ok((node, dp, m))
}

fn main() -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "sync_scale builds network namespaces and loads BPF programs: run it as root"
    );
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("sizes are numbers of services"))
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![10_000, 50_000, 100_000]
    } else {
        sizes
    };
    let lab = Lab::new("syncscale")?;
    let mut last = None;
    for &n in &sizes {
        // The previous node (and its pinned maps) go before the next is built.
        drop(last.take());
        last = Some(full(&lab, n)?);
    }
    let Some((node, mut dp, mut current)) = last else {
        return Ok(());
    };
    let n = *sizes.last().expect("one size at least");
    let node_ip = IpAddr::V4(node.ipv4());
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for c in 1..=CHANGES {
        let changed = service((c * 7919) % n, node_ip, c);
        let diff = ModelDiff {
            updated: vec![changed.key.clone()],
            ..ModelDiff::default()
        };
        current.ports.insert(changed.key.clone(), changed);
        let (t, c) = (Instant::now(), thread_cpu());
        dp.sync_partial(&current, &diff)?;
        times.push(t.elapsed());
        cpu.push(thread_cpu().saturating_sub(c));
    }
    if std::env::var_os("SYNC_SCALE_VERBOSE").is_some() {
        let mut slowest: Vec<(Duration, usize)> = cpu.iter().copied().zip(1..).collect();
        slowest.sort();
        for (d, c) in slowest.iter().rev().take(5) {
            println!("  change {c}: {:.3} ms CPU", ms(*d));
        }
    }
    for (what, mut v) in [("wall", times), ("CPU", cpu)] {
        v.sort();
        println!(
            "n={n:>6}: partial sync of one endpoint change, {CHANGES} changes, {what}: \
             p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(percentile(&v, 50)),
            ms(percentile(&v, 90)),
            ms(percentile(&v, 99)),
            ms(v[v.len() - 1])
        );
    }
    // A restarted agent: recovers its state from the pinned maps, then a full sync that
    // finds nothing to write.
    drop(dp);
    let cfg = BpfConfig {
        cgroup_path: node.cgroup_path().to_owned(),
        bpffs: node.bpffs_path().to_owned(),
        devices: Vec::new(),
    };
    let t = Instant::now();
    let mut dp = node
        .run(move || BpfDataplane::new(&cfg))?
        .context("re-creating the dataplane")?;
    // `new` ran on a helper thread: only its wall time is known.
    let recovered = t.elapsed();
    let (t, c) = (Instant::now(), thread_cpu());
    let stats = dp.sync_full(&current)?;
    println!(
        "n={n:>6}: restart: recovery {:.1} ms wall; first full sync {:.1} ms wall, {:.1} ms \
         CPU ({} updates, {} deletes)",
        ms(recovered),
        ms(t.elapsed()),
        ms(thread_cpu().saturating_sub(c)),
        stats.updates,
        stats.deletes
    );
    drop((dp, node));
    lab.close()?;
    Ok(())
}
