//! Events through kube-rs's Recorder (create, then merge patches of a series), the core/v1
//! view kubectl reads, validation, watch, and RBAC with and without `--grant flannel=events`.

use frs_testsupport::kube_testserver::{KubeTestServer, LogFilter, TestServerOptions};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node};
use k8s_openapi::api::events::v1::Event;
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event as Publish, EventType, Recorder, Reporter};
use serde_json::{Value, json};

use crate::common::*;
use crate::kubectl::{kubectl, ok};

fn with_grant() -> KubeTestServer {
    spawn(TestServerOptions {
        nodes: 2,
        extra_args: vec!["--grant".into(), "flannel=events".into()],
        ..Default::default()
    })
}

fn summary(server: &KubeTestServer) -> Value {
    server.events().unwrap()
}

fn heal(note: &str) -> Publish {
    Publish {
        type_: EventType::Warning,
        reason: "AnnotationsRestored".into(),
        note: Some(note.into()),
        action: "RestoreAnnotations".into(),
        secondary: None,
    }
}

async fn recorder_for(
    server: &KubeTestServer,
    node: &str,
) -> (Recorder, k8s_openapi::api::core::v1::ObjectReference) {
    let client = client(server, "flannel").await;
    let n = Api::<Node>::all(client.clone()).get(node).await.unwrap();
    let reporter = Reporter {
        controller: "flanneld".into(),
        instance: Some(node.into()),
    };
    (Recorder::new(client, reporter), n.object_ref(&()))
}

#[tokio::test]
async fn recorder_creates_then_patches_a_series() {
    let server = with_grant();
    let (recorder, node_ref) = recorder_for(&server, "node-00001").await;
    for i in 0..3 {
        recorder
            .publish(&heal(&format!("restored ({i})")), &node_ref)
            .await
            .unwrap();
    }
    let s = summary(&server);
    assert_eq!(
        (
            s["events"].as_u64(),
            s["created"].as_u64(),
            s["patched"].as_u64()
        ),
        (Some(1), Some(1), Some(2)),
        "{s}"
    );
    assert_eq!(s["items"][0]["count"], 3);
    assert_eq!(s["items"][0]["regarding"]["name"], "node-00001");
    // The note of a series is the first one (kube-rs patches only the series; the note of an
    // events.k8s.io/v1 Event is immutable).
    assert_eq!(s["items"][0]["note"], "restored (0)");

    let admin = client(&server, "admin").await;
    let v1: Api<Event> = Api::namespaced(admin.clone(), "default");
    let list = v1.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(e.reporting_controller.as_deref(), Some("flanneld"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Node")
    );
    assert!(
        e.metadata
            .managed_fields
            .as_ref()
            .is_some_and(|m| !m.is_empty())
    );
    // The same store through core/v1, across namespaces, selected like `kubectl describe`.
    let core: Api<CoreEvent> = Api::all(admin.clone());
    let uid = node_ref.uid.clone().unwrap();
    let sel = format!(
        "involvedObject.kind=Node,involvedObject.name=node-00001,involvedObject.namespace=,involvedObject.uid={uid}"
    );
    let found = core
        .list(&ListParams::default().fields(&sel))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    let c = &found.items[0];
    assert_eq!(c.message.as_deref(), Some("restored (0)"));
    assert_eq!(c.reporting_component.as_deref(), Some("flanneld"));
    assert_eq!(c.series.as_ref().and_then(|s| s.count), Some(3));
    let other = core
        .list(&ListParams::default().fields("involvedObject.name=node-00000"))
        .await
        .unwrap();
    assert!(other.items.is_empty());

    // Another reason is another Event.
    let mut rejected = heal("peer node-00000 rejected: subnet overlaps");
    rejected.reason = "PeerRejected".into();
    rejected.action = "ValidatePeer".into();
    recorder.publish(&rejected, &node_ref).await.unwrap();
    let s = summary(&server);
    assert_eq!(
        (s["events"].as_u64(), s["created"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    // Writes are in the request log as events create/patch by flannel.
    let log = server
        .request_log(&LogFilter {
            resource: Some("events".into()),
            identity: Some("flannel".into()),
            ..Default::default()
        })
        .unwrap();
    let verbs: Vec<&str> = log.iter().map(|e| e.verb.as_str()).collect();
    assert_eq!(verbs, ["create", "patch", "patch", "create"]);
    assert!(log.iter().all(|e| e.code < 300), "{log:?}");
}

#[tokio::test]
async fn recorder_without_the_grant_gets_403() {
    let server = spawn_nodes(1);
    let (recorder, node_ref) = recorder_for(&server, "node-00000").await;
    let err = recorder.publish(&heal("x"), &node_ref).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "events.events.k8s.io is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"default\""
    );
    assert_eq!(summary(&server)["events"], 0);
    // Nodes stay readable: only events are denied.
    let flannel = client(&server, "flannel").await;
    assert!(
        Api::<Node>::all(flannel.clone())
            .get("node-00000")
            .await
            .is_ok()
    );
    // Reading events is not in the grant either.
    let r = get(&flannel, "/apis/events.k8s.io/v1/namespaces/default/events").await;
    assert_status(&r, 403, "Forbidden");
}

fn event_body(name: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name},
        "eventTime": "2026-01-01T10:14:02.000001Z",
        "reportingController": "flanneld", "reportingInstance": "n1",
        "action": "RestoreAnnotations", "reason": "AnnotationsRestored", "type": "Normal",
        "note": "first",
        "regarding": {"apiVersion": "v1", "kind": "Node", "name": "n1"}
    })
}

