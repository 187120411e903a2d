//! Model → map operations, make-before-break.
//!
//! The reconciler remembers what the maps hold (recovered from them at start, then kept
//! up to date after every successful operation) and writes only differences.
//!
//! # Update order
//!
//! Within one sync:
//! 1. backends the new slots need are written (new ids only; an id never changes address);
//! 2. affinity-match entries for new (service, backend) pairs;
//! 3. per frontend: slots `1..=new_count` whose backend changed, then the frontend entry
//!    (slot 0) with the new count and flags: the commit point for readers;
//! 4. frontends no longer wanted lose their slot-0 entry (readers stop finding them); then
//!    ClusterIPs: one enters `KP_CLUSTER_IPS_V1` only now, after its frontends, so a
//!    connect to a new service's port is never refused in between; it leaves once no
//!    service port has it any more (at once: a stale entry only refuses connections to an
//!    address no service has);
//! 5. affinity-match entries for pairs that went away;
//! 6. slots beyond a frontend's new count, and backends no slot references any more, are
//!    *retired*, not deleted.
//!
//! Retired elements are deleted by the first sync that starts at least [`GRACE`] later.
//! That closes the window Cilium leaves open (ebpf-peers.md §1.5): a program that read a
//! frontend entry just before its count shrank, or before it was removed, still finds
//! every slot and backend that entry pointed to, because a program run (one RCU read
//! section, microseconds) is over long before the grace period. A retired element that is
//! wanted again before its deletion is simply reused.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use kproxy_common::{
    Addr, AffinityMatchKey, Backend, FLAG_CLUSTER_IP, FLAG_DROP, FLAG_EXTERNAL_IP,
    FLAG_LOAD_BALANCER, FLAG_MASQUERADE, FLAG_NODE_PORT, FLAG_REJECT, FLAG_SOURCE_RANGES,
    SCOPE_ALL, SCOPE_NODE, SCOPE_POD, ServiceKey, ServiceValue, SourceRange,
};
use kproxy_model::{
    FrontendKind, IpFamily, ModelDiff, ProxyModel, ServicePort, ServicePortKey, Verdict,
};

use crate::maps::{LbMaps, MapsError, PartialWrite, RangeEntry};

/// How long a retired slot or backend stays in its map before deletion.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// Most backend slots a frontend can have (the count is a `u16`).
const MAX_SLOTS: usize = u16::MAX as usize;

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontend entries (address, port, protocol, client scope) the sync looked at.
    pub frontends: usize,
    /// Map elements written.
    pub updates: usize,
    /// Map elements deleted.
    pub deletes: usize,
    /// Retired elements still waiting for their grace period to end.
    pub pending_deletes: usize,
}

/// Which verdict of a service port an entry serves; each gets its own service id, so
/// affinity and its validation never mix backend sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// `internal`, for ClusterIPs.
    Internal,
    /// `external.verdict`, for external frontends.
    External,
    /// `external.cluster_verdict`, for node and pod clients of eTP Local frontends.
    ExternalCluster,
}

impl Class {
    const ALL: [Class; 3] = [Class::Internal, Class::External, Class::ExternalCluster];
}

/// The service ids of one port, by [`Class`]: one lookup by port (no key clone) finds
/// them all.
#[derive(Debug, Default, Clone, Copy)]
struct PortIds([Option<u32>; 3]);

impl PortIds {
    fn get(self, class: Class) -> Option<u32> {
        self.0[class as usize]
    }

    fn set(&mut self, class: Class, id: u32) {
        self.0[class as usize] = Some(id);
    }

    fn take(&mut self, class: Class) -> Option<u32> {
        self.0[class as usize].take()
    }

    fn ids(self) -> impl Iterator<Item = u32> {
        self.0.into_iter().flatten()
    }

    fn is_empty(self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// What one frontend entry should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desired {
    class: Class,
    affinity_secs: u32,
    flags: u16,
    backends: Vec<Backend>,
    /// `loadBalancerSourceRanges` of an LB frontend: (LPM prefix length including the 32
    /// service-id bits, network address).
    ranges: Vec<(u32, Addr)>,
}

/// What the map holds for one frontend entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    master: ServiceValue,
    /// Backend ids of slots `1..=master.count`.
    slots: Vec<u32>,
}

/// Elements waiting for deletion. `since` is the truth; `queue` holds retirements in the
/// order they were made, so a sweep looks only at those that are due instead of at every
/// retired element. A queue entry whose element was taken back (or retired again later)
/// no longer matches `since` and is dropped when it comes up.
#[derive(Debug)]
struct Retired<K> {
    since: BTreeMap<K, Instant>,
    queue: VecDeque<(Instant, K)>,
}

impl<K> Default for Retired<K> {
    fn default() -> Self {
        Self {
            since: BTreeMap::new(),
            queue: VecDeque::new(),
        }
    }
}

impl<K: Ord + Copy> Retired<K> {
    fn retire(&mut self, key: K, now: Instant) {
        self.since.insert(key, now);
        self.queue.push_back((now, key));
    }

    /// Takes `key` back into use; true if it was retired.
    fn revive(&mut self, key: &K) -> bool {
        self.since.remove(key).is_some()
    }

    fn contains(&self, key: &K) -> bool {
        self.since.contains_key(key)
    }

    fn len(&self) -> usize {
        self.since.len()
    }

    /// Removes and returns the next element retired at least `GRACE` before `now`, with
    /// its retirement time.
    /// Retirement times only grow (syncs are called with a monotonic clock), so the first
    /// queue entry that is not due ends the search.
    fn pop_due(&mut self, now: Instant) -> Option<(K, Instant)> {
        while let Some((at, key)) = self.queue.front().copied() {
            if now.saturating_duration_since(at) < GRACE {
                return None;
            }
            self.queue.pop_front();
            if self.since.get(&key) == Some(&at) {
                self.since.remove(&key);
                return Some((key, at));
            }
        }
        None
    }

    /// Puts back an element `pop_due` returned whose deletion failed.
    fn unpop(&mut self, key: K, at: Instant) {
        self.since.insert(key, at);
        self.queue.push_front((at, key));
    }
}

/// Backends allocated by a sync and not yet written, as the batch write wants them.
#[derive(Debug, Default)]
struct NewBackends {
    ids: Vec<u32>,
    values: Vec<Backend>,
}

/// The reconciler: known map content, ownership, id allocation and retirement.
#[derive(Debug, Default)]
pub(crate) struct Reconciler {
    frontends: HashMap<ServiceKey, Written>,
    backends: HashMap<u32, Backend>,
    backend_ids: HashMap<Backend, u32>,
    /// Active slots referencing each backend.
    backend_refs: HashMap<u32, usize>,
    /// Backends that may have lost their last slot since the last sync that retired the
    /// unreferenced ones: a partial sync checks these, not every backend.
    unreferenced: BTreeSet<u32>,
    matches: BTreeSet<AffinityMatchKey>,
    /// Source-range entries in the map, by service id.
    ranges: BTreeMap<u32, BTreeSet<RangeEntry>>,
    /// ClusterIPs in the map.
    cluster_ips: BTreeSet<Addr>,
    /// Service ports having each ClusterIP (several ports of a Service share one).
    cluster_ip_refs: BTreeMap<Addr, usize>,
    /// The ClusterIPs each port had at its last sync.
    port_cluster_ips: BTreeMap<ServicePortKey, BTreeSet<Addr>>,
    /// Every port that wants a frontend entry; the first one owns it.
    claims: BTreeMap<ServiceKey, BTreeSet<ServicePortKey>>,
    /// What each port wanted at its last sync.
    port_frontends: BTreeMap<ServicePortKey, BTreeSet<ServiceKey>>,
    service_ids: BTreeMap<ServicePortKey, PortIds>,
    /// The values of `service_ids`, so adopting a recovered id checks it in O(log n).
    assigned_service_ids: BTreeSet<u32>,
    used_service_ids: BTreeSet<u32>,
    /// Ids found in the maps at start, by frontend entry, until a port adopts them.
    recovered_ids: BTreeMap<ServiceKey, u32>,
    next_service_id: u32,
    next_backend_id: u32,
    retired_slots: Retired<ServiceKey>,
    retired_backends: Retired<u32>,
    /// Until the first full sync, ownership is unknown (the maps do not record it).
    synced: bool,
}

fn slot_key(frontend: &ServiceKey, slot: u16) -> ServiceKey {
    ServiceKey { slot, ..*frontend }
}

pub(crate) fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::from_bytes(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Addr::from_bytes(v6.octets()),
    }
}

fn kind_flag(kind: &FrontendKind) -> u16 {
    match kind {
        FrontendKind::ClusterIp => FLAG_CLUSTER_IP,
        FrontendKind::ExternalIp => FLAG_EXTERNAL_IP,
        FrontendKind::LoadBalancer => FLAG_LOAD_BALANCER,
        FrontendKind::NodePort => FLAG_NODE_PORT,
    }
}

