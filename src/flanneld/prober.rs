//! The daemon's tunnel prober (task `tunnel-prober`): every programmed peer is probed through
//! the tunnel once per round with [`probe::probe_peers`] — the engine `flanneld diagnose`
//! uses — and its standing kept by [`Reachability`]. A round spreads its probes over
//! `base · ln(1 + peers)` and never sends faster than `max_rate` packets per second, so the
//! cost per peer falls as the cluster grows and the packet rate stays bounded. The results go
//! to the metrics, to `/status` and, on a change after `threshold` failed rounds, to a log
//! line and an Event ([`on_peer_reachability_change`]).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::metrics::{Metrics, ProbeCounts};
use super::probe::{self, Pacing, ProbeTarget, TunnelEnd};
use super::pure::reachability::{self, PeerState, Reachability, ReachabilityChange, TunnelVerdict};
use super::reconcile::PassSummary;

/// How the prober paces itself.
#[derive(Debug, Clone, Copy)]
pub struct ProberTiming {
    /// A round over `n` peers takes `base · ln(1 + n)` (at least `base`).
    pub base: Duration,
    /// Probe packets per second, at most (both phases).
    pub max_rate: u32,
    /// How long a round waits for late answers.
    pub wait: Duration,
    /// Failed rounds in a row before a peer is unreachable.
    pub threshold: u32,
}

impl Default for ProberTiming {
    fn default() -> Self {
        ProberTiming {
            base: Duration::from_secs(2),
            max_rate: 120,
            wait: Duration::from_secs(1),
            threshold: 3,
        }
    }
}

/// What `/status` shows of the prober.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeStatus {
    pub rounds: u64,
    pub interval_ms: u64,
    pub threshold: u32,
    pub reachable: u64,
    pub unreachable: u64,
    pub unknown: u64,
    /// Why a round could not run, while it cannot.
    pub error: Option<String>,
    pub peers: Vec<PeerProbeStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerProbeStatus {
    pub node: String,
    pub state: PeerState,
    pub verdict: TunnelVerdict,
    pub consecutive_failures: u32,
    pub rtt_ms: Option<f64>,
    /// What the last round found, when it failed.
    pub detail: Option<String>,
}

pub type SharedProbeStatus = Arc<Mutex<ProbeStatus>>;

/// Our end of the tunnel, as far as it is fixed at start-up; the device's index, MAC and
/// MTU are read from each pass (the device may be recreated).
#[derive(Debug, Clone)]
pub struct OurEnd {
    pub device: String,
    pub vtep: Ipv4Addr,
    pub local: Ipv4Addr,
}

pub struct Prober {
    pub end: OurEnd,
    pub last_pass: Arc<Mutex<PassSummary>>,
    pub metrics: Arc<Metrics>,
    pub status: SharedProbeStatus,
    pub timing: ProberTiming,
    pub events: Events,
}

