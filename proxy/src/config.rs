//! `--config`: kube-proxy's KubeProxyConfiguration (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! An operator swapping kube-proxy's image keeps its ConfigMap, so kproxy reads the same
//! file. Fields with a kproxy meaning are honoured; flags given on the command line
//! override them, as in kube-proxy. Every other field that asks for something (a value
//! other than its zero value or kube-proxy's default) gets one warning naming it, and is
//! otherwise ignored: the proxy still starts. A value kproxy cannot parse in an honoured
//! field is an error, as kube-proxy's validation makes it one.
//!
//! Sync periods and masquerade-all live in the mode's sub-struct in v1alpha1; as
//! kube-proxy's conversion does, the struct the file's `mode` names is read: `iptables`
//! for `""` and `iptables` (kube-proxy's default mode), `ipvs` for `ipvs`, `nftables` for
//! `nftables` and `ebpf`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use kproxy_model::NodePortAddresses;
use serde_json::{Map, Value};

use crate::{
    cli::{Explicit, RunArgs, parse_duration},
    dataplane::ProxyMode,
};

/// The only group/version kproxy reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only kind kproxy reads.
pub const KIND: &str = "KubeProxyConfiguration";

/// A config file kproxy cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML (or JSON), or not a mapping.
    #[error("config file {path} is not a YAML mapping: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// `apiVersion` or `kind` is not KubeProxyConfiguration v1alpha1.
    #[error("config file {path} holds {found}; kproxy reads {KIND} {API_VERSION}")]
    Kind {
        /// The file.
        path: PathBuf,
        /// `apiVersion kind` as found.
        found: String,
    },
    /// An honoured field has a value kproxy cannot use.
    #[error("config file {path}: field {field}: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Dotted field path (`nftables.syncPeriod`).
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
}

/// The honoured fields a config file sets; None where it sets nothing (absent, null, or
/// the zero value, which kube-proxy treats as "use the default").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `mode`.
    pub proxy_mode: Option<ProxyMode>,
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `hostnameOverride`.
    pub hostname_override: Option<String>,
    /// `clusterCIDR` (comma-separated, one per family).
    pub cluster_cidr: Option<Vec<IpNet>>,
    /// `nodePortAddresses`.
    pub nodeport_addresses: Option<NodePortAddresses>,
    /// `<mode>.masqueradeAll`.
    pub masquerade_all: Option<bool>,
    /// `<mode>.minSyncPeriod`.
    pub min_sync_period: Option<Duration>,
    /// `<mode>.syncPeriod`.
    pub sync_period: Option<Duration>,
    /// `healthzBindAddress`.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `metricsBindAddress`.
    pub metrics_bind_address: Option<SocketAddr>,
    /// One line per ignored field that asks for something, naming it and why; the caller
    /// logs them once at start.
    pub warnings: Vec<String>,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses a config file's text; `path` is for messages.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let Value::Object(root) = value else {
        return Err(ConfigError::Syntax {
            path: path.to_owned(),
            reason: "the document is not a mapping".into(),
        });
    };
    Reader {
        path,
        out: FileConfig::default(),
    }
    .read(&root)
}

/// Overrides `args` with what the file sets, except where the command line was explicit.
pub fn apply(args: &mut RunArgs, file: FileConfig, explicit: &Explicit) {
    fn set<T>(explicit: &Explicit, id: &str, slot: &mut T, value: Option<T>) {
        if let Some(v) = value
            && !explicit.contains(id)
        {
            *slot = v;
        }
    }
    set(
        explicit,
        "proxy_mode",
        &mut args.proxy_mode,
        file.proxy_mode,
    );
    if args.manifests.is_none() && !explicit.contains("kubeconfig") {
        args.kubeconfig = file.kubeconfig.or(args.kubeconfig.take());
    }
    if !explicit.contains("hostname_override") && file.hostname_override.is_some() {
        args.hostname_override = file.hostname_override;
    }
    set(
        explicit,
        "cluster_cidr",
        &mut args.cluster_cidr,
        file.cluster_cidr,
    );
    set(
        explicit,
        "nodeport_addresses",
        &mut args.nodeport_addresses,
        file.nodeport_addresses,
    );
    set(
        explicit,
        "masquerade_all",
        &mut args.masquerade_all,
        file.masquerade_all,
    );
    set(
        explicit,
        "min_sync_period",
        &mut args.min_sync_period,
        file.min_sync_period,
    );
    set(
        explicit,
        "sync_period",
        &mut args.sync_period,
        file.sync_period,
    );
    set(
        explicit,
        "healthz_bind_address",
        &mut args.healthz_bind_address,
        file.healthz_bind_address,
    );
    set(
        explicit,
        "metrics_bind_address",
        &mut args.metrics_bind_address,
        file.metrics_bind_address,
    );
}

