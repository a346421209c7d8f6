//! Honest readiness (the real binary against the test API server): with `--ip-masq`, neither
//! subnet.env nor `/readyz` 200 before the masquerade rules are in place — a missing or a
//! broken iptables is one error line each and a not-ready node that picks the tool up once it
//! works; and one
//! peer whose entries the kernel refuses is marked failed while the node becomes ready and
//! the other peers are programmed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use frs_testsupport::lab::Flanneld;
use serde_json::Value;

use crate::daemon_control::{FLANNELD, lab_with_two_nodes};

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    d: &Flanneld,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(d: &Flanneld, name: &str) -> Option<u64> {
    let (_, body) = d.health("/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn status(d: &Flanneld) -> Value {
    d.status().expect("GET /status on the status socket")
}

fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

/// Where the test machine's `program` is (for a symlink in the daemon's own PATH dir).
fn installed(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{program} is not installed on this machine"
    );
    PathBuf::from(path)
}

/// Puts the machine's `program` into `dir`, replacing whatever is there in one step.
fn link_into(dir: &Path, program: &str) {
    let tmp = dir.join(format!(".{program}.new"));
    std::os::unix::fs::symlink(installed(program), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(program)).unwrap();
}

/// An `iptables` in `dir` that fails every call, as a broken install would.
fn failing_iptables(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("iptables");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'iptables: broken for the test' >&2\nexit 4\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn with_ip_masq_a_missing_or_broken_iptables_keeps_the_node_unready_until_it_works() {
    let (lab, host) = lab_with_two_nodes("rd1");
    // The daemon's PATH: a dir of its own with `ip` (which `ip netns exec` is found by) and,
    // for now, no iptables.
    let bin = lab.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    link_into(&bin, "ip");
    let path = bin.to_str().expect("utf-8 temp path");
    let mut d = lab
        .start_flanneld_at(
            FLANNELD,
            &host,
            "n1",
            &lab.default_subnet_file("n1"),
            &[],
            &[("PATH", path)],
        )
        .unwrap();

    // Several attempts, each retried after a backoff.
    let failures = wait_for("three failed attempts", Duration::from_secs(30), &d, || {
        metric(&d, "flannel_traffic_rules_failures_total").filter(|n| *n >= 3)
    });
    let (code, body) = d.health("/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(
            "traffic rules (--ip-masq): `iptables` is not installed or not on PATH (needed for `iptables --version`)"
        ),
        "{body}"
    );
    let st = status(&d);
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(st["traffic_rules"]["state"], "failing", "{st}");
    assert!(
        !d.subnet_file.exists(),
        "subnet.env written without masquerade"
    );
    assert_eq!(metric(&d, "flannel_traffic_rules_in_place"), Some(0));
    let log = d.log();
    let errors = lines_with(&log, "traffic rules cannot be ensured");
    assert_eq!(
        errors.len(),
        1,
        "one error line for {failures} attempts:\n{log}"
    );
    assert!(
        errors[0].contains("ERROR") && errors[0].contains("`iptables`"),
        "{}",
        errors[0]
    );
    println!("{failures} failed attempts, one line: {}", errors[0]);
    assert_eq!(
        lines_with(&log, "subnet.env waits for the traffic rules").len(),
        1,
        "{log}"
    );
    // The datapath does not wait for the rules: the pods already running keep their peers.
    assert!(
        host.ns
            .ip(&["route", "show", "10.244.2.0/24"])
            .unwrap_or_default()
            .contains("via 10.244.2.0 dev flannel.1"),
        "peer n2 not programmed while the rules fail:\n{log}"
    );
    assert!(
        host.ns.ip(&["link", "show", "flannel.1"]).is_ok(),
        "no flannel.1"
    );

    // A broken iptables instead: a new failure, one new line naming it, still not ready.
    failing_iptables(&bin);
    let broken = "`iptables --version` failed (exit status: 4): iptables: broken for the test";
    let body = wait_for(
        "the new failure in /readyz",
        Duration::from_secs(60),
        &d,
        || d.health("/readyz").filter(|(_, b)| b.contains(broken)),
    );
    assert_eq!(body.0, 503, "{}", body.1);
    assert!(
        !d.subnet_file.exists(),
        "subnet.env written without masquerade"
    );
    let log = d.log();
    let errors = lines_with(&log, "traffic rules cannot be ensured");
    assert_eq!(errors.len(), 2, "{log}");
    assert!(errors[1].contains(broken), "{}", errors[1]);

    // iptables appears (as an installed package would): the next attempt takes it.
    for program in ["iptables", "iptables-restore"] {
        link_into(&bin, program);
    }
    let took = d.wait_ready(Duration::from_secs(60)).unwrap();
    println!("ready {took:?} after iptables was installed");
    let env = std::fs::read_to_string(&d.subnet_file).expect("subnet.env after the rules");
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    let chain = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.ns.name(),
            "iptables",
            "-t",
            "nat",
            "-S",
            "FLANNEL-POSTRTG",
        ])
        .output()
        .unwrap();
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(
        chain.contains("-j MASQUERADE"),
        "no masquerade rules:\n{chain}"
    );
    let st = status(&d);
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["traffic_rules"]["state"], "in-place", "{st}");
    assert_eq!(metric(&d, "flannel_traffic_rules_in_place"), Some(1));
    let log = d.log();
    let installed_at = log.find("traffic rules installed").expect("installed line");
    let env_at = log.find("subnet.env path=").expect("subnet.env line");
    assert!(installed_at < env_at, "subnet.env before the rules:\n{log}");
    assert_eq!(
        lines_with(&log, "traffic rules cannot be ensured").len(),
        2,
        "{log}"
    );
}

