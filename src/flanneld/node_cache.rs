//! The node watcher: a paginated list + watch of all Nodes (resumed from the last
//! resourceVersion, re-listed at once on 410, retried with a short jittered backoff — never
//! exiting because the API server is away) feeding a slim cache of only what flannel needs
//! per node.
//!
//! Changes that do not touch podCIDRs, flannel annotations or addresses (kubelet heartbeats)
//! only refresh the stored resourceVersion: they wake nobody and cost no netlink write.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pure::annotations::AnnotationPrefix;
use super::pure::backoff::Backoff;
use super::pure::node::{NodeInfo, SlimNode};

/// Snapshot of the cluster's nodes as the daemon needs them.
#[derive(Debug, Default)]
pub struct NodeCache {
    state: RwLock<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    nodes: BTreeMap<String, NodeInfo>,
    /// The initial list completed at least once.
    synced: bool,
}

/// Wake-ups sent by the watcher. Each is a counter on a `watch` channel, so a burst of
/// changes collapses into one wake-up for a receiver that was busy.
#[derive(Debug, Clone)]
pub struct NodeSignals {
    /// Some node's relevant fields changed (or the cache was re-listed).
    pub peers_changed: watch::Receiver<u64>,
    /// Our own node changed in any way (also its resourceVersion).
    pub own_node_changed: watch::Receiver<u64>,
}

impl NodeCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    pub fn get(&self, name: &str) -> Option<NodeInfo> {
        self.read().nodes.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with every cached node, in name order, under one read lock.
    pub fn with_nodes<T>(&self, f: impl FnOnce(&BTreeMap<String, NodeInfo>) -> T) -> T {
        f(&self.read().nodes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; keep going.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts or replaces a node; returns whether anything flannel cares about changed.
    fn upsert(&self, node: NodeInfo) -> bool {
        let mut state = self.write();
        let relevant = match state.nodes.get(&node.name) {
            Some(old) => old.relevant_fingerprint() != node.relevant_fingerprint(),
            None => true,
        };
        state.nodes.insert(node.name.clone(), node);
        relevant
    }

    fn remove(&self, name: &str) -> bool {
        self.write().nodes.remove(name).is_some()
    }

    /// Puts a node fetched on its own (our Node, at start-up) into a cache that has not
    /// synced yet, so the lease is known before the whole list arrives. The first complete
    /// list replaces it like everything else.
    pub fn seed(&self, node: NodeInfo) {
        let mut state = self.write();
        if !state.synced {
            state.nodes.entry(node.name.clone()).or_insert(node);
        }
    }

    /// Ends the first list, whose nodes went straight into the cache: a node fetched on its
    /// own before (`seed`) that the list did not return is dropped.
    fn finish_first_list(&self, own_node: &str, own_listed: bool) {
        let mut state = self.write();
        if !own_listed {
            state.nodes.remove(own_node);
        }
        // Inserted one by one in name order (the list's), the map's B-tree nodes are left half
        // empty; rebuilt in one go, they are full (~1 MB less at 5000 nodes). Moved, not cloned.
        state.nodes = std::mem::take(&mut state.nodes).into_iter().collect();
        state.synced = true;
    }

    fn replace_all(&self, nodes: BTreeMap<String, NodeInfo>) {
        let mut state = self.write();
        state.nodes = nodes;
        state.synced = true;
    }
}

/// Converts a watched Node into the cached form (foreign annotations, labels, managedFields
/// and status beyond addresses are dropped here).
fn slim(node: SlimNode, prefix: &AnnotationPrefix) -> NodeInfo {
    NodeInfo::from_slim(node, prefix)
}

/// Retry pacing for the watch after a failure other than 410: jittered, doubling from 0.2 s
/// and capped at 1 s, so a returning API server is noticed within about a second however long
/// it was away (kube-rs' default caps at 30 s), while the jitter spreads a fleet's reconnects.
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What a failed watcher step means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFailure {
    /// 410 Gone: our resourceVersion (or continue token) is compacted away. The watcher has
    /// already reset to a fresh list; waiting first only delays it.
    Gone,
    /// Anything else (server away, 5xx, 429, a broken stream): retry after the backoff.
    Other,
}

impl WatchFailure {
    fn of(err: &watcher::Error) -> Self {
        match err {
            watcher::Error::WatchError(status) if status.code == 410 => Self::Gone,
            // An expired continue token: the watcher restarts the list from the top.
            watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 410 => {
                Self::Gone
            }
            _ => Self::Other,
        }
    }
}

/// The sending half of [`NodeSignals`].
struct Signaller {
    peers: watch::Sender<u64>,
    own: watch::Sender<u64>,
}

impl Signaller {
    fn peers(&self) {
        self.peers.send_modify(|n| *n += 1);
    }
    fn own(&self) {
        self.own.send_modify(|n| *n += 1);
    }
}

/// What one watcher event asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// Wake the reconciler (`peers_changed`).
    pub peers: bool,
    /// Wake the annotation keeper (`own_node_changed`).
    pub own: bool,
    /// A (re)list completed just now.
    pub synced: bool,
}

/// The list/relist state machine between the watcher's events and the cache, apart from the
/// stream so that it is tested on plain events.
///
/// The very first attempt of the first list goes straight into the cache, page by page, so
/// the reconciler can program peers while later pages are still on the wire (it only adds
/// while the cache is not synced; see `Plan::additions_only`). Moved, never copied: a second
/// copy, freed later, would leave MBs of holes in the heap. Any later list — a re-list after
/// 410, or a first list that restarted midway — is gathered aside and swapped in whole, which
/// also drops nodes that are gone; meanwhile the cache keeps serving the previous state.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    own_node: String,
    page_size: usize,
    /// Nodes of a list being gathered aside; a Vec, turned into the map once complete.
    relist: Option<Vec<(String, NodeInfo)>>,
    /// The list in progress: nodes seen, whether ours was among them.
    listed: usize,
    own_listed: bool,
    /// The first list put a node into the cache directly. (kube-rs announces every attempt
    /// with Init, also one whose request then fails, so an attempt counts once it delivered a
    /// node.)
    first_attempt_started: bool,
    /// Pacing of retries; reset by any event.
    retry: Backoff,
}