/// Top-level fields kproxy has no use for, with kube-proxy's default (a file that sets
/// the default asks for nothing) and why kproxy ignores them.
const IGNORED: &[(&str, Option<&str>, &str)] = &[
    (
        "bindAddress",
        Some("0.0.0.0"),
        "kproxy takes the node's primary IPs from its Node object",
    ),
    (
        "bindAddressHardFail",
        None,
        "kproxy always fails when it cannot bind its servers",
    ),
    ("enableProfiling", None, "kproxy serves no pprof handlers"),
    (
        "showHiddenMetricsForVersion",
        None,
        "kproxy has no hidden metrics",
    ),
    (
        "featureGates",
        None,
        "kproxy has no feature gates: every feature it implements is on",
    ),
    ("logging", None, "use the -v and --log-format flags"),
    (
        "detectLocalMode",
        Some("ClusterCIDR"),
        "kproxy detects local traffic by clusterCIDR only",
    ),
    (
        "detectLocal",
        None,
        "kproxy detects local traffic by clusterCIDR only",
    ),
    (
        "oomScoreAdj",
        Some("-999"),
        "set the pod's priority class instead",
    ),
    (
        "conntrack",
        None,
        "kproxy leaves conntrack sizing and timeouts to the node's sysctls",
    ),
    (
        "configSyncPeriod",
        Some("15m0s"),
        "kproxy watches without periodic relists",
    ),
    (
        "portRange",
        None,
        "unused since kube-proxy's userspace mode",
    ),
    ("winkernel", None, "Windows only"),
    ("windowsRunAsService", None, "Windows only"),
];

/// `clientConnection` fields other than `kubeconfig`, with kube-proxy's defaults.
const IGNORED_CLIENT: &[(&str, Option<&str>)] = &[
    ("qps", Some("5")),
    ("burst", Some("10")),
    ("contentType", Some("application/vnd.kubernetes.protobuf")),
    ("acceptContentTypes", None),
];

/// Mode sub-struct fields other than the honoured ones, with kube-proxy's defaults.
const IGNORED_MODE: &[(&str, Option<&str>)] = &[
    ("masqueradeBit", Some("14")),
    ("localhostNodePorts", Some("true")),
    ("snatNodeInternalIP", None),
    ("scheduler", None),
    ("excludeCIDRs", None),
    ("strictARP", None),
    ("tcpTimeout", None),
    ("tcpFinTimeout", None),
    ("udpTimeout", None),
];

struct Reader<'a> {
    path: &'a Path,
    out: FileConfig,
}

