//! The one reconcile path: start-up, node watch events, netlink drift and the periodic resync
//! all end in [`Reconciler::pass`], which computes the desired state from the node cache,
//! reads the kernel, and applies only the difference — device by device
//! ([`Reconciler::program_device`]). [`view`] keeps what is known of the kernel between passes;
//! [`summary`] is what a pass reports.

mod summary;
mod view;

pub use summary::{DeviceSummary, FailedPeerSummary, PassSummary, PeerList, RejectedSummary};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::netlink::{Link, Netlink};

use super::datapath::{self, DeviceAction};
use super::events::Events;
use super::health::{Readiness, SharedWatchdog};
use super::memory;
use super::metrics::Metrics;
use super::node_cache::NodeCache;
use super::pure::annotations::AnnotationKeys;
use super::pure::backoff::Backoff;
use super::pure::desired::{self, FamilyState, KernelEntries, OwnMacs, Underlay};
use super::pure::lease::PodSubnets;
use super::pure::netconf::NetConf;
use super::pure::peers::{
    self, LostAnnotations, ParseMemo, Peer, PeerSelection, RejectedNode, RejectionTracker,
    ValidationContext,
};
use super::pure::plan;
use super::pure::readiness::PassEnd;
use super::pure::refusals::{self, FailedPeers, Refusal};
use crate::net::Family;
use view::{DeviceEntries, HeldEntries, KernelView};

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
    lost_annotations: LostAnnotations,
    view: KernelView,
    /// The pod MTU of the last desired state (the smallest device MTU), for subnet.env.
    pub pod_mtu: Option<u32>,
    /// Each node's parse verdict while the first list is in progress (see [`ParseMemo`]).
    parse_memo: ParseMemo,
    /// The last pass left errors behind: the loop retries after a backoff.
    retry_due: bool,
    /// Told of every requested and every completed pass (liveness).
    pub watchdog: SharedWatchdog,
    /// Told how every pass ended (the datapath's readiness gate).
    pub readiness: Readiness,
    /// Peers whose entries the kernel refuses.
    failed_peers: FailedPeers,
    /// New rejections and drift repairs become Events on our Node.
    pub events: Events,
}

