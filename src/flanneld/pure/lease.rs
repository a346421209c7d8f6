//! The pod subnets of a node (its lease), parsed once from `spec.podCIDR(s)`.

use std::fmt;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use thiserror::Error;

use crate::net::{Family, parse_cidr};

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
    use std::net::Ipv4Addr;

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
