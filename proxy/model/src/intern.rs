//! String interning for endpoint node names, zones and hints.

use std::{collections::HashSet, sync::Arc};

/// Hands out one shared `Arc<str>` per distinct string, so a million endpoints on a few
/// hundred nodes cost a few hundred allocations, not a million. Sources keep one for their
/// lifetime and convert every EndpointSlice with it ([`crate::SliceInfo::from_k8s`]).
#[derive(Debug, Default, Clone)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    places: HashSet<Arc<Place>>,
}

/// Where an endpoint runs: its node and zone. Shared, since every endpoint on a node has
/// the same one; an endpoint then holds one pointer instead of two strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Place {
    /// `nodeName`.
    pub(crate) node_name: Option<Arc<str>>,
    /// `zone`.
    pub(crate) zone: Option<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// The shared place of an endpoint on `node_name` in `zone`; None when neither is set.
    pub(crate) fn place(
        &mut self,
        node_name: Option<&str>,
        zone: Option<&str>,
    ) -> Option<Arc<Place>> {
        if node_name.is_none() && zone.is_none() {
            return None;
        }
        let place = Place {
            node_name: node_name.map(|name| self.intern(name)),
            zone: zone.map(|zone| self.intern(zone)),
        };
        if let Some(found) = self.places.get(&place) {
            return Some(Arc::clone(found));
        }
        let shared = Arc::new(place);
        self.places.insert(Arc::clone(&shared));
        Some(shared)
    }

    /// Forgets the strings and places nothing else holds any more (nodes and zones that
    /// left the cluster), so a long-running source does not keep every name it ever saw.
    pub fn prune(&mut self) {
        // Places first: they hold strings.
        self.places.retain(|p| Arc::strong_count(p) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Number of distinct strings held.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// True when no string is held.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_string_shares_one_allocation() {
        let mut interner = Interner::default();
        let a = interner.intern("node-a");
        let b = interner.intern("node-a");
        let c = interner.intern("node-b");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, "node-b");
    }

    #[test]
    fn places_are_shared_and_pruned_with_their_strings() {
        let mut interner = Interner::default();
        let a = interner.place(Some("node-a"), Some("zone-1")).unwrap();
        let b = interner.place(Some("node-a"), Some("zone-1")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(interner.place(None, None).is_none());
        drop((a, b));
        interner.prune();
        assert!(interner.is_empty());
    }

    #[test]
    fn prune_forgets_only_unused_strings() {
        let mut interner = Interner::default();
        let kept = interner.intern("node-a");
        drop(interner.intern("node-b"));
        interner.prune();
        assert_eq!(interner.len(), 1);
        assert!(Arc::ptr_eq(&kept, &interner.intern("node-a")));
    }
}
