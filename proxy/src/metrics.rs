//! Prometheus metrics: kube-proxy's names and buckets where the meaning is the same, so
//! existing dashboards and alerts keep working, plus kproxy's own under `kproxy_`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `kubeproxy_sync_proxy_rules_duration_seconds` | histogram | every sync (full, partial, or nothing to do) |
//! | `kubeproxy_sync_full_proxy_rules_duration_seconds` | histogram | full syncs |
//! | `kubeproxy_sync_partial_proxy_rules_duration_seconds` | histogram | partial syncs |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds` | gauge | last successful sync (Unix time) |
//! | `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` | gauge | last change seen (Unix time) |
//! | `kubeproxy_network_programming_duration_seconds` | histogram | EndpointSlice `last-change-trigger-time` → programmed |
//! | `kubeproxy_sync_proxy_rules_endpoint_changes_total` | counter | EndpointSlices added, changed or removed |
//! | `kubeproxy_sync_proxy_rules_service_changes_total` | counter | Services added, changed or removed |
//! | `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy}` | gauge | service ports with a Local policy dropping for lack of a local endpoint |
//! | `kubeproxy_proxy_healthz_total{code}`, `kubeproxy_proxy_livez_total{code}` | counter | health answers |
//! | `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` | counter | failed nftables syncs |
//! | `kubeproxy_conntrack_reconciler_sync_duration_seconds` | histogram | stale UDP/SCTP flow cleanups |
//! | `kubeproxy_conntrack_reconciler_deleted_entries_total` | counter | flows those cleanups deleted |
//! | `kproxy_sync_failures_total{mode}` | counter | failed syncs, any datapath |
//! | `kproxy_datapath_elements{kind}` | gauge | what the programmed model holds: `service_ports`, `frontends`, `endpoints` |
//! | `kproxy_ebpf_verdicts_total{hook,verdict}` | counter | eBPF datapath decisions, filled by the eBPF adapter (see [`Metrics::ebpf_verdicts`]) |
//!
//! kube-proxy's `ip_family` label is left out: one kproxy sync programs both families.
//! Labelled families are listed once they have a series: failures and health answers have
//! zero-valued series from the start; `kproxy_ebpf_verdicts_total` appears when the eBPF
//! datapath first reports.
//! The registry is a value ([`Metrics`]), not a global: the sync loop, the servers and
//! tests each get a handle.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kproxy_model::{Changes, ClusterState, ObjectKey, ProxyModel, Verdict};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{dataplane::ProxyMode, healthcheck::ServiceHealthServers};

/// EndpointSlice annotation with the time of the change that triggered the slice's update.
pub use kproxy_model::TRIGGER_TIME_ANNOTATION;

/// One static label.
type Label1 = [(&'static str, &'static str); 1];
/// Two static labels.
type Label2 = [(&'static str, &'static str); 2];

/// Every metric family exported from the first sync on, with its Prometheus type:
/// kube-proxy's names where the meaning is the same, then kproxy's own. (The eBPF verdict
/// family appears once the eBPF datapath reports.) Tests hold the server to this list.
pub const EXPORTED_FAMILIES: &[(&str, &str)] = &[
    ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
    (
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "histogram",
    ),
    (
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "histogram",
    ),
    (
        "kubeproxy_network_programming_duration_seconds",
        "histogram",
    ),
    ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
    (
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "gauge",
    ),
    ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
    ("kubeproxy_sync_proxy_rules_service_changes", "counter"),
    (
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "gauge",
    ),
    ("kubeproxy_proxy_healthz", "counter"),
    ("kubeproxy_proxy_livez", "counter"),
    (
        "kubeproxy_sync_proxy_rules_nftables_sync_failures",
        "counter",
    ),
    (
        "kubeproxy_conntrack_reconciler_sync_duration_seconds",
        "histogram",
    ),
    ("kubeproxy_conntrack_reconciler_deleted_entries", "counter"),
    ("kproxy_sync_failures", "counter"),
    ("kproxy_datapath_elements", "gauge"),
];

