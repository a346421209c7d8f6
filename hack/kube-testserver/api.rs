//! The Kubernetes API surface: discovery, Nodes (list/watch/get/create/update/patch/delete and
//! the status subresource), Pods (get), plus the middleware doing authentication,
//! authorization, fault injection and request logging.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, DeleteOptions,
    GroupVersionForDiscovery, ServerAddressByClientCIDR, Status, StatusDetails,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, Query, WatchGuard, lock};
use crate::auth::{self, RequestInfo};
use crate::errors::ApiError;
use crate::faults::{LogEntry, MAX_LOGGED_BODY, now_ms};
use crate::managed::{self, Writer};
use crate::selector::{FieldSelector, LabelSelector};
use crate::smp;
use crate::store::{
    Broadcast, DeleteOutcome, Event, EventType, RESOURCE, StoredNode, Subresource, watch_line,
};
use crate::table::{self, IncludeObject};

/// Upstream's default max request body (3 MiB) with headroom.
const MAX_BODY: usize = 16 * 1024 * 1024;
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

type Shared = Arc<AppState>;

pub fn router(app: Shared) -> Router {
    crate::events_api::routes(Router::new())
        .route("/version", get(version))
        .route("/healthz", get(ok_text))
        .route("/livez", get(ok_text))
        .route("/readyz", get(ok_text))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_v1_resources))
        .route("/apis", get(api_groups))
        .route("/apis/events.k8s.io", get(events_group))
        .route("/apis/events.k8s.io/v1", get(events_v1_resources))
        .route(
            "/api/v1/nodes",
            get(nodes_collection_get)
                .post(create_node)
                .delete(delete_collection),
        )
        .route(
            "/api/v1/nodes/{name}",
            get(get_node)
                .put(put_node)
                .patch(patch_node)
                .delete(delete_node),
        )
        .route(
            "/api/v1/nodes/{name}/status",
            get(get_node_status)
                .put(put_node_status)
                .patch(patch_node_status),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route("/api/v1/pods", get(list_pods))
        .fallback(|| async { ApiError::path_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(app.clone(), api_middleware))
        .with_state(app)
}

async fn api_middleware(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let info = RequestInfo::parse(&method, &path, &query.0);
    let time_ms = now_ms();

    let body_bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(413, "RequestEntityTooLarge", "request body too large")
                .into_response();
        }
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let identity = auth::authenticate(&app.identities, authorization).cloned();
    let mut injected = false;

    let response = 'resp: {
        let Some(identity) = identity.as_ref() else {
            if auth::is_public_path(&path) {
                break 'resp next
                    .run(Request::from_parts(parts, Body::from(body_bytes.clone())))
                    .await;
            }
            break 'resp ApiError::unauthorized().into_response();
        };
        if !auth::allows(identity, &info) {
            break 'resp auth::forbidden(identity, &info).into_response();
        }
        let action = lock(&app.faults).check(&method, &path, &info, Some(&identity.id));
        if let Some(action) = action {
            if let Some(delay) = action.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(err) = action.error {
                injected = true;
                break 'resp err.into_response();
            }
        }
        next.run(Request::from_parts(parts, Body::from(body_bytes.clone())))
            .await
    };

    let body = if body_bytes.is_empty() {
        None
    } else {
        let cut = &body_bytes[..body_bytes.len().min(MAX_LOGGED_BODY)];
        Some(String::from_utf8_lossy(cut).into_owned())
    };
    lock(&app.log).push(LogEntry {
        seq: 0,
        time_ms,
        method,
        path: path_and_query,
        content_type,
        body,
        code: response.status().as_u16(),
        identity: identity.as_ref().map(|i| i.id.clone()),
        user: identity.as_ref().map(|i| i.user.clone()),
        verb: info.verb,
        resource: info.resource,
        name: info.name,
        injected,
    });
    response
}

pub fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (code, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn typed_json<T: Serialize>(code: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => json_response(code, b),
        Err(e) => ApiError::internal(format!("encoding response: {e}")).into_response(),
    }
}

async fn ok_text() -> &'static str {
    "ok"
}

