//! Who removed or changed our annotations, from the Node's `metadata.managedFields` (pure).
//!
//! The API server records, per (manager, operation, subresource), the fields each writer set
//! last (fieldsV1) and when. A key someone *changed* is owned by that writer's entry now. A key
//! someone *removed* is owned by nobody and leaves no mark of the remover; the best evidence
//! is then an entry written after our own last write — preferably one that touches
//! `metadata` (a controller writing back a stale copy usually sets something of its own
//! there), else the newest one.
//!
//! Our field manager: kube-rs sends no User-Agent, so our patches pass [`FIELD_MANAGER`]
//! explicitly (else the API server would record them under the manager name `""`); upstream
//! flanneld appears under the same name (derived from its User-Agent).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// The manager name upstream flanneld's writes carry (its User-Agent's first segment); the
/// name our writes should carry so operators see one name for both.
pub const FIELD_MANAGER: &str = "flanneld";

/// What happened to our keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Removed,
    Changed,
    RemovedAndChanged,
}

/// How sure the attribution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// The newest entry written after our last write (it may have changed something else).
    WroteAfterUs,
    /// An entry written after our last write that sets metadata (annotations or labels).
    WroteMetadataAfterUs,
    /// The entry owns the changed keys now.
    OwnsKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub change: Change,
    /// Our keys that were removed or changed, sorted.
    pub keys: Vec<String>,
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub time: Option<Timestamp>,
    pub evidence: Evidence,
}

/// `None` when none of `our_keys` was removed or changed, or no entry explains it. `our_manager`
/// names our own entries (never blamed); `our_last_write` is when we last wrote, used when our
/// entry is gone (a clobber can take everything it owned).
pub fn attribute(
    managed_fields: &[ManagedFieldsEntry],
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    our_keys: &[&str],
    our_manager: &str,
    our_last_write: Option<Timestamp>,
) -> Option<Attribution> {
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for key in our_keys {
        match (previous.get(*key), current.get(*key)) {
            (Some(_), None) => removed.push(key.to_string()),
            (Some(a), Some(b)) if a != b => changed.push(key.to_string()),
            _ => {}
        }
    }
    let change = match (removed.is_empty(), changed.is_empty()) {
        (true, true) => return None,
        (false, true) => Change::Removed,
        (true, false) => Change::Changed,
        (false, false) => Change::RemovedAndChanged,
    };
    let mut keys: Vec<String> = removed.iter().chain(&changed).cloned().collect();
    keys.sort();
    let theirs = || {
        managed_fields
            .iter()
            .filter(|e| e.manager.as_deref().unwrap_or("") != our_manager)
    };
    let newest =
        |a: &&ManagedFieldsEntry, b: &&ManagedFieldsEntry| entry_time(a).cmp(&entry_time(b));

    // A changed key is owned by whoever changed it.
    let owner = theirs()
        .filter(|e| changed.iter().any(|k| owns_annotation(e, k)))
        .max_by(newest);
    let (entry, evidence) = match owner {
        Some(e) => (e, Evidence::OwnsKeys),
        None => {
            let ours = managed_fields
                .iter()
                .filter(|e| e.manager.as_deref().unwrap_or("") == our_manager)
                .filter_map(entry_time)
                .max();
            let since = ours.max(our_last_write);
            let after =
                || theirs().filter(|e| since.is_none_or(|s| entry_time(e).is_some_and(|t| t >= s)));
            match after().filter(|e| touches_metadata(e)).max_by(newest) {
                Some(e) => (e, Evidence::WroteMetadataAfterUs),
                None => (after().max_by(newest)?, Evidence::WroteAfterUs),
            }
        }
    };
    Some(Attribution {
        change,
        keys,
        manager: entry.manager.clone().unwrap_or_default(),
        operation: entry.operation.clone().unwrap_or_default(),
        subresource: entry.subresource.clone().filter(|s| !s.is_empty()),
        time: entry_time(entry),
        evidence,
    })
}

fn entry_time(e: &ManagedFieldsEntry) -> Option<Timestamp> {
    e.time.as_ref().map(|t| t.0)
}

