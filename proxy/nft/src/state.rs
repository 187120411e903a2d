//! What is programmed in one family's table, and the transactions that change it.
//!
//! The state remembers, per service port, exactly what it contributed (its
//! [`PortRender`]), so a partial sync re-renders only the ports the diff names and emits
//! the element-level difference. Shared objects are reference counted: ClusterIPs and
//! hairpin pairs (one element, many ports), class chains (one chain, many frontends).
//! Frontends claimed by two ports (invalid input, e.g. the same externalIP:port on two
//! Services) belong to the smallest port key; the others are skipped with a warning.

use std::{
    collections::{BTreeSet, hash_map::Entry},
    sync::{Arc, LazyLock},
};

use kproxy_model::{IpFamily, ModelDiff, ProxyModel, ServicePort, ServicePortKey};

use crate::{
    hash::{FastMap, FastSet},
    ir::{
        Chain, Element, EndpointList, EndpointSlot, Family, Name, Op, Rule, Set, Transaction, Value,
    },
    layout::{self, BASE_CHAINS, FixedSet, REJECT_CHAIN, SERVICES},
    render::{self, ClassSpec, FrontendKey, OwnChain, PortRender, SetRef},
};

/// Sets with at least this many elements at a full sync get a fixed size (1.5× their
/// content): the kernel then fills a pre-sized hash table, measurably faster than growing
/// one. A partial sync that would overflow a sized set falls back to a full sync, which
/// sizes it anew. Smaller sets stay growable, so many small class sets cost no memory.
const SIZED_SET_MIN: usize = 8192;

/// Full syncs of at least this many ports render on several threads; below it a thread
/// costs more than it saves.
const PARALLEL_RENDER_MIN: usize = 4096;
/// Threads rendering one full sync, at most.
const RENDER_THREADS_MAX: usize = 4;

/// One service port's claims and contribution.
#[derive(Debug, Clone)]
struct PortState {
    key: Arc<ServicePortKey>,
    claims: Vec<FrontendKey>,
    render: PortRender,
}

/// The ports claiming one frontend. The smallest key owns it; a second claimant is
/// invalid input, so `others` is nearly always empty (and then allocates nothing).
#[derive(Debug)]
struct Claimants {
    owner: Arc<ServicePortKey>,
    others: Vec<Arc<ServicePortKey>>,
}

impl Claimants {
    fn insert(&mut self, key: Arc<ServicePortKey>) {
        if key == self.owner || self.others.contains(&key) {
            return;
        }
        if key < self.owner {
            let old = std::mem::replace(&mut self.owner, key);
            self.others.push(old);
        } else {
            self.others.push(key);
        }
    }

    /// Removes `key`; false when no claimant is left.
    fn remove(&mut self, key: &ServicePortKey) -> bool {
        if *self.owner == *key {
            match self
                .others
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i)
            {
                Some(i) => self.owner = self.others.swap_remove(i),
                None => return false,
            }
        } else {
            self.others.retain(|k| **k != *key);
        }
        true
    }

    fn all(&self) -> impl Iterator<Item = &Arc<ServicePortKey>> {
        std::iter::once(&self.owner).chain(&self.others)
    }
}

#[derive(Debug, Clone)]
struct ClassState {
    name: Name,
    users: usize,
}

/// Programmed state of one family.
#[derive(Debug)]
pub(crate) struct FamilyState {
    fam: Family,
    mark: u32,
    ports: FastMap<Arc<ServicePortKey>, PortState>,
    /// Every port claiming a frontend; the first owns it.
    frontends: FastMap<FrontendKey, Claimants>,
    /// Reference counts of shared elements.
    shared: FastMap<(FixedSet, Value), usize>,
    classes: FastMap<ClassSpec, ClassState>,
    /// Sets created with a fixed size: name → (elements, capacity).
    capacity: FastMap<String, (usize, u32)>,
    /// Threads a big full sync renders on.
    render_threads: usize,
}

/// Result of planning a partial sync.
pub(crate) enum Partial {
    /// The transaction to apply.
    Tx,
    /// The change does not fit incrementally; do a full sync.
    NeedsFull,
}

