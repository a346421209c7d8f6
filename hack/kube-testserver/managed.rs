//! `metadata.managedFields` as kube-apiserver maintains them for `Update` operations (this
//! server has no server-side apply): the manager comes from `?fieldManager=` or the
//! User-Agent's first path segment; each write compares the stored object with the new one;
//! fields it added or changed move to the writer's entry (one per manager, operation and
//! subresource), fields it removed leave every entry, and an entry left owning nothing is
//! dropped. The writer's `time` moves only when it set something (a write that only removes
//! fields leaves no trace of its author, as upstream).
//!
//! fieldsV1 is built without the OpenAPI schema, so list and map handling is a fixed table:
//! `status.conditions`/`status.addresses` keyed by `type`, `metadata.ownerReferences` by
//! `uid`, `spec.taints` by `key`+`effect`, `spec.podCIDRs` and `metadata.finalizers` as sets
//! (`v:`), every other list atomic. See README.md for what else is simplified.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::{Map, Value};

use crate::errors::ApiError;

/// Upstream's validation.FieldManagerMaxLength.
pub const FIELD_MANAGER_MAX_LEN: usize = 128;

/// Who is writing: the identity of one managedFields entry (operation is always `Update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub manager: String,
    /// `Some("status")` for writes to the status subresource.
    pub subresource: Option<String>,
}

impl Writer {
    pub fn new(manager: impl Into<String>, subresource: Option<&str>) -> Self {
        Self {
            manager: manager.into(),
            subresource: subresource.map(str::to_string),
        }
    }
}

/// The characters before the first '/', non-printable ones skipped, cut at 128 bytes: the
/// manager name the real server derives from a User-Agent such as
/// `kubectl/v1.33.0 (linux/amd64) kubernetes/abc` (→ `kubectl`).
pub fn prefix_from_user_agent(user_agent: &str) -> String {
    let head = user_agent.split('/').next().unwrap_or("");
    let mut out = String::new();
    for c in head.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > FIELD_MANAGER_MAX_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// The manager of a write: `fieldManager` if given (validated like upstream: ≤128 bytes,
/// printable), else derived from the User-Agent (empty when neither is sent).
pub fn manager_for(
    field_manager: Option<&str>,
    user_agent: Option<&str>,
    options_kind: &str,
) -> Result<String, ApiError> {
    match field_manager.filter(|m| !m.is_empty()) {
        Some(m) => {
            let mut causes = Vec::new();
            if m.len() > FIELD_MANAGER_MAX_LEN {
                causes.push((
                    "fieldManager".to_string(),
                    format!("Too long: may not be more than {FIELD_MANAGER_MAX_LEN} bytes"),
                ));
            }
            if let Some((i, c)) = m.char_indices().find(|(_, c)| c.is_control()) {
                causes.push((
                    "fieldManager".to_string(),
                    format!("Invalid value: {m:?}: invalid character {c:?} (at position {i})"),
                ));
            }
            if causes.is_empty() {
                Ok(m.to_string())
            } else {
                Err(ApiError::invalid(options_kind, "", causes))
            }
        }
        None => Ok(prefix_from_user_agent(user_agent.unwrap_or(""))),
    }
}

type Fields = Map<String, Value>;

#[derive(Clone, Copy)]
enum ListKind {
    Atomic,
    /// Elements identified by these fields (`k:{...}`).
    Keyed(&'static [&'static str]),
    /// Elements identified by their value (`v:...`).
    Set,
}

