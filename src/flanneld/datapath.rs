//! The kernel side of one reconcile pass: make sure the VXLAN device is right, read what the
//! kernel holds on it, and apply only the difference to the desired entries.
//!
//! Nothing outside the VXLAN device is touched, except DirectRouting routes, which carry
//! [`DIRECT_ROUTE_PROTOCOL`] so they can be found (and removed when no longer wanted).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::netlink::{
    self, Address, Link, Netlink, NetlinkError, Op, Route, RouteFilter, RouteProtocol,
    VxlanOutcome, VxlanSpec,
};

use crate::net::Family;

use super::pure::desired::{DeviceSpec, FdbEntry, KernelEntries, NeighbourEntry, RouteEntry};
use super::pure::plan::{Plan, Step};
use super::pure::refusals::EntryKey;

/// Route protocol marking our DirectRouting routes (an unassigned number in
/// /etc/iproute2/rt_protos). Tunnel routes keep `proto boot`, as upstream installs them.
pub const DIRECT_ROUTE_PROTOCOL: u8 = 0x66;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("device {name} vanished right after it was set up")]
    DeviceVanished { name: String },
}

/// How the device was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Present and compatible: adopted as is (its MAC and MTU included).
    Adopted,
    Created,
    /// Present with other VNI/port/local/underlay: deleted and created anew (same MAC).
    Recreated,
}

