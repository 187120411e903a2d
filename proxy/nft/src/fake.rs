//! In-memory backend for unit tests: replays transactions into tables with the kernel's
//! rules for references (a rule's sets and chains must exist, a referenced chain or set
//! cannot be deleted, an element cannot be added twice with other data, a missing one
//! cannot be deleted) and its atomicity (a failing transaction changes nothing). It
//! records every transaction so tests can count what a sync touched.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
};

use crate::{
    Backend, TableDump,
    error::Error,
    ir::{ElemData, Element, Expr, Family, Name, Op, Rule, Set, Transaction, Value, Verdict},
};

#[derive(Debug, Clone, Default)]
pub(crate) struct FakeTable {
    pub(crate) chains: BTreeMap<Name, Vec<Rule>>,
    pub(crate) sets: BTreeMap<Name, (Set, BTreeMap<Value, Element>)>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeKernel {
    pub(crate) tables: BTreeMap<Family, FakeTable>,
    pub(crate) transactions: Vec<Transaction>,
    /// Fails the next transaction with this errno (fault injection).
    pub(crate) fail_next: Option<i32>,
}

/// The backend handed to the dataplane; tests keep a clone of `kernel`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeBackend {
    pub(crate) kernel: Arc<Mutex<FakeKernel>>,
}

fn reject(op: &Op, errno: i32, why: &str) -> Error {
    Error::Rejected {
        op: op.describe(),
        message: Some(why.to_owned()),
        source: io::Error::from_raw_os_error(errno),
    }
}

fn rule_refs(rule: &Rule) -> (Vec<&Name>, Vec<&Name>) {
    let (mut sets, mut chains) = (Vec::new(), Vec::new());
    for e in &rule.exprs {
        match e {
            Expr::Lookup { set, .. } | Expr::DynsetUpdate { set, .. } => sets.push(set),
            Expr::Verdict(Verdict::Goto(c) | Verdict::Jump(c)) => chains.push(c),
            _ => {}
        }
    }
    (sets, chains)
}

impl FakeTable {
    fn chain_in_use(&self, name: &Name) -> bool {
        let by_rule = self
            .chains
            .iter()
            .filter(|(c, _)| *c != name)
            .flat_map(|(_, rules)| rules)
            .any(|r| rule_refs(r).1.contains(&name));
        let by_element = self.sets.values().flat_map(|(_, els)| els.values()).any(|e| {
            matches!(&e.data, Some(ElemData::Verdict(Verdict::Goto(c) | Verdict::Jump(c))) if c == name)
        });
        by_rule || by_element
    }