#[test]
fn a_peer_the_kernel_refuses_is_marked_failed_and_the_node_still_becomes_ready() {
    let (lab, host) = lab_with_two_nodes("rd2");
    lab.create_numbered_peer(3).unwrap();
    lab.create_numbered_peer(4).unwrap();
    // n3's gateway (its subnet's network address) is a local address of this node: the kernel
    // refuses the route via it ("Nexthop has invalid gateway"), every time.
    host.ns.ip(&["link", "set", "lo", "up"]).unwrap();
    host.ns
        .ip(&["addr", "add", "10.244.3.0/32", "dev", "lo"])
        .unwrap();

    let mut d = lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap();
    d.wait_ready(Duration::from_secs(30)).unwrap();

    // Retried, and still one line for the peer.
    wait_for(
        "two passes after start-up",
        Duration::from_secs(30),
        &d,
        || metric(&d, "flannel_reconciles_total").filter(|n| *n >= 3),
    );
    let st = status(&d);
    let failed = st["last_reconcile"]["failed_peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed.len(), 1, "{st}");
    assert_eq!(failed[0]["node"], "n3", "{st}");
    let error = failed[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("10.244.3.0/24"), "{error}");
    assert_eq!(metric(&d, "flannel_peers_failed"), Some(1));
    assert_eq!(metric(&d, "flannel_peer_failures_total"), Some(1));
    assert_eq!(metric(&d, "flannel_peers_programmed"), Some(2));
    for i in [2, 4] {
        let route = host
            .ns
            .ip(&["route", "show", &format!("10.244.{i}.0/24")])
            .unwrap_or_default();
        assert!(
            route.contains(&format!("via 10.244.{i}.0 dev flannel.1")),
            "n{i} not programmed: {route}"
        );
    }
    let log = d.log();
    let marked = lines_with(&log, "the kernel refuses this peer's entries");
    assert_eq!(marked.len(), 1, "{log}");
    assert!(marked[0].contains("peer=n3"), "{}", marked[0]);
    println!("n3 failed: {error}");

    // The conflict goes away: the next retry programs n3 and says so once.
    host.ns
        .ip(&["addr", "del", "10.244.3.0/32", "dev", "lo"])
        .unwrap();
    wait_for("n3 programmed", Duration::from_secs(60), &d, || {
        host.ns
            .ip(&["route", "show", "10.244.3.0/24"])
            .ok()
            .filter(|r| r.contains("via 10.244.3.0 dev flannel.1"))
    });
    wait_for("n3 no longer failed", Duration::from_secs(10), &d, || {
        (metric(&d, "flannel_peers_failed") == Some(0)).then_some(())
    });
    assert_eq!(metric(&d, "flannel_peers_programmed"), Some(3));
    let log = d.log();
    assert_eq!(
        lines_with(&log, "peer programmed after earlier kernel refusals").len(),
        1,
        "{log}"
    );
    assert_eq!(d.health("/readyz").map(|r| r.0), Some(200));
}
