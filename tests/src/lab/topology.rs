//! Nodes, pods and externals: how each is wired, and their handles.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    Host, LabError, NodeRecord, Result, Shared, TEARDOWN_BOUND, plan,
    sys::{self, ip},
};

/// Sysctls for every lab namespace. DAD off, so addresses work the moment they are
/// added; reverse-path filtering off, because new namespaces inherit the host's IPv4
/// settings and the lab's asymmetric test paths must not depend on them.
const COMMON_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// Sysctls for namespaces that forward: the LAN router and nodes.
pub(crate) fn router_sysctls() -> Vec<(&'static str, &'static str)> {
    let mut settings = COMMON_SYSCTLS.to_vec();
    settings.push(("net.ipv4.ip_forward", "1"));
    settings.push(("net.ipv6.conf.all.forwarding", "1"));
    settings
}

/// Creates a namespace with loopback up and the given sysctls.
fn new_netns(netns: &str, settings: &[(&str, &str)]) -> Result<()> {
    sys::netns_add(netns)?;
    sys::sysctls(netns, settings)?;
    ip(netns, "link set lo up")
}

/// Plugs `netns` into the LAN bridge: port `port` on the bridge, `eth0` inside. The
/// veth is created in the LAN namespace with its peer born in `netns`, so nothing
/// ever appears in the root namespace.
fn plug_into_lan(shared: &Shared, netns: &str, port: &str) -> Result<()> {
    let lan = shared.lan_netns();
    let id = &shared.id;
    ip(
        &lan,
        &format!("link add {port} type veth peer name eth0 netns {netns}"),
    )?;
    ip(&lan, &format!("link set {port} master br0 alias {id} up"))?;
    ip(netns, &format!("link set eth0 alias {id} up"))
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir(path).map_err(sys::io_error("creating", path))
}

pub(crate) fn add_node(shared: &Arc<Shared>, name: &str) -> Result<Node> {
    let mut state = shared.lock_live()?;
    shared.check_new_name(&state, name)?;
    let index = u8::try_from(state.nodes.len() + 1)
        .ok()
        .filter(|i| *i <= plan::MAX_NODES)
        .ok_or_else(|| LabError::Full {
            lab: shared.id.clone(),
            what: "node",
            max: plan::MAX_NODES,
        })?;
    let netns = shared.netns_for(name);
    new_netns(&netns, &router_sysctls())?;
    plug_into_lan(shared, &netns, &format!("n{index}"))?;
    let (v4, v6) = (plan::node_v4(index), plan::node_v6(index));
    ip(
        &netns,
        &format!("addr add {v4}/{} dev eth0", plan::NODE_LAN_V4.prefix_len()),
    )?;
    ip(
        &netns,
        &format!(
            "-6 addr add {v6}/{} dev eth0 nodad",
            plan::NODE_LAN_V6.prefix_len()
        ),
    )?;
    ip(
        &netns,
        &format!("route add {} dev eth0 scope link", plan::EXTERNAL_V4),
    )?;
    ip(
        &netns,
        &format!("-6 route add {} dev eth0", plan::EXTERNAL_V6),
    )?;
    ip(
        &netns,
        &format!("route add default via {} dev eth0", plan::ROUTER_V4),
    )?;
    ip(
        &netns,
        &format!("-6 route add default via {} dev eth0", plan::ROUTER_V6),
    )?;
    for other in &state.nodes {
        route_pods(&netns, other.index)?;
        route_pods(&other.netns, index)?;
    }

    let cgroup = shared.cgroup.join(format!("node-{name}"));
    make_dir(&cgroup)?;
    let bpffs = shared.dir.join("bpf").join(name);
    make_dir(&bpffs)?;
    sys::mount_fs("bpf", &bpffs)?;

    state.names.insert(name.to_owned());
    state.nodes.push(NodeRecord {
        index,
        netns: netns.clone(),
        pods: 0,
    });
    Ok(Node {
        inner: Arc::new(NodeInner {
            shared: Arc::clone(shared),
            index,
            name: name.to_owned(),
            netns,
            cgroup,
            bpffs,
        }),
    })
}

/// In `netns`, routes node `to`'s pod CIDRs via its LAN addresses.
fn route_pods(netns: &str, to: u8) -> Result<()> {
    ip(
        netns,
        &format!(
            "route add {} via {} dev eth0",
            plan::pod_cidr_v4(to),
            plan::node_v4(to)
        ),
    )?;
    ip(
        netns,
        &format!(
            "-6 route add {} via {} dev eth0",
            plan::pod_cidr_v6(to),
            plan::node_v6(to)
        ),
    )
}

