//! The netns lab: throw-away clusters built from network namespaces, with real
//! packets, real routing and real cgroups, for integration tests, the demo and the
//! benchmarks.
//!
//! # Topology
//!
//! ```text
//!                          LAN namespace <id>-lan: bridge br0, also the router
//!        +----------------------------------------------------------------------+
//!        | br0: 198.18.0.254/24 2001:db8:18::fe/64   (nodes' default gateway)    |
//!        |      203.0.113.254/24 2001:db8:203::fe/64 (no route to any pod range) |
//!        |     n1 |               n2 |                         x1 |               |
//!        +--------+------------------+----------------------------+---------------+
//!            eth0 |             eth0 |                       eth0 |
//!   +-------------+-------+  +-------+-------------+  +-----------+------------+
//!   | node a   <id>-a     |  | node b   <id>-b     |  | external x   <id>-x    |
//!   | 198.18.0.1/24       |  | 198.18.0.2/24       |  | 203.0.113.1/24         |
//!   | 2001:db8:18::1/64   |  | 2001:db8:18::2/64   |  | 2001:db8:203::1/64     |
//!   | pods 100.64.1.0/24  |  | pods 100.64.2.0/24  |  | on-link routes to the  |
//!   |  2001:db8:64:1::/64 |  |  2001:db8:64:2::/64 |  | node LAN only; no pod  |
//!   | cgroup, bpffs       |  | cgroup, bpffs       |  | routes, no default     |
//!   |  veth1      veth2   |  |  veth1              |  +------------------------+
//!   +----+----------+-----+  +----+----------------+
//!   eth0 |     eth0 |        eth0 |
//!   pod a1      pod a2       pod b1        (each pod is its own namespace <id>-<pod>)
//!   100.64.1.1  100.64.1.2   100.64.2.1
//!   2001:db8:64:1::1 ...
//! ```
//!
//! # Address plan
//!
//! See [`plan`]: nodes `198.18.0.i/24` and `2001:db8:18::i/64` (node `i` counted
//! from 1), node `i`'s pods `100.64.i.k/32` and `2001:db8:64:i::k/128`, externals
//! `203.0.113.j/24` and `2001:db8:203::j/64`. Every lab has its own LAN, so labs
//! never collide even though they all use the same addresses. `198.51.100.0/24`,
//! `192.0.2.0/24` and `2001:db8:96::/48` are left for tests (service and
//! load-balancer addresses).
//!
//! Routing: every node has a route to every other node's pod CIDRs via that node's
//! LAN address (added as nodes join), on-link routes to the external subnets, and a
//! default route via the LAN router. Pods are wired Calico style: a `/32` (`/128`)
//! on `eth0`, `169.254.1.1` on-link and the default route via it; the node answers
//! for it by proxy ARP on the host-side veth and routes the pod's `/32` to that
//! veth. For IPv6 the host-side veth carries `fe80::1`, the pods' default gateway.
//! Externals reach node addresses on-link and have no route to pods, as on a real
//! network; pods reach externals through their node (replies need SNAT, as usual).
//!
//! # Processes and cgroups
//!
//! Each lab mounts a cgroup2 filesystem at `/run/kproxy-lab/<id>/cgroup` (outside
//! `/sys`, which `ip netns exec` remounts) and a bpffs per node at
//! `/run/kproxy-lab/<id>/bpf/<node>`. The cgroup tree is
//!
//! ```text
//! <id>/                  the lab: cgroup.kill here ends every process it started
//!   node-<node>/         Node::cgroup_path(): the node's processes (the agent)
//!     pod-<pod>/         the pod's processes; a descendant, so hooks on the node see it
//!   ext-<external>/      externals' processes, outside every node
//! ```
//!
//! [`Host::spawn`], [`Host::exec`] and [`Host::command`] start programs inside a
//! host's namespace *and* cgroup, so eBPF socket hooks attached to a node's cgroup
//! see them; [`client::tcp_request`] and [`client::udp_request`] run the echo client
//! that way. [`Host::run`] runs a closure on a thread inside the namespace: quick,
//! but the thread stays in the test's own cgroup, so node socket hooks do not see it.
//!
//! # Names
//!
//! A lab id is `kpl` plus 8 hex digits (11 characters). Namespaces are
//! `<id>-<name>` (the LAN is `<id>-lan`), at most 11 + 1 + 24 = 36 characters,
//! well under `NAME_MAX`. Link names never carry the id because every link lives in
//! a lab namespace, so they only need to be unique there: `br0`, `n<i>` and `x<j>`
//! in the LAN, `eth0` and `veth<k>` on nodes, `eth0` in pods and externals; the
//! longest is `veth250`, 7 characters against IFNAMSIZ's 15. Every link gets the lab
//! id as its alias, which is how [`leaks`] would find one in the root namespace.
//!
//! # Cleanup
//!
//! Dropping the [`Lab`] (also while unwinding from a panic) or calling [`Lab::close`]
//! kills every process the lab started, deletes its namespaces (and with them every
//! link), removes its cgroups and unmounts its filesystems. Handles ([`Node`],
//! [`Pod`], [`External`]) are cheap clones that own nothing; their calls fail once
//! the lab is gone. [`leaks`] and [`assert_clean`] check that nothing with a given
//! prefix is left; [`purge_stale`] removes labs whose owning process died.

