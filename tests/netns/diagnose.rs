//! `flanneld diagnose` on a local cluster: a healthy cluster, then each problem code made for
//! real (entries deleted or altered in a node's kernel, the VXLAN device down or gone, a
//! stopped daemon, a clobber by a named field manager, Nodes conflicting on a subnet or VTEP
//! MAC, a podCIDR outside the Network, a public IP none of the Node's addresses, UDP 8472
//! dropped by nft on a peer, a peer lacking our entries, a lower MTU on a peer's underlay),
//! each read back from the JSON and from its text line; and exit 2 with the reason when no
//! diagnosis is possible (unknown node, API unreachable, no capabilities).

use std::time::Duration;

use frs_testsupport::cluster::{Cluster, PeerFacts, VXLAN_DEVICE, poll};
use frs_testsupport::lab::peer_annotations;
use serde_json::Value;

use crate::daemon_probes::{DROP_VXLAN, make_one_way, nft};
use crate::e2e_cluster::{cluster, ip_in, pod_ip};

/// One diagnosis of the same state read both ways: the `--json` document and the text.
struct Diag {
    code: i32,
    doc: Value,
    text: String,
}

/// `diagnose ARGS` on `node`, once with `--json` and once as text. The two must agree: the
/// same exit status, `ok` exactly when it is 0, every problem of the document on its own text
/// line `WHO: CODE — DETAIL; FIX` with a fix to try, and the same problem count.
fn diagnose(c: &Cluster, node: &str, args: &[&str]) -> Diag {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = c.diagnose(node, &all).unwrap();
    let doc: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("diagnose --json on {node}: {e}\nstdout: {out}\nstderr: {err}"));
    let (text_code, text, err) = c.diagnose(node, args).unwrap();
    assert_eq!(
        code, text_code,
        "--json and text disagree\n{doc}\n{text}{err}"
    );
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    assert_eq!(doc["ok"], code == 0, "{doc}");
    let d = Diag { code, doc, text };
    let mut count = 0;
    for (who, problems) in d.problem_lists() {
        let problems = problems.as_array().unwrap();
        count += problems.len();
        for p in problems {
            for fix in d.fixes(who, p["code"].as_str().unwrap()) {
                assert!(!fix.trim().is_empty(), "no fix for {p}\n{}", d.text);
            }
        }
    }
    let tail = match count {
        0 => "no problem found\n".to_string(),
        n => format!("{n} problem(s) found\n"),
    };
    assert!(
        d.text.ends_with(&tail),
        "{count} problems in {}\n{}",
        d.doc,
        d.text
    );
    d
}

impl Diag {
    /// `(who, problems)` for the node itself (`""`) and each peer.
    fn problem_lists(&self) -> Vec<(&str, &Value)> {
        let peers = self.doc["peers"].as_array().unwrap();
        std::iter::once(("", &self.doc["problems"]))
            .chain(
                peers
                    .iter()
                    .map(|p| (p["node"].as_str().unwrap(), &p["problems"])),
            )
            .collect()
    }

    fn problems(&self, who: &str) -> &Value {
        self.problem_lists()
            .into_iter()
            .find(|(w, _)| *w == who)
            .unwrap_or_else(|| panic!("no peer {who} in {}", self.doc))
            .1
    }

    /// The codes of `who`'s problems (`""` = the node's own).
    fn codes(&self, who: &str) -> Vec<String> {
        field_of_each(self.problems(who), "code")
    }

    /// The details of `who`'s `code` problems, in order.
    fn details(&self, who: &str, code: &str) -> Vec<String> {
        self.problems(who)
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["code"] == code)
            .map(|p| p["detail"].as_str().unwrap().to_string())
            .collect()
    }

    /// The detail of `who`'s (first) `code` problem.
    fn detail(&self, who: &str, code: &str) -> String {
        self.details(who, code)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {code} for {who:?} in {}", self.doc))
    }

    /// The fix on the text line of each of `who`'s `code` problems; each line must carry the
    /// JSON's detail verbatim. (The first, for [`Diag::fix`].)
    fn fixes(&self, who: &str, code: &str) -> Vec<String> {
        let name = match (who, self.doc["node"].as_str().unwrap()) {
            ("", "") => "cluster",
            ("", own) => own,
            (peer, _) => peer,
        };
        self.details(who, code)
            .iter()
            .map(|detail| {
                let head = format!("{name}: {code} — {detail}; ");
                self.text
                    .lines()
                    .find_map(|l| l.strip_prefix(&head))
                    .unwrap_or_else(|| panic!("no line {head:?}…\n{}", self.text))
                    .to_string()
            })
            .collect()
    }

    fn fix(&self, who: &str, code: &str) -> String {
        self.fixes(who, code)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {code} for {who:?} in {}", self.doc))
    }
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

