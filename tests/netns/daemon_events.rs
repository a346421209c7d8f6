//! Events on our Node: the real flanneld against the test API server, which enforces the
//! manifest's ClusterRole, plus the optional events role's rules when it is "applied" — both
//! read from deploy/, so a verb the daemon uses but the role lacks fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flannel_rs::flanneld::pure::events::Limits;
use frs_testsupport::kube_testserver::{LogEntry, LogFilter, TestServerOptions};
use frs_testsupport::lab::{Flanneld, Lab, LabOptions};
use frs_testsupport::topology::Host;
use serde_json::Value;

use crate::daemon_control::{lab_with, start_n1_ready};
use crate::deploy_e2e::manifest;
use crate::harness::wait_until;

const P: &str = "flannel.alpha.coreos.com/";

/// The flannel identity's rules for the test API server: the manifest's ClusterRole, with the
/// optional events role's rules added when `events_role`.
pub(crate) fn role_file(dir: &Path, events_role: bool) -> PathBuf {
    let load = |path| manifest::load(path).unwrap_or_else(|e| panic!("{e}"));
    let mut role = load(manifest::MANIFEST).cluster_roles[0].clone();
    if events_role {
        let extra = load(manifest::EVENTS_MANIFEST).cluster_roles[0].clone();
        role.rules
            .get_or_insert_with(Vec::new)
            .extend(extra.rules.unwrap_or_default());
    }
    let path = dir.join("flannel-clusterrole.json");
    std::fs::write(&path, serde_json::to_vec(&role).unwrap()).unwrap();
    path
}

/// Node `n1` (ours) and a peer `n2`; the events role applied or not.
fn lab_events(tag: &str, events_role: bool) -> (Lab, Host) {
    let dir = tempfile::tempdir().unwrap();
    let role = role_file(dir.path(), events_role);
    let lab = lab_with(
        tag,
        LabOptions {
            server: TestServerOptions {
                extra_args: vec!["--flannel-role".into(), role.display().to_string()],
                ..TestServerOptions::default()
            },
            ..LabOptions::default()
        },
    );
    let host = lab.add_host(&format!("{tag}-n1"), 1).unwrap();
    lab.create_node("n1", "10.244.1.0/24", host.address, BTreeMap::new())
        .unwrap();
    lab.create_numbered_peer(2).unwrap();
    (lab, host)
}

fn start(lab: &Lab, host: &Host) -> Flanneld {
    // The peers here are API objects only, so the tunnel prober would find them unreachable
    // and write Events of its own, which these counts are not about (daemon_probes tests
    // those): a round too long to end within a test keeps it quiet.
    start_n1_ready(lab, host, &[("FLANNELD_TEST_PROBE_BASE_MS", "3600000")])
}

fn ours(lab: &Lab) -> BTreeMap<String, String> {
    lab.node_annotations("n1", P).unwrap()
}

/// Rancher writes back its copy of n1 without flannel's keys (an unconditional update).
fn clobber_as_rancher(lab: &Lab, i: u32) {
    lab.replace_node_as("n1", "rancher", move |node| {
        let ann = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.retain(|k, _| !k.starts_with(P));
        ann.insert("cattle.io/status".into(), format!("synced-{i}"));
    })
    .unwrap();
}

