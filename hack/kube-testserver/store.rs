//! The Node store: one global resourceVersion (like etcd's revision), a capped history of
//! events for watch resumption and consistent paginated lists, and a broadcast channel that
//! fans every committed event out to open watches in resourceVersion order.
//!
//! All writes go through `&mut Store` under one mutex, so revision order, history order and
//! broadcast order are the same.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Preconditions, Time};
use k8s_openapi::jiff;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::errors::ApiError;
use crate::events::EventStore;
use crate::managed::{self, Writer};
use crate::selector::FieldValues;
use crate::validate;

pub const RESOURCE: &str = "nodes";
pub const KIND: &str = "Node";
/// Upstream caps the total size of all annotations of an object at 256 KiB.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// One stored Node: its serialized JSON (with kind/apiVersion, as returned by GET) plus the
/// fields selectors look at, so lists and watches never re-parse objects.
#[derive(Debug, Clone)]
pub struct StoredNode {
    pub name: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    pub unschedulable: bool,
    pub json: Bytes,
}

impl StoredNode {
    pub fn field_values(&self) -> FieldValues<'_> {
        FieldValues {
            name: &self.name,
            unschedulable: self.unschedulable,
        }
    }

    pub fn to_node(&self) -> Result<Node, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("stored node does not decode: {e}")))
    }

    pub fn to_value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("stored node does not decode: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A committed change. `prev` is the object before the change (for selector transitions and
/// for reconstructing older snapshots); `line` is the ready-to-send watch line.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Arc<StoredNode>,
    pub prev: Option<Arc<StoredNode>>,
    pub line: Bytes,
}

#[derive(Debug, Clone)]
pub enum Broadcast {
    Event(Arc<Event>),
    /// A bookmark tick at this resourceVersion; sent in order with events.
    Bookmark(u64),
}

/// Builds `{"type":"T","object":<json>}\n`.
pub fn watch_line(kind: &str, object_json: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(object_json.len() + 40);
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(kind.as_bytes());
    buf.put_slice(b"\",\"object\":");
    buf.put_slice(object_json);
    buf.put_slice(b"}\n");
    buf.freeze()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// What `delete` did: removed the object, or only marked it (finalizers pending).
pub enum DeleteOutcome {
    Deleted(Arc<StoredNode>),
    Pending(Arc<StoredNode>),
}

pub struct Store {
    nodes: BTreeMap<String, Arc<StoredNode>>,
    rv: u64,
    /// Events with rv > compacted_rv are retained; snapshots/watches from rv >= compacted_rv work.
    compacted_rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    tx: broadcast::Sender<Broadcast>,
    /// Events share the global revision counter (one etcd revision over all resources).
    pub events: EventStore,
}

pub fn now() -> Time {
    let ts = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

pub fn random_uid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // RFC 4122 version 4 layout.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        (b[8] & 0x3) | 0x8,
        &hex[17..20],
        &hex[20..32]
    )
}

/// A create must not name a resourceVersion: the server assigns it.
pub fn check_no_resource_version(rv: Option<&str>) -> Result<(), ApiError> {
    if rv.is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    Ok(())
}

