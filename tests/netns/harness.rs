//! Shared helpers for the namespace tests: namespace guards, veth between namespaces, and an
//! independent view of kernel state through `ip -json` / `bridge -json`.

#![allow(dead_code)]

use std::sync::Once;
use std::time::{Duration, Instant};

pub use flannel_rs::netns::NetnsGuard;
use serde_json::Value;

static STALE_CLEANUP: Once = Once::new();

/// Creates a test namespace, failing the test loudly (never skipping) when that is impossible.
pub fn netns(tag: &str) -> NetnsGuard {
    STALE_CLEANUP.call_once(|| {
        flannel_rs::netns::remove_stale_test_namespaces();
    });
    match NetnsGuard::new(tag) {
        Ok(ns) => ns,
        Err(e) => panic!(
            "cannot create a network namespace ({e}). The netns tests need root and iproute2 \
             (`ip`); run them as root, e.g. `sudo cargo test`, or via .ci/run"
        ),
    }
}

/// Joins two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), both up, with the
/// given addresses (CIDR notation) when not empty.
pub fn veth_between(
    a: &NetnsGuard,
    a_if: &str,
    a_addr: &str,
    b: &NetnsGuard,
    b_if: &str,
    b_addr: &str,
) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .unwrap();
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", ifname]).unwrap();
        }
        ns.ip(&["link", "set", ifname, "up"]).unwrap();
    }
}

/// `ip -json ARGS` inside `ns`, parsed.
pub fn ip_json(ns: &NetnsGuard, args: &[&str]) -> Value {
    let mut full = vec!["-json"];
    full.extend_from_slice(args);
    let out = ns.ip(&full).unwrap_or_else(|e| panic!("{e}"));
    parse_json_output(&out)
}

/// `bridge -json ARGS` inside `ns`, parsed.
pub fn bridge_json(ns: &NetnsGuard, args: &[&str]) -> Value {
    let out = std::process::Command::new("bridge")
        .args(["-n", ns.name(), "-json"])
        .args(args)
        .output()
        .expect("run bridge");
    assert!(
        out.status.success(),
        "bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_json_output(&String::from_utf8_lossy(&out.stdout))
}

fn parse_json_output(out: &str) -> Value {
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(out).unwrap_or_else(|e| panic!("bad json from iproute2 ({e}): {out}"))
}

/// A multi-threaded runtime for tests that drive the async netlink layer.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `ok` until it holds; panics naming `what` after `timeout`. Returns the time taken.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}