/// The server's Events with `reason` regarding Node n1.
fn events_about_n1(lab: &Lab, reason: &str) -> Vec<Value> {
    let summary = lab.server.events().unwrap();
    summary["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["name"] == "n1")
        .cloned()
        .collect()
}

fn heals(d: &Flanneld) -> u64 {
    d.status().unwrap()["annotations"]["heals"]
        .as_u64()
        .unwrap()
}

fn metric(d: &Flanneld, name: &str) -> u64 {
    let (code, text) = d.health("/metrics").unwrap();
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn flannel_event_writes(lab: &Lab) -> Vec<LogEntry> {
    lab.server
        .request_log(&LogFilter {
            identity: Some("flannel".into()),
            resource: Some("events".into()),
            ..LogFilter::default()
        })
        .unwrap()
}

#[test]
fn a_clobber_by_a_named_manager_is_an_event_on_our_node_naming_it() {
    let (lab, host) = lab_events("ev1", true);
    let d = start(&lab, &host);
    let want = ours(&lab);

    clobber_as_rancher(&lab, 0);
    wait_until("the Event", Duration::from_secs(10), || {
        !events_about_n1(&lab, "AnnotationsRestored").is_empty()
    });
    assert_eq!(ours(&lab), want, "healed");
    let events = events_about_n1(&lab, "AnnotationsRestored");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    println!("Event: {e}");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["action"], "RestoreAnnotations");
    assert_eq!(e["namespace"], "default");
    assert_eq!(e["regarding"]["kind"], "Node");
    assert_eq!(
        e["regarding"]["uid"], "n1",
        "as the kubelet refers to Nodes"
    );
    assert_eq!(e["reportingController"], "flanneld");
    assert_eq!(e["count"], 1);
    let note = e["note"].as_str().unwrap();
    assert!(
        note.starts_with("flannel annotations removed by field manager \"rancher\" (Update) at "),
        "{note}"
    );
    assert!(note.contains("; restored in "), "{note}");
    assert_eq!(metric(&d, "flannel_events_written_total"), 1);

    // Through core/v1, as `kubectl describe node` searches for it.
    let listed = lab
        .kube(|c| async move {
            let api = kube::Api::<k8s_openapi::api::core::v1::Event>::all(c);
            let lp = kube::api::ListParams::default()
                .fields("involvedObject.kind=Node,involvedObject.name=n1,involvedObject.uid=n1");
            api.list(&lp).await
        })
        .unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("AnnotationsRestored")),
        "{:#?}",
        listed.items
    );
}

