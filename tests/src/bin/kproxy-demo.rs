//! `cargo xtask demo`: a two-node netns cluster, kproxy on each node, and a table of who
//! answers what. Needs root; leaves nothing behind.
//!
//! Usage: `kproxy-demo PATH/TO/kproxy [MODE...]` (modes: nftables, ebpf; default nftables).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use kproxy_tests::{
    conformance::{Client, Mode, Proto, World},
    lab::Host,
};

const CLUSTER_CIDR: &str = "100.64.0.0/16";

/// The demo's Services: a ClusterIP, a NodePort, an eTP Local NodePort, session affinity
/// and a Service without endpoints. `web_eps` are web's endpoint pods.
fn manifests(w: &World, web_eps: &[&str]) -> String {
    let svc = |name: &str, ip: &str, extra: &str, node_port: Option<u16>| {
        let np = node_port
            .map(|p| format!(", nodePort: {p}"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080{np}}}]\n{extra}"
        )
    };
    let slice = |name: &str, eps: &[&str]| {
        let mut out = format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:{}\n",
            if eps.is_empty() { " []" } else { "" }
        );
        for ep in eps {
            let p = w.pod(ep);
            let _ = write!(
                out,
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n  nodeName: {}\n",
                p.ipv4(),
                p.node().name()
            );
        }
        out
    };
    let node = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  addresses: [{{type: InternalIP, address: \"{}\"}}]\n",
            w.node(name).ipv4()
        )
    };
    [
        svc("web", "198.51.100.10", "", None),
        slice("web", web_eps),
        svc("shop", "198.51.100.12", "  type: NodePort\n", Some(30080)),
        slice("shop", &["a-ep1", "b-ep1"]),
        svc(
            "local",
            "198.51.100.13",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            Some(30081),
        ),
        slice("local", &["a-ep2", "b-ep2"]),
        svc(
            "sticky",
            "198.51.100.21",
            "  sessionAffinity: ClientIP\n",
            None,
        ),
        slice("sticky", &["a-ep1", "a-ep2", "b-ep1", "b-ep2"]),
        svc("empty", "198.51.100.11", "", None),
        slice("empty", &[]),
        node("a"),
        node("b"),
    ]
    .concat()
}

/// Sends `n` requests and prints one row: who answered, and the source they saw.
fn row(w: &World, what: &str, from: Client, to: SocketAddr, n: usize) {
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(
            match w.request(from, Proto::Tcp, to, Duration::from_secs(2)) {
                Ok(r) => format!("{} (saw {})", r.name, r.seen_source.ip()),
                Err(e) => format!("<{e}>"),
            },
        );
    }
    let mut counted: Vec<(String, usize)> = Vec::new();
    for a in answers {
        match counted.iter_mut().find(|(k, _)| *k == a) {
            Some((_, c)) => *c += 1,
            None => counted.push((a, 1)),
        }
    }
    let summary: Vec<String> = counted.iter().map(|(a, c)| format!("{c}× {a}")).collect();
    println!("  {what:<52} {}", summary.join(", "));
}

fn table(w: &World) {
    let vip = |ip: &str| SocketAddr::new(ip.parse().expect("literal"), 80);
    let node_a = |port| SocketAddr::new(w.node("a").ipv4().into(), port);
    row(
        w,
        "pod a-cl  -> web ClusterIP 198.51.100.10:80",
        Client::PodA,
        vip("198.51.100.10"),
        6,
    );
    row(
        w,
        "node a    -> web ClusterIP",
        Client::NodeA,
        vip("198.51.100.10"),
        6,
    );
    row(
        w,
        "pod b-cl  -> web ClusterIP (via node b's kproxy)",
        Client::PodB,
        vip("198.51.100.10"),
        6,
    );
    row(
        w,
        "external  -> shop NodePort a:30080 (eTP Cluster)",
        Client::X1,
        node_a(30080),
        6,
    );
    row(
        w,
        "external  -> local NodePort a:30081 (eTP Local)",
        Client::X1,
        node_a(30081),
        6,
    );
    row(
        w,
        "pod a-cl  -> sticky (ClientIP affinity)",
        Client::PodA,
        vip("198.51.100.21"),
        6,
    );
    row(
        w,
        "pod a-cl  -> empty (no endpoints)",
        Client::PodA,
        vip("198.51.100.11"),
        2,
    );
}

fn demo(kproxy: &Path, mode: Mode) -> Result<()> {
    println!("\n=== kproxy --proxy-mode {} ===", mode.flag());
    let w = World::new("demo", kproxy, mode)?;
    println!(
        "lab {}: nodes a (198.18.0.1) and b (198.18.0.2); pods a-ep1 a-ep2 a-cl | b-ep1 b-ep2 b-cl; external x1 (203.0.113.1)",
        w_id(&w)
    );
    w.write_manifest("demo.yaml", &manifests(&w, &["a-ep1", "b-ep1"]))?;
    w.start_agents(&["--cluster-cidr", CLUSTER_CIDR])
        .context("starting kproxy on both nodes")?;
    println!(
        "kproxy is healthy on both nodes; requests (each row: count × endpoint (source it saw)):"
    );
    table(&w);
    println!("\nscaling web to four endpoints in the manifests...");
    w.write_manifest(
        "demo.yaml",
        &manifests(&w, &["a-ep1", "a-ep2", "b-ep1", "b-ep2"]),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    row(
        &w,
        "pod a-cl  -> web ClusterIP",
        Client::PodA,
        SocketAddr::new("198.51.100.10".parse()?, 80),
        12,
    );
    println!("scaling web down to b-ep2 only...");
    w.write_manifest("demo.yaml", &manifests(&w, &["b-ep2"]))?;
    std::thread::sleep(Duration::from_millis(1500));
    row(
        &w,
        "pod a-cl  -> web ClusterIP",
        Client::PodA,
        SocketAddr::new("198.51.100.10".parse()?, 80),
        6,
    );
    w.close()?;
    println!("lab removed.");
    Ok(())
}

fn w_id(w: &World) -> String {
    w.node("a")
        .netns()
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let kproxy = PathBuf::from(
        args.next()
            .context("usage: kproxy-demo PATH/TO/kproxy [nftables|ebpf...]")?,
    );
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo builds network namespaces: run it as root");
    }
    let modes: Vec<Mode> = args
        .map(|m| match m.as_str() {
            "nftables" => Ok(Mode::Nftables),
            "ebpf" => Ok(Mode::Ebpf),
            other => Err(anyhow::anyhow!("unknown mode {other}")),
        })
        .collect::<Result<_>>()?;
    let modes = if modes.is_empty() {
        vec![Mode::Nftables]
    } else {
        modes
    };
    for mode in modes {
        demo(&kproxy, mode)?;
    }
    Ok(())
}
