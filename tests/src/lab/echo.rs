//! The echo server behind `kproxy-echo`: it answers every TCP connection and every
//! UDP datagram with one line, `<name> <peer-ip>:<peer-port>\n`, so a test learns
//! both which backend answered and which source address the backend saw (the
//! observable effect of masquerading).

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    thread,
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
    sockopt,
};

use super::{Host, LabError, Process, Result};

/// The line the server prints on stdout once every socket is bound.
pub const READY_LINE: &str = "ready";

/// How long [`Host::start_echo`] waits for the ready line.
const READY_BOUND: Duration = Duration::from_secs(10);

/// How long a TCP connection may linger after the reply, draining what the client
/// sends so closing never turns into a reset.
const DRAIN_BOUND: Duration = Duration::from_secs(1);

/// Why the echo server could not start.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// A port could not be bound (in use, or no IPv6 in the namespace).
    #[error("binding {protocol} port {port}")]
    Bind {
        protocol: &'static str,
        port: u16,
        #[source]
        source: io::Error,
    },
    /// An echo server with nothing to listen on is a test bug.
    #[error("no --tcp or --udp port given")]
    NoPorts,
}

/// The reply line for a peer. IPv4 peers of the dual-stack sockets show up as
/// v4-mapped IPv6 addresses and are written as plain IPv4.
pub fn reply_line(name: &str, peer: SocketAddr) -> String {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    format!("{name} {peer}\n")
}

/// Binds every port (each one socket on `[::]` accepting IPv4 and IPv6), calls
/// `ready`, then serves forever; returns only if binding fails.
pub fn serve(name: &str, tcp: &[u16], udp: &[u16], ready: impl FnOnce()) -> Result<(), EchoError> {
    if tcp.is_empty() && udp.is_empty() {
        return Err(EchoError::NoPorts);
    }
    let mut listeners = Vec::new();
    for &port in tcp {
        let fd = dual_stack_socket(SockType::Stream, port).map_err(|source| EchoError::Bind {
            protocol: "tcp",
            port,
            source,
        })?;
        listeners.push(TcpListener::from(fd));
    }
    let mut sockets = Vec::new();
    for &port in udp {
        let fd = dual_stack_socket(SockType::Datagram, port).map_err(|source| EchoError::Bind {
            protocol: "udp",
            port,
            source,
        })?;
        sockets.push(UdpSocket::from(fd));
    }
    ready();
    thread::scope(|scope| {
        for listener in &listeners {
            scope.spawn(move || serve_tcp(name, listener));
        }
        for socket in &sockets {
            scope.spawn(move || serve_udp(name, socket));
        }
    });
    Ok(())
}

fn dual_stack_socket(kind: SockType, port: u16) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet6, kind, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    bind(fd.as_raw_fd(), &addr)?;
    if kind == SockType::Stream {
        listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    }
    Ok(fd)
}

fn serve_tcp(name: &str, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let line = reply_line(name, peer);
                thread::spawn(move || answer_tcp(stream, &line));
            }
            Err(error) => {
                // Transient (e.g. ECONNABORTED); never panic on stderr trouble.
                let _ = writeln!(io::stderr(), "kproxy-echo: accept: {error}");
            }
        }
    }
}

fn answer_tcp(mut stream: TcpStream, line: &str) {
    if stream.write_all(line.as_bytes()).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(DRAIN_BOUND));
    let mut sink = [0_u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn serve_udp(name: &str, socket: &UdpSocket) {
    let mut buf = [0_u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let _ = socket.send_to(reply_line(name, peer).as_bytes(), peer);
            }
            Err(error) => {
                let _ = writeln!(io::stderr(), "kproxy-echo: recv: {error}");
            }
        }
    }
}

/// Where the `kproxy-echo` binary is: `KPROXY_ECHO_BIN`, else next to the running
/// executable or one directory up (integration tests run from `target/<profile>/deps`,
/// binaries from `target/<profile>`).
pub(crate) fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KPROXY_ECHO_BIN") {
        return Ok(path.into());
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("kproxy-echo");
            if candidate.is_file() {
                return Ok(candidate);
            }
            looked.push(dir.display().to_string());
        }
    }
    Err(LabError::EchoBinaryMissing {
        looked: looked.join(", "),
    })
}

pub(crate) fn start<H: Host>(host: &H, tcp: &[u16], udp: &[u16]) -> Result<Process> {
    let mut cmd = host.command(binary()?)?;
    cmd.arg("--name").arg(host.name());
    for port in tcp {
        cmd.arg("--tcp").arg(port.to_string());
    }
    for port in udp {
        cmd.arg("--udp").arg(port.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("echo server in {}", host.name());
    let child = cmd.spawn().map_err(|source| LabError::Spawn {
        command: what.clone(),
        source,
    })?;
    let mut process = Process::from_child(child, what.clone());
    let stdout = process.child_mut().stdout.take();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        if let Some(stdout) = stdout {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_BOUND) {
        Ok(line) if line.trim() == READY_LINE => {
            // Nobody reads stderr from here on; closing it means a chatty server gets
            // EPIPE rather than blocking on a full pipe.
            drop(process.child_mut().stderr.take());
            Ok(process)
        }
        outcome => {
            let _ = process.child_mut().kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = process.child_mut().stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let detail = match outcome {
                Ok(line) if line.is_empty() => format!("exited: {}", stderr.trim()),
                Ok(line) => format!("printed {:?}: {}", line.trim(), stderr.trim()),
                Err(_) => "no ready line".to_owned(),
            };
            Err(LabError::NotReady {
                what,
                bound: READY_BOUND,
                detail,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_show_plain_ipv4_for_mapped_peers() {
        let mapped: SocketAddr = "[::ffff:100.64.1.2]:40000".parse().unwrap();
        assert_eq!(reply_line("web", mapped), "web 100.64.1.2:40000\n");
        let v6: SocketAddr = "[2001:db8:64:1::2]:40000".parse().unwrap();
        assert_eq!(reply_line("web", v6), "web [2001:db8:64:1::2]:40000\n");
    }
}
