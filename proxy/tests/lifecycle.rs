//! Datapath lifecycle with real packets, in both proxy modes: agent restarts lose no
//! connection, endpoint churn fails no request; and (nftables) removed UDP endpoints lose
//! their conntrack flows.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use kproxy_tests::{
    conformance::{Client, Mode, Proto, UDP_PORT, World},
    lab::Host,
};

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (cargo xtask test)"
    );
}

const WEB: &str = "198.51.100.10";

fn web_manifest(world: &World, eps: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: life}}\nspec:\n  clusterIP: {WEB}\n  clusterIPs: [{WEB}]\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: {UDP_PORT}}}\n  - {{name: long, port: 90, protocol: TCP, targetPort: 9090}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: life\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: {UDP_PORT}, protocol: UDP}}, {{name: long, port: 9090, protocol: TCP}}]\nendpoints:\n"
    );
    for ep in eps {
        let p = world.pod(ep);
        let _ = writeln!(
            out,
            "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n  nodeName: {}",
            p.ipv4(),
            p.node().name()
        );
    }
    out
}

fn world(name: &str, mode: Mode, eps: &[&str]) -> World {
    assert_root();
    let w = World::new(name, Path::new(env!("CARGO_BIN_EXE_kproxy")), mode).expect("lab");
    w.write_manifest("web.yaml", &web_manifest(&w, eps))
        .unwrap();
    w.start_agents(&["--cluster-cidr", "100.64.0.0/16"])
        .expect("agents");
    w
}

