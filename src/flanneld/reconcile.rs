//! The one reconcile path: start-up, node watch events, netlink drift and the periodic resync
//! all end in [`Reconciler::pass`], which computes the desired state from the node cache,
//! reads the kernel, and applies only the difference.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::netlink::{Monitor, MonitorGroups, Netlink};

use super::datapath::{self, DeviceAction};
use super::memory;
use super::metrics::Metrics;
use super::node_cache::NodeCache;
use super::pure::annotations::AnnotationKeys;
use super::pure::backoff::Backoff;
use super::pure::desired::{self, KernelEntries, OwnMacs, Underlay};
use super::pure::lease::PodSubnets;
use super::pure::netconf::NetConf;
use super::pure::peers::{
    self, ParseMemo, Peer, PeerEndpoint, PeerSelection, RejectKind, RejectionTracker,
    ValidationContext,
};
use super::pure::plan;
use crate::net::Family;

/// Everything a pass needs besides the node cache; fixed for the daemon's lifetime.
pub struct ReconcileInputs {
    pub keys: AnnotationKeys,
    pub netconf: NetConf,
    pub lease: PodSubnets,
    pub underlay: Underlay,
    pub own_macs: OwnMacs,
    pub validation: ValidationContext,
}

/// Timing knobs.
#[derive(Debug, Clone)]
pub struct ReconcileTiming {
    /// Full resync as a backstop, even when nothing signalled a change.
    pub resync: Duration,
    /// After a wake-up, wait this long for more events so a burst becomes one pass.
    pub coalesce: Duration,
}

impl Default for ReconcileTiming {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(60),
            coalesce: Duration::from_millis(20),
        }
    }
}

/// Why a pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Startup,
    NodeChange,
    Drift,
    Resync,
    Retry,
}

/// The outcome of the last pass, for `/status` and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassSummary {
    pub trigger: Option<Trigger>,
    pub finished_unix_ms: u64,
    pub duration_ms: f64,
    pub peers: Vec<PeerSummary>,
    pub rejected: Vec<RejectedSummary>,
    pub devices: Vec<DeviceSummary>,
    pub operations: usize,
    pub errors: Vec<String>,
    /// Ran before the first complete node list: only additions were applied.
    pub provisional: bool,
}

/// A programmed peer, as `/status` lists it. Kept typed (one small allocation per peer) rather
/// than as strings: at 5000 peers the summary lives for the daemon's lifetime and the string
/// form cost three times the memory. Serialized as
/// `{"node", "subnets": [..], "public_ips": [..], "vtep_macs": [..]}`.
#[derive(Debug, Clone)]
pub struct PeerSummary {
    pub node: String,
    pub endpoints: Vec<PeerEndpoint>,
}

