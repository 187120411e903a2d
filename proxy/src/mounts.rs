//! The filesystems the eBPF mode needs: a cgroup v2 hierarchy to attach socket programs
//! to, and a bpf filesystem to pin maps and links in (so they outlive the agent).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::info;

/// Where kproxy mounts cgroup2 when the host has none mounted (Cilium uses
/// `/run/cilium/cgroupv2` the same way).
pub const FALLBACK_CGROUP2: &str = "/run/kproxy/cgroupv2";

/// The root of a mounted cgroup v2 hierarchy: the first cgroup2 mount in
/// `/proc/self/mountinfo`, else one kproxy mounts at [`FALLBACK_CGROUP2`].
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // Fields: id parent major:minor root mountpoint options ... - fstype source superoptions
    let found = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let mountpoint = fields.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mountpoint))
    });
    if let Some(path) = found {
        return Ok(path);
    }
    let path = PathBuf::from(FALLBACK_CGROUP2);
    fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    mount(
        Some("none"),
        &path,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting cgroup2 at {}", path.display()))?;
    info!(path = %path.display(), "mounted cgroup2");
    Ok(path)
}

/// `path` when it is on a bpf filesystem; otherwise mounts one there first.
pub fn ensure_bpffs(path: &Path) -> Result<PathBuf> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let fs_type = statfs(path)
        .with_context(|| format!("statfs {}", path.display()))?
        .filesystem_type();
    if fs_type != BPF_FS_MAGIC {
        mount(
            Some("bpffs"),
            path,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpf filesystem at {}", path.display()))?;
        info!(path = %path.display(), "mounted bpffs");
    }
    Ok(path.to_owned())
}
