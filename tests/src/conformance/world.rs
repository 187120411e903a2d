//! The conformance lab: two nodes running kproxy, endpoint and client pods, externals.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use super::{Mode, Proto, TCP_PORT, Target, UDP_PORT};
use crate::lab::{
    External, Host, Lab, Node, Pod, Process,
    client::{self, ClientError, EchoReply},
};

/// Who sends a check's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Client pod `a-cl` on node a.
    PodA,
    /// Client pod `b-cl` on node b (served by node b's kproxy).
    PodB,
    /// Endpoint pod `a-ep1` itself (hairpin).
    EndpointA1,
    /// Node a itself.
    NodeA,
    /// External `x1` (203.0.113.1).
    X1,
    /// External `x2` (203.0.113.2).
    X2,
}

/// The lab, its pods and the kproxy processes.
pub struct World {
    /// The lab; dropped last.
    lab: Lab,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    externals: Vec<External>,
    /// Echo servers and kproxy agents; killed on drop.
    processes: Vec<Process>,
    /// Running agents by node index; behind a lock so agents can restart while other
    /// threads send requests.
    agents: std::sync::Mutex<Vec<(usize, Process)>>,
    manifests: PathBuf,
    kproxy: PathBuf,
    mode: Mode,
    log_dir: PathBuf,
}

/// Addresses routed to node a from the externals: LB and externalIP ranges of the table.
const EXTERNAL_ROUTES: &[&str] = &["198.51.100.128/25", "2001:db8:96:1::/64"];

impl World {
    /// Builds the lab and starts echo servers; kproxy is started by [`World::start_agents`].
    pub fn new(name: &str, kproxy: &Path, mode: Mode) -> Result<Self> {
        let lab = Lab::new(name)?;
        let a = lab.add_node("a")?;
        let b = lab.add_node("b")?;
        let mut pods = Vec::new();
        for (node, names) in [
            (&a, ["a-ep1", "a-ep2", "a-cl"]),
            (&b, ["b-ep1", "b-ep2", "b-cl"]),
        ] {
            for n in names {
                pods.push(node.add_pod(n)?);
            }
        }
        let externals = vec![lab.add_external("x1")?, lab.add_external("x2")?];
        for x in &externals {
            for r in EXTERNAL_ROUTES {
                x.route_via(r.parse::<IpNet>()?, &a)?;
            }
        }
        let mut processes = Vec::new();
        for p in &pods {
            processes.push(p.start_echo(&[TCP_PORT], &[UDP_PORT])?);
        }
        let dir = std::env::temp_dir().join(format!("kproxy-conformance-{}", lab.id()));
        let manifests = dir.join("manifests");
        fs::create_dir_all(&manifests)?;
        Ok(Self {
            lab,
            nodes: vec![a, b],
            pods,
            externals,
            processes,
            agents: std::sync::Mutex::default(),
            manifests,
            kproxy: kproxy.to_owned(),
            mode,
            log_dir: dir,
        })
    }

