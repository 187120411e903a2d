//! The sync loop over a watched manifests directory, with the in-memory dataplane: edits
//! converge, broken input keeps the last good state, failures force a full resync.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use kproxy::{
    dataplane::FakeDataplane,
    health::Health,
    source::manifests::ManifestsSource,
    sync::{SyncConfig, SyncLoop},
};
use kproxy_model::{ModelConfig, ProxyModel, Verdict};
use tokio::sync::oneshot;

const NODE: &str = "node-a";

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]\n"
    )
}

fn slice(service: &str, ips: &[&str]) -> String {
    let mut endpoints = String::new();
    for ip in ips {
        let _ = writeln!(
            endpoints,
            "  - addresses: [{ip}]\n    conditions: {{ready: true}}\n    nodeName: {NODE}"
        );
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: demo\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

/// Endpoint IPs of the internal verdict of `demo/<name>` in the programmed model.
fn endpoints_of(model: &ProxyModel, name: &str) -> Option<Vec<String>> {
    let port = model.ports.values().find(|p| p.key.name.name == name)?;
    Some(match &port.internal {
        Verdict::Forward(set) => set.iter(port).map(|e| e.ip.to_string()).collect(),
        Verdict::Reject => vec!["REJECT".into()],
        Verdict::Drop => vec!["DROP".into()],
    })
}

async fn wait_for(dp: &FakeDataplane, what: &str, ok: impl Fn(&ProxyModel) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dp.state().programmed.as_ref().is_some_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; calls: {:?}",
            dp.state().calls
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as editors and kubectl-style tools do.
    let tmp = dir.join(format!(".{file}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(file)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
async fn manifests_edits_converge_and_bad_input_keeps_last_good_state() {
    let dir = tempdir();
    write(
        &dir,
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "198.51.100.10"),
            slice("web", &["100.64.1.2", "100.64.1.3"])
        ),
    );
    let dp = FakeDataplane::default();
    let source = ManifestsSource::new(&dir, NODE).unwrap();
    let config = SyncConfig {
        min_sync_period: Duration::from_millis(100),
        sync_period: Duration::from_hours(1),
        model: ModelConfig {
            node_name: NODE.into(),
            ..ModelConfig::default()
        },
        discover_local_addresses: false,
    };
    let health = Health::new(config.sync_period);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let sync = tokio::spawn(
        SyncLoop::new(source, dp.clone(), config, health.clone()).run(async {
            let _ = stop_rx.await;
        }),
    );

    wait_for(&dp, "web with two endpoints", |m| {
        endpoints_of(m, "web") == Some(vec!["100.64.1.2".into(), "100.64.1.3".into()])
    })
    .await;
    assert_eq!(
        dp.state().calls,
        ["full sync"],
        "the first sync is a full sync"
    );
    assert!(
        health
            .check(std::time::SystemTime::now(), kproxy::health::Probe::Healthz)
            .0,
        "healthy after the first sync"
    );

    // Scale up: a partial sync.
    write(
        &dir,
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "198.51.100.10"),
            slice("web", &["100.64.1.2", "100.64.1.3", "100.64.1.4"])
        ),
    );
    wait_for(&dp, "web with three endpoints", |m| {
        endpoints_of(m, "web").is_some_and(|e| e.len() == 3)
    })
    .await;
    assert_eq!(dp.state().calls.last(), Some(&"partial sync"));

    // A second file with broken YAML next to a good service: the good one is served, the
    // broken one is skipped, web is untouched.
    write(
        &dir,
        "api.yaml",
        &format!(
            "{}---\n{}",
            service("api", "198.51.100.11"),
            slice("api", &["100.64.1.9"])
        ),
    );
    wait_for(&dp, "api served", |m| {
        endpoints_of(m, "api") == Some(vec!["100.64.1.9".into()])
    })
    .await;
    write(
        &dir,
        "api.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: demo\nspec: [[[\n---\n",
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let model = dp.state().programmed.clone().unwrap();
    assert_eq!(
        endpoints_of(&model, "api"),
        Some(vec!["100.64.1.9".into()]),
        "last good version of api stays"
    );
    assert_eq!(endpoints_of(&model, "web").map(|e| e.len()), Some(3));

    // An invalid port (validation, not parsing): the last good version stays too.
    write(
        &dir,
        "api.yaml",
        &format!(
            "{}---\n{}",
            service("api", "198.51.100.11").replace("port: 80", "port: 70000"),
            slice("api", &["100.64.1.9"])
        ),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        endpoints_of(dp.state().programmed.as_ref().unwrap(), "api"),
        Some(vec!["100.64.1.9".into()])
    );

    // A failing dataplane: the next sync fails, the retry is a full sync.
    dp.state().fail_next = 1;
    write(
        &dir,
        "web.yaml",
        &format!(
            "{}---\n{}",
            service("web", "198.51.100.10"),
            slice("web", &[])
        ),
    );
    wait_for(&dp, "web rejects with no endpoints", |m| {
        endpoints_of(m, "web") == Some(vec!["REJECT".into()])
    })
    .await;
    let calls = dp.state().calls.clone();
    assert_eq!(
        &calls[calls.len() - 2..],
        ["partial sync", "full sync"],
        "a failed sync is retried as a full sync"
    );

    // Removing a file removes its objects.
    fs::remove_file(dir.join("api.yaml")).unwrap();
    wait_for(&dp, "api removed", |m| endpoints_of(m, "api").is_none()).await;

    stop_tx.send(()).unwrap();
    sync.await.unwrap().expect("loop ends cleanly");
    fs::remove_dir_all(&dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kproxy-sync-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
