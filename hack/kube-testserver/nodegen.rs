//! Synthetic Nodes: podCIDRs and flannel annotations, and (realistic mode) what a kubelet-
//! registered node carries — conditions, addresses, ~40 images, nodeInfo, managedFields — so a
//! node weighs 15–20 KB of JSON like a real one. Deterministic per index.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GenerateSpec {
    pub count: u32,
    pub realistic: bool,
    /// Node names are `<prefix><index, 5 digits>`.
    pub prefix: String,
    pub start_index: u32,
    /// Pod CIDRs are carved from this range, one `/podCidrPrefixLen` per node, by index.
    pub pod_cidr_base: String,
    pub pod_cidr_prefix_len: u8,
    /// InternalIP / flannel public-ip of node i is the i-th host of this range (data only).
    pub node_ip_base: String,
    pub flannel_annotations: bool,
    pub vni: u32,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self {
            count: 0,
            realistic: true,
            prefix: "node-".into(),
            start_index: 0,
            pod_cidr_base: "10.128.0.0/9".into(),
            pod_cidr_prefix_len: 24,
            node_ip_base: "192.168.0.0/16".into(),
            flannel_annotations: true,
            vni: 1,
        }
    }
}

/// splitmix64: a cheap deterministic stream per node index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

fn nth_subnet(base: &Ipv4Network, prefix: u8, index: u32) -> Result<Ipv4Network, String> {
    if prefix < base.prefix() || prefix > 32 {
        return Err(format!("podCidrPrefixLen {prefix} does not fit in {base}"));
    }
    let per = 1u64 << (32 - prefix);
    let available = 1u64 << (prefix - base.prefix());
    if u64::from(index) >= available {
        return Err(format!(
            "{base} holds only {available} /{prefix} subnets; index {index} is out of range"
        ));
    }
    let start = u64::from(u32::from(base.network())) + u64::from(index) * per;
    Ipv4Network::new(Ipv4Addr::from(start as u32), prefix).map_err(|e| e.to_string())
}

fn nth_host(base: &Ipv4Network, index: u32) -> Result<Ipv4Addr, String> {
    let size = base.size();
    if u64::from(index) + 2 >= u64::from(size) {
        return Err(format!("{base} has no host number {}", index + 1));
    }
    Ok(Ipv4Addr::from(u32::from(base.network()) + index + 1))
}

const IMAGE_REPOS: &[&str] = &[
    "registry.k8s.io/kube-proxy",
    "docker.io/flannel/flannel",
    "docker.io/flannel/flannel-cni-plugin",
    "registry.k8s.io/pause",
    "registry.k8s.io/coredns/coredns",
    "quay.io/prometheus/node-exporter",
    "docker.io/library/nginx",
    "docker.io/library/redis",
    "docker.io/library/postgres",
    "quay.io/jetstack/cert-manager-controller",
    "registry.k8s.io/ingress-nginx/controller",
    "docker.io/grafana/promtail",
    "gcr.io/k8s-staging-sig-storage/csi-node-driver-registrar",
    "registry.k8s.io/sig-storage/livenessprobe",
    "docker.io/bitnami/kafka",
    "quay.io/cilium/hubble-relay",
    "docker.io/istio/proxyv2",
    "public.ecr.aws/eks-distro/kubernetes/pause",
    "docker.io/library/busybox",
    "docker.io/fluent/fluent-bit",
];

