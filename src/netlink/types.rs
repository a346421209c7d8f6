//! Value types of the netlink layer and their conversion from/to kernel messages.
//!
//! Everything here is pure (no I/O) so it is unit-tested in place.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::net::{Family, MacAddr};

use super::LinkOperState;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

/// The kernel's address family for `family`.
pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// The main routing table (`ip route` without `table`).
pub const RT_TABLE_MAIN: u32 = 254;
/// The local routing table (kernel-managed local/broadcast routes).
pub const RT_TABLE_LOCAL: u32 = 255;

/// VXLAN parameters of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    /// IFLA_VXLAN_LINK: the underlay device.
    pub underlay_index: Option<u32>,
    /// UDP destination port.
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"vxlan"`, `"bridge"`, `"veth"`, ...); `None` for `lo` and plain devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// RFC 2863 operational state (`IFLA_OPERSTATE`). `Unknown` on a device whose carrier
    /// has never changed since it was created.
    pub operstate: LinkOperState,
    /// Index of the master (bridge) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK` when it differs from the link's own index: for a veth the peer's index,
    /// which lives in the namespace named by [`Link::link_netnsid`] when that is set.
    pub link_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace, as an id local to the queried namespace.
    pub link_netnsid: Option<i32>,
    pub vxlan: Option<VxlanInfo>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Option<Link> {
        let mut name = None;
        let mut kind = None;
        let mut mtu = 0;
        let mut mac = None;
        let mut master = None;
        let mut link_index = None;
        let mut link_netnsid = None;
        let mut vxlan = None;
        let mut operstate = LinkOperState::Unknown;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::Address(a) => mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
                // 0: a veth whose peer is gone.
                LinkAttribute::Link(l) if *l != 0 && *l != msg.header.index => {
                    link_index = Some(*l)
                }
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link_netnsid = Some(*id),
                LinkAttribute::OperState(state) => operstate = *state,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(info_kind_name(k)),
                            LinkInfo::Data(InfoData::Vxlan(v)) => vxlan = Some(vxlan_info(v)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Link {
            index: msg.header.index,
            name: name?,
            kind,
            mtu,
            mac,
            up: msg.header.flags.contains(LinkFlags::Up),
            operstate,
            master,
            link_index,
            link_netnsid,
            vxlan,
        })
    }
}

fn info_kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(s) => s.clone(),
        k => k.to_string(),
    }
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        local: None,
        underlay_index: None,
        port: 0,
        learning: false,
        gbp: false,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) if *i != 0 => info.underlay_index = Some(*i),
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Gbp => info.gbp = true,
            _ => {}
        }
    }
    info
}

/// Desired VXLAN device (flannel's `flannel.<VNI>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// Source address of encapsulated packets (the node's public IP).
    pub local: IpAddr,
    /// The underlay device (IFLA_VXLAN_LINK).
    pub underlay_index: Option<u32>,
    /// UDP destination port (flannel: 8472).
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

impl VxlanSpec {
    /// The parameters that cannot be changed in place and differ between `self` and `link`
    /// (empty when the link can be adopted). MTU and MAC are not listed: they are set in place.
    pub fn differences(&self, link: &Link) -> Vec<String> {
        let mut diffs = Vec::new();
        if link.kind.as_deref() != Some("vxlan") {
            diffs.push(format!(
                "kind {} (want vxlan)",
                link.kind.as_deref().unwrap_or("none")
            ));
            return diffs;
        }
        let Some(info) = &link.vxlan else {
            diffs.push("no vxlan attributes reported".to_string());
            return diffs;
        };
        if info.vni != self.vni {
            diffs.push(format!("vni {} (want {})", info.vni, self.vni));
        }
        if info.local != Some(self.local) {
            diffs.push(format!(
                "local {} (want {})",
                info.local
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "none".into()),
                self.local
            ));
        }
        if info.port != self.port {
            diffs.push(format!("dstport {} (want {})", info.port, self.port));
        }
        if let Some(want) = self.underlay_index
            && info.underlay_index != Some(want)
        {
            diffs.push(format!(
                "underlay ifindex {} (want {want})",
                info.underlay_index
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
        if info.learning != self.learning {
            diffs.push(format!(
                "learning {} (want {})",
                info.learning, self.learning
            ));
        }
        if info.gbp != self.gbp {
            diffs.push(format!("gbp {} (want {})", info.gbp, self.gbp));
        }
        diffs
    }
}

/// Result of [`crate::netlink::Netlink::ensure_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxlanOutcome {
    /// The device did not exist and was created.
    Created(Link),
    /// A compatible device existed; MTU/MAC were brought in line.
    Adopted(Link),
    /// A device with this name exists with parameters that cannot change in place (the kernel
    /// answers EOPNOTSUPP): the caller decides whether to delete and re-create it.
    NeedsRecreate {
        existing: Link,
        differences: Vec<String>,
    },
}

/// An IP address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub ifindex: u32,
    pub net: IpNetwork,
}