/// Every capability dropped while staying uid 0 (so the lab's root-only files stay readable):
/// the situation of a user who is not root.
const NO_CAPABILITIES: [&str; 4] = [
    "setpriv",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
];

#[test]
fn a_healthy_cluster_is_one_line_and_exit_0_and_a_pod_ip_finds_its_node() {
    let c = cluster("dg1", 3, 1);
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 0, "{}", d.doc);
    assert_eq!(d.doc["node"], "node-1");
    assert_eq!(d.doc["problems"], serde_json::json!([]));
    assert_eq!(field_of_each(&d.doc["peers"], "node"), ["node-2", "node-3"]);
    assert!(
        d.text.contains("\nok: 2 peers healthy (node-2, node-3)\n"),
        "{}",
        d.text
    );

    let target = pod_ip(&c, "node-2", 0).to_string();
    let d = diagnose(&c, "node-1", &["--ip", &target]);
    assert_eq!(d.code, 0, "{}", d.text);
    assert!(
        d.text.contains(&format!("{target} belongs to node node-2")),
        "{}",
        d.text
    );
    assert!(
        d.text.contains("ok: 1 peers healthy (node-2)"),
        "{}",
        d.text
    );
    assert_eq!(field_of_each(&d.doc["peers"], "node"), ["node-2"]);

    // A pod of this node: its path is local, no peer is involved.
    let own = pod_ip(&c, "node-1", 0).to_string();
    let d = diagnose(&c, "node-1", &["--ip", &own]);
    assert_eq!(d.code, 0, "{}", d.text);
    assert!(
        d.text
            .contains(&format!("{own} is in this node's own pod subnet")),
        "{}",
        d.text
    );
    assert_eq!(d.doc["peers"], serde_json::json!([]));

    // A pod IP no Node's podCIDR holds.
    let d = diagnose(&c, "node-1", &["--ip", "10.244.250.7"]);
    assert_eq!(d.code, 1, "{}", d.text);
    assert_eq!(d.codes(""), ["rejected"], "{}", d.doc);
    assert!(
        d.detail("", "rejected")
            .contains("no Node's podCIDR contains 10.244.250.7")
    );
    assert!(d.fix("", "rejected").contains("the pod may be gone"));
    assert_eq!(d.doc["peers"], serde_json::json!([]));

    let d = diagnose(&c, "node-3", &["--cluster"]);
    assert_eq!(d.code, 0, "{}", d.doc);
    assert_eq!(
        field_of_each(&d.doc["peers"], "node"),
        ["node-1", "node-2", "node-3"]
    );

    // Could not diagnose: exit 2 with the reason, nothing on stdout.
    let could_not = |wrapper: &[&str], args: &[&str], reason: &str| {
        for json in [&["--json"][..], &[]] {
            let all: Vec<&str> = json.iter().chain(args).copied().collect();
            let (code, out, err) = c.diagnose_under(wrapper, "node-1", &all).unwrap();
            assert_eq!(code, 2, "{all:?}: {out}{err}");
            assert_eq!(out, "", "{all:?}");
            assert!(err.contains("could not diagnose"), "{all:?}: {err}");
            assert!(err.contains(reason), "{all:?}: want {reason:?} in {err}");
        }
    };
    could_not(
        &[],
        &["--peer", "no-such-node"],
        "\"no-such-node\" is not in the API",
    );
    could_not(
        &["env", "NODE_NAME=ghost"],
        &[],
        "Node \"ghost\" is not in the API",
    );
    could_not(
        &[],
        &["--kube-api-url=https://127.0.0.1:1"],
        "Kubernetes API",
    );
    // Not root: the kernel checks need it; --cluster reads only the API.
    could_not(&NO_CAPABILITIES, &[], "needs root or CAP_NET_RAW");
    let (code, out, err) = c
        .diagnose_under(&NO_CAPABILITIES, "node-1", &["--cluster"])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("no problem found\n"), "{out}");
}

