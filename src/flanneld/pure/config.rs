//! Command-line flags and environment (upstream's main.go): upstream names, defaults and Go `flag`
//! semantics, `FLANNELD_<NAME>` environment fallbacks, node-name discovery, and resolution into
//! a validated [`DaemonConfig`].
//!
//! The environment is passed in as a lookup function so that everything here is testable
//! without touching the process environment.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use regex::Regex;
use thiserror::Error;

use super::annotations::{AnnotationKeys, AnnotationPrefix, DEFAULT_PREFIX, PrefixError};

/// Prefix of the environment variables that set flags.
pub const ENV_PREFIX: &str = "FLANNELD_";

/// flanneld's flags, named and defaulted like upstream v0.28.9 (plus `--resync-period`).
///
/// Boolean flags follow Go: `--flag` means true, `--flag=false` turns it off.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "flanneld",
    about = "flannel-rs: wire-compatible flanneld (kube-subnet-mgr + vxlan)",
    long_about = None,
    disable_version_flag = true
)]
pub struct Flags {
    /// Use the Kubernetes API for subnet assignment (required; etcd mode is not supported).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub kube_subnet_mgr: bool,

    /// kubeconfig file location; empty = in-cluster configuration.
    #[arg(long, default_value = "")]
    pub kubeconfig_file: String,

    /// Kubernetes API server URL; empty = from kubeconfig / in-cluster.
    #[arg(long, default_value = "")]
    pub kube_api_url: String,

    /// Prefix of the Node annotations flannel reads and writes.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub kube_annotation_prefix: String,

    /// Path to net-conf.json.
    #[arg(long, default_value = "/etc/kube-flannel/net-conf.json")]
    pub net_config_path: PathBuf,

    /// File the subnet environment is written to.
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,

    /// Interface name or IP to use for inter-host traffic (repeatable, tried in order).
    #[arg(long)]
    pub iface: Vec<String>,

    /// Regex matched against interface IPs, then names (repeatable, tried after --iface).
    #[arg(long)]
    pub iface_regex: Vec<String>,

    /// Use the interface the kernel would route to this IP (tried last).
    #[arg(long, default_value = "")]
    pub iface_can_reach: String,

    /// IPv4 address advertised to other nodes.
    #[arg(long, default_value = "")]
    pub public_ip: String,

    /// IPv6 address advertised to other nodes.
    #[arg(long, default_value = "")]
    pub public_ipv6: String,

    /// Set up IP masquerade for traffic leaving the pod network.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub ip_masq: bool,

    /// Do not use --random-fully / fully-random in masquerade rules.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub ip_masq_fully_random_disable: bool,

    /// Add FORWARD accept rules for the pod network.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = parse_go_bool)]
    pub iptables_forward_rules: bool,

    /// Resync period of the iptables rules, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,

    /// Keep a blackhole route for our own pod subnet.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub ip_blackhole_route: bool,

    /// Patch the NetworkUnavailable=False condition once the network is up.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_parser = parse_go_bool)]
    pub set_node_network_unavailable: bool,

    /// etcd-mode lease renew margin in minutes; unused but validated like upstream (1..1439).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..1440))]
    pub subnet_lease_renew_margin: i64,

    /// Listen address of the health server.
    #[arg(long, default_value = "0.0.0.0")]
    pub healthz_ip: String,

    /// Port of the health server; 0 disables it.
    #[arg(long, default_value_t = 0)]
    pub healthz_port: u16,

    /// Log verbosity (klog-style level).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub v: u8,

    /// Print the version and exit.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
    pub version: bool,

    /// Period of the full kernel reconcile backstop (Go duration, e.g. 60s, 5m; bare number = seconds).
    #[arg(long, default_value = "60s", value_parser = parse_go_duration)]
    pub resync_period: Duration,

    /// Without a subcommand, run the daemon.
    #[command(subcommand)]
    pub command: Option<Subcommands>,
}

