//! The benchmark's own traffic: a fast accept-reply-close server, a closed-loop load
//! generator and a change probe. Each runs as a `kproxy-bench` subcommand inside a lab
//! host's namespace *and* cgroup (started with [`Host::command`](crate::lab::Host::command)),
//! so eBPF socket hooks on a node see them as they would see a pod.
//!
//! Request and reply are one short line each: the client sends `x\n`, the server answers
//! with its name and closes (TCP) or sends one datagram back (UDP). Latency is measured
//! from before `connect` (TCP) or the socket's creation (UDP) to the whole reply read.

use std::{
    fmt::Write as _,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// A latency histogram: 1 µs buckets below 1024 µs, then 32 sub-buckets per power of two
/// (≤ 3 % error), up to about an hour. Mergeable, and small on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
}

const LINEAR: u64 = 1024;
const SUB: u64 = 32;

fn bucket_of(us: u64) -> usize {
    let idx = if us < LINEAR {
        us
    } else {
        let exp = 63 - u64::from(us.leading_zeros()); // ≥ 10
        let sub = (us >> (exp - 5)) & (SUB - 1);
        LINEAR + (exp - 10) * SUB + sub
    };
    usize::try_from(idx).expect("bucket fits usize")
}

fn value_of(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < LINEAR {
        b
    } else {
        let exp = (b - LINEAR) / SUB + 10;
        let sub = (b - LINEAR) % SUB;
        // The bucket's midpoint.
        (1 << exp) + (sub << (exp - 5)) + (1 << (exp - 6))
    }
}

impl Histogram {
    /// Adds one sample, in microseconds.
    pub fn record(&mut self, us: u64) {
        let b = bucket_of(us.min(1 << 40));
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1) in microseconds; None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within the sample count"
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value_of(b));
            }
        }
        None
    }

    /// `bucket:count,...` of the non-empty buckets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (b, c) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{b}:{c}");
        }
        out
    }

    /// The inverse of [`Histogram::encode`].
    pub fn decode(text: &str) -> Option<Histogram> {
        let mut h = Histogram::default();
        for pair in text.split(',').filter(|p| !p.is_empty()) {
            let (b, c) = pair.split_once(':')?;
            let (b, c): (usize, u64) = (b.parse().ok()?, c.parse().ok()?);
            if b > 4096 {
                return None;
            }
            if h.counts.len() <= b {
                h.counts.resize(b + 1, 0);
            }
            h.counts[b] += c;
        }
        Some(h)
    }
}

/// One load run's outcome, printed by the generator as one line:
/// `ok=N errors=N secs=F hist=...`.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Completed requests.
    pub ok: u64,
    /// Failed requests (refused, reset, timed out).
    pub errors: u64,
    /// Wall time of the run.
    pub secs: f64,
    /// Latency of the completed requests.
    pub hist: Histogram,
}

impl LoadResult {
    /// The generator's output line.
    pub fn to_line(&self) -> String {
        format!(
            "ok={} errors={} secs={:.6} hist={}",
            self.ok,
            self.errors,
            self.secs,
            self.hist.encode()
        )
    }

    /// Parses [`LoadResult::to_line`].
    pub fn parse(line: &str) -> Option<LoadResult> {
        let mut r = LoadResult::default();
        for field in line.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "ok" => r.ok = v.parse().ok()?,
                "errors" => r.errors = v.parse().ok()?,
                "secs" => r.secs = v.parse().ok()?,
                "hist" => r.hist = Histogram::decode(v)?,
                _ => {}
            }
        }
        Some(r)
    }

    /// Adds another run of the same scenario.
    pub fn merge(&mut self, other: &LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.secs += other.secs;
        self.hist.merge(&other.hist);
    }

    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            #[expect(clippy::cast_precision_loss, reason = "a rate")]
            let ok = self.ok as f64;
            ok / self.secs
        } else {
            0.0
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// connect, one request line, the reply, close.
    Tcp,
    /// a fresh socket (new source port, so a new flow) per request and reply.
    Udp,
}

/// Runs `conns` closed-loop clients against `to` for `duration`.
pub fn generate(proto: Proto, to: SocketAddr, conns: usize, duration: Duration) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns.max(1))
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut r = LoadResult::default();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let done = match proto {
                        Proto::Tcp => tcp_once(to),
                        Proto::Udp => udp_once(to),
                    };
                    if done.is_ok() {
                        r.ok += 1;
                        r.hist
                            .record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    } else {
                        r.errors += 1;
                        // A refused or dropped target fails fast; do not spin.
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                r
            })
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadResult::default();
    for w in workers {
        if let Ok(r) = w.join() {
            total.merge(&r);
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    total
}

const IO_TIMEOUT: Duration = Duration::from_secs(1);

fn tcp_once(to: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(b"x\n")?;
    let mut buf = [0u8; 128];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty reply"));
    }
    Ok(())
}

