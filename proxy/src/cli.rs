//! The command line, with kube-proxy's flag names where they apply.

use std::{collections::BTreeSet, ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{
    ArgAction, ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand,
    ValueEnum,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};
use ipnet::IpNet;
use kproxy_model::NodePortAddresses;

use crate::dataplane::ProxyMode;

/// kproxy: a kube-proxy replacement with nftables and eBPF datapaths.
///
/// Without a subcommand, kproxy runs the proxy with the flags given, as kube-proxy does, so
/// kube-proxy's DaemonSet command line works unchanged.
#[derive(Debug, Parser)]
#[command(
    name = "kproxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; none means `run` with the flags given at the top level.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `kproxy [FLAGS]`, kube-proxy's own invocation: the same as `kproxy run [FLAGS]`.
    #[command(flatten)]
    pub run: RunArgs,
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
    /// Print what the kernel's datapath holds now (works while the agent is down).
    Dump(DumpArgs),
    /// Print the version.
    Version,
}

/// `kproxy run`. Arg ids are the field names; [`Explicit`] and the config file refer to them.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file. Flags given on the
    /// command line override its fields; fields kproxy has no use for are warned about.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Remove everything kproxy installed for --proxy-mode and exit (kube-proxy's flag;
    /// the same as `kproxy cleanup`).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub cleanup: bool,
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
    /// eBPF: the cgroup v2 the socket programs attach to (default: the cgroup2 root; when
    /// none is mounted, kproxy mounts one at /run/kproxy/cgroupv2, as Cilium does).
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// eBPF: devices the tc programs attach to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// eBPF: a bpf filesystem; kproxy pins its maps and links under `<bpffs>/kproxy/`
    /// (and mounts a bpffs there when the path is not on one).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// `kproxy cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Which datapath to remove.
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// eBPF: a bpf filesystem; kproxy pins its maps and links under `<bpffs>/kproxy/`
    /// (and mounts a bpffs there when the path is not on one).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// eBPF: the cgroup v2 the socket programs are attached to.
    #[arg(long, value_name = "PATH")]
    pub cgroup_path: Option<PathBuf>,
}

/// `--output` of `kproxy dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON document for tools.
    Json,
}

/// `kproxy dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Which datapath to read.
    #[arg(long, value_enum, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// eBPF: a bpf filesystem; kproxy pins its maps and links under `<bpffs>/kproxy/`
    /// (and mounts a bpffs there when the path is not on one).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

impl RunArgs {
    /// What `--cleanup` removes: the same mode and eBPF paths as this run would use.
    pub fn cleanup_args(&self) -> CleanupArgs {
        CleanupArgs {
            proxy_mode: self.proxy_mode,
            bpffs: self.bpffs.clone(),
            cgroup_path: self.cgroup_path.clone(),
        }
    }
}

/// Which `kproxy run` flags were given on the command line (not defaulted): only those
/// override the config file, as kube-proxy does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explicit(BTreeSet<String>);

impl Explicit {
    /// Whether the arg with this id (the [`RunArgs`] field name) was on the command line.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    fn of(matches: &ArgMatches) -> Self {
        Self(
            matches
                .ids()
                .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_owned())
                .collect(),
        )
    }
}

/// Parses `args` (argv, program name first). Help and version requests and bad flags come
/// back as errors for [`clap::Error::exit`]; unknown flags carry advice on what to do.
pub fn parse_from<I, T>(args: I) -> Result<(Cli, Explicit), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = Cli::command();
    let matches = match command.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(e) => return Err(advise(e, &mut command)),
    };
    let cli = Cli::from_arg_matches(&matches)?;
    let explicit = match matches.subcommand() {
        Some(("run", sub)) => Explicit::of(sub),
        _ => Explicit::of(&matches),
    };
    Ok((cli, explicit))
}