impl Serialize for PeerSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Displayed<'a, T, F>(&'a [PeerEndpoint], F)
        where
            F: Fn(&PeerEndpoint) -> T;
        impl<T: std::fmt::Display, F: Fn(&PeerEndpoint) -> T> Serialize for Displayed<'_, T, F> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|e| (self.1)(e).to_string()))
            }
        }
        let mut st = serializer.serialize_struct("PeerSummary", 4)?;
        st.serialize_field("node", &self.node)?;
        st.serialize_field("subnets", &Displayed(&self.endpoints, |e| e.subnet))?;
        st.serialize_field("public_ips", &Displayed(&self.endpoints, |e| e.public_ip))?;
        st.serialize_field("vtep_macs", &Displayed(&self.endpoints, |e| e.vtep_mac))?;
        st.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedSummary {
    pub node: String,
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("compute desired state: {0}")]
    Desired(#[from] desired::DesiredError),
    #[error(transparent)]
    Datapath(#[from] datapath::DatapathError),
}

pub struct Reconciler {
    pub nl: Netlink,
    pub inputs: ReconcileInputs,
    pub cache: Arc<NodeCache>,
    pub metrics: Arc<Metrics>,
    pub timing: ReconcileTiming,
    pub last: Arc<Mutex<PassSummary>>,
    rejections: RejectionTracker,
    /// The last accepted form of every programmed peer (see
    /// [`keep_peers_that_lost_their_annotations`]).
    last_good: HashMap<String, Peer>,
    /// Peers currently kept that way (to log each once).
    kept: HashSet<String>,
    /// Per device: its ifindex and the entries we want on it (to tell drift from our echoes).
    /// The only copy of the desired entries that outlives a pass.
    watched: Vec<(Family, u32, KernelEntries)>,
    /// The pod MTU of the last desired state (the smallest device MTU), for subnet.env.
    pub pod_mtu: Option<u32>,
    /// Before the first complete node list: per device, what the kernel holds on it as far as
    /// this daemon knows — the last dump plus every addition applied since. A provisional pass
    /// runs per list page, and re-dumping up to 3N entries each time was a third of its fixed
    /// cost. The first complete pass uses it too (its dump was on the critical path of start-up).
    /// The view cannot silently go stale: the kernel monitor is open before the first dump; a
    /// change on the device by someone else that matters to the desired state is a drift event,
    /// which makes the next pass dump, and one that only contradicts the view (a stale entry
    /// deleted) drops the view (an event that arrives while a node change is handled waits in
    /// the monitor's queue for the pass after). The view is kept only from a pass that
    /// completed, along with the desired entries the drift test uses. Without a monitor every
    /// pass dumps.
    known_during_list: Vec<(Family, u32, KernelEntries)>,
    /// Each node's parse verdict while the first list is in progress (see [`ParseMemo`]).
    parse_memo: ParseMemo,
}

impl Reconciler {
    pub fn new(
        nl: Netlink,
        inputs: ReconcileInputs,
        cache: Arc<NodeCache>,
        metrics: Arc<Metrics>,
        timing: ReconcileTiming,
    ) -> Self {
        Self {
            nl,
            inputs,
            cache,
            metrics,
            timing,
            last: Arc::new(Mutex::new(PassSummary::default())),
            rejections: RejectionTracker::default(),
            last_good: HashMap::new(),
            kept: HashSet::new(),
            watched: Vec::new(),
            pod_mtu: None,
            known_during_list: Vec::new(),
            parse_memo: ParseMemo::default(),
        }
    }

    /// One reconcile: desired from the cache, actual from the kernel, apply the difference.
    pub async fn pass(&mut self, trigger: Trigger) -> Result<PassSummary, ReconcileError> {
        let started = Instant::now();
        // Before the first complete list, peers are programmed as pages arrive, additively.
        let provisional = !self.cache.is_synced();
        // Only a node change (a page of the list, or its end) may reuse the view; a drift,
        // retry or resync pass dumps.
        let mut known = std::mem::take(&mut self.known_during_list);
        if trigger != Trigger::NodeChange {
            known.clear();
        }
        let inputs = &self.inputs;
        // The memo lives only while the list is in progress (no memory kept for later).
        let memo = &mut self.parse_memo;
        if !provisional {
            *memo = ParseMemo::default();
        }
        let mut selection = self.cache.with_nodes(|nodes| {
            if provisional {
                peers::select_peers_parsed_by(nodes.values(), &inputs.validation, |node| {
                    memo.parse(node, &inputs.keys, &inputs.validation)
                })
            } else {
                peers::select_peers(nodes.values(), &inputs.keys, &inputs.validation)
            }
        });
        let selected_us = started.elapsed().as_micros() as u64;
        keep_peers_that_lost_their_annotations(
            &mut selection,
            &mut self.last_good,
            &mut self.kept,
            &self.cache,
        );
        // Verdicts on a partial list can change (an older holder of a subnet may be on a later
        // page); they are logged and counted once the list is complete.
        let rejections = if provisional {
            Vec::new()
        } else {
            self.rejections.update(&selection.rejected)
        };
        for r in rejections {
            if r.reason.is_benign() {
                tracing::debug!(peer = %r.name, reason = %r.reason, "node is not a flannel vxlan peer");
            } else {
                self.metrics.count_rejection(r.reason.kind());
                tracing::warn!(peer = %r.name, reason = %r.reason, "rejected peer: nothing is programmed for it");
            }
        }
        if !provisional {
            self.metrics.set_peers_rejected(
                selection
                    .rejected
                    .iter()
                    .filter(|r| !r.reason.is_benign())
                    .map(|r| r.reason.kind()),
            );
        }

        let desired = desired::desired_state(
            &inputs.netconf.backend,
            &inputs.underlay,
            &inputs.lease,
            &inputs.own_macs,
            &selection.peers,
        )?;

        let desired_us = started.elapsed().as_micros() as u64;
        let mut summary = PassSummary {
            trigger: Some(trigger),
            provisional,
            ..PassSummary::default()
        };
        let mut watched = Vec::new();
        // Kept only if the whole pass completes, together with `watched`, which the drift
        // test needs to notice changes behind the views.
        let mut views = Vec::new();
        for family in [Family::V4, Family::V6] {
            let Some(state) = desired.family(family) else {
                continue;
            };
            let network = inputs.netconf.network(family);
            let (device, action) =
                datapath::ensure_device(&self.nl, &state.device, network).await?;
            match action {
                DeviceAction::Adopted => {}
                DeviceAction::Created => {
                    tracing::info!(device = %device.name, index = device.index, "created vxlan device")
                }
                DeviceAction::Recreated => {
                    tracing::warn!(device = %device.name, index = device.index, "recreated vxlan device")
                }
            }
            let device_us = started.elapsed().as_micros() as u64;
            let reused = known
                .iter()
                .position(|(f, index, _)| *f == family && *index == device.index)
                .filter(|_| action == DeviceAction::Adopted)
                .map(|i| known.swap_remove(i).2);
            let dumped = reused.is_none();
            let actual = match reused {
                Some(entries) => entries,
                None => datapath::actual_entries(&self.nl, &device, family).await?,
            };
            let dumped_us = started.elapsed().as_micros() as u64;
            let mut plan = plan::diff(&actual, &state.entries);
            // A provisional pass keeps its view of the kernel for the next page; otherwise the
            // dump (15 000 entries at 5000 peers) is not needed while the plan is applied.
            let mut view = None;
            if provisional {
                plan = plan.additions_only(&actual);
                view = Some(actual);
            } else {
                drop(actual);
            }
            let planned_us = started.elapsed().as_micros() as u64;
            let mut all_applied = true;
            if !plan.is_empty() {
                let ops = datapath::plan_ops(&plan, device.index);
                let results = self.nl.apply(&ops).await;
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
                    .collect();
                all_applied = failed.is_empty();
                summary.operations += ops.len();
                self.metrics.add_netlink_ops(ops.len() as u64);
                if matches!(trigger, Trigger::Drift | Trigger::Resync)
                    && action == DeviceAction::Adopted
                {
                    self.metrics
                        .add_drift_repairs((ops.len() - failed.len()) as u64);
                }
                tracing::info!(
                    device = %device.name,
                    trigger = ?trigger,
                    add_or_replace = plan.neighbours.add.len() + plan.fdb.add.len() + plan.routes.add.len()
                        + plan.neighbours.replace.len() + plan.fdb.replace.len() + plan.routes.replace.len(),
                    remove = plan.neighbours.remove.len() + plan.fdb.remove.len() + plan.routes.remove.len(),
                    failed = failed.len(),
                    "applied kernel changes"
                );
                for e in failed.iter().take(5) {
                    tracing::warn!(device = %device.name, error = %e, "kernel change failed");
                }
                summary.errors.extend(failed);
            }
            // What failed is unknown ground: the next pass dumps.
            if let Some(mut entries) = view.filter(|_| all_applied) {
                entries
                    .neighbours
                    .extend(plan.neighbours.add.iter().copied());
                entries.fdb.extend(plan.fdb.add.iter().copied());
                entries.routes.extend(plan.routes.add.iter().copied());
                views.push((family, device.index, entries));
            }
            tracing::debug!(
                device = %device.name,
                provisional,
                dumped,
                selected_us,
                desired_us,
                device_us,
                dumped_us,
                planned_us,
                applied_us = started.elapsed().as_micros() as u64,
                "reconcile pass steps (µs since the pass began)"
            );
            summary.devices.push(DeviceSummary {
                name: device.name.clone(),
                index: device.index,
                mac: device.mac.map(|m| m.to_string()).unwrap_or_default(),
                mtu: device.mtu,
                entries: state.entries.len(),
            });
            watched.push((family, device.index));
        }
        self.known_during_list = views;
        // Keep the desired entries (moved, not copied) for drift detection until the next pass.
        let mut desired = desired;
        self.pod_mtu = desired.pod_mtu();
        self.watched = watched
            .into_iter()
            .filter_map(|(family, index)| {
                let state = match family {
                    Family::V4 => desired.v4.take(),
                    Family::V6 => desired.v6.take(),
                };
                // Rebuilt in one go: full B-tree nodes (desired_state inserts in peer order).
                state.map(|s| {
                    let e = s.entries;
                    let packed = KernelEntries {
                        neighbours: e.neighbours.into_iter().collect(),
                        fdb: e.fdb.into_iter().collect(),
                        routes: e.routes.into_iter().collect(),
                    };
                    (family, index, packed)
                })
            })
            .collect();

        self.metrics
            .set_peers_programmed(selection.peers.len() as u64);
        summary.peers = selection
            .peers
            .iter()
            .map(|p| PeerSummary {
                node: p.name.clone(),
                endpoints: p.endpoints().map(|(_, e)| *e).collect(),
            })
            .collect();
        summary.rejected = selection
            .rejected
            .iter()
            .map(|r| RejectedSummary {
                node: r.name.clone(),
                kind: r.reason.kind().as_str().to_string(),
                reason: r.reason.to_string(),
            })
            .collect();
        let took = started.elapsed();
        summary.duration_ms = took.as_secs_f64() * 1000.0;
        summary.finished_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        self.metrics
            .observe_reconcile(took, summary.errors.is_empty());
        if let Ok(mut last) = self.last.lock() {
            *last = summary.clone();
        }
        Ok(summary)
    }

    /// Runs passes until `shutdown`. `first_pass` turns true after the first pass that left
    /// no error behind (readiness).
    pub async fn run(
        mut self,
        mut peers_changed: watch::Receiver<u64>,
        first_pass: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut monitor = self.open_monitor();
        let mut trigger = Trigger::Startup;
        loop {
            let outcome = self.pass(trigger).await;
            // A pass's dumps and plan are freed now; hand their pages back (see memory.rs).
            memory::release_free_memory();
            let retry_in = match outcome {
                Ok(summary) if summary.errors.is_empty() => {
                    retry.reset();
                    if !summary.provisional {
                        let _ = first_pass.send(true);
                    }
                    None
                }
                Ok(summary) => {
                    let delay = retry.next_delay(&mut rng);
                    tracing::warn!(
                        errors = summary.errors.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "reconcile left errors; retrying"
                    );
                    Some(delay)
                }
                Err(err) => {
                    let delay = retry.next_delay(&mut rng);
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed; retrying");
                    Some(delay)
                }
            };
            // Node events that came in during the pass have had its whole duration to gather:
            // waiting for more only delays them (it cost ~20 ms per page of the first list).
            let backlog = peers_changed.has_changed().unwrap_or(false);
            let Some(next) = self
                .wait_for_trigger(&mut peers_changed, &mut monitor, retry_in, &shutdown)
                .await
            else {
                return;
            };
            if monitor.is_none() {
                // Nothing would tell us that the view went stale.
                self.known_during_list.clear();
            }
            trigger = next;
            // After a failed pass the retry backoff paces passes, queued events or not.
            if !(backlog && trigger == Trigger::NodeChange && retry_in.is_none()) {
                // Let a burst of node events or kernel notifications settle into one pass.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.timing.coalesce) => {}
                }
            }
            peers_changed.borrow_and_update();
        }
    }

    fn open_monitor(&self) -> Option<Monitor> {
        match self.nl.monitor(MonitorGroups::ALL) {
            Ok(m) => Some(m),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch kernel changes; relying on the periodic resync");
                None
            }
        }
    }

    async fn wait_for_trigger(
        &mut self,
        peers_changed: &mut watch::Receiver<u64>,
        monitor: &mut Option<Monitor>,
        retry_in: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Option<Trigger> {
        let resync = tokio::time::sleep(self.timing.resync);
        tokio::pin!(resync);
        let retry = async {
            match retry_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(retry);
        loop {
            let kernel_event = async {
                match monitor.as_mut() {
                    Some(m) => m.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = peers_changed.changed() => {
                    if changed.is_err() {
                        // The watcher ended (shutdown in progress).
                        shutdown.cancelled().await;
                        return None;
                    }
                    return Some(Trigger::NodeChange);
                }
                _ = &mut resync => return Some(Trigger::Resync),
                _ = &mut retry => return Some(Trigger::Retry),
                event = kernel_event => match event {
                    Some(Ok(event)) => {
                        let drift = self
                            .watched
                            .iter()
                            .any(|(family, index, entries)| datapath::is_drift(&event, *family, *index, entries));
                        // A change to an entry the view holds but no pass wants (yet), e.g. a stale one
                        // deleted by someone: the view no longer matches the kernel.
                        if !drift
                            && self.known_during_list.iter().any(|(family, index, entries)| {
                                datapath::is_drift(&event, *family, *index, entries)
                            })
                        {
                            self.known_during_list.clear();
                        }
                        if drift {
                            tracing::info!(event = ?event, "kernel state drifted from the desired state");
                            return Some(Trigger::Drift);
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "kernel monitor failed; reopening it");
                        *monitor = self.open_monitor();
                        return Some(Trigger::Drift);
                    }
                    None => {
                        *monitor = self.open_monitor();
                        return Some(Trigger::Drift);
                    }
                },
            }
        }
    }
}

/// A node that still exists (same uid, same podCIDRs) but lost its flannel annotations keeps
/// the entries it had. That is the incident this project exists for — a stale overwrite of the
/// Node drops the annotations and the owner re-asserts them within milliseconds — and dropping
/// the peer meanwhile would cut its pods off from this node. Upstream likewise ignores
/// updates of a node without its annotation until the node is deleted. A kept peer must still
/// not collide with any accepted one. `last_good` becomes the new set of programmed peers.
fn keep_peers_that_lost_their_annotations(
    selection: &mut PeerSelection,
    last_good: &mut HashMap<String, Peer>,
    kept_before: &mut HashSet<String>,
    cache: &NodeCache,
) {
    let mut kept: Vec<Peer> = Vec::new();
    selection.rejected.retain(|r| {
        if r.reason.kind() != RejectKind::NotManaged {
            return true;
        }
        let (Some(prev), Some(node)) = (last_good.get(&r.name), cache.get(&r.name)) else {
            return true;
        };
        let same_node = node.uid == prev.uid
            && prev
                .endpoints()
                .all(|(_, ep)| node.pod_cidrs.iter().any(|c| c == &ep.subnet.to_string()));
        let collides = selection.peers.iter().any(|p| {
            p.endpoints().any(|(f, ep)| {
                prev.endpoint(f).is_some_and(|old| {
                    old.vtep_mac == ep.vtep_mac
                        || old.subnet.contains(ep.subnet.network())
                        || ep.subnet.contains(old.subnet.network())
                })
            })
        });
        if same_node && !collides {
            kept.push(prev.clone());
            false
        } else {
            true
        }
    });
    let kept_names: HashSet<String> = kept.iter().map(|p| p.name.clone()).collect();
    for name in kept_names.difference(kept_before) {
        tracing::warn!(
            peer = %name,
            "node lost its flannel annotations; keeping its entries until they are back or the node is deleted"
        );
    }
    *kept_before = kept_names;
    selection.peers.extend(kept);
    selection.peers.sort_by(|a, b| a.name.cmp(&b.name));
    *last_good = selection
        .peers
        .iter()
        .map(|p| (p.name.clone(), p.clone()))
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MacAddr;

    #[test]
    fn a_peer_summary_serializes_as_lists_of_strings() {
        let p = PeerSummary {
            node: "n2".into(),
            endpoints: vec![
                PeerEndpoint {
                    subnet: "10.244.2.0/24".parse().unwrap(),
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 2]),
                    public_ip: "192.0.2.2".parse().unwrap(),
                    vni: Some(1),
                },
                PeerEndpoint {
                    subnet: "fd00:10:0:2::/64".parse().unwrap(),
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 6, 2]),
                    public_ip: "2001:db8::2".parse().unwrap(),
                    vni: Some(1),
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "node": "n2",
                "subnets": ["10.244.2.0/24", "fd00:10:0:2::/64"],
                "public_ips": ["192.0.2.2", "2001:db8::2"],
                "vtep_macs": ["0e:00:00:00:00:02", "0e:00:00:00:06:02"],
            })
        );
    }
}
