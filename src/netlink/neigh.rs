//! Permanent neighbours (ARP/NDP) and FDB entries on VXLAN devices.

use std::net::IpAddr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::batch::Op;
use super::error::NetlinkError;
use super::ip_from_bytes;
use super::{Netlink, address_family};
use crate::net::{Family, MacAddr};

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// RTM_NEWNEIGH (permanent, with lladdr) or RTM_DELNEIGH (by address) body.
pub(crate) fn neighbour_message(n: &Neighbour, for_delete: bool) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = address_family(Family::of_ip(n.ip));
    msg.header.ifindex = n.ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
    if !for_delete {
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
            n.mac.octets().to_vec(),
        ));
    }
    msg
}

/// AF_BRIDGE neighbour body for a VXLAN FDB entry: NTF_SELF (the device's own table, which
/// netlink-packet-route calls `Own`), NUD_PERMANENT, NDA_LLADDR and NDA_DST. Deleting with
/// NDA_DST removes only that destination of the entry.
pub(crate) fn fdb_message(f: &Fdb) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = f.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
        f.mac.octets().to_vec(),
    ));
    msg.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
    msg
}

impl Netlink {
    /// Adds or replaces a permanent neighbour (`ip neigh replace IP lladdr MAC dev X nud
    /// permanent`).
    pub async fn ensure_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError> {
        self.apply_one(Op::ReplaceNeighbour(*neighbour)).await
    }

    /// Removes the neighbour entry for `neighbour.ip` on its link; `Ok` if it is not there.
    pub async fn remove_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError> {
        self.apply_one(Op::RemoveNeighbour(*neighbour)).await
    }

    /// Every IPv4/IPv6 neighbour entry of a link, in any state.
    pub async fn neighbour_entries(
        &self,
        ifindex: u32,
    ) -> Result<Vec<NeighbourRecord>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Unspec;
        // NDA_IFINDEX, not the header field: a strict socket rejects a header ifindex in
        // neighbour dumps.
        req.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        Ok(self
            .neighbour_dump("list neighbours", ifindex, req)
            .await?
            .iter()
            .filter_map(NeighbourRecord::from_message)
            .filter(|n| n.ifindex == ifindex)
            .collect())
    }

    /// Permanent neighbours with a MAC on a link (skips learned, stale and NOARP multicast
    /// entries).
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        Ok(self
            .neighbour_entries(ifindex)
            .await?
            .iter()
            .filter_map(NeighbourRecord::as_permanent)
            .collect())
    }

    /// Adds or replaces an FDB entry (`bridge fdb replace MAC dev X dst IP self permanent`).
    pub async fn ensure_fdb(&self, entry: &Fdb) -> Result<(), NetlinkError> {
        self.apply_one(Op::ReplaceFdb(*entry)).await
    }

    /// Adds one more destination for `entry.mac` (`bridge fdb append`), used with the all-zero
    /// MAC to flood to several VTEPs.
    pub async fn append_fdb(&self, entry: &Fdb) -> Result<(), NetlinkError> {
        self.apply_one(Op::AppendFdb(*entry)).await
    }

    /// Removes the destination `entry.dst` of `entry.mac`; `Ok` if it is not there.
    pub async fn remove_fdb(&self, entry: &Fdb) -> Result<(), NetlinkError> {
        self.apply_one(Op::RemoveFdb(*entry)).await
    }

    /// Permanent FDB entries with a destination in the device's own table (NTF_SELF), one per
    /// (MAC, destination) pair.
    pub async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<Fdb>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        // On a strict socket the kernel dumps only this device.
        req.header.ifindex = ifindex;
        Ok(self
            .neighbour_dump("list fdb entries", ifindex, req)
            .await?
            .iter()
            .filter_map(FdbRecord::from_message)
            .filter(|r| r.own && r.permanent && r.entry.ifindex == ifindex)
            .map(|r| r.entry)
            .collect())
    }

    /// The neighbour messages of a dump about the link `ifindex` (IP neighbours or FDB,
    /// depending on `req`); an error names `op` and the link.
    async fn neighbour_dump(
        &self,
        op: &'static str,
        ifindex: u32,
        req: NeighbourMessage,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let replies = self
            .dump_of_link(op, ifindex, RouteNetlinkMessage::GetNeighbour(req))
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }
}

/// A permanent neighbour (ARP for IPv4, NDP for IPv6) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Any neighbour entry as reported by the kernel (dumps and monitor events); deleted entries
/// usually carry no link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighbourRecord {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    /// NUD_PERMANENT (what this layer installs).
    pub permanent: bool,
}

