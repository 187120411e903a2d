//! The fixed part of kproxy's tables, as data.

/// Name of kproxy's table in both families (`ip kproxy`, `ip6 kproxy`).
pub(crate) const TABLE: &str = "kproxy";
