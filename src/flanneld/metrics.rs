//! The daemon's counters in one place: lock-free atomic updates from any task, rendered in the
//! Prometheus text exposition format (served by the health server). Hand-written rather than
//! through a client crate: a few dozen fixed series, updated with relaxed atomics from hot
//! paths, no registry to thread through the tasks; `promtool check metrics` checks the output
//! in the tests. Every metric is listed, with its type and labels, in docs/metrics.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::pure::peers::RejectKind;
use super::pure::reachability::{PeerState, TunnelVerdict};

/// Upper bounds (seconds) of the reconcile-duration histogram buckets.
pub const RECONCILE_BUCKETS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];
/// Tunnel probe round trips: LAN latencies up to a second (the answer wait).
pub const RTT_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];
/// Annotation heals: from noticing to the restoring patch.
pub const HEAL_BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0];
/// Distinct field managers counted by name; the rest are counted as `other` (a label per
/// writer is useful, an unbounded number of series is not).
pub const MAX_FIELD_MANAGERS: usize = 16;

/// A histogram with fixed buckets: atomic, non-cumulative slots (the last is `+Inf`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    slots: Vec<AtomicU64>,
    nanos_sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            nanos_sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos_sum.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, le) in self.bounds.iter().enumerate() {
            cumulative += self.slots[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.slots[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.nanos_sum.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The tunnel prober's figures (set once per round).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProbeCounts {
    pub reachable: u64,
    pub unknown: u64,
    pub unreachable: BTreeMap<TunnelVerdict, u64>,
}

const KINDS: usize = RejectKind::ALL.len();

/// Why an Event occurrence was never published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDrop {
    /// The limiter: too many series at once, or the queue to the events task was full.
    Limit,
    /// The API server answered 403 (the optional events role is not granted).
    Forbidden,
    /// The write failed in a way that ended its series (its Event was gone).
    Error,
}

impl EventDrop {
    pub const ALL: [EventDrop; 3] = [EventDrop::Limit, EventDrop::Forbidden, EventDrop::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            EventDrop::Limit => "limit",
            EventDrop::Forbidden => "forbidden",
            EventDrop::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// All daemon metrics. Share one instance (e.g. in an `Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    peers_programmed: AtomicU64,
    peers_failed: AtomicU64,
    peer_failures_total: AtomicU64,
    traffic_rules_in_place: AtomicU64,
    traffic_rules_failures_total: AtomicU64,
    peers_rejected: [AtomicU64; KINDS],
    rejections_total: [AtomicU64; KINDS],
    drift_repairs_total: AtomicU64,
    annotation_writes_total: AtomicU64,
    annotation_heals_total: AtomicU64,
    annotation_conflicts_total: AtomicU64,
    annotation_errors_total: AtomicU64,
    /// Milliseconds from noticing our annotations were gone to the patch that restored them.
    annotation_last_heal_ms: AtomicU64,
    netlink_ops_total: AtomicU64,
    events_written_total: AtomicU64,
    events_aggregated_total: AtomicU64,
    events_dropped_total: [AtomicU64; EventDrop::ALL.len()],
    reconciles_total: AtomicU64,
    reconcile_errors_total: AtomicU64,
    reconcile_duration: Histogram,
    annotation_heal_duration: Histogram,
    /// Heals by the field manager blamed for them (`None` key: not attributed).
    heals_by_manager: Mutex<BTreeMap<Option<String>, u64>>,
    probe_counts: Mutex<ProbeCounts>,
    probe_rounds_total: AtomicU64,
    probe_packets_sent_total: AtomicU64,
    probe_errors_total: AtomicU64,
    probe_interval_ms: AtomicU64,
    probe_rtt: Histogram,
    /// Peers that became reachable again / unreachable.
    probe_changes_reachable_total: AtomicU64,
    probe_changes_unreachable_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let zero = || AtomicU64::new(0);
        Metrics {
            peers_programmed: zero(),
            peers_failed: zero(),
            peer_failures_total: zero(),
            traffic_rules_in_place: zero(),
            traffic_rules_failures_total: zero(),
            peers_rejected: Default::default(),
            rejections_total: Default::default(),
            drift_repairs_total: zero(),
            annotation_writes_total: zero(),
            annotation_heals_total: zero(),
            annotation_conflicts_total: zero(),
            annotation_errors_total: zero(),
            annotation_last_heal_ms: zero(),
            netlink_ops_total: zero(),
            events_written_total: zero(),
            events_aggregated_total: zero(),
            events_dropped_total: Default::default(),
            reconciles_total: zero(),
            reconcile_errors_total: zero(),
            reconcile_duration: Histogram::new(&RECONCILE_BUCKETS),
            annotation_heal_duration: Histogram::new(&HEAL_BUCKETS),
            heals_by_manager: Mutex::default(),
            probe_counts: Mutex::default(),
            probe_rounds_total: zero(),
            probe_packets_sent_total: zero(),
            probe_errors_total: zero(),
            probe_interval_ms: zero(),
            probe_rtt: Histogram::new(&RTT_BUCKETS),
            probe_changes_reachable_total: zero(),
            probe_changes_unreachable_total: zero(),
        }
    }

    /// A probe round ended: its packets, the peers' standing, the answered RTTs.
    pub fn observe_probe_round(
        &self,
        sent: u64,
        counts: ProbeCounts,
        rtts: impl IntoIterator<Item = Duration>,
        interval: Duration,
    ) {
        self.probe_rounds_total.fetch_add(1, Ordering::Relaxed);
        self.probe_packets_sent_total
            .fetch_add(sent, Ordering::Relaxed);
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.probe_interval_ms.store(ms, Ordering::Relaxed);
        for rtt in rtts {
            self.probe_rtt.observe(rtt);
        }
        if let Ok(mut c) = self.probe_counts.lock() {
            *c = counts;
        }
    }

    /// A probe round could not run (no raw socket, a send error).
    pub fn count_probe_error(&self) {
        self.probe_errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A peer's reachability flipped to `to`.
    pub fn count_reachability_change(&self, to: PeerState) {
        match to {
            PeerState::Reachable => &self.probe_changes_reachable_total,
            PeerState::Unreachable => &self.probe_changes_unreachable_total,
            PeerState::Unknown => return,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn probe_counts(&self) -> ProbeCounts {
        self.probe_counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn probe_packets_sent(&self) -> u64 {
        self.probe_packets_sent_total.load(Ordering::Relaxed)
    }

    /// Gauge: peers currently programmed.
    pub fn set_peers_programmed(&self, n: u64) {
        self.peers_programmed.store(n, Ordering::Relaxed);
    }

    /// Gauge: peers whose entries the kernel refused in the last pass that attempted them.
    pub fn set_peers_failed(&self, n: u64) {
        self.peers_failed.store(n, Ordering::Relaxed);
    }

    /// Counter: a peer became failed (counted once per failure, not per retry).
    pub fn count_peer_failures(&self, n: u64) {
        self.peer_failures_total.fetch_add(n, Ordering::Relaxed);
    }

    /// One attempt to ensure the masquerade / forward rules ended.
    pub fn observe_traffic_rules(&self, in_place: bool) {
        self.traffic_rules_in_place
            .store(u64::from(in_place), Ordering::Relaxed);
        if !in_place {
            self.traffic_rules_failures_total
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gauge per reason: nodes currently rejected (replace all values after each selection).
    pub fn set_peers_rejected<I: IntoIterator<Item = RejectKind>>(&self, current: I) {
        let mut counts = [0u64; KINDS];
        for k in current {
            counts[k.index()] += 1;
        }
        for (slot, c) in self.peers_rejected.iter().zip(counts) {
            slot.store(c, Ordering::Relaxed);
        }
    }

    /// Counter: a node was newly rejected (or its rejection reason changed).
    pub fn count_rejection(&self, kind: RejectKind) {
        self.rejections_total[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: kernel entries repaired that the API did not ask to change (someone deleted or
    /// edited them, or they were stale at start-up).
    pub fn add_drift_repairs(&self, n: u64) {
        self.drift_repairs_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Counter: a successful annotation patch (the first publish included).
    pub fn count_annotation_write(&self) {
        self.annotation_writes_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: our annotations were found missing/different and re-asserted, `took` after
    /// the difference was noticed.
    /// `by` is the field manager the heal blames, when managedFields tell.
    pub fn count_annotation_heal(&self, took: Duration, by: Option<&str>) {
        self.annotation_heals_total.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.annotation_last_heal_ms.store(ms, Ordering::Relaxed);
        self.annotation_heal_duration.observe(took);
        if let Ok(mut m) = self.heals_by_manager.lock() {
            let named = m.keys().filter(|k| k.is_some()).count();
            let key = match by {
                Some(b) if m.contains_key(&Some(b.to_string())) || named < MAX_FIELD_MANAGERS => {
                    Some(b.to_string())
                }
                Some(_) => Some(OTHER_MANAGER.to_string()),
                None => None,
            };
            *m.entry(key).or_insert(0) += 1;
        }
    }

    /// Counter: an annotation patch failed other than with a 409.
    pub fn count_annotation_error(&self) {
        self.annotation_errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: an annotation patch hit a 409 conflict.
    pub fn count_annotation_conflict(&self) {
        self.annotation_conflicts_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: netlink write operations issued.
    pub fn add_netlink_ops(&self, n: u64) {
        self.netlink_ops_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Counter: an Event write (a create or a series patch) the API server accepted.
    pub fn count_event_written(&self) {
        self.events_written_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: an occurrence counted into an existing Event's series without a write of its
    /// own (a later series patch carries it).
    pub fn count_event_aggregated(&self) {
        self.events_aggregated_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counter: occurrences never published, by cause.
    pub fn count_events_dropped(&self, cause: EventDrop, n: u64) {
        self.events_dropped_total[cause.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// `(written, aggregated, dropped)` Event counts.
    pub fn event_counts(&self) -> (u64, u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            get(&self.events_written_total),
            get(&self.events_aggregated_total),
            self.events_dropped_total.iter().map(get).sum(),
        )
    }

    /// One reconcile pass finished.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconciles_total.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reconcile_errors_total.fetch_add(1, Ordering::Relaxed);
        }
        self.reconcile_duration.observe(took);
    }

    pub fn peers_programmed(&self) -> u64 {
        self.peers_programmed.load(Ordering::Relaxed)
    }

    pub fn annotation_heals(&self) -> u64 {
        self.annotation_heals_total.load(Ordering::Relaxed)
    }

    /// `(writes, heals, conflicts, errors, last heal in ms)` of the annotation keeper.
    pub fn annotation_counts(&self) -> (u64, u64, u64, u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            get(&self.annotation_writes_total),
            get(&self.annotation_heals_total),
            get(&self.annotation_conflicts_total),
            get(&self.annotation_errors_total),
            get(&self.annotation_last_heal_ms),
        )
    }

    pub fn drift_repairs(&self) -> u64 {
        self.drift_repairs_total.load(Ordering::Relaxed)
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles_total.load(Ordering::Relaxed)
    }

    pub fn netlink_ops(&self) -> u64 {
        self.netlink_ops_total.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut simple = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        simple(
            "flannel_peers_programmed",
            "gauge",
            "Peers whose neighbour, FDB and route entries are programmed.",
            get(&self.peers_programmed),
        );
        simple(
            "flannel_peers_failed",
            "gauge",
            "Peers whose entries the kernel refused in the last pass that attempted them.",
            get(&self.peers_failed),
        );
        simple(
            "flannel_peer_failures_total",
            "counter",
            "Times a peer became failed (the kernel refused its entries).",
            get(&self.peer_failures_total),
        );
        simple(
            "flannel_traffic_rules_in_place",
            "gauge",
            "1 when the last attempt to ensure the masquerade/forward rules succeeded.",
            get(&self.traffic_rules_in_place),
        );
        simple(
            "flannel_traffic_rules_failures_total",
            "counter",
            "Attempts to ensure the masquerade/forward rules that failed.",
            get(&self.traffic_rules_failures_total),
        );
        simple(
            "flannel_drift_repairs_total",
            "counter",
            "Kernel entries repaired that the API did not ask to change.",
            get(&self.drift_repairs_total),
        );
        simple(
            "flannel_annotation_heals_total",
            "counter",
            "Times our node annotations were found missing or changed and re-asserted.",
            get(&self.annotation_heals_total),
        );
        simple(
            "flannel_annotation_conflicts_total",
            "counter",
            "Annotation patches rejected with 409 Conflict.",
            get(&self.annotation_conflicts_total),
        );
        simple(
            "flannel_annotation_writes_total",
            "counter",
            "Successful annotation patches, the first publish included.",
            get(&self.annotation_writes_total),
        );
        simple(
            "flannel_annotation_errors_total",
            "counter",
            "Annotation patches that failed other than with 409 Conflict.",
            get(&self.annotation_errors_total),
        );
        simple(
            "flannel_netlink_ops_total",
            "counter",
            "Netlink write operations issued.",
            get(&self.netlink_ops_total),
        );
        simple(
            "flannel_events_written_total",
            "counter",
            "Event writes (creates and series patches) the API server accepted.",
            get(&self.events_written_total),
        );
        simple(
            "flannel_events_aggregated_total",
            "counter",
            "Event occurrences counted into an existing series without a write of their own.",
            get(&self.events_aggregated_total),
        );
        simple(
            "flannel_reconciles_total",
            "counter",
            "Reconcile passes.",
            get(&self.reconciles_total),
        );
        simple(
            "flannel_reconcile_errors_total",
            "counter",
            "Reconcile passes that failed.",
            get(&self.reconcile_errors_total),
        );
        let mut labelled = |name: &str, kind: &str, help: &str, values: &[AtomicU64; KINDS]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for k in RejectKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{reason=\"{}\"}} {}",
                    k.as_str(),
                    get(&values[k.index()])
                );
            }
        };
        labelled(
            "flannel_peers_rejected",
            "gauge",
            "Nodes currently not programmed, by reason.",
            &self.peers_rejected,
        );
        labelled(
            "flannel_peer_rejections_total",
            "counter",
            "Node rejections (counted once per change), by reason.",
            &self.rejections_total,
        );
        let name = "flannel_events_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Event occurrences never published, by cause.\n# TYPE {name} counter"
        );
        for c in EventDrop::ALL {
            let _ = writeln!(
                out,
                "{name}{{cause=\"{}\"}} {}",
                c.as_str(),
                get(&self.events_dropped_total[c.index()])
            );
        }
        self.reconcile_duration.render(
            &mut out,
            "flannel_reconcile_duration_seconds",
            "Duration of reconcile passes.",
        );
        self.annotation_heal_duration.render(
            &mut out,
            "flannel_annotation_heal_duration_seconds",
            "From noticing our annotations missing or changed to the patch that restored them.",
        );
        let name = "flannel_annotation_heals_by_manager_total";
        let _ = writeln!(
            out,
            "# HELP {name} Annotation heals by the field manager blamed (\"{UNKNOWN_MANAGER}\" when managedFields do not tell; \"{OTHER_MANAGER}\" past {MAX_FIELD_MANAGERS} names).\n# TYPE {name} counter"
        );
        if let Ok(m) = self.heals_by_manager.lock() {
            for (manager, n) in m.iter() {
                let label = escape_label(manager.as_deref().unwrap_or(UNKNOWN_MANAGER));
                let _ = writeln!(out, "{name}{{field_manager=\"{label}\"}} {n}");
            }
        }

        let counts = self.probe_counts();
        let mut simple = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        simple(
            "flannel_probe_peers_reachable",
            "gauge",
            "Peers answering tunnel probes at full size.",
            counts.reachable,
        );
        simple(
            "flannel_probe_peers_unknown",
            "gauge",
            "Programmed peers not probed yet, or failing fewer rounds than the threshold since they were added.",
            counts.unknown,
        );
        simple(
            "flannel_probe_rounds_total",
            "counter",
            "Tunnel probe rounds completed (every programmed peer probed once).",
            get(&self.probe_rounds_total),
        );
        simple(
            "flannel_probe_packets_sent_total",
            "counter",
            "ICMP echo requests sent by the tunnel prober.",
            get(&self.probe_packets_sent_total),
        );
        simple(
            "flannel_probe_errors_total",
            "counter",
            "Tunnel probe rounds that could not run (no raw socket, a send error).",
            get(&self.probe_errors_total),
        );
        let interval = get(&self.probe_interval_ms) as f64 / 1000.0;
        let name = "flannel_probe_round_interval_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Target duration of one probe round (base times ln(1 + peers)).\n# TYPE {name} gauge\n{name} {interval}"
        );
        let name = "flannel_probe_peers_unreachable";
        let _ = writeln!(
            out,
            "# HELP {name} Peers failing tunnel probes for the threshold of rounds, by what the probes found.\n# TYPE {name} gauge"
        );
        for v in TunnelVerdict::FAILURES {
            let n = counts.unreachable.get(&v).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", v.as_str());
        }
        let name = "flannel_probe_reachability_changes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Peers whose probe state flipped, by the new state.\n# TYPE {name} counter"
        );
        let _ = writeln!(
            out,
            "{name}{{to=\"reachable\"}} {}\n{name}{{to=\"unreachable\"}} {}",
            get(&self.probe_changes_reachable_total),
            get(&self.probe_changes_unreachable_total)
        );
        self.probe_rtt.render(
            &mut out,
            "flannel_probe_rtt_seconds",
            "Round trip of answered tunnel probes (VTEP to VTEP; full-size, or the small one when only it was answered).",
        );
        let name = "flannel_rs_build_info";
        let _ = writeln!(
            out,
            "# HELP {name} Always 1; the labels say which build runs.\n# TYPE {name} gauge\n{name}{{version=\"{}\",profile=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        out
    }
}

/// The label of heals blamed on a manager past [`MAX_FIELD_MANAGERS`].
pub const OTHER_MANAGER: &str = "other";
/// The label of heals managedFields do not explain.
pub const UNKNOWN_MANAGER: &str = "unknown";

/// A label value in the exposition format: backslash, quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn render_reflects_updates() {
        let m = Metrics::new();
        m.set_peers_programmed(42);
        m.set_peers_failed(1);
        m.count_peer_failures(1);
        m.observe_traffic_rules(false);
        m.observe_traffic_rules(false);
        m.observe_traffic_rules(true);
        m.set_peers_rejected([
            RejectKind::NotManaged,
            RejectKind::NotManaged,
            RejectKind::BadVtepMac,
        ]);
        m.count_rejection(RejectKind::BadVtepMac);
        m.add_drift_repairs(3);
        m.count_annotation_heal(Duration::from_millis(3), Some("rancher"));
        m.count_annotation_conflict();
        m.add_netlink_ops(9);
        m.count_annotation_write();
        m.count_annotation_write();
        m.count_annotation_error();
        assert_eq!(m.annotation_counts(), (2, 1, 1, 1, 3));
        m.count_event_written();
        m.count_event_aggregated();
        m.count_event_aggregated();
        m.count_events_dropped(EventDrop::Forbidden, 4);
        m.count_events_dropped(EventDrop::Limit, 1);
        assert_eq!(m.event_counts(), (1, 2, 5));
        m.observe_reconcile(Duration::from_micros(500), true);
        m.observe_reconcile(Duration::from_millis(30), true);
        m.observe_reconcile(Duration::from_secs(60), false);
        let t = m.render();
        assert_eq!(
            line(&t, "flannel_annotation_writes_total"),
            "flannel_annotation_writes_total 2"
        );
        assert_eq!(
            line(&t, "flannel_peers_programmed"),
            "flannel_peers_programmed 42"
        );
        assert_eq!(
            line(&t, "flannel_peers_rejected{reason=\"not_managed\"}"),
            "flannel_peers_rejected{reason=\"not_managed\"} 2"
        );
        assert_eq!(
            line(&t, "flannel_peers_rejected{reason=\"bad_vtep_mac\"}"),
            "flannel_peers_rejected{reason=\"bad_vtep_mac\"} 1"
        );
        assert_eq!(
            line(&t, "flannel_peer_rejections_total{reason=\"bad_vtep_mac\"}"),
            "flannel_peer_rejections_total{reason=\"bad_vtep_mac\"} 1"
        );
        assert!(t.contains("flannel_drift_repairs_total 3\n"));
        assert!(t.contains("flannel_events_written_total 1\n"));
        assert!(t.contains("flannel_events_aggregated_total 2\n"));
        assert!(t.contains("flannel_events_dropped_total{cause=\"forbidden\"} 4\n"));
        assert!(t.contains("flannel_events_dropped_total{cause=\"limit\"} 1\n"));
        assert!(t.contains("flannel_events_dropped_total{cause=\"error\"} 0\n"));
        assert!(t.contains("flannel_peers_failed 1\n"));
        assert!(t.contains("flannel_peer_failures_total 1\n"));
        assert!(t.contains("flannel_traffic_rules_in_place 1\n"));
        assert!(t.contains("flannel_traffic_rules_failures_total 2\n"));
        assert!(t.contains("flannel_annotation_heals_total 1\n"));
        assert!(t.contains("flannel_annotation_conflicts_total 1\n"));
        assert!(t.contains("flannel_netlink_ops_total 9\n"));
        assert!(t.contains("flannel_reconciles_total 3\n"));
        assert!(t.contains("flannel_reconcile_errors_total 1\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_bucket{le=\"30\"} 2\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(t.contains("flannel_reconcile_duration_seconds_count 3\n"));
        assert!(
            t.contains("flannel_reconcile_duration_seconds_sum 60.0305\n"),
            "{t}"
        );
        // a new selection replaces the gauge values
        m.set_peers_rejected([]);
        assert!(
            m.render()
                .contains("flannel_peers_rejected{reason=\"not_managed\"} 0\n")
        );
        assert_eq!(m.peers_programmed(), 42);
        assert_eq!(
            (
                m.annotation_heals(),
                m.drift_repairs(),
                m.reconciles(),
                m.netlink_ops()
            ),
            (1, 3, 3, 9)
        );
    }

    #[test]
    fn exposition_format_is_well_formed() {
        let t = Metrics::new().render();
        let mut typed = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                typed.insert(it.next().unwrap().to_string());
                assert!(matches!(it.next(), Some("gauge" | "counter" | "histogram")));
            } else if !l.starts_with("# HELP ") {
                let (name, value) = l.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "{l}");
                let base = name.split('{').next().unwrap();
                let family = base
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(typed.contains(base) || typed.contains(family), "{l}");
            }
        }
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("flannel_peers_rejected{"))
                .count(),
            RejectKind::ALL.len()
        );
    }

    #[test]
    fn heals_by_manager_are_capped_and_probe_figures_rendered() {
        let m = Metrics::new();
        m.count_annotation_heal(Duration::from_millis(2), None);
        for i in 0..MAX_FIELD_MANAGERS + 3 {
            m.count_annotation_heal(Duration::from_millis(2), Some(&format!("ctl-{i}")));
        }
        m.count_annotation_heal(Duration::from_millis(2), Some("ctl-0"));
        m.count_annotation_heal(Duration::from_secs(1), Some("we\"ird"));
        let t = m.render();
        let name = "flannel_annotation_heals_by_manager_total";
        assert!(
            t.contains(&format!("{name}{{field_manager=\"unknown\"}} 1\n")),
            "{t}"
        );
        assert!(
            t.contains(&format!("{name}{{field_manager=\"ctl-0\"}} 2\n")),
            "{t}"
        );
        assert!(
            t.contains(&format!("{name}{{field_manager=\"other\"}} 4\n")),
            "{t}"
        );
        assert_eq!(
            t.lines().filter(|l| l.starts_with(name)).count(),
            MAX_FIELD_MANAGERS + 2
        );
        assert!(
            t.contains("flannel_annotation_heal_duration_seconds_count 22\n"),
            "{t}"
        );
        assert!(t.contains("flannel_annotation_heal_duration_seconds_bucket{le=\"0.5\"} 21\n"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");

        let mut unreachable = BTreeMap::new();
        unreachable.insert(TunnelVerdict::UdpDropped, 2);
        m.observe_probe_round(
            10,
            ProbeCounts {
                reachable: 3,
                unknown: 1,
                unreachable,
            },
            [Duration::from_micros(300), Duration::from_millis(2)],
            Duration::from_millis(4500),
        );
        m.count_reachability_change(PeerState::Unreachable);
        m.count_reachability_change(PeerState::Unreachable);
        m.count_reachability_change(PeerState::Reachable);
        let t = m.render();
        assert!(t.contains("flannel_probe_peers_reachable 3\n"));
        assert!(t.contains("flannel_probe_peers_unknown 1\n"));
        assert!(t.contains("flannel_probe_peers_unreachable{reason=\"udp_dropped\"} 2\n"));
        assert!(t.contains("flannel_probe_peers_unreachable{reason=\"mtu_blackhole\"} 0\n"));
        assert!(t.contains("flannel_probe_packets_sent_total 10\n"));
        assert!(t.contains("flannel_probe_rounds_total 1\n"));
        assert!(t.contains("flannel_probe_round_interval_seconds 4.5\n"));
        assert!(t.contains("flannel_probe_rtt_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(t.contains("flannel_probe_rtt_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(
            t.contains("flannel_probe_reachability_changes_total{to=\"unreachable\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("flannel_probe_reachability_changes_total{to=\"reachable\"} 1\n"));
        assert_eq!(m.probe_packets_sent(), 10);
        assert!(t.contains("flannel_rs_build_info{version=\""));
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.add_netlink_ops(1);
                        m.count_rejection(RejectKind::VniMismatch);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.netlink_ops(), 40_000);
        assert!(
            m.render()
                .contains("flannel_peer_rejections_total{reason=\"vni_mismatch\"} 40000\n")
        );
    }
}
