//! Events: one store of namespaced Events, kept in core/v1 form (as kube-apiserver stores
//! them) and served both as `core/v1` and as `events.k8s.io/v1` (converted field by field like
//! upstream's conversion). Revisions come from the global counter of `Store`; the events keep
//! their own capped history and broadcast channel for watches.
//!
//! Also here: events.k8s.io/v1 validation (create and the immutable fields of an update),
//! the field selectors upstream supports on Events, and the printed Table kubectl asks for.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSeries as CoreSeries};
use k8s_openapi::api::events::v1::{Event as V1Event, EventSeries as V1Series};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::errors::ApiError;
use crate::store::EventType;
use crate::table::{IncludeObject, human_duration};
use crate::validate;

pub const RESOURCE: &str = "events";
pub const V1_GROUP: &str = "events.k8s.io";
/// Upstream's limits for events.k8s.io/v1 fields.
const NOTE_MAX: usize = 1024;
const SHORT_MAX: usize = 128;

/// The API version a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Core,
    EventsV1,
}

impl Version {
    pub fn api_version(self) -> &'static str {
        match self {
            Version::Core => "v1",
            Version::EventsV1 => "events.k8s.io/v1",
        }
    }
}

/// events.k8s.io/v1 → core/v1 (upstream's `Convert_v1_Event_To_core_Event`).
pub fn from_v1(e: V1Event) -> CoreEvent {
    CoreEvent {
        metadata: e.metadata,
        action: e.action,
        count: e.deprecated_count,
        event_time: e.event_time,
        first_timestamp: e.deprecated_first_timestamp,
        involved_object: e.regarding.unwrap_or_default(),
        last_timestamp: e.deprecated_last_timestamp,
        message: e.note,
        reason: e.reason,
        related: e.related,
        reporting_component: e.reporting_controller,
        reporting_instance: e.reporting_instance,
        series: e.series.map(|s| CoreSeries {
            count: Some(s.count),
            last_observed_time: Some(s.last_observed_time),
        }),
        source: e.deprecated_source,
        type_: e.type_,
    }
}

/// core/v1 → events.k8s.io/v1.
pub fn to_v1(e: &CoreEvent) -> V1Event {
    V1Event {
        metadata: e.metadata.clone(),
        action: e.action.clone(),
        deprecated_count: e.count,
        deprecated_first_timestamp: e.first_timestamp.clone(),
        deprecated_last_timestamp: e.last_timestamp.clone(),
        deprecated_source: e.source.clone(),
        event_time: e.event_time.clone(),
        note: e.message.clone(),
        reason: e.reason.clone(),
        regarding: Some(e.involved_object.clone()),
        related: e.related.clone(),
        reporting_controller: e.reporting_component.clone(),
        reporting_instance: e.reporting_instance.clone(),
        series: e.series.as_ref().and_then(|s| {
            Some(V1Series {
                count: s.count?,
                last_observed_time: s.last_observed_time.clone()?,
            })
        }),
        type_: e.type_.clone(),
    }
}

#[derive(Debug)]
pub struct StoredEvent {
    pub namespace: String,
    pub name: String,
    pub rv: u64,
    pub event: CoreEvent,
}

impl StoredEvent {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.event.metadata.labels.clone().unwrap_or_default()
    }

    /// The object as JSON in `version`.
    pub fn to_json(&self, version: Version) -> Result<Vec<u8>, ApiError> {
        let r = match version {
            Version::Core => serde_json::to_vec(&self.event),
            Version::EventsV1 => serde_json::to_vec(&to_v1(&self.event)),
        };
        r.map_err(|e| ApiError::internal(format!("encoding event: {e}")))
    }

    pub fn to_value(&self, version: Version) -> Result<Value, ApiError> {
        let r = match version {
            Version::Core => serde_json::to_value(&self.event),
            Version::EventsV1 => serde_json::to_value(to_v1(&self.event)),
        };
        r.map_err(|e| ApiError::internal(format!("encoding event: {e}")))
    }
}

pub type EventReceiver = broadcast::Receiver<Arc<EventChange>>;

#[derive(Debug)]
pub struct EventChange {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Arc<StoredEvent>,
}

/// Counters of successful writes, for tests that bound how many Events a client emits.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteCounts {
    pub created: u64,
    pub patched: u64,
    pub updated: u64,
}

