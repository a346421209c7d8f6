//! The address family, and a pair of values, one per family.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

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

/// One value per address family (`v4`, `v6`): what a dual-stack node has twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PerFamily<T> {
    pub v4: T,
    pub v6: T,
}

impl<T> PerFamily<T> {
    pub fn get(&self, family: Family) -> &T {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn get_mut(&mut self, family: Family) -> &mut T {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Both values with their family, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)].into_iter()
    }

    pub fn map<U>(self, mut f: impl FnMut(Family, T) -> U) -> PerFamily<U> {
        PerFamily {
            v4: f(Family::V4, self.v4),
            v6: f(Family::V6, self.v6),
        }
    }
}

impl<T> PerFamily<Option<T>> {
    /// The families that have a value, with it, IPv4 first.
    pub fn present(&self) -> impl Iterator<Item = (Family, &T)> {
        self.iter().filter_map(|(f, v)| v.as_ref().map(|v| (f, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_family_indexes_maps_and_lists_the_present_families() {
        let mut pair = PerFamily {
            v4: Some(4),
            v6: None,
        };
        assert_eq!(*pair.get(Family::V4), Some(4));
        *pair.get_mut(Family::V6) = Some(6);
        assert_eq!(
            pair.present().collect::<Vec<_>>(),
            [(Family::V4, &4), (Family::V6, &6)]
        );
        let doubled = pair.map(|_, v| v.map(|v| v * 2));
        assert_eq!(
            doubled,
            PerFamily {
                v4: Some(8),
                v6: Some(12)
            }
        );
        assert_eq!(Family::of_ip("fd00::1".parse().unwrap()), Family::V6);
        assert_eq!(Family::V6.host_prefix(), 128);
    }
}
