//! The benchmark harness in quick mode, once per suite, so it cannot rot: every mode that
//! can run here produces its rows. Timings are never asserted; the CSV's shape is.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use kproxy_tests::bench::{self, Config, Mode, Row, Suite};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces: run it as root (cargo xtask test)"
    );
}

/// `target/debug/kproxy`: integration tests run from `target/debug/deps`, and
/// `cargo test --workspace` builds every binary next to it.
fn kproxy_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join("kproxy");
    assert!(
        bin.is_file(),
        "the kproxy binary is missing at {}: build it with `cargo build -p kproxy --bins` \
         (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// The modes expected to work on any machine that runs `cargo xtask test`: kproxy's
/// nftables mode and both baselines (iptables comes with `cargo xtask bench`'s setup).
/// eBPF is run too; its rows must exist, whatever they say.
const WORKING: [Mode; 3] = [Mode::KproxyNftables, Mode::KubeIptables, Mode::KubeNftables];

fn quick(suite: Suite, out: &Path) -> Vec<Row> {
    let mut cfg = Config::new(
        suite,
        true,
        kproxy_binary(),
        PathBuf::from(env!("CARGO_BIN_EXE_kproxy-bench")),
    );
    cfg.modes = vec![
        Mode::KproxyNftables,
        Mode::KproxyEbpf,
        Mode::KubeIptables,
        Mode::KubeNftables,
    ];
    out.clone_into(&mut cfg.out_dir);
    cfg.work_dir = out.join("work");
    bench::run(&cfg).unwrap_or_else(|e| panic!("{} suite: {e:#}", suite.name()))
}

/// Rows of `csv` as (mode, services, metric, has a value).
fn parse_csv(text: &str) -> BTreeSet<(String, usize, String, bool)> {
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("suite,mode,services,endpoints,metric,value,unit,note")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.splitn(8, ',').collect();
            assert_eq!(f.len(), 8, "{l}");
            (
                f[1].to_owned(),
                f[2].parse().expect("services"),
                f[4].to_owned(),
                !f[5].is_empty(),
            )
        })
        .collect()
}

fn check(suite: Suite, out: &Path, rows: &[Row], must: &[&str]) {
    let csv = fs::read_to_string(out.join(format!("{}.csv", suite.name()))).expect("csv");
    let parsed = parse_csv(&csv);
    assert_eq!(parsed.len(), rows.len(), "one CSV line per row");
    let sizes = Config::new(suite, true, PathBuf::new(), PathBuf::new()).services;
    for n in &sizes {
        for mode in WORKING {
            for metric in must {
                assert!(
                    parsed.contains(&(mode.name().to_owned(), *n, (*metric).to_owned(), true)),
                    "{} at {n}: no value for {metric}; rows: {:#?}",
                    mode.name(),
                    rows.iter()
                        .filter(|r| r.mode == mode.name() && r.services == *n)
                        .collect::<Vec<_>>()
                );
            }
        }
        assert!(
            parsed.iter().any(|(m, s, ..)| m == "ebpf" && s == n),
            "ebpf at {n} reported nothing"
        );
    }
    let md = fs::read_to_string(out.join(format!("{}.md", suite.name()))).expect("markdown");
    assert!(md.contains("| services |"), "{md}");
    assert!(md.contains("- kernel: "), "{md}");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn quick_benchmarks_produce_every_row() {
    require_root();
    let out = std::env::temp_dir().join(format!("kproxy-bench-quick-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);

    let rows = quick(Suite::ControlPlane, &out);
    check(
        Suite::ControlPlane,
        &out,
        &rows,
        &["start_s", "change_p50_ms", "change_p99_ms"],
    );
    for m in ["agent_sync_s", "rss_mib", "cpu_s", "agent_change_p99_ms"] {
        assert!(
            rows.iter()
                .any(|r| r.mode == "nftables" && r.metric == m && r.value.is_some()),
            "kproxy nftables: no {m}"
        );
    }
    assert!(out.join("control-plane-start_s.svg").is_file());

    let rows = quick(Suite::Datapath, &out);
    let must: Vec<String> = [
        "tcp_clusterip",
        "tcp_pod",
        "tcp_noproxy",
        "udp_clusterip",
        "udp_pod",
        "udp_noproxy",
        "tcp_nodeport",
        "tcp_ext_pod",
        "tcp_ext_noproxy",
    ]
    .iter()
    .flat_map(|s| [format!("{s}_rate"), format!("{s}_p99_us")])
    .chain(["program_s".into(), "tcp_clusterip_vs_noproxy".into()])
    .collect();
    let must: Vec<&str> = must.iter().map(String::as_str).collect();
    check(Suite::Datapath, &out, &rows, &must);
    assert!(out.join("datapath-tcp_clusterip_vs_noproxy.svg").is_file());
    let _ = fs::remove_dir_all(&out);
}