/// Builds node number `index` (0-based within the spec's range offset).
pub fn node(spec: &GenerateSpec, index: u32) -> Result<Node, String> {
    let base: Ipv4Network = spec
        .pod_cidr_base
        .parse()
        .map_err(|e| format!("podCidrBase {:?}: {e}", spec.pod_cidr_base))?;
    let ip_base: Ipv4Network = spec
        .node_ip_base
        .parse()
        .map_err(|e| format!("nodeIpBase {:?}: {e}", spec.node_ip_base))?;
    let cidr = nth_subnet(&base, spec.pod_cidr_prefix_len, index)?;
    let ip = nth_host(&ip_base, index)?;
    let name = format!("{}{index:05}", spec.prefix);
    let mut rng = Rng(u64::from(index) ^ 0x5eed);
    let mac_bytes = rng.next().to_be_bytes();
    // Locally administered unicast MAC, like the kernel's random VXLAN MACs.
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (mac_bytes[0] & 0xfe) | 0x02,
        mac_bytes[1],
        mac_bytes[2],
        mac_bytes[3],
        mac_bytes[4],
        mac_bytes[5]
    );

    let mut annotations = serde_json::Map::new();
    if spec.flannel_annotations {
        annotations.insert(
            "flannel.alpha.coreos.com/backend-data".into(),
            json!(format!("{{\"VNI\":{},\"VtepMAC\":\"{mac}\"}}", spec.vni)),
        );
        annotations.insert(
            "flannel.alpha.coreos.com/backend-type".into(),
            json!("vxlan"),
        );
        annotations.insert(
            "flannel.alpha.coreos.com/kube-subnet-manager".into(),
            json!("true"),
        );
        annotations.insert(
            "flannel.alpha.coreos.com/public-ip".into(),
            json!(ip.to_string()),
        );
    }
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/arch".into(), json!("amd64"));

    let mut obj = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
    });

    if spec.realistic {
        let zone = ["a", "b", "c"][(index % 3) as usize];
        labels.insert("beta.kubernetes.io/arch".into(), json!("amd64"));
        labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
        labels.insert(
            "node.kubernetes.io/instance-type".into(),
            json!("m5.xlarge"),
        );
        labels.insert("topology.kubernetes.io/region".into(), json!("eu-west-1"));
        labels.insert(
            "topology.kubernetes.io/zone".into(),
            json!(format!("eu-west-1{zone}")),
        );
        labels.insert(
            "failure-domain.beta.kubernetes.io/zone".into(),
            json!(format!("eu-west-1{zone}")),
        );
        if index.is_multiple_of(50) {
            labels.insert("node-role.kubernetes.io/control-plane".into(), json!(""));
        } else {
            labels.insert("node-role.kubernetes.io/worker".into(), json!(""));
        }
        labels.insert("pool".into(), json!(format!("pool-{}", index % 7)));
        annotations.insert(
            "kubeadm.alpha.kubernetes.io/cri-socket".into(),
            json!("unix:///run/containerd/containerd.sock"),
        );
        annotations.insert("node.alpha.kubernetes.io/ttl".into(), json!("0"));
        annotations.insert(
            "volumes.kubernetes.io/controller-managed-attach-detach".into(),
            json!("true"),
        );
        annotations.insert(
            "csi.volume.kubernetes.io/nodeid".into(),
            json!(format!("{{\"ebs.csi.aws.com\":\"i-{}\"}}", rng.hex(17))),
        );

        let t0 = "2024-03-01T08:00:00Z";
        let hb = "2024-03-01T09:30:00Z";
        let condition = |t: &str, status: &str, reason: &str, message: &str| json!({"type": t, "status": status, "lastHeartbeatTime": hb, "lastTransitionTime": t0, "reason": reason, "message": message});
        let images: Vec<Value> = (0..42)
            .map(|i| {
                let repo = IMAGE_REPOS[i % IMAGE_REPOS.len()];
                let tag = format!("v1.{}.{}", (i * 7) % 30, (i * 13) % 10);
                let mut names = vec![
                    format!("{repo}@sha256:{}", rng.hex(64)),
                    format!("{repo}:{tag}"),
                ];
                if i.is_multiple_of(3) {
                    names.push(format!("{repo}:latest"));
                }
                json!({"names": names, "sizeBytes": 5_000_000 + (rng.next() % 400_000_000)})
            })
            .collect();
        let volumes: Vec<Value> = (0..12)
            .map(|_| json!({"name": format!("kubernetes.io/csi/ebs.csi.aws.com^vol-{}", rng.hex(17)), "devicePath": ""}))
            .collect();
        obj["spec"]["providerID"] = json!(format!("aws:///eu-west-1{zone}/i-{}", rng.hex(17)));
        obj["status"] = json!({
            "capacity": {"cpu": "4", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "16058904Ki", "pods": "110"},
            "allocatable": {"cpu": "3920m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "15044120Ki", "pods": "110"},
            "conditions": [
                condition("NetworkUnavailable", "False", "FlannelIsUp", "Flannel is running on this node"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
                {"type": "InternalDNS", "address": format!("ip-{}.eu-west-1.compute.internal", ip.to_string().replace('.', "-"))},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": rng.hex(32),
                "systemUUID": format!("ec2{}-{}-{}-{}-{}", rng.hex(5), rng.hex(4), rng.hex(4), rng.hex(4), rng.hex(12)),
                "bootID": format!("{}-{}-{}-{}-{}", rng.hex(8), rng.hex(4), rng.hex(4), rng.hex(4), rng.hex(12)),
                "kernelVersion": "6.1.0-28-cloud-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.33.1",
                "kubeProxyVersion": "v1.33.1",
                "operatingSystem": "linux",
                "architecture": "amd64"
            },
            "images": images,
            "volumesInUse": volumes.iter().map(|v| v["name"].clone()).collect::<Vec<_>>(),
            "volumesAttached": volumes,
            "runtimeHandlers": [
                {"name": "runc", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
                {"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}}
            ],
            "features": {"supplementalGroupsPolicy": true},
        });
        let fields = |v: Value| json!(v);
        obj["metadata"]["managedFields"] = json!([
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": t0, "fieldsType": "FieldsV1",
             "fieldsV1": fields(json!({"f:metadata": {"f:annotations": {".": {}, "f:node.alpha.kubernetes.io/ttl": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}, "f:node.kubernetes.io/instance-type": {}, "f:topology.kubernetes.io/region": {}, "f:topology.kubernetes.io/zone": {}}},
                "f:spec": {"f:providerID": {}}}))},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": t0, "fieldsType": "FieldsV1",
             "fieldsV1": fields(json!({"f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, format!("v:\"{cidr}\""): {}}}}))},
            {"manager": "flanneld", "operation": "Update", "apiVersion": "v1", "time": t0, "fieldsType": "FieldsV1", "subresource": "status",
             "fieldsV1": fields(json!({"f:metadata": {"f:annotations": {"f:flannel.alpha.coreos.com/backend-data": {}, "f:flannel.alpha.coreos.com/backend-type": {}, "f:flannel.alpha.coreos.com/kube-subnet-manager": {}, "f:flannel.alpha.coreos.com/public-ip": {}}},
                "f:status": {"f:conditions": {"k:{\"type\":\"NetworkUnavailable\"}": {".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}}))},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": hb, "fieldsType": "FieldsV1", "subresource": "status",
             "fieldsV1": fields(json!({"f:status": {"f:allocatable": {"f:ephemeral-storage": {}}, "f:capacity": {"f:ephemeral-storage": {}},
                "f:conditions": {"k:{\"type\":\"DiskPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"MemoryPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"PIDPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}}},
                "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:containerRuntimeVersion": {}, "f:kernelVersion": {}, "f:kubeProxyVersion": {}, "f:kubeletVersion": {}, "f:machineID": {}, "f:osImage": {}, "f:systemUUID": {}},
                "f:addresses": {".": {}, "k:{\"type\":\"Hostname\"}": {".": {}, "f:address": {}, "f:type": {}}, "k:{\"type\":\"InternalIP\"}": {".": {}, "f:address": {}, "f:type": {}}, "k:{\"type\":\"InternalDNS\"}": {".": {}, "f:address": {}, "f:type": {}}},
                "f:daemonEndpoints": {"f:kubeletEndpoint": {"f:Port": {}}}, "f:runtimeHandlers": {}, "f:features": {".": {}, "f:supplementalGroupsPolicy": {}},
                "f:volumesAttached": {}, "f:volumesInUse": {}}}))}
        ]);
    } else {
        obj["status"] = json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
        });
    }
    obj["metadata"]["labels"] = Value::Object(labels);
    obj["metadata"]["annotations"] = Value::Object(annotations);
    serde_json::from_value(obj).map_err(|e| format!("generated node does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realistic_nodes_weigh_like_real_ones() {
        let spec = GenerateSpec::default();
        for i in [0, 1, 4999] {
            let n = node(&spec, i).unwrap();
            let size = serde_json::to_vec(&n).unwrap().len();
            assert!(
                (15_000..=20_000).contains(&size),
                "node {i} is {size} bytes"
            );
            eprintln!("node {i}: {size} bytes");
        }
        let n = node(&spec, 3).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("node-00003"));
        assert_eq!(
            n.spec.as_ref().unwrap().pod_cidr.as_deref(),
            Some("10.128.3.0/24")
        );
        let ann = n.metadata.annotations.unwrap();
        assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "192.168.0.4");
        assert!(
            ann["flannel.alpha.coreos.com/backend-data"].starts_with("{\"VNI\":1,\"VtepMAC\":\"")
        );
        assert_eq!(n.status.unwrap().images.unwrap().len(), 42);
    }

    #[test]
    fn deterministic_and_bounded() {
        let spec = GenerateSpec::default();
        assert_eq!(node(&spec, 7).unwrap(), node(&spec, 7).unwrap());
        let small = GenerateSpec {
            pod_cidr_base: "10.0.0.0/23".into(),
            ..GenerateSpec::default()
        };
        assert!(node(&small, 1).is_ok());
        assert!(node(&small, 2).unwrap_err().contains("holds only 2"));
        let plain = GenerateSpec {
            realistic: false,
            ..GenerateSpec::default()
        };
        assert!(serde_json::to_vec(&node(&plain, 0).unwrap()).unwrap().len() < 2000);
    }
}
