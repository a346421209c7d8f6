//! The HTTP side of Events: `events.k8s.io/v1` (create, get, list, watch, patch, update) and
//! the read-only `core/v1` view of the same store (get, list, watch), both namespaced, with
//! printed Tables for kubectl.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use k8s_openapi::api::events::v1::Event as V1Event;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{
    apply_patch, dry_run, error_line, json_response, patch_type, require_json_body,
    status_watch_response, writer,
};
use crate::app::{AppState, Query, WatchGuard, lock};
use crate::errors::ApiError;
use crate::events::{
    self, EventChange, EventFieldSelector, StoredEvent, V1_GROUP, Version, from_v1, to_v1,
};
use crate::managed;
use crate::selector::LabelSelector;
use crate::store::{EventType, Subresource, generate_name_suffix, now, random_uid, watch_line};
use crate::table::{self, IncludeObject};

type Shared = Arc<AppState>;

pub fn routes(router: Router<Shared>) -> Router<Shared> {
    router
        .route("/api/v1/events", get(core_list_all))
        .route("/api/v1/namespaces/{ns}/events", get(core_list))
        .route("/api/v1/namespaces/{ns}/events/{name}", get(core_get))
        .route("/apis/events.k8s.io/v1/events", get(v1_list_all))
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            get(v1_list).post(v1_create),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            get(v1_get).patch(v1_patch).put(v1_put),
        )
}

/// `events` or `events.events.k8s.io`, as upstream names the resource in messages.
fn qualified(version: Version) -> String {
    match version {
        Version::Core => events::RESOURCE.to_string(),
        Version::EventsV1 => format!("{}.{V1_GROUP}", events::RESOURCE),
    }
}

async fn core_list_all(State(app): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    collection(app, Version::Core, None, &headers, &uri).await
}

async fn core_list(
    State(app): State<Shared>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    collection(app, Version::Core, Some(ns), &headers, &uri).await
}

async fn v1_list_all(State(app): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    collection(app, Version::EventsV1, None, &headers, &uri).await
}

async fn v1_list(
    State(app): State<Shared>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    collection(app, Version::EventsV1, Some(ns), &headers, &uri).await
}

async fn core_get(
    State(app): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    one(&app, Version::Core, &ns, &name, &headers, &uri)
}

async fn v1_get(
    State(app): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    one(&app, Version::EventsV1, &ns, &name, &headers, &uri)
}

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: EventFieldSelector,
}

impl Filter {
    fn parse(namespace: Option<String>, q: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            namespace,
            labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: EventFieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    fn matches(&self, e: &StoredEvent) -> bool {
        self.namespace.as_deref().is_none_or(|ns| e.namespace == ns)
            && self.labels.matches(&e.labels())
            && self.fields.matches(e)
    }
}

fn table_value(rows: Vec<Value>, rv: u64, cont: Option<&str>, with_columns: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "rows": rows});
    if with_columns {
        t["columnDefinitions"] = events::column_definitions();
    }
    t
}

fn wants_table(headers: &HeaderMap, q: &Query) -> Option<IncludeObject> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    table::wants_table(accept).then(|| IncludeObject::parse(q.get("includeObject")))
}

async fn collection(
    app: Shared,
    version: Version,
    namespace: Option<String>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let q = Query::parse(uri.query());
    let result = match Filter::parse(namespace, &q) {
        Ok(filter) => {
            let table = wants_table(headers, &q);
            if q.flag("watch") {
                watch(app, version, &q, filter, table)
            } else {
                list(&app, version, &q, &filter, table)
            }
        }
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn encode_continue(last: &StoredEvent) -> String {
    let token = json!({"start": format!("{}/{}", last.namespace, last.name)});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

/// Lists page over the current state (no consistent snapshot across pages).
fn list(
    app: &Shared,
    version: Version,
    q: &Query,
    filter: &Filter,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let limit: usize = match q.value("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let after = q.value("continue").map(decode_continue).transpose()?;
    let store = lock(&app.store);
    let rv = store.rv();
    let mut items: Vec<&Arc<StoredEvent>> = Vec::new();
    let mut more = false;
    for e in store.events.iter(filter.namespace.as_deref()) {
        if let Some((ns, name)) = &after
            && (e.namespace.as_str(), e.name.as_str()) <= (ns.as_str(), name.as_str())
        {
            continue;
        }
        if !filter.matches(e) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            more = true;
            break;
        }
        items.push(e);
    }
    let cont = more
        .then(|| items.last().map(|e| encode_continue(e)))
        .flatten();
    if let Some(include) = table {
        let rows = items
            .iter()
            .map(|e| events::row(e, version, include))
            .collect();
        let t = table_value(rows, rv, cont.as_deref(), true);
        return Ok(json_response(StatusCode::OK, t.to_string().into_bytes()));
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = &cont {
        metadata["continue"] = json!(c);
    }
    let mut body = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"{}\",\"metadata\":{metadata},\"items\":[",
        version.api_version()
    )
    .into_bytes();
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.to_json(version)?);
    }
    body.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, body))
}

