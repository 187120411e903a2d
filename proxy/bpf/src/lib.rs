//! kproxy's eBPF dataplane, userspace side.
//!
//! [`BpfDataplane`] loads the embedded object ([`object::EBPF_OBJECT`]), attaches its
//! socket load-balancing programs to a cgroup and its tc programs (traffic from outside to
//! NodePorts, LB IPs and externalIPs) to the node's devices, pins everything under a bpffs so the
//! programs keep working while no agent runs, and keeps the maps at the model's state.
//!
//! Modules: `loader` (load, pin, attach, take over, clean up), `devices` (which devices
//! get which tc program, kept up to date as pods come and go), `maps` (the only code that
//! touches map contents, behind a trait with an in-memory fake), `reconcile` (model → map
//! operations, make-before-break, stable ids). The map layout, the reject/drop errors and
//! the restart sequence are described in this crate's `README.md`.

mod batch;
mod devices;
pub mod inspect;
mod loader;
pub mod maps;
pub mod object;
mod reconcile;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Instant,
};

use kproxy_common::Config;
use kproxy_model::{ModelDiff, ProxyModel, ServicePort, ServicePortKey};

pub use crate::{maps::CounterValues, reconcile::SyncStats};
use crate::{maps::MapsError, reconcile::Reconciler};

