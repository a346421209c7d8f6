//! Differential tests: the same ADD through the reference chain (Debian containernetworking-
//! plugins `bridge` + `host-local`, fed the delegate config upstream flannel renders) and
//! through ours must leave the same state, field by field; and both implementations must
//! respect each other's reservations and tear down each other's pods on one node.

use serde_json::{Value, json};

use crate::cni_support::*;
use crate::harness::{NetnsGuard, bridge_json, ip_json};

fn require_reference() {
    for p in ["bridge", "host-local", "portmap"] {
        let path = format!("{REF_DIR}/{p}");
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: install Debian's containernetworking-plugins (.ci/run does)"
        );
    }
}

/// The result with per-run values (MACs, host veth name, sandbox path) replaced.
fn normalize_result(mut r: Value) -> Value {
    if let Some(ifaces) = r["interfaces"].as_array_mut() {
        for (i, iface) in ifaces.iter_mut().enumerate() {
            if iface.get("mac").is_some() {
                iface["mac"] = json!("<mac>");
            }
            if iface.get("sandbox").is_some() {
                iface["sandbox"] = json!("<netns>");
            }
            if i == 1 {
                iface["name"] = json!("<host veth>");
            }
        }
    }
    r
}

fn pick(v: &Value, keys: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for k in keys {
        out.insert((*k).to_string(), v.get(*k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn addr_details(ns: &NetnsGuard, dev: &str) -> Vec<Value> {
    let v = ip_json(ns, &["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| pick(a, &["family", "local", "prefixlen", "broadcast", "scope"]))
        .collect()
}

/// Everything an attachment leaves on the node and in the pod, per-run values normalised.
fn snapshot(node: &Node, pod: &NetnsGuard, result: &Value) -> Value {
    let host_veth = result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let eth0 = link(pod, "eth0");
    let cni0 = link(&node.ns, "cni0");
    let veth = link(&node.ns, &host_veth);
    let port = bridge_json(&node.ns, &["-d", "link", "show", "dev", &host_veth])[0].clone();
    let pod_sysctls: Vec<(String, String)> = [
        "net/ipv4/conf/eth0/arp_notify",
        "net/ipv6/conf/eth0/accept_dad",
        "net/ipv6/conf/eth0/disable_ipv6",
        "net/ipv6/conf/eth0/keep_addr_on_down",
        "net/ipv4/conf/eth0/proxy_arp",
        "net/ipv4/ip_forward",
    ]
    .iter()
    .map(|k| (k.to_string(), sysctl_in(pod, k)))
    .collect();
    let node_sysctls: Vec<(String, String)> = [
        "net/ipv4/ip_forward".to_string(),
        "net/ipv6/conf/all/forwarding".to_string(),
        "net/ipv6/conf/cni0/accept_ra".to_string(),
        "net/ipv4/conf/cni0/proxy_arp".to_string(),
        "net/ipv4/conf/cni0/route_localnet".to_string(),
        format!("net/ipv6/conf/{host_veth}/accept_ra"),
        format!("net/ipv4/conf/{host_veth}/proxy_arp"),
    ]
    .iter()
    .map(|k| (k.replace(&host_veth, "<veth>"), node.sysctl(k)))
    .collect();
    let mut files = Vec::new();
    for name in node.reservations() {
        let content = std::fs::read(node.ipam_dir().join(&name)).unwrap();
        files.push(json!([name, String::from_utf8_lossy(&content)]));
    }
    let lo = link(pod, "lo");
    json!({
        "result": normalize_result(result.clone()),
        "pod": {
            "eth0": pick(&eth0, &["mtu", "operstate", "flags", "link_type", "txqlen"]),
            "eth0_kind": eth0["linkinfo"]["info_kind"],
            "lo_state": lo["operstate"],
            "addrs": addr_details(pod, "eth0"),
            "routes4": routes(pod, "-4"),
            "routes6": routes(pod, "-6"),
            "sysctls": pod_sysctls,
        },
        "node": {
            "cni0": pick(&cni0, &["mtu", "operstate", "flags", "txqlen"]),
            "cni0_kind": cni0["linkinfo"]["info_kind"],
            "cni0_bridge": pick(&cni0["linkinfo"]["info_data"],
                &["stp_state", "vlan_filtering", "forward_delay", "ageing_time", "hello_time", "max_age", "priority"]),
            "cni0_addr_assign_type": bridge_mac_assign_type(&node.ns),
            "cni0_addrs": addr_details(&node.ns, "cni0"),
            "routes4": routes(&node.ns, "-4"),
            "veth": pick(&veth, &["mtu", "operstate", "flags", "master", "promiscuity", "txqlen"]),
            "veth_kind": veth["linkinfo"]["info_kind"],
            "port": pick(&port, &["state", "hairpin", "guard", "root_block", "fastleave", "learning", "flood", "mcast_flood", "bcast_flood", "neigh_suppress", "vlan_tunnel", "isolated", "priority", "cost"]),
            "sysctls": node_sysctls,
            "nat_rules": node.ns.exec("iptables-save", &["-t", "nat"]).map(|o| {
                String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("-A")).count()
            }).unwrap_or(0),
        },
        "files": {
            "reservations": files,
            "last_reserved_ip.0": std::fs::read_to_string(node.ipam_dir().join("last_reserved_ip.0")).ok(),
            "lock": node.ipam_dir().join("lock").exists(),
        },
    })
}

/// `verb` for `cid` in `pod` by the reference chain (upstream's bridge plugin, given
/// `delegate`), which must succeed.
fn by_reference(node: &Node, verb: &str, cid: &str, pod: &NetnsGuard, delegate: &Value) -> Outcome {
    let out = node.reference(&Call::new(verb, cid, &path_of(pod)), delegate);
    out.expect_ok();
    out
}

/// `verb` for `cid` in `pod` by our plugin (given `conf`), which must succeed.
fn by_ours(node: &Node, verb: &str, cid: &str, pod: &NetnsGuard, conf: &Value) -> Outcome {
    let out = node.ours(&Call::new(verb, cid, &path_of(pod)), conf);
    out.expect_ok();
    out
}

#[test]
fn the_same_add_leaves_the_same_state_as_the_reference_chain() {
    require_reference();
    // 1.1.1 (Debian) speaks up to 1.0.0.
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let ref_node = Node::new("rf");
        let our_node = Node::new("ou");
        let ref_pod = pod("rfp");
        let our_pod = pod("oup");
        let cid = "diff-1";
        let delegate = ref_node.reference_delegate(version);
        let conf = our_node.conf(version);
        let r_ref = by_reference(&ref_node, "ADD", cid, &ref_pod, &delegate).json();
        let r_ours = by_ours(&our_node, "ADD", cid, &our_pod, &conf).json();
        // The bridge port reaches "forwarding" asynchronously in both cases.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let a = snapshot(&ref_node, &ref_pod, &r_ref);
        let b = snapshot(&our_node, &our_pod, &r_ours);
        assert_eq!(
            a,
            b,
            "cniVersion {version}: reference (left) and ours (right) differ:\n{}\n{}",
            serde_json::to_string_pretty(&a).unwrap(),
            serde_json::to_string_pretty(&b).unwrap()
        );
        // And our DEL record is exactly what flannel would have handed to the bridge.
        let record: Value =
            serde_json::from_slice(&std::fs::read(our_node.data_dir().join(cid)).unwrap()).unwrap();
        assert_eq!(record, our_node.reference_delegate(version));

        by_reference(&ref_node, "DEL", cid, &ref_pod, &delegate);
        by_ours(&our_node, "DEL", cid, &our_pod, &conf);
        assert!(ref_node.veths().is_empty() && ref_node.reservations().is_empty());
        our_node.assert_clean("after DEL");
        assert_eq!(
            std::fs::read_to_string(ref_node.ipam_dir().join("last_reserved_ip.0")).unwrap(),
            std::fs::read_to_string(our_node.ipam_dir().join("last_reserved_ip.0")).unwrap(),
        );
    }
}

#[test]
fn reference_and_ours_share_a_node_in_both_directions() {
    require_reference();
    let node = Node::new("io");
    let conf = node.conf("0.3.1");
    let delegate = node.reference_delegate("0.3.1");
    let pods: Vec<_> = (0..6).map(|i| pod(&format!("i{i}"))).collect();
    let ip_of = |r: &Value| r["ips"][0]["address"].as_str().unwrap().to_string();

    // Pods made by the reference first (a node running upstream flannel) ...
    let r0 = by_reference(&node, "ADD", "ref-0", &pods[0], &delegate).json();
    let r1 = by_reference(&node, "ADD", "ref-1", &pods[1], &delegate).json();
    // ... then ours (the node switched): reservations and the cursor are respected.
    let o0 = by_ours(&node, "ADD", "our-0", &pods[2], &conf).json();
    let o1 = by_ours(&node, "ADD", "our-1", &pods[3], &conf).json();
    // ... and back: the reference respects ours.
    let r2 = by_reference(&node, "ADD", "ref-2", &pods[4], &delegate).json();
    assert_eq!(
        [ip_of(&r0), ip_of(&r1), ip_of(&o0), ip_of(&o1), ip_of(&r2)],
        [
            "10.244.1.2/24",
            "10.244.1.3/24",
            "10.244.1.4/24",
            "10.244.1.5/24",
            "10.244.1.6/24"
        ]
    );
    // Pods of both kinds talk to each other over the shared cni0.
    let ping = pods[0].exec("ping", &["-c1", "-W2", "10.244.1.5"]).unwrap();
    assert!(ping.status.success(), "reference pod cannot reach our pod");
    let ping = pods[3].exec("ping", &["-c1", "-W2", "10.244.1.6"]).unwrap();
    assert!(
        ping.status.success(),
        "our pod cannot reach a reference pod"
    );

    // Ours tears down a reference pod (no flannel record: the current config is used).
    by_ours(&node, "DEL", "ref-0", &pods[0], &conf);
    assert!(links_of_kind(&pods[0], "veth").is_empty());
    assert!(!node.reservations().contains(&"10.244.1.2".to_string()));
    // The reference tears down one of ours, replaying our record like upstream flannel does.
    let record: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("our-0")).unwrap()).unwrap();
    by_reference(&node, "DEL", "our-0", &pods[2], &record);
    std::fs::remove_file(node.data_dir().join("our-0")).unwrap();
    assert!(links_of_kind(&pods[2], "veth").is_empty());
    assert!(!node.reservations().contains(&"10.244.1.4".to_string()));

    // A later allocation continues the shared round-robin cursor.
    let o2 = by_ours(&node, "ADD", "our-2", &pods[5], &conf).json();
    assert_eq!(ip_of(&o2), "10.244.1.7/24");

    by_ours(&node, "DEL", "our-1", &pods[3], &conf);
    by_ours(&node, "DEL", "our-2", &pods[5], &conf);
    by_ours(&node, "DEL", "ref-1", &pods[1], &conf);
    by_reference(&node, "DEL", "ref-2", &pods[4], &delegate);
    node.assert_clean("after mixed teardown");
}
