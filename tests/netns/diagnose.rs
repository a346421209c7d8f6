//! `flanneld diagnose` on a local cluster: a healthy cluster, then each problem code made for
//! real (entries deleted or altered in a node's kernel, a stopped daemon, a clobber by a
//! named field manager, a conflicting Node, UDP 8472 dropped by nft on a peer, a peer lacking
//! our entries, a lower MTU on a peer's underlay), read back from the JSON and the text.

use std::time::Duration;

use frs_testsupport::cluster::{Cluster, VXLAN_DEVICE};
use frs_testsupport::lab::peer_annotations;
use serde_json::Value;

use crate::daemon_probes::{DROP_VXLAN, make_one_way, nft};
use crate::e2e_cluster::{cluster, ip_in, pod_ip};

/// `diagnose --json ARGS` on `node`: (exit code, the document).
fn diagnose_json(c: &Cluster, node: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = c.diagnose(node, &all).unwrap();
    let doc = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("diagnose --json on {node}: {e}\nstdout: {out}\nstderr: {err}"));
    (code, doc)
}

/// The codes of `peer`'s problems (`""` = the node's own).
fn codes(doc: &Value, peer: &str) -> Vec<String> {
    let problems = if peer.is_empty() {
        &doc["problems"]
    } else {
        let p = doc["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == peer)
            .unwrap_or_else(|| panic!("no peer {peer} in {doc}"));
        &p["problems"]
    };
    field_of_each(problems, "code")
}

/// `key` of every object in the array `list`.
fn field_of_each(list: &Value, key: &str) -> Vec<String> {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    items
        .iter()
        .map(|p| p[key].as_str().unwrap().to_string())
        .collect()
}

fn detail(doc: &Value, peer: &str, code: &str) -> String {
    let list = if peer.is_empty() {
        doc["problems"].clone()
    } else {
        doc["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == peer)
            .map(|p| p["problems"].clone())
            .unwrap()
    };
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == code)
        .and_then(|p| p["detail"].as_str())
        .unwrap_or_else(|| panic!("no {code} for {peer:?} in {doc}"))
        .to_string()
}

#[test]
fn a_healthy_cluster_is_one_line_and_exit_0_and_a_pod_ip_finds_its_node() {
    let c = cluster("dg1", 3, 1);
    let (code, doc) = diagnose_json(&c, "node-1", &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["node"], "node-1");
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["problems"], serde_json::json!([]));
    assert_eq!(field_of_each(&doc["peers"], "node"), ["node-2", "node-3"]);

    let (code, text, _) = c.diagnose("node-1", &[]).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok: 2 peers healthy (node-2, node-3)"),
        "{text}"
    );
    assert!(text.ends_with("no problem found\n"), "{text}");

    let target = pod_ip(&c, "node-2", 0).to_string();
    let (code, text, _) = c.diagnose("node-1", &["--ip", &target]).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{target} belongs to node node-2")),
        "{text}"
    );
    assert!(text.contains("ok: 1 peers healthy (node-2)"), "{text}");

    let (code, doc) = diagnose_json(&c, "node-3", &["--cluster"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["peers"].as_array().unwrap().len(), 3);

    // Could not diagnose: exit 2 with the reason.
    let (code, _, err) = c.diagnose("node-1", &["--peer", "no-such-node"]).unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"no-such-node\" is not in the API"), "{err}");
    let (code, _, err) = c
        .diagnose("node-1", &["--kube-api-url=https://127.0.0.1:1"])
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("could not diagnose"), "{err}");
}