    fn set_in_use(&self, name: &Name) -> bool {
        self.chains
            .values()
            .flatten()
            .any(|r| rule_refs(r).0.contains(&name))
    }

    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        match op {
            Op::AddTable(_) | Op::DeleteTable(_) => unreachable!("handled by the kernel"),
            Op::AddChain(_, c) => {
                self.chains.entry(c.name.clone()).or_default();
            }
            Op::FlushChain(_, c) => {
                self.chains
                    .get_mut(c)
                    .ok_or_else(|| reject(op, libc::ENOENT, "no such chain"))?
                    .clear();
            }
            Op::DeleteChain(_, c) => {
                if !self.chains.contains_key(c) {
                    return Err(reject(op, libc::ENOENT, "no such chain"));
                }
                if self.chain_in_use(c) {
                    return Err(reject(op, libc::EBUSY, "chain is referenced"));
                }
                self.chains.remove(c);
            }
            Op::AddRule(_, c, rule) => {
                let (sets, targets) = rule_refs(rule);
                if let Some(s) = sets.iter().find(|s| !self.sets.contains_key(**s)) {
                    return Err(reject(op, libc::ENOENT, &format!("no such set {s}")));
                }
                if let Some(t) = targets.iter().find(|t| !self.chains.contains_key(**t)) {
                    return Err(reject(op, libc::ENOENT, &format!("no such chain {t}")));
                }
                self.chains
                    .get_mut(c)
                    .ok_or_else(|| reject(op, libc::ENOENT, "no such chain"))?
                    .push(rule.clone());
            }
            Op::AddSet(_, s) => {
                self.sets
                    .entry(s.name.clone())
                    .or_insert_with(|| (s.clone(), BTreeMap::new()));
            }
            Op::DeleteSet(_, s) => {
                if !self.sets.contains_key(s) {
                    return Err(reject(op, libc::ENOENT, "no such set"));
                }
                if self.set_in_use(s) {
                    return Err(reject(op, libc::EBUSY, "set is referenced"));
                }
                self.sets.remove(s);
            }
            Op::AddElements(_, s, els) => self.add_elements(op, s, els)?,
            Op::AddSharedElements(_, s, lists) => {
                for els in lists {
                    let els: Vec<Element> = els
                        .iter()
                        .flat_map(crate::ir::EndpointList::slots)
                        .map(crate::ir::EndpointSlot::element)
                        .collect();
                    self.add_elements(op, s, &els)?;
                }
            }
            Op::DeleteElements(_, s, els) => {
                let (_, have) = self
                    .sets
                    .get_mut(s)
                    .ok_or_else(|| reject(op, libc::ENOENT, "no such set"))?;
                for e in els {
                    have.remove(&e.key).ok_or_else(|| {
                        reject(op, libc::ENOENT, &format!("no element {:?}", e.key))
                    })?;
                }
            }
        }
        Ok(())
    }

    fn add_elements(&mut self, op: &Op, s: &Name, els: &[Element]) -> Result<(), Error> {
        for e in els {
            if let Some(ElemData::Verdict(Verdict::Goto(c) | Verdict::Jump(c))) = &e.data
                && !self.chains.contains_key(c)
            {
                return Err(reject(op, libc::ENOENT, &format!("no such chain {c}")));
            }
        }
        let (set, have) = self
            .sets
            .get_mut(s)
            .ok_or_else(|| reject(op, libc::ENOENT, "no such set"))?;
        for e in els {
            if e.data.is_some() != set.data.is_some() {
                return Err(reject(
                    op,
                    libc::EINVAL,
                    "element data does not match the set",
                ));
            }
            match have.get(&e.key) {
                Some(old) if old.data != e.data => {
                    return Err(reject(op, libc::EEXIST, "element exists with other data"));
                }
                _ => {
                    have.insert(e.key, e.clone());
                }
            }
            if set.size.is_some_and(|cap| have.len() > cap as usize) {
                return Err(reject(op, libc::ENFILE, "set is full"));
            }
        }
        Ok(())
    }
}

impl FakeKernel {
    fn apply_all(&mut self, tx: &Transaction) -> Result<(), Error> {
        if let Some(errno) = self.fail_next.take() {
            return Err(Error::Rejected {
                op: "commit of the transaction".into(),
                message: Some("injected failure".into()),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        let mut tables = self.tables.clone();
        for op in &tx.ops {
            match op {
                Op::AddTable(f) => {
                    tables.entry(*f).or_default();
                }
                Op::DeleteTable(f) => {
                    tables
                        .remove(f)
                        .ok_or_else(|| reject(op, libc::ENOENT, "no such table"))?;
                }
                other => {
                    tables
                        .get_mut(&other.family())
                        .ok_or_else(|| reject(op, libc::ENOENT, "no such table"))?
                        .apply(other)?;
                }
            }
        }
        self.tables = tables;
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn apply(&mut self, tx: &Transaction) -> Result<(), Error> {
        let mut k = self.kernel.lock().expect("fake kernel lock");
        k.transactions.push(tx.clone());
        k.apply_all(tx)
    }

    fn list(&mut self, family: Family) -> Result<Option<TableDump>, Error> {
        let k = self.kernel.lock().expect("fake kernel lock");
        Ok(k.tables.get(&family).map(|t| TableDump {
            chains: t
                .chains
                .iter()
                .map(|(n, r)| (n.to_string(), r.len()))
                .collect(),
            sets: t
                .sets
                .iter()
                .map(|(n, (_, e))| (n.to_string(), e.len()))
                .collect(),
        }))
    }
}
