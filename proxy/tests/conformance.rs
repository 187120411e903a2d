//! The conformance table with real packets in a netns lab, per proxy mode: kube-proxy's
//! packet-flow cases (see `kproxy_tests::conformance`), then the masquerade
//! configurations of upstream's InternalExternalMasquerade.

use std::path::Path;

use kproxy_tests::conformance::{
    Check, Client, Expect, Mode, Proto, Source, Target, World, cases_manifests, checks, run_table,
};

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the conformance table builds netns labs: run it as root (cargo xtask test)"
    );
}

const CLUSTER_CIDRS: &str = "100.64.0.0/16,2001:db8:64::/48";

fn masquerade_checks(expect_pod_source: Source) -> Vec<Check> {
    vec![Check {
        name: "InternalExternalMasquerade: pod to ClusterIP (eBPF: socket LB translates the \
               destination at connect() and never NATs the source, so --masquerade-all does \
               not apply to pod traffic, as with Cilium's socket LB)",
        from: Client::PodA,
        to: Target::Addr("198.51.100.10", 80),
        proto: Proto::Tcp,
        expect: Expect::Endpoints(&["a-ep1", "b-ep1"], expect_pod_source),
        ebpf: Some(Expect::Endpoints(&["a-ep1", "b-ep1"], Source::Preserved)),
    }]
}

fn conformance(mode: Mode) {
    assert_root();
    let world = World::new(
        &format!("conf-{}", mode.flag()),
        Path::new(env!("CARGO_BIN_EXE_kproxy")),
        mode,
    )
    .expect("lab");
    world
        .write_manifest("table.yaml", &cases_manifests(&world))
        .expect("manifests");
    let mut failures = Vec::new();

    // kube-proxy's usual configuration: a cluster CIDR detector.
    world
        .start_agents(&["--cluster-cidr", CLUSTER_CIDRS])
        .expect("agents start");
    failures.extend(run_table(&world, &checks(), mode));

    // --masquerade-all: pod traffic is masqueraded too.
    world.kill_agents();
    world
        .start_agents(&["--cluster-cidr", CLUSTER_CIDRS, "--masquerade-all"])
        .expect("agents restart");
    failures.extend(run_table(
        &world,
        &masquerade_checks(Source::Masqueraded),
        mode,
    ));

    // No detector and no masquerade-all: pod traffic keeps its source.
    world.kill_agents();
    world.start_agents(&[]).expect("agents restart");
    failures.extend(run_table(
        &world,
        &masquerade_checks(Source::Preserved),
        mode,
    ));

    let logs = if failures.is_empty() {
        String::new()
    } else {
        format!("\n--- kproxy on a ---\n{}", world.agent_log("a"))
    };
    world.close().expect("lab teardown");
    assert!(
        failures.is_empty(),
        "{} conformance rows failed:\n{}{logs}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn conformance_nftables() {
    conformance(Mode::Nftables);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn conformance_ebpf() {
    conformance(Mode::Ebpf);
}
