//! `flanneld explain`: one command that tells an operator what this node's daemon believes and
//! did — its lease, whether its annotations had to be re-asserted (and how often), which peers
//! are programmed, which nodes were refused and why, and how the kernel was kept in line.
//! It reads the running daemon's `/status` and `/readyz` from its private status socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "cannot reach flanneld's status socket {}: {source} ({hint})", path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("bad answer from {}{path}: {detail}", socket.display())]
    Answer {
        socket: PathBuf,
        path: &'static str,
        detail: String,
    },
}

/// `GET path` on the status socket: the status code and the body.
pub fn get(socket: &Path, path: &'static str) -> Result<(u16, String), ExplainError> {
    let timeout = Duration::from_secs(3);
    let stream = UnixStream::connect(socket).map_err(|source| ExplainError::Connect {
        path: socket.into(),
        hint: match source.kind() {
            std::io::ErrorKind::PermissionDenied => "it is root's only: run as root",
            _ => {
                "is flanneld running on this node? Give the same --subnet-file as the daemon \
                 (the socket sits next to it)"
            }
        },
        source,
    })?;
    let answer = |detail: String| ExplainError::Answer {
        socket: socket.into(),
        path,
        detail,
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| answer(e.to_string()))?;
    http_get_on(stream, path).map_err(|e| answer(e.to_string()))
}

