//! External (underlay) interface and address selection (upstream's main.go, LookupExtIface), on plain data: the caller
//! lists links, addresses and default routes (and resolves the `--iface-can-reach` route) and
//! this module decides, exactly in upstream's order of precedence.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use thiserror::Error;

use super::annotations::OwnAdvertisement;
use super::config::IfaceSelectors;
use super::desired::Underlay;
use crate::net::{Family, MacAddr, go_ip_string, normalize};

/// Address flags that matter for the choice (from `IFA_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrFlags {
    /// `IFA_F_PERMANENT`: configured by hand (not from DHCP/SLAAC lifetimes).
    pub permanent: bool,
    /// `IFA_F_TEMPORARY` (IPv6 privacy address).
    pub temporary: bool,
    /// `IFA_F_DEPRECATED`: never chosen.
    pub deprecated: bool,
    /// `IFA_F_TENTATIVE` (DAD not finished): never chosen.
    pub tentative: bool,
}

/// One address of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub flags: AddrFlags,
}

/// One link, as listed by the netlink layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// In the kernel's listing order.
    pub addresses: Vec<LinkAddress>,
}

/// The kernel's answer to "route get <ip>" (for `--iface-can-reach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteHint {
    pub ifindex: u32,
    /// Preferred source address of the route, if any.
    pub src: Option<IpAddr>,
}

/// Host network facts the selection needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostNetwork {
    pub links: Vec<LinkInfo>,
    /// Interface index of the first IPv4 default route.
    pub default_v4: Option<u32>,
    /// Interface index of the first IPv6 default route.
    pub default_v6: Option<u32>,
    /// Route to the `--iface-can-reach` address, resolved by the caller.
    pub can_reach: Option<RouteHint>,
}

/// What to select.
#[derive(Debug, Clone, Copy)]
pub struct SelectionRequest<'a> {
    pub selectors: &'a IfaceSelectors,
    /// Effective public IPs: the `node-public-ip[v6]` annotation if set, else `--public-ip[v6]`.
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub enable_v4: bool,
    pub enable_v6: bool,
}

/// The chosen external interface and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's own address per enabled family.
    pub iface_addr_v4: Option<Ipv4Addr>,
    pub iface_addr_v6: Option<Ipv6Addr>,
    /// External address: `--public-ip` (or `node-public-ip`) if given, else the interface
    /// address. Used as VXLAN `local` and, unless overwritten, advertised as `public-ip`.
    pub ext_addr_v4: Option<Ipv4Addr>,
    pub ext_addr_v6: Option<Ipv6Addr>,
    /// Subnets directly connected to the interface (for DirectRouting).
    pub connected: Vec<IpNetwork>,
}

impl ExternalInterface {
    /// The underlay description [`super::desired::desired_state`] consumes.
    pub fn underlay(&self) -> Underlay {
        Underlay {
            ifindex: self.index,
            name: self.name.clone(),
            mtu: self.mtu,
            local_v4: self.ext_addr_v4,
            local_v6: self.ext_addr_v6,
            connected: self.connected.clone(),
        }
    }

    /// What we advertise for `family` (before `public-ip-overwrite` is applied by
    /// [`super::annotations::desired_annotations`]); `None` if the family is not in use.
    pub fn advertisement(
        &self,
        family: Family,
        vni: u32,
        mac: MacAddr,
    ) -> Option<OwnAdvertisement> {
        let public_ip = match family {
            Family::V4 => self.ext_addr_v4.map(IpAddr::V4),
            Family::V6 => self.ext_addr_v6.map(IpAddr::V6),
        }?;
        Some(OwnAdvertisement {
            vni,
            vtep_mac: mac,
            public_ip,
        })
    }

    /// Our own underlay addresses (interface and external): a peer claiming one is refused.
    pub fn own_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = [
            self.iface_addr_v4.map(IpAddr::V4),
            self.ext_addr_v4.map(IpAddr::V4),
            self.iface_addr_v6.map(IpAddr::V6),
            self.ext_addr_v6.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.dedup();
        out
    }
}

