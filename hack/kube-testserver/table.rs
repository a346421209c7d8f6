//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which
//! `kubectl get` asks for: the Node columns of upstream's printers.

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// True when the Accept header asks for a meta.k8s.io Table.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').any(|part| part.contains("as=Table")))
}

pub fn column_definitions() -> Value {
    let col = |name: &str, ty: &str, format: &str, desc: &str, priority: u32| json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority});
    json!([
        col(
            "Name",
            "string",
            "name",
            "Name must be unique within a namespace.",
            0
        ),
        col("Status", "string", "", "The status of the node", 0),
        col("Roles", "string", "", "The roles of the node", 0),
        col(
            "Age",
            "string",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0
        ),
        col(
            "Version",
            "string",
            "",
            "Kubelet Version reported by the node.",
            0
        ),
        col(
            "Internal-IP",
            "string",
            "",
            "List of addresses reachable to the node.",
            1
        ),
        col(
            "External-IP",
            "string",
            "",
            "List of addresses reachable to the node.",
            1
        ),
        col(
            "OS-Image",
            "string",
            "",
            "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            1
        ),
        col(
            "Kernel-Version",
            "string",
            "",
            "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            1
        ),
        col(
            "Container-Runtime",
            "string",
            "",
            "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            1
        ),
    ])
}

/// `{big}{big_unit}` followed by `{small}{small_unit}` unless `small` is zero (`5m30s`, `5m`).
fn two_units(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        two_units(m, "m", secs % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        two_units(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        two_units(d, "d", h % 24, "h")
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

pub fn row(node: &Node, include: IncludeObject) -> Value {
    let meta = &node.metadata;
    let status = node.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True");
    let mut state = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        state.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta
        .labels
        .iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let age = meta
        .creation_timestamp
        .as_ref()
        .map(|t| human_duration(k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()))
        .unwrap_or_else(|| "<unknown>".into());
    let info = status.node_info.clone().unwrap_or_default();
    let address = |ty: &str| {
        status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == ty)
            .map(|a| a.address.clone())
            .unwrap_or_else(|| "<none>".into())
    };
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": serde_json::to_value(meta).unwrap_or(Value::Null),
        }),
        IncludeObject::Object => serde_json::to_value(node).unwrap_or(Value::Null),
    };
    let mut r = json!({
        "cells": [
            meta.name.clone().unwrap_or_default(),
            state,
            roles,
            age,
            info.kubelet_version,
            address("InternalIP"),
            address("ExternalIP"),
            info.os_image,
            info.kernel_version,
            info.container_runtime_version,
        ],
    });
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

pub fn table(
    rows: Vec<Value>,
    resource_version: &str,
    cont: Option<&str>,
    with_columns: bool,
) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": rows,
    });
    if with_columns {
        t["columnDefinitions"] = column_definitions();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn node_row() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/worker": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.1", "architecture": "", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}}
        }))
        .unwrap();
        let r = row(&node, IncludeObject::Metadata);
        assert_eq!(r["cells"][0], "n1");
        assert_eq!(r["cells"][1], "Ready,SchedulingDisabled");
        assert_eq!(r["cells"][2], "worker");
        assert_eq!(r["cells"][4], "v1.33.1");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
    }
}