async fn version() -> Response {
    typed_json(
        StatusCode::OK,
        &Info {
            major: "1".into(),
            minor: "33".into(),
            git_version: "v1.33.0-kube-testserver".into(),
            git_commit: "0000000000000000000000000000000000000000".into(),
            git_tree_state: "clean".into(),
            build_date: "2025-01-01T00:00:00Z".into(),
            go_version: "n/a (kube-testserver, Rust)".into(),
            compiler: "rustc".into(),
            platform: "linux/amd64".into(),
            ..Default::default()
        },
    )
}

async fn api_versions(State(app): State<Shared>) -> Response {
    let addr = lock(&app.settings.public_addr).clone();
    typed_json(
        StatusCode::OK,
        &APIVersions {
            versions: vec!["v1".into()],
            server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
                client_cidr: "0.0.0.0/0".into(),
                server_address: addr,
            }],
        },
    )
}

fn events_api_group() -> APIGroup {
    let v1 = GroupVersionForDiscovery {
        group_version: "events.k8s.io/v1".into(),
        version: "v1".into(),
    };
    APIGroup {
        name: "events.k8s.io".into(),
        versions: vec![v1.clone()],
        preferred_version: Some(v1),
        server_address_by_client_cidrs: None,
    }
}

async fn api_groups() -> Response {
    typed_json(
        StatusCode::OK,
        &APIGroupList {
            groups: vec![events_api_group()],
        },
    )
}

async fn events_group() -> Response {
    typed_json(StatusCode::OK, &events_api_group())
}

fn events_resource(verbs: &[&str]) -> APIResource {
    APIResource {
        name: "events".into(),
        singular_name: "event".into(),
        namespaced: true,
        kind: "Event".into(),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        short_names: Some(vec!["ev".into()]),
        ..Default::default()
    }
}

async fn events_v1_resources() -> Response {
    typed_json(
        StatusCode::OK,
        &APIResourceList {
            group_version: "events.k8s.io/v1".into(),
            resources: vec![events_resource(&[
                "create", "get", "list", "patch", "update", "watch",
            ])],
        },
    )
}

async fn api_v1_resources() -> Response {
    let verbs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    typed_json(
        StatusCode::OK,
        &APIResourceList {
            group_version: "v1".into(),
            resources: vec![
                APIResource {
                    name: "nodes".into(),
                    singular_name: "node".into(),
                    namespaced: false,
                    kind: "Node".into(),
                    verbs: verbs(&[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ]),
                    short_names: Some(vec!["no".into()]),
                    storage_version_hash: Some("XwShjMxG9Fs=".into()),
                    ..Default::default()
                },
                APIResource {
                    name: "nodes/status".into(),
                    singular_name: String::new(),
                    namespaced: false,
                    kind: "Node".into(),
                    verbs: verbs(&["get", "patch", "update"]),
                    ..Default::default()
                },
                // The same Events, read-only in the core group (what `kubectl get events`
                // and `kubectl describe` read).
                events_resource(&["get", "list", "watch"]),
                APIResource {
                    name: "pods".into(),
                    singular_name: "pod".into(),
                    namespaced: true,
                    kind: "Pod".into(),
                    verbs: verbs(&["get", "list"]),
                    short_names: Some(vec!["po".into()]),
                    ..Default::default()
                },
            ],
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Lists

#[derive(Serialize, Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, last_name: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: format!("{last_name}\u{0}"),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE.encode(json)
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|e| bad(e.to_string()))?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
    if t.v != "meta.k8s.io/v1" {
        return Err(bad(format!(
            "incorrect encoded start resourceVersion (version {})",
            t.v
        )));
    }
    Ok(t)
}

fn parse_rv(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: \"{raw}\"")))
}

struct Selectors {
    label: LabelSelector,
    field: FieldSelector,
}

impl Selectors {
    fn parse(q: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            label: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            field: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.label.is_empty() && self.field.is_empty()
    }

    fn matches(&self, n: &StoredNode) -> bool {
        self.label.matches(&n.labels) && self.field.matches(&n.field_values())
    }
}