fn list_kind(path: &[String]) -> ListKind {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["status", "conditions"] | ["status", "addresses"] => ListKind::Keyed(&["type"]),
        ["metadata", "ownerReferences"] => ListKind::Keyed(&["uid"]),
        ["spec", "taints"] => ListKind::Keyed(&["effect", "key"]),
        ["spec", "podCIDRs"] | ["metadata", "finalizers"] => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

/// Fields nobody owns: type meta and system-set metadata (upstream's stripMeta list).
fn unmanaged(path: &[String], key: &str) -> bool {
    match path {
        [] => matches!(key, "kind" | "apiVersion"),
        [m] if m == "metadata" => matches!(
            key,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
                | "managedFields"
        ),
        _ => false,
    }
}

fn leaf() -> Value {
    Value::Object(Map::new())
}

fn is_leaf(v: &Value) -> bool {
    v.as_object().is_none_or(Map::is_empty)
}

fn element_key(kind: ListKind, elem: &Value) -> Option<String> {
    match kind {
        ListKind::Atomic => None,
        ListKind::Set => Some(format!("v:{elem}")),
        ListKind::Keyed(keys) => {
            let obj = elem.as_object()?;
            let mut k = Map::new();
            for key in keys {
                k.insert((*key).to_string(), obj.get(*key)?.clone());
            }
            Some(format!("k:{}", Value::Object(k)))
        }
    }
}

/// Elements of a keyed/set list by key, or None if some element has no key or keys repeat
/// (then the list is handled as atomic).
fn index_list(kind: ListKind, items: &[Value]) -> Option<Vec<(String, &Value)>> {
    let mut out: Vec<(String, &Value)> = Vec::with_capacity(items.len());
    for item in items {
        let key = element_key(kind, item)?;
        if out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        out.push((key, item));
    }
    Some(out)
}

/// Everything under a newly set value: a map (or list item) owns itself (".") and its
/// children; scalars and atomic lists are leaves. The top-level structs (metadata, spec,
/// status) carry no "." as in real objects.
fn owned_all(v: &Value, path: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            if path.len() > 1 {
                out.insert(".".into(), leaf());
            }
            for (k, child) in m {
                if unmanaged(path, k) {
                    continue;
                }
                path.push(k.clone());
                insert_owned(&mut out, format!("f:{k}"), child, path);
                path.pop();
            }
        }
        Value::Array(items) => {
            let kind = list_kind(path);
            if let Some(indexed) = index_list(kind, items) {
                out.insert(".".into(), leaf());
                for (key, item) in indexed {
                    let sub = match kind {
                        ListKind::Keyed(_) => owned_all(item, path),
                        _ => leaf(),
                    };
                    out.insert(key, sub);
                }
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// Inserts what a newly set value owns; a struct holding nothing managed owns nothing
/// (e.g. `metadata` with only its name).
fn insert_owned(out: &mut Fields, key: String, v: &Value, path: &mut Vec<String>) {
    let owned = owned_all(v, path);
    if v.is_object() && is_leaf(&owned) {
        return;
    }
    out.insert(key, owned);
}

/// Compares two maps: `set` gets the paths added or changed, `removed` the paths removed.
fn diff_map(
    old: &Fields,
    new: &Fields,
    path: &mut Vec<String>,
    set: &mut Fields,
    removed: &mut Fields,
) {
    for (k, nv) in new {
        if unmanaged(path, k) {
            continue;
        }
        let fk = format!("f:{k}");
        path.push(k.clone());
        match old.get(k) {
            None => insert_owned(set, fk, nv, path),
            Some(ov) if ov == nv => {}
            Some(ov) => {
                let mut s = Map::new();
                let mut r = Map::new();
                if diff_value(ov, nv, path, &mut s, &mut r) {
                    if !s.is_empty() {
                        set.insert(fk.clone(), Value::Object(s));
                    }
                    if !r.is_empty() {
                        removed.insert(fk, Value::Object(r));
                    }
                } else {
                    set.insert(fk, leaf());
                }
            }
        }
        path.pop();
    }
    for k in old.keys() {
        if !new.contains_key(k) && !unmanaged(path, k) {
            removed.insert(format!("f:{k}"), leaf());
        }
    }
}

/// Field-wise comparison of two different values; false when the value changed as a whole
/// (scalars, atomic lists, a type change).
fn diff_value(
    old: &Value,
    new: &Value,
    path: &mut Vec<String>,
    set: &mut Fields,
    removed: &mut Fields,
) -> bool {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            diff_map(o, n, path, set, removed);
            true
        }
        (Value::Array(o), Value::Array(n)) => {
            let kind = list_kind(path);
            let (Some(oi), Some(ni)) = (index_list(kind, o), index_list(kind, n)) else {
                return false;
            };
            for (key, nv) in &ni {
                match oi.iter().find(|(k, _)| k == key) {
                    None => {
                        let sub = match kind {
                            ListKind::Keyed(_) => owned_all(nv, path),
                            _ => leaf(),
                        };
                        set.insert(key.clone(), sub);
                    }
                    Some((_, ov)) if ov == nv => {}
                    Some((_, ov)) => {
                        let mut s = Map::new();
                        let mut r = Map::new();
                        if diff_value(ov, nv, path, &mut s, &mut r) {
                            if !s.is_empty() {
                                set.insert(key.clone(), Value::Object(s));
                            }
                            if !r.is_empty() {
                                removed.insert(key.clone(), Value::Object(r));
                            }
                        } else {
                            set.insert(key.clone(), leaf());
                        }
                    }
                }
            }
            for (key, _) in &oi {
                if !ni.iter().any(|(k, _)| k == key) {
                    removed.insert(key.clone(), leaf());
                }
            }
            true
        }
        _ => false,
    }
}

/// The (set, removed) field trees between two objects.
pub fn changed_fields(old: &Value, new: &Value) -> (Fields, Fields) {
    let empty = Map::new();
    let mut set = Map::new();
    let mut removed = Map::new();
    diff_map(
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
        &mut Vec::new(),
        &mut set,
        &mut removed,
    );
    (set, removed)
}

/// `a ∪ b`; a leaf meeting a subtree becomes the subtree plus ".".
pub fn union(a: &mut Fields, b: &Fields) {
    for (k, bv) in b {
        match a.get_mut(k) {
            None => {
                a.insert(k.clone(), bv.clone());
            }
            Some(av) => {
                let b_sub = bv.as_object().filter(|m| !m.is_empty());
                match (av.as_object_mut(), b_sub) {
                    (_, None) => {
                        if !is_leaf(av)
                            && let Some(m) = av.as_object_mut()
                        {
                            m.insert(".".into(), leaf());
                        }
                    }
                    (Some(am), Some(bm)) => {
                        if am.is_empty() {
                            am.insert(".".into(), leaf());
                        }
                        union(am, bm);
                    }
                    (None, Some(bm)) => *av = Value::Object(bm.clone()),
                }
            }
        }
    }
}

/// `a − b`: a leaf in `b` removes the whole subtree at that path from `a`; a subtree that
/// ends up owning nothing is dropped, a leaf of `a` under a subtree of `b` stays.
pub fn difference(a: &mut Fields, b: &Fields) {
    for (k, bv) in b {
        let Some(av) = a.get_mut(k) else { continue };
        if is_leaf(bv) {
            a.remove(k);
            continue;
        }
        if is_leaf(av) {
            continue;
        }
        if let (Some(am), Some(bm)) = (av.as_object_mut(), bv.as_object()) {
            difference(am, bm);
            if am.is_empty() {
                a.remove(k);
            }
        }
    }
}

fn entry_fields(e: &ManagedFieldsEntry) -> Fields {
    e.fields_v1
        .as_ref()
        .and_then(|f| f.0.as_object().cloned())
        .unwrap_or_default()
}

fn is_writer(e: &ManagedFieldsEntry, w: &Writer) -> bool {
    e.manager.as_deref().unwrap_or("") == w.manager
        && e.operation.as_deref() == Some("Update")
        && e.subresource.as_deref().filter(|s| !s.is_empty()) == w.subresource.as_deref()
}

/// A request asking to reset managedFields: a present but empty list, or one empty entry
/// (upstream's `isResetManagedFields`). The object then has none, and the write itself is
/// not recorded either.
pub fn is_reset(requested: &Option<Vec<ManagedFieldsEntry>>) -> bool {
    match requested.as_deref() {
        Some([]) => true,
        Some([only]) => *only == ManagedFieldsEntry::default(),
        _ => false,
    }
}

/// The entries an Update starts from, as upstream decides: none for a reset; the request's
/// own managedFields when it sent a list on the main resource (a client may rewrite them);
/// else (absent, or on a subresource) the stored ones.
pub fn base_entries(
    requested: Option<Vec<ManagedFieldsEntry>>,
    stored: Option<&Vec<ManagedFieldsEntry>>,
    subresource: Option<&str>,
) -> Vec<ManagedFieldsEntry> {
    if is_reset(&requested) {
        return Vec::new();
    }
    match requested {
        Some(r) if subresource.is_none() => r,
        _ => stored.cloned().unwrap_or_default(),
    }
}

/// Records one Update by `writer` that turned `old` into `new` (whole objects as JSON).
pub fn record_update(
    entries: &mut Vec<ManagedFieldsEntry>,
    writer: &Writer,
    old: &Value,
    new: &Value,
    api_version: &str,
    now: Time,
) {
    let (set, removed) = changed_fields(old, new);
    if set.is_empty() && removed.is_empty() {
        return;
    }
    let mut mine: Option<Fields> = None;
    let mut kept: Vec<ManagedFieldsEntry> = Vec::with_capacity(entries.len() + 1);
    let mut my_entry: Option<ManagedFieldsEntry> = None;
    for mut e in entries.drain(..) {
        let mut fields = entry_fields(&e);
        difference(&mut fields, &set);
        difference(&mut fields, &removed);
        if is_writer(&e, writer) && my_entry.is_none() {
            mine = Some(fields);
            my_entry = Some(e);
            continue;
        }
        if !fields.is_empty() {
            e.fields_v1 = Some(FieldsV1(Value::Object(fields)));
            kept.push(e);
        }
    }
    let mut fields = mine.unwrap_or_default();
    union(&mut fields, &set);
    difference(&mut fields, &removed);
    if !fields.is_empty() {
        let mut e = my_entry.unwrap_or_else(|| ManagedFieldsEntry {
            manager: Some(writer.manager.clone()),
            operation: Some("Update".into()),
            subresource: writer.subresource.clone(),
            ..Default::default()
        });
        e.api_version = Some(api_version.to_string());
        e.fields_type = Some("FieldsV1".into());
        if !set.is_empty() {
            e.time = Some(now);
        }
        e.fields_v1 = Some(FieldsV1(Value::Object(fields)));
        kept.push(e);
    }
    // Upstream's order: operation, time (seconds), manager, apiVersion, subresource.
    kept.sort_by(|a, b| {
        let secs = |e: &ManagedFieldsEntry| e.time.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
        (a.operation.as_deref(), secs(a), a.manager.as_deref())
            .cmp(&(b.operation.as_deref(), secs(b), b.manager.as_deref()))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    *entries = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn entries(v: Value) -> Vec<ManagedFieldsEntry> {
        serde_json::from_value(v).unwrap()
    }

    fn by(entries: &[ManagedFieldsEntry], manager: &str) -> Option<Value> {
        entries
            .iter()
            .find(|e| e.manager.as_deref() == Some(manager))
            .map(|e| e.fields_v1.clone().unwrap().0)
    }

    #[test]
    fn manager_from_user_agent_like_upstream() {
        assert_eq!(
            prefix_from_user_agent("kubectl/v1.33.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(prefix_from_user_agent("flanneld"), "flanneld");
        assert_eq!(prefix_from_user_agent("ab\u{7}c/x"), "abc");
        assert_eq!(prefix_from_user_agent(""), "");
        assert_eq!(prefix_from_user_agent(&"é".repeat(100)).len(), 128);
        assert_eq!(
            manager_for(Some("rancher"), Some("kubectl/v1"), "PatchOptions").unwrap(),
            "rancher"
        );
        assert_eq!(
            manager_for(Some(""), Some("kubectl/v1"), "X").unwrap(),
            "kubectl"
        );
        assert_eq!(manager_for(None, None, "X").unwrap(), "");
        let err = manager_for(Some(&"m".repeat(129)), None, "UpdateOptions").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("fieldManager"), "{}", err.message);
    }

    #[test]
    fn annotations_added_changed_and_removed() {
        let old = json!({"metadata": {"name": "n", "resourceVersion": "5",
            "annotations": {"mine": "1", "theirs": "1", "gone": "x"}}});
        let new = json!({"metadata": {"name": "n", "resourceVersion": "6",
            "annotations": {"mine": "2", "theirs": "1", "added": "y"}}});
        let (set, removed) = changed_fields(&old, &new);
        assert_eq!(
            Value::Object(set),
            json!({"f:metadata": {"f:annotations": {"f:mine": {}, "f:added": {}}}})
        );
        assert_eq!(
            Value::Object(removed),
            json!({"f:metadata": {"f:annotations": {"f:gone": {}}}})
        );
    }

    #[test]
    fn new_maps_and_keyed_lists_own_themselves() {
        let old = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let new = json!({"metadata": {"labels": {"a": "b"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"},
                                      {"type": "NetworkUnavailable", "status": "False"}]}});
        let (set, removed) = changed_fields(&old, &new);
        assert!(removed.is_empty());
        assert_eq!(
            Value::Object(set),
            json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}},
                   "f:status": {"f:conditions": {
                       "k:{\"type\":\"Ready\"}": {"f:status": {}},
                       "k:{\"type\":\"NetworkUnavailable\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
        );
    }

    #[test]
    fn set_lists_and_atomic_lists() {
        let old = json!({"spec": {"podCIDRs": ["a"], "x": [1, 2]}});
        let new = json!({"spec": {"podCIDRs": ["a", "b"], "x": [1]}});
        let (set, _) = changed_fields(&old, &new);
        assert_eq!(
            Value::Object(set),
            json!({"f:spec": {"f:podCIDRs": {"v:\"b\"": {}}, "f:x": {}}})
        );
    }

    #[test]
    fn ownership_moves_to_the_writer_and_removed_keys_to_nobody() {
        let mut e = entries(json!([
            {"manager": "flanneld", "operation": "Update", "subresource": "status", "apiVersion": "v1",
             "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:flannel/a": {}, "f:flannel/b": {}}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
             "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:l": {}}, "f:annotations": {"f:k": {}}}}}
        ]));
        let old = json!({"metadata": {"labels": {"l": "1"},
            "annotations": {"flannel/a": "1", "flannel/b": "1", "k": "1"}}});
        // A stale copy: flannel's keys gone, one of them rewritten by the clobberer, plus a
        // key of its own.
        let new = json!({"metadata": {"labels": {"l": "1"},
            "annotations": {"flannel/a": "9", "k": "1", "rancher/x": "1"}}});
        let w = Writer::new("rancher", None);
        record_update(&mut e, &w, &old, &new, "v1", t(1_800_000_000));
        assert!(
            by(&e, "flanneld").is_none(),
            "flanneld owns nothing any more: {e:?}"
        );
        assert_eq!(
            by(&e, "rancher").unwrap(),
            json!({"f:metadata": {"f:annotations": {"f:flannel/a": {}, "f:rancher/x": {}}}})
        );
        assert_eq!(
            by(&e, "kubelet").unwrap(),
            json!({"f:metadata": {"f:labels": {".": {}, "f:l": {}}, "f:annotations": {"f:k": {}}}})
        );
        let r = e
            .iter()
            .find(|x| x.manager.as_deref() == Some("rancher"))
            .unwrap();
        assert_eq!(r.operation.as_deref(), Some("Update"));
        assert_eq!(r.subresource, None);
        assert_eq!(r.time, Some(t(1_800_000_000)));
        assert_eq!(r.fields_type.as_deref(), Some("FieldsV1"));
        // Sorted by time: the rancher entry is the newest, last.
        assert_eq!(e.last().unwrap().manager.as_deref(), Some("rancher"));
    }

    #[test]
    fn one_entry_per_manager_and_subresource() {
        let mut e = Vec::new();
        let a = json!({"metadata": {"annotations": {"x": "1"}}});
        let b = json!({"metadata": {"annotations": {"x": "1", "y": "1"}}});
        let c = json!({"metadata": {"annotations": {"x": "2", "y": "1"}}});
        let status = Writer::new("flanneld", Some("status"));
        record_update(&mut e, &status, &json!({}), &a, "v1", t(10));
        record_update(&mut e, &status, &a, &b, "v1", t(20));
        assert_eq!(e.len(), 1);
        assert_eq!(
            by(&e, "flanneld").unwrap(),
            json!({"f:metadata": {"f:annotations": {".": {}, "f:x": {}, "f:y": {}}}})
        );
        assert_eq!(e[0].time, Some(t(20)));
        record_update(&mut e, &Writer::new("flanneld", None), &b, &c, "v1", t(30));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].subresource.as_deref(), Some("status"));
        assert_eq!(
            e[0].fields_v1.clone().unwrap().0,
            json!({"f:metadata": {"f:annotations": {".": {}, "f:y": {}}}})
        );
        assert_eq!(e[1].subresource, None);
    }

    #[test]
    fn removal_only_leaves_no_trace_of_the_writer() {
        let mut e = entries(json!([
            {"manager": "flanneld", "operation": "Update", "time": "2026-01-01T00:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:a": {}}}}}
        ]));
        let old = json!({"metadata": {"annotations": {"a": "1"}}});
        let new = json!({"metadata": {"annotations": {}}});
        record_update(
            &mut e,
            &Writer::new("rancher", None),
            &old,
            &new,
            "v1",
            t(5),
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn union_and_difference_respect_subtrees() {
        let mut a = json!({"f:s": {}, "f:m": {".": {}, "f:x": {}}})
            .as_object()
            .cloned()
            .unwrap();
        union(&mut a, json!({"f:s": {"f:c": {}}}).as_object().unwrap());
        assert_eq!(
            Value::Object(a.clone()),
            json!({"f:s": {".": {}, "f:c": {}}, "f:m": {".": {}, "f:x": {}}})
        );
        difference(&mut a, json!({"f:m": {}}).as_object().unwrap());
        assert_eq!(
            Value::Object(a.clone()),
            json!({"f:s": {".": {}, "f:c": {}}})
        );
        difference(&mut a, json!({"f:s": {"f:c": {}}}).as_object().unwrap());
        assert_eq!(Value::Object(a), json!({"f:s": {".": {}}}));
    }

    #[test]
    fn base_entries_rules() {
        let stored = entries(json!([{"manager": "kubelet", "operation": "Update"}]));
        let given = entries(json!([{"manager": "me", "operation": "Update"}]));
        assert_eq!(base_entries(None, Some(&stored), None), stored);
        assert!(base_entries(Some(vec![]), Some(&stored), None).is_empty());
        assert!(is_reset(&Some(vec![])) && !is_reset(&None) && !is_reset(&Some(stored.clone())));
        assert_eq!(
            base_entries(Some(given.clone()), Some(&stored), None),
            given
        );
        assert_eq!(
            base_entries(Some(given), Some(&stored), Some("status")),
            stored
        );
        assert!(
            base_entries(
                Some(vec![ManagedFieldsEntry::default()]),
                Some(&stored),
                None
            )
            .is_empty()
        );
    }
}
