//! The `flannel` CNI plugin binary driven exactly like a runtime drives it, against the real
//! kernel in test namespaces: every verb, every cniVersion's result shape, idempotency, bad
//! input with nothing left behind, pool exhaustion, concurrency.

use std::collections::HashSet;

use serde_json::Value;

use crate::cni_support::*;
use crate::harness::{add_veth, bridge_json, ip_json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn add_builds_the_reference_state_and_del_removes_it() {
    let node = Node::new("cn");
    let p1 = pod("p1");
    let conf = node.conf("0.3.1");
    let out = node.ours(&Call::new("ADD", "ctr-1", &path_of(&p1)), &conf);
    out.expect_ok();
    let r = out.json();

    // Result: the reference bridge plugin's shape.
    assert_eq!(r["cniVersion"], "0.3.1");
    let ifaces = r["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3);
    assert_eq!(ifaces[0]["name"], "cni0");
    assert!(ifaces[0].get("sandbox").is_none());
    let host_veth = ifaces[1]["name"].as_str().unwrap().to_string();
    assert!(
        host_veth.len() == 12
            && host_veth.starts_with("veth")
            && host_veth[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{host_veth}"
    );
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], path_of(&p1));
    assert_eq!(
        r["ips"],
        serde_json::json!([{"version":"4","interface":2,"address":"10.244.1.2/24","gateway":"10.244.1.1"}])
    );
    assert_eq!(
        r["routes"],
        serde_json::json!([{"dst":"10.244.0.0/16"},{"dst":"0.0.0.0/0","gw":"10.244.1.1"}])
    );
    assert_eq!(r["dns"], serde_json::json!({}));

    // Pod side, seen by iproute2.
    let eth0 = link(&p1, "eth0");
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth");
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["operstate"], "UP");
    assert_eq!(eth0["address"], ifaces[2]["mac"]);
    assert_eq!(global_addrs(&p1, "eth0"), ["10.244.1.2/24"]);
    let addr = ip_json(&p1, &["-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(addr[0]["addr_info"][0]["broadcast"], "10.244.1.255");
    assert_eq!(
        routes(&p1, "-4"),
        [
            "10.244.0.0/16 via 10.244.1.1 dev eth0",
            "10.244.1.0/24 dev eth0 proto kernel scope link",
            "default via 10.244.1.1 dev eth0",
        ]
    );
    assert_eq!(sysctl_in(&p1, "net/ipv4/conf/eth0/arp_notify"), "1");
    assert_eq!(sysctl_in(&p1, "net/ipv6/conf/eth0/accept_dad"), "0");
    assert_eq!(sysctl_in(&p1, "net/ipv4/conf/eth0/proxy_arp"), "0");
    assert_eq!(sysctl_in(&p1, "net/ipv4/ip_forward"), "0");

    // Node side.
    let cni0 = link(&node.ns, "cni0");
    assert_eq!(cni0["linkinfo"]["info_kind"], "bridge");
    assert_eq!(cni0["mtu"], 1450);
    assert_eq!(cni0["linkinfo"]["info_data"]["stp_state"], 0);
    assert_eq!(cni0["address"], ifaces[0]["mac"]);
    assert_eq!(global_addrs(&node.ns, "cni0"), ["10.244.1.1/24"]);
    assert_eq!(bridge_mac_assign_type(&node.ns), "3", "bridge MAC pinned");
    let veth = link(&node.ns, &host_veth);
    assert_eq!(veth["master"], "cni0");
    assert_eq!(veth["mtu"], 1450);
    assert_eq!(veth["address"], ifaces[1]["mac"]);
    let ports = bridge_json(&node.ns, &["-d", "link", "show", "dev", &host_veth]);
    assert_eq!(ports[0]["hairpin"], true, "{ports}");
    assert_eq!(ports[0]["state"], "forwarding", "{ports}");
    assert_eq!(ports[0]["learning"], true);
    assert_eq!(ports[0]["flood"], true);
    assert_eq!(node.sysctl("net/ipv4/ip_forward"), "1");
    assert_eq!(node.sysctl("net/ipv6/conf/cni0/accept_ra"), "0");
    assert_eq!(
        node.sysctl(&format!("net/ipv6/conf/{host_veth}/accept_ra")),
        "0"
    );
    assert_eq!(node.sysctl("net/ipv4/conf/cni0/route_localnet"), "0");

    // Files: host-local's format, and flannel's DEL record with the delegate bytes.
    assert_eq!(node.reservations(), ["10.244.1.2"]);
    assert_eq!(
        std::fs::read(node.ipam_dir().join("10.244.1.2")).unwrap(),
        b"ctr-1\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(node.ipam_dir().join("last_reserved_ip.0")).unwrap(),
        "10.244.1.2"
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("ctr-1")).unwrap()).unwrap();
    assert_eq!(record, node.reference_delegate("0.3.1"));

    // Traffic: pod to gateway, and a second pod to the first through the bridge.
    let ping = p1.exec("ping", &["-c1", "-W2", "10.244.1.1"]).unwrap();
    assert!(ping.status.success(), "pod cannot reach its gateway");
    let p2 = pod("p2");
    node.ours(&Call::new("ADD", "ctr-2", &path_of(&p2)), &conf)
        .expect_ok();
    let ping = p2.exec("ping", &["-c1", "-W2", "10.244.1.2"]).unwrap();
    assert!(ping.status.success(), "pod 2 cannot reach pod 1");

    for (cid, p) in [("ctr-1", &p1), ("ctr-2", &p2)] {
        node.ours(&Call::new("DEL", cid, &path_of(p)), &conf)
            .expect_ok();
        assert!(
            links_of_kind(p, "veth").is_empty(),
            "eth0 survived DEL in {cid}"
        );
    }
    node.assert_clean("after DEL");
    assert_eq!(
        std::fs::read_to_string(node.ipam_dir().join("last_reserved_ip.0")).unwrap(),
        "10.244.1.3",
        "the cursor is not reset by DEL"
    );
    // The bridge stays, like the reference.
    assert_eq!(links_of_kind(&node.ns, "bridge"), ["cni0"]);
}

#[test]
fn every_cni_version_gets_its_result_shape() {
    let node = Node::new("cv");
    for (i, v) in VERSIONS.iter().enumerate() {
        let p = pod(&format!("v{i}"));
        let cid = format!("ver-{i}");
        let out = node.ours(&Call::new("ADD", &cid, &path_of(&p)), &node.conf(v));
        out.expect_ok();
        let r = out.json();
        assert_eq!(r["cniVersion"], *v);
        let ip = &r["ips"][0];
        assert_eq!(ip["interface"], 2, "{v}");
        let old = *v < "1.0.0";
        assert_eq!(ip.get("version").is_some(), old, "{v}: ips[].version");
        assert_eq!(r["dns"], serde_json::json!({}), "{v}: dns");
        let mtu = r["interfaces"][2].get("mtu");
        if *v == "1.1.0" {
            assert_eq!(mtu, Some(&Value::from(1450)), "{v}");
        } else {
            assert!(mtu.is_none(), "{v}: mtu only from 1.1.0 on");
        }
        node.ours(&Call::new("DEL", &cid, &path_of(&p)), &node.conf(v))
            .expect_ok();
    }
    node.assert_clean("after all versions");
}

#[test]
fn version_answers_without_environment() {
    let node = Node::new("ve");
    let call = Call {
        command: "VERSION".into(),
        ..Default::default()
    };
    let out = node.invoke(OURS, &call, br#"{"cniVersion":"0.4.0"}"#);
    out.expect_ok();
    let v = out.json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let out = node.invoke(OURS, &call, b"");
    assert_eq!(out.expect_ok().json()["cniVersion"], "1.1.0");
}

#[test]
fn del_is_idempotent_and_survives_missing_pieces() {
    let node = Node::new("di");
    let conf = node.conf("0.4.0");
    let p = pod("dp");
    node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok();
    let del = Call::new("DEL", "c1", &path_of(&p));
    node.ours(&del, &conf).expect_ok();
    node.ours(&del, &conf).expect_ok();
    node.assert_clean("repeated DEL");

    // Unknown container, empty and absent CNI_NETNS.
    node.ours(&Call::new("DEL", "never-added", &path_of(&p)), &conf)
        .expect_ok();
    let mut no_netns = Call::new("DEL", "never-added", "");
    node.ours(&no_netns, &conf).expect_ok();
    no_netns.netns = None;
    node.ours(&no_netns, &conf).expect_ok();

    // subnet.env gone (flanneld down): DEL replays the record.
    let p2 = pod("dp2");
    node.ours(&Call::new("ADD", "c2", &path_of(&p2)), &conf)
        .expect_ok();
    node.remove_subnet_env();
    node.ours(&Call::new("DEL", "c2", &path_of(&p2)), &conf)
        .expect_ok();
    node.assert_clean("DEL without subnet.env");
    assert!(links_of_kind(&p2, "veth").is_empty());
    node.write_subnet_env(SUBNET_ENV_V4);

    // The pod namespace is already gone: the reservation is still released.
    let p3 = pod("dp3");
    let p3_path = path_of(&p3);
    node.ours(&Call::new("ADD", "c3", &p3_path), &conf)
        .expect_ok();
    drop(p3);
    node.ours(&Call::new("DEL", "c3", &p3_path), &conf)
        .expect_ok();
    node.wait_veths_gone();
    node.assert_clean("DEL after the netns was deleted");

    // Record gone (e.g. an older flannel lost it): DEL still cleans interface and reservation.
    let p4 = pod("dp4");
    node.ours(&Call::new("ADD", "c4", &path_of(&p4)), &conf)
        .expect_ok();
    std::fs::remove_file(node.data_dir().join("c4")).unwrap();
    node.ours(&Call::new("DEL", "c4", &path_of(&p4)), &conf)
        .expect_ok();
    node.assert_clean("DEL without a record");
    assert!(links_of_kind(&p4, "veth").is_empty());
}

#[test]
fn del_refuses_the_node_namespace_itself() {
    let node = Node::new("dn");
    // A link named like the pod interface in the node namespace must survive.
    add_veth(&node.ns, "eth0", "eth0p");
    let out = node.ours(
        &Call::new("DEL", "c1", "/proc/self/ns/net"),
        &node.conf("0.4.0"),
    );
    assert_eq!(out.code(), 8, "{}", out.stdout);
    assert_eq!(node.veths(), ["eth0", "eth0p"]);
}

#[test]
fn check_verifies_against_prev_result() {
    let node = Node::new("ck");
    let p = pod("kp");
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &node.conf("0.4.0"));
    let prev = out.expect_ok().json();
    let mut conf = node.conf("0.4.0");
    conf["prevResult"] = prev.clone();
    let check = Call::new("CHECK", "c1", &path_of(&p));
    let ok = node.ours(&check, &conf);
    ok.expect_ok();
    assert_eq!(ok.stdout, "", "CHECK prints nothing on success");

    // 0.3.1 has no CHECK (the reference answers the same).
    let mut old = node.conf("0.3.1");
    old["prevResult"] = prev.clone();
    let out = node.ours(&check, &old);
    assert_eq!(out.code(), 1);
    assert_eq!(out.msg(), "config version does not allow CHECK");

    // No prevResult.
    assert_eq!(node.ours(&check, &node.conf("1.0.0")).code(), 7);

    // Drift is detected: the default route goes away.
    p.ip(&["route", "del", "default"]).unwrap();
    let out = node.ours(&check, &conf);
    assert!(out.msg().contains("0.0.0.0/0"), "{}", out.stdout);
    p.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.244.1.1",
        "dev",
        "eth0",
    ])
    .unwrap();
    node.ours(&check, &conf).expect_ok();

    // ... and so is a lost reservation.
    std::fs::remove_file(node.ipam_dir().join("10.244.1.2")).unwrap();
    let out = node.ours(&check, &conf);
    assert!(
        out.msg().contains("Failed to find address"),
        "{}",
        out.stdout
    );
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("after CHECK tests");
}

