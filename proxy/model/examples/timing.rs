//! Prints how long the model's steps take at 100k Services × 10 endpoints (release build:
//! `cargo run --release -p kproxy-model --example timing`). Not a test: timings are never
//! asserted.

use std::time::Instant;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kproxy_model::{
    Changes, ClusterState, Incremental, LABEL_SERVICE_NAME, ModelConfig, build, diff,
};

fn state(n: u32) -> ClusterState {
    let mut st = ClusterState::default();
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        st.insert_k8s_service(&svc);
        st.insert_k8s_slice(&slice(i, 10));
    }
    st
}

/// The slice of Service `i`, with `endpoints` endpoints.
fn slice(i: u32, endpoints: u32) -> EndpointSlice {
    let name = format!("svc-{i}");
    let eps: Vec<_> = (0..endpoints)
        .map(|e| serde_json::json!({"addresses": [format!("10.128.{}.{}", i % 250, e + 1)], "nodeName": format!("node-{}", e % 5)}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {LABEL_SERVICE_NAME: name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps
    }))
    .unwrap()
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let st = state(n);
    let config = ModelConfig {
        node_name: "node-0".into(),
        ..ModelConfig::default()
    };
    let t = Instant::now();
    let built = build(&st, &config);
    println!("build {n} services: {:?}", t.elapsed());
    let t = Instant::now();
    let again = build(&st, &config);
    let d = diff(&built.model, &again.model);
    println!(
        "build again + diff (no change): {:?} (empty: {})",
        t.elapsed(),
        d.is_empty()
    );
    let t = Instant::now();
    let cloned = st.clone();
    println!("clone ClusterState: {:?}", t.elapsed());
    drop(cloned);

    let mut inc = Incremental::default();
    let t = Instant::now();
    inc.update(&st, &Changes::All, &config);
    println!("incremental first update: {:?}", t.elapsed());
    let mut st2 = st.clone();
    let key = st2.insert_k8s_slice(&slice(500, 9));
    let t = Instant::now();
    let changes = Changes::Keys {
        services: std::collections::BTreeSet::default(),
        slices: [key].into(),
        node: false,
    };
    let update = inc.update(&st2, &changes, &config);
    println!(
        "incremental one-slice update: {:?} (full: {}, updated: {})",
        t.elapsed(),
        update.full,
        update.diff.updated.len()
    );
}
