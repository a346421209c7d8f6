//! CIDRs as Go parses and prints them (flannel's annotations, net-conf.json and subnet.env are
//! Go's text): strict parsing, normalising, overlap, and Go's textual forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use thiserror::Error;

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}")]
    Invalid(String),
    #[error("{0:?} is not an IPv4 CIDR")]
    NotIpv4(String),
    #[error("{0:?} is not an IPv6 CIDR")]
    NotIpv6(String),
}

/// Parses `addr/len` like Go's `net.ParseCIDR`: the prefix length is mandatory and decimal,
/// host bits are dropped (the result's `ip()` is the network address).
pub fn parse_cidr(text: &str) -> Result<IpNetwork, CidrError> {
    parse_cidr_addr(text).map(normalize)
}

/// Like [`parse_cidr`] but keeps the address as written (Go's first `ParseCIDR` result with
/// the mask): `10.244.1.1/24` stays `10.244.1.1/24`.
pub fn parse_cidr_addr(text: &str) -> Result<IpNetwork, CidrError> {
    let invalid = || CidrError::Invalid(text.to_string());
    let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
    // Go's dtoi: ASCII digits only, at least one, no sign; leading zeros are fine.
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let len: u8 = len.parse().map_err(|_| invalid())?;
    let ip = IpAddr::from_str(addr).map_err(|_| invalid())?;
    IpNetwork::new(ip, len).map_err(|_| invalid())
}

/// Go-compatible IPv4 CIDR parse (see [`parse_cidr`]).
pub fn parse_cidr_v4(text: &str) -> Result<Ipv4Network, CidrError> {
    match parse_cidr(text)? {
        IpNetwork::V4(n) => Ok(n),
        IpNetwork::V6(_) => Err(CidrError::NotIpv4(text.to_string())),
    }
}

/// Go-compatible IPv6 CIDR parse (see [`parse_cidr`]).
pub fn parse_cidr_v6(text: &str) -> Result<Ipv6Network, CidrError> {
    match parse_cidr(text)? {
        IpNetwork::V6(n) => Ok(n),
        IpNetwork::V4(_) => Err(CidrError::NotIpv6(text.to_string())),
    }
}

/// Drops host bits: `10.244.1.7/24` → `10.244.1.0/24`.
pub fn normalize(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => IpNetwork::V4(normalize_v4(n)),
        IpNetwork::V6(n) => IpNetwork::V6(normalize_v6(n)),
    }
}

pub fn normalize_v4(net: Ipv4Network) -> Ipv4Network {
    // prefix is already valid, so new_checked cannot fail; fall back to the input to stay total.
    Ipv4Network::new_checked(net.network(), net.prefix()).unwrap_or(net)
}

pub fn normalize_v6(net: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new_checked(net.network(), net.prefix()).unwrap_or(net)
}

/// True when the two networks share at least one address (equal, nested or partial).
/// Uses network/broadcast bounds, so host bits in either input do not matter.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => {
            a.network() <= b.broadcast() && b.network() <= a.broadcast()
        }
        (IpNetwork::V6(a), IpNetwork::V6(b)) => {
            a.network() <= b.broadcast() && b.network() <= a.broadcast()
        }
        _ => false,
    }
}

/// True when `inner` lies completely inside `outer` (equality included).
pub fn is_within(inner: IpNetwork, outer: IpNetwork) -> bool {
    match (inner, outer) {
        (IpNetwork::V4(i), IpNetwork::V4(o)) => {
            o.network() <= i.network() && i.broadcast() <= o.broadcast()
        }
        (IpNetwork::V6(i), IpNetwork::V6(o)) => {
            o.network() <= i.network() && i.broadcast() <= o.broadcast()
        }
        _ => false,
    }
}

/// The network address of `net` (`10.244.2.0` for `10.244.2.0/24`): the peer gateway address
/// flannel routes through, and the address of our own VXLAN device.
pub fn network_address(net: IpNetwork) -> IpAddr {
    net.network()
}

/// `net`'s network address plus one with the same prefix (`10.244.1.1/24`), as flannel writes
/// `FLANNEL_SUBNET`. Wraps like Go's byte arithmetic on absurd `/32` inputs.
pub fn first_host(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => IpNetwork::V4(first_host_v4(n)),
        IpNetwork::V6(n) => IpNetwork::V6(first_host_v6(n)),
    }
}

