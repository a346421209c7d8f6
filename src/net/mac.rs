//! The MAC address: one type for a VTEP's advertised address, a kernel neighbour's or FDB
//! entry's link-layer address and a bridge's address.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use thiserror::Error;

use super::Excerpt;

/// A 48-bit Ethernet MAC address. Displays (and debugs) as lowercase, colon-separated hex
/// (`0e:00:00:00:01:01`), Go's `HardwareAddr.String()` and `ip link`'s form alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a text is not a usable MAC address (quoting a bounded [`Excerpt`] of it: the text may be
/// a peer's annotation).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MacError {
    /// Not in the kernel's form ([`FromStr`]).
    #[error(
        "invalid MAC address {0:?}: expected six colon-separated hex octets like 0e:00:00:00:01:01"
    )]
    NotColonHex(Excerpt),
    /// Not in any form Go's `net.ParseMAC` accepts ([`MacAddr::parse_go`]).
    #[error("malformed MAC address {0:?}")]
    Malformed(Excerpt),
    /// A Go form, but not 48 bits long.
    #[error("MAC address {0:?} is not 48 bits long")]
    NotEui48(Excerpt),
}

impl MacError {
    /// The text that was refused (its first [`super::EXCERPT_BYTES`]).
    pub fn input(&self) -> &Excerpt {
        match self {
            MacError::NotColonHex(s) | MacError::Malformed(s) | MacError::NotEui48(s) => s,
        }
    }
}

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address in a 6-byte slice, `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

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
    pub fn random_local<R: Rng + ?Sized>(rng: &mut R) -> MacAddr {
        let mut octets = [0u8; 6];
        rng.fill(&mut octets[..]);
        octets[0] = (octets[0] & !0x01) | 0x02;
        let mac = MacAddr(octets);
        if mac.is_zero() {
            // Unreachable given the bit set above; keeps the invariant explicit.
            MacAddr([0x02, 0, 0, 0, 0, 1])
        } else {
            mac
        }
    }

    /// Parses every form Go's `net.ParseMAC` accepts for a 48-bit address (what a peer's
    /// `VtepMAC` annotation may hold): `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`,
    /// `aabb.ccdd.eeff` (hex in any case). 64-bit and 20-octet forms parse in Go but are
    /// refused here as [`MacError::NotEui48`].
    pub fn parse_go(text: &str) -> Result<MacAddr, MacError> {
        let bytes = parse_go_mac(text).ok_or_else(|| MacError::Malformed(text.into()))?;
        let octets: [u8; 6] = bytes
            .try_into()
            .map_err(|_| MacError::NotEui48(text.into()))?;
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Accepts `aa:bb:cc:dd:ee:ff` in either case (the form `ip link` prints).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError::NotColonHex(s.into());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for octet in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mac_display_is_lowercase_colon_hex() {
        let mac = MacAddr([0x0e, 0xAB, 0, 1, 0xff, 0x10]);
        assert_eq!(mac.to_string(), "0e:ab:00:01:ff:10");
        assert_eq!(format!("{mac:?}"), "0e:ab:00:01:ff:10");
    }
    #[test]
    fn mac_parses_both_cases_and_round_trips() {
        let mac: MacAddr = "0E:ab:00:01:FF:10".parse().unwrap();
        assert_eq!(mac, MacAddr([0x0e, 0xab, 0, 1, 0xff, 0x10]));
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
    }
    #[test]
    fn mac_rejects_malformed_input() {
        for bad in [
            "",
            "0e:ab:00:01:ff",
            "0e:ab:00:01:ff:10:22",
            "0e-ab-00-01-ff-10",
            "e:ab:00:01:ff:10",
            "0e:ab:00:01:ff:1g",
            "0e:ab:00:01:ff:+1",
            "0eab0001ff10",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err.input().as_str(), bad);
            assert!(err.to_string().contains("invalid MAC address"));
        }
    }
    #[test]
    fn mac_serde_as_string() {
        let mac = MacAddr([2, 0x4e, 0, 0, 0x12, 0x34]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:4e:00:00:12:34\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
    #[test]
    fn mac_from_slice_needs_six_bytes() {
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
        assert!(MacAddr::ZERO.is_zero());
    }

    #[test]
    fn mac_parse_accepts_go_forms() {
        let want = MacAddr([0x12, 0xc6, 0x65, 0x89, 0xb4, 0xe3]);
        for text in [
            "12:c6:65:89:b4:e3",
            "12:C6:65:89:B4:E3",
            "12-c6-65-89-b4-e3",
            "12c6.6589.b4e3",
        ] {
            assert_eq!(MacAddr::parse_go(text).unwrap(), want, "{text}");
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
                matches!(MacAddr::parse_go(bad), Err(MacError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            MacAddr::parse_go("12:c6:65:89:b4:e3:00:01"),
            Err(MacError::NotEui48(_))
        ));
        assert!(matches!(
            MacAddr::parse_go("0000.0000.fe80.0000.0000.0000.0200.5e10.0000.0001"),
            Err(MacError::NotEui48(_))
        ));
    }

    #[test]
    fn mac_classification_and_random() {
        assert!(MacAddr([0; 6]).is_zero());
        assert!(MacAddr([0xff; 6]).is_broadcast());
        assert!(MacAddr([0xff; 6]).is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_unicast());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let m = MacAddr::random_local(&mut rng);
            assert!(m.is_unicast() && m.is_locally_administered(), "{m}");
            seen.insert(m);
        }
        assert!(seen.len() > 990, "random MACs must differ");
    }
}