mod cleanup;
pub mod client;
pub mod echo;
mod host;
pub mod plan;
mod sys;
mod topology;

use std::{
    collections::BTreeSet,
    fs,
    hash::{BuildHasher as _, Hasher as _},
    io,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub use self::{
    cleanup::{Leaks, assert_clean, leaks, purge_stale},
    host::{Host, Process},
    topology::{External, Node, Pod},
};

/// Everything that can go wrong building, using or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A program (or a helper thread) could not be started at all.
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A setup command ran and failed; its stderr says why.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A file, mount or cgroup operation failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// setns(2) refused to enter a lab namespace.
    #[error("entering network namespace {netns}")]
    EnterNetns {
        netns: String,
        #[source]
        source: io::Error,
    },
    /// Names end up in namespace and cgroup names, so they are kept simple.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// Nodes, pods and externals share one namespace of names per lab.
    #[error("lab {lab} already has something named {name:?}")]
    DuplicateName { lab: String, name: String },
    /// The address plan has room for a fixed number of hosts.
    #[error("lab {lab} has no room for another {what} (at most {max})")]
    Full {
        lab: String,
        what: &'static str,
        max: u8,
    },
    /// Random ids kept colliding with existing labs.
    #[error("no free lab id after {attempts} attempts")]
    NoFreeId { attempts: u32 },
    /// A bounded wait ran out.
    #[error("{what} was not done after {bound:?}: {detail}")]
    NotReady {
        what: String,
        bound: Duration,
        detail: String,
    },
    /// The echo server and client are a separate binary of this crate.
    #[error(
        "the kproxy-echo binary was not found (looked in {looked}); build it with \
         `cargo build -p kproxy-tests --bins` or point KPROXY_ECHO_BIN at it"
    )]
    EchoBinaryMissing { looked: String },
    /// The handle's lab has been closed or dropped.
    #[error("lab {lab} is already torn down")]
    TornDown { lab: String },
    /// Teardown did what it could; these parts failed.
    #[error("tearing down lab {lab}: {}", problems.join("; "))]
    Teardown { lab: String, problems: Vec<String> },
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Prefix of every lab id, hence of every namespace, cgroup and directory a lab makes.
pub const ID_PREFIX: &str = "kpl";

/// Longest node, pod or external name; keeps namespace names short (see "Names").
pub const MAX_NAME_LEN: usize = 24;

/// Bound on waits for processes to die and cgroups to empty.
const TEARDOWN_BOUND: Duration = Duration::from_secs(10);

/// A throw-away cluster. Dropping it removes everything it made.
pub struct Lab {
    shared: Arc<Shared>,
}

/// What every handle of a lab shares.
pub(crate) struct Shared {
    pub(crate) id: String,
    /// `/run/kproxy-lab/<id>`.
    pub(crate) dir: PathBuf,
    /// The lab's own cgroup, `<dir>/cgroup/<id>`.
    pub(crate) cgroup: PathBuf,
    pub(crate) state: Mutex<State>,
}

/// The lab's registry. The lock also serialises topology changes, so routes between
/// nodes stay consistent when tests add hosts from several threads.
pub(crate) struct State {
    pub(crate) torn_down: bool,
    pub(crate) names: BTreeSet<String>,
    pub(crate) nodes: Vec<NodeRecord>,
    pub(crate) externals: u8,
}

pub(crate) struct NodeRecord {
    pub(crate) index: u8,
    pub(crate) netns: String,
    /// Pods ever added; indices are not reused, so a re-created pod gets a new IP.
    pub(crate) pods: u8,
}

impl Shared {
    pub(crate) fn lan_netns(&self) -> String {
        format!("{}-lan", self.id)
    }

