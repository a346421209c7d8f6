//! flannel's Node annotations (upstream's pkg/subnet/kube/annotations.go): prefix normalisation, key names, the byte-exact
//! `backend-data` encoding, tolerant decoding, the annotations we want on our own Node and the
//! minimal optimistic-locked merge patch that gets them there.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use rand::Rng;
use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::net::{Excerpt, Family, MacAddr, MacError, go_ip_string};

/// Upstream's default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// The Kubernetes annotation-key shape the normalised prefix must have (anchored; upstream's
/// pattern with `^` so that a prefix with uppercase labels cannot slip through on a suffix).
static PREFIX_PATTERN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$").ok());

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrefixError {
    #[error("--kube-annotation-prefix {0:?}: can contain at most a single slash")]
    TooManySlashes(String),
    #[error(
        "--kube-annotation-prefix {given:?}: must be in a format fqdn/[0-9a-z-_]* (normalised to {normalised:?})"
    )]
    Format { given: String, normalised: String },
}

/// A normalised annotation prefix: `flannel.alpha.coreos.com/` or `example.com/name-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnnotationPrefix(String);

impl AnnotationPrefix {
    /// Normalises like upstream: no `/` ⇒ append `/`; a `/` not at the end and no trailing `-` ⇒
    /// append `-`; then the result must be a lowercase FQDN, `/`, optional `name-`.
    pub fn new(given: &str) -> Result<AnnotationPrefix, PrefixError> {
        let slashes = given.matches('/').count();
        if slashes > 1 {
            return Err(PrefixError::TooManySlashes(given.to_string()));
        }
        let mut p = given.to_string();
        if slashes == 0 {
            p.push('/');
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let ok = PREFIX_PATTERN.as_ref().is_some_and(|re| re.is_match(&p));
        if !ok {
            return Err(PrefixError::Format {
                given: given.to_string(),
                normalised: p,
            });
        }
        Ok(AnnotationPrefix(p))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does `key` belong to flannel (starts with the prefix)?
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.0, suffix)
    }
}

impl Default for AnnotationPrefix {
    fn default() -> Self {
        AnnotationPrefix(format!("{DEFAULT_PREFIX}/"))
    }
}

/// Every annotation key flannel reads or writes, resolved once for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    pub prefix: AnnotationPrefix,
    pub kube_subnet_manager: String,
    pub backend_type: String,
    pub backend_data: String,
    pub public_ip: String,
    pub backend_v6_data: String,
    pub public_ipv6: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl AnnotationKeys {
    pub fn new(prefix: AnnotationPrefix) -> AnnotationKeys {
        AnnotationKeys {
            kube_subnet_manager: prefix.key("kube-subnet-manager"),
            backend_type: prefix.key("backend-type"),
            backend_data: prefix.key("backend-data"),
            public_ip: prefix.key("public-ip"),
            backend_v6_data: prefix.key("backend-v6-data"),
            public_ipv6: prefix.key("public-ipv6"),
            public_ip_overwrite: prefix.key("public-ip-overwrite"),
            public_ipv6_overwrite: prefix.key("public-ipv6-overwrite"),
            node_public_ip: prefix.key("node-public-ip"),
            node_public_ipv6: prefix.key("node-public-ipv6"),
            prefix,
        }
    }

    pub fn backend_data_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.backend_data,
            Family::V6 => &self.backend_v6_data,
        }
    }

    pub fn public_ip_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.public_ip,
            Family::V6 => &self.public_ipv6,
        }
    }

    pub fn public_ip_overwrite_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.public_ip_overwrite,
            Family::V6 => &self.public_ipv6_overwrite,
        }
    }

    pub fn node_public_ip_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.node_public_ip,
            Family::V6 => &self.node_public_ipv6,
        }
    }
}

impl Default for AnnotationKeys {
    fn default() -> Self {
        AnnotationKeys::new(AnnotationPrefix::default())
    }
}

/// Value of `backend-type` for our backend.
pub const BACKEND_TYPE_VXLAN: &str = "vxlan";
/// Value of `kube-subnet-manager`.
pub const KUBE_SUBNET_MANAGER_TRUE: &str = "true";