pub fn generate_name_suffix() -> String {
    // apimachinery's names.SimpleNameGenerator alphabet (no vowels, no confusable digits).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Store {
    pub fn new(history_limit: usize, broadcast_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(broadcast_capacity.max(16));
        Self {
            nodes: BTreeMap::new(),
            rv: 1,
            compacted_rv: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            tx,
            events: EventStore::new(history_limit),
        }
    }

    /// Takes the next global revision (for writes to other resources than Nodes).
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    pub fn get(&self, name: &str) -> Option<Arc<StoredNode>> {
        self.nodes.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    #[cfg(test)]
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.tx.subscribe()
    }

    /// Drops all retained history: any watch or continue token older than now gets 410.
    pub fn compact_all(&mut self) -> u64 {
        self.history.clear();
        self.events.compact_all(self.rv);
        self.compacted_rv = self.rv;
        self.compacted_rv
    }

    /// Sends a bookmark tick at the current revision, ordered with events.
    pub fn bookmark(&self) {
        let _ = self.tx.send(Broadcast::Bookmark(self.rv));
    }

    /// The whole store as it was at revision `at` (undoing retained events newer than it).
    pub fn snapshot_at(&self, at: u64) -> Result<BTreeMap<String, Arc<StoredNode>>, ApiError> {
        if at > self.rv {
            return Err(ApiError::too_large_resource_version(at, self.rv));
        }
        if at < self.compacted_rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({})",
                self.compacted_rv
            )));
        }
        let mut view = self.nodes.clone();
        for ev in self.history.iter().rev() {
            if ev.rv <= at {
                break;
            }
            match (ev.kind, &ev.prev) {
                (EventType::Added, _) => {
                    view.remove(&ev.obj.name);
                }
                (_, Some(prev)) => {
                    view.insert(prev.name.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(view)
    }

    pub fn current(&self) -> &BTreeMap<String, Arc<StoredNode>> {
        &self.nodes
    }

    /// Retained events after `from`, plus a receiver for everything later: taken under the
    /// store lock, so the two join without gap or overlap.
    pub fn watch_from(
        &self,
        from: u64,
    ) -> Result<(Vec<Arc<Event>>, broadcast::Receiver<Broadcast>), ApiError> {
        if from < self.compacted_rv {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                self.compacted_rv
            )));
        }
        if from > self.rv {
            return Err(ApiError::too_large_resource_version(from, self.rv));
        }
        let start = self.history.partition_point(|e| e.rv <= from);
        let events = self.history.range(start..).cloned().collect();
        Ok((events, self.tx.subscribe()))
    }

    fn commit(
        &mut self,
        kind: EventType,
        mut node: Node,
        prev: Option<Arc<StoredNode>>,
    ) -> Result<Arc<StoredNode>, ApiError> {
        let rv = self.rv + 1;
        node.metadata.resource_version = Some(rv.to_string());
        let (stored, line) = encode(&node, rv, kind)?;
        let stored = Arc::new(stored);
        self.rv = rv;
        match kind {
            EventType::Deleted => {
                self.nodes.remove(&stored.name);
            }
            _ => {
                self.nodes.insert(stored.name.clone(), stored.clone());
            }
        }
        let event = Arc::new(Event {
            rv,
            kind,
            obj: stored.clone(),
            prev,
            line,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(Broadcast::Event(event));
        Ok(stored)
    }

    /// Creates a node keeping the managedFields it carries (generated nodes).
    pub fn create(&mut self, node: Node, dry_run: bool) -> Result<Arc<StoredNode>, ApiError> {
        self.create_as(node, dry_run, None)
    }

    /// Creates a node; with a `writer`, its managedFields record the create as upstream does.
    pub fn create_as(
        &mut self,
        mut node: Node,
        dry_run: bool,
        writer: Option<&Writer>,
    ) -> Result<Arc<StoredNode>, ApiError> {
        let meta = &mut node.metadata;
        if meta.name.as_deref().unwrap_or("").is_empty() {
            match meta.generate_name.as_deref() {
                Some(prefix) if !prefix.is_empty() => {
                    meta.name = Some(format!("{prefix}{}", generate_name_suffix()));
                }
                _ => {
                    return Err(ApiError::invalid(
                        KIND,
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
        check_no_resource_version(meta.resource_version.as_deref())?;
        if self.nodes.contains_key(&name) {
            return Err(ApiError::already_exists(RESOURCE, &name));
        }
        meta.uid = Some(random_uid());
        meta.creation_timestamp = Some(now());
        meta.generation = Some(1);
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.namespace = None;
        meta.self_link = None;
        validate_node(&node, None)?;
        if let Some(w) = writer {
            let requested = node.metadata.managed_fields.take();
            let reset = managed::is_reset(&requested);
            let mut entries = managed::base_entries(requested, None, None);
            if !reset {
                let new_value = to_value(&node)?;
                managed::record_update(
                    &mut entries,
                    w,
                    &Value::Object(Default::default()),
                    &new_value,
                    "v1",
                    now(),
                );
            }
            node.metadata.managed_fields = (!entries.is_empty()).then_some(entries);
        }
        if dry_run {
            return Ok(Arc::new(encode(&node, self.rv, EventType::Added)?.0));
        }
        self.commit(EventType::Added, node, None)
    }

    /// Replaces or patches an existing node: `compute` maps the stored object (as JSON) to the
    /// requested new object; then preconditions, subresource rules and system fields apply.
    #[cfg(test)]
    pub fn update(
        &mut self,
        name: &str,
        subresource: Subresource,
        dry_run: bool,
        compute: impl FnOnce(Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<StoredNode>, ApiError> {
        self.update_as(name, subresource, dry_run, None, compute)
    }

    /// `update` by `writer`: managedFields record the change (without a writer they are kept
    /// as sent, or as stored when the request has none).
    pub fn update_as(
        &mut self,
        name: &str,
        subresource: Subresource,
        dry_run: bool,
        writer: Option<&Writer>,
        compute: impl FnOnce(Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<StoredNode>, ApiError> {
        let old = self
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(RESOURCE, name))?;
        let old_node = old.to_node()?;
        let requested = compute(old.to_value()?)?;
        let mut new: Node = serde_json::from_value(requested)
            .map_err(|e| ApiError::bad_request(format!("error decoding Node: {e}")))?;

        let new_name = new.metadata.name.clone().unwrap_or_default();
        if new_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({new_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = new.metadata.resource_version.as_deref()
            && !rv.is_empty()
            && rv != old.rv.to_string()
        {
            return Err(ApiError::stale_resource_version(RESOURCE, name));
        }
        let old_uid = old_node.metadata.uid.clone().unwrap_or_default();
        if let Some(uid) = new.metadata.uid.as_deref()
            && !uid.is_empty()
            && uid != old_uid
        {
            return Err(ApiError::conflict(
                RESOURCE,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        // The status subresource never changes spec; the main resource never changes status.
        match subresource {
            Subresource::Status => new.spec = old_node.spec.clone(),
            Subresource::Main => new.status = old_node.status.clone(),
        }
        let meta = &mut new.metadata;
        meta.uid = old_node.metadata.uid.clone();
        meta.creation_timestamp = old_node.metadata.creation_timestamp.clone();
        meta.deletion_timestamp = old_node.metadata.deletion_timestamp.clone();
        meta.deletion_grace_period_seconds = old_node.metadata.deletion_grace_period_seconds;
        meta.namespace = None;
        meta.self_link = None;
        meta.generate_name = old_node.metadata.generate_name.clone();
        meta.resource_version = old_node.metadata.resource_version.clone();
        let requested_fields = meta.managed_fields.take();
        let spec_changed = new.spec != old_node.spec;
        let old_generation = old_node.metadata.generation.unwrap_or(1);
        new.metadata.generation = Some(if spec_changed {
            old_generation + 1
        } else {
            old_generation
        });
        validate_node(&new, Some(&old_node))?;

        match writer {
            Some(w) => {
                let reset = managed::is_reset(&requested_fields);
                let mut entries = managed::base_entries(
                    requested_fields,
                    old_node.metadata.managed_fields.as_ref(),
                    w.subresource.as_deref(),
                );
                new.metadata.managed_fields = old_node.metadata.managed_fields.clone();
                if !reset && new != old_node {
                    managed::record_update(
                        &mut entries,
                        w,
                        &to_value(&old_node)?,
                        &to_value(&new)?,
                        "v1",
                        now(),
                    );
                }
                new.metadata.managed_fields = (!entries.is_empty()).then_some(entries);
            }
            // An update that omits managedFields keeps the recorded ones (as upstream).
            None => {
                new.metadata.managed_fields =
                    requested_fields.or_else(|| old_node.metadata.managed_fields.clone());
            }
        }
        if new == old_node {
            // No-op write: no new revision, no event.
            return Ok(old);
        }
        if dry_run {
            return Ok(Arc::new(encode(&new, old.rv, EventType::Modified)?.0));
        }
        let finalizers_done = new.metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
        if new.metadata.deletion_timestamp.is_some() && finalizers_done {
            return self.commit(EventType::Deleted, new, Some(old));
        }
        self.commit(EventType::Modified, new, Some(old))
    }

    pub fn delete(
        &mut self,
        name: &str,
        preconditions: Option<&Preconditions>,
        dry_run: bool,
    ) -> Result<DeleteOutcome, ApiError> {
        let old = self
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(RESOURCE, name))?;
        let mut node = old.to_node()?;
        if let Some(p) = preconditions {
            let record_uid = node.metadata.uid.clone().unwrap_or_default();
            precondition_holds(
                name,
                "ResourceVersion",
                p.resource_version.as_deref(),
                &old.rv.to_string(),
                "modified",
            )?;
            precondition_holds(
                name,
                "UID",
                p.uid.as_deref(),
                &record_uid,
                "deleted and then recreated",
            )?;
        }
        let has_finalizers = node
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if node.metadata.deletion_timestamp.is_some() {
                return Ok(DeleteOutcome::Pending(old));
            }
            node.metadata.deletion_timestamp = Some(now());
            node.metadata.deletion_grace_period_seconds = Some(0);
            if dry_run {
                return Ok(DeleteOutcome::Pending(Arc::new(
                    encode(&node, old.rv, EventType::Modified)?.0,
                )));
            }
            return Ok(DeleteOutcome::Pending(self.commit(
                EventType::Modified,
                node,
                Some(old),
            )?));
        }
        if dry_run {
            return Ok(DeleteOutcome::Deleted(old));
        }
        Ok(DeleteOutcome::Deleted(self.commit(
            EventType::Deleted,
            node,
            Some(old),
        )?))
    }
}

fn to_value(node: &Node) -> Result<Value, ApiError> {
    serde_json::to_value(node).map_err(|e| ApiError::internal(format!("encoding node: {e}")))
}

/// Serializes a node; returns the stored form and its watch line (sharing one buffer).
fn encode(node: &Node, rv: u64, kind: EventType) -> Result<(StoredNode, Bytes), ApiError> {
    let json =
        serde_json::to_vec(node).map_err(|e| ApiError::internal(format!("encoding node: {e}")))?;
    let line = watch_line(kind.as_str(), &json);
    let prefix = "{\"type\":\"\",\"object\":".len() + kind.as_str().len();
    let json_bytes = line.slice(prefix..prefix + json.len());
    Ok((
        StoredNode {
            name: node.metadata.name.clone().unwrap_or_default(),
            rv,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            json: json_bytes,
        },
        line,
    ))
}

/// Field validation kube-apiserver applies to Nodes that matter here.
pub fn validate_node(node: &Node, old: Option<&Node>) -> Result<(), ApiError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut causes: Vec<(String, String)> = Vec::new();
    if let Err(e) = validate::dns_subdomain(&name) {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: {e}"),
        ));
    }
    for (k, v) in node.metadata.labels.iter().flatten() {
        if let Err(e) = validate::qualified_name(k) {
            causes.push((
                "metadata.labels".into(),
                format!("Invalid value: {k:?}: {e}"),
            ));
        }
        if let Err(e) = validate::label_value(v) {
            causes.push((
                "metadata.labels".into(),
                format!("Invalid value: {v:?}: {e}"),
            ));
        }
    }
    let mut annotation_bytes = 0;
    for (k, v) in node.metadata.annotations.iter().flatten() {
        annotation_bytes += k.len() + v.len();
        if let Err(e) = validate::qualified_name(k) {
            causes.push((
                "metadata.annotations".into(),
                format!("Invalid value: {k:?}: {e}"),
            ));
        }
    }
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        causes.push((
            "metadata.annotations".into(),
            format!("Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"),
        ));
    }
    let spec = node.spec.clone().unwrap_or_default();
    for cidr in spec.pod_cidrs.iter().flatten() {
        if cidr.parse::<ipnetwork::IpNetwork>().is_err() {
            causes.push((
                "spec.podCIDRs".into(),
                format!("Invalid value: {cidr:?}: must be a valid CIDR"),
            ));
        }
    }
    if let Some(cidrs) = &spec.pod_cidrs {
        if cidrs.len() > 2 {
            causes.push((
                "spec.podCIDRs".into(),
                "Too many: may not have more than 2 entries".into(),
            ));
        }
        if let (Some(first), Some(single)) = (cidrs.first(), &spec.pod_cidr)
            && first != single
        {
            causes.push((
                "spec.podCIDRs[0]".into(),
                format!("Invalid value: {first:?}: must match spec.podCIDR {single:?}"),
            ));
        }
    }
    if let Some(old) = old {
        let old_spec = old.spec.clone().unwrap_or_default();
        let old_cidrs = old_spec.pod_cidrs.unwrap_or_default();
        if !old_cidrs.is_empty() && spec.pod_cidrs.clone().unwrap_or_default() != old_cidrs {
            causes.push((
                "spec.podCIDRs".into(),
                "Forbidden: node updates may not change podCIDR except from \"\" to valid".into(),
            ));
        }
        if let Some(old_pid) = old_spec.provider_id.filter(|p| !p.is_empty())
            && spec.provider_id.as_deref() != Some(old_pid.as_str())
        {
            causes.push((
                "spec.providerID".into(),
                "Forbidden: node updates may not change providerID except from \"\" to valid"
                    .into(),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(KIND, &name, causes))
    }
}

/// A delete precondition on `field` (`want`, if given) against the record's value; the
/// conflict says what likely happened to the object (`hint`), in upstream's words.
fn precondition_holds(
    name: &str,
    field: &str,
    want: Option<&str>,
    record: &str,
    hint: &str,
) -> Result<(), ApiError> {
    match want {
        Some(want) if want != record => Err(ApiError::conflict(
            RESOURCE,
            name,
            &format!(
                "the {field} in the precondition ({want}) does not match the {field} in record ({record}). The object might have been {hint}"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": {"a": "1"}},
            "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn patch_annotation(store: &mut Store, name: &str, value: &str) -> Arc<StoredNode> {
        let value = value.to_string();
        store
            .update(name, Subresource::Main, false, move |mut v| {
                v["metadata"]["annotations"]["a"] = json!(value);
                Ok(v)
            })
            .unwrap()
    }

    #[test]
    fn revisions_are_global_and_noops_do_not_bump() {
        let mut s = Store::new(100, 16);
        let mut rx = s.subscribe();
        let a = s.create(node("a", json!({})), false).unwrap();
        let b = s.create(node("b", json!({})), false).unwrap();
        assert_eq!((a.rv, b.rv), (2, 3));
        let a2 = patch_annotation(&mut s, "a", "2");
        assert_eq!(a2.rv, 4);
        let same = patch_annotation(&mut s, "a", "2");
        assert_eq!(same.rv, 4);
        assert_eq!(s.rv(), 4);
        let mut seen = Vec::new();
        while let Ok(Broadcast::Event(e)) = rx.try_recv() {
            seen.push((e.rv, e.kind));
        }
        assert_eq!(
            seen,
            [
                (2, EventType::Added),
                (3, EventType::Added),
                (4, EventType::Modified)
            ]
        );
    }

    #[test]
    fn system_fields_and_generation() {
        let mut s = Store::new(100, 16);
        let a = s
            .create(node("a", json!({})), false)
            .unwrap()
            .to_node()
            .unwrap();
        assert_eq!(a.metadata.generation, Some(1));
        assert_eq!(a.metadata.uid.as_ref().unwrap().len(), 36);
        assert!(a.metadata.creation_timestamp.is_some());
        let after_meta = patch_annotation(&mut s, "a", "x").to_node().unwrap();
        assert_eq!(after_meta.metadata.generation, Some(1));
        assert_eq!(after_meta.metadata.uid, a.metadata.uid);
        let after_spec = s
            .update("a", Subresource::Main, false, |mut v| {
                v["spec"]["unschedulable"] = json!(true);
                v["metadata"]["creationTimestamp"] = json!("2001-01-01T00:00:00Z");
                Ok(v)
            })
            .unwrap()
            .to_node()
            .unwrap();
        assert_eq!(after_spec.metadata.generation, Some(2));
        assert_eq!(
            after_spec.metadata.creation_timestamp,
            a.metadata.creation_timestamp
        );
    }

    #[test]
    fn stale_resource_version_conflicts_and_unconditional_overwrites() {
        let mut s = Store::new(100, 16);
        let a = s.create(node("a", json!({})), false).unwrap();
        patch_annotation(&mut s, "a", "new");
        let stale_rv = a.rv.to_string();
        let err = s
            .update("a", Subresource::Main, false, |mut v| {
                v["metadata"]["resourceVersion"] = json!(stale_rv);
                Ok(v)
            })
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        // Without resourceVersion the stale copy wins.
        let stale = a.to_value().unwrap();
        let out = s
            .update("a", Subresource::Main, false, move |_| {
                let mut v = stale;
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("resourceVersion");
                Ok(v)
            })
            .unwrap();
        assert_eq!(
            out.to_node().unwrap().metadata.annotations.unwrap()["a"],
            "1"
        );
    }

    #[test]
    fn subresource_rules() {
        let mut s = Store::new(100, 16);
        s.create(node("a", json!({})), false).unwrap();
        let via_status = s
            .update("a", Subresource::Status, false, |mut v| {
                v["spec"]["unschedulable"] = json!(true);
                v["metadata"]["labels"] = json!({"x": "y"});
                v["status"]["conditions"][0]["status"] = json!("False");
                Ok(v)
            })
            .unwrap()
            .to_node()
            .unwrap();
        assert_eq!(via_status.spec.unwrap().unschedulable, None);
        assert_eq!(via_status.metadata.labels.unwrap()["x"], "y");
        assert_eq!(
            via_status
                .status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()[0]
                .status,
            "False"
        );
        let via_main = s
            .update("a", Subresource::Main, false, |mut v| {
                v["status"]["conditions"][0]["status"] = json!("Unknown");
                Ok(v)
            })
            .unwrap()
            .to_node()
            .unwrap();
        assert_eq!(
            via_main.status.unwrap().conditions.unwrap()[0].status,
            "False"
        );
    }

    #[test]
    fn history_snapshots_and_compaction() {
        let mut s = Store::new(3, 16);
        s.create(node("a", json!({})), false).unwrap(); // 2
        s.create(node("b", json!({})), false).unwrap(); // 3
        patch_annotation(&mut s, "a", "x"); // 4
        let DeleteOutcome::Deleted(_) = s.delete("b", None, false).unwrap() else {
            panic!("expected delete")
        }; // 5
        // History holds 3..=5 (limit 3): compacted at 2.
        assert_eq!(s.compacted_rv(), 2);
        let at3 = s.snapshot_at(3).unwrap();
        assert_eq!(at3.len(), 2);
        assert_eq!(at3["a"].rv, 2);
        assert_eq!(at3["b"].rv, 3);
        let at2 = s.snapshot_at(2).unwrap();
        assert_eq!(at2.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.snapshot_at(1).unwrap_err().code, 410);
        assert_eq!(s.snapshot_at(9).unwrap_err().code, 504);
        let (events, _rx) = s.watch_from(3).unwrap();
        assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(s.watch_from(1).unwrap_err().code, 410);
        s.compact_all();
        assert_eq!(s.watch_from(4).unwrap_err().code, 410);
        assert!(s.watch_from(5).unwrap().0.is_empty());
    }

    #[test]
    fn create_conflicts_and_validation() {
        let mut s = Store::new(10, 16);
        s.create(node("a", json!({})), false).unwrap();
        assert_eq!(
            s.create(node("a", json!({})), false).unwrap_err().reason,
            "AlreadyExists"
        );
        let err = s
            .create(node("b", json!({"bad key!": "v"})), false)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let err = s
            .update("a", Subresource::Main, false, |mut v| {
                v["spec"]["podCIDRs"] = json!(["10.9.0.0/24"]);
                v["spec"]["podCIDR"] = json!("10.9.0.0/24");
                Ok(v)
            })
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("may not change podCIDR"),
            "{}",
            err.message
        );
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut s = Store::new(10, 16);
        let mut n = node("a", json!({}));
        n.metadata.finalizers = Some(vec!["example.com/f".into()]);
        s.create(n, false).unwrap();
        let DeleteOutcome::Pending(p) = s.delete("a", None, false).unwrap() else {
            panic!("finalizer must keep the object")
        };
        assert!(p.to_node().unwrap().metadata.deletion_timestamp.is_some());
        s.update("a", Subresource::Main, false, |mut v| {
            v["metadata"]["finalizers"] = json!([]);
            Ok(v)
        })
        .unwrap();
        assert!(s.get("a").is_none());
    }

    #[test]
    fn delete_preconditions() {
        let mut s = Store::new(10, 16);
        s.create(node("a", json!({})), false).unwrap();
        let p = Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        };
        let err = s.delete("a", Some(&p), false).err().unwrap();
        assert_eq!(err.code, 409);
        assert_eq!(s.delete("zz", None, false).err().unwrap().code, 404);
    }
}

#[cfg(test)]
mod managed_fields_tests {
    use super::*;
    use crate::nodegen::{self, GenerateSpec};
    use serde_json::json;

    fn entry<'a>(n: &'a Node, manager: &str, sub: Option<&str>) -> Option<&'a Value> {
        n.metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|e| e.manager.as_deref() == Some(manager) && e.subresource.as_deref() == sub)
            .and_then(|e| e.fields_v1.as_ref().map(|f| &f.0))
    }

    const FLANNEL: &str = "flannel.alpha.coreos.com/";

    #[test]
    fn clobber_and_heal_move_ownership_on_a_realistic_node() {
        let mut s = Store::new(100, 16);
        let generated = nodegen::node(&GenerateSpec::default(), 0).unwrap();
        let given = generated.metadata.managed_fields.clone();
        let name = generated.metadata.name.clone().unwrap();
        s.create(generated, false).unwrap();
        // Generated nodes keep the managedFields they were generated with.
        assert_eq!(
            s.get(&name)
                .unwrap()
                .to_node()
                .unwrap()
                .metadata
                .managed_fields,
            given
        );

        // An unconditional update from a stale copy without flannel's keys, plus one key of
        // the writer's own.
        let rancher = Writer::new("rancher", None);
        let n = s
            .update_as(&name, Subresource::Main, false, Some(&rancher), |mut v| {
                let ann = v["metadata"]["annotations"].as_object_mut().unwrap();
                ann.retain(|k, _| !k.starts_with(FLANNEL));
                ann.insert("cattle.io/status".into(), json!("x"));
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("resourceVersion");
                Ok(v)
            })
            .unwrap()
            .to_node()
            .unwrap();
        let flanneld = entry(&n, "flanneld", Some("status")).unwrap();
        assert!(
            flanneld.pointer("/f:metadata").is_none(),
            "flanneld keeps only its status fields: {flanneld}"
        );
        assert!(flanneld.pointer("/f:status/f:conditions").is_some());
        assert_eq!(
            entry(&n, "rancher", None).unwrap(),
            &json!({"f:metadata": {"f:annotations": {"f:cattle.io/status": {}}}})
        );
        // The kubelet's entries are untouched.
        assert_eq!(
            entry(&n, "kubelet", None),
            given
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.manager.as_deref() == Some("kubelet") && e.subresource.is_none())
                .and_then(|e| e.fields_v1.as_ref().map(|f| &f.0))
        );

        // flanneld heals through the status subresource: its keys are its own again.
        let flannel_writer = Writer::new("flanneld", Some("status"));
        let healed = s
            .update_as(
                &name,
                Subresource::Status,
                false,
                Some(&flannel_writer),
                |mut v| {
                    v["metadata"]["annotations"][format!("{FLANNEL}public-ip")] =
                        json!("192.168.0.1");
                    Ok(v)
                },
            )
            .unwrap()
            .to_node()
            .unwrap();
        let flanneld = entry(&healed, "flanneld", Some("status")).unwrap();
        assert!(
            flanneld["f:metadata"]["f:annotations"]
                .get(format!("f:{FLANNEL}public-ip"))
                .is_some(),
            "{flanneld}"
        );
        // The newest entry (last, sorted by time) is the healer's.
        let newest = healed
            .metadata
            .managed_fields
            .as_ref()
            .unwrap()
            .last()
            .unwrap();
        assert!(
            newest.time
                >= n.metadata
                    .managed_fields
                    .as_ref()
                    .unwrap()
                    .last()
                    .unwrap()
                    .time
        );
    }

    #[test]
    fn no_op_writes_keep_managed_fields_and_revision() {
        let mut s = Store::new(100, 16);
        let w = Writer::new("kubectl-annotate", None);
        let n = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let created = s.create_as(n, false, Some(&w)).unwrap();
        let first = s
            .update_as("a", Subresource::Main, false, Some(&w), |mut v| {
                v["metadata"]["annotations"] = json!({"k": "v"});
                Ok(v)
            })
            .unwrap();
        assert!(first.rv > created.rv);
        let again = s
            .update_as("a", Subresource::Main, false, Some(&w), |mut v| {
                v["metadata"]["annotations"] = json!({"k": "v"});
                Ok(v)
            })
            .unwrap();
        assert_eq!(again.rv, first.rv);
        let node = again.to_node().unwrap();
        let mf = node.metadata.managed_fields.unwrap();
        assert_eq!(mf.len(), 1);
        assert_eq!(
            mf[0].fields_v1.as_ref().unwrap().0,
            json!({"f:metadata": {"f:annotations": {".": {}, "f:k": {}}}})
        );
    }
}
