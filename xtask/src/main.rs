//! kproxy's developer commands: `cargo xtask <command>`.
//!
//! Every command that builds first runs [`setup`], which is idempotent and quiet when
//! everything is present, so a fresh machine needs nothing but `cargo xtask test` (or
//! `cargo xtask demo`).

mod bench;
mod e2e;
mod setup;
mod util;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::util::{cargo, is_root, run};

#[derive(Parser)]
#[command(name = "xtask", about = "kproxy developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (apt packages, nightly components,
    /// bpf-linker). Idempotent.
    Setup,
    /// Build userspace and the embedded eBPF object.
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `kproxy ARGS` (as root): build-and-load.
    Run {
        /// Release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for kproxy.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo: a two-node netns cluster running kproxy, and who answers what.
    Demo {
        /// Proxy modes to show, in turn (nftables, ebpf).
        #[arg(default_values_t = vec!["nftables".to_owned(), "ebpf".to_owned()])]
        modes: Vec<String>,
    },
    /// Benchmarks in the netns lab: control-plane, datapath or all (results in
    /// target/bench: CSV, markdown table, SVG plots).
    Bench(bench::BenchArgs),
    /// kproxy in a kind cluster without kube-proxy: build the image, deploy deploy/, run
    /// Service checks with kubectl and curl, delete the cluster. Needs Docker, kind and
    /// kubectl (not available on the development machines: it says so and exits).
    E2eKind {
        /// Proxy mode to deploy (nftables, ebpf).
        #[arg(long, default_value = "nftables")]
        mode: String,
        /// Keep the cluster afterwards, for debugging.
        #[arg(long)]
        keep: bool,
    },
    /// Every check and test in the repo: fmt, clippy, unit and privileged integration tests.
    Test {
        /// Extra arguments passed to the test binaries (after `--`), e.g. a name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.command {
        Command::Setup => setup::setup(),
        Command::Build { release } => {
            setup::setup()?;
            build(release)
        }
        Command::Run { release, args } => {
            setup::setup()?;
            build(release)?;
            if !is_root() {
                bail!("kproxy programs the kernel's datapath: run as root");
            }
            let bin = root
                .join("target")
                .join(if release { "release" } else { "debug" })
                .join("kproxy");
            run(std::process::Command::new(bin).args(args))
        }
        Command::Demo { modes } => {
            setup::setup()?;
            if !is_root() {
                bail!("the demo builds network namespaces and programs the kernel: run it as root");
            }
            build(false)?;
            let bin = root.join("target/debug");
            run(std::process::Command::new(bin.join("kproxy-demo"))
                .arg(bin.join("kproxy"))
                .args(modes))
        }
        Command::Bench(args) => {
            setup::setup()?;
            bench::bench(&root, &args)
        }
        Command::E2eKind { mode, keep } => e2e::e2e_kind(&mode, keep),
        Command::Test { args } => {
            setup::setup()?;
            test(&args)
        }
    }
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    // Privileged tests are `#[ignore = "needs root…"]` so that a plain `cargo test` stays
    // unprivileged; here they all run, and as root only, so none is ever skipped.
    if !is_root() {
        bail!("cargo xtask test runs the privileged tests (netns, nftables, BPF): run it as root");
    }
    println!("== cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    println!("== cargo clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("== cargo test (unit + privileged integration)");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--", "--include-ignored"]);
    cmd.args(args);
    run(&mut cmd)
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask lives one level below the workspace root")
}