/// Decoded `backend-data` / `backend-v6-data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendData {
    /// `None` for very old flannel's `{"VtepMAC":…}` without a VNI.
    pub vni: Option<u32>,
    pub vtep_mac: MacAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendDataError {
    #[error("not valid JSON: {0}")]
    Json(Excerpt),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("\"VNI\" is not an unsigned 32-bit integer: {0}")]
    Vni(Excerpt),
    #[error("\"VtepMAC\" is missing")]
    MissingMac,
    #[error("\"VtepMAC\" is not a string: {0}")]
    MacNotString(Excerpt),
    #[error("\"VtepMAC\": {0}")]
    Mac(#[from] MacError),
}

impl BackendData {
    /// Byte-exact Go `json.Marshal` shape: `{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}`.
    pub fn encode(vni: u32, mac: MacAddr) -> String {
        format!("{{\"VNI\":{vni},\"VtepMAC\":\"{mac}\"}}")
    }

    /// Tolerant decode like Go's `json.Unmarshal`: keys case-insensitive (exact spelling preferred),
    /// unknown keys ignored, `VNI` optional, `VtepMAC` in any `net.ParseMAC` form.
    pub fn decode(text: &str) -> Result<BackendData, BackendDataError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| BackendDataError::Json(e.to_string().into()))?;
        let Value::Object(map) = v else {
            return Err(BackendDataError::NotAnObject);
        };
        let vni = match lookup(&map, "VNI") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| BackendDataError::Vni(n.to_string().into()))?,
            ),
            Some(other) => return Err(BackendDataError::Vni(other.to_string().into())),
        };
        let mac = match lookup(&map, "VtepMAC") {
            None | Some(Value::Null) => return Err(BackendDataError::MissingMac),
            Some(Value::String(s)) => MacAddr::parse_go(s)?,
            Some(other) => return Err(BackendDataError::MacNotString(other.to_string().into())),
        };
        Ok(BackendData { vni, vtep_mac: mac })
    }
}

fn lookup<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// What our node advertises for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnAdvertisement {
    pub vni: u32,
    pub vtep_mac: MacAddr,
    /// The detected external address (`--public-ip`, `node-public-ip` or the interface address).
    pub public_ip: IpAddr,
}

/// Something odd found while computing our desired annotations (log it; the result is still
/// well defined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotationWarning {
    /// A `public-ip[v6]-overwrite` annotation that is not an address of the right family; ignored.
    InvalidOverwrite { key: String, value: String },
}

/// The flannel annotations our node should carry, plus any warnings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredAnnotations {
    pub annotations: BTreeMap<String, String>,
    pub warnings: Vec<AnnotationWarning>,
}

/// Computes our node's flannel annotations (upstream's pkg/subnet/kube/annotations.go). `current` is the node's current
/// annotation map (only the overwrite keys are read from it): a valid `public-ip-overwrite`
/// replaces the advertised `public-ip`, exactly like upstream.
pub fn desired_annotations(
    keys: &AnnotationKeys,
    v4: Option<&OwnAdvertisement>,
    v6: Option<&OwnAdvertisement>,
    current: &BTreeMap<String, String>,
) -> DesiredAnnotations {
    let mut out = DesiredAnnotations::default();
    out.annotations.insert(
        keys.kube_subnet_manager.clone(),
        KUBE_SUBNET_MANAGER_TRUE.to_string(),
    );
    out.annotations
        .insert(keys.backend_type.clone(), BACKEND_TYPE_VXLAN.to_string());
    for (family, adv) in [(Family::V4, v4), (Family::V6, v6)] {
        let Some(adv) = adv else { continue };
        out.annotations.insert(
            keys.backend_data_for(family).to_string(),
            BackendData::encode(adv.vni, adv.vtep_mac),
        );
        let overwrite_key = keys.public_ip_overwrite_for(family);
        let advertised = match current.get(overwrite_key) {
            Some(raw) => match parse_family_ip(raw, family) {
                Some(ip) => ip,
                None => {
                    out.warnings.push(AnnotationWarning::InvalidOverwrite {
                        key: overwrite_key.to_string(),
                        value: raw.clone(),
                    });
                    adv.public_ip
                }
            },
            None => adv.public_ip,
        };
        out.annotations.insert(
            keys.public_ip_for(family).to_string(),
            go_ip_string(advertised),
        );
    }
    out
}

