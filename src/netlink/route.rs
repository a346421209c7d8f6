//! IPv4/IPv6 routes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::batch::Op;
use super::error::NetlinkError;
use super::ip_from_bytes;
use super::{Netlink, address_family};
use crate::net::Family;

const ENOENT: i32 = nix::libc::ENOENT;
const ENODEV: i32 = nix::libc::ENODEV;

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// Tables above 255 do not fit the header and travel as RTA_TABLE (as iproute2 does).
fn set_table(msg: &mut RouteMessage, table: u32) {
    match u8::try_from(table) {
        Ok(t) => msg.header.table = t,
        Err(_) => {
            msg.header.table = 0;
            msg.attributes.push(RouteAttribute::Table(table));
        }
    }
}

/// RTM_NEWROUTE / RTM_DELROUTE body for `r`. A delete matches on destination, table, metric,
/// and — when given — device and gateway, but any scope, protocol and type (like `ip route del`).
pub(crate) fn route_message(r: &Route, for_delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = address_family(r.family());
    h.destination_prefix_length = r.dst.prefix();
    if for_delete {
        h.scope = RouteScope::NoWhere;
        h.protocol = RouteProtocol::Unspec;
        h.kind = RouteType::Unspec;
    } else {
        h.scope = r.scope;
        h.protocol = r.protocol;
        h.kind = r.kind;
        if r.onlink {
            h.flags |= RouteFlags::Onlink;
        }
    }
    set_table(&mut msg, r.table);
    msg.attributes
        .push(RouteAttribute::Destination(route_address(r.dst.network())));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = r.source
        && !for_delete
    {
        msg.attributes
            .push(RouteAttribute::PrefSource(route_address(src)));
    }
    if let Some(metric) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    msg
}

/// `ip route`-style description with the device by name.
pub(crate) fn describe(r: &Route, ifname: &str) -> String {
    let kind = match r.kind {
        RouteType::BlackHole => "blackhole ",
        RouteType::Unreachable => "unreachable ",
        RouteType::Prohibit => "prohibit ",
        _ => "",
    };
    let mut s = format!("{kind}{}", r.dst);
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if r.oif.is_some() {
        s.push_str(&format!(" dev {ifname}"));
    }
    if r.table != RT_TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    if let Some(m) = r.metric {
        s.push_str(&format!(" metric {m}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// `ip route show`-style description of a filter, e.g. `ipv4 table 254 dev flannel.1`.
async fn describe_filter(family: Family, filter: &RouteFilter, nl: &Netlink) -> String {
    let mut s = match family {
        Family::V4 => "ipv4".to_string(),
        Family::V6 => "ipv6".to_string(),
    };
    if let Some(t) = filter.table {
        s.push_str(&format!(" table {t}"));
    }
    if let Some(oif) = filter.oif {
        s.push_str(&format!(" dev {}", nl.ifname(oif).await));
    }
    if let Some(p) = filter.protocol {
        s.push_str(&format!(" proto {}", u8::from(p)));
    }
    s
}

/// RTM_GETROUTE dump request; on a strict socket the kernel filters by table, protocol and
/// output device itself.
pub(crate) fn dump_request(family: Family, filter: &RouteFilter) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    if let Some(table) = filter.table {
        set_table(&mut msg, table);
    }
    if let Some(protocol) = filter.protocol {
        msg.header.protocol = protocol;
    }
    if let Some(oif) = filter.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

impl Netlink {
    /// Adds the route or replaces the one with the same destination/table/metric
    /// (`ip route replace`).
    pub async fn ensure_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.apply_one(Op::ReplaceRoute(route.clone())).await
    }

    /// Adds the route only if no route with the same destination/table/metric exists
    /// (`ip route add`): fails with EEXIST instead of overwriting.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.apply_one(Op::CreateRoute(route.clone())).await
    }

    /// Removes the route; `Ok` if it is not there.
    pub async fn remove_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.apply_one(Op::RemoveRoute(route.clone())).await
    }

    /// Routes matching `filter` (kernel-side filtering plus the same check here). Multipath
    /// routes are reported without gateway/device. Cached exceptions are not included.
    pub async fn routes(&self, filter: &RouteFilter) -> Result<Vec<Route>, NetlinkError> {
        let families = match filter.family {
            Some(f) => vec![f],
            None => vec![Family::V4, Family::V6],
        };
        let mut out = Vec::new();
        for family in families {
            let replies = match self
                .transport()
                .dump(RouteNetlinkMessage::GetRoute(dump_request(family, filter)))
                .await
            {
                Ok(r) => r,
                // A table that was never created, or a device that is gone, holds no routes.
                Err(e)
                    if (e.errno() == Some(ENOENT) && filter.table.is_some())
                        || (e.errno() == Some(ENODEV) && filter.oif.is_some()) =>
                {
                    continue;
                }
                Err(e) => {
                    let object = describe_filter(family, filter, self).await;
                    return Err(e.into_error("list routes", object));
                }
            };
            out.extend(
                replies
                    .iter()
                    .filter_map(|m| match m {
                        RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                        _ => None,
                    })
                    .filter(|r| filter.matches(r)),
            );
        }
        Ok(out)
    }
}

/// The main routing table (`ip route` without `table`).
pub const RT_TABLE_MAIN: u32 = 254;
/// The local routing table (kernel-managed local/broadcast routes).
pub const RT_TABLE_LOCAL: u32 = 255;

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
    fn delete_message_matches_any_scope_and_protocol() {
        let r = Route::new("10.244.3.0/24".parse().unwrap())
            .via("10.244.3.0".parse().unwrap())
            .dev(4)
            .onlink()
            .source("10.244.1.0".parse().unwrap());
        let msg = route_message(&r, true);
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert_eq!(msg.header.protocol, RouteProtocol::Unspec);
        assert!(!msg.header.flags.contains(RouteFlags::Onlink));
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::PrefSource(_)))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(4)));
    }

    #[test]
    fn big_tables_travel_as_attribute() {
        let r = Route::new("10.0.0.0/8".parse().unwrap()).table(1000);
        let msg = route_message(&r, false);
        assert_eq!(msg.header.table, 0);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        let small = route_message(&r.clone().table(100), false);
        assert_eq!(small.header.table, 100);
    }

    #[test]
    fn description_reads_like_ip_route() {
        let r = Route::new("10.244.3.0/24".parse().unwrap())
            .via("10.244.3.0".parse().unwrap())
            .dev(4);
        assert_eq!(
            describe(&r, "flannel.1"),
            "10.244.3.0/24 via 10.244.3.0 dev flannel.1"
        );
        let r = r.table(7).metric(3).onlink();
        assert_eq!(
            describe(&r, "flannel.1"),
            "10.244.3.0/24 via 10.244.3.0 dev flannel.1 table 7 metric 3 onlink"
        );
        let hole = Route::new("10.244.1.0/24".parse().unwrap()).kind(RouteType::BlackHole);
        assert_eq!(describe(&hole, ""), "blackhole 10.244.1.0/24");
    }

    #[test]
    fn dump_request_carries_the_filter() {
        let f = RouteFilter::main().oif(3).protocol(RouteProtocol::Static);
        let msg = dump_request(Family::V6, &f);
        assert_eq!(msg.header.table, 254);
        assert_eq!(msg.header.protocol, RouteProtocol::Static);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert_eq!(msg.attributes, vec![RouteAttribute::Oif(3)]);
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
