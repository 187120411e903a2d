//! What nodes, pods and externals have in common: a namespace, a cgroup, addresses,
//! and ways to run things there.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
};

use super::{LabError, Result, echo, sys};

/// A place in the lab where programs run: a [`Node`](super::Node), a
/// [`Pod`](super::Pod) or an [`External`](super::External).
///
/// Programs started through this trait run inside the host's network namespace and
/// cgroup from their first instruction (see [`Host::command`]); closures given to
/// [`Host::run`] only change namespace.
pub trait Host {
    /// The name it was added under.
    fn name(&self) -> &str;

    /// Its network namespace's name under `/run/netns` (`ip netns exec` takes it).
    fn netns(&self) -> &str;

    /// The cgroup its programs join.
    fn cgroup_path(&self) -> &Path;

    /// Its IPv4 address: the LAN address of a node, the pod IP of a pod.
    fn ipv4(&self) -> Ipv4Addr;

    /// Its IPv6 address.
    fn ipv6(&self) -> Ipv6Addr;

    /// Its address of the same family as `like`, for dual-stack table tests.
    fn ip_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.ipv4().into(),
            IpAddr::V6(_) => self.ipv6().into(),
        }
    }

    /// The path of its namespace handle, for setns(2) or `nsenter --net=`.
    fn netns_path(&self) -> PathBuf {
        sys::netns_path(self.netns())
    }

    /// A command that will run inside this host's namespace and cgroup; set its
    /// arguments, environment and stdio as usual. The child joins both between fork
    /// and exec, keeping this process's mount namespace (so `/sys` is the host's and
    /// the lab's `/run/kproxy-lab` mounts are visible).
    fn command(&self, program: impl AsRef<OsStr>) -> Result<Command>
    where
        Self: Sized,
    {
        let mut cmd = Command::new(program);
        sys::enter_on_exec(&mut cmd, self.netns(), self.cgroup_path())?;
        Ok(cmd)
    }

    /// Starts `program` here and returns a guard that kills it when dropped. Stdio
    /// is inherited; use [`Host::command`] and [`Process::from_child`] to change it.
    fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Process>
    where
        Self: Sized,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        let what = sys::describe(&cmd);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: what.clone(),
            source,
        })?;
        Ok(Process::from_child(child, what))
    }

    /// Runs `program` here to completion and returns its stdout; a non-zero exit is
    /// an error carrying stderr.
    fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        Self: Sized,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        sys::run(&mut cmd)
    }

    /// Runs `f` on a thread inside this host's network namespace and returns its
    /// result; a panic in `f` propagates. The thread stays in the test's cgroup, so
    /// socket hooks on a node's cgroup do not see it: use it for external-style
    /// clients and for looking at kernel state (sysctls, sockets).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T>
    where
        Self: Sized,
    {
        sys::in_netns(self.netns(), f)
    }

    /// Starts `kproxy-echo` here, named after this host, on the given TCP and UDP
    /// ports (IPv4 and IPv6), and returns once every socket is bound.
    fn start_echo(&self, tcp: &[u16], udp: &[u16]) -> Result<Process>
    where
        Self: Sized,
    {
        echo::start(self, tcp, udp)
    }
}

/// A running program; dropping the guard kills it (SIGKILL) and reaps it.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Takes charge of a child started from [`Host::command`]; `what` names it in
    /// errors.
    pub fn from_child(child: Child, what: impl Into<String>) -> Process {
        Process {
            child,
            what: what.into(),
        }
    }

    /// The program's pid, e.g. to look at `/proc/<pid>/cgroup`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, for its pipes or to wait on it.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it is still running (it may have crashed: worth asserting).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it now and returns how it ended.
    pub fn kill(mut self) -> Result<ExitStatus> {
        // An already-exited child makes kill fail harmlessly; wait tells the truth.
        let _ = self.child.kill();
        self.child.wait().map_err(|source| LabError::Spawn {
            command: format!("waiting for {}", self.what),
            source,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.id())
            .field("what", &self.what)
            .finish()
    }
}
