//! managedFields as the real API server keeps them: manager from `fieldManager` or the
//! User-Agent, one Update entry per manager and subresource, ownership moving with writes,
//! removed keys owned by nobody — through kube-rs, raw requests, kubectl and the admin clobber.

use frs_testsupport::kube_testserver::{Clobber, KubeTestServer};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, Patch, PatchParams};
use kube::client::Body;
use serde_json::{Value, json};

use crate::common::*;
use crate::kubectl::{admin_json, kubectl, ok};

fn entries(obj: &Value) -> Vec<ManagedFieldsEntry> {
    serde_json::from_value(obj["metadata"]["managedFields"].clone()).unwrap_or_default()
}

fn fields_of<'a>(
    entries: &'a [ManagedFieldsEntry],
    manager: &str,
    sub: Option<&str>,
) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e.manager.as_deref() == Some(manager) && e.subresource.as_deref() == sub)
        .and_then(|e| e.fields_v1.as_ref().map(|f| &f.0))
}

fn owns_annotation(fields: Option<&Value>, key: &str) -> bool {
    fields
        .and_then(|f| f["f:metadata"]["f:annotations"].get(format!("f:{key}")))
        .is_some()
}

/// Who owns `key` among all entries.
fn owners(entries: &[ManagedFieldsEntry], key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| owns_annotation(e.fields_v1.as_ref().map(|f| &f.0), key))
        .map(|e| e.manager.clone().unwrap_or_default())
        .collect()
}

async fn put_with_user_agent(client: &kube::Client, path: &str, ua: &str, body: &Value) -> Resp {
    let req = http::Request::put(path)
        .header("content-type", "application/json")
        .header("user-agent", ua)
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap();
    send(client, req).await
}

