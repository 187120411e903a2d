//! What is programmed in one family's table, and the transactions that change it.
//!
//! The state remembers, per service port, exactly what it contributed (its
//! [`PortRender`]), so a partial sync re-renders only the ports the diff names and emits
//! the element-level difference. Shared objects are reference counted: ClusterIPs and
//! hairpin pairs (one element, many ports), class chains (one chain, many frontends).
//! Frontends claimed by two ports (invalid input, e.g. the same externalIP:port on two
//! Services) belong to the smallest port key; the others are skipped with a warning.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, LazyLock},
};

use kproxy_model::{IpFamily, ModelDiff, ProxyModel, ServicePort, ServicePortKey};

use crate::{
    ir::{Chain, Element, Family, Name, Op, Rule, Set, Transaction, Value},
    layout::{self, BASE_CHAINS, FixedSet, REJECT_CHAIN, SERVICES},
    render::{self, ClassSpec, FrontendKey, OwnChain, PortRender, SetRef},
};

/// Capacity of the endpoint map is fixed when it is created (the kernel then uses a
/// pre-sized hash table, about 30% faster to fill than a growing one); a partial sync that
/// would overflow it falls back to a full sync, which sizes it anew.
const MIN_ENDPOINT_CAPACITY: usize = 1 << 16;

/// One service port's claims and contribution.
#[derive(Debug, Clone)]
struct PortState {
    claims: Vec<FrontendKey>,
    render: PortRender,
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
    ports: HashMap<ServicePortKey, PortState>,
    /// Every port claiming a frontend; the first owns it.
    frontends: HashMap<FrontendKey, BTreeSet<ServicePortKey>>,
    /// Reference counts of shared elements.
    shared: HashMap<(FixedSet, Value), usize>,
    classes: HashMap<ClassSpec, ClassState>,
    endpoints: usize,
    endpoint_capacity: usize,
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
    deletes: HashMap<Name, Vec<Element>>,
    adds: HashMap<Name, Vec<Element>>,
    services_dirty: bool,
    del_chains: Vec<Name>,
    del_sets: Vec<Name>,
}

