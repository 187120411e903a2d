//! kproxy's benchmarks (`cargo xtask bench`): the control-plane and datapath suites, run in
//! the netns lab against kproxy's modes and two baselines that load kube-proxy's own rule
//! layouts with the real tools (`iptables-restore`, `nft -f`) for the same Services.
//!
//! Everything happens inside lab namespaces: every mode gets a fresh lab per size, so no
//! measurement inherits another's kernel state, and nothing touches the root namespace.
//! Results are rows of `(suite, mode, services, endpoints, metric, value, unit, note)`,
//! written as `target/bench/<suite>.csv`, a markdown table and one SVG plot per figure (see
//! [`report`]). Timings on shared machines are noisy: the datapath figures that matter are
//! ratios of scenarios measured alternately in short slices of the same run.
//!
//! The traffic ([`load`]) runs as `kproxy-bench` subprocesses inside pods (namespace and
//! cgroup), so the driver needs the path of that binary as well as kproxy's.

mod control;
mod datapath;
pub mod layout;
pub mod load;
pub mod report;

use std::{
    fmt, fs,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    str::FromStr,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    conformance::http_status,
    lab::{Host, Node, Process},
};

/// Which suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// Programming time, change latency, churn, memory and CPU.
    ControlPlane,
    /// Connection and request rates and latencies through the datapath.
    Datapath,
}

impl Suite {
    /// The name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::Datapath => "datapath",
        }
    }
}

impl FromStr for Suite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "control-plane" | "controlplane" | "cp" => Ok(Self::ControlPlane),
            "datapath" | "dp" => Ok(Self::Datapath),
            _ => Err(format!("unknown suite {s:?} (control-plane, datapath)")),
        }
    }
}

/// What programs the node under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `kproxy run --proxy-mode nftables`.
    KproxyNftables,
    /// `kproxy run --proxy-mode ebpf`.
    KproxyEbpf,
    /// kube-proxy's iptables layout through `iptables-restore` (the distribution's default
    /// backend; iptables-nft on Debian).
    KubeIptables,
    /// The same through `iptables-legacy-restore` (x_tables).
    KubeIptablesLegacy,
    /// kube-proxy's nftables layout through `nft -f`.
    KubeNftables,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 5] = [
        Self::KproxyNftables,
        Self::KproxyEbpf,
        Self::KubeIptables,
        Self::KubeIptablesLegacy,
        Self::KubeNftables,
    ];

    /// The default set: kproxy's two modes and the two baselines.
    pub const DEFAULT: [Mode; 4] = [
        Self::KproxyNftables,
        Self::KproxyEbpf,
        Self::KubeIptables,
        Self::KubeNftables,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Self::KproxyNftables => "nftables",
            Self::KproxyEbpf => "ebpf",
            Self::KubeIptables => "kube-iptables",
            Self::KubeIptablesLegacy => "kube-iptables-legacy",
            Self::KubeNftables => "kube-nftables",
        }
    }

    /// kproxy's `--proxy-mode` value, None for the baselines.
    pub fn kproxy_flag(self) -> Option<&'static str> {
        match self {
            Self::KproxyNftables => Some("nftables"),
            Self::KproxyEbpf => Some("ebpf"),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .or(match s {
                "iptables" => Some(Self::KubeIptables),
                "iptables-legacy" => Some(Self::KubeIptablesLegacy),
                "kube-nft" | "nft-layout" => Some(Self::KubeNftables),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "unknown mode {s:?} (nftables, ebpf, kube-iptables, kube-iptables-legacy, kube-nftables)"
                )
            })
    }
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which suite.
    pub suite: Suite,
    /// Service counts, in order.
    pub services: Vec<usize>,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Modes, in order.
    pub modes: Vec<Mode>,
    /// Small sizes and short measurements (under a minute per suite).
    pub quick: bool,
    /// Where the CSV, table and plots go.
    pub out_dir: PathBuf,
    /// The kproxy binary.
    pub kproxy: PathBuf,
    /// The kproxy-bench binary (servers, load generator, probe).
    pub bench_bin: PathBuf,
    /// Bound on programming a size (agent start to healthy, one baseline load or change).
    pub timeout: Duration,
    /// Services per manifest file.
    pub per_file: usize,
    /// Endpoint changes measured per size (control plane).
    pub changes: usize,
    /// Time spent on changes per size at most (control plane).
    pub change_budget: Duration,
    /// Offered churn rates, changes per second (control plane, kproxy only).
    pub churn_rates: Vec<u32>,
    /// How long each churn rate is offered.
    pub churn_duration: Duration,
    /// Length of one measurement slice (datapath).
    pub slice: Duration,
    /// Rounds of alternating slices (datapath).
    pub rounds: usize,
    /// Concurrent connections of the load generator (datapath).
    pub conns: usize,
    /// Scratch directory (manifests, rule files, logs).
    pub work_dir: PathBuf,
}

