//! String interning for endpoint node names, zones and hints.

use std::{collections::HashSet, sync::Arc};

/// Hands out one shared `Arc<str>` per distinct string, so a million endpoints on a few
/// hundred nodes cost a few hundred allocations, not a million.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
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
}