pub struct EventStore {
    items: BTreeMap<(String, String), Arc<StoredEvent>>,
    history: VecDeque<Arc<EventChange>>,
    history_limit: usize,
    /// Watches from before this revision get 410.
    compacted_rv: u64,
    tx: broadcast::Sender<Arc<EventChange>>,
    pub counts: WriteCounts,
}

impl EventStore {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(history_limit.clamp(16, 4096));
        Self {
            items: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_rv: 1,
            tx,
            counts: WriteCounts::default(),
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<StoredEvent>> {
        self.items
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Events in (namespace, name) order, optionally of one namespace.
    pub fn iter<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<StoredEvent>> + 'a {
        self.items
            .values()
            .filter(move |e| namespace.is_none_or(|ns| e.namespace == ns))
    }

    pub fn commit(&mut self, rv: u64, kind: EventType, mut event: CoreEvent) -> Arc<StoredEvent> {
        event.metadata.resource_version = Some(rv.to_string());
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let stored = Arc::new(StoredEvent {
            namespace: namespace.clone(),
            name: name.clone(),
            rv,
            event,
        });
        match kind {
            EventType::Deleted => {
                self.items.remove(&(namespace, name));
            }
            _ => {
                self.items.insert((namespace, name), stored.clone());
            }
        }
        let change = Arc::new(EventChange {
            rv,
            kind,
            obj: stored.clone(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        let _ = self.tx.send(change);
        stored
    }

    /// Retained changes after `from` and a receiver for later ones (joined under the lock).
    pub fn watch_from(
        &self,
        from: u64,
        current: u64,
    ) -> Result<(Vec<Arc<EventChange>>, EventReceiver), ApiError> {
        if from < self.compacted_rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                self.compacted_rv
            )));
        }
        if from > current {
            return Err(ApiError::too_large_resource_version(from, current));
        }
        let start = self.history.partition_point(|e| e.rv <= from);
        Ok((
            self.history.range(start..).cloned().collect(),
            self.tx.subscribe(),
        ))
    }

    pub fn compact_all(&mut self, current: u64) {
        self.history.clear();
        self.compacted_rv = current;
    }
}

fn too_long(causes: &mut Vec<(String, String)>, field: &str, v: &Option<String>, max: usize) {
    if v.as_deref().is_some_and(|s| s.len() > max) {
        causes.push((
            field.into(),
            format!("Invalid value: \"\": can have at most {max} characters"),
        ));
    }
}

fn required(causes: &mut Vec<(String, String)>, field: &str, v: &Option<String>) {
    if v.as_deref().unwrap_or("").is_empty() {
        causes.push((field.into(), "Required value".into()));
    }
}

/// What every events.k8s.io/v1 write must satisfy (upstream's `legacyValidateEvent` for an
/// Event with `eventTime`). Field paths are the internal (core) names, as upstream reports.
fn validate_v1_common(e: &CoreEvent) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let ns = e.metadata.namespace.as_deref().unwrap_or("");
    let involved_ns = e.involved_object.namespace.as_deref().unwrap_or("");
    // Events about cluster-scoped objects (Nodes) live in "default" or "kube-system".
    if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
        causes.push((
            "involvedObject.namespace".into(),
            "Invalid value: \"\": does not match event.namespace".into(),
        ));
    }
    required(&mut causes, "reportingController", &e.reporting_component);
    if let Some(rc) = e.reporting_component.as_deref().filter(|r| !r.is_empty())
        && let Err(why) = validate::qualified_name(rc)
    {
        causes.push((
            "reportingController".into(),
            format!("Invalid value: {rc:?}: {why}"),
        ));
    }
    required(&mut causes, "reportingInstance", &e.reporting_instance);
    too_long(
        &mut causes,
        "reportingInstance",
        &e.reporting_instance,
        SHORT_MAX,
    );
    required(&mut causes, "action", &e.action);
    too_long(&mut causes, "action", &e.action, SHORT_MAX);
    required(&mut causes, "reason", &e.reason);
    too_long(&mut causes, "reason", &e.reason, SHORT_MAX);
    too_long(&mut causes, "message", &e.message, NOTE_MAX);
    causes
}

