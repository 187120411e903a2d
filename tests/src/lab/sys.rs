//! The lab's only contact with the kernel: `ip` invocations, namespace entry, sysctls,
//! mounts and cgroup files. Everything here is addressed by name or path, never by
//! in-memory state, so teardown can also clean up after a crashed test process.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
};

use super::{LabError, Result};

/// Where `ip netns` keeps its namespace handles.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// Where labs keep their mounts and bookkeeping: outside `/sys`, because
/// `ip netns exec` remounts `/sys` and would hide anything mounted there.
pub(crate) const LAB_DIR: &str = "/run/kproxy-lab";

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(10);

/// Serialises `ip netns add` within this process: the first call on a machine turns
/// `/run/netns` into a shared bind mount, and two concurrent first calls stack two
/// mounts and hide each other's handles.
static NETNS_ADD: Mutex<()> = Mutex::new(());

pub(crate) fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LabError {
    let path = path.to_owned();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    let output: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::CommandFailed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip -n <netns> <args>`, with `args` split on whitespace: every argument the
/// lab passes is a single token, and the call sites read like the shell commands.
pub(crate) fn ip(netns: &str, args: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(netns).args(args.split_whitespace());
    run(&mut cmd).map(drop)
}

pub(crate) fn netns_add(netns: &str) -> Result<()> {
    let _serial = NETNS_ADD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    run(Command::new("ip").args(["netns", "add", netns])).map(drop)
}

/// What `ip netns del` does, without forking: detach the handle's bind mount and
/// remove the file. The namespace itself goes once nothing else references it.
pub(crate) fn netns_del(netns: &str) -> Result<()> {
    let path = netns_path(netns);
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: the file exists but is not a mount (a half-done `ip netns add`).
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(errno) => return Err(io_error("unmounting", &path)(errno.into())),
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("removing", &path)(e)),
        _ => Ok(()),
    }
}

pub(crate) fn list_netns(prefix: &str) -> Result<Vec<String>> {
    list_dir_prefixed(Path::new(NETNS_DIR), prefix)
        .map(|names| names.into_iter().map(|(name, _)| name).collect())
}

/// Entries of `dir` whose name starts with `prefix`; a missing `dir` has none.
pub(crate) fn list_dir_prefixed(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Runs `f` on a fresh thread that has joined `netns`. The thread ends with `f`, so
/// the namespace switch never leaks to other code; a panic in `f` is re-raised here
/// with its original payload so assertions inside read normally.
pub(crate) fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns_path(netns);
    let handle = File::open(&path).map_err(io_error("opening", &path))?;
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name(format!("netns {netns}"))
            .spawn_scoped(scope, move || {
                nix::sched::setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    LabError::EnterNetns {
                        netns: netns.to_owned(),
                        source: errno.into(),
                    }
                })?;
                Ok(f())
            })
            .map_err(|source| LabError::Spawn {
                command: format!("thread for netns {netns}"),
                source,
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Writes sysctls inside `netns`: `/proc/sys/net` follows the writing thread's
/// namespace, so a thread in the namespace is enough (no `ip netns exec`).
pub(crate) fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(netns, || {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).map_err(io_error("writing sysctl", &path))?;
        }
        Ok(())
    })?
}

/// Prepares `cmd` to start inside `netns` and the cgroup `cgroup`.
///
/// The child joins both between fork and exec: it writes `0` ("myself") to the
/// cgroup's `cgroup.procs` and calls setns(2), both on descriptors opened here, so
/// the program never runs a single instruction outside the cgroup, which is what
/// eBPF cgroup hooks need. Unlike `ip netns exec` this keeps the caller's mount
/// namespace, so `/run/kproxy-lab` mounts are visible and `/sys` is the host's.
pub(crate) fn enter_on_exec(cmd: &mut Command, netns: &str, cgroup: &Path) -> Result<()> {
    let ns_path = netns_path(netns);
    let ns: OwnedFd = File::open(&ns_path)
        .map_err(io_error("opening", &ns_path))?
        .into();
    let procs_path = cgroup.join("cgroup.procs");
    let procs: OwnedFd = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io_error("opening", &procs_path))?
        .into();
    let join = move || -> io::Result<()> {
        // SAFETY: between fork and exec in a multi-threaded parent only
        // async-signal-safe calls are allowed; write(2) and setns(2) on descriptors
        // owned by this closure are plain system calls and allocate nothing.
        unsafe {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes the two system calls above; see there.
    unsafe {
        cmd.pre_exec(join);
    }
    Ok(())
}

/// Waits for `child` up to `bound`, killing it past that; returns its stdout and
/// stderr, or `None` if it had to be killed. Meant for short-lived children whose
/// output fits in a pipe buffer.
pub(crate) fn wait_output(child: &mut Child, bound: Duration) -> io::Result<Option<Output>> {
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(POLL);
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout)?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_end(&mut stderr)?;
    }
    Ok(Some(Output {
        status,
        stdout,
        stderr,
    }))
}

/// Polls `done` until it holds or `bound` passes; returns whether it held.
pub(crate) fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

pub(crate) fn mount_fs(fstype: &str, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| io_error("mounting", target)(errno.into()))
}

pub(crate) fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
        .map_err(|errno| io_error("unmounting", target)(errno.into()))
}

/// One line of `/proc/self/mountinfo`, the parts the lab uses.
pub(crate) struct MountEntry {
    /// The mounted directory inside its filesystem: `/` for a filesystem's root.
    pub(crate) root: String,
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: String,
}

pub(crate) fn mounts() -> Result<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_error("reading", path))?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let root = unescape_mount_field(left.nth(3)?);
    let mount_point = PathBuf::from(unescape_mount_field(left.next()?));
    let fstype = right.split(' ').next()?.to_owned();
    Some(MountEntry {
        root,
        mount_point,
        fstype,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mounts()?.iter().any(|m| m.mount_point == path))
}

/// A cgroup2 mount of the whole hierarchy, if this mount namespace has one.
pub(crate) fn cgroup2_root() -> Result<Option<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2" && m.root == "/")
        .map(|m| m.mount_point))
}

/// Kills every process in `cgroup` and its descendants (cgroup.kill, Linux 5.14)
/// and waits, bounded, until none is left.
pub(crate) fn cgroup_kill(cgroup: &Path, bound: Duration) -> Result<()> {
    let kill = cgroup.join("cgroup.kill");
    fs::write(&kill, "1").map_err(io_error("writing", &kill))?;
    let events = cgroup.join("cgroup.events");
    let emptied = wait_until(bound, || {
        fs::read_to_string(&events).is_ok_and(|text| text.lines().any(|l| l == "populated 0"))
    });
    if emptied {
        Ok(())
    } else {
        Err(LabError::NotReady {
            what: format!("emptying cgroup {}", cgroup.display()),
            bound,
            detail: "processes survived cgroup.kill".to_owned(),
        })
    }
}

/// Removes `cgroup` and its descendants, deepest first. A cgroup whose last process
/// just died may briefly refuse removal (EBUSY), hence the bounded retry.
pub(crate) fn remove_cgroup_tree(cgroup: &Path, bound: Duration) -> Result<()> {
    let children = match fs::read_dir(cgroup) {
        Ok(entries) => entries
            .filter_map(std::result::Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("listing", cgroup)(e)),
    };
    for child in children {
        remove_cgroup_tree(&child, bound)?;
    }
    let mut last = None;
    let removed = wait_until(bound, || match fs::remove_dir(cgroup) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            last = Some(e);
            false
        }
    });
    match (removed, last) {
        (false, Some(e)) => Err(io_error("removing cgroup", cgroup)(e)),
        _ => Ok(()),
    }
}

/// Links in the calling thread's namespace whose alias starts with `prefix`; the lab
/// sets its id as the alias of every link it makes.
pub(crate) fn links_with_alias(prefix: &str) -> Result<Vec<String>> {
    let dir = Path::new("/sys/class/net");
    let mut found = Vec::new();
    for (name, path) in list_dir_prefixed(dir, "")? {
        let alias = fs::read_to_string(path.join("ifalias")).unwrap_or_default();
        if alias.trim().starts_with(prefix) {
            found.push(name);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw";
        let entry = parse_mountinfo_line(line).expect("parses");
        assert_eq!(entry.root, "/mnt1");
        assert_eq!(entry.mount_point, Path::new("/mnt/with space"));
        assert_eq!(entry.fstype, "ext3");
        let line =
            "40 1 0:35 / /run/kproxy-lab/kpl0/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw";
        let entry = parse_mountinfo_line(line).expect("parses");
        assert_eq!(entry.root, "/");
        assert_eq!(entry.fstype, "cgroup2");
        assert!(parse_mountinfo_line("garbage").is_none());
    }
}