impl CacheWriter {
    pub fn new(own_node: String, page_size: u32) -> Self {
        Self {
            own_node,
            page_size: page_size.max(1) as usize,
            relist: None,
            listed: 0,
            own_listed: false,
            first_attempt_started: false,
            retry: Backoff::new(RETRY_INITIAL, RETRY_MAX),
        }
    }

    /// A watcher step failed: how long to wait before the next. Zero on 410, whatever came
    /// before it: after an outage the first watch is usually answered with 410, and the
    /// re-list it calls for is what brings the nodes created meanwhile.
    pub fn on_error<R: rand::Rng + ?Sized>(
        &mut self,
        failure: WatchFailure,
        rng: &mut R,
    ) -> Duration {
        match failure {
            WatchFailure::Gone => Duration::ZERO,
            WatchFailure::Other => self.retry.next_delay(rng),
        }
    }

    /// Applies one watcher event to `cache`.
    pub fn on_event(&mut self, cache: &NodeCache, event: Event<NodeInfo>) -> Wake {
        self.retry.reset();
        match event {
            Event::Init => {
                self.listed = 0;
                self.own_listed = false;
                self.relist = if cache.is_synced() || self.first_attempt_started {
                    Some(Vec::new())
                } else {
                    None
                };
                Wake::default()
            }
            Event::InitApply(node) => {
                if let Some(buf) = self.relist.as_mut() {
                    buf.push((node.name.clone(), node));
                    return Wake::default();
                }
                let own = node.name == self.own_node;
                self.own_listed |= own;
                self.first_attempt_started = true;
                cache.upsert(node);
                self.listed += 1;
                Wake {
                    peers: self.listed.is_multiple_of(self.page_size),
                    own,
                    synced: false,
                }
            }
            Event::InitDone => {
                match self.relist.take() {
                    // Built in one go, the map's B-tree nodes are full; inserted one by one in
                    // name order (the list's order) they end up half empty. A duplicate name
                    // keeps its last entry, as inserts would.
                    Some(buf) => cache.replace_all(buf.into_iter().collect()),
                    // The first list is in the cache already, plus our Node if it was fetched
                    // on its own at start-up: drop that if the list did not have it.
                    None => cache.finish_first_list(&self.own_node, self.own_listed),
                }
                Wake {
                    peers: true,
                    own: true,
                    synced: true,
                }
            }
            Event::Apply(node) => {
                let own = node.name == self.own_node;
                Wake {
                    peers: cache.upsert(node),
                    own,
                    synced: false,
                }
            }
            Event::Delete(node) => {
                let removed = cache.remove(&node.name);
                if removed {
                    tracing::info!(node = %node.name, "node deleted");
                }
                Wake {
                    peers: removed,
                    own: node.name == self.own_node,
                    synced: false,
                }
            }
        }
    }
}

