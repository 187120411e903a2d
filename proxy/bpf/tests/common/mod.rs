//! Shared pieces of the privileged tests: model builders, a lab with echo pods, and a
//! client that runs as a process in a lab host's namespace and cgroup.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    time::Duration,
};

use ipnet::IpNet;
use kproxy_model::{
    Endpoint, EndpointSet, ExternalTraffic, Frontend, FrontendKind, InternalMasquerade, IpFamily,
    Protocol, ProxyModel, ServicePort, ServicePortKey, ServicePortName, Verdict,
};
use kproxy_tests::lab::{Host, Lab, Node, Pod, Process};
use nix::{
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, fork, pipe},
};

/// TCP and UDP port every echo pod listens on.
pub(crate) const ECHO_PORT: u16 = 8080;
/// Bound on every single request.
pub(crate) const REQUEST: Duration = Duration::from_secs(3);

pub(crate) fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test loads BPF programs and builds network namespaces: run it as root (cargo xtask test)"
    );
}

/// A lab with node `a` (pods `a1`, `a2` serving echo, and `ac`, a client) and node `b`
/// (pod `b1` serving echo).
pub(crate) struct EchoLab {
    /// Keeps the lab alive; dropping it tears everything down.
    _lab: Lab,
    pub(crate) a: Node,
    pub(crate) a1: Pod,
    pub(crate) a2: Pod,
    pub(crate) b1: Pod,
    pub(crate) client: Pod,
    _echo: Vec<Process>,
}

impl EchoLab {
    pub(crate) fn new(hint: &str) -> Self {
        let lab = Lab::new(hint).expect("lab");
        let a = lab.add_node("a").expect("node a");
        let b = lab.add_node("b").expect("node b");
        let a1 = a.add_pod("a1").expect("pod a1");
        let a2 = a.add_pod("a2").expect("pod a2");
        let b1 = b.add_pod("b1").expect("pod b1");
        let client = a.add_pod("ac").expect("pod ac");
        let echo = [&a1, &a2, &b1]
            .iter()
            .map(|p| p.start_echo(&[ECHO_PORT], &[ECHO_PORT]).expect("echo"))
            .collect();
        EchoLab {
            _lab: lab,
            a,
            a1,
            a2,
            b1,
            client,
            _echo: echo,
        }
    }

    pub(crate) fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints_like(IpAddr::from([0, 0, 0, 0]))
    }

    /// The echo pods as endpoints of the family of `like`.
    pub(crate) fn endpoints_like(&self, like: IpAddr) -> Vec<Endpoint> {
        [(&self.a1, true), (&self.a2, true), (&self.b1, false)]
            .iter()
            .map(|(p, local)| endpoint(p.ip_like(like), *local))
            .collect()
    }
}

pub(crate) fn endpoint(ip: IpAddr, is_local: bool) -> Endpoint {
    Endpoint {
        ip,
        port: ECHO_PORT,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        is_local,
    }
}

pub(crate) fn key(name: &str, protocol: Protocol, family: IpFamily) -> ServicePortKey {
    ServicePortKey {
        family,
        name: ServicePortName {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            port_name: String::new(),
            protocol,
        },
    }
}

pub(crate) fn all(endpoints: &[Endpoint]) -> Verdict {
    if endpoints.is_empty() {
        return Verdict::Reject;
    }
    Verdict::Forward(EndpointSet(
        (0..u32::try_from(endpoints.len()).unwrap()).collect(),
    ))
}

/// A ClusterIP service port forwarding to `endpoints` (or rejecting when there are none).
pub(crate) fn cluster_ip(
    name: &str,
    protocol: Protocol,
    vip: IpAddr,
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    let internal = all(&endpoints);
    ServicePort {
        key: key(name, protocol, IpFamily::of(&vip)),
        cluster_ip: vip,
        port,
        node_port: None,
        frontends: vec![Frontend {
            kind: FrontendKind::ClusterIp,
            ip: vip,
            port,
        }],
        source_ranges: Vec::new(),
        affinity_timeout_secs: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints,
        internal,
        internal_masquerade: InternalMasquerade::HairpinOnly,
        external: None,
        local_ready_endpoints: 0,
    }
}

