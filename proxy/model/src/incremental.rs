//! The model kept between syncs, rebuilt only where the cluster state changed.
//!
//! Endpoint churn is the common change at scale: one EndpointSlice out of 100k changes and
//! everything else stays. Sources say which objects changed ([`Changes`], kube-proxy's
//! change trackers); [`Incremental::update`] rebuilds only the Services whose slices
//! changed and reports the [`ModelDiff`] directly, in time proportional to the change. Anything wider (a Service added,
//! changed or removed, the Node, the configuration) rebuilds everything with [`build`],
//! because it can move frontends between Services and change every endpoint's locality.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use crate::{
    ClusterState, IpFamily, ModelConfig, ModelDiff, ModelWarning, ObjectKey, ObjectKind, Protocol,
    ProxyModel, ServicePortKey, ServicePortName, SliceInfo, build, diff,
};

/// Which objects may differ from the previous snapshot a source handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Unknown: anything may have changed (the first snapshot, a relist, or a source that
    /// does not track changes). The model is rebuilt whole.
    All,
    /// Only these objects may differ (added, changed or removed).
    Keys {
        /// Services.
        services: BTreeSet<ObjectKey>,
        /// EndpointSlices.
        slices: BTreeSet<ObjectKey>,
        /// This node's Node.
        node: bool,
    },
}

impl Changes {
    /// No change at all.
    pub fn none() -> Self {
        Self::Keys {
            services: BTreeSet::new(),
            slices: BTreeSet::new(),
            node: false,
        }
    }

    /// Adds `other`'s changes to these (used when several snapshots are skipped).
    pub fn merge(&mut self, other: Changes) {
        match (&mut *self, other) {
            (Self::All, _) => {}
            (_, Self::All) => *self = Self::All,
            (
                Self::Keys {
                    services,
                    slices,
                    node,
                },
                Self::Keys {
                    services: s2,
                    slices: l2,
                    node: n2,
                },
            ) => {
                services.extend(s2);
                slices.extend(l2);
                *node |= n2;
            }
        }
    }
}

/// The model between syncs, with the indexes incremental updates need.
#[derive(Debug, Default)]
pub struct Incremental {
    /// The configuration the model was built with; None before the first update.
    config: Option<ModelConfig>,
    model: ProxyModel,
    /// Every current warning, whichever update found it.
    warnings: Vec<ModelWarning>,
    /// Slices of each Service (by the `kubernetes.io/service-name` label).
    /// A sorted Vec, not a set: most Services have one slice, and a one-element BTreeSet
    /// costs a whole B-tree node (half a KiB) per Service.
    slices_of: HashMap<ObjectKey, Vec<ObjectKey>>,
    /// The Service each slice belonged to when last seen, so a removed slice still
    /// names the Service it leaves.
    owner_of: HashMap<ObjectKey, ObjectKey>,
}

/// What one [`Incremental::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// What changed in the model.
    pub diff: ModelDiff,
    /// True when everything was rebuilt.
    pub full: bool,
}

impl Incremental {
    /// The current model.
    pub fn model(&self) -> &ProxyModel {
        &self.model
    }

    /// Every current warning (from the last full build plus incremental rebuilds).
    pub fn warnings(&self) -> &[ModelWarning] {
        &self.warnings
    }

    /// Brings the model to `state` under `config`, where `changes` says which objects may
    /// differ from the state of the previous update, and says what changed in the model.
    pub fn update(
        &mut self,
        state: &ClusterState,
        changes: &Changes,
        config: &ModelConfig,
    ) -> Update {
        let slices_only = match changes {
            Changes::Keys { services, node, .. } => {
                self.config.as_ref() == Some(config) && services.is_empty() && !node
            }
            Changes::All => false,
        };
        if slices_only
            && let Changes::Keys { slices, .. } = changes
            && let Some(update) = self.update_slices(state, slices, config)
        {
            return update;
        }
        self.rebuild(state, config)
    }

    fn rebuild(&mut self, state: &ClusterState, config: &ModelConfig) -> Update {
        let built = build(state, config);
        let diff = diff(&self.model, &built.model);
        self.model = built.model;
        self.warnings = built.warnings;
        self.config = Some(config.clone());
        self.slices_of.clear();
        self.owner_of.clear();
        for (key, slice) in &state.slices {
            if let Some(owner) = owner(key, slice) {
                // Slices come in key order: each Service's list stays sorted.
                self.slices_of
                    .entry(owner.clone())
                    .or_default()
                    .push(key.clone());
                self.owner_of.insert(key.clone(), owner);
            }
        }
        Update { diff, full: true }
    }

