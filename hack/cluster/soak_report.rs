//! The soak's pure parts: the seeded fault order, the least-squares slope of the daemons'
//! RSS and open fds, the fault table and the SVG chart (written by hand: a few polylines).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// One kind of fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Api500,
    Api429,
    ApiLatency,
    WatchDrop,
    ApiRestartCompacted,
    DaemonSigkill,
    DaemonSigterm,
    DeviceDeleted,
    EntriesFlushed,
    ChainsFlushed,
    VtepMacChanged,
    CniStorm,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Api500,
        FaultKind::Api429,
        FaultKind::ApiLatency,
        FaultKind::WatchDrop,
        FaultKind::ApiRestartCompacted,
        FaultKind::DaemonSigkill,
        FaultKind::DaemonSigterm,
        FaultKind::DeviceDeleted,
        FaultKind::EntriesFlushed,
        FaultKind::ChainsFlushed,
        FaultKind::VtepMacChanged,
        FaultKind::CniStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Api500 => "api-500",
            FaultKind::Api429 => "api-429",
            FaultKind::ApiLatency => "api-latency",
            FaultKind::WatchDrop => "watch-drop",
            FaultKind::ApiRestartCompacted => "api-restart-compacted",
            FaultKind::DaemonSigkill => "daemon-sigkill",
            FaultKind::DaemonSigterm => "daemon-sigterm",
            FaultKind::DeviceDeleted => "flannel.1-deleted",
            FaultKind::EntriesFlushed => "routes-neigh-fdb-flushed",
            FaultKind::ChainsFlushed => "iptables-chains-flushed",
            FaultKind::VtepMacChanged => "vtep-mac-changed",
            FaultKind::CniStorm => "cni-storm-sigkill",
        }
    }

    /// Whether the fault removes what the pods' packets need (so pings are lost until the
    /// daemon repairs it). Every other fault must cost no ping at all.
    pub fn cuts_datapath(self) -> bool {
        matches!(
            self,
            FaultKind::DeviceDeleted | FaultKind::EntriesFlushed | FaultKind::VtepMacChanged
        )
    }
}

/// The fault order: every kind once per round, each round shuffled by the seeded generator,
/// so one seed replays the same order.
pub struct FaultDeck {
    rng: StdRng,
    round: Vec<FaultKind>,
}

impl FaultDeck {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            round: Vec::new(),
        }
    }

    /// The generator for the faults' own choices (target node, storm shape).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

impl Iterator for FaultDeck {
    type Item = FaultKind;

    fn next(&mut self) -> Option<FaultKind> {
        if self.round.is_empty() {
            self.round = FaultKind::ALL.to_vec();
            self.round.shuffle(&mut self.rng);
        }
        self.round.pop()
    }
}

/// One sample of one daemon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t: f64,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u64,
}

/// Least-squares slope of `(x, y)` points (`None` below two distinct x).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// One daemon process's samples (a node's daemon restarted by a fault is a new process).
#[derive(Debug, Clone)]
pub struct Lifetime {
    pub node: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
}

impl Lifetime {
    pub fn span(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => b.t - a.t,
            _ => 0.0,
        }
    }

    /// (RSS KiB per minute, fds per minute): the least-squares slope of the floor (minimum)
    /// of each `window` seconds, after the first `skip` fraction of the lifetime. Start-up
    /// allocations are not a trend, and a transient fd (an iptables pipe, a reconnect) or
    /// allocation only lifts a sample, never a window's floor — a leak lifts the floor.
    pub fn slopes(&self, skip: f64, window: f64) -> Option<(f64, f64)> {
        let start = self.samples.first()?.t + self.span() * skip;
        let mut floors: Vec<(f64, u64, u64)> = Vec::new();
        for s in self.samples.iter().filter(|s| s.t >= start) {
            let bucket = ((s.t - start) / window).floor();
            match floors.last_mut() {
                Some(f) if ((f.0 - start) / window).floor() == bucket => {
                    f.1 = f.1.min(s.rss_kib);
                    f.2 = f.2.min(s.fds);
                }
                _ => floors.push((s.t, s.rss_kib, s.fds)),
            }
        }
        let rss: Vec<(f64, f64)> = floors.iter().map(|f| (f.0, f.1 as f64)).collect();
        let fds: Vec<(f64, f64)> = floors.iter().map(|f| (f.0, f.2 as f64)).collect();
        Some((slope(&rss)? * 60.0, slope(&fds)? * 60.0))
    }
}

