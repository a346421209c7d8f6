//! The daemon's tunnel probes on a 3-node cluster: each failure mode made for real (UDP 8472
//! dropped by nft in a peer's namespace, a peer lacking our entries, a narrower underlay on a
//! peer), seen in node-1's `/metrics` and `/status`; a peer whose daemon stopped with its
//! entries in place stays reachable. `/metrics` of a running daemon passes `promtool check
//! metrics`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use frs_testsupport::cluster::{Cluster, ClusterOptions, NodeSpec, VXLAN_DEVICE, poll};
use frs_testsupport::kube_testserver::TestServerOptions;
use frs_testsupport::lab::LabOptions;
use serde_json::Value;

use crate::daemon_events::role_file;
use crate::e2e_cluster::{binaries, ip_in};
use crate::harness::netns;

/// `n` nodes, no pods; `env` for every daemon.
fn probe_cluster(tag: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
    drop(netns("probe"));
    // The optional events role granted, so that reachability changes become Events.
    let dir = tempfile::tempdir().unwrap();
    let role = role_file(dir.path(), true);
    let mut opts = ClusterOptions::new(
        LabOptions {
            tag: tag.into(),
            underlay: frs_testsupport::topology::next_underlay(),
            server: TestServerOptions {
                extra_args: vec!["--flannel-role".into(), role.display().to_string()],
                ..TestServerOptions::default()
            },
            ..LabOptions::default()
        },
        binaries(),
    );
    opts.flanneld_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut c = Cluster::new(opts).expect("cluster");
    for _ in 0..n {
        c.add_node(NodeSpec::default()).expect("add node");
    }
    c.wait_converged(Duration::from_secs(20))
        .expect("converged");
    c
}

