//! Timing program (not a test): programs 1k/10k/100k ClusterIP services × 10 endpoints
//! from scratch in a network namespace of its own, then one endpoint change at the
//! largest size, and prints the times. Needs root.
//!
//! `cargo run --release -p kproxy-nft --example scale [sizes…]`

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use ipnet::IpNet;
use kproxy_model::{
    Endpoint, EndpointSet, Frontend, FrontendKind, InternalMasquerade, IpFamily, ModelDiff,
    Protocol, ProxyModel, ServicePort, ServicePortKey, ServicePortName, Verdict,
};
use kproxy_nft::{NftConfig, NftDataplane};

const ENDPOINTS: u32 = 10;

fn endpoint(ip: IpAddr) -> Endpoint {
    Endpoint {
        ip,
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        is_local: false,
    }
}

fn service(i: u32) -> ServicePort {
    let cluster_ip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i));
    ServicePort {
        key: ServicePortKey {
            family: IpFamily::V4,
            name: ServicePortName {
                namespace: format!("namespace-{}", i % 100),
                name: format!("service-{i}"),
                port_name: "http".into(),
                protocol: Protocol::Tcp,
            },
        },
        cluster_ip,
        port: 80,
        node_port: None,
        frontends: vec![Frontend {
            kind: FrontendKind::ClusterIp,
            ip: cluster_ip,
            port: 80,
        }],
        source_ranges: vec![],
        affinity_timeout_secs: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints: (0..ENDPOINTS)
            .map(|k| endpoint(IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i * 16 + k))))
            .collect(),
        internal: Verdict::Forward(EndpointSet((0..ENDPOINTS).collect())),
        internal_masquerade: InternalMasquerade::SourceNotIn(vec![
            "10.0.0.0/8".parse::<IpNet>().expect("cidr"),
        ]),
        external: None,
        local_ready_endpoints: 0,
    }
}

/// CPU time of the whole process (all threads, user + system) so far: on a shared
/// machine wall time mostly measures the neighbours.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    let ms = |t: libc::timeval| {
        #[expect(clippy::cast_precision_loss, reason = "timing output")]
        let ms = t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        ms
    };
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

fn max_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn main() {
    // SAFETY: unshare has no memory-safety preconditions; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "unshare(CLONE_NEWNET) failed (needs root): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let mut dp = NftDataplane::new(NftConfig {
        ipv6: false,
        ..NftConfig::default()
    })
    .expect("nf_tables socket");
    let mut last = ProxyModel::default();
    for &n in &sizes {
        // Start from an empty table each time, so every size is "from scratch".
        NftDataplane::cleanup().expect("cleanup");
        let t = Instant::now();
        let model = ProxyModel {
            ports: (0..n).map(service).map(|p| (p.key.clone(), p)).collect(),
        };
        let build = t.elapsed();
        let cpu = cpu_ms();
        let stats = dp.sync_full(&model).expect("full sync");
        let cpu = cpu_ms() - cpu;
        println!(
            "full sync {n:>6} services x {ENDPOINTS} endpoints: {:>8.1} ms, cpu {cpu:.1} ms (render {:.1} ms, encode {:.1} ms, kernel {:.1} ms; {} ops, {} rules, {} elements; model build {:.1} ms)",
            stats.elapsed.as_secs_f64() * 1e3,
            stats.elapsed.saturating_sub(stats.commit).as_secs_f64() * 1e3,
            stats.commit.saturating_sub(stats.kernel).as_secs_f64() * 1e3,
            stats.kernel.as_secs_f64() * 1e3,
            stats.ops,
            stats.rules,
            stats.elements,
            build.as_secs_f64() * 1e3,
        );
        last = model;
    }
    let n = u32::try_from(last.ports.len()).expect("small");
    let cpu = cpu_ms();
    let stats = dp.sync_full(&last).expect("full sync over existing table");
    let cpu = cpu_ms() - cpu;
    println!(
        "full sync {n:>6} services replacing an existing table (restart): {:>8.1} ms, cpu {cpu:.1} ms (kernel {:.1} ms)",
        stats.elapsed.as_secs_f64() * 1e3,
        stats.kernel.as_secs_f64() * 1e3,
    );
    for round in 0..5u8 {
        let mut next = last.clone();
        let key = next
            .ports
            .keys()
            .nth(usize::try_from(n / 2).expect("small"))
            .expect("a port")
            .clone();
        next.ports.get_mut(&key).expect("port").endpoints[3] =
            endpoint(IpAddr::V4(Ipv4Addr::new(10, 250, 0, round + 1)));
        let diff = ModelDiff {
            updated: vec![key],
            ..ModelDiff::default()
        };
        let stats = dp.sync_partial(&next, &diff).expect("partial sync");
        println!(
            "one endpoint change at {n} services: {:>8.3} ms  ({} ops, {} elements)",
            stats.elapsed.as_secs_f64() * 1e3,
            stats.ops,
            stats.elements
        );
        last = next;
    }
    let mut next = last.clone();
    let added = service(n);
    next.ports.insert(added.key.clone(), added.clone());
    let diff = ModelDiff {
        added: vec![added.key],
        ..ModelDiff::default()
    };
    let stats = dp.sync_partial(&next, &diff).expect("partial sync");
    println!(
        "one service added at {n} services: {:>8.3} ms  ({} ops, {} elements)",
        stats.elapsed.as_secs_f64() * 1e3,
        stats.ops,
        stats.elements
    );
    println!("peak RSS: {} MiB", max_rss_mib());
    NftDataplane::cleanup().expect("cleanup");
}
