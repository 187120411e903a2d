//! Results on disk: `<suite>.csv` (one row per measurement), `<suite>.md` (the run's
//! environment and one table per figure: sizes down, modes across) and
//! `<suite>-<figure>.svg` (each figure against the number of Services, log scale, one line
//! per mode). The SVG is written by hand: a few lines and labels need no plotting crate or
//! fonts.

use std::{collections::BTreeSet, fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Result;

use super::{Config, Row, Suite};

/// Where and when a run happened, printed first and kept in the table.
#[derive(Debug, Clone)]
pub struct Environment {
    /// `key: value` lines.
    pub lines: Vec<(String, String)>,
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Environment {
    /// Reads the machine, kernel, commit and tool versions, and records `cfg`.
    pub fn collect(cfg: &Config) -> Environment {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or_else(
                || "?".to_owned(),
                |kib| format!("{:.1} GiB", kib / 1_048_576.0),
            );
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "?".to_owned(), |m| m.trim().to_owned());
        let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let commit = command_line("git", &["rev-parse", "--short=12", "HEAD"]).map_or_else(
            || "unknown".to_owned(),
            |c| {
                let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} (with uncommitted changes)")
                } else {
                    c
                }
            },
        );
        let tools = [
            command_line("nft", &["--version"]),
            command_line("iptables", &["--version"])
                .or_else(|| command_line("/usr/sbin/iptables", &["--version"])),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
        let lines = vec![
            (
                "date".into(),
                command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            ),
            ("commit".into(), commit),
            (
                "kernel".into(),
                fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
            (
                "machine".into(),
                format!("{nproc} CPUs ({model}), {mem_gib} memory"),
            ),
            ("tools".into(), tools),
            (
                "suite".into(),
                format!(
                    "{}{}",
                    cfg.suite.name(),
                    if cfg.quick { " (quick)" } else { "" }
                ),
            ),
            (
                "services".into(),
                cfg.services
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("endpoints per service".into(), cfg.endpoints.to_string()),
            (
                "modes".into(),
                cfg.modes
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "bound per programming step".into(),
                format!("{} s", cfg.timeout.as_secs_f64()),
            ),
            ("parameters".into(), parameters(cfg)),
        ];
        Environment { lines }
    }

    /// The lines as plain text.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The suite's own parameters, one line.
fn parameters(cfg: &Config) -> String {
    let ms = |d: std::time::Duration| format!("{} ms", d.as_millis());
    match cfg.suite {
        Suite::ControlPlane => format!(
            "{} services per manifest file; {} changes (at most {} s) per size; churn {:?}/s for {} s each",
            cfg.per_file,
            cfg.changes,
            cfg.change_budget.as_secs(),
            cfg.churn_rates,
            cfg.churn_duration.as_secs_f64()
        ),
        Suite::Datapath => format!(
            "{} rounds of {} slices per scenario; {} concurrent connections",
            cfg.rounds,
            ms(cfg.slice),
            cfg.conns
        ),
    }
}

/// Figures plotted per suite: (metric, title, log-scale y).
fn figures(suite: Suite) -> &'static [(&'static str, &'static str, bool)] {
    match suite {
        Suite::ControlPlane => &[
            ("start_s", "start to fully programmed (s)", true),
            (
                "change_p99_ms",
                "endpoint change to kernel, end to end, p99 (ms)",
                true,
            ),
            ("agent_change_p99_ms", "agent partial sync, p99 (ms)", true),
            ("rss_mib", "agent peak RSS (MiB)", false),
            ("cpu_s", "CPU time (s)", true),
        ],
        Suite::Datapath => &[
            (
                "tcp_clusterip_vs_noproxy",
                "TCP connect rate to a ClusterIP / no-proxy node",
                false,
            ),
            (
                "tcp_pod_vs_noproxy",
                "TCP connect rate pod-to-pod / no-proxy node",
                false,
            ),
            (
                "udp_clusterip_vs_noproxy",
                "UDP new-flow rate to a ClusterIP / no-proxy node",
                false,
            ),
            (
                "tcp_nodeport_vs_noproxy",
                "external TCP rate to a NodePort / no-proxy node",
                false,
            ),
            (
                "tcp_clusterip_p99_us",
                "TCP to a ClusterIP, p99 latency (µs)",
                true,
            ),
            ("program_s", "time to program (s)", true),
        ],
    }
}

/// Formats a value with about three significant digits.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"").replace('\n', " "))
    } else {
        s.to_owned()
    }
}

