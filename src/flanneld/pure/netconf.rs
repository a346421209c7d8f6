//! `net-conf.json` (upstream's pkg/subnet/config.go): parsed like Go's `encoding/json` into flannel's config struct —
//! keys match case-insensitively, unknown keys are ignored, `null` leaves the default — then
//! validated up front so that every mistake is one clear error naming the field.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::net::{Family, first_host_v4, first_host_v6, is_within, parse_cidr_v4, parse_cidr_v6};

use super::lease::{PodCidrError, PodSubnets};
use crate::subnet_env::SubnetEnv;

/// Kernel default VXLAN port, used when `Backend.Port` is 0 or absent.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Highest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// A net-conf.json problem; the message always names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetConfError {
    #[error("net-conf.json: not valid JSON: {0}")]
    Json(String),
    #[error("net-conf.json: top level must be a JSON object")]
    NotAnObject,
    #[error("net-conf.json: {field:?}: expected {expected}, got {got}")]
    Type {
        field: String,
        expected: &'static str,
        got: String,
    },
    #[error("net-conf.json: {field:?}: invalid CIDR {value:?}")]
    InvalidCidr { field: String, value: String },
    #[error("net-conf.json: {field:?}: {value:?} is not an {family} CIDR")]
    WrongFamily {
        field: String,
        value: String,
        family: Family,
    },
    #[error("net-conf.json: {field:?} is required when {requires:?} is true")]
    Missing { field: String, requires: String },
    #[error("net-conf.json: \"EnableIPv4\" and \"EnableIPv6\" are both false (none defined stack)")]
    NoStack,
    #[error(
        "net-conf.json: \"Backend\" is missing; upstream flannel would fall back to the \"udp\" \
         backend, which flannel-rs does not support (set \"Backend\": {{\"Type\": \"vxlan\"}})"
    )]
    NoBackend,
    #[error("net-conf.json: \"Backend.Type\" is missing (only \"vxlan\" is supported)")]
    NoBackendType,
    #[error(
        "net-conf.json: \"Backend.Type\": unsupported backend {0:?} (only \"vxlan\" is supported)"
    )]
    UnsupportedBackend(String),
    #[error("net-conf.json: {field:?}: {value} is out of range {min}..={max}")]
    OutOfRange {
        field: String,
        value: String,
        min: u64,
        max: u64,
    },
}

/// The `Backend` object for `"Type": "vxlan"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanBackend {
    pub vni: u32,
    /// Effective UDP port (`0`/absent ⇒ 8472).
    pub port: u16,
    /// Underlay MTU override; `None` ⇒ use the external interface's MTU.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Windows only; kept for completeness.
    pub mac_prefix: Option<String>,
    /// Windows only; kept for completeness.
    pub name: Option<String>,
}

impl Default for VxlanBackend {
    fn default() -> Self {
        VxlanBackend {
            vni: 1,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
            mac_prefix: None,
            name: None,
        }
    }
}

/// A parsed, validated net-conf.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    /// `Network`; always `Some` when IPv4 is enabled.
    pub network_v4: Option<Ipv4Network>,
    /// `IPv6Network`; always `Some` when IPv6 is enabled.
    pub network_v6: Option<Ipv6Network>,
    pub enable_nftables: bool,
    /// etcd-mode fields, accepted and ignored in kube mode.
    pub subnet_len: Option<u32>,
    pub subnet_min: Option<String>,
    pub subnet_max: Option<String>,
    pub backend: VxlanBackend,
}

/// The node's podCIDR does not fit the configured network.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    #[error("node {node:?}: {error}")]
    PodCidr { node: String, error: PodCidrError },
    #[error("node {node:?} pod cidr not assigned ({family} is enabled in net-conf.json)")]
    NotAssigned { node: String, family: Family },
    #[error(
        "subnet {network:?} specified in the flannel net config doesn't contain {pod_cidr:?} PodCIDR of the {node:?} node"
    )]
    NotContained {
        network: String,
        pod_cidr: String,
        node: String,
    },
}

