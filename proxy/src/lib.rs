//! kproxy, the agent: sources, sync loop, dataplanes and servers.

pub mod ebpf_object;