/// The CSV text.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from("suite,mode,services,endpoints,metric,value,unit,note\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            r.suite,
            r.mode,
            r.services,
            r.endpoints,
            csv_field(&r.metric),
            r.value.map_or_else(String::new, |v| format!("{v}")),
            r.unit,
            csv_field(&r.note)
        );
    }
    out
}

fn cell(r: &Row) -> String {
    match r.value {
        Some(v) if r.note.starts_with("timeout") => format!("> {}", fmt_value(v)),
        Some(v) => fmt_value(v),
        None if r.note.starts_with("failed") => "failed".into(),
        None => "—".into(),
    }
}

/// The markdown text: environment, then one table per metric.
pub fn markdown(suite: Suite, env: &Environment, rows: &[Row]) -> String {
    let mut out = format!("# kproxy benchmark: {}\n\n", suite.name());
    for (k, v) in &env.lines {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let modes: Vec<String> = unique(rows.iter().map(|r| r.mode.clone()));
    let sizes: Vec<usize> = {
        let set: BTreeSet<usize> = rows.iter().map(|r| r.services).collect();
        set.into_iter().collect()
    };
    let metrics: Vec<String> = unique(rows.iter().map(|r| r.metric.clone()));
    for metric in &metrics {
        let unit = rows
            .iter()
            .find(|r| &r.metric == metric)
            .map_or("", |r| r.unit);
        let _ = write!(out, "\n### {metric} ({unit})\n\n| services |");
        for m in &modes {
            let _ = write!(out, " {m} |");
        }
        out.push_str("\n|---:|");
        out.push_str(&"---:|".repeat(modes.len()));
        out.push('\n');
        for n in &sizes {
            let _ = write!(out, "| {n} |");
            for m in &modes {
                let c = rows
                    .iter()
                    .find(|r| &r.metric == metric && &r.mode == m && r.services == *n)
                    .map_or_else(String::new, cell);
                let _ = write!(out, " {c} |");
            }
            out.push('\n');
        }
        if figures(suite).iter().any(|(f, ..)| f == metric) {
            let _ = writeln!(out, "\n![{metric}]({}-{metric}.svg)", suite.name());
        }
    }
    let notes: Vec<String> = unique(rows.iter().filter(|r| !r.note.is_empty()).map(|r| {
        format!(
            "{} at {} services, {}: {}",
            r.mode, r.services, r.metric, r.note
        )
    }));
    if !notes.is_empty() {
        out.push_str("\n### Notes\n\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One figure as SVG: `metric` against services, one line per mode.
#[expect(clippy::too_many_lines, reason = "one drawing, top to bottom")]
pub fn svg(metric: &str, title: &str, log_y: bool, rows: &[Row]) -> Option<String> {
    let points: Vec<&Row> = rows
        .iter()
        .filter(|r| r.metric == metric && r.value.is_some_and(|v| v > 0.0 || !log_y))
        .collect();
    if points.is_empty() {
        return None;
    }
    let modes = unique(points.iter().map(|r| r.mode.clone()));
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 190.0, 40.0, 50.0);
    #[expect(clippy::cast_precision_loss, reason = "service counts")]
    let xs: Vec<f64> = points
        .iter()
        .map(|r| (r.services.max(1) as f64).log10())
        .collect();
    let ys: Vec<f64> = points.iter().filter_map(|r| r.value).collect();
    let (mut x0, mut x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min),
        xs.iter().copied().fold(f64::MIN, f64::max),
    );
    if x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    let (y0, y1) = if log_y {
        let lo = ys.iter().copied().fold(f64::MAX, f64::min).log10().floor();
        let hi = ys.iter().copied().fold(f64::MIN, f64::max).log10().ceil();
        (lo, if hi - lo < 1.0 { lo + 1.0 } else { hi })
    } else {
        (0.0, ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.15)
    };
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| {
        let v = if log_y { y.log10() } else { y };
        h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        (left + w - right) / 2.0,
        xml(title)
    );
    // Axes, grid and ticks.
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let sizes: BTreeSet<usize> = points.iter().map(|r| r.services).collect();
    for n in sizes {
        #[expect(clippy::cast_precision_loss, reason = "service counts")]
        let x = px((n.max(1) as f64).log10());
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            h - bottom,
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">services (log scale)</text>",
        (left + w - right) / 2.0,
        h - 12.0
    );
    let ticks: Vec<f64> = if log_y {
        #[expect(clippy::cast_possible_truncation, reason = "small exponents")]
        let (lo, hi) = (y0 as i32, y1 as i32);
        (lo..=hi).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| y1 / 1.15 * f64::from(i) / 5.0).collect()
    };
    for t in ticks {
        let y = py(t);
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            fmt_value(t)
        );
    }
    // One line per mode; a timeout is an open triangle pointing up ("more than this").
    for (i, mode) in modes.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut series: Vec<&&Row> = points.iter().filter(|r| &r.mode == mode).collect();
        series.sort_by_key(|r| r.services);
        #[expect(clippy::cast_precision_loss, reason = "service counts")]
        let coords: Vec<(f64, f64, bool)> = series
            .iter()
            .map(|r| {
                (
                    px((r.services.max(1) as f64).log10()),
                    py(r.value.unwrap_or(0.0)),
                    r.note.starts_with("timeout"),
                )
            })
            .collect();
        let path: Vec<String> = coords
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y, timeout) in coords {
            if timeout {
                let _ = writeln!(
                    out,
                    "<path d=\"M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z\" fill=\"white\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                    x,
                    y - 7.0,
                    x - 6.0,
                    y + 4.0,
                    x + 6.0,
                    y + 4.0
                );
            } else {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\"/>"
                );
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "a handful of modes")]
        let ly = top + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"3\"/>\n<text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 12.0,
            w - right + 36.0,
            w - right + 42.0,
            ly + 4.0,
            xml(mode)
        );
    }
    if points.iter().any(|r| r.note.starts_with("timeout")) {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\">△ = more than (timed out)</text>",
            w - right + 12.0,
            h - bottom
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the CSV, the markdown table and the plots into `cfg.out_dir`.
pub fn write(cfg: &Config, env: &Environment, rows: &[Row]) -> Result<()> {
    let dir: &Path = &cfg.out_dir;
    let name = cfg.suite.name();
    fs::write(dir.join(format!("{name}.csv")), csv(rows))?;
    fs::write(
        dir.join(format!("{name}.md")),
        markdown(cfg.suite, env, rows),
    )?;
    for (metric, title, log_y) in figures(cfg.suite) {
        let path = dir.join(format!("{name}-{metric}.svg"));
        match svg(metric, title, *log_y, rows) {
            Some(text) => fs::write(path, text)?,
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, n: usize, metric: &str, value: Option<f64>, note: &str) -> Row {
        Row {
            suite: "control-plane",
            mode: mode.into(),
            services: n,
            endpoints: 10,
            metric: metric.into(),
            value,
            unit: "s",
            note: note.into(),
        }
    }

    #[test]
    fn csv_quotes_notes() {
        let text = csv(&[row("nftables", 10, "start_s", Some(0.5), "a, \"b\"")]);
        assert_eq!(
            text.lines().nth(1),
            Some("control-plane,nftables,10,10,start_s,0.5,s,\"a, \"\"b\"\"\"")
        );
    }

    #[test]
    fn markdown_pivots_and_marks_timeouts() {
        let rows = [
            row("nftables", 10, "start_s", Some(0.5), ""),
            row(
                "kube-iptables",
                10,
                "start_s",
                Some(120.0),
                "timeout: > 120 s",
            ),
            row("ebpf", 10, "start_s", None, "failed: no"),
        ];
        let env = Environment {
            lines: vec![("kernel".into(), "6.18".into())],
        };
        let md = markdown(Suite::ControlPlane, &env, &rows);
        assert!(
            md.contains("| services | nftables | kube-iptables | ebpf |"),
            "{md}"
        );
        assert!(md.contains("| 10 | 0.500 | > 120.0 | failed |"), "{md}");
        assert!(md.contains("![start_s](control-plane-start_s.svg)"));
        let svg = svg("start_s", "t", true, &rows).expect("plot");
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("more than"));
        assert!(super::svg("rss_mib", "t", false, &rows).is_none());
    }
}
