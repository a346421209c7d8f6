//! The desired kernel state as a pure function of (config, own lease, peers): per enabled
//! family the VXLAN device spec plus the exact set of neighbour, FDB and route entries
//! (upstream's pkg/backend/vxlan). The kernel is a cache of this function; [`super::plan`] diffs it against
//! what the kernel actually holds.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use thiserror::Error;

use super::lease::PodSubnets;
use super::netconf::VxlanBackend;
use super::peers::Peer;
use crate::net::{Family, MacAddr, PerFamily};

/// Outer-header overhead of VXLAN over an IPv4 underlay (IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Outer-header overhead over an IPv6 underlay (IPv6 header is 40 bytes).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// Smallest device MTU we accept for an IPv4 overlay (RFC 791 minimum).
pub const MIN_MTU_V4: u32 = 68;
/// Smallest device MTU for an IPv6 overlay (RFC 8200 minimum link MTU).
pub const MIN_MTU_V6: u32 = 1280;

/// Permanent neighbour on the VXLAN device: peer gateway (subnet network address) → VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighbourEntry {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Permanent FDB entry on the VXLAN device (AF_BRIDGE, NTF_SELF): VTEP MAC → peer underlay IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// A route to a peer's pod subnet (main table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: IpAddr,
    /// `RTNH_F_ONLINK` (tunnel routes: the gateway is not on any connected subnet).
    pub onlink: bool,
    /// `oif` = the VXLAN device. `false` for DirectRouting routes, which go via the peer's
    /// underlay IP and let the kernel pick the interface.
    pub via_device: bool,
}

/// A set of kernel entries for one VXLAN device (plus its DirectRouting routes). Used for the
/// desired state and, filled from netlink dumps, for the actual state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEntries {
    pub neighbours: BTreeSet<NeighbourEntry>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeSet<RouteEntry>,
}

impl KernelEntries {
    pub fn len(&self) -> usize {
        self.neighbours.len() + self.fdb.len() + self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The VXLAN device we want for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub family: Family,
    /// `flannel.<VNI>` or `flannel-v6.<VNI>`.
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// `IFLA_VXLAN_LOCAL[6]`.
    pub local: IpAddr,
    /// `IFLA_VXLAN_LINK`.
    pub underlay_ifindex: u32,
    pub gbp: bool,
    pub learning: bool,
    pub mtu: u32,
    /// Own subnet's network address as `/32` or `/128`.
    pub address: IpNetwork,
    pub mac: MacAddr,
}

/// Desired state of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyState {
    pub device: DeviceSpec,
    pub entries: KernelEntries,
}

/// Desired kernel state for all enabled families.
pub type DesiredState = PerFamily<Option<FamilyState>>;

impl DesiredState {
    pub fn family(&self, family: Family) -> Option<&FamilyState> {
        self.get(family).as_ref()
    }

    /// The MTU to give pods (`FLANNEL_MTU`): the smallest device MTU, so that a dual-stack pod
    /// fits through both tunnels.
    pub fn pod_mtu(&self) -> Option<u32> {
        [self.v4.as_ref(), self.v6.as_ref()]
            .into_iter()
            .flatten()
            .map(|f| f.device.mtu)
            .min()
    }
}

/// The external (underlay) interface, as selected by [`super::iface`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Underlay {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    /// VXLAN local address per family (the external address, as upstream's pkg/backend/vxlan uses it).
    pub local_v4: Option<Ipv4Addr>,
    pub local_v6: Option<Ipv6Addr>,
    /// Subnets directly reachable on the underlay (no gateway) — peers whose public IP is on
    /// one of them get a DirectRouting route when enabled.
    pub connected: Vec<IpNetwork>,
}

impl Underlay {
    fn local(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.local_v4.map(IpAddr::V4),
            Family::V6 => self.local_v6.map(IpAddr::V6),
        }
    }
}

/// Our own VTEP MACs per family (as chosen by [`super::annotations::choose_vtep_mac`]).
pub type OwnMacs = PerFamily<Option<MacAddr>>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DesiredError {
    #[error(
        "no {family} address on the external interface {iface:?} to use as VXLAN local address"
    )]
    NoLocalAddress { family: Family, iface: String },
    #[error("no {family} VTEP MAC chosen")]
    NoMac { family: Family },
    #[error(
        "{family} VXLAN device MTU would be {mtu} (underlay MTU {underlay} − {overhead}), below the minimum {min}"
    )]
    MtuTooSmall {
        family: Family,
        mtu: i64,
        underlay: u32,
        overhead: u32,
        min: u32,
    },
}

