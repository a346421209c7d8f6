//! flanneld's control plane against the test API server: the real binary in a node namespace,
//! the flannel RBAC token, assertions from the server's request log and the kernel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use frs_testsupport::kube_testserver::{Clobber, Fault, LogEntry, LogFilter, heal_after_clobber};
use frs_testsupport::lab::{Flanneld, Lab, LabOptions, peer_annotations};
use frs_testsupport::topology::Host;

use crate::harness::*;

pub const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
/// The test API server (a workspace member of its own, see `frs_testsupport::bins`).
pub fn testserver() -> std::path::PathBuf {
    frs_testsupport::bins::workspace_bin("kube-testserver")
}
const P: &str = "flannel.alpha.coreos.com/";

pub fn lab(tag: &str) -> Lab {
    lab_with(tag, LabOptions::default())
}

/// A lab on an underlay of its own (`next_underlay`) with the other options from `opts`.
pub fn lab_with(tag: &str, opts: LabOptions) -> Lab {
    // Make sure a failure to create namespaces reads as such (and stale ones are cleaned).
    drop(netns("probe"));
    Lab::new(
        LabOptions {
            tag: tag.into(),
            underlay: frs_testsupport::topology::next_underlay(),
            ..opts
        },
        testserver(),
    )
    .expect("lab")
}

/// One node `n1` (10.244.1.0/24 at .1, with a foreign annotation) and one peer `n2` whose
/// annotations are already published.
pub fn lab_with_two_nodes(tag: &str) -> (Lab, Host) {
    let lab = lab(tag);
    let host = lab.add_host(&format!("{tag}-n1"), 1).unwrap();
    let mut own = BTreeMap::new();
    own.insert("other.example.com/keep".to_string(), "yes".to_string());
    lab.create_node("n1", "10.244.1.0/24", host.address, own)
        .unwrap();
    lab.create_numbered_peer(2).unwrap();
    (lab, host)
}

fn flannel_patches(lab: &Lab, node: &str) -> Vec<LogEntry> {
    lab.server
        .request_log(&LogFilter {
            method: Some("PATCH".into()),
            identity: Some("flannel".into()),
            name: Some(node.into()),
            ..LogFilter::default()
        })
        .unwrap()
}

fn annotation_patches(entries: &[LogEntry]) -> Vec<&LogEntry> {
    entries
        .iter()
        .filter(|e| {
            e.body_json()
                .is_some_and(|b| b["metadata"]["annotations"].is_object())
        })
        .collect()
}

fn ours(lab: &Lab, node: &str) -> BTreeMap<String, String> {
    lab.node_annotations(node, P).unwrap()
}

/// `ip` listings of flannel.1, its routes and its neighbours.
fn datapath_listing(host: &Host) -> (String, String, String) {
    let ip = |args: &[&str]| host.ns.ip(args).unwrap();
    (
        ip(&["-d", "link", "show", "flannel.1"]),
        ip(&["route", "show", "dev", "flannel.1"]),
        ip(&["neigh", "show", "dev", "flannel.1"]),
    )
}

fn start(lab: &Lab, host: &Host) -> Flanneld {
    let mut d = lab.start_flanneld(FLANNELD, host, "n1", &[]).unwrap();
    d.wait_ready(Duration::from_secs(30)).unwrap();
    d
}