/// Why one candidate did not qualify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CandidateError {
    #[error("no interface named {0:?}")]
    NoSuchName(String),
    #[error("no interface has the address {0}")]
    NoInterfaceWithIp(String),
    #[error("pattern {0:?} matches no interface address or name")]
    NoRegexMatch(String),
    #[error("no route to {0} was resolved")]
    NoRoute(String),
    #[error("route to {target} uses interface index {ifindex}, which is not listed")]
    RouteInterfaceMissing { target: String, ifindex: u32 },
    #[error("failed to determine MTU for {0} interface")]
    ZeroMtu(String),
    #[error("failed to find {family} address for interface {iface}")]
    NoAddress { iface: String, family: Family },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IfaceError {
    #[error("Failed to find interface to use that matches the interfaces and/or regexes provided: {}", DisplayList(.0))]
    NoMatch(Vec<(String, CandidateError)>),
    #[error("no default {0} route found; use --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute(Family),
    #[error(
        "the IPv4 default route uses {v4:?} and the IPv6 default route uses {v6:?}; dual-stack needs one interface (use --iface)"
    )]
    DefaultRouteMismatch { v4: String, v6: String },
    #[error("default route interface index {0} is not listed")]
    DefaultRouteInterfaceMissing(u32),
    #[error("public IP: {0}")]
    PublicIp(CandidateError),
    #[error("{0}")]
    Candidate(CandidateError),
}

struct DisplayList<'a>(&'a [(String, CandidateError)]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing tried");
        }
        for (i, (what, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{what}: {why}")?;
        }
        Ok(())
    }
}

