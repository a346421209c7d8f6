//! A slim view of a Kubernetes Node: only what flanneld needs (name, identity, age, podCIDRs,
//! flannel annotations, addresses). Two ways in: [`SlimNode`], a serde type that skips
//! everything else while decoding list/watch responses (a kube-rs `Api<SlimNode>` works since
//! it implements the k8s-openapi resource traits), and a conversion from a full
//! `k8s_openapi::api::core::v1::Node`.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, NodeAddress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::annotations::AnnotationPrefix;

/// A Node as decoded from the API with everything flanneld does not need skipped by serde
/// (images, conditions, capacity, managedFields, labels, … are never allocated).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimNode {
    /// Only the fields of [`SlimMeta`] are decoded (kube-rs needs an `ObjectMeta` here).
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SlimNodeSpec,
    #[serde(default)]
    pub status: SlimNodeStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimNodeSpec {
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<NodeAddress>>,
}

/// The metadata fields flanneld reads. Decoding a Node's `metadata` through this type skips
/// `managedFields` (several KB per kubelet-registered node, and the bulk of a list page once
/// decoded), labels, owner references and finalizers without allocating them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Option::<SlimMeta>::deserialize(d)?;
    Ok(m.map(|m| ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        annotations: m.annotations,
        ..ObjectMeta::default()
    })
    .unwrap_or_default())
}

impl k8s_openapi::Resource for SlimNode {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Node";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for SlimNode {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimNode {
    /// Drops what is still large after decoding (managedFields, labels, foreign annotations, …),
    /// for use in a watcher's `.modify()` before objects are cached.
    pub fn strip(&mut self, prefix: &AnnotationPrefix) {
        let m = &mut self.metadata;
        m.managed_fields = None;
        m.labels = None;
        m.owner_references = None;
        m.finalizers = None;
        m.generate_name = None;
        if let Some(a) = m.annotations.as_mut() {
            a.retain(|k, _| prefix.owns(k));
        }
    }
}

/// A node's (flannel) annotations, stored compactly: all keys and values in one string plus
/// their end offsets, sorted by key. The node cache holds one per Node, and a `BTreeMap` of
/// `String`s would take several times the bytes for four entries (a B-tree leaf is sized for
/// 11, and every key and value is an allocation of its own). Lookups scan the handful of
/// entries.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Annotations {
    text: Box<str>,
    /// Per entry: end of its key, end of its value (offsets into `text`).
    ends: Box<[(u32, u32)]>,
}

impl Annotations {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(k, v)| {
            let (k, v) = (k as usize, v as usize);
            let entry = (&self.text[start..k], &self.text[k..v]);
            start = v;
            entry
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// As an ordinary map (for the own-node annotation logic, which works on maps).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Sets `key` (rebuilds the storage; for tests and rare updates). Returns the old value.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let mut map = self.to_map();
        let old = map.insert(key, value);
        *self = map.into_iter().collect();
        old
    }

    /// Removes `key` (rebuilds the storage). Returns the old value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let mut map = self.to_map();
        let old = map.remove(key);
        *self = map.into_iter().collect();
        old
    }
}