fn one(
    app: &Shared,
    version: Version,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    let q = Query::parse(uri.query());
    let found = lock(&app.store).events.get(ns, name);
    match found {
        Some(e) => object_response(StatusCode::OK, &e, version, wants_table(headers, &q)),
        None => ApiError::not_found(&qualified(version), name).into_response(),
    }
}

fn object_response(
    code: StatusCode,
    e: &StoredEvent,
    version: Version,
    table: Option<IncludeObject>,
) -> Response {
    if let Some(include) = table {
        let t = table_value(vec![events::row(e, version, include)], e.rv, None, true);
        return json_response(code, t.to_string().into_bytes());
    }
    match e.to_json(version) {
        Ok(b) => json_response(code, b),
        Err(err) => err.into_response(),
    }
}

fn decode_v1(value: Value) -> Result<V1Event, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("error decoding Event: {e}")))
}

fn check_namespace(body_ns: Option<&str>, ns: &str) -> Result<(), ApiError> {
    match body_ns {
        Some(b) if !b.is_empty() && b != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

fn invalid(name: &str, causes: Vec<(String, String)>) -> ApiError {
    ApiError::invalid("Event", name, causes)
}

fn to_value(e: &V1Event) -> Result<Value, ApiError> {
    serde_json::to_value(e).map_err(|e| ApiError::internal(format!("encoding event: {e}")))
}

async fn v1_create(
    State(app): State<Shared>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = (|| {
        let mut ev = decode_v1(require_json_body(&headers, &body)?)?;
        check_namespace(ev.metadata.namespace.as_deref(), &ns)?;
        let dry = dry_run(&q)?;
        let w = writer(&headers, &q, Subresource::Main, "CreateOptions")?;
        let meta = &mut ev.metadata;
        meta.namespace = Some(ns.clone());
        if meta.name.as_deref().unwrap_or("").is_empty() {
            match meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
                Some(prefix) => meta.name = Some(format!("{prefix}{}", generate_name_suffix())),
                None => {
                    return Err(invalid(
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
        }
        let name = meta.name.clone().unwrap_or_default();
        if let Err(why) = crate::validate::dns_subdomain(&name) {
            return Err(invalid(
                &name,
                vec![(
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: {why}"),
                )],
            ));
        }
        if meta
            .resource_version
            .as_deref()
            .is_some_and(|r| !r.is_empty())
        {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        meta.uid = Some(random_uid());
        meta.creation_timestamp = Some(now());
        meta.self_link = None;
        meta.deletion_timestamp = None;
        let requested = meta.managed_fields.take();
        let reset = managed::is_reset(&requested);
        let mut entries = managed::base_entries(requested, None, None);
        if !reset {
            managed::record_update(
                &mut entries,
                &w,
                &json!({}),
                &to_value(&ev)?,
                Version::EventsV1.api_version(),
                now(),
            );
        }
        ev.metadata.managed_fields = (!entries.is_empty()).then_some(entries);
        let core = from_v1(ev);
        let causes = events::validate_v1_create(&core);
        if !causes.is_empty() {
            return Err(invalid(&name, causes));
        }
        let mut store = lock(&app.store);
        if store.events.get(&ns, &name).is_some() {
            return Err(ApiError::already_exists(
                &qualified(Version::EventsV1),
                &name,
            ));
        }
        if dry {
            let rv = store.rv();
            return Ok(Arc::new(StoredEvent {
                namespace: ns.clone(),
                name,
                rv,
                event: core,
            }));
        }
        let rv = store.next_rv();
        let stored = store.events.commit(rv, EventType::Added, core);
        store.events.counts.created += 1;
        Ok(stored)
    })();
    match result {
        Ok(e) => object_response(StatusCode::CREATED, &e, Version::EventsV1, None),
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy)]
enum UpdateKind {
    Patch,
    Put,
}

fn v1_update(
    app: &Shared,
    ns: &str,
    name: &str,
    kind: UpdateKind,
    headers: &HeaderMap,
    q: &Query,
    compute: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Result<Arc<StoredEvent>, ApiError> {
    let dry = dry_run(q)?;
    let options = match kind {
        UpdateKind::Patch => "PatchOptions",
        UpdateKind::Put => "UpdateOptions",
    };
    let w = writer(headers, q, Subresource::Main, options)?;
    let mut store = lock(&app.store);
    let old = store
        .events
        .get(ns, name)
        .ok_or_else(|| ApiError::not_found(&qualified(Version::EventsV1), name))?;
    let old_v1 = to_v1(&old.event);
    let mut new = decode_v1(compute(to_value(&old_v1)?)?)?;
    let new_name = new.metadata.name.clone().unwrap_or_default();
    if new_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(new.metadata.namespace.as_deref(), ns)?;
    let resource = qualified(Version::EventsV1);
    if let Some(rv) = new.metadata.resource_version.as_deref()
        && !rv.is_empty()
        && rv != old.rv.to_string()
    {
        return Err(ApiError::stale_resource_version(&resource, name));
    }
    let old_uid = old.event.metadata.uid.clone().unwrap_or_default();
    if let Some(uid) = new.metadata.uid.as_deref()
        && !uid.is_empty()
        && uid != old_uid
    {
        return Err(ApiError::conflict(
            &resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            ),
        ));
    }
    let om = &old.event.metadata;
    let meta = &mut new.metadata;
    meta.namespace = om.namespace.clone();
    meta.uid = om.uid.clone();
    meta.creation_timestamp = om.creation_timestamp.clone();
    meta.resource_version = om.resource_version.clone();
    meta.generate_name = om.generate_name.clone();
    meta.self_link = None;
    let requested = meta.managed_fields.take();
    let reset = managed::is_reset(&requested);
    let mut entries = managed::base_entries(requested, om.managed_fields.as_ref(), None);
    meta.managed_fields = om.managed_fields.clone();
    let mut core = from_v1(new);
    let causes = events::validate_v1_update(&core, &old.event);
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    if !reset && core != old.event {
        managed::record_update(
            &mut entries,
            &w,
            &to_value(&old_v1)?,
            &to_value(&to_v1(&core))?,
            Version::EventsV1.api_version(),
            now(),
        );
    }
    core.metadata.managed_fields = (!entries.is_empty()).then_some(entries);
    if core == old.event {
        return Ok(old);
    }
    if dry {
        return Ok(Arc::new(StoredEvent {
            namespace: old.namespace.clone(),
            name: old.name.clone(),
            rv: old.rv,
            event: core,
        }));
    }
    let rv = store.next_rv();
    let stored = store.events.commit(rv, EventType::Modified, core);
    match kind {
        UpdateKind::Patch => store.events.counts.patched += 1,
        UpdateKind::Put => store.events.counts.updated += 1,
    }
    Ok(stored)
}

async fn v1_patch(
    State(app): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = patch_type(&headers).and_then(|ptype| {
        v1_update(&app, &ns, &name, UpdateKind::Patch, &headers, &q, |cur| {
            apply_patch(ptype, &body, cur)
        })
    });
    match result {
        Ok(e) => object_response(StatusCode::OK, &e, Version::EventsV1, None),
        Err(e) => e.into_response(),
    }
}

async fn v1_put(
    State(app): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let q = Query::parse(uri.query());
    let result = require_json_body(&headers, &body).and_then(|value| {
        v1_update(&app, &ns, &name, UpdateKind::Put, &headers, &q, |_| {
            Ok(value)
        })
    });
    match result {
        Ok(e) => object_response(StatusCode::OK, &e, Version::EventsV1, None),
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

struct EventWatch {
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<EventChange>>,
    filter: Filter,
    version: Version,
    table: Option<IncludeObject>,
    columns_sent: bool,
    deadline: Instant,
    close: CancellationToken,
    last_rv: u64,
    _guard: WatchGuard,
}

impl EventWatch {
    /// Selection is judged on the object of each change (no ADDED/DELETED for objects moving
    /// in or out of a selector, unlike Nodes).
    fn line(&mut self, kind: &str, e: &StoredEvent) -> Option<Bytes> {
        if !self.filter.matches(e) {
            return None;
        }
        let json = match self.table {
            Some(include) => {
                let t = table_value(
                    vec![events::row(e, self.version, include)],
                    e.rv,
                    None,
                    !self.columns_sent,
                );
                self.columns_sent = true;
                t.to_string().into_bytes()
            }
            None => e.to_json(self.version).ok()?,
        };
        Some(watch_line(kind, &json))
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
                    Ok(change) => {
                        if change.rv <= self.last_rv {
                            continue;
                        }
                        self.last_rv = change.rv;
                        if let Some(line) = self.line(change.kind.as_str(), &change.obj) {
                            return Some(line);
                        }
                    }
                    // Too slow for the buffer, or shutting down: end; clients resume.
                    Err(_) => return None,
                },
            }
        }
    }
}

fn watch(
    app: Shared,
    version: Version,
    q: &Query,
    filter: Filter,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let timeout = match q.value("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
        ),
        None => app.settings.default_watch_timeout,
    };
    let requested = match q.value("resourceVersion") {
        Some(r) => Some(
            r.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: \"{r}\"")))?,
        ),
        None => None,
    };
    let (initial, changes, rx, from) = {
        let store = lock(&app.store);
        let current = store.rv();
        let (from, with_initial) = match requested {
            None | Some(0) => (current, true),
            Some(r) => (r, false),
        };
        match store.events.watch_from(from, current) {
            Ok((changes, rx)) => {
                let initial: Vec<Arc<StoredEvent>> = if with_initial {
                    store
                        .events
                        .iter(filter.namespace.as_deref())
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                (initial, changes, rx, from)
            }
            Err(e) if e.code == 410 => return Ok(status_watch_response(vec![error_line(&e)])),
            Err(e) => return Err(e),
        }
    };
    let close = lock(&app.watch_close).clone();
    let mut w = EventWatch {
        pending: VecDeque::new(),
        rx,
        filter,
        version,
        table,
        columns_sent: false,
        deadline: Instant::now() + timeout,
        close,
        last_rv: from,
        _guard: WatchGuard::new(app.clone()),
    };
    for e in &initial {
        if let Some(line) = w.line("ADDED", e) {
            w.pending.push_back(line);
        }
    }
    for c in &changes {
        w.last_rv = c.rv;
        if let Some(line) = w.line(c.kind.as_str(), &c.obj) {
            w.pending.push_back(line);
        }
    }
    let body = futures::stream::unfold(w, |mut s| async move {
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

/// `GET /admin/events`: how many Events exist and were written, and a summary of each.
pub fn admin_summary(app: &AppState) -> Value {
    let store = lock(&app.store);
    let items: Vec<Value> = store
        .events
        .iter(None)
        .map(|e| {
            let ev = &e.event;
            let io = &ev.involved_object;
            json!({
                "namespace": e.namespace,
                "name": e.name,
                "resourceVersion": e.rv.to_string(),
                "type": ev.type_,
                "reason": ev.reason,
                "action": ev.action,
                "note": ev.message,
                "regarding": {"kind": io.kind, "name": io.name, "namespace": io.namespace, "uid": io.uid},
                "reportingController": ev.reporting_component,
                "reportingInstance": ev.reporting_instance,
                "count": ev.series.as_ref().and_then(|s| s.count).unwrap_or(1),
            })
        })
        .collect();
    let c = store.events.counts;
    json!({
        "events": store.events.len(),
        "created": c.created,
        "patched": c.patched,
        "updated": c.updated,
        "items": items,
    })
}
