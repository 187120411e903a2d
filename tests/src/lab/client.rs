//! Echo clients: one request, one [`EchoReply`], or a [`ClientError`] that tells a
//! refusal from an unreachable destination from silence.
//!
//! [`tcp_request`] and [`udp_request`] run the client as a child process
//! (`kproxy-echo client ...`) inside the given host's namespace *and* cgroup. That
//! is the default on purpose: socket-level load balancing (eBPF `connect` hooks on
//! a node's cgroup) only sees processes inside that cgroup, so a client "on a node"
//! or "in a pod" must be a process there. [`tcp_request_here`] and
//! [`udp_request_here`] run in the calling thread instead; combine them with
//! [`Host::run`] for a client that is in a namespace but outside
//! every node cgroup.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{Host, LabError, echo, sys};

/// What the echo server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    /// The answering server's name: which pod (or node) the request reached.
    pub name: String,
    /// The client address as the server saw it: differs from the client's own
    /// address exactly when something masqueraded the request.
    pub seen_source: SocketAddr,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// ECONNREFUSED: a TCP reset to the SYN, or an ICMP port unreachable (what a
    /// REJECT rule sends, and how UDP learns nobody listens).
    #[error("connection refused")]
    Refused,
    /// The connection was established and then reset.
    #[error("connection reset")]
    Reset,
    /// No route, or an ICMP host/network unreachable (EHOSTUNREACH, ENETUNREACH).
    #[error("destination unreachable")]
    Unreachable,
    /// Nothing came back in time: dropped somewhere, or a reply from an address the
    /// client did not talk to.
    #[error("no reply in time")]
    Timeout,
    /// A reply that is not an echo line.
    #[error("unexpected reply {reply:?}")]
    BadReply { reply: String },
    /// Any other socket error.
    #[error("{message}")]
    Other { message: String },
    /// The client process could not be run.
    #[error("running the echo client")]
    Lab(#[source] LabError),
}

/// Slack on top of the request timeout for the client process to start and exit.
const PROCESS_SLACK: Duration = Duration::from_secs(10);

/// Connects over TCP from `from` (a process in its namespace and cgroup) to `to` and
/// reads the echo line.
pub fn tcp_request(
    from: &impl Host,
    to: SocketAddr,
    timeout: Duration,
) -> Result<EchoReply, ClientError> {
    request_from(from, "tcp", to, timeout)
}

/// Sends one UDP datagram from `from` (a process in its namespace and cgroup) to
/// `to` on a connected socket and reads the reply.
pub fn udp_request(
    from: &impl Host,
    to: SocketAddr,
    timeout: Duration,
) -> Result<EchoReply, ClientError> {
    request_from(from, "udp", to, timeout)
}

fn request_from(
    from: &impl Host,
    protocol: &str,
    to: SocketAddr,
    timeout: Duration,
) -> Result<EchoReply, ClientError> {
    let binary = echo::binary().map_err(ClientError::Lab)?;
    let mut cmd = from.command(binary).map_err(ClientError::Lab)?;
    cmd.arg("client")
        .arg(protocol)
        .arg(to.to_string())
        .arg(timeout.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = sys::describe(&cmd);
    let spawn_error = |source| {
        ClientError::Lab(LabError::Spawn {
            command: command.clone(),
            source,
        })
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let bound = timeout + PROCESS_SLACK;
    let output = sys::wait_output(&mut child, bound)
        .map_err(spawn_error)?
        .ok_or_else(|| {
            ClientError::Lab(LabError::NotReady {
                what: command.clone(),
                bound,
                detail: "the client process did not finish".to_owned(),
            })
        })?;
    if !output.status.success() {
        return Err(ClientError::Lab(LabError::CommandFailed {
            command: command.clone(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }));
    }
    decode(String::from_utf8_lossy(&output.stdout).trim())
}

/// Connects over TCP from the calling thread and reads the echo line.
pub fn tcp_request_here(to: SocketAddr, timeout: Duration) -> Result<EchoReply, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&to, timeout).map_err(classify)?;
    let mut reply = Vec::new();
    let mut buf = [0_u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(classify)?;
        match stream.read(&mut buf).map_err(classify)? {
            0 => break,
            n => reply.extend_from_slice(&buf[..n]),
        }
        if reply.contains(&b'\n') {
            break;
        }
    }
    parse_reply(&String::from_utf8_lossy(&reply))
}

/// Sends one datagram from the calling thread on a connected UDP socket and reads
/// the reply; an ICMP port unreachable surfaces as [`ClientError::Refused`].
pub fn udp_request_here(to: SocketAddr, timeout: Duration) -> Result<EchoReply, ClientError> {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(to)
    } else {
        "[::]:0".parse().unwrap_or(to)
    };
    let socket = UdpSocket::bind(local).map_err(classify)?;
    socket.connect(to).map_err(classify)?;
    socket.send(b"ping\n").map_err(classify)?;
    socket.set_read_timeout(Some(timeout)).map_err(classify)?;
    let mut buf = [0_u8; 2048];
    let n = socket.recv(&mut buf).map_err(classify)?;
    parse_reply(&String::from_utf8_lossy(&buf[..n]))
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "shaped as a map_err callback"
)]
fn classify(error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ClientError::Refused,
        io::ErrorKind::ConnectionReset => ClientError::Reset,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ClientError::Unreachable
        }
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::Timeout,
        _ => ClientError::Other {
            message: error.to_string(),
        },
    }
}