/// Parses an address of `family` (Go's `net.ParseIP` + family check). IPv4-mapped IPv6 text
/// counts as IPv4, as in Go.
pub fn parse_family_ip(text: &str, family: Family) -> Option<IpAddr> {
    let ip: IpAddr = text.parse().ok()?;
    match (ip, family) {
        (IpAddr::V4(_), Family::V4) => Some(ip),
        (IpAddr::V6(v6), Family::V4) => v6.to_ipv4_mapped().map(IpAddr::V4),
        (IpAddr::V6(v6), Family::V6) if v6.to_ipv4_mapped().is_none() => Some(ip),
        _ => None,
    }
}

/// The `node-public-ip` / `node-public-ipv6` overrides on our node (step 1 of upstream's interface selection in main.go), which
/// take precedence over `--public-ip` / `--public-ipv6`. Invalid values are reported as errors so
/// the caller can log them; they are then ignored.
pub fn node_public_ip_override(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>, Vec<AnnotationWarning>) {
    let mut warnings = Vec::new();
    let mut get = |family: Family| -> Option<IpAddr> {
        let key = keys.node_public_ip_for(family);
        let raw = annotations.get(key)?;
        let ip = parse_family_ip(raw, family);
        if ip.is_none() {
            warnings.push(AnnotationWarning::InvalidOverwrite {
                key: key.to_string(),
                value: raw.clone(),
            });
        }
        ip
    };
    let v4 = match get(Family::V4) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let v6 = match get(Family::V6) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    (v4, v6, warnings)
}

/// A JSON merge patch for `PATCH /api/v1/nodes/NAME/status`
/// (`application/merge-patch+json`) that sets only our changed annotations and carries the
/// `resourceVersion` it was computed from, so a concurrent writer makes it fail with 409.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnotationsPatch {
    pub metadata: PatchMetadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchMetadata {
    #[serde(rename = "resourceVersion")]
    pub resource_version: String,
    pub annotations: BTreeMap<String, String>,
}