    /// Rebuilds the Services whose slices changed; None when that is not safe (a Service
    /// that had no ports gains some: it may have been left out for a frontend conflict
    /// that only a full build sees).
    fn update_slices(
        &mut self,
        state: &ClusterState,
        changed: &BTreeSet<ObjectKey>,
        config: &ModelConfig,
    ) -> Option<Update> {
        let mut affected = BTreeSet::new();
        for key in changed {
            let new_owner = state.slices.get(key).and_then(|s| owner(key, s));
            let old_owner = match &new_owner {
                Some(o) => self.owner_of.insert(key.clone(), o.clone()),
                None => self.owner_of.remove(key),
            };
            if let Some(o) = &old_owner
                && let Some(list) = self.slices_of.get_mut(o)
            {
                if let Ok(at) = list.binary_search(key) {
                    list.remove(at);
                }
                if list.is_empty() {
                    self.slices_of.remove(o);
                }
            }
            if let Some(o) = &new_owner {
                let list = self.slices_of.entry(o.clone()).or_default();
                if let Err(at) = list.binary_search(key) {
                    list.insert(at, key.clone());
                }
            }
            affected.extend(old_owner);
            affected.extend(new_owner);
        }
        let mut total = ModelDiff::default();
        for service_key in &affected {
            let Some(service) = state.services.get(service_key) else {
                continue;
            };
            let slices: BTreeMap<ObjectKey, _> = self
                .slices_of
                .get(service_key)
                .into_iter()
                .flatten()
                .filter_map(|k| state.slices.get(k).map(|s| (k.clone(), Arc::clone(s))))
                .collect();
            let mini = ClusterState {
                services: BTreeMap::from([(service_key.clone(), Arc::clone(service))]),
                slices,
                node: state.node.clone(),
                ..ClusterState::default()
            };
            let built = build(&mini, config);
            let old_ports = self.take_ports(service_key);
            if old_ports.ports.is_empty() && !built.model.ports.is_empty() {
                // Put back what was taken and let a full build decide.
                self.model.ports.extend(old_ports.ports);
                return None;
            }
            let d = diff(&old_ports, &built.model);
            total.added.extend(d.added);
            total.updated.extend(d.updated);
            total.removed.extend(d.removed);
            total.stale_udp_endpoints.extend(d.stale_udp_endpoints);
            self.model.ports.extend(built.model.ports);
            let slices = self.slices_of.get(service_key);
            self.warnings
                .retain(|w| !concerns(w, service_key, slices, changed));
            self.warnings.extend(built.warnings);
        }
        Some(Update {
            diff: total,
            full: false,
        })
    }

    /// Removes and returns the ports of one Service. They are found by range in the model's
    /// order (family, namespace, name, port name, protocol) rather than by an index, which
    /// would hold a second copy of every key.
    fn take_ports(&mut self, service: &ObjectKey) -> ProxyModel {
        let mut keys = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            // The smallest key of the Service in this family: empty port name, first protocol.
            let first = ServicePortKey {
                family,
                name: ServicePortName {
                    namespace: service.namespace.to_string(),
                    name: service.name.to_string(),
                    port_name: String::new(),
                    protocol: Protocol::Tcp,
                },
            };
            keys.extend(
                self.model
                    .ports
                    .range(first..)
                    .map(|(key, _)| key)
                    .take_while(|key| {
                        key.family == family
                            && *key.name.namespace == *service.namespace
                            && *key.name.name == *service.name
                    })
                    .cloned(),
            );
        }
        ProxyModel {
            ports: keys
                .into_iter()
                .filter_map(|k| self.model.ports.remove_entry(&k))
                .collect(),
        }
    }
}

/// Whether `w` is about `service`, one of its slices, or a changed slice.
fn concerns(
    w: &ModelWarning,
    service: &ObjectKey,
    slices: Option<&Vec<ObjectKey>>,
    changed: &BTreeSet<ObjectKey>,
) -> bool {
    match w.kind {
        ObjectKind::Service => &w.object == service,
        ObjectKind::EndpointSlice => {
            slices.is_some_and(|s| s.contains(&w.object)) || changed.contains(&w.object)
        }
        ObjectKind::Node => false,
    }
}

/// The Service a slice belongs to: its namespace and `kubernetes.io/service-name` label.
fn owner(key: &ObjectKey, slice: &SliceInfo) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: Arc::clone(&key.namespace),
        name: slice.service_name()?.into(),
    })
}