const V1_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn events_validation_patches_and_watch() {
    let server = spawn_nodes(0);
    let admin = client(&server, "admin").await;
    let post = |body: Value| {
        let admin = admin.clone();
        async move {
            call(
                &admin,
                "POST",
                V1_PATH,
                Some("application/json"),
                Some(&body.to_string()),
            )
            .await
        }
    };
    let mut watch = WatchReader::open(&admin, "/apis/events.k8s.io/v1/events?watch=1").await;
    assert_eq!(watch.status, 200);

    let mut bad = event_body("e0");
    bad.as_object_mut().unwrap().remove("eventTime");
    bad["type"] = json!("Odd");
    let r = post(bad).await;
    assert_status(&r, 422, "Invalid");
    assert!(
        r.json["message"].as_str().unwrap().contains("eventTime"),
        "{r:?}"
    );
    let mut elsewhere = event_body("e0");
    elsewhere["metadata"]["namespace"] = json!("kube-system");
    assert_status(&post(elsewhere).await, 400, "BadRequest");

    let r = post(event_body("e1")).await;
    assert_eq!(r.status, 201, "{r:?}");
    let created_rv = rv_of(&r.json);
    assert_eq!(r.json["metadata"]["namespace"], "default");
    assert_status(&post(event_body("e1")).await, 409, "AlreadyExists");

    let ev = watch.expect_event().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("e1"))
    );
    assert_eq!(ev["object"]["apiVersion"], "events.k8s.io/v1");

    // A series through a strategic merge patch; the note may not change.
    let path = format!("{V1_PATH}/e1");
    let series = r#"{"series":{"count":2,"lastObservedTime":"2026-01-01T10:15:00.000000Z"}}"#;
    let r = patch(&admin, &path, STRATEGIC, series).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["series"]["count"], 2);
    assert!(rv_of(&r.json) > created_rv);
    let ev = watch.expect_event().await;
    assert_eq!(ev["type"], "MODIFIED");
    let r = patch(&admin, &path, MERGE, r#"{"note":"second"}"#).await;
    assert_status(&r, 422, "Invalid");
    assert!(r.text.contains("field is immutable"), "{r:?}");
    let stale = format!(
        r#"{{"metadata":{{"resourceVersion":"{created_rv}"}},"series":{{"count":3,"lastObservedTime":"2026-01-01T10:16:00.000000Z"}}}}"#
    );
    assert_status(&patch(&admin, &path, MERGE, &stale).await, 409, "Conflict");
    assert_status(
        &patch(&admin, &format!("{V1_PATH}/nope"), MERGE, series).await,
        404,
        "NotFound",
    );

    // core/v1 reads the same object, converted.
    let c = get(&admin, "/api/v1/namespaces/default/events/e1").await;
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(
        (c.json["apiVersion"].as_str(), c.json["message"].as_str()),
        (Some("v1"), Some("first"))
    );
    assert_eq!(c.json["involvedObject"]["name"], "n1");
    assert_eq!(c.json["reportingComponent"], "flanneld");
    // core/v1 is read-only here.
    let r = call(
        &admin,
        "POST",
        "/api/v1/namespaces/default/events",
        Some("application/json"),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 405, "{r:?}");
    let r = get(&admin, "/api/v1/events?fieldSelector=note%3Dx").await;
    assert_status(&r, 400, "BadRequest");

    // Pagination over lists.
    for i in 2..5 {
        assert_eq!(post(event_body(&format!("e{i}"))).await.status, 201);
    }
    let page = get(&admin, &format!("{V1_PATH}?limit=3")).await;
    assert_eq!(page.json["items"].as_array().unwrap().len(), 3);
    let cont = page.json["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_string();
    let rest = get(&admin, &format!("{V1_PATH}?limit=3&continue={cont}")).await;
    let names: Vec<&str> = rest.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e4"]);
    assert!(rest.json["metadata"].get("continue").is_none());
}

#[tokio::test]
async fn kubectl_get_events_and_describe_node() {
    let server = with_grant();
    let (recorder, node_ref) = recorder_for(&server, "node-00001").await;
    recorder
        .publish(
            &heal("flannel annotations removed by field manager \"rancher\" (Update); restored"),
            &node_ref,
        )
        .await
        .unwrap();
    recorder.publish(&heal("again"), &node_ref).await.unwrap();
    let out = ok(kubectl(&server, "admin", &["get", "events", "-A"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for col in [
        "NAMESPACE",
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "MESSAGE",
    ] {
        assert!(lines[0].contains(col), "{out}");
    }
    assert!(lines[1].starts_with("default"), "{out}");
    assert!(
        lines[1].contains("Warning") && lines[1].contains("AnnotationsRestored"),
        "{out}"
    );
    assert!(
        lines[1].contains("node/node-00001") && lines[1].contains("field manager \"rancher\""),
        "{out}"
    );
    let json_out: Value = serde_json::from_str(&ok(kubectl(
        &server,
        "admin",
        &["get", "events", "-n", "default", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(json_out["items"][0]["series"]["count"], 2);
    // The events.k8s.io/v1 view prints the same table.
    let v1 = ok(kubectl(
        &server,
        "admin",
        &["get", "events.v1.events.k8s.io", "-n", "default"],
    ));
    assert!(
        v1.contains("AnnotationsRestored") && v1.contains("node/node-00001"),
        "{v1}"
    );
    let described = ok(kubectl(
        &server,
        "admin",
        &["describe", "node", "node-00001"],
    ));
    let events = described
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("{described}"));
    assert!(events.contains("AnnotationsRestored"), "{described}");
    let other = ok(kubectl(
        &server,
        "admin",
        &["describe", "node", "node-00000"],
    ));
    assert!(!other.contains("AnnotationsRestored"), "{other}");
}