impl LeaseError {
    /// No podCIDR yet: wait for the controller-manager to assign one (readiness stays false)
    /// instead of treating it as fatal.
    pub fn is_not_assigned(&self) -> bool {
        matches!(
            self,
            LeaseError::NotAssigned { .. }
                | LeaseError::PodCidr {
                    error: PodCidrError::NotAssigned,
                    ..
                }
        )
    }
}

impl NetConf {
    /// Parses the file's content.
    pub fn parse(text: &str) -> Result<NetConf, NetConfError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| NetConfError::Json(e.to_string()))?;
        let root = match &root {
            Value::Object(m) => Obj::new(m, ""),
            _ => return Err(NetConfError::NotAnObject),
        };

        let enable_ipv4 = root.bool("EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = root.bool("EnableIPv6")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return Err(NetConfError::NoStack);
        }
        let network_v4 = match root.string("Network")? {
            Some(s) => Some(parse_cidr_v4(s).map_err(|e| cidr_error("Network", s, e))?),
            None => None,
        };
        let network_v6 = match root.string("IPv6Network")? {
            Some(s) => Some(parse_cidr_v6(s).map_err(|e| cidr_error("IPv6Network", s, e))?),
            None => None,
        };
        if enable_ipv4 && network_v4.is_none() {
            return Err(NetConfError::Missing {
                field: "Network".into(),
                requires: "EnableIPv4".into(),
            });
        }
        if enable_ipv6 && network_v6.is_none() {
            return Err(NetConfError::Missing {
                field: "IPv6Network".into(),
                requires: "EnableIPv6".into(),
            });
        }
        let enable_nftables = root.bool("EnableNFTables")?.unwrap_or(false);
        let subnet_len = root.uint("SubnetLen", 0, 128)?.map(|v| v as u32);
        let subnet_min = root.string("SubnetMin")?.map(str::to_string);
        let subnet_max = root.string("SubnetMax")?.map(str::to_string);
        // IPv6 etcd fields are type-checked too, as Go's decoder would.
        root.uint("IPv6SubnetLen", 0, 128)?;
        root.string("IPv6SubnetMin")?;
        root.string("IPv6SubnetMax")?;

        let backend = match root.get("Backend") {
            None => return Err(NetConfError::NoBackend),
            Some(Value::Object(m)) => parse_backend(&Obj::new(m, "Backend."))?,
            Some(other) => return Err(type_error("Backend", "an object", other)),
        };

        Ok(NetConf {
            enable_ipv4,
            enable_ipv6,
            network_v4: network_v4.filter(|_| enable_ipv4),
            network_v6: network_v6.filter(|_| enable_ipv6),
            enable_nftables,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// The configured cluster network of `family` (only when that family is enabled).
    pub fn network(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V4 => self.network_v4.map(IpNetwork::V4),
            Family::V6 => self.network_v6.map(IpNetwork::V6),
        }
    }

    pub fn enabled(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.enable_ipv4,
            Family::V6 => self.enable_ipv6,
        }
    }

    /// Enabled families in the fixed order v4, v6.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| self.enabled(*f))
    }

    /// True when `ip` lies inside one of the configured pod networks.
    pub fn in_pod_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.network_v4.is_some_and(|n| n.contains(v4)),
            IpAddr::V6(v6) => self.network_v6.is_some_and(|n| n.contains(v6)),
        }
    }

    /// Our lease from our node's raw podCIDRs (`spec.podCIDRs`, else `spec.podCIDR`; see
    /// [`super::node::NodeInfo::pod_cidrs`]), checked against the config.
    pub fn lease_from_pod_cidrs<S: AsRef<str>>(
        &self,
        node: &str,
        pod_cidrs: &[S],
    ) -> Result<PodSubnets, LeaseError> {
        let lease = PodSubnets::from_pod_cidrs(pod_cidrs).map_err(|error| LeaseError::PodCidr {
            node: node.to_string(),
            error,
        })?;
        self.check_lease(node, &lease)
    }

    /// Checks our own node's lease against the config (upstream's pkg/subnet/config.go): every enabled family
    /// needs a podCIDR contained in its network. Returns the lease restricted to enabled families.
    pub fn check_lease(&self, node: &str, lease: &PodSubnets) -> Result<PodSubnets, LeaseError> {
        let mut out = PodSubnets::default();
        for family in self.families() {
            let Some(subnet) = lease.get(family) else {
                return Err(LeaseError::NotAssigned {
                    node: node.to_string(),
                    family,
                });
            };
            let Some(network) = self.network(family) else {
                // parse() guarantees a network for every enabled family.
                return Err(LeaseError::NotAssigned {
                    node: node.to_string(),
                    family,
                });
            };
            if !is_within(subnet, network) {
                return Err(LeaseError::NotContained {
                    network: network.to_string(),
                    pod_cidr: subnet.to_string(),
                    node: node.to_string(),
                });
            }
            match family {
                Family::V4 => out.v4 = lease.v4,
                Family::V6 => out.v6 = lease.v6,
            }
        }
        Ok(out)
    }
}