#[test]
fn each_missing_or_wrong_kernel_entry_and_a_stopped_daemon_is_named() {
    let mut c = cluster("dg2", 3, 0);
    c.stop_daemon("node-1").unwrap();
    let two = c.peer_facts("node-2").unwrap();
    let three = c.peer_facts("node-3").unwrap();
    let ns = &c.node("node-1").unwrap().host.ns;
    ip_in(
        &c,
        "node-1",
        &["route", "del", &two.subnet.to_string(), "dev", VXLAN_DEVICE],
    );
    let fdb = ns
        .exec(
            "bridge",
            &[
                "fdb",
                "del",
                &two.vtep_mac.to_string(),
                "dev",
                VXLAN_DEVICE,
                "dst",
                &two.underlay.to_string(),
            ],
        )
        .unwrap();
    assert!(fdb.status.success());
    let gw3 = three.subnet.network().to_string();
    ip_in(
        &c,
        "node-1",
        &[
            "neigh",
            "replace",
            &gw3,
            "lladdr",
            "0e:00:00:00:00:99",
            "nud",
            "permanent",
            "dev",
            VXLAN_DEVICE,
        ],
    );
    // Left by a node that no longer exists.
    ip_in(
        &c,
        "node-1",
        &[
            "route",
            "add",
            "10.244.250.0/24",
            "via",
            "10.244.250.0",
            "dev",
            VXLAN_DEVICE,
            "onlink",
        ],
    );

    let (code, doc) = diagnose_json(&c, "node-1", &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["ok"], false);
    assert_eq!(
        codes(&doc, "node-2"),
        ["missing-route", "missing-fdb"],
        "{doc}"
    );
    assert_eq!(codes(&doc, "node-3"), ["wrong-mac"], "{doc}");
    assert!(detail(&doc, "node-3", "wrong-mac").contains("0e:00:00:00:00:99"));
    assert_eq!(
        codes(&doc, ""),
        ["stale-entry", "daemon-not-running"],
        "{doc}"
    );
    assert!(detail(&doc, "", "stale-entry").starts_with("route 10.244.250.0/24"));

    ip_in(&c, "node-1", &["neigh", "del", &gw3, "dev", VXLAN_DEVICE]);
    let (_, doc) = diagnose_json(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(codes(&doc, "node-3"), ["missing-neighbour"], "{doc}");
    assert_eq!(
        doc["peers"].as_array().unwrap().len(),
        1,
        "--peer: one peer"
    );

    // The text: each problem on its own line with a fix.
    let (code, text, _) = c.diagnose("node-1", &[]).unwrap();
    assert_eq!(code, 1);
    assert!(text.contains("node-2: missing-route — no route"), "{text}");
    assert!(text.contains("node-1: daemon-not-running — "), "{text}");
    assert!(text.contains("5 problem(s) found"), "{text}");

    // The daemon repairs everything; diagnose agrees.
    c.start_daemon("node-1").unwrap();
    c.wait_ready("node-1").unwrap();
    c.wait_converged(Duration::from_secs(10)).unwrap();
    let (code, doc) = diagnose_json(&c, "node-1", &[]);
    assert_eq!(code, 0, "{doc}");
}

#[test]
fn a_clobbered_node_names_the_field_manager_and_a_conflicting_node_is_rejected() {
    let mut c = cluster("dg3", 3, 0);
    c.stop_daemon("node-3").unwrap();
    // The incident, by a controller named "rancher".
    c.lab.server.stale_write_by("node-3", "rancher");
    // A newcomer claiming node-2's subnet.
    std::thread::sleep(Duration::from_millis(1100));
    let addr = c.lab.switch.address(201);
    let two = c.peer_facts("node-2").unwrap();
    c.lab
        .create_node(
            "x-conflict",
            &two.subnet.to_string(),
            addr,
            peer_annotations("0e:00:00:00:00:e1", &addr.to_string()),
        )
        .unwrap();

    let (code, doc) = diagnose_json(&c, "node-1", &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(codes(&doc, "node-3"), ["no-annotations"], "{doc}");
    let d = detail(&doc, "node-3", "no-annotations");
    assert!(d.contains("field manager \"rancher\""), "{d}");
    assert_eq!(codes(&doc, "x-conflict"), ["rejected"], "{doc}");
    assert!(detail(&doc, "x-conflict", "rejected").contains("node-2"));
    assert_eq!(codes(&doc, "node-2"), Vec::<String>::new(), "{doc}");
    // node-1's daemon keeps node-3's entries (it only lost its annotations): not stale.
    assert_eq!(codes(&doc, ""), Vec::<String>::new(), "{doc}");

    let (code, doc) = diagnose_json(&c, "node-3", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        codes(&doc, ""),
        ["annotations-clobbered", "daemon-not-running"],
        "{doc}"
    );
    let d = detail(&doc, "", "annotations-clobbered");
    assert!(
        d.contains("removed by field manager \"rancher\" (Update)"),
        "{d}"
    );

    let (code, text, _) = c.diagnose("node-2", &["--cluster"]).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("node-3: no-annotations — no flannel annotations"),
        "{text}"
    );
    assert!(
        text.contains("check the kube-flannel pod on node-3"),
        "{text}"
    );
    assert!(text.contains("x-conflict: rejected"), "{text}");
}

#[test]
fn probes_tell_udp_dropped_one_way_and_an_mtu_black_hole_apart() {
    let mut c = cluster("dg4", 3, 0);
    let (code, doc) = diagnose_json(&c, "node-1", &[]);
    assert_eq!(code, 0, "{doc}");

    // UDP 8472 dropped on node-2.
    let nft = |node: &str, rules: &str| nft(&c, node, rules);
    nft("node-2", DROP_VXLAN);
    let (code, doc) = diagnose_json(&c, "node-1", &["--peer", "node-2"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(codes(&doc, "node-2"), ["tunnel-unreachable"]);
    assert!(
        detail(&doc, "node-2", "tunnel-unreachable").contains("UDP"),
        "{doc}"
    );
    nft("node-2", "delete table inet frs_drop");

    // node-3 without its daemon loses its entries for node-1: one-way.
    make_one_way(&mut c, "node-3", "node-1");
    let (code, doc) = diagnose_json(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(codes(&doc, "node-3"), ["tunnel-unreachable"], "{doc}");
    assert!(
        detail(&doc, "node-3", "tunnel-unreachable").starts_with("one-way"),
        "{doc}"
    );
    // The peer's daemon stopped with its entries in place is fine.
    c.start_daemon("node-3").unwrap();
    c.wait_ready("node-3").unwrap();
    c.wait_converged(Duration::from_secs(10)).unwrap();
    c.stop_daemon("node-3").unwrap();
    let (code, doc) = diagnose_json(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(code, 0, "{doc}");

    // A narrower underlay on node-2: small packets pass, full-size ones are lost.
    ip_in(&c, "node-2", &["link", "set", "eth0", "mtu", "1400"]);
    let (code, doc) = diagnose_json(&c, "node-1", &["--peer", "node-2"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(codes(&doc, "node-2"), ["mtu-blackhole"], "{doc}");
}
