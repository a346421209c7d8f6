//! Keeps our Node's flannel annotations as we want them, forever.
//!
//! Upstream writes them once at start-up; when another controller replaced the annotation map
//! with a stale copy, they were gone until flanneld restarted. Here every change of our own
//! Node is compared with the desired annotations and a difference is re-asserted with a merge
//! patch to `nodes/NAME/status` that carries the resourceVersion it was computed from (409 →
//! re-read, recompute, retry). A writer that keeps undoing us is met with exponential backoff
//! and loud logs, never a hot loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::kube::{NodeStatusWriter, SlimNode};
use super::node_cache::NodeCache;

/// Computes the patch that would bring a view of our Node to the desired annotations, or
/// `None` when it already carries them. The patch must include
/// `metadata.resourceVersion` of the view it was computed from.
pub type PatchFor = Arc<dyn Fn(&SlimNode) -> Option<serde_json::Value> + Send + Sync>;

/// Counters the status page and metrics expose.
#[derive(Debug, Default)]
pub struct KeeperStats {
    /// Successful annotation patches (the first publish included).
    pub writes: AtomicU64,
    /// Patches that restored annotations someone else removed or changed.
    pub heals: AtomicU64,
    /// 409 answers (another write happened between our read and our patch).
    pub conflicts: AtomicU64,
    /// Other failed patches.
    pub errors: AtomicU64,
    /// Milliseconds from noticing the difference to the successful patch, last heal.
    pub last_heal_ms: AtomicU64,
}

/// Backoff policy; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
pub struct KeeperTiming {
    /// First retry delay after an API error; doubles up to `max_error_backoff`.
    pub error_backoff: Duration,
    pub max_error_backoff: Duration,
    /// Heals within this window count as a fight with another writer.
    pub fight_window: Duration,
    /// Heals allowed within the window before backing off.
    pub fight_threshold: u32,
    pub max_fight_backoff: Duration,
}

impl Default for KeeperTiming {
    fn default() -> Self {
        Self {
            error_backoff: Duration::from_millis(500),
            max_error_backoff: Duration::from_secs(30),
            fight_window: Duration::from_secs(300),
            fight_threshold: 3,
            max_fight_backoff: Duration::from_secs(300),
        }
    }
}

pub struct AnnotationKeeper {
    pub writer: NodeStatusWriter,
    pub cache: Arc<NodeCache>,
    pub patch_for: PatchFor,
    pub stats: Arc<KeeperStats>,
    pub timing: KeeperTiming,
    /// Fires (value `true`) once our annotations are published as desired.
    pub published: watch::Sender<bool>,
}

impl AnnotationKeeper {
    /// Runs until `shutdown`; wakes on every change of our own Node.
    pub async fn run(self, mut own_changed: watch::Receiver<u64>, shutdown: CancellationToken) {
        let node = self.writer.node().to_string();
        // The freshest view we know of: the cache, or the object a patch/GET returned when
        // that is newer than what the watch has delivered so far.
        let mut newer: Option<SlimNode> = None;
        let mut error_delay = self.timing.error_backoff;
        let mut heal_times: Vec<Instant> = Vec::new();
        // Set once we saw our annotations in place: a later difference is someone's removal.
        let mut converged_once = false;
        let mut noticed: Option<Instant> = None;

        loop {
            let view = freshest(self.cache.get(&node), newer.take());
            let Some(view) = view else {
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
                error_delay = self.timing.error_backoff;
                let _ = self.published.send(true);
                if !wait(&mut own_changed, &shutdown, None).await {
                    return;
                }
                newer = None;
                continue;
            };
            let noticed_at = *noticed.get_or_insert_with(Instant::now);

            if converged_once {
                // Someone removed or changed what we published. Heal — but if that keeps
                // happening, back off so two controllers never fight in a hot loop.
                heal_times.retain(|t| t.elapsed() < self.timing.fight_window);
                let streak = heal_times.len() as u32;
                if streak >= self.timing.fight_threshold {
                    let exp = (streak - self.timing.fight_threshold).min(16);
                    let delay =
                        (Duration::from_secs(1) * 2u32.pow(exp)).min(self.timing.max_fight_backoff);
                    tracing::error!(
                        node = %node,
                        heals_in_window = streak,
                        backoff_secs = delay.as_secs_f64(),
                        "another writer keeps removing or changing flannel's node annotations; \
                         backing off before re-asserting them (find the controller that \
                         replaces the Node's annotations without a resourceVersion)"
                    );
                    if !wait(&mut own_changed, &shutdown, Some(delay)).await {
                        return;
                    }
                    // Re-evaluate with whatever is current after the pause.
                    if let Some(view) = self.cache.get(&node)
                        && (self.patch_for)(&view).is_none()
                    {
                        continue;
                    }
                }
            }

            let rv = view.metadata.resource_version.clone().unwrap_or_default();
            match self.writer.merge_patch_status(&patch).await {
                Ok(updated) => {
                    self.stats.writes.fetch_add(1, Ordering::Relaxed);
                    error_delay = self.timing.error_backoff;
                    if converged_once {
                        let took = noticed_at.elapsed();
                        self.stats.heals.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .last_heal_ms
                            .store(took.as_millis() as u64, Ordering::Relaxed);
                        heal_times.push(Instant::now());
                        tracing::warn!(
                            node = %node,
                            resource_version = %rv,
                            heal_ms = took.as_millis() as u64,
                            "flannel annotations were missing or changed on our Node; re-asserted them"
                        );
                    } else {
                        tracing::info!(node = %node, resource_version = %rv, "published node annotations");
                    }
                    noticed = None;
                    newer = Some(updated);
                }
                Err(err) if err.is_conflict() => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %node, resource_version = %rv, "annotation patch conflicted (409); re-reading the node");
                    match self.writer.get().await {
                        Ok(fresh) => newer = Some(fresh),
                        Err(err) => {
                            tracing::warn!(node = %node, error = %err, "re-reading our node failed");
                            if !sleep_or_shutdown(error_delay, &shutdown).await {
                                return;
                            }
                            error_delay = (error_delay * 2).min(self.timing.max_error_backoff);
                        }
                    }
                }
                Err(err) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node, error = %err, retry_in_ms = error_delay.as_millis() as u64, "annotation patch failed");
                    if !sleep_or_shutdown(error_delay, &shutdown).await {
                        return;
                    }
                    error_delay = (error_delay * 2).min(self.timing.max_error_backoff);
                }
            }
        }
    }
}

/// The newer of two views of the same Node by resourceVersion (numeric when both parse, as
/// with etcd-backed servers; otherwise the cache wins, since it follows the watch).
fn freshest(cached: Option<SlimNode>, other: Option<SlimNode>) -> Option<SlimNode> {
    match (cached, other) {
        (Some(c), Some(o)) => {
            let rv = |n: &SlimNode| {
                n.metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
            };
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

    fn with_rv(rv: &str) -> SlimNode {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n", "resourceVersion": rv}}),
        )
        .unwrap()
    }

    fn rv(n: &Option<SlimNode>) -> Option<&str> {
        n.as_ref()
            .and_then(|n| n.metadata.resource_version.as_deref())
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