pub fn first_host_v4(net: Ipv4Network) -> Ipv4Network {
    let ip = Ipv4Addr::from(u32::from(net.network()).wrapping_add(1));
    Ipv4Network::new_checked(ip, net.prefix()).unwrap_or(net)
}

pub fn first_host_v6(net: Ipv6Network) -> Ipv6Network {
    let ip = Ipv6Addr::from(u128::from(net.network()).wrapping_add(1));
    Ipv6Network::new_checked(ip, net.prefix()).unwrap_or(net)
}

/// Go's `net.IP.String()`: IPv4 dotted quad; IPv6 in RFC 5952 form, except that an IPv4-mapped
/// IPv6 address prints as the bare dotted quad.
pub fn go_ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
    }
}

/// Go's `IPNet.String()` for a network: `<go ip>/<len>`.
pub fn go_net_string(net: IpNetwork) -> String {
    format!("{}/{}", go_ip_string(net.ip()), net.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_is_go_strict_and_masks_host_bits() {
        assert_eq!(parse_cidr("10.244.1.7/24").unwrap(), net("10.244.1.0/24"));
        assert_eq!(parse_cidr("10.244.0.0/016").unwrap(), net("10.244.0.0/16"));
        assert_eq!(parse_cidr("fd00::5/64").unwrap(), net("fd00::/64"));
        assert_eq!(
            parse_cidr_addr("10.244.1.7/24").unwrap().to_string(),
            "10.244.1.7/24",
            "the address as written"
        );
        for bad in [
            "10.244.0.0",
            "10.244.0.0/",
            "10.244.0.0/33",
            "10.244.0.0/+8",
            "10.244.0.0/-1",
            "10.244.0.0/255.255.0.0",
            "010.244.0.0/16",
            "fd00::/129",
            "",
            "/",
            "garbage",
            "10.244.0.0/16 ",
            " 10.244.0.0/16",
            "10.244.0.0/1000",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} must be refused");
            assert!(parse_cidr_addr(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            parse_cidr_v4("fd00::/64"),
            Err(CidrError::NotIpv4("fd00::/64".into()))
        );
        assert_eq!(
            parse_cidr_v6("10.0.0.0/8"),
            Err(CidrError::NotIpv6("10.0.0.0/8".into()))
        );
        assert_eq!(
            parse_cidr("10.244.0.0/33").unwrap_err().to_string(),
            "invalid CIDR \"10.244.0.0/33\""
        );
    }

    #[test]
    fn overlap_and_containment() {
        let a = net("10.244.0.0/16");
        assert!(overlaps(a, net("10.244.5.0/24")));
        assert!(overlaps(net("10.244.5.0/24"), a));
        assert!(overlaps(a, a));
        assert!(!overlaps(a, net("10.245.0.0/24")));
        assert!(overlaps(net("10.244.1.0/24"), net("10.244.1.128/25")));
        assert!(!overlaps(net("10.244.1.0/25"), net("10.244.1.128/25")));
        assert!(!overlaps(a, net("fd00::/8")));
        assert!(is_within(net("10.244.5.0/24"), a));
        assert!(is_within(a, a));
        assert!(!is_within(a, net("10.244.5.0/24")));
        assert!(!is_within(net("10.243.0.0/24"), a));
        assert!(is_within(net("fd00:1::/64"), net("fd00::/16")));
        assert!(!is_within(net("fd00:1::/64"), a));
        // ipnetwork keeps host bits; our helpers must not care.
        let with_host: IpNetwork = "10.244.1.9/24".parse().unwrap();
        assert!(is_within(with_host, a));
        assert!(overlaps(with_host, net("10.244.1.0/30")));
    }

    #[test]
    fn first_host_matches_flannel_subnet_text() {
        assert_eq!(
            first_host(net("10.244.1.0/24")).to_string(),
            "10.244.1.1/24"
        );
        assert_eq!(
            go_net_string(first_host(net("2001:cafe:42::/64"))),
            "2001:cafe:42::1/64"
        );
        assert_eq!(
            first_host(net("255.255.255.255/32")).to_string(),
            "0.0.0.0/32"
        );
    }

    #[test]
    fn go_ip_strings() {
        let cases = [
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
            ("::1", "::1"),
            ("fe80::1", "fe80::1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("2001:DB8::ABCD", "2001:db8::abcd"),
            ("10.0.0.1", "10.0.0.1"),
        ];
        for (input, want) in cases {
            assert_eq!(go_ip_string(input.parse().unwrap()), want, "{input}");
        }
    }
}