/// CHECK verifies the veth pair: prevResult's container interface must be a veth whose peer is
/// prevResult's host veth, and that host end must be a port of the bridge.
#[test]
fn check_verifies_the_veth_pair_and_its_bridge_port() {
    let node = Node::new("cv");
    let p = pod("cvp");
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &node.conf("1.0.0"));
    let prev = out.expect_ok().json();
    let host_veth = prev["interfaces"][1]["name"].as_str().unwrap().to_string();
    let pod_mac = prev["interfaces"][2]["mac"].as_str().unwrap().to_string();
    let mut conf = node.conf("1.0.0");
    conf["prevResult"] = prev.clone();
    let check = Call::new("CHECK", "c1", &path_of(&p));
    node.ours(&check, &conf).expect_ok();

    // A host interface a later chained plugin added (bandwidth's ifb) is not ours to judge.
    let mut chained = conf.clone();
    chained["prevResult"]["interfaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "bwp0c1", "mac": "02:00:00:00:00:01"}));
    node.ours(&check, &chained).expect_ok();

    // The host end is taken off the bridge.
    node.ns
        .ip(&["link", "set", "dev", &host_veth, "nomaster"])
        .unwrap();
    let out = node.ours(&check, &conf);
    assert_eq!(out.code(), 999, "{}", out.stdout);
    assert_eq!(
        out.msg(),
        format!("host veth {host_veth} (peer of eth0) is not enslaved to bridge cni0")
    );
    node.ns
        .ip(&["link", "set", "dev", &host_veth, "master", "cni0"])
        .unwrap();
    node.ours(&check, &conf).expect_ok();

    // eth0 is replaced by an unrelated veth with the same name and MAC; the original pair
    // stays (renamed), so prevResult's host veth still exists and is still a bridge port.
    p.ip(&["link", "set", "dev", "eth0", "down"]).unwrap();
    p.ip(&["link", "set", "dev", "eth0", "name", "eth0old"])
        .unwrap();
    let veth = format!(
        "link add frsimp0 type veth peer name eth0 netns {}",
        p.name()
    );
    node.ns.ip(&veth.split(' ').collect::<Vec<_>>()).unwrap();
    p.ip(&["link", "set", "dev", "eth0", "address", &pod_mac])
        .unwrap();
    let out = node.ours(&check, &conf);
    assert_eq!(out.code(), 999, "{}", out.stdout);
    let msg = out.msg();
    assert!(
        msg.starts_with(&format!("eth0 in {} (peer index ", path_of(&p)))
            && msg.ends_with(&format!(
                "is not the veth peer of prevResult's host interface {host_veth}"
            )),
        "{msg}"
    );

    // DEL removes the impostor (CNI_IFNAME); the original pair goes with its pod end.
    p.ip(&["link", "del", "eth0old"]).unwrap();
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("after the veth pairing CHECKs");
}