/// Everything that can go wrong in the eBPF dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded object did not load (maps could not be created or pinned).
    #[error("loading the eBPF object")]
    Load {
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The object lacks a program or map this crate expects: a build mismatch.
    #[error("{name} is missing from the eBPF object")]
    MissingInObject {
        /// The program or map.
        name: &'static str,
    },
    /// A program failed to load (the verifier log is in the source) or attach.
    #[error("program {name}")]
    Program {
        /// The program.
        name: &'static str,
        /// aya's error; `{:#}` shows the verifier log.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A link could not be converted or opened from its pin.
    #[error("link of program {name}")]
    Link {
        /// The program.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A link could not be pinned.
    #[error("pinning the link of program {name}")]
    Pin {
        /// The program.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::pin::PinError,
    },
    /// A map could not be opened or typed.
    #[error("map {name}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A pinned map has another layout than this build expects.
    #[error("pinned map {} does not match this build: {reason}", path.display())]
    IncompatiblePin {
        /// The pin.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A map operation failed during a sync; the next sync redoes everything.
    #[error("syncing the maps")]
    Sync {
        /// The failed operation.
        #[source]
        source: MapsError,
    },
    /// A file operation on the bpffs or cgroup failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The network devices could not be listed, or their namespace entered.
    #[error("listing the network devices")]
    Devices {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The namespace cookie of the agent's network namespace could not be read.
    #[error("reading the network namespace cookie")]
    NetnsCookie {
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where the dataplane lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfConfig {
    /// The cgroup (v2) whose sockets are load-balanced, with every descendant: the node's
    /// root cgroup in production, a lab node's cgroup in tests.
    pub cgroup_path: PathBuf,
    /// A mounted bpffs; kproxy pins under `<bpffs>/kproxy/`.
    pub bpffs: PathBuf,
    /// The devices traffic from outside arrives on (`--devices`), which get the tc
    /// programs for NodePorts, LB IPs and externalIPs. Empty: every non-loopback device
    /// holding an address that is not link-local, found when the dataplane is created
    /// (the node's addresses, and so its NodePort addresses, live there). Every other
    /// Ethernet device (pod veths) gets the program that translates local backends'
    /// replies.
    pub devices: Vec<String>,
}

/// The eBPF dataplane: programs attached, maps pinned, reconciler in memory.
///
/// Create it in the node's own network namespace: sockets there are "node" clients
/// (`ExternalTraffic::node_sources_use_cluster`), sockets in every other namespace are
/// pods (`pod_sources_use_cluster`; a pod's address is not known at `connect` time, so
/// every pod is taken to be inside the cluster CIDRs).
///
/// Dropping it leaves everything attached and pinned: a new instance takes over without
/// a gap. [`BpfDataplane::cleanup`] removes it all.
pub struct BpfDataplane {
    /// Holds the loaded programs' fds (the pinned links keep them attached regardless),
    /// and attaches the tc programs to devices that appear later.
    ebpf: aya::Ebpf,
    maps: maps::KernelMaps,
    reconciler: Reconciler,
    bpffs: PathBuf,
    /// The network namespace the dataplane serves (the creator's).
    netns: OwnedFd,
    /// The external devices.
    devices: Vec<String>,
    attached: devices::Attached,
    /// Local endpoints of each service port at its last sync. A partial sync rescans the
    /// devices only when a port gains one (its pod's veth may be new); see
    /// [`BpfDataplane::sync_partial`].
    local_endpoints: BTreeMap<ServicePortKey, BTreeSet<IpAddr>>,
    /// The last sync failed (or none ran yet): the next one rescans the devices and
    /// relearns `local_endpoints` from the whole model.
    rescan_all: bool,
}

fn local_endpoints_of(port: &ServicePort) -> BTreeSet<IpAddr> {
    port.endpoints
        .iter()
        .filter(|e| e.is_local)
        .map(|e| e.ip)
        .collect()
}

impl std::fmt::Debug for BpfDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfDataplane")
            .field("frontends", &self.reconciler.frontend_count())
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl BpfDataplane {
    /// Loads and attaches the programs, reusing the maps and replacing the programs of a
    /// previous agent pinned under the same bpffs. The maps keep serving their old
    /// content until the first sync; the first sync (full or partial) is a full one.
    pub fn new(config: &BpfConfig) -> Result<Self, Error> {
        let host_netns_cookie = loader::current_netns_cookie()?;
        let netns_path = Path::new("/proc/thread-self/ns/net");
        let netns: OwnedFd = std::fs::File::open(netns_path)
            .map_err(|source| Error::Io {
                action: "opening",
                path: netns_path.to_owned(),
                source,
            })?
            .into();
        let devices = if config.devices.is_empty() {
            devices::default_devices()?
        } else {
            config.devices.clone()
        };
        let loader::Loaded { ebpf, mut maps } =
            loader::load_and_attach(&config.bpffs, &config.cgroup_path)?;
        maps.set_config(Config { host_netns_cookie })
            .map_err(|source| Error::Sync { source })?;
        let reconciler =
            Reconciler::recover(&maps, Instant::now()).map_err(|source| Error::Sync { source })?;
        let mut dp = BpfDataplane {
            ebpf,
            maps,
            reconciler,
            bpffs: config.bpffs.clone(),
            netns,
            devices,
            attached: devices::Attached::default(),
            local_endpoints: BTreeMap::new(),
            rescan_all: true,
        };
        dp.attach_devices()?;
        tracing::info!(
            bpffs = %config.bpffs.display(),
            cgroup = %config.cgroup_path.display(),
            devices = ?dp.devices,
            recovered_frontends = dp.reconciler.frontend_count(),
            "eBPF dataplane attached"
        );
        Ok(dp)
    }

    /// Attaches the tc programs to devices that appeared since the last call (pod veths),
    /// and forgets those that went away. Runs before every full sync and before partial
    /// syncs that add a local endpoint, so a new pod's veth has its reply program before
    /// its endpoint can be chosen.
    fn attach_devices(&mut self) -> Result<(), Error> {
        let Self {
            ebpf,
            bpffs,
            netns,
            devices,
            attached,
            ..
        } = self;
        devices::in_netns(netns, || attached.refresh(ebpf, bpffs, devices))
    }

    /// The external devices the tc programs serve.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Writes every difference between the maps and `model`, and removes everything the
    /// model does not have. Rescans the devices first.
    pub fn sync_full(&mut self, model: &ProxyModel) -> Result<SyncStats, Error> {
        self.rescan_all = true;
        self.attach_devices()?;
        self.local_endpoints = model
            .ports
            .iter()
            .map(|(key, port)| (key.clone(), local_endpoints_of(port)))
            .filter(|(_, eps)| !eps.is_empty())
            .collect();
        let stats = self
            .reconciler
            .sync_full(&mut self.maps, model, Instant::now())
            .map_err(|source| Error::Sync { source })?;
        self.rescan_all = false;
        tracing::info!(?stats, "eBPF full sync");
        Ok(stats)
    }

    /// Writes the differences for the service ports `diff` names. `model` is the whole
    /// new model (ports that take over a released frontend are read from it). Its cost
    /// follows the size of `diff`, not of the model.
    ///
    /// The devices are rescanned only when a port named in `diff` gains a local endpoint
    /// (its pod's veth may be new and needs the reply program before the endpoint can be
    /// chosen), or after a failed sync. A device that appears for any other reason waits
    /// for the next full sync: without a local endpoint behind it, nothing of the
    /// dataplane's goes through it.
    pub fn sync_partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
    ) -> Result<SyncStats, Error> {
        if self.rescan_all {
            return self.sync_full(model);
        }
        if self.gains_local_endpoints(model, diff) {
            self.attach_devices()
                .inspect_err(|_| self.rescan_all = true)?;
        }
        let stats = self
            .reconciler
            .sync_partial(&mut self.maps, model, diff, Instant::now())
            .map_err(|source| {
                self.rescan_all = true;
                Error::Sync { source }
            })?;
        tracing::info!(?stats, "eBPF partial sync");
        Ok(stats)
    }

    /// Records the local endpoints of the ports `diff` names; true if one of them has one
    /// it did not have at its last sync.
    fn gains_local_endpoints(&mut self, model: &ProxyModel, diff: &ModelDiff) -> bool {
        let mut gained = false;
        for key in diff.added.iter().chain(&diff.updated).chain(&diff.removed) {
            let new = model
                .ports
                .get(key)
                .map(local_endpoints_of)
                .unwrap_or_default();
            let old = self.local_endpoints.remove(key).unwrap_or_default();
            gained |= !new.is_subset(&old);
            if !new.is_empty() {
                self.local_endpoints.insert(key.clone(), new);
            }
        }
        gained
    }

    /// The socket programs' decision counters, summed over CPUs (indices in
    /// `kproxy_common::counter`). They survive restarts with the maps.
    pub fn counters(&self) -> Result<CounterValues, Error> {
        self.maps
            .counters()
            .map_err(|source| Error::Sync { source })
    }

    /// Detaches the programs and removes every pin kproxy made under `bpffs`. Run it with
    /// no agent using that bpffs: a live [`BpfDataplane`] keeps its programs until dropped.
    pub fn cleanup(bpffs: &Path) -> Result<(), Error> {
        loader::remove_pins(bpffs)
    }
}
