//! The eBPF object embedded in `kproxy` loads into the kernel, attaches and runs.

use std::{net::UdpSocket, process::Command, thread};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, tc},
};
use kproxy_bpf::object::EBPF_OBJECT;
use kproxy_common::ProbeCounter;

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test loads BPF programs: run it as root (cargo xtask test)"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn embedded_object_loads_attaches_and_counts_packets() {
    assert_root();
    // A thread of our own in a fresh, unnamed network namespace: it vanishes with the
    // thread, so nothing can leak into the root namespace.
    thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(up.success(), "ip link set lo up failed");

        let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("load the embedded object");
        tc::qdisc_add_clsact("lo").expect("add clsact to lo");
        let prog: &mut SchedClassifier = ebpf
            .program_mut("kproxy_probe")
            .expect("kproxy_probe is in the object")
            .try_into()
            .expect("kproxy_probe is a classifier");
        prog.load().expect("verifier accepts kproxy_probe");
        prog.attach("lo", TcAttachType::Ingress).expect("attach to lo ingress");

        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..5 {
            sock.send_to(b"probe", sock.local_addr().unwrap()).expect("send");
        }
        let mut buf = [0u8; 16];
        for _ in 0..5 {
            sock.recv_from(&mut buf).expect("each datagram comes back through lo");
        }

        let counters: PerCpuArray<_, ProbeCounter> =
            PerCpuArray::try_from(ebpf.map(kproxy_common::PROBE_COUNTER_MAP).expect("map"))
                .expect("per-cpu array");
        let seen: u64 = counters.get(&0, 0).expect("slot 0").iter().map(|c| c.packets).sum();
        assert!(seen >= 5, "the probe saw {seen} packets, expected at least 5");
    })
    .join()
    .expect("test thread");
}