impl Config {
    /// The defaults for `suite`, full or quick.
    pub fn new(suite: Suite, quick: bool, kproxy: PathBuf, bench_bin: PathBuf) -> Self {
        let services = match (suite, quick) {
            (Suite::ControlPlane, false) => vec![1_000, 10_000, 100_000],
            (Suite::Datapath, false) => vec![1, 1_000, 10_000, 100_000],
            (Suite::ControlPlane, true) => vec![10, 200],
            (Suite::Datapath, true) => vec![1, 100],
        };
        Self {
            suite,
            services,
            endpoints: 10,
            modes: Mode::DEFAULT.to_vec(),
            quick,
            out_dir: PathBuf::from("target/bench"),
            kproxy,
            bench_bin,
            timeout: Duration::from_secs(if quick { 20 } else { 120 }),
            per_file: 100,
            changes: if quick { 5 } else { 100 },
            change_budget: Duration::from_secs(if quick { 4 } else { 90 }),
            churn_rates: if quick { vec![50] } else { vec![10, 100, 1000] },
            churn_duration: Duration::from_secs(if quick { 1 } else { 5 }),
            slice: Duration::from_millis(if quick { 150 } else { 500 }),
            rounds: if quick { 1 } else { 6 },
            conns: if quick { 4 } else { 8 },
            work_dir: std::env::temp_dir().join("kproxy-bench"),
        }
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Suite name.
    pub suite: &'static str,
    /// Mode name.
    pub mode: String,
    /// Number of Services.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// What was measured.
    pub metric: String,
    /// The value; None when it could not be measured (the note says why).
    pub value: Option<f64>,
    /// Unit of `value`.
    pub unit: &'static str,
    /// `timeout` (value is the bound that was exceeded), `failed: ...`, `skipped: ...`, or
    /// context such as a sample count.
    pub note: String,
}

/// Collects rows for one (mode, size).
pub(crate) struct Rows<'a> {
    pub(crate) out: &'a mut Vec<Row>,
    pub(crate) suite: Suite,
    pub(crate) mode: Mode,
    pub(crate) services: usize,
    pub(crate) endpoints: usize,
}

impl Rows<'_> {
    pub(crate) fn push(
        &mut self,
        metric: &str,
        value: Option<f64>,
        unit: &'static str,
        note: &str,
    ) {
        let row = Row {
            suite: self.suite.name(),
            mode: self.mode.name().to_owned(),
            services: self.services,
            endpoints: self.endpoints,
            metric: metric.to_owned(),
            value,
            unit,
            note: note.to_owned(),
        };
        println!(
            "  {:<22} {:>7} {:<30} {:>14} {:<6} {}",
            row.mode,
            row.services,
            row.metric,
            row.value.map_or_else(|| "-".to_owned(), report::fmt_value),
            row.unit,
            row.note
        );
        self.out.push(row);
    }

    pub(crate) fn value(&mut self, metric: &str, value: f64, unit: &'static str) {
        self.push(metric, Some(value), unit, "");
    }

    pub(crate) fn failed(&mut self, metric: &str, unit: &'static str, why: &str) {
        self.push(metric, None, unit, &format!("failed: {why}"));
    }
}

/// Runs a suite, writes its CSV, table and plots, and returns the rows.
pub fn run(cfg: &Config) -> Result<Vec<Row>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks build network namespaces and program the kernel: run as root");
    }
    for (what, path) in [("kproxy", &cfg.kproxy), ("kproxy-bench", &cfg.bench_bin)] {
        if !path.is_file() {
            bail!("the {what} binary is missing at {}", path.display());
        }
    }
    let env = report::Environment::collect(cfg);
    println!("{}", env.text());
    fs::create_dir_all(&cfg.work_dir)?;
    let mut rows = Vec::new();
    match cfg.suite {
        Suite::ControlPlane => control::run(cfg, &mut rows),
        Suite::Datapath => datapath::run(cfg, &mut rows),
    }
    fs::create_dir_all(&cfg.out_dir)?;
    report::write(cfg, &env, &rows)?;
    println!(
        "wrote {}/{}.csv, .md and plots",
        cfg.out_dir.display(),
        cfg.suite.name()
    );
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Shared helpers

/// The cluster's pod CIDR in the lab.
pub(crate) const CLUSTER_CIDR: &str = "100.64.0.0/16";

