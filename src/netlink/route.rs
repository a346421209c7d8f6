//! IPv4/IPv6 routes.

use super::types::address_family;
use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

use super::Netlink;
use super::batch::Op;
use super::error::NetlinkError;
use super::types::{RT_TABLE_MAIN, Route, RouteFilter};
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
        self.apply_one(Op::EnsureRoute(route.clone())).await
    }

    /// Adds the route only if no route with the same destination/table/metric exists
    /// (`ip route add`): fails with EEXIST instead of overwriting.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        self.apply_one(Op::AddRoute(route.clone())).await
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
}