/// kube-proxy flags kproxy does not take, and what to do instead.
const KUBE_PROXY_FLAGS: &[(&str, &str)] = &[
    ("iptables-sync-period", "use --sync-period"),
    ("ipvs-sync-period", "use --sync-period"),
    ("iptables-min-sync-period", "use --min-sync-period"),
    ("ipvs-min-sync-period", "use --min-sync-period"),
    ("logging-format", "use --log-format"),
    (
        "iptables-masquerade-bit",
        "kproxy uses kube-proxy's default mark bit 14; remove the flag",
    ),
    (
        "conntrack-max-per-core",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-min",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-tcp-timeout-established",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-tcp-timeout-close-wait",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-tcp-be-liberal",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-udp-timeout",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "conntrack-udp-timeout-stream",
        "kproxy leaves conntrack sizing and timeouts to the node (set the sysctls there); remove the flag",
    ),
    (
        "detect-local-mode",
        "kproxy detects local traffic by --cluster-cidr only; remove the flag",
    ),
    (
        "pod-bridge-interface",
        "kproxy detects local traffic by --cluster-cidr only; remove the flag",
    ),
    (
        "pod-interface-name-prefix",
        "kproxy detects local traffic by --cluster-cidr only; remove the flag",
    ),
    (
        "iptables-localhost-nodeports",
        "kproxy never serves NodePorts on localhost (as kube-proxy's nftables mode); remove the flag",
    ),
    (
        "feature-gates",
        "kproxy has no feature gates: every feature it implements is on; remove the flag",
    ),
    (
        "init-only",
        "kproxy has no separate init step; remove the flag",
    ),
    (
        "write-config-to",
        "not supported; write the KubeProxyConfiguration by hand (see deploy/)",
    ),
    (
        "bind-address",
        "kproxy takes the node's primary IPs from its Node object; remove the flag",
    ),
    (
        "bind-address-hard-fail",
        "kproxy always fails when it cannot bind its servers; remove the flag",
    ),
    (
        "oom-score-adj",
        "set the pod's priority class instead (deploy/ uses system-node-critical); remove the flag",
    ),
    (
        "profiling",
        "kproxy serves no pprof handlers; remove the flag",
    ),
    (
        "config-sync-period",
        "kproxy watches without periodic relists; remove the flag",
    ),
    (
        "kube-api-qps",
        "kproxy's API client needs no rate settings; remove the flag",
    ),
    (
        "kube-api-burst",
        "kproxy's API client needs no rate settings; remove the flag",
    ),
    (
        "kube-api-content-type",
        "kproxy's API client needs no rate settings; remove the flag",
    ),
    (
        "show-hidden-metrics-for-version",
        "kproxy has no hidden metrics; remove the flag",
    ),
    ("ipvs-scheduler", "kproxy has no ipvs mode; remove the flag"),
    (
        "ipvs-exclude-cidrs",
        "kproxy has no ipvs mode; remove the flag",
    ),
    (
        "ipvs-strict-arp",
        "kproxy has no ipvs mode; remove the flag",
    ),
    (
        "ipvs-tcp-timeout",
        "kproxy has no ipvs mode; remove the flag",
    ),
    (
        "ipvs-tcpfin-timeout",
        "kproxy has no ipvs mode; remove the flag",
    ),
    (
        "ipvs-udp-timeout",
        "kproxy has no ipvs mode; remove the flag",
    ),
    (
        "proxy-port-range",
        "unused since kube-proxy's userspace mode; remove the flag",
    ),
];

/// Adds advice to an unknown-flag error: what kproxy offers instead of a kube-proxy flag,
/// or where to find the flags it takes.
fn advise(mut err: clap::Error, command: &mut clap::Command) -> clap::Error {
    if err.kind() != ErrorKind::UnknownArgument {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg).cloned() else {
        return err;
    };
    let name = arg.trim_start_matches('-');
    let name = name.split_once('=').map_or(name, |(n, _)| n);
    let advice = KUBE_PROXY_FLAGS
        .iter()
        .find(|(flag, _)| *flag == name)
        .map_or_else(
            || {
                format!(
                    "kproxy does not know {arg}; `kproxy run --help` lists the flags it takes \
                 (kube-proxy's names where they apply)"
                )
            },
            |(_, advice)| format!("kube-proxy's --{name} is not a kproxy flag: {advice}"),
        );
    err = command.error(
        ErrorKind::UnknownArgument,
        format!("unexpected argument '{arg}'\n\n  tip: {advice}"),
    );
    err
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
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_mins(90)));
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
        let Some(Command::Run(args)) = cli.command else {
            panic!("run")
        };
        assert!(args.masquerade_all);
        assert_eq!(args.cluster_cidr.len(), 2);
        assert_eq!(args.min_sync_period, Duration::from_millis(500));
        assert_eq!(args.sync_period, Duration::from_secs(30));
        assert!(Cli::try_parse_from(["kproxy", "run", "--no-such-flag"]).is_err());
    }

    #[test]
    fn bare_flags_run_as_kube_proxy_does_and_explicit_flags_are_known() {
        let (cli, explicit) = parse_from([
            "kube-proxy",
            "--config=/var/lib/kube-proxy/config.conf",
            "--hostname-override=n1",
            "--v=2",
        ])
        .expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.hostname_override.as_deref(), Some("n1"));
        assert_eq!(cli.verbosity, 2);
        assert!(explicit.contains("hostname_override"));
        assert!(explicit.contains("config"));
        assert!(
            !explicit.contains("sync_period"),
            "defaults are not explicit"
        );

        let (cli, explicit) =
            parse_from(["kproxy", "run", "--sync-period=1m", "--cleanup"]).expect("parses");
        let Some(Command::Run(args)) = cli.command else {
            panic!("run")
        };
        assert!(args.cleanup);
        assert!(explicit.contains("sync_period"));
        assert!(!explicit.contains("min_sync_period"));
    }

    #[test]
    fn unknown_flags_say_what_to_do() {
        let err = parse_from(["kproxy", "--iptables-sync-period=30s"]).expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("use --sync-period"), "{text}");
        let err = parse_from(["kproxy", "run", "--conntrack-min", "5"]).expect_err("unknown");
        assert!(err.to_string().contains("conntrack"), "{err}");
        let err = parse_from(["kproxy", "run", "--bogus"]).expect_err("unknown");
        assert!(err.to_string().contains("kproxy run --help"), "{err}");
    }

    #[test]
    fn dump_flags() {
        let (cli, _) = parse_from(["kproxy", "dump", "-o", "json"]).expect("parses");
        let Some(Command::Dump(args)) = cli.command else {
            panic!("dump")
        };
        assert_eq!(args.output, OutputFormat::Json);
        assert_eq!(args.proxy_mode, ProxyMode::Nftables);
    }
}