async fn nodes_collection_get(State(app): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let q = Query::parse(uri.query());
    let selectors = match Selectors::parse(&q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let table = table::wants_table(accept);
    let include = IncludeObject::parse(q.get("includeObject"));
    let result = if q.flag("watch") {
        watch(app, &q, selectors, table.then_some(include)).await
    } else {
        list(&app, &q, &selectors, table.then_some(include))
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn list(
    app: &Shared,
    q: &Query,
    selectors: &Selectors,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let limit: usize = match q.value("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let cont = q.value("continue");
    let rv = q.value("resourceVersion");
    let rv_match = q.value("resourceVersionMatch");
    let invalid = |msg: &str| ApiError::unprocessable(format!("ListOptions is invalid: {msg}"));
    if let Some(m) = rv_match {
        if cont.is_some() {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv.is_none() {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m != "Exact" && m != "NotOlderThan" {
            return Err(invalid(&format!(
                "resourceVersionMatch: Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
            )));
        }
        if m == "Exact" && rv == Some("0") {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if cont.is_some() && rv.is_some_and(|r| r != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    let token = cont.map(decode_continue).transpose()?;
    let requested_rv = rv.map(parse_rv).transpose()?;

    let (items, snapshot_rv, next, remaining) = {
        let store = lock(&app.store);
        let current = store.rv();
        let snapshot_rv = match (&token, rv_match, requested_rv) {
            (Some(t), _, _) => t.rv,
            (None, Some("Exact"), Some(r)) => r,
            (None, _, Some(r)) if r > current => {
                return Err(ApiError::too_large_resource_version(r, current));
            }
            _ => current,
        };
        let view: Cow<'_, BTreeMap<String, Arc<StoredNode>>> = if snapshot_rv == current {
            Cow::Borrowed(store.current())
        } else {
            match store.snapshot_at(snapshot_rv) {
                Ok(v) => Cow::Owned(v),
                Err(e) if e.code == 410 && token.is_some() => {
                    let mut err = ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    );
                    let start = token
                        .as_ref()
                        .map(|t| t.start.trim_end_matches('\0').to_string())
                        .unwrap_or_default();
                    err.details = None;
                    let inconsistent = encode_continue(current, &start);
                    return Ok(expired_with_continue(err, &inconsistent));
                }
                Err(e) => return Err(e),
            }
        };
        let start = match &token {
            Some(t) => Bound::Included(t.start.clone()),
            None => Bound::Unbounded,
        };
        let mut items: Vec<Arc<StoredNode>> = Vec::new();
        let mut next = None;
        let mut remaining = None;
        if let Some(name) = selectors.field.exact_name().filter(|_| token.is_none()) {
            if let Some(n) = view.get(name).filter(|n| selectors.matches(n)) {
                items.push(n.clone());
            }
        } else {
            let mut iter = view.range::<String, _>((start, Bound::Unbounded));
            for (_, n) in iter.by_ref() {
                if !selectors.matches(n) {
                    continue;
                }
                items.push(n.clone());
                if limit > 0 && items.len() == limit {
                    break;
                }
            }
            if limit > 0 && items.len() == limit {
                if selectors.is_empty() {
                    let left = iter.count();
                    if left > 0 {
                        remaining = Some(left);
                    }
                } else if iter.any(|(_, n)| selectors.matches(n)) {
                    remaining = Some(0);
                }
                if remaining.is_some() {
                    next = items.last().map(|n| encode_continue(snapshot_rv, &n.name));
                }
            }
        }
        (items, snapshot_rv, next, remaining)
    };

    if let Some(include) = table {
        let mut rows = Vec::with_capacity(items.len());
        for n in &items {
            rows.push(table::row(&n.to_node()?, include));
        }
        let t = table::table(rows, &snapshot_rv.to_string(), next.as_deref(), true);
        return Ok(typed_json(StatusCode::OK, &t));
    }
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if let Some(c) = &next {
        metadata["continue"] = json!(c);
        if selectors.is_empty()
            && let Some(r) = remaining
        {
            metadata["remainingItemCount"] = json!(r);
        }
    }
    let total: usize = items.iter().map(|n| n.json.len() + 1).sum();
    let mut body = Vec::with_capacity(total + 256);
    body.extend_from_slice(b"{\"kind\":\"NodeList\",\"apiVersion\":\"v1\",\"metadata\":");
    body.extend_from_slice(&serde_json::to_vec(&metadata).unwrap_or_default());
    body.extend_from_slice(b",\"items\":[");
    for (i, n) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&n.json);
    }
    body.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, body))
}

/// 410 for an expired continue token carries a fresh (inconsistent) token, as upstream does.
fn expired_with_continue(err: ApiError, token: &str) -> Response {
    let mut status = err.to_status();
    status.metadata.continue_ = Some(token.to_string());
    typed_json(StatusCode::GONE, &status)
}

// ---------------------------------------------------------------------------------------------
// Watch

fn bookmark_line(rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    let obj = json!({"kind": "Node", "apiVersion": "v1", "metadata": meta});
    watch_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

pub fn error_line(err: &ApiError) -> Bytes {
    watch_line("ERROR", &err.to_json())
}

pub fn status_watch_response(lines: Vec<Bytes>) -> Response {
    let body: Vec<u8> = lines.iter().flat_map(|b| b.iter().copied()).collect();
    json_response(StatusCode::OK, body)
}

struct WatchStream {
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Broadcast>,
    selectors: Selectors,
    allow_bookmarks: bool,
    table: Option<IncludeObject>,
    table_columns_sent: bool,
    deadline: Instant,
    close: CancellationToken,
    last_rv: u64,
    _guard: WatchGuard,
}

impl WatchStream {
    /// The line to send for `ev`, honouring selector transitions like the watch cache:
    /// entering the selection is ADDED, leaving it is DELETED.
    fn render(&mut self, ev: &Event) -> Option<Bytes> {
        let (kind, obj): (EventType, Cow<'_, StoredNode>) = if self.selectors.is_empty() {
            (ev.kind, Cow::Borrowed(&*ev.obj))
        } else {
            let cur = self.selectors.matches(&ev.obj);
            match ev.kind {
                EventType::Added | EventType::Deleted if cur => (ev.kind, Cow::Borrowed(&*ev.obj)),
                EventType::Added | EventType::Deleted => return None,
                EventType::Modified => {
                    let prev = ev.prev.as_ref().is_some_and(|p| self.selectors.matches(p));
                    match (prev, cur) {
                        (true, true) => (EventType::Modified, Cow::Borrowed(&*ev.obj)),
                        (false, true) => (EventType::Added, Cow::Borrowed(&*ev.obj)),
                        (true, false) => {
                            // Upstream sends the previous object stamped with the event's rv.
                            let prev = ev.prev.as_ref()?;
                            let mut node = prev.to_node().ok()?;
                            node.metadata.resource_version = Some(ev.rv.to_string());
                            let json = serde_json::to_vec(&node).ok()?;
                            (
                                EventType::Deleted,
                                Cow::Owned(StoredNode {
                                    name: prev.name.clone(),
                                    rv: ev.rv,
                                    labels: prev.labels.clone(),
                                    unschedulable: prev.unschedulable,
                                    json: json.into(),
                                }),
                            )
                        }
                        (false, false) => return None,
                    }
                }
            }
        };
        if let Some(include) = self.table {
            let node = obj.to_node().ok()?;
            let t = table::table(
                vec![table::row(&node, include)],
                &ev.rv.to_string(),
                None,
                !self.table_columns_sent,
            );
            self.table_columns_sent = true;
            return Some(watch_line(kind.as_str(), &serde_json::to_vec(&t).ok()?));
        }
        if kind == ev.kind && matches!(obj, Cow::Borrowed(_)) {
            return Some(ev.line.clone());
        }
        Some(watch_line(kind.as_str(), &obj.json))
    }

    fn initial_line(&mut self, n: &StoredNode) -> Option<Bytes> {
        if let Some(include) = self.table {
            let node = n.to_node().ok()?;
            let t = table::table(
                vec![table::row(&node, include)],
                &n.rv.to_string(),
                None,
                !self.table_columns_sent,
            );
            self.table_columns_sent = true;
            return Some(watch_line("ADDED", &serde_json::to_vec(&t).ok()?));
        }
        Some(watch_line("ADDED", &n.json))
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            tokio::select! {
                biased;
                _ = self.close.cancelled() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return None,
                msg = self.rx.recv() => match msg {
                    Ok(Broadcast::Event(ev)) => {
                        if ev.rv <= self.last_rv {
                            continue;
                        }
                        self.last_rv = ev.rv;
                        if let Some(line) = self.render(&ev) {
                            return Some(line);
                        }
                    }
                    Ok(Broadcast::Bookmark(rv)) => {
                        if self.allow_bookmarks && self.table.is_none() && rv >= self.last_rv {
                            self.last_rv = rv;
                            return Some(bookmark_line(rv, false));
                        }
                    }
                    // A watcher too slow for the broadcast buffer is closed, as upstream closes
                    // slow watchers; the client resumes from its last resourceVersion.
                    Err(broadcast::error::RecvError::Lagged(_)) => return None,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

async fn watch(
    app: Shared,
    q: &Query,
    selectors: Selectors,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let allow_bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = match q.value("sendInitialEvents") {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid sendInitialEvents: {other:?}"
            )));
        }
    };
    let rv_match = q.value("resourceVersionMatch");
    let invalid = |msg: &str| ApiError::unprocessable(format!("ListOptions is invalid: {msg}"));
    if send_initial.is_some() {
        if rv_match != Some("NotOlderThan") {
            return Err(invalid(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ));
        }
        if !allow_bookmarks {
            return Err(invalid(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    } else if rv_match.is_some() {
        return Err(invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let timeout = match q.value("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
        ),
        None => app.settings.default_watch_timeout,
    };
    let requested = q.value("resourceVersion").map(parse_rv).transpose()?;

    let (initial, events, rx, start_rv, end_bookmark) = {
        let store = lock(&app.store);
        let current = store.rv();
        // (resume point, send current state first?, initial-events-end bookmark?)
        let (from, with_initial, end_bookmark) = match (send_initial, requested) {
            (Some(true), Some(r)) if r > current => {
                return Err(ApiError::too_large_resource_version(r, current));
            }
            (Some(true), _) => (current, true, true),
            (Some(false), None | Some(0)) => (current, false, false),
            (Some(false), Some(r)) => (r, false, false),
            (None, None | Some(0)) => (current, true, false),
            (None, Some(r)) => (r, false, false),
        };
        match store.watch_from(from) {
            Ok((events, rx)) => {
                let initial: Vec<Arc<StoredNode>> = if with_initial {
                    store
                        .current()
                        .values()
                        .filter(|n| selectors.matches(n))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                (initial, events, rx, from, end_bookmark)
            }
            // Upstream answers 200 and delivers 410 as a watch ERROR event.
            Err(e) if e.code == 410 => return Ok(status_watch_response(vec![error_line(&e)])),
            Err(e) => return Err(e),
        }
    };

    let close = lock(&app.watch_close).clone();
    let mut stream = WatchStream {
        pending: VecDeque::new(),
        rx,
        selectors,
        allow_bookmarks,
        table,
        table_columns_sent: false,
        deadline: Instant::now() + timeout,
        close,
        last_rv: start_rv,
        _guard: WatchGuard::new(app.clone()),
    };
    for n in &initial {
        if let Some(line) = stream.initial_line(n) {
            stream.pending.push_back(line);
        }
    }
    if end_bookmark {
        stream.pending.push_back(bookmark_line(start_rv, true));
    }
    for ev in &events {
        stream.last_rv = ev.rv;
        if let Some(line) = stream.render(ev) {
            stream.pending.push_back(line);
        }
    }
    let body = futures::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|b| (Ok::<Bytes, Infallible>(b), s))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Single objects

fn object_response(code: StatusCode, n: &StoredNode, headers: &HeaderMap, q: &Query) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if table::wants_table(accept) {
        return match n.to_node() {
            Ok(node) => {
                let t = table::table(
                    vec![table::row(
                        &node,
                        IncludeObject::parse(q.get("includeObject")),
                    )],
                    &n.rv.to_string(),
                    None,
                    true,
                );
                typed_json(code, &t)
            }
            Err(e) => e.into_response(),
        };
    }
    json_response(code, n.json.to_vec())
}

async fn get_node(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = Query::parse(uri.query());
    let node = lock(&app.store).get(&name);
    match node {
        Some(n) => object_response(StatusCode::OK, &n, &headers, &q),
        None => ApiError::not_found(RESOURCE, &name).into_response(),
    }
}

async fn get_node_status(
    state: State<Shared>,
    path: Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    get_node(state, path, headers, uri).await
}

pub fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.value("dryRun") {
        None => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::unprocessable(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

/// The managedFields identity of a write: `fieldManager`, else the User-Agent's prefix.
pub fn writer(
    headers: &HeaderMap,
    q: &Query,
    sub: Subresource,
    options_kind: &str,
) -> Result<Writer, ApiError> {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let manager = managed::manager_for(q.get("fieldManager"), ua, options_kind)?;
    let sub = match sub {
        Subresource::Main => None,
        Subresource::Status => Some("status"),
    };
    Ok(Writer::new(manager, sub))
}

pub fn require_json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base != "application/json" && base != "*/*" {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json (kube-testserver does not decode {base})"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized or invalid JSON: {e}"
        ))
    })
}

async fn create_node(
    State(app): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let value = require_json_body(&headers, &body)?;
        let node: Node = serde_json::from_value(value)
            .map_err(|e| ApiError::bad_request(format!("error decoding Node: {e}")))?;
        let dry = dry_run(&q)?;
        let w = writer(&headers, &q, Subresource::Main, "CreateOptions")?;
        lock(&app.store).create_as(node, dry, Some(&w))
    })();
    match result {
        Ok(n) => object_response(StatusCode::CREATED, &n, &headers, &q),
        Err(e) => e.into_response(),
    }
}

fn do_put(
    app: &Shared,
    name: &str,
    sub: Subresource,
    headers: &HeaderMap,
    uri: &Uri,
    body: &Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let value = require_json_body(headers, body)?;
        let dry = dry_run(&q)?;
        let w = writer(headers, &q, sub, "UpdateOptions")?;
        lock(&app.store).update_as(name, sub, dry, Some(&w), move |_| Ok(value))
    })();
    match result {
        Ok(n) => object_response(StatusCode::OK, &n, headers, &q),
        Err(e) => e.into_response(),
    }
}

async fn put_node(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    do_put(&app, &name, Subresource::Main, &headers, &uri, &body)
}

async fn put_node_status(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    do_put(&app, &name, Subresource::Status, &headers, &uri, &body)
}

#[derive(Clone, Copy)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
}

pub fn patch_type(headers: &HeaderMap) -> Result<PatchKind, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            Err(ApiError::unsupported_media_type(
                "server-side apply (application/apply-patch+yaml) is not supported by kube-testserver; use application/strategic-merge-patch+json, application/merge-patch+json or application/json-patch+json",
            ))
        }
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
        ))),
    }
}