impl Reader<'_> {
    fn read(mut self, root: &Map<String, Value>) -> Result<FileConfig, ConfigError> {
        let api_version = root.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = root.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != API_VERSION || kind != KIND {
            return Err(ConfigError::Kind {
                path: self.path.to_owned(),
                found: format!("{api_version:?} {kind:?}"),
            });
        }
        let mode = self.string(root, "", "mode")?.unwrap_or_default();
        let (proxy_mode, mode_struct) = match mode.as_str() {
            "" => (None, "iptables"),
            "nftables" => (Some(ProxyMode::Nftables), "nftables"),
            "ebpf" => (Some(ProxyMode::Ebpf), "nftables"),
            "iptables" | "ipvs" => {
                self.out.warnings.push(format!(
                    "config field mode: {mode:?} is not a kproxy mode; using nftables, which \
                     implements the same Service semantics"
                ));
                (Some(ProxyMode::Nftables), mode.as_str())
            }
            other => return Err(self.field("mode", format!("{other:?} is not nftables or ebpf"))),
        };
        let mode_struct = mode_struct.to_owned();
        self.out.proxy_mode = proxy_mode;

        for (key, value) in root {
            match key.as_str() {
                "apiVersion" | "kind" | "mode" => {}
                "hostnameOverride" => {
                    self.out.hostname_override =
                        self.string(root, "", key)?.map(|h| h.to_lowercase());
                }
                "clusterCIDR" => {
                    if let Some(s) = self.string(root, "", key)? {
                        let cidrs = s
                            .split(',')
                            .map(|c| c.trim().parse::<IpNet>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| self.field(key, format!("{s:?}: {e}")))?;
                        self.out.cluster_cidr = Some(cidrs);
                    }
                }
                "nodePortAddresses" => self.nodeport_addresses(value)?,
                "healthzBindAddress" => {
                    self.out.healthz_bind_address = self.bind_address(root, key, 10256)?;
                }
                "metricsBindAddress" => {
                    self.out.metrics_bind_address = self.bind_address(root, key, 10249)?;
                }
                "clientConnection" => self.client_connection(value)?,
                "iptables" | "ipvs" | "nftables" => {
                    self.mode_struct(key, value, *key == mode_struct)?;
                }
                other => self.ignored_top(other, value),
            }
        }
        Ok(self.out)
    }

    fn field(&self, field: &str, reason: String) -> ConfigError {
        ConfigError::Field {
            path: self.path.to_owned(),
            field: field.to_owned(),
            reason,
        }
    }

    /// A string field; None when absent, null or empty.
    fn string(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.field(
                &format!("{prefix}{key}"),
                format!("{other} is not a string"),
            )),
        }
    }

    fn bind_address(
        &self,
        root: &Map<String, Value>,
        key: &str,
        default_port: u16,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(s) = self.string(root, "", key)? else {
            return Ok(None);
        };
        // kube-proxy accepts a bare IP and adds the default port.
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Some(addr));
        }
        s.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .map(|ip| Some(SocketAddr::new(ip, default_port)))
            .map_err(|_| self.field(key, format!("{s:?} is not IP:port")))
    }

    fn nodeport_addresses(&mut self, value: &Value) -> Result<(), ConfigError> {
        let items: Vec<&str> = match value {
            Value::Null => return Ok(()),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        self.field("nodePortAddresses", format!("{v} is not a string"))
                    })
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(self.field("nodePortAddresses", format!("{other} is not a list")));
            }
        };
        if items.is_empty() {
            return Ok(());
        }
        if items == ["primary"] {
            self.out.nodeport_addresses = Some(NodePortAddresses::Primary);
            return Ok(());
        }
        let mut cidrs = Vec::new();
        for item in items {
            match item {
                // kube-proxy's keywords, spelled out as CIDRs.
                "all" => cidrs
                    .extend(["0.0.0.0/0", "::/0"].map(|c| c.parse::<IpNet>().expect("literal"))),
                "primary" => {
                    return Err(self.field(
                        "nodePortAddresses",
                        "kproxy takes `primary` alone, not mixed with CIDRs".into(),
                    ));
                }
                "localhost" => self.out.warnings.push(
                    "config field nodePortAddresses: `localhost` ignored: kproxy never serves \
                     NodePorts on loopback addresses (as kube-proxy's nftables mode)"
                        .into(),
                ),
                cidr => cidrs.push(cidr.parse().map_err(|e| {
                    self.field("nodePortAddresses", format!("{cidr:?} is not a CIDR: {e}"))
                })?),
            }
        }
        self.out.nodeport_addresses = Some(NodePortAddresses::Cidrs(cidrs));
        Ok(())
    }

    fn client_connection(&mut self, value: &Value) -> Result<(), ConfigError> {
        let Some(map) = self.mapping("clientConnection", value)? else {
            return Ok(());
        };
        for (key, v) in map {
            if key == "kubeconfig" {
                self.out.kubeconfig = self
                    .string(map, "clientConnection.", key)?
                    .map(PathBuf::from);
                continue;
            }
            let default = IGNORED_CLIENT
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, d)| *d);
            if asks_for_something(v, default) {
                self.out.warnings.push(format!(
                    "config field clientConnection.{key} ignored: kproxy's API client needs no \
                     rate or encoding settings"
                ));
            }
        }
        Ok(())
    }

    /// `iptables`, `ipvs` or `nftables`; only the one the mode selects is read.
    fn mode_struct(
        &mut self,
        name: &str,
        value: &Value,
        selected: bool,
    ) -> Result<(), ConfigError> {
        let Some(map) = self.mapping(name, value)? else {
            return Ok(());
        };
        for (key, v) in map {
            let dotted = format!("{name}.{key}");
            match (key.as_str(), selected) {
                ("syncPeriod", true) => self.out.sync_period = self.duration(&dotted, v)?,
                // Zero means "default" in a file (kube-proxy's defaulting), so a file cannot
                // ask for a sync on every change; `--min-sync-period=0` can.
                ("minSyncPeriod", true) => self.out.min_sync_period = self.duration(&dotted, v)?,
                ("masqueradeAll", true) => match v {
                    Value::Bool(b) => self.out.masquerade_all = Some(*b),
                    Value::Null => {}
                    other => return Err(self.field(&dotted, format!("{other} is not a boolean"))),
                },
                ("syncPeriod" | "minSyncPeriod" | "masqueradeAll", false) => {
                    // Another mode's settings: kube-proxy ignores them too.
                }
                (other, _) => {
                    let default = IGNORED_MODE
                        .iter()
                        .find(|(k, _)| *k == other)
                        .and_then(|(_, d)| *d);
                    if asks_for_something(v, default) {
                        self.out.warnings.push(format!(
                            "config field {dotted} ignored: kproxy has no such setting"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn mapping<'v>(
        &self,
        field: &str,
        value: &'v Value,
    ) -> Result<Option<&'v Map<String, Value>>, ConfigError> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(map)),
            other => Err(self.field(field, format!("{other} is not a mapping"))),
        }
    }

    /// A Go duration; None for null, "" and zero.
    fn duration(&self, field: &str, value: &Value) -> Result<Option<Duration>, ConfigError> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => {
                let d = parse_duration(s).map_err(|e| self.field(field, e))?;
                Ok((!d.is_zero()).then_some(d))
            }
            other => Err(self.field(field, format!("{other} is not a duration such as 30s"))),
        }
    }

    fn ignored_top(&mut self, key: &str, value: &Value) {
        let (default, why) = IGNORED
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or((None, "kproxy does not know this field"), |(_, d, why)| {
                (*d, *why)
            });
        if asks_for_something(value, default) {
            self.out
                .warnings
                .push(format!("config field {key} ignored: {why}"));
        }
    }
}

/// Whether a field's value requests anything: not null, not a zero value ("", false, 0,
/// empty list or mapping, or a mapping of only such values), and not kube-proxy's default.
fn asks_for_something(value: &Value, default: Option<&str>) -> bool {
    let as_text = match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    if default.is_some() && as_text.as_deref() == default {
        return false;
    }
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !(s.is_empty() || s == "0s"),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => m.values().any(|v| asks_for_something(v, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse_from};

    const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: ""
mode: ""
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    fn parsed(text: &str) -> FileConfig {
        parse(Path::new("test.yaml"), text).expect("parses")
    }

    #[test]
    fn kubeadms_default_config_is_accepted_without_warnings() {
        let c = parsed(KUBEADM);
        assert_eq!(c.warnings, Vec::<String>::new());
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(c.cluster_cidr.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.proxy_mode, None);
        assert_eq!(c.sync_period, None);
        assert_eq!(c.masquerade_all, Some(false));
    }

    #[test]
    fn honoured_fields_follow_the_mode_struct() {
        let c = parsed(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: nftables\nhostnameOverride: Node-1\nhealthzBindAddress: 127.0.0.1:20256\n\
             metricsBindAddress: 0.0.0.0\nnodePortAddresses: [192.0.2.0/24]\n\
             iptables: {syncPeriod: 5m, masqueradeAll: false}\n\
             nftables: {syncPeriod: 45s, minSyncPeriod: 2s, masqueradeAll: true}\n",
        );
        assert_eq!(c.warnings, Vec::<String>::new());
        assert_eq!(c.proxy_mode, Some(ProxyMode::Nftables));
        assert_eq!(c.hostname_override.as_deref(), Some("node-1"));
        assert_eq!(c.sync_period, Some(Duration::from_secs(45)));
        assert_eq!(c.min_sync_period, Some(Duration::from_secs(2)));
        assert_eq!(c.masquerade_all, Some(true));
        assert_eq!(
            c.healthz_bind_address,
            Some("127.0.0.1:20256".parse().unwrap())
        );
        assert_eq!(
            c.metrics_bind_address,
            Some("0.0.0.0:10249".parse().unwrap())
        );
        assert_eq!(
            c.nodeport_addresses,
            Some(NodePortAddresses::Cidrs(vec![
                "192.0.2.0/24".parse().unwrap()
            ]))
        );

        let c = parsed(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             iptables: {syncPeriod: 5m, minSyncPeriod: 0s, masqueradeAll: true}\n\
             nftables: {syncPeriod: 45s}\n",
        );
        assert_eq!(
            c.sync_period,
            Some(Duration::from_mins(5)),
            "mode \"\" is iptables"
        );
        assert_eq!(c.min_sync_period, None, "0s is kube-proxy's \"unset\"");
        assert_eq!(c.masquerade_all, Some(true));
    }

    #[test]
    fn each_field_that_asks_for_something_warns_once() {
        let c = parsed(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: ipvs\nconntrack: {maxPerCore: 65536, min: null}\nfeatureGates: {Foo: true}\n\
             ipvs: {scheduler: wrr, syncPeriod: 10s}\nclientConnection: {qps: 50}\n\
             oomScoreAdj: -999\nfrobnicate: 3\n",
        );
        assert_eq!(c.proxy_mode, Some(ProxyMode::Nftables));
        assert_eq!(c.sync_period, Some(Duration::from_secs(10)));
        let mut names: Vec<&str> = c
            .warnings
            .iter()
            .map(|w| w.split_whitespace().nth(2).unwrap_or(w))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "clientConnection.qps",
                "conntrack",
                "featureGates",
                "frobnicate",
                "ipvs.scheduler",
                "mode:",
            ],
            "{:#?}",
            c.warnings
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_field() {
        let err = parse(Path::new("c.yaml"), "apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(matches!(err, ConfigError::Kind { .. }), "{err}");
        let err = parse(
            Path::new("c.yaml"),
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: nope\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("clusterCIDR"), "{err}");
        let err = parse(
            Path::new("c.yaml"),
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: userspace\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        assert!(matches!(
            parse(Path::new("c.yaml"), "- a\n- b\n").unwrap_err(),
            ConfigError::Syntax { .. }
        ));
    }

    #[test]
    fn flags_on_the_command_line_override_the_file_and_defaults_do_not() {
        let file = parsed(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: nftables\nclusterCIDR: 10.0.0.0/8\nhostnameOverride: from-file\n\
             nftables: {syncPeriod: 45s, minSyncPeriod: 2s, masqueradeAll: true}\n\
             clientConnection: {kubeconfig: /file/kubeconfig}\n",
        );
        let (cli, explicit) = parse_from([
            "kproxy",
            "run",
            "--config=x",
            "--sync-period=10s",
            "--masquerade-all=false",
            "--hostname-override=from-flag",
        ])
        .expect("parses");
        let Some(Command::Run(mut args)) = cli.command else {
            panic!("run")
        };
        apply(&mut args, file.clone(), &explicit);
        assert_eq!(args.sync_period, Duration::from_secs(10), "flag wins");
        assert!(!args.masquerade_all, "flag wins, even when false");
        assert_eq!(args.hostname_override.as_deref(), Some("from-flag"));
        assert_eq!(
            args.min_sync_period,
            Duration::from_secs(2),
            "file beats a default"
        );
        assert_eq!(
            args.cluster_cidr,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            args.kubeconfig.as_deref(),
            Some(Path::new("/file/kubeconfig"))
        );
        assert_eq!(
            args.healthz_bind_address,
            "0.0.0.0:10256".parse().unwrap(),
            "neither: default"
        );

        // Bare kube-proxy style invocation, and --manifests keeps the file's kubeconfig out.
        let (cli, explicit) =
            parse_from(["kube-proxy", "--config=x", "--manifests=/m"]).expect("parses");
        let mut args = cli.run;
        apply(&mut args, file, &explicit);
        assert_eq!(args.kubeconfig, None);
        assert_eq!(args.sync_period, Duration::from_secs(45));
        assert_eq!(args.hostname_override.as_deref(), Some("from-file"));
    }
}
