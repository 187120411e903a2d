//! The control-plane suite.
//!
//! Per mode and size, in a fresh lab with one node `a`:
//!
//! * `start_s`: for kproxy, wall time from spawning the agent to `/healthz` answering 200
//!   (its first full sync is in the kernel); `agent_sync_s` is the agent's own duration of
//!   that sync (its `synced ... elapsed` log line). For the baselines, the wall time of one
//!   `iptables-restore --noflush` / `nft -f` of the whole ruleset (generating the text is
//!   not timed, so the baselines are favoured: kube-proxy also has to build it).
//! * `change_p50_ms` / `change_p99_ms`: one endpoint change. For kproxy, end to end: the
//!   driver rewrites the target Service's manifest (its endpoint flips between pods `p1`
//!   and `p2`, after a random pause of up to 250 ms so changes land at random phases of the
//!   source's poll) and a probe process in pod `cl` connects to the ClusterIP every 200 µs
//!   until the new pod answers; `change_to_synced_*` is the same from the agent's log
//!   timestamps. This includes the manifests source's poll period (200 ms), so
//!   `agent_change_p50_ms` / `_p99_ms` also give the agent's own partial-sync durations.
//!   For the baselines: the wall time of the restore/transaction kube-proxy's partial sync
//!   would issue for the change.
//! * `churn_lag_ms@R/s` (kproxy): offering R endpoint changes per second to random
//!   Services for a few seconds, then the target's change: how long until it answers.
//!   `churn_max_per_s` is the highest offered rate with that lag under one second.
//! * `rss_mib` (VmHWM) and `cpu_s` (user + system, whole run) of the agent; for the
//!   baselines `cpu_s` is the tool's CPU for the full load.

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::{ChildStdin, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Agent, Bounded, CLUSTER_CIDR, Config, Mode, Rows, Scratch, Suite,
    layout::{self, ServiceSet},
    line_channel, quantile, run_bounded, start_server, write_atomic,
};
use crate::lab::{Host, Lab, Node, Pod, Process};

pub(super) fn run(cfg: &Config, out: &mut Vec<super::Row>) {
    // A baseline that timed out at one size is not tried at larger ones.
    let mut exceeded: Vec<(Mode, usize)> = Vec::new();
    for &n in &cfg.services {
        for &mode in &cfg.modes {
            println!("control-plane: {mode} at {n} services");
            let mut rows = Rows {
                out,
                suite: Suite::ControlPlane,
                mode,
                services: n,
                endpoints: cfg.endpoints,
            };
            if let Some((_, at)) = exceeded.iter().find(|(m, _)| *m == mode) {
                let t = cfg.timeout.as_secs_f64();
                rows.push(
                    "start_s",
                    Some(t),
                    "s",
                    &format!("timeout: > {t} s already at {at} services; not run"),
                );
                continue;
            }
            let result = if mode.kproxy_flag().is_some() {
                kproxy(cfg, mode, n, &mut rows)
            } else {
                baseline(cfg, mode, n, &mut rows)
            };
            match result {
                Ok(true) => {}
                Ok(false) => exceeded.push((mode, n)),
                Err(e) => rows.failed("start_s", "s", &format!("{e:#}").replace(',', ";")),
            }
        }
    }
}

fn pod_ip(p: &Pod) -> Ipv4Addr {
    p.ipv4()
}