/// Adds a NodePort frontend on `node_ip` with eTP Local semantics: external traffic
/// only to local endpoints (`local_verdict`), node and pod clients to the cluster set.
pub(crate) fn with_node_port_local(
    mut port: ServicePort,
    node_ip: IpAddr,
    node_port: u16,
    local_verdict: Verdict,
) -> ServicePort {
    port.node_port = Some(node_port);
    port.frontends.push(Frontend {
        kind: FrontendKind::NodePort,
        ip: node_ip,
        port: node_port,
    });
    port.external_policy_local = true;
    port.external = Some(ExternalTraffic {
        verdict: local_verdict,
        masquerade: false,
        pod_sources_use_cluster: vec!["100.64.0.0/16".parse::<IpNet>().unwrap()],
        node_sources_use_cluster: true,
        cluster_verdict: port.internal.clone(),
    });
    port
}

pub(crate) fn model(ports: impl IntoIterator<Item = ServicePort>) -> ProxyModel {
    let mut m = ProxyModel::default();
    for p in ports {
        m.ports.insert(p.key.clone(), p);
    }
    m
}

/// Names of the echo servers reached by `tries` requests.
pub(crate) fn names(
    results: &[Result<
        kproxy_tests::lab::client::EchoReply,
        kproxy_tests::lab::client::ClientError,
    >],
) -> BTreeSet<String> {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.name.clone())
        .collect()
}

/// What a socket in a lab host saw of a service, from the socket's own point of view.
#[derive(Debug)]
pub(crate) struct SocketView {
    /// Echo server name and the sender address `recvfrom` reported, on an unconnected
    /// UDP socket.
    pub(crate) udp_from: Result<(String, SocketAddr), String>,
    /// `getpeername` of a connected UDP socket.
    pub(crate) udp_peer: Result<SocketAddr, String>,
    /// Echo server name and `getpeername` of a TCP connection.
    pub(crate) tcp: Result<(String, SocketAddr), String>,
}

/// Closes every descriptor of a freshly forked child but stdio and `keep`: the child must
/// not hold the parent's program, map or link fds (it would keep old programs loaded).
fn close_inherited(keep: &[i32]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: the child owns no Rust objects over these fds; it never returns.
            unsafe { libc::close(fd) };
        }
    }
}

fn enter(host: &impl Host) -> Result<(), String> {
    let procs = host.cgroup_path().join("cgroup.procs");
    std::fs::write(&procs, b"0").map_err(|e| format!("joining cgroup: {e}"))?;
    let ns = File::open(host.netns_path()).map_err(|e| format!("opening netns: {e}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

fn line_of(bytes: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(bytes);
    let (name, _) = text
        .split_once(' ')
        .ok_or_else(|| format!("bad reply {text:?}"))?;
    Ok(name.to_owned())
}

fn socket_view(to: SocketAddr) -> SocketView {
    let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let udp_from = (|| {
        let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(REQUEST))
            .map_err(|e| e.to_string())?;
        s.send_to(b"ping\n", to).map_err(|e| e.to_string())?;
        let mut buf = [0; 512];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok((line_of(&buf[..n])?, from))
    })();
    let udp_peer = (|| {
        let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        s.connect(to).map_err(|e| e.to_string())?;
        s.peer_addr().map_err(|e| e.to_string())
    })();
    let tcp = (|| {
        let mut s = TcpStream::connect_timeout(&to, REQUEST).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(REQUEST))
            .map_err(|e| e.to_string())?;
        let peer = s.peer_addr().map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0; 512];
        while !buf.contains(&b'\n') {
            let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((line_of(&buf)?, peer))
    })();
    SocketView {
        udp_from,
        udp_peer,
        tcp,
    }
}

/// Runs `f` in a forked child that joined `host`'s cgroup and network namespace (so the
/// node's socket hooks see it, as they see any process there), and returns what it wrote.
/// Forking keeps the test free of helper binaries; the child only makes sockets.
fn in_child(host: &impl Host, f: impl FnOnce(&mut File)) -> String {
    let (read, write): (OwnedFd, OwnedFd) = pipe().expect("pipe");
    // SAFETY: the child only enters the namespace, uses sockets and writes to a pipe,
    // then leaves with _exit, never returning into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read);
            close_inherited(&[write.as_raw_fd()]);
            let mut out = File::from(write);
            match enter(host) {
                Ok(()) => f(&mut out),
                Err(e) => {
                    let _ = writeln!(out, "child setup failed: {e}");
                }
            }
            let _ = out.flush();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut text = String::new();
            BufReader::new(File::from(read))
                .read_to_string(&mut text)
                .expect("read child");
            let status = waitpid(child, None).expect("waitpid");
            assert!(
                matches!(status, WaitStatus::Exited(_, 0)),
                "child ended with {status:?}"
            );
            text
        }
    }
}

