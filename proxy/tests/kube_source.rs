//! The Kubernetes API source against the fake API server: initial lists, selectors,
//! convergence, and disruptions (dropped watches, 410 Gone, an API server that is away)
//! that must never empty the state.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread::ThreadId,
    time::Duration,
};

use kproxy::source::{
    Source, SourceError,
    kube::{KubeSource, KubeSourceConfig},
};
use kproxy_model::{Changes, ClusterState, ObjectKey};
use kproxy_tests::fakeapi::{FakeApiServer, Kind};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{Level, field::Field};
use tracing_subscriber::{filter::Targets, layer::SubscriberExt};

const NODE: &str = "n1";
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const DEFAULT_LABELS: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

fn service(name: &str, cluster_ip: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

fn slice(name: &str, service: &str, ip: &str, labels: &Value) -> Value {
    let mut labels = labels.clone();
    labels["kubernetes.io/service-name"] = json!(service);
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
    })
}

/// A fake holding Services `a` and `b`, their slices and this node (plus another node).
fn populated_fake() -> FakeApiServer {
    let fake = FakeApiServer::start();
    fake.apply(service("a", "198.51.100.1", &json!({})));
    fake.apply(service("b", "198.51.100.2", &json!({})));
    fake.apply(slice("a-1", "a", "10.0.0.1", &json!({})));
    fake.apply(slice("b-1", "b", "10.0.0.2", &json!({})));
    fake.apply(node(NODE, "z1"));
    fake.apply(node("other", "z2"));
    fake
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kproxy-kube-source-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A source reading `fake` through a kubeconfig file.
async fn start_source(fake: &FakeApiServer, proxy_name: Option<&str>) -> KubeSource {
    captured_logs();
    let dir = TempDir::new();
    let config = KubeSourceConfig {
        kubeconfig: Some(fake.write_kubeconfig(&dir.0)),
        master: None,
        node_name: NODE.into(),
        proxy_name: proxy_name.map(Into::into),
    };
    // The kubeconfig is read during start; the directory can go afterwards.
    KubeSource::start(config).await.expect("source starts")
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ns", name)
}

fn keys<V>(map: &std::collections::BTreeMap<ObjectKey, V>) -> BTreeSet<String> {
    map.keys().map(|k| k.name.to_string()).collect()
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn describe(state: &ClusterState) -> String {
    format!(
        "services {:?}, slices {:?}, node {:?}",
        keys(&state.services),
        keys(&state.slices),
        state.node.as_ref().map(|n| n.name().to_owned())
    )
}

fn cluster_ip(state: &ClusterState, name: &str) -> Option<String> {
    state
        .services
        .get(&key(name))?
        .cluster_ips()
        .first()
        .map(ToString::to_string)
}

fn zone(state: &ClusterState) -> Option<String> {
    state.node.as_ref()?.zone().map(str::to_owned)
}

/// Waits (at most 20 s) for a snapshot satisfying `done`, checking `invariant` on every
/// snapshot taken on the way.
async fn wait_until(
    source: &mut KubeSource,
    what: &str,
    mut invariant: impl FnMut(&ClusterState),
    mut done: impl FnMut(&ClusterState) -> bool,
) -> ClusterState {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    loop {
        if let Some(state) = source.snapshot() {
            invariant(&state);
            if done(&state) {
                return state;
            }
            last = Some(describe(&state));
        }
        tokio::time::timeout_at(deadline, source.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; last snapshot: {last:?}"))
            .expect("the source keeps running");
    }
}

/// Every snapshot must still hold the baseline: Services a and b, their slices, the node.
fn complete(state: &ClusterState) {
    for name in ["a", "b"] {
        assert!(
            state.services.contains_key(&key(name)),
            "lost Service {name}: {}",
            describe(state)
        );
    }
    for name in ["a-1", "b-1"] {
        assert!(
            state.slices.contains_key(&key(name)),
            "lost slice {name}: {}",
            describe(state)
        );
    }
    assert!(state.node.is_some(), "lost the node: {}", describe(state));
}

fn baseline(state: &ClusterState) -> bool {
    keys(&state.services) == names(&["a", "b"])
        && keys(&state.slices) == names(&["a-1", "b-1"])
        && zone(state).as_deref() == Some("z1")
}

async fn synced(fake: &FakeApiServer) -> KubeSource {
    let mut source = start_source(fake, None).await;
    wait_until(&mut source, "the initial lists", |_| {}, baseline).await;
    wait_for_watches(fake, 3).await;
    source
}

/// Waits until the fake has `n` open watches, so a disruption hits running watches.
async fn wait_for_watches(fake: &FakeApiServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.open_watches() < n {
        assert!(
            Instant::now() < deadline,
            "only {} watches opened",
            fake.open_watches()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn watch_requests(fake: &FakeApiServer) -> usize {
    fake.requests().iter().filter(|r| r.is_watch()).count()
}

fn list_requests(fake: &FakeApiServer, kind: Kind) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path == kind.collection_path() && !r.is_watch())
        .count()
}

#[tokio::test]
async fn first_snapshot_waits_for_every_initial_list() {
    let fake = populated_fake();
    fake.fail_next_lists_of(Kind::Node, 3);
    let mut source = start_source(&fake, None).await;

    let mut none_while_node_list_failing = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        // The source's tasks run on this thread, so nothing happens between these two.
        let node_list_pending = fake.pending_list_failures() > 0;
        match source.snapshot() {
            Some(state) => {
                assert!(
                    !node_list_pending,
                    "snapshot before the Node list succeeded"
                );
                break state;
            }
            None if node_list_pending => none_while_node_list_failing += 1,
            None => {}
        }
        tokio::time::timeout_at(deadline, source.changed())
            .await
            .expect("the initial lists complete")
            .unwrap();
    };
    assert!(none_while_node_list_failing > 0);
    // The other inputs listed meanwhile, and were not served alone.
    assert!(list_requests(&fake, Kind::Service) >= 1);
    assert!(
        baseline(&first),
        "first snapshot incomplete: {}",
        describe(&first)
    );
    assert_eq!(cluster_ip(&first, "a").as_deref(), Some("198.51.100.1"));
    assert_eq!(first.node.as_ref().unwrap().name(), NODE);
}

/// Takes snapshots (with their changes) until `done` holds for one; returns the changes of
/// every snapshot taken, merged.
async fn changes_until(
    source: &mut KubeSource,
    what: &str,
    done: impl Fn(&ClusterState) -> bool,
) -> Changes {
    let mut merged = Changes::none();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((state, changes)) = source.snapshot_changes() {
            merged.merge(changes);
            if done(&state) {
                return merged;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let _ = tokio::time::timeout(Duration::from_millis(200), source.changed()).await;
    }
}

#[tokio::test]
async fn one_slice_change_reports_only_that_slice() {
    let fake = populated_fake();
    let mut source = synced(&fake).await;
    // The first snapshot is a whole new state; after it, nothing is pending.
    let first = changes_until(&mut source, "the first snapshot", baseline).await;
    assert_eq!(first, Changes::All);
    assert_eq!(source.snapshot_changes().unwrap().1, Changes::none());

    fake.apply(slice("b-1", "b", "10.0.0.99", &json!({})));
    let changes = changes_until(&mut source, "the slice change", endpoint_changed).await;
    assert_eq!(
        changes,
        Changes::Keys {
            services: BTreeSet::new(),
            slices: BTreeSet::from([key("b-1")]),
            node: false,
        }
    );

    // A change to a field the proxy does not read (an annotation) is no change at all.
    let mut annotated = service("a", "198.51.100.1", &json!({}));
    annotated["metadata"]["annotations"] = json!({"note": "unread"});
    fake.apply(annotated);
    fake.apply(service("z", "198.51.100.26", &json!({})));
    let changes = changes_until(&mut source, "Service z", |s| {
        s.services.contains_key(&key("z"))
    })
    .await;
    assert_eq!(
        changes,
        Changes::Keys {
            services: BTreeSet::from([key("z")]),
            slices: BTreeSet::new(),
            node: false,
        }
    );
}

/// Whether slice b-1 now holds the new endpoint: the model sees it.
fn endpoint_changed(state: &ClusterState) -> bool {
    let built = kproxy_model::build(
        state,
        &kproxy_model::ModelConfig {
            node_name: NODE.into(),
            ..kproxy_model::ModelConfig::default()
        },
    );
    built.model.ports.values().any(|port| {
        port.endpoints
            .iter()
            .any(|ep| ep.ip.to_string() == "10.0.0.99")
    })
}

#[tokio::test]
async fn an_empty_node_list_completes_the_first_sync() {
    let fake = FakeApiServer::start();
    fake.apply(service("a", "198.51.100.1", &json!({})));
    let mut source = start_source(&fake, None).await;
    let state = wait_until(&mut source, "the initial lists", |_| {}, |_| true).await;
    assert_eq!(keys(&state.services), names(&["a"]));
    assert!(state.node.is_none());

    fake.apply(node(NODE, "z9"));
    wait_until(
        &mut source,
        "the node",
        |_| {},
        |s| zone(s).as_deref() == Some("z9"),
    )
    .await;
}

#[tokio::test]
async fn requests_carry_kube_proxys_selectors() {
    let fake = populated_fake();
    // Through --master alone this time, no kubeconfig.
    let config = KubeSourceConfig {
        kubeconfig: None,
        master: Some(fake.url()),
        node_name: NODE.into(),
        proxy_name: None,
    };
    captured_logs();
    let mut source = KubeSource::start(config).await.unwrap();
    wait_until(&mut source, "the initial lists", |_| {}, baseline).await;
    wait_for_watches(&fake, 3).await;

    let requests = fake.requests();
    let expected = [
        (
            Kind::Service,
            Some(DEFAULT_LABELS),
            Some("spec.clusterIP!=None"),
        ),
        (Kind::EndpointSlice, Some(DEFAULT_LABELS), None),
        (Kind::Node, None, Some("metadata.name=n1")),
    ];
    for (kind, labels, fields) in expected {
        let of_kind: Vec<_> = requests
            .iter()
            .filter(|r| r.path == kind.collection_path())
            .collect();
        assert!(
            of_kind.iter().any(|r| !r.is_watch()),
            "no {kind} list: {of_kind:?}"
        );
        assert!(
            of_kind.iter().any(|r| r.is_watch()),
            "no {kind} watch: {of_kind:?}"
        );
        for request in of_kind {
            assert_eq!(request.param("labelSelector"), labels, "{}", request.uri);
            assert_eq!(request.param("fieldSelector"), fields, "{}", request.uri);
            if request.is_watch() {
                assert_eq!(
                    request.param("allowWatchBookmarks"),
                    Some("true"),
                    "{}",
                    request.uri
                );
                assert!(
                    request.param("resourceVersion").is_some(),
                    "{}",
                    request.uri
                );
            }
        }
    }
    // Only the three collections, nothing else.
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
    assert_eq!(
        requests
            .iter()
            .map(|r| r.path.as_str())
            .collect::<BTreeSet<_>>(),
        Kind::ALL
            .iter()
            .map(|k| k.collection_path())
            .collect::<BTreeSet<_>>()
    );
}

#[tokio::test]
async fn changes_converge() {
    let fake = populated_fake();
    let mut source = synced(&fake).await;

    // Added, with fields the source never keeps (it keeps no API object at all).
    let mut c = service("c", "198.51.100.3", &json!({}));
    c["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
        "keep": "me",
    });
    c["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    fake.apply(c);
    fake.apply(slice("c-1", "c", "10.0.0.3", &json!({})));
    let state = wait_until(&mut source, "Service c", complete, |s| {
        s.services.contains_key(&key("c")) && s.slices.contains_key(&key("c-1"))
    })
    .await;
    assert_eq!(cluster_ip(&state, "c").as_deref(), Some("198.51.100.3"));

    // Changed.
    fake.apply(service("a", "198.51.100.11", &json!({})));
    fake.apply(node(NODE, "z7"));
    wait_until(&mut source, "the changes", complete, |s| {
        cluster_ip(s, "a").as_deref() == Some("198.51.100.11") && zone(s).as_deref() == Some("z7")
    })
    .await;

    // Deleted; another node's changes are not this source's business.
    assert!(fake.delete(Kind::Service, "ns", "c"));
    assert!(fake.delete(Kind::EndpointSlice, "ns", "c-1"));
    fake.apply(node("other", "z8"));
    let state = wait_until(
        &mut source,
        "the deletions",
        |_| {},
        |s| !s.services.contains_key(&key("c")) && !s.slices.contains_key(&key("c-1")),
    )
    .await;
    assert_eq!(keys(&state.services), names(&["a", "b"]));
    assert_eq!(state.node.as_ref().unwrap().name(), NODE);

    assert!(fake.delete(Kind::Node, "", NODE));
    wait_until(
        &mut source,
        "the node's deletion",
        |_| {},
        |s| s.node.is_none(),
    )
    .await;
}

#[tokio::test]
async fn dropped_watches_never_empty_the_state() {
    let fake = populated_fake();
    let mut source = synced(&fake).await;
    let lists_before = list_requests(&fake, Kind::Service);
    let watches_before = watch_requests(&fake);

    for round in 0..4 {
        wait_for_watches(&fake, 3).await;
        fake.drop_watches();
        let ip = format!("198.51.100.{}", 100 + round);
        fake.apply(service("a", &ip, &json!({})));
        fake.apply(slice(&format!("x-{round}"), "a", "10.0.1.1", &json!({})));
        wait_until(
            &mut source,
            "changes after a dropped watch",
            complete,
            |s| {
                cluster_ip(s, "a").as_deref() == Some(ip.as_str())
                    && s.slices.contains_key(&key(&format!("x-{round}")))
            },
        )
        .await;
    }
    // The watches resumed from their resourceVersion: no relist was needed.
    assert_eq!(list_requests(&fake, Kind::Service), lists_before);
    // ... and each drop did cut all three. The Node watch of the last round carries no
    // change the loop waited for, so let all three reconnect before counting.
    wait_for_watches(&fake, 3).await;
    assert!(watch_requests(&fake) >= watches_before + 4 * 3);
}

#[tokio::test]
async fn expired_resource_version_relists_without_emptying() {
    let fake = populated_fake();
    let mut source = synced(&fake).await;
    let lists_before: Vec<_> = Kind::ALL.iter().map(|&k| list_requests(&fake, k)).collect();

    fake.compact();
    fake.drop_watches();
    fake.apply(service("c", "198.51.100.3", &json!({})));
    fake.delete(Kind::EndpointSlice, "ns", "b-1");
    fake.apply(slice("b-2", "b", "10.0.0.22", &json!({})));
    let state = wait_until(
        &mut source,
        "the relist",
        |s| {
            // b-1 goes and b-2 comes in one swap; nothing else may ever be missing.
            for name in ["a", "b"] {
                assert!(
                    s.services.contains_key(&key(name)),
                    "lost {name}: {}",
                    describe(s)
                );
            }
            assert!(
                s.slices.contains_key(&key("a-1")),
                "lost a-1: {}",
                describe(s)
            );
            assert!(
                s.slices.contains_key(&key("b-1")) || s.slices.contains_key(&key("b-2")),
                "lost b's slices: {}",
                describe(s)
            );
            assert!(s.node.is_some(), "lost the node: {}", describe(s));
        },
        |s| {
            keys(&s.services) == names(&["a", "b", "c"])
                && keys(&s.slices) == names(&["a-1", "b-2"])
                && zone(s).as_deref() == Some("z1")
        },
    )
    .await;
    assert!(state.node.is_some());
    // Every input got 410 and listed again.
    for (kind, before) in Kind::ALL.iter().zip(lists_before) {
        wait_for(
            || list_requests(&fake, *kind) > before,
            &format!("a {kind} relist"),
        )
        .await;
    }
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn objects_for_other_proxies_and_headless_ones_are_left_out() {
    let fake = FakeApiServer::start();
    let other = json!({PROXY_NAME_LABEL: "other"});
    fake.apply(service("plain", "198.51.100.1", &json!({})));
    fake.apply(service("others", "198.51.100.2", &other));
    fake.apply(service("headless", "None", &json!({})));
    fake.apply(slice("plain-1", "plain", "10.0.0.1", &json!({})));
    fake.apply(slice("others-1", "others", "10.0.0.2", &other));
    fake.apply(slice(
        "headless-1",
        "headless",
        "10.0.0.3",
        &json!({HEADLESS_LABEL: ""}),
    ));
    fake.apply(node(NODE, "z1"));

    let mut source = start_source(&fake, None).await;
    let only_plain = |s: &ClusterState| {
        keys(&s.services) == names(&["plain"]) && keys(&s.slices) == names(&["plain-1"])
    };
    let state = wait_until(&mut source, "the initial lists", |_| {}, |_| true).await;
    assert!(only_plain(&state), "{}", describe(&state));

    // Labelled away and back while watching: the watch sees it leave and come back.
    fake.apply(service("plain", "198.51.100.1", &other));
    wait_until(
        &mut source,
        "plain to leave",
        |_| {},
        |s| s.services.is_empty(),
    )
    .await;
    fake.apply(service("plain", "198.51.100.1", &json!({})));
    wait_until(&mut source, "plain to come back", |_| {}, only_plain).await;

    // A proxy with a name serves exactly the objects labelled with it.
    let mut named = start_source(&fake, Some("other")).await;
    let state = wait_until(&mut named, "the named proxy's lists", |_| {}, |_| true).await;
    assert_eq!(
        keys(&state.services),
        names(&["others"]),
        "{}",
        describe(&state)
    );
    assert_eq!(
        keys(&state.slices),
        names(&["others-1"]),
        "{}",
        describe(&state)
    );
    let named_labels = format!("{PROXY_NAME_LABEL}=other,!{HEADLESS_LABEL}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.param("labelSelector") == Some(named_labels.as_str()))
    );
}

/// One log event.
#[derive(Debug, Clone)]
struct Logged {
    thread: ThreadId,
    level: Level,
    target: String,
    message: String,
}

/// Records every event into a shared list.
struct Capture(Arc<Mutex<Vec<Logged>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(Logged {
            thread: std::thread::current().id(),
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: message.0,
        });
    }
}

/// kproxy's log events, from every test; each test tells its own by thread, since a
/// `#[tokio::test]` runs the source's tasks on the test's thread. One global subscriber,
/// installed before any test starts a source: thread-local subscribers in parallel tests
/// race with tracing's per-callsite interest cache and lose events.
fn captured_logs() -> Arc<Mutex<Vec<Logged>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<Logged>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(Targets::new().with_target("kproxy", Level::DEBUG))
            .with(Capture(logs.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
    .clone()
}

/// This test's log events so far.
fn my_logs(logs: &Mutex<Vec<Logged>>) -> Vec<Logged> {
    let me = std::thread::current().id();
    logs.lock()
        .unwrap()
        .iter()
        .filter(|l| l.thread == me)
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_api_server_outage_keeps_the_state_and_is_logged_once() {
    let logs = captured_logs();
    let fake = populated_fake();
    let mut source = synced(&fake).await;
    let before = source.snapshot().expect("synced");

    fake.stop();
    // Long enough for several retries of every watch (backoff starts at 0.8 s).
    let away_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < away_until {
        let state = source.snapshot().expect("the state survives the outage");
        assert_eq!(describe(&state), describe(&before));
        for (k, svc) in &state.services {
            assert!(
                Arc::ptr_eq(svc, &before.services[k]),
                "{k} was replaced during the outage"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fake.apply(service("a", "198.51.100.11", &json!({})));
    fake.delete(Kind::Service, "ns", "b");
    fake.apply(node(NODE, "z5"));
    fake.restart();
    wait_until(
        &mut source,
        "the changes made while away",
        |_| {},
        |s| {
            keys(&s.services) == names(&["a"])
                && cluster_ip(s, "a").as_deref() == Some("198.51.100.11")
                && zone(s).as_deref() == Some("z5")
        },
    )
    .await;
    let recovered = |logs: &[Logged]| {
        logs.iter().any(|l| {
            l.level == Level::INFO && l.message.contains("answers lists and watches again")
        })
    };
    wait_for(|| recovered(&my_logs(&logs)), "the recovery log").await;

    let logs = my_logs(&logs);
    let ours = |level| {
        logs.iter()
            .filter(move |l| l.level == level && l.target.starts_with("kproxy"))
    };
    let warnings: Vec<_> = ours(Level::WARN).collect();
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:#?}");
    assert!(
        warnings[0].message.contains("cannot list or watch"),
        "{warnings:?}"
    );
    assert_eq!(ours(Level::ERROR).count(), 0, "{logs:#?}");
    let recoveries = ours(Level::INFO)
        .filter(|l| l.message.contains("again"))
        .count();
    assert_eq!(recoveries, 1, "{logs:#?}");
    // ... although the watches failed again and again.
    let retries = ours(Level::DEBUG)
        .filter(|l| l.message.contains("failing") || l.message.contains("retry"))
        .count();
    assert!(retries >= 3, "expected several failed retries: {logs:#?}");
}

#[tokio::test]
async fn bad_configuration_fails_to_start() {
    let missing = KubeSourceConfig {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        node_name: NODE.into(),
        ..KubeSourceConfig::default()
    };
    assert!(matches!(
        KubeSource::start(missing).await,
        Err(SourceError::Start { .. })
    ));
    let no_node = KubeSourceConfig {
        master: Some("http://127.0.0.1:1".into()),
        ..KubeSourceConfig::default()
    };
    assert!(matches!(
        KubeSource::start(no_node).await,
        Err(SourceError::Start { .. })
    ));
    let bad_url = KubeSourceConfig {
        master: Some("not a url".into()),
        node_name: NODE.into(),
        ..KubeSourceConfig::default()
    };
    assert!(matches!(
        KubeSource::start(bad_url).await,
        Err(SourceError::Start { .. })
    ));
}
