//! The daemon's counters in one place: lock-free atomic updates from any task, rendered in the
//! Prometheus text exposition format (served later by the health server).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::pure::peers::RejectKind;

/// Upper bounds (seconds) of the reconcile-duration histogram buckets.
pub const RECONCILE_BUCKETS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

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
#[derive(Debug, Default)]
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
    /// Non-cumulative bucket counts; the last slot is `+Inf`.
    reconcile_buckets: [AtomicU64; RECONCILE_BUCKETS.len() + 1],
    reconcile_nanos_sum: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
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
    pub fn count_annotation_heal(&self, took: Duration) {
        self.annotation_heals_total.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.annotation_last_heal_ms.store(ms, Ordering::Relaxed);
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
        let secs = took.as_secs_f64();
        let slot = RECONCILE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(RECONCILE_BUCKETS.len());
        self.reconcile_buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.reconcile_nanos_sum.fetch_add(nanos, Ordering::Relaxed);
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
        let name = "flannel_reconcile_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of reconcile passes.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, le) in RECONCILE_BUCKETS.iter().enumerate() {
            cumulative += get(&self.reconcile_buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += get(&self.reconcile_buckets[RECONCILE_BUCKETS.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = get(&self.reconcile_nanos_sum) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
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
        m.count_annotation_heal(Duration::from_millis(3));
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
