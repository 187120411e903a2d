//! The only door to the kernel's maps: a narrow trait, its aya implementation, and (for
//! unit tests) an in-memory fake that counts every operation.
//!
//! Deletes are idempotent: deleting a missing key succeeds, so a retried or restarted
//! reconcile never fails on something already gone.

use std::io;

use crate::batch::{self, BatchError};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key as LpmKey},
    sys::SyscallError,
};
use kproxy_common::{
    Addr, AffinityMatchKey, Backend, Config, Counter, ServiceKey, ServiceValue, SourceRange,
    counter,
};

/// One `loadBalancerSourceRanges` entry: the LPM prefix length (service id bits
/// included) and the key data.
pub(crate) type RangeEntry = (u32, SourceRange);

/// A map operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map}")]
pub struct MapsError {
    /// What was attempted (`update`, `delete`, `dump`, ...).
    pub op: &'static str,
    /// The map's name.
    pub map: &'static str,
    /// The kernel's answer.
    #[source]
    pub source: MapError,
}

/// A batch write that stopped early: exactly its first `done` elements are in the map.
#[derive(Debug)]
pub(crate) struct PartialWrite {
    pub(crate) done: usize,
    pub(crate) error: MapsError,
}

/// Per-CPU counters summed over CPUs, indexed by `kproxy_common::counter`.
pub type CounterValues = [u64; counter::COUNT as usize];

