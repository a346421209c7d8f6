//! Kernel refusals by peer: which peer a failed neighbour, FDB or route operation belongs to,
//! and which peers the kernel keeps refusing across passes. A refused peer is marked failed
//! (metric, `/status`, one log line when it fails and one when it recovers) and retried; it
//! does not hold back readiness (see [`super::readiness`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::peers::Peer;
use crate::net::{Family, MacAddr};

/// The kernel object a failed operation was about, by its kernel key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKey {
    Neighbour(IpAddr),
    /// FDB entries are keyed by MAC on the family's device.
    Fdb(Family, MacAddr),
    Route(IpNetwork),
}

/// A failed kernel operation of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `None` for objects that are not a peer entry.
    pub key: Option<EntryKey>,
    pub error: String,
}

/// A pass's refusals, split by the peer they belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributed {
    /// Peer name → the errors of its entries (in operation order).
    pub by_peer: BTreeMap<String, Vec<String>>,
    /// Refusals no current peer explains (e.g. removing a stale entry).
    pub unattributed: Vec<String>,
}

/// Splits `refusals` by peer: a peer owns its route (by destination), its gateway neighbour
/// (the subnet's network address) and its VTEP MAC's FDB entry.
pub fn attribute(peers: &[Peer], refusals: &[Refusal]) -> Attributed {
    let mut out = Attributed::default();
    if refusals.is_empty() {
        return out;
    }
    let mut owner: HashMap<EntryKey, &str> = HashMap::new();
    for peer in peers {
        for (family, ep) in peer.endpoints() {
            owner.insert(EntryKey::Route(ep.subnet), &peer.name);
            owner.insert(EntryKey::Neighbour(ep.subnet.network()), &peer.name);
            owner.insert(EntryKey::Fdb(family, ep.vtep_mac), &peer.name);
        }
    }
    for r in refusals {
        match r.key.and_then(|k| owner.get(&k)) {
            Some(name) => out
                .by_peer
                .entry((*name).to_string())
                .or_default()
                .push(r.error.clone()),
            None => out.unattributed.push(r.error.clone()),
        }
    }
    out
}

/// What changed in the set of failed peers after a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedChanges {
    /// Newly failed peers with their first error.
    pub failed: Vec<(String, String)>,
    pub recovered: Vec<String>,
}

/// The peers whose entries the kernel refused in the last pass that attempted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedPeers {
    /// Peer name → its first error of the last pass.
    current: BTreeMap<String, String>,
}

impl FailedPeers {
    /// After a pass: `complete` passes attempted every peer, so the set becomes exactly their
    /// refused peers; a provisional pass may have held a peer's entries back, so it only adds.
    pub fn update(
        &mut self,
        by_peer: &BTreeMap<String, Vec<String>>,
        complete: bool,
    ) -> FailedChanges {
        let mut changes = FailedChanges::default();
        if complete {
            let before = std::mem::take(&mut self.current);
            for name in before.keys() {
                if !by_peer.contains_key(name) {
                    changes.recovered.push(name.clone());
                }
            }
            for (name, errors) in by_peer {
                let first = errors.first().cloned().unwrap_or_default();
                if !before.contains_key(name) {
                    changes.failed.push((name.clone(), first.clone()));
                }
                self.current.insert(name.clone(), first);
            }
        } else {
            for (name, errors) in by_peer {
                if !self.current.contains_key(name) {
                    let first = errors.first().cloned().unwrap_or_default();
                    changes.failed.push((name.clone(), first.clone()));
                    self.current.insert(name.clone(), first);
                }
            }
        }
        changes
    }

