//! Dual-stack flanneld against the real kernel: two real nodes on a dual-stack underlay, each
//! with an IPv4 and an IPv6 podCIDR, `EnableIPv6` in net-conf. Checked through `ip -json`,
//! `bridge -json`, the Node objects and pods pinging each other over IPv6 across VXLAN.
//!
//! Each test uses its own underlay (third octet 125–127) and its own namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use serde_json::{Value, json};

use frs_testsupport::lab::{Lab, LabOptions};
use frs_testsupport::topology::Host;

use crate::daemon_control::lab_with;
use crate::daemon_data::{add_pod_with, link_stats, metric, ping_ok, start, str_of, tcpdump_first};
use crate::harness::*;

const P: &str = "flannel.alpha.coreos.com/";
const DEV4: &str = "flannel.1";
const DEV6: &str = "flannel-v6.1";

const DUAL_NET_CONF: &str = r#"{"Network":"10.244.0.0/16","IPv6Network":"fd10:244::/56","EnableIPv6":true,"EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;

fn pod_cidr_v6(k: u8) -> String {
    format!("fd10:244:0:{k}::/64")
}

/// Neighbours, FDB entries and main-table routes on one VXLAN device as iproute2 shows them
/// (kernel-made routes such as fe80::/64 left out): (ip, MAC), (MAC, dst), (dst, gateway).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct DevEntries {
    neigh: BTreeSet<(String, String)>,
    fdb: BTreeSet<(String, String)>,
    routes: BTreeSet<(String, String)>,
}

fn dev_entries(ns: &NetnsGuard, dev: &str, family: &str) -> DevEntries {
    let mut e = DevEntries::default();
    for n in ip_json(ns, &[family, "neigh", "show", "dev", dev])
        .as_array()
        .unwrap()
    {
        assert_eq!(n["state"], json!(["PERMANENT"]), "neighbour on {dev}: {n}");
        e.neigh.insert((str_of(&n["dst"]), str_of(&n["lladdr"])));
    }
    for f in bridge_json(ns, &["fdb", "show", "dev", dev])
        .as_array()
        .unwrap()
    {
        assert!(
            f["flags"] == json!(["self"]) && f["state"] == "permanent",
            "fdb entry on {dev}: {f}"
        );
        e.fdb.insert((str_of(&f["mac"]), str_of(&f["dst"])));
    }
    for r in ip_json(ns, &[family, "route", "show", "table", "main", "dev", dev])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] != "kernel")
    {
        assert!(
            r["flags"] == json!(["onlink"]) && r["type"].as_str().is_none_or(|t| t == "unicast"),
            "route on {dev}: {r}"
        );
        e.routes.insert((str_of(&r["dst"]), str_of(&r["gateway"])));
    }
    e
}

fn wait_dev_entries(ns: &NetnsGuard, dev: &str, family: &str, want: &DevEntries) {
    let mut last = DevEntries::default();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            &format!("{dev} entries in {}", ns.name()),
            Duration::from_secs(10),
            || {
                last = dev_entries(ns, dev, family);
                &last == want
            },
        )
    }));
    assert!(
        ok.is_ok(),
        "{dev} in {}: have {last:#?}\nwant {want:#?}",
        ns.name()
    );
}

/// The entries upstream programs on the peer's side for a node (upstream's pkg/backend/vxlan).
fn tunnel_entries(subnet_net: &str, prefix: u8, mac: &str, public_ip: &str) -> DevEntries {
    DevEntries {
        neigh: BTreeSet::from([(subnet_net.to_string(), mac.to_string())]),
        fdb: BTreeSet::from([(mac.to_string(), public_ip.to_string())]),
        routes: BTreeSet::from([(format!("{subnet_net}/{prefix}"), subnet_net.to_string())]),
    }
}

fn link(ns: &NetnsGuard, dev: &str) -> Value {
    ip_json(ns, &["-d", "link", "show", "dev", dev])[0].clone()
}