    pub(crate) fn netns_for(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// Locks the registry for a change: fails once the lab is gone, and checks and
    /// reserves nothing (callers do, under this same lock).
    pub(crate) fn lock_live(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.torn_down {
            return Err(LabError::TornDown {
                lab: self.id.clone(),
            });
        }
        Ok(state)
    }

    /// Validates `name` and checks it is free in this lab.
    pub(crate) fn check_new_name(&self, state: &State, name: &str) -> Result<()> {
        validate_name(name)?;
        if state.names.contains(name) {
            return Err(LabError::DuplicateName {
                lab: self.id.clone(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn teardown(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.torn_down {
            return Ok(());
        }
        state.torn_down = true;
        cleanup::teardown(&self.id)
    }
}

fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(LabError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid("must be 1 to 24 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lower-case letters, digits and '-' are allowed");
    }
    if name.starts_with('-') {
        return invalid("must not start with '-'");
    }
    if name == "lan" {
        return invalid("\"lan\" is the LAN namespace's name");
    }
    Ok(())
}

/// A fresh id: a hash of the pid, a per-process counter, the time and the standard
/// library's per-process random seed. Uniqueness is not left to chance: the caller
/// claims the id by creating its directory and retries on a collision.
fn candidate_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    let hash = hasher.finish();
    format!("{ID_PREFIX}{:08x}", hash & 0xffff_ffff)
}

impl Lab {
    /// Builds an empty lab: the LAN namespace with its bridge and router, the lab's
    /// cgroup and mounts. `name_hint` only goes into the lab's owner file
    /// (`/run/kproxy-lab/<id>/owner`) to tell labs apart when debugging.
    pub fn new(name_hint: &str) -> Result<Lab> {
        const ATTEMPTS: u32 = 16;
        let base = Path::new(sys::LAB_DIR);
        fs::create_dir_all(base).map_err(sys::io_error("creating", base))?;
        for _ in 0..ATTEMPTS {
            let id = candidate_id();
            let dir = base.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(sys::io_error("creating", &dir)(e)),
            }
            let lab = Lab {
                shared: Arc::new(Shared {
                    cgroup: dir.join("cgroup").join(&id),
                    id,
                    dir,
                    state: Mutex::new(State {
                        torn_down: false,
                        names: BTreeSet::new(),
                        nodes: Vec::new(),
                        externals: 0,
                    }),
                }),
            };
            // On error the half-built lab is dropped, which tears it down.
            lab.build(name_hint)?;
            tracing::debug!(lab = %lab.id(), hint = name_hint, "lab ready");
            return Ok(lab);
        }
        Err(LabError::NoFreeId { attempts: ATTEMPTS })
    }

    fn build(&self, name_hint: &str) -> Result<()> {
        let shared = &self.shared;
        let owner = shared.dir.join("owner");
        let hint: String = name_hint.chars().filter(|c| !c.is_control()).collect();
        fs::write(
            &owner,
            format!(
                "{} {}\n",
                cleanup::process_identity(std::process::id()),
                hint
            ),
        )
        .map_err(sys::io_error("writing", &owner))?;

        let cgroup_mount = shared.dir.join("cgroup");
        fs::create_dir(&cgroup_mount).map_err(sys::io_error("creating", &cgroup_mount))?;
        sys::mount_fs("cgroup2", &cgroup_mount)?;
        fs::create_dir(&shared.cgroup).map_err(sys::io_error("creating", &shared.cgroup))?;
        let bpf = shared.dir.join("bpf");
        fs::create_dir(&bpf).map_err(sys::io_error("creating", &bpf))?;

        let lan = shared.lan_netns();
        let id = &shared.id;
        sys::netns_add(&lan)?;
        sys::sysctls(&lan, &topology::router_sysctls())?;
        sys::ip(&lan, "link set lo up")?;
        sys::ip(
            &lan,
            "link add br0 type bridge mcast_snooping 0 forward_delay 0",
        )?;
        sys::ip(&lan, &format!("link set br0 alias {id} up"))?;
        for (addr, prefix) in [
            (plan::ROUTER_V4.to_string(), plan::NODE_LAN_V4.prefix_len()),
            (
                plan::ROUTER_EXTERNAL_V4.to_string(),
                plan::EXTERNAL_V4.prefix_len(),
            ),
            (plan::ROUTER_V6.to_string(), plan::NODE_LAN_V6.prefix_len()),
            (
                plan::ROUTER_EXTERNAL_V6.to_string(),
                plan::EXTERNAL_V6.prefix_len(),
            ),
        ] {
            sys::ip(&lan, &format!("addr add {addr}/{prefix} dev br0 nodad"))?;
        }
        Ok(())
    }

    /// The lab's id, `kpl` plus 8 hex digits: the prefix of everything it creates.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Adds a node: a namespace on the LAN with forwarding on, routes to every other
    /// node's pods, its own cgroup and bpffs.
    pub fn add_node(&self, name: &str) -> Result<Node> {
        topology::add_node(&self.shared, name)
    }

    /// Adds an external client on the LAN's L2 segment, in TEST-NET-3.
    pub fn add_external(&self, name: &str) -> Result<External> {
        topology::add_external(&self.shared, name)
    }

    /// The LAN namespace's name, for the odd test that needs to look at the wire
    /// (e.g. `tcpdump` on `br0`).
    pub fn lan_netns(&self) -> String {
        self.shared.lan_netns()
    }

    /// Tears the lab down now and reports what failed, which dropping cannot.
    pub fn close(self) -> Result<()> {
        self.shared.teardown()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(error) = self.shared.teardown() {
            // Drop cannot return the error, and tests rarely install a tracing
            // subscriber; libtest captures stderr and shows it with the failure.
            eprintln!("kproxy lab: {error}");
            tracing::warn!(lab = %self.shared.id, %error, "lab teardown incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["a", "node-1", "web-0", "x".repeat(MAX_NAME_LEN).as_str()] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Node",
            "a b",
            "a/b",
            "-a",
            "lan",
            "x".repeat(MAX_NAME_LEN + 1).as_str(),
        ] {
            assert!(
                matches!(validate_name(bad), Err(LabError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_have_the_prefix_and_fit_the_budget() {
        let a = candidate_id();
        let b = candidate_id();
        assert!(a.starts_with(ID_PREFIX));
        assert_eq!(a.len(), 11);
        assert_ne!(a, b);
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
