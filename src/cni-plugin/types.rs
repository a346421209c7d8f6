//! CNI protocol types: spec versions, the error JSON with its well-known codes, and the ADD
//! result in one internal shape that renders into the shape each spec version requires.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions this plugin speaks. 0.1.0/0.2.0 (legacy `ip4`/`ip6` results) are not
/// supported: every runtime in use today sends ≥ 0.3.0 (kube-flannel's conflist uses 0.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version in [`CniVersion`], oldest first, as VERSION reports them.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "0.3.0" => Ok(Self::V0_3_0),
            "0.3.1" => Ok(Self::V0_3_1),
            "0.4.0" => Ok(Self::V0_4_0),
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => {
                let valid_semver = other.split('.').count() == 3
                    && other
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if valid_semver {
                    Err(CniError::new(
                        ErrorCode::IncompatibleVersion,
                        format!(
                            "incompatible CNI versions; config is \"{other}\", plugin supports {:?}",
                            SUPPORTED_VERSIONS
                        ),
                    ))
                } else {
                    Err(CniError::new(
                        ErrorCode::DecodingFailure,
                        format!("invalid cniVersion {other:?}: not a version string"),
                    ))
                }
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn allows_gc_and_status(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Up to 0.4.0 every `ips[]` entry carries `"version": "4"|"6"`.
    fn ips_carry_version(self) -> bool {
        self < Self::V1_0_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Well-known error codes (spec "Error" section; 8 and 999 are the Go library's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnvironment,
    Io,
    DecodingFailure,
    InvalidNetworkConfig,
    InvalidNetns,
    TryAgainLater,
    PluginNotAvailable,
    PluginNotAvailableLimitedConnectivity,
    Internal,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::DecodingFailure => 6,
            Self::InvalidNetworkConfig => 7,
            Self::InvalidNetns => 8,
            Self::TryAgainLater => 11,
            Self::PluginNotAvailable => 50,
            Self::PluginNotAvailableLimitedConnectivity => 51,
            Self::Internal => 999,
        }
    }
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, msg)
    }

    /// The error JSON; `cniVersion` is included when the request's version is known.
    pub fn to_json(&self, version: Option<&str>) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion", skip_serializing_if = "Option::is_none")]
            cni_version: Option<&'a str>,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"unprintable error\"}}", self.code))
    }

    /// Reads an error JSON printed by another plugin (a delegate).
    pub fn from_plugin_output(stdout: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Wire {
            code: u32,
            #[serde(default)]
            msg: String,
            #[serde(default)]
            details: String,
        }
        let wire: Wire = serde_json::from_slice(stdout).ok()?;
        Some(Self {
            code: wire.code,
            msg: wire.msg,
            details: wire.details,
        })
    }
}

/// `interfaces[]` entry of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the container, empty for host interfaces.
    pub sandbox: String,
    pub mtu: Option<u32>,
    pub socket_path: String,
    pub pci_id: String,
}

/// `ips[]` entry of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. 10.244.1.2/24.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` (absent in IPAM results).
    pub interface: Option<usize>,
}

/// `routes[]` entry of a result, also the shape of `ipam.routes` in a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn to(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// `dns` of a result or a config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// An ADD result in version-independent form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

// Wire shapes. Field order follows the Go types so the bytes match the reference plugins.

#[derive(Serialize, Deserialize)]
struct WireInterface {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pci_id: String,
}

#[derive(Serialize, Deserialize)]
struct WireIpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

/// The result of 0.3.x, 0.4.0 and 1.x: the versions differ only inside `ips` (see
/// [`WireIpConfig`]).
#[derive(Serialize)]
struct WireResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<WireInterface>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<WireIpConfig>,
    #[serde(skip_serializing_if = "<[Route]>::is_empty")]
    routes: &'a [Route],
    // The 0.3.x/0.4.0 Go type always prints `"dns":{}`; measured: the reference (Debian
    // containernetworking-plugins 1.1.1) prints it in 1.0.0 results as well, so we do too.
    dns: &'a Dns,
}

