//! Teardown and leak checks. Both work from what exists on the machine (namespace
//! handles, mounts, cgroup directories), not from a lab's in-memory state, so they
//! also clean up after a test process that was killed.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{ID_PREFIX, LabError, Result, TEARDOWN_BOUND, sys};

/// Removes everything lab `id` made. Keeps going past failures and reports them all.
pub(crate) fn teardown(id: &str) -> Result<()> {
    let mut problems = Vec::new();
    let mut note = |step: &str, result: Result<()>| {
        if let Err(error) = result {
            problems.push(format!("{step}: {}", error_chain(&error)));
        }
    };
    let dir = Path::new(sys::LAB_DIR).join(id);
    let cgroup_mount = dir.join("cgroup");
    let lab_cgroup = cgroup_mount.join(id);

    // Processes first: they hold namespaces and keep cgroups busy.
    note("mounting cgroup2", ensure_cgroup_mount(&cgroup_mount));
    if lab_cgroup.is_dir() {
        note(
            "killing processes",
            sys::cgroup_kill(&lab_cgroup, TEARDOWN_BOUND),
        );
    }
    match sys::list_netns(&format!("{id}-")) {
        Ok(names) => {
            for name in names {
                note("deleting netns", sys::netns_del(&name));
            }
        }
        Err(error) => note("listing namespaces", Err(error)),
    }
    note(
        "removing cgroups",
        sys::remove_cgroup_tree(&lab_cgroup, TEARDOWN_BOUND),
    );
    note("unmounting", unmount_below(&dir));
    note("removing directories", remove_lab_dir(&dir));

    if problems.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            lab: id.to_owned(),
            problems,
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A lab whose setup died before mounting (or whose process died) still needs a
/// cgroup2 view to find and kill its processes.
fn ensure_cgroup_mount(path: &Path) -> Result<()> {
    if !path.is_dir() || sys::is_mount_point(path)? {
        return Ok(());
    }
    sys::mount_fs("cgroup2", path)
}

/// Unmounts every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) -> Result<()> {
    let mut targets: Vec<PathBuf> = sys::mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    targets.dedup();
    for target in targets {
        sys::unmount(&target)?;
    }
    Ok(())
}

/// Removes the lab directory with single-level removals only: a recursive delete
/// that met a mount left behind by a failed unmount would delete pinned maps or
/// cgroups through it.
fn remove_lab_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let owner = dir.join("owner");
    if owner.exists() {
        fs::remove_file(&owner).map_err(sys::io_error("removing", &owner))?;
    }
    let bpf = dir.join("bpf");
    for (_, node_dir) in sys::list_dir_prefixed(&bpf, "")? {
        fs::remove_dir(&node_dir).map_err(sys::io_error("removing", &node_dir))?;
    }
    for path in [bpf, dir.join("cgroup"), dir.to_owned()] {
        if path.exists() {
            fs::remove_dir(&path).map_err(sys::io_error("removing", &path))?;
        }
    }
    Ok(())
}

/// `<pid> <start time>`: identifies a process even after its pid is reused.
pub(crate) fn process_identity(pid: u32) -> String {
    let start = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Field 22, counted after the parenthesised command name (which may
            // contain spaces).
            let after = stat.rsplit_once(") ")?.1;
            after.split(' ').nth(19).map(str::to_owned)
        })
        .unwrap_or_default();
    format!("{pid} {start}")
}

/// Tears down labs whose owning process is gone (killed test runs), leaving live
/// labs alone. Returns the ids removed.
pub fn purge_stale() -> Result<Vec<String>> {
    let mut purged = Vec::new();
    for (id, dir) in sys::list_dir_prefixed(Path::new(sys::LAB_DIR), ID_PREFIX)? {
        let owner = fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let mut fields = owner.split(' ');
        let alive = match (
            fields.next().and_then(|p| p.parse::<u32>().ok()),
            fields.next(),
        ) {
            (Some(pid), Some(start)) => process_identity(pid) == format!("{pid} {start}"),
            // No owner file yet: a lab being built right now. Leave it.
            _ => true,
        };
        if !alive {
            teardown(&id)?;
            purged.push(id);
        }
    }
    Ok(purged)
}

/// What is left on the machine with a given prefix.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leaks {
    /// Namespace handles under `/run/netns`.
    pub netns: Vec<String>,
    /// Mounts under `/run/kproxy-lab/<prefix>*`.
    pub mounts: Vec<PathBuf>,
    /// Top-level cgroups of the cgroup2 hierarchy.
    pub cgroups: Vec<String>,
    /// Links in the root namespace carrying a lab id as their alias (the lab never
    /// creates any there; this checks it).
    pub links: Vec<String>,
    /// Lab directories under `/run/kproxy-lab`.
    pub dirs: Vec<PathBuf>,
}

impl Leaks {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        *self == Leaks::default()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "netns {:?}, mounts {:?}, cgroups {:?}, links {:?}, dirs {:?}",
            self.netns, self.mounts, self.cgroups, self.links, self.dirs
        )
    }
}

/// Lists what exists with names starting with `prefix`: a lab id for one lab, or
/// [`ID_PREFIX`] for all. Must be called from a thread in the root namespace.
pub fn leaks(prefix: &str) -> Result<Leaks> {
    if !prefix.starts_with(ID_PREFIX) {
        return Err(LabError::InvalidName {
            name: prefix.to_owned(),
            reason: "a leak check prefix must start with the lab id prefix \"kpl\"",
        });
    }
    let base = Path::new(sys::LAB_DIR);
    let dirs: Vec<PathBuf> = sys::list_dir_prefixed(base, prefix)?
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let mounts = sys::mounts()?;
    let lab_mounts = mounts
        .iter()
        .filter(|m| {
            m.mount_point
                .strip_prefix(base)
                .ok()
                .and_then(|rest| rest.components().next())
                .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with(prefix))
        })
        .map(|m| m.mount_point.clone())
        .collect();
    let cgroups = top_level_cgroups(prefix)?;
    Ok(Leaks {
        netns: sys::list_netns(prefix)?,
        mounts: lab_mounts,
        cgroups,
        links: sys::links_with_alias(prefix)?,
        dirs,
    })
}

/// Top-level cgroups named `prefix*`, through the system's cgroup2 mount or, if
/// there is none, a short-lived one of our own: a check that cannot look must not
/// report "clean".
fn top_level_cgroups(prefix: &str) -> Result<Vec<String>> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let list = |root: &Path| -> Result<Vec<String>> {
        Ok(sys::list_dir_prefixed(root, prefix)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    };
    if let Some(root) = sys::cgroup2_root()? {
        return list(&root);
    }
    let probe = Path::new(sys::LAB_DIR).join(format!(
        ".probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&probe).map_err(sys::io_error("creating", &probe))?;
    let found = sys::mount_fs("cgroup2", &probe).and_then(|()| {
        let found = list(&probe);
        sys::unmount(&probe)?;
        found
    });
    fs::remove_dir(&probe).map_err(sys::io_error("removing", &probe))?;
    found
}

/// Panics, listing them, if anything with `prefix` is left (see [`leaks`]).
pub fn assert_clean(prefix: &str) {
    match leaks(prefix) {
        Ok(found) => assert!(found.is_empty(), "lab leftovers for {prefix}: {found}"),
        Err(error) => panic!("checking for lab leftovers: {}", error_chain(&error)),
    }
}