fn parse_reply(text: &str) -> Result<EchoReply, ClientError> {
    let bad = || ClientError::BadReply {
        reply: text.to_owned(),
    };
    let line = text.strip_suffix('\n').ok_or_else(bad)?;
    let (name, source) = line.split_once(' ').ok_or_else(bad)?;
    let seen_source = source.parse().map_err(|_| bad())?;
    Ok(EchoReply {
        name: name.to_owned(),
        seen_source,
    })
}

/// The client process's one-line verdict on stdout.
fn encode(result: &Result<EchoReply, ClientError>) -> String {
    match result {
        Ok(reply) => format!("ok {} {}", reply.name, reply.seen_source),
        Err(ClientError::Refused) => "refused".to_owned(),
        Err(ClientError::Reset) => "reset".to_owned(),
        Err(ClientError::Unreachable) => "unreachable".to_owned(),
        Err(ClientError::Timeout) => "timeout".to_owned(),
        Err(ClientError::BadReply { reply }) => format!("bad {reply:?}"),
        Err(other) => format!("other {}", other.to_string().replace('\n', " ")),
    }
}

fn decode(line: &str) -> Result<EchoReply, ClientError> {
    let (verdict, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verdict {
        "ok" => parse_reply(&format!("{rest}\n")),
        "refused" => Err(ClientError::Refused),
        "reset" => Err(ClientError::Reset),
        "unreachable" => Err(ClientError::Unreachable),
        "timeout" => Err(ClientError::Timeout),
        "bad" => Err(ClientError::BadReply {
            reply: rest.to_owned(),
        }),
        "other" => Err(ClientError::Other {
            message: rest.to_owned(),
        }),
        _ => Err(ClientError::BadReply {
            reply: line.to_owned(),
        }),
    }
}

/// `kproxy-echo client tcp|udp ADDR TIMEOUT_MS`: performs one request in the
/// process's own namespace and returns the verdict line to print. Only the binary
/// calls this; the parent side is [`tcp_request`] / [`udp_request`].
#[doc(hidden)]
pub fn cli(args: &[String]) -> Result<String, String> {
    let [protocol, to, timeout_ms] = args else {
        return Err("usage: kproxy-echo client tcp|udp ADDR TIMEOUT_MS".to_owned());
    };
    let to: SocketAddr = to.parse().map_err(|e| format!("bad address {to:?}: {e}"))?;
    let timeout = Duration::from_millis(
        timeout_ms
            .parse()
            .map_err(|e| format!("bad timeout {timeout_ms:?}: {e}"))?,
    );
    let result = match protocol.as_str() {
        "tcp" => tcp_request_here(to, timeout),
        "udp" => udp_request_here(to, timeout),
        other => return Err(format!("unknown protocol {other:?}")),
    };
    Ok(encode(&result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip() {
        let reply = EchoReply {
            name: "pod-a".to_owned(),
            seen_source: "[2001:db8:64:1::1]:4000".parse().unwrap(),
        };
        let decoded = decode(&encode(&Ok(reply.clone()))).unwrap();
        assert_eq!(decoded, reply);
        assert!(matches!(
            decode(&encode(&Err(ClientError::Refused))),
            Err(ClientError::Refused)
        ));
        assert!(matches!(
            decode(&encode(&Err(ClientError::Timeout))),
            Err(ClientError::Timeout)
        ));
        assert!(matches!(
            decode(&encode(&Err(ClientError::Unreachable))),
            Err(ClientError::Unreachable)
        ));
        assert!(matches!(
            decode(&encode(&Err(ClientError::Other {
                message: "boom".into()
            }))),
            Err(ClientError::Other { message }) if message == "boom"
        ));
        assert!(matches!(
            decode("nonsense"),
            Err(ClientError::BadReply { .. })
        ));
    }

    #[test]
    fn replies_parse_or_are_rejected() {
        let reply = parse_reply("b 100.64.1.2:5555\n").unwrap();
        assert_eq!(reply.name, "b");
        assert_eq!(reply.seen_source, "100.64.1.2:5555".parse().unwrap());
        assert!(matches!(
            parse_reply("b 100.64.1.2:5555"),
            Err(ClientError::BadReply { .. })
        ));
        assert!(matches!(
            parse_reply("b nowhere\n"),
            Err(ClientError::BadReply { .. })
        ));
    }
}