/// Makes the VXLAN device match `spec`: create it, adopt a compatible one without a flap, or
/// recreate an incompatible one keeping the MAC. Then ensures its address (removing other
/// addresses of ours inside `pod_network`) and that it is up.
pub async fn ensure_device(
    nl: &Netlink,
    spec: &DeviceSpec,
    pod_network: Option<IpNetwork>,
) -> Result<(Link, DeviceAction), DatapathError> {
    let vx = VxlanSpec {
        name: spec.name.clone(),
        vni: spec.vni,
        local: spec.local,
        underlay_index: Some(spec.underlay_ifindex),
        port: spec.port,
        learning: spec.learning,
        gbp: spec.gbp,
        mtu: Some(spec.mtu),
        mac: Some(spec.mac),
    };
    let (link, action) = match nl.ensure_vxlan(&vx).await? {
        VxlanOutcome::Adopted(link) => (link, DeviceAction::Adopted),
        VxlanOutcome::Created(link) => (link, DeviceAction::Created),
        VxlanOutcome::NeedsRecreate {
            existing,
            differences,
        } => {
            tracing::warn!(
                device = %spec.name,
                differences = %differences.join(", "),
                "device exists with an incompatible configuration; recreating it with the same MAC"
            );
            nl.delete_link(existing.index).await?;
            (nl.create_vxlan(&vx).await?, DeviceAction::Recreated)
        }
    };

    // Exactly our /32 (/128) inside the pod network; addresses outside it are someone else's.
    let addresses = nl.addresses(link.index).await?;
    let want = Address::new(link.index, spec.address);
    let mut ops = Vec::new();
    for a in &addresses {
        let ours_to_remove = a.net != spec.address
            && Family::of_ip(a.net.ip()) == Family::of_ip(spec.address.ip())
            && !is_link_local(a.net.ip())
            && pod_network.is_none_or(|n| n.contains(a.net.ip()));
        if ours_to_remove {
            ops.push(Op::RemoveAddress(*a));
        }
    }
    if !addresses.iter().any(|a| a.net == spec.address) {
        ops.push(Op::ReplaceAddress(want));
    }
    if !ops.is_empty() {
        nl.apply_all(&ops).await?;
    }
    if !link.up {
        nl.set_link_up(link.index).await?;
    }
    let link =
        nl.link_by_index(link.index)
            .await?
            .ok_or_else(|| DatapathError::DeviceVanished {
                name: spec.name.clone(),
            })?;
    Ok((link, action))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// What the kernel holds on the device (and our DirectRouting routes), in the same shape as
/// the desired state.
pub async fn actual_entries(
    nl: &Netlink,
    device: &Link,
    family: Family,
) -> Result<KernelEntries, DatapathError> {
    let fam = family;
    let mut entries = KernelEntries::default();
    for n in nl.neighbours(device.index).await? {
        if Family::of_ip(n.ip) == fam {
            entries.neighbours.insert(NeighbourEntry {
                ip: n.ip,
                mac: n.mac,
            });
        }
    }
    for f in nl.fdb_entries(device.index).await? {
        if Family::of_ip(f.dst) == fam {
            entries.fdb.insert(FdbEntry {
                mac: f.mac,
                dst: f.dst,
            });
        }
    }
    let on_device = RouteFilter {
        table: Some(netlink::RT_TABLE_MAIN),
        oif: Some(device.index),
        protocol: None,
        family: Some(fam),
    };
    for r in nl.routes(&on_device).await? {
        // Kernel-made routes (IPv6 fe80::/64 on the device, …) are not ours to manage.
        if r.protocol == RouteProtocol::Kernel || r.kind != netlink::RouteType::Unicast {
            continue;
        }
        if let Some(gateway) = r.gateway {
            entries.routes.insert(RouteEntry {
                dst: r.dst,
                gateway,
                onlink: r.onlink,
                via_device: true,
            });
        }
    }
    let direct = RouteFilter {
        table: Some(netlink::RT_TABLE_MAIN),
        oif: None,
        protocol: Some(RouteProtocol::from(DIRECT_ROUTE_PROTOCOL)),
        family: Some(fam),
    };
    for r in nl.routes(&direct).await? {
        if let Some(gateway) = r.gateway {
            entries.routes.insert(RouteEntry {
                dst: r.dst,
                gateway,
                onlink: r.onlink,
                via_device: false,
            });
        }
    }
    Ok(entries)
}

/// The peer-entry key an operation of `family`'s device is about (see
/// [`super::pure::refusals`]); `None` for operations that are not about a peer entry.
pub fn entry_key(op: &Op, family: Family) -> Option<EntryKey> {
    match op {
        Op::ReplaceRoute(r) | Op::CreateRoute(r) | Op::RemoveRoute(r) => {
            Some(EntryKey::Route(r.dst))
        }
        Op::ReplaceNeighbour(n) | Op::RemoveNeighbour(n) => Some(EntryKey::Neighbour(n.ip)),
        Op::ReplaceFdb(f) | Op::AppendFdb(f) | Op::RemoveFdb(f) => {
            Some(EntryKey::Fdb(family, f.mac))
        }
        Op::ReplaceAddress(_) | Op::RemoveAddress(_) | Op::SetLinkUp(_) => None,
    }
}

/// Translates a plan into netlink operations on the device, in the plan's order.
pub fn plan_ops(plan: &Plan, ifindex: u32) -> Vec<Op> {
    let mut ops = Vec::with_capacity(plan.len() + 4);
    for step in plan.steps() {
        match step {
            Step::RemoveRoute(r) => ops.push(Op::RemoveRoute(route(&r, ifindex))),
            Step::AddNeighbour(n) => ops.push(Op::ReplaceNeighbour(neighbour(&n, ifindex))),
            Step::ReplaceNeighbour { old, new } => {
                ops.push(Op::ReplaceNeighbour(neighbour(&new, ifindex)));
                if old.ip != new.ip {
                    ops.push(Op::RemoveNeighbour(neighbour(&old, ifindex)));
                }
            }
            Step::AddFdb(f) => ops.push(Op::ReplaceFdb(fdb(&f, ifindex))),
            Step::ReplaceFdb { old, new } => {
                ops.push(Op::ReplaceFdb(fdb(&new, ifindex)));
                if old.mac != new.mac {
                    ops.push(Op::RemoveFdb(fdb(&old, ifindex)));
                }
            }
            Step::AddRoute(r) => ops.push(Op::ReplaceRoute(route(&r, ifindex))),
            Step::ReplaceRoute { old, new } => {
                if old.via_device != new.via_device {
                    // A tunnel route and a direct one are different kernel objects.
                    ops.push(Op::RemoveRoute(route(&old, ifindex)));
                }
                ops.push(Op::ReplaceRoute(route(&new, ifindex)));
            }
            Step::RemoveFdb(f) => ops.push(Op::RemoveFdb(fdb(&f, ifindex))),
            Step::RemoveNeighbour(n) => ops.push(Op::RemoveNeighbour(neighbour(&n, ifindex))),
        }
    }
    ops
}

fn neighbour(n: &NeighbourEntry, ifindex: u32) -> netlink::Neighbour {
    netlink::Neighbour {
        ifindex,
        ip: n.ip,
        mac: n.mac,
    }
}

fn fdb(f: &FdbEntry, ifindex: u32) -> netlink::Fdb {
    netlink::Fdb {
        ifindex,
        mac: f.mac,
        dst: f.dst,
    }
}

fn route(r: &RouteEntry, ifindex: u32) -> Route {
    let mut route = Route::new(r.dst).via(r.gateway);
    if r.via_device {
        route = route.dev(ifindex);
    } else {
        route = route.protocol(RouteProtocol::from(DIRECT_ROUTE_PROTOCOL));
    }
    if r.onlink {
        route = route.onlink();
    }
    route
}

/// Whether a kernel notification about the `family` device contradicts the desired entries
/// (someone deleted or changed one of ours, or added one nobody wants). Our own writes echo
/// back as notifications that match the desired state and are ignored here.
pub fn is_drift(
    event: &netlink::MonitorEvent,
    family: Family,
    device: u32,
    desired: &KernelEntries,
) -> bool {
    use netlink::MonitorEvent as E;
    // Direct routes live outside the device, so only their family tells which device's
    // entries they belong to: in dual-stack the v4 echo must not be judged against v6.
    let our_direct = |r: &Route| is_direct(r) && Family::of_net(r.dst) == family;
    match event {
        E::Overflow => true,
        E::LinkDel(l) => l.index == device,
        E::LinkNew(l) => l.index == device && !l.up,
        E::AddressDel(a) => a.ifindex == device,
        E::AddressNew(_) => false,
        E::NeighbourDel(n) => {
            n.ifindex == device && desired.neighbours.iter().any(|d| d.ip == n.ip)
        }
        E::NeighbourNew(n) => {
            n.ifindex == device
                && n.permanent
                && !n.mac.is_some_and(|m| {
                    desired
                        .neighbours
                        .contains(&NeighbourEntry { ip: n.ip, mac: m })
                })
        }
        E::FdbDel(f) => {
            f.ifindex == device
                && desired.fdb.contains(&FdbEntry {
                    mac: f.mac,
                    dst: f.dst,
                })
        }
        E::FdbNew(f) => {
            f.ifindex == device
                && !desired.fdb.contains(&FdbEntry {
                    mac: f.mac,
                    dst: f.dst,
                })
        }
        E::RouteDel(r) => {
            (r.oif == Some(device) || our_direct(r))
                && desired.routes.iter().any(|d| d.dst == r.dst)
        }
        E::RouteNew(r) => {
            let ours = r.oif == Some(device) || our_direct(r);
            ours && r.protocol != RouteProtocol::Kernel
                && !desired_routes_contain(&desired.routes, r, device)
        }
    }
}

fn is_direct(r: &Route) -> bool {
    r.protocol == RouteProtocol::from(DIRECT_ROUTE_PROTOCOL)
}

fn desired_routes_contain(routes: &BTreeSet<RouteEntry>, r: &Route, device: u32) -> bool {
    let Some(gateway) = r.gateway else {
        return false;
    };
    routes.contains(&RouteEntry {
        dst: r.dst,
        gateway,
        onlink: r.onlink,
        via_device: r.oif == Some(device) && !is_direct(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flanneld::pure::plan;
    use crate::net::MacAddr;

    fn n(ip: &str, mac: u8) -> NeighbourEntry {
        NeighbourEntry {
            ip: ip.parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
        }
    }
    fn f(mac: u8, dst: &str) -> FdbEntry {
        FdbEntry {
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            dst: dst.parse().unwrap(),
        }
    }
    fn r(dst: &str, gw: &str) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            onlink: true,
            via_device: true,
        }
    }

    fn entries(ns: &[NeighbourEntry], fs: &[FdbEntry], rs: &[RouteEntry]) -> KernelEntries {
        KernelEntries {
            neighbours: ns.iter().copied().collect(),
            fdb: fs.iter().copied().collect(),
            routes: rs.iter().copied().collect(),
        }
    }

    #[test]
    fn a_new_peer_is_neighbour_then_fdb_then_route_on_the_device() {
        let desired = entries(
            &[n("10.244.2.0", 2)],
            &[f(2, "192.0.2.2")],
            &[r("10.244.2.0/24", "10.244.2.0")],
        );
        let ops = plan_ops(&plan::diff(&KernelEntries::default(), &desired), 7);
        let names: Vec<_> = ops.iter().map(Op::name).collect();
        assert_eq!(
            names,
            ["replace neighbour", "replace fdb entry", "replace route"]
        );
        assert!(ops.iter().all(|o| o.ifindex() == Some(7)));
        let Op::ReplaceRoute(route) = &ops[2] else {
            panic!()
        };
        assert!(route.onlink);
        assert_eq!(route.protocol, RouteProtocol::Boot);
    }

    #[test]
    fn every_peer_operation_has_the_key_its_peer_owns() {
        let desired = entries(
            &[n("10.244.2.0", 2)],
            &[f(2, "192.0.2.2")],
            &[r("10.244.2.0/24", "10.244.2.0")],
        );
        let ops = plan_ops(&plan::diff(&KernelEntries::default(), &desired), 7);
        let keys: Vec<_> = ops.iter().map(|o| entry_key(o, Family::V4)).collect();
        assert_eq!(
            keys,
            [
                Some(EntryKey::Neighbour("10.244.2.0".parse().unwrap())),
                Some(EntryKey::Fdb(Family::V4, MacAddr([2, 0, 0, 0, 0, 2]))),
                Some(EntryKey::Route("10.244.2.0/24".parse().unwrap())),
            ]
        );
        assert_eq!(entry_key(&Op::SetLinkUp(7), Family::V4), None);
    }

    #[test]
    fn a_mac_change_replaces_in_place_and_drops_the_old_fdb_entry() {
        let actual = entries(
            &[n("10.244.2.0", 2)],
            &[f(2, "192.0.2.2")],
            &[r("10.244.2.0/24", "10.244.2.0")],
        );
        let desired = entries(
            &[n("10.244.2.0", 9)],
            &[f(9, "192.0.2.2")],
            &[r("10.244.2.0/24", "10.244.2.0")],
        );
        let ops = plan_ops(&plan::diff(&actual, &desired), 7);
        assert!(ops.contains(&Op::ReplaceNeighbour(neighbour(&n("10.244.2.0", 9), 7))));
        assert!(ops.contains(&Op::ReplaceFdb(fdb(&f(9, "192.0.2.2"), 7))));
        assert!(ops.contains(&Op::RemoveFdb(fdb(&f(2, "192.0.2.2"), 7))));
        assert!(!ops.iter().any(|o| matches!(o, Op::RemoveNeighbour(_))));
        assert!(!ops.iter().any(|o| matches!(o, Op::ReplaceRoute(_))));
    }

    #[test]
    fn direct_routes_carry_our_protocol_and_no_device() {
        let direct = RouteEntry {
            via_device: false,
            onlink: false,
            ..r("10.244.3.0/24", "192.0.2.3")
        };
        let rt = route(&direct, 7);
        assert_eq!(rt.oif, None);
        assert_eq!(rt.protocol, RouteProtocol::from(DIRECT_ROUTE_PROTOCOL));
    }

    #[test]
    fn our_own_writes_are_not_drift_but_deletions_and_foreign_entries_are() {
        use crate::netlink::MonitorEvent as E;
        let desired = entries(
            &[n("10.244.2.0", 2)],
            &[f(2, "192.0.2.2")],
            &[r("10.244.2.0/24", "10.244.2.0")],
        );
        let echo_route = route(&r("10.244.2.0/24", "10.244.2.0"), 7);
        assert!(!is_drift(
            &E::RouteNew(echo_route.clone()),
            Family::V4,
            7,
            &desired
        ));
        assert!(is_drift(&E::RouteDel(echo_route), Family::V4, 7, &desired));
        let echo_fdb = fdb(&f(2, "192.0.2.2"), 7);
        assert!(!is_drift(&E::FdbNew(echo_fdb), Family::V4, 7, &desired));
        assert!(is_drift(&E::FdbDel(echo_fdb), Family::V4, 7, &desired));
        let foreign = fdb(&f(5, "192.0.2.5"), 7);
        assert!(is_drift(&E::FdbNew(foreign), Family::V4, 7, &desired));
        let other_device = fdb(&f(5, "192.0.2.5"), 8);
        assert!(!is_drift(&E::FdbNew(other_device), Family::V4, 7, &desired));
        assert!(is_drift(&E::Overflow, Family::V4, 7, &desired));
    }

    #[test]
    fn a_direct_route_echo_is_judged_only_by_its_own_familys_device() {
        use crate::netlink::MonitorEvent as E;
        let direct = |dst: &str, gw: &str| RouteEntry {
            via_device: false,
            onlink: false,
            ..r(dst, gw)
        };
        let v4 = entries(&[], &[], &[direct("10.244.2.0/24", "192.0.2.2")]);
        let v6 = entries(&[], &[], &[direct("fd10::/64", "2001:db8::2")]);
        // The kernel reports the underlay device as oif of a direct route.
        let echo4 = route(&direct("10.244.2.0/24", "192.0.2.2"), 7).dev(3);
        let echo6 = route(&direct("fd10::/64", "2001:db8::2"), 7).dev(3);
        let watched = [(Family::V4, 7, &v4), (Family::V6, 8, &v6)];
        for echo in [echo4, echo6] {
            assert!(
                !watched
                    .iter()
                    .any(|(f, i, e)| is_drift(&E::RouteNew(echo.clone()), *f, *i, e)),
                "{echo:?}"
            );
            // Deleting it by hand is drift for its own family's device.
            assert!(watched.iter().any(|(f, i, e)| is_drift(
                &E::RouteDel(echo.clone()),
                *f,
                *i,
                e
            )));
        }
        // A direct route of ours that nobody wants any more is still drift (v6 here).
        let stray = route(&direct("fd10:0:0:9::/64", "2001:db8::9"), 7).dev(3);
        assert!(is_drift(&E::RouteNew(stray.clone()), Family::V6, 8, &v6));
        assert!(!is_drift(&E::RouteNew(stray), Family::V4, 7, &v4));
    }
}