/// Looks at service `to` through sockets of a process in `host`.
pub(crate) fn view_from(host: &impl Host, to: SocketAddr) -> SocketView {
    let text = in_child(host, |out| {
        let v = socket_view(to);
        let enc = |r: Result<String, String>| match r {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        let _ = writeln!(out, "{}", enc(v.udp_from.map(|(n, a)| format!("{n} {a}"))));
        let _ = writeln!(out, "{}", enc(v.udp_peer.map(|a| a.to_string())));
        let _ = writeln!(out, "{}", enc(v.tcp.map(|(n, a)| format!("{n} {a}"))));
    });
    let mut lines = text.lines();
    let mut next = || -> Result<String, String> {
        let line = lines.next().ok_or_else(|| format!("child said {text:?}"))?;
        match line.split_once(' ') {
            Some(("ok", rest)) => Ok(rest.to_owned()),
            Some(("err", rest)) => Err(rest.to_owned()),
            _ => Err(line.to_owned()),
        }
    };
    let pair = |s: String| -> Result<(String, SocketAddr), String> {
        let (n, a) = s.split_once(' ').ok_or("bad pair")?;
        Ok((n.to_owned(), a.parse().map_err(|_| "bad addr")?))
    };
    let udp_from = next().and_then(pair);
    let udp_peer = next().and_then(|a| a.parse().map_err(|_| "bad addr".to_owned()));
    let tcp = next().and_then(pair);
    SocketView {
        udp_from,
        udp_peer,
        tcp,
    }
}

/// A TCP connection held open by a child process in `host`: it connects, reports, and
/// then answers "ping" commands by sending a line over the connection and reading the
/// peer's reply, until its stdin pipe closes.
pub(crate) struct HeldConnection {
    pub(crate) pid: nix::unistd::Pid,
    commands: File,
    answers: BufReader<File>,
}

impl HeldConnection {
    pub(crate) fn open(host: &impl Host, to: SocketAddr) -> (Self, String) {
        let (cmd_read, cmd_write) = pipe().expect("pipe");
        let (ans_read, ans_write) = pipe().expect("pipe");
        // SAFETY: as in `in_child`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(cmd_write);
                drop(ans_read);
                close_inherited(&[cmd_read.as_raw_fd(), ans_write.as_raw_fd()]);
                let mut out = File::from(ans_write);
                let mut commands = BufReader::new(File::from(cmd_read));
                let mut run = || -> Result<(), String> {
                    enter(host)?;
                    let mut s =
                        TcpStream::connect_timeout(&to, REQUEST).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(REQUEST))
                        .map_err(|e| e.to_string())?;
                    let peer = s.peer_addr().map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        out.try_clone().map_err(|e| e.to_string())?,
                        "connected {peer}"
                    );
                    let mut line = String::new();
                    while commands.read_line(&mut line).map_err(|e| e.to_string())? > 0 {
                        line.clear();
                        s.write_all(b"ping\n").map_err(|e| e.to_string())?;
                        let mut reply = Vec::new();
                        let mut chunk = [0; 64];
                        while !reply.contains(&b'\n') {
                            let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                            if n == 0 {
                                return Err("connection closed".to_owned());
                            }
                            reply.extend_from_slice(&chunk[..n]);
                        }
                        let _ = writeln!(
                            out.try_clone().map_err(|e| e.to_string())?,
                            "{}",
                            String::from_utf8_lossy(&reply).trim()
                        );
                    }
                    Ok(())
                };
                if let Err(e) = run() {
                    let _ = writeln!(out, "error {e}");
                }
                // SAFETY: as in `in_child`.
                unsafe { libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                drop(cmd_read);
                drop(ans_write);
                let mut held = HeldConnection {
                    pid: child,
                    commands: File::from(cmd_write),
                    answers: BufReader::new(File::from(ans_read)),
                };
                let first = held.answer();
                (held, first)
            }
        }
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("read from the connection's child");
        line.trim().to_owned()
    }

    /// Sends a line over the held connection and returns what came back.
    pub(crate) fn ping(&mut self) -> String {
        writeln!(self.commands, "ping").expect("command the child");
        self.answer()
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// A TCP server in `pod` (on a thread in its namespace) that serves one connection,
/// answering each line with "pong <n>", and ends with it.
pub(crate) fn start_pong_server(pod: &Pod, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pod = pod.clone();
    std::thread::spawn(move || {
        pod.run(move || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind pong");
            tx.send(()).expect("ready");
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut stream = stream;
            let mut line = String::new();
            let mut n = 0;
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                n += 1;
                line.clear();
                if stream.write_all(format!("pong {n}\n").as_bytes()).is_err() {
                    break;
                }
            }
        })
        .expect("pong thread in the pod's namespace");
    });
    rx.recv().expect("pong server ready");
}
