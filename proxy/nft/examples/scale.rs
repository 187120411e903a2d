//! Timing program (not a test): programs 1k/10k/100k ClusterIP services × 10 endpoints
//! from scratch in a network namespace of its own, then one endpoint change at the
//! largest size, and prints the times and memory (RSS, and live heap from a counting
//! allocator: the model's share, the sync's peak and what the dataplane keeps). Needs root.
//!
//! `cargo run --release -p kproxy-nft --example scale [sizes…]`

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use ipnet::IpNet;
use kproxy_model::{
    Endpoint, EndpointSet, Frontend, FrontendKind, InternalMasquerade, IpFamily, ModelDiff,
    Protocol, ProxyModel, ServicePort, ServicePortKey, ServicePortName, Verdict,
};
use kproxy_nft::{NftConfig, NftDataplane};

const ENDPOINTS: u32 = 10;

/// Counts live heap bytes and their peak, to tell the dataplane's own memory from the
/// allocator's (RSS also holds freed but unreturned memory).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> usize {
    LIVE.load(Ordering::Relaxed) >> 20
}

/// Resets the heap peak to the live size and returns the live size in MiB.
fn reset_heap_peak() -> usize {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    live_mib()
}

fn heap_peak_mib() -> usize {
    PEAK.load(Ordering::Relaxed) >> 20
}

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

/// A `/proc/self/status` memory field (`VmHWM`, `VmRSS`) in MiB.
fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn max_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

fn rss_mib() -> u64 {
    status_mib("VmRSS:")
}

/// Resets the peak RSS to the current RSS (writing 5 to clear_refs), so the peak of one
/// step can be read on its own.
fn reset_peak() {
    // Best effort: without it the printed peaks are cumulative.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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
    let config = NftConfig {
        ipv6: false,
        ..NftConfig::default()
    };
    let mut dp = NftDataplane::new(config).expect("nf_tables socket");
    let mut last = ProxyModel::default();
    for &n in &sizes {
        // Start from an empty table each time, so every size is "from scratch".
        NftDataplane::cleanup().expect("cleanup");
        let t = Instant::now();
        let model = ProxyModel {
            ports: (0..n).map(service).map(|p| (p.key.clone(), p)).collect(),
        };
        let build = t.elapsed();
        // The previous size's model and state go first: each size is measured on its own.
        drop(std::mem::take(&mut last));
        dp = NftDataplane::new(config).expect("nf_tables socket");
        let before = rss_mib();
        reset_peak();
        let heap_before = reset_heap_peak();
        let cpu = cpu_ms();
        let stats = dp.sync_full(&model).expect("full sync");
        let cpu = cpu_ms() - cpu;
        println!(
            "memory {n:>6} services: RSS before sync {before} MiB (model), peak during sync {} MiB, after {} MiB; heap: model {heap_before} MiB, peak during sync +{} MiB, kept after +{} MiB",
            max_rss_mib(),
            rss_mib(),
            heap_peak_mib() - heap_before,
            live_mib() - heap_before,
        );
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
    let before = rss_mib();
    reset_peak();
    let heap_before = reset_heap_peak();
    let cpu = cpu_ms();
    let stats = dp.sync_full(&last).expect("full sync over existing table");
    let cpu = cpu_ms() - cpu;
    println!(
        "memory restart: RSS before sync {before} MiB, peak during sync {} MiB, after {} MiB; heap before {heap_before} MiB, peak during sync +{} MiB",
        max_rss_mib(),
        rss_mib(),
        heap_peak_mib() - heap_before,
    );
    println!(
        "full sync {n:>6} services replacing an existing table (restart): {:>8.1} ms, cpu {cpu:.1} ms (kernel {:.1} ms)",
        stats.elapsed.as_secs_f64() * 1e3,
        stats.kernel.as_secs_f64() * 1e3,
    );
    partial_syncs(&mut dp, last, n);
    println!("peak RSS since the restart sync: {} MiB", max_rss_mib());
    NftDataplane::cleanup().expect("cleanup");
}

/// Single-change partial syncs at the largest size: what every later update costs.
fn partial_syncs(dp: &mut NftDataplane, mut last: ProxyModel, n: u32) {
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
}
