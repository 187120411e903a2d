//! Builds `proxy-ebpf` for the BPF target with aya-build and leaves the object in
//! `OUT_DIR/kproxy`, where `src/object.rs` embeds it.
//!
//! Needs the nightly toolchain with `rust-src` and a `bpf-linker`; `cargo xtask setup`
//! installs both. bpf-linker is looked up on `PATH`, then where setup installs it.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .ancestors()
        .nth(2)
        .context("proxy/bpf/ is two levels below the workspace root")?
        .join("proxy-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?.to_owned();

    if which("bpf-linker").is_none() {
        let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
        let installed = PathBuf::from(home).join(".local/bpf-linker/bin");
        if !installed.join("bpf-linker").exists() {
            bail!(
                "bpf-linker not found on PATH nor in {}: run `cargo xtask setup`",
                installed.display()
            );
        }
        let path = env::var("PATH").unwrap_or_default();
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("PATH", format!("{}:{path}", installed.display())) };
    }

    // aya-build runs `cargo build --package kproxy-ebpf` in the current directory.
    // proxy-ebpf is its own workspace (it only builds for the BPF target), so run from
    // there; otherwise cargo looks for the package in the root workspace.
    env::set_current_dir(&ebpf_dir).context("entering proxy-ebpf")?;
    let package = aya_build::Package {
        name: "kproxy-ebpf",
        root_dir: &ebpf_dir,
        no_default_features: false,
        features: &[],
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building proxy-ebpf (run `cargo xtask setup` if the nightly toolchain, rust-src or bpf-linker is missing)")
}

fn which(bin: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|p| {
        env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.exists())
    })
}