/// Sends `GET path` (HTTP/1.0, so the server closes after the answer) on a connected stream
/// and returns the status code and the body. The caller sets timeouts on the stream.
pub fn http_get_on(mut stream: impl Read + Write, path: &str) -> std::io::Result<(u16, String)> {
    let bad = |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
    write!(stream, "GET {path} HTTP/1.0\r\nHost: flanneld\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header/body separator".into()))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("no status code in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// The running daemon's `/status` document with its readiness added as `"ready"` (`null`
/// when `/readyz` could not be read).
pub fn fetch(socket: &Path) -> Result<Value, ExplainError> {
    let answer = |detail: String| ExplainError::Answer {
        socket: socket.into(),
        path: "/status",
        detail,
    };
    let (code, body) = get(socket, "/status")?;
    if code != 200 {
        return Err(answer(format!("HTTP {code}")));
    }
    let mut status: Value = serde_json::from_str(&body).map_err(|e| answer(e.to_string()))?;
    let ready = get(socket, "/readyz").map(|(c, _)| c == 200).ok();
    if let Some(doc) = status.as_object_mut() {
        doc.insert("ready".into(), ready.into());
    }
    Ok(status)
}

/// Fetches the daemon's status through its socket and renders the explanation.
pub fn explain(socket: &Path) -> Result<String, ExplainError> {
    let status = fetch(socket)?;
    let ready = status["ready"].as_bool();
    Ok(render(&status, ready))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Renders the status document for a human (pure; unit-tested).
pub fn render(status: &Value, ready: Option<bool>) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let lease = list(&status["lease"]);
    line(format!(
        "node {}  lease {}  ready: {}",
        s(&status["node"]),
        if lease.is_empty() {
            "(not assigned yet)".into()
        } else {
            lease
        },
        match ready {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "unknown",
        }
    ));

    for w in status["waiting_for"].as_array().into_iter().flatten() {
        line(format!("  waiting for {}", s(w)));
    }

    let a = &status["annotations"];
    let heals = n(&a["heals"]);
    line(format!(
        "annotations: {} write(s), {} heal(s), {} conflict(s), {} error(s)",
        n(&a["writes"]),
        heals,
        n(&a["conflicts"]),
        n(&a["errors"])
    ));
    if heals > 0 {
        let last = &a["last_heal"];
        if let Some(summary) = last["summary"].as_str() {
            line(format!(
                "  ! last heal: {summary}; restored in {} ms (at {})",
                n(&last["took_ms"]),
                s(&last["at"])
            ));
        }
        line(format!(
            "  ! someone removed or changed flannel's annotations on this Node {heals} time(s); \
             they were re-asserted (last heal took {} ms). Look for a controller that updates \
             Nodes without a resourceVersion.",
            n(&a["last_heal_ms"])
        ));
    }

    let ev = &status["events"];
    if ev.is_object() {
        line(format!(
            "node Events: {} write(s), {} occurrence(s) folded into series, {} dropped",
            n(&ev["written"]),
            n(&ev["aggregated"]),
            n(&ev["dropped"])
        ));
    }

    let last = &status["last_reconcile"];
    if last.is_null() {
        line("datapath: no reconcile has finished yet".into());
        return out;
    }
    for d in last["devices"].as_array().into_iter().flatten() {
        line(format!(
            "device {} (index {}, mac {}, mtu {}): {} entries desired",
            s(&d["name"]),
            n(&d["index"]),
            s(&d["mac"]),
            n(&d["mtu"]),
            n(&d["entries"])
        ));
    }
    line(format!(
        "last reconcile: trigger {}, {:.1} ms, {} kernel change(s), {} error(s); drift repairs so far: {}",
        s(&last["trigger"]),
        last["duration_ms"].as_f64().unwrap_or(0.0),
        n(&last["operations"]),
        last["errors"].as_array().map(Vec::len).unwrap_or(0),
        n(&status["drift_repairs"]),
    ));
    for e in last["errors"].as_array().into_iter().flatten().take(5) {
        line(format!("  ! {}", s(e)));
    }
    let failed = last["failed_peers"].as_array().cloned().unwrap_or_default();
    if !failed.is_empty() {
        line(format!(
            "peers failed (the kernel refuses their entries; retried): {}",
            failed.len()
        ));
        for f in &failed {
            line(format!("  ! {:<22} {}", s(&f["node"]), s(&f["error"])));
        }
    }
    let peers = last["peers"].as_array().cloned().unwrap_or_default();
    line(format!(
        "peers programmed: {}",
        peers.len().saturating_sub(failed.len())
    ));
    for p in &peers {
        line(format!(
            "  {:<24} {:<20} via {:<16} vtep {}",
            s(&p["node"]),
            list(&p["subnets"]),
            list(&p["public_ips"]),
            list(&p["vtep_macs"])
        ));
    }
    let rejected = last["rejected"].as_array().cloned().unwrap_or_default();
    let hostile: Vec<_> = rejected
        .iter()
        .filter(|r| !matches!(r["kind"].as_str(), Some("not_managed" | "backend_type")))
        .collect();
    line(format!(
        "nodes not programmed: {} ({} refused as unsafe or broken)",
        rejected.len(),
        hostile.len()
    ));
    for r in &rejected {
        line(format!("  {:<24} {}", s(&r["node"]), s(&r["reason"])));
    }
    let probes = &status["probes"];
    if !probes.is_null() {
        line(format!(
            "tunnel probes: {} round(s) of {:.1} s; {} reachable, {} unreachable, {} not yet known",
            n(&probes["rounds"]),
            n(&probes["interval_ms"]) as f64 / 1000.0,
            n(&probes["reachable"]),
            n(&probes["unreachable"]),
            n(&probes["unknown"])
        ));
        if let Some(e) = probes["error"].as_str() {
            line(format!("  ! probes cannot run: {e}"));
        }
        for p in probes["peers"].as_array().into_iter().flatten() {
            if p["state"] == "unreachable" {
                line(format!(
                    "  ! {:<22} {} ({} rounds): {}",
                    s(&p["node"]),
                    s(&p["verdict"]),
                    n(&p["consecutive_failures"]),
                    s(&p["detail"])
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_healed_node_with_a_refused_peer_is_explained() {
        let status = json!({
            "node": "n1", "lease": ["10.244.1.0/24"], "drift_repairs": 2,
            "annotations": {"writes": 2, "heals": 1, "conflicts": 0, "errors": 0, "last_heal_ms": 3,
                "last_heal": {"at": "2026-03-01T10:14:02.5Z", "took_ms": 3,
                    "summary": "flannel annotations removed by field manager \"rancher\" (Update) at 10:14:02Z",
                    "by": {"manager": "rancher"}}},
            "events": {"written": 2, "aggregated": 5, "dropped": 0},
            "last_reconcile": {
                "trigger": "drift", "duration_ms": 1.5, "operations": 2, "errors": [],
                "devices": [{"name": "flannel.1", "index": 4, "mac": "0e:00:00:00:00:01", "mtu": 1450, "entries": 3}],
                "peers": [{"node": "n2", "subnets": ["10.244.2.0/24"], "public_ips": ["192.168.50.2"], "vtep_macs": ["0e:00:00:00:00:02"]}],
                "failed_peers": [{"node": "n3", "error": "replace route 10.244.3.0/24: Invalid argument"}],
                "rejected": [{"node": "evil", "kind": "subnet_overlaps_own", "reason": "subnet 10.244.1.0/24 overlaps our own"}]
            },
            "probes": {"rounds": 7, "interval_ms": 2197, "reachable": 0, "unreachable": 1, "unknown": 0,
                "peers": [{"node": "n2", "state": "unreachable", "verdict": "udp_dropped",
                    "consecutive_failures": 3, "detail": "no answer through the tunnel while 192.168.50.2 answers"}]}
        });
        let text = render(&status, Some(true));
        assert_says(
            &text,
            &[
                "node n1  lease 10.244.1.0/24  ready: yes",
                "1 heal(s)",
                "someone removed or changed",
                "last heal: flannel annotations removed by field manager \"rancher\" (Update) at 10:14:02Z; restored in 3 ms",
                "drift repairs so far: 2",
                "node Events: 2 write(s), 5 occurrence(s) folded into series, 0 dropped",
                "n2",
                "192.168.50.2",
                "1 refused as unsafe or broken",
                "peers failed (the kernel refuses their entries; retried): 1",
                "n3",
                "Invalid argument",
                "evil",
                "overlaps our own",
            ],
        );
        assert!(
            text.contains("tunnel probes: 7 round(s) of 2.2 s; 0 reachable, 1 unreachable"),
            "{text}"
        );
        assert!(
            text.contains("n2                     udp_dropped (3 rounds): no answer through"),
            "{text}"
        );
    }

    /// Every one of `parts` is in `text`.
    fn assert_says(text: &str, parts: &[&str]) {
        for part in parts {
            assert!(text.contains(part), "no {part:?} in:\n{text}");
        }
    }

    #[test]
    fn a_daemon_still_waiting_says_so() {
        let status = json!({"node": "n1", "lease": [], "annotations": {}, "last_reconcile": null,
            "waiting_for": ["traffic rules (--ip-masq): `iptables` is not installed or not on PATH"]});
        assert_says(
            &render(&status, Some(false)),
            &[
                "  waiting for traffic rules (--ip-masq): `iptables` is not installed",
                "(not assigned yet)",
                "ready: NO",
                "no reconcile has finished yet",
            ],
        );
    }

    #[test]
    fn an_unreachable_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = explain(&dir.path().join("flanneld-subnet.env.sock")).unwrap_err();
        assert!(err.to_string().contains("--subnet-file"), "{err}");
    }
}
