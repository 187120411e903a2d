//! `kproxy-bench`: the benchmark driver and its traffic programs.
//!
//! ```text
//! kproxy-bench run SUITE --kproxy PATH [--services N,...] [--endpoints M] [--modes M,...]
//!     [--quick] [--out DIR] [--timeout SECS] [--per-file N] [--changes N]
//!     [--rounds N] [--slice-ms MS] [--conns N]
//!     Runs a suite (control-plane, datapath) as root; see kproxy_tests::bench.
//! kproxy-bench serve --name NAME --tcp PORT --udp PORT [--threads N]
//! kproxy-bench load --proto tcp|udp --to ADDR [--conns N] [--ms MS]
//! kproxy-bench probe --to ADDR [--interval-us US]
//! ```
//!
//! `cargo xtask bench` builds everything and calls `run`; the other subcommands are what
//! the driver starts inside lab pods.

use std::{
    collections::HashMap, io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use kproxy_tests::bench::{
    self, Config, Mode, Suite,
    load::{self, Proto},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kproxy-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs, and bare `--flag`s as "true".
fn flags(args: &[String], bare: &[&str]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            bail!("unexpected argument {a:?}");
        };
        if bare.contains(&name) {
            out.insert(name.to_owned(), "true".to_owned());
        } else {
            let v = it
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            out.insert(name.to_owned(), v.clone());
        }
    }
    Ok(out)
}

fn get<T: std::str::FromStr>(f: &HashMap<String, String>, name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    f.get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}"))
        })
        .transpose()
}

/// `1`, `1000`, `1k`, `100k`, `1m`.
fn count(s: &str) -> Result<usize> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.strip_suffix('k') {
        Some(n) => (n, 1_000),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 1_000_000),
            None => (s.as_str(), 1),
        },
    };
    Ok(num
        .parse::<usize>()
        .with_context(|| format!("{s:?} is not a count"))?
        * mul)
}

fn dispatch(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("serve") => {
            let f = flags(&args[1..], &[])?;
            let name = f.get("name").context("--name")?.clone();
            let tcp = get::<u16>(&f, "tcp")?.context("--tcp")?;
            let udp = get::<u16>(&f, "udp")?.context("--udp")?;
            let threads = get::<usize>(&f, "threads")?.unwrap_or(2);
            load::serve(&name, tcp, udp, threads, || {
                println!("ready");
                let _ = std::io::stdout().flush();
            })
            .context("serving")
        }
        Some("load") => {
            let f = flags(&args[1..], &[])?;
            let proto = match f.get("proto").map(String::as_str) {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                other => bail!("--proto tcp|udp, not {other:?}"),
            };
            let to = get::<SocketAddr>(&f, "to")?.context("--to")?;
            let conns = get::<usize>(&f, "conns")?.unwrap_or(8);
            let ms = get::<u64>(&f, "ms")?.unwrap_or(1000);
            let r = load::generate(proto, to, conns, Duration::from_millis(ms));
            println!("{}", r.to_line());
            Ok(())
        }
        Some("probe") => {
            let f = flags(&args[1..], &[])?;
            let to = get::<SocketAddr>(&f, "to")?.context("--to")?;
            let us = get::<u64>(&f, "interval-us")?.unwrap_or(200);
            load::probe(to, Duration::from_micros(us)).context("probing")
        }
        _ => bail!("usage: kproxy-bench run|serve|load|probe ... (see the source's header)"),
    }
}

fn run(args: &[String]) -> Result<()> {
    let suite: Suite = args
        .first()
        .context("which suite: control-plane or datapath")?
        .parse()
        .map_err(anyhow::Error::msg)?;
    let f = flags(&args[1..], &["quick"])?;
    let kproxy: PathBuf = get(&f, "kproxy")?.context("--kproxy PATH")?;
    let bench_bin = std::env::current_exe().context("finding kproxy-bench itself")?;
    let mut cfg = Config::new(suite, f.contains_key("quick"), kproxy, bench_bin);
    if let Some(s) = f.get("services") {
        cfg.services = s.split(',').map(count).collect::<Result<_>>()?;
    }
    if let Some(m) = f.get("modes") {
        cfg.modes = m
            .split(',')
            .map(|m| m.trim().parse::<Mode>().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
    }
    if let Some(e) = get::<usize>(&f, "endpoints")? {
        cfg.endpoints = e;
    }
    if let Some(d) = get::<PathBuf>(&f, "out")? {
        cfg.out_dir = d;
    }
    if let Some(t) = get::<f64>(&f, "timeout")? {
        cfg.timeout = Duration::from_secs_f64(t);
    }
    if let Some(p) = get::<usize>(&f, "per-file")? {
        cfg.per_file = p.max(1);
    }
    if let Some(c) = get::<usize>(&f, "changes")? {
        cfg.changes = c;
    }
    if let Some(r) = get::<usize>(&f, "rounds")? {
        cfg.rounds = r.max(1);
    }
    if let Some(ms) = get::<u64>(&f, "slice-ms")? {
        cfg.slice = Duration::from_millis(ms);
    }
    if let Some(c) = get::<usize>(&f, "conns")? {
        cfg.conns = c.max(1);
    }
    bench::run(&cfg)?;
    Ok(())
}
