//! `cargo xtask bench`: builds release binaries and runs the benchmark suites in the netns
//! lab (the driver is `kproxy-bench` in the kproxy-tests crate; see
//! `tests/src/bench/mod.rs`). Results land in `target/bench/`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, is_root, run};

/// `cargo xtask bench` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// control-plane, datapath or all.
    suite: String,
    /// Service counts, comma-separated (1k, 10k, 100k allowed).
    #[arg(long)]
    services: Option<String>,
    /// Endpoints per Service.
    #[arg(long)]
    endpoints: Option<usize>,
    /// Modes, comma-separated: nftables, ebpf, kube-iptables, kube-iptables-legacy,
    /// kube-nftables.
    #[arg(long)]
    modes: Option<String>,
    /// Small sizes and short measurements: each suite in under a minute.
    #[arg(long)]
    quick: bool,
    /// Bound in seconds on each programming step (agent start, a baseline's load).
    #[arg(long)]
    timeout: Option<f64>,
    /// Further driver flags (`--per-file`, `--changes`, `--rounds`, `--slice-ms`,
    /// `--conns`), passed on as they are.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

pub(crate) fn bench(root: &Path, args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks build network namespaces and program the kernel: run as root");
    }
    let suites: Vec<&str> = match args.suite.as_str() {
        "all" => vec!["control-plane", "datapath"],
        s @ ("control-plane" | "datapath") => vec![s],
        other => bail!("unknown suite {other:?}: control-plane, datapath or all"),
    };
    // `setup` (run by main before this) installs iptables, which the baselines load
    // kube-proxy's iptables layout with.
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "kproxy",
        "-p",
        "kproxy-tests",
        "--bins",
    ]))?;
    let release = root.join("target/release");
    for suite in suites {
        let mut cmd = Command::new(release.join("kproxy-bench"));
        cmd.args(["run", suite])
            .arg("--kproxy")
            .arg(release.join("kproxy"))
            .arg("--out")
            .arg(root.join("target/bench"));
        if let Some(s) = &args.services {
            cmd.args(["--services", s]);
        }
        if let Some(e) = args.endpoints {
            cmd.args(["--endpoints", &e.to_string()]);
        }
        if let Some(m) = &args.modes {
            cmd.args(["--modes", m]);
        }
        if args.quick {
            cmd.arg("--quick");
        }
        if let Some(t) = args.timeout {
            cmd.args(["--timeout", &t.to_string()]);
        }
        cmd.args(&args.extra);
        run(&mut cmd).with_context(|| format!("the {suite} suite"))?;
    }
    Ok(())
}
