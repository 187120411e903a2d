//! String interning for endpoint node names, zones and hints.

use std::{collections::HashSet, sync::Arc};

/// Hands out one shared `Arc<str>` per distinct string, so a million endpoints on a few
/// hundred nodes cost a few hundred allocations, not a million. Sources keep one for their
/// lifetime and convert every EndpointSlice with it ([`crate::SliceInfo::from_k8s`]).
#[derive(Debug, Default, Clone)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
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

    /// Forgets the strings nothing else holds any more (nodes and zones that left the
    /// cluster), so a long-running source does not keep every name it ever saw.
    pub fn prune(&mut self) {
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
    fn prune_forgets_only_unused_strings() {
        let mut interner = Interner::default();
        let kept = interner.intern("node-a");
        drop(interner.intern("node-b"));
        interner.prune();
        assert_eq!(interner.len(), 1);
        assert!(Arc::ptr_eq(&kept, &interner.intern("node-a")));
    }
}