#[test]
fn each_missing_or_wrong_kernel_entry_a_stopped_daemon_and_a_missing_device_is_named() {
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
    ip_in(
        &c,
        "node-1",
        &[
            "neigh",
            "add",
            "10.244.250.0",
            "lladdr",
            "0e:00:00:00:00:fa",
            "nud",
            "permanent",
            "dev",
            VXLAN_DEVICE,
        ],
    );
    let gone_underlay = c.lab.switch.address(250).to_string();
    let fdb = ns
        .exec(
            "bridge",
            &[
                "fdb",
                "append",
                "0e:00:00:00:00:fa",
                "dev",
                VXLAN_DEVICE,
                "dst",
                &gone_underlay,
            ],
        )
        .unwrap();
    assert!(fdb.status.success());

    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(
        d.codes("node-2"),
        ["missing-route", "missing-fdb"],
        "{}",
        d.doc
    );
    assert_eq!(
        d.detail("node-2", "missing-route"),
        format!(
            "no route {} via {} on {VXLAN_DEVICE}",
            two.subnet,
            two.subnet.network()
        )
    );
    assert_eq!(
        d.detail("node-2", "missing-fdb"),
        format!(
            "no FDB entry {} dst {} on {VXLAN_DEVICE}",
            two.vtep_mac, two.underlay
        )
    );
    assert_eq!(d.codes("node-3"), ["wrong-mac"], "{}", d.doc);
    assert_eq!(
        d.detail("node-3", "wrong-mac"),
        format!(
            "neighbour {gw3} on {VXLAN_DEVICE} has MAC 0e:00:00:00:00:99 but the Node \
             advertises {}",
            three.vtep_mac
        )
    );
    for (who, code) in [
        ("node-2", "missing-route"),
        ("node-2", "missing-fdb"),
        ("node-3", "wrong-mac"),
    ] {
        assert!(
            d.fix(who, code).starts_with("flanneld repairs this"),
            "{}",
            d.text
        );
    }
    assert_eq!(
        d.codes(""),
        [
            "stale-entry",
            "stale-entry",
            "stale-entry",
            "daemon-not-running"
        ],
        "{}",
        d.doc
    );
    assert_eq!(
        d.details("", "stale-entry"),
        [
            format!(
                "route 10.244.250.0/24 via 10.244.250.0 on {VXLAN_DEVICE}: no Node has this subnet"
            ),
            format!(
                "neighbour 10.244.250.0 lladdr 0e:00:00:00:00:fa on {VXLAN_DEVICE}: no Node has \
                 this gateway"
            ),
            format!(
                "FDB entry 0e:00:00:00:00:fa dst {gone_underlay} on {VXLAN_DEVICE}: no Node has \
                 this VTEP"
            ),
        ]
    );
    assert!(d.fix("", "stale-entry").contains("flanneld removes it"));
    assert!(
        d.detail("", "daemon-not-running")
            .contains("does not answer on")
    );
    assert!(d.fix("", "daemon-not-running").contains("kube-flannel pod"));
    assert!(d.text.contains("daemon: not running"), "{}", d.text);

    ip_in(&c, "node-1", &["neigh", "del", &gw3, "dev", VXLAN_DEVICE]);
    let d = diagnose(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(d.codes("node-3"), ["missing-neighbour"], "{}", d.doc);
    assert_eq!(
        d.detail("node-3", "missing-neighbour"),
        format!(
            "no permanent neighbour {gw3} lladdr {} on {VXLAN_DEVICE}",
            three.vtep_mac
        )
    );
    assert!(
        d.fix("node-3", "missing-neighbour")
            .starts_with("flanneld repairs this")
    );
    assert_eq!(
        field_of_each(&d.doc["peers"], "node"),
        ["node-3"],
        "--peer: one peer"
    );

    // The VXLAN device down, then gone.
    ip_in(&c, "node-1", &["link", "set", VXLAN_DEVICE, "down"]);
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(
        d.codes(""),
        ["no-device", "daemon-not-running"],
        "{}",
        d.doc
    );
    assert_eq!(
        d.detail("", "no-device"),
        format!("{VXLAN_DEVICE} exists but is down")
    );
    assert!(d.fix("", "no-device").contains("brings it up"));
    // Nothing of the peers' path was checked: they are not called healthy.
    assert!(!d.text.contains("healthy"), "{}", d.text);
    assert!(
        d.text.contains(&format!(
            "not checked: 2 peers without problems in the API (node-2, node-3); their entries \
             and tunnels from here were not checked: {VXLAN_DEVICE} is not up"
        )),
        "{}",
        d.text
    );
    assert!(
        d.text.starts_with("node node-1: no VXLAN device up;"),
        "{}",
        d.text
    );
    ip_in(&c, "node-1", &["link", "del", VXLAN_DEVICE]);
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(
        d.codes(""),
        ["no-device", "daemon-not-running"],
        "{}",
        d.doc
    );
    assert!(
        d.detail("", "no-device")
            .starts_with(&format!("{VXLAN_DEVICE} does not exist")),
        "{}",
        d.doc
    );
    assert!(d.fix("", "no-device").starts_with("start flanneld"));

    // The daemon repairs everything; diagnose agrees.
    c.start_daemon("node-1").unwrap();
    c.wait_ready("node-1").unwrap();
    c.wait_converged(Duration::from_secs(10)).unwrap();
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 0, "{}", d.doc);
    assert!(d.text.contains("daemon: running, ready"), "{}", d.text);
}

