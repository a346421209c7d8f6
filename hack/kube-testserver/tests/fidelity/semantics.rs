//! API semantics over real HTTP(S), each written so a lenient server fails it.

use std::time::Duration;

use frs_testsupport::kube_testserver::TestServerOptions;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn discovery_authentication_and_plain_http() {
    let server = spawn(TestServerOptions {
        tls: false,
        nodes: 2,
        ..Default::default()
    });
    assert!(server.url().starts_with("http://"));
    let anon = anonymous_client(&server).await;
    let v = get(&anon, "/version").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json["major"], "1");
    assert!(v.json["gitVersion"].as_str().unwrap().starts_with("v1.33"));
    assert_status(&get(&anon, "/api/v1/nodes").await, 401, "Unauthorized");
    assert_status(&get(&anon, "/api").await, 401, "Unauthorized");

    let admin = client(&server, "admin").await;
    let api = get(&admin, "/api").await;
    assert_eq!(api.json["kind"], "APIVersions");
    assert_eq!(api.json["versions"], json!(["v1"]));
    let groups = get(&admin, "/apis").await;
    assert_eq!(groups.json["kind"], "APIGroupList");
    let v1 = get(&admin, "/api/v1").await;
    assert_eq!(v1.json["kind"], "APIResourceList");
    let nodes = v1.json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "nodes")
        .unwrap()
        .clone();
    assert_eq!(nodes["namespaced"], false);
    assert_eq!(nodes["kind"], "Node");
    assert!(nodes["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert!(
        v1.json["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "nodes/status")
    );
    let list = get(&admin, "/api/v1/nodes").await;
    assert_eq!(list.json["kind"], "NodeList");
    assert_eq!(list.json["items"].as_array().unwrap().len(), 2);
    assert_status(&get(&admin, "/api/v1/nonsense").await, 404, "NotFound");
}

#[tokio::test]
async fn global_resource_version_and_noop_writes() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    let a = create_node(&c, "a", json!({})).await;
    let b = create_node(&c, "b", json!({})).await;
    assert!(rv_of(&b) > rv_of(&a), "one global revision across objects");
    let p = merge_patch(
        &c,
        "/api/v1/nodes/a",
        r#"{"metadata":{"annotations":{"k":"v"}}}"#,
    )
    .await;
    assert_eq!(p.status, 200);
    let after_write = rv_of(&p.json);
    assert!(
        after_write > rv_of(&b),
        "a write to a bumps past b's revision"
    );
    let mut w = watch_nodes_from(&c, after_write).await;
    // The same value again: no new revision, no event.
    let noop = merge_patch(
        &c,
        "/api/v1/nodes/a",
        r#"{"metadata":{"annotations":{"k":"v"}}}"#,
    )
    .await;
    assert_eq!(noop.status, 200);
    assert_eq!(rv_of(&noop.json), after_write);
    assert_eq!(server.resource_version().unwrap(), after_write);
    let noop_put = send_json(&c, "PUT", "/api/v1/nodes/a", &noop.json).await;
    assert_eq!(
        rv_of(&noop_put.json),
        after_write,
        "no-op PUT keeps the revision"
    );
    let real = label(&c, "/api/v1/nodes/b", "x", "1").await;
    let ev = w.expect_event().await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(
        ev["object"]["metadata"]["name"], "b",
        "the no-op emitted no event"
    );
    assert_eq!(rv_of(&ev["object"]), rv_of(&real.json));
    assert_eq!(rv_of(&real.json), after_write + 1);
}

