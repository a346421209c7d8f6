//! Keeps our Node's flannel annotations as we want them, forever.
//!
//! Upstream writes them once at start-up; when another controller replaced the annotation map
//! with a stale copy, they were gone until flanneld restarted. Here every change of our own
//! Node is compared with the desired annotations and a difference is re-asserted with a merge
//! patch to `nodes/NAME/status` that carries the resourceVersion it was computed from (409 →
//! re-read, recompute, retry). A writer that keeps undoing us is met with exponential backoff
//! and loud logs, never a hot loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use rand::SeedableRng;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::health::Readiness;
use super::kube::NodeStatusWriter;
use super::metrics::Metrics;
use super::node_cache::NodeCache;
use super::pure::annotations::AnnotationPrefix;
use super::pure::attribution::{self, Attribution, Change, Evidence, FIELD_MANAGER};
use super::pure::backoff::{Backoff, HealGovernor};
use super::pure::node::NodeInfo;

/// Computes the patch that would bring a view of our Node to the desired annotations, or
/// `None` when it already carries them. The patch must include
/// `metadata.resourceVersion` of the view it was computed from.
pub type PatchFor = Arc<dyn Fn(&NodeInfo) -> Option<serde_json::Value> + Send + Sync>;

/// Pacing: API errors back off exponentially; heals back off while clobbers keep coming.
#[derive(Debug, Clone)]
pub struct KeeperTiming {
    pub errors: Backoff,
    pub heals: HealGovernor,
}

impl Default for KeeperTiming {
    fn default() -> Self {
        Self {
            errors: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            heals: HealGovernor::standard(),
        }
    }
}

/// The last heal, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealRecord {
    /// When the healing patch was accepted (RFC 3339, our clock).
    pub at: String,
    /// From noticing the difference to the accepted patch.
    pub took_ms: u64,
    /// `flannel annotations removed by field manager "…" (Update) at …`, or that nobody is
    /// known.
    pub summary: String,
    /// Who, when the Node's managedFields tell.
    pub by: Option<Blame>,
}

/// [`Attribution`] in `/status`'s words.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Blame {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    /// Of the blamed managedFields entry (API server's clock, whole seconds).
    pub time: Option<String>,
    /// `removed`, `changed` or `removed_and_changed`.
    pub change: &'static str,
    pub keys: Vec<String>,
    /// `owns_keys`, `wrote_metadata_after_us` or `wrote_after_us` (a guess).
    pub evidence: &'static str,
}

impl From<&Attribution> for Blame {
    fn from(a: &Attribution) -> Self {
        Blame {
            manager: a.manager.clone(),
            operation: a.operation.clone(),
            subresource: a.subresource.clone(),
            time: a.time.map(|t| t.to_string()),
            change: match a.change {
                Change::Removed => "removed",
                Change::Changed => "changed",
                Change::RemovedAndChanged => "removed_and_changed",
            },
            keys: a.keys.clone(),
            evidence: match a.evidence {
                Evidence::OwnsKeys => "owns_keys",
                Evidence::WroteMetadataAfterUs => "wrote_metadata_after_us",
                Evidence::WroteAfterUs => "wrote_after_us",
            },
        }
    }
}

/// The keeper writes the last heal; `/status` reads it.
pub type SharedHeal = Arc<Mutex<Option<HealRecord>>>;

pub struct AnnotationKeeper {
    pub writer: NodeStatusWriter,
    pub cache: Arc<NodeCache>,
    pub patch_for: PatchFor,
    pub prefix: AnnotationPrefix,
    pub metrics: Arc<Metrics>,
    pub timing: KeeperTiming,
    /// Told (its annotations gate) once our annotations are published as desired.
    pub readiness: Readiness,
    pub last_heal: SharedHeal,
    /// Each heal is an `AnnotationsRestored` Event on our Node.
    pub events: Events,
}