#[test]
fn a_clobbered_node_names_the_field_manager_and_conflicting_or_odd_nodes_are_named() {
    let mut c = cluster("dg3", 3, 0);
    c.stop_daemon("node-3").unwrap();
    // The incident, by a controller named "rancher".
    c.lab.server.stale_write_by("node-3", "rancher");
    // Newcomers (younger than node-2, so node-2 keeps what they contest): one claiming
    // node-2's subnet, one its VTEP MAC, one a podCIDR outside the Network, and one whose
    // public IP is none of its addresses.
    std::thread::sleep(Duration::from_millis(1100));
    let two = c.peer_facts("node-2").unwrap();
    let newcomer = |name: &str, octet: u8, cidr: &str, mac: &str, public: Option<&str>| {
        let addr = c.lab.switch.address(octet);
        let public = public.map_or(addr.to_string(), str::to_string);
        c.lab
            .create_node(name, cidr, addr, peer_annotations(mac, &public))
            .unwrap();
    };
    let two_mac = two.vtep_mac.to_string();
    newcomer(
        "x-conflict",
        201,
        &two.subnet.to_string(),
        "0e:00:00:00:00:e1",
        None,
    );
    newcomer("x-macdup", 202, "10.244.202.0/24", &two_mac, None);
    newcomer("x-outside", 203, "10.99.0.0/24", "0e:00:00:00:00:e3", None);
    let foreign = c.lab.switch.address(254).to_string();
    newcomer(
        "x-foreign",
        204,
        "10.244.204.0/24",
        "0e:00:00:00:00:e4",
        Some(&foreign),
    );
    // node-1's daemon programs x-foreign (it is a valid peer); wait for that so the
    // entries below are complete.
    let x_foreign = PeerFacts {
        name: "x-foreign".into(),
        subnet: "10.244.204.0/24".parse().unwrap(),
        vtep_mac: "0e:00:00:00:00:e4".parse().unwrap(),
        underlay: foreign.parse().unwrap(),
    };
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        c.datapath("node-1")
            .ok()?
            .has_peer(&x_foreign)
            .then_some(())
    })
    .expect("node-1 programs x-foreign");

    let rejected_fix = "fix the Node's podCIDR or annotations";
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(d.codes("node-3"), ["no-annotations"], "{}", d.doc);
    let detail = d.detail("node-3", "no-annotations");
    assert!(detail.contains("field manager \"rancher\""), "{detail}");
    assert!(
        d.fix("node-3", "no-annotations")
            .contains("kube-flannel pod on node-3")
    );
    assert_eq!(d.codes("x-conflict"), ["rejected"], "{}", d.doc);
    assert!(d.detail("x-conflict", "rejected").contains("node-2"));
    assert!(d.fix("x-conflict", "rejected").starts_with(rejected_fix));
    assert_eq!(d.codes("x-foreign"), ["public-ip-not-owned"], "{}", d.doc);
    assert_eq!(d.codes("node-2"), Vec::<String>::new(), "{}", d.doc);
    // node-1's daemon keeps node-3's entries (it only lost its annotations): not stale.
    assert_eq!(d.codes(""), Vec::<String>::new(), "{}", d.doc);

    let d = diagnose(&c, "node-3", &[]);
    assert_eq!(d.code, 1);
    assert_eq!(
        d.codes(""),
        ["annotations-clobbered", "daemon-not-running"],
        "{}",
        d.doc
    );
    let detail = d.detail("", "annotations-clobbered");
    assert!(
        detail.contains("removed by field manager \"rancher\" (Update)"),
        "{detail}"
    );
    assert!(
        d.fix("", "annotations-clobbered")
            .contains("stop the writer named here")
    );

    // --cluster: the API's view alone, every Node named.
    let d = diagnose(&c, "node-2", &["--cluster"]);
    assert_eq!(d.code, 1, "{}", d.text);
    assert_eq!(d.doc["node"], "");
    for healthy in ["node-1", "node-2"] {
        assert_eq!(d.codes(healthy), Vec::<String>::new(), "{}", d.doc);
    }
    assert_eq!(d.codes("node-3"), ["no-annotations"], "{}", d.doc);
    assert!(
        d.detail("node-3", "no-annotations")
            .starts_with("no flannel annotations although it has a podCIDR"),
        "{}",
        d.doc
    );
    for (name, reason) in [
        (
            "x-conflict",
            "overlaps the subnet of established peer \"node-2\"".to_string(),
        ),
        (
            "x-macdup",
            format!("VtepMAC {two_mac} is already used by established peer \"node-2\""),
        ),
        (
            "x-outside",
            "subnet 10.99.0.0/24 is outside the network 10.244.0.0/16".to_string(),
        ),
    ] {
        assert_eq!(d.codes(name), ["rejected"], "{}", d.doc);
        let detail = d.detail(name, "rejected");
        assert!(
            detail.starts_with("flanneld does not program it: "),
            "{detail}"
        );
        assert!(
            detail.contains(&reason),
            "{name}: want {reason:?} in {detail}"
        );
        assert!(d.fix(name, "rejected").starts_with(rejected_fix));
    }
    assert_eq!(d.codes("x-foreign"), ["public-ip-not-owned"], "{}", d.doc);
    let addr = c.lab.switch.address(204);
    assert!(
        d.detail("x-foreign", "public-ip-not-owned")
            .starts_with(&format!(
                "public IP {foreign} is none of the Node's addresses ({addr})"
            )),
        "{}",
        d.doc
    );
    assert!(
        d.fix("x-foreign", "public-ip-not-owned")
            .contains("--iface")
    );
    assert!(d.text.contains("5 problem(s) found"), "{}", d.text);
}