#[test]
fn publishes_annotations_once_with_a_precondition_and_keeps_others() {
    let (lab, host) = lab_with_two_nodes("dc1");
    let mut d = start(&lab, &host);

    let patches = flannel_patches(&lab, "n1");
    let annotation = annotation_patches(&patches);
    assert_eq!(
        annotation.len(),
        1,
        "annotations written once: {patches:#?}\n{}",
        d.log()
    );
    let p = annotation[0];
    let (path, query) = p.path.split_once('?').unwrap_or((&p.path, ""));
    assert_eq!(
        path, "/api/v1/nodes/n1/status",
        "written to the status subresource"
    );
    assert!(
        query.split('&').any(|q| q == "fieldManager=flanneld"),
        "written as field manager flanneld: {query}"
    );
    assert_eq!(p.code, 200);
    assert_eq!(
        p.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body = p.body_json().unwrap();
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "patch carries a resourceVersion precondition: {body}"
    );
    let keys: Vec<_> = body["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with(P)),
        "only our keys: {keys:?}"
    );

    let node = lab.get_node("n1").unwrap();
    let ann = node.metadata.annotations.unwrap();
    assert_eq!(ann["other.example.com/keep"], "yes");
    assert_eq!(ann[&format!("{P}kube-subnet-manager")], "true");
    assert_eq!(ann[&format!("{P}backend-type")], "vxlan");
    assert_eq!(ann[&format!("{P}public-ip")], host.address.to_string());
    let link = ip_json(&host.ns, &["link", "show", "flannel.1"]);
    let mac = link[0]["address"].as_str().unwrap();
    assert_eq!(
        ann[&format!("{P}backend-data")],
        format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        "byte-exact backend-data with the device's MAC"
    );
    // NetworkUnavailable=False, as upstream.
    let conditions = node.status.unwrap().conditions.unwrap();
    assert!(conditions.iter().any(|c| c.type_ == "NetworkUnavailable"
        && c.status == "False"
        && c.reason.as_deref() == Some("FlannelIsUp")));

    // subnet.env, exactly upstream's content.
    let env = std::fs::read_to_string(&d.subnet_file).unwrap();
    assert_eq!(
        env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    assert!(d.is_running());

    // Upstream's ClusterRole is enough: nothing the daemon asked for was forbidden.
    let all = lab
        .server
        .request_log(&LogFilter {
            identity: Some("flannel".into()),
            ..LogFilter::default()
        })
        .unwrap();
    let forbidden: Vec<_> = all
        .iter()
        .filter(|e| e.code == 403 || e.code == 401)
        .collect();
    assert!(
        forbidden.is_empty(),
        "requests beyond upstream's RBAC: {forbidden:#?}"
    );
}

#[test]
fn an_injected_conflict_is_retried() {
    let (lab, host) = lab_with_two_nodes("dc2");
    lab.server
        .inject_fault(&Fault::fail(409).verb("patch").name("n1").times(1))
        .unwrap();
    let _d = start(&lab, &host);
    let patches = flannel_patches(&lab, "n1");
    let codes: Vec<u16> = annotation_patches(&patches)
        .iter()
        .map(|e| e.code)
        .collect();
    assert_eq!(
        codes,
        vec![409, 200],
        "one conflict, then success: {patches:#?}"
    );
    assert_eq!(ours(&lab, "n1").len(), 4);
}

#[test]
fn a_stale_overwrite_is_healed_and_other_annotations_survive() {
    let (lab, host) = lab_with_two_nodes("dc3");
    let d = start(&lab, &host);
    let want = ours(&lab, "n1");
    assert_eq!(want.len(), 4);

    // The incident: an unconditional update with a copy taken before flannel wrote its keys.
    let clobbered = Instant::now();
    lab.server
        .clobber("n1", &Clobber::DropAnnotationPrefix(P.into()))
        .unwrap();
    let heal = wait_until("annotations re-asserted", Duration::from_secs(5), || {
        ours(&lab, "n1") == want
    });
    // The precise figure comes from the server's own clock: clobber write → healing patch.
    let log = lab.server.request_log(&LogFilter::default()).unwrap();
    let (clobber_at, healing_patch) = heal_after_clobber(&log, "n1").unwrap();
    let healed_at = healing_patch.time_ms;
    println!(
        "heal time after clobber: {} ms by the API server's log ({:.0} ms observed by the test's polling)",
        healed_at - clobber_at,
        clobbered.elapsed().as_secs_f64() * 1000.0
    );
    assert!(heal < Duration::from_secs(2), "healed in {heal:?}");
    assert!(healed_at - clobber_at < 2000);
    let ann = lab.get_node("n1").unwrap().metadata.annotations.unwrap();
    assert_eq!(
        ann["other.example.com/keep"], "yes",
        "foreign annotation survived"
    );
    let patches = flannel_patches(&lab, "n1");
    let annotation = annotation_patches(&patches);
    assert_eq!(annotation.len(), 2, "publish + one heal: {patches:#?}");
    assert!(annotation[1].body_json().unwrap()["metadata"]["resourceVersion"].is_string());
    assert_eq!(d.status().unwrap()["annotations"]["heals"], 1);
}

#[test]
fn a_clobber_is_attributed_to_its_field_manager_in_the_log_status_and_explain() {
    let (lab, host) = lab_with_two_nodes("dc8");
    let d = start(&lab, &host);
    let want = ours(&lab, "n1");

    // Rancher writes back its copy without flannel's keys, with a key of its own.
    lab.replace_node_as("n1", "rancher", |node| {
        let ann = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.retain(|k, _| !k.starts_with(P));
        ann.insert("cattle.io/status".into(), "synced".into());
    })
    .unwrap();
    wait_until("annotations re-asserted", Duration::from_secs(5), || {
        ours(&lab, "n1") == want
    });
    wait_until("the heal logged", Duration::from_secs(5), || {
        d.log().contains("restored in")
    });
    let log = d.log();
    let line = log.lines().find(|l| l.contains("restored in")).unwrap();
    println!("heal log line: {line}");
    assert!(
        line.contains("flannel annotations removed by field manager \"rancher\" (Update) at "),
        "{line}"
    );

    let heal = &d.status().unwrap()["annotations"]["last_heal"];
    assert_eq!(heal["by"]["manager"], "rancher", "{heal:#}");
    assert_eq!(heal["by"]["operation"], "Update");
    assert_eq!(heal["by"]["change"], "removed");
    assert_eq!(
        heal["by"]["keys"].as_array().map(Vec::len),
        Some(want.len())
    );
    assert!(heal["summary"].as_str().unwrap().contains("\"rancher\""));

    let out = host
        .ns
        .exec(FLANNELD, &["explain", &d.subnet_file_flag()])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("last heal: flannel annotations removed by field manager \"rancher\""),
        "{text}"
    );

    // Our heal is recorded under flanneld's own name, owning our keys again.
    let node = lab.get_node("n1").unwrap();
    let entries = node.metadata.managed_fields.unwrap_or_default();
    let flanneld = entries
        .iter()
        .find(|e| {
            e.manager.as_deref() == Some("flanneld") && e.subresource.as_deref() == Some("status")
        })
        .unwrap_or_else(|| panic!("no flanneld entry: {entries:#?}"));
    let owned = &flanneld.fields_v1.as_ref().unwrap().0["f:metadata"]["f:annotations"];
    for key in want.keys() {
        assert!(
            owned.get(format!("f:{key}")).is_some(),
            "{key} not ours: {owned}"
        );
    }
}