#[test]
fn a_clobber_storm_is_a_bounded_number_of_event_writes_whose_series_counts_every_heal() {
    let (lab, host) = lab_events("ev2", true);
    let d = start(&lab, &host);
    let want = ours(&lab);
    let before = lab.server.events().unwrap();
    let writes = |s: &Value| s["created"].as_u64().unwrap() + s["patched"].as_u64().unwrap();

    // 100 clobbers in 10 s.
    let storm = Instant::now();
    for i in 0..100u32 {
        let at = storm + Duration::from_millis(100 * u64::from(i));
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        clobber_as_rancher(&lab, i);
    }
    let storm_s = storm.elapsed().as_secs_f64();

    // Settled: our annotations back, and the Event's series caught up with every heal.
    let settle = Instant::now();
    let last = loop {
        let events = events_about_n1(&lab, "AnnotationsRestored");
        let healed = ours(&lab) == want;
        let done = healed && events.len() == 1 && events[0]["count"].as_u64() == Some(heals(&d));
        let last = Value::Array(events);
        if done {
            break last;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "not settled after 120 s: healed {healed}, {} heals, Events {last:#}\n{}",
            heals(&d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let window = storm.elapsed();
    let after = lab.server.events().unwrap();
    let heals = heals(&d);
    let series = last[0]["count"].as_u64().unwrap();
    let created = after["created"].as_u64().unwrap() - before["created"].as_u64().unwrap();
    let written = writes(&after) - writes(&before);
    let bound = Limits::DAEMON.max_writes_per_key(window);
    println!(
        "clobber storm: 100 clobbers in {storm_s:.1} s → {heals} heals → {written} Event writes \
         ({created} created), series count {series}; bound for one Event over {:.1} s: {bound}",
        window.as_secs_f64()
    );
    assert_eq!(created, 1, "one Event for one culprit: {last:#}");
    assert!(written <= bound, "{written} writes > {bound}");
    assert!(heals >= 2, "the storm was healed more than once");
    assert_eq!(series, heals);
    assert!(
        last[0]["note"]
            .as_str()
            .unwrap()
            .contains("field manager \"rancher\""),
        "{last:#}"
    );
    assert_eq!(
        metric(&d, "flannel_events_written_total"),
        written,
        "the daemon counts what the server accepted"
    );
    assert_eq!(d.status().unwrap()["events"]["written"], written);
    assert_eq!(
        metric(&d, "flannel_events_aggregated_total"),
        heals - 1,
        "every heal after the first was folded into the series"
    );
}

#[test]
fn without_the_events_role_one_warning_and_the_daemon_stays_ready_and_heals() {
    let (lab, host) = lab_events("ev3", false);
    let mut d = start(&lab, &host);
    let want = ours(&lab);
    let warning = "not permitted to publish Events";

    clobber_as_rancher(&lab, 0);
    wait_until("the heal and the warning", Duration::from_secs(10), || {
        ours(&lab) == want && d.log().contains(warning)
    });
    // A second clobber (well apart, so the heal is not paced): healed, nothing said again.
    clobber_as_rancher(&lab, 1);
    wait_until("the second heal", Duration::from_secs(10), || {
        heals(&d) == 2
    });
    wait_until(
        "the occurrence counted as dropped",
        Duration::from_secs(5),
        || metric(&d, "flannel_events_dropped_total{cause=\"forbidden\"}") == 2,
    );
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(warning)).collect();
    println!("the warning: {}", lines[0]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(
        lines[0].contains("kube-flannel-rs-events.yml"),
        "{}",
        lines[0]
    );

    let tried = flannel_event_writes(&lab);
    assert_eq!(tried.len(), 1, "one attempt, no retries: {tried:#?}");
    assert_eq!(tried[0].code, 403);
    assert_eq!(lab.server.events().unwrap()["events"], 0);
    assert_eq!(metric(&d, "flannel_events_written_total"), 0);
    assert_eq!(d.health("/readyz").map(|(c, _)| c), Some(200));
    assert!(d.is_running());
}

#[test]
fn a_rejected_peer_and_a_repaired_route_are_events_naming_them() {
    let (lab, host) = lab_events("ev4", true);
    let _d = start(&lab, &host);

    // n3 claims our public IP: rejected, nothing programmed for it.
    let ip = lab.switch.address(3);
    lab.create_node(
        "n3",
        "10.244.3.0/24",
        ip,
        frs_testsupport::lab::peer_annotations("0e:00:00:00:00:03", &host.address.to_string()),
    )
    .unwrap();
    wait_until("the PeerRejected Event", Duration::from_secs(10), || {
        !events_about_n1(&lab, "PeerRejected").is_empty()
    });
    let rejected = events_about_n1(&lab, "PeerRejected");
    println!("Event: {}", rejected[0]);
    let note = rejected[0]["note"].as_str().unwrap();
    assert!(note.starts_with("peer n3 rejected: "), "{note}");
    assert!(note.contains(&host.address.to_string()), "{note}");

    // Someone deletes n2's route: repaired, and the Event says what was missing.
    host.ns
        .ip(&["route", "del", "10.244.2.0/24", "dev", "flannel.1"])
        .unwrap();
    wait_until(
        "the DatapathRepaired Event",
        Duration::from_secs(10),
        || !events_about_n1(&lab, "DatapathRepaired").is_empty(),
    );
    let repaired = events_about_n1(&lab, "DatapathRepaired");
    println!("Event: {}", repaired[0]);
    let note = repaired[0]["note"].as_str().unwrap();
    assert!(
        note.starts_with("flannel.1: restored missing route 10.244.2.0/24 via 10.244.2.0"),
        "{note}"
    );
    assert!(
        host.ns
            .ip(&["route", "show", "10.244.2.0/24", "dev", "flannel.1"])
            .unwrap()
            .contains("10.244.2.0/24")
    );
}
