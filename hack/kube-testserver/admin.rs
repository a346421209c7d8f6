//! The admin API (separate plain-HTTP listener, JSON, no auth): synthetic nodes, fault
//! injection, watch control, outages, history compaction, clobbering, churn and the request
//! log. Every endpoint is documented in README.md next to this file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, ChurnState, Query, lock};
use crate::errors::ApiError;
use crate::faults::{Fault, LogEntry, now_ms};
use crate::managed::Writer;
use crate::nodegen::{self, GenerateSpec};
use crate::store::{Subresource, now};

type Shared = Arc<AppState>;

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/admin/state", get(state))
        .route("/admin/nodes/generate", post(generate))
        .route("/admin/pods", post(create_pod))
        .route(
            "/admin/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/admin/faults/{id}", delete(remove_fault))
        .route("/admin/watches", get(watches))
        .route("/admin/watches/close", post(close_watches))
        .route("/admin/bookmarks", post(send_bookmark))
        .route("/admin/outage", post(outage))
        .route("/admin/history/compact", post(compact))
        .route("/admin/clobber", post(clobber))
        .route("/admin/churn", post(start_churn).delete(stop_churn))
        .route("/admin/requestlog", get(get_log).delete(reset_log))
        .route("/admin/events", get(events_summary))
        .fallback(|| async { admin_error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(app)
}

fn json_body(code: StatusCode, v: Value) -> Response {
    let mut resp = (code, v.to_string()).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn admin_error(code: StatusCode, msg: impl Into<String>) -> Response {
    json_body(code, json!({"error": msg.into()}))
}

fn ok(v: Value) -> Response {
    json_body(StatusCode::OK, v)
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Box<Response>> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        Box::new(admin_error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        ))
    })
}

fn api_error(e: ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_body(code, json!({"error": e.message, "status": e.to_status()}))
}

async fn state(State(app): State<Shared>) -> Response {
    let (rv, compacted, nodes, history) = {
        let s = lock(&app.store);
        (s.rv(), s.compacted_rv(), s.len(), s.history_len())
    };
    let outage_ms = lock(&app.outage_until)
        .map(|until| until.saturating_duration_since(Instant::now()).as_millis() as u64)
        .unwrap_or(0);
    let churn = lock(&app.churn).as_ref().map(|c| c.per_second);
    ok(json!({
        "resourceVersion": rv.to_string(),
        "compactedResourceVersion": compacted.to_string(),
        "nodes": nodes,
        "historyLen": history,
        "openWatches": app.open_watches.load(Ordering::SeqCst),
        "outageRemainingMs": outage_ms,
        "churnPerSecond": churn,
        "faults": lock(&app.faults).rules.len(),
        "requestLogNextSeq": lock(&app.log).next_seq(),
        "events": lock(&app.store).events.len(),
    }))
}

/// Creates `spec.count` nodes; returns how many were created.
pub fn generate_nodes(app: &AppState, spec: &GenerateSpec) -> Result<(usize, u64), String> {
    let mut created = 0;
    for i in 0..spec.count {
        let node = nodegen::node(spec, spec.start_index + i)?;
        let mut store = lock(&app.store);
        store
            .create(node, false)
            .map_err(|e| format!("after {created} nodes: {}", e.message))?;
        created += 1;
    }
    Ok((created, lock(&app.store).rv()))
}

async fn generate(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: GenerateSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let first = format!("{}{:05}", spec.prefix, spec.start_index);
    let last = format!(
        "{}{:05}",
        spec.prefix,
        spec.start_index + spec.count.saturating_sub(1)
    );
    let app2 = app.clone();
    let result = tokio::task::spawn_blocking(move || generate_nodes(&app2, &spec)).await;
    match result {
        Ok(Ok((created, rv))) => ok(json!({
            "created": created,
            "firstName": first,
            "lastName": last,
            "resourceVersion": rv.to_string(),
        })),
        Ok(Err(e)) => admin_error(StatusCode::CONFLICT, e),
        Err(e) => admin_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodSpec {
    namespace: String,
    name: String,
    node_name: String,
}

async fn create_pod(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: PodSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pod = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": crate::store::random_uid(),
            "resourceVersion": lock(&app.store).rv().to_string(),
            "creationTimestamp": serde_json::to_value(now()).unwrap_or(Value::Null),
        },
        "spec": {"nodeName": spec.node_name, "containers": [{"name": "kube-flannel", "image": "docker.io/flannel/flannel:v0.26.7"}]},
        "status": {"phase": "Running"},
    });
    lock(&app.pods).insert((spec.namespace, spec.name), pod.clone());
    ok(pod)
}

async fn list_faults(State(app): State<Shared>) -> Response {
    ok(json!({"faults": lock(&app.faults).rules}))
}

