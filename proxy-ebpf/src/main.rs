#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::{classifier, map}, maps::PerCpuArray, programs::TcContext};
use kproxy_common::ProbeCounter;

/// Packets seen by the probe program: read by the load test.
#[map(name = "KPROXY_PROBE")]
static KPROXY_PROBE: PerCpuArray<ProbeCounter> = PerCpuArray::with_max_entries(1, 0);

/// Counts packets and lets them pass. Proves the embedded object loads, attaches and runs;
/// the datapath programs replace it.
#[classifier]
pub fn kproxy_probe(_ctx: TcContext) -> i32 {
    if let Some(c) = KPROXY_PROBE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*c).packets += 1 };
    }
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here, so it is never taken at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