    /// The manifests directory both agents watch.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    /// A node by name (`a` or `b`).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .expect("node a or b")
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .expect("a pod of the table")
    }

    /// Starts kproxy on both nodes with `extra` flags and waits until each reports healthy.
    pub fn start_agents(&self, extra: &[&str]) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_agent(i, extra)?;
        }
        Ok(())
    }

    /// Stops every agent (SIGKILL: the datapath stays, as after a crash).
    pub fn kill_agents(&self) {
        self.agents.lock().expect("agents").clear();
    }

    /// Kills node `i`'s agent with SIGKILL, as a crash or an OOM kill would.
    pub fn kill_agent(&self, i: usize) {
        self.agents.lock().expect("agents").retain(|(n, _)| *n != i);
    }

    /// Sends SIGTERM to node `i`'s agent and waits for it to exit.
    pub fn stop_agent(&self, i: usize) -> Result<std::process::ExitStatus> {
        let mut agents = self.agents.lock().expect("agents");
        let pos = agents
            .iter()
            .position(|(n, _)| *n == i)
            .context("no agent on that node")?;
        let (_, mut process) = agents.remove(pos);
        drop(agents);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.pid())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok(process.child_mut().wait()?)
    }

    /// Starts kproxy on node `i`.
    pub fn start_agent(&self, i: usize, extra: &[&str]) -> Result<()> {
        let node = &self.nodes[i];
        let health = SocketAddr::new(node.ipv4().into(), 10256);
        let log = fs::File::create(self.log_dir.join(format!("kproxy-{}.log", node.name())))?;
        let mut cmd = node.command(&self.kproxy)?;
        cmd.args([
            "run",
            "--proxy-mode",
            self.mode.flag(),
            "--hostname-override",
            node.name(),
        ])
        .arg("--manifests")
        .arg(&self.manifests)
        .args([
            "--healthz-bind-address",
            &health.to_string(),
            "--metrics-bind-address",
            "127.0.0.1:10249",
        ])
        .args(["--min-sync-period", "100ms", "--v", "2"])
        .args(["--cgroup-path"])
        .arg(node.cgroup_path())
        .arg("--bpffs")
        .arg(node.bpffs_path())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
        let child = cmd.spawn().context("starting kproxy")?;
        let process = Process::from_child(child, format!("kproxy on {}", node.name()));
        self.agents.lock().expect("agents").push((i, process));
        self.wait_healthy(i)
    }

    /// Waits until node `i`'s agent answers 200 on /healthz (its first sync succeeded).
    pub fn wait_healthy(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let health = SocketAddr::new(node.ipv4().into(), 10256);
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let status = node.run(move || http_status(health, "/healthz"))?;
            if status == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kproxy on {} not healthy after 60 s (last status {status:?}); log:\n{}",
                    node.name(),
                    self.agent_log(node.name())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's log so far, for failure messages.
    pub fn agent_log(&self, node: &str) -> String {
        fs::read_to_string(self.log_dir.join(format!("kproxy-{node}.log"))).unwrap_or_default()
    }

    /// Writes `text` as manifest `file` (write + rename, so the agents never read half).
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    /// The socket address a target names.
    pub fn resolve(&self, target: Target) -> SocketAddr {
        match target {
            Target::Addr(ip, port) => SocketAddr::new(ip.parse().expect("literal IP"), port),
            Target::NodePort(node, port) => SocketAddr::new(self.node(node).ipv4().into(), port),
        }
    }

    /// The client's own address of `like`'s family.
    pub fn client_ip(&self, from: Client, like: IpAddr) -> IpAddr {
        match from {
            Client::PodA => self.pod("a-cl").ip_like(like),
            Client::PodB => self.pod("b-cl").ip_like(like),
            Client::EndpointA1 => self.pod("a-ep1").ip_like(like),
            Client::NodeA => self.node("a").ip_like(like),
            Client::X1 => self.externals[0].ip_like(like),
            Client::X2 => self.externals[1].ip_like(like),
        }
    }

    /// One request from `from`.
    pub fn request(
        &self,
        from: Client,
        proto: Proto,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<EchoReply, ClientError> {
        fn go(
            h: &impl Host,
            proto: Proto,
            to: SocketAddr,
            timeout: Duration,
        ) -> Result<EchoReply, ClientError> {
            match proto {
                Proto::Tcp => client::tcp_request(h, to, timeout),
                Proto::Udp => client::udp_request(h, to, timeout),
            }
        }
        match from {
            Client::PodA => go(self.pod("a-cl"), proto, to, timeout),
            Client::PodB => go(self.pod("b-cl"), proto, to, timeout),
            Client::EndpointA1 => go(self.pod("a-ep1"), proto, to, timeout),
            Client::NodeA => go(self.node("a"), proto, to, timeout),
            Client::X1 => go(&self.externals[0], proto, to, timeout),
            Client::X2 => go(&self.externals[1], proto, to, timeout),
        }
    }

    /// Tears down: agents first, then the lab (which checks itself for leaks).
    pub fn close(mut self) -> Result<()> {
        self.agents.lock().expect("agents").clear();
        self.processes.clear();
        let id = self.lab.id().to_owned();
        let _ = fs::remove_dir_all(&self.log_dir);
        self.lab.close()?;
        crate::lab::assert_clean(&id);
        Ok(())
    }
}

/// GET `path` on `addr` over plain HTTP/1.0; the status code, or None when unreachable.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(code, _)| code)
}

/// GET `path` on `addr`; status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}
