//! Configuration on stdin: the flannel netconf, the delegate config it renders (byte-for-byte
//! what upstream's plugin hands to `bridge` and saves for DEL), and the bridge options read
//! back from a delegate config.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::types::{CniError, CniVersion, Dns, ErrorCode, Route};
use crate::net::parse_cidr_addr;
use crate::subnet_env::SubnetEnv;

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";

/// One still-valid attachment named by a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The flannel plugin's own configuration (one conflist entry or a standalone .conf).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: CniVersion,
    /// `cniVersion` as written (copied into the delegate only when present, like upstream).
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub delegate: Map<String, Value>,
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` (or the spec-v1.1.0 spelling `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn decode_err(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::DecodingFailure, msg)
}

fn config_err(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

/// The `cniVersion` of a config, if it can be found at all (used to label error output).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Network names become directory names: same rule as the Go skeleton, plus a length cap.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !first_ok || !rest_ok || name.len() > 200 || name.contains("..") {
        return Err(config_err(format!(
            "invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$, at most 200 characters, no \"..\""
        )));
    }
    Ok(())
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(decode_err(format!(
            "config key {key:?} must be a string, got {other}"
        ))),
    }
}

fn opt_object(obj: &Map<String, Value>, key: &str) -> Result<Option<Map<String, Value>>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(decode_err(format!(
            "config key {key:?} must be an object, got {other}"
        ))),
    }
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            decode_err("cannot parse the network configuration on stdin as JSON")
                .with_details(e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(decode_err(
                "the network configuration must be a JSON object",
            ));
        };
        let cni_version = opt_string(&obj, "cniVersion")?.unwrap_or_default();
        let version = if cni_version.is_empty() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                "config has no cniVersion (that means 0.1.0); this plugin supports 0.3.0 to 1.1.0",
            ));
        } else {
            CniVersion::parse(&cni_version)?
        };
        let name = opt_string(&obj, "name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| config_err("config has no network \"name\""))?;
        validate_network_name(&name)?;
        let plugin_type = opt_string(&obj, "type")?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| config_err("config has no plugin \"type\""))?;
        let subnet_file = opt_string(&obj, "subnetFile")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_string());
        let data_dir = opt_string(&obj, "dataDir")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
        let delegate = opt_object(&obj, "delegate")?.unwrap_or_default();
        for forbidden in ["name", "ipam"] {
            if delegate.contains_key(forbidden) {
                return Err(config_err(format!(
                    "\"delegate\" must not contain {forbidden:?}: flannel sets it"
                )));
            }
        }
        if let Some(t) = delegate.get("type")
            && !t.is_string()
        {
            return Err(config_err(format!(
                "delegate \"type\" must be a string, got {t}"
            )));
        }
        let ipam = opt_object(&obj, "ipam")?;
        let runtime_config = obj.get("runtimeConfig").filter(|v| !v.is_null()).cloned();
        let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        let attachments = obj
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
            .filter(|v| !v.is_null());
        let valid_attachments = match attachments {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<Vec<Attachment>>(v.clone()).map_err(|e| {
                    decode_err("cannot decode cni.dev/valid-attachments")
                        .with_details(e.to_string())
                })?,
            ),
        };
        Ok(Self {
            version,
            cni_version,
            name,
            plugin_type,
            subnet_file: PathBuf::from(subnet_file),
            data_dir: PathBuf::from(data_dir),
            delegate,
            ipam,
            runtime_config,
            prev_result,
            valid_attachments,
        })
    }

    /// The delegate config, rendered exactly like upstream's `doCmdAdd`/`getDelegateIPAM`.
    pub fn render_delegate(&self, env: &SubnetEnv) -> Result<Map<String, Value>, CniError> {
        let mut d = self.delegate.clone();
        if let Some(rc) = &self.runtime_config {
            d.insert("runtimeConfig".into(), rc.clone());
        }
        d.insert("name".into(), Value::String(self.name.clone()));
        d.entry("type")
            .or_insert_with(|| Value::String("bridge".into()));
        // flanneld masquerades itself when FLANNEL_IPMASQ is true; otherwise the bridge must.
        d.entry("ipMasq").or_insert(Value::Bool(!env.ip_masq));
        d.entry("mtu").or_insert(Value::from(env.mtu));
        if d.get("type").and_then(Value::as_str) == Some("bridge") {
            d.entry("isGateway").or_insert(Value::Bool(true));
        }
        if !self.cni_version.is_empty() {
            d.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        }

        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.entry("type")
            .or_insert_with(|| Value::String("host-local".into()));
        let mut ranges = Vec::new();
        // The subnet's network: flanneld writes the gateway address (`10.244.1.1/24`).
        if let Some(sn) = env.subnet_v4_network() {
            ranges.push(serde_json::json!([{ "subnet": sn.to_string() }]));
        }
        if let Some(sn) = env.subnet_v6_network() {
            ranges.push(serde_json::json!([{ "subnet": sn.to_string() }]));
        }
        ipam.insert("ranges".into(), Value::Array(ranges));
        // User routes go through the Route type (unknown keys dropped), then one per network.
        let mut routes: Vec<Route> = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                config_err("cannot decode ipam \"routes\"").with_details(e.to_string())
            })?,
        };
        routes.extend(env.networks_v4.iter().map(|n| Route::to((*n).into(), None)));
        routes.extend(env.networks_v6.iter().map(|n| Route::to((*n).into(), None)));
        ipam.insert(
            "routes".into(),
            serde_json::to_value(&routes).map_err(|e| CniError::internal(e.to_string()))?,
        );
        d.insert("ipam".into(), Value::Object(ipam));
        Ok(d)
    }
}