#[test]
fn status_and_add_while_flanneld_is_not_ready() {
    let node = Node::new("st");
    let status = Call {
        command: "STATUS".into(),
        path: Some(REF_DIR.into()),
        ..Default::default()
    };
    node.ours(&status, &node.conf("1.1.0")).expect_ok();
    assert_eq!(node.ours(&status, &node.conf("1.0.0")).code(), 1);

    node.remove_subnet_env();
    let out = node.ours(&status, &node.conf("1.1.0"));
    assert_eq!(out.code(), 50);
    assert!(out.msg().contains("subnet.env"), "{}", out.msg());

    let p = pod("sp");
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &node.conf("0.3.1"));
    assert_eq!(out.code(), 11);
    let msg = out.msg();
    assert!(
        msg.contains(&node.subnet_file().display().to_string()),
        "names the file: {msg}"
    );
    assert!(msg.contains("flanneld pod on this node"), "{msg}");
    node.assert_clean("ADD without subnet.env");
    assert!(!file_exists(&node.ipam_dir()), "no IPAM dir created");
    assert!(
        links_of_kind(&node.ns, "bridge").is_empty(),
        "no bridge created"
    );

    node.write_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n");
    assert_eq!(node.ours(&status, &node.conf("1.1.0")).code(), 50);
    node.write_subnet_env(SUBNET_ENV_V4);
    node.ours(&status, &node.conf("1.1.0")).expect_ok();
}

