//! The conformance table: kube-proxy's packet-flow cases (upstream
//! `pkg/proxy/nftables/proxier_test.go`: TracePacket, NoEndpointsReject, ClusterIPGeneral,
//! LoadBalancer, NodePorts, ExternalTrafficPolicyLocal/Cluster, InternalTrafficPolicy,
//! TerminatingEndpoints, InternalExternalMasquerade) replayed with real packets in a netns
//! lab, once per proxy mode.
//!
//! The lab ([`World`]) has two nodes, `a` and `b`, each running kproxy on the same
//! manifests directory, endpoint pods `a-ep1`, `a-ep2`, `b-ep1`, `b-ep2` (echo servers on
//! TCP 8080 and UDP 8053), client pods `a-cl` and `b-cl`, and two external clients `x1`
//! (203.0.113.1) and `x2` (203.0.113.2). Each [`Check`] sends requests from one client to
//! one frontend and asserts the exact set of endpoints that answer (enough tries to see
//! every one and no other), REJECT (refused) versus DROP (timeout), and whether the
//! endpoint saw the client's own address.
//!
//! The table is data ([`cases`]); where the eBPF datapath legitimately differs from
//! kube-proxy in a way a user can see, the check carries an explicit `ebpf` expectation.

mod manifests;
mod world;

pub use manifests::{cases_manifests, checks};
pub use world::{Client, World, http_get, http_status};

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use crate::lab::client::{ClientError, EchoReply};

/// TCP port of every endpoint pod's echo server.
pub const TCP_PORT: u16 = 8080;
/// UDP port of every endpoint pod's echo server.
pub const UDP_PORT: u16 = 8053;

/// The proxy mode under test, as `--proxy-mode` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nftables.
    Nftables,
    /// eBPF.
    Ebpf,
}

impl Mode {
    /// The flag value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::Ebpf => "ebpf",
        }
    }
}

/// Transport of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP connect + one echo line.
    Tcp,
    /// One UDP datagram and its reply.
    Udp,
}

/// Whether the endpoint saw the client's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// It did (no masquerade).
    Preserved,
    /// It saw another address (masqueraded).
    Masqueraded,
    /// Not asserted (node clients: the node's address either way).
    Any,
}

/// What a check expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly these endpoints answer, with this source behaviour.
    Endpoints(&'static [&'static str], Source),
    /// Always the same one endpoint out of these (session affinity).
    Sticky(&'static [&'static str]),
    /// Refused: TCP RST or ICMP port unreachable.
    Refused,
    /// No answer at all.
    Dropped,
}

/// Where a check sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A literal address (ClusterIP, LB IP, externalIP) and port.
    Addr(&'static str, u16),
    /// A node's LAN IPv4 address (node `a` or `b`) and a port (a NodePort).
    NodePort(&'static str, u16),
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Check {
    /// Upstream test (or feature) this row ports, and what it checks.
    pub name: &'static str,
    /// Who sends.
    pub from: Client,
    /// Where to.
    pub to: Target,
    /// TCP or UDP.
    pub proto: Proto,
    /// What kube-proxy (and the nftables mode) does.
    pub expect: Expect,
    /// What the eBPF mode does where it legitimately differs, with the reason in `name`.
    pub ebpf: Option<Expect>,
}

/// Requests per check: with 2 endpoints and uniform random choice, 24 tries miss one with
/// probability 2 × 2⁻²⁴.
const TRIES: usize = 24;
/// Reply timeout when an answer is expected; a DROP check waits this long once.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one check; Err says what differed.
pub fn run_check(world: &World, check: &Check, mode: Mode) -> Result<(), String> {
    let expect = match (mode, &check.ebpf) {
        (Mode::Ebpf, Some(e)) => e,
        _ => &check.expect,
    };
    let to = world.resolve(check.to);
    let request = |timeout| world.request(check.from, check.proto, to, timeout);
    match expect {
        Expect::Refused => match request(REPLY_TIMEOUT) {
            Err(ClientError::Refused) => Ok(()),
            other => Err(format!("expected refused, got {}", describe(&other))),
        },
        Expect::Dropped => match request(REPLY_TIMEOUT) {
            Err(ClientError::Timeout) => Ok(()),
            other => Err(format!(
                "expected dropped (timeout), got {}",
                describe(&other)
            )),
        },
        Expect::Endpoints(want, source) => {
            let mut seen = BTreeSet::new();
            for _ in 0..TRIES {
                let reply = request(REPLY_TIMEOUT).map_err(|e| format!("request failed: {e}"))?;
                check_source(world, check.from, &reply, *source)?;
                seen.insert(reply.name);
            }
            let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
            if seen == want {
                Ok(())
            } else {
                Err(format!("expected endpoints {want:?}, saw {seen:?}"))
            }
        }
        Expect::Sticky(allowed) => {
            let mut seen = BTreeSet::new();
            for _ in 0..TRIES / 2 {
                let reply = request(REPLY_TIMEOUT).map_err(|e| format!("request failed: {e}"))?;
                seen.insert(reply.name);
            }
            if seen.len() == 1 && allowed.contains(&seen.iter().next().expect("one").as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "expected one sticky endpoint of {allowed:?}, saw {seen:?}"
                ))
            }
        }
    }
}

fn check_source(
    world: &World,
    from: Client,
    reply: &EchoReply,
    want: Source,
) -> Result<(), String> {
    let own = world.client_ip(from, reply.seen_source.ip());
    let preserved = reply.seen_source.ip() == own;
    match want {
        Source::Any => Ok(()),
        Source::Preserved if preserved => Ok(()),
        Source::Masqueraded if !preserved => Ok(()),
        Source::Preserved => Err(format!(
            "{} saw {} instead of the client's own {own}",
            reply.name, reply.seen_source
        )),
        Source::Masqueraded => Err(format!(
            "{} saw the client's own address {own}: not masqueraded",
            reply.name
        )),
    }
}

fn describe(r: &Result<EchoReply, ClientError>) -> String {
    match r {
        Ok(reply) => format!(
            "a reply from {} (source seen {})",
            reply.name, reply.seen_source
        ),
        Err(e) => format!("{e}"),
    }
}

/// Runs every check of the table and returns the failures, one line each, so a run
/// reports every differing row at once.
pub fn run_table(world: &World, checks: &[Check], mode: Mode) -> Vec<String> {
    checks
        .iter()
        .filter_map(|c| {
            run_check(world, c, mode)
                .err()
                .map(|e| format!("[{}] {:?} -> {:?} {:?}: {e}", c.name, c.from, c.to, c.proto))
        })
        .collect()
}

/// Helper for rows: a socket address.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("literal IP"), port)
}