/// Serialises a delegate config like Go's `json.Marshal` of a map: compact, keys sorted
/// (serde_json's default map is ordered), `<`, `>` and `&` escaped.
pub fn delegate_bytes(delegate: &Map<String, Value>) -> Vec<u8> {
    let plain = serde_json::to_string(delegate).unwrap_or_default();
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// `runtimeConfig` keys the native path uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    /// host-local prepends these range sets; the native path hands such configs to the
    /// reference plugins instead.
    #[serde(rename = "ipRanges", default)]
    pub ip_ranges: Vec<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct CniArgsSection {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ArgsSection {
    #[serde(default)]
    cni: Option<CniArgsSection>,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

/// The reference `bridge` plugin's options, read from a delegate config.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default)]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(rename = "bridge", default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: i64,
    #[serde(default)]
    pub vlan_trunk: Option<Vec<Value>>,
    #[serde(rename = "macspoofchk", default)]
    pub mac_spoof_chk: bool,
    #[serde(rename = "enabledad", default)]
    pub enable_dad: bool,
    #[serde(default)]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub port_isolation: bool,
    #[serde(default)]
    pub ipam: Map<String, Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    args: Option<ArgsSection>,
}

/// How a delegate config is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// In this process: bridge + veth + host-local-compatible IPAM.
    Native,
    /// Exec the named plugin from CNI_PATH, like upstream (`reason` says why).
    Exec { plugin: String, reason: String },
}

impl BridgeConf {
    pub fn from_delegate(delegate: &Map<String, Value>) -> Result<Self, CniError> {
        let mut conf: BridgeConf = serde_json::from_value(Value::Object(delegate.clone()))
            .map_err(|e| {
                config_err("cannot decode the bridge configuration").with_details(e.to_string())
            })?;
        if conf.is_default_gateway {
            conf.is_gateway = true;
        }
        if conf.hairpin_mode && conf.promisc_mode {
            return Err(config_err(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 || conf.bridge.contains('/') {
            return Err(config_err(format!(
                "invalid bridge name {:?}: 1 to 15 bytes, no '/'",
                conf.bridge
            )));
        }
        Ok(conf)
    }

    /// Native when every option in use is implemented here; otherwise exec the reference.
    pub fn plan(&self) -> Plan {
        let exec = |plugin: &str, reason: &str| Plan::Exec {
            plugin: plugin.to_string(),
            reason: reason.to_string(),
        };
        if self.plugin_type != "bridge" {
            return exec(&self.plugin_type, "delegate type is not bridge");
        }
        let ipam_type = self.ipam.get("type").and_then(Value::as_str).unwrap_or("");
        if ipam_type != "host-local" {
            return exec("bridge", "ipam type is not host-local");
        }
        let unsupported = [
            (self.vlan != 0, "vlan"),
            (
                self.vlan_trunk.as_ref().is_some_and(|v| !v.is_empty()),
                "vlanTrunk",
            ),
            (self.mac_spoof_chk, "macspoofchk"),
            (
                self.disable_container_interface,
                "disableContainerInterface",
            ),
            (self.port_isolation, "portIsolation"),
            (self.promisc_mode, "promiscMode"),
            (self.enable_dad, "enabledad"),
            (
                self.runtime_config
                    .as_ref()
                    .is_some_and(|r| !r.ip_ranges.is_empty()),
                "runtimeConfig.ipRanges",
            ),
            (
                self.ip_masq
                    && self
                        .ip_masq_backend
                        .as_deref()
                        .is_some_and(|b| b != "iptables"),
                "ipMasqBackend",
            ),
        ];
        match unsupported.iter().find(|(used, _)| *used) {
            Some((_, key)) => exec("bridge", &format!("option {key} is delegated")),
            None => Plan::Native,
        }
    }

    /// The container MAC requested by `CNI_ARGS MAC=`, `args.cni.mac` or `runtimeConfig.mac`
    /// (later ones win, like the reference bridge).
    pub fn requested_mac(&self, cni_args: &CniArgs) -> Option<String> {
        let mut mac = cni_args.mac.clone();
        if let Some(m) = self
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .and_then(|c| c.mac.clone())
        {
            mac = Some(m);
        }
        if let Some(m) = self.runtime_config.as_ref().and_then(|r| r.mac.clone()) {
            mac = Some(m);
        }
        mac
    }

    /// IPs requested by `CNI_ARGS IP=`, `args.cni.ips` and `runtimeConfig.ips` (host-local).
    pub fn requested_ips(&self, cni_args: &CniArgs) -> Result<Vec<IpAddr>, CniError> {
        let mut out = Vec::new();
        if let Some(ip) = cni_args.ip {
            out.push(ip);
        }
        let from_config = self
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .map(|c| c.ips.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(
                self.runtime_config
                    .as_ref()
                    .map(|r| r.ips.clone())
                    .unwrap_or_default(),
            );
        for s in from_config {
            let ip = parse_cidr_addr(&s)
                .ok()
                .map(|n| n.ip())
                .or_else(|| s.parse().ok())
                .ok_or_else(|| config_err(format!("invalid requested IP {s:?}")))?;
            out.push(ip);
        }
        Ok(out)
    }
}

/// `CNI_ARGS` (`K=V;K=V`) as the bridge and host-local plugins read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub ignore_unknown: bool,
    pub ip: Option<IpAddr>,
    pub mac: Option<String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let env_err = |msg: String| CniError::new(ErrorCode::InvalidEnvironment, msg);
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut pairs = Vec::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| env_err(format!("CNI_ARGS: invalid pair {pair:?}")))?;
            pairs.push((k, v));
        }
        for (k, v) in &pairs {
            if *k == "IgnoreUnknown" {
                args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(env_err(format!(
                            "CNI_ARGS: IgnoreUnknown={v} is not a boolean"
                        )));
                    }
                };
            }
        }
        for (k, v) in pairs {
            match k {
                "IgnoreUnknown" => {}
                "IP" => {
                    args.ip =
                        Some(v.parse().map_err(|_| {
                            env_err(format!("CNI_ARGS: IP={v} is not an IP address"))
                        })?)
                }
                "MAC" => args.mac = Some(v.to_string()),
                other => unknown.push(other.to_string()),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(env_err(format!(
                "CNI_ARGS: unknown args {unknown:?} (set IgnoreUnknown=1 to ignore them)"
            )));
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_v4(ipmasq: bool) -> SubnetEnv {
        SubnetEnv::parse(&format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={ipmasq}\n"
        ))
        .unwrap()
    }

    const KUBE_FLANNEL: &str = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;

    #[test]
    fn stock_kube_flannel_conf_renders_the_reference_delegate_bytes() {
        let conf = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let d = conf.render_delegate(&env_v4(true)).unwrap();
        assert_eq!(
            String::from_utf8(delegate_bytes(&d)).unwrap(),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn delegate_keeps_explicit_settings_and_ipam_extras() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"flannel",
                 "delegate":{"ipMasq":true,"mtu":1400,"isGateway":false,"bridge":"br9"},
                 "ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.168.0.0/16","gw":"10.244.1.254","extra":1}],"ranges":"ignored"},
                 "runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        let d = conf.render_delegate(&env_v4(true)).unwrap();
        assert_eq!(d["ipMasq"], true);
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["isGateway"], false);
        assert_eq!(d["bridge"], "br9");
        assert_eq!(d["runtimeConfig"], serde_json::json!({"portMappings":[]}));
        assert_eq!(d["ipam"]["dataDir"], "/tmp/x");
        assert_eq!(
            d["ipam"]["routes"],
            serde_json::json!([{"dst":"192.168.0.0/16","gw":"10.244.1.254"},{"dst":"10.244.0.0/16"}])
        );
        assert_eq!(
            d["ipam"]["ranges"],
            serde_json::json!([[{"subnet":"10.244.1.0/24"}]])
        );
    }

    #[test]
    fn dual_stack_gets_two_range_sets_and_both_network_routes() {
        let conf = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let d = conf.render_delegate(&env).unwrap();
        assert_eq!(d["ipMasq"], true, "ipMasq is the inverse of FLANNEL_IPMASQ");
        assert_eq!(
            d["ipam"]["ranges"],
            serde_json::json!([[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            d["ipam"]["routes"],
            serde_json::json!([{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}])
        );
    }

    #[test]
    fn non_bridge_delegate_gets_no_is_gateway() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","delegate":{"type":"macvlan"}}"#,
        )
        .unwrap();
        let d = conf.render_delegate(&env_v4(true)).unwrap();
        assert!(d.get("isGateway").is_none());
        assert_eq!(d["type"], "macvlan");
        let b = BridgeConf::from_delegate(&d).unwrap();
        assert!(matches!(b.plan(), Plan::Exec { plugin, .. } if plugin == "macvlan"));
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        let cases: &[(&[u8], u32)] = &[
            (b"{not json", 6),
            (b"[1,2]", 6),
            (br#"{"name":"n","type":"flannel"}"#, 1),
            (br#"{"cniVersion":"0.2.0","name":"n","type":"flannel"}"#, 1),
            (br#"{"cniVersion":"x.y","name":"n","type":"flannel"}"#, 6),
            (br#"{"cniVersion":"0.3.1","type":"flannel"}"#, 7),
            (br#"{"cniVersion":"0.3.1","name":"n"}"#, 7),
            (
                br#"{"cniVersion":"0.3.1","name":"../etc","type":"flannel"}"#,
                7,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"a/b","type":"flannel"}"#,
                7,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","delegate":{"name":"x"}}"#,
                7,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","delegate":{"ipam":{}}}"#,
                7,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","delegate":{"type":5}}"#,
                7,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","delegate":[]}"#,
                6,
            ),
            (
                br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","subnetFile":3}"#,
                6,
            ),
        ];
        for (input, code) in cases {
            let err = NetConf::parse(input).unwrap_err();
            assert_eq!(err.code, *code, "{}: {err}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn gc_attachments_accept_both_spellings() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let conf = NetConf::parse(
                format!(
                    r#"{{"cniVersion":"1.1.0","name":"n","type":"flannel","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            assert_eq!(
                conf.valid_attachments.unwrap(),
                vec![Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }]
            );
        }
    }

    #[test]
    fn bridge_conf_defaults_and_plan() {
        let conf = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        let d = conf.render_delegate(&env_v4(true)).unwrap();
        let b = BridgeConf::from_delegate(&d).unwrap();
        assert_eq!(b.bridge, "cni0");
        assert!(b.is_gateway && b.is_default_gateway && b.hairpin_mode);
        assert!(!b.ip_masq);
        assert_eq!(b.mtu, 1450);
        assert_eq!(b.plan(), Plan::Native);

        let mut other_ipam = d.clone();
        other_ipam.insert("ipam".into(), serde_json::json!({"type":"dhcp"}));
        assert!(matches!(
            BridgeConf::from_delegate(&other_ipam).unwrap().plan(),
            Plan::Exec { plugin, .. } if plugin == "bridge"
        ));
        for (key, value) in [
            ("vlan", serde_json::json!(100)),
            ("promiscMode", serde_json::json!(true)),
            ("enabledad", serde_json::json!(true)),
            ("macspoofchk", serde_json::json!(true)),
            (
                "runtimeConfig",
                serde_json::json!({"ipRanges": [[{"subnet": "10.9.0.0/24"}]]}),
            ),
        ] {
            let mut other = d.clone();
            other.insert(key.into(), value);
            if key == "promiscMode" {
                other.insert("hairpinMode".into(), Value::Bool(false));
            }
            assert!(
                matches!(
                    BridgeConf::from_delegate(&other).unwrap().plan(),
                    Plan::Exec { ref plugin, .. } if plugin == "bridge"
                ),
                "{key}"
            );
        }
        let mut both = d.clone();
        both.insert("promiscMode".into(), Value::Bool(true));
        assert_eq!(BridgeConf::from_delegate(&both).unwrap_err().code, 7);
        let mut long = d;
        long.insert(
            "bridge".into(),
            serde_json::json!("a-very-long-bridge-name"),
        );
        assert_eq!(BridgeConf::from_delegate(&long).unwrap_err().code, 7);
    }

    #[test]
    fn requested_mac_and_ips_follow_reference_precedence() {
        let d: Map<String, Value> = serde_json::from_str(
            r#"{"name":"n","type":"bridge","args":{"cni":{"mac":"02:00:00:00:00:02","ips":["10.244.1.9"]}},
                "runtimeConfig":{"mac":"02:00:00:00:00:03","ips":["10.244.1.10/24"]}}"#,
        )
        .unwrap();
        let b = BridgeConf::from_delegate(&d).unwrap();
        let args = CniArgs::parse("IgnoreUnknown=1;MAC=02:00:00:00:00:01;IP=10.244.1.8").unwrap();
        assert_eq!(b.requested_mac(&args).unwrap(), "02:00:00:00:00:03");
        let ips: Vec<String> = b
            .requested_ips(&args)
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ips, vec!["10.244.1.8", "10.244.1.9", "10.244.1.10"]);
    }

    #[test]
    fn cni_args_parse_like_the_go_library() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("K8S_POD_NAME=x").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("garbage").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("IP=notanip").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("IgnoreUnknown=maybe").unwrap_err().code, 4);
        assert!(CniArgs::parse("IgnoreUnknown=true;X=1").is_ok());
    }

    #[test]
    fn go_style_escaping_of_html_characters() {
        let mut m = Map::new();
        m.insert("a".into(), Value::String("<&>".into()));
        assert_eq!(
            delegate_bytes(&m),
            br#"{"a":"\u003c\u0026\u003e"}"#.to_vec()
        );
    }
}