pub(crate) fn add_external(shared: &Arc<Shared>, name: &str) -> Result<External> {
    let mut state = shared.lock_live()?;
    shared.check_new_name(&state, name)?;
    let index = state
        .externals
        .checked_add(1)
        .filter(|i| *i <= plan::MAX_EXTERNALS)
        .ok_or_else(|| LabError::Full {
            lab: shared.id.clone(),
            what: "external",
            max: plan::MAX_EXTERNALS,
        })?;
    let netns = shared.netns_for(name);
    new_netns(&netns, &COMMON_SYSCTLS)?;
    plug_into_lan(shared, &netns, &format!("x{index}"))?;
    let (v4, v6) = (plan::external_v4(index), plan::external_v6(index));
    ip(
        &netns,
        &format!("addr add {v4}/{} dev eth0", plan::EXTERNAL_V4.prefix_len()),
    )?;
    ip(
        &netns,
        &format!(
            "-6 addr add {v6}/{} dev eth0 nodad",
            plan::EXTERNAL_V6.prefix_len()
        ),
    )?;
    ip(
        &netns,
        &format!("route add {} dev eth0 scope link", plan::NODE_LAN_V4),
    )?;
    ip(
        &netns,
        &format!("-6 route add {} dev eth0", plan::NODE_LAN_V6),
    )?;
    let cgroup = shared.cgroup.join(format!("ext-{name}"));
    make_dir(&cgroup)?;

    state.names.insert(name.to_owned());
    state.externals = index;
    Ok(External {
        inner: Arc::new(Place {
            _shared: Arc::clone(shared),
            index,
            name: name.to_owned(),
            netns,
            cgroup,
            v4,
            v6,
        }),
    })
}

/// A node: a network namespace on the LAN that forwards for its pods, with its own
/// cgroup and bpffs for the agent under test. Cheap to clone; owns nothing.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    shared: Arc<Shared>,
    index: u8,
    name: String,
    netns: String,
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Node {
    /// The node's number in the address plan (from 1).
    pub fn index(&self) -> u8 {
        self.inner.index
    }

    /// A bpffs private to this node, for the agent's pinned maps and links.
    pub fn bpffs_path(&self) -> &Path {
        &self.inner.bpffs
    }

    /// The pod range this node routes to its pods.
    pub fn pod_cidr_v4(&self) -> Ipv4Net {
        plan::pod_cidr_v4(self.inner.index)
    }

    /// The IPv6 pod range this node routes to its pods.
    pub fn pod_cidr_v6(&self) -> Ipv6Net {
        plan::pod_cidr_v6(self.inner.index)
    }

    /// Adds a pod on this node, wired Calico style (see the module docs).
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        let node = &self.inner;
        let shared = &node.shared;
        let mut state = shared.lock_live()?;
        shared.check_new_name(&state, name)?;
        let record = state
            .nodes
            .iter_mut()
            .find(|r| r.index == node.index)
            .ok_or_else(|| LabError::TornDown {
                lab: shared.id.clone(),
            })?;
        let index = record
            .pods
            .checked_add(1)
            .filter(|i| *i <= plan::MAX_PODS_PER_NODE)
            .ok_or_else(|| LabError::Full {
                lab: shared.id.clone(),
                what: "pod on this node",
                max: plan::MAX_PODS_PER_NODE,
            })?;
        record.pods = index;

        let netns = shared.netns_for(name);
        let host_veth = format!("veth{index}");
        let (v4, v6) = (
            plan::pod_v4(node.index, index),
            plan::pod_v6(node.index, index),
        );
        let id = &shared.id;
        new_netns(&netns, &COMMON_SYSCTLS)?;
        ip(
            &node.netns,
            &format!("link add {host_veth} type veth peer name eth0 netns {netns}"),
        )?;
        // Answer ARP for the pods' made-up gateway at once (the default proxy
        // delay holds the first reply back by up to 0.8 s).
        sys::sysctls(
            &node.netns,
            &[
                (&format!("net.ipv4.conf.{host_veth}.proxy_arp"), "1"),
                (&format!("net.ipv4.neigh.{host_veth}.proxy_delay"), "0"),
            ],
        )?;
        ip(&node.netns, &format!("link set {host_veth} alias {id} up"))?;
        ip(
            &node.netns,
            &format!(
                "-6 addr add {}/64 dev {host_veth} nodad",
                plan::POD_GATEWAY_V6
            ),
        )?;
        ip(&node.netns, &format!("route add {v4}/32 dev {host_veth}"))?;
        ip(
            &node.netns,
            &format!("-6 route add {v6}/128 dev {host_veth}"),
        )?;

        ip(&netns, &format!("link set eth0 alias {id} up"))?;
        ip(&netns, &format!("addr add {v4}/32 dev eth0"))?;
        ip(&netns, &format!("-6 addr add {v6}/128 dev eth0 nodad"))?;
        ip(
            &netns,
            &format!("route add {} dev eth0 scope link", plan::POD_GATEWAY_V4),
        )?;
        ip(
            &netns,
            &format!("route add default via {} dev eth0", plan::POD_GATEWAY_V4),
        )?;
        ip(
            &netns,
            &format!("-6 route add default via {} dev eth0", plan::POD_GATEWAY_V6),
        )?;
        let cgroup = node.cgroup.join(format!("pod-{name}"));
        make_dir(&cgroup)?;

        state.names.insert(name.to_owned());
        Ok(Pod {
            inner: Arc::new(PodInner {
                node: self.clone(),
                host_veth,
                place: Place {
                    _shared: Arc::clone(shared),
                    index,
                    name: name.to_owned(),
                    netns,
                    cgroup,
                    v4,
                    v6,
                },
            }),
        })
    }
}

