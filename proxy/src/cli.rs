//! The command line, with kube-proxy's flag names where they apply.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use kproxy_model::NodePortAddresses;

use crate::dataplane::ProxyMode;

/// kproxy: a kube-proxy replacement with nftables and eBPF datapaths.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log verbosity, as kube-proxy's klog levels: 0–1 info, 2–3 debug, 4+ trace.
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0)]
    pub verbosity: u8,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Remove everything kproxy installed in the kernel, then exit.
    Cleanup(CleanupArgs),
    /// Print the version.
    Version,
}

/// `kproxy run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which datapath to program.
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// Read Services, EndpointSlices and the Node from this directory of manifests instead
    /// of the Kubernetes API (watched; changes apply within about a second).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "master"])]
    pub manifests: Option<PathBuf>,
    /// kubeconfig file; without it and without --manifests, the in-cluster config is used.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, overriding the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// This node's name, instead of the hostname.
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// The cluster's pod CIDRs (comma-separated, one per family); traffic from outside
    /// them to a ClusterIP is masqueraded.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Addresses NodePorts answer on: `primary` (the node's primary IPs, the default) or
    /// comma-separated CIDRs of local addresses.
    #[arg(long, value_name = "primary|CIDRS", value_parser = parse_nodeport_addresses, default_value = "primary")]
    pub nodeport_addresses: NodePortAddresses,
    /// Masquerade all traffic to ClusterIPs.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub masquerade_all: bool,
    /// Minimum time between syncs (Go duration: 500ms, 1s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub min_sync_period: Duration,
    /// Maximum time between full resyncs.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub sync_period: Duration,
    /// Address of the health server (`/healthz`, `/livez`).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Address of the metrics server (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// eBPF: the cgroup v2 the socket programs attach to.
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// eBPF: devices the tc programs attach to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// eBPF: where maps and links are pinned.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/kproxy")]
    pub bpffs: PathBuf,
}

/// `kproxy cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Which datapath to remove.
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// eBPF: where maps and links are pinned.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/kproxy")]
    pub bpffs: PathBuf,
    /// eBPF: the cgroup v2 the socket programs are attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
}

/// Parses `--nodeport-addresses`.
pub fn parse_nodeport_addresses(s: &str) -> Result<NodePortAddresses, String> {
    if s.trim() == "primary" {
        return Ok(NodePortAddresses::Primary);
    }
    s.split(',')
        .map(|c| {
            c.trim()
                .parse::<IpNet>()
                .map_err(|e| format!("{c:?} is neither `primary` nor a CIDR: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(NodePortAddresses::Cidrs)
}

/// Parses a Go duration (`300ms`, `1.5s`, `2m`, `1h30m`), as kube-proxy's flags take them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unit {unit:?} (use ns, us, ms, s, m, h)"
                ));
            }
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn nodeport_addresses() {
        assert_eq!(
            parse_nodeport_addresses("primary"),
            Ok(NodePortAddresses::Primary)
        );
        assert_eq!(
            parse_nodeport_addresses("198.18.0.0/24, 2001:db8::/64"),
            Ok(NodePortAddresses::Cidrs(vec![
                "198.18.0.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ]))
        );
        assert!(parse_nodeport_addresses("nonsense").is_err());
    }

    #[test]
    fn kube_proxy_style_flags_parse() {
        let cli = Cli::try_parse_from([
            "kproxy",
            "run",
            "--proxy-mode=nftables",
            "--manifests=/tmp/m",
            "--masquerade-all=true",
            "--cluster-cidr=100.64.0.0/16,2001:db8:64::/48",
            "--min-sync-period=500ms",
            "--hostname-override=n1",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert!(args.masquerade_all);
        assert_eq!(args.cluster_cidr.len(), 2);
        assert_eq!(args.min_sync_period, Duration::from_millis(500));
        assert_eq!(args.sync_period, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["kproxy", "run", "--no-such-flag"]).is_err());
    }
}
