//! kproxy's eBPF dataplane, userspace side.

pub mod object;