/// Ops of one family's transaction, grouped by phase so references always resolve:
/// creations, rule (re)writes, element deletes, element adds, dispatch rewrite, deletions.
#[derive(Default)]
struct Phases {
    new_sets: Vec<Set>,
    new_chains: Vec<Chain>,
    flushes: Vec<Name>,
    rules: Vec<(Name, Rule)>,
    deletes: ElementOps,
    adds: ElementOps,
    services_dirty: bool,
    /// A change the phases cannot express (an own set whose definition changed).
    needs_full: bool,
    del_chains: Vec<Name>,
    del_sets: Vec<Name>,
}

/// Elements to add or delete, per set. A full sync at 100k services files over a
/// million elements, nearly all into fixed sets: those are indexed by [`FixedSet`]
/// instead of hashing a set name per element.
#[derive(Default)]
struct ElementOps {
    fixed: [Vec<Element>; FixedSet::ALL.len()],
    /// Whole endpoint lists of ports, shared with their renders (adds only).
    endpoint_lists: Vec<Arc<[EndpointList]>>,
    /// Class sets, by name.
    named: FastMap<Name, Vec<Element>>,
}

impl ElementOps {
    fn fixed_mut(&mut self, s: FixedSet) -> &mut Vec<Element> {
        &mut self.fixed[s as usize]
    }

    fn named_mut(&mut self, name: Name) -> &mut Vec<Element> {
        self.named.entry(name).or_default()
    }

    fn shared_endpoints(&self) -> usize {
        self.endpoint_lists
            .iter()
            .map(|l| crate::ir::endpoint_count(l))
            .sum()
    }

    /// Number of elements for the set called `name`.
    fn count(&self, name: &str) -> usize {
        match FixedSet::ALL.iter().find(|s| s.name() == name) {
            Some(FixedSet::Endpoints) => {
                self.fixed[FixedSet::Endpoints as usize].len() + self.shared_endpoints()
            }
            Some(s) => self.fixed[*s as usize].len(),
            None => self.named.get(name).map_or(0, Vec::len),
        }
    }

    /// Every non-empty list, fixed sets first; shared endpoint lists are left out.
    fn into_lists(self) -> impl Iterator<Item = (Name, Vec<Element>)> {
        FixedSet::ALL
            .into_iter()
            .zip(self.fixed)
            .map(|(s, els)| (fixed_name(s), els))
            .chain(self.named)
            .filter(|(_, els)| !els.is_empty())
    }

    /// Element count per set name, for sets with elements.
    fn counts(&self) -> impl Iterator<Item = (&str, usize)> {
        FixedSet::ALL
            .iter()
            .zip(&self.fixed)
            .map(|(s, els)| match s {
                FixedSet::Endpoints => (s.name(), els.len() + self.shared_endpoints()),
                _ => (s.name(), els.len()),
            })
            .chain(self.named.iter().map(|(n, els)| (&**n, els.len())))
            .filter(|(_, n)| *n > 0)
    }
}

impl Phases {
    fn into_ops(mut self, fam: Family, dispatch: Option<Vec<Rule>>, tx: &mut Transaction) {
        tx.ops
            .extend(self.new_sets.into_iter().map(|s| Op::AddSet(fam, s)));
        tx.ops
            .extend(self.new_chains.into_iter().map(|c| Op::AddChain(fam, c)));
        tx.ops
            .extend(self.flushes.into_iter().map(|c| Op::FlushChain(fam, c)));
        tx.ops
            .extend(self.rules.into_iter().map(|(c, r)| Op::AddRule(fam, c, r)));
        tx.ops.extend(
            self.deletes
                .into_lists()
                .map(|(s, e)| Op::DeleteElements(fam, s, e)),
        );
        let shared = std::mem::take(&mut self.adds.endpoint_lists);
        tx.ops.extend(
            self.adds
                .into_lists()
                .map(|(s, e)| Op::AddElements(fam, s, e)),
        );
        if !shared.is_empty() {
            tx.push(Op::AddSharedElements(
                fam,
                fixed_name(FixedSet::Endpoints),
                shared,
            ));
        }
        if let Some(rules) = dispatch {
            tx.push(Op::FlushChain(fam, SERVICES.into()));
            tx.ops.extend(
                rules
                    .into_iter()
                    .map(|r| Op::AddRule(fam, SERVICES.into(), r)),
            );
        }
        tx.ops
            .extend(self.del_chains.into_iter().map(|c| Op::DeleteChain(fam, c)));
        tx.ops
            .extend(self.del_sets.into_iter().map(|s| Op::DeleteSet(fam, s)));
    }
}

