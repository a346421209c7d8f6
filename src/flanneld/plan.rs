//! `diff(actual, desired) → Plan`: the minimal set of netlink operations that makes one VXLAN
//! device's entries equal the desired ones, in a safe order.
//!
//! Entries are matched by their kernel key — neighbour by IP, FDB by MAC, route by destination —
//! so a peer whose MAC or public IP changed becomes an in-place replace (plus removal of the
//! FDB entry of the old MAC), never a delete-then-add gap. Anything in `actual` that no desired
//! entry explains is removed (stale peers, hand-made entries, duplicates).
//!
//! `actual` must contain only entries we may manage: permanent neighbours and FDB entries with a
//! destination on the VXLAN device, routes via the device, and our DirectRouting routes.

use std::collections::{BTreeMap, BTreeSet};

use super::desired::{FdbEntry, KernelEntries, NeighbourEntry, RouteEntry};

/// Adds, in-place replacements and removals of one entry kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryChanges<T> {
    pub add: Vec<T>,
    /// `(old, new)` with the same key.
    pub replace: Vec<(T, T)>,
    pub remove: Vec<T>,
}

impl<T> Default for EntryChanges<T> {
    fn default() -> Self {
        EntryChanges {
            add: Vec::new(),
            replace: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl<T> EntryChanges<T> {
    pub fn len(&self) -> usize {
        self.add.len() + self.replace.len() + self.remove.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The difference between actual and desired entries of one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub neighbours: EntryChanges<NeighbourEntry>,
    pub fdb: EntryChanges<FdbEntry>,
    pub routes: EntryChanges<RouteEntry>,
}

/// One netlink operation, in execution order (see [`Plan::steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    RemoveRoute(RouteEntry),
    AddNeighbour(NeighbourEntry),
    ReplaceNeighbour {
        old: NeighbourEntry,
        new: NeighbourEntry,
    },
    AddFdb(FdbEntry),
    ReplaceFdb {
        old: FdbEntry,
        new: FdbEntry,
    },
    AddRoute(RouteEntry),
    ReplaceRoute {
        old: RouteEntry,
        new: RouteEntry,
    },
    RemoveFdb(FdbEntry),
    RemoveNeighbour(NeighbourEntry),
}

impl Plan {
    pub fn len(&self) -> usize {
        self.neighbours.len() + self.fdb.len() + self.routes.len()
    }

    /// Converged: nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operations in a safe order: stale routes go first (traffic stops using what is about
    /// to disappear); then neighbour → FDB → route adds/replaces (a route never exists before the
    /// entries it needs, so the kernel never ARPs for a gateway); then FDB and neighbour removals.
    pub fn steps(&self) -> Vec<Step> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.routes.remove.iter().copied().map(Step::RemoveRoute));
        out.extend(self.neighbours.add.iter().copied().map(Step::AddNeighbour));
        out.extend(
            self.neighbours
                .replace
                .iter()
                .map(|&(old, new)| Step::ReplaceNeighbour { old, new }),
        );
        out.extend(self.fdb.add.iter().copied().map(Step::AddFdb));
        out.extend(
            self.fdb
                .replace
                .iter()
                .map(|&(old, new)| Step::ReplaceFdb { old, new }),
        );
        out.extend(self.routes.add.iter().copied().map(Step::AddRoute));
        out.extend(
            self.routes
                .replace
                .iter()
                .map(|&(old, new)| Step::ReplaceRoute { old, new }),
        );
        out.extend(self.fdb.remove.iter().copied().map(Step::RemoveFdb));
        out.extend(
            self.neighbours
                .remove
                .iter()
                .copied()
                .map(Step::RemoveNeighbour),
        );
        out
    }
}

/// Computes the plan that turns `actual` into `desired`.
pub fn diff(actual: &KernelEntries, desired: &KernelEntries) -> Plan {
    Plan {
        neighbours: diff_keyed(&actual.neighbours, &desired.neighbours, |n| n.ip),
        fdb: diff_keyed(&actual.fdb, &desired.fdb, |f| f.mac),
        routes: diff_keyed(&actual.routes, &desired.routes, |r| r.dst),
    }
}

fn diff_keyed<T, K, F>(actual: &BTreeSet<T>, desired: &BTreeSet<T>, key: F) -> EntryChanges<T>
where
    T: Ord + Copy,
    K: Ord,
    F: Fn(&T) -> K,
{
    let mut actual_by_key: BTreeMap<K, Vec<T>> = BTreeMap::new();
    for a in actual {
        actual_by_key.entry(key(a)).or_default().push(*a);
    }
    let mut out = EntryChanges::default();
    let mut seen = BTreeSet::new();
    for d in desired {
        // The desired state has one entry per key by construction (validated peers); should two
        // ever share a key, the first wins rather than emitting conflicting operations.
        if !seen.insert(key(d)) {
            continue;
        }
        match actual_by_key.remove(&key(d)) {
            None => out.add.push(*d),
            Some(mut existing) => {
                if let Some(pos) = existing.iter().position(|a| a == d) {
                    existing.remove(pos);
                } else {
                    // Replace the first entry in place; any further ones are duplicates.
                    let old = existing.remove(0);
                    out.replace.push((old, *d));
                }
                out.remove.extend(existing);
            }
        }
    }
    for (_, rest) in actual_by_key {
        out.remove.extend(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flanneld::types::VtepMac;
    use std::net::IpAddr;

    fn mac(n: u8) -> VtepMac {
        VtepMac([2, 0, 0, 0, 1, n])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The three tunnel entries of peer n (subnet 10.244.n.0/24, public 192.168.1.n).
    fn peer_entries(into: &mut KernelEntries, n: u8, m: VtepMac, public: &str) {
        let gw = ip(&format!("10.244.{n}.0"));
        into.neighbours.insert(NeighbourEntry { ip: gw, mac: m });
        into.fdb.insert(FdbEntry {
            mac: m,
            dst: ip(public),
        });
        into.routes.insert(RouteEntry {
            dst: format!("10.244.{n}.0/24").parse().unwrap(),
            gateway: gw,
            onlink: true,
            via_device: true,
        });
    }

    fn entries(peers: &[(u8, VtepMac, &str)]) -> KernelEntries {
        let mut e = KernelEntries::default();
        for &(n, m, p) in peers {
            peer_entries(&mut e, n, m, p);
        }
        e
    }

    /// Applies a plan to a model of the kernel keyed like the kernel, checking each step's
    /// precondition (what it removes/replaces exists; what it adds does not).
    fn apply(actual: &KernelEntries, plan: &Plan) -> KernelEntries {
        let mut k = actual.clone();
        for s in plan.steps() {
            match s {
                Step::AddNeighbour(n) => {
                    assert!(!k.neighbours.iter().any(|x| x.ip == n.ip));
                    k.neighbours.insert(n);
                }
                Step::ReplaceNeighbour { old, new } => {
                    assert!(k.neighbours.remove(&old));
                    k.neighbours.insert(new);
                }
                Step::RemoveNeighbour(n) => assert!(k.neighbours.remove(&n)),
                Step::AddFdb(f) => {
                    assert!(!k.fdb.iter().any(|x| x.mac == f.mac));
                    k.fdb.insert(f);
                }
                Step::ReplaceFdb { old, new } => {
                    assert!(k.fdb.remove(&old));
                    k.fdb.insert(new);
                }
                Step::RemoveFdb(f) => assert!(k.fdb.remove(&f)),
                Step::AddRoute(r) => {
                    assert!(!k.routes.iter().any(|x| x.dst == r.dst));
                    k.routes.insert(r);
                }
                Step::ReplaceRoute { old, new } => {
                    assert!(k.routes.remove(&old));
                    k.routes.insert(new);
                }
                Step::RemoveRoute(r) => assert!(k.routes.remove(&r)),
            }
        }
        k
    }

    #[test]
    fn converged_is_empty() {
        let e = entries(&[(1, mac(1), "192.168.1.1"), (2, mac(2), "192.168.1.2")]);
        let p = diff(&e, &e);
        assert!(p.is_empty());
        assert!(p.steps().is_empty());
        assert!(diff(&KernelEntries::default(), &KernelEntries::default()).is_empty());
    }

    #[test]
    fn fresh_start_adds_in_order() {
        let desired = entries(&[(1, mac(1), "192.168.1.1"), (2, mac(2), "192.168.1.2")]);
        let p = diff(&KernelEntries::default(), &desired);
        assert_eq!(p.len(), 6);
        let kinds: Vec<&str> = p
            .steps()
            .iter()
            .map(|s| match s {
                Step::AddNeighbour(_) => "neigh",
                Step::AddFdb(_) => "fdb",
                Step::AddRoute(_) => "route",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["neigh", "neigh", "fdb", "fdb", "route", "route"]);
        assert_eq!(apply(&KernelEntries::default(), &p), desired);
    }

    #[test]
    fn deleted_peer_removed_in_reverse_order() {
        let actual = entries(&[(1, mac(1), "192.168.1.1"), (2, mac(2), "192.168.1.2")]);
        let desired = entries(&[(1, mac(1), "192.168.1.1")]);
        let p = diff(&actual, &desired);
        let steps = p.steps();
        assert!(matches!(
            steps.as_slice(),
            [
                Step::RemoveRoute(_),
                Step::RemoveFdb(_),
                Step::RemoveNeighbour(_)
            ]
        ));
        assert_eq!(apply(&actual, &p), desired);
    }

    #[test]
    fn mac_change_is_replace_plus_old_fdb_removal() {
        let actual = entries(&[(1, mac(1), "192.168.1.1")]);
        let desired = entries(&[(1, mac(9), "192.168.1.1")]);
        let p = diff(&actual, &desired);
        assert_eq!(
            p.steps(),
            vec![
                Step::ReplaceNeighbour {
                    old: NeighbourEntry {
                        ip: ip("10.244.1.0"),
                        mac: mac(1)
                    },
                    new: NeighbourEntry {
                        ip: ip("10.244.1.0"),
                        mac: mac(9)
                    },
                },
                Step::AddFdb(FdbEntry {
                    mac: mac(9),
                    dst: ip("192.168.1.1")
                }),
                Step::RemoveFdb(FdbEntry {
                    mac: mac(1),
                    dst: ip("192.168.1.1")
                }),
            ]
        );
        assert!(p.routes.is_empty(), "route untouched");
        assert_eq!(apply(&actual, &p), desired);
    }

    #[test]
    fn public_ip_change_is_fdb_replace_only() {
        let actual = entries(&[(1, mac(1), "192.168.1.1")]);
        let desired = entries(&[(1, mac(1), "192.168.7.7")]);
        let p = diff(&actual, &desired);
        assert_eq!(
            p.steps(),
            vec![Step::ReplaceFdb {
                old: FdbEntry {
                    mac: mac(1),
                    dst: ip("192.168.1.1")
                },
                new: FdbEntry {
                    mac: mac(1),
                    dst: ip("192.168.7.7")
                },
            }]
        );
    }

    #[test]
    fn hand_deleted_entries_are_restored_and_strays_removed() {
        let desired = entries(&[(1, mac(1), "192.168.1.1"), (2, mac(2), "192.168.1.2")]);
        let mut actual = desired.clone();
        let r = *actual.routes.iter().next().unwrap();
        actual.routes.remove(&r);
        let stray = NeighbourEntry {
            ip: ip("10.244.99.0"),
            mac: mac(99),
        };
        actual.neighbours.insert(stray);
        let p = diff(&actual, &desired);
        assert_eq!(p.routes.add, vec![r]);
        assert_eq!(p.neighbours.remove, vec![stray]);
        assert_eq!(p.len(), 2);
        assert_eq!(apply(&actual, &p), desired);
    }

    #[test]
    fn duplicates_for_one_key_are_cleaned() {
        let desired = entries(&[(1, mac(1), "192.168.1.1")]);
        let mut actual = desired.clone();
        // a second remote for the same MAC (bridge fdb append) and a second route to the same dst
        actual.fdb.insert(FdbEntry {
            mac: mac(1),
            dst: ip("192.168.9.9"),
        });
        let p = diff(&actual, &desired);
        assert_eq!(
            p.fdb.remove,
            vec![FdbEntry {
                mac: mac(1),
                dst: ip("192.168.9.9")
            }]
        );
        assert_eq!(apply(&actual, &p), desired);

        let mut actual = KernelEntries::default();
        actual.fdb.insert(FdbEntry {
            mac: mac(1),
            dst: ip("192.168.8.8"),
        });
        actual.fdb.insert(FdbEntry {
            mac: mac(1),
            dst: ip("192.168.9.9"),
        });
        let p = diff(&actual, &desired);
        assert_eq!(p.fdb.replace.len(), 1);
        assert_eq!(p.fdb.remove.len(), 1);
    }

    #[test]
    fn duplicate_desired_keys_never_conflict() {
        let mut desired = KernelEntries::default();
        desired.neighbours.insert(NeighbourEntry {
            ip: ip("10.244.1.0"),
            mac: mac(1),
        });
        desired.neighbours.insert(NeighbourEntry {
            ip: ip("10.244.1.0"),
            mac: mac(2),
        });
        let p = diff(&KernelEntries::default(), &desired);
        assert_eq!(p.neighbours.add.len(), 1);
    }

    #[test]
    fn switch_between_tunnel_and_direct_route() {
        let tunnel = entries(&[(1, mac(1), "192.168.1.1")]);
        let mut direct = KernelEntries::default();
        direct.routes.insert(RouteEntry {
            dst: "10.244.1.0/24".parse().unwrap(),
            gateway: ip("192.168.1.1"),
            onlink: false,
            via_device: false,
        });
        // tunnel → direct: route replaced first, then FDB and neighbour removed
        let p = diff(&tunnel, &direct);
        let steps = p.steps();
        assert!(matches!(
            steps.as_slice(),
            [
                Step::ReplaceRoute { .. },
                Step::RemoveFdb(_),
                Step::RemoveNeighbour(_)
            ]
        ));
        assert_eq!(apply(&tunnel, &p), direct);
        // direct → tunnel: neighbour and FDB before the route replace
        let p = diff(&direct, &tunnel);
        let steps = p.steps();
        assert!(matches!(
            steps.as_slice(),
            [
                Step::AddNeighbour(_),
                Step::AddFdb(_),
                Step::ReplaceRoute { .. }
            ]
        ));
        assert_eq!(apply(&direct, &p), tunnel);
    }

    /// Property-style: random actual/desired pairs always converge in one application, and a
    /// second diff is empty.
    #[test]
    fn random_states_converge() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..500 {
            let gen_state = |rng: &mut rand::rngs::StdRng| {
                let mut e = KernelEntries::default();
                for n in 0..rng.random_range(0..12u8) {
                    let subnet = rng.random_range(0..8u8);
                    let m = mac(rng.random_range(0..6u8));
                    let public = format!("192.168.1.{}", rng.random_range(1..4u8));
                    if rng.random_bool(0.8) {
                        peer_entries(&mut e, subnet, m, &public);
                    } else {
                        // partial / stray leftovers
                        e.neighbours.insert(NeighbourEntry {
                            ip: ip(&format!("10.244.{subnet}.0")),
                            mac: mac(n),
                        });
                    }
                }
                e
            };
            // actual: arbitrary leftovers, duplicates included
            let actual = gen_state(&mut rng);
            // desired: validated peers ⇒ unique subnets and MACs
            let mut desired = KernelEntries::default();
            let mut macs: Vec<u8> = (0..8).collect();
            for subnet in 0..8u8 {
                if rng.random_bool(0.5) {
                    let m = macs.remove(rng.random_range(0..macs.len()));
                    let public = format!("192.168.1.{}", rng.random_range(1..4u8));
                    peer_entries(&mut desired, subnet, mac(m), &public);
                }
            }
            let p = diff(&actual, &desired);
            let after = apply(&actual, &p);
            assert_eq!(after, desired, "{actual:?}");
            assert!(diff(&after, &desired).is_empty());
        }
    }
}
