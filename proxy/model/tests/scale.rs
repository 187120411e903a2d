//! Scale: 100k Services × 10 endpoints build into a model of the expected size.
//!
//! Counts only are asserted. Memory is reported, never asserted: this file is its own test
//! binary with a counting allocator, so `cargo test -p kproxy-model --test scale --
//! --nocapture` prints the bytes held by the input state and by the model, and running the
//! binary under `/usr/bin/time -v` gives the resident-set peak of the whole process.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    sync::atomic::{AtomicUsize, Ordering},
};

use kproxy_model::{
    Changes, ClusterState, Incremental, LABEL_SERVICE_NAME, ModelConfig, Verdict, build,
    manifest::{ManifestObject, parse_documents},
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERVICES: u32 = 100_000;
const ENDPOINTS: u32 = 10;
const MIB: usize = 1024 * 1024;

/// One Service and its slice, parsed from YAML, to be cloned 100k times.
fn templates() -> (ManifestObject, ManifestObject) {
    let mut endpoints = String::new();
    for i in 0..ENDPOINTS {
        writeln!(
            endpoints,
            "- {{addresses: [\"10.128.0.{}\"], nodeName: node-{}, zone: zone-a}}",
            i + 1,
            i % 5
        )
        .unwrap();
    }
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: t}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: t-1, labels: {{{LABEL_SERVICE_NAME}: t}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}"
    );
    let mut objects = parse_documents(&text).into_iter().map(Result::unwrap);
    (objects.next().unwrap(), objects.next().unwrap())
}

fn cluster_state() -> ClusterState {
    let (ManifestObject::Service(service_template), ManifestObject::EndpointSlice(slice_template)) =
        templates()
    else {
        panic!("templates are a Service and a slice");
    };
    let mut cluster = ClusterState::default();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        // Distinct ClusterIPs: two Services may not share one.
        let ip = format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
        let mut service = service_template.clone();
        service.metadata.name = Some(name.clone());
        let spec = service.spec.as_mut().unwrap();
        spec.cluster_ip = Some(ip.clone());
        spec.cluster_ips = Some(vec![ip]);
        let mut slice = slice_template.clone();
        slice.metadata.name = Some(format!("{name}-1"));
        slice
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SERVICE_NAME.to_owned(), name.clone());
        cluster.insert_k8s_slice(&slice);
        cluster.insert_k8s_service(&service);
    }
    cluster
}

#[test]
fn hundred_thousand_services_with_ten_endpoints_each() {
    let cluster = cluster_state();
    let state_bytes = LIVE.load(Ordering::Relaxed);
    PEAK.store(state_bytes, Ordering::Relaxed);

    let config = ModelConfig {
        node_name: "node-0".to_owned(),
        ..ModelConfig::default()
    };
    let built = build(&cluster, &config);
    let model_bytes = LIVE.load(Ordering::Relaxed) - state_bytes;
    let build_peak = PEAK.load(Ordering::Relaxed) - state_bytes;

    assert!(
        built.warnings.is_empty(),
        "{:?}",
        &built.warnings[..built.warnings.len().min(3)]
    );
    assert_eq!(built.model.ports.len(), SERVICES as usize);
    let (mut endpoints, mut forwarded, mut local) = (0, 0, 0);
    for port in built.model.ports.values() {
        endpoints += port.endpoints.len();
        local += port.local_ready_endpoints;
        if let Verdict::Forward(set) = &port.internal {
            forwarded += set.len();
        }
    }
    let total = (SERVICES * ENDPOINTS) as usize;
    assert_eq!(endpoints, total);
    assert_eq!(forwarded, total);
    assert_eq!(local, total / 5, "endpoints on node-0");

    println!(
        "input state: {} MiB; model: {} MiB; build peak above the state: {} MiB",
        state_bytes / MIB,
        model_bytes / MIB,
        build_peak / MIB
    );

    // What the agent keeps between syncs: the incremental model with its indexes.
    drop(built);
    let before = LIVE.load(Ordering::Relaxed);
    let mut incremental = Incremental::default();
    let update = incremental.update(&cluster, &Changes::All, &config);
    assert_eq!(update.diff.added.len(), SERVICES as usize);
    drop(update);
    println!(
        "incremental model with its indexes: {} MiB",
        (LIVE.load(Ordering::Relaxed) - before) / MIB
    );
}