impl Host for Node {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn netns(&self) -> &str {
        &self.inner.netns
    }
    /// The node's cgroup: attach the agent's socket hooks here; pods are below it.
    fn cgroup_path(&self) -> &Path {
        &self.inner.cgroup
    }
    fn ipv4(&self) -> Ipv4Addr {
        plan::node_v4(self.inner.index)
    }
    fn ipv6(&self) -> Ipv6Addr {
        plan::node_v6(self.inner.index)
    }
}

/// A pod: its own namespace, a veth to its node, and a cgroup below the node's.
#[derive(Clone)]
pub struct Pod {
    inner: Arc<PodInner>,
}

struct PodInner {
    node: Node,
    host_veth: String,
    place: Place,
}

/// What pods and externals have in common.
struct Place {
    /// Keeps the lab's bookkeeping reachable for as long as a handle exists.
    _shared: Arc<Shared>,
    index: u8,
    name: String,
    netns: String,
    cgroup: PathBuf,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Pod {
    /// The pod's number on its node (from 1); its addresses end with it.
    pub fn index(&self) -> u8 {
        self.inner.place.index
    }

    /// The node the pod runs on.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The host-side veth in the node's namespace, e.g. for tc attachment.
    pub fn host_veth(&self) -> &str {
        &self.inner.host_veth
    }

    /// Deletes the pod as a kubelet would: kills its processes, removes the veth
    /// (and so its routes) and its namespace. Its name becomes free again; a pod
    /// re-added under it gets a new address.
    pub fn remove(self) -> Result<()> {
        let shared = &self.inner.node.inner.shared;
        let mut state = shared.lock_live()?;
        let place = &self.inner.place;
        sys::cgroup_kill(&place.cgroup, TEARDOWN_BOUND)?;
        ip(
            &self.inner.node.inner.netns,
            &format!("link del {}", self.inner.host_veth),
        )?;
        sys::netns_del(&place.netns)?;
        sys::remove_cgroup_tree(&place.cgroup, TEARDOWN_BOUND)?;
        state.names.remove(&place.name);
        Ok(())
    }
}

impl Host for Pod {
    fn name(&self) -> &str {
        &self.inner.place.name
    }
    fn netns(&self) -> &str {
        &self.inner.place.netns
    }
    fn cgroup_path(&self) -> &Path {
        &self.inner.place.cgroup
    }
    fn ipv4(&self) -> Ipv4Addr {
        self.inner.place.v4
    }
    fn ipv6(&self) -> Ipv6Addr {
        self.inner.place.v6
    }
}

/// A client outside the cluster, on the LAN's L2 segment with a TEST-NET-3 address.
#[derive(Clone)]
pub struct External {
    inner: Arc<Place>,
}

impl External {
    /// The external's number in the address plan (from 1).
    pub fn index(&self) -> u8 {
        self.inner.index
    }

    /// Routes `destination` via `node`'s LAN address of the same family, as an
    /// upstream router announcing load-balancer or external IPs would.
    pub fn route_via(&self, destination: IpNet, node: &Node) -> Result<()> {
        let (family, via) = match destination {
            IpNet::V4(_) => ("", IpAddr::from(node.ipv4())),
            IpNet::V6(_) => ("-6 ", IpAddr::from(node.ipv6())),
        };
        ip(
            &self.inner.netns,
            &format!("{family}route add {destination} via {via} dev eth0"),
        )
    }
}

impl Host for External {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn netns(&self) -> &str {
        &self.inner.netns
    }
    fn cgroup_path(&self) -> &Path {
        &self.inner.cgroup
    }
    fn ipv4(&self) -> Ipv4Addr {
        self.inner.v4
    }
    fn ipv6(&self) -> Ipv6Addr {
        self.inner.v6
    }
}