#[test]
fn an_api_outage_does_not_stop_the_daemon() {
    let (lab, host) = lab_with_two_nodes("dc4");
    let mut d = start(&lab, &host);
    lab.server.outage(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(11));
    assert!(
        d.is_running(),
        "daemon exited during the outage:\n{}",
        d.log()
    );
    // After the outage, a new peer is learned and programmed.
    lab.create_numbered_peer(3).unwrap();
    wait_until(
        "route to n3 after the outage",
        Duration::from_secs(30),
        || {
            host.ns
                .ip(&["route", "show", "10.244.3.0/24"])
                .is_ok_and(|o| o.contains("via 10.244.3.0 dev flannel.1"))
        },
    );
    assert_eq!(d.health("/readyz").map(|r| r.0), Some(200));
}

#[test]
fn sigterm_exits_fast_and_a_restart_writes_nothing() {
    let (lab, host) = lab_with_two_nodes("dc5");
    let mut d = start(&lab, &host);
    let before = datapath_listing(&host);
    let took = d.stop().expect("daemon exited");
    println!("SIGTERM → exit: {:.1} ms", took.as_secs_f64() * 1000.0);
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    let after_stop = datapath_listing(&host);
    assert_eq!(
        before, after_stop,
        "the datapath stays in place after SIGTERM"
    );

    let seq = lab.server.reset_request_log().unwrap();
    let _ = seq;
    let _d2 = start(&lab, &host);
    std::thread::sleep(Duration::from_millis(300));
    let writes: Vec<LogEntry> = lab
        .server
        .request_log(&LogFilter {
            identity: Some("flannel".into()),
            ..LogFilter::default()
        })
        .unwrap()
        .into_iter()
        .filter(|e| !matches!(e.method.as_str(), "GET" | "HEAD"))
        .collect();
    assert!(
        writes.is_empty(),
        "a restart with everything right writes nothing: {writes:#?}"
    );
    let after_restart = datapath_listing(&host);
    assert_eq!(
        before, after_restart,
        "the restart adopted the device and entries as they were"
    );
}

#[test]
fn bad_net_conf_is_one_clear_error_and_nothing_is_written() {
    let lab = lab("dc6");
    let host = lab.add_host("dc6-n1", 1).unwrap();
    std::fs::write(
        &lab.net_conf_path,
        r#"{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let mut d = lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap();
    wait_until("flanneld exits", Duration::from_secs(10), || {
        !d.is_running()
    });
    let log = d.log();
    assert!(log.contains("Network"), "error names the field: {log}");
    assert!(!d.subnet_file.exists(), "nothing written");
    assert!(
        host.ns.ip(&["link", "show", "flannel.1"]).is_err(),
        "no device created"
    );
}

#[test]
fn a_peer_whose_annotations_vanish_keeps_its_entries_until_it_is_deleted() {
    let (lab, host) = lab_with_two_nodes("dc7");
    let _d = start(&lab, &host);
    let route = || {
        host.ns
            .ip(&["route", "show", "10.244.2.0/24"])
            .is_ok_and(|o| o.contains("via 10.244.2.0 dev flannel.1"))
    };
    wait_until("route to n2", Duration::from_secs(10), route);
    // The incident seen from a peer: n2's annotations vanish (a stale overwrite) …
    let gone: serde_json::Map<String, serde_json::Value> = peer_annotations("x", "y")
        .into_keys()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    lab.patch_annotations("n2", serde_json::Value::Object(gone))
        .unwrap();
    assert!(ours(&lab, "n2").is_empty());
    // … but n2 still exists: its pods must stay reachable while its daemon re-asserts them.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        route(),
        "entries for a peer that only lost its annotations were removed"
    );
    let fdb = bridge_json(&host.ns, &["fdb", "show", "dev", "flannel.1"]);
    assert!(fdb.to_string().contains("0e:00:00:00:00:02"), "{fdb}");
    // Deleting the node does remove them.
    lab.delete_node("n2").unwrap();
    wait_until("n2's route removed", Duration::from_secs(5), || !route());
}

/// Starts flanneld on `host` as node n1 with extra environment (test knobs) and waits until
/// it is ready.
pub(crate) fn start_n1_ready(lab: &Lab, host: &Host, envs: &[(&str, &str)]) -> Flanneld {
    let mut d = lab
        .start_flanneld_at(
            FLANNELD,
            host,
            "n1",
            &lab.default_subnet_file("n1"),
            &[],
            envs,
        )
        .unwrap();
    d.wait_ready(Duration::from_secs(30)).unwrap();
    d
}
