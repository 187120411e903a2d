//! The conformance table with real packets in a netns lab, per proxy mode: kube-proxy's
//! packet-flow cases (see `kproxy_tests::conformance`), then the masquerade
//! configurations of upstream's InternalExternalMasquerade. After the table passes,
//! `kproxy dump` on each node must describe every frontend the checks used exactly as the
//! traffic behaved (same endpoints, same reject/drop), and again once the agent is killed.

use std::{net::SocketAddr, path::Path};

use kproxy::dump::{Dump, DumpedFrontend};
use kproxy_tests::{
    conformance::{
        Check, Client, Expect, Mode, Proto, Source, TCP_PORT, Target, UDP_PORT, World,
        cases_manifests, checks, run_table,
    },
    lab::Host as _,
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

/// Endpoint pods of the table: what a dumped endpoint address can name.
const ENDPOINT_PODS: [&str; 4] = ["a-ep1", "a-ep2", "b-ep1", "b-ep2"];

/// `kproxy dump --output json` inside `node`'s network namespace.
fn dump(world: &World, node: &str, mode: Mode) -> Result<Dump, String> {
    let n = world.node(node);
    let bpffs = n.bpffs_path().to_string_lossy().into_owned();
    let out = n
        .exec(
            Path::new(env!("CARGO_BIN_EXE_kproxy")),
            [
                "dump",
                "--proxy-mode",
                mode.flag(),
                "--output",
                "json",
                "--bpffs",
                &bpffs,
            ],
        )
        .map_err(|e| format!("kproxy dump on {node}: {e:#}"))?;
    serde_json::from_str(&out)
        .map_err(|e| format!("dump on {node} is not the JSON dump ({e}): {out}"))
}

/// The node whose kproxy serves a check's first packet: the client's node, or the node of
/// a NodePort target.
fn serving_node(check: &Check) -> &'static str {
    match (check.from, check.to) {
        (Client::PodB, _) | (_, Target::NodePort("b", _)) => "b",
        _ => "a",
    }
}

/// The pod names of `list`; an address that is no endpoint pod's (or on the wrong port)
/// stays as it is, so it shows up in the mismatch.
fn pod_names(world: &World, list: &[SocketAddr], proto: Proto) -> Vec<String> {
    let port = match proto {
        Proto::Tcp => TCP_PORT,
        Proto::Udp => UDP_PORT,
    };
    let mut names: Vec<String> = list
        .iter()
        .map(|ep| {
            ENDPOINT_PODS
                .iter()
                .find(|p| ep.port() == port && world.pod(p).ip_like(ep.ip()) == ep.ip())
                .map_or_else(|| ep.to_string(), |p| (*p).to_owned())
        })
        .collect();
    names.sort();
    names
}

/// Whether the dumped frontend (or its absence) says what `check` saw; Err says how not.
fn dump_agrees(world: &World, d: &Dump, check: &Check, mode: Mode) -> Result<(), String> {
    let expect = match (mode, &check.ebpf) {
        (Mode::Ebpf, Some(e)) => e,
        _ => &check.expect,
    };
    let to = world.resolve(check.to);
    let proto = match check.proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    };
    let found: Option<&DumpedFrontend> = d
        .frontends
        .iter()
        .find(|f| f.address == to.ip() && f.port == to.port() && f.protocol == proto);
    let Some(f) = found else {
        // A ClusterIP on a port no service has is refused by the cluster-ips rule.
        let cluster_ip = d
            .frontends
            .iter()
            .any(|f| f.address == to.ip() && f.kind == "ClusterIP");
        return if *expect == Expect::Refused && cluster_ip {
            Ok(())
        } else {
            Err(format!("no frontend {to}/{proto} in the dump"))
        };
    };
    if mode == Mode::Nftables && !f.service.as_deref().is_some_and(|s| s.starts_with("conf/")) {
        return Err(format!("frontend without its service name: {f:?}"));
    }
    // Sources inside the node (pods, the node itself) take an eTP Local frontend's
    // short-circuit to the cluster-wide endpoints.
    let inside = matches!(
        check.from,
        Client::PodA | Client::PodB | Client::NodeA | Client::EndpointA1
    );
    let short_circuit = inside && f.kind != "ClusterIP" && !f.cluster_endpoints.is_empty();
    let list = if short_circuit {
        &f.cluster_endpoints
    } else {
        &f.endpoints
    };
    let names = pod_names(world, list, check.proto);
    let ok = match expect {
        Expect::Endpoints(want, _) => {
            let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            want.sort();
            names == want && (short_circuit || f.verdict == "forward")
        }
        Expect::Sticky(allowed) => {
            let mut allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
            allowed.sort();
            names == allowed && f.affinity_timeout_secs.is_some() && f.verdict == "forward"
        }
        Expect::Refused => f.verdict == "reject",
        Expect::Dropped => f.verdict == "drop" || f.detail.contains("source-ranges"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the traffic said {expect:?}; the dump says {} to {names:?}: {f:?}",
            f.verdict
        ))
    }
}

/// Compares every check of the table with `kproxy dump` on the node that served it, then
/// kills node a's agent and dumps again: the kernel state, and so the dump, stay.
fn dump_matches_the_table(world: &World, mode: Mode) -> Vec<String> {
    let mut dumps = std::collections::BTreeMap::new();
    for node in ["a", "b"] {
        match dump(world, node, mode) {
            Ok(d) => {
                dumps.insert(node, d);
            }
            Err(e) => return vec![e],
        }
    }
    let mut failures: Vec<String> = checks()
        .iter()
        .filter_map(|c| {
            let node = serving_node(c);
            dump_agrees(world, &dumps[node], c, mode).err().map(|e| {
                format!(
                    "[dump on {node}: {}] {:?} -> {:?} {:?}: {e}",
                    c.name, c.from, c.to, c.proto
                )
            })
        })
        .collect();
    world.kill_agent(0);
    match dump(world, "a", mode) {
        Ok(d) if d.frontends == dumps["a"].frontends && !d.frontends.is_empty() => {}
        Ok(d) => failures.push(format!(
            "dump on a changed when the agent died: {} frontends before, {} after",
            dumps["a"].frontends.len(),
            d.frontends.len()
        )),
        Err(e) => failures.push(format!("dump with the agent down: {e}")),
    }
    failures
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
    failures.extend(dump_matches_the_table(&world, mode));

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