/// Fixed set names, allocated once and cloned into every transaction that needs them.
static FIXED_NAMES: LazyLock<Vec<(FixedSet, Name)>> = LazyLock::new(|| {
    FixedSet::ALL
        .iter()
        .map(|s| (*s, Name::from(s.name())))
        .collect()
});

fn fixed_name(s: FixedSet) -> Name {
    FIXED_NAMES
        .iter()
        .find(|(f, _)| *f == s)
        .map(|(_, n)| n.clone())
        .expect("every fixed set is listed")
}

fn own_chain(name: &Name) -> Chain {
    Chain {
        name: name.clone(),
        hook: None,
        comment: None,
    }
}

impl FamilyState {
    pub(crate) fn new(fam: Family, mark: u32) -> Self {
        Self {
            fam,
            mark,
            ports: FastMap::default(),
            frontends: FastMap::default(),
            shared: FastMap::default(),
            classes: FastMap::default(),
            capacity: FastMap::default(),
            render_threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(RENDER_THREADS_MAX),
        }
    }

    fn model_family(&self) -> IpFamily {
        match self.fam {
            Family::Ip => IpFamily::V4,
            Family::Ip6 => IpFamily::V6,
        }
    }

    fn claims(port: &ServicePort) -> Vec<FrontendKey> {
        let mut c: Vec<FrontendKey> = port
            .frontends
            .iter()
            .map(|f| render::frontend_key(port, f))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    fn render(&self, port: &ServicePort) -> PortRender {
        let owned = |k: FrontendKey| self.frontends.get(&k).is_some_and(|o| *o.owner == port.key);
        render::render_port(self.fam, self.mark, port, &owned)
    }

    fn claim(&mut self, c: FrontendKey, key: &Arc<ServicePortKey>) {
        match self.frontends.entry(c) {
            Entry::Occupied(mut e) => e.get_mut().insert(key.clone()),
            Entry::Vacant(e) => {
                e.insert(Claimants {
                    owner: key.clone(),
                    others: Vec::new(),
                });
            }
        }
    }

    fn unclaim(&mut self, c: &FrontendKey, key: &ServicePortKey) {
        if let Some(cl) = self.frontends.get_mut(c)
            && !cl.remove(key)
        {
            self.frontends.remove(c);
        }
    }

    fn warn_duplicates(&self, key: &ServicePortKey, claims: &[FrontendKey]) {
        for c in claims {
            if let Some(cl) = self.frontends.get(c).filter(|cl| *cl.owner != *key) {
                tracing::warn!(
                    service = %key, frontend = %c.0, port = c.2, owner = %cl.owner,
                    "frontend already used by another service port; ignored for this one"
                );
            }
        }
    }

    /// Replaces the whole table: delete and re-create in the same transaction.
    pub(crate) fn full(&mut self, model: &ProxyModel, tx: &mut Transaction) {
        let mut fresh = Self::new(self.fam, self.mark);
        fresh.render_threads = self.render_threads;
        let old = std::mem::replace(self, fresh);
        if old.ports.len() > 10_000 {
            // Freeing a million elements takes a noticeable time the sync need not wait for.
            std::thread::spawn(move || drop(old));
        }
        let fam = self.fam;
        let family = self.model_family();
        let ports: Vec<(Arc<ServicePortKey>, &ServicePort, Vec<FrontendKey>)> = model
            .ports
            .values()
            .filter(|p| p.key.family == family)
            .map(|p| (Arc::new(p.key.clone()), p, Self::claims(p)))
            .collect();
        for (key, _, claims) in &ports {
            for c in claims {
                self.claim(*c, key);
            }
        }
        tx.push(Op::AddTable(fam));
        tx.push(Op::DeleteTable(fam));
        tx.push(Op::AddTable(fam));
        for b in BASE_CHAINS {
            tx.push(Op::AddChain(fam, b.chain()));
        }
        let services = Chain {
            name: SERVICES.into(),
            hook: None,
            comment: Some("service dispatch".into()),
        };
        tx.push(Op::AddChain(fam, services));
        tx.push(Op::AddChain(
            fam,
            Chain {
                name: REJECT_CHAIN.into(),
                hook: None,
                comment: None,
            },
        ));
        let mut ph = Phases::default();
        let chunks = self.render_all(ports);
        // Size the element vectors once: they hold over a million elements at 100k services.
        let mut counts = [0usize; FixedSet::ALL.len()];
        for st in chunks.iter().flatten() {
            for (set, _) in &st.render.elements {
                if let SetRef::Fixed(s) = set {
                    counts[*s as usize] += 1;
                }
            }
        }
        for (s, n) in FixedSet::ALL.into_iter().zip(counts) {
            ph.adds.fixed_mut(s).reserve(n);
        }
        self.ports.reserve(chunks.iter().map(Vec::len).sum());
        let empty = PortRender::default();
        for st in chunks.into_iter().flatten() {
            self.account(&empty, &st.render, &mut ph);
            self.ports.insert(st.key.clone(), st);
        }
        self.size_sets(&ph);
        for s in FixedSet::ALL {
            let mut set = s.set(fam);
            set.size = self.capacity.get(s.name()).map(|c| c.1);
            tx.push(Op::AddSet(fam, set));
        }
        for set in &mut ph.new_sets {
            set.size = self.capacity.get(&*set.name).map(|c| c.1);
        }
        for (chain, rule) in render::fixed_rules(fam, self.mark) {
            if chain != SERVICES {
                tx.push(Op::AddRule(fam, chain.into(), rule));
            }
        }
        let dispatch = self.dispatch_rules();
        ph.into_ops(fam, Some(dispatch), tx);
    }

    /// Renders every port of a full sync. Rendering is pure and reads only the claims, so
    /// big models are split over a few threads: at 100k services it is most of the
    /// sync's own (non-kernel) time. Ports keep their order, so the transaction is the
    /// same however it was split. The renders come back in the threads' chunks: joining
    /// them into one vector would hold every render twice for a moment.
    fn render_all(
        &self,
        ports: Vec<(Arc<ServicePortKey>, &ServicePort, Vec<FrontendKey>)>,
    ) -> Vec<Vec<PortState>> {
        let render = |(key, p, claims): (Arc<ServicePortKey>, &ServicePort, Vec<FrontendKey>)| {
            self.warn_duplicates(&key, &claims);
            PortState {
                render: self.render(p),
                key,
                claims,
            }
        };
        let threads = self.render_threads;
        if threads < 2 || ports.len() < PARALLEL_RENDER_MIN {
            return vec![ports.into_iter().map(render).collect()];
        }
        let total = ports.len();
        let chunk = total.div_ceil(threads);
        let mut chunks: Vec<Vec<_>> = Vec::with_capacity(threads);
        let mut rest = ports.into_iter();
        for _ in 0..threads {
            chunks.push(rest.by_ref().take(chunk).collect());
        }
        // Warnings about bad ports go where the caller's would, inside the caller's span.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            let render = &render;
            let workers: Vec<_> = chunks
                .into_iter()
                .map(|c| {
                    let (dispatch, span) = (dispatch.clone(), span.clone());
                    scope.spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            span.in_scope(|| c.into_iter().map(render).collect::<Vec<_>>())
                        })
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }

    /// Fixes the size of every big set created by a full sync (the kernel then uses a
    /// pre-sized hash table instead of growing one), with headroom for partial syncs.
    fn size_sets(&mut self, ph: &Phases) {
        self.capacity.clear();
        for (name, n) in ph.adds.counts() {
            if n >= SIZED_SET_MIN {
                let cap = u32::try_from(n * 3 / 2).unwrap_or(u32::MAX);
                self.capacity.insert(name.to_owned(), (n, cap));
            }
        }
    }

    /// Counts the sized sets' elements after `ph`; false when one would overflow.
    fn fits(&mut self, ph: &Phases) -> bool {
        for (name, (count, cap)) in &mut self.capacity {
            let added = ph.adds.count(name);
            let deleted = ph.deletes.count(name);
            *count = (*count + added).saturating_sub(deleted);
            if *count > *cap as usize {
                return false;
            }
        }
        // A sized class set that is deleted and re-created comes back unsized.
        for name in &ph.del_sets {
            self.capacity.remove(&**name);
        }
        true
    }

    /// Applies `diff` incrementally. On `NeedsFull` the state is stale and must be
    /// rebuilt by [`FamilyState::full`].
    pub(crate) fn partial(
        &mut self,
        model: &ProxyModel,
        diff: &ModelDiff,
        tx: &mut Transaction,
    ) -> Partial {
        let family = self.model_family();
        let mut affected: BTreeSet<ServicePortKey> = diff
            .added
            .iter()
            .chain(&diff.updated)
            .chain(&diff.removed)
            .filter(|k| k.family == family)
            .cloned()
            .collect();
        self.reclaim(model, &mut affected);
        let mut ph = Phases::default();
        let empty = PortRender::default();
        for key in &affected {
            let old = self.ports.remove(key);
            let new = model.ports.get(key).map(|p| {
                let claims = Self::claims(p);
                self.warn_duplicates(key, &claims);
                let key = old
                    .as_ref()
                    .map_or_else(|| Arc::new(key.clone()), |o| o.key.clone());
                PortState {
                    key,
                    render: self.render(p),
                    claims,
                }
            });
            let old_render = old.as_ref().map_or(&empty, |o| &o.render);
            let new_render = new.as_ref().map_or(&empty, |n| &n.render);
            self.account(old_render, new_render, &mut ph);
            if let Some(new) = new {
                self.ports.insert(new.key.clone(), new);
            }
        }
        if ph.needs_full || !self.fits(&ph) {
            return Partial::NeedsFull;
        }
        let dispatch = ph.services_dirty.then(|| self.dispatch_rules());
        ph.into_ops(self.fam, dispatch, tx);
        Partial::Tx
    }

    /// Updates frontend claims for the affected ports and adds every port whose
    /// ownership of a frontend changes as a consequence.
    fn reclaim(&mut self, model: &ProxyModel, affected: &mut BTreeSet<ServicePortKey>) {
        let mut touched = BTreeSet::new();
        for key in affected.iter() {
            let old = self
                .ports
                .get(key)
                .map(|p| p.claims.clone())
                .unwrap_or_default();
            for c in &old {
                self.unclaim(c, key);
                touched.insert(*c);
            }
            if let Some(p) = model.ports.get(key) {
                let arc = self
                    .ports
                    .get(key)
                    .map_or_else(|| Arc::new(key.clone()), |o| o.key.clone());
                for c in Self::claims(p) {
                    self.claim(c, &arc);
                    touched.insert(c);
                }
            }
        }
        // Any other claimant of a touched frontend may have gained or lost it.
        for c in touched {
            if let Some(cl) = self.frontends.get(&c) {
                for o in cl.all() {
                    if !affected.contains(&**o) && self.ports.contains_key(&**o) {
                        affected.insert((**o).clone());
                    }
                }
            }
        }
    }

    /// Turns the change from `old` to `new` into element and chain ops, updating
    /// reference counts; shared objects change only on 0 ↔ 1 transitions.
    fn account(&mut self, old: &PortRender, new: &PortRender, ph: &mut Phases) {
        if old.has_no_elements() || new.has_no_elements() {
            // All adds or all deletes: no need to compare.
            for item in &old.elements {
                self.element_change(item, false, ph);
            }
            ph.deletes.fixed_mut(FixedSet::Endpoints).extend(
                old.endpoints
                    .iter()
                    .flat_map(EndpointList::slots)
                    .map(EndpointSlot::element),
            );
            for item in &new.elements {
                self.element_change(item, true, ph);
            }
            if !new.endpoints.is_empty() {
                ph.adds.endpoint_lists.push(new.endpoints.clone());
            }
            Self::own_objects(old, new, ph);
            return;
        }
        let slots = |r: &PortRender| -> FastSet<EndpointSlot> {
            r.endpoints.iter().flat_map(EndpointList::slots).collect()
        };
        let (old_eps, new_eps) = (slots(old), slots(new));
        // In list order, so the transaction does not depend on hashing.
        let gone = old
            .endpoints
            .iter()
            .flat_map(EndpointList::slots)
            .filter(|e| !new_eps.contains(e));
        ph.deletes
            .fixed_mut(FixedSet::Endpoints)
            .extend(gone.map(EndpointSlot::element));
        let came = new
            .endpoints
            .iter()
            .flat_map(EndpointList::slots)
            .filter(|e| !old_eps.contains(e));
        ph.adds
            .fixed_mut(FixedSet::Endpoints)
            .extend(came.map(EndpointSlot::element));
        let old_set: FastSet<&(SetRef, Element)> = old.elements.iter().collect();
        let new_set: FastSet<&(SetRef, Element)> = new.elements.iter().collect();
        for item in &old.elements {
            if !new_set.contains(item) {
                self.element_change(item, false, ph);
            }
        }
        for item in &new.elements {
            if !old_set.contains(item) {
                self.element_change(item, true, ph);
            }
        }
        Self::own_objects(old, new, ph);
    }

    fn element_change(&mut self, (set, el): &(SetRef, Element), add: bool, ph: &mut Phases) {
        let target = if add { &mut ph.adds } else { &mut ph.deletes };
        let list = match set {
            SetRef::Fixed(s @ (FixedSet::ClusterIps | FixedSet::Hairpin)) => {
                let count = self.shared.entry((*s, el.key)).or_default();
                let emit = if add {
                    *count += 1;
                    *count == 1
                } else {
                    *count = count.saturating_sub(1);
                    *count == 0
                };
                if *count == 0 {
                    self.shared.remove(&(*s, el.key));
                }
                if !emit {
                    return;
                }
                target.fixed_mut(*s)
            }
            SetRef::Fixed(s) => target.fixed_mut(*s),
            SetRef::Class(spec) => {
                let name = self.class_user(spec, add, ph);
                let target = if add { &mut ph.adds } else { &mut ph.deletes };
                target.named_mut(name)
            }
        };
        list.push(el.clone());
    }

    /// Counts a class user; creates the class on its first user and deletes it with its
    /// last. A class emptied and refilled by the same transaction is left in place.
    fn class_user(&mut self, spec: &ClassSpec, add: bool, ph: &mut Phases) -> Name {
        let fam = self.fam;
        if add {
            let mark = self.mark;
            // Looked up before inserting: cloning the spec per element cost an allocation.
            if !self.classes.contains_key(spec) {
                self.classes.insert(
                    spec.clone(),
                    ClassState {
                        name: spec.name(),
                        users: 0,
                    },
                );
            }
            let entry = self
                .classes
                .get_mut(spec)
                .expect("inserted above when missing");
            if entry.users == 0 {
                let name = entry.name.clone();
                if let Some(pos) = ph.del_chains.iter().position(|c| *c == name) {
                    // Emptied earlier in this transaction: keep it.
                    ph.del_chains.remove(pos);
                    ph.del_sets.retain(|s| *s != name);
                } else {
                    ph.new_sets
                        .push(layout::class_set(fam, name.clone(), spec.describe()));
                    ph.new_chains.push(Chain {
                        name: name.clone(),
                        hook: None,
                        comment: Some(spec.describe()),
                    });
                    ph.rules.extend(
                        render::class_rules(fam, mark, spec)
                            .into_iter()
                            .map(|r| (name.clone(), r)),
                    );
                }
                ph.services_dirty = true;
            }
            entry.users += 1;
            entry.name.clone()
        } else {
            let entry = self
                .classes
                .get_mut(spec)
                .expect("a class element was counted when added");
            entry.users -= 1;
            let name = entry.name.clone();
            if entry.users == 0 {
                self.classes.remove(spec);
                if let Some(pos) = ph.new_chains.iter().position(|c| c.name == name) {
                    ph.new_chains.remove(pos);
                    ph.new_sets.retain(|s| s.name != name);
                    ph.rules.retain(|(c, _)| *c != name);
                } else {
                    ph.del_chains.push(name.clone());
                    ph.del_sets.push(name.clone());
                }
                ph.services_dirty = true;
            }
            name
        }
    }

    /// Own chains and sets (affinity): create new ones, rewrite changed ones, delete gone
    /// ones (referencing chains first).
    fn own_objects(old: &PortRender, new: &PortRender, ph: &mut Phases) {
        let old_chains: FastMap<&Name, &OwnChain> =
            old.chains.iter().map(|c| (&c.name, c)).collect();
        let new_names: FastSet<&Name> = new.chains.iter().map(|c| &c.name).collect();
        let old_sets: FastMap<&Name, &Set> = old.sets.iter().map(|s| (&s.name, s)).collect();
        let new_sets: FastSet<&Name> = new.sets.iter().map(|s| &s.name).collect();
        for s in &new.sets {
            match old_sets.get(&s.name) {
                None => ph.new_sets.push(s.clone()),
                // A set cannot be redefined in place (an affinity timeout changed): the
                // delete would have to precede the re-creation; leave it to a full sync.
                Some(o) if **o != *s => ph.needs_full = true,
                Some(_) => {}
            }
        }
        for c in &new.chains {
            match old_chains.get(&c.name) {
                None => {
                    ph.new_chains.push(own_chain(&c.name));
                    ph.rules
                        .extend(c.rules.iter().map(|r| (c.name.clone(), r.clone())));
                }
                Some(o) if o.rules != c.rules => {
                    ph.flushes.push(c.name.clone());
                    ph.rules
                        .extend(c.rules.iter().map(|r| (c.name.clone(), r.clone())));
                }
                Some(_) => {}
            }
        }
        for c in old.chains.iter().rev() {
            if !new_names.contains(&c.name) {
                ph.del_chains.push(c.name.clone());
            }
        }
        for s in &old.sets {
            if !new_sets.contains(&s.name) {
                ph.del_sets.push(s.name.clone());
            }
        }
    }

    /// The `services` chain: affinity vmap first, then one rule per class, by name.
    fn dispatch_rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = render::fixed_rules(self.fam, self.mark)
            .into_iter()
            .filter(|(c, _)| *c == SERVICES)
            .map(|(_, r)| r)
            .collect();
        let mut names: Vec<&Name> = self.classes.values().map(|c| &c.name).collect();
        names.sort();
        rules.extend(
            names
                .into_iter()
                .map(|n| render::class_dispatch(self.fam, n)),
        );
        rules
    }