fn validate_series(e: &CoreEvent, causes: &mut Vec<(String, String)>) {
    if let Some(s) = &e.series {
        if s.count.unwrap_or(0) < 2 {
            causes.push((
                "series.count".into(),
                "Invalid value: \"\": should be at least 2".into(),
            ));
        }
        if s.last_observed_time.is_none() {
            causes.push(("series.lastObservedTime".into(), "Required value".into()));
        }
    }
}

/// events.k8s.io/v1 create validation (upstream's `ValidateEventCreate` for that group).
pub fn validate_v1_create(e: &CoreEvent) -> Vec<(String, String)> {
    if e.event_time.is_none() {
        // Without eventTime upstream applies the legacy rules first; for this API it is
        // simply required.
        return vec![("eventTime".into(), "Required value".into())];
    }
    let mut causes = validate_v1_common(e);
    validate_series(e, &mut causes);
    match e.type_.as_deref() {
        Some("Normal" | "Warning") => {}
        other => causes.push((
            "type".into(),
            format!(
                "Invalid value: \"\": has invalid value: {}",
                other.unwrap_or("")
            ),
        )),
    }
    for (field, set) in [
        ("firstTimestamp", e.first_timestamp.is_some()),
        ("lastTimestamp", e.last_timestamp.is_some()),
        ("count", e.count.is_some_and(|c| c != 0)),
        (
            "source",
            e.source.as_ref().is_some_and(|s| {
                s.component.as_deref().is_some_and(|c| !c.is_empty())
                    || s.host.as_deref().is_some_and(|h| !h.is_empty())
            }),
        ),
    ] {
        if set {
            causes.push((
                field.into(),
                "Invalid value: \"\": needs to be unset".into(),
            ));
        }
    }
    causes
}

/// events.k8s.io/v1 update validation (upstream's `ValidateEventUpdate`): the common rules,
/// the series when it changed, and every other field immutable (only `series` and metadata
/// move).
pub fn validate_v1_update(new: &CoreEvent, old: &CoreEvent) -> Vec<(String, String)> {
    let mut causes = validate_v1_common(new);
    if new.series != old.series {
        validate_series(new, &mut causes);
    }
    let mut immutable = |field: &str, same: bool| {
        if !same {
            causes.push((field.into(), "Invalid value: field is immutable".into()));
        }
    };
    immutable("involvedObject", new.involved_object == old.involved_object);
    immutable("reason", new.reason == old.reason);
    immutable("message", new.message == old.message);
    immutable("source", new.source == old.source);
    immutable("firstTimestamp", new.first_timestamp == old.first_timestamp);
    immutable("lastTimestamp", new.last_timestamp == old.last_timestamp);
    immutable("count", new.count == old.count);
    immutable("type", new.type_ == old.type_);
    immutable("eventTime", new.event_time == old.event_time);
    immutable("action", new.action == old.action);
    immutable("related", new.related == old.related);
    immutable(
        "reportingController",
        new.reporting_component == old.reporting_component,
    );
    immutable(
        "reportingInstance",
        new.reporting_instance == old.reporting_instance,
    );
    causes
}

/// A field of an Event a field selector may name (upstream's `EventToSelectableFields`, with
/// the events.k8s.io/v1 spellings accepted as aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventField {
    Name,
    Namespace,
    InvolvedKind,
    InvolvedNamespace,
    InvolvedName,
    InvolvedUid,
    InvolvedApiVersion,
    InvolvedResourceVersion,
    InvolvedFieldPath,
    Reason,
    ReportingComponent,
    Source,
    Type,
}

fn event_field(name: &str) -> Option<EventField> {
    use EventField::*;
    let f = match name {
        "metadata.name" => Name,
        "metadata.namespace" => Namespace,
        "involvedObject.kind" | "regarding.kind" => InvolvedKind,
        "involvedObject.namespace" | "regarding.namespace" => InvolvedNamespace,
        "involvedObject.name" | "regarding.name" => InvolvedName,
        "involvedObject.uid" | "regarding.uid" => InvolvedUid,
        "involvedObject.apiVersion" | "regarding.apiVersion" => InvolvedApiVersion,
        "involvedObject.resourceVersion" | "regarding.resourceVersion" => InvolvedResourceVersion,
        "involvedObject.fieldPath" | "regarding.fieldPath" => InvolvedFieldPath,
        "reason" => Reason,
        "reportingComponent" | "reportingController" => ReportingComponent,
        "source" | "deprecatedSource" => Source,
        "type" => Type,
        _ => return None,
    };
    Some(f)
}

