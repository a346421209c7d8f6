//! Small value types shared by the daemon's pure core: Go-compatible CIDR parsing, the VTEP MAC,
//! the pod subnets of a node, and Go's textual form of IP addresses.
//!
//! Everything here parses strictly once at the boundary; the rest of the core works on the typed
//! values and never re-parses strings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use rand::Rng;
use thiserror::Error;

/// Address family of a VXLAN device, a peer slot or a kernel entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of_ip(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: IpNetwork) -> Family {
        Family::of_ip(net.ip())
    }

    /// Host prefix length of the family (32 or 128).
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

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

/// A 48-bit VXLAN tunnel endpoint MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VtepMac(pub [u8; 6]);

/// Why a text is not a usable VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MacError {
    #[error("malformed MAC address {0:?}")]
    Malformed(String),
    #[error("MAC address {0:?} is not 48 bits long")]
    NotEui48(String),
}

impl VtepMac {
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    pub fn is_broadcast(self) -> bool {
        self.0 == [0xff; 6]
    }

    /// Group bit set (this includes broadcast).
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_locally_administered(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// A usable unicast endpoint address: not zero, not multicast/broadcast.
    pub fn is_unicast(self) -> bool {
        !self.is_zero() && !self.is_multicast()
    }

    /// A random locally administered unicast MAC, like flannel ≥ 0.15.1 generates before creating
    /// the device (so udev's MACAddressPolicy leaves it alone).
    pub fn random_local<R: Rng + ?Sized>(rng: &mut R) -> VtepMac {
        let mut octets = [0u8; 6];
        rng.fill(&mut octets[..]);
        octets[0] = (octets[0] & !0x01) | 0x02;
        let mac = VtepMac(octets);
        if mac.is_zero() {
            // Unreachable given the bit set above; keeps the invariant explicit.
            VtepMac([0x02, 0, 0, 0, 0, 1])
        } else {
            mac
        }
    }

    /// Parses every form Go's `net.ParseMAC` accepts for a 48-bit address:
    /// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` (hex in any case).
    /// 64-bit and 20-octet forms parse in Go but are refused here as [`MacError::NotEui48`].
    pub fn parse(text: &str) -> Result<VtepMac, MacError> {
        let bytes = parse_go_mac(text).ok_or_else(|| MacError::Malformed(text.to_string()))?;
        let octets: [u8; 6] = bytes
            .try_into()
            .map_err(|_| MacError::NotEui48(text.to_string()))?;
        Ok(VtepMac(octets))
    }
}

impl fmt::Display for VtepMac {
    /// Go's `HardwareAddr.String()`: lowercase, colon separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for VtepMac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VtepMac::parse(s)
    }
}

/// Go `net.ParseMAC` grammar: 6, 8 or 20 octets as colon/hyphen groups of two hex digits, or
/// dot-separated groups of four hex digits.
fn parse_go_mac(text: &str) -> Option<Vec<u8>> {
    let valid_len = |n: usize| n == 6 || n == 8 || n == 20;
    let hex2 = |g: &str| -> Option<u8> {
        if g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()) {
            u8::from_str_radix(g, 16).ok()
        } else {
            None
        }
    };
    if text.len() < 14 {
        return None;
    }
    let sep = text.as_bytes()[2];
    if sep == b':' || sep == b'-' {
        let groups: Vec<&str> = text.split(sep as char).collect();
        if !valid_len(groups.len()) {
            return None;
        }
        groups.into_iter().map(hex2).collect()
    } else if text.as_bytes()[4] == b'.' {
        let groups: Vec<&str> = text.split('.').collect();
        if !valid_len(groups.len() * 2) {
            return None;
        }
        let mut out = Vec::with_capacity(groups.len() * 2);
        for g in groups {
            if g.len() != 4 || !g.is_ascii() {
                return None;
            }
            out.push(hex2(&g[..2])?);
            out.push(hex2(&g[2..])?);
        }
        Some(out)
    } else {
        None
    }
}

/// Why a node's pod CIDR assignment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PodCidrError {
    #[error("pod cidr not assigned")]
    NotAssigned,
    #[error("invalid podCIDR {0:?}")]
    Invalid(String),
    #[error("more than two podCIDRs assigned: {0:?}")]
    TooMany(Vec<String>),
    #[error("two {0} podCIDRs assigned: {1:?}")]
    DuplicateFamily(Family, Vec<String>),
}

/// The pod subnets assigned to one node (its "lease"): first IPv4 and first IPv6 podCIDR,
/// normalised to their network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PodSubnets {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

