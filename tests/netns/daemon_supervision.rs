//! Supervision (the real binary, a test build's fault knobs): a task that panics or ends takes
//! the daemon down with a non-zero exit and one line naming it, leaving the datapath in
//! place; a wedged reconcile pass turns `/healthz` unhealthy within its bound.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use frs_testsupport::lab::{Flanneld, Lab};
use frs_testsupport::topology::Host;

use crate::daemon_control::{lab_with_two_nodes, start_n1_ready};

const ROUTE_TO_N2: &str = "via 10.244.2.0 dev flannel.1";

fn fault_file(lab: &Lab) -> PathBuf {
    lab.dir.path().join("faults")
}

fn start_with_faults(lab: &Lab, host: &Host, envs: &[(&str, &str)]) -> Flanneld {
    let faults = fault_file(lab);
    let faults = faults.to_str().expect("utf-8 temp path");
    let mut all = vec![("FLANNELD_TEST_FAULT_FILE", faults)];
    all.extend_from_slice(envs);
    start_n1_ready(lab, host, &all)
}

/// Route, neighbour and device of peer n2, as `ip` shows them.
fn datapath_of_n2(host: &Host) -> (String, String, String) {
    (
        host.ns
            .ip(&["route", "show", "10.244.2.0/24"])
            .unwrap_or_default(),
        host.ns
            .ip(&["neigh", "show", "dev", "flannel.1"])
            .unwrap_or_default(),
        host.ns
            .ip(&["-d", "link", "show", "flannel.1"])
            .unwrap_or_default(),
    )
}

/// Injects `fault`, waits for the exit, checks code, log line and datapath.
fn a_fault_ends_the_daemon(tag: &str, fault: &str, line: &str) {
    let (lab, host) = lab_with_two_nodes(tag);
    let mut d = start_with_faults(&lab, &host, &[]);
    let before = datapath_of_n2(&host);
    assert!(before.0.contains(ROUTE_TO_N2), "{before:?}");
    assert!(before.1.contains("0e:00:00:00:00:02"), "{before:?}");

    std::fs::write(fault_file(&lab), format!("{fault}\n")).unwrap();
    let status = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("daemon still running after {fault}:\n{}", d.log()));
    assert!(!status.success(), "exit status {status:?}:\n{}", d.log());
    let log = d.log();
    let naming: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
    assert!(
        !naming.is_empty(),
        "no line naming the task ({line}):\n{log}"
    );
    println!("exit {status:?}; {}", naming.last().unwrap_or(&""));

    // Nothing flushed: the datapath is as it was. The status socket went with the daemon.
    assert_eq!(datapath_of_n2(&host), before, "datapath changed on exit");
    assert!(
        !d.status_socket().exists(),
        "status socket left after the daemon ended"
    );
}

#[test]
fn a_panicking_reconciler_ends_the_daemon_and_the_datapath_stays() {
    a_fault_ends_the_daemon(
        "sv1",
        "reconciler:panic",
        "flanneld: task reconciler panicked",
    );
}

#[test]
fn an_ending_node_watcher_ends_the_daemon_and_the_datapath_stays() {
    a_fault_ends_the_daemon(
        "sv2",
        "node-watcher:end",
        "flanneld: task node-watcher ended unexpectedly",
    );
}

#[test]
fn a_wedged_pass_turns_healthz_unhealthy_within_its_bound() {
    let bound = Duration::from_secs(2);
    let (lab, host) = lab_with_two_nodes("sv3");
    let bound_ms = bound.as_millis().to_string();
    let mut d = start_with_faults(&lab, &host, &[("FLANNELD_TEST_PASS_BOUND_MS", &bound_ms)]);
    assert_eq!(d.health("/healthz").map(|r| r.0), Some(200));

    std::fs::write(fault_file(&lab), "reconcile:wedge\n").unwrap();
    // Idle is not stuck: with nothing to do, liveness stays good past the bound.
    std::thread::sleep(bound + Duration::from_secs(1));
    assert_eq!(
        d.health("/healthz").map(|r| r.0),
        Some(200),
        "idle daemon unhealthy:\n{}",
        d.log()
    );

    // A new peer asks for a pass, which wedges.
    lab.create_numbered_peer(3).unwrap();
    let asked = Instant::now();
    let limit = bound + Duration::from_secs(10);
    let body = loop {
        match d.health("/healthz") {
            Some((503, body)) => break body,
            _ if asked.elapsed() > limit => {
                panic!("/healthz still healthy after {limit:?}:\n{}", d.log())
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    println!(
        "/healthz 503 after {:?} (bound {bound:?}): {body}",
        asked.elapsed()
    );
    assert!(asked.elapsed() >= bound, "unhealthy before the bound");
    assert!(body.contains("reconcile pass"), "{body}");
    assert!(d.is_running(), "a wedged pass is for the kubelet to act on");
    assert!(
        !host
            .ns
            .ip(&["route", "show", "10.244.3.0/24"])
            .unwrap_or_default()
            .contains("flannel.1"),
        "the wedged pass programmed n3"
    );
}