/// Every metric kproxy exports, and the registry that encodes them. Clones share the
/// metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    last_timestamp: Gauge<f64, AtomicU64>,
    last_queued_timestamp: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    endpoint_changes: Counter,
    service_changes: Counter,
    no_local_endpoints: Family<Label1, Gauge>,
    healthz: Family<Label1, Counter>,
    livez: Family<Label1, Counter>,
    nftables_sync_failures: Counter,
    conntrack_duration: Histogram,
    conntrack_deleted: Counter,
    sync_failures: Family<Label1, Counter>,
    datapath_elements: Family<Label1, Gauge>,
    ebpf_verdicts: Family<Label2, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// kube-proxy's sync buckets: 1 ms doubling, 15 buckets (up to about 16 s).
fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network programming buckets: 0.25 s, 0.5 s, then 1 s steps to 59 s, 5 s
/// steps to 115 s and 30 s steps to 300 s.
fn network_programming_buckets() -> Histogram {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((60..=115).step_by(5).map(f64::from));
    b.extend((120..=300).step_by(30).map(f64::from));
    Histogram::new(b)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            sync_duration: sync_buckets(),
            sync_full_duration: sync_buckets(),
            sync_partial_duration: sync_buckets(),
            last_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            network_programming: network_programming_buckets(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            no_local_endpoints: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            nftables_sync_failures: Counter::default(),
            conntrack_duration: sync_buckets(),
            conntrack_deleted: Counter::default(),
            sync_failures: Family::default(),
            datapath_elements: Family::default(),
            ebpf_verdicts: Family::default(),
        };
        m.register(&mut registry);
        // Zero-valued series exist from the start, so `rate()` and absence alerts work
        // before the first failure or probe.
        for mode in ["nftables", "ebpf"] {
            m.sync_failures.get_or_create(&[("mode", mode)]).inc_by(0);
        }
        for c in ["200", "503"] {
            m.healthz.get_or_create(&[("code", c)]).inc_by(0);
            m.livez.get_or_create(&[("code", c)]).inc_by(0);
        }
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    fn register(&self, r: &mut Registry) {
        let m = self;
        // Counters are registered without `_total`: the encoder appends it.
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules EndpointSlice changes",
            m.endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of service ports with a Local traffic policy and no local endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.nftables_sync_failures.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "Time taken to clear stale UDP and SCTP conntrack entries, in seconds",
            m.conntrack_duration.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted because their endpoint is no longer served",
            m.conntrack_deleted.clone(),
        );
        r.register(
            "kproxy_sync_failures",
            "Syncs that did not reach the kernel (the previous state stayed), by proxy mode",
            m.sync_failures.clone(),
        );
        r.register(
            "kproxy_datapath_elements",
            "What the last programmed model holds, by kind: service_ports, frontends, endpoints",
            m.datapath_elements.clone(),
        );
        r.register(
            "kproxy_ebpf_verdicts",
            "eBPF datapath decisions by hook and verdict (filled by the eBPF datapath)",
            m.ebpf_verdicts.clone(),
        );
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// A change was seen (a sync is queued).
    pub fn queued(&self, at: SystemTime) {
        self.last_queued_timestamp.set(unix_seconds(at));
    }

    /// A `/healthz` answer.
    pub fn healthz(&self, ok: bool) {
        self.healthz.get_or_create(&[("code", code(ok))]).inc();
    }

    /// A `/livez` answer.
    pub fn livez(&self, ok: bool) {
        self.livez.get_or_create(&[("code", code(ok))]).inc();
    }

    /// kproxy's eBPF verdict counters, for the eBPF datapath to fill. Labels: `hook` (the
    /// program: `connect4`, `sendmsg4`, `tc_ingress`...) and `verdict` (`forward`, `drop`,
    /// `reject`, `no_service`...). The datapath keeps per-CPU counters in a map and adds
    /// their growth since its last read with `inc_by` (read at every sync or scrape), so
    /// the family stays a monotonic Prometheus counter across agent restarts of the map.
    pub fn ebpf_verdicts(&self) -> &Family<Label2, Counter> {
        &self.ebpf_verdicts
    }

    fn synced(&self, full: Option<bool>, elapsed: Duration, at: SystemTime, model: &ProxyModel) {
        let secs = elapsed.as_secs_f64();
        self.sync_duration.observe(secs);
        match full {
            Some(true) => self.sync_full_duration.observe(secs),
            Some(false) => self.sync_partial_duration.observe(secs),
            None => {}
        }
        self.last_timestamp.set(unix_seconds(at));
        let (mut internal, mut external) = (0, 0);
        let (mut frontends, mut endpoints) = (0, 0);
        for port in model.ports.values() {
            if port.internal_policy_local && port.internal == Verdict::Drop {
                internal += 1;
            }
            if port.external_policy_local
                && port
                    .external
                    .as_ref()
                    .is_some_and(|e| e.verdict == Verdict::Drop)
            {
                external += 1;
            }
            frontends += port.frontends.len();
            endpoints += port.endpoints.len();
        }
        let set =
            |family: &Family<Label1, Gauge>, label: [(&'static str, &'static str); 1], n: usize| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
        set(
            &self.no_local_endpoints,
            [("traffic_policy", "internal")],
            internal,
        );
        set(
            &self.no_local_endpoints,
            [("traffic_policy", "external")],
            external,
        );
        set(
            &self.datapath_elements,
            [("kind", "service_ports")],
            model.ports.len(),
        );
        set(&self.datapath_elements, [("kind", "frontends")], frontends);
        set(&self.datapath_elements, [("kind", "endpoints")], endpoints);
    }
}