/// kproxy at `n` services. Ok(false) when the agent did not become healthy in time.
#[expect(clippy::too_many_lines, reason = "one measurement, start to end")]
fn kproxy(cfg: &Config, mode: Mode, n: usize, rows: &mut Rows<'_>) -> Result<bool> {
    let lab = Lab::new("bench-control-plane")?;
    let scratch = Scratch::new(cfg, lab.id())?;
    let a = lab.add_node("a")?;
    let p1 = a.add_pod("p1")?;
    let p2 = a.add_pod("p2")?;
    let cl = a.add_pod("cl")?;
    let _servers = [start_server(cfg, &p1, 1)?, start_server(cfg, &p2, 1)?];

    let manifests = scratch.0.join("manifests");
    fs::create_dir_all(&manifests)?;
    let mut set = ServiceSet::new(n, cfg.endpoints, vec![pod_ip(&p1)], CLUSTER_CIDR);
    let gen_started = Instant::now();
    for chunk in 0..layout::chunks(&set, cfg.per_file) {
        fs::write(
            manifests.join(layout::chunk_file(chunk * cfg.per_file, cfg.per_file)),
            layout::chunk_text(&set, chunk, cfg.per_file),
        )?;
    }
    fs::write(
        manifests.join("node.yaml"),
        layout::node_manifest(a.name(), a.ipv4()),
    )?;
    println!(
        "  manifests: {} files in {:.2} s",
        layout::chunks(&set, cfg.per_file) + 1,
        gen_started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut agent = Agent::start(cfg, &a, mode, &manifests, &scratch.0.join("kproxy.log"))?;
    match agent.wait_healthy(&a, cfg.timeout) {
        Ok(()) => rows.value("start_s", started.elapsed().as_secs_f64(), "s"),
        Err(e) if e.to_string() == "timeout" => {
            let t = cfg.timeout.as_secs_f64();
            rows.push("start_s", Some(t), "s", &format!("timeout: > {t} s"));
            return Ok(false);
        }
        Err(e) => {
            rows.failed("start_s", "s", &e.to_string());
            return Ok(true);
        }
    }
    match agent.syncs().iter().find(|s| s.full) {
        Some(s) => rows.value("agent_sync_s", s.elapsed.as_secs_f64(), "s"),
        None => rows.failed("agent_sync_s", "s", "no full `synced` line in the log"),
    }
    if let Some(cpu) = agent.cpu_secs() {
        rows.value("start_cpu_s", cpu, "s");
    }
    let syncs_before = agent.syncs().len();

    let mut probe = Probe::start(cfg, &cl, SocketAddr::new(layout::cluster_ip(0).into(), 80))?;
    // The target answers from p1 before anything changes, or the datapath is broken.
    if let Err(e) = probe.expect(p1.name(), Duration::from_secs(5)) {
        rows.failed(
            "change_p50_ms",
            "ms",
            &format!("the target never answered: {e}"),
        );
        return Ok(true);
    }
    changes(
        cfg,
        &mut set,
        &manifests,
        &mut probe,
        &[&p1, &p2],
        &agent,
        rows,
    );
    let agent_syncs: Vec<f64> = agent.syncs()[syncs_before..]
        .iter()
        .filter(|s| !s.full)
        .map(|s| s.elapsed.as_secs_f64() * 1e3)
        .collect();
    let mut v = agent_syncs.clone();
    let note = format!("{} partial syncs", v.len());
    rows.push("agent_change_p50_ms", quantile(&mut v, 0.5), "ms", &note);
    rows.push("agent_change_p99_ms", quantile(&mut v, 0.99), "ms", &note);

    churn(
        cfg,
        &mut set,
        &manifests,
        &mut probe,
        &[&p1, &p2],
        &mut agent,
        rows,
    );

    if let Some(rss) = agent.peak_rss_mib() {
        rows.value("rss_mib", rss, "MiB");
    }
    if let Some(cpu) = agent.cpu_secs() {
        rows.value("cpu_s", cpu, "s");
    }
    if !agent.is_running() {
        rows.failed(
            "agent",
            "",
            &format!("kproxy exited during the run: {}", agent.log_tail()),
        );
    }
    probe.quit();
    drop(agent);
    lab.close()?;
    Ok(true)
}

/// Flips the target's endpoint between the pods and rewrites its manifest file.
fn flip(
    cfg: &Config,
    set: &mut ServiceSet,
    manifests: &std::path::Path,
    pods: &[&Pod; 2],
) -> Result<String> {
    let current = set.services[0].endpoints[0];
    let next = if current == pod_ip(pods[0]) {
        pods[1]
    } else {
        pods[0]
    };
    set.services[0].endpoints = vec![pod_ip(next)];
    write_atomic(
        &manifests.join(layout::chunk_file(0, cfg.per_file)),
        &layout::chunk_text(set, 0, cfg.per_file),
    )?;
    Ok(next.name().to_owned())
}

fn changes(
    cfg: &Config,
    set: &mut ServiceSet,
    manifests: &std::path::Path,
    probe: &mut Probe,
    pods: &[&Pod; 2],
    agent: &Agent,
    rows: &mut Rows<'_>,
) {
    let mut took = Vec::new();
    let mut written = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut failure = None;
    let budget = Instant::now() + cfg.change_budget;
    for _ in 0..cfg.changes {
        if Instant::now() > budget {
            break;
        }
        // Changes arrive at random phases of the source's poll, not just after a sync.
        std::thread::sleep(jitter(&mut seed));
        let at = SystemTime::now();
        let result = flip(cfg, set, manifests, pods)
            .and_then(|name| probe.expect(&name, Duration::from_secs(30)));
        match result {
            Ok(d) => {
                took.push(d.as_secs_f64() * 1e3);
                written.push(at);
            }
            Err(e) => {
                failure = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let note = match &failure {
        Some(e) => format!("{} changes; then failed: {e}", took.len()),
        None => format!("{} changes", took.len()),
    };
    rows.push("change_p50_ms", quantile(&mut took, 0.5), "ms", &note);
    rows.push("change_p99_ms", quantile(&mut took, 0.99), "ms", &note);
    // The same changes seen from the agent's log: write to its `synced` line (the kernel
    // is updated when the line is written), without the probe.
    let syncs = agent.syncs();
    let mut from_log: Vec<f64> = written
        .iter()
        .filter_map(|w| {
            let s = syncs
                .iter()
                .find(|s| !s.full && s.at.is_some_and(|t| t >= *w))?;
            Some(s.at?.duration_since(*w).ok()?.as_secs_f64() * 1e3)
        })
        .collect();
    let note = format!(
        "{} changes, from the agent's log timestamps",
        from_log.len()
    );
    rows.push(
        "change_to_synced_p50_ms",
        quantile(&mut from_log, 0.5),
        "ms",
        &note,
    );
    rows.push(
        "change_to_synced_p99_ms",
        quantile(&mut from_log, 0.99),
        "ms",
        &note,
    );
}

/// A pseudo-random pause in [0, 250 ms) (xorshift; reproducible).
fn jitter(seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_micros(*seed % 250_000)
}

fn churn(
    cfg: &Config,
    set: &mut ServiceSet,
    manifests: &std::path::Path,
    probe: &mut Probe,
    pods: &[&Pod; 2],
    agent: &mut Agent,
    rows: &mut Rows<'_>,
) {
    let n = set.services.len();
    let chunks = layout::chunks(set, cfg.per_file);
    let mut max_ok: Option<u32> = None;
    let mut counter = 0usize;
    for &rate in &cfg.churn_rates {
        let cpu_before = agent.cpu_secs().unwrap_or(0.0);
        let started = Instant::now();
        let mut written = 0u32;
        let mut failed = None;
        while started.elapsed() < cfg.churn_duration && n > 1 {
            // Fillers outside the target's file when there are other files.
            let s = if chunks > 1 {
                cfg.per_file + counter % (n - cfg.per_file)
            } else {
                1 + counter % (n - 1)
            };
            counter += 1;
            let k = counter % 6;
            if let Some(ep) = set.services[s].endpoints.first_mut() {
                *ep = layout::filler_endpoint(s, 10 + k);
            }
            let chunk = s / cfg.per_file;
            if let Err(e) = write_atomic(
                &manifests.join(layout::chunk_file(s, cfg.per_file)),
                &layout::chunk_text(set, chunk, cfg.per_file),
            ) {
                failed = Some(e.to_string());
                break;
            }
            written += 1;
            let due = Duration::from_secs_f64(f64::from(written) / f64::from(rate));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let offered = f64::from(written) / started.elapsed().as_secs_f64();
        let lag = flip(cfg, set, manifests, pods)
            .and_then(|name| probe.expect(&name, Duration::from_secs(30)));
        let cpu = agent.cpu_secs().unwrap_or(0.0) - cpu_before;
        let metric = format!("churn_lag_ms@{rate}/s");
        match (lag, failed) {
            (Ok(d), None) => {
                rows.push(
                    &metric,
                    Some(d.as_secs_f64() * 1e3),
                    "ms",
                    &format!(
                        "offered {offered:.0}/s for {:.0} s; agent CPU {:.2} cores",
                        cfg.churn_duration.as_secs_f64(),
                        cpu / started.elapsed().as_secs_f64()
                    ),
                );
                if d < Duration::from_secs(1) {
                    max_ok = Some(max_ok.map_or(rate, |m| m.max(rate)));
                }
            }
            (Err(e), _) => rows.failed(&metric, "ms", &format!("{e:#}")),
            (_, Some(e)) => rows.failed(&metric, "ms", &e),
        }
    }
    rows.push(
        "churn_max_per_s",
        max_ok.map(f64::from),
        "1/s",
        "highest offered rate with the next change visible in < 1 s",
    );
}

/// The probe process in a pod (see [`super::load::probe`]).
struct Probe {
    _process: Process,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Probe {
    fn start(cfg: &Config, pod: &Pod, to: SocketAddr) -> Result<Probe> {
        let mut cmd = pod.command(&cfg.bench_bin)?;
        cmd.args(["probe", "--to", &to.to_string(), "--interval-us", "200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the probe")?;
        let stdin = child.stdin.take();
        let lines = line_channel(child.stdout.take().context("probe stdout")?);
        let probe = Probe {
            _process: Process::from_child(child, "probe"),
            stdin,
            lines,
        };
        match probe.lines.recv_timeout(Duration::from_secs(5)) {
            Ok(l) if l == "ready" => Ok(probe),
            other => bail!("the probe did not start: {other:?}"),
        }
    }

    /// Tells the probe to wait for `name` and returns how long it took to answer. Lines
    /// left over from an earlier expectation that timed out are skipped.
    fn expect(&mut self, name: &str, bound: Duration) -> Result<Duration> {
        while self.lines.try_recv().is_ok() {}
        let stdin = self.stdin.as_mut().context("probe closed")?;
        writeln!(stdin, "expect {name}")?;
        stdin.flush()?;
        let deadline = Instant::now() + bound;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| anyhow::anyhow!("{name} did not answer within {bound:?}"))?;
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some("seen"), Some(n), Some(us)) if n == name => {
                    return Ok(Duration::from_micros(us.parse()?));
                }
                (Some("seen"), Some(_), Some(_)) => {}
                _ => bail!("unexpected probe line {line:?}"),
            }
        }
    }

    fn quit(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "quit");
        }
    }
}

/// A baseline at `n` services: the full load, then partial changes. Ok(false) when the
/// full load ran past the bound.
fn baseline(cfg: &Config, mode: Mode, n: usize, rows: &mut Rows<'_>) -> Result<bool> {
    let tool = Tool::for_mode(mode)?;
    let lab = Lab::new("bench-control-plane")?;
    let scratch = Scratch::new(cfg, lab.id())?;
    let a = lab.add_node("a")?;
    let target: Vec<Ipv4Addr> = (0..cfg.endpoints)
        .map(|k| crate::lab::plan::pod_v4(1, u8::try_from(k % 250 + 1).expect("fits")))
        .collect();
    let mut set = ServiceSet::new(n, cfg.endpoints, target, CLUSTER_CIDR);
    let file = scratch.0.join("rules");
    let gen_started = Instant::now();
    fs::write(&file, tool.full(&set, a.ipv4()))?;
    println!(
        "  ruleset: {} MiB in {:.2} s",
        fs::metadata(&file)?.len() / (1 << 20),
        gen_started.elapsed().as_secs_f64()
    );
    let cpu_before = super::children_cpu_secs();
    match run_bounded(tool.command(&a, &file)?, cfg.timeout)? {
        Bounded::Done(d) => rows.value("start_s", d.as_secs_f64(), "s"),
        Bounded::Timeout => {
            let t = cfg.timeout.as_secs_f64();
            rows.push("start_s", Some(t), "s", &format!("timeout: > {t} s"));
            drop(scratch);
            lab.close()?;
            return Ok(false);
        }
        Bounded::Failed(e) => {
            rows.failed("start_s", "s", &e);
            return Ok(true);
        }
    }
    rows.value("cpu_s", super::children_cpu_secs() - cpu_before, "s");

    let mut latencies = Vec::new();
    let mut note = String::new();
    let budget = Instant::now() + cfg.change_budget;
    for i in 0..cfg.changes {
        if Instant::now() > budget {
            break;
        }
        let s = if n > 1 { 1 + (i * 7919) % (n - 1) } else { 0 };
        let old = set.services[s].endpoints[0];
        let new = layout::filler_endpoint(s, 10 + i % 6);
        if old == new {
            continue;
        }
        set.services[s].endpoints[0] = new;
        fs::write(&file, tool.partial(&set, s, old))?;
        match run_bounded(tool.partial_command(&a, &file)?, cfg.timeout)? {
            Bounded::Done(d) => latencies.push(d.as_secs_f64() * 1e3),
            Bounded::Timeout => {
                note = format!("timeout: a change took > {} s", cfg.timeout.as_secs_f64());
                break;
            }
            Bounded::Failed(e) => {
                note = format!("failed: {e}");
                break;
            }
        }
    }
    let note = if note.is_empty() {
        format!("{} changes", latencies.len())
    } else {
        format!("{} changes; {note}", latencies.len())
    };
    rows.push("change_p50_ms", quantile(&mut latencies, 0.5), "ms", &note);
    rows.push("change_p99_ms", quantile(&mut latencies, 0.99), "ms", &note);
    drop(scratch);
    lab.close()?;
    Ok(true)
}

/// How a baseline programs the kernel.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tool {
    IptablesRestore(&'static str),
    Nft,
}

impl Tool {
    pub(super) fn for_mode(mode: Mode) -> Result<Tool> {
        let tool = match mode {
            Mode::KubeIptables => Tool::IptablesRestore("iptables-restore"),
            Mode::KubeIptablesLegacy => Tool::IptablesRestore("iptables-legacy-restore"),
            Mode::KubeNftables => Tool::Nft,
            _ => bail!("{mode} is not a baseline"),
        };
        let program = match tool {
            Tool::IptablesRestore(p) => p,
            Tool::Nft => "nft",
        };
        if which(program).is_none() {
            bail!(
                "{program} is not installed (apt-get install {}; `cargo xtask bench` does it)",
                if program == "nft" {
                    "nftables"
                } else {
                    "iptables"
                }
            );
        }
        Ok(tool)
    }

    pub(super) fn full(self, set: &ServiceSet, node_ip: Ipv4Addr) -> String {
        match self {
            Tool::IptablesRestore(_) => layout::iptables_full(set),
            Tool::Nft => layout::nft_full(set, node_ip),
        }
    }

    fn partial(self, set: &ServiceSet, s: usize, old: Ipv4Addr) -> String {
        match self {
            Tool::IptablesRestore(_) => layout::iptables_partial(set, &set.services[s], old),
            Tool::Nft => layout::nft_partial(set, &set.services[s], old),
        }
    }

    /// The full load.
    pub(super) fn command(
        self,
        node: &Node,
        file: &std::path::Path,
    ) -> Result<std::process::Command> {
        self.partial_command(node, file)
    }

    /// kube-proxy restores with `--noflush` always; nft transactions are one `-f`.
    fn partial_command(self, node: &Node, file: &std::path::Path) -> Result<std::process::Command> {
        let mut cmd = match self {
            Tool::IptablesRestore(p) => {
                let mut c = node.command(p)?;
                c.arg("--noflush");
                c
            }
            Tool::Nft => {
                let mut c = node.command("nft")?;
                c.arg("-f");
                c
            }
        };
        cmd.arg(file);
        Ok(cmd)
    }
}

/// The path of `program` on PATH.
pub(super) fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = path.to_string_lossy();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