/// Checks one node's own side: both devices as upstream makes them and the published
/// annotations. Returns (v4 MAC, v6 MAC) of its devices.
fn check_own_side(lab: &Lab, host: &Host, node: &str, k: u8) -> (String, String) {
    let v6_underlay = host.address_v6.expect("dual-stack host");
    let l4 = link(&host.ns, DEV4);
    let l6 = link(&host.ns, DEV6);
    assert_eq!(l4["mtu"], 1450, "{l4}");
    // IPv6 outer header: 20 bytes more than IPv4 (upstream's pkg/backend/vxlan).
    assert_eq!(l6["mtu"], 1500 - 70, "{l6}");
    let vx6 = &l6["linkinfo"]["info_data"];
    assert_eq!(vx6["id"], 1, "{l6}");
    assert_eq!(vx6["port"], 8472, "{l6}");
    assert_eq!(vx6["learning"], false, "{l6}");
    let local6 = vx6.get("local6").or_else(|| vx6.get("local"));
    assert_eq!(
        local6.and_then(Value::as_str),
        Some(v6_underlay.to_string().as_str()),
        "{l6}"
    );
    assert!(
        l6["flags"].as_array().unwrap().contains(&json!("UP")),
        "{l6}"
    );
    let addrs: Vec<String> = ip_json(
        &host.ns,
        &["-6", "addr", "show", "dev", DEV6, "scope", "global"],
    )[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        // iproute2 leaves an empty object for each address the scope filter drops.
        .filter(|a| a.get("local").is_some())
        .map(|a| format!("{}/{}", str_of(&a["local"]), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, [format!("fd10:244:0:{k}::/128")]);

    let mac4 = str_of(&l4["address"]);
    let mac6 = str_of(&l6["address"]);
    assert_ne!(mac4, mac6, "each device has its own VTEP MAC");
    let a = lab
        .get_node(node)
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    let get = |k: &str| a.get(&format!("{P}{k}")).cloned().unwrap_or_default();
    assert_eq!(get("kube-subnet-manager"), "true");
    assert_eq!(get("backend-type"), "vxlan");
    assert_eq!(get("public-ip"), host.address.to_string());
    assert_eq!(
        get("backend-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{mac4}"}}"#)
    );
    assert_eq!(get("public-ipv6"), v6_underlay.to_string());
    assert_eq!(
        get("backend-v6-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#)
    );
    (mac4, mac6)
}

#[test]
fn dual_stack_nodes_program_both_families_and_pods_ping_over_ipv6() {
    let lab = lab_with(
        "dv1",
        LabOptions {
            net_conf: DUAL_NET_CONF.into(),
            ipv6: true,
            ..LabOptions::default()
        },
    );
    let h1 = lab.add_host("dv1-n1", 1).unwrap();
    let h2 = lab.add_host("dv1-n2", 2).unwrap();
    let (u1, u2): (Ipv6Addr, Ipv6Addr) = (h1.address_v6.unwrap(), h2.address_v6.unwrap());
    for (name, host, k) in [("n1", &h1, 1u8), ("n2", &h2, 2u8)] {
        let v4 = format!("10.244.{k}.0/24");
        let v6 = pod_cidr_v6(k);
        lab.create_node_with_cidrs(
            name,
            &[&v4, &v6],
            &[
                IpAddr::V4(host.address),
                IpAddr::V6(host.address_v6.unwrap()),
            ],
            BTreeMap::new(),
        )
        .unwrap();
    }
    let _d1 = start(&lab, &h1, "n1", &[]);
    let _d2 = start(&lab, &h2, "n2", &[]);

    let (mac4_1, mac6_1) = check_own_side(&lab, &h1, "n1", 1);
    let (mac4_2, mac6_2) = check_own_side(&lab, &h2, "n2", 2);

    // Each node holds the other's three entries per family, on the family's device.
    let near = [
        (&h1, (&mac4_2, &mac6_2), h2.address, u2, 2u8),
        (&h2, (&mac4_1, &mac6_1), h1.address, u1, 1u8),
    ];
    for (host, (mac4, mac6), peer_v4, peer_v6, j) in near {
        wait_dev_entries(
            &host.ns,
            DEV6,
            "-6",
            &tunnel_entries(&format!("fd10:244:0:{j}::"), 64, mac6, &peer_v6.to_string()),
        );
        wait_dev_entries(
            &host.ns,
            DEV4,
            "-4",
            &tunnel_entries(&format!("10.244.{j}.0"), 24, mac4, &peer_v4.to_string()),
        );
    }
    // subnet.env for the CNI plugin: both families; the MTU fits both tunnels.
    let env = std::fs::read_to_string(&_d1.subnet_file).unwrap();
    for line in [
        "FLANNEL_NETWORK=10.244.0.0/16",
        "FLANNEL_SUBNET=10.244.1.1/24",
        "FLANNEL_IPV6_NETWORK=fd10:244::/56",
        "FLANNEL_IPV6_SUBNET=fd10:244:0:1::1/64",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} in subnet.env:\n{env}"
        );
    }
    let pod_mtu: u32 = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_MTU="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("FLANNEL_MTU in subnet.env:\n{env}"));
    assert!(
        pod_mtu <= 1430,
        "a pod MTU of {pod_mtu} does not fit {DEV6}"
    );

    let pod1 = add_pod_with(&h1, "dv1-pod1", 1, pod_mtu, true);
    let pod2 = add_pod_with(&h2, "dv1-pod2", 2, pod_mtu, true);

    // IPv6 pod to pod, witnessed as an IPv6 VXLAN datagram on n2's underlay.
    let tcpdump = tcpdump_first(
        &h2.ns,
        "eth0",
        15,
        &["ip6", "and", "udp", "dst", "port", "8472"],
    );
    let (tx1, _) = link_stats(&h1.ns, DEV6);
    let (_, rx2) = link_stats(&h2.ns, DEV6);
    ping_ok(
        &pod1,
        &["-6", "-c", "3", "-i", "0.2", "-W", "2", "fd10:244:0:2::2"],
        "pod1 → pod2 over IPv6",
    );
    ping_ok(
        &pod2,
        &["-6", "-c", "1", "-W", "2", "fd10:244:0:1::2"],
        "pod2 → pod1 over IPv6",
    );
    let out = tcpdump.wait_with_output().unwrap();
    let captured = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump saw no IPv6 VXLAN datagram: {captured}"
    );
    assert!(
        captured.contains(&format!("IP6 {u1}."))
            && captured.contains(&format!("> {u2}.8472:"))
            && captured.contains("instance 1"),
        "a VNI 1 datagram from n1's IPv6 underlay address to n2's port 8472: {captured}"
    );
    assert!(
        captured.contains("IP6 fd10:244:0:1::2 > fd10:244:0:2::2: ICMP6, echo request"),
        "carrying pod1's ping: {captured}"
    );
    assert!(
        link_stats(&h1.ns, DEV6).0 >= tx1 + 3,
        "n1's {DEV6} sent the pings"
    );
    assert!(
        link_stats(&h2.ns, DEV6).1 >= rx2 + 3,
        "n2's {DEV6} received them"
    );
    println!("tcpdump on n2 eth0: {}", captured.trim());

    // IPv4 still works from the same pods, through flannel.1.
    let (tx1, _) = link_stats(&h1.ns, DEV4);
    ping_ok(
        &pod1,
        &["-c", "2", "-i", "0.2", "-W", "2", "10.244.2.2"],
        "pod1 → pod2 over IPv4",
    );
    assert!(
        link_stats(&h1.ns, DEV4).0 >= tx1 + 2,
        "n1's {DEV4} sent the pings"
    );
}