impl Address {
    pub fn new(ifindex: u32, net: IpNetwork) -> Self {
        Self { ifindex, net }
    }

    pub(crate) fn from_message(msg: &AddressMessage) -> Option<Address> {
        let mut local = None;
        let mut address = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        let ip = local.or(address)?;
        let net = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
        Some(Address {
            ifindex: msg.header.index,
            net,
        })
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
pub struct NeighbourEntry {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    /// NUD_PERMANENT (what this layer installs).
    pub permanent: bool,
}

impl NeighbourEntry {
    pub(crate) fn from_message(msg: &NeighbourMessage) -> Option<NeighbourEntry> {
        if !matches!(
            msg.header.family,
            AddressFamily::Inet | AddressFamily::Inet6
        ) || msg.header.flags.contains(NeighbourFlags::Proxy)
        {
            return None;
        }
        let (ip, mac) = destination_and_lladdr(msg);
        Some(NeighbourEntry {
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
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// An FDB notification or dump entry with the flags that matter for reconciling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FdbRecord {
    pub entry: FdbEntry,
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
            entry: FdbEntry {
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

pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        None
    }
}

/// A unicast (or other typed) route. Build with [`Route::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is reachable on `oif` without a covering route.
    pub onlink: bool,
    pub scope: RouteScope,
    pub protocol: RouteProtocol,
    /// Preferred source address (RTA_PREFSRC).
    pub source: Option<IpAddr>,
    /// RTA_PRIORITY; `None` = kernel default (0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
    pub kind: RouteType,
}

impl Route {
    /// A unicast route to `dst` in the main table, scope universe, `proto boot` (what
    /// `ip route add` and flannel install).
    pub fn new(dst: IpNetwork) -> Self {
        Self {
            table: RT_TABLE_MAIN,
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            scope: RouteScope::Universe,
            protocol: RouteProtocol::Boot,
            source: None,
            metric: None,
            kind: RouteType::Unicast,
        }
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }

    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn kind(mut self, kind: RouteType) -> Self {
        self.kind = kind;
        self
    }

    pub fn family(&self) -> Family {
        Family::of_ip(self.dst.ip())
    }

    /// Checks that gateway and source have the destination's family.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let fam = self.family();
        if let Some(gw) = self.gateway
            && Family::of_ip(gw) != fam
        {
            return Err(format!(
                "gateway {gw} is not of the destination's address family"
            ));
        }
        if let Some(src) = self.source
            && Family::of_ip(src) != fam
        {
            return Err(format!(
                "source {src} is not of the destination's address family"
            ));
        }
        if self.onlink && self.oif.is_none() {
            return Err("onlink needs an output device".to_string());
        }
        Ok(())
    }

    pub(crate) fn from_message(msg: &RouteMessage) -> Option<Route> {
        let h = &msg.header;
        let family = match h.address_family {
            AddressFamily::Inet => Family::V4,
            AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let mut dst = None;
        let mut table = u32::from(h.table);
        let mut route = Route::new(default_net(family));
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(a) => route.source = route_ip(a),
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if let Some(ip) = dst {
            route.dst = IpNetwork::new(ip, h.destination_prefix_length).ok()?;
        }
        route.table = table;
        route.onlink = h.flags.contains(RouteFlags::Onlink);
        route.scope = h.scope;
        route.protocol = h.protocol;
        route.kind = h.kind;
        Some(route)
    }
}

impl fmt::Display for Route {
    /// `ip route`-style: `10.244.3.0/24 via 10.244.3.0 dev if5 onlink` (device as index; errors
    /// resolve names themselves).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev if{oif}")?;
        }
        Ok(())
    }
}

fn default_net(family: Family) -> IpNetwork {
    match family {
        Family::V4 => IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        Family::V6 => IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
    .expect("prefix 0 is valid for both families")
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        RouteAddress::Other(bytes) => ip_from_bytes(bytes),
        _ => None,
    }
}

/// Which routes [`crate::netlink::Netlink::routes`] returns. `None` fields match everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteFilter {
    pub table: Option<u32>,
    pub oif: Option<u32>,
    pub protocol: Option<RouteProtocol>,
    pub family: Option<Family>,
}

impl RouteFilter {
    /// Routes of the main table.
    pub fn main() -> Self {
        Self {
            table: Some(RT_TABLE_MAIN),
            ..Self::default()
        }
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = Some(table);
        self
    }

    pub fn oif(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }

    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    pub fn family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }

    pub fn matches(&self, route: &Route) -> bool {
        self.table.is_none_or(|t| route.table == t)
            && self.oif.is_none_or(|o| route.oif == Some(o))
            && self.protocol.is_none_or(|p| route.protocol == p)
            && self.family.is_none_or(|f| route.family() == f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_is_a_bit_of_the_state_mask() {
        assert!(is_permanent(NeighbourState::Permanent));
        assert!(is_permanent(NeighbourState::Other(0xc0)));
        assert!(!is_permanent(NeighbourState::Noarp));
        assert!(!is_permanent(NeighbourState::Reachable));
    }

    #[test]
    fn ip_from_bytes_handles_both_families() {
        assert_eq!(
            ip_from_bytes(&[192, 168, 77, 2]),
            Some("192.168.77.2".parse().unwrap())
        );
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(ip_from_bytes(&v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }

    fn vxlan_link(info: VxlanInfo) -> Link {
        Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            mac: None,
            up: false,
            operstate: LinkOperState::Down,
            master: None,
            link_index: None,
            link_netnsid: None,
            vxlan: Some(info),
        }
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: "192.168.77.1".parse().unwrap(),
            underlay_index: Some(3),
            port: 8472,
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        }
    }

    fn matching_info() -> VxlanInfo {
        VxlanInfo {
            vni: 1,
            local: Some("192.168.77.1".parse().unwrap()),
            underlay_index: Some(3),
            port: 8472,
            learning: false,
            gbp: false,
        }
    }

    #[test]
    fn vxlan_spec_matching_link_has_no_differences() {
        assert!(spec().differences(&vxlan_link(matching_info())).is_empty());
        // No underlay wanted: any underlay is acceptable.
        let mut s = spec();
        s.underlay_index = None;
        assert!(s.differences(&vxlan_link(matching_info())).is_empty());
    }

    #[test]
    fn vxlan_spec_lists_every_immutable_difference() {
        let info = VxlanInfo {
            vni: 2,
            local: Some("192.168.77.9".parse().unwrap()),
            underlay_index: Some(4),
            port: 4789,
            learning: true,
            gbp: true,
        };
        let diffs = spec().differences(&vxlan_link(info));
        assert_eq!(
            diffs,
            vec![
                "vni 2 (want 1)",
                "local 192.168.77.9 (want 192.168.77.1)",
                "dstport 4789 (want 8472)",
                "underlay ifindex 4 (want 3)",
                "learning true (want false)",
                "gbp true (want false)",
            ]
        );
    }

    #[test]
    fn vxlan_spec_rejects_other_kinds() {
        let mut link = vxlan_link(matching_info());
        link.kind = Some("bridge".into());
        link.vxlan = None;
        assert_eq!(spec().differences(&link), vec!["kind bridge (want vxlan)"]);
    }

    #[test]
    fn route_builder_and_filter() {
        let net: IpNetwork = "10.244.3.0/24".parse().unwrap();
        let r = Route::new(net)
            .via("10.244.3.0".parse().unwrap())
            .dev(5)
            .onlink()
            .metric(10)
            .protocol(RouteProtocol::Other(77));
        assert_eq!(r.table, RT_TABLE_MAIN);
        assert!(r.validate().is_ok());
        assert_eq!(r.to_string(), "10.244.3.0/24 via 10.244.3.0 dev if5");
        assert!(RouteFilter::main().oif(5).matches(&r));
        assert!(!RouteFilter::main().oif(6).matches(&r));
        assert!(
            RouteFilter::default()
                .protocol(RouteProtocol::Other(77))
                .matches(&r)
        );
        assert!(
            !RouteFilter::default()
                .protocol(RouteProtocol::Boot)
                .matches(&r)
        );
        assert!(!RouteFilter::default().family(Family::V6).matches(&r));
        assert!(!RouteFilter::default().table(100).matches(&r));
    }

    #[test]
    fn route_validation_catches_mixed_families() {
        let net: IpNetwork = "10.0.0.0/8".parse().unwrap();
        assert!(
            Route::new(net)
                .via("fd00::1".parse().unwrap())
                .validate()
                .is_err()
        );
        assert!(
            Route::new(net)
                .source("fd00::1".parse().unwrap())
                .validate()
                .is_err()
        );
        assert!(Route::new(net).onlink().validate().is_err());
    }

    #[test]
    fn route_round_trips_through_a_kernel_message() {
        let net: IpNetwork = "fd00:1::/64".parse().unwrap();
        let r = Route::new(net)
            .via("fd00::1".parse().unwrap())
            .dev(9)
            .onlink()
            .table(1000)
            .metric(5)
            .source("fd00::2".parse().unwrap());
        let msg = crate::netlink::route::route_message(&r, false);
        let back = Route::from_message(&msg).unwrap();
        assert_eq!(back, r);
    }
}