/// Patch parameters naming `manager` as the field manager (kube-rs sends `?fieldManager=`).
fn as_manager(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn managed_fields_follow_field_manager_user_agent_and_subresource() {
    let server = spawn_nodes(0);
    let client = client(&server, "admin").await;
    create_node(&client, "n1", json!({"role": "a"})).await;
    let nodes: Api<Node> = Api::all(client.clone());

    // kube-rs sends ?fieldManager= from PatchParams.
    let pp = as_manager("rancher");
    let n = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {"r/one": "1"}}})),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&n).unwrap();
    let mf = entries(&v);
    let rancher = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some("rancher"))
        .expect("an entry for the patch's field manager");
    assert_eq!(rancher.operation.as_deref(), Some("Update"));
    assert_eq!(rancher.fields_type.as_deref(), Some("FieldsV1"));
    assert_eq!(rancher.api_version.as_deref(), Some("v1"));
    assert_eq!(rancher.subresource, None);
    let time = rancher.time.as_ref().expect("a time").0;
    assert_eq!(time.subsec_nanosecond(), 0, "seconds precision");
    assert_eq!(
        rancher.fields_v1.as_ref().unwrap().0,
        json!({"f:metadata": {"f:annotations": {"f:r/one": {}}}})
    );
    assert_eq!(owners(&mf, "r/one"), ["rancher"]);
    // The creator (no fieldManager, no User-Agent: manager "") owns what it created.
    assert_eq!(owners(&mf, "seed"), [""]);

    // A status write by flanneld: its own entry, subresource status; a label via the status
    // path is owned there too.
    let pp = as_manager("flanneld");
    let n = nodes
        .patch_status(
            "n1",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.168.9.1", "r/one": "mine"}}})),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&n).unwrap();
    let mf = entries(&v);
    let fl = fields_of(&mf, "flanneld", Some("status")).expect("flanneld status entry");
    assert!(owns_annotation(
        Some(fl),
        "flannel.alpha.coreos.com/public-ip"
    ));
    // Changing a key moves it: rancher owned nothing else, so its entry is gone.
    assert_eq!(owners(&mf, "r/one"), ["flanneld"]);
    assert!(fields_of(&mf, "rancher", None).is_none(), "{mf:?}");

    // An unconditional PUT from a stale copy with a kubectl-like User-Agent: the manager is
    // the UA's first segment; removed keys are owned by nobody.
    let mut stale = v.clone();
    stale["metadata"]["annotations"] = json!({"seed": "1", "k/new": "x"});
    stale["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let r = put_with_user_agent(
        &client,
        "/api/v1/nodes/n1",
        "kubectl/v1.33.0 (linux/amd64) kubernetes/abcdef",
        &stale,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mf = entries(&r.json);
    assert_eq!(owners(&mf, "k/new"), ["kubectl"]);
    assert!(
        owners(&mf, "flannel.alpha.coreos.com/public-ip").is_empty(),
        "{mf:?}"
    );
    assert!(owners(&mf, "r/one").is_empty());
    assert!(
        fields_of(&mf, "flanneld", Some("status")).is_none(),
        "{mf:?}"
    );
    assert_eq!(owners(&mf, "seed"), [""]);

    // An explicit fieldManager wins over the User-Agent; an invalid one is 422.
    let long = "m".repeat(129);
    let r = label(
        &client,
        &format!("/api/v1/nodes/n1?fieldManager={long}"),
        "x",
        "1",
    )
    .await;
    assert_status(&r, 422, "Invalid");
    let r = label(
        &client,
        "/api/v1/nodes/n1?fieldManager=ops%20team",
        "x",
        "1",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let mf = entries(&r.json);
    assert_eq!(
        fields_of(&mf, "ops team", None),
        Some(&json!({"f:metadata": {"f:labels": {"f:x": {}}}}))
    );
    // A write that changes nothing leaves managedFields (and the revision) alone.
    let again = label(
        &client,
        "/api/v1/nodes/n1?fieldManager=someone-else",
        "x",
        "1",
    )
    .await;
    assert_eq!(rv_of(&again.json), rv_of(&r.json));
    assert_eq!(entries(&again.json), mf);
    // `[{}]` (or `[]`) resets them; the resetting write is not recorded either.
    let reset = merge_patch(
        &client,
        "/api/v1/nodes/n1?fieldManager=resetter",
        r#"{"metadata":{"managedFields":[{}],"labels":{"y":"1"}}}"#,
    )
    .await;
    assert_eq!(reset.status, 200, "{reset:?}");
    assert!(
        reset.json["metadata"].get("managedFields").is_none(),
        "{reset:?}"
    );
    let next = label(&client, "/api/v1/nodes/n1?fieldManager=after", "z", "1").await;
    let mf = entries(&next.json);
    assert_eq!(mf.len(), 1, "{mf:?}");
    assert_eq!(
        fields_of(&mf, "after", None),
        Some(&json!({"f:metadata": {"f:labels": {"f:z": {}}}}))
    );
}

/// kubectl hides managedFields unless asked.
fn node_json(server: &KubeTestServer, name: &str) -> Value {
    admin_json(
        server,
        &["get", "node", name, "-o", "json", "--show-managed-fields"],
    )
}

fn annotation_owners(server: &KubeTestServer, node: &str, key: &str) -> Vec<String> {
    owners(&entries(&node_json(server, node)), key)
}

#[tokio::test]
async fn kubectl_writes_are_recorded_under_its_field_managers() {
    let server = spawn_nodes(1);
    ok(kubectl(
        &server,
        "admin",
        &["annotate", "node", "node-00000", "example.com/a=1"],
    ));
    assert_eq!(
        annotation_owners(&server, "node-00000", "example.com/a"),
        ["kubectl-annotate"]
    );
    ok(kubectl(
        &server,
        "admin",
        &["label", "node", "node-00000", "example.com/l=1"],
    ));
    let mf = entries(&node_json(&server, "node-00000"));
    assert!(
        fields_of(&mf, "kubectl-label", None)
            .and_then(|f| f["f:metadata"]["f:labels"].get("f:example.com/l"))
            .is_some(),
        "{mf:?}"
    );
    ok(kubectl(
        &server,
        "admin",
        &[
            "annotate",
            "--overwrite",
            "node",
            "node-00000",
            "example.com/a=2",
            "--field-manager=ops",
        ],
    ));
    assert_eq!(
        annotation_owners(&server, "node-00000", "example.com/a"),
        ["ops"]
    );
    let mf = entries(&node_json(&server, "node-00000"));
    assert!(mf.iter().all(|e| e.operation.as_deref() == Some("Update")));
}

#[tokio::test]
async fn clobber_by_a_named_field_manager_takes_flannels_keys_from_flanneld() {
    let server = spawn(frs_testsupport::kube_testserver::TestServerOptions {
        nodes: 2,
        realistic: true,
        ..Default::default()
    });
    let prefix = "flannel.alpha.coreos.com/";
    let client = client(&server, "admin").await;
    let before = get(&client, "/api/v1/nodes/node-00001").await.json;
    let mf = entries(&before);
    assert_eq!(owners(&mf, &format!("{prefix}public-ip")), ["flanneld"]);

    // The stale copy keeps everything else and adds a key of the clobberer's own.
    let mut annotations: serde_json::Map<String, Value> = before["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .clone();
    annotations.retain(|k, _| !k.starts_with(prefix));
    annotations.insert("cattle.io/status".into(), json!("{}"));
    let annotations = annotations
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
        .collect();
    server
        .clobber_as(
            "node-00001",
            &Clobber::Annotations(annotations),
            Some("rancher"),
        )
        .unwrap();
    let after = get(&client, "/api/v1/nodes/node-00001").await.json;
    let mf = entries(&after);
    for key in [
        "public-ip",
        "backend-data",
        "backend-type",
        "kube-subnet-manager",
    ] {
        assert!(
            owners(&mf, &format!("{prefix}{key}")).is_empty(),
            "{key}: {mf:?}"
        );
    }
    assert_eq!(owners(&mf, "cattle.io/status"), ["rancher"]);
    // flanneld still owns its NetworkUnavailable condition.
    let fl = fields_of(&mf, "flanneld", Some("status")).expect("flanneld keeps its entry");
    assert!(fl.pointer("/f:status/f:conditions").is_some(), "{fl}");
    assert!(fl.get("f:metadata").is_none(), "{fl}");
    // The other node is untouched.
    let other = get(&client, "/api/v1/nodes/node-00000").await.json;
    assert_eq!(
        owners(&entries(&other), &format!("{prefix}public-ip")),
        ["flanneld"]
    );
    // A clobber that names no manager is recorded as "clobber"; one that only removes keys
    // leaves no entry of its own (as upstream: nothing set, nothing owned).
    server
        .clobber(
            "node-00000",
            &Clobber::Annotations([("mine".to_string(), "1".to_string())].into()),
        )
        .unwrap();
    let other = get(&client, "/api/v1/nodes/node-00000").await.json;
    assert_eq!(owners(&entries(&other), "mine"), ["clobber"]);
    server
        .clobber("node-00000", &Clobber::DropAnnotationPrefix("mine".into()))
        .unwrap();
    let other = get(&client, "/api/v1/nodes/node-00000").await.json;
    let mf = entries(&other);
    assert!(fields_of(&mf, "clobber", None).is_none(), "{mf:?}");
}