/// The watcher task, for the caller to spawn; it runs until `shutdown` is cancelled.
pub fn node_watcher(
    client: Client,
    own_node: String,
    annotation_prefix: AnnotationPrefix,
    page_size: u32,
    cache: Arc<NodeCache>,
    shutdown: CancellationToken,
) -> (
    NodeSignals,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (peers_tx, peers_rx) = watch::channel(0);
    let (own_tx, own_rx) = watch::channel(0);
    let signals = NodeSignals {
        peers_changed: peers_rx,
        own_node_changed: own_rx,
    };
    let signaller = Signaller {
        peers: peers_tx,
        own: own_tx,
    };
    let task = async move {
        let api: Api<SlimNode> = Api::all(client);
        let config = watcher::Config::default().page_size(page_size);
        // No backoff layer: the loop below sleeps, as `CacheWriter::on_error` decides.
        let stream = watcher::watcher(api, config);
        futures::pin_mut!(stream);
        let mut writer = CacheWriter::new(own_node, page_size);
        let mut rng = {
            use rand::SeedableRng;
            rand::rngs::StdRng::from_os_rng()
        };
        let mut failing = false;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = stream.next() => next,
            };
            let Some(item) = next else { break };
            let event = match item {
                Ok(event) => {
                    if failing {
                        tracing::info!("node watch recovered");
                        failing = false;
                    }
                    event
                }
                Err(err) => {
                    let failure = WatchFailure::of(&err);
                    let delay = writer.on_error(failure, &mut rng);
                    if failure == WatchFailure::Gone {
                        tracing::info!(error = %err, "node watch expired; listing again now");
                    } else if !failing {
                        // One line per outage, not per retry; the datapath keeps working.
                        tracing::warn!(error = %err, "node watch failing; retrying with backoff");
                        failing = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            let event = match event {
                Event::Init => Event::Init,
                Event::InitApply(n) => Event::InitApply(slim(n, &annotation_prefix)),
                Event::InitDone => Event::InitDone,
                Event::Apply(n) => Event::Apply(slim(n, &annotation_prefix)),
                Event::Delete(n) => Event::Delete(slim(n, &annotation_prefix)),
            };
            let wake = writer.on_event(&cache, event);
            if wake.synced {
                tracing::info!(nodes = cache.len(), "node list synced");
                // The list pages (MBs of JSON each) and any old cache are gone now.
                super::memory::release_free_memory();
            }
            if wake.peers {
                signaller.peers();
            }
            if wake.own {
                signaller.own();
            }
        }
    };
    (signals, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, annotations: &[(&str, &str)], rv: &str) -> NodeInfo {
        let slim: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "resourceVersion": rv,
                "labels": {"kubernetes.io/hostname": name},
                "managedFields": [{"manager": "kubelet"}],
                "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}
        }))
        .unwrap();
        slim_default(slim)
    }

    fn slim_default(n: SlimNode) -> NodeInfo {
        slim(
            n,
            &AnnotationPrefix::new("flannel.alpha.coreos.com").unwrap(),
        )
    }

    #[test]
    fn heartbeat_only_changes_are_not_relevant_but_refresh_the_resource_version() {
        let cache = NodeCache::new();
        let ours = ("flannel.alpha.coreos.com/public-ip", "192.0.2.1");
        assert!(cache.upsert(node("n1", &[ours], "1")));
        // A kubelet heartbeat: a foreign annotation and the RV change only.
        assert!(!cache.upsert(node(
            "n1",
            &[ours, ("node.alpha.kubernetes.io/ttl", "0")],
            "2"
        )));
        assert_eq!(cache.get("n1").unwrap().resource_version, "2");
        assert_eq!(cache.get("n1").unwrap().annotations.len(), 1);
        // Our annotation removed: relevant.
        assert!(cache.upsert(node("n1", &[], "3")));
    }

    #[test]
    fn removal_reports_whether_the_node_was_known() {
        let cache = NodeCache::new();
        cache.upsert(node("n1", &[], "1"));
        assert!(cache.remove("n1"));
        assert!(!cache.remove("n1"));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_seeded_node_never_overrides_the_list_and_goes_if_the_list_lacks_it() {
        let cache = NodeCache::new();
        cache.seed(node("self", &[], "5"));
        assert_eq!(cache.get("self").unwrap().resource_version, "5");
        // The first list's copy wins over the seed, whatever the order.
        cache.upsert(node("self", &[], "6"));
        cache.seed(node("self", &[], "4"));
        assert_eq!(cache.get("self").unwrap().resource_version, "6");
        cache.upsert(node("peer", &[], "7"));
        assert!(!cache.is_synced());
        cache.finish_first_list("self", true);
        assert!(cache.is_synced());
        assert_eq!(cache.len(), 2);
        // Once synced, seeding does nothing.
        cache.seed(node("late", &[], "8"));
        assert!(cache.get("late").is_none());

        let cache = NodeCache::new();
        cache.seed(node("self", &[], "5"));
        cache.upsert(node("peer", &[], "7"));
        cache.finish_first_list("self", false);
        assert!(cache.get("self").is_none(), "seeded but not listed: gone");
        assert_eq!(cache.len(), 1);
    }

    fn synced_names(cache: &NodeCache) -> Vec<String> {
        cache.with_nodes(|n| n.keys().cloned().collect())
    }

    #[test]
    fn the_first_list_fills_the_cache_page_by_page_and_wakes_per_page() {
        let cache = NodeCache::new();
        cache.seed(node("self", &[], "1"));
        let mut w = CacheWriter::new("self".into(), 2);
        assert_eq!(w.on_event(&cache, Event::Init), Wake::default());
        let first = w.on_event(&cache, Event::InitApply(node("a", &[], "2")));
        assert!(!first.peers && !first.own);
        assert_eq!(cache.len(), 2, "in the cache at once, beside the seed");
        assert!(
            w.on_event(&cache, Event::InitApply(node("b", &[], "2")))
                .peers,
            "a page"
        );
        assert!(!cache.is_synced());
        let done = w.on_event(&cache, Event::InitDone);
        assert_eq!(
            done,
            Wake {
                peers: true,
                own: true,
                synced: true
            }
        );
        assert!(cache.is_synced());
        assert_eq!(
            synced_names(&cache),
            ["a", "b"],
            "the unlisted seed is dropped"
        );
    }

    #[test]
    fn a_relist_is_gathered_aside_and_swapped_in_whole() {
        let cache = NodeCache::new();
        let mut w = CacheWriter::new("self".into(), 500);
        w.on_event(&cache, Event::Init);
        w.on_event(&cache, Event::InitApply(node("a", &[], "1")));
        w.on_event(&cache, Event::InitApply(node("gone", &[], "1")));
        w.on_event(&cache, Event::InitDone);
        // A 410: the watcher lists again.
        w.on_event(&cache, Event::Init);
        let wake = w.on_event(&cache, Event::InitApply(node("a", &[], "5")));
        assert_eq!(
            wake,
            Wake::default(),
            "nothing to do until the list is complete"
        );
        assert_eq!(
            synced_names(&cache),
            ["a", "gone"],
            "the old state still served"
        );
        assert_eq!(cache.get("a").unwrap().resource_version, "1");
        assert!(w.on_event(&cache, Event::InitDone).synced);
        assert_eq!(synced_names(&cache), ["a"]);
        assert_eq!(cache.get("a").unwrap().resource_version, "5");
    }

    #[test]
    fn a_first_list_restarted_midway_is_gathered_aside_and_drops_what_it_no_longer_returns() {
        let cache = NodeCache::new();
        let mut w = CacheWriter::new("self".into(), 500);
        // An attempt that failed before delivering anything does not count.
        w.on_event(&cache, Event::Init);
        w.on_event(&cache, Event::Init);
        w.on_event(&cache, Event::InitApply(node("a", &[], "1")));
        w.on_event(&cache, Event::InitApply(node("gone", &[], "1")));
        // The list broke off and restarts.
        w.on_event(&cache, Event::Init);
        w.on_event(&cache, Event::InitApply(node("a", &[], "2")));
        assert_eq!(synced_names(&cache), ["a", "gone"]);
        w.on_event(&cache, Event::InitDone);
        assert_eq!(synced_names(&cache), ["a"]);
    }

    #[test]
    fn a_410_relists_at_once_and_other_failures_back_off_to_at_most_a_second() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cache = NodeCache::new();
        let mut w = CacheWriter::new("self".into(), 500);
        // A long outage: the delays grow, but never past the cap, and vary (jitter).
        let delays: Vec<Duration> = (0..50)
            .map(|_| w.on_error(WatchFailure::Other, &mut rng))
            .collect();
        assert!(delays[0] <= RETRY_INITIAL, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= RETRY_MAX), "{delays:?}");
        assert!(
            delays[10..].iter().all(|d| *d >= RETRY_MAX / 2),
            "{delays:?}"
        );
        let distinct: std::collections::HashSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 30, "no jitter: {delays:?}");
        // The server is back with its history compacted: the 410 costs no wait.
        assert_eq!(w.on_error(WatchFailure::Gone, &mut rng), Duration::ZERO);
        // The re-list's first event resets the backoff for the next outage.
        w.on_event(&cache, Event::Init);
        assert!(w.on_error(WatchFailure::Other, &mut rng) <= RETRY_INITIAL);
    }

    #[test]
    fn failures_are_classified_by_their_status() {
        let status = |code| {
            Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            })
        };
        assert_eq!(
            WatchFailure::of(&watcher::Error::WatchError(status(410))),
            WatchFailure::Gone
        );
        assert_eq!(
            WatchFailure::of(&watcher::Error::InitialListFailed(kube::Error::Api(
                status(410)
            ))),
            WatchFailure::Gone
        );
        assert_eq!(
            WatchFailure::of(&watcher::Error::WatchError(status(500))),
            WatchFailure::Other
        );
        // A 410 on starting the watch does not reset kube-rs' watcher to a list: backoff.
        assert_eq!(
            WatchFailure::of(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
                410
            )))),
            WatchFailure::Other
        );
        assert_eq!(
            WatchFailure::of(&watcher::Error::NoResourceVersion),
            WatchFailure::Other
        );
    }

    #[test]
    fn watch_events_wake_only_for_what_flannel_reads_and_for_our_own_node() {
        let cache = NodeCache::new();
        let mut w = CacheWriter::new("self".into(), 500);
        w.on_event(&cache, Event::Init);
        w.on_event(&cache, Event::InitDone);
        let ours = ("flannel.alpha.coreos.com/public-ip", "192.0.2.1");
        assert!(
            w.on_event(&cache, Event::Apply(node("peer", &[ours], "3")))
                .peers
        );
        let heartbeat = w.on_event(&cache, Event::Apply(node("peer", &[ours], "4")));
        assert_eq!(heartbeat, Wake::default());
        let own = w.on_event(&cache, Event::Apply(node("self", &[], "5")));
        assert!(own.own);
        let own_heartbeat = w.on_event(&cache, Event::Apply(node("self", &[], "6")));
        assert_eq!(
            own_heartbeat,
            Wake {
                peers: false,
                own: true,
                synced: false
            }
        );
        assert!(
            w.on_event(&cache, Event::Delete(node("peer", &[], "7")))
                .peers
        );
        assert!(
            !w.on_event(&cache, Event::Delete(node("peer", &[], "8")))
                .peers,
            "already gone"
        );
    }
}