fn code(ok: bool) -> &'static str {
    if ok { "200" } else { "503" }
}

/// What the sync loop reports to, besides the health state: metrics and the
/// healthCheckNodePort servers, both of which follow the programmed model. Owned by the
/// loop (it keeps the previous snapshot to count changes).
#[derive(Debug, Default)]
pub struct SyncObserver {
    metrics: Metrics,
    service_health: Option<ServiceHealthServers>,
    /// Identity (the `Arc`'s address) of every Service and EndpointSlice seen, to count
    /// changes when a source cannot say what changed. Addresses, not the objects: holding
    /// the snapshot would make the source copy its whole state on its next change.
    seen: [HashMap<ObjectKey, usize>; 2],
    /// Trigger times of EndpointSlice changes not yet programmed.
    pending_triggers: Vec<SystemTime>,
    /// The datapath's verdict counters at the last read, to add only their growth.
    last_verdicts: HashMap<(&'static str, &'static str), u64>,
    /// Changes triggered before this are not ours to measure (objects listed at start).
    started: Option<SystemTime>,
}

impl SyncObserver {
    /// An observer reporting to `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            started: Some(SystemTime::now()),
            ..Self::default()
        }
    }

    /// Also keep these healthCheckNodePort servers in step with each programmed model.
    #[must_use]
    pub fn with_service_health(mut self, servers: ServiceHealthServers) -> Self {
        self.service_health = Some(servers);
        self
    }

    /// The metrics reported to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A change was seen.
    pub fn queued(&self) {
        self.metrics.queued(SystemTime::now());
    }

    /// A new snapshot: counts the Services and EndpointSlices that changed since the last
    /// one and remembers the trigger times of changed slices.
    pub fn snapshot(&mut self, state: &ClusterState, changes: &Changes) {
        let started = *self.started.get_or_insert_with(SystemTime::now);
        let (services, slices) = match changes {
            Changes::Keys {
                services, slices, ..
            } => {
                refresh(&mut self.seen[0], &state.services, services.iter());
                refresh(&mut self.seen[1], &state.slices, slices.iter());
                (services.clone(), slices.clone())
            }
            Changes::All => (
                changed_all(&mut self.seen[0], &state.services),
                changed_all(&mut self.seen[1], &state.slices),
            ),
        };
        self.metrics.service_changes.inc_by(services.len() as u64);
        self.metrics.endpoint_changes.inc_by(slices.len() as u64);
        // As kube-proxy: deletions carry no trigger time of their own, and changes from
        // before this agent started are not its latency. Annotations often have whole
        // seconds: a change in the second the agent started counts.
        let started = UNIX_EPOCH
            + Duration::from_secs(
                started
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            );
        for key in &slices {
            let Some(slice) = state.slices.get(key) else {
                continue;
            };
            if let Some(t) = slice.trigger_time().filter(|t| *t >= started) {
                self.pending_triggers.push(t);
            }
        }
    }

    /// The kernel now matches `model`. `full`: Some(true) full sync, Some(false) partial,
    /// None when nothing needed changing.
    pub fn synced(&mut self, full: Option<bool>, elapsed: Duration, model: &ProxyModel) {
        let now = SystemTime::now();
        self.metrics.synced(full, elapsed, now, model);
        for t in self.pending_triggers.drain(..) {
            let latency = now.duration_since(t).unwrap_or_default();
            self.metrics
                .network_programming
                .observe(latency.as_secs_f64());
        }
        if let Some(servers) = &mut self.service_health {
            servers.reconcile(model);
        }
    }

    /// The datapath's verdict counters now, `(hook, verdict, total)`: their growth since the
    /// last read goes to `kproxy_ebpf_verdicts_total` (a total below the last one means the
    /// counter map was recreated, and counts from zero).
    pub fn verdicts(&mut self, totals: &[(&'static str, &'static str, u64)]) {
        for &(hook, verdict, total) in totals {
            let last = self
                .last_verdicts
                .insert((hook, verdict), total)
                .unwrap_or(0);
            let growth = if total >= last { total - last } else { total };
            self.metrics
                .ebpf_verdicts
                .get_or_create(&[("hook", hook), ("verdict", verdict)])
                .inc_by(growth);
        }
    }

    /// A sync failed.
    pub fn failed(&self, mode: ProxyMode) {
        let label = match mode {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ebpf => "ebpf",
        };
        self.metrics
            .sync_failures
            .get_or_create(&[("mode", label)])
            .inc();
        if mode == ProxyMode::Nftables {
            self.metrics.nftables_sync_failures.inc();
        }
    }

    /// Stale flows were cleared (`deleted` flows, or None when the cleanup failed).
    pub fn stale_flows_cleared(&self, elapsed: Duration, deleted: Option<usize>) {
        self.metrics
            .conntrack_duration
            .observe(elapsed.as_secs_f64());
        if let Some(n) = deleted {
            self.metrics.conntrack_deleted.inc_by(n as u64);
        }
    }
}