/// A series' value in `node`'s `/metrics` (health port).
fn metric(c: &Cluster, node: &str, series: &str) -> Option<f64> {
    let (code, body) = c.daemon_http(node, "/metrics").ok()?;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `peer`'s entry in `node`'s `/status` probes.
fn probe_of(c: &Cluster, node: &str, peer: &str) -> Option<Value> {
    let doc = c.daemon_status(node).ok()?;
    doc["probes"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == peer)
        .cloned()
}

/// Waits until node-1 sees `peer` in `state` (with `verdict`); its /status entry.
#[track_caller]
fn wait_state(c: &Cluster, peer: &str, state: &str, verdict: &str, timeout: Duration) -> Value {
    let found = poll(timeout, Duration::from_millis(100), || {
        probe_of(c, "node-1", peer).filter(|p| p["state"] == state && p["verdict"] == verdict)
    });
    match found {
        Some((p, _)) => p,
        None => panic!(
            "node-1 never saw {peer} {state}/{verdict}; /status probes: {}\nlog:\n{}",
            c.daemon_status("node-1")
                .map(|d| d["probes"].to_string())
                .unwrap_or_default(),
            daemon_log(c, "node-1")
        ),
    }
}

fn daemon_log(c: &Cluster, node: &str) -> String {
    c.node(node)
        .ok()
        .and_then(|n| n.flanneld.as_ref().map(|d| d.log()))
        .unwrap_or_default()
}

/// Stops `node`'s daemon and deletes its route to `peer`'s pod subnet: `node` still receives
/// `peer`'s tunnel packets but cannot answer through the tunnel (one-way).
pub(crate) fn make_one_way(c: &mut Cluster, node: &str, peer: &str) {
    c.stop_daemon(node).unwrap();
    let subnet = c.peer_facts(peer).unwrap().subnet.to_string();
    ip_in(c, node, &["route", "del", &subnet, "dev", VXLAN_DEVICE]);
}

/// `nft -f -` with `rules` in `node`'s namespace.
pub(crate) fn nft(c: &Cluster, node: &str, rules: &str) {
    let ns = &c.node(node).unwrap().host.ns;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft {rules}");
}

/// Drops VXLAN (UDP 8472) arriving at a node.
pub(crate) const DROP_VXLAN: &str = "table inet frs_drop {\n chain in {\n type filter hook input priority 0; udp dport 8472 drop\n }\n}\n";

/// Production pacing (no knobs): the time from dropping UDP 8472 on a peer to the
/// unreachable metric is printed, and the peer comes back once the rule is gone.
#[test]
fn udp_8472_dropped_on_a_peer_shows_in_the_unreachable_metric_and_status() {
    let c = probe_cluster("pr1", 3, &[]);
    let reachable = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        metric(&c, "node-1", "flannel_probe_peers_reachable").filter(|v| *v == 2.0)
    });
    assert!(
        reachable.is_some(),
        "node-1 never saw both peers reachable:\n{}",
        daemon_log(&c, "node-1")
    );
    let rtt = probe_of(&c, "node-1", "node-2").unwrap();
    assert!(rtt["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{rtt}");

    nft(&c, "node-2", DROP_VXLAN);
    let blocked = Instant::now();
    let series = "flannel_probe_peers_unreachable{reason=\"udp_dropped\"}";
    let seen = poll(Duration::from_secs(60), Duration::from_millis(50), || {
        metric(&c, "node-1", series).filter(|v| *v >= 1.0)
    });
    assert!(
        seen.is_some(),
        "no {series} on node-1:\n{}",
        daemon_log(&c, "node-1")
    );
    eprintln!(
        "FIGURE probes: UDP 8472 dropped on node-2 → node-1's {series} = 1 after {:.2} s \
         (default pacing: 2 s·ln(1+2) rounds, 3 failed rounds)",
        blocked.elapsed().as_secs_f64()
    );
    // The Event on node-1's Node names the peer and how it fails.
    let event = poll(Duration::from_secs(20), Duration::from_millis(50), || {
        let all = c.lab.server.events().ok()?;
        all["items"]
            .as_array()?
            .iter()
            .find(|e| {
                e["reason"] == "PeerUnreachable"
                    && e["regarding"]["name"] == "node-1"
                    && e["note"].as_str().is_some_and(|n| n.contains("node-2"))
            })
            .cloned()
    });
    let (event, _) = event.unwrap_or_else(|| {
        panic!(
            "no PeerUnreachable Event for node-2: {:?}",
            c.lab.server.events()
        )
    });
    assert!(
        event["note"].as_str().unwrap().contains("udp_dropped"),
        "{event}"
    );
    eprintln!(
        "FIGURE probes: UDP 8472 dropped on node-2 → node-1's PeerUnreachable Event after {:.2} s",
        blocked.elapsed().as_secs_f64()
    );
    let p = wait_state(
        &c,
        "node-2",
        "unreachable",
        "udp_dropped",
        Duration::from_secs(5),
    );
    assert!(p["detail"].as_str().unwrap().contains("UDP"), "{p}");
    assert!(p["consecutive_failures"].as_u64().unwrap() >= 3, "{p}");
    assert_eq!(
        probe_of(&c, "node-1", "node-3").unwrap()["state"],
        "reachable"
    );
    let log = daemon_log(&c, "node-1");
    assert!(
        log.contains("peer node-2 unreachable through the tunnel: no answer through the tunnel"),
        "{log}"
    );
    let status = c.daemon_status("node-1").unwrap();
    assert_eq!(status["probes"]["unreachable"], 1, "{status}");
    // diagnose shows the daemon's own view too.
    let (_, text, _) = c.diagnose("node-1", &["--peer", "node-3"]).unwrap();
    assert!(
        text.contains(
            "its tunnel probes: 1 reachable, 1 unreachable, 0 not yet known (node-2 udp_dropped)"
        ),
        "{text}"
    );

    nft(&c, "node-2", "delete table inet frs_drop");
    wait_state(
        &c,
        "node-2",
        "reachable",
        "reachable",
        Duration::from_secs(30),
    );
    assert_eq!(metric(&c, "node-1", series), Some(0.0));
    assert_eq!(
        metric(
            &c,
            "node-1",
            "flannel_probe_reachability_changes_total{to=\"reachable\"}"
        ),
        Some(1.0)
    );
    assert!(
        daemon_log(&c, "node-1").contains("peer node-2 reachable through the tunnel again"),
        "{}",
        daemon_log(&c, "node-1")
    );
    let back = poll(Duration::from_secs(20), Duration::from_millis(50), || {
        let all = c.lab.server.events().ok()?;
        all["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "PeerReachable" && e["regarding"]["name"] == "node-1")
            .then_some(())
    });
    assert!(
        back.is_some(),
        "no PeerReachable Event: {:?}",
        c.lab.server.events()
    );
}

/// Quick pacing (test knobs): a peer lacking our entries is one-way, a stopped daemon with
/// its entries in place is fine, a narrower underlay on a peer is an MTU black hole.
#[test]
fn one_way_a_stopped_daemon_and_an_mtu_black_hole_are_told_apart() {
    let knobs = [
        ("FLANNELD_TEST_PROBE_BASE_MS", "300"),
        ("FLANNELD_TEST_PROBE_WAIT_MS", "300"),
    ];
    let mut c = probe_cluster("pr2", 3, &knobs);
    let quick = Duration::from_secs(20);
    wait_state(&c, "node-3", "reachable", "reachable", quick);

    // node-3 without its daemon, and without its route to node-1: one-way.
    make_one_way(&mut c, "node-3", "node-1");
    let p = wait_state(&c, "node-3", "unreachable", "one_way", quick);
    assert!(p["detail"].as_str().unwrap().starts_with("one-way"), "{p}");
    assert_eq!(
        metric(
            &c,
            "node-1",
            "flannel_probe_peers_unreachable{reason=\"one_way\"}"
        ),
        Some(1.0)
    );

    // Its daemon back (the route restored), then stopped again with everything in place:
    // the kernel answers, the peer is reachable.
    c.start_daemon("node-3").unwrap();
    c.wait_ready("node-3").unwrap();
    c.wait_converged(Duration::from_secs(10)).unwrap();
    c.stop_daemon("node-3").unwrap();
    wait_state(&c, "node-3", "reachable", "reachable", quick);
    let rounds = c.daemon_status("node-1").unwrap()["probes"]["rounds"]
        .as_u64()
        .unwrap();
    // Several more rounds with the daemon stopped: still reachable.
    poll(quick, Duration::from_millis(100), || {
        let now = c.daemon_status("node-1").ok()?["probes"]["rounds"].as_u64()?;
        (now >= rounds + 4).then_some(())
    })
    .expect("rounds go on");
    assert_eq!(
        probe_of(&c, "node-1", "node-3").unwrap()["state"],
        "reachable"
    );

    // A narrower underlay on node-2: small probes pass, full-size ones are lost.
    ip_in(&c, "node-2", &["link", "set", "eth0", "mtu", "1400"]);
    let p = wait_state(&c, "node-2", "unreachable", "mtu_blackhole", quick);
    assert!(p["detail"].as_str().unwrap().contains("1450-byte"), "{p}");
    assert_eq!(
        metric(
            &c,
            "node-1",
            "flannel_probe_peers_unreachable{reason=\"mtu_blackhole\"}"
        ),
        Some(1.0)
    );
    ip_in(&c, "node-2", &["link", "set", "eth0", "mtu", "1500"]);
    wait_state(&c, "node-2", "reachable", "reachable", quick);
}

/// `promtool check metrics` (Debian package `prometheus`) on a running daemon's `/metrics`,
/// after a heal and a probe round so that every family has samples.
#[test]
fn a_running_daemons_metrics_pass_promtool() {
    let c = probe_cluster("pr3", 2, &[("FLANNELD_TEST_PROBE_BASE_MS", "200")]);
    poll(Duration::from_secs(20), Duration::from_millis(100), || {
        metric(&c, "node-1", "flannel_probe_rounds_total").filter(|v| *v >= 1.0)
    })
    .expect("a probe round");
    // A clobber by a named field manager, healed and attributed.
    c.lab.server.stale_write_by("node-1", "rancher");
    let series = "flannel_annotation_heals_by_manager_total{field_manager=\"rancher\"}";
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        metric(&c, "node-1", series).filter(|v| *v >= 1.0)
    })
    .unwrap_or_else(|| panic!("no {series}:\n{}", daemon_log(&c, "node-1")));
    let (code, body) = c.daemon_http("node-1", "/metrics").unwrap();
    assert_eq!(code, 200);
    for family in [
        "flannel_rs_build_info{version=\"",
        "flannel_probe_rtt_seconds_bucket{le=\"+Inf\"}",
        "flannel_probe_peers_unreachable{reason=\"udp_dropped\"} 0",
        "flannel_annotation_heal_duration_seconds_count 1",
    ] {
        assert!(body.contains(family), "no {family} in\n{body}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; hack/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