#[derive(Deserialize)]
struct WireResultIn {
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Renders the result in the shape `version` requires.
    pub fn render(&self, version: CniVersion) -> String {
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| WireInterface {
                name: i.name.clone(),
                mac: i.mac.clone(),
                // mtu, socketPath and pciID are 1.1.0 additions.
                mtu: if version >= CniVersion::V1_1_0 {
                    i.mtu
                } else {
                    None
                },
                sandbox: i.sandbox.clone(),
                socket_path: if version >= CniVersion::V1_1_0 {
                    i.socket_path.clone()
                } else {
                    String::new()
                },
                pci_id: if version >= CniVersion::V1_1_0 {
                    i.pci_id.clone()
                } else {
                    String::new()
                },
            })
            .collect();
        let ips = self
            .ips
            .iter()
            .map(|ip| WireIpConfig {
                version: version
                    .ips_carry_version()
                    .then(|| if ip.address.is_ipv4() { "4" } else { "6" }.to_string()),
                interface: ip.interface,
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect();
        let rendered = serde_json::to_string(&WireResult {
            cni_version: version.as_str(),
            interfaces,
            ips,
            routes: &self.routes,
            dns: &self.dns,
        });
        // Serialising plain strings, numbers and addresses cannot fail.
        rendered.unwrap_or_default()
    }

    /// Parses a result of any supported version (e.g. a `prevResult` or a delegate's output).
    pub fn parse(value: &Value) -> Result<Self, CniError> {
        let wire: WireResultIn = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, "cannot decode CNI result")
                .with_details(e.to_string())
        })?;
        Ok(Self {
            interfaces: wire
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                    mtu: i.mtu,
                    socket_path: i.socket_path,
                    pci_id: i.pci_id,
                })
                .collect(),
            ips: wire
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: wire.routes,
            dns: wire.dns,
        })
    }
}