impl Prober {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut reach = Reachability::new(self.timing.threshold);
        let mut said_error: Option<String> = None;
        loop {
            let started = tokio::time::Instant::now();
            let (targets, end) = self.targets();
            let interval = reachability::round_interval(self.timing.base, targets.len());
            if let Some(end) = end.filter(|_| !targets.is_empty()) {
                let pacing = Pacing {
                    first_gap: reachability::probe_gap(
                        interval,
                        targets.len(),
                        self.timing.max_rate,
                    ),
                    second_gap: reachability::probe_gap(Duration::ZERO, 0, self.timing.max_rate),
                    wait: self.timing.wait,
                };
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = probe::probe_peers(&targets, &end, pacing) => r,
                };
                match result {
                    Ok((answers, sent)) => {
                        said_error = None;
                        self.record(&mut reach, &targets, &answers, &end, sent, interval);
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if said_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(error = %text, "tunnel probes cannot run; retrying each round");
                            said_error = Some(text.clone());
                        }
                        self.metrics.count_probe_error();
                        if let Ok(mut s) = self.status.lock() {
                            s.error = Some(text);
                        }
                    }
                }
            } else {
                // No peer (or no device yet): forget what was, keep the metrics true.
                let present = BTreeSet::new();
                reach.record_round([], &present);
                self.publish(&reach, &HashMap::new(), 0, interval);
            }
            // A round takes at least its interval, however quickly it was answered.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(started + interval) => {}
            }
        }
    }

    /// The programmed peers the kernel accepted, and our end, from the last pass.
    fn targets(&self) -> (Vec<ProbeTarget>, Option<TunnelEnd>) {
        let Ok(last) = self.last_pass.lock() else {
            return (Vec::new(), None);
        };
        let failed: BTreeSet<&str> = last.failed_peers.iter().map(|f| f.node.as_str()).collect();
        let targets = probe::targets_of(
            last.peers
                .0
                .iter()
                .filter(|p| !failed.contains(p.name.as_str())),
        );
        let end = last
            .devices
            .iter()
            .find(|d| d.name == self.end.device)
            .and_then(|d| {
                Some(TunnelEnd {
                    vtep: self.end.vtep,
                    local: self.end.local,
                    mtu: d.mtu,
                    ifindex: d.index,
                    mac: d.mac.parse().ok()?,
                })
            });
        (targets, end)
    }

    fn record(
        &self,
        reach: &mut Reachability,
        targets: &[ProbeTarget],
        answers: &[probe::PeerAnswers],
        end: &TunnelEnd,
        sent: usize,
        interval: Duration,
    ) {
        let present: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let results: Vec<(&str, TunnelVerdict, Option<Duration>)> = targets
            .iter()
            .zip(answers)
            .map(|(t, a)| (t.name.as_str(), a.verdict(), a.rtt))
            .collect();
        let changes = reach.record_round(results.iter().copied(), &present);
        // By name: at thousands of failing peers a scan per lookup would be quadratic.
        let public_of: HashMap<&str, Ipv4Addr> = targets
            .iter()
            .map(|t| (t.name.as_str(), t.public))
            .collect();
        let detail_of = |name: &str, v: TunnelVerdict| {
            public_of
                .get(name)
                .map(|public| v.detail(end.mtu, IpAddr::V4(*public)))
                .unwrap_or_default()
        };
        for change in &changes {
            self.metrics.count_reachability_change(change.to);
            on_peer_reachability_change(
                &self.events,
                change,
                &detail_of(&change.node, change.verdict),
            );
        }
        let details: HashMap<&str, String> = results
            .iter()
            .filter(|(_, v, _)| !v.is_reachable())
            .map(|(n, v, _)| (*n, detail_of(n, *v)))
            .collect();
        self.metrics.observe_probe_round(
            sent as u64,
            counts(reach),
            answers.iter().filter_map(|a| a.rtt),
            interval,
        );
        self.publish(reach, &details, 1, interval);
    }

    fn publish(
        &self,
        reach: &Reachability,
        details: &HashMap<&str, String>,
        rounds: u64,
        interval: Duration,
    ) {
        let c = counts(reach);
        if rounds == 0 {
            self.metrics.observe_probe_round(0, c.clone(), [], interval);
        }
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        s.rounds += rounds;
        s.interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        s.threshold = self.timing.threshold;
        s.reachable = c.reachable;
        s.unreachable = c.unreachable.values().sum();
        s.unknown = c.unknown;
        s.error = None;
        s.peers = reach
            .peers()
            .iter()
            .map(|(node, p)| PeerProbeStatus {
                node: node.clone(),
                state: p.state,
                verdict: p.last,
                consecutive_failures: p.consecutive_failures,
                rtt_ms: p.rtt_us.map(|us| us as f64 / 1000.0),
                detail: details.get(node.as_str()).cloned(),
            })
            .collect();
    }
}

fn counts(reach: &Reachability) -> ProbeCounts {
    let (reachable, unreachable, unknown) = reach.counts();
    ProbeCounts {
        reachable,
        unknown,
        unreachable,
    }
}

/// A peer became unreachable through the tunnel, or reachable again: the one place that
/// tells it — a log line and an Event on our Node (`PeerUnreachable` / `PeerReachable`,
/// aggregated and rate-limited by the events task, so a flapping peer is a handful a minute).
pub fn on_peer_reachability_change(events: &Events, change: &ReachabilityChange, detail: &str) {
    match change.to {
        PeerState::Unreachable => events.peer_reachability(
            &change.node,
            false,
            &format!("{} ({})", detail, change.verdict.as_str()),
        ),
        PeerState::Reachable => events.peer_reachability(
            &change.node,
            true,
            "answers through the tunnel at full size",
        ),
        PeerState::Unknown => {}
    }
    match change.to {
        PeerState::Unreachable => tracing::warn!(
            peer = %change.node,
            verdict = change.verdict.as_str(),
            consecutive_failures = change.consecutive_failures,
            fix = change.verdict.fix(),
            "peer {} unreachable through the tunnel: {detail}",
            change.node
        ),
        PeerState::Reachable => tracing::info!(
            peer = %change.node,
            "peer {} reachable through the tunnel again",
            change.node
        ),
        PeerState::Unknown => {}
    }
}
