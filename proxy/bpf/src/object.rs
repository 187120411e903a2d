//! The eBPF object built by `build.rs` and embedded in the binary.

/// The bytes of kproxy's eBPF object (bpfel ELF with BTF), aligned for aya's loader.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kproxy"));