/// Upstream-format annotations of a dual-stack flannel vxlan peer.
fn dual_peer_annotations(mac4: &str, ip4: &str, mac6: &str, ip6: &str) -> BTreeMap<String, String> {
    let mut a = frs_testsupport::lab::peer_annotations(mac4, ip4);
    a.insert(
        format!("{P}backend-v6-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#),
    );
    a.insert(format!("{P}public-ipv6"), ip6.to_string());
    a
}

/// Routes with our DirectRouting protocol (0x66 = 102) in one family, as (dst, gateway, dev).
fn direct_routes(ns: &NetnsGuard, family: &str) -> BTreeSet<(String, String, String)> {
    ip_json(
        ns,
        &[family, "route", "show", "table", "main", "proto", "102"],
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|r| (str_of(&r["dst"]), str_of(&r["gateway"]), str_of(&r["dev"])))
    .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(d, g)| (d.to_string(), g.to_string(), "eth0".to_string()))
        .collect()
}

#[test]
fn dual_stack_direct_routing_routes_both_families_directly_without_self_triggered_passes() {
    let lab = lab_with(
        "dv2",
        LabOptions {
            net_conf: DUAL_NET_CONF.replace(
                r#""Backend":{"Type":"vxlan"}"#,
                r#""Backend":{"Type":"vxlan","DirectRouting":true}"#,
            ),
            ipv6: true,
            ..LabOptions::default()
        },
    );
    let h1 = lab.add_host("dv2-n1", 1).unwrap();
    let h2 = lab.add_host("dv2-n2", 2).unwrap();
    for (name, host, k) in [("n1", &h1, 1u8), ("n2", &h2, 2u8)] {
        lab.create_node_with_cidrs(
            name,
            &[&format!("10.244.{k}.0/24"), &pod_cidr_v6(k)],
            &[
                IpAddr::V4(host.address),
                IpAddr::V6(host.address_v6.unwrap()),
            ],
            BTreeMap::new(),
        )
        .unwrap();
    }
    // A dual-stack peer behind routers in both families: tunnelled in both.
    let (far4, far6) = ("172.20.0.3", "fd00:ffff::3");
    lab.create_node_with_cidrs(
        "n3",
        &["10.244.3.0/24", &pod_cidr_v6(3)],
        &[far4.parse().unwrap(), far6.parse().unwrap()],
        dual_peer_annotations("0e:00:00:00:04:03", far4, "0e:00:00:00:06:03", far6),
    )
    .unwrap();
    let d1 = start(&lab, &h1, "n1", &[]);
    let _d2 = start(&lab, &h2, "n2", &[]);
    let (u1, u2) = (h1.address_v6.unwrap(), h2.address_v6.unwrap());
    let near = [
        (&h1, 2u8, h2.address.to_string(), u2.to_string()),
        (&h2, 1u8, h1.address.to_string(), u1.to_string()),
    ];
    for (host, j, peer4, peer6) in &near {
        let want4 = set(&[(&format!("10.244.{j}.0/24"), peer4)]);
        let want6 = set(&[(&pod_cidr_v6(*j), peer6)]);
        wait_until("direct routes", Duration::from_secs(10), || {
            direct_routes(&host.ns, "-4") == want4 && direct_routes(&host.ns, "-6") == want6
        });
        wait_dev_entries(
            &host.ns,
            DEV4,
            "-4",
            &tunnel_entries("10.244.3.0", 24, "0e:00:00:00:04:03", far4),
        );
        wait_dev_entries(
            &host.ns,
            DEV6,
            "-6",
            &tunnel_entries("fd10:244:0:3::", 64, "0e:00:00:00:06:03", far6),
        );
    }

    // IPv6 pod to pod as plain IPv6 on the underlay; flannel-v6.1 carries nothing.
    let pod1 = add_pod_with(&h1, "dv2-pod1", 1, 1430, true);
    let _pod2 = add_pod_with(&h2, "dv2-pod2", 2, 1430, true);
    let tcpdump = tcpdump_first(
        &h2.ns,
        "eth0",
        15,
        &["icmp6", "and", "src", "fd10:244:0:1::2"],
    );
    let (tx1, _) = link_stats(&h1.ns, DEV6);
    ping_ok(
        &pod1,
        &["-6", "-c", "3", "-i", "0.2", "-W", "2", "fd10:244:0:2::2"],
        "pod1 → pod2 over IPv6 (direct)",
    );
    let out = tcpdump.wait_with_output().unwrap();
    let captured = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && captured.contains("IP6 fd10:244:0:1::2 > fd10:244:0:2::2: ICMP6, echo request"),
        "n2's eth0 saw pod1's ping unencapsulated: {captured}"
    );
    assert_eq!(link_stats(&h1.ns, DEV6).0, tx1, "n1's {DEV6} sent nothing");

    // Our own direct-route writes must not read as drift on the other family's device: a
    // new same-subnet peer costs exactly one pass.
    let passes = metric(&d1, "flannel_reconciles_total");
    let (near4, near6) = (lab.switch.address(4), lab.switch.address_v6(4));
    lab.create_node_with_cidrs(
        "n4",
        &["10.244.4.0/24", &pod_cidr_v6(4)],
        &[near4.into(), near6.into()],
        dual_peer_annotations(
            "0e:00:00:00:04:04",
            &near4.to_string(),
            "0e:00:00:00:06:04",
            &near6.to_string(),
        ),
    )
    .unwrap();
    let want4 = set(&[
        ("10.244.2.0/24", &h2.address.to_string()),
        ("10.244.4.0/24", &near4.to_string()),
    ]);
    let want6 = set(&[
        (&pod_cidr_v6(2), &u2.to_string()),
        (&pod_cidr_v6(4), &near6.to_string()),
    ]);
    wait_until("direct routes to n4", Duration::from_secs(10), || {
        direct_routes(&h1.ns, "-4") == want4 && direct_routes(&h1.ns, "-6") == want6
    });
    // Generous settle time for any echo-triggered pass to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(&d1, "flannel_reconciles_total"),
        passes + 1,
        "one pass for n4; log:\n{}",
        d1.log()
    );
    assert!(
        !d1.log().contains("drifted"),
        "our own writes read as drift:\n{}",
        d1.log()
    );
}
