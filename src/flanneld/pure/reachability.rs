//! What tunnel probe answers mean, how often every peer is probed, and when a peer's
//! reachability changes — shared by `flanneld diagnose` (one shot) and the daemon's prober
//! (every round). No I/O, no clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// What one echo request is for (see the probe engine for how each is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// From our VTEP address to the peer's: needs the peer's entries for us too.
    Tunnel,
    /// The same at the full device MTU with DF set.
    TunnelMtu,
    /// Through the tunnel from our underlay address: the answer comes back on the underlay.
    TunnelFromUnderlay,
    /// Plain ping of the peer's public IP.
    Underlay,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Tunnel,
        ProbeKind::TunnelMtu,
        ProbeKind::TunnelFromUnderlay,
        ProbeKind::Underlay,
    ];

    pub fn tag(self) -> u8 {
        self as u8
    }

    pub fn from_tag(tag: u8) -> Option<ProbeKind> {
        ProbeKind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

/// The one reading of a peer's probe answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelVerdict {
    /// Answers through the tunnel at full size.
    Reachable,
    /// Small packets cross, full-size ones with DF do not.
    MtuBlackhole,
    /// The peer receives our tunnel packets but cannot answer through the tunnel: it lacks
    /// its entries for us.
    OneWay,
    /// No answer through the tunnel while the peer's public IP answers: VXLAN is dropped.
    UdpDropped,
    /// No answer at all, underlay included.
    NoAnswer,
}

impl TunnelVerdict {
    /// The failures, in a fixed order (metric label values).
    pub const FAILURES: [TunnelVerdict; 4] = [
        TunnelVerdict::MtuBlackhole,
        TunnelVerdict::OneWay,
        TunnelVerdict::UdpDropped,
        TunnelVerdict::NoAnswer,
    ];

    /// Reads a peer's answers. A full-size answer is enough; the other probes are only sent
    /// when it did not come, and only read then.
    pub fn classify(answered: &BTreeSet<ProbeKind>) -> TunnelVerdict {
        let has = |k| answered.contains(&k);
        if has(ProbeKind::TunnelMtu) {
            TunnelVerdict::Reachable
        } else if has(ProbeKind::Tunnel) {
            TunnelVerdict::MtuBlackhole
        } else if has(ProbeKind::TunnelFromUnderlay) {
            TunnelVerdict::OneWay
        } else if has(ProbeKind::Underlay) {
            TunnelVerdict::UdpDropped
        } else {
            TunnelVerdict::NoAnswer
        }
    }

    pub fn is_reachable(self) -> bool {
        self == TunnelVerdict::Reachable
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TunnelVerdict::Reachable => "reachable",
            TunnelVerdict::MtuBlackhole => "mtu_blackhole",
            TunnelVerdict::OneWay => "one_way",
            TunnelVerdict::UdpDropped => "udp_dropped",
            TunnelVerdict::NoAnswer => "no_answer",
        }
    }

    /// Why, in words; `mtu` is our device's, `public_ip` the peer's.
    pub fn detail(self, mtu: u32, public_ip: IpAddr) -> String {
        match self {
            TunnelVerdict::Reachable => "answers through the tunnel at full size".into(),
            TunnelVerdict::MtuBlackhole => format!(
                "small packets cross the tunnel but {mtu}-byte ones (the device MTU) with DF set \
                 do not: the underlay path carries less than {} bytes",
                mtu + 50
            ),
            TunnelVerdict::OneWay => "one-way: it receives our tunnel packets (it answers those \
                 sent from our underlay address) but its answers through the tunnel never arrive \
                 — it lacks its route, neighbour or FDB entry for this node"
                .into(),
            TunnelVerdict::UdpDropped => format!(
                "no answer through the tunnel while {public_ip} answers on the underlay: VXLAN \
                 (UDP) to or from it is dropped — a firewall on the path or on that node"
            ),
            TunnelVerdict::NoAnswer => {
                format!("no answer through the tunnel, nor from {public_ip} on the underlay")
            }
        }
    }

    /// What to try.
    pub fn fix(self) -> &'static str {
        match self {
            TunnelVerdict::Reachable => "",
            TunnelVerdict::MtuBlackhole => {
                "lower Backend.MTU in net-conf.json (or raise the underlay MTU on the path)"
            }
            TunnelVerdict::OneWay => {
                "check flanneld on that node (its log, `flanneld diagnose` there) and that this \
                 node's annotations are valid"
            }
            TunnelVerdict::UdpDropped => {
                "allow UDP port Backend.Port (8472 by default) between the nodes"
            }
            TunnelVerdict::NoAnswer => {
                "the node is down or unreachable on the underlay (or drops ICMP)"
            }
        }
    }
}