impl NetConf {
    /// What flanneld writes to subnet.env for our lease: enabled families only, each subnet
    /// with its first host address (the bridge gateway, `10.244.1.1/24`) like upstream.
    pub fn subnet_env(&self, lease: &PodSubnets, mtu: u32, ip_masq: bool) -> SubnetEnv {
        let v4 = self.enable_ipv4;
        let v6 = self.enable_ipv6;
        SubnetEnv {
            networks_v4: self.network_v4.filter(|_| v4).into_iter().collect(),
            subnet_v4: lease.v4.filter(|_| v4).map(first_host_v4),
            networks_v6: self.network_v6.filter(|_| v6).into_iter().collect(),
            subnet_v6: lease.v6.filter(|_| v6).map(first_host_v6),
            mtu,
            ip_masq,
        }
    }
}

fn parse_backend(b: &Obj<'_>) -> Result<VxlanBackend, NetConfError> {
    let kind = b.string("Type")?.ok_or(NetConfError::NoBackendType)?;
    if !kind.eq_ignore_ascii_case("vxlan") {
        return Err(NetConfError::UnsupportedBackend(kind.to_string()));
    }
    let defaults = VxlanBackend::default();
    let vni = b
        .uint("VNI", 0, MAX_VNI as u64)?
        .map_or(defaults.vni, |v| v as u32);
    let port = match b.uint("Port", 0, u16::MAX as u64)? {
        None | Some(0) => DEFAULT_VXLAN_PORT,
        Some(p) => p as u16,
    };
    let mtu = match b.uint("MTU", 0, 65535)? {
        None | Some(0) => None,
        Some(m) => Some(m as u32),
    };
    Ok(VxlanBackend {
        vni,
        port,
        mtu,
        gbp: b.bool("GBP")?.unwrap_or(false),
        learning: b.bool("Learning")?.unwrap_or(false),
        direct_routing: b.bool("DirectRouting")?.unwrap_or(false),
        mac_prefix: b.string("MacPrefix")?.map(str::to_string),
        name: b.string("Name")?.map(str::to_string),
    })
}

fn cidr_error(field: &str, value: &str, e: crate::net::CidrError) -> NetConfError {
    use crate::net::CidrError;
    match e {
        CidrError::Invalid(_) => NetConfError::InvalidCidr {
            field: field.into(),
            value: value.into(),
        },
        CidrError::NotIpv4(_) => NetConfError::WrongFamily {
            field: field.into(),
            value: value.into(),
            family: Family::V4,
        },
        CidrError::NotIpv6(_) => NetConfError::WrongFamily {
            field: field.into(),
            value: value.into(),
            family: Family::V6,
        },
    }
}

fn type_error(field: &str, expected: &'static str, got: &Value) -> NetConfError {
    let got = match got {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    };
    NetConfError::Type {
        field: field.to_string(),
        expected,
        got,
    }
}