impl AnnotationKeeper {
    /// Runs until `shutdown`; wakes on every change of our own Node.
    pub async fn run(mut self, mut own_changed: watch::Receiver<u64>, shutdown: CancellationToken) {
        let node = self.writer.node().to_string();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        // The freshest view we know of: the cache, or the object a patch/GET returned when
        // that is newer than what the watch has delivered so far. Kept across waits: a wake-up
        // from an older watch event must not make us act on a view older than our own write.
        let mut newer: Option<NodeInfo> = None;
        // Set once we saw our annotations in place: a later difference is someone's removal.
        let mut converged_once = false;
        // When the current difference was first noticed (heal time is measured from here).
        let mut noticed: Option<Instant> = None;
        // The heal delay for the current difference was already served.
        let mut paced = false;
        // Our annotations as last seen in place: what a later difference is measured against.
        let mut in_place: BTreeMap<String, String> = BTreeMap::new();
        // Who caused the current difference (asked once per difference, just before healing).
        let mut blame: Option<Option<Attribution>> = None;

        loop {
            newer = freshest(self.cache.get(&node), newer.take());
            let Some(view) = newer.clone() else {
                // Our Node is not in the cache yet (initial list, or it was deleted).
                if !wait(&mut own_changed, &shutdown, None).await {
                    return;
                }
                continue;
            };
            let Some(patch) = (self.patch_for)(&view) else {
                if !converged_once {
                    tracing::info!(node = %node, "node annotations are as desired");
                }
                converged_once = true;
                noticed = None;
                paced = false;
                blame = None;
                in_place = view.annotations.to_map();
                self.timing.errors.reset();
                self.readiness.update(|g| g.annotations_published = true);
                if !wait(&mut own_changed, &shutdown, None).await {
                    return;
                }
                continue;
            };
            let noticed_at = *noticed.get_or_insert_with(Instant::now);

            if converged_once && !paced {
                // Someone removed or changed what we published. Heal at once — unless that
                // keeps happening: then back off so two controllers never fight in a hot loop.
                paced = true;
                let delay = self.timing.heals.delay_for_heal(Instant::now(), &mut rng);
                if !delay.is_zero() {
                    let level_loud = self.timing.heals.is_fighting();
                    if level_loud {
                        tracing::error!(
                            node = %node,
                            heals_in_a_row = self.timing.heals.streak(),
                            backoff_ms = delay.as_millis() as u64,
                            "another writer keeps removing or changing flannel's node annotations; \
                             backing off before re-asserting them (look for a controller that \
                             replaces the Node's annotations without a resourceVersion)"
                        );
                    } else {
                        tracing::warn!(node = %node, backoff_ms = delay.as_millis() as u64,
                            "node annotations changed again soon after a heal; pacing the re-assertion");
                    }
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                    // Re-evaluate against whatever is current after the pause.
                    continue;
                }
            }

            if converged_once && blame.is_none() {
                blame = Some(self.attribute(&in_place).await);
            }
            let rv = view.resource_version.clone();
            match self.writer.merge_patch_status(&patch).await {
                Ok(updated) => {
                    self.metrics.count_annotation_write();
                    self.timing.errors.reset();
                    if converged_once {
                        let took = noticed_at.elapsed();
                        let took_ms = took.as_millis() as u64;
                        let by = blame.as_ref().and_then(Option::as_ref);
                        self.metrics
                            .count_annotation_heal(took, by.map(|a| a.manager.as_str()));
                        let summary = by.map(Attribution::to_string).unwrap_or_else(|| {
                            "flannel annotations were missing or changed on our Node (managedFields \
                             do not say by whom)"
                                .into()
                        });
                        tracing::warn!(
                            node = %node,
                            resource_version = %rv,
                            heal_ms = took_ms,
                            field_manager = by.map(|a| a.manager.as_str()),
                            "{summary}; restored in {took_ms} ms"
                        );
                        self.events.annotations_restored(by, &summary, took_ms);
                        if let Ok(mut last) = self.last_heal.lock() {
                            *last = Some(HealRecord {
                                at: Timestamp::now().to_string(),
                                took_ms,
                                summary,
                                by: by.map(Blame::from),
                            });
                        }
                    } else {
                        tracing::info!(node = %node, resource_version = %rv, "published node annotations");
                    }
                    newer = Some(NodeInfo::from_slim(updated, &self.prefix));
                }
                Err(err) if err.is_conflict() => {
                    self.metrics.count_annotation_conflict();
                    tracing::info!(node = %node, resource_version = %rv,
                        "annotation patch conflicted (409); re-reading the node");
                    match self.writer.get().await {
                        Ok(fresh) => newer = Some(NodeInfo::from_slim(fresh, &self.prefix)),
                        Err(err) => {
                            let delay = self.timing.errors.next_delay(&mut rng);
                            tracing::warn!(node = %node, error = %err, retry_in_ms = delay.as_millis() as u64,
                                "re-reading our node failed");
                            if !sleep_or_shutdown(delay, &shutdown).await {
                                return;
                            }
                        }
                    }
                }
                Err(err) => {
                    self.metrics.count_annotation_error();
                    let delay = self.timing.errors.next_delay(&mut rng);
                    tracing::warn!(node = %node, error = %err, retry_in_ms = delay.as_millis() as u64,
                        "annotation patch failed");
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

impl AnnotationKeeper {
    /// Who removed or changed our annotations since `previous`, from our Node's
    /// managedFields; `None` when the GET fails or nothing tells. Our own clock is not used
    /// (managedFields carry the API server's): with our entry gone, every later writer is a
    /// suspect.
    async fn attribute(&self, previous: &BTreeMap<String, String>) -> Option<Attribution> {
        let full = match self.writer.get_full().await {
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(node = %self.writer.node(), error = %err,
                    "could not read our Node's managedFields; the heal goes ahead unattributed");
                return None;
            }
        };
        let current = full.metadata.annotations.unwrap_or_default();
        let keys: Vec<&str> = previous.keys().map(String::as_str).collect();
        attribution::attribute(
            full.metadata.managed_fields.as_deref().unwrap_or_default(),
            previous,
            &current,
            &keys,
            FIELD_MANAGER,
            None,
        )
    }
}

/// The newer of two views of the same Node by resourceVersion (numeric when both parse, as
/// with etcd-backed servers; otherwise the cache wins, since it follows the watch).
fn freshest(cached: Option<NodeInfo>, other: Option<NodeInfo>) -> Option<NodeInfo> {
    match (cached, other) {
        (Some(c), Some(o)) => {
            let rv = |n: &NodeInfo| n.resource_version.parse::<u64>().ok();
            match (rv(&c), rv(&o)) {
                (Some(a), Some(b)) if b > a => Some(o),
                _ => Some(c),
            }
        }
        (c, o) => c.or(o),
    }
}

/// Waits for a change of our Node, an optional timeout, or shutdown (→ false).
async fn wait(
    changed: &mut watch::Receiver<u64>,
    shutdown: &CancellationToken,
    timeout: Option<Duration>,
) -> bool {
    let sleep = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => false,
        res = changed.changed() => {
            if res.is_err() {
                // The watcher is gone (shutting down): nothing more will ever change.
                shutdown.cancelled().await;
                return false;
            }
            true
        }
        _ = sleep => true,
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rv(rv: &str) -> NodeInfo {
        NodeInfo {
            name: "n".into(),
            resource_version: rv.into(),
            ..NodeInfo::default()
        }
    }

    fn rv(n: &Option<NodeInfo>) -> Option<&str> {
        n.as_ref().map(|n| n.resource_version.as_str())
    }

    #[test]
    fn a_blame_carries_the_attribution_in_status_words() {
        let a = Attribution {
            change: Change::RemovedAndChanged,
            keys: vec!["flannel.alpha.coreos.com/public-ip".into()],
            manager: "rancher".into(),
            operation: "Update".into(),
            subresource: None,
            time: Some("2026-03-01T10:14:02Z".parse().unwrap()),
            evidence: Evidence::WroteMetadataAfterUs,
        };
        let b = serde_json::to_value(Blame::from(&a)).unwrap();
        assert_eq!(
            b,
            serde_json::json!({
                "manager": "rancher", "operation": "Update", "subresource": null,
                "time": "2026-03-01T10:14:02Z", "change": "removed_and_changed",
                "keys": ["flannel.alpha.coreos.com/public-ip"],
                "evidence": "wrote_metadata_after_us",
            })
        );
    }

    #[test]
    fn the_newer_resource_version_wins() {
        assert_eq!(
            rv(&freshest(Some(with_rv("5")), Some(with_rv("7")))),
            Some("7")
        );
        assert_eq!(
            rv(&freshest(Some(with_rv("9")), Some(with_rv("7")))),
            Some("9")
        );
        assert_eq!(rv(&freshest(None, Some(with_rv("7")))), Some("7"));
        assert_eq!(
            rv(&freshest(Some(with_rv("x")), Some(with_rv("7")))),
            Some("x")
        );
        assert!(freshest(None, None).is_none());
    }
}