impl Phases {
    fn into_ops(self, fam: Family, dispatch: Option<Vec<Rule>>, tx: &mut Transaction) {
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
                .into_iter()
                .map(|(s, e)| Op::DeleteElements(fam, s, e)),
        );
        tx.ops.extend(
            self.adds
                .into_iter()
                .map(|(s, e)| Op::AddElements(fam, s, e)),
        );
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

/// Fixed set names, allocated once: element bookkeeping clones them per element.
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
            ports: HashMap::new(),
            frontends: HashMap::new(),
            shared: HashMap::new(),
            classes: HashMap::new(),
            endpoints: 0,
            endpoint_capacity: 0,
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
        let owned =
            |k: FrontendKey| self.frontends.get(&k).and_then(|o| o.first()) == Some(&port.key);
        render::render_port(self.fam, self.mark, port, &owned)
    }

    fn warn_duplicates(&self, key: &ServicePortKey, claims: &[FrontendKey]) {
        for c in claims {
            if let Some(owner) = self
                .frontends
                .get(c)
                .and_then(|o| o.first())
                .filter(|o| *o != key)
            {
                tracing::warn!(
                    service = %key, frontend = %c.0, port = c.2, owner = %owner,
                    "frontend already used by another service port; ignored for this one"
                );
            }
        }
    }

    /// Replaces the whole table: delete and re-create in the same transaction.
    pub(crate) fn full(&mut self, model: &ProxyModel, tx: &mut Transaction) {
        *self = Self::new(self.fam, self.mark);
        let fam = self.fam;
        let family = self.model_family();
        let ports: Vec<&ServicePort> = model
            .ports
            .values()
            .filter(|p| p.key.family == family)
            .collect();
        for p in &ports {
            for c in Self::claims(p) {
                self.frontends.entry(c).or_default().insert(p.key.clone());
            }
        }
        tx.push(Op::AddTable(fam));
        tx.push(Op::DeleteTable(fam));
        tx.push(Op::AddTable(fam));
        for b in BASE_CHAINS {
            tx.push(Op::AddChain(fam, b.chain()));
        }
        tx.push(Op::AddChain(
            fam,
            Chain {
                name: SERVICES.into(),
                hook: None,
                comment: Some("service dispatch".into()),
            },
        ));
        tx.push(Op::AddChain(
            fam,
            Chain {
                name: REJECT_CHAIN.into(),
                hook: None,
                comment: None,
            },
        ));
        let mut ph = Phases::default();
        for p in &ports {
            let claims = Self::claims(p);
            self.warn_duplicates(&p.key, &claims);
            let render = self.render(p);
            self.account(&PortRender::default(), &render, &mut ph);
            self.ports
                .insert(p.key.clone(), PortState { claims, render });
        }
        self.endpoint_capacity = (self.endpoints * 2).max(MIN_ENDPOINT_CAPACITY);
        for s in FixedSet::ALL {
            let mut set = s.set(fam);
            if s == FixedSet::Endpoints {
                set.size = Some(u32::try_from(self.endpoint_capacity).unwrap_or(u32::MAX));
            }
            tx.push(Op::AddSet(fam, set));
        }
        for (chain, rule) in render::fixed_rules(fam, self.mark) {
            if chain != SERVICES {
                tx.push(Op::AddRule(fam, chain.into(), rule));
            }
        }
        ph.deletes.clear();
        let dispatch = self.dispatch_rules();
        ph.into_ops(fam, Some(dispatch), tx);
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
                PortState {
                    render: self.render(p),
                    claims,
                }
            });
            let old_render = old.as_ref().map_or(&empty, |o| &o.render);
            let new_render = new.as_ref().map_or(&empty, |n| &n.render);
            self.account(old_render, new_render, &mut ph);
            if let Some(new) = new {
                self.ports.insert(key.clone(), new);
            }
        }
        if self.endpoints > self.endpoint_capacity {
            return Partial::NeedsFull;
        }
        let dispatch = ph.services_dirty.then(|| self.dispatch_rules());
        ph.into_ops(self.fam, dispatch, tx);
        Partial::Tx
    }

    /// Updates frontend claims for the affected ports and adds every port whose
    /// ownership of a frontend changes as a consequence.
    fn reclaim(&mut self, model: &ProxyModel, affected: &mut BTreeSet<ServicePortKey>) {
        let mut touched_frontends = BTreeSet::new();
        for key in affected.iter() {
            let old = self
                .ports
                .get(key)
                .map(|p| p.claims.clone())
                .unwrap_or_default();
            let new = model.ports.get(key).map(Self::claims).unwrap_or_default();
            for c in &old {
                if let Some(set) = self.frontends.get_mut(c) {
                    set.remove(key);
                    if set.is_empty() {
                        self.frontends.remove(c);
                    }
                }
                touched_frontends.insert(*c);
            }
            for c in new {
                self.frontends.entry(c).or_default().insert(key.clone());
                touched_frontends.insert(c);
            }
        }
        // Any other claimant of a touched frontend may have gained or lost it.
        for c in touched_frontends {
            if let Some(owners) = self.frontends.get(&c) {
                for o in owners {
                    if !affected.contains(o) && self.ports.contains_key(o) {
                        affected.insert(o.clone());
                    }
                }
            }
        }
    }

    /// Turns the change from `old` to `new` into element and chain ops, updating
    /// reference counts; shared objects change only on 0 ↔ 1 transitions.
    fn account(&mut self, old: &PortRender, new: &PortRender, ph: &mut Phases) {
        if old.elements.is_empty() || new.elements.is_empty() {
            // All adds or all deletes: no need to compare.
            for item in &old.elements {
                self.element_change(item, false, ph);
            }
            for item in &new.elements {
                self.element_change(item, true, ph);
            }
            self.own_objects(old, new, ph);
            return;
        }
        let old_set: HashSet<&(SetRef, Element)> = old.elements.iter().collect();
        let new_set: HashSet<&(SetRef, Element)> = new.elements.iter().collect();
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
        self.own_objects(old, new, ph);
    }

    fn element_change(&mut self, (set, el): &(SetRef, Element), add: bool, ph: &mut Phases) {
        let name: Name = match set {
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
                fixed_name(*s)
            }
            SetRef::Fixed(s) => {
                if *s == FixedSet::Endpoints {
                    if add {
                        self.endpoints += 1;
                    } else {
                        self.endpoints -= 1;
                    }
                }
                fixed_name(*s)
            }
            SetRef::Class(spec) => self.class_user(spec, add, ph),
        };
        let target = if add { &mut ph.adds } else { &mut ph.deletes };
        target.entry(name).or_default().push(el.clone());
    }

    /// Counts a class user; creates the class on its first user and deletes it with its
    /// last. A class emptied and refilled by the same transaction is left in place.
    fn class_user(&mut self, spec: &ClassSpec, add: bool, ph: &mut Phases) -> Name {
        let fam = self.fam;
        if add {
            let mark = self.mark;
            let entry = self
                .classes
                .entry(spec.clone())
                .or_insert_with(|| ClassState {
                    name: spec.name(),
                    users: 0,
                });
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
    fn own_objects(&mut self, old: &PortRender, new: &PortRender, ph: &mut Phases) {
        let old_chains: HashMap<&Name, &OwnChain> =
            old.chains.iter().map(|c| (&c.name, c)).collect();
        let new_names: HashSet<&Name> = new.chains.iter().map(|c| &c.name).collect();
        let old_sets: HashSet<&Name> = old.sets.iter().map(|s| &s.name).collect();
        let new_sets: HashSet<&Name> = new.sets.iter().map(|s| &s.name).collect();
        for s in &new.sets {
            if !old_sets.contains(&s.name) {
                ph.new_sets.push(s.clone());
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