/// Records the identity of `keys` in `seen`.
fn refresh<'a, T>(
    seen: &mut HashMap<ObjectKey, usize>,
    store: &std::collections::BTreeMap<ObjectKey, Arc<T>>,
    keys: impl Iterator<Item = &'a ObjectKey>,
) {
    for k in keys {
        match store.get(k) {
            Some(v) => seen.insert(k.clone(), Arc::as_ptr(v) as usize),
            None => seen.remove(k),
        };
    }
}

/// Keys added, removed, or whose object is another `Arc` than last time; `seen` becomes
/// the identities of `store`. (An address reused by a new object for the same key goes
/// uncounted: this only feeds change counters.)
fn changed_all<T>(
    seen: &mut HashMap<ObjectKey, usize>,
    store: &std::collections::BTreeMap<ObjectKey, Arc<T>>,
) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    let mut next = HashMap::with_capacity(store.len());
    for (k, v) in store {
        let id = Arc::as_ptr(v) as usize;
        if seen.get(k) != Some(&id) {
            out.insert(k.clone());
        }
        next.insert(k.clone(), id);
    }
    out.extend(seen.keys().filter(|k| !store.contains_key(*k)).cloned());
    *seen = next;
    out
}

/// Distinct local ready endpoint IPs per Service, as kube-proxy counts them for
/// healthCheckNodePort answers (an IP serving two ports counts once). Per family, the larger.
pub fn local_ready_endpoints(model: &ProxyModel) -> std::collections::BTreeMap<ObjectKey, usize> {
    let mut ips: std::collections::BTreeMap<(ObjectKey, bool), BTreeSet<IpAddr>> =
        std::collections::BTreeMap::new();
    for port in model.ports.values() {
        let key = ObjectKey::new(&port.key.name.namespace, &port.key.name.name);
        let set = ips.entry((key, port.cluster_ip.is_ipv4())).or_default();
        set.extend(
            port.endpoints
                .iter()
                .filter(|e| e.is_local && e.ready)
                .map(|e| e.ip),
        );
    }
    let mut out = std::collections::BTreeMap::new();
    for ((key, _), set) in ips {
        let n: &mut usize = out.entry(key).or_default();
        *n = (*n).max(set.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
    }

    #[test]
    fn names_types_and_buckets_are_kube_proxys() {
        let m = Metrics::new();
        m.healthz(true);
        m.livez(false);
        let obs = SyncObserver::new(m.clone());
        obs.failed(ProxyMode::Nftables);
        let mut obs = obs;
        obs.synced(Some(true), Duration::from_millis(3), &ProxyModel::default());
        // A family appears once it has a member; the eBPF datapath adds them.
        m.ebpf_verdicts()
            .get_or_create(&[("hook", "connect4"), ("verdict", "forward")])
            .inc();
        let text = m.encode();
        let ebpf = [("kproxy_ebpf_verdicts", "counter")];
        for &(name, kind) in EXPORTED_FAMILIES.iter().chain(&ebpf) {
            assert_eq!(type_of(&text, name), Some(kind), "{name} in\n{text}");
        }
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kproxy_sync_failures_total{mode=\"nftables\"} 1"),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1"));
        assert!(
            text.contains(
                "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le=\"16.384\"} 1"
            ),
            "15 exponential buckets from 1 ms: {text}"
        );
        assert!(
            text.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"115.0\"} 0"),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_partial_proxy_rules_duration_seconds_count 0"));
    }

    #[test]
    fn changes_are_counted_once_and_trigger_times_measured_after_start() {
        use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
        use kproxy_model::{Interner, ServiceInfo, SliceInfo};
        let m = Metrics::new();
        let mut obs = SyncObserver::new(m.clone());
        let slice = |name: &str, trigger: &str| -> Arc<SliceInfo> {
            let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns",
                    "annotations": {TRIGGER_TIME_ANNOTATION: trigger}},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap();
            Arc::new(SliceInfo::from_k8s(&slice, &mut Interner::default()))
        };
        let svc: Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "s", "namespace": "ns"}}),
        )
        .unwrap();
        let svc = Arc::new(ServiceInfo::from_k8s(&svc));
        let mut state = ClusterState::default();
        state.services.insert(ObjectKey::new("ns", "s"), svc);
        state.slices.insert(
            ObjectKey::new("ns", "old"),
            slice("old", "2001-01-01T00:00:00Z"),
        );
        obs.snapshot(&state, &Changes::All);
        obs.snapshot(&state.clone(), &Changes::All);
        assert_eq!(
            m.service_changes.get(),
            1,
            "an unchanged snapshot counts nothing"
        );
        assert_eq!(m.endpoint_changes.get(), 1);
        assert!(
            obs.pending_triggers.is_empty(),
            "changes from before the start are not measured"
        );
        let later = crate::health::rfc3339(SystemTime::now() + Duration::from_secs(2));
        state
            .slices
            .insert(ObjectKey::new("ns", "old"), slice("old", &later));
        state
            .slices
            .insert(ObjectKey::new("ns", "new"), slice("new", "garbage"));
        obs.snapshot(&state, &Changes::All);
        assert_eq!(m.endpoint_changes.get(), 3);
        assert_eq!(obs.pending_triggers.len(), 1);
        state.slices.clear();
        obs.snapshot(&state, &Changes::All);
        assert_eq!(m.endpoint_changes.get(), 5, "removals count");
        obs.synced(
            Some(false),
            Duration::from_millis(1),
            &ProxyModel::default(),
        );
        assert!(obs.pending_triggers.is_empty());
        assert!(
            m.encode()
                .contains("kubeproxy_network_programming_duration_seconds_count 1"),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn ebpf_verdicts_add_growth_and_survive_a_map_reset() {
        let m = Metrics::new();
        let mut obs = SyncObserver::new(m.clone());
        let get = |m: &Metrics, v: &'static str| {
            m.ebpf_verdicts()
                .get_or_create(&[("hook", "socket"), ("verdict", v)])
                .get()
        };
        obs.verdicts(&[("socket", "translated", 5), ("socket", "rejected", 1)]);
        obs.verdicts(&[("socket", "translated", 12), ("socket", "rejected", 1)]);
        assert_eq!(get(&m, "translated"), 12);
        assert_eq!(get(&m, "rejected"), 1);
        // A new agent with fresh maps starts from zero again: its totals count in full.
        obs.verdicts(&[("socket", "translated", 3)]);
        assert_eq!(get(&m, "translated"), 15);
        assert!(
            m.encode()
                .contains("kproxy_ebpf_verdicts_total{hook=\"socket\",verdict=\"translated\"} 15"),
            "{}",
            m.encode()
        );
    }
}