/// `flannel.<VNI>` / `flannel-v6.<VNI>`.
pub fn device_name(family: Family, vni: u32) -> String {
    match family {
        Family::V4 => format!("flannel.{vni}"),
        Family::V6 => format!("flannel-v6.{vni}"),
    }
}

/// Device MTU for a VXLAN device whose underlay (outer) family is `outer`: `Backend.MTU` if set,
/// else the interface MTU, minus 50 (IPv4 underlay) or 70 (IPv6 underlay).
pub fn device_mtu(
    outer: Family,
    iface_mtu: u32,
    configured: Option<u32>,
) -> Result<u32, DesiredError> {
    let underlay = configured.unwrap_or(iface_mtu);
    let overhead = match outer {
        Family::V4 => VXLAN_OVERHEAD_V4,
        Family::V6 => VXLAN_OVERHEAD_V6,
    };
    let min = match outer {
        Family::V4 => MIN_MTU_V4,
        Family::V6 => MIN_MTU_V6,
    };
    let mtu = i64::from(underlay) - i64::from(overhead);
    if mtu < i64::from(min) {
        return Err(DesiredError::MtuTooSmall {
            family: outer,
            mtu,
            underlay,
            overhead,
            min,
        });
    }
    Ok(mtu as u32)
}

/// Computes the desired state. `own` must be the lease restricted to enabled families (see
/// [`super::netconf::NetConf::check_lease`]); `peers` the accepted peers of
/// [`super::peers::select_peers`].
pub fn desired_state(
    backend: &VxlanBackend,
    underlay: &Underlay,
    own: &PodSubnets,
    macs: &OwnMacs,
    peers: &[Peer],
) -> Result<DesiredState, DesiredError> {
    let mut out = DesiredState::default();
    for family in [Family::V4, Family::V6] {
        let Some(own_subnet) = own.get(family) else {
            continue;
        };
        let local = underlay
            .local(family)
            .ok_or_else(|| DesiredError::NoLocalAddress {
                family,
                iface: underlay.name.clone(),
            })?;
        let mac = macs.get(family).ok_or(DesiredError::NoMac { family })?;
        let device = DeviceSpec {
            family,
            name: device_name(family, backend.vni),
            vni: backend.vni,
            port: backend.port,
            local,
            underlay_ifindex: underlay.ifindex,
            gbp: backend.gbp,
            learning: backend.learning,
            mtu: device_mtu(family, underlay.mtu, backend.mtu)?,
            address: host_network(own_subnet.network()),
            mac,
        };
        let mut entries = KernelEntries::default();
        for peer in peers {
            let Some(ep) = peer.endpoint(family) else {
                continue;
            };
            let gateway = ep.subnet.network();
            let direct = backend.direct_routing
                && underlay
                    .connected
                    .iter()
                    .any(|n| Family::of_net(*n) == family && n.contains(ep.public_ip));
            if direct {
                entries.routes.insert(RouteEntry {
                    dst: ep.subnet,
                    gateway: ep.public_ip,
                    onlink: false,
                    via_device: false,
                });
                continue;
            }
            entries.neighbours.insert(NeighbourEntry {
                ip: gateway,
                mac: ep.vtep_mac,
            });
            entries.fdb.insert(FdbEntry {
                mac: ep.vtep_mac,
                dst: ep.public_ip,
            });
            entries.routes.insert(RouteEntry {
                dst: ep.subnet,
                gateway,
                onlink: true,
                via_device: true,
            });
        }
        let state = FamilyState { device, entries };
        match family {
            Family::V4 => out.v4 = Some(state),
            Family::V6 => out.v6 = Some(state),
        }
    }
    Ok(out)
}