#[test]
fn gc_releases_attachments_not_listed() {
    let node = Node::new("gc");
    let conf = node.conf("1.1.0");
    let pods: Vec<_> = (0..3).map(|i| pod(&format!("g{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        node.ours(&Call::new("ADD", &format!("gc-{i}"), &path_of(p)), &conf)
            .expect_ok();
    }
    // A reservation made by someone else's crashed ADD, with no record at all.
    std::fs::write(node.ipam_dir().join("10.244.1.200"), "lost\r\neth0").unwrap();

    let gc = Call {
        command: "GC".into(),
        path: Some(REF_DIR.into()),
        ..Default::default()
    };
    // Without the list nothing may be released.
    assert_eq!(node.ours(&gc, &conf).code(), 7);
    assert_eq!(node.reservations().len(), 4);
    let mut old = conf.clone();
    old["cniVersion"] = "1.0.0".into();
    assert_eq!(node.ours(&gc, &old).code(), 1);

    let mut with_list = conf.clone();
    with_list["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    node.ours(&gc, &with_list).expect_ok();
    assert_eq!(node.reservations(), ["10.244.1.3"]);
    assert_eq!(node.records(), ["gc-1"]);

    // The spec-v1.1.0 spelling works as well; an empty list releases the rest.
    let mut empty = conf.clone();
    empty["cni.dev/attachments"] = serde_json::json!([]);
    node.ours(&gc, &empty).expect_ok();
    assert!(node.reservations().is_empty());
    assert!(node.records().is_empty());
    for (i, p) in pods.iter().enumerate() {
        node.ours(&Call::new("DEL", &format!("gc-{i}"), &path_of(p)), &conf)
            .expect_ok();
    }
    node.assert_clean("after GC and DEL");
}

/// Each case: the ADD fails with the expected code and leaves nothing anywhere.
#[test]
fn bad_input_leaves_nothing_behind() {
    let node = Node::new("bi");
    let p = pod("bp");
    let good = node.conf("0.3.1");
    let regular_file = node.dir.path().join("not-a-netns");
    std::fs::write(&regular_file, "x").unwrap();
    let base = Call::new("ADD", "ok-id", &path_of(&p));

    let mut cases: Vec<(&str, Call, Vec<u8>, u64)> = Vec::new();
    cases.push((
        "malformed JSON",
        base.clone(),
        b"{\"cniVersion\":".to_vec(),
        6,
    ));
    cases.push(("not an object", base.clone(), b"[]".to_vec(), 6));
    let mut v = good.clone();
    v["cniVersion"] = "0.2.0".into();
    cases.push((
        "unsupported version",
        base.clone(),
        v.to_string().into_bytes(),
        1,
    ));
    let mut v = good.clone();
    v["delegate"]["name"] = "x".into();
    cases.push((
        "delegate with name",
        base.clone(),
        v.to_string().into_bytes(),
        7,
    ));
    let mut v = good.clone();
    v["name"] = "../../etc".into();
    cases.push((
        "network name with ..",
        base.clone(),
        v.to_string().into_bytes(),
        7,
    ));
    let g = good.to_string().into_bytes();
    let mut c = base.clone();
    c.container_id = None;
    cases.push(("no CNI_CONTAINERID", c, g.clone(), 4));
    let mut c = base.clone();
    c.ifname = None;
    cases.push(("no CNI_IFNAME", c, g.clone(), 4));
    let mut c = base.clone();
    c.netns = None;
    cases.push(("no CNI_NETNS", c, g.clone(), 4));
    for bad_id in ["../escape", "a/b", "..", "x..y", ".hidden", "a b"] {
        let mut c = base.clone();
        c.container_id = Some(bad_id.into());
        cases.push(("bad container id", c, g.clone(), 4));
    }
    for bad_if in ["eth0123456789abc", "a/b", ".", "..", "e:1"] {
        let mut c = base.clone();
        c.ifname = Some(bad_if.into());
        cases.push(("bad ifname", c, g.clone(), 4));
    }
    let mut c = base.clone();
    c.netns = Some("/run/netns/frs-does-not-exist".into());
    cases.push(("netns missing", c, g.clone(), 4));
    let mut c = base.clone();
    c.netns = Some(regular_file.display().to_string());
    cases.push(("netns is a regular file", c, g.clone(), 4));
    let mut c = base.clone();
    c.netns = Some("/proc/self/ns/net".into());
    cases.push(("netns is the node's own", c, g.clone(), 8));
    let mut c = base.clone();
    c.args = Some("K8S_POD_NAME=x".into());
    cases.push(("unknown CNI_ARGS without IgnoreUnknown", c, g.clone(), 4));
    let mut c = base.clone();
    c.command = "FROB".into();
    cases.push(("unknown command", c, g.clone(), 4));

    for (what, call, stdin, code) in cases {
        let out = node.invoke(OURS, &call, &stdin);
        assert_eq!(out.code(), code, "{what}: {}", out.stdout);
        assert!(!out.msg().is_empty(), "{what}: error has a message");
        node.assert_clean(what);
        assert!(
            links_of_kind(&p, "veth").is_empty(),
            "{what}: pod has a veth"
        );
        assert!(!file_exists(&node.ipam_dir()), "{what}: IPAM dir created");
        assert!(!file_exists(&node.data_dir()), "{what}: data dir created");
        // Nothing escaped the temp dir's known layout (e.g. "../escape" next to the data dir).
        let mut top: Vec<String> = std::fs::read_dir(node.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, ["not-a-netns", "run"], "{what}");
        assert!(
            !file_exists(&node.dir.path().join("lib/cni/escape")),
            "{what}"
        );
    }
}

#[test]
fn repeated_add_fails_without_touching_the_first_attachment() {
    let node = Node::new("ra");
    let p = pod("rp");
    let conf = node.conf("0.3.1");
    let add = Call::new("ADD", "c1", &path_of(&p));
    let first = node.ours(&add, &conf);
    first.expect_ok();
    let out = node.ours(&add, &conf);
    assert!(out.msg().contains("already exists"), "{}", out.stdout);
    assert_eq!(node.reservations(), ["10.244.1.2"]);
    assert_eq!(node.records(), ["c1"]);
    assert_eq!(node.veths().len(), 1);
    assert_eq!(global_addrs(&p, "eth0"), ["10.244.1.2/24"]);

    // After the interface is gone (a runtime retrying a half-done ADD), the same IP comes back.
    p.ip(&["link", "del", "eth0"]).unwrap();
    let again = node.ours(&add, &conf);
    assert_eq!(
        again.expect_ok().json()["ips"][0]["address"],
        "10.244.1.2/24"
    );
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("after repeated ADD");
}

#[test]
fn a_failure_after_the_veth_exists_is_rolled_back() {
    let node = Node::new("rb");
    let p = pod("rbp");
    let mut conf = node.conf("0.3.1");
    // An unreachable gateway makes the route step (after veth and reservation) fail.
    conf["ipam"]["routes"] = serde_json::json!([{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]);
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf);
    assert!(out.msg().contains("10.99.0.0/16"), "{}", out.stdout);
    node.assert_clean("failed ADD");
    assert!(links_of_kind(&p, "veth").is_empty());
}

#[test]
fn exhausted_pool_fails_cleanly() {
    let node = Node::with_subnet_env(
        "ex",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/29\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    let conf = node.conf("0.3.1");
    let pods: Vec<_> = (0..6).map(|i| pod(&format!("e{i}"))).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        node.ours(&Call::new("ADD", &format!("ex-{i}"), &path_of(p)), &conf)
            .expect_ok();
    }
    let out = node.ours(&Call::new("ADD", "ex-5", &path_of(&pods[5])), &conf);
    assert!(!out.ok);
    assert_eq!(
        out.msg(),
        "failed to allocate for range 0: no IP addresses available in range set: 10.244.1.1-10.244.1.6"
    );
    assert_eq!(node.reservations().len(), 5);
    assert_eq!(node.veths().len(), 5);
    assert_eq!(node.records().len(), 5, "no record for the failed ADD");
    assert!(links_of_kind(&pods[5], "veth").is_empty());
    for (i, p) in pods.iter().take(5).enumerate() {
        node.ours(&Call::new("DEL", &format!("ex-{i}"), &path_of(p)), &conf)
            .expect_ok();
    }
    node.assert_clean("after exhaustion");
}

#[test]
fn sixty_parallel_adds_get_distinct_ips_then_parallel_del_with_and_without_netns() {
    let node = Node::new("pa");
    let conf = node.conf("0.3.1");
    let pods: Vec<_> = (0..60).map(|i| pod(&format!("q{i}"))).collect();
    let paths: Vec<String> = pods.iter().map(path_of).collect();
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                let conf = &conf;
                s.spawn(move || node.ours(&Call::new("ADD", &format!("par-{i}"), p), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = Vec::new();
    for r in &results {
        ips.push(
            r.expect_ok().json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 60, "duplicate IPs: {ips:?}");
    assert_eq!(node.reservations().len(), 60);
    assert_eq!(node.veths().len(), 60);
    assert_eq!(node.records().len(), 60);
    assert_eq!(global_addrs(&node.ns, "cni0"), ["10.244.1.1/24"]);

    // Half the pods lose their namespace before DEL.
    let mut pods: Vec<Option<_>> = pods.into_iter().map(Some).collect();
    for p in pods.iter_mut().step_by(2) {
        *p = None;
    }
    std::thread::scope(|s| {
        for (i, p) in paths.iter().enumerate() {
            let node = &node;
            let conf = &conf;
            s.spawn(move || {
                node.ours(&Call::new("DEL", &format!("par-{i}"), p), conf)
                    .expect_ok();
            });
        }
    });
    node.wait_veths_gone();
    node.assert_clean("after parallel DEL");
    for p in pods.iter().flatten() {
        assert!(links_of_kind(p, "veth").is_empty());
    }
}

#[test]
fn dual_stack_gets_both_families() {
    let node = Node::with_subnet_env(
        "ds",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    let p = pod("dsp");
    let conf = node.conf("1.0.0");
    let r = node
        .ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok()
        .json();
    assert_eq!(
        r["ips"],
        serde_json::json!([
            {"interface":2,"address":"10.244.1.2/24","gateway":"10.244.1.1"},
            {"interface":2,"address":"fd00:10:244:1::2/64","gateway":"fd00:10:244:1::1"}
        ])
    );
    assert_eq!(
        r["routes"],
        serde_json::json!([
            {"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"},
            {"dst":"0.0.0.0/0","gw":"10.244.1.1"},{"dst":"::/0","gw":"fd00:10:244:1::1"}
        ])
    );
    let mut pod_addrs = global_addrs(&p, "eth0");
    pod_addrs.sort();
    assert_eq!(pod_addrs, ["10.244.1.2/24", "fd00:10:244:1::2/64"]);
    let v6 = routes(&p, "-6");
    assert!(
        v6.iter()
            .any(|r| r.starts_with("default via fd00:10:244:1::1 dev eth0")),
        "{v6:?}"
    );
    assert!(
        v6.iter()
            .any(|r| r.starts_with("fd00:10:244::/56 via fd00:10:244:1::1 dev eth0")),
        "{v6:?}"
    );
    let mut br = global_addrs(&node.ns, "cni0");
    br.sort();
    assert_eq!(br, ["10.244.1.1/24", "fd00:10:244:1::1/64"]);
    assert_eq!(node.sysctl("net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(sysctl_in(&p, "net/ipv6/conf/eth0/keep_addr_on_down"), "1");
    assert_eq!(node.reservations(), ["10.244.1.2", "fd00:10:244:1::2"]);
    assert!(node.ipam_dir().join("last_reserved_ip.1").exists());
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("dual stack");
}

#[test]
fn ip_masq_installs_and_removes_the_reference_chain() {
    // FLANNEL_IPMASQ=false: flanneld does not masquerade, so the bridge must.
    let node = Node::with_subnet_env(
        "im",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
    let p = pod("imp");
    let conf = node.conf("0.3.1");
    node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok();
    let save = |ns: &crate::harness::NetnsGuard| {
        let out = ns.exec("iptables-save", &["-t", "nat"]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = save(&node.ns);
    let chain = flannel_rs::cni::ipmasq::chain_name(NET_NAME, "c1");
    assert!(
        rules.contains(&format!("-A POSTROUTING -s 10.244.1.2/32 -m comment --comment \"name: \\\"cbr0\\\" id: \\\"c1\\\"\" -j {chain}")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("-A {chain} -d 10.244.1.0/24")),
        "{rules}"
    );
    assert!(rules.contains("! -d 224.0.0.0/4"), "{rules}");
    assert!(rules.contains("-j MASQUERADE"), "{rules}");
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    let rules = save(&node.ns);
    assert!(!rules.contains(&chain), "{rules}");
    node.assert_clean("ipMasq");
}

#[test]
fn portmap_chains_after_us() {
    let node = Node::new("pm");
    let p = pod("pmp");
    let conf = node.conf("0.4.0");
    let add = Call::new("ADD", "c1", &path_of(&p));
    let result = node.ours(&add, &conf).expect_ok().json();
    let portmap = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": NET_NAME,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": result,
    });
    let out = node.invoke(
        &format!("{REF_DIR}/portmap"),
        &add,
        portmap.to_string().as_bytes(),
    );
    out.expect_ok();
    assert_eq!(
        out.json()["ips"][0]["address"],
        "10.244.1.2/24",
        "portmap relays our result"
    );
    let rules = String::from_utf8_lossy(
        &node
            .ns
            .exec("iptables-save", &["-t", "nat"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(rules.contains("--dport 8080"), "{rules}");
    assert!(rules.contains("10.244.1.2:80"), "{rules}");
    let del = Call::new("DEL", "c1", &path_of(&p));
    node.invoke(
        &format!("{REF_DIR}/portmap"),
        &del,
        portmap.to_string().as_bytes(),
    )
    .expect_ok();
    node.ours(&del, &conf).expect_ok();
    node.assert_clean("portmap chain");
}

#[test]
fn other_delegate_types_are_executed_from_cni_path() {
    let node = Node::new("ex");
    let p = pod("xp");
    let mut conf = node.conf("0.4.0");
    conf["delegate"] = serde_json::json!({"type": "ptp"});
    let r = node
        .ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok()
        .json();
    assert_eq!(r["ips"][0]["address"], "10.244.1.2/24");
    assert!(
        links_of_kind(&node.ns, "bridge").is_empty(),
        "ptp, not bridge"
    );
    assert_eq!(node.reservations(), ["10.244.1.2"]);
    let record: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("c1")).unwrap()).unwrap();
    assert_eq!(record["type"], "ptp");
    // A missing CNI_PATH is reported, not guessed.
    let mut no_path = Call::new("ADD", "c2", &path_of(&p));
    no_path.path = None;
    assert_eq!(node.ours(&no_path, &conf).code(), 4);
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("ptp delegate");
}

#[test]
fn a_non_bridge_named_cni0_fails_the_add_cleanly() {
    let node = Node::new("nb");
    add_veth(&node.ns, "cni0", "cni0p");
    let p = pod("nbp");
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &node.conf("0.3.1"));
    assert!(
        out.msg()
            .contains("\"cni0\" already exists but is not a bridge"),
        "{}",
        out.stdout
    );
    assert_eq!(node.veths(), ["cni0", "cni0p"], "only the squatter");
    assert!(node.reservations().is_empty());
    assert!(node.records().is_empty());
    assert!(links_of_kind(&p, "veth").is_empty());
}

#[test]
fn bridge_address_conflicts_unless_force_address() {
    let node = Node::new("fa");
    node.ns
        .ip(&["link", "add", "cni0", "type", "bridge"])
        .unwrap();
    node.ns
        .ip(&["addr", "add", "10.9.9.1/24", "dev", "cni0"])
        .unwrap();
    // Set explicitly, so the kernel no longer follows the ports' MTU.
    node.ns.ip(&["link", "set", "cni0", "mtu", "1400"]).unwrap();
    let p = pod("fap");
    let conf = node.conf("0.3.1");
    let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf);
    assert!(
        out.msg()
            .contains("\"cni0\" already has an IP address different from 10.244.1.1/24"),
        "{}",
        out.stdout
    );
    node.assert_clean("address conflict");
    assert!(links_of_kind(&p, "veth").is_empty());
    assert_eq!(global_addrs(&node.ns, "cni0"), ["10.9.9.1/24"]);

    let mut forced = conf.clone();
    forced["delegate"]["forceAddress"] = true.into();
    node.ours(&Call::new("ADD", "c1", &path_of(&p)), &forced)
        .expect_ok();
    assert_eq!(global_addrs(&node.ns, "cni0"), ["10.244.1.1/24"]);
    // An adopted bridge keeps its MTU (the reference does not change it either).
    assert_eq!(link(&node.ns, "cni0")["mtu"], 1400);
    assert_eq!(link(&p, "eth0")["mtu"], 1450);
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &forced)
        .expect_ok();
    node.assert_clean("forceAddress");
}

#[test]
fn requested_ip_and_mac_are_honoured() {
    let node = Node::new("rq");
    let p = pod("rqp");
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = serde_json::json!({"mac": "02:42:0a:f4:01:4d"});
    let mut add = Call::new("ADD", "c1", &path_of(&p));
    add.args = Some("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.1.77".into());
    let r = node.ours(&add, &conf).expect_ok().json();
    assert_eq!(r["ips"][0]["address"], "10.244.1.77/24");
    assert_eq!(r["interfaces"][2]["mac"], "02:42:0a:f4:01:4d");
    assert_eq!(link(&p, "eth0")["address"], "02:42:0a:f4:01:4d");
    assert_eq!(node.reservations(), ["10.244.1.77"]);

    // The same IP for another pod is refused, and that pod is left without anything.
    let p2 = pod("rqp2");
    let mut add2 = Call::new("ADD", "c2", &path_of(&p2));
    add2.args = Some("IgnoreUnknown=1;IP=10.244.1.77".into());
    let out = node.ours(&add2, &node.conf("1.0.0"));
    assert!(out.msg().contains("10.244.1.77"), "{}", out.stdout);
    assert!(links_of_kind(&p2, "veth").is_empty());
    assert_eq!(node.records(), ["c1"]);
    // An invalid MAC is a config error, found before anything is created.
    let mut bad = node.conf("1.0.0");
    bad["runtimeConfig"] = serde_json::json!({"mac": "not-a-mac"});
    let out = node.ours(&Call::new("ADD", "c3", &path_of(&p2)), &bad);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(links_of_kind(&p2, "veth").is_empty());
    assert_eq!(node.records(), ["c1"]);

    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("requested IP/MAC");
}

#[test]
fn a_failed_del_keeps_the_record_and_a_retry_finishes() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("fd");
    let p = pod("fdp");
    // A delegate that is the reference ptp plugin, except that DEL fails while `broken` exists.
    let bin = node.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = node.dir.path().join("broken");
    let script = bin.join("flakyptp");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ] && [ -e {m} ]; then\n  printf '{{\"code\":11,\"msg\":\"try again\"}}'; exit 1\nfi\nexec {REF_DIR}/ptp\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut conf = node.conf("0.4.0");
    conf["delegate"] = serde_json::json!({"type": "flakyptp"});
    let mut add = Call::new("ADD", "c1", &path_of(&p));
    add.path = Some(format!("{}:{REF_DIR}", bin.display()));
    node.ours(&add, &conf).expect_ok();
    assert_eq!(node.records(), ["c1"]);

    std::fs::write(&marker, "").unwrap();
    let mut del = add.clone();
    del.command = "DEL".into();
    let out = node.ours(&del, &conf);
    assert_eq!(
        out.code(),
        11,
        "the delegate's error is relayed: {}",
        out.stdout
    );
    assert_eq!(node.records(), ["c1"], "record kept after a failed DEL");
    assert_eq!(node.reservations(), ["10.244.1.2"]);

    std::fs::remove_file(&marker).unwrap();
    node.ours(&del, &conf).expect_ok();
    node.assert_clean("retried DEL");
}

/// An ADD leaves the node's ARP cache alone, as the reference does: the bridge's MAC is pinned
/// once, when its gateway address is added, not on every ADD (setting a MAC, even to the same
/// value, makes the kernel flush the device's neighbour table, and the node would re-resolve
/// every pod after each pod start).
#[test]
fn an_add_leaves_the_nodes_arp_cache_alone() {
    let node = Node::new("ga");
    let conf = node.conf("0.3.1");
    let p1 = pod("ga1");
    let r1 = node
        .ours(&Call::new("ADD", "c1", &path_of(&p1)), &conf)
        .expect_ok()
        .json();
    let mac1 = r1["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_eq!(
        bridge_mac_assign_type(&node.ns),
        "3",
        "the bridge MAC is pinned by the first ADD"
    );
    // The node has resolved pod 1.
    node.ns
        .ip(&[
            "neigh",
            "replace",
            "10.244.1.2",
            "lladdr",
            &mac1,
            "dev",
            "cni0",
            "nud",
            "reachable",
        ])
        .unwrap();
    let p2 = pod("ga2");
    node.ours(&Call::new("ADD", "c2", &path_of(&p2)), &conf)
        .expect_ok();
    let cached = ip_json(&node.ns, &["neigh", "show", "10.244.1.2", "dev", "cni0"]);
    assert_eq!(
        cached[0]["lladdr"], mac1,
        "pod 1's ARP entry survived pod 2's ADD: {cached}"
    );
    assert_eq!(bridge_mac_assign_type(&node.ns), "3");
    for (cid, p) in [("c1", &p1), ("c2", &p2)] {
        node.ours(&Call::new("DEL", cid, &path_of(p)), &conf)
            .expect_ok();
    }
    node.assert_clean("after the ARP cache test");
}