/// Requests `web` from pod a-cl in a loop until `stop`; counts failures.
fn background_requests(
    world: &Arc<World>,
    stop: &Arc<AtomicBool>,
) -> (thread::JoinHandle<()>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (world, stop, ok_count, failed_count) = (
        Arc::clone(world),
        Arc::clone(stop),
        Arc::clone(&ok),
        Arc::clone(&failed),
    );
    let handle = thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match world.request(
                Client::PodA,
                Proto::Tcp,
                SocketAddr::new(WEB.parse().unwrap(), 80),
                Duration::from_secs(3),
            ) {
                Ok(_) => ok_count.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    eprintln!("request failed: {error}");
                    failed_count.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    (handle, ok, failed)
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn restart_keeps_connections_nftables() {
    restart_keeps_established_connections_and_new_ones_succeed(Mode::Nftables);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn restart_keeps_connections_ebpf() {
    restart_keeps_established_connections_and_new_ones_succeed(Mode::Ebpf);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn endpoint_churn_fails_no_request_nftables() {
    endpoint_churn_fails_no_request(Mode::Nftables);
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn endpoint_churn_fails_no_request_ebpf() {
    endpoint_churn_fails_no_request(Mode::Ebpf);
}

fn restart_keeps_established_connections_and_new_ones_succeed(mode: Mode) {
    let w = world(
        &format!("restart-{}", mode.flag()),
        mode,
        &["a-ep1", "b-ep1"],
    );
    // A long-lived echo server on both endpoints (port 9090), in their namespaces.
    for ep in ["a-ep1", "b-ep1"] {
        let listener = w
            .pod(ep)
            .run(|| TcpListener::bind("0.0.0.0:9090"))
            .unwrap()
            .unwrap();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut out = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines().map_while(Result::ok) {
                        if writeln!(out, "{line}").is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    // The long-lived client is a process in pod a-cl's namespace and cgroup (bash's
    // /dev/tcp), so the eBPF socket hooks see its connect() as they would a pod's.
    let mut client = w
        .pod("a-cl")
        .command("bash")
        .unwrap()
        .args([
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{WEB}/90 || exit 1; while read -r line; do echo \"$line\" >&3; \
                 read -t 5 -r reply <&3 || exit 2; echo \"$reply\"; done"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut writer = client.stdin.take().unwrap();
    let mut reader = BufReader::new(client.stdout.take().unwrap());
    let mut ping = |n: usize| {
        writeln!(writer, "ping {n}").expect("write to the client");
        let mut line = String::new();
        reader.read_line(&mut line).expect("read from the client");
        assert_eq!(
            line.trim(),
            format!("ping {n}"),
            "the established connection broke"
        );
    };
    ping(0);

    w.kill_agent(0);
    let w = Arc::new(w);
    let stop = Arc::new(AtomicBool::new(false));
    let (bg, ok, failed) = background_requests(&w, &stop);
    thread::sleep(Duration::from_secs(1));
    ping(1);
    // SIGKILL left the tables; the new agent replaces them atomically.
    w.start_agent(0, &["--cluster-cidr", "100.64.0.0/16"])
        .expect("restart");
    ping(2);
    // And a graceful stop (SIGTERM) leaves the datapath in place too.
    assert!(
        w.stop_agent(0).expect("stop").success(),
        "kproxy exits 0 on SIGTERM"
    );
    ping(3);
    w.start_agent(0, &["--cluster-cidr", "100.64.0.0/16"])
        .expect("restart");
    ping(4);
    drop(writer);
    let _ = client.wait();
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Arc::try_unwrap(w)
        .unwrap_or_else(|_| panic!("world still shared"))
        .close()
        .unwrap();
    assert!(ok > 0, "no request ran during the restarts");
    assert_eq!(
        failed,
        0,
        "{failed} of {} new connections failed during restarts",
        ok + failed
    );
}

fn endpoint_churn_fails_no_request(mode: Mode) {
    let w = Arc::new(world(
        &format!("churn-{}", mode.flag()),
        mode,
        &["a-ep1", "b-ep1"],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (bg, ok, failed) = background_requests(&w, &stop);
    // a-ep1 stays ready throughout; the others come and go.
    let sets: [&[&str]; 4] = [
        &["a-ep1"],
        &["a-ep1", "a-ep2", "b-ep2"],
        &["a-ep1", "b-ep1"],
        &["a-ep1", "b-ep2"],
    ];
    for round in 0..3 {
        for set in sets {
            w.write_manifest("web.yaml", &web_manifest(&w, set))
                .unwrap();
            thread::sleep(Duration::from_millis(300 + 100 * round));
        }
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Arc::try_unwrap(w)
        .unwrap_or_else(|_| panic!("world still shared"))
        .close()
        .unwrap();
    assert!(ok > 10, "too few requests ran ({ok})");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during churn",
        ok + failed
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn removed_udp_endpoint_loses_its_conntrack_flows() {
    let w = world("nft-conntrack", Mode::Nftables, &["b-ep1"]);
    // One UDP socket with a fixed source port: without conntrack cleanup its flow would
    // stay pinned to the removed endpoint (which is still alive and would still answer).
    let sock = w
        .pod("a-cl")
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:40053").unwrap();
            s.connect(SocketAddr::new(WEB.parse().unwrap(), 53))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .unwrap();
    // A reply in flight while its conntrack entry is deleted is lost (UDP, as with
    // kube-proxy), so a request may time out around the change: that is retried, not failed.
    let ask = || {
        for _ in 0..5 {
            sock.send(b"q").unwrap();
            let mut buf = [0u8; 256];
            if let Ok(n) = sock.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n])
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
            }
        }
        panic!("five UDP requests in a row got no reply");
    };
    assert_eq!(ask(), "b-ep1");
    w.write_manifest("web.yaml", &web_manifest(&w, &["a-ep2"]))
        .unwrap();
    // The change reaches the kernel within the poll and sync periods; the next datagram
    // on the same 5-tuple must reach the new endpoint.
    let mut answered = Vec::new();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(250));
        answered.push(ask());
        if answered.last().is_some_and(|n| n == "a-ep2") {
            break;
        }
    }
    drop(sock);
    w.close().unwrap();
    assert_eq!(
        answered.last().map(String::as_str),
        Some("a-ep2"),
        "the flow stayed on the removed endpoint: {answered:?}"
    );
}