fn host_network(ip: IpAddr) -> IpNetwork {
    // A host prefix is always valid for its family.
    IpNetwork::new(ip, Family::of_ip(ip).host_prefix()).unwrap_or_else(|_| IpNetwork::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flanneld::pure::peers::PeerEndpoint;

    fn backend() -> VxlanBackend {
        VxlanBackend::default()
    }

    fn underlay() -> Underlay {
        Underlay {
            ifindex: 2,
            name: "eth0".into(),
            mtu: 1500,
            local_v4: Some("192.168.1.1".parse().unwrap()),
            local_v6: Some("fd00:1::1".parse().unwrap()),
            connected: vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
        }
    }

    fn own(dual: bool) -> PodSubnets {
        if dual {
            PodSubnets::from_pod_cidrs(&["10.244.0.0/24", "fd00:10::/64"]).unwrap()
        } else {
            PodSubnets::from_pod_cidrs(&["10.244.0.0/24"]).unwrap()
        }
    }

    const MAC4: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const MAC6: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn macs() -> OwnMacs {
        OwnMacs {
            v4: Some(MAC4),
            v6: Some(MAC6),
        }
    }

    fn peer(name: &str, n: u8, public: &str) -> Peer {
        Peer {
            name: name.into(),
            uid: String::new(),
            created: None,
            v4: Some(PeerEndpoint {
                subnet: format!("10.244.{n}.0/24").parse().unwrap(),
                vtep_mac: MacAddr([2, 0, 0, 0, 1, n]),
                public_ip: public.parse().unwrap(),
                vni: Some(1),
            }),
            v6: None,
        }
    }

    fn dual_peer(name: &str, n: u8) -> Peer {
        let mut p = peer(name, n, &format!("192.168.1.{n}"));
        p.v6 = Some(PeerEndpoint {
            subnet: format!("fd00:10:0:{n:x}::/64").parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 6, n]),
            public_ip: format!("fd00:1::{n:x}").parse().unwrap(),
            vni: Some(1),
        });
        p
    }

    #[test]
    fn v4_device_and_three_entries_per_peer() {
        let peers = vec![peer("a", 5, "192.168.2.5"), peer("b", 6, "192.168.2.6")];
        let d = desired_state(&backend(), &underlay(), &own(false), &macs(), &peers).unwrap();
        assert!(d.v6.is_none());
        let f = d.v4.as_ref().unwrap();
        assert_eq!(
            f.device,
            DeviceSpec {
                family: Family::V4,
                name: "flannel.1".into(),
                vni: 1,
                port: 8472,
                local: "192.168.1.1".parse().unwrap(),
                underlay_ifindex: 2,
                gbp: false,
                learning: false,
                mtu: 1450,
                address: "10.244.0.0/32".parse().unwrap(),
                mac: MAC4,
            }
        );
        let e = &f.entries;
        assert_eq!(e.len(), 6);
        assert!(e.neighbours.contains(&NeighbourEntry {
            ip: "10.244.5.0".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 1, 5])
        }));
        assert!(e.fdb.contains(&FdbEntry {
            mac: MacAddr([2, 0, 0, 0, 1, 5]),
            dst: "192.168.2.5".parse().unwrap()
        }));
        assert!(e.routes.contains(&RouteEntry {
            dst: "10.244.5.0/24".parse().unwrap(),
            gateway: "10.244.5.0".parse().unwrap(),
            onlink: true,
            via_device: true
        }));
        assert_eq!(d.pod_mtu(), Some(1450));
    }

    #[test]
    fn dual_stack_devices_and_mtu() {
        let peers = vec![dual_peer("a", 5)];
        let mut b = backend();
        b.vni = 7;
        b.port = 4789;
        b.gbp = true;
        let d = desired_state(&b, &underlay(), &own(true), &macs(), &peers).unwrap();
        let f6 = d.v6.as_ref().unwrap();
        assert_eq!(f6.device.name, "flannel-v6.7");
        assert_eq!(f6.device.mtu, 1430, "IPv6 underlay costs 70 bytes");
        assert_eq!(
            f6.device.address,
            "fd00:10::/128".parse::<IpNetwork>().unwrap()
        );
        assert_eq!(f6.device.local, "fd00:1::1".parse::<IpAddr>().unwrap());
        assert_eq!(f6.device.mac, MAC6);
        assert!(f6.device.gbp);
        assert_eq!(f6.device.port, 4789);
        assert!(f6.entries.neighbours.contains(&NeighbourEntry {
            ip: "fd00:10:0:5::".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 6, 5])
        }));
        assert_eq!(f6.entries.len(), 3);
        assert_eq!(d.v4.as_ref().unwrap().device.name, "flannel.7");
        assert_eq!(d.v4.as_ref().unwrap().entries.len(), 3);
        assert_eq!(d.pod_mtu(), Some(1430));
    }

    #[test]
    fn mtu_rules() {
        assert_eq!(device_mtu(Family::V4, 1500, None).unwrap(), 1450);
        assert_eq!(device_mtu(Family::V6, 1500, None).unwrap(), 1430);
        assert_eq!(device_mtu(Family::V4, 9001, None).unwrap(), 8951);
        assert_eq!(device_mtu(Family::V4, 1500, Some(1414)).unwrap(), 1364);
        assert_eq!(device_mtu(Family::V6, 1500, Some(1414)).unwrap(), 1344);
        assert_eq!(device_mtu(Family::V4, 0, Some(118)).unwrap(), 68);
        assert!(matches!(
            device_mtu(Family::V4, 100, None),
            Err(DesiredError::MtuTooSmall { mtu: 50, .. })
        ));
        assert!(device_mtu(Family::V4, 10, None).is_err());
        assert!(device_mtu(Family::V6, 1340, None).is_err());
        let mut b = backend();
        b.mtu = Some(9000);
        let d = desired_state(&b, &underlay(), &own(false), &macs(), &[]).unwrap();
        assert_eq!(d.v4.unwrap().device.mtu, 8950);
    }

    #[test]
    fn direct_routing_for_peers_on_the_underlay_subnet() {
        let mut b = backend();
        b.direct_routing = true;
        let peers = vec![
            peer("near", 5, "192.168.1.5"),
            peer("far", 6, "192.168.2.6"),
        ];
        let d = desired_state(&b, &underlay(), &own(false), &macs(), &peers).unwrap();
        let e = &d.v4.unwrap().entries;
        assert_eq!(
            e.neighbours.len(),
            1,
            "only the far peer goes through the tunnel"
        );
        assert_eq!(e.fdb.len(), 1);
        assert!(e.routes.contains(&RouteEntry {
            dst: "10.244.5.0/24".parse().unwrap(),
            gateway: "192.168.1.5".parse().unwrap(),
            onlink: false,
            via_device: false
        }));
        assert!(e.routes.contains(&RouteEntry {
            dst: "10.244.6.0/24".parse().unwrap(),
            gateway: "10.244.6.0".parse().unwrap(),
            onlink: true,
            via_device: true
        }));
        // without DirectRouting the near peer is tunnelled too
        let d = desired_state(&backend(), &underlay(), &own(false), &macs(), &peers).unwrap();
        assert_eq!(d.v4.unwrap().entries.len(), 6);
    }

    #[test]
    fn errors() {
        let mut u = underlay();
        u.local_v6 = None;
        assert!(matches!(
            desired_state(&backend(), &u, &own(true), &macs(), &[]),
            Err(DesiredError::NoLocalAddress {
                family: Family::V6,
                ..
            })
        ));
        let m = OwnMacs {
            v4: None,
            v6: Some(MAC6),
        };
        assert_eq!(
            desired_state(&backend(), &underlay(), &own(false), &m, &[]),
            Err(DesiredError::NoMac { family: Family::V4 })
        );
    }

    #[test]
    fn no_peers_means_no_entries_and_is_deterministic() {
        let d = desired_state(&backend(), &underlay(), &own(false), &macs(), &[]).unwrap();
        assert!(d.v4.as_ref().unwrap().entries.is_empty());
        let peers: Vec<Peer> = (1..=50)
            .map(|n| peer(&format!("p{n}"), n, "192.168.3.3"))
            .collect();
        let mut rev = peers.clone();
        rev.reverse();
        let a = desired_state(&backend(), &underlay(), &own(false), &macs(), &peers).unwrap();
        let b = desired_state(&backend(), &underlay(), &own(false), &macs(), &rev).unwrap();
        assert_eq!(a, b, "peer order does not matter");
        assert_eq!(a.v4.unwrap().entries.len(), 150);
    }
}