fn udp_once(to: SocketAddr) -> io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.send(b"x\n")?;
    let mut buf = [0u8; 128];
    let n = s.recv(&mut buf)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty reply"));
    }
    Ok(())
}

/// The server: `threads` threads accepting on one TCP listener and `threads` answering on
/// one UDP socket; each reply is `NAME\n`. Calls `ready` once both are bound; never returns
/// unless binding fails.
pub fn serve(
    name: &str,
    tcp: u16,
    udp: u16,
    threads: usize,
    ready: impl FnOnce(),
) -> io::Result<()> {
    let listener = Arc::new(TcpListener::bind(("0.0.0.0", tcp))?);
    let socket = Arc::new(UdpSocket::bind(("0.0.0.0", udp))?);
    let reply: Arc<[u8]> = format!("{name}\n").into_bytes().into();
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let (listener, tcp_reply) = (Arc::clone(&listener), Arc::clone(&reply));
        handles.push(thread::spawn(move || {
            loop {
                let Ok((mut s, _)) = listener.accept() else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = [0u8; 64];
                // One read is the whole request line (2 bytes); then answer and close.
                if s.read(&mut buf).is_ok_and(|n| n > 0) {
                    let _ = s.write_all(&tcp_reply);
                }
            }
        }));
        let (socket, udp_reply) = (Arc::clone(&socket), Arc::clone(&reply));
        handles.push(thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&udp_reply, peer);
                }
            }
        }));
    }
    ready();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The change probe: connects to `to` over and over (one attempt per `interval`) and
/// watches which server answers. Commands on stdin, answers on stdout:
///
/// * `expect NAME` → once NAME answers: `seen NAME MICROS`, the time since the command
///   was read;
/// * `quit` → exits.
///
/// The driver writes the change to the kernel's source first and then sends `expect`, so
/// the measured time is at most the pipe's latency short of the real one.
pub fn probe(to: SocketAddr, interval: Duration) -> io::Result<()> {
    let want: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
    let quit = Arc::new(AtomicBool::new(false));
    {
        let (want, quit) = (Arc::clone(&want), Arc::clone(&quit));
        thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("expect ") {
                    *want
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((name.trim().to_owned(), Instant::now()));
                } else if line.trim() == "quit" {
                    break;
                }
            }
            quit.store(true, Ordering::Relaxed);
        });
    }
    println!("ready");
    io::stdout().flush()?;
    while !quit.load(Ordering::Relaxed) {
        let answer = probe_once(to);
        let mut guard = want
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(name), Some((expected, since))) = (answer, guard.as_ref())
            && name == *expected
        {
            println!("seen {name} {}", since.elapsed().as_micros());
            io::stdout().flush()?;
            *guard = None;
        }
        drop(guard);
        thread::sleep(interval);
    }
    Ok(())
}

fn probe_once(to: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.write_all(b"p\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_and_quantiles_are_close() {
        let mut h = Histogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let back = Histogram::decode(&h.encode()).expect("decodes");
        assert_eq!(back, h);
        let p50 = h.quantile(0.5).expect("p50");
        assert!((4850..=5150).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).expect("p99");
        assert!((9600..=10_200).contains(&p99), "{p99}");
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn result_line_round_trips() {
        let mut r = LoadResult {
            ok: 3,
            errors: 1,
            secs: 0.5,
            ..LoadResult::default()
        };
        r.hist.record(70);
        r.hist.record(2000);
        let back = LoadResult::parse(&r.to_line()).expect("parses");
        assert_eq!(back.ok, 3);
        assert_eq!(back.errors, 1);
        assert_eq!(back.hist, r.hist);
        assert!((back.rate() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn generator_and_server_talk() {
        // Loopback in the test's own namespace: no privileges needed.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let u = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let uport = u.local_addr().expect("addr").port();
        drop(u);
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || serve("s1", port, uport, 2, move || tx.send(()).expect("send")));
        rx.recv().expect("ready");
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let r = generate(Proto::Tcp, to, 2, Duration::from_millis(100));
        assert!(r.ok > 0, "{r:?}");
        assert_eq!(r.hist.count(), r.ok);
        let to: SocketAddr = format!("127.0.0.1:{uport}").parse().expect("addr");
        let r = generate(Proto::Udp, to, 2, Duration::from_millis(100));
        assert!(r.ok > 0, "{r:?}");
        assert_eq!(
            probe_once(format!("127.0.0.1:{port}").parse().expect("addr")).as_deref(),
            Some("s1")
        );
    }
}