/// A JSON object read with Go's field-matching rules.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for error messages (`"Backend."`).
    path: &'static str,
}

impl<'a> Obj<'a> {
    fn new(map: &'a Map<String, Value>, path: &'static str) -> Self {
        Obj { map, path }
    }

    fn field(&self, name: &str) -> String {
        format!("{}{}", self.path, name)
    }

    /// Exact key preferred, then any case-insensitive match; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let v = self.map.get(name).or_else(|| {
            self.map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })?;
        (!v.is_null()).then_some(v)
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(&self.field(name), "true or false", v)),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(type_error(&self.field(name), "a string", v)),
        }
    }

    fn uint(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let Some(v) = n.as_u64() else {
                    return if n.as_i64().is_some() {
                        Err(NetConfError::OutOfRange {
                            field: self.field(name),
                            value: n.to_string(),
                            min,
                            max,
                        })
                    } else {
                        Err(type_error(
                            &self.field(name),
                            "an integer",
                            &Value::Number(n.clone()),
                        ))
                    };
                };
                if v < min || v > max {
                    return Err(NetConfError::OutOfRange {
                        field: self.field(name),
                        value: v.to_string(),
                        min,
                        max,
                    });
                }
                Ok(Some(v))
            }
            Some(v) => Err(type_error(&self.field(name), "an integer", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, NetConfError> {
        NetConf::parse(s)
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn stock_manifest_config() {
        let c = parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.enable_ipv4 && !c.enable_ipv6 && !c.enable_nftables);
        assert_eq!(c.network_v4, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(c.network_v6, None);
        assert_eq!(c.backend, VxlanBackend::default());
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.families().collect::<Vec<_>>(), vec![Family::V4]);
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let c = parse(
            r#"{"network":"10.1.0.0/16","ENABLEIPV6":true,"ipv6network":"fd00:10::/56",
                "SomethingElse":{"x":1},"backend":{"type":"VXLAN","vni":42,"port":4789,
                "directrouting":true,"gbp":true,"Learning":true,"mtu":9001,"macprefix":"0E-2A",
                "name":"vxlan0","extra":[1,2]}}"#,
        )
        .unwrap();
        assert!(c.enable_ipv4 && c.enable_ipv6);
        assert_eq!(c.network_v4, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(c.network_v6, Some("fd00:10::/56".parse().unwrap()));
        let b = &c.backend;
        assert_eq!(
            (b.vni, b.port, b.mtu, b.gbp, b.learning, b.direct_routing),
            (42, 4789, Some(9001), true, true, true)
        );
        assert_eq!(b.mac_prefix.as_deref(), Some("0E-2A"));
        assert_eq!(b.name.as_deref(), Some("vxlan0"));
        assert_eq!(
            c.families().collect::<Vec<_>>(),
            vec![Family::V4, Family::V6]
        );
    }

    #[test]
    fn exact_key_wins_over_case_insensitive() {
        let c = parse(r#"{"Network":"10.1.0.0/16","network":"bad","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.network_v4, Some("10.1.0.0/16".parse().unwrap()));
    }

    #[test]
    fn defaults_and_nulls() {
        let c = parse(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":null,"Backend":{"Type":"vxlan","VNI":null,"Port":0,"MTU":0}}"#,
        )
        .unwrap();
        assert!(!c.enable_ipv6);
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.backend.mtu, None);
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#).unwrap();
        assert_eq!(c.backend.vni, 0);
    }

    #[test]
    fn ipv6_only() {
        let c = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.network_v4, None, "disabled family's network is dropped");
        assert_eq!(c.families().collect::<Vec<_>>(), vec![Family::V6]);
    }

    #[test]
    fn host_bits_are_dropped() {
        let c = parse(r#"{"Network":"10.244.7.1/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.network_v4.unwrap().to_string(), "10.244.0.0/16");
    }

    #[test]
    fn every_error_names_its_field() {
        let cases: &[(&str, &str)] = &[
            ("not json", "net-conf.json: not valid JSON"),
            ("[1]", "net-conf.json: top level must be a JSON object"),
            (
                r#"{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "Network": invalid CIDR "10.244.0.0/33""#,
            ),
            (
                r#"{"Network":"","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "Network": invalid CIDR """#,
            ),
            (
                r#"{"Network":"fd00::/8","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "Network": "fd00::/8" is not an IPv4 CIDR"#,
            ),
            (
                r#"{"Network":10,"Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "Network": expected a string, got 10"#,
            ),
            (
                r#"{"EnableIPv6":true,"Network":"10.0.0.0/8","IPv6Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "IPv6Network": "10.1.0.0/16" is not an IPv6 CIDR"#,
            ),
            (
                r#"{"EnableIPv6":true,"Network":"10.0.0.0/8","IPv6Network":"fd00::/200","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "IPv6Network": invalid CIDR "fd00::/200""#,
            ),
            (
                r#"{"Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "Network" is required when "EnableIPv4" is true"#,
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "IPv6Network" is required when "EnableIPv6" is true"#,
            ),
            (
                r#"{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#,
                "none defined stack",
            ),
            (
                r#"{"EnableIPv4":"yes","Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#,
                r#"net-conf.json: "EnableIPv4": expected true or false, got "yes""#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","EnableNFTables":1,"Backend":{"Type":"vxlan"}}"#,
                r#""EnableNFTables": expected true or false, got 1"#,
            ),
            (r#"{"Network":"10.0.0.0/8"}"#, r#""Backend" is missing"#),
            (r#"{"Network":"10.0.0.0/8"}"#, "udp"),
            (
                r#"{"Network":"10.0.0.0/8","Backend":"vxlan"}"#,
                r#""Backend": expected an object, got "vxlan""#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","Backend":{}}"#,
                r#""Backend.Type" is missing"#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#,
                r#""Backend.Type": unsupported backend "host-gw" (only "vxlan" is supported)"#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","Backend":{"Type":7}}"#,
                r#""Backend.Type": expected a string, got 7"#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","SubnetLen":"24","Backend":{"Type":"vxlan"}}"#,
                r#""SubnetLen": expected an integer"#,
            ),
            (
                r#"{"Network":"10.0.0.0/8","SubnetMin":5,"Backend":{"Type":"vxlan"}}"#,
                r#""SubnetMin": expected a string"#,
            ),
        ];
        // Fields of a vxlan backend, each in a config otherwise valid.
        let backend_cases: &[(&str, &str)] = &[
            (
                r#""VNI":16777216"#,
                r#""Backend.VNI": 16777216 is out of range 0..=16777215"#,
            ),
            (r#""VNI":-1"#, r#""Backend.VNI": -1 is out of range"#),
            (
                r#""VNI":1.5"#,
                r#""Backend.VNI": expected an integer, got 1.5"#,
            ),
            (
                r#""VNI":"1""#,
                r#""Backend.VNI": expected an integer, got "1""#,
            ),
            (
                r#""Port":65536"#,
                r#""Backend.Port": 65536 is out of range 0..=65535"#,
            ),
            (r#""MTU":70000"#, r#""Backend.MTU": 70000 is out of range"#),
            (
                r#""GBP":"true""#,
                r#""Backend.GBP": expected true or false"#,
            ),
            (
                r#""DirectRouting":0"#,
                r#""Backend.DirectRouting": expected true or false"#,
            ),
            (
                r#""Learning":[]"#,
                r#""Backend.Learning": expected true or false, got an array"#,
            ),
            (
                r#""MacPrefix":1"#,
                r#""Backend.MacPrefix": expected a string"#,
            ),
        ];
        let backend_inputs: Vec<(String, &str)> = backend_cases
            .iter()
            .map(|(field, want)| {
                let input =
                    format!(r#"{{"Network":"10.0.0.0/8","Backend":{{"Type":"vxlan",{field}}}}}"#);
                (input, *want)
            })
            .collect();
        let all = cases
            .iter()
            .copied()
            .chain(backend_inputs.iter().map(|(i, w)| (i.as_str(), *w)));
        for (input, want) in all {
            let got = err(input);
            assert!(got.contains(want), "{input}\n got: {got}\nwant: {want}");
            assert!(got.starts_with("net-conf.json: "), "{got}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }

    #[test]
    fn subnet_env_golden_dual_stack_text_from_upstream_docs() {
        let c = parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let lease = PodSubnets::from_pod_cidrs(&["10.42.0.0/24", "2001:cafe:42::/64"]).unwrap();
        let env = c.subnet_env(&lease, 1450, true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\n\
             FLANNEL_SUBNET=10.42.0.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n"
        );
        // What the plugin reads back: the lease itself.
        let back = SubnetEnv::parse(&env.render()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.subnet_v4_network(), lease.v4);
        assert_eq!(back.subnet_v6_network(), lease.v6);
    }

    #[test]
    fn subnet_env_golden_v4_and_v6_only() {
        let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let lease = PodSubnets::from_pod_cidrs(&["10.244.1.0/24", "fd00::/64"]).unwrap();
        assert_eq!(
            c.subnet_env(&lease, 1450, false).render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let c = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:0:0:0:0:0:0/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let lease = PodSubnets::from_pod_cidrs(&["fd00:10:0:3::/64"]).unwrap();
        assert_eq!(
            c.subnet_env(&lease, 1430, true).render(),
            "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn etcd_fields_are_accepted() {
        let c = parse(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.1.0.0","SubnetMax":"10.9.0.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, Some(20));
        assert_eq!(c.subnet_min.as_deref(), Some("10.1.0.0"));
    }

    #[test]
    fn lease_check() {
        let c = parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let both = PodSubnets::from_pod_cidrs(&["10.244.3.0/24", "fd00:10:0:3::/64"]).unwrap();
        assert_eq!(c.check_lease("n1", &both).unwrap(), both);

        let only4 = PodSubnets::from_pod_cidrs(&["10.244.3.0/24"]).unwrap();
        assert_eq!(
            c.check_lease("n1", &only4).unwrap_err(),
            LeaseError::NotAssigned {
                node: "n1".into(),
                family: Family::V6
            }
        );
        let outside = PodSubnets::from_pod_cidrs(&["10.245.3.0/24", "fd00:10:0:3::/64"]).unwrap();
        assert_eq!(
            c.check_lease("n1", &outside).unwrap_err().to_string(),
            r#"subnet "10.244.0.0/16" specified in the flannel net config doesn't contain "10.245.3.0/24" PodCIDR of the "n1" node"#
        );
        let wider = PodSubnets::from_pod_cidrs(&["10.0.0.0/8", "fd00:10:0:3::/64"]).unwrap();
        assert!(matches!(
            c.check_lease("n1", &wider),
            Err(LeaseError::NotContained { .. })
        ));

        // from raw podCIDRs
        assert_eq!(
            c.lease_from_pod_cidrs("n1", &["10.244.3.0/24", "fd00:10:0:3::/64"])
                .unwrap(),
            both
        );
        let e = c.lease_from_pod_cidrs::<&str>("n1", &[]).unwrap_err();
        assert!(e.is_not_assigned());
        assert_eq!(e.to_string(), "node \"n1\": pod cidr not assigned");
        assert!(c.check_lease("n1", &only4).unwrap_err().is_not_assigned());
        let e = c.lease_from_pod_cidrs("n1", &["bogus"]).unwrap_err();
        assert!(!e.is_not_assigned());
        assert!(e.to_string().contains("invalid podCIDR \"bogus\""));
        assert!(!c.check_lease("n1", &outside).unwrap_err().is_not_assigned());

        // v4-only config ignores an extra v6 podCIDR.
        let c4 = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c4.check_lease("n1", &both).unwrap(), only4);
        assert!(c4.in_pod_network("10.244.9.9".parse().unwrap()));
        assert!(!c4.in_pod_network("10.245.9.9".parse().unwrap()));
        assert!(!c4.in_pod_network("fd00:10::1".parse().unwrap()));
    }
}
