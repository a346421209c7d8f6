//! The node watcher: a paginated list + watch of all Nodes (resumed from the last
//! resourceVersion, re-listed on 410, retried with jittered backoff — never exiting because
//! the API server is away) feeding a slim cache of only what flannel needs per node.
//!
//! Changes that do not touch podCIDRs, flannel annotations or addresses (kubelet heartbeats)
//! only refresh the stored resourceVersion: they wake nobody and cost no netlink write.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pure::annotations::AnnotationPrefix;
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

/// Retry pacing for the watch: jittered, doubling from 0.5 s but capped at 5 s — kube-rs'
/// default caps at 30 s, which made a node learn peers added during an API outage up to
/// ~20 s after the API server came back.
struct WatchBackoff {
    delays: super::pure::backoff::Backoff,
    rng: rand::rngs::StdRng,
}

impl WatchBackoff {
    fn new() -> Self {
        use rand::SeedableRng;
        Self {
            delays: super::pure::backoff::Backoff::new(
                std::time::Duration::from_millis(500),
                std::time::Duration::from_secs(5),
            ),
            rng: rand::rngs::StdRng::from_os_rng(),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.delays.next_delay(&mut self.rng))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.delays.reset();
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

/// Starts the watcher task. It runs until `shutdown` is cancelled.
pub fn spawn_node_watcher(
    client: Client,
    own_node: String,
    annotation_prefix: AnnotationPrefix,
    page_size: u32,
    cache: Arc<NodeCache>,
    shutdown: CancellationToken,
) -> (NodeSignals, tokio::task::JoinHandle<()>) {
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
    let task = tokio::spawn(async move {
        let api: Api<SlimNode> = Api::all(client);
        let config = watcher::Config::default().page_size(page_size);
        let stream = watcher::watcher(api, config).backoff(WatchBackoff::new());
        futures::pin_mut!(stream);
        // Nodes of a (re)list in progress; a Vec, turned into the map once complete.
        let mut relist: Option<Vec<(String, NodeInfo)>> = None;
        let mut failing = false;
        // The list in progress: nodes seen, whether ours was among them.
        let mut listed = 0usize;
        let mut own_listed = false;
        // Whether the first list put any node into the cache directly.
        let mut first_attempt_started = false;
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
                    // One line per outage, not per retry; the datapath keeps working.
                    if !failing {
                        tracing::warn!(error = %err, "node watch failing; retrying with backoff");
                        failing = true;
                    }
                    continue;
                }
            };
            match event {
                Event::Init => {
                    listed = 0;
                    own_listed = false;
                    // The very first attempt of the first list goes straight into the cache (see
                    // InitApply). Any later list — a re-list after 410, or a first list that
                    // restarted midway — is gathered aside and swapped in whole, which also drops
                    // nodes that are gone; meanwhile the cache keeps serving the previous state.
                    relist = if cache.is_synced() || first_attempt_started {
                        Some(Vec::new())
                    } else {
                        None
                    };
                }
                Event::InitApply(node) => {
                    let node = slim(node, &annotation_prefix);
                    if let Some(buf) = relist.as_mut() {
                        buf.push((node.name.clone(), node));
                        continue;
                    }
                    // The first list fills the cache as it goes, so the reconciler can program
                    // peers while later pages are still on the wire (it only adds while the
                    // cache is not synced; see `Plan::additions_only`). Moved, never copied: a
                    // second copy, freed later, would leave MBs of holes in the heap.
                    let is_own = node.name == own_node;
                    own_listed |= is_own;
                    // From now on a restarted list must be gathered aside to drop what it no
                    // longer returns. (kube-rs announces every attempt with Init, also one whose
                    // request then fails, so an attempt counts once it delivered a node.)
                    first_attempt_started = true;
                    cache.upsert(node);
                    listed += 1;
                    if listed.is_multiple_of(page_size as usize) {
                        signaller.peers();
                    }
                    if is_own {
                        signaller.own();
                    }
                }
                Event::InitDone => {
                    match relist.take() {
                        // Built in one go, the map's B-tree nodes are full; inserted one by one in
                        // name order (the list's order) they end up half empty — ~1.2 MB more at
                        // 5000 nodes. A duplicate name keeps its last entry, as inserts would.
                        Some(buf) => cache.replace_all(buf.into_iter().collect()),
                        // The first list is in the cache already, plus our Node if it was
                        // fetched on its own at start-up: drop that if the list did not have it.
                        None => cache.finish_first_list(&own_node, own_listed),
                    }
                    tracing::info!(nodes = cache.len(), "node list synced");
                    // The list pages (MBs of JSON each) and any old cache are gone now.
                    super::memory::release_free_memory();
                    signaller.peers();
                    signaller.own();
                }
                Event::Apply(node) => {
                    let node = slim(node, &annotation_prefix);
                    let is_own = node.name == own_node;
                    if cache.upsert(node) {
                        signaller.peers();
                    }
                    if is_own {
                        signaller.own();
                    }
                }
                Event::Delete(node) => {
                    let name = node.metadata.name.unwrap_or_default();
                    if cache.remove(&name) {
                        tracing::info!(node = %name, "node deleted");
                        signaller.peers();
                    }
                    if name == own_node {
                        signaller.own();
                    }
                }
            }
        }
    });
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
}
