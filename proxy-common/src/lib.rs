//! Types shared between kproxy's userspace and its eBPF programs.
//!
//! Every type is `#[repr(C)]`, has no implicit padding (padding is spelled out as fields,
//! so the verifier never sees uninitialised bytes) and uses only integers: no `bool`, no
//! `Option`. Addresses and ports are stored in network byte order, as the kernel hands them
//! to the programs.
#![no_std]

/// Name of the counter map the probe program increments: proof that the embedded object
/// loads and runs.
pub const PROBE_COUNTER_MAP: &str = "KPROXY_PROBE";

/// Value of the probe counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounter {
    /// Packets seen.
    pub packets: u64,
}

#[cfg(feature = "user")]
// SAFETY: ProbeCounter is repr(C), Copy, and made of integers only (any bit pattern is valid).
unsafe impl aya::Pod for ProbeCounter {}
