//! The fake API server against kube's own client: the protocol details kproxy's source
//! relies on without asserting them itself.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    Api, Client,
    api::{ListParams, VersionMatch, WatchEvent, WatchParams},
};
use serde_json::{Value, json};

use super::{FakeApiServer, Kind};

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80}]},
    })
}

fn client(fake: &FakeApiServer) -> Client {
    Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
}

async fn collect_watch(
    api: &Api<Service>,
    params: &WatchParams,
    rv: &str,
) -> Vec<WatchEvent<Service>> {
    let stream = api.watch(params, rv).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), stream.try_collect::<Vec<_>>())
        .await
        .expect("the watch times out by itself")
        .unwrap()
}

fn describe(events: &[WatchEvent<Service>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(s) => format!("ADDED {}", s.metadata.name.as_deref().unwrap()),
            WatchEvent::Modified(s) => format!("MODIFIED {}", s.metadata.name.as_deref().unwrap()),
            WatchEvent::Deleted(s) => format!("DELETED {}", s.metadata.name.as_deref().unwrap()),
            WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        })
        .collect()
}

#[test]
fn writes_bump_one_counter_and_noop_updates_do_not() {
    let fake = FakeApiServer::start();
    let rv0 = fake.resource_version();
    let rv1 = fake.apply(service("a", "198.51.100.1"));
    assert_eq!(rv1, rv0 + 1);
    assert_eq!(
        fake.apply(service("a", "198.51.100.1")),
        rv1,
        "no change, no write"
    );
    let rv2 = fake.apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));
    assert_eq!(rv2, rv1 + 1);
    assert!(fake.delete(Kind::Service, "ns", "a"));
    assert!(!fake.delete(Kind::Service, "ns", "a"));
    assert_eq!(fake.resource_version(), rv2 + 1);
    assert!(
        fake.try_apply(json!({"kind": "Pod", "metadata": {"name": "p"}}))
            .is_err()
    );
    assert!(
        fake.try_apply(json!({"kind": "Service", "metadata": {}}))
            .is_err()
    );
}

#[tokio::test]
async fn lists_paginate_and_read_exact_versions() {
    let fake = FakeApiServer::start();
    let rv_a = fake.apply(service("a", "198.51.100.1"));
    fake.apply(service("b", "198.51.100.2"));
    fake.apply(service("c", "None"));
    let api: Api<Service> = Api::all(client(&fake));

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    fake.delete(Kind::Service, "ns", "c");
    // The second page is read at the first page's version: c is still there.
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items[0].metadata.name.as_deref(), Some("c"));
    assert!(second.metadata.continue_.is_none());

    let exact = ListParams::default()
        .at(&rv_a.to_string())
        .matching(VersionMatch::Exact);
    let at_a = api.list(&exact).await.unwrap();
    assert_eq!(at_a.items.len(), 1);
    assert_eq!(at_a.metadata.resource_version, Some(rv_a.to_string()));

    let fields = ListParams::default().fields("spec.clusterIP!=None");
    assert_eq!(api.list(&fields).await.unwrap().items.len(), 2);

    fake.compact();
    let err = api.list(&exact).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(s) if s.code == 410),
        "exact read after compaction"
    );
    let err = api
        .list(&ListParams::default().continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(s) if s.code == 410),
        "continue after compaction"
    );

    fake.fail_next_lists(1);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 500));
    assert!(api.list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn watches_replay_select_bookmark_and_time_out() {
    let fake = FakeApiServer::start();
    fake.set_bookmark_interval(Duration::from_millis(200));
    let start = fake.apply(service("a", "198.51.100.1"));
    let mut labelled = service("a", "198.51.100.1");
    labelled["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "x"});
    fake.apply(&labelled);
    fake.apply(service("a", "198.51.100.1"));
    fake.apply(service("b", "198.51.100.2"));
    fake.delete(Kind::Service, "ns", "b");
    let api: Api<Service> = Api::all(client(&fake));

    // Replayed from `start` through the selector: leaving it is a deletion, entering it
    // an addition; the timeout ends the watch after bookmarks.
    let params = WatchParams::default()
        .labels("!service.kubernetes.io/service-proxy-name")
        .timeout(1);
    let events = describe(&collect_watch(&api, &params, &start.to_string()).await);
    let rv = fake.resource_version();
    assert_eq!(
        events[..4],
        ["DELETED a", "ADDED a", "ADDED b", "DELETED b"],
        "{events:?}"
    );
    assert!(
        events[4..].iter().all(|e| *e == format!("BOOKMARK {rv}")),
        "{events:?}"
    );
    assert!(
        events.len() > 5,
        "periodic bookmarks and a final one: {events:?}"
    );

    // From "0": the current state as ADDED.
    let events = describe(&collect_watch(&api, &WatchParams::default().timeout(1), "0").await);
    assert_eq!(events[0], "ADDED a");

    // From before a compaction: one 410 ERROR event.
    fake.compact();
    let events = describe(&collect_watch(&api, &params, &start.to_string()).await);
    assert_eq!(events, ["ERROR 410"]);
}

#[tokio::test]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    let fake = FakeApiServer::start();
    fake.apply(service("a", "198.51.100.1"));
    let api: Api<Service> = Api::all(client(&fake));
    let params = WatchParams::streaming_lists().timeout(1);
    let events = collect_watch(&api, &params, "0").await;
    assert_eq!(describe(&events[..1]), ["ADDED a"]);
    let WatchEvent::Bookmark(end) = &events[1] else {
        panic!("{:?}", describe(&events))
    };
    assert_eq!(
        end.metadata
            .annotations
            .get("k8s.io/initial-events-end")
            .map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn dropped_watches_break_mid_stream_and_a_stopped_server_refuses() {
    let fake = FakeApiServer::start();
    fake.apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));
    let client = client(&fake);
    let api: Api<Node> = Api::all(client.clone());
    let rv = fake.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    while fake.open_watches() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.drop_watches();
    // kube ends a watch whose chunked body is cut off, so it can resume.
    let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap();
    assert!(next.is_none_or(|r| r.is_err()), "the watch must break");

    fake.stop();
    assert!(!fake.is_running());
    assert!(api.list(&ListParams::default()).await.is_err());
    fake.apply(json!({"kind": "Node", "metadata": {"name": "n2"}}));
    fake.restart();
    let nodes = api
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 1);
    let paths: Vec<_> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().all(|p| p == Kind::Node.collection_path()),
        "{paths:?}"
    );
}