/// Every map operation the reconciler needs.
pub(crate) trait LbMaps {
    fn service_update(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapsError>;
    fn service_delete(&mut self, key: &ServiceKey) -> Result<(), MapsError>;
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError>;
    /// Writes `keys[i]` → `values[i]` in order; on failure says how many were written.
    /// This default makes one call per element.
    fn service_update_batch(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), PartialWrite> {
        for (done, (key, value)) in keys.iter().zip(values).enumerate() {
            self.service_update(key, value)
                .map_err(|error| PartialWrite { done, error })?;
        }
        Ok(())
    }
    fn backend_update(&mut self, id: u32, value: &Backend) -> Result<(), MapsError>;
    fn backend_delete(&mut self, id: u32) -> Result<(), MapsError>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError>;
    /// As [`LbMaps::service_update_batch`], for backends.
    fn backend_update_batch(
        &mut self,
        ids: &[u32],
        values: &[Backend],
    ) -> Result<(), PartialWrite> {
        for (done, (id, value)) in ids.iter().zip(values).enumerate() {
            self.backend_update(*id, value)
                .map_err(|error| PartialWrite { done, error })?;
        }
        Ok(())
    }
    fn affinity_match_update(&mut self, key: AffinityMatchKey) -> Result<(), MapsError>;
    fn affinity_match_delete(&mut self, key: AffinityMatchKey) -> Result<(), MapsError>;
    fn affinity_matches(&self) -> Result<Vec<AffinityMatchKey>, MapsError>;
    fn source_range_update(&mut self, entry: RangeEntry) -> Result<(), MapsError>;
    fn source_range_delete(&mut self, entry: RangeEntry) -> Result<(), MapsError>;
    fn source_ranges(&self) -> Result<Vec<RangeEntry>, MapsError>;
    fn cluster_ip_update(&mut self, addr: Addr) -> Result<(), MapsError>;
    fn cluster_ip_delete(&mut self, addr: Addr) -> Result<(), MapsError>;
    fn cluster_ips(&self) -> Result<Vec<Addr>, MapsError>;
}

/// The real maps, taken out of the loaded object (and pinned).
pub(crate) struct KernelMaps {
    pub(crate) services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub(crate) backends: HashMap<MapData, u32, Backend>,
    pub(crate) affinity_match: HashMap<MapData, AffinityMatchKey, u32>,
    pub(crate) config: Array<MapData, Config>,
    pub(crate) counters: PerCpuArray<MapData, Counter>,
    pub(crate) source_ranges: LpmTrie<MapData, SourceRange, u32>,
    pub(crate) cluster_ips: HashMap<MapData, Addr, u32>,
}

fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

fn wrap(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { op, map, source }
}

/// A failed insert; a full map (`E2BIG` from a hash map, `ENOSPC` from an LPM trie) says
/// so, since the fix is a bigger map (`kproxy_common::MAPS`), not a retry.
fn wrap_update(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| {
        let full = matches!(
            &source,
            MapError::SyscallError(s)
                if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
        );
        let op = if full {
            "update (the map is full)"
        } else {
            "update"
        };
        MapsError { op, map, source }
    }
}

/// A failed batch call as the single-element calls report it.
fn batch_error(e: BatchError) -> (usize, MapError) {
    (
        e.done,
        MapError::SyscallError(SyscallError {
            call: e.call,
            io_error: e.source,
        }),
    )
}

fn partial_update(map: &'static str) -> impl FnOnce(BatchError) -> PartialWrite {
    move |e| {
        let (done, source) = batch_error(e);
        PartialWrite {
            done,
            error: wrap_update(map)(source),
        }
    }
}

fn dump_error(map: &'static str) -> impl FnOnce(BatchError) -> MapsError {
    move |e| {
        let (_, source) = batch_error(e);
        wrap("dump", map)(source)
    }
}

fn idempotent(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

impl KernelMaps {
    /// Writes the agent's settings for the programs.
    pub(crate) fn set_config(&mut self, config: Config) -> Result<(), MapsError> {
        self.config
            .set(0, config, 0)
            .map_err(wrap("update", kproxy_common::MAP_CONFIG))
    }

    /// The decision counters, summed over CPUs.
    pub(crate) fn counters(&self) -> Result<CounterValues, MapsError> {
        let mut out = [0; counter::COUNT as usize];
        for (i, slot) in (0..counter::COUNT).zip(out.iter_mut()) {
            let values = self
                .counters
                .get(&i, 0)
                .map_err(wrap("lookup", kproxy_common::MAP_COUNTERS))?;
            *slot = values.iter().map(|c| c.events).sum();
        }
        Ok(out)
    }
}

impl LbMaps for KernelMaps {
    fn service_update(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapsError> {
        self.services
            .insert(key, value, 0)
            .map_err(wrap_update(kproxy_common::MAP_SERVICES))
    }

    fn service_delete(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        idempotent(self.services.remove(key)).map_err(wrap("delete", kproxy_common::MAP_SERVICES))
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
        batch::dump(&self.services).map_err(dump_error(kproxy_common::MAP_SERVICES))
    }

    fn service_update_batch(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), PartialWrite> {
        batch::update(&self.services, keys, values)
            .map_err(partial_update(kproxy_common::MAP_SERVICES))
    }

    fn backend_update(&mut self, id: u32, value: &Backend) -> Result<(), MapsError> {
        self.backends
            .insert(id, value, 0)
            .map_err(wrap_update(kproxy_common::MAP_BACKENDS))
    }

    fn backend_delete(&mut self, id: u32) -> Result<(), MapsError> {
        idempotent(self.backends.remove(&id)).map_err(wrap("delete", kproxy_common::MAP_BACKENDS))
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        batch::dump(&self.backends).map_err(dump_error(kproxy_common::MAP_BACKENDS))
    }

    fn backend_update_batch(
        &mut self,
        ids: &[u32],
        values: &[Backend],
    ) -> Result<(), PartialWrite> {
        batch::update(&self.backends, ids, values)
            .map_err(partial_update(kproxy_common::MAP_BACKENDS))
    }

    fn affinity_match_update(&mut self, key: AffinityMatchKey) -> Result<(), MapsError> {
        self.affinity_match
            .insert(key, 1, 0)
            .map_err(wrap_update(kproxy_common::MAP_AFFINITY_MATCH))
    }

    fn affinity_match_delete(&mut self, key: AffinityMatchKey) -> Result<(), MapsError> {
        idempotent(self.affinity_match.remove(&key))
            .map_err(wrap("delete", kproxy_common::MAP_AFFINITY_MATCH))
    }

    fn affinity_matches(&self) -> Result<Vec<AffinityMatchKey>, MapsError> {
        self.affinity_match
            .keys()
            .collect::<Result<_, _>>()
            .map_err(wrap("dump", kproxy_common::MAP_AFFINITY_MATCH))
    }

    fn source_range_update(&mut self, (len, data): RangeEntry) -> Result<(), MapsError> {
        self.source_ranges
            .insert(&LpmKey::new(len, data), 1, 0)
            .map_err(wrap_update(kproxy_common::MAP_SOURCE_RANGES))
    }

    fn source_range_delete(&mut self, (len, data): RangeEntry) -> Result<(), MapsError> {
        idempotent(self.source_ranges.remove(&LpmKey::new(len, data)))
            .map_err(wrap("delete", kproxy_common::MAP_SOURCE_RANGES))
    }

    fn source_ranges(&self) -> Result<Vec<RangeEntry>, MapsError> {
        self.source_ranges
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<_, _>>()
            .map_err(wrap("dump", kproxy_common::MAP_SOURCE_RANGES))
    }

    fn cluster_ip_update(&mut self, addr: Addr) -> Result<(), MapsError> {
        self.cluster_ips
            .insert(addr, 1, 0)
            .map_err(wrap_update(kproxy_common::MAP_CLUSTER_IPS))
    }

    fn cluster_ip_delete(&mut self, addr: Addr) -> Result<(), MapsError> {
        idempotent(self.cluster_ips.remove(&addr))
            .map_err(wrap("delete", kproxy_common::MAP_CLUSTER_IPS))
    }

    fn cluster_ips(&self) -> Result<Vec<Addr>, MapsError> {
        self.cluster_ips
            .keys()
            .collect::<Result<_, _>>()
            .map_err(wrap("dump", kproxy_common::MAP_CLUSTER_IPS))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! In-memory maps with operation counters and fault injection.

    use std::collections::{BTreeMap, BTreeSet};

    use super::{LbMaps, MapError, MapsError, RangeEntry};
    use kproxy_common::{Addr, AffinityMatchKey, Backend, ServiceKey, ServiceValue};

    /// Operations performed, by kind.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Ops {
        pub(crate) service_updates: usize,
        pub(crate) service_deletes: usize,
        pub(crate) backend_updates: usize,
        pub(crate) backend_deletes: usize,
        pub(crate) match_updates: usize,
        pub(crate) match_deletes: usize,
        pub(crate) range_updates: usize,
        pub(crate) range_deletes: usize,
        pub(crate) cluster_ip_updates: usize,
        pub(crate) cluster_ip_deletes: usize,
    }

    impl Ops {
        pub(crate) fn total(&self) -> usize {
            self.service_updates
                + self.service_deletes
                + self.backend_updates
                + self.backend_deletes
                + self.match_updates
                + self.match_deletes
                + self.range_updates
                + self.range_deletes
                + self.cluster_ip_updates
                + self.cluster_ip_deletes
        }
    }

    /// One event in the order the reconciler issued it, for ordering assertions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Event {
        ServiceUpdate(ServiceKey, ServiceValue),
        ServiceDelete(ServiceKey),
        BackendUpdate(u32),
        BackendDelete(u32),
        ClusterIpUpdate(Addr),
        ClusterIpDelete(Addr),
    }

    #[derive(Debug, Default, Clone)]
    pub(crate) struct FakeMaps {
        pub(crate) services: BTreeMap<ServiceKey, ServiceValue>,
        pub(crate) backends: BTreeMap<u32, Backend>,
        pub(crate) matches: BTreeSet<AffinityMatchKey>,
        pub(crate) ranges: BTreeSet<RangeEntry>,
        pub(crate) cluster_ips: BTreeSet<Addr>,
        pub(crate) ops: Ops,
        pub(crate) events: Vec<Event>,
        /// Fail every operation once this many more have succeeded.
        pub(crate) fail_after: Option<usize>,
    }

    impl FakeMaps {
        fn step(&mut self, map: &'static str) -> Result<(), MapsError> {
            if let Some(n) = self.fail_after.as_mut() {
                if *n == 0 {
                    return Err(MapsError {
                        op: "injected",
                        map,
                        source: MapError::KeyNotFound,
                    });
                }
                *n -= 1;
            }
            Ok(())
        }
    }

    impl LbMaps for FakeMaps {
        fn service_update(
            &mut self,
            key: &ServiceKey,
            value: &ServiceValue,
        ) -> Result<(), MapsError> {
            self.step("services")?;
            self.ops.service_updates += 1;
            self.events.push(Event::ServiceUpdate(*key, *value));
            self.services.insert(*key, *value);
            Ok(())
        }

        fn service_delete(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
            self.step("services")?;
            self.ops.service_deletes += 1;
            self.events.push(Event::ServiceDelete(*key));
            self.services.remove(key);
            Ok(())
        }

        fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn backend_update(&mut self, id: u32, value: &Backend) -> Result<(), MapsError> {
            self.step("backends")?;
            self.ops.backend_updates += 1;
            self.events.push(Event::BackendUpdate(id));
            self.backends.insert(id, *value);
            Ok(())
        }

        fn backend_delete(&mut self, id: u32) -> Result<(), MapsError> {
            self.step("backends")?;
            self.ops.backend_deletes += 1;
            self.events.push(Event::BackendDelete(id));
            self.backends.remove(&id);
            Ok(())
        }

        fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn affinity_match_update(&mut self, key: AffinityMatchKey) -> Result<(), MapsError> {
            self.step("affinity_match")?;
            self.ops.match_updates += 1;
            self.matches.insert(key);
            Ok(())
        }

        fn affinity_match_delete(&mut self, key: AffinityMatchKey) -> Result<(), MapsError> {
            self.step("affinity_match")?;
            self.ops.match_deletes += 1;
            self.matches.remove(&key);
            Ok(())
        }

        fn affinity_matches(&self) -> Result<Vec<AffinityMatchKey>, MapsError> {
            Ok(self.matches.iter().copied().collect())
        }

        fn source_range_update(&mut self, entry: RangeEntry) -> Result<(), MapsError> {
            self.step("source_ranges")?;
            self.ops.range_updates += 1;
            self.ranges.insert(entry);
            Ok(())
        }

        fn source_range_delete(&mut self, entry: RangeEntry) -> Result<(), MapsError> {
            self.step("source_ranges")?;
            self.ops.range_deletes += 1;
            self.ranges.remove(&entry);
            Ok(())
        }

        fn source_ranges(&self) -> Result<Vec<RangeEntry>, MapsError> {
            Ok(self.ranges.iter().copied().collect())
        }

        fn cluster_ip_update(&mut self, addr: Addr) -> Result<(), MapsError> {
            self.step("cluster_ips")?;
            self.ops.cluster_ip_updates += 1;
            self.events.push(Event::ClusterIpUpdate(addr));
            self.cluster_ips.insert(addr);
            Ok(())
        }

        fn cluster_ip_delete(&mut self, addr: Addr) -> Result<(), MapsError> {
            self.step("cluster_ips")?;
            self.ops.cluster_ip_deletes += 1;
            self.events.push(Event::ClusterIpDelete(addr));
            self.cluster_ips.remove(&addr);
            Ok(())
        }

        fn cluster_ips(&self) -> Result<Vec<Addr>, MapsError> {
            Ok(self.cluster_ips.iter().copied().collect())
        }
    }
}