    pub(crate) fn family(&self) -> Family {
        self.fam
    }

    /// Number of class chains in use (for stats and tests).
    pub(crate) fn class_count(&self) -> usize {
        self.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::many;

    /// A model big enough to render on several threads must give exactly the
    /// transaction (ops, order, elements) a single thread gives.
    #[test]
    fn parallel_render_gives_the_sequential_transaction() {
        let m = many(u32::try_from(PARALLEL_RENDER_MIN).unwrap() + 904, 2);
        let ports = m.ports.len();
        let full = |threads| {
            let mut st = FamilyState::new(Family::Ip, 0x4000);
            st.render_threads = threads;
            let mut tx = Transaction::default();
            st.full(&m, &mut tx);
            tx
        };
        let one = full(1);
        // Three uneven chunks: ordering mistakes at chunk edges would show.
        let three = full(3);
        // ClusterIP, class element and two endpoints per port.
        assert_eq!(one.element_count(), ports * 4);
        assert!(one == three, "parallel rendering changed the transaction");
    }

    /// The state keeps a million endpoint elements at 100k services: what it stores per
    /// element must stay far under the general element's size, or the point is lost.
    #[test]
    fn endpoint_targets_are_compact() {
        let target = std::mem::size_of::<(std::net::IpAddr, u16)>();
        let element = std::mem::size_of::<Element>();
        assert!(
            target * 4 <= element,
            "endpoint target {target} bytes, element {element} bytes"
        );
        assert!(target <= 20, "endpoint target {target} bytes");
    }
}