    /// A peer left the node list: nothing of it is attempted any more.
    pub fn retain_selected(&mut self, peers: &[Peer]) -> Vec<String> {
        let selected: std::collections::HashSet<&str> =
            peers.iter().map(|p| p.name.as_str()).collect();
        let gone: Vec<String> = self
            .current
            .keys()
            .filter(|n| !selected.contains(n.as_str()))
            .cloned()
            .collect();
        for n in &gone {
            self.current.remove(n);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// `(peer, first error)`, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.current.iter().map(|(n, e)| (n.as_str(), e.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, i: u8) -> Peer {
        Peer::numbered(name, i, "192.168.50")
    }

    fn refusal(key: Option<EntryKey>, error: &str) -> Refusal {
        Refusal {
            key,
            error: error.into(),
        }
    }

    #[test]
    fn refusals_are_attributed_by_kernel_key() {
        let peers = [peer("n2", 2), peer("n3", 3)];
        let got = attribute(
            &peers,
            &[
                refusal(
                    Some(EntryKey::Route("10.244.3.0/24".parse().unwrap())),
                    "replace route 10.244.3.0/24: EINVAL",
                ),
                refusal(
                    Some(EntryKey::Neighbour("10.244.3.0".parse().unwrap())),
                    "replace neighbour 10.244.3.0: EINVAL",
                ),
                refusal(
                    Some(EntryKey::Fdb(Family::V4, MacAddr([0x0e, 0, 0, 0, 0, 2]))),
                    "replace fdb 0e:00:00:00:00:02: ENOMEM",
                ),
                // The same MAC on the other family's device is not n2's.
                refusal(
                    Some(EntryKey::Fdb(Family::V6, MacAddr([0x0e, 0, 0, 0, 0, 2]))),
                    "v6 fdb",
                ),
                refusal(
                    Some(EntryKey::Route("10.244.9.0/24".parse().unwrap())),
                    "delete route 10.244.9.0/24: EBUSY",
                ),
                refusal(None, "set up: EPERM"),
            ],
        );
        assert_eq!(
            got.by_peer,
            BTreeMap::from([
                (
                    "n2".to_string(),
                    vec!["replace fdb 0e:00:00:00:00:02: ENOMEM".to_string()]
                ),
                (
                    "n3".to_string(),
                    vec![
                        "replace route 10.244.3.0/24: EINVAL".to_string(),
                        "replace neighbour 10.244.3.0: EINVAL".to_string()
                    ]
                ),
            ])
        );
        assert_eq!(
            got.unattributed,
            [
                "v6 fdb",
                "delete route 10.244.9.0/24: EBUSY",
                "set up: EPERM"
            ]
        );
        assert_eq!(attribute(&peers, &[]), Attributed::default());
    }

    fn by_peer(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(n, e)| (n.to_string(), vec![e.to_string()]))
            .collect()
    }

    #[test]
    fn a_peer_fails_once_and_recovers_once() {
        let mut f = FailedPeers::default();
        let c = f.update(&by_peer(&[("n3", "EINVAL")]), true);
        assert_eq!(c.failed, [("n3".to_string(), "EINVAL".to_string())]);
        assert!(c.recovered.is_empty());
        // Refused again: no news.
        assert_eq!(
            f.update(&by_peer(&[("n3", "EINVAL")]), true),
            FailedChanges::default()
        );
        assert_eq!(f.len(), 1);
        // A provisional pass that did not attempt n3 does not clear it; it adds n4.
        let c = f.update(&by_peer(&[("n4", "ENOMEM")]), false);
        assert_eq!(c.failed, [("n4".to_string(), "ENOMEM".to_string())]);
        assert_eq!(f.len(), 2);
        // A complete pass where the kernel took n3's and n4's entries.
        let c = f.update(&BTreeMap::new(), true);
        assert_eq!(c.recovered, ["n3", "n4"]);
        assert!(f.is_empty());
    }

    #[test]
    fn a_deleted_peer_is_no_longer_failed() {
        let mut f = FailedPeers::default();
        f.update(&by_peer(&[("n3", "EINVAL"), ("n2", "EINVAL")]), true);
        assert_eq!(f.retain_selected(&[peer("n2", 2)]), ["n3"]);
        assert_eq!(f.iter().collect::<Vec<_>>(), [("n2", "EINVAL")]);
    }
}