impl NeighbourRecord {
    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<NeighbourRecord> {
        if !matches!(
            msg.header.family,
            AddressFamily::Inet | AddressFamily::Inet6
        ) || msg.header.flags.contains(NeighbourFlags::Proxy)
        {
            return None;
        }
        let (ip, mac) = destination_and_lladdr(msg);
        Some(NeighbourRecord {
            ifindex: msg.header.ifindex,
            ip: ip?,
            mac,
            permanent: is_permanent(msg.header.state),
        })
    }

    /// The permanent entry with a MAC as a [`Neighbour`]; `None` for anything else
    /// (learned/stale entries, NOARP multicast entries, entries without lladdr).
    pub fn as_permanent(&self) -> Option<Neighbour> {
        match (self.permanent, self.mac) {
            (true, Some(mac)) => Some(Neighbour {
                ifindex: self.ifindex,
                ip: self.ip,
                mac,
            }),
            _ => None,
        }
    }
}

/// A static FDB entry on a VXLAN device: frames for `mac` are sent to the VTEP at `dst`
/// (`bridge fdb ... dev flannel.1 dst X self permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fdb {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// An FDB notification or dump entry with the flags that matter for reconciling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FdbRecord {
    pub entry: Fdb,
    pub permanent: bool,
    pub own: bool,
}

impl FdbRecord {
    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<FdbRecord> {
        if msg.header.family != AddressFamily::Bridge {
            return None;
        }
        let (dst, mac) = destination_and_lladdr(msg);
        Some(FdbRecord {
            entry: Fdb {
                ifindex: msg.header.ifindex,
                mac: mac?,
                dst: dst?,
            },
            permanent: is_permanent(msg.header.state),
            own: msg.header.flags.contains(NeighbourFlags::Own),
        })
    }
}

/// NDA_DST and NDA_LLADDR of a neighbour message (IP neighbour or FDB entry).
fn destination_and_lladdr(msg: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let mut dst = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => dst = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(m) => mac = MacAddr::from_slice(m),
            _ => {}
        }
    }
    (dst, mac)
}

/// NUD states are a bit mask (`bridge fdb add ... permanent` gives PERMANENT|NOARP).
fn is_permanent(state: NeighbourState) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    u16::from(state) & NUD_PERMANENT != 0
}

/// NDA_DST: in AF_BRIDGE messages the parser cannot know the family and hands back raw bytes.
fn neighbour_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        NeighbourAddress::Other(bytes) => ip_from_bytes(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MacAddr;

    #[test]
    fn fdb_message_is_self_permanent_with_dst() {
        let f = Fdb {
            ifindex: 3,
            mac: MacAddr([0x0e, 0, 0, 0, 2, 2]),
            dst: "192.168.77.2".parse().unwrap(),
        };
        let msg = fdb_message(&f);
        assert_eq!(msg.header.family, AddressFamily::Bridge);
        assert_eq!(msg.header.flags, NeighbourFlags::Own);
        assert_eq!(msg.header.state, NeighbourState::Permanent);
        let rec = FdbRecord::from_message(&msg).unwrap();
        assert_eq!(rec.entry, f);
        assert!(rec.own && rec.permanent);
    }

    #[test]
    fn fdb_dst_as_raw_bytes_is_understood() {
        // In AF_BRIDGE dumps NDA_DST arrives unparsed.
        let mut msg = fdb_message(&Fdb {
            ifindex: 3,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst: "10.99.0.2".parse().unwrap(),
        });
        msg.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![10, 99, 0, 2]));
        let rec = FdbRecord::from_message(&msg).unwrap();
        assert_eq!(rec.entry.dst, "10.99.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn neighbour_message_round_trips() {
        let n = Neighbour {
            ifindex: 5,
            ip: "fd00::5".parse().unwrap(),
            mac: MacAddr([0x0e, 1, 2, 3, 4, 5]),
        };
        let msg = neighbour_message(&n, false);
        let entry = NeighbourRecord::from_message(&msg).unwrap();
        assert_eq!(entry.as_permanent(), Some(n));
        let del = neighbour_message(&n, true);
        let entry = NeighbourRecord::from_message(&del).unwrap();
        assert_eq!(entry.mac, None);
        assert_eq!(entry.as_permanent(), None);
    }

    #[test]
    fn permanent_is_a_bit_of_the_state_mask() {
        assert!(is_permanent(NeighbourState::Permanent));
        assert!(is_permanent(NeighbourState::Other(0xc0)));
        assert!(!is_permanent(NeighbourState::Noarp));
        assert!(!is_permanent(NeighbourState::Reachable));
    }
}