/// Splits samples per node into daemon processes, in order of appearance.
pub fn lifetimes(samples: &BTreeMap<String, Vec<Sample>>) -> Vec<Lifetime> {
    let mut out: Vec<Lifetime> = Vec::new();
    for (node, list) in samples {
        let mut current: Option<Lifetime> = None;
        for s in list {
            match &mut current {
                Some(l) if l.pid == s.pid => l.samples.push(*s),
                _ => {
                    if let Some(l) = current.take() {
                        out.push(l);
                    }
                    current = Some(Lifetime {
                        node: node.clone(),
                        pid: s.pid,
                        samples: vec![*s],
                    });
                }
            }
        }
        out.extend(current);
    }
    out
}

/// One injected fault and what was measured.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub index: usize,
    /// Seconds since the soak started, when the fault was injected.
    pub at: f64,
    pub kind: FaultKind,
    pub target: String,
    /// Measured repair time in ms (from the fault, or from its end for faults held for a
    /// while), `None` when the fault has nothing to repair.
    pub repair_ms: Option<f64>,
    /// What the repair time was measured on.
    pub measured: &'static str,
    pub pings_sent: u64,
    pub pings_lost: u64,
    /// Longest run of lost replies of any pinger, in ms (consecutive losses × interval).
    pub gap_ms: f64,
    pub detail: String,
    /// Why this fault failed the soak (empty = passed).
    pub failures: Vec<String>,
}

/// The fault table, one row per fault.
pub fn render_table(records: &[FaultRecord]) -> String {
    let mut out = format!(
        "{:>3} {:>7}  {:<25} {:<7} {:<4} {:>10}  {:<32} {:>6} {:>5} {:>8}  {:<6} {}\n",
        "#",
        "t (s)",
        "fault",
        "target",
        "cuts",
        "repair ms",
        "measured on",
        "pings",
        "lost",
        "gap ms",
        "result",
        "detail"
    );
    for r in records {
        let _ = writeln!(
            out,
            "{:>3} {:>7.1}  {:<25} {:<7} {:<4} {:>10}  {:<32} {:>6} {:>5} {:>8.0}  {:<6} {}{}",
            r.index,
            r.at,
            r.kind.name(),
            r.target,
            if r.kind.cuts_datapath() { "yes" } else { "no" },
            r.repair_ms
                .map(|ms| format!("{ms:.0}"))
                .unwrap_or_else(|| "-".into()),
            r.measured,
            r.pings_sent,
            r.pings_lost,
            r.gap_ms,
            if r.failures.is_empty() { "ok" } else { "FAIL" },
            r.detail,
            if r.failures.is_empty() {
                String::new()
            } else {
                format!(" [{}]", r.failures.join("; "))
            }
        );
    }
    out
}

/// Per kind: count, median and max repair ms, pings lost.
pub fn render_summary(records: &[FaultRecord]) -> String {
    let mut by: BTreeMap<FaultKind, Vec<&FaultRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.kind).or_default().push(r);
    }
    let mut out = format!(
        "{:<25} {:>3} {:<4} {:>11} {:>9} {:>10} {:>11}\n",
        "fault", "n", "cuts", "median ms", "max ms", "pings lost", "max gap ms"
    );
    for (kind, list) in by {
        let mut repairs: Vec<f64> = list.iter().filter_map(|r| r.repair_ms).collect();
        repairs.sort_by(f64::total_cmp);
        let median = repairs
            .get(repairs.len() / 2)
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into());
        let max = repairs
            .last()
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into());
        let lost: u64 = list.iter().map(|r| r.pings_lost).sum();
        let gap = list.iter().map(|r| r.gap_ms).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "{:<25} {:>3} {:<4} {:>11} {:>9} {:>10} {:>11.0}",
            kind.name(),
            list.len(),
            if kind.cuts_datapath() { "yes" } else { "no" },
            median,
            max,
            lost,
            gap
        );
    }
    out
}

