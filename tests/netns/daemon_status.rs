//! The daemon's status is private and its health port holds up: `/status` only on the root-only
//! socket next to `--subnet-file`, the health port's probes answer through floods of idle and
//! slow connections, and daemons with different subnet files keep to their own sockets.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::time::{Duration, Instant};

use flannel_rs::flanneld::health::MAX_CONNECTIONS;
use frs_testsupport::lab::Flanneld;
use frs_testsupport::topology::Host;
use serde_json::Value;

use crate::daemon_control::{FLANNELD, lab, lab_with_two_nodes};
use crate::harness::wait_until;

fn ready(mut d: Flanneld) -> Flanneld {
    d.wait_ready(Duration::from_secs(30)).unwrap();
    d
}

/// `flanneld ARGS…` in the host's namespace, as an operator runs it on the node.
fn flanneld_cmd(host: &Host, args: &[&str]) -> std::process::Output {
    host.ns.exec(FLANNELD, args).unwrap()
}

#[test]
fn status_is_served_only_on_a_root_only_socket_that_explain_reads() {
    let (lab, host) = lab_with_two_nodes("ds1");
    let mut d = ready(lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap());

    // The health port: probes and metrics, nothing about peers.
    assert_eq!(d.health("/status").map(|r| r.0), Some(404));
    assert_eq!(d.health("/healthz").map(|r| r.0), Some(200));
    assert_eq!(d.health("/readyz").map(|r| r.0), Some(200));
    assert_eq!(d.health("/metrics").map(|r| r.0), Some(200));

    // The socket: next to the subnet file, root's only, and it has the peers.
    let socket = d.status_socket();
    assert_eq!(socket.parent(), d.subnet_file.parent());
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.mode() & 0o777, 0o600, "mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let status = d.status().unwrap();
    assert_eq!(status["node"], "n1");
    let peers = status["last_reconcile"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{status:#}");
    assert_eq!(peers[0]["node"], "n2");

    // explain finds it from the daemon's flag; --json is the document plus readiness.
    let flag = d.subnet_file_flag();
    let out = flanneld_cmd(&host, &["explain", "--json", &flag]);
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ready"], true);
    assert_eq!(doc["node"], "n1");
    // The daemon's flags before the subcommand work too.
    let out = flanneld_cmd(&host, &["--kube-subnet-mgr", &flag, "explain"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node n1") && text.contains("peers programmed: 1"),
        "{text}"
    );
    let help = flanneld_cmd(&host, &["explain", "--help"]);
    assert!(help.status.success(), "{help:?}");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--json") && help.contains("status socket"),
        "{help}"
    );
    // Without the daemon's flag the default socket is not there: one line saying what to do.
    let elsewhere = flanneld_cmd(&host, &["explain", "--subnet-file=/nonexistent/subnet.env"]);
    assert_eq!(elsewhere.status.code(), Some(1));
    let err = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(err.contains("--subnet-file"), "{err}");

    // A clean exit removes the socket.
    d.stop().expect("exits on SIGTERM");
    assert!(!socket.exists(), "socket left after a clean exit");

    // A daemon killed outright leaves it; the next one replaces it.
    let mut killed = ready(lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap());
    let pid = nix::unistd::Pid::from_raw(killed.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    killed.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(socket.exists(), "SIGKILL leaves the socket");
    let d = ready(lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap());
    assert_eq!(d.status().unwrap()["node"], "n1");
    assert!(
        d.log().contains("removed a stale status socket"),
        "{}",
        d.log()
    );
}

#[test]
fn daemons_with_different_subnet_files_in_one_directory_keep_to_their_own_sockets() {
    let lab = lab("ds2");
    let shared = tempfile::tempdir().unwrap();
    let mut hosts = Vec::new();
    for k in 1..=3u8 {
        let host = lab.add_host(&format!("ds2-n{k}"), k).unwrap();
        lab.create_node(
            &format!("n{k}"),
            &format!("10.244.{k}.0/24"),
            host.address,
            BTreeMap::new(),
        )
        .unwrap();
        hosts.push(host);
    }
    let file = |k: u8| shared.path().join(format!("n{k}.env"));
    let start = |k: u8, subnet_file: &std::path::Path| {
        lab.start_flanneld_at(
            FLANNELD,
            &hosts[usize::from(k - 1)],
            &format!("n{k}"),
            subnet_file,
            &[],
            &[],
        )
        .unwrap()
    };
    let d1 = ready(start(1, &file(1)));
    let d2 = ready(start(2, &file(2)));
    assert_ne!(d1.status_socket(), d2.status_socket());
    assert_eq!(d1.status().unwrap()["node"], "n1");
    assert_eq!(d2.status().unwrap()["node"], "n2");
    for d in [&d1, &d2] {
        let peers = |doc: Value| doc["last_reconcile"]["peers"].as_array().map(Vec::len);
        wait_until("each daemon has the other", Duration::from_secs(10), || {
            peers(d.status().unwrap()) == Some(1)
        });
    }

    // A third daemon given n1's subnet file refuses to take n1's socket.
    let mut d3 = start(3, &file(1));
    let status = d3
        .wait_exit(Duration::from_secs(30))
        .expect("third daemon exits");
    assert_eq!(status.code(), Some(1), "{}", d3.log());
    assert!(
        d3.log().contains("another flanneld answers on it"),
        "{}",
        d3.log()
    );
    assert_eq!(d1.status().unwrap()["node"], "n1", "n1's socket still n1's");
    // The refused daemon wrote nothing: n3 has no annotations.
    assert!(
        lab.node_annotations("n3", "flannel.alpha.coreos.com/")
            .unwrap()
            .is_empty()
    );
}

/// Opens `n` TCP connections to the health port from inside the host's namespace.
fn connect_many(host: &Host, n: usize) -> Vec<TcpStream> {
    let ns = host.ns.open().unwrap();
    ns.run(move || {
        (0..n)
            .map(|_| {
                TcpStream::connect_timeout(
                    &"127.0.0.1:8081".parse().unwrap(),
                    Duration::from_secs(2),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap()
    .unwrap()
}

/// Has the server closed this connection? (EOF or a reset; nothing to read yet means open.)
fn closed_by_server(mut c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let closed = match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    c.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn idle_and_slow_clients_do_not_stop_the_health_probe() {
    let (lab, host) = lab_with_two_nodes("ds3");
    // First the cap alone: a header-read timeout longer than the test, so only the cap can
    // close anything.
    let mut d = ready(
        lab.start_flanneld_at(
            FLANNELD,
            &host,
            "n1",
            &lab.default_subnet_file("n1"),
            &[],
            &[("FLANNELD_TEST_HEADER_TIMEOUT_MS", "3600000")],
        )
        .unwrap(),
    );

    // Three times the cap: a third idle, the rest sending a request's headers but never
    // the blank line that ends them.
    let mut flood = connect_many(&host, 3 * MAX_CONNECTIONS);
    for c in flood.iter_mut().skip(MAX_CONNECTIONS) {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
    }
    // The probe gets through while all of them are held open on our side.
    assert_eq!(d.health("/healthz").map(|r| r.0), Some(200));
    // The server kept at most the cap of them.
    wait_until(
        "the server to close the connections over its cap",
        Duration::from_secs(10),
        || flood.iter().filter(|c| closed_by_server(c)).count() >= 2 * MAX_CONNECTIONS,
    );

    drop(flood);
    d.stop().expect("exits on SIGTERM");

    // Then the shipped header-read timeout: one client trickling its headers a byte at a time
    // is cut off, and the probe answers meanwhile.
    let d = ready(lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap());
    let mut slow = connect_many(&host, 1).remove(0);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ";
    let mut sent = 0usize;
    let cut_off = Instant::now();
    loop {
        let byte = request.get(sent).copied().unwrap_or(b'a');
        if slow.write_all(&[byte]).is_err() || closed_by_server(&slow) {
            break;
        }
        sent += 1;
        assert!(
            cut_off.elapsed() < Duration::from_secs(60),
            "a client sending headers slowly was never cut off"
        );
        if sent.is_multiple_of(20) {
            assert_eq!(d.health("/healthz").map(|r| r.0), Some(200));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.health("/healthz").map(|r| r.0), Some(200));
    assert_eq!(d.health("/readyz").map(|r| r.0), Some(200));
}