/// One entry's content for `verdict`. Endpoints of another family (never expected from
/// the model) are left out; a forward verdict left with none rejects.
fn desired_for(port: &ServicePort, class: Class, verdict: &Verdict, flags: u16) -> Desired {
    let proto = port.key.name.protocol.number();
    let affinity_secs = port.affinity_timeout_secs.unwrap_or(0);
    let (flags, backends) = match verdict {
        Verdict::Forward(_) => {
            let mut backends: Vec<Backend> = verdict
                .endpoints(port)
                .filter(|e| IpFamily::of(&e.ip) == port.key.family)
                .map(|e| Backend {
                    addr: addr_of(e.ip),
                    port: e.port.to_be(),
                    proto,
                    pad: 0,
                })
                .collect();
            backends.truncate(MAX_SLOTS);
            if backends.is_empty() {
                (flags | FLAG_REJECT, backends)
            } else {
                (flags, backends)
            }
        }
        Verdict::Reject => (flags | FLAG_REJECT, Vec::new()),
        Verdict::Drop => (flags | FLAG_DROP, Vec::new()),
    };
    Desired {
        class,
        affinity_secs,
        flags,
        backends,
        ranges: Vec::new(),
    }
}

/// A source range as an LPM entry: 32 bits of service id, then the (IPv4-mapped) prefix.
fn range_entry(net: &IpNet) -> (u32, Addr) {
    let net = net.trunc();
    let bits = match net {
        IpNet::V4(_) => 96 + u32::from(net.prefix_len()),
        IpNet::V6(_) => u32::from(net.prefix_len()),
    };
    (32 + bits, addr_of(net.network()))
}

/// Warns once per sync about input the dataplane cannot program as given.
fn check_port(port: &ServicePort) {
    let family = port.key.family;
    if port.endpoints.iter().any(|e| IpFamily::of(&e.ip) != family) {
        tracing::warn!(service_port = %port.key, "endpoints of the wrong family are ignored");
    }
    if port.endpoints.len() > MAX_SLOTS {
        tracing::warn!(
            service_port = %port.key,
            endpoints = port.endpoints.len(),
            "more endpoints than a frontend has slots ({MAX_SLOTS}); the rest are not used"
        );
    }
    if port.frontends.iter().any(|f| IpFamily::of(&f.ip) != family) {
        tracing::warn!(service_port = %port.key, "frontends of the wrong family are ignored");
    }
    if port.external.is_none()
        && port
            .frontends
            .iter()
            .any(|f| f.kind != FrontendKind::ClusterIp)
    {
        tracing::warn!(
            service_port = %port.key,
            "external frontends without an external verdict are ignored"
        );
    }
}

/// The ClusterIPs of a service port (of its family; others are warned about by
/// `check_port`).
fn cluster_ips_of(port: &ServicePort) -> BTreeSet<Addr> {
    port.frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::ClusterIp && IpFamily::of(&f.ip) == port.key.family)
        .map(|f| addr_of(f.ip))
        .collect()
}

/// The entries a service port wants, by frontend entry key.
fn desired_entries(port: &ServicePort) -> BTreeMap<ServiceKey, Desired> {
    check_port(port);
    let proto = port.key.name.protocol.number();
    let family = port.key.family;
    let mut out = BTreeMap::new();
    let verdict = |class, verdict, flags| desired_for(port, class, verdict, flags);
    for fe in &port.frontends {
        if IpFamily::of(&fe.ip) != family {
            continue;
        }
        let key = ServiceKey {
            addr: addr_of(fe.ip),
            port: fe.port.to_be(),
            slot: 0,
            proto,
            scope: SCOPE_ALL,
            pad: [0; 2],
        };
        let mut flags = kind_flag(&fe.kind);
        if fe.kind == FrontendKind::ClusterIp {
            out.insert(key, verdict(Class::Internal, &port.internal, flags));
            continue;
        }
        let Some(ext) = &port.external else {
            continue;
        };
        let mut ranges = Vec::new();
        if fe.kind == FrontendKind::LoadBalancer && !port.source_ranges.is_empty() {
            flags |= FLAG_SOURCE_RANGES;
            ranges = port.source_ranges.iter().map(range_entry).collect();
        }
        let masquerade = if ext.masquerade { FLAG_MASQUERADE } else { 0 };
        let mut external = verdict(Class::External, &ext.verdict, flags | masquerade);
        external.ranges = ranges;
        out.insert(key, external);
        if ext.cluster_verdict != ext.verdict {
            let cluster = verdict(Class::ExternalCluster, &ext.cluster_verdict, flags);
            if ext.node_sources_use_cluster {
                out.insert(
                    ServiceKey {
                        scope: SCOPE_NODE,
                        ..key
                    },
                    cluster.clone(),
                );
            }
            if !ext.pod_sources_use_cluster.is_empty() {
                out.insert(
                    ServiceKey {
                        scope: SCOPE_POD,
                        ..key
                    },
                    cluster,
                );
            }
        }
    }
    out
}

fn next_free(next: &mut u32, used: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = (*next).max(1);
        *next = id.wrapping_add(1);
        if !used(id) {
            return id;
        }
    }
}

impl Reconciler {
    /// Rebuilds the known state from the maps left by a previous agent (or empty maps).
    /// Ids in use stay reserved so they keep their meaning; elements nothing active
    /// references are retired from `now`.
    pub(crate) fn recover(maps: &impl LbMaps, now: Instant) -> Result<Self, MapsError> {
        let mut r = Reconciler {
            next_service_id: 1,
            next_backend_id: 1,
            ..Reconciler::default()
        };
        let entries = maps.services()?;
        let mut slots: HashMap<ServiceKey, u32> = HashMap::with_capacity(entries.len());
        for (key, value) in &entries {
            if key.slot == 0 {
                r.frontends.insert(
                    *key,
                    Written {
                        master: *value,
                        slots: Vec::new(),
                    },
                );
                r.recovered_ids.insert(*key, value.service_id);
                r.used_service_ids.insert(value.service_id);
            } else {
                slots.insert(*key, value.target);
            }
        }
        for (key, written) in &mut r.frontends {
            for slot in 1..=written.master.count {
                // A missing slot (never expected) reads as id 0, which the next write fixes.
                written
                    .slots
                    .push(slots.remove(&slot_key(key, slot)).unwrap_or(0));
            }
        }
        // In key order, so deletions come in a reproducible order.
        let mut orphans: Vec<ServiceKey> = slots.into_keys().collect();
        orphans.sort_unstable();
        for key in orphans {
            r.retired_slots.retire(key, now);
        }
        for (id, backend) in maps.backends()? {
            r.backends.insert(id, backend);
            r.backend_ids.insert(backend, id);
        }
        for written in r.frontends.values() {
            for id in &written.slots {
                *r.backend_refs.entry(*id).or_default() += 1;
            }
        }
        let mut unreferenced: Vec<u32> = r
            .backends
            .keys()
            .filter(|id| !r.backend_refs.contains_key(id))
            .copied()
            .collect();
        unreferenced.sort_unstable();
        for id in unreferenced {
            r.retired_backends.retire(id, now);
        }
        r.matches = maps.affinity_matches()?.into_iter().collect();
        for entry in maps.source_ranges()? {
            r.ranges
                .entry(u32::from_be(entry.1.service_id_be))
                .or_default()
                .insert(entry);
        }
        // Which ports have them is learnt by the first full sync, which also removes
        // those no port has.
        r.cluster_ips = maps.cluster_ips()?.into_iter().collect();
        r.next_service_id = r.used_service_ids.last().map_or(1, |m| m.wrapping_add(1));
        r.next_backend_id = r.backends.keys().max().map_or(1, |m| m.wrapping_add(1));
        Ok(r)
    }

    /// Number of frontend entries the maps hold.
    pub(crate) fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// Brings every entry to `model`: ports not in it lose their entries, and anything in
    /// the maps no port wants is removed.
    pub(crate) fn sync_full(
        &mut self,
        maps: &mut impl LbMaps,
        model: &ProxyModel,
        now: Instant,
    ) -> Result<SyncStats, MapsError> {
        let mut affected: BTreeSet<ServicePortKey> = model.ports.keys().cloned().collect();
        affected.extend(self.port_frontends.keys().cloned());
        affected.extend(self.port_cluster_ips.keys().cloned());
        let orphans: BTreeSet<ServiceKey> = self
            .frontends
            .keys()
            .filter(|k| !self.claims.contains_key(k))
            .copied()
            .collect();
        let stats = self.sync(maps, model, &affected, orphans, true, now);
        // A failed one leaves the bookkeeping ahead of the maps, as in `sync_partial`.
        self.synced = stats.is_ok();
        stats
    }