/// Commands an operator runs on a node next to the daemon. They take the daemon's own flags
/// (before or after the subcommand's name) so that they find what that daemon serves.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Subcommands {
    /// Explain what the daemon on this node believes and did: its lease, heals of its
    /// annotations, programmed and refused peers. Reads the daemon's private status socket
    /// (next to --subnet-file; root only).
    Explain {
        /// Print the daemon's status document as JSON (with "ready") instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check this node's datapath, annotations and tunnels against the API, whether the
    /// daemon runs or not. Exit status: 0 no problem found, 1 problems found, 2 could not
    /// diagnose (with the reason).
    Diagnose {
        /// Check only the path to this peer node.
        #[arg(long, conflicts_with_all = ["ip", "cluster"])]
        peer: Option<String>,
        /// Which node owns this pod IP, and is every piece of the path to it in place?
        #[arg(long, conflicts_with = "cluster")]
        ip: Option<std::net::IpAddr>,
        /// Every Node, from the API alone (needs only a kubeconfig; no kernel, no node).
        #[arg(long)]
        cluster: bool,
        /// One JSON object instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// The daemon's private status socket: next to the subnet file, named after it, so daemons
/// with different subnet files never share one and a client finds it from the same flag.
pub fn status_socket_path(subnet_file: &Path) -> PathBuf {
    let dir = match subnet_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = subnet_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    dir.join(format!("flanneld-{name}.sock"))
}

/// Flags that the environment may not set.
const NOT_FROM_ENV: &[&str] = &["help", "version"];

/// Why the command line or a `FLANNELD_*` variable was refused.
#[derive(Debug, Error)]
pub enum FlagsError {
    /// Bad command line, or `--help` (check [`clap::Error::kind`]; `exit()` prints it).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("invalid value {value:?} in environment variable {var}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (use true or false)")),
    }
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h; fractions allowed; no sign), plus
/// a bare non-negative integer meaning seconds.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 60s, 1m30s, 500ms)");
    if s.is_empty() {
        return Err(bad());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

impl Flags {
    /// The status socket of a daemon started with these flags.
    pub fn status_socket(&self) -> PathBuf {
        status_socket_path(&self.subnet_file)
    }

    /// Parses like upstream: normalises Go-style `-long-flag` arguments, parses the command line,
    /// then fills every flag not given on the command line from `FLANNELD_<NAME>` (upper case,
    /// `-` → `_`; empty values ignored). The command line wins; a bad variable is an error.
    pub fn parse_with_env<I, S, E>(args: I, env: E) -> Result<Flags, FlagsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        E: Fn(&str) -> Option<String>,
    {
        // Global, so a subcommand accepts the daemon's flags wherever they are given.
        let cmd = Flags::command().mut_args(|a| a.global(true));
        let longs: HashSet<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let mut argv = normalize_go_args(args.into_iter().map(Into::into).collect(), &longs);
        let matches = cmd.clone().try_get_matches_from(&argv)?;

        let mut from_env = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_FROM_ENV.contains(&long) {
                continue;
            }
            if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
                continue;
            }
            let var = env_var_name(long);
            let Some(value) = env(&var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let one = format!("--{long}={value}");
            if let Err(e) = cmd.clone().try_get_matches_from(["flanneld", one.as_str()]) {
                return Err(FlagsError::Env {
                    var,
                    value,
                    message: first_line(&e.to_string()),
                });
            }
            from_env.push(one);
        }
        // Environment values go before "--" so they are parsed as flags.
        let insert_at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
        argv.splice(insert_at..insert_at, from_env);
        let matches = cmd.clone().try_get_matches_from(&argv)?;
        Ok(Flags::from_arg_matches(&matches)?)
    }

    /// Validates and resolves the flags plus the node-identity environment into a
    /// [`DaemonConfig`].
    pub fn resolve<E>(&self, env: E) -> Result<DaemonConfig, ConfigError>
    where
        E: Fn(&str) -> Option<String>,
    {
        if !self.kube_subnet_mgr {
            return Err(ConfigError::NotKubeSubnetMgr);
        }
        let node = NodeIdentity::from_env(&env)?;
        let prefix = AnnotationPrefix::new(&self.kube_annotation_prefix)?;
        let public_ip = match self.public_ip.as_str() {
            "" => None,
            s => Some(s.parse::<Ipv4Addr>().map_err(|_| ConfigError::PublicIp {
                flag: "--public-ip",
                value: s.to_string(),
            })?),
        };
        let public_ipv6 = match self.public_ipv6.as_str() {
            "" => None,
            s => Some(
                s.parse::<Ipv6Addr>()
                    .ok()
                    .filter(|a| a.to_ipv4_mapped().is_none())
                    .ok_or_else(|| ConfigError::PublicIp {
                        flag: "--public-ipv6",
                        value: s.to_string(),
                    })?,
            ),
        };
        let regexes = self
            .iface_regex
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| ConfigError::IfaceRegex {
                    pattern: p.clone(),
                    message: first_line(&e.to_string()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let can_reach = match self.iface_can_reach.as_str() {
            "" => None,
            s => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| ConfigError::CanReach(s.to_string()))?,
            ),
        };
        let healthz = if self.healthz_port == 0 {
            None
        } else {
            let ip: IpAddr = self
                .healthz_ip
                .parse()
                .map_err(|_| ConfigError::HealthzIp(self.healthz_ip.clone()))?;
            Some(SocketAddr::new(ip, self.healthz_port))
        };
        Ok(DaemonConfig {
            node,
            kube: KubeAccess {
                kubeconfig_file: non_empty(&self.kubeconfig_file).map(PathBuf::from),
                api_url: non_empty(&self.kube_api_url).map(str::to_string),
            },
            annotation_keys: AnnotationKeys::new(prefix),
            net_config_path: self.net_config_path.clone(),
            subnet_file: self.subnet_file.clone(),
            selectors: IfaceSelectors {
                ifaces: self.iface.clone(),
                regexes,
                can_reach,
            },
            public_ip,
            public_ipv6,
            ip_masq: self.ip_masq,
            masq_fully_random: !self.ip_masq_fully_random_disable,
            iptables_forward_rules: self.iptables_forward_rules,
            iptables_resync: Duration::from_secs(self.iptables_resync),
            ip_blackhole_route: self.ip_blackhole_route,
            set_node_network_unavailable: self.set_node_network_unavailable,
            healthz,
            status_socket: self.status_socket(),
            log_level: log_level(self.v),
            resync_period: self.resync_period,
        })
    }
}

/// `FLANNELD_` + upper-cased flag name with `-` → `_`.
pub fn env_var_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// Go's flag package accepts `-name` as well as `--name`; clap wants `--name` for long flags.
/// Only arguments naming a known long flag are rewritten, and nothing after `--`.
fn normalize_go_args(args: Vec<String>, longs: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest_is_positional = false;
    for (i, a) in args.into_iter().enumerate() {
        if i > 0 && !rest_is_positional {
            if a == "--" {
                rest_is_positional = true;
            } else if let Some(body) = a.strip_prefix('-').filter(|b| !b.starts_with('-')) {
                let name = body.split('=').next().unwrap_or("");
                if name.len() > 1 && longs.contains(name) {
                    out.push(format!("-{a}"));
                    continue;
                }
            }
        }
        out.push(a);
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(|l| l.trim_start_matches("error: ").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// How the daemon finds its own Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// `NODE_NAME` was set.
    Named(String),
    /// Resolve `spec.nodeName` of this pod via the API (`GET pods/<namespace>/<name>`).
    Pod { namespace: String, name: String },
}

impl NodeIdentity {
    /// `NODE_NAME`, else `POD_NAME` + `POD_NAMESPACE` (upstream's pkg/subnet/kube).
    pub fn from_env<E: Fn(&str) -> Option<String>>(env: E) -> Result<NodeIdentity, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(n) = get("NODE_NAME") {
            return Ok(NodeIdentity::Named(n));
        }
        match (get("POD_NAME"), get("POD_NAMESPACE")) {
            (Some(name), Some(namespace)) => Ok(NodeIdentity::Pod { namespace, name }),
            _ => Err(ConfigError::NodeName),
        }
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeAccess {
    /// `--kubeconfig-file`; `None` ⇒ in-cluster (or default kubeconfig handling by the caller).
    pub kubeconfig_file: Option<PathBuf>,
    /// `--kube-api-url`; overrides the server of the kubeconfig.
    pub api_url: Option<String>,
}

/// `--iface`, `--iface-regex`, `--iface-can-reach` after validation.
#[derive(Debug, Clone, Default)]
pub struct IfaceSelectors {
    /// Interface names or IP addresses, in order.
    pub ifaces: Vec<String>,
    pub regexes: Vec<Regex>,
    pub can_reach: Option<IpAddr>,
}

impl IfaceSelectors {
    pub fn is_empty(&self) -> bool {
        self.ifaces.is_empty() && self.regexes.is_empty() && self.can_reach.is_none()
    }
}

/// Validated daemon configuration from flags and environment (net-conf.json is separate).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub node: NodeIdentity,
    pub kube: KubeAccess,
    pub annotation_keys: AnnotationKeys,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub selectors: IfaceSelectors,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub ip_masq: bool,
    /// `--random-fully` / `fully-random` wanted (not disabled by flag; the caller still probes
    /// whether iptables supports it).
    pub masq_fully_random: bool,
    pub iptables_forward_rules: bool,
    pub iptables_resync: Duration,
    pub ip_blackhole_route: bool,
    pub set_node_network_unavailable: bool,
    /// Health server address; `None` when `--healthz-port=0`.
    pub healthz: Option<SocketAddr>,
    /// Where `/status` is served (see [`status_socket_path`]).
    pub status_socket: PathBuf,
    pub log_level: LogLevel,
    pub resync_period: Duration,
}

/// Log level derived from klog's `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// A `tracing_subscriber::EnvFilter` directive.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `-v=0` info, `1..=4` debug, `≥5` trace.
pub fn log_level(v: u8) -> LogLevel {
    match v {
        0 => LogLevel::Info,
        1..=4 => LogLevel::Debug,
        _ => LogLevel::Trace,
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "only --kube-subnet-mgr mode with the vxlan backend is supported (etcd mode is not \
         implemented); start flanneld with --kube-subnet-mgr"
    )]
    NotKubeSubnetMgr,
    #[error(
        "cannot determine the node name: set NODE_NAME, or POD_NAME and POD_NAMESPACE \
         (env variables POD_NAME and POD_NAMESPACE must be set)"
    )]
    NodeName,
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    #[error("{flag}: {value:?} is not a valid address of that family")]
    PublicIp { flag: &'static str, value: String },
    #[error("--iface-regex {pattern:?}: invalid regular expression: {message}")]
    IfaceRegex { pattern: String, message: String },
    #[error("--iface-can-reach: {0:?} is not an IP address")]
    CanReach(String),
    #[error("--healthz-ip: {0:?} is not an IP address")]
    HealthzIp(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[&str]) -> Flags {
        let mut v = vec!["flanneld"];
        v.extend_from_slice(args);
        Flags::parse_with_env(v, no_env).unwrap()
    }

    fn parse_err(args: &[&str]) -> String {
        let mut v = vec!["flanneld"];
        v.extend_from_slice(args);
        Flags::parse_with_env(v, no_env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_upstream() {
        let f = parse(&[]);
        assert!(!f.kube_subnet_mgr);
        assert_eq!(f.kubeconfig_file, "");
        assert_eq!(f.kube_api_url, "");
        assert_eq!(f.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(
            f.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert!(f.iface.is_empty() && f.iface_regex.is_empty());
        assert_eq!(f.iface_can_reach, "");
        assert_eq!((f.public_ip.as_str(), f.public_ipv6.as_str()), ("", ""));
        assert!(!f.ip_masq && !f.ip_masq_fully_random_disable);
        assert!(f.iptables_forward_rules);
        assert_eq!(f.iptables_resync, 5);
        assert!(!f.ip_blackhole_route);
        assert!(f.set_node_network_unavailable);
        assert_eq!(f.subnet_lease_renew_margin, 60);
        assert_eq!(f.healthz_ip, "0.0.0.0");
        assert_eq!(f.healthz_port, 0);
        assert_eq!(f.v, 0);
        assert!(!f.version);
        assert_eq!(f.resync_period, Duration::from_secs(60));
    }

    #[test]
    fn stock_manifest_args() {
        let f = parse(&["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]);
        assert!(f.ip_masq && f.kube_subnet_mgr);
        assert_eq!(f.healthz_port, 8081);
    }

    #[test]
    fn go_bool_forms() {
        for (arg, want) in [
            ("--ip-masq", true),
            ("--ip-masq=true", true),
            ("--ip-masq=1", true),
            ("--ip-masq=T", true),
            ("--ip-masq=True", true),
            ("--ip-masq=false", false),
            ("--ip-masq=0", false),
            ("--ip-masq=F", false),
            ("--ip-masq=FALSE", false),
        ] {
            assert_eq!(parse(&[arg]).ip_masq, want, "{arg}");
        }
        assert!(!parse(&["--iptables-forward-rules=false"]).iptables_forward_rules);
        assert!(!parse(&["--set-node-network-unavailable=false"]).set_node_network_unavailable);
        assert!(parse_err(&["--ip-masq=yes"]).contains("not a boolean"));
    }

    #[test]
    fn go_single_dash_long_flags() {
        let f = parse(&[
            "-ip-masq",
            "-kube-subnet-mgr",
            "-iface=eth0",
            "-iface",
            "10.0.0.5",
            "-iptables-forward-rules=false",
            "-v=3",
        ]);
        assert!(f.ip_masq && f.kube_subnet_mgr && !f.iptables_forward_rules);
        assert_eq!(f.iface, vec!["eth0", "10.0.0.5"]);
        assert_eq!(f.v, 3);
        assert!(parse(&["-version"]).version);
        assert_eq!(parse(&["--v=2"]).v, 2);
        assert_eq!(parse(&["-v", "4"]).v, 4);
        // unknown single-dash words are left for clap to reject
        assert!(parse_err(&["-bogus"]).contains("-b"));
    }

    #[test]
    fn repeatable_and_valued_flags() {
        let f = parse(&[
            "--iface=eth0",
            "--iface",
            "eth1",
            "--iface-regex=^ens",
            "--iface-regex",
            "10\\.0\\..*",
            "--iface-can-reach=8.8.8.8",
            "--public-ip=192.168.1.1",
            "--public-ipv6",
            "fd00::1",
            "--kubeconfig-file=/k",
            "--kube-api-url=https://x:6443",
            "--kube-annotation-prefix=example.com/x",
            "--net-config-path=/n.json",
            "--subnet-file=/tmp/s.env",
            "--iptables-resync=10",
            "--healthz-ip=127.0.0.1",
            "--resync-period=1m30s",
        ]);
        assert_eq!(f.iface, vec!["eth0", "eth1"]);
        assert_eq!(f.iface_regex, vec!["^ens", "10\\.0\\..*"]);
        assert_eq!(f.iface_can_reach, "8.8.8.8");
        assert_eq!(f.public_ip, "192.168.1.1");
        assert_eq!(f.public_ipv6, "fd00::1");
        assert_eq!(f.kubeconfig_file, "/k");
        assert_eq!(f.kube_api_url, "https://x:6443");
        assert_eq!(f.kube_annotation_prefix, "example.com/x");
        assert_eq!(f.net_config_path, PathBuf::from("/n.json"));
        assert_eq!(f.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(f.iptables_resync, 10);
        assert_eq!(f.healthz_ip, "127.0.0.1");
        assert_eq!(f.resync_period, Duration::from_secs(90));
    }

    #[test]
    fn renew_margin_is_validated() {
        assert_eq!(
            parse(&["--subnet-lease-renew-margin=1"]).subnet_lease_renew_margin,
            1
        );
        assert_eq!(
            parse(&["--subnet-lease-renew-margin=1439"]).subnet_lease_renew_margin,
            1439
        );
        for bad in ["0", "1440", "-5", "x"] {
            let e = parse_err(&[&format!("--subnet-lease-renew-margin={bad}")]);
            assert!(e.contains("subnet-lease-renew-margin"), "{bad}: {e}");
        }
        assert!(parse_err(&["--iptables-resync=0"]).contains("iptables-resync"));
        assert!(parse_err(&["--healthz-port=70000"]).contains("healthz-port"));
    }

    #[test]
    fn env_mapping() {
        assert_eq!(env_var_name("ip-masq"), "FLANNELD_IP_MASQ");
        assert_eq!(env_var_name("iface-can-reach"), "FLANNELD_IFACE_CAN_REACH");
        assert_eq!(env_var_name("v"), "FLANNELD_V");
        let env = env_of(&[
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_KUBE_SUBNET_MGR", "1"),
            ("FLANNELD_IFACE", "eth9"),
            ("FLANNELD_PUBLIC_IP", "10.1.1.1"),
            ("FLANNELD_HEALTHZ_PORT", "8081"),
            ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
            ("FLANNELD_RESYNC_PERIOD", "5m"),
            ("FLANNELD_V", "2"),
            ("FLANNELD_SUBNET_FILE", ""),
        ]);
        let f = Flags::parse_with_env(["flanneld"], &env).unwrap();
        assert!(f.ip_masq && f.kube_subnet_mgr && !f.iptables_forward_rules);
        assert_eq!(f.iface, vec!["eth9"]);
        assert_eq!(f.public_ip, "10.1.1.1");
        assert_eq!(f.healthz_port, 8081);
        assert_eq!(f.resync_period, Duration::from_secs(300));
        assert_eq!(f.v, 2);
        assert_eq!(
            f.subnet_file,
            PathBuf::from("/run/flannel/subnet.env"),
            "empty env ignored"
        );

        // the command line wins, flag by flag
        let f = Flags::parse_with_env(
            [
                "flanneld",
                "--ip-masq=false",
                "--iface=eth0",
                "--iface=eth1",
                "--healthz-port=1",
            ],
            &env,
        )
        .unwrap();
        assert!(!f.ip_masq);
        assert_eq!(f.iface, vec!["eth0", "eth1"]);
        assert_eq!(f.healthz_port, 1);
        assert_eq!(
            f.public_ip, "10.1.1.1",
            "not on the command line ⇒ env applies"
        );

        // version/help cannot come from the environment
        let f =
            Flags::parse_with_env(["flanneld"], env_of(&[("FLANNELD_VERSION", "true")])).unwrap();
        assert!(!f.version);
    }

    #[test]
    fn bad_env_value_is_a_clear_error() {
        for (var, value) in [
            ("FLANNELD_IP_MASQ", "yes"),
            ("FLANNELD_HEALTHZ_PORT", "http"),
            ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "0"),
            ("FLANNELD_RESYNC_PERIOD", "soon"),
        ] {
            let e = Flags::parse_with_env(["flanneld"], env_of(&[(var, value)])).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, FlagsError::Env { .. }), "{var}");
            assert!(text.contains(var) && text.contains(value), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        // the same bad value on the command line shadows the env var, so no error
        Flags::parse_with_env(
            ["flanneld", "--ip-masq"],
            env_of(&[("FLANNELD_IP_MASQ", "yes")]),
        )
        .unwrap();
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("60s", 60_000),
            ("1m", 60_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1.5h", 5_400_000),
            ("2h45m", 9_900_000),
            ("120", 120_000),
            ("0", 0),
        ] {
            assert_eq!(
                parse_go_duration(s).unwrap(),
                Duration::from_millis(want),
                "{s}"
            );
        }
        for bad in ["", "s", "5x", "-5s", "1.2.3s", "m5", "5 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<DaemonConfig, ConfigError> {
        parse(args).resolve(env_of(env))
    }

    #[test]
    fn resolve_requires_kube_subnet_mgr() {
        let e = resolve(&[], &[("NODE_NAME", "n1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--kube-subnet-mgr") && e.contains("vxlan"),
            "{e}"
        );
    }

    #[test]
    fn node_identity() {
        let c = resolve(
            &["--kube-subnet-mgr"],
            &[("NODE_NAME", "n1"), ("POD_NAME", "p")],
        )
        .unwrap();
        assert_eq!(c.node, NodeIdentity::Named("n1".into()));
        let c = resolve(
            &["--kube-subnet-mgr"],
            &[
                ("NODE_NAME", ""),
                ("POD_NAME", "p"),
                ("POD_NAMESPACE", "kube-flannel"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.node,
            NodeIdentity::Pod {
                namespace: "kube-flannel".into(),
                name: "p".into()
            }
        );
        let e = resolve(&["--kube-subnet-mgr"], &[("POD_NAME", "p")]).unwrap_err();
        assert!(matches!(e, ConfigError::NodeName));
        assert!(e.to_string().contains("NODE_NAME"));
    }

    #[test]
    fn resolve_full() {
        let c = resolve(
            &[
                "--kube-subnet-mgr",
                "--ip-masq",
                "--ip-masq-fully-random-disable",
                "--public-ip=192.168.1.5",
                "--public-ipv6=fd00::5",
                "--iface=eth0",
                "--iface-regex=^en",
                "--iface-can-reach=10.0.0.1",
                "--healthz-port=8081",
                "--kube-annotation-prefix=example.com/x",
                "--kubeconfig-file=/kc",
                "-v=5",
            ],
            &[("NODE_NAME", "n1")],
        )
        .unwrap();
        assert_eq!(c.public_ip, Some(Ipv4Addr::new(192, 168, 1, 5)));
        assert_eq!(c.public_ipv6, Some("fd00::5".parse().unwrap()));
        assert!(c.ip_masq && !c.masq_fully_random);
        assert_eq!(c.selectors.ifaces, vec!["eth0"]);
        assert_eq!(c.selectors.regexes.len(), 1);
        assert_eq!(c.selectors.can_reach, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.healthz, Some("0.0.0.0:8081".parse().unwrap()));
        assert_eq!(c.annotation_keys.backend_type, "example.com/x-backend-type");
        assert_eq!(c.kube.kubeconfig_file, Some(PathBuf::from("/kc")));
        assert_eq!(c.kube.api_url, None);
        assert_eq!(c.log_level, LogLevel::Trace);
        assert_eq!(c.iptables_resync, Duration::from_secs(5));

        let c = resolve(&["--kube-subnet-mgr"], &[("NODE_NAME", "n1")]).unwrap();
        assert_eq!(c.healthz, None);
        assert!(c.selectors.is_empty());
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.masq_fully_random);
    }

    #[test]
    fn resolve_errors_name_the_flag() {
        let n = [("NODE_NAME", "n1")];
        let cases: &[(&[&str], &str)] = &[
            (&["--kube-subnet-mgr", "--public-ip=fd00::1"], "--public-ip"),
            (&["--kube-subnet-mgr", "--public-ip=1.2.3"], "--public-ip"),
            (
                &["--kube-subnet-mgr", "--public-ipv6=10.0.0.1"],
                "--public-ipv6",
            ),
            (
                &["--kube-subnet-mgr", "--public-ipv6=::ffff:10.0.0.1"],
                "--public-ipv6",
            ),
            (&["--kube-subnet-mgr", "--iface-regex=("], "--iface-regex"),
            (
                &["--kube-subnet-mgr", "--iface-can-reach=host"],
                "--iface-can-reach",
            ),
            (
                &["--kube-subnet-mgr", "--healthz-port=1", "--healthz-ip=x"],
                "--healthz-ip",
            ),
            (
                &["--kube-subnet-mgr", "--kube-annotation-prefix=org"],
                "--kube-annotation-prefix",
            ),
        ];
        for (args, want) in cases {
            let e = resolve(args, &n).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_level(0).as_filter(), "info");
        assert_eq!(log_level(1).as_filter(), "debug");
        assert_eq!(log_level(4).as_filter(), "debug");
        assert_eq!(log_level(9).as_filter(), "trace");
    }

    #[test]
    fn the_status_socket_sits_next_to_the_subnet_file_and_is_named_after_it() {
        assert_eq!(
            parse(&[]).status_socket(),
            PathBuf::from("/run/flannel/flanneld-subnet.env.sock")
        );
        let a = status_socket_path(Path::new("/run/flannel/a.env"));
        let b = status_socket_path(Path::new("/run/flannel/a.conf"));
        let c = status_socket_path(Path::new("/run/other/a.env"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            status_socket_path(Path::new("subnet.env")),
            PathBuf::from("./flanneld-subnet.env.sock")
        );
    }

    #[test]
    fn explain_is_a_subcommand_that_takes_the_daemons_flags_anywhere() {
        let f = parse(&[]);
        assert_eq!(f.command, None);
        let f = parse(&["explain", "--subnet-file=/x/s.env", "--json"]);
        assert_eq!(f.command, Some(Subcommands::Explain { json: true }));
        assert_eq!(f.status_socket(), PathBuf::from("/x/flanneld-s.env.sock"));
        // The daemon's command line with `explain` appended, Go-style flags included.
        let f = parse(&[
            "-kube-subnet-mgr",
            "--subnet-file=/y/s.env",
            "--healthz-port=8081",
            "explain",
        ]);
        assert_eq!(f.command, Some(Subcommands::Explain { json: false }));
        assert_eq!(f.subnet_file, PathBuf::from("/y/s.env"));
        // The environment reaches a subcommand too.
        let env = env_of(&[("FLANNELD_SUBNET_FILE", "/z/s.env")]);
        let f = Flags::parse_with_env(["flanneld", "explain"], &env).unwrap();
        assert_eq!(f.subnet_file, PathBuf::from("/z/s.env"));
        let help = Flags::parse_with_env(["flanneld", "explain", "--help"], no_env).unwrap_err();
        match help {
            FlagsError::Cli(e) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
                let text = e.to_string();
                assert!(
                    text.contains("--json") && text.contains("status socket"),
                    "{text}"
                );
            }
            other => panic!("{other}"),
        }
    }
}