/// How long one round over `peers` peers should take: `base · ln(1 + peers)` (Cilium scales
/// its health probes the same way), never less than `base`. Per-peer cost falls as the
/// cluster grows; the packet rate is bounded separately by [`probe_gap`].
pub fn round_interval(base: Duration, peers: usize) -> Duration {
    let scale = (1.0 + peers as f64).ln().max(1.0);
    base.mul_f64(scale)
}

/// The pause between two probes so that `probes` of them spread over `interval`, but never
/// more than `max_rate` per second.
pub fn probe_gap(interval: Duration, probes: usize, max_rate: u32) -> Duration {
    let floor = Duration::from_secs(1) / max_rate.max(1);
    if probes == 0 {
        return floor;
    }
    (interval / u32::try_from(probes).unwrap_or(u32::MAX)).max(floor)
}

/// Where a peer stands, as `/status` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Not probed yet, or failing fewer rounds than the threshold since it was added.
    Unknown,
    Reachable,
    /// Failed `threshold` rounds in a row; the verdict of the last one says how.
    Unreachable,
}

/// One peer's probe record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerProbe {
    pub state: PeerState,
    /// The last round's verdict.
    pub last: TunnelVerdict,
    pub consecutive_failures: u32,
    /// Round trip of the last answered tunnel probe, in microseconds.
    pub rtt_us: Option<u64>,
}

/// A peer's state flipped (what a log line and an Event say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachabilityChange {
    pub node: String,
    pub from: PeerState,
    pub to: PeerState,
    pub verdict: TunnelVerdict,
    pub consecutive_failures: u32,
}

/// Every programmed peer's record. A peer becomes unreachable after `threshold` failed
/// rounds in a row (one lost round is no news) and reachable again after one good round.
#[derive(Debug, Clone)]
pub struct Reachability {
    threshold: u32,
    peers: BTreeMap<String, PeerProbe>,
}

impl Reachability {
    pub fn new(threshold: u32) -> Reachability {
        Reachability {
            threshold: threshold.max(1),
            peers: BTreeMap::new(),
        }
    }

    /// Takes one round's results (`node`, verdict, RTT of the tunnel probe). Peers not in
    /// `present` (no longer programmed) are forgotten. Returns the state changes; a peer's
    /// first good round is no change worth telling (Unknown → Reachable is silent).
    pub fn record_round<'a>(
        &mut self,
        results: impl IntoIterator<Item = (&'a str, TunnelVerdict, Option<Duration>)>,
        present: &BTreeSet<&str>,
    ) -> Vec<ReachabilityChange> {
        self.peers.retain(|name, _| present.contains(name.as_str()));
        let mut changes = Vec::new();
        for (node, verdict, rtt) in results {
            if !present.contains(node) {
                continue;
            }
            let p = self.peers.entry(node.to_string()).or_insert(PeerProbe {
                state: PeerState::Unknown,
                last: verdict,
                consecutive_failures: 0,
                rtt_us: None,
            });
            let from = p.state;
            p.last = verdict;
            if let Some(rtt) = rtt {
                p.rtt_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            }
            if verdict.is_reachable() {
                p.consecutive_failures = 0;
                p.state = PeerState::Reachable;
            } else {
                p.consecutive_failures = p.consecutive_failures.saturating_add(1);
                if p.consecutive_failures >= self.threshold {
                    p.state = PeerState::Unreachable;
                }
            }
            let to = p.state;
            let worth_telling =
                from != to && !(from == PeerState::Unknown && to == PeerState::Reachable);
            if worth_telling {
                changes.push(ReachabilityChange {
                    node: node.to_string(),
                    from,
                    to,
                    verdict,
                    consecutive_failures: p.consecutive_failures,
                });
            }
        }
        changes
    }

    pub fn peers(&self) -> &BTreeMap<String, PeerProbe> {
        &self.peers
    }

