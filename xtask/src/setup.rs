//! `cargo xtask setup`: installs what building and testing kproxy needs, idempotently.
//!
//! Each step checks first and says nothing when all is present, so it can run before
//! every build. A failing step says what to do by hand.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{is_root, output, run};

/// Debian packages: nftables (`nft`: tests read tables back with it, and the benchmarks
/// load kube-proxy's nftables layout with it), iptables (the benchmarks' kube-proxy
/// iptables-layout baseline), iproute2 for the netns lab, conntrack for the conntrack
/// tests. kproxy itself links no nftables library: it speaks nf_tables netlink directly.
const APT_PACKAGES: &[&str] = &["nftables", "iptables", "iproute2", "conntrack"];

/// bpf-linker release built by setup; 0.13 supports LLVM 20–23 through features.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every setup step.
pub(crate) fn setup() -> Result<()> {
    apt_packages().context("setup step: apt packages")?;
    nightly().context("setup step: nightly toolchain components")?;
    bpf_linker().context(
        "setup step: bpf-linker (by hand: see shared/reference/rust-deps.md, \
         'bpf-linker against rustc's own libLLVM')",
    )?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", pkg]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing apt packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "installing packages needs root: run `apt-get install {}`",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("by hand: apt-get install {}", missing.join(" ")))
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain (eBPF programs need build-std)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    let have = |c: &str| installed.lines().any(|l| l.starts_with(c));
    if !(have("rust-src") && have("llvm-tools")) {
        println!("setup: adding rust-src and llvm-tools to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "llvm-tools",
            "--toolchain",
            "nightly",
        ]))
        .context("by hand: rustup component add rust-src llvm-tools --toolchain nightly")?;
    }
    Ok(())
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// Where setup installs bpf-linker; `proxy/build.rs` looks here too.
fn bpf_linker_root() -> PathBuf {
    home().join(".local/bpf-linker")
}

/// bpf-linker must be rebuilt whenever the nightly (and so its libLLVM) changes: the stamp
/// records the `rustc -vV` it was built against.
fn bpf_linker() -> Result<()> {
    let nightly_vv = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV failed")?;
    let root = bpf_linker_root();
    let bin = root.join("bin/bpf-linker");
    let stamp = root.join("built-for-nightly.txt");
    let works = || output(Command::new(&bin).arg("--version")).is_some();
    if bin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(&nightly_vv) && works() {
        return Ok(());
    }
    let llvm_major = nightly_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM {llvm_major} (about a minute)"
    );
    let prefix = link_rustc_llvm()?;
    run(Command::new("cargo")
        .args([
            "+stable",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))?;
    if !works() {
        bail!("{} was built but does not run", bin.display());
    }
    fs::write(&stamp, nightly_vv)?;
    Ok(())
}

/// bpf-linker's build only needs `$LLVM_PREFIX/lib/libLLVM.so`. rustc's own libLLVM exports
/// the C API, so point a prefix at it: one link for `-lLLVM`, one under its SONAME so the
/// binary finds it at run time through its RUNPATH.
fn link_rustc_llvm() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed")?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&sysroot_lib)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let prefix = home().join(".local/bpf-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&lib), &link)?;
    }
    Ok(prefix)
}