impl FromIterator<(String, String)> for Annotations {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        // Sorted and deduplicated (last value wins) like a map built from the same pairs.
        let sorted: BTreeMap<String, String> = iter.into_iter().collect();
        let mut text = String::with_capacity(sorted.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(sorted.len());
        for (k, v) in &sorted {
            text.push_str(k);
            let key_end = text.len();
            text.push_str(v);
            // Annotations are limited to 256 KiB in total by the API server.
            ends.push((key_end as u32, text.len() as u32));
        }
        Annotations {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl From<BTreeMap<String, String>> for Annotations {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl std::ops::Index<&str> for Annotations {
    type Output = str;
    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no annotation {key:?}"))
    }
}

impl std::fmt::Debug for Annotations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The cached form of a Node: everything flanneld decides on, nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    /// Used only as the optimistic-lock precondition of our own annotation patch.
    pub resource_version: String,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Raw `spec.podCIDRs`, or `[spec.podCIDR]` when the list is empty; parsed by the consumer.
    pub pod_cidrs: Vec<String>,
    /// Only the annotations under flannel's prefix.
    pub annotations: Annotations,
    pub internal_ips: Vec<String>,
    pub external_ips: Vec<String>,
}

impl NodeInfo {
    /// From a [`SlimNode`] (consumed: no string is copied twice).
    pub fn from_slim(node: SlimNode, prefix: &AnnotationPrefix) -> NodeInfo {
        let SlimNode {
            metadata,
            spec,
            status,
        } = node;
        NodeInfo::build(
            metadata,
            spec.pod_cidr,
            spec.pod_cidrs,
            status.addresses,
            prefix,
        )
    }

    /// From a full k8s-openapi Node.
    pub fn from_node(node: &Node, prefix: &AnnotationPrefix) -> NodeInfo {
        let spec = node.spec.as_ref();
        NodeInfo::build(
            node.metadata.clone(),
            spec.and_then(|s| s.pod_cidr.clone()),
            spec.and_then(|s| s.pod_cidrs.clone()),
            node.status.as_ref().and_then(|s| s.addresses.clone()),
            prefix,
        )
    }

    fn build(
        metadata: ObjectMeta,
        pod_cidr: Option<String>,
        pod_cidrs: Option<Vec<String>>,
        addresses: Option<Vec<NodeAddress>>,
        prefix: &AnnotationPrefix,
    ) -> NodeInfo {
        let mut cidrs: Vec<String> = pod_cidrs
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        if cidrs.is_empty()
            && let Some(c) = pod_cidr.filter(|c| !c.is_empty())
        {
            cidrs.push(c);
        }
        let mut internal_ips = Vec::new();
        let mut external_ips = Vec::new();
        for a in addresses.unwrap_or_default() {
            match a.type_.as_str() {
                "InternalIP" => internal_ips.push(a.address),
                "ExternalIP" => external_ips.push(a.address),
                _ => {}
            }
        }
        let annotations: Annotations = metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| prefix.owns(k))
            .collect();
        NodeInfo {
            name: metadata.name.unwrap_or_default(),
            uid: metadata.uid.unwrap_or_default(),
            created: metadata.creation_timestamp.map(|t| t.0),
            resource_version: metadata.resource_version.unwrap_or_default(),
            deleting: metadata.deletion_timestamp.is_some(),
            pod_cidrs: cidrs,
            annotations,
            internal_ips,
            external_ips,
        }
    }

    /// A hash of everything peer programming and our own annotation handling depend on —
    /// not the resourceVersion — so a kubelet heartbeat (new resourceVersion, same content)
    /// yields the same fingerprint and can be dropped before any work.
    pub fn relevant_fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.name.hash(&mut h);
        self.uid.hash(&mut h);
        self.created
            .map(|t| (t.as_second(), t.subsec_nanosecond()))
            .hash(&mut h);
        self.deleting.hash(&mut h);
        self.pod_cidrs.hash(&mut h);
        self.annotations.hash(&mut h);
        self.internal_ips.hash(&mut h);
        self.external_ips.hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_node_json() -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "node-a",
                "uid": "1234-5678",
                "resourceVersion": "1001",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"kubernetes.io/hostname": "node-a"},
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"12:c6:65:89:b4:e3\"}",
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/public-ip": "192.168.1.10",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true"
                },
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"], "providerID": "x://y"},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.168.1.10"},
                    {"type": "Hostname", "address": "node-a"},
                    {"type": "ExternalIP", "address": "203.0.113.10"}
                ],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-01T10:00:00Z"}],
                "images": [{"names": ["registry/x:1"], "sizeBytes": 123}],
                "capacity": {"cpu": "2"},
                "nodeInfo": {"kubeletVersion": "v1.33.0", "machineID": "m", "systemUUID": "s", "bootID": "b",
                    "kernelVersion": "k", "osImage": "o", "containerRuntimeVersion": "c", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
            }
        })
    }

    #[test]
    fn slim_and_full_conversions_agree() {
        let prefix = AnnotationPrefix::default();
        let slim: SlimNode = serde_json::from_value(full_node_json()).unwrap();
        assert!(
            slim.metadata.managed_fields.is_none() && slim.metadata.labels.is_none(),
            "managedFields and labels are skipped while decoding"
        );
        assert_eq!(slim.metadata.annotations.as_ref().unwrap().len(), 6);
        let full: Node = serde_json::from_value(full_node_json()).unwrap();
        let a = NodeInfo::from_slim(slim.clone(), &prefix);
        let b = NodeInfo::from_node(&full, &prefix);
        assert_eq!(a, b);
        assert_eq!(a.name, "node-a");
        assert_eq!(a.uid, "1234-5678");
        assert_eq!(a.resource_version, "1001");
        assert_eq!(a.created.unwrap().to_string(), "2024-05-01T10:00:00Z");
        assert_eq!(a.pod_cidrs, vec!["10.244.1.0/24", "fd00:1::/64"]);
        assert_eq!(a.annotations.len(), 4, "only flannel annotations kept");
        assert_eq!(a.internal_ips, vec!["192.168.1.10"]);
        assert_eq!(a.external_ips, vec!["203.0.113.10"]);
        assert!(!a.deleting);

        let mut s = slim;
        s.strip(&prefix);
        assert!(s.metadata.managed_fields.is_none() && s.metadata.labels.is_none());
        assert_eq!(s.metadata.annotations.as_ref().unwrap().len(), 4);
        assert_eq!(s.spec.pod_cidrs.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn pod_cidr_fallback_and_missing_parts() {
        let prefix = AnnotationPrefix::default();
        let slim: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": []}
        }))
        .unwrap();
        let n = NodeInfo::from_slim(slim, &prefix);
        assert_eq!(n.pod_cidrs, vec!["10.244.9.0/24"]);
        assert!(n.annotations.is_empty() && n.internal_ips.is_empty() && n.created.is_none());

        // a node with nothing but a name still converts
        let slim: SlimNode = serde_json::from_value(json!({"metadata": {"name": "bare"}})).unwrap();
        let n = NodeInfo::from_slim(slim, &prefix);
        assert_eq!(n.name, "bare");
        assert!(n.pod_cidrs.is_empty());
        let n = NodeInfo::from_node(&Node::default(), &prefix);
        assert_eq!(n, NodeInfo::default());
    }

    #[test]
    fn compact_annotations_behave_like_a_sorted_map() {
        let mut map = BTreeMap::new();
        map.insert("b/y".to_string(), "2".to_string());
        map.insert("a/x".to_string(), "{\"VNI\":1}".to_string());
        map.insert("c/z".to_string(), String::new());
        let mut a = Annotations::from(map.clone());
        assert_eq!(a.len(), 3);
        assert_eq!(a.get("a/x"), Some("{\"VNI\":1}"));
        assert_eq!(a.get("c/z"), Some(""));
        assert_eq!(&a["b/y"], "2");
        assert_eq!(a.get("b"), None);
        assert!(!a.contains_key("a/"));
        assert_eq!(a.to_map(), map);
        assert_eq!(
            a.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a/x", "b/y", "c/z"]
        );
        assert_eq!(format!("{a:?}"), format!("{map:?}"));
        assert_eq!(a.insert("b/y".into(), "3".into()), Some("2".to_string()));
        assert_eq!(a.insert("0".into(), "first".into()), None);
        assert_eq!(a.iter().next(), Some(("0", "first")));
        assert_eq!(a.remove("a/x"), Some("{\"VNI\":1}".to_string()));
        assert_eq!(a.remove("a/x"), None);
        assert_eq!(a.len(), 3);
        assert_eq!(&a["b/y"], "3");
        // Equal content, equal value (the fingerprint hashes it).
        let again: Annotations = a.to_map().into_iter().collect();
        assert_eq!(again, a);
        assert!(Annotations::default().is_empty());
    }

    /// Compile-time check: kube-rs accepts SlimNode for list/watch/patch (never called).
    #[allow(dead_code)]
    fn kube_accepts_slim_node(client: kube::Client) {
        let api: kube::Api<SlimNode> = kube::Api::all(client);
        let _stream = kube::runtime::watcher(api, kube::runtime::watcher::Config::default());
    }

    #[test]
    fn resource_identity() {
        use kube::Resource;
        assert_eq!(SlimNode::kind(&()), "Node");
        assert_eq!(SlimNode::plural(&()), "nodes");
        assert_eq!(SlimNode::api_version(&()), "v1");
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");
    }

    #[test]
    fn deletion_timestamp_is_tracked() {
        let slim: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": "n", "deletionTimestamp": "2024-05-01T10:00:00Z"}
        }))
        .unwrap();
        assert!(NodeInfo::from_slim(slim, &AnnotationPrefix::default()).deleting);
    }

    #[test]
    fn fingerprint_ignores_heartbeats_but_sees_relevant_changes() {
        let prefix = AnnotationPrefix::default();
        let base = NodeInfo::from_slim(serde_json::from_value(full_node_json()).unwrap(), &prefix);
        let fp = base.relevant_fingerprint();

        // heartbeat: new resourceVersion, new conditions, new foreign annotation
        let mut j = full_node_json();
        j["metadata"]["resourceVersion"] = json!("2002");
        j["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("30");
        j["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2024-05-01T10:05:00Z");
        let hb = NodeInfo::from_slim(serde_json::from_value(j).unwrap(), &prefix);
        assert_eq!(hb.relevant_fingerprint(), fp);

        type Change = Box<dyn Fn(&mut NodeInfo)>;
        let changes: Vec<Change> = vec![
            Box::new(|n| n.pod_cidrs = vec!["10.244.2.0/24".into()]),
            Box::new(|n| {
                n.annotations.insert(
                    "flannel.alpha.coreos.com/public-ip".into(),
                    "1.1.1.1".into(),
                );
            }),
            Box::new(|n| {
                n.annotations
                    .remove("flannel.alpha.coreos.com/backend-data");
            }),
            Box::new(|n| n.internal_ips.push("10.0.0.1".into())),
            Box::new(|n| n.external_ips.clear()),
            Box::new(|n| n.uid = "other".into()),
            Box::new(|n| n.created = None),
            Box::new(|n| n.deleting = true),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut n = base.clone();
            change(&mut n);
            assert_ne!(n.relevant_fingerprint(), fp, "change #{i}");
        }
    }
}