/// What one device's step of a pass did.
struct DeviceOutcome {
    summary: DeviceSummary,
    operations: usize,
    refusals: Vec<Refusal>,
    /// What the kernel holds on the device after a provisional pass whose changes all applied.
    held: Option<KernelEntries>,
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
            lost_annotations: LostAnnotations::default(),
            view: KernelView::default(),
            pod_mtu: None,
            parse_memo: ParseMemo::default(),
            retry_due: false,
            watchdog: SharedWatchdog::default(),
            readiness: Readiness::default(),
            failed_peers: FailedPeers::default(),
            events: Events::default(),
        }
    }

    /// One reconcile: desired from the cache, actual from the kernel, apply the difference.
    /// Its end is the datapath's readiness gate: a complete pass counts even when the kernel
    /// refused some peers' entries (those peers are marked failed and retried).
    pub async fn pass(&mut self, trigger: Trigger) -> Result<PassSummary, ReconcileError> {
        self.mark_requested();
        let outcome = self.pass_inner(trigger).await;
        if let Ok(mut w) = self.watchdog.lock() {
            w.completed();
        }
        self.retry_due = !matches!(&outcome, Ok(s) if s.errors.is_empty());
        let end = match &outcome {
            Ok(s) if s.provisional => PassEnd::Provisional,
            Ok(_) => PassEnd::Complete,
            Err(e) => PassEnd::Failed(e.to_string()),
        };
        self.readiness
            .update(|g| g.datapath = g.datapath.after(end));
        outcome
    }

    fn mark_requested(&self) {
        if let Ok(mut w) = self.watchdog.lock() {
            w.requested(Instant::now());
        }
    }

    async fn pass_inner(&mut self, trigger: Trigger) -> Result<PassSummary, ReconcileError> {
        // A test build can wedge the pass here, as a netlink request that never returns would.
        if super::tasks::test_faults::active("reconcile:wedge") {
            tracing::warn!("test fault: the reconcile pass is wedged");
            std::future::pending::<()>().await;
        }
        let started = Instant::now();
        // Before the first complete list, peers are programmed as pages arrive, additively.
        let provisional = !self.cache.is_synced();
        let mut held = self.view.take_held(trigger);
        let (peers, rejected) = self.select_peers(provisional);
        let selected_us = started.elapsed().as_micros() as u64;

        let inputs = &self.inputs;
        let mut desired = desired::desired_state(
            &inputs.netconf.backend,
            &inputs.underlay,
            &inputs.lease,
            &inputs.own_macs,
            &peers,
        )?;
        let desired_us = started.elapsed().as_micros() as u64;

        let mut summary = PassSummary {
            trigger: Some(trigger),
            provisional,
            ..PassSummary::default()
        };
        let mut devices = Vec::new();
        // Kept only if the whole pass completes, together with the wanted entries, which the
        // drift test needs to notice changes behind the held view.
        let mut held_after = Vec::new();
        let mut refused = Vec::new();
        // Devices first: the monitor opens (once) after them and before the first dump.
        let mut ensured = Vec::new();
        for family in [Family::V4, Family::V6] {
            if let Some(state) = desired.family(family) {
                ensured.push((family, state, self.ensure_device(family, state).await?));
            }
        }
        self.view.open_monitor_once(&self.nl);
        for (family, state, (device, action)) in ensured {
            let outcome = self
                .program_device(
                    family,
                    state,
                    (&device, action),
                    &mut held,
                    trigger,
                    provisional,
                )
                .await?;
            tracing::debug!(
                device = %outcome.summary.name,
                provisional,
                selected_us,
                desired_us,
                applied_us = started.elapsed().as_micros() as u64,
                "reconcile pass (µs since the pass began)"
            );
            let index = outcome.summary.index;
            if let Some(entries) = outcome.held {
                held_after.push(DeviceEntries {
                    family,
                    index,
                    entries,
                });
            }
            summary.operations += outcome.operations;
            refused.extend(outcome.refusals);
            summary.devices.push(outcome.summary);
            devices.push((family, index));
        }
        self.pod_mtu = desired.pod_mtu();
        // The desired entries are kept (moved, not copied) for drift detection until the next
        // pass, rebuilt in one go: full B-tree nodes (desired_state inserts in peer order).
        let wanted = devices
            .into_iter()
            .filter_map(|(family, index)| {
                let state = desired.get_mut(family).take()?;
                let e = state.entries;
                Some(DeviceEntries {
                    family,
                    index,
                    entries: KernelEntries {
                        neighbours: e.neighbours.into_iter().collect(),
                        fdb: e.fdb.into_iter().collect(),
                        routes: e.routes.into_iter().collect(),
                    },
                })
            })
            .collect();
        self.view.record(wanted, held_after);

        summary.errors = refused.iter().map(|r| r.error.clone()).collect();
        summary.failed_peers = self.note_refusals(&peers, &refused, !provisional);
        self.metrics
            .set_peers_programmed(peers.len().saturating_sub(self.failed_peers.len()) as u64);
        summary.peers = PeerList(peers);
        summary.rejected = rejected
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

    /// Splits a pass's refusals by peer and keeps the failed-peer set; logs once per change (a
    /// peer becomes failed, a peer recovers) and the refusals no peer explains.
    fn note_refusals(
        &mut self,
        peers: &[Peer],
        refused: &[Refusal],
        complete: bool,
    ) -> Vec<FailedPeerSummary> {
        let attributed = refusals::attribute(peers, refused);
        for name in self.failed_peers.retain_selected(peers) {
            tracing::debug!(peer = %name, "a failed peer is no longer selected");
        }
        let changes = self.failed_peers.update(&attributed.by_peer, complete);
        for (peer, error) in &changes.failed {
            tracing::warn!(
                peer = %peer,
                error = %error,
                "the kernel refuses this peer's entries: peer marked failed, retried with backoff (readiness does not wait for it)"
            );
        }
        for peer in &changes.recovered {
            tracing::info!(peer = %peer, "peer programmed after earlier kernel refusals");
        }
        for e in attributed.unattributed.iter().take(5) {
            tracing::warn!(error = %e, "kernel change failed");
        }
        self.metrics
            .count_peer_failures(changes.failed.len() as u64);
        self.metrics
            .set_peers_failed(self.failed_peers.len() as u64);
        self.failed_peers
            .iter()
            .map(|(node, error)| FailedPeerSummary {
                node: node.to_string(),
                error: error.to_string(),
            })
            .collect()
    }

    /// The peers to program, from the node cache: validated, conflicts settled, peers that
    /// only lost their annotations kept; new rejections logged and counted. The peers are the
    /// copy kept between passes (the selection's own vector goes at once: at 5000 peers the
    /// pass would otherwise hold both through programming).
    fn select_peers(&mut self, provisional: bool) -> (Arc<[Peer]>, Vec<RejectedNode>) {
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
        let cache = &self.cache;
        for name in self.lost_annotations.keep(&mut selection, |n| cache.get(n)) {
            tracing::warn!(
                peer = %name,
                "node lost its flannel annotations; keeping its entries until they are back or the node is deleted"
            );
        }
        let PeerSelection { peers, rejected } = selection;
        drop(peers);
        let peers = self.lost_annotations.programmed();
        // Verdicts on a partial list can change (an older holder of a subnet may be on a later
        // page); they are logged and counted once the list is complete.
        if provisional {
            return (peers, rejected);
        }
        for r in self.rejections.update(&rejected) {
            if r.reason.is_benign() {
                tracing::debug!(peer = %r.name, reason = %r.reason, "node is not a flannel vxlan peer");
            } else {
                self.metrics.count_rejection(r.reason.kind());
                tracing::warn!(peer = %r.name, reason = %r.reason, "rejected peer: nothing is programmed for it");
                self.events
                    .peer_rejected(&r.name, r.reason.kind().as_str(), &r.reason.to_string());
            }
        }
        self.metrics.set_peers_rejected(
            rejected
                .iter()
                .filter(|r| !r.reason.is_benign())
                .map(|r| r.reason.kind()),
        );
        (peers, rejected)
    }

    /// Creates the family's VXLAN device, or adopts or recreates the one there.
    async fn ensure_device(
        &self,
        family: Family,
        state: &FamilyState,
    ) -> Result<(Link, DeviceAction), ReconcileError> {
        let network = self.inputs.netconf.network(family);
        let (device, action) = datapath::ensure_device(&self.nl, &state.device, network).await?;
        match action {
            DeviceAction::Adopted => {}
            DeviceAction::Created => {
                tracing::info!(device = %device.name, index = device.index, "created vxlan device")
            }
            DeviceAction::Recreated => {
                tracing::warn!(device = %device.name, index = device.index, "recreated vxlan device")
            }
        }
        Ok((device, action))
    }

    /// One device's entries: read what it holds (or take the held view), diff, apply.
    async fn program_device(
        &self,
        family: Family,
        state: &FamilyState,
        (device, action): (&Link, DeviceAction),
        held: &mut HeldEntries,
        trigger: Trigger,
        provisional: bool,
    ) -> Result<DeviceOutcome, ReconcileError> {
        let reused = held
            .take(family, device.index)
            .filter(|_| action == DeviceAction::Adopted);
        let actual = match reused {
            Some(entries) => entries,
            None => datapath::actual_entries(&self.nl, device, family).await?,
        };
        let mut plan = plan::diff(&actual, &state.entries);
        // A provisional pass keeps its view of the kernel for the next page; otherwise the
        // dump (3 entries per peer) is not needed while the plan is applied.
        let mut view = None;
        if provisional {
            plan = plan.additions_only(&actual);
            view = Some(actual);
        } else {
            drop(actual);
        }
        let mut failed: Vec<Refusal> = Vec::new();
        let mut operations = 0;
        if !plan.is_empty() {
            let ops = datapath::plan_ops(&plan, device.index);
            let results = self.nl.apply(&ops).await;
            failed = ops
                .iter()
                .zip(&results)
                .filter_map(|(op, r)| {
                    let error = r.as_ref().err()?.to_string();
                    Some(Refusal {
                        key: datapath::entry_key(op, family),
                        error,
                    })
                })
                .collect();
            operations = ops.len();
            self.metrics.add_netlink_ops(ops.len() as u64);
            if matches!(trigger, Trigger::Drift | Trigger::Resync)
                && action == DeviceAction::Adopted
            {
                let repaired = ops.len() - failed.len();
                self.metrics.add_drift_repairs(repaired as u64);
                if repaired > 0 {
                    self.events
                        .datapath_repaired(&device.name, &plan::describe_repair(&plan));
                }
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
        }
        // What failed is unknown ground: the next pass dumps.
        let held = view.filter(|_| failed.is_empty()).map(|mut entries| {
            entries
                .neighbours
                .extend(plan.neighbours.add.iter().copied());
            entries.fdb.extend(plan.fdb.add.iter().copied());
            entries.routes.extend(plan.routes.add.iter().copied());
            entries
        });
        Ok(DeviceOutcome {
            summary: DeviceSummary {
                name: device.name.clone(),
                index: device.index,
                mac: device.mac.map(|m| m.to_string()).unwrap_or_default(),
                mtu: device.mtu,
                entries: state.entries.len(),
            },
            operations,
            refusals: failed,
            held,
        })
    }

    /// Runs passes until `shutdown`, after the start-up pass (the daemon runs it first, for
    /// subnet.env). A pass that left errors is retried after a backoff (200 ms doubling to
    /// 30 s), refused peers included.
    pub async fn run(
        mut self,
        mut peers_changed: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut retry_in = self.retry_due.then(|| retry.next_delay(&mut rng));
        loop {
            // Node events that came in during the pass have had its whole duration to gather:
            // waiting for more only delays them.
            let backlog = peers_changed.has_changed().unwrap_or(false);
            let Some(trigger) = self
                .wait_for_trigger(&mut peers_changed, retry_in, &shutdown)
                .await
            else {
                return;
            };
            // Asked for now: the coalescing wait counts towards the bound too.
            self.mark_requested();
            // After a failed pass the retry backoff paces passes, queued events or not.
            if !(backlog && trigger == Trigger::NodeChange && retry_in.is_none()) {
                // Let a burst of node events or kernel notifications settle into one pass.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.timing.coalesce) => {}
                }
            }
            peers_changed.borrow_and_update();

            let outcome = self.pass(trigger).await;
            // A pass's dumps and plan are freed now; hand their pages back (see memory.rs).
            memory::release_free_memory();
            retry_in = match outcome {
                Ok(summary) if summary.errors.is_empty() => {
                    retry.reset();
                    None
                }
                Ok(summary) => {
                    let delay = retry.next_delay(&mut rng);
                    // The pass logged what is new among its refusals; a retry is routine.
                    tracing::debug!(
                        errors = summary.errors.len(),
                        failed_peers = summary.failed_peers.len(),
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
        }
    }

    async fn wait_for_trigger(
        &mut self,
        peers_changed: &mut watch::Receiver<u64>,
        retry_in: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Option<Trigger> {
        let retry = async {
            match retry_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => None,
            changed = peers_changed.changed() => {
                if changed.is_err() {
                    // The watcher ended (shutdown in progress).
                    shutdown.cancelled().await;
                    return None;
                }
                Some(Trigger::NodeChange)
            }
            _ = tokio::time::sleep(self.timing.resync) => Some(Trigger::Resync),
            _ = retry => Some(Trigger::Retry),
            _ = self.view.drift(&self.nl) => Some(Trigger::Drift),
        }
    }
}