impl PodSubnets {
    /// Builds the lease like flannel's kube subnet manager: `spec.podCIDRs` (1–2 entries, one per
    /// family) if non-empty, else `spec.podCIDR`.
    pub fn from_pod_cidrs<S: AsRef<str>>(cidrs: &[S]) -> Result<PodSubnets, PodCidrError> {
        let raw: Vec<String> = cidrs.iter().map(|c| c.as_ref().to_string()).collect();
        if raw.is_empty() || raw.iter().all(|c| c.is_empty()) {
            return Err(PodCidrError::NotAssigned);
        }
        if raw.len() > 2 {
            return Err(PodCidrError::TooMany(raw));
        }
        let mut out = PodSubnets::default();
        for text in &raw {
            match parse_cidr(text).map_err(|_| PodCidrError::Invalid(text.clone()))? {
                IpNetwork::V4(n) => {
                    if out.v4.replace(n).is_some() {
                        return Err(PodCidrError::DuplicateFamily(Family::V4, raw));
                    }
                }
                IpNetwork::V6(n) => {
                    if out.v6.replace(n).is_some() {
                        return Err(PodCidrError::DuplicateFamily(Family::V6, raw));
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn get(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V4 => self.v4.map(IpNetwork::V4),
            Family::V6 => self.v6.map(IpNetwork::V6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

impl fmt::Display for PodSubnets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a},{b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("<none>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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

    #[test]
    fn mac_parse_accepts_go_forms() {
        let want = VtepMac([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]);
        for text in [
            "12:c6:65:89:b4:e3",
            "12:C6:65:89:B4:E3",
            "12-c6-65-89-b4-e3",
            "12c6.6589.b4e3",
        ] {
            assert_eq!(VtepMac::parse(text).unwrap(), want, "{text}");
        }
        assert_eq!(want.to_string(), "12:c6:65:89:b4:e3");
        for bad in [
            "",
            "12:c6:65:89:b4",
            "12:c6:65:89:b4:e3:",
            "12:c6:65:89:b4:g3",
            "12:c6-65:89:b4:e3",
            "1:c6:65:89:b4:e3",
            "12c6.6589.b4e",
            "12c66589b4e3",
            "12:c6:65:89:b4:e3 ",
            "ü2:c6:65:89:b4:e3",
            "12c6.6589.b4é3",
        ] {
            assert!(
                matches!(VtepMac::parse(bad), Err(MacError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            VtepMac::parse("12:c6:65:89:b4:e3:00:01"),
            Err(MacError::NotEui48(_))
        ));
        assert!(matches!(
            VtepMac::parse("0000.0000.fe80.0000.0000.0000.0200.5e10.0000.0001"),
            Err(MacError::NotEui48(_))
        ));
    }

    #[test]
    fn mac_classification_and_random() {
        assert!(VtepMac([0; 6]).is_zero());
        assert!(VtepMac([0xff; 6]).is_broadcast());
        assert!(VtepMac([0xff; 6]).is_multicast());
        assert!(VtepMac([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(VtepMac([0x02, 0, 0, 0, 0, 1]).is_unicast());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let m = VtepMac::random_local(&mut rng);
            assert!(m.is_unicast() && m.is_locally_administered(), "{m}");
            seen.insert(m);
        }
        assert!(seen.len() > 990, "random MACs must differ");
    }

    #[test]
    fn pod_subnets_from_cidrs() {
        let s = PodSubnets::from_pod_cidrs(&["10.244.1.0/24", "fd00:1::/64"]).unwrap();
        assert_eq!(s.v4, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(s.v6, Some("fd00:1::/64".parse().unwrap()));
        let s = PodSubnets::from_pod_cidrs(&["fd00:1::/64"]).unwrap();
        assert_eq!(s.v4, None);
        assert_eq!(s.to_string(), "fd00:1::/64");
        assert_eq!(
            PodSubnets::from_pod_cidrs::<&str>(&[]),
            Err(PodCidrError::NotAssigned)
        );
        assert_eq!(
            PodSubnets::from_pod_cidrs(&[""]),
            Err(PodCidrError::NotAssigned)
        );
        assert!(matches!(
            PodSubnets::from_pod_cidrs(&["a", "b", "c"]),
            Err(PodCidrError::TooMany(_))
        ));
        assert!(matches!(
            PodSubnets::from_pod_cidrs(&["10.0.0.0/24", "10.0.1.0/24"]),
            Err(PodCidrError::DuplicateFamily(Family::V4, _))
        ));
        assert_eq!(
            PodSubnets::from_pod_cidrs(&["10.0.0.0/33"]),
            Err(PodCidrError::Invalid("10.0.0.0/33".into()))
        );
        // host bits are dropped like Go's ParseCIDR
        let s = PodSubnets::from_pod_cidrs(&["10.244.1.5/24"]).unwrap();
        assert_eq!(s.v4.unwrap().ip(), Ipv4Addr::new(10, 244, 1, 0));
    }
}