#[tokio::test]
async fn uid_creation_timestamp_and_generation() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    let a = create_node(&c, "a", json!({})).await;
    let uid = a["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(uid.len(), 36);
    assert_eq!(a["metadata"]["generation"], 1);
    let created = a["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let labels = label(&c, "/api/v1/nodes/a", "x", "1").await;
    assert_eq!(
        labels.json["metadata"]["generation"], 1,
        "metadata changes keep generation"
    );
    let spec = merge_patch(&c, "/api/v1/nodes/a", r#"{"spec":{"unschedulable":true}}"#).await;
    assert_eq!(
        spec.json["metadata"]["generation"], 2,
        "spec changes bump generation"
    );
    let ts = merge_patch(
        &c,
        "/api/v1/nodes/a",
        r#"{"metadata":{"creationTimestamp":"2000-01-01T00:00:00Z","labels":{"y":"2"}}}"#,
    )
    .await;
    assert_eq!(ts.status, 200);
    assert_eq!(ts.json["metadata"]["creationTimestamp"], created.as_str());
    assert_eq!(ts.json["metadata"]["uid"], uid.as_str());
    let mut other_uid = ts.json.clone();
    other_uid["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000000");
    let r = send_json(&c, "PUT", "/api/v1/nodes/a", &other_uid).await;
    assert_status(&r, 409, "Conflict");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("UID in precondition")
    );
}

#[tokio::test]
async fn watch_delivers_every_revision_in_order_as_chunked_json_lines() {
    let server = spawn_nodes(5);
    let c = client(&server, "admin").await;
    let start = server.resource_version().unwrap();
    let mut w = WatchReader::open(
        &c,
        &format!("/api/v1/nodes?watch=true&resourceVersion={start}"),
    )
    .await;
    assert_eq!(w.status, 200);
    assert_eq!(
        w.headers
            .get("transfer-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("chunked")
    );
    let writer = c.clone();
    let writes = tokio::spawn(async move {
        for i in 0..60 {
            let node = format!("node-{:05}", i % 5);
            let body = format!(r#"{{"metadata":{{"annotations":{{"i":"{i}"}}}}}}"#);
            let r = patch(&writer, &format!("/api/v1/nodes/{node}"), MERGE, &body).await;
            assert_eq!(r.status, 200);
        }
        let d = call(&writer, "DELETE", "/api/v1/nodes/node-00004", None, None).await;
        assert_eq!(d.status, 200);
    });
    for i in 0..61u64 {
        let expected = start + 1 + i;
        let ev = w.expect_event().await;
        assert_eq!(
            rv_of(&ev["object"]),
            expected,
            "event {i} out of order or gap: {ev}"
        );
        if i < 60 {
            assert_eq!(ev["type"], "MODIFIED");
            assert_eq!(ev["object"]["metadata"]["annotations"]["i"], i.to_string());
        } else {
            assert_eq!(ev["type"], "DELETED");
            assert_eq!(ev["object"]["metadata"]["name"], "node-00004");
        }
    }
    writes.await.unwrap();
    // A resumed watch from the middle replays exactly the rest from history.
    let mut resumed = WatchReader::open(
        &c,
        &format!("/api/v1/nodes?watch=1&resourceVersion={}", start + 58),
    )
    .await;
    for rv in start + 59..=start + 61 {
        assert_eq!(rv_of(&resumed.expect_event().await["object"]), rv);
    }
}

#[tokio::test]
async fn watch_below_retained_history_gets_410_error_event() {
    let server = spawn(TestServerOptions {
        nodes: 2,
        history_limit: Some(5),
        ..Default::default()
    });
    let c = client(&server, "admin").await;
    let old = server.resource_version().unwrap();
    for i in 0..10 {
        let r = patch(
            &c,
            "/api/v1/nodes/node-00000",
            MERGE,
            &format!(r#"{{"metadata":{{"labels":{{"i":"{i}"}}}}}}"#),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let mut w = watch_nodes_from(&c, old).await;
    assert_eq!(
        w.status, 200,
        "upstream answers 200 and sends the error as an event"
    );
    let ev = w.expect_event().await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(
        ev["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );
    assert!(matches!(w.next(Duration::from_secs(5)).await, Next::End));

    // Within the retained window it works; after compaction the same point is gone.
    let recent = server.resource_version().unwrap() - 2;
    let mut ok = watch_nodes_from(&c, recent).await;
    assert_eq!(ok.expect_event().await["type"], "MODIFIED");
    server.compact_history().unwrap();
    let mut gone = watch_nodes_from(&c, recent).await;
    assert_eq!(gone.expect_event().await["object"]["code"], 410);
}

#[tokio::test]
async fn bookmarks_only_when_allowed_and_timeout_seconds_ends_watch() {
    let server = spawn_nodes(1);
    let c = client(&server, "admin").await;
    let rv = server.resource_version().unwrap();
    let mut with = WatchReader::open(
        &c,
        &format!(
            "/api/v1/nodes?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=3"
        ),
    )
    .await;
    let mut without = watch_nodes_from(&c, rv).await;
    server.wait_for_watches(2, Duration::from_secs(5)).unwrap();
    let p = label(&c, "/api/v1/nodes/node-00000", "b", "1").await;
    assert_eq!(with.expect_event().await["type"], "MODIFIED");
    assert_eq!(without.expect_event().await["type"], "MODIFIED");
    let bookmark_rv = server.bookmark().unwrap();
    assert_eq!(bookmark_rv, rv_of(&p.json));
    let bm = with.expect_event().await;
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["kind"], "Node");
    assert_eq!(rv_of(&bm["object"]), bookmark_rv);
    without.expect_quiet(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert!(
        matches!(with.next(Duration::from_secs(10)).await, Next::End),
        "timeoutSeconds=3 ends the watch"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn send_initial_events_ends_with_annotated_bookmark() {
    let server = spawn_nodes(3);
    let c = client(&server, "admin").await;
    let current = server.resource_version().unwrap();
    let mut w = WatchReader::open(&c, "/api/v1/nodes?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let ev = w.expect_event().await;
        assert_eq!(ev["type"], "ADDED");
        names.push(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, ["node-00000", "node-00001", "node-00002"]);
    let end = w.expect_event().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(rv_of(&end["object"]), current);
    label(&c, "/api/v1/nodes/node-00001", "z", "1").await;
    assert_eq!(w.expect_event().await["type"], "MODIFIED");

    // Validation as upstream: sendInitialEvents needs NotOlderThan and bookmarks.
    let r = get(
        &c,
        "/api/v1/nodes?watch=1&sendInitialEvents=true&allowWatchBookmarks=true",
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = get(
        &c,
        "/api/v1/nodes?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = get(
        &c,
        "/api/v1/nodes?watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1",
    )
    .await;
    assert_status(&r, 422, "Invalid");

    // Legacy watch without resourceVersion: synthetic ADDED for everything, no end marker.
    let mut legacy = WatchReader::open(&c, "/api/v1/nodes?watch=1&allowWatchBookmarks=true").await;
    for _ in 0..3 {
        assert_eq!(legacy.expect_event().await["type"], "ADDED");
    }
    legacy.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_with_label_selector_sees_selection_transitions() {
    let server = spawn_nodes(2);
    let c = client(&server, "admin").await;
    let rv = server.resource_version().unwrap();
    let mut w = WatchReader::open(
        &c,
        &format!("/api/v1/nodes?watch=1&resourceVersion={rv}&labelSelector=team%3Dblue"),
    )
    .await;
    merge_patch(
        &c,
        "/api/v1/nodes/node-00001",
        r#"{"metadata":{"annotations":{"noise":"1"}}}"#,
    )
    .await;
    label(&c, "/api/v1/nodes/node-00000", "team", "blue").await;
    let added = w.expect_event().await;
    assert_eq!(
        added["type"], "ADDED",
        "entering the selection is ADDED: {added}"
    );
    assert_eq!(added["object"]["metadata"]["name"], "node-00000");
    merge_patch(
        &c,
        "/api/v1/nodes/node-00000",
        r#"{"metadata":{"annotations":{"a":"1"}}}"#,
    )
    .await;
    assert_eq!(w.expect_event().await["type"], "MODIFIED");
    let left = label(&c, "/api/v1/nodes/node-00000", "team", "red").await;
    let deleted = w.expect_event().await;
    assert_eq!(
        deleted["type"], "DELETED",
        "leaving the selection is DELETED"
    );
    assert_eq!(rv_of(&deleted["object"]), rv_of(&left.json));
    w.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn paginated_list_is_a_consistent_snapshot() {
    let server = spawn_nodes(25);
    let c = client(&server, "admin").await;
    let p1 = get(&c, "/api/v1/nodes?limit=10").await;
    assert_eq!(p1.json["items"].as_array().unwrap().len(), 10);
    assert_eq!(p1.json["metadata"]["remainingItemCount"], 15);
    let snapshot_rv = p1.json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let cont = p1.json["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    // Writes between pages must not show up in later pages.
    label(&c, "/api/v1/nodes/node-00022", "late", "1").await;
    create_node(&c, "node-00030", json!({})).await;
    call(&c, "DELETE", "/api/v1/nodes/node-00015", None, None).await;
    let p2 = get(&c, &format!("/api/v1/nodes?limit=10&continue={cont}")).await;
    assert_eq!(p2.status, 200, "{p2:?}");
    assert_eq!(p2.json["metadata"]["resourceVersion"], snapshot_rv.as_str());
    let p2_names: Vec<&str> = p2.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        p2_names.contains(&"node-00015"),
        "deleted after the snapshot, still listed"
    );
    let cont2 = p2.json["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let p3 = get(&c, &format!("/api/v1/nodes?limit=10&continue={cont2}")).await;
    let items = p3.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(p3.json["metadata"].get("continue").is_none());
    let n22 = items
        .iter()
        .find(|i| i["metadata"]["name"] == "node-00022")
        .unwrap();
    assert!(
        n22["metadata"]["labels"].get("late").is_none(),
        "page 3 shows the snapshot version"
    );
    assert!(items.iter().all(|i| i["metadata"]["name"] != "node-00030"));
    // A token whose snapshot left history: 410 with a fresh (inconsistent) continue token.
    server.compact_history().unwrap();
    let gone = get(&c, &format!("/api/v1/nodes?limit=10&continue={cont}")).await;
    assert_status(&gone, 410, "Expired");
    assert!(gone.json["metadata"]["continue"].as_str().is_some());
    assert_status(
        &get(&c, "/api/v1/nodes?limit=10&continue=garbage!").await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn list_resource_version_semantics() {
    let server = spawn_nodes(2);
    let c = client(&server, "admin").await;
    let before = server.resource_version().unwrap();
    label(&c, "/api/v1/nodes/node-00000", "v", "2").await;
    let exact = get(
        &c,
        &format!("/api/v1/nodes?resourceVersion={before}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(
        exact.json["metadata"]["resourceVersion"],
        before.to_string()
    );
    assert!(
        exact.json["items"][0]["metadata"]["labels"]
            .get("v")
            .is_none(),
        "Exact serves the old state"
    );
    let latest = get(&c, "/api/v1/nodes").await;
    assert_eq!(latest.json["items"][0]["metadata"]["labels"]["v"], "2");
    let future = server.resource_version().unwrap() + 100;
    assert_status(
        &get(
            &c,
            &format!("/api/v1/nodes?resourceVersion={future}&resourceVersionMatch=NotOlderThan"),
        )
        .await,
        504,
        "Timeout",
    );
    assert_status(
        &get(&c, "/api/v1/nodes?resourceVersionMatch=Exact").await,
        422,
        "Invalid",
    );
    assert_status(
        &get(
            &c,
            "/api/v1/nodes?resourceVersion=0&resourceVersionMatch=Exact",
        )
        .await,
        422,
        "Invalid",
    );
    server.compact_history().unwrap();
    assert_status(
        &get(
            &c,
            &format!("/api/v1/nodes?resourceVersion={before}&resourceVersionMatch=Exact"),
        )
        .await,
        410,
        "Expired",
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    create_node(&c, "a", json!({"zone": "x", "gpu": "true"})).await;
    create_node(&c, "b", json!({"zone": "y"})).await;
    create_node(&c, "c", json!({})).await;
    let names = |r: &Resp| -> Vec<String> {
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let sel = |s: &str| {
        format!(
            "/api/v1/nodes?labelSelector={}",
            s.replace(' ', "%20")
                .replace('=', "%3D")
                .replace('!', "%21")
                .replace(',', "%2C")
        )
    };
    for (selector, expected) in [
        ("zone=x", vec!["a"]),
        ("zone==y", vec!["b"]),
        ("zone!=x", vec!["b", "c"]),
        ("zone in (x,y)", vec!["a", "b"]),
        ("zone notin (x)", vec!["b", "c"]),
        ("gpu", vec!["a"]),
        ("!gpu", vec!["b", "c"]),
        ("zone,!gpu", vec!["b"]),
    ] {
        let r = get(&c, &sel(selector)).await;
        assert_eq!(r.status, 200, "{selector}: {r:?}");
        assert_eq!(names(&r), expected, "selector {selector}");
    }
    assert_status(&get(&c, &sel("zone in (x")).await, 400, "BadRequest");
    let r = get(&c, "/api/v1/nodes?fieldSelector=metadata.name%3Db").await;
    assert_eq!(names(&r), ["b"]);
    let r = get(&c, "/api/v1/nodes?fieldSelector=metadata.name!%3Db").await;
    assert_eq!(names(&r), ["a", "c"]);
    let r = get(&c, "/api/v1/nodes?fieldSelector=status.phase%3DRunning").await;
    assert_status(&r, 400, "BadRequest");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("field label not supported")
    );
}

#[tokio::test]
async fn put_create_delete_conflicts() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    let original = create_node(&c, "a", json!({})).await;
    // Another writer adds annotations.
    let newer = merge_patch(
        &c,
        "/api/v1/nodes/a",
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.9.1"}}}"#,
    )
    .await;
    // PUT with the stale resourceVersion: 409, nothing lost.
    let r = send_json(&c, "PUT", "/api/v1/nodes/a", &original).await;
    assert_status(&r, 409, "Conflict");
    assert_eq!(r.json["details"]["name"], "a");
    assert_eq!(r.json["details"]["kind"], "nodes");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );
    assert_eq!(server.resource_version().unwrap(), rv_of(&newer.json));
    // The same stale copy without resourceVersion: unconditional overwrite, annotation lost.
    let mut unconditional = original.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let r = send_json(&c, "PUT", "/api/v1/nodes/a", &unconditional).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json["metadata"]["annotations"]
            .get("flannel.alpha.coreos.com/public-ip")
            .is_none()
    );
    assert!(rv_of(&r.json) > rv_of(&newer.json));

    assert_status(
        &send_json(
            &c,
            "PUT",
            "/api/v1/nodes/zz",
            &json!({"metadata":{"name":"zz"}}),
        )
        .await,
        404,
        "NotFound",
    );
    let mismatch = send_json(
        &c,
        "PUT",
        "/api/v1/nodes/a",
        &json!({"metadata":{"name":"b"}}),
    )
    .await;
    assert_status(&mismatch, 400, "BadRequest");
    let dup = send_json(
        &c,
        "POST",
        "/api/v1/nodes",
        &json!({"metadata":{"name":"a"}}),
    )
    .await;
    assert_status(&dup, 409, "AlreadyExists");
    let bad = send_json(
        &c,
        "POST",
        "/api/v1/nodes",
        &json!({"metadata":{"name":"Bad_Name"}}),
    )
    .await;
    assert_status(&bad, 422, "Invalid");
    let stale_delete = call(
        &c,
        "DELETE",
        "/api/v1/nodes/a",
        Some("application/json"),
        Some(
            &json!({"preconditions":{"resourceVersion": rv_of(&original).to_string()}}).to_string(),
        ),
    )
    .await;
    assert_status(&stale_delete, 409, "Conflict");
    let del = call(&c, "DELETE", "/api/v1/nodes/a", None, None).await;
    assert_eq!(del.status, 200);
    assert_eq!(del.json["status"], "Success");
    let missing = get(&c, "/api/v1/nodes/a").await;
    assert_status(&missing, 404, "NotFound");
    assert_eq!(missing.json["message"], "nodes \"a\" not found");
    assert_status(
        &call(&c, "DELETE", "/api/v1/nodes/a", None, None).await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn patch_types_and_their_errors() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    let original = create_node(&c, "a", json!({"keep": "1", "drop": "1"})).await;
    // Merge patch: null deletes, lists replace.
    let m = merge_patch(&c, "/api/v1/nodes/a/status", r#"{"metadata":{"labels":{"drop":null}},"status":{"conditions":[{"type":"NetworkUnavailable","status":"False"}]}}"#).await;
    assert_eq!(m.status, 200, "{m:?}");
    assert_eq!(m.json["metadata"]["labels"], json!({"keep": "1"}));
    assert_eq!(
        m.json["status"]["conditions"].as_array().unwrap().len(),
        1,
        "merge patch replaces lists"
    );
    // Strategic: conditions merge by type, addresses by type, $patch: delete.
    let s = patch(&c, "/api/v1/nodes/a/status", STRATEGIC, r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"ExternalIP","address":"1.2.3.4"},{"type":"Hostname","$patch":"delete"}]}}"#).await;
    assert_eq!(s.status, 200, "{s:?}");
    let types: Vec<&str> = s.json["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["NetworkUnavailable", "Ready"]);
    assert_eq!(
        s.json["status"]["addresses"],
        json!([{"type":"InternalIP","address":"192.168.9.1"},{"type":"ExternalIP","address":"1.2.3.4"}])
    );
    let r = patch(
        &c,
        "/api/v1/nodes/a/status",
        STRATEGIC,
        r#"{"status":{"conditions":[{"$patch":"replace"},{"type":"Ready","status":"False"}]}}"#,
    )
    .await;
    assert_eq!(
        r.json["status"]["conditions"],
        json!([{"type":"Ready","status":"False"}])
    );
    assert_status(
        &patch(
            &c,
            "/api/v1/nodes/a/status",
            STRATEGIC,
            r#"{"status":{"conditions":[{"status":"x"}]}}"#,
        )
        .await,
        400,
        "BadRequest",
    );
    // JSON patch incl. a test op.
    let j = patch(&c, "/api/v1/nodes/a", JSONPATCH, r#"[{"op":"test","path":"/metadata/labels/keep","value":"1"},{"op":"add","path":"/metadata/labels/j","value":"2"}]"#).await;
    assert_eq!(j.status, 200, "{j:?}");
    assert_eq!(j.json["metadata"]["labels"]["j"], "2");
    let before = server.resource_version().unwrap();
    let failed = patch(&c, "/api/v1/nodes/a", JSONPATCH, r#"[{"op":"test","path":"/metadata/labels/keep","value":"other"},{"op":"add","path":"/metadata/labels/k","value":"3"}]"#).await;
    assert_status(&failed, 422, "Invalid");
    assert_eq!(
        server.resource_version().unwrap(),
        before,
        "a failed test applies nothing"
    );
    // A patch carrying a stale resourceVersion conflicts.
    let stale = format!(
        r#"{{"metadata":{{"resourceVersion":"{}","labels":{{"s":"1"}}}}}}"#,
        rv_of(&original)
    );
    assert_status(
        &patch(&c, "/api/v1/nodes/a", MERGE, &stale).await,
        409,
        "Conflict",
    );
    let fresh = format!(r#"{{"metadata":{{"resourceVersion":"{before}","labels":{{"s":"1"}}}}}}"#);
    assert_eq!(
        patch(&c, "/api/v1/nodes/a", MERGE, &fresh).await.status,
        200
    );
    // Apply patches and unknown types: 415 with a clear message.
    let apply = patch(
        &c,
        "/api/v1/nodes/a",
        "application/apply-patch+yaml",
        "metadata: {}",
    )
    .await;
    assert_status(&apply, 415, "UnsupportedMediaType");
    assert!(
        apply.json["message"]
            .as_str()
            .unwrap()
            .contains("server-side apply")
    );
    assert_status(
        &patch(&c, "/api/v1/nodes/a", "text/plain", "x").await,
        415,
        "UnsupportedMediaType",
    );
    assert_status(
        &merge_patch(&c, "/api/v1/nodes/missing", "{}").await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn status_subresource_rules() {
    let server = spawn_nodes(0);
    let c = client(&server, "admin").await;
    create_node(&c, "a", json!({})).await;
    let via_status = merge_patch(&c, "/api/v1/nodes/a/status", r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-type":"vxlan"}},"spec":{"unschedulable":true}}"#).await;
    assert_eq!(via_status.status, 200);
    assert_eq!(
        via_status.json["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"],
        "vxlan",
        "metadata changes through /status"
    );
    assert!(
        via_status.json["spec"].get("unschedulable").is_none(),
        "spec never changes through /status"
    );
    let via_main = merge_patch(
        &c,
        "/api/v1/nodes/a",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    )
    .await;
    assert_eq!(via_main.status, 200);
    assert_eq!(
        via_main.json["status"]["conditions"][0]["status"], "True",
        "status never changes through the main resource"
    );
    assert_eq!(
        rv_of(&via_main.json),
        rv_of(&via_status.json),
        "an ignored change is a no-op"
    );
    let mut put = via_main.json.clone();
    put["spec"]["unschedulable"] = json!(true);
    put["status"]["conditions"][0]["status"] = json!("Unknown");
    let r = send_json(&c, "PUT", "/api/v1/nodes/a/status", &put).await;
    assert_eq!(r.json["status"]["conditions"][0]["status"], "Unknown");
    assert!(r.json["spec"].get("unschedulable").is_none());
}

#[tokio::test]
async fn rbac_flannel_identity_matches_upstream_cluster_role() {
    let server = spawn_nodes(1);
    server
        .create_pod("kube-flannel", "kube-flannel-ds-abcde", "node-00000")
        .unwrap();
    let f = client(&server, "flannel").await;
    assert_eq!(get(&f, "/api/v1/nodes").await.status, 200);
    assert_eq!(get(&f, "/api/v1/nodes/node-00000").await.status, 200);
    let pod = get(
        &f,
        "/api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-abcde",
    )
    .await;
    assert_eq!(pod.json["spec"]["nodeName"], "node-00000");
    let mut w = WatchReader::open(&f, "/api/v1/nodes?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w.status, 200);
    let denied = patch(
        &f,
        "/api/v1/nodes/node-00000",
        STRATEGIC,
        r#"{"metadata":{"annotations":{"x":"1"}}}"#,
    )
    .await;
    assert_status(&denied, 403, "Forbidden");
    assert_eq!(
        denied.json["message"],
        "nodes \"node-00000\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let allowed = patch(
        &f,
        "/api/v1/nodes/node-00000/status",
        STRATEGIC,
        r#"{"metadata":{"annotations":{"x":"1"}}}"#,
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_status(
        &call(
            &f,
            "PUT",
            "/api/v1/nodes/node-00000/status",
            Some("application/json"),
            Some(&allowed.text),
        )
        .await,
        403,
        "Forbidden",
    );
    assert_status(
        &call(&f, "DELETE", "/api/v1/nodes/node-00000", None, None).await,
        403,
        "Forbidden",
    );
    assert_status(
        &call(
            &f,
            "POST",
            "/api/v1/nodes",
            Some("application/json"),
            Some("{}"),
        )
        .await,
        403,
        "Forbidden",
    );
    assert_status(
        &get(&f, "/api/v1/nodes/node-00000/status").await,
        403,
        "Forbidden",
    );
    assert_status(
        &get(&f, "/api/v1/namespaces/kube-flannel/pods").await,
        403,
        "Forbidden",
    );
    assert_eq!(w.expect_event().await["type"], "ADDED");
}

#[tokio::test]
async fn server_side_printing_for_kubectl() {
    let server = spawn_nodes(2);
    let c = client(&server, "admin").await;
    let req = http::Request::get("/api/v1/nodes?limit=500")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    use http_body_util::BodyExt;
    let t: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["rows"].as_array().unwrap().len(), 2);
    assert_eq!(t["rows"][0]["cells"][0], "node-00000");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}