/// Faults labelled on the chart's time axis at most.
const MAX_LABELS: usize = 40;

const COLORS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart: daemon RSS (MiB) and open fds over time, one line per daemon process (a
/// restart starts a new line in the node's colour), a vertical marker per fault (red: cuts
/// the datapath).
pub fn render_svg(lifetimes: &[Lifetime], faults: &[FaultRecord], duration: f64) -> String {
    let (w, panel_h, left, right, top, gap) = (1100.0, 230.0, 70.0, 20.0, 40.0, 60.0);
    let height = top + 2.0 * panel_h + gap + 170.0;
    let span = duration.max(1.0);
    let x = |t: f64| left + (t / span) * (w - left - right);
    let nodes: Vec<&str> = {
        let mut v: Vec<&str> = lifetimes.iter().map(|l| l.node.as_str()).collect();
        v.dedup();
        v
    };
    let color = |node: &str| {
        let i = nodes.iter().position(|n| *n == node).unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">flanneld RSS and open fds during the chaos soak ({:.0} s, {} faults; red = fault that cuts the datapath)</text>\n",
        duration,
        faults.len()
    );
    type Metric = fn(&Sample) -> f64;
    let panels: [(&str, Metric); 2] = [
        ("RSS (MiB)", |s| s.rss_kib as f64 / 1024.0),
        ("open fds", |s| s.fds as f64),
    ];
    for (p, (label, metric)) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (panel_h + gap);
        let values: Vec<f64> = lifetimes
            .iter()
            .flat_map(|l| l.samples.iter().map(metric))
            .collect();
        let max = values.iter().copied().fold(0.0, f64::max);
        let top_value = if max <= 0.0 { 1.0 } else { max * 1.15 };
        let y = |v: f64| y0 + panel_h - (v / top_value) * panel_h;
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{y0}\" width=\"{}\" height=\"{panel_h}\" fill=\"none\" stroke=\"#999\"/>",
            w - left - right
        );
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\" transform=\"rotate(-90 10 {})\" text-anchor=\"middle\">{label}</text>",
            y0 + panel_h / 2.0,
            y0 + panel_h / 2.0
        );
        for i in 0..=4 {
            let v = top_value * f64::from(i) / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
                w - right,
                y(v),
                y(v),
                left - 4.0,
                y(v) + 4.0
            );
        }
        for f in faults {
            let stroke = if f.kind.cuts_datapath() {
                "#d62728"
            } else {
                "#bbb"
            };
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y0}\" y2=\"{}\" stroke=\"{stroke}\" stroke-dasharray=\"3,3\"/>",
                x(f.at),
                x(f.at),
                y0 + panel_h
            );
        }
        for l in lifetimes {
            let points: Vec<String> = l
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.t), y(metric(s))))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                color(&l.node),
                points.join(" ")
            );
        }
    }
    // The bottom edge of the lower panel.
    let axis_y = top + 2.0 * panel_h + gap;
    for i in 0..=10 {
        let t = span * f64::from(i) / 10.0;
        for below in [top + panel_h, axis_y] {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0} s</text>",
                x(t),
                below + 15.0
            );
        }
    }
    // Beyond a few dozen faults the labels would only overlap: the table names them.
    let labelled = if faults.len() <= MAX_LABELS {
        faults
    } else {
        let _ = writeln!(
            svg,
            "<text x=\"{left}\" y=\"{:.1}\">{} faults: labels left out, see the fault table</text>",
            axis_y + 35.0,
            faults.len()
        );
        &[][..]
    };
    for f in labelled {
        let (fx, fy) = (x(f.at), axis_y + 25.0);
        let _ = writeln!(
            svg,
            "<text x=\"{fx:.1}\" y=\"{fy:.1}\" transform=\"rotate(60 {fx:.1} {fy:.1})\" font-size=\"9\" fill=\"{}\">{}</text>",
            if f.kind.cuts_datapath() {
                "#d62728"
            } else {
                "#555"
            },
            escape(&format!("{} {}", f.kind.name(), f.target))
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let lx = left + 10.0 + i as f64 * 110.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{lx}\" y=\"28\" width=\"10\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"33\">{}</text>",
            color(node),
            lx + 14.0,
            escape(node)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_order_and_every_round_has_every_kind() {
        let a: Vec<FaultKind> = FaultDeck::new(7).take(36).collect();
        let b: Vec<FaultKind> = FaultDeck::new(7).take(36).collect();
        assert_eq!(a, b);
        let c: Vec<FaultKind> = FaultDeck::new(8).take(36).collect();
        assert_ne!(a, c, "another seed, another order");
        for round in a.chunks(FaultKind::ALL.len()) {
            let mut kinds = round.to_vec();
            kinds.sort();
            assert_eq!(kinds, FaultKind::ALL.to_vec());
        }
    }

    #[test]
    fn slope_of_a_line_and_of_nothing() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&pts).unwrap_or(0.0) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
    }

    #[test]
    fn restarts_split_lifetimes_and_slopes_skip_the_start() {
        let s = |t: f64, pid: u32, rss: u64| Sample {
            t,
            pid,
            rss_kib: rss,
            fds: 10,
        };
        let mut m = BTreeMap::new();
        m.insert(
            "node-1".to_string(),
            vec![
                s(0.0, 1, 100),
                s(1.0, 1, 5000),
                s(2.0, 1, 5000),
                s(3.0, 1, 5000),
                s(4.0, 2, 10),
            ],
        );
        let l = lifetimes(&m);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].pid, l[0].samples.len(), l[1].pid), (1, 4, 2));
        let (rss, fds) = l[0].slopes(0.3, 1.0).unwrap_or((f64::NAN, f64::NAN));
        assert_eq!((rss, fds), (0.0, 0.0), "the start-up jump is skipped");
        assert!(l[0].slopes(0.0, 1.0).is_some_and(|(r, _)| r > 0.0));
        // A transient spike lifts one sample, not its window's floor.
        let spiky = Lifetime {
            node: "node-1".into(),
            pid: 1,
            samples: (0..40)
                .map(|i| Sample {
                    t: f64::from(i) * 0.5,
                    pid: 1,
                    rss_kib: 1000,
                    fds: if i % 7 == 3 { 14 } else { 10 },
                })
                .collect(),
        };
        assert_eq!(spiky.slopes(0.0, 5.0), Some((0.0, 0.0)));
    }

    #[test]
    fn table_and_chart_show_every_fault() {
        let rec = |i: usize, kind: FaultKind, failures: Vec<String>| FaultRecord {
            index: i,
            at: i as f64,
            kind,
            target: "node-2".into(),
            repair_ms: Some(12.0),
            measured: "kernel entries converged",
            pings_sent: 600,
            pings_lost: 3,
            gap_ms: 30.0,
            detail: String::new(),
            failures,
        };
        let records = vec![
            rec(1, FaultKind::DeviceDeleted, vec![]),
            rec(2, FaultKind::WatchDrop, vec!["3 pings lost".into()]),
        ];
        let table = render_table(&records);
        assert!(
            table.contains("flannel.1-deleted") && table.contains("FAIL"),
            "{table}"
        );
        assert!(render_summary(&records).contains("watch-drop"));
        let mut m = BTreeMap::new();
        m.insert(
            "node-1".to_string(),
            vec![
                Sample {
                    t: 0.0,
                    pid: 1,
                    rss_kib: 2048,
                    fds: 9,
                },
                Sample {
                    t: 2.0,
                    pid: 1,
                    rss_kib: 2048,
                    fds: 9,
                },
            ],
        );
        let svg = render_svg(&lifetimes(&m), &records, 2.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "RSS and fds of one daemon"
        );
        assert!(svg.contains("#d62728"), "the cutting fault is marked red");
    }
}