#[test]
fn probes_tell_udp_dropped_one_way_and_an_mtu_black_hole_apart() {
    let mut c = cluster("dg4", 3, 0);
    let d = diagnose(&c, "node-1", &[]);
    assert_eq!(d.code, 0, "{}", d.doc);

    // UDP 8472 dropped on node-2.
    let nft = |node: &str, rules: &str| nft(&c, node, rules);
    nft("node-2", DROP_VXLAN);
    let two = c.peer_facts("node-2").unwrap();
    let d = diagnose(&c, "node-1", &["--peer", "node-2"]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(d.codes("node-2"), ["tunnel-unreachable"], "{}", d.doc);
    assert!(
        d.detail("node-2", "tunnel-unreachable")
            .starts_with(&format!(
                "no answer through the tunnel while {} answers on the underlay",
                two.underlay
            )),
        "{}",
        d.doc
    );
    assert!(d.fix("node-2", "tunnel-unreachable").contains("UDP port"));
    nft("node-2", "delete table inet frs_drop");

    // node-3 without its daemon loses its entries for node-1: one-way.
    make_one_way(&mut c, "node-3", "node-1");
    let d = diagnose(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(d.codes("node-3"), ["tunnel-unreachable"], "{}", d.doc);
    assert!(
        d.detail("node-3", "tunnel-unreachable")
            .starts_with("one-way"),
        "{}",
        d.doc
    );
    assert!(
        d.fix("node-3", "tunnel-unreachable")
            .starts_with("check flanneld on that node")
    );
    // The peer's daemon stopped with its entries in place is fine.
    c.start_daemon("node-3").unwrap();
    c.wait_ready("node-3").unwrap();
    c.wait_converged(Duration::from_secs(10)).unwrap();
    c.stop_daemon("node-3").unwrap();
    let d = diagnose(&c, "node-1", &["--peer", "node-3"]);
    assert_eq!(d.code, 0, "{}", d.doc);

    // A narrower underlay on node-2: small packets pass, full-size ones are lost.
    ip_in(&c, "node-2", &["link", "set", "eth0", "mtu", "1400"]);
    let d = diagnose(&c, "node-1", &["--peer", "node-2"]);
    assert_eq!(d.code, 1, "{}", d.doc);
    assert_eq!(d.codes("node-2"), ["mtu-blackhole"], "{}", d.doc);
    assert!(
        d.detail("node-2", "mtu-blackhole")
            .contains("-byte ones (the device MTU) with DF set"),
        "{}",
        d.doc
    );
    assert!(d.fix("node-2", "mtu-blackhole").contains("Backend.MTU"));
}
