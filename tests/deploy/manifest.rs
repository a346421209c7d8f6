//! Loads deploy/kube-flannel-rs.yml into k8s-openapi types, strictly: every document must be
//! a known kind, and serializing the typed object back must give exactly the document (a
//! field k8s-openapi does not know, or a misspelt one, would be dropped and so differ).
//! Shared by the manifest test and the podman end-to-end test, which both treat the file as
//! the only source of truth.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount, Volume};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub const MANIFEST: &str = "deploy/kube-flannel-rs.yml";
pub const EVENTS_MANIFEST: &str = "deploy/kube-flannel-rs-events.yml";

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub namespaces: Vec<Namespace>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub service_accounts: Vec<ServiceAccount>,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
    /// `(kind, name)` in file order.
    pub order: Vec<(String, String)>,
}

fn strict<T: DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("{what}: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{what}: {e}"))?;
    if &back != doc {
        return Err(format!(
            "{what}: fields k8s-openapi does not know (or wrong types) — the document and its typed round trip differ:\n  file:  {doc}\n  typed: {back}"
        ));
    }
    Ok(typed)
}

pub fn parse(text: &str) -> Result<Manifest, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("YAML: {e}"))?;
    let mut m = Manifest::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let what = format!("{kind} {name:?}");
        match kind.as_str() {
            "Namespace" => m.namespaces.push(strict(&doc, &what)?),
            "ClusterRole" => m.cluster_roles.push(strict(&doc, &what)?),
            "ClusterRoleBinding" => m.cluster_role_bindings.push(strict(&doc, &what)?),
            "ServiceAccount" => m.service_accounts.push(strict(&doc, &what)?),
            "ConfigMap" => m.config_maps.push(strict(&doc, &what)?),
            "DaemonSet" => m.daemon_sets.push(strict(&doc, &what)?),
            other => return Err(format!("{what}: unexpected kind {other:?}")),
        }
        m.order.push((kind, name));
    }
    Ok(m)
}

pub fn load(rel: &str) -> Result<Manifest, String> {
    let path = repo_path(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Manifest {
    pub fn daemon_set(&self) -> &DaemonSet {
        &self.daemon_sets[0]
    }

    pub fn config_map(&self) -> &ConfigMap {
        &self.config_maps[0]
    }

    /// A ConfigMap data key.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config_map()
            .data
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    pub fn pod_spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.daemon_set()
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("DaemonSet has a pod template spec")
    }

    pub fn init_containers(&self) -> &[Container] {
        self.pod_spec()
            .init_containers
            .as_deref()
            .unwrap_or_default()
    }

    pub fn main_container(&self) -> &Container {
        &self.pod_spec().containers[0]
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.pod_spec()
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == name)
    }

    /// The host path behind `container`'s mount at `mount_path`, if it is a hostPath volume.
    pub fn host_path_of(&self, container: &Container, mount_path: &str) -> Option<String> {
        let mount = container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.mount_path.trim_end_matches('/') == mount_path.trim_end_matches('/'))?;
        Some(self.volume(&mount.name)?.host_path.as_ref()?.path.clone())
    }
}

/// `command` + `args` of a container.
pub fn argv(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

/// The value of `--name=VALUE` in `args`.
pub fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}