/// The address flannel uses for a link in `family`: deprecated and tentative addresses are
/// skipped; global before link-local, manual (permanent) before dynamic, stable before
/// temporary; ties keep the kernel's order.
pub fn preferred_address(link: &LinkInfo, family: Family) -> Option<IpAddr> {
    let mut candidates: Vec<(usize, &LinkAddress)> = link
        .addresses
        .iter()
        .enumerate()
        .filter(|(_, a)| Family::of_ip(a.ip) == family && !a.flags.deprecated && !a.flags.tentative)
        .collect();
    candidates.sort_by_key(|(i, a)| {
        (
            is_link_local(a.ip),
            !a.flags.permanent,
            a.flags.temporary,
            *i,
        )
    });
    candidates.first().map(|(_, a)| a.ip)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Selects the external interface (upstream's main.go, LookupExtIface):
/// 1. no selectors: the owner of the public IP if one is known, else the default-route
///    interface (dual-stack: both default routes must use the same one);
/// 2. otherwise each `--iface` (name or IP) in order, then each `--iface-regex` (addresses
///    first, then names), then `--iface-can-reach`; the first that qualifies wins.
pub fn select_external_interface(
    req: &SelectionRequest<'_>,
    host: &HostNetwork,
) -> Result<ExternalInterface, IfaceError> {
    let primary = if req.enable_v4 {
        Family::V4
    } else {
        Family::V6
    };
    if req.selectors.is_empty() {
        let public = match primary {
            Family::V4 => req.public_ip.map(IpAddr::V4),
            Family::V6 => req.public_ipv6.map(IpAddr::V6),
        };
        let link = match public {
            Some(ip) => owner_of(host, ip).ok_or_else(|| {
                IfaceError::PublicIp(CandidateError::NoInterfaceWithIp(go_ip_string(ip)))
            })?,
            None => default_route_link(req, host)?,
        };
        return complete(req, link, None).map_err(IfaceError::Candidate);
    }

    let mut tried = Vec::new();
    for spec in &req.selectors.ifaces {
        let attempt = match spec.parse::<IpAddr>() {
            Ok(ip) => owner_of(host, ip)
                .ok_or_else(|| CandidateError::NoInterfaceWithIp(go_ip_string(ip)))
                .and_then(|l| complete(req, l, Some(ip))),
            Err(_) => host
                .links
                .iter()
                .find(|l| &l.name == spec)
                .ok_or_else(|| CandidateError::NoSuchName(spec.clone()))
                .and_then(|l| complete(req, l, None)),
        };
        match attempt {
            Ok(ext) => return Ok(ext),
            Err(e) => tried.push((format!("--iface={spec}"), e)),
        }
    }
    for re in &req.selectors.regexes {
        match regex_candidate(req, host, re, primary) {
            Ok(ext) => return Ok(ext),
            Err(e) => tried.push((format!("--iface-regex={}", re.as_str()), e)),
        }
    }
    if let Some(target) = req.selectors.can_reach {
        let attempt = match host.can_reach {
            None => Err(CandidateError::NoRoute(go_ip_string(target))),
            Some(hint) => match host.links.iter().find(|l| l.index == hint.ifindex) {
                None => Err(CandidateError::RouteInterfaceMissing {
                    target: go_ip_string(target),
                    ifindex: hint.ifindex,
                }),
                Some(l) => complete(req, l, hint.src),
            },
        };
        match attempt {
            Ok(ext) => return Ok(ext),
            Err(e) => tried.push((format!("--iface-can-reach={}", go_ip_string(target)), e)),
        }
    }
    Err(IfaceError::NoMatch(tried))
}

fn regex_candidate(
    req: &SelectionRequest<'_>,
    host: &HostNetwork,
    re: &regex::Regex,
    primary: Family,
) -> Result<ExternalInterface, CandidateError> {
    // Addresses first (every usable address of the primary family), then names.
    let mut last_err = None;
    for link in &host.links {
        for a in link
            .addresses
            .iter()
            .filter(|a| Family::of_ip(a.ip) == primary && !a.flags.deprecated && !a.flags.tentative)
        {
            if re.is_match(&go_ip_string(a.ip)) {
                match complete(req, link, Some(a.ip)) {
                    Ok(ext) => return Ok(ext),
                    Err(e) => last_err = Some(e),
                }
            }
        }
    }
    for link in &host.links {
        if re.is_match(&link.name) {
            match complete(req, link, None) {
                Ok(ext) => return Ok(ext),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| CandidateError::NoRegexMatch(re.as_str().to_string())))
}

fn owner_of(host: &HostNetwork, ip: IpAddr) -> Option<&LinkInfo> {
    host.links
        .iter()
        .find(|l| l.addresses.iter().any(|a| a.ip == ip))
}

fn default_route_link<'h>(
    req: &SelectionRequest<'_>,
    host: &'h HostNetwork,
) -> Result<&'h LinkInfo, IfaceError> {
    let find = |idx: u32| {
        host.links
            .iter()
            .find(|l| l.index == idx)
            .ok_or(IfaceError::DefaultRouteInterfaceMissing(idx))
    };
    let v4 = if req.enable_v4 {
        Some(find(
            host.default_v4
                .ok_or(IfaceError::NoDefaultRoute(Family::V4))?,
        )?)
    } else {
        None
    };
    let v6 = if req.enable_v6 {
        Some(find(
            host.default_v6
                .ok_or(IfaceError::NoDefaultRoute(Family::V6))?,
        )?)
    } else {
        None
    };
    match (v4, v6) {
        (Some(a), Some(b)) if a.index != b.index => Err(IfaceError::DefaultRouteMismatch {
            v4: a.name.clone(),
            v6: b.name.clone(),
        }),
        (Some(l), _) | (None, Some(l)) => Ok(l),
        (None, None) => Err(IfaceError::NoDefaultRoute(Family::V4)),
    }
}

/// Fills in addresses for `link`; `chosen` is an address already picked for its family.
fn complete(
    req: &SelectionRequest<'_>,
    link: &LinkInfo,
    chosen: Option<IpAddr>,
) -> Result<ExternalInterface, CandidateError> {
    if link.mtu == 0 {
        return Err(CandidateError::ZeroMtu(link.name.clone()));
    }
    let pick = |family: Family| -> Result<Option<IpAddr>, CandidateError> {
        let enabled = match family {
            Family::V4 => req.enable_v4,
            Family::V6 => req.enable_v6,
        };
        if !enabled {
            return Ok(None);
        }
        match chosen.filter(|ip| Family::of_ip(*ip) == family) {
            Some(ip) => Ok(Some(ip)),
            None => preferred_address(link, family)
                .map(Some)
                .ok_or(CandidateError::NoAddress {
                    iface: link.name.clone(),
                    family,
                }),
        }
    };
    let iface_addr_v4 = match pick(Family::V4)? {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let iface_addr_v6 = match pick(Family::V6)? {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let connected = link
        .addresses
        .iter()
        .filter(|a| !a.flags.deprecated && !is_link_local(a.ip))
        .filter_map(|a| IpNetwork::new(a.ip, a.prefix_len).ok().map(normalize))
        .collect();
    Ok(ExternalInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        iface_addr_v4,
        iface_addr_v6,
        ext_addr_v4: iface_addr_v4.map(|a| req.public_ip.unwrap_or(a)),
        ext_addr_v6: iface_addr_v6.map(|a| req.public_ipv6.unwrap_or(a)),
        connected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn addr(s: &str, permanent: bool) -> LinkAddress {
        let (ip, len) = s.split_once('/').unwrap();
        LinkAddress {
            ip: ip.parse().unwrap(),
            prefix_len: len.parse().unwrap(),
            flags: AddrFlags {
                permanent,
                ..AddrFlags::default()
            },
        }
    }

    fn link(name: &str, index: u32, addrs: &[&str]) -> LinkInfo {
        LinkInfo {
            name: name.into(),
            index,
            mtu: 1500,
            addresses: addrs.iter().map(|a| addr(a, true)).collect(),
        }
    }

    fn host() -> HostNetwork {
        HostNetwork {
            links: vec![
                link("lo", 1, &["127.0.0.1/8", "::1/128"]),
                link("eth0", 2, &["10.0.2.15/24", "fe80::1/64"]),
                link(
                    "eth1",
                    3,
                    &["192.168.56.11/24", "fd00:56::11/64", "fe80::2/64"],
                ),
                link("ens5", 4, &["172.31.12.123/20"]),
            ],
            default_v4: Some(2),
            default_v6: Some(3),
            can_reach: None,
        }
    }

    fn sel(ifaces: &[&str], regexes: &[&str], can_reach: Option<&str>) -> IfaceSelectors {
        IfaceSelectors {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes.iter().map(|r| Regex::new(r).unwrap()).collect(),
            can_reach: can_reach.map(|s| s.parse().unwrap()),
        }
    }

    fn req(s: &IfaceSelectors) -> SelectionRequest<'_> {
        SelectionRequest {
            selectors: s,
            public_ip: None,
            public_ipv6: None,
            enable_v4: true,
            enable_v6: false,
        }
    }

    #[test]
    fn default_route_interface() {
        let s = sel(&[], &[], None);
        let e = select_external_interface(&req(&s), &host()).unwrap();
        assert_eq!((e.name.as_str(), e.index, e.mtu), ("eth0", 2, 1500));
        assert_eq!(e.iface_addr_v4, Some("10.0.2.15".parse().unwrap()));
        assert_eq!(e.ext_addr_v4, e.iface_addr_v4);
        assert_eq!(e.iface_addr_v6, None);
        assert_eq!(
            e.connected,
            vec!["10.0.2.0/24".parse::<IpNetwork>().unwrap()]
        );
        let u = e.underlay();
        assert_eq!(u.local_v4, Some("10.0.2.15".parse().unwrap()));
        assert_eq!(u.ifindex, 2);
        assert_eq!(e.own_ips(), vec!["10.0.2.15".parse::<IpAddr>().unwrap()]);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let adv = e.advertisement(Family::V4, 1, mac).unwrap();
        assert_eq!(adv.public_ip, "10.0.2.15".parse::<IpAddr>().unwrap());
        assert_eq!(e.advertisement(Family::V6, 1, mac), None);

        let mut h = host();
        h.default_v4 = None;
        assert_eq!(
            select_external_interface(&req(&s), &h),
            Err(IfaceError::NoDefaultRoute(Family::V4))
        );
    }

    #[test]
    fn dual_stack_default_routes_must_agree() {
        let s = sel(&[], &[], None);
        let mut r = req(&s);
        r.enable_v6 = true;
        assert!(matches!(
            select_external_interface(&r, &host()),
            Err(IfaceError::DefaultRouteMismatch { .. })
        ));
        let mut h = host();
        h.default_v4 = Some(3);
        let e = select_external_interface(&r, &h).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr_v4, Some("192.168.56.11".parse().unwrap()));
        assert_eq!(
            e.iface_addr_v6,
            Some("fd00:56::11".parse().unwrap()),
            "global before link-local"
        );
        assert_eq!(e.connected.len(), 2);
        // v6 only uses the v6 default route
        r.enable_v4 = false;
        let e = select_external_interface(&r, &host()).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr_v4, None);
    }

    #[test]
    fn public_ip_picks_its_owner_and_becomes_external_address() {
        let s = sel(&[], &[], None);
        let mut r = req(&s);
        r.public_ip = Some("192.168.56.11".parse().unwrap());
        let e = select_external_interface(&r, &host()).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.ext_addr_v4, Some("192.168.56.11".parse().unwrap()));
        r.public_ip = Some("203.0.113.9".parse().unwrap());
        assert!(matches!(
            select_external_interface(&r, &host()),
            Err(IfaceError::PublicIp(CandidateError::NoInterfaceWithIp(_)))
        ));
        // with a selector, a non-local public IP is only advertised/used as local address
        let s = sel(&["eth0"], &[], None);
        let mut r = req(&s);
        r.public_ip = Some("203.0.113.9".parse().unwrap());
        let e = select_external_interface(&r, &host()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.iface_addr_v4, Some("10.0.2.15".parse().unwrap()));
        assert_eq!(e.ext_addr_v4, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn iface_names_and_ips_in_order() {
        let s = sel(&["missing", "192.168.56.11", "eth0"], &[], None);
        let e = select_external_interface(&req(&s), &host()).unwrap();
        assert_eq!(e.name, "eth1", "first qualifying entry wins");
        let s = sel(&["eth0", "eth1"], &[], None);
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth0"
        );
        // an IP selects exactly that address
        let mut h = host();
        h.links[2]
            .addresses
            .insert(0, addr("192.168.57.11/24", true));
        let s = sel(&["192.168.56.11"], &[], None);
        let e = select_external_interface(&req(&s), &h).unwrap();
        assert_eq!(e.iface_addr_v4, Some("192.168.56.11".parse().unwrap()));
    }

    #[test]
    fn iface_without_needed_family_is_skipped() {
        let s = sel(&["ens5", "eth1"], &[], None);
        let mut r = req(&s);
        r.enable_v6 = true;
        let e = select_external_interface(&r, &host()).unwrap();
        assert_eq!(e.name, "eth1", "ens5 has no IPv6 address");
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        // addresses are tried before names: eth0's 10.0.2.15 wins over the name "eth1"
        let s = sel(&[], &["eth1|^10\\.0\\."], None);
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth0"
        );
        let s = sel(&[], &["^192\\.168\\."], None);
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth1"
        );
        let s = sel(&[], &["^ens"], None);
        let e = select_external_interface(&req(&s), &host()).unwrap();
        assert_eq!(e.name, "ens5");
        assert_eq!(e.iface_addr_v4, Some("172.31.12.123".parse().unwrap()));
        // --iface entries are tried before any regex
        let s = sel(&["eth1"], &["^ens"], None);
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth1"
        );
        // regexes in order
        let s = sel(&[], &["^nomatch$", "^eth1$"], None);
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth1"
        );
    }

    #[test]
    fn can_reach_uses_the_route() {
        let s = sel(&[], &[], Some("192.168.56.1"));
        let mut h = host();
        h.can_reach = Some(RouteHint {
            ifindex: 3,
            src: Some("192.168.56.11".parse().unwrap()),
        });
        let e = select_external_interface(&req(&s), &h).unwrap();
        assert_eq!(e.name, "eth1");
        assert_eq!(e.iface_addr_v4, Some("192.168.56.11".parse().unwrap()));
        h.can_reach = Some(RouteHint {
            ifindex: 4,
            src: None,
        });
        assert_eq!(
            select_external_interface(&req(&s), &h).unwrap().name,
            "ens5"
        );
        h.can_reach = None;
        assert!(matches!(
            select_external_interface(&req(&s), &h),
            Err(IfaceError::NoMatch(_))
        ));
        // tried last
        let s = sel(&["eth0"], &[], Some("192.168.56.1"));
        assert_eq!(
            select_external_interface(&req(&s), &host()).unwrap().name,
            "eth0"
        );
    }

    #[test]
    fn no_match_error_lists_attempts() {
        let s = sel(&["nope", "10.9.9.9"], &["^zzz"], Some("1.1.1.1"));
        let e = select_external_interface(&req(&s), &host()).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(
            "Failed to find interface to use that matches the interfaces and/or regexes provided: "
        ));
        for part in [
            "--iface=nope",
            "--iface=10.9.9.9",
            "--iface-regex=^zzz",
            "--iface-can-reach=1.1.1.1",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }

    #[test]
    fn zero_mtu_is_refused() {
        let mut h = host();
        h.links[1].mtu = 0;
        let s = sel(&["eth0"], &[], None);
        let e = select_external_interface(&req(&s), &h).unwrap_err();
        assert!(
            e.to_string().contains("failed to determine MTU for eth0"),
            "{e}"
        );
    }

    #[test]
    fn address_preference_order() {
        let mut l = link("x", 9, &[]);
        let flags = |permanent, temporary, deprecated, tentative| AddrFlags {
            permanent,
            temporary,
            deprecated,
            tentative,
        };
        let a = |ip: &str, f| LinkAddress {
            ip: ip.parse().unwrap(),
            prefix_len: 64,
            flags: f,
        };
        l.addresses = vec![
            a("fe80::1", flags(true, false, false, false)),
            a("2001:db8::dead", flags(false, false, true, false)),
            a("2001:db8::7", flags(false, true, false, false)),
            a("2001:db8::8", flags(false, false, false, true)),
            a("2001:db8::9", flags(false, false, false, false)),
            a("2001:db8::1", flags(true, false, false, false)),
        ];
        assert_eq!(
            preferred_address(&l, Family::V6),
            Some("2001:db8::1".parse().unwrap())
        );
        l.addresses.pop();
        assert_eq!(
            preferred_address(&l, Family::V6),
            Some("2001:db8::9".parse().unwrap())
        );
        l.addresses.pop();
        l.addresses.pop();
        assert_eq!(
            preferred_address(&l, Family::V6),
            Some("2001:db8::7".parse().unwrap())
        );
        l.addresses.pop();
        l.addresses.pop();
        assert_eq!(
            preferred_address(&l, Family::V6),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(preferred_address(&l, Family::V4), None);
        let l4 = LinkInfo {
            addresses: vec![
                addr("169.254.1.1/16", true),
                addr("10.1.1.1/24", false),
                addr("10.1.1.2/24", true),
            ],
            ..link("y", 10, &[])
        };
        assert_eq!(
            preferred_address(&l4, Family::V4),
            Some("10.1.1.2".parse().unwrap())
        );
    }
}