/// The VERSION answer.
pub fn version_info(requested: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "cniVersion")]
        cni_version: &'a str,
        #[serde(rename = "supportedVersions")]
        supported: &'a [&'a str],
    }
    // The spec asks to echo the request's version; an unknown one gets our latest.
    let echoed = requested
        .and_then(|v| CniVersion::parse(v).ok())
        .unwrap_or(CniVersion::LATEST);
    serde_json::to_string(&Wire {
        cni_version: echoed.as_str(),
        supported: &SUPPORTED_VERSIONS,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "veth1234abcd".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:03".into(),
                    sandbox: "/run/netns/p1".into(),
                    mtu: Some(1450),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(2),
            }],
            routes: vec![
                Route::to("10.244.0.0/16".parse().unwrap(), None),
                Route::to(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.1.1".parse().unwrap()),
                ),
            ],
            dns: Dns::default(),
        }
    }

    #[test]
    fn renders_0_3_1_exactly_like_the_reference_bridge() {
        let got = sample().render(CniVersion::V0_3_1);
        assert_eq!(
            got,
            r#"{"cniVersion":"0.3.1","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},{"name":"veth1234abcd","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/run/netns/p1"}],"ips":[{"version":"4","interface":2,"address":"10.244.1.2/24","gateway":"10.244.1.1"}],"routes":[{"dst":"10.244.0.0/16"},{"dst":"0.0.0.0/0","gw":"10.244.1.1"}],"dns":{}}"#
        );
    }

    #[test]
    fn version_field_only_before_1_0_and_dns_always() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_4_0] {
            let json: Value = serde_json::from_str(&sample().render(v)).unwrap();
            assert_eq!(json["ips"][0]["version"], "4", "{v}");
            assert!(json.get("dns").is_some(), "{v}");
            assert!(json["interfaces"][2].get("mtu").is_none(), "{v}");
        }
        for v in [CniVersion::V1_0_0, CniVersion::V1_1_0] {
            let json: Value = serde_json::from_str(&sample().render(v)).unwrap();
            assert_eq!(json["cniVersion"], v.as_str());
            assert!(json["ips"][0].get("version").is_none(), "{v}");
            assert_eq!(json["dns"], serde_json::json!({}), "{v}");
            assert_eq!(json["ips"][0]["interface"], 2);
        }
        let v1_0: Value = serde_json::from_str(&sample().render(CniVersion::V1_0_0)).unwrap();
        assert!(v1_0["interfaces"][2].get("mtu").is_none());
        let v1_1: Value = serde_json::from_str(&sample().render(CniVersion::V1_1_0)).unwrap();
        assert_eq!(v1_1["interfaces"][2]["mtu"], 1450);
    }

    #[test]
    fn ipv6_addresses_get_version_6() {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00:10:244:1::2/64".parse().unwrap(),
            gateway: Some("fd00:10:244:1::1".parse().unwrap()),
            interface: Some(2),
        });
        let json: Value = serde_json::from_str(&r.render(CniVersion::V0_3_1)).unwrap();
        assert_eq!(json["ips"][1]["version"], "6");
        assert_eq!(json["ips"][1]["address"], "fd00:10:244:1::2/64");
    }

    #[test]
    fn dns_renders_when_set() {
        let mut r = sample();
        r.dns.nameservers = vec!["10.96.0.10".into()];
        r.dns.search = vec!["svc.cluster.local".into()];
        let json: Value = serde_json::from_str(&r.render(CniVersion::V1_0_0)).unwrap();
        assert_eq!(json["dns"]["nameservers"][0], "10.96.0.10");
        assert!(json["dns"].get("domain").is_none());
    }

    #[test]
    fn every_rendered_version_parses_back_to_the_same_result() {
        for v in SUPPORTED_VERSIONS {
            let v = CniVersion::parse(v).unwrap();
            let json: Value = serde_json::from_str(&sample().render(v)).unwrap();
            let mut expected = sample();
            if v < CniVersion::V1_1_0 {
                expected.interfaces[2].mtu = None;
            }
            assert_eq!(CniResult::parse(&json).unwrap(), expected, "{v}");
        }
    }

    #[test]
    fn versions_parse_and_order() {
        assert!(CniVersion::parse("0.3.1").unwrap() < CniVersion::parse("0.4.0").unwrap());
        assert!(!CniVersion::V0_3_1.allows_check());
        assert!(CniVersion::V0_4_0.allows_check());
        assert!(!CniVersion::V1_0_0.allows_gc_and_status());
        assert!(CniVersion::V1_1_0.allows_gc_and_status());
        assert_eq!(CniVersion::parse("0.2.0").unwrap_err().code, 1);
        assert_eq!(CniVersion::parse("9.9.9").unwrap_err().code, 1);
        assert_eq!(CniVersion::parse("banana").unwrap_err().code, 6);
        assert_eq!(CniVersion::parse("").unwrap_err().code, 6);
    }

    #[test]
    fn error_json_has_code_msg_and_optional_fields() {
        let e = CniError::new(ErrorCode::TryAgainLater, "not ready");
        assert_eq!(e.to_json(None), r#"{"code":11,"msg":"not ready"}"#);
        let e = e.with_details("file missing");
        assert_eq!(
            e.to_json(Some("1.0.0")),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"not ready","details":"file missing"}"#
        );
        let back = CniError::from_plugin_output(e.to_json(None).as_bytes()).unwrap();
        assert_eq!(back, e);
        assert!(CniError::from_plugin_output(b"garbage").is_none());
    }

    #[test]
    fn error_codes_match_the_spec() {
        let codes: Vec<u32> = [
            ErrorCode::IncompatibleVersion,
            ErrorCode::UnsupportedField,
            ErrorCode::UnknownContainer,
            ErrorCode::InvalidEnvironment,
            ErrorCode::Io,
            ErrorCode::DecodingFailure,
            ErrorCode::InvalidNetworkConfig,
            ErrorCode::InvalidNetns,
            ErrorCode::TryAgainLater,
            ErrorCode::PluginNotAvailable,
            ErrorCode::PluginNotAvailableLimitedConnectivity,
            ErrorCode::Internal,
        ]
        .iter()
        .map(|c| c.code())
        .collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999]);
    }

    #[test]
    fn version_answer_echoes_known_versions() {
        let v: Value = serde_json::from_str(&version_info(Some("0.3.1"))).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let v: Value = serde_json::from_str(&version_info(Some("0.1.0"))).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let v: Value = serde_json::from_str(&version_info(None)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