/// Applies a patch document of the given type to the stored object's JSON.
pub fn apply_patch(ptype: PatchKind, body: &[u8], mut current: Value) -> Result<Value, ApiError> {
    match ptype {
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(&mut current, &patch).map_err(|e| {
                ApiError::unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            Ok(current)
        }
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding merge patch: {e}")))?;
            json_patch::merge(&mut current, &patch);
            Ok(current)
        }
        PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("error decoding strategic merge patch: {e}"))
            })?;
            smp::apply_node_patch(&current, &patch)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        }
    }
}

fn do_patch(
    app: &Shared,
    name: &str,
    sub: Subresource,
    headers: &HeaderMap,
    uri: &Uri,
    body: &Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let ptype = patch_type(headers)?;
        let dry = dry_run(&q)?;
        let body = body.clone();
        let w = writer(headers, &q, sub, "PatchOptions")?;
        lock(&app.store).update_as(name, sub, dry, Some(&w), move |current| {
            apply_patch(ptype, &body, current)
        })
    })();
    match result {
        Ok(n) => object_response(StatusCode::OK, &n, headers, &q),
        Err(e) => e.into_response(),
    }
}

async fn patch_node(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    do_patch(&app, &name, Subresource::Main, &headers, &uri, &body)
}

async fn patch_node_status(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    do_patch(&app, &name, Subresource::Status, &headers, &uri, &body)
}