    /// Brings the ports named in `diff` (and ports taking over frontends they release)
    /// to `model`. Before the first full sync this is a full sync.
    pub(crate) fn sync_partial(
        &mut self,
        maps: &mut impl LbMaps,
        model: &ProxyModel,
        diff: &ModelDiff,
        now: Instant,
    ) -> Result<SyncStats, MapsError> {
        if !self.synced {
            return self.sync_full(maps, model, now);
        }
        let affected: BTreeSet<ServicePortKey> = diff
            .added
            .iter()
            .chain(&diff.updated)
            .chain(&diff.removed)
            .cloned()
            .collect();
        let result = self.sync(maps, model, &affected, BTreeSet::new(), false, now);
        if result.is_err() {
            // Known state is exact, but ownership bookkeeping may be ahead of the maps:
            // the next sync, even a partial one, redoes everything.
            self.synced = false;
        }
        result
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one ordered sequence; splitting hides the order"
    )]
    fn sync(
        &mut self,
        maps: &mut impl LbMaps,
        model: &ProxyModel,
        affected: &BTreeSet<ServicePortKey>,
        mut touched: BTreeSet<ServiceKey>,
        full: bool,
        now: Instant,
    ) -> Result<SyncStats, MapsError> {
        let mut stats = SyncStats::default();
        self.sweep(maps, now, &mut stats)?;

        // ClusterIPs whose use count changes. A full sync checks every one, so a write a
        // failed sync did not make is made now.
        let mut touched_ips: BTreeSet<Addr> = BTreeSet::new();
        for key in affected {
            let new = model.ports.get(key).map(cluster_ips_of).unwrap_or_default();
            let old = self.port_cluster_ips.remove(key).unwrap_or_default();
            for ip in old.difference(&new) {
                if let Some(n) = self.cluster_ip_refs.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.cluster_ip_refs.remove(ip);
                    }
                }
            }
            for ip in new.difference(&old) {
                *self.cluster_ip_refs.entry(*ip).or_default() += 1;
            }
            touched_ips.extend(old.symmetric_difference(&new).copied());
            if !new.is_empty() {
                self.port_cluster_ips.insert(key.clone(), new);
            }
        }
        if full {
            touched_ips.extend(self.cluster_ips.iter().copied());
            touched_ips.extend(self.cluster_ip_refs.keys().copied());
        }

        // Claims: who wants which frontend entry now.
        let mut desired: BTreeMap<ServicePortKey, BTreeMap<ServiceKey, Desired>> = BTreeMap::new();
        for key in affected {
            let entries = model
                .ports
                .get(key)
                .map(desired_entries)
                .unwrap_or_default();
            let new: BTreeSet<ServiceKey> = entries.keys().copied().collect();
            let old = self.port_frontends.remove(key).unwrap_or_default();
            for fe in old.difference(&new) {
                if let Some(c) = self.claims.get_mut(fe) {
                    c.remove(key);
                    if c.is_empty() {
                        self.claims.remove(fe);
                    }
                }
            }
            for fe in &new {
                self.claims.entry(*fe).or_default().insert(key.clone());
            }
            touched.extend(old.iter().copied());
            touched.extend(new.iter().copied());
            if !new.is_empty() {
                self.port_frontends.insert(key.clone(), new);
            }
            desired.insert(key.clone(), entries);
        }
        // Owners of touched entries that were not affected themselves (they take over a
        // frontend another port released) are computed too.
        let owners: BTreeMap<ServiceKey, ServicePortKey> = touched
            .iter()
            .filter_map(|fe| {
                let claims = self.claims.get(fe)?;
                if claims.len() > 1 {
                    tracing::warn!(
                        frontend = ?fe,
                        owner = %claims.first()?,
                        others = claims.len() - 1,
                        "several service ports claim one frontend; the first one serves it"
                    );
                }
                Some((*fe, claims.first()?.clone()))
            })
            .collect();
        for owner in owners.values() {
            if !desired.contains_key(owner) {
                let entries = model
                    .ports
                    .get(owner)
                    .map(desired_entries)
                    .unwrap_or_default();
                desired.insert(owner.clone(), entries);
            }
        }

        // Service ids: adopt recovered ones by frontend, else allocate.
        for (port, entries) in &desired {
            for (fe, d) in entries {
                if self
                    .service_ids
                    .get(port)
                    .is_some_and(|ids| ids.get(d.class).is_some())
                {
                    continue;
                }
                let id = match self.recovered_ids.remove(fe) {
                    Some(id) if !self.assigned_service_ids.contains(&id) => id,
                    _ => {
                        let used = &self.used_service_ids;
                        next_free(&mut self.next_service_id, |id| used.contains(&id))
                    }
                };
                self.used_service_ids.insert(id);
                self.assigned_service_ids.insert(id);
                if let Some(ids) = self.service_ids.get_mut(port) {
                    ids.set(d.class, id);
                } else {
                    let mut ids = PortIds::default();
                    ids.set(d.class, id);
                    self.service_ids.insert(port.clone(), ids);
                }
            }
        }

        // 1. Backends, in one batch.
        let mut plans: Vec<(ServiceKey, ServiceValue, Vec<u32>)> = Vec::new();
        let mut plan_ranges: Vec<RangeEntry> = Vec::new();
        let mut new_backends = NewBackends::default();
        // By port, so each port's ids are looked up once; an entry is planned by its owner
        // only.
        for (port, entries) in &desired {
            let port_ids = self.service_ids.get(port).copied().unwrap_or_default();
            for (fe, d) in entries {
                if owners.get(fe) != Some(port) {
                    continue;
                }
                let mut ids = Vec::with_capacity(d.backends.len());
                for b in &d.backends {
                    ids.push(self.backend_id(b, &mut new_backends));
                }
                #[expect(clippy::cast_possible_truncation, reason = "capped at MAX_SLOTS")]
                let master = ServiceValue {
                    target: d.affinity_secs,
                    count: ids.len() as u16,
                    flags: d.flags,
                    service_id: port_ids.get(d.class).expect("assigned above"),
                };
                for (len, addr) in &d.ranges {
                    plan_ranges.push((
                        *len,
                        SourceRange {
                            service_id_be: master.service_id.to_be(),
                            addr: *addr,
                        },
                    ));
                }
                plans.push((*fe, master, ids));
            }
        }
        stats.frontends = plans.len();
        self.write_backends(maps, &new_backends, full, &mut stats)?;

        // 2. Affinity-match additions; deletions are collected for step 5.
        let mut wanted_matches: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for port in desired.keys() {
            for id in self
                .service_ids
                .get(port)
                .into_iter()
                .flat_map(|ids| ids.ids())
            {
                wanted_matches.insert(id, BTreeSet::new());
            }
        }
        for (_, master, ids) in &plans {
            if master.target != 0
                && let Some(set) = wanted_matches.get_mut(&master.service_id)
            {
                set.extend(ids.iter().copied());
            }
        }
        for (service_id, backends) in &wanted_matches {
            for backend_id in backends {
                let key = AffinityMatchKey {
                    service_id: *service_id,
                    backend_id: *backend_id,
                };
                if !self.matches.contains(&key) {
                    maps.affinity_match_update(key)?;
                    stats.updates += 1;
                    self.matches.insert(key);
                }
            }
        }

        // 2b. Source ranges, before the frontends that check them: a frontend never
        // carries FLAG_SOURCE_RANGES without its ranges (which would drop allowed clients).
        let mut wanted_ranges: BTreeMap<u32, BTreeSet<RangeEntry>> = wanted_matches
            .keys()
            .map(|id| (*id, BTreeSet::new()))
            .collect();
        for entry in plan_ranges {
            wanted_ranges
                .entry(u32::from_be(entry.1.service_id_be))
                .or_default()
                .insert(entry);
            let written = self
                .ranges
                .get(&u32::from_be(entry.1.service_id_be))
                .is_some_and(|set| set.contains(&entry));
            if !written {
                maps.source_range_update(entry)?;
                stats.updates += 1;
                self.ranges
                    .entry(u32::from_be(entry.1.service_id_be))
                    .or_default()
                    .insert(entry);
            }
        }

        // 3. Slots, then the frontend entries (the commit points).
        self.write_frontends(maps, plans, now, &mut stats)?;

        // 4. Entries nobody wants.
        for fe in &touched {
            if !owners.contains_key(fe) {
                self.remove_frontend(maps, fe, now, &mut stats)?;
            }
        }

        // 4, continued: ClusterIPs, after the frontends.
        for ip in touched_ips {
            let wanted = self.cluster_ip_refs.contains_key(&ip);
            let written = self.cluster_ips.contains(&ip);
            if wanted && !written {
                maps.cluster_ip_update(ip)?;
                stats.updates += 1;
                self.cluster_ips.insert(ip);
            } else if !wanted && written {
                maps.cluster_ip_delete(ip)?;
                stats.deletes += 1;
                self.cluster_ips.remove(&ip);
            }
        }

        // A full sync has seen every port: recovered ids nobody adopted are free again.
        if full {
            self.recovered_ids.clear();
            self.used_service_ids = self
                .service_ids
                .values()
                .flat_map(|ids| ids.ids())
                .collect();
        }

        // 5. Affinity-match deletions: a full sync checks every entry, a partial one only
        // those of the ports it synced.
        let stale: Vec<AffinityMatchKey> = if full {
            self.matches
                .iter()
                .filter(|m| {
                    wanted_matches
                        .get(&m.service_id)
                        .is_some_and(|set| !set.contains(&m.backend_id))
                        || !self.used_service_ids.contains(&m.service_id)
                })
                .copied()
                .collect()
        } else {
            wanted_matches
                .iter()
                .flat_map(|(id, set)| {
                    self.matches_of(*id)
                        .filter(move |m| !set.contains(&m.backend_id))
                })
                .collect()
        };
        for key in stale {
            maps.affinity_match_delete(key)?;
            stats.deletes += 1;
            self.matches.remove(&key);
        }

        // Ids of ports that are gone.
        let mut freed_ids = Vec::new();
        for port in affected {
            if model.ports.contains_key(port) {
                continue;
            }
            for class in Class::ALL {
                let Some(ids) = self.service_ids.get_mut(port) else {
                    break;
                };
                let taken = ids.take(class);
                if ids.is_empty() {
                    self.service_ids.remove(port);
                }
                if let Some(id) = taken {
                    self.used_service_ids.remove(&id);
                    self.assigned_service_ids.remove(&id);
                    freed_ids.push(id);
                    let dead: Vec<AffinityMatchKey> = self.matches_of(id).collect();
                    for key in dead {
                        maps.affinity_match_delete(key)?;
                        stats.deletes += 1;
                        self.matches.remove(&key);
                    }
                }
            }
        }

        // Source ranges no frontend wants any more: of every id in a full sync, else of
        // the ids this sync looked at or freed.
        let ids: Vec<u32> = if full {
            self.ranges.keys().copied().collect()
        } else {
            wanted_ranges.keys().chain(&freed_ids).copied().collect()
        };
        let mut stale: Vec<RangeEntry> = Vec::new();
        for id in ids {
            let Some(written) = self.ranges.get(&id) else {
                continue;
            };
            if !self.used_service_ids.contains(&id) {
                stale.extend(written.iter().copied());
            } else if let Some(wanted) = wanted_ranges.get(&id) {
                stale.extend(written.difference(wanted).copied());
            }
        }
        for entry in stale {
            maps.source_range_delete(entry)?;
            stats.deletes += 1;
            let id = u32::from_be(entry.1.service_id_be);
            if let Some(set) = self.ranges.get_mut(&id) {
                set.remove(&entry);
                if set.is_empty() {
                    self.ranges.remove(&id);
                }
            }
        }

        // 6. Backends no slot references: every one in a full sync, else those that lost
        // a reference (or were written and never referenced) since the last time.
        let candidates: Vec<u32> = if full {
            self.unreferenced.clear();
            self.backends.keys().copied().collect()
        } else {
            std::mem::take(&mut self.unreferenced).into_iter().collect()
        };
        let mut retire: Vec<u32> = candidates
            .into_iter()
            .filter(|id| {
                self.backends.contains_key(id)
                    && !self.backend_refs.contains_key(id)
                    && !self.retired_backends.contains(id)
            })
            .collect();
        // In id order, so deletions come in a reproducible order.
        retire.sort_unstable();
        for id in retire {
            self.retired_backends.retire(id, now);
        }
        stats.pending_deletes = self.retired_slots.len() + self.retired_backends.len();
        Ok(stats)
    }

    /// The affinity-match entries of one service id.
    fn matches_of(&self, id: u32) -> impl Iterator<Item = AffinityMatchKey> + '_ {
        let first = AffinityMatchKey {
            service_id: id,
            backend_id: 0,
        };
        let last = AffinityMatchKey {
            service_id: id,
            backend_id: u32::MAX,
        };
        self.matches.range(first..=last).copied()
    }

    /// The id of a backend, taking it back from retirement; a new one is allocated and
    /// queued in `new` for [`Reconciler::write_backends`].
    fn backend_id(&mut self, backend: &Backend, new: &mut NewBackends) -> u32 {
        if let Some(id) = self.backend_ids.get(backend) {
            self.retired_backends.revive(id);
            return *id;
        }
        let backends = &self.backends;
        let id = next_free(&mut self.next_backend_id, |id| backends.contains_key(&id));
        // Known at once, so the same backend wanted twice gets one id and the next
        // allocation skips it; `write_backends` forgets those it could not write.
        self.backends.insert(id, *backend);
        self.backend_ids.insert(*backend, id);
        new.ids.push(id);
        new.values.push(*backend);
        id
    }

    /// Writes the backends `backend_id` allocated, in one batch.
    fn write_backends(
        &mut self,
        maps: &mut impl LbMaps,
        new: &NewBackends,
        full: bool,
        stats: &mut SyncStats,
    ) -> Result<(), MapsError> {
        if new.ids.is_empty() {
            return Ok(());
        }
        // Unreferenced until a slot is written; if that never happens, step 6 retires
        // them. A full sync's step 6 looks at every backend anyway.
        match maps.backend_update_batch(&new.ids, &new.values) {
            Ok(()) => {
                stats.updates += new.ids.len();
                if !full {
                    self.unreferenced.extend(new.ids.iter().copied());
                }
                Ok(())
            }
            Err(PartialWrite { done, error }) => {
                stats.updates += done;
                self.unreferenced.extend(new.ids[..done].iter().copied());
                for (id, backend) in new.ids.iter().zip(&new.values).skip(done) {
                    self.backends.remove(id);
                    self.backend_ids.remove(backend);
                }
                Err(error)
            }
        }
    }

    /// Step 3 for every planned frontend: the slots that change, in one batch, then the
    /// frontend entries that change, in one batch. Slots never share a batch with a
    /// frontend entry, so every entry is written after every slot it counts.
    fn write_frontends(
        &mut self,
        maps: &mut impl LbMaps,
        plans: Vec<(ServiceKey, ServiceValue, Vec<u32>)>,
        now: Instant,
        stats: &mut SyncStats,
    ) -> Result<(), MapsError> {
        let mut slot_keys = Vec::new();
        let mut slot_values = Vec::new();
        let mut master_keys = Vec::new();
        let mut master_values = Vec::new();
        for (fe, master, ids) in &plans {
            let old = self.frontends.get(fe);
            let old_slots = old.map_or(&[][..], |w| w.slots.as_slice());
            for (i, id) in ids.iter().enumerate() {
                #[expect(clippy::cast_possible_truncation, reason = "capped at MAX_SLOTS")]
                let key = slot_key(fe, i as u16 + 1);
                if old_slots.get(i) != Some(id) || self.retired_slots.contains(&key) {
                    slot_keys.push(key);
                    slot_values.push(ServiceValue {
                        target: *id,
                        count: 0,
                        flags: 0,
                        service_id: master.service_id,
                    });
                }
            }
            if old.map(|w| w.master) != Some(*master) {
                master_keys.push(*fe);
                master_values.push(*master);
            }
        }

        if !slot_keys.is_empty() {
            if let Err(PartialWrite { done, error }) =
                maps.service_update_batch(&slot_keys, &slot_values)
            {
                stats.updates += done;
                for (key, value) in slot_keys.iter().zip(&slot_values).take(done) {
                    self.note_slot(*key, value.target, now);
                }
                return Err(error);
            }
            stats.updates += slot_keys.len();
            if self.retired_slots.len() > 0 {
                for key in &slot_keys {
                    self.retired_slots.revive(key);
                }
            }
        }

        let mut failed: Option<MapsError> = None;
        let mut unwritten: HashSet<ServiceKey> = HashSet::new();
        if !master_keys.is_empty() {
            match maps.service_update_batch(&master_keys, &master_values) {
                Ok(()) => stats.updates += master_keys.len(),
                Err(PartialWrite { done, error }) => {
                    stats.updates += done;
                    unwritten.extend(master_keys[done..].iter().copied());
                    failed = Some(error);
                }
            }
        }
        for (fe, master, ids) in plans {
            if !unwritten.contains(&fe) {
                self.commit_frontend(fe, master, ids, now);
            }
        }
        match failed {
            None => Ok(()),
            Some(error) => {
                // Their slots are written although their entries are not.
                for (key, value) in slot_keys.iter().zip(&slot_values) {
                    if unwritten.contains(&slot_key(key, 0)) {
                        self.note_slot(*key, value.target, now);
                    }
                }
                Err(error)
            }
        }
    }

    /// Records a frontend entry written (or unchanged) with the slots `ids`.
    fn commit_frontend(
        &mut self,
        fe: ServiceKey,
        master: ServiceValue,
        ids: Vec<u32>,
        now: Instant,
    ) {
        if self
            .frontends
            .get(&fe)
            .is_some_and(|w| w.master == master && w.slots == ids)
        {
            // Unchanged: its references and retirements stay as they are.
            return;
        }
        let old_slots = self
            .frontends
            .remove(&fe)
            .map(|w| w.slots)
            .unwrap_or_default();
        for i in ids.len()..old_slots.len() {
            #[expect(clippy::cast_possible_truncation, reason = "slots are u16")]
            self.retired_slots.retire(slot_key(&fe, i as u16 + 1), now);
        }
        for id in &ids {
            *self.backend_refs.entry(*id).or_default() += 1;
        }
        self.release_refs(&old_slots);
        self.frontends.insert(fe, Written { master, slots: ids });
    }

    /// Records a slot written whose frontend entry was not (its write failed or never
    /// came), so the known state stays exactly the map's.
    fn note_slot(&mut self, key: ServiceKey, id: u32, now: Instant) {
        let index = usize::from(key.slot) - 1;
        match self.frontends.get_mut(&slot_key(&key, 0)) {
            Some(w) if index < w.slots.len() => {
                let old = std::mem::replace(&mut w.slots[index], id);
                // Counted by a written entry: never deleted from under it.
                self.retired_slots.revive(&key);
                *self.backend_refs.entry(id).or_default() += 1;
                self.release_refs(&[old]);
            }
            // Beyond the count the map's entry has: no reader reaches it. Retired, it is
            // deleted after the grace period unless a later sync writes it again (a
            // retired slot is always rewritten) and commits it.
            _ => self.retired_slots.retire(key, now),
        }
    }

    fn remove_frontend(
        &mut self,
        maps: &mut impl LbMaps,
        fe: &ServiceKey,
        now: Instant,
        stats: &mut SyncStats,
    ) -> Result<(), MapsError> {
        let Some(old) = self.frontends.get(fe).cloned() else {
            return Ok(());
        };
        maps.service_delete(fe)?;
        stats.deletes += 1;
        self.frontends.remove(fe);
        self.recovered_ids.remove(fe);
        for i in 0..old.slots.len() {
            #[expect(clippy::cast_possible_truncation, reason = "slots are u16")]
            self.retired_slots.retire(slot_key(fe, i as u16 + 1), now);
        }
        self.release_refs(&old.slots);
        Ok(())
    }

    fn release_refs(&mut self, ids: &[u32]) {
        for id in ids {
            if let Some(n) = self.backend_refs.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.backend_refs.remove(id);
                    self.unreferenced.insert(*id);
                }
            }
        }
    }

    /// Deletes retired elements whose grace period is over: slots first, then backends.
    /// Looks only at the due ones.
    fn sweep(
        &mut self,
        maps: &mut impl LbMaps,
        now: Instant,
        stats: &mut SyncStats,
    ) -> Result<(), MapsError> {
        while let Some((key, at)) = self.retired_slots.pop_due(now) {
            if let Err(e) = maps.service_delete(&key) {
                // Still due: the next sweep tries again first.
                self.retired_slots.unpop(key, at);
                return Err(e);
            }
            stats.deletes += 1;
        }
        while let Some((id, at)) = self.retired_backends.pop_due(now) {
            if let Err(e) = maps.backend_delete(id) {
                self.retired_backends.unpop(id, at);
                return Err(e);
            }
            stats.deletes += 1;
            if let Some(b) = self.backends.remove(&id) {
                self.backend_ids.remove(&b);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use kproxy_common::FLAG_NODE_PORT;
    use kproxy_model::{
        Endpoint, EndpointSet, ExternalTraffic, Frontend, InternalMasquerade, Protocol,
        ServicePortName,
    };

    use super::*;
    use crate::maps::fake::{Event, FakeMaps};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(100, 64, 1, last))
    }

    fn endpoint(last: u8) -> Endpoint {
        Endpoint {
            ip: ip(last),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            is_local: last < 10,
        }
    }

    fn port(name: &str, vip: u8, eps: &[u8]) -> ServicePort {
        let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, vip));
        let endpoints: Vec<Endpoint> = eps.iter().map(|e| endpoint(*e)).collect();
        let internal = if endpoints.is_empty() {
            Verdict::Reject
        } else {
            Verdict::Forward(EndpointSet(
                (0..u32::try_from(endpoints.len()).unwrap()).collect(),
            ))
        };
        ServicePort {
            key: ServicePortKey {
                family: IpFamily::V4,
                name: ServicePortName {
                    namespace: "ns".into(),
                    name: name.into(),
                    port_name: String::new(),
                    protocol: Protocol::Tcp,
                },
            },
            cluster_ip: vip,
            port: 80,
            node_port: None,
            frontends: vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip: vip,
                port: 80,
            }],
            source_ranges: Vec::new(),
            affinity_timeout_secs: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            endpoints,
            internal,
            internal_masquerade: InternalMasquerade::HairpinOnly,
            external: None,
            local_ready_endpoints: 0,
        }
    }

    fn model(ports: impl IntoIterator<Item = ServicePort>) -> ProxyModel {
        ProxyModel {
            ports: ports.into_iter().map(|p| (p.key.clone(), p)).collect(),
        }
    }

    fn masters(maps: &FakeMaps) -> Vec<(ServiceKey, ServiceValue)> {
        maps.services
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Every frontend entry resolves: slots 1..=count exist and name existing backends.
    fn assert_resolvable(maps: &FakeMaps, key: &ServiceKey, value: &ServiceValue, when: &str) {
        for slot in 1..=value.count {
            let s = maps.services.get(&slot_key(key, slot));
            let s = s.unwrap_or_else(|| panic!("{when}: slot {slot} of {key:?} missing"));
            assert!(
                maps.backends.contains_key(&s.target),
                "{when}: backend {} missing",
                s.target
            );
        }
    }

    /// Replays a sync's events from the map state before it: every frontend entry a reader
    /// could have read at any point must still resolve at every later point of the sync,
    /// and a frontend the sync creates on an address that was no ClusterIP before is
    /// never refused (ClusterIP listed, frontend not yet there) in between.
    fn assert_no_reader_misses(before: &FakeMaps, after: &FakeMaps) {
        let mut replay = before.clone();
        let mut seen: Vec<(ServiceKey, ServiceValue)> = masters(&replay);
        let created: Vec<ServiceKey> = masters(after)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !before.services.contains_key(k) && !before.cluster_ips.contains(&k.addr))
            .collect();
        for (i, event) in after.events[before.events.len()..].iter().enumerate() {
            match event {
                Event::ServiceUpdate(k, v) => {
                    replay.services.insert(*k, *v);
                }
                Event::ServiceDelete(k) => {
                    replay.services.remove(k);
                }
                Event::BackendUpdate(id) => {
                    replay.backends.insert(*id, after.backends[id]);
                }
                Event::BackendDelete(id) => {
                    replay.backends.remove(id);
                }
                Event::ClusterIpUpdate(addr) => {
                    replay.cluster_ips.insert(*addr);
                }
                Event::ClusterIpDelete(addr) => {
                    replay.cluster_ips.remove(addr);
                }
            }
            for k in &created {
                assert!(
                    !replay.cluster_ips.contains(&k.addr) || replay.services.contains_key(k),
                    "after event {i} {event:?}: new frontend {k:?} refused"
                );
            }
            seen.extend(masters(&replay));
            for (k, v) in &seen {
                assert_resolvable(&replay, k, v, &format!("after event {i} {event:?}"));
            }
        }
    }

    fn start() -> (FakeMaps, Reconciler, Instant) {
        let maps = FakeMaps::default();
        let now = Instant::now();
        let r = Reconciler::recover(&maps, now).unwrap();
        (maps, r, now)
    }

    #[test]
    fn full_sync_writes_backends_then_slots_then_the_frontend() {
        let (mut maps, mut r, now) = start();
        let stats = r
            .sync_full(&mut maps, &model([port("a", 1, &[1, 2, 3])]), now)
            .unwrap();
        assert_eq!(stats.frontends, 1);
        assert_eq!(stats.updates, 3 + 3 + 1 + 1);
        let kinds: Vec<u8> = maps
            .events
            .iter()
            .map(|e| match e {
                Event::BackendUpdate(_) => 0,
                Event::ServiceUpdate(k, _) if k.slot > 0 => 1,
                Event::ServiceUpdate(..) => 2,
                Event::ClusterIpUpdate(_) => 3,
                _ => 9,
            })
            .collect();
        assert_eq!(kinds, [0, 0, 0, 1, 1, 1, 2, 3]);
        let [(key, master)] = masters(&maps)[..] else {
            panic!("one frontend")
        };
        assert_eq!(master.count, 3);
        assert_eq!(master.flags, FLAG_CLUSTER_IP);
        assert_eq!(key.port, 80u16.to_be());
        assert_eq!(
            key.addr,
            addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)))
        );
        assert_resolvable(&maps, &key, &master, "end");
        let first = maps.services[&slot_key(&key, 1)].target;
        assert_eq!(maps.backends[&first].addr, addr_of(ip(1)));
        assert_eq!(maps.backends[&first].port, 8080u16.to_be());

        let before = maps.ops;
        let again = r
            .sync_full(&mut maps, &model([port("a", 1, &[1, 2, 3])]), now)
            .unwrap();
        assert_eq!((again.updates, again.deletes), (0, 0));
        assert_eq!(
            maps.ops, before,
            "an unchanged model costs no map operation"
        );
    }

    #[test]
    fn partial_sync_touches_only_the_changed_service() {
        let (mut maps, mut r, now) = start();
        let ports: Vec<ServicePort> = (1..=50)
            .map(|i| port(&format!("s{i}"), i, &[i, i + 100]))
            .collect();
        r.sync_full(&mut maps, &model(ports.clone()), now).unwrap();
        let mut changed = ports.clone();
        changed[9] = port("s10", 10, &[10, 110, 200]);
        let diff = ModelDiff {
            updated: vec![changed[9].key.clone()],
            ..ModelDiff::default()
        };
        let before = maps.clone();
        let stats = r
            .sync_partial(&mut maps, &model(changed), &diff, now)
            .unwrap();
        assert_eq!(stats.frontends, 1);
        // One new backend, one new slot, the frontend's count.
        assert_eq!(maps.ops.total() - before.ops.total(), 3, "{:?}", maps.ops);
        let vip = addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)));
        for e in &maps.events[before.events.len()..] {
            if let Event::ServiceUpdate(k, _) = e {
                assert_eq!(k.addr, vip, "only s10's entries are written");
            }
        }
        assert_no_reader_misses(&before, &maps);
    }

    #[test]
    fn shrinking_and_removal_retire_before_deleting() {
        let (mut maps, mut r, now) = start();
        r.sync_full(
            &mut maps,
            &model([port("a", 1, &[1, 2, 3]), port("b", 2, &[4])]),
            now,
        )
        .unwrap();
        let before = maps.clone();
        let stats = r
            .sync_full(&mut maps, &model([port("a", 1, &[1])]), now)
            .unwrap();
        assert_no_reader_misses(&before, &maps);
        assert_eq!(
            stats.deletes, 2,
            "only b's frontend entry and its ClusterIP go at once"
        );
        assert_eq!(
            stats.pending_deletes,
            2 + 1 + 2 + 1,
            "slots 2,3 of a; slot 1 of b; backends 2,3,4"
        );
        let a = masters(&maps)[0];
        assert_eq!(a.1.count, 1);

        // Still inside the grace period: nothing is deleted yet.
        let later = r
            .sync_full(&mut maps, &model([port("a", 1, &[1])]), now + GRACE / 2)
            .unwrap();
        assert_eq!(later.deletes, 0);
        // After it, the next sync deletes slots, then backends.
        let before = maps.clone();
        let last = r
            .sync_full(&mut maps, &model([port("a", 1, &[1])]), now + GRACE)
            .unwrap();
        assert_eq!((last.deletes, last.pending_deletes), (6, 0));
        assert_no_reader_misses(&before, &maps);
        let deletes: Vec<&Event> = maps.events[before.events.len()..].iter().collect();
        let first_backend = deletes
            .iter()
            .position(|e| matches!(e, Event::BackendDelete(_)))
            .unwrap();
        assert!(
            deletes[first_backend..]
                .iter()
                .all(|e| matches!(e, Event::BackendDelete(_)))
        );
        assert_eq!(maps.services.len(), 2, "a's frontend and its one slot");
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn partial_syncs_retire_and_later_delete_what_they_release() {
        let (mut maps, mut r, now) = start();
        let ports = [port("a", 1, &[1, 2, 3]), port("b", 2, &[4])];
        r.sync_full(&mut maps, &model(ports.clone()), now).unwrap();
        let diff = ModelDiff {
            updated: vec![ports[0].key.clone()],
            ..ModelDiff::default()
        };
        let before = maps.clone();
        let stats = r
            .sync_partial(
                &mut maps,
                &model([port("a", 1, &[1]), ports[1].clone()]),
                &diff,
                now,
            )
            .unwrap();
        assert_no_reader_misses(&before, &maps);
        assert_eq!(
            stats.pending_deletes,
            2 + 2,
            "slots 2,3 and backends 2,3 of a"
        );

        // An unrelated partial sync after the grace period deletes them, slots first.
        let diff = ModelDiff {
            updated: vec![ports[1].key.clone()],
            ..ModelDiff::default()
        };
        let before = maps.clone();
        let m = model([port("a", 1, &[1]), port("b", 2, &[4, 5])]);
        let stats = r.sync_partial(&mut maps, &m, &diff, now + GRACE).unwrap();
        assert_no_reader_misses(&before, &maps);
        assert_eq!((stats.deletes, stats.pending_deletes), (4, 0));
        let deletes: Vec<&Event> = maps.events[before.events.len()..]
            .iter()
            .filter(|e| matches!(e, Event::ServiceDelete(_) | Event::BackendDelete(_)))
            .collect();
        assert!(
            matches!(
                deletes[..],
                [
                    Event::ServiceDelete(_),
                    Event::ServiceDelete(_),
                    Event::BackendDelete(_),
                    Event::BackendDelete(_)
                ]
            ),
            "{deletes:?}"
        );
        assert_eq!(maps.backends.len(), 3, "a's 1, b's 4 and 5");
        assert_eq!(maps.services.len(), 2 + 3);
    }

    #[test]
    fn a_slot_retired_again_waits_a_full_grace_period_from_then() {
        let (mut maps, mut r, now) = start();
        let key = port("a", 1, &[]).key;
        let diff = ModelDiff {
            updated: vec![key.clone()],
            ..ModelDiff::default()
        };
        r.sync_full(&mut maps, &model([port("a", 1, &[1, 2])]), now)
            .unwrap();
        // Shrink, grow back (the slot is reused), shrink again half a grace period later.
        r.sync_partial(&mut maps, &model([port("a", 1, &[1])]), &diff, now)
            .unwrap();
        r.sync_partial(&mut maps, &model([port("a", 1, &[1, 2])]), &diff, now)
            .unwrap();
        let stats = r
            .sync_partial(
                &mut maps,
                &model([port("a", 1, &[1])]),
                &diff,
                now + GRACE / 2,
            )
            .unwrap();
        assert_eq!(stats.pending_deletes, 2, "slot 2 and backend 2");
        // The first retirement's grace period is over, the second one's is not.
        let stats = r
            .sync_partial(&mut maps, &model([port("a", 1, &[1])]), &diff, now + GRACE)
            .unwrap();
        assert_eq!((stats.deletes, stats.pending_deletes), (0, 2));
        let stats = r
            .sync_partial(
                &mut maps,
                &model([port("a", 1, &[1])]),
                &diff,
                now + GRACE / 2 + GRACE,
            )
            .unwrap();
        assert_eq!((stats.deletes, stats.pending_deletes), (2, 0));
        assert_eq!(maps.services.len(), 2);
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn a_failed_deletion_is_retried_by_the_next_sweep() {
        let (mut maps, mut r, now) = start();
        r.sync_full(&mut maps, &model([port("a", 1, &[1, 2])]), now)
            .unwrap();
        r.sync_full(&mut maps, &model([port("a", 1, &[1])]), now)
            .unwrap();
        maps.fail_after = Some(0);
        assert!(
            r.sync_full(&mut maps, &model([port("a", 1, &[1])]), now + GRACE)
                .is_err()
        );
        maps.fail_after = None;
        let stats = r
            .sync_full(&mut maps, &model([port("a", 1, &[1])]), now + GRACE)
            .unwrap();
        assert_eq!((stats.deletes, stats.pending_deletes), (2, 0));
        assert_eq!(maps.services.len(), 2);
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn partial_syncs_keep_affinity_matches_exact() {
        let (mut maps, mut r, now) = start();
        let sticky = |name: &str, vip: u8, eps: &[u8]| {
            let mut p = port(name, vip, eps);
            p.affinity_timeout_secs = Some(30);
            p
        };
        r.sync_full(
            &mut maps,
            &model([sticky("a", 1, &[1, 2]), sticky("b", 2, &[3, 4])]),
            now,
        )
        .unwrap();
        assert_eq!(maps.matches.len(), 4);
        let id_of = |maps: &FakeMaps, vip: u8| {
            masters(maps)
                .iter()
                .find(|(k, _)| k.addr == addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, vip))))
                .map(|(_, v)| v.service_id)
                .unwrap()
        };
        let (a, b) = (id_of(&maps, 1), id_of(&maps, 2));

        // a loses a backend: only its pair goes.
        let diff = ModelDiff {
            updated: vec![sticky("a", 1, &[]).key],
            ..ModelDiff::default()
        };
        r.sync_partial(
            &mut maps,
            &model([sticky("a", 1, &[1]), sticky("b", 2, &[3, 4])]),
            &diff,
            now,
        )
        .unwrap();
        let per_service =
            |maps: &FakeMaps, id| maps.matches.iter().filter(|m| m.service_id == id).count();
        assert_eq!((per_service(&maps, a), per_service(&maps, b)), (1, 2));

        // a goes: all of its pairs go, b's stay.
        let diff = ModelDiff {
            removed: vec![sticky("a", 1, &[]).key],
            ..ModelDiff::default()
        };
        r.sync_partial(&mut maps, &model([sticky("b", 2, &[3, 4])]), &diff, now)
            .unwrap();
        assert_eq!((per_service(&maps, a), per_service(&maps, b)), (0, 2));
        assert_eq!(maps.matches.len(), 2);
    }

    #[test]
    fn a_retired_backend_wanted_again_is_reused() {
        let (mut maps, mut r, now) = start();
        r.sync_full(&mut maps, &model([port("a", 1, &[1, 2])]), now)
            .unwrap();
        let ids: BTreeSet<u32> = maps.backends.keys().copied().collect();
        r.sync_full(&mut maps, &model([port("a", 1, &[1])]), now)
            .unwrap();
        let stats = r
            .sync_full(&mut maps, &model([port("a", 1, &[1, 2])]), now + GRACE / 2)
            .unwrap();
        assert_eq!(stats.pending_deletes, 0);
        assert_eq!(
            maps.backends.keys().copied().collect::<BTreeSet<u32>>(),
            ids
        );
        let stats = r
            .sync_full(&mut maps, &model([port("a", 1, &[1, 2])]), now + GRACE * 2)
            .unwrap();
        assert_eq!((stats.updates, stats.deletes), (0, 0));
    }

    #[test]
    fn ids_survive_a_restart() {
        let (mut maps, mut r, now) = start();
        let mut a = port("a", 1, &[1, 2]);
        a.affinity_timeout_secs = Some(30);
        let m = model([a.clone(), port("b", 2, &[2, 3])]);
        r.sync_full(&mut maps, &m, now).unwrap();
        let snapshot = (
            maps.services.clone(),
            maps.backends.clone(),
            maps.matches.clone(),
        );
        assert_eq!(
            maps.matches.len(),
            2,
            "a's two backends are affinity matches"
        );

        // A new agent over the same maps.
        let mut r2 = Reconciler::recover(&maps, now).unwrap();
        let before = maps.ops;
        let stats = r2.sync_full(&mut maps, &m, now).unwrap();
        assert_eq!((stats.updates, stats.deletes), (0, 0));
        assert_eq!(maps.ops, before);
        assert_eq!(
            (
                maps.services.clone(),
                maps.backends.clone(),
                maps.matches.clone()
            ),
            snapshot
        );

        // New ids never collide with recovered ones.
        let m3 = model([a, port("b", 2, &[2, 3]), port("c", 3, &[4])]);
        r2.sync_full(&mut maps, &m3, now).unwrap();
        let ids: BTreeSet<u32> = masters(&maps).iter().map(|(_, v)| v.service_id).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(maps.backends.len(), 4);
    }

    #[test]
    fn restart_removes_what_the_model_lost_while_down() {
        let (mut maps, mut r, now) = start();
        r.sync_full(
            &mut maps,
            &model([port("a", 1, &[1]), port("b", 2, &[2])]),
            now,
        )
        .unwrap();
        let mut r2 = Reconciler::recover(&maps, now).unwrap();
        // A partial sync before any full one is a full one.
        let diff = ModelDiff::default();
        let stats = r2
            .sync_partial(&mut maps, &model([port("a", 1, &[1])]), &diff, now)
            .unwrap();
        assert_eq!(stats.deletes, 2, "b's frontend entry and its ClusterIP");
        assert_eq!(
            maps.cluster_ips,
            [addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)))].into()
        );
        r2.sync_full(&mut maps, &model([port("a", 1, &[1])]), now + GRACE)
            .unwrap();
        assert_eq!(maps.services.len(), 2);
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn verdicts_become_flags() {
        let (mut maps, mut r, now) = start();
        let mut dropping = port("d", 2, &[20]);
        dropping.internal = Verdict::Drop;
        r.sync_full(&mut maps, &model([port("r", 1, &[]), dropping]), now)
            .unwrap();
        let flags: Vec<(u16, u16)> = masters(&maps)
            .iter()
            .map(|(_, v)| (v.flags, v.count))
            .collect();
        assert_eq!(
            flags,
            [
                (FLAG_CLUSTER_IP | FLAG_REJECT, 0),
                (FLAG_CLUSTER_IP | FLAG_DROP, 0)
            ]
        );
        assert!(maps.backends.is_empty());
    }

    #[test]
    fn local_policy_adds_node_and_pod_scopes_only_when_they_differ() {
        let (mut maps, mut r, now) = start();
        let mut p = port("np", 1, &[1, 20]);
        let node = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        p.frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: node,
            port: 30080,
        });
        p.external = Some(ExternalTraffic {
            verdict: Verdict::Forward(EndpointSet(vec![0])),
            masquerade: false,
            pod_sources_use_cluster: vec!["100.64.0.0/16".parse().unwrap()],
            node_sources_use_cluster: true,
            cluster_verdict: p.internal.clone(),
        });
        r.sync_full(&mut maps, &model([p.clone()]), now).unwrap();
        let np: Vec<(u8, u16, u16)> = masters(&maps)
            .iter()
            .filter(|(k, _)| k.port == 30080u16.to_be())
            .map(|(k, v)| (k.scope, v.count, v.flags))
            .collect();
        assert_eq!(
            np,
            [
                (SCOPE_ALL, 1, FLAG_NODE_PORT),
                (SCOPE_NODE, 2, FLAG_NODE_PORT),
                (SCOPE_POD, 2, FLAG_NODE_PORT)
            ]
        );
        let ids: BTreeSet<u32> = masters(&maps).iter().map(|(_, v)| v.service_id).collect();
        assert_eq!(
            ids.len(),
            3,
            "internal, external and external-cluster sets get their own ids"
        );

        // eTP Cluster: one entry per frontend.
        if let Some(ext) = p.external.as_mut() {
            ext.verdict = ext.cluster_verdict.clone();
        }
        r.sync_full(&mut maps, &model([p]), now).unwrap();
        assert_eq!(masters(&maps).len(), 2);
    }

    #[test]
    fn a_released_frontend_goes_to_the_next_claimant() {
        let (mut maps, mut r, now) = start();
        // Two services with the same ClusterIP and port (bad input): the first one wins.
        let first = port("a", 1, &[1]);
        let second = port("b", 1, &[2]);
        r.sync_full(&mut maps, &model([first, second.clone()]), now)
            .unwrap();
        let target = |maps: &FakeMaps| maps.services[&slot_key(&masters(maps)[0].0, 1)].target;
        assert_eq!(maps.backends[&target(&maps)].addr, addr_of(ip(1)));
        let diff = ModelDiff {
            removed: vec![port("a", 1, &[1]).key],
            ..ModelDiff::default()
        };
        r.sync_partial(&mut maps, &model([second]), &diff, now)
            .unwrap();
        assert_eq!(masters(&maps).len(), 1);
        assert_eq!(maps.backends[&target(&maps)].addr, addr_of(ip(2)));
    }

    #[test]
    fn a_failed_sync_is_redone_in_full_and_converges() {
        let (mut maps, mut r, now) = start();
        let m1 = model((1..=5).map(|i| port(&format!("s{i}"), i, &[i])));
        r.sync_full(&mut maps, &m1, now).unwrap();
        let m2 = model((1..=5).map(|i| port(&format!("s{i}"), i, &[i, i + 10, i + 20])));
        let diff = ModelDiff {
            updated: m2.ports.keys().cloned().collect(),
            ..ModelDiff::default()
        };
        maps.fail_after = Some(4);
        assert!(r.sync_partial(&mut maps, &m2, &diff, now).is_err());
        maps.fail_after = None;
        r.sync_partial(&mut maps, &m2, &ModelDiff::default(), now)
            .unwrap();

        let (mut clean, mut rc, _) = start();
        rc.sync_full(&mut clean, &m2, now).unwrap();
        let shape = |m: &FakeMaps| {
            m.services
                .iter()
                .map(|(k, v)| {
                    (
                        k.addr,
                        k.slot,
                        v.count,
                        m.backends.get(&v.target).map(|b| b.addr),
                    )
                })
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(shape(&maps), shape(&clean));
        assert_eq!(maps.cluster_ips, clean.cluster_ips);
        for (k, v) in masters(&maps) {
            assert_resolvable(&maps, &k, &v, "after recovery");
        }
    }

    /// A sync that stops at any element (a batch the kernel applied part way) leaves the
    /// known state exactly the maps' content: slots written without their frontend entry
    /// are known (and deleted after the grace period if never committed), backends not
    /// written are forgotten. Readers never miss, and later syncs leave nothing behind.
    #[test]
    fn a_batch_stopped_part_way_leaves_the_known_state_exact() {
        let m1 = model((1..=4).map(|i| port(&format!("s{i}"), i, &[i, i + 10])));
        // s1 grows, s2 changes a backend, s3 shrinks, s4 goes, s5 is new.
        let m2 = model([
            port("s1", 1, &[1, 11, 21, 31]),
            port("s2", 2, &[42, 12]),
            port("s3", 3, &[3]),
            port("s5", 5, &[5, 15]),
        ]);
        let m3 = model([port("s5", 5, &[5])]);
        let (mut clean, mut rc, now) = start();
        rc.sync_full(&mut clean, &m3, now).unwrap();

        let mut fail_at = 0;
        loop {
            let (mut maps, mut r, now) = start();
            r.sync_full(&mut maps, &m1, now).unwrap();
            let before = maps.clone();
            maps.fail_after = Some(fail_at);
            let failed = r.sync_full(&mut maps, &m2, now).is_err();
            maps.fail_after = None;
            assert_no_reader_misses(&before, &maps);

            let found = Reconciler::recover(&maps, now).unwrap();
            assert_eq!(
                r.frontends, found.frontends,
                "frontends, failing at {fail_at}"
            );
            assert_eq!(r.backends, found.backends, "backends, failing at {fail_at}");
            for key in maps.services.keys().filter(|k| k.slot != 0) {
                let counted = r
                    .frontends
                    .get(&slot_key(key, 0))
                    .is_some_and(|w| usize::from(key.slot) <= w.slots.len());
                assert!(
                    counted || r.retired_slots.contains(key),
                    "slot {key:?} unknown, failing at {fail_at}"
                );
            }

            r.sync_full(&mut maps, &m3, now).unwrap();
            r.sync_full(&mut maps, &m3, now + GRACE).unwrap();
            let keys = |m: &FakeMaps| m.services.keys().copied().collect::<BTreeSet<_>>();
            assert_eq!(keys(&maps), keys(&clean), "services, failing at {fail_at}");
            assert_eq!(
                maps.backends.len(),
                clean.backends.len(),
                "backends, failing at {fail_at}"
            );
            if !failed {
                break;
            }
            fail_at += 1;
        }
        assert!(fail_at > 10, "every step of the sync was cut: {fail_at}");
    }

    /// Another port of `base`'s Service: same ClusterIP, its own port number and protocol.
    fn sibling(base: &ServicePort, name: &str, number: u16, protocol: Protocol) -> ServicePort {
        let mut p = base.clone();
        p.key.name.port_name = name.into();
        p.key.name.protocol = protocol;
        p.port = number;
        for f in &mut p.frontends {
            f.port = number;
        }
        p
    }

    /// The ClusterIPs of `m`, computed from the model alone.
    fn model_cluster_ips(m: &ProxyModel) -> BTreeSet<Addr> {
        m.ports
            .values()
            .flat_map(|p| &p.frontends)
            .filter(|f| f.kind == FrontendKind::ClusterIp)
            .map(|f| addr_of(f.ip))
            .collect()
    }

    #[test]
    fn cluster_ip_map_holds_exactly_the_models_cluster_ips() {
        let (mut maps, mut r, now) = start();
        let web = port("web", 1, &[1]);
        let web_dns = sibling(&web, "dns", 53, Protocol::Udp);
        let mut np = port("np", 2, &[2]);
        let node = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        np.frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: node,
            port: 30080,
        });
        np.external = Some(ExternalTraffic {
            verdict: np.internal.clone(),
            masquerade: true,
            pod_sources_use_cluster: Vec::new(),
            node_sources_use_cluster: false,
            cluster_verdict: np.internal.clone(),
        });
        let mut v6 = port("v6", 3, &[]);
        let vip6: IpAddr = "2001:db8:96::3".parse().unwrap();
        v6.key.family = IpFamily::V6;
        v6.cluster_ip = vip6;
        v6.frontends[0].ip = vip6;
        let addr = |last| addr_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)));

        let m1 = model([web.clone(), web_dns.clone(), np.clone(), v6.clone()]);
        r.sync_full(&mut maps, &m1, now).unwrap();
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m1));
        assert_eq!(
            maps.cluster_ips,
            [addr(1), addr(2), addr_of(vip6)].into(),
            "one entry per ClusterIP, none for the node address"
        );
        assert_eq!(maps.ops.cluster_ip_updates, 3, "shared by web's two ports");

        // One of web's ports goes: its ClusterIP stays for the other.
        let m2 = model([web_dns.clone(), np.clone(), v6.clone()]);
        let diff = ModelDiff {
            removed: vec![web.key.clone()],
            ..ModelDiff::default()
        };
        let before = maps.clone();
        r.sync_partial(&mut maps, &m2, &diff, now).unwrap();
        assert_no_reader_misses(&before, &maps);
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m2));
        assert_eq!(maps.ops.cluster_ip_deletes, 0);

        // A new port on web's address comes, the last old one goes, a ClusterIP changes:
        // the new frontends are never refused in between.
        let web_8080 = sibling(&web, "alt", 8080, Protocol::Tcp);
        let mut np_moved = np.clone();
        np_moved.cluster_ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4));
        np_moved.frontends[0].ip = np_moved.cluster_ip;
        let m3 = model([web_8080.clone(), np_moved.clone(), v6.clone()]);
        let diff = ModelDiff {
            added: vec![web_8080.key.clone()],
            updated: vec![np_moved.key.clone()],
            removed: vec![web_dns.key.clone()],
            ..ModelDiff::default()
        };
        let before = maps.clone();
        r.sync_partial(&mut maps, &m3, &diff, now).unwrap();
        assert_no_reader_misses(&before, &maps);
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m3));
        assert_eq!(maps.cluster_ips, [addr(1), addr(4), addr_of(vip6)].into());

        // Everything goes.
        let diff = ModelDiff {
            removed: m3.ports.keys().cloned().collect(),
            ..ModelDiff::default()
        };
        r.sync_partial(&mut maps, &model([]), &diff, now).unwrap();
        assert!(maps.cluster_ips.is_empty(), "{:?}", maps.cluster_ips);
    }

    #[test]
    fn cluster_ips_are_recovered_and_cleaned_after_a_restart() {
        let (mut maps, mut r, now) = start();
        let a = port("a", 1, &[1]);
        let b = port("b", 2, &[2]);
        let m = model([a.clone(), sibling(&a, "dns", 53, Protocol::Udp), b]);
        r.sync_full(&mut maps, &m, now).unwrap();
        assert_eq!(maps.cluster_ips.len(), 2);

        let mut r2 = Reconciler::recover(&maps, now).unwrap();
        let before = maps.ops;
        let stats = r2.sync_full(&mut maps, &m, now).unwrap();
        assert_eq!((stats.updates, stats.deletes), (0, 0));
        assert_eq!(maps.ops, before, "recovered ClusterIPs are not rewritten");

        // b went away while no agent ran; a's ports share its ClusterIP.
        let mut r3 = Reconciler::recover(&maps, now).unwrap();
        let m2 = model([a.clone(), sibling(&a, "dns", 53, Protocol::Udp)]);
        r3.sync_full(&mut maps, &m2, now).unwrap();
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m2));
        // Later partial syncs know both of a's ports use it.
        let diff = ModelDiff {
            removed: vec![a.key.clone()],
            ..ModelDiff::default()
        };
        let m3 = model([sibling(&a, "dns", 53, Protocol::Udp)]);
        r3.sync_partial(&mut maps, &m3, &diff, now).unwrap();
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m3));
        assert_eq!(maps.cluster_ips.len(), 1);
    }

    #[test]
    fn a_failed_cluster_ip_write_is_made_by_the_next_sync() {
        let (mut maps, mut r, now) = start();
        let m = model([port("a", 1, &[1])]);
        // Backend, slot and frontend succeed; the ClusterIP write fails.
        maps.fail_after = Some(3);
        assert!(r.sync_full(&mut maps, &m, now).is_err());
        assert!(maps.cluster_ips.is_empty());
        maps.fail_after = None;
        r.sync_full(&mut maps, &m, now).unwrap();
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m));

        // The same after a synced state, with an empty partial sync next.
        let m2 = model([port("a", 1, &[1]), port("b", 2, &[2])]);
        maps.fail_after = Some(3);
        assert!(r.sync_full(&mut maps, &m2, now).is_err());
        maps.fail_after = None;
        r.sync_partial(&mut maps, &m2, &ModelDiff::default(), now)
            .unwrap();
        assert_eq!(maps.cluster_ips, model_cluster_ips(&m2));
    }
}