    /// (reachable, unreachable by verdict, unknown) counts for the metrics.
    pub fn counts(&self) -> (u64, BTreeMap<TunnelVerdict, u64>, u64) {
        let mut reachable = 0;
        let mut unknown = 0;
        let mut unreachable = BTreeMap::new();
        for p in self.peers.values() {
            match p.state {
                PeerState::Reachable => reachable += 1,
                PeerState::Unknown => unknown += 1,
                PeerState::Unreachable => *unreachable.entry(p.last).or_insert(0) += 1,
            }
        }
        (reachable, unreachable, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProbeKind::*;

    fn set(ks: &[ProbeKind]) -> BTreeSet<ProbeKind> {
        ks.iter().copied().collect()
    }

    #[test]
    fn answers_tell_the_failure_modes_apart() {
        use TunnelVerdict as V;
        assert_eq!(V::classify(&set(&[Tunnel, TunnelMtu])), V::Reachable);
        assert_eq!(V::classify(&set(&[TunnelMtu])), V::Reachable);
        assert_eq!(V::classify(&set(&[Tunnel, Underlay])), V::MtuBlackhole);
        assert_eq!(
            V::classify(&set(&[TunnelFromUnderlay, Underlay])),
            V::OneWay
        );
        assert_eq!(V::classify(&set(&[Underlay])), V::UdpDropped);
        assert_eq!(V::classify(&set(&[])), V::NoAnswer);
        let ip: IpAddr = "192.168.0.2".parse().unwrap();
        assert!(V::UdpDropped.detail(1450, ip).contains("UDP"));
        assert!(V::OneWay.detail(1450, ip).starts_with("one-way"));
        assert!(V::MtuBlackhole.detail(1450, ip).contains("1500 bytes"));
        assert!(
            V::NoAnswer
                .detail(1450, ip)
                .contains("nor from 192.168.0.2")
        );
    }

    #[test]
    fn the_interval_grows_with_ln_of_the_cluster_and_the_rate_is_capped() {
        let base = Duration::from_secs(2);
        assert_eq!(round_interval(base, 0), base);
        assert_eq!(round_interval(base, 1), base);
        let at = |n| round_interval(base, n).as_secs_f64();
        assert!((at(2) - 2.0 * 3f64.ln()).abs() < 1e-6);
        assert!((at(5000) - 2.0 * 5001f64.ln()).abs() < 1e-6, "{}", at(5000));
        // 3 peers, 3 probes over ~2.8 s; 5000 peers over ~17 s: capped at 200/s.
        let gap = probe_gap(round_interval(base, 3), 3, 200);
        assert!(gap > Duration::from_millis(900), "{gap:?}");
        assert_eq!(
            probe_gap(round_interval(base, 5000), 5000, 200),
            Duration::from_millis(5)
        );
        assert_eq!(probe_gap(base, 0, 200), Duration::from_millis(5));
    }

    #[test]
    fn a_peer_flips_after_threshold_failures_and_back_after_one_success() {
        let mut r = Reachability::new(3);
        let present: BTreeSet<&str> = ["n2", "n3"].into();
        let ms = Some(Duration::from_millis(1));
        let ok = |n| (n, TunnelVerdict::Reachable, ms);
        let bad = |n| (n, TunnelVerdict::UdpDropped, None);
        // First good round: silent.
        assert!(r.record_round([ok("n2"), ok("n3")], &present).is_empty());
        assert_eq!(r.peers()["n2"].rtt_us, Some(1000));
        // Two failures: still reachable; the third flips it.
        assert!(r.record_round([bad("n2"), ok("n3")], &present).is_empty());
        assert!(r.record_round([bad("n2"), ok("n3")], &present).is_empty());
        assert_eq!(r.peers()["n2"].state, PeerState::Reachable);
        let changes = r.record_round([bad("n2"), ok("n3")], &present);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, PeerState::Unreachable);
        assert_eq!(changes[0].verdict, TunnelVerdict::UdpDropped);
        assert_eq!(changes[0].consecutive_failures, 3);
        let (reachable, unreachable, unknown) = r.counts();
        assert_eq!((reachable, unknown), (1, 0));
        assert_eq!(unreachable[&TunnelVerdict::UdpDropped], 1);
        // Staying unreachable says nothing more; one good round brings it back.
        assert!(r.record_round([bad("n2")], &present).is_empty());
        let back = r.record_round([ok("n2")], &present);
        assert_eq!(
            (back[0].from, back[0].to),
            (PeerState::Unreachable, PeerState::Reachable)
        );
        // A flap shorter than the threshold resets the count.
        r.record_round([bad("n2")], &present);
        r.record_round([bad("n2")], &present);
        r.record_round([ok("n2")], &present);
        r.record_round([bad("n2")], &present);
        assert_eq!(r.peers()["n2"].state, PeerState::Reachable);
        // A peer no longer programmed is forgotten; a new one failing from the start goes
        // Unknown → Unreachable, which is told.
        let present: BTreeSet<&str> = ["n4"].into();
        r.record_round([], &present);
        assert!(r.peers().is_empty());
        r.record_round([bad("n4")], &present);
        r.record_round([bad("n4")], &present);
        assert_eq!(r.peers()["n4"].state, PeerState::Unknown);
        let c = r.record_round([bad("n4")], &present);
        assert_eq!(
            (c[0].from, c[0].to),
            (PeerState::Unknown, PeerState::Unreachable)
        );
    }
}
