//! The admin API: fault injection, watch control, outage, clobber, churn, request log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use frs_testsupport::kube_testserver::{Clobber, Fault, LogFilter};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn injected_errors_are_counted_and_shaped_like_upstream() {
    let server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    server
        .inject_fault(
            &Fault::fail(429)
                .verb("patch")
                .resource("nodes/status")
                .times(2)
                .retry_after(3),
        )
        .unwrap();
    for _ in 0..2 {
        let r = label(&c, "/api/v1/nodes/node-00000/status", "a", "1").await;
        assert_status(&r, 429, "TooManyRequests");
        assert_eq!(r.headers.get("retry-after").unwrap(), "3");
        assert_eq!(r.json["details"]["retryAfterSeconds"], 3);
    }
    // Other verbs/resources were never affected; the third patch goes through.
    assert_eq!(get(&c, "/api/v1/nodes/node-00000").await.status, 200);
    assert_eq!(
        merge_patch(&c, "/api/v1/nodes/node-00000", "{}")
            .await
            .status,
        200
    );
    let r = label(&c, "/api/v1/nodes/node-00000/status", "a", "1").await;
    assert_eq!(r.status, 200);

    for (code, reason) in [
        (409, "Conflict"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    ] {
        let id = server
            .inject_fault(&Fault::fail(code).verb("get").name("node-00000").times(1))
            .unwrap();
        assert_status(&get(&c, "/api/v1/nodes/node-00000").await, code, reason);
        assert_eq!(get(&c, "/api/v1/nodes/node-00000").await.status, 200);
        assert!(server.remove_fault(id).is_ok());
    }
    let log = server
        .request_log(&LogFilter {
            verb: Some("patch".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(log.iter().filter(|e| e.injected).count(), 2);
    assert!(log.iter().filter(|e| e.injected).all(|e| e.code == 429));

    // Identity filter: only flannel's requests fail.
    server
        .inject_fault(&Fault::fail(503).identity("flannel"))
        .unwrap();
    let f = client(&server, "flannel").await;
    assert_status(&get(&f, "/api/v1/nodes").await, 503, "ServiceUnavailable");
    assert_eq!(get(&c, "/api/v1/nodes").await.status, 200);
    server.clear_faults().unwrap();
    assert_eq!(get(&f, "/api/v1/nodes").await.status, 200);
}

#[tokio::test]
async fn latency_injection_delays_matching_requests() {
    let server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    get(&c, "/api/v1/nodes").await;
    server
        .inject_fault(&Fault::latency(Duration::from_millis(400)).verb("list"))
        .unwrap();
    let t = Instant::now();
    assert_eq!(get(&c, "/api/v1/nodes").await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "list took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(get(&c, "/api/v1/nodes/node-00000").await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn close_watches_ends_every_stream() {
    let server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    let rv = server.resource_version().unwrap();
    let mut a = watch_nodes_from(&c, rv).await;
    let mut b = watch_nodes_from(&c, rv).await;
    server.wait_for_watches(2, Duration::from_secs(5)).unwrap();
    assert_eq!(server.close_watches().unwrap(), 2);
    assert!(matches!(a.next(Duration::from_secs(5)).await, Next::End));
    assert!(matches!(b.next(Duration::from_secs(5)).await, Next::End));
    // New watches work and see later writes.
    let mut again = watch_nodes_from(&c, rv).await;
    label(&c, "/api/v1/nodes/node-00000", "x", "1").await;
    assert_eq!(again.expect_event().await["type"], "MODIFIED");
}

#[tokio::test]
async fn outage_refuses_connections_and_keeps_state() {
    let server = spawn_nodes(3);
    let c = client(&server, "admin").await;
    label(&c, "/api/v1/nodes/node-00001", "kept", "yes").await;
    let rv = server.resource_version().unwrap();
    let mut w = watch_nodes_from(&c, rv).await;
    server.wait_for_watches(1, Duration::from_secs(5)).unwrap();
    let addr = server.url().trim_start_matches("https://").to_string();
    server.outage(Duration::from_millis(1500)).unwrap();
    assert!(
        matches!(w.next(Duration::from_secs(5)).await, Next::End),
        "open watches are cut"
    );
    let refused = std::net::TcpStream::connect(&addr);
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused),
        "during the outage connections are refused"
    );
    assert!(
        server.state().unwrap()["outageRemainingMs"]
            .as_u64()
            .unwrap()
            > 0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "server did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = client(&server, "admin").await;
    let n = get(&fresh, "/api/v1/nodes/node-00001").await;
    assert_eq!(n.json["metadata"]["labels"]["kept"], "yes");
    assert_eq!(server.resource_version().unwrap(), rv);
    let mut resumed = watch_nodes_from(&fresh, rv).await;
    label(&fresh, "/api/v1/nodes/node-00002", "after", "1").await;
    assert_eq!(rv_of(&resumed.expect_event().await["object"]), rv + 1);
}

#[tokio::test]
async fn clobber_overwrites_annotations_like_the_incident() {
    let server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    let stale = get(&c, "/api/v1/nodes/node-00000").await;
    let stale_rv = rv_of(&stale.json);
    patch(
        &c,
        "/api/v1/nodes/node-00000/status",
        STRATEGIC,
        r#"{"metadata":{"annotations":{"extra.example.com/k":"v"}}}"#,
    )
    .await;

    let out = server
        .clobber(
            "node-00000",
            &Clobber::DropAnnotationPrefix("flannel.alpha.coreos.com/".into()),
        )
        .unwrap();
    assert_eq!(out["code"], 200);
    let now = get(&c, "/api/v1/nodes/node-00000").await;
    let ann = now.json["metadata"]["annotations"].as_object().unwrap();
    assert!(
        ann.keys()
            .all(|k| !k.starts_with("flannel.alpha.coreos.com/")),
        "{ann:?}"
    );
    assert_eq!(ann["extra.example.com/k"], "v");
    let log = server
        .request_log(&LogFilter {
            identity: Some("clobber".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].path, "/api/v1/nodes/node-00000");
    let sent = log[0].body_json().unwrap();
    assert!(
        sent["metadata"].get("resourceVersion").is_none(),
        "an unconditional update"
    );

    // The whole stale object from history: the later annotation is gone too.
    let out = server
        .clobber(
            "node-00000",
            &Clobber::AtResourceVersion(stale_rv.to_string()),
        )
        .unwrap();
    let ann = out["annotations"].as_object().unwrap();
    assert!(ann.contains_key("flannel.alpha.coreos.com/public-ip"));
    assert!(!ann.contains_key("extra.example.com/k"));
    let explicit = server
        .clobber(
            "node-00000",
            &Clobber::Annotations(BTreeMap::from([("only".to_string(), "this".to_string())])),
        )
        .unwrap();
    assert_eq!(explicit["annotations"], json!({"only": "this"}));
    server.compact_history().unwrap();
    assert!(
        server
            .clobber(
                "node-00000",
                &Clobber::AtResourceVersion(stale_rv.to_string())
            )
            .is_err()
    );
}

#[tokio::test]
async fn request_log_records_what_clients_sent() {
    let server = spawn_nodes(1);
    let since = server.reset_request_log().unwrap();
    let f = client(&server, "flannel").await;
    let body =
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.0.1"}}}"#;
    patch(
        &f,
        "/api/v1/nodes/node-00000/status?fieldManager=flanneld",
        STRATEGIC,
        body,
    )
    .await;
    patch(&f, "/api/v1/nodes/node-00000", STRATEGIC, body).await;
    let log = server
        .request_log(&LogFilter {
            since: Some(since),
            method: Some("PATCH".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].path,
        "/api/v1/nodes/node-00000/status?fieldManager=flanneld"
    );
    assert_eq!(log[0].content_type.as_deref(), Some(STRATEGIC));
    assert_eq!(log[0].body.as_deref(), Some(body));
    assert_eq!(log[0].code, 200);
    assert_eq!(log[0].identity.as_deref(), Some("flannel"));
    assert_eq!(log[0].resource, "nodes/status");
    assert_eq!(log[1].code, 403);
    assert!(log[0].seq < log[1].seq);
    server.reset_request_log().unwrap();
    assert!(
        server
            .request_log(&LogFilter::default())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn churn_updates_status_only_and_stops() {
    let server = spawn_nodes(5);
    let c = client(&server, "admin").await;
    let before = get(&c, "/api/v1/nodes").await;
    let rv0 = server.resource_version().unwrap();
    server.start_churn(100.0).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.stop_churn().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rv1 = server.resource_version().unwrap();
    assert!(
        rv1 - rv0 >= 50,
        "about 100 writes expected, got {}",
        rv1 - rv0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.resource_version().unwrap(), rv1, "churn stopped");
    let after = get(&c, "/api/v1/nodes").await;
    for (b, a) in before.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after.json["items"].as_array().unwrap())
    {
        assert_eq!(a["metadata"]["annotations"], b["metadata"]["annotations"]);
        assert_eq!(a["spec"], b["spec"]);
    }
}

#[tokio::test]
async fn generate_realistic_nodes_through_admin_api() {
    let server = spawn_nodes(0);
    let out = server
        .generate_nodes(&json!({"count": 3, "realistic": true, "prefix": "worker-", "podCidrBase": "10.200.0.0/16"}))
        .unwrap();
    assert_eq!(out["created"], 3);
    assert_eq!(out["lastName"], "worker-00002");
    let c = client(&server, "admin").await;
    let n = get(&c, "/api/v1/nodes/worker-00002").await;
    assert!(
        (15_000..=20_000).contains(&n.text.len()),
        "{} bytes",
        n.text.len()
    );
    assert_eq!(n.json["spec"]["podCIDR"], "10.200.2.0/24");
    assert_eq!(
        n.json["metadata"]["annotations"]["flannel.alpha.coreos.com/kube-subnet-manager"],
        "true"
    );
    assert_eq!(n.json["status"]["images"].as_array().unwrap().len(), 42);
    // Names collide: the admin API says so.
    assert!(
        server
            .generate_nodes(&json!({"count": 1, "prefix": "worker-"}))
            .is_err()
    );
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_drop_cleans_up() {
    let mut server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    let rv = server.resource_version().unwrap();
    // An open watch must not hold up shutdown.
    let _w = watch_nodes_from(&c, rv).await;
    server.wait_for_watches(1, Duration::from_secs(5)).unwrap();
    let state_dir = server.dir().join("state");
    assert!(state_dir.join("server.json").exists());
    assert!(state_dir.join("ca.crt").exists());
    let t = Instant::now();
    let status = server.stop().expect("server was running");
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        !state_dir.join("server.json").exists(),
        "server.json removed on exit"
    );
    let dir = server.dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "per-run temp dir removed");
}
