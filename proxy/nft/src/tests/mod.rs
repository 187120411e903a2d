//! Test support: model builders (the model's `build()` is not needed), and network
//! namespaces for privileged tests.

mod privileged;
mod unit;

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use ipnet::IpNet;
use kproxy_model::{
    Endpoint, EndpointSet, ExternalTraffic, Frontend, FrontendKind, InternalMasquerade, IpFamily,
    ModelDiff, Protocol, ProxyModel, ServicePort, ServicePortKey, ServicePortName, Verdict,
};

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub(crate) fn net(s: &str) -> IpNet {
    s.parse().expect("test cidr")
}

/// A ready, serving, remote endpoint.
pub(crate) fn ep(addr: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        is_local: false,
    }
}

pub(crate) fn local(mut e: Endpoint) -> Endpoint {
    e.is_local = true;
    e
}

pub(crate) fn fwd(indices: &[u32]) -> Verdict {
    Verdict::Forward(EndpointSet(indices.to_vec()))
}

/// Builds a service port: a ClusterIP frontend, all endpoints forwarded to, masquerade of
/// traffic from outside 10.0.0.0/8 (the usual `--cluster-cidr` setup).
#[derive(Debug, Clone)]
pub(crate) struct PortBuilder(pub(crate) ServicePort);

impl PortBuilder {
    pub(crate) fn new(
        ns: &str,
        name: &str,
        port_name: &str,
        proto: Protocol,
        cluster_ip: &str,
        port: u16,
    ) -> Self {
        let cip = ip(cluster_ip);
        let family = IpFamily::of(&cip);
        Self(ServicePort {
            key: ServicePortKey {
                family,
                name: ServicePortName {
                    namespace: ns.into(),
                    name: name.into(),
                    port_name: port_name.into(),
                    protocol: proto,
                },
            },
            cluster_ip: cip,
            port,
            node_port: None,
            frontends: vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip: cip,
                port,
            }],
            source_ranges: vec![],
            affinity_timeout_secs: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            endpoints: vec![],
            internal: Verdict::Reject,
            internal_masquerade: InternalMasquerade::SourceNotIn(vec![if family == IpFamily::V4 {
                net("10.0.0.0/8")
            } else {
                net("fd00::/8")
            }]),
            external: None,
            local_ready_endpoints: 0,
        })
    }

    pub(crate) fn tcp(name: &str, cluster_ip: &str, port: u16) -> Self {
        Self::new("default", name, "http", Protocol::Tcp, cluster_ip, port)
    }

    /// Sets the endpoints and forwards internal traffic to all of them (Reject if none).
    pub(crate) fn endpoints(mut self, eps: Vec<Endpoint>) -> Self {
        let n = u32::try_from(eps.len()).unwrap();
        self.0.internal = if n == 0 {
            Verdict::Reject
        } else {
            fwd(&(0..n).collect::<Vec<_>>())
        };
        self.0.local_ready_endpoints = eps.iter().filter(|e| e.is_local).count();
        self.0.endpoints = eps;
        self
    }

    pub(crate) fn internal(mut self, v: Verdict) -> Self {
        self.0.internal = v;
        self
    }

    pub(crate) fn masquerade(mut self, m: InternalMasquerade) -> Self {
        self.0.internal_masquerade = m;
        self
    }

    pub(crate) fn frontend(mut self, kind: FrontendKind, addr: &str, port: u16) -> Self {
        self.0.frontends.push(Frontend {
            kind,
            ip: ip(addr),
            port,
        });
        self.0.frontends.sort();
        self
    }

    /// eTP Cluster: external traffic masqueraded to the internal verdict's endpoints.
    pub(crate) fn external_cluster(mut self) -> Self {
        self.0.external = Some(ExternalTraffic {
            verdict: self.0.internal.clone(),
            masquerade: true,
            pod_sources_use_cluster: vec![],
            node_sources_use_cluster: false,
            cluster_verdict: self.0.internal.clone(),
        });
        self
    }

    /// eTP Local: external traffic to `local`, short-circuits to the internal verdict.
    pub(crate) fn external_local(mut self, local: Verdict, pods: &[&str]) -> Self {
        self.0.external_policy_local = true;
        self.0.external = Some(ExternalTraffic {
            verdict: local,
            masquerade: false,
            pod_sources_use_cluster: pods.iter().map(|p| net(p)).collect(),
            node_sources_use_cluster: true,
            cluster_verdict: self.0.internal.clone(),
        });
        self
    }

    pub(crate) fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.0.source_ranges = ranges.iter().map(|r| net(r)).collect();
        self
    }

    pub(crate) fn affinity(mut self, secs: u32) -> Self {
        self.0.affinity_timeout_secs = Some(secs);
        self
    }

    pub(crate) fn build(self) -> ServicePort {
        self.0
    }
}

pub(crate) fn model(ports: impl IntoIterator<Item = ServicePort>) -> ProxyModel {
    ProxyModel {
        ports: ports.into_iter().map(|p| (p.key.clone(), p)).collect(),
    }
}

/// The diff between two models, computed the simple way (by value).
pub(crate) fn diff(old: &ProxyModel, new: &ProxyModel) -> ModelDiff {
    let mut d = ModelDiff::default();
    for (k, p) in &new.ports {
        match old.ports.get(k) {
            None => d.added.push(k.clone()),
            Some(o) if o != p => d.updated.push(k.clone()),
            Some(_) => {}
        }
    }
    d.removed = old
        .ports
        .keys()
        .filter(|k| !new.ports.contains_key(*k))
        .cloned()
        .collect();
    d
}

/// `n` ClusterIP services with `eps` endpoints each, in 10.96.0.0/12 → 10.128.0.0/9.
pub(crate) fn many(n: u32, eps: u32) -> ProxyModel {
    model((0..n).map(|i| {
        let cip = std::net::Ipv4Addr::from(0x0a60_0000 + i).to_string();
        let endpoints = (0..eps)
            .map(|k| {
                ep(
                    &std::net::Ipv4Addr::from(0x0a80_0000 + i * 16 + k).to_string(),
                    8080,
                )
            })
            .collect();
        PortBuilder::new(
            &format!("ns{}", i % 50),
            &format!("svc{i}"),
            "http",
            Protocol::Tcp,
            &cip,
            80,
        )
        .endpoints(endpoints)
        .build()
    }))
}

/// A network namespace of its own (`ip netns add kpn-…`), deleted on drop.
pub(crate) struct NetNs {
    pub(crate) name: String,
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root (cargo xtask test)"
    );
}

impl NetNs {
    pub(crate) fn new(tag: &str) -> Self {
        require_root();
        let name = format!(
            "kpn-{tag}-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics on failure.
    pub(crate) fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Runs `f` on a thread that entered the namespace (sockets it opens live there).
    pub(crate) fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// `nft -j list table <family> kproxy` inside the namespace.
    pub(crate) fn nft_json(&self, family: &str) -> serde_json::Value {
        let out = self.exec(&["nft", "-j", "list", "table", family, "kproxy"]);
        serde_json::from_str(&out).expect("nft -j output is json")
    }
}

/// Moves the calling thread into the namespace at `path`.
pub(crate) fn enter(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