fn delete_options(body: &Bytes) -> Result<Option<DeleteOptions>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))
}

fn success_status(name: &str, uid: Option<String>) -> Status {
    Status {
        status: Some("Success".into()),
        details: Some(StatusDetails {
            name: Some(name.to_string()),
            kind: Some(RESOURCE.into()),
            uid,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn delete_node(
    State(app): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let opts = delete_options(&body)?;
        let mut dry = dry_run(&q)?;
        if let Some(o) = &opts
            && o.dry_run
                .as_ref()
                .is_some_and(|d| d.iter().any(|x| x == "All"))
        {
            dry = true;
        }
        let pre = opts.as_ref().and_then(|o| o.preconditions.clone());
        lock(&app.store).delete(&name, pre.as_ref(), dry)
    })();
    match result {
        Ok(DeleteOutcome::Deleted(n)) => {
            let uid = n.to_node().ok().and_then(|n| n.metadata.uid);
            typed_json(StatusCode::OK, &success_status(&name, uid))
        }
        Ok(DeleteOutcome::Pending(n)) => object_response(StatusCode::OK, &n, &headers, &q),
        Err(e) => e.into_response(),
    }
}

async fn delete_collection(State(app): State<Shared>, uri: Uri) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let selectors = Selectors::parse(&q)?;
        let dry = dry_run(&q)?;
        let mut store = lock(&app.store);
        let names: Vec<String> = store
            .current()
            .values()
            .filter(|n| selectors.matches(n))
            .map(|n| n.name.clone())
            .collect();
        let mut deleted = Vec::new();
        for name in names {
            match store.delete(&name, None, dry)? {
                DeleteOutcome::Deleted(n) | DeleteOutcome::Pending(n) => deleted.push(n),
            }
        }
        Ok::<_, ApiError>((deleted, store.rv()))
    })();
    match result {
        Ok((deleted, rv)) => {
            let mut body = format!(
                "{{\"kind\":\"NodeList\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"{rv}\"}},\"items\":["
            )
            .into_bytes();
            for (i, n) in deleted.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&n.json);
            }
            body.extend_from_slice(b"]}");
            json_response(StatusCode::OK, body)
        }
        Err(e) => e.into_response(),
    }
}