fn metadata(e: &ManagedFieldsEntry) -> Option<&serde_json::Map<String, Value>> {
    e.fields_v1.as_ref()?.0.get("f:metadata")?.as_object()
}

fn owns_annotation(e: &ManagedFieldsEntry, key: &str) -> bool {
    metadata(e)
        .and_then(|m| m.get("f:annotations"))
        .and_then(|a| a.get(format!("f:{key}")))
        .is_some()
}

fn touches_metadata(e: &ManagedFieldsEntry) -> bool {
    metadata(e).is_some_and(|m| m.contains_key("f:annotations") || m.contains_key("f:labels"))
}

impl fmt::Display for Attribution {
    /// `flannel annotations removed by field manager "rancher" (Update) at 10:14:02Z`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.change {
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::RemovedAndChanged => "removed and changed",
        };
        let hedge = if self.evidence == Evidence::WroteAfterUs {
            "probably "
        } else {
            ""
        };
        let op = match &self.subresource {
            Some(sub) => format!("{}, {sub}", self.operation),
            None => self.operation.clone(),
        };
        write!(
            f,
            "flannel annotations {what} {hedge}by field manager {:?} ({op})",
            self.manager
        )?;
        if let Some(t) = self.time {
            write!(f, " at {}", t.strftime("%H:%M:%SZ"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "flannel.alpha.coreos.com/";

    fn keys() -> Vec<String> {
        [
            "backend-data",
            "backend-type",
            "kube-subnet-manager",
            "public-ip",
        ]
        .iter()
        .map(|k| format!("{P}{k}"))
        .collect()
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ours() -> BTreeMap<String, String> {
        let mut m = ann(&[("node.alpha.kubernetes.io/ttl", "0")]);
        for k in keys() {
            m.insert(k, "v".into());
        }
        m
    }

    fn entries(v: Value) -> Vec<ManagedFieldsEntry> {
        serde_json::from_value(v).unwrap()
    }

    /// managedFields of a kubelet-registered node as a real API server leaves them after
    /// `rancher` wrote back a stale copy without flannel's keys (plus a key of its own).
    fn after_clobber() -> Vec<ManagedFieldsEntry> {
        entries(json!([
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T09:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:node.alpha.kubernetes.io/ttl": {}},
                 "f:labels": {".": {}, "f:kubernetes.io/hostname": {}}}, "f:spec": {"f:providerID": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T09:00:05Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, "v:\"10.244.1.0/24\"": {}}}}},
            {"manager": "flanneld", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T10:00:00Z", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"NetworkUnavailable\"}": {
                 ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T10:13:40Z", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}}}}}},
            {"manager": "rancher", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T10:14:02Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {"f:cattle.io/status": {}}}}},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-03-01T10:14:10Z", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:images": {}}}}
        ]))
    }

    fn key_refs(k: &[String]) -> Vec<&str> {
        k.iter().map(String::as_str).collect()
    }

    #[test]
    fn removal_is_blamed_on_the_metadata_writer_after_us() {
        let k = keys();
        let mut current = ann(&[("node.alpha.kubernetes.io/ttl", "0")]);
        current.insert("cattle.io/status".into(), "x".into());
        let a = attribute(
            &after_clobber(),
            &ours(),
            &current,
            &key_refs(&k),
            "flanneld",
            None,
        )
        .unwrap();
        assert_eq!(a.change, Change::Removed);
        assert_eq!(a.keys, k);
        assert_eq!(
            (
                a.manager.as_str(),
                a.operation.as_str(),
                a.subresource.as_deref()
            ),
            ("rancher", "Update", None)
        );
        assert_eq!(a.evidence, Evidence::WroteMetadataAfterUs);
        assert_eq!(
            a.to_string(),
            "flannel annotations removed by field manager \"rancher\" (Update) at 10:14:02Z"
        );
    }

    #[test]
    fn a_changed_key_is_blamed_on_its_new_owner() {
        let k = keys();
        let mut mf = after_clobber();
        mf.push(
            entries(
                json!([{"manager": "kubectl-annotate", "operation": "Update", "apiVersion": "v1",
            "time": "2026-03-01T10:20:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {format!("f:{P}public-ip"): {}}}}}]),
            )
            .remove(0),
        );
        let mut current = ours();
        current.insert(format!("{P}public-ip"), "10.9.9.9".into());
        let a = attribute(&mf, &ours(), &current, &key_refs(&k), "flanneld", None).unwrap();
        assert_eq!(a.change, Change::Changed);
        assert_eq!(a.keys, [format!("{P}public-ip")]);
        assert_eq!(a.manager, "kubectl-annotate");
        assert_eq!(a.evidence, Evidence::OwnsKeys);
        assert_eq!(
            a.to_string(),
            "flannel annotations changed by field manager \"kubectl-annotate\" (Update) at 10:20:00Z"
        );
    }

    #[test]
    fn only_writers_after_our_last_write_are_suspects() {
        let k = keys();
        // rancher's entry predates our last write: not the culprit; the kubelet's later status
        // write is the only candidate, and a weak one.
        let mut mf = after_clobber();
        for e in &mut mf {
            if e.manager.as_deref() == Some("rancher") {
                e.time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-03-01T08:00:00Z".parse().unwrap(),
                ));
            }
        }
        let current = ann(&[("node.alpha.kubernetes.io/ttl", "0")]);
        let a = attribute(&mf, &ours(), &current, &key_refs(&k), "flanneld", None).unwrap();
        assert_eq!(
            (a.manager.as_str(), a.evidence),
            ("kubelet", Evidence::WroteAfterUs)
        );
        assert_eq!(a.subresource.as_deref(), Some("status"));
        assert_eq!(
            a.to_string(),
            "flannel annotations removed probably by field manager \"kubelet\" (Update, status) at 10:14:10Z"
        );
        // Our entry gone and our last write known from elsewhere, later than everyone: nobody.
        let mf: Vec<_> = after_clobber()
            .into_iter()
            .filter(|e| e.manager.as_deref() != Some("flanneld"))
            .collect();
        let later: Timestamp = "2026-03-01T11:00:00Z".parse().unwrap();
        assert!(
            attribute(
                &mf,
                &ours(),
                &current,
                &key_refs(&k),
                "flanneld",
                Some(later)
            )
            .is_none()
        );
    }

    #[test]
    fn our_own_unnamed_writes_are_never_blamed() {
        // kube-rs without a field manager: our entries are named "".
        let k = keys();
        let mf = entries(json!([
            {"manager": "", "operation": "Update", "time": "2026-03-01T10:00:00Z", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {format!("f:{P}public-ip"): {}}}}},
            {"manager": "rancher", "operation": "Update", "time": "2026-03-01T10:14:02Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}}
        ]));
        let mut current = ours();
        current.remove(&format!("{P}backend-data"));
        current.insert(format!("{P}backend-type"), "host-gw".into());
        let a = attribute(&mf, &ours(), &current, &key_refs(&k), "", None).unwrap();
        assert_eq!(a.change, Change::RemovedAndChanged);
        assert_eq!(
            a.keys,
            [format!("{P}backend-data"), format!("{P}backend-type")]
        );
        assert_eq!(
            (a.manager.as_str(), a.evidence),
            ("rancher", Evidence::WroteMetadataAfterUs)
        );
        assert!(
            a.to_string().starts_with(
                "flannel annotations removed and changed by field manager \"rancher\""
            )
        );
    }

    #[test]
    fn nothing_to_attribute() {
        let k = keys();
        assert!(
            attribute(
                &after_clobber(),
                &ours(),
                &ours(),
                &key_refs(&k),
                "flanneld",
                None
            )
            .is_none()
        );
        // Keys we never had are not "removed".
        let none = BTreeMap::new();
        assert!(
            attribute(
                &after_clobber(),
                &none,
                &none,
                &key_refs(&k),
                "flanneld",
                None
            )
            .is_none()
        );
        // No entry at all: unknown.
        assert!(attribute(&[], &ours(), &none, &key_refs(&k), "flanneld", None).is_none());
    }
}
