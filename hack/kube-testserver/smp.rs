//! Strategic merge patch (`application/strategic-merge-patch+json`) for core/v1 Node, following
//! apimachinery's `strategicpatch` semantics for the patch strategies Node declares:
//! `metadata.ownerReferences` merge by `uid`, `metadata.finalizers` and `spec.podCIDRs` merge as
//! sets, `status.conditions` / `status.addresses` merge by `type`; every other list is replaced.
//! Maps merge recursively, `null` deletes a key, and the directives `$patch`
//! (`replace`/`delete`/`merge`), `$retainKeys`, `$deleteFromPrimitiveList/<f>` and
//! `$setElementOrder/<f>` are honoured.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmpError {
    #[error("map: {0} does not contain declared merge key: {1}")]
    MissingMergeKey(String, &'static str),
    #[error("Unknown patch type: {0}")]
    UnknownPatchType(String),
    #[error("invalid patch: {0}")]
    BadPatch(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    Replace,
    MergeByKey(&'static str),
    MergePrimitive,
}

/// Patch strategies declared on Node's Go types (patchStrategy / patchMergeKey tags).
fn list_strategy(path: &[&str]) -> ListStrategy {
    match path {
        ["metadata", "ownerReferences"] => ListStrategy::MergeByKey("uid"),
        ["metadata", "finalizers"] => ListStrategy::MergePrimitive,
        ["spec", "podCIDRs"] => ListStrategy::MergePrimitive,
        ["status", "conditions"] => ListStrategy::MergeByKey("type"),
        ["status", "addresses"] => ListStrategy::MergeByKey("type"),
        _ => ListStrategy::Replace,
    }
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to the Node JSON `original` and returns the result.
pub fn apply_node_patch(original: &Value, patch: &Value) -> Result<Value, SmpError> {
    let Value::Object(patch_map) = patch else {
        return Err(SmpError::BadPatch(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut result = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    match merge_map(&mut result, patch_map, &mut Vec::new())? {
        MapOutcome::Keep => Ok(Value::Object(result)),
        MapOutcome::Delete => Ok(Value::Object(Map::new())),
    }
}

enum MapOutcome {
    Keep,
    Delete,
}

fn merge_map<'p>(
    original: &mut Map<String, Value>,
    patch: &'p Map<String, Value>,
    path: &mut Vec<&'p str>,
) -> Result<MapOutcome, SmpError> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(s)) if s == "merge" => {}
        Some(Value::String(s)) if s == "replace" => {
            *original = clean_map(patch);
            return Ok(MapOutcome::Keep);
        }
        Some(Value::String(s)) if s == "delete" => return Ok(MapOutcome::Delete),
        Some(other) => return Err(SmpError::UnknownPatchType(other.to_string())),
    }

    // Deletions from primitive lists come first, so a patch may delete and re-add.
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let Value::Array(remove) = value else {
                return Err(SmpError::BadPatch(format!("{key} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }

    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(child_patch) => match original.get_mut(key) {
                Some(Value::Object(child)) => {
                    path.push(key);
                    let outcome = merge_map(child, child_patch, path)?;
                    path.pop();
                    if let MapOutcome::Delete = outcome {
                        original.remove(key);
                    }
                }
                _ => {
                    if is_delete_directive(child_patch) {
                        original.remove(key);
                    } else {
                        original.insert(key.clone(), Value::Object(clean_map(child_patch)));
                    }
                }
            },
            Value::Array(items) => {
                path.push(key);
                let strategy = list_strategy(path);
                let merged = merge_list(original.get(key), items, strategy, path)?;
                path.pop();
                original.insert(key.clone(), Value::Array(merged));
            }
            primitive => {
                original.insert(key.clone(), primitive.clone());
            }
        }
    }

    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let Value::Array(order) = value else {
                return Err(SmpError::BadPatch(format!("{key} must be a list")));
            };
            path.push(field);
            let strategy = list_strategy(path);
            path.pop();
            if let Some(Value::Array(list)) = original.get_mut(field) {
                apply_element_order(list, order, strategy);
            }
        }
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = retain else {
            return Err(SmpError::BadPatch("$retainKeys must be a list".into()));
        };
        original.retain(|k, _| keys.iter().any(|r| r.as_str() == Some(k.as_str())));
    }
    Ok(MapOutcome::Keep)
}

fn is_delete_directive(m: &Map<String, Value>) -> bool {
    m.get(PATCH).and_then(Value::as_str) == Some("delete")
}

fn merge_list<'p>(
    original: Option<&Value>,
    patch: &'p [Value],
    strategy: ListStrategy,
    path: &mut Vec<&'p str>,
) -> Result<Vec<Value>, SmpError> {
    let replace_directive = patch.iter().any(|v| {
        v.as_object()
            .and_then(|m| m.get(PATCH))
            .and_then(Value::as_str)
            == Some("replace")
    });
    let cleaned_patch = || -> Vec<Value> {
        patch
            .iter()
            .filter(|v| !v.as_object().is_some_and(|m| m.contains_key(PATCH)))
            .map(clean_value)
            .collect()
    };
    if replace_directive || strategy == ListStrategy::Replace {
        return Ok(cleaned_patch());
    }
    let mut result = match original {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    };
    match strategy {
        ListStrategy::Replace => unreachable!("handled above"),
        ListStrategy::MergePrimitive => {
            for item in patch {
                if !result.contains(item) {
                    result.push(item.clone());
                }
            }
        }
        ListStrategy::MergeByKey(merge_key) => {
            for item in patch {
                let Value::Object(item_map) = item else {
                    return Err(SmpError::BadPatch(format!(
                        "list items of a merging list must be objects, got {item}"
                    )));
                };
                let Some(key_value) = item_map.get(merge_key) else {
                    return Err(SmpError::MissingMergeKey(item.to_string(), merge_key));
                };
                let existing = result
                    .iter()
                    .position(|e| e.get(merge_key) == Some(key_value));
                if is_delete_directive(item_map) {
                    result.retain(|e| e.get(merge_key) != Some(key_value));
                    continue;
                }
                match existing {
                    Some(idx) => {
                        if let Value::Object(target) = &mut result[idx] {
                            if let MapOutcome::Delete = merge_map(target, item_map, path)? {
                                result.remove(idx);
                            }
                        } else {
                            result[idx] = Value::Object(clean_map(item_map));
                        }
                    }
                    None => result.push(Value::Object(clean_map(item_map))),
                }
            }
        }
    }
    Ok(result)
}

/// Reorders `list` so the elements named in `order` appear in that order; elements the order
/// does not name keep their slots (server-only items stay where they were).
fn apply_element_order(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let identity = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(k) => v.get(k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let order_ids: Vec<Value> = order.iter().filter_map(identity).collect();
    let rank = |v: &Value| identity(v).and_then(|id| order_ids.iter().position(|o| *o == id));
    let slots: Vec<usize> = (0..list.len())
        .filter(|&i| rank(&list[i]).is_some())
        .collect();
    let mut ordered: Vec<Value> = slots.iter().map(|&i| list[i].clone()).collect();
    ordered.sort_by_key(|v| rank(v).unwrap_or(usize::MAX));
    for (slot, value) in slots.into_iter().zip(ordered) {
        list[slot] = value;
    }
}

/// Strips directives and null values from a patch fragment that is inserted as a new value.
fn clean_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(clean_map(m)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| !i.as_object().is_some_and(is_delete_directive))
                .map(clean_value)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn clean_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), clean_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {
                "name": "n1",
                "labels": {"a": "1", "b": "2"},
                "annotations": {"keep": "x", "flannel.alpha.coreos.com/public-ip": "1.2.3.4"},
                "finalizers": ["f1"]
            },
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"], "taints": [{"key": "t1", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason": "ok"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"}
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "192.168.0.1"},
                    {"type": "Hostname", "address": "n1"}
                ],
                "images": [{"names": ["a"]}, {"names": ["b"]}],
                "capacity": {"cpu": "4", "memory": "8Gi"}
            }
        })
    }

    /// [`node`] with `patch` applied.
    fn patched(patch: Value) -> Value {
        apply_node_patch(&node(), &patch).unwrap()
    }

    #[test]
    fn conditions_merge_by_type() {
        let out = patched(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "NetworkUnavailable", "status": "False"}
        ]}}));
        let conds = out["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[0]["type"], "MemoryPressure");
        assert_eq!(conds[1]["type"], "Ready");
        assert_eq!(conds[1]["status"], "False");
        // Unpatched fields of the merged element survive.
        assert_eq!(conds[1]["reason"], "KubeletReady");
        assert_eq!(conds[2]["type"], "NetworkUnavailable");
    }

    #[test]
    fn addresses_merge_by_type_and_delete_directive() {
        let out = patched(json!({"status": {"addresses": [
            {"type": "ExternalIP", "address": "1.1.1.1"},
            {"type": "Hostname", "$patch": "delete"}
        ]}}));
        assert_eq!(
            out["status"]["addresses"],
            json!([
                {"type": "InternalIP", "address": "192.168.0.1"},
                {"type": "ExternalIP", "address": "1.1.1.1"}
            ])
        );
    }

    #[test]
    fn replace_directive_on_list_and_map() {
        let out = patched(json!({
            "status": {"conditions": [{"$patch": "replace"}, {"type": "Ready", "status": "True"}]},
            "metadata": {"labels": {"$patch": "replace", "only": "this"}}
        }));
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
        assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));
        assert_eq!(out["metadata"]["annotations"]["keep"], "x");
    }

    #[test]
    fn delete_directive_on_map() {
        let out = patched(json!({"metadata": {"annotations": {"$patch": "delete"}}}));
        assert!(out["metadata"].get("annotations").is_none());
        assert_eq!(out["metadata"]["labels"]["a"], "1");
    }

    #[test]
    fn null_deletes_and_maps_merge() {
        let out = patched(
            json!({"metadata": {"annotations": {"keep": null, "new": "y"}, "labels": {"b": "3"}}}),
        );
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"flannel.alpha.coreos.com/public-ip": "1.2.3.4", "new": "y"})
        );
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "3"}));
    }

    #[test]
    fn lists_without_strategy_replace() {
        let out =
            patched(json!({"status": {"images": [{"names": ["c"]}]}, "spec": {"taints": []}}));
        assert_eq!(out["status"]["images"], json!([{"names": ["c"]}]));
        assert_eq!(out["spec"]["taints"], json!([]));
    }

    #[test]
    fn primitive_merge_lists_union_and_delete() {
        let out = patched(
            json!({"spec": {"podCIDRs": ["fd00::/64", "10.0.1.0/24"]}, "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(out["spec"]["podCIDRs"], json!(["10.0.1.0/24", "fd00::/64"]));
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
    }

    #[test]
    fn set_element_order() {
        let out = patched(
            json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}, {"type": "MemoryPressure"}]}}),
        );
        let types: Vec<&str> = out["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Ready", "MemoryPressure"]);
    }

    #[test]
    fn retain_keys() {
        let out = patched(
            json!({"status": {"capacity": {"$retainKeys": ["cpu", "pods"], "pods": "110"}}}),
        );
        assert_eq!(
            out["status"]["capacity"],
            json!({"cpu": "4", "pods": "110"})
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            apply_node_patch(
                &node(),
                &json!({"status": {"conditions": [{"status": "True"}]}})
            ),
            Err(SmpError::MissingMergeKey(
                r#"{"status":"True"}"#.into(),
                "type"
            ))
        );
        assert!(matches!(
            apply_node_patch(&node(), &json!({"metadata": {"$patch": "bogus"}})),
            Err(SmpError::UnknownPatchType(_))
        ));
        assert!(apply_node_patch(&node(), &json!([1])).is_err());
    }

    #[test]
    fn new_values_are_cleaned_of_nulls_and_directives() {
        let out = apply_node_patch(
            &json!({"metadata": {"name": "n"}}),
            &json!({"metadata": {"labels": {"x": "1", "y": null}}, "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Gone", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }
}