async fn get_pod(State(app): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let pod = lock(&app.pods).get(&(ns, name.clone())).cloned();
    match pod {
        Some(p) => typed_json(StatusCode::OK, &p),
        None => ApiError::not_found("pods", &name).into_response(),
    }
}

/// Pods across namespaces, selected by `spec.nodeName` and `status.phase` (`=`/`!=`), as
/// `kubectl describe node` asks for its "Non-terminated Pods".
async fn list_pods(State(app): State<Shared>, uri: Uri) -> Response {
    let q = Query::parse(uri.query());
    let mut terms = Vec::new();
    for term in q
        .get("fieldSelector")
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let (field, negate, value) = match term.split_once("!=") {
            Some((f, v)) => (f, true, v),
            None => match term.split_once('=') {
                Some((f, v)) => (f.trim_end_matches('='), false, v),
                None => {
                    return ApiError::bad_request(format!("invalid selector: '{term}'"))
                        .into_response();
                }
            },
        };
        let pointer = match field {
            "spec.nodeName" => "/spec/nodeName",
            "status.phase" => "/status/phase",
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            other => {
                return ApiError::bad_request(format!("field label not supported: {other}"))
                    .into_response();
            }
        };
        terms.push((pointer, negate, value.to_string()));
    }
    let (pods, rv): (Vec<Value>, u64) = {
        let pods = lock(&app.pods);
        let selected = pods
            .values()
            .filter(|p| {
                terms.iter().all(|(ptr, negate, want)| {
                    (p.pointer(ptr).and_then(Value::as_str).unwrap_or("") == want) != *negate
                })
            })
            .cloned()
            .collect();
        (selected, lock(&app.store).rv())
    };
    typed_json(
        StatusCode::OK,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": pods}),
    )
}