async fn add_fault(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: Fault = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Err(e) = spec.validate() {
        return admin_error(StatusCode::BAD_REQUEST, e);
    }
    let id = lock(&app.faults).add(spec);
    ok(json!({"id": id}))
}

async fn clear_faults(State(app): State<Shared>) -> Response {
    lock(&app.faults).clear();
    ok(json!({"cleared": true}))
}

async fn remove_fault(State(app): State<Shared>, Path(id): Path<u64>) -> Response {
    if lock(&app.faults).remove(id) {
        ok(json!({"removed": id}))
    } else {
        admin_error(StatusCode::NOT_FOUND, format!("no fault with id {id}"))
    }
}

async fn watches(State(app): State<Shared>) -> Response {
    ok(json!({"open": app.open_watches.load(Ordering::SeqCst)}))
}

async fn close_watches(State(app): State<Shared>) -> Response {
    let open = app.open_watches.load(Ordering::SeqCst);
    let old = std::mem::replace(&mut *lock(&app.watch_close), CancellationToken::new());
    old.cancel();
    ok(json!({"closed": open}))
}

async fn send_bookmark(State(app): State<Shared>) -> Response {
    let s = lock(&app.store);
    s.bookmark();
    ok(json!({"resourceVersion": s.rv().to_string()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutageSpec {
    seconds: f64,
}

async fn outage(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: OutageSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !(spec.seconds > 0.0 && spec.seconds <= 3600.0) {
        return admin_error(StatusCode::BAD_REQUEST, "seconds must be in (0, 3600]");
    }
    let d = Duration::from_secs_f64(spec.seconds);
    *lock(&app.outage_until) = Some(Instant::now() + d);
    if app.outage_tx.send(d).is_err() {
        return admin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "API listener is not running",
        );
    }
    ok(json!({"seconds": spec.seconds}))
}

async fn compact(State(app): State<Shared>) -> Response {
    let rv = lock(&app.store).compact_all();
    ok(json!({"compactedResourceVersion": rv.to_string()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClobberSpec {
    node: String,
    /// Replace the annotations with exactly this map.
    annotations: Option<BTreeMap<String, String>>,
    /// PUT the whole object as it was at this resourceVersion (from retained history).
    at_resource_version: Option<String>,
    /// A copy read before a writer added keys with this prefix: current minus those keys.
    drop_annotation_prefix: Option<String>,
    /// The field manager the write is recorded under in managedFields.
    field_manager: Option<String>,
}

/// managedFields manager of clobbers that name none.
const CLOBBER_MANAGER: &str = "clobber";

const CLOBBER_USER: &str = "kube-testserver:clobber";

async fn clobber(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: ClobberSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let modes = [
        spec.annotations.is_some(),
        spec.at_resource_version.is_some(),
        spec.drop_annotation_prefix.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "give exactly one of annotations, atResourceVersion, dropAnnotationPrefix",
        );
    }
    let name = spec.node.clone();
    let mut store = lock(&app.store);
    let stale: Result<Value, ApiError> = (|| {
        if let Some(rv) = &spec.at_resource_version {
            let at: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            let view = store.snapshot_at(at)?;
            let old = view
                .get(&name)
                .ok_or_else(|| ApiError::not_found("nodes", &name))?;
            return old.to_value();
        }
        let current = store
            .get(&name)
            .ok_or_else(|| ApiError::not_found("nodes", &name))?;
        let mut v = current.to_value()?;
        let annotations: BTreeMap<String, String> =
            match (&spec.annotations, &spec.drop_annotation_prefix) {
                (Some(a), _) => a.clone(),
                (None, Some(prefix)) => {
                    let existing: BTreeMap<String, String> =
                        serde_json::from_value(v["metadata"]["annotations"].clone())
                            .unwrap_or_default();
                    existing
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with(prefix.as_str()))
                        .collect()
                }
                (None, None) => BTreeMap::new(),
            };
        v["metadata"]["annotations"] = json!(annotations);
        Ok(v)
    })();
    let mut stale = match stale {
        Ok(v) => v,
        Err(e) => return api_error(e),
    };
    // An unconditional update: no resourceVersion precondition.
    if let Some(meta) = stale.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let body_text = stale.to_string();
    let sent = stale.clone();
    let writer = Writer::new(
        spec.field_manager.as_deref().unwrap_or(CLOBBER_MANAGER),
        None,
    );
    let result = store.update_as(&name, Subresource::Main, false, Some(&writer), move |_| {
        Ok(sent)
    });
    drop(store);
    let code = result.as_ref().map(|_| 200).unwrap_or_else(|e| e.code);
    lock(&app.log).push(LogEntry {
        seq: 0,
        time_ms: now_ms(),
        method: "PUT".into(),
        path: format!("/api/v1/nodes/{name}"),
        content_type: Some("application/json".into()),
        body: Some(body_text),
        code,
        identity: Some("clobber".into()),
        user: Some(CLOBBER_USER.into()),
        verb: "update".into(),
        resource: "nodes".into(),
        name: Some(name.clone()),
        injected: false,
    });
    match result {
        Ok(n) => {
            let annotations = n
                .to_node()
                .ok()
                .and_then(|n| n.metadata.annotations)
                .unwrap_or_default();
            ok(
                json!({"code": 200, "resourceVersion": n.rv.to_string(), "annotations": annotations}),
            )
        }
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChurnSpec {
    per_second: f64,
}

/// One heartbeat-like status write: every condition's lastHeartbeatTime moves forward by at
/// least a second, so the write is never a no-op.
pub fn heartbeat(app: &AppState, name: &str) -> Result<(), ApiError> {
    let mut store = lock(&app.store);
    // Recorded as the kubelet's status writes are.
    let kubelet = Writer::new("kubelet", Some("status"));
    store
        .update_as(name, Subresource::Status, false, Some(&kubelet), |mut v| {
            let now_s = k8s_openapi::jiff::Timestamp::now().as_second();
            if let Some(conds) = v
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
            {
                for c in conds {
                    let prev = c
                        .get("lastHeartbeatTime")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                        .map(|t| t.as_second())
                        .unwrap_or(0);
                    let next = now_s.max(prev + 1);
                    if let Ok(ts) = k8s_openapi::jiff::Timestamp::from_second(next) {
                        c["lastHeartbeatTime"] = json!(ts.to_string());
                    }
                }
            }
            Ok(v)
        })
        .map(|_| ())
}

pub fn start_churn_task(app: &Shared, per_second: f64) {
    let app2 = app.clone();
    let task = tokio::spawn(async move {
        // Batch writes on a 10 ms tick for high rates; carry the fractional remainder.
        let tick = Duration::from_millis(10);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = 0.0f64;
        loop {
            interval.tick().await;
            budget += per_second * tick.as_secs_f64();
            let n = budget.floor() as usize;
            if n == 0 {
                continue;
            }
            budget -= n as f64;
            let names = lock(&app2.store).names();
            if names.is_empty() {
                continue;
            }
            for _ in 0..n {
                let name = &names[rand::random_range(0..names.len())];
                if let Err(e) = heartbeat(&app2, name) {
                    tracing::debug!(node = %name, error = %e.message, "churn write failed");
                }
            }
        }
    });
    if let Some(old) = lock(&app.churn).replace(ChurnState { per_second, task }) {
        old.task.abort();
    }
}

async fn start_churn(State(app): State<Shared>, body: Bytes) -> Response {
    let spec: ChurnSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !(spec.per_second > 0.0 && spec.per_second <= 100_000.0) {
        return admin_error(StatusCode::BAD_REQUEST, "perSecond must be in (0, 100000]");
    }
    start_churn_task(&app, spec.per_second);
    ok(json!({"perSecond": spec.per_second}))
}

async fn stop_churn(State(app): State<Shared>) -> Response {
    let stopped = lock(&app.churn).take().map(|c| {
        c.task.abort();
        c.per_second
    });
    ok(json!({"stopped": stopped.is_some()}))
}

async fn get_log(State(app): State<Shared>, uri: Uri) -> Response {
    let q = Query::parse(uri.query());
    let since: u64 = q.value("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let log = lock(&app.log);
    let entries: Vec<&LogEntry> = log
        .entries
        .iter()
        .filter(|e| e.seq >= since)
        .filter(|e| {
            q.value("method")
                .is_none_or(|m| m.eq_ignore_ascii_case(&e.method))
        })
        .filter(|e| q.value("verb").is_none_or(|v| v == e.verb))
        .filter(|e| q.value("resource").is_none_or(|r| r == e.resource))
        .filter(|e| q.value("name").is_none_or(|n| e.name.as_deref() == Some(n)))
        .filter(|e| {
            q.value("identity")
                .is_none_or(|i| e.identity.as_deref() == Some(i))
        })
        .filter(|e| q.value("pathPrefix").is_none_or(|p| e.path.starts_with(p)))
        .collect();
    ok(json!({"entries": entries, "nextSeq": log.next_seq(), "dropped": log.dropped}))
}

async fn events_summary(State(app): State<Shared>) -> Response {
    ok(crate::events_api::admin_summary(&app))
}

async fn reset_log(State(app): State<Shared>) -> Response {
    let mut log = lock(&app.log);
    log.reset();
    ok(json!({"nextSeq": log.next_seq()}))
}