impl AnnotationsPatch {
    pub fn to_json(&self) -> Value {
        // Serialising two strings and a string map cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The minimal patch that makes `current` carry every `desired` entry, or `None` when it
/// already does. Keys not in `desired` are never mentioned (other writers' annotations and our
/// keys for disabled families stay as they are).
pub fn annotations_patch(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    resource_version: &str,
) -> Option<AnnotationsPatch> {
    let changed: BTreeMap<String, String> = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if changed.is_empty() {
        return None;
    }
    Some(AnnotationsPatch {
        metadata: PatchMetadata {
            resource_version: resource_version.to_string(),
            annotations: changed,
        },
    })
}

/// Body of the `NetworkUnavailable=False` condition patch (upstream's pkg/subnet/kube/kube.go) for
/// `PATCH nodes/NAME/status`. Must be sent as a **strategic** merge patch
/// (`application/strategic-merge-patch+json`): conditions merge by `type` there, whereas a JSON
/// merge patch would replace the whole conditions list. `now` is RFC 3339 (`2024-05-01T10:00:00Z`).
pub fn network_unavailable_patch(now: &str) -> Value {
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "FlannelIsUp",
                "message": "Flannel is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

/// Our VTEP MAC for `family` as recorded in our own node's `backend-data` annotation, if it is a
/// usable unicast MAC. Uses the real JSON decoder (upstream's string surgery only understands
/// its own exact shape).
pub fn own_mac_from_annotations(
    keys: &AnnotationKeys,
    annotations: &BTreeMap<String, String>,
    family: Family,
) -> Option<MacAddr> {
    let raw = annotations.get(keys.backend_data_for(family))?;
    let mac = BackendData::decode(raw).ok()?.vtep_mac;
    mac.is_unicast().then_some(mac)
}

/// Where the VTEP MAC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    /// The already existing, compatible device keeps its address.
    ExistingDevice,
    /// Restored from our node's `backend-data` annotation (stable across reboots).
    Annotation,
    /// Newly generated locally administered unicast address.
    Random,
}

/// VTEP MAC choice (upstream's pkg/backend/vxlan): existing compatible device's MAC > our annotation's MAC > random.
/// Unusable candidates (zero, multicast) are skipped.
pub fn choose_vtep_mac<R: Rng + ?Sized>(
    existing_device: Option<MacAddr>,
    from_annotation: Option<MacAddr>,
    rng: &mut R,
) -> (MacAddr, MacSource) {
    if let Some(m) = existing_device.filter(|m| m.is_unicast()) {
        return (m, MacSource::ExistingDevice);
    }
    if let Some(m) = from_annotation.filter(|m| m.is_unicast()) {
        return (m, MacSource::Annotation);
    }
    (MacAddr::random_local(rng), MacSource::Random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MAC: MacAddr = MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]);

    #[test]
    fn prefix_normalisation_examples() {
        let ok = [
            ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
            ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/"),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-",
            ),
            ("example.com/my_name", "example.com/my_name-"),
            ("a-b.c_d.io", "a-b.c_d.io/"),
        ];
        for (given, want) in ok {
            assert_eq!(
                AnnotationPrefix::new(given).unwrap().as_str(),
                want,
                "{given}"
            );
        }
        for bad in [
            "org",
            "org.COM",
            "Flannel.alpha.coreos.com",
            "a/b/c",
            "",
            "/",
            "example.com/UPPER",
            "example.com/na.me",
            ".com",
            "example..com",
        ] {
            assert!(AnnotationPrefix::new(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            AnnotationPrefix::new("a/b/c"),
            Err(PrefixError::TooManySlashes(_))
        ));
        assert_eq!(
            AnnotationPrefix::default().as_str(),
            "flannel.alpha.coreos.com/"
        );
    }

    #[test]
    fn key_set() {
        let k = AnnotationKeys::default();
        assert_eq!(k.backend_type, "flannel.alpha.coreos.com/backend-type");
        assert_eq!(k.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            k.backend_v6_data,
            "flannel.alpha.coreos.com/backend-v6-data"
        );
        assert_eq!(
            k.kube_subnet_manager,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(k.public_ip, "flannel.alpha.coreos.com/public-ip");
        assert_eq!(k.public_ipv6, "flannel.alpha.coreos.com/public-ipv6");
        assert_eq!(
            k.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        assert_eq!(
            k.public_ipv6_overwrite,
            "flannel.alpha.coreos.com/public-ipv6-overwrite"
        );
        assert_eq!(k.node_public_ip, "flannel.alpha.coreos.com/node-public-ip");
        assert_eq!(
            k.node_public_ipv6,
            "flannel.alpha.coreos.com/node-public-ipv6"
        );
        let k =
            AnnotationKeys::new(AnnotationPrefix::new("flannel.alpha.coreos.com/prefix").unwrap());
        assert_eq!(
            k.backend_type,
            "flannel.alpha.coreos.com/prefix-backend-type"
        );
        assert!(k.prefix.owns("flannel.alpha.coreos.com/prefix-public-ip"));
        assert!(!k.prefix.owns("flannel.alpha.coreos.com/public-ip"));
    }

    #[test]
    fn backend_data_golden_encoding() {
        assert_eq!(
            BackendData::encode(1, MAC),
            r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#
        );
        assert_eq!(
            BackendData::encode(4096, MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])),
            r#"{"VNI":4096,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#
        );
    }

    #[test]
    fn backend_data_tolerant_decoding() {
        let want = BackendData {
            vni: Some(1),
            vtep_mac: MAC,
        };
        for text in [
            r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#,
            r#"{"vni":1,"vtepmac":"12:C6:65:89:B4:E3"}"#,
            r#" { "VtepMAC" : "12-c6-65-89-b4-e3" , "VNI" : 1, "extra": [1] } "#,
            r#"{"VNI":1,"VtepMAC":"12c6.6589.b4e3"}"#,
        ] {
            assert_eq!(BackendData::decode(text).unwrap(), want, "{text}");
        }
        assert_eq!(
            BackendData::decode(r#"{"VtepMAC":"12:c6:65:89:b4:e3"}"#).unwrap(),
            BackendData {
                vni: None,
                vtep_mac: MAC
            }
        );
        let bad = [
            ("", "not valid JSON"),
            ("null", "not a JSON object"),
            ("[]", "not a JSON object"),
            (r#"{"VNI":1}"#, "\"VtepMAC\" is missing"),
            (r#"{"VNI":1,"VtepMAC":null}"#, "\"VtepMAC\" is missing"),
            (r#"{"VNI":1,"VtepMAC":5}"#, "not a string"),
            (r#"{"VNI":1,"VtepMAC":"zz"}"#, "malformed MAC"),
            (r#"{"VNI":-1,"VtepMAC":"12:c6:65:89:b4:e3"}"#, "\"VNI\""),
            (
                r#"{"VNI":4294967296,"VtepMAC":"12:c6:65:89:b4:e3"}"#,
                "\"VNI\"",
            ),
            (r#"{"VNI":"1","VtepMAC":"12:c6:65:89:b4:e3"}"#, "\"VNI\""),
            (r#"{"VNI":1.5,"VtepMAC":"12:c6:65:89:b4:e3"}"#, "\"VNI\""),
        ];
        for (text, want) in bad {
            let e = BackendData::decode(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    fn adv4() -> OwnAdvertisement {
        OwnAdvertisement {
            vni: 1,
            vtep_mac: MAC,
            public_ip: "192.168.1.10".parse().unwrap(),
        }
    }

    fn adv6() -> OwnAdvertisement {
        OwnAdvertisement {
            vni: 1,
            vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 6]),
            public_ip: "2001:db8:0:0:0:0:0:10".parse().unwrap(),
        }
    }

    #[test]
    fn desired_v4_golden() {
        let k = AnnotationKeys::default();
        let d = desired_annotations(&k, Some(&adv4()), None, &BTreeMap::new());
        assert!(d.warnings.is_empty());
        assert_eq!(
            d.annotations,
            map(&[
                (
                    "flannel.alpha.coreos.com/backend-data",
                    r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#
                ),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "192.168.1.10"),
            ])
        );
    }

    #[test]
    fn desired_dual_stack_and_v6_only() {
        let k = AnnotationKeys::default();
        let d = desired_annotations(&k, Some(&adv4()), Some(&adv6()), &BTreeMap::new());
        assert_eq!(d.annotations.len(), 6);
        assert_eq!(
            d.annotations["flannel.alpha.coreos.com/backend-v6-data"],
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}"#
        );
        assert_eq!(
            d.annotations["flannel.alpha.coreos.com/public-ipv6"],
            "2001:db8::10"
        );
        let d = desired_annotations(&k, None, Some(&adv6()), &BTreeMap::new());
        assert_eq!(d.annotations.len(), 4);
        assert!(!d.annotations.contains_key(&k.backend_data));
        assert!(!d.annotations.contains_key(&k.public_ip));
    }

    #[test]
    fn public_ip_overwrite_semantics() {
        let k = AnnotationKeys::default();
        let cur = map(&[
            (
                "flannel.alpha.coreos.com/public-ip-overwrite",
                "203.0.113.7",
            ),
            (
                "flannel.alpha.coreos.com/public-ipv6-overwrite",
                "2001:DB8::7",
            ),
        ]);
        let d = desired_annotations(&k, Some(&adv4()), Some(&adv6()), &cur);
        assert_eq!(d.annotations[&k.public_ip], "203.0.113.7");
        assert_eq!(d.annotations[&k.public_ipv6], "2001:db8::7");
        assert!(d.warnings.is_empty());
        // overwrite keys themselves are never written by us
        assert!(!d.annotations.contains_key(&k.public_ip_overwrite));

        let cur = map(&[
            ("flannel.alpha.coreos.com/public-ip-overwrite", "not-an-ip"),
            ("flannel.alpha.coreos.com/public-ipv6-overwrite", "10.0.0.1"),
        ]);
        let d = desired_annotations(&k, Some(&adv4()), Some(&adv6()), &cur);
        assert_eq!(d.annotations[&k.public_ip], "192.168.1.10");
        assert_eq!(d.annotations[&k.public_ipv6], "2001:db8::10");
        assert_eq!(d.warnings.len(), 2);
    }

    #[test]
    fn node_public_ip_annotations() {
        let k = AnnotationKeys::default();
        let (v4, v6, w) = node_public_ip_override(
            &k,
            &map(&[
                ("flannel.alpha.coreos.com/node-public-ip", "10.1.1.1"),
                ("flannel.alpha.coreos.com/node-public-ipv6", "fd00::1"),
            ]),
        );
        assert_eq!(v4, Some("10.1.1.1".parse().unwrap()));
        assert_eq!(v6, Some("fd00::1".parse().unwrap()));
        assert!(w.is_empty());
        let (v4, v6, w) = node_public_ip_override(
            &k,
            &map(&[("flannel.alpha.coreos.com/node-public-ip", "fd00::1")]),
        );
        assert_eq!((v4, v6), (None, None));
        assert_eq!(w.len(), 1);
        let (v4, v6, w) = node_public_ip_override(&k, &BTreeMap::new());
        assert_eq!((v4, v6, w.len()), (None, None, 0));
    }

    #[test]
    fn patch_is_minimal_and_locked() {
        let k = AnnotationKeys::default();
        let desired = desired_annotations(&k, Some(&adv4()), None, &BTreeMap::new()).annotations;
        // all right already → no patch
        let mut current = desired.clone();
        current.insert("other.io/keep".into(), "x".into());
        assert_eq!(annotations_patch(&current, &desired, "42"), None);

        // one key stale, one missing; foreign keys and our keys for other families untouched
        current.insert(k.public_ip.clone(), "1.2.3.4".into());
        current.remove(&k.backend_type);
        current.insert(k.backend_v6_data.clone(), "stale".into());
        let p = annotations_patch(&current, &desired, "42").unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"metadata":{"resourceVersion":"42","annotations":{"flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/public-ip":"192.168.1.10"}}}"#
        );
        assert_eq!(p.to_json()["metadata"]["resourceVersion"], "42");

        // clobbered (no annotations at all) → everything
        let p = annotations_patch(&BTreeMap::new(), &desired, "7").unwrap();
        assert_eq!(p.metadata.annotations, desired);
        let body = serde_json::to_string(&p).unwrap();
        assert!(body.contains(r#""flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"12:c6:65:89:b4:e3\"}""#), "{body}");
    }

    #[test]
    fn network_unavailable_condition() {
        assert_eq!(
            serde_json::to_string(&network_unavailable_patch("2024-05-01T10:00:00Z")).unwrap(),
            r#"{"status":{"conditions":[{"lastHeartbeatTime":"2024-05-01T10:00:00Z","lastTransitionTime":"2024-05-01T10:00:00Z","message":"Flannel is running on this node","reason":"FlannelIsUp","status":"False","type":"NetworkUnavailable"}]}}"#
        );
    }

    #[test]
    fn own_mac_recovery() {
        let k = AnnotationKeys::default();
        let a = map(&[
            (
                "flannel.alpha.coreos.com/backend-data",
                r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#,
            ),
            (
                "flannel.alpha.coreos.com/backend-v6-data",
                r#"{"vtepmac":"02-00-00-00-00-06"}"#,
            ),
        ]);
        assert_eq!(own_mac_from_annotations(&k, &a, Family::V4), Some(MAC));
        assert_eq!(
            own_mac_from_annotations(&k, &a, Family::V6),
            Some(MacAddr([2, 0, 0, 0, 0, 6]))
        );
        for bad in [
            "garbage",
            r#"{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}"#,
            r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#,
            r#"{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#,
        ] {
            let a = map(&[("flannel.alpha.coreos.com/backend-data", bad)]);
            assert_eq!(own_mac_from_annotations(&k, &a, Family::V4), None, "{bad}");
        }
        assert_eq!(
            own_mac_from_annotations(&k, &BTreeMap::new(), Family::V4),
            None
        );
    }

    #[test]
    fn mac_choice_precedence() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let dev = MacAddr([0x02, 1, 1, 1, 1, 1]);
        let ann = MacAddr([0x02, 2, 2, 2, 2, 2]);
        assert_eq!(
            choose_vtep_mac(Some(dev), Some(ann), &mut rng),
            (dev, MacSource::ExistingDevice)
        );
        assert_eq!(
            choose_vtep_mac(None, Some(ann), &mut rng),
            (ann, MacSource::Annotation)
        );
        assert_eq!(
            choose_vtep_mac(Some(MacAddr([0; 6])), Some(ann), &mut rng),
            (ann, MacSource::Annotation)
        );
        let (m, src) = choose_vtep_mac(None, Some(MacAddr([0xff; 6])), &mut rng);
        assert_eq!(src, MacSource::Random);
        assert!(m.is_unicast() && m.is_locally_administered());
    }
}