#[derive(Debug, Clone, Default)]
pub struct EventFieldSelector {
    terms: Vec<(EventField, bool, String)>,
}

impl EventFieldSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            let f =
                event_field(field).ok_or_else(|| format!("field label not supported: {field}"))?;
            terms.push((f, negate, value.trim().to_string()));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, e: &StoredEvent) -> bool {
        let ev = &e.event;
        let io = &ev.involved_object;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        self.terms.iter().all(|(field, negate, want)| {
            use EventField::*;
            let actual = match field {
                Name => e.name.clone(),
                Namespace => e.namespace.clone(),
                InvolvedKind => s(&io.kind),
                InvolvedNamespace => s(&io.namespace),
                InvolvedName => s(&io.name),
                InvolvedUid => s(&io.uid),
                InvolvedApiVersion => s(&io.api_version),
                InvolvedResourceVersion => s(&io.resource_version),
                InvolvedFieldPath => s(&io.field_path),
                Reason => s(&ev.reason),
                ReportingComponent => s(&ev.reporting_component),
                Source => ev
                    .source
                    .as_ref()
                    .and_then(|x| x.component.clone())
                    .unwrap_or_default(),
                Type => s(&ev.type_),
            };
            (actual == *want) != *negate
        })
    }
}

pub fn column_definitions() -> Value {
    let col = |name: &str, format: &str, desc: &str, priority: u32| json!({"name": name, "type": "string", "format": format, "description": desc, "priority": priority});
    json!([
        col(
            "Last Seen",
            "",
            "The time at which the most recent occurrence of this event was recorded.",
            0
        ),
        col(
            "Type",
            "",
            "Type of this event (Normal, Warning), new types could be added in the future.",
            0
        ),
        col(
            "Reason",
            "",
            "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            0
        ),
        col("Object", "", "The object that this event is about.", 0),
        col(
            "Subobject",
            "",
            "The field of the object this event is about.",
            1
        ),
        col("Source", "", "The component reporting this event.", 1),
        col(
            "Message",
            "",
            "A human-readable description of the status of this operation.",
            0
        ),
        col(
            "First Seen",
            "",
            "The time at which the event was first recorded.",
            1
        ),
        col(
            "Count",
            "",
            "The number of times this event has occurred.",
            1
        ),
        col("Name", "name", "Name must be unique within a namespace.", 1),
    ])
}

fn since(secs: Option<i64>) -> String {
    match secs {
        Some(s) => human_duration(jiff::Timestamp::now().as_second() - s),
        None => "<unknown>".into(),
    }
}