/// `kproxy-bench serve` in `host`, named after it; returns once it listens.
pub(crate) fn start_server(cfg: &Config, host: &impl Host, threads: usize) -> Result<Process> {
    let mut cmd = host.command(&cfg.bench_bin)?;
    cmd.args(["serve", "--name", host.name()])
        .args(["--tcp", &layout::POD_TCP_PORT.to_string()])
        .args(["--udp", &layout::POD_UDP_PORT.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting kproxy-bench serve")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let process = Process::from_child(child, format!("server in {}", host.name()));
    let lines = line_channel(stdout);
    match lines.recv_timeout(Duration::from_secs(10)) {
        Ok(l) if l.trim() == "ready" => Ok(process),
        other => bail!("server in {} did not start: {other:?}", host.name()),
    }
}

/// Forwards a child's stdout lines to a channel from a thread.
pub(crate) fn line_channel(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A kproxy agent under test.
pub(crate) struct Agent {
    process: Process,
    log: PathBuf,
}

impl Agent {
    /// Starts kproxy on `node` over `manifests` (JSON logs into `log`).
    pub(crate) fn start(
        cfg: &Config,
        node: &Node,
        mode: Mode,
        manifests: &Path,
        log: &Path,
    ) -> Result<Agent> {
        let flag = mode.kproxy_flag().context("not a kproxy mode")?;
        let health = SocketAddr::new(node.ipv4().into(), 10256);
        let mut cmd = node.command(&cfg.kproxy)?;
        cmd.args([
            "run",
            "--proxy-mode",
            flag,
            "--hostname-override",
            node.name(),
        ])
        .arg("--manifests")
        .arg(manifests)
        .args(["--cluster-cidr", CLUSTER_CIDR])
        .args(["--healthz-bind-address", &health.to_string()])
        .args(["--metrics-bind-address", "127.0.0.1:10249"])
        .args(["--min-sync-period", "0s", "--log-format", "json"])
        .arg("--cgroup-path")
        .arg(node.cgroup_path())
        .arg("--bpffs")
        .arg(node.bpffs_path())
        .args(["--devices", "eth0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log)?);
        let child = cmd.spawn().context("starting kproxy")?;
        Ok(Agent {
            process: Process::from_child(child, format!("kproxy on {}", node.name())),
            log: log.to_owned(),
        })
    }

    /// Polls `/healthz` until 200; fails when the agent exits or `bound` passes (then the
    /// error says `timeout`).
    pub(crate) fn wait_healthy(&mut self, node: &Node, bound: Duration) -> Result<()> {
        let health = SocketAddr::new(node.ipv4().into(), 10256);
        let deadline = Instant::now() + bound;
        loop {
            // One namespace switch per batch of polls keeps the poll period short.
            let healthy = node.run(move || {
                for _ in 0..50 {
                    if http_status(health, "/healthz") == Some(200) {
                        return true;
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                false
            })?;
            if healthy {
                return Ok(());
            }
            if !self.process.is_running() {
                bail!("kproxy exited: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("timeout");
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last lines of the log, for failure notes; a panic's message if there is one.
    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(i) = text.lines().position(|l| l.contains("panicked at")) {
            let panic: Vec<&str> = text.lines().skip(i).take(2).collect();
            return panic.join(" ").replace(',', ";");
        }
        if let Some(l) = text.lines().rev().find(|l| l.starts_with("Error:")) {
            return l.replace(',', ";");
        }
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        let mut lines: Vec<String> = lines
            .into_iter()
            .rev()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| {
                        let f = v.get("fields")?;
                        let msg = f.get("message")?.as_str()?.to_owned();
                        let err = f.get("error").and_then(|e| e.as_str()).unwrap_or("");
                        let cause = f.get("cause").and_then(|e| e.as_str()).unwrap_or("");
                        Some(format!("{msg} {err} {cause}"))
                    })
                    .unwrap_or_else(|| l.to_owned())
            })
            .collect();
        lines.retain(|l| !l.trim().is_empty());
        lines.join(" | ").replace(',', ";")
    }

    /// Every `synced` line so far.
    pub(crate) fn syncs(&self) -> Vec<Synced> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(Synced::parse).collect()
    }

    /// Peak RSS (VmHWM) in MiB.
    pub(crate) fn peak_rss_mib(&self) -> Option<f64> {
        proc_status_kib(self.pid(), "VmHWM:").map(|k| k / 1024.0)
    }

    /// CPU time (user + system) so far, in seconds.
    pub(crate) fn cpu_secs(&self) -> Option<f64> {
        proc_cpu_secs(self.pid())
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// One `synced` log line of the agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Synced {
    /// When the line was logged (wall clock).
    pub(crate) at: Option<SystemTime>,
    pub(crate) full: bool,
    pub(crate) elapsed: Duration,
    pub(crate) updated: u64,
}

impl Synced {
    fn parse(line: &str) -> Option<Synced> {
        if !line.contains("\"synced\"") {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let f = v.get("fields")?;
        if f.get("message")?.as_str()? != "synced" {
            return None;
        }
        let elapsed = parse_debug_duration(f.get("elapsed")?.as_str()?)?;
        let full = v
            .get("span")
            .and_then(|s| s.get("full"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let updated = f
            .get("updated")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let at = v
            .get("timestamp")
            .and_then(serde_json::Value::as_str)
            .and_then(parse_rfc3339);
        Some(Synced {
            at,
            full,
            elapsed,
            updated,
        })
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` (UTC), as tracing's JSON timestamps.
#[expect(
    clippy::many_single_char_names,
    reason = "the civil-date algorithm's own names"
)]
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    let frac: String = frac.chars().take(9).collect();
    let nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - u32::try_from(frac.len()).ok()?);
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Parses a `Duration`'s Debug form (`1.5s`, `12.3ms`, `850µs`, `120ns`).
pub(crate) fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = s.strip_suffix("µs").or_else(|| s.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    Duration::try_from_secs_f64(v * scale).ok()
}

fn proc_status_kib(pid: u32, key: &str) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux architecture this runs on.
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| {
            #[expect(clippy::cast_precision_loss, reason = "a small tick rate")]
            let t = t as f64;
            t
        })
}

/// utime + stime of `pid`, in seconds.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let fields = proc_stat_fields(&format!("/proc/{pid}/stat"))?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// cutime + cstime of this process: CPU of every reaped child, in seconds.
pub(crate) fn children_cpu_secs() -> f64 {
    proc_stat_fields("/proc/self/stat")
        .and_then(|f| Some(f.get(13)?.parse::<f64>().ok()? + f.get(14)?.parse::<f64>().ok()?))
        .map_or(0.0, |t| t / clock_ticks())
}

/// The fields of a `/proc/*/stat` after the command name (field 3 onwards, 0-based 0).
fn proc_stat_fields(path: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// How a bounded command ended.
pub(crate) enum Bounded {
    /// It succeeded after this long.
    Done(Duration),
    /// It ran past the bound and was killed.
    Timeout,
    /// It failed; stderr says why.
    Failed(String),
}

/// Runs `cmd` to completion or kills it after `bound`.
pub(crate) fn run_bounded(mut cmd: Command, bound: Duration) -> Result<Bounded> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child: Child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().context("stderr")?;
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let took = started.elapsed();
            let err = err_reader.join().unwrap_or_default();
            return Ok(if status.success() {
                Bounded::Done(took)
            } else {
                let first: Vec<&str> = err.lines().take(2).collect();
                Bounded::Failed(format!("{status}: {}", first.join(" ")))
            });
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Bounded::Timeout);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The `q` quantile of `values` (sorted in place); None when empty.
pub(crate) fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index within the slice"
    )]
    let idx = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    Some(values[idx])
}

/// The directory for one (suite, mode, size) run's files; removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(cfg: &Config, lab: &str) -> Result<Scratch> {
        let dir = cfg.work_dir.join(lab);
        fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` atomically (write + rename), as an editor or a config tool would.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .context("a file name")?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_parse() {
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("12ms"),
            Some(Duration::from_millis(12))
        );
        assert_eq!(
            parse_debug_duration("850µs"),
            Some(Duration::from_micros(850))
        );
        assert_eq!(
            parse_debug_duration("120ns"),
            Some(Duration::from_nanos(120))
        );
        assert_eq!(parse_debug_duration("soon"), None);
    }

    #[test]
    fn synced_lines_parse() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"synced","service_ports":3,"added":0,"updated":1,"removed":0,"kernel_ops":4,"elapsed":"2.5ms"},"target":"kproxy::sync","span":{"full":false,"mode":"nftables","name":"sync"},"spans":[]}"#;
        assert_eq!(
            Synced::parse(line),
            Some(Synced {
                at: None,
                full: false,
                elapsed: Duration::from_micros(2500),
                updated: 1
            })
        );
        assert_eq!(Synced::parse(r#"{"fields":{"message":"other"}}"#), None);
    }

    #[test]
    fn timestamps_parse() {
        let t = parse_rfc3339("2026-12-01T22:22:01.5Z").expect("parses");
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!((secs - 1_796_163_721.5).abs() < 1e-6, "{secs}");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn modes_and_suites_parse() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert!("ipvs".parse::<Mode>().is_err());
        assert_eq!("datapath".parse::<Suite>(), Ok(Suite::Datapath));
        assert!("x".parse::<Suite>().is_err());
    }

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