/// One printed row, as upstream's `printEvent` with wide columns (kubectl hides priority 1).
pub fn row(e: &StoredEvent, version: Version, include: IncludeObject) -> Value {
    let ev = &e.event;
    let micro = |t: &Option<MicroTime>| t.as_ref().map(|t| t.0.as_second());
    let first_secs = ev
        .first_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .or(micro(&ev.event_time));
    let mut last_secs = ev
        .last_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .or(first_secs);
    let mut count = ev.count.unwrap_or(0);
    if let Some(series) = &ev.series {
        last_secs = micro(&series.last_observed_time).or(last_secs);
        count = series.count.unwrap_or(count);
    } else if count == 0 {
        count = 1;
    }
    let io = &ev.involved_object;
    let kind = io.kind.clone().unwrap_or_default().to_lowercase();
    let target = match io.name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let source = match (&ev.source, &ev.reporting_component) {
        (Some(s), _) if s.component.as_deref().is_some_and(|c| !c.is_empty()) => {
            match s.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => format!("{}, {h}", s.component.clone().unwrap_or_default()),
                None => s.component.clone().unwrap_or_default(),
            }
        }
        (_, Some(rc)) if !rc.is_empty() => match ev.reporting_instance.as_deref() {
            Some(ri) if !ri.is_empty() => format!("{rc}, {ri}"),
            _ => rc.clone(),
        },
        _ => String::new(),
    };
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": serde_json::to_value(&ev.metadata).unwrap_or(Value::Null),
        }),
        IncludeObject::Object => e.to_value(version).unwrap_or(Value::Null),
    };
    let mut r = json!({"cells": [
        since(last_secs),
        ev.type_.clone().unwrap_or_default(),
        ev.reason.clone().unwrap_or_default(),
        target,
        io.field_path.clone().unwrap_or_default(),
        source,
        ev.message.clone().unwrap_or_default().trim(),
        since(first_secs),
        count,
        e.name,
    ]});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_event() -> V1Event {
        serde_json::from_value(json!({
            "metadata": {"name": "node-1.17f", "namespace": "default"},
            "eventTime": "2026-01-01T10:14:02.123456Z",
            "reportingController": "flannel.alpha.coreos.com/flanneld",
            "reportingInstance": "node-1",
            "action": "Heal",
            "reason": "AnnotationsRestored",
            "note": "restored",
            "type": "Warning",
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "u1"},
        }))
        .unwrap()
    }

    #[test]
    fn conversion_round_trips() {
        let mut v1 = v1_event();
        v1.series = Some(V1Series {
            count: 3,
            last_observed_time: v1.event_time.clone().unwrap(),
        });
        let core = from_v1(v1.clone());
        assert_eq!(core.message.as_deref(), Some("restored"));
        assert_eq!(
            core.reporting_component.as_deref(),
            Some("flannel.alpha.coreos.com/flanneld")
        );
        assert_eq!(core.involved_object.name.as_deref(), Some("node-1"));
        assert_eq!(core.series.as_ref().unwrap().count, Some(3));
        assert_eq!(to_v1(&core), v1);
        // kind/apiVersion follow the type.
        let j = serde_json::to_value(&core).unwrap();
        assert_eq!(
            (j["kind"].as_str(), j["apiVersion"].as_str()),
            (Some("Event"), Some("v1"))
        );
    }

    #[test]
    fn v1_validation() {
        let core = from_v1(v1_event());
        assert!(validate_v1_create(&core).is_empty());
        let mut no_time = core.clone();
        no_time.event_time = None;
        let fields = |e: &CoreEvent| -> Vec<String> {
            validate_v1_create(e).into_iter().map(|c| c.0).collect()
        };
        assert_eq!(fields(&no_time), ["eventTime"]);
        let mut bad = core.clone();
        bad.type_ = Some("Odd".into());
        bad.action = None;
        bad.count = Some(3);
        bad.metadata.namespace = Some("kube-flannel".into());
        assert_eq!(
            fields(&bad),
            ["involvedObject.namespace", "action", "type", "count"]
        );
        let mut system = core.clone();
        system.metadata.namespace = Some("kube-system".into());
        assert!(fields(&system).is_empty());
        let mut series = core.clone();
        series.series = Some(CoreSeries {
            count: Some(2),
            last_observed_time: core.event_time.clone(),
        });
        assert!(validate_v1_update(&series, &core).is_empty());
        let mut changed = series.clone();
        changed.message = Some("other".into());
        let causes = validate_v1_update(&changed, &core);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "message");
    }

    #[test]
    fn field_selectors_and_rows() {
        let store_ev = StoredEvent {
            namespace: "default".into(),
            name: "node-1.17f".into(),
            rv: 5,
            event: from_v1(v1_event()),
        };
        let sel = EventFieldSelector::parse(
            "involvedObject.kind=Node,involvedObject.name=node-1,involvedObject.namespace=,type!=Normal",
        )
        .unwrap();
        assert!(sel.matches(&store_ev));
        assert!(
            !EventFieldSelector::parse("regarding.name=node-2")
                .unwrap()
                .matches(&store_ev)
        );
        assert!(
            EventFieldSelector::parse("note=x")
                .unwrap_err()
                .contains("not supported")
        );
        let r = row(&store_ev, Version::Core, IncludeObject::Metadata);
        assert_eq!(r["cells"][1], "Warning");
        assert_eq!(r["cells"][2], "AnnotationsRestored");
        assert_eq!(r["cells"][3], "node/node-1");
        assert_eq!(r["cells"][6], "restored");
        assert_eq!(r["cells"][8], 1);
        assert_eq!(r["object"]["metadata"]["namespace"], "default");
    }
}
