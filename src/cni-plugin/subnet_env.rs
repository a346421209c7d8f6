//! `subnet.env`, the file flanneld writes for the CNI plugin, parsed the way upstream's plugin
//! does (`loadFlannelSubnetEnv`): v4, v6 or dual stack.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("line {line}: {key}: invalid CIDR {value:?}")]
    BadCidr {
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("line {line}: {key}: {value:?} is not an IPv{family} CIDR")]
    WrongFamily {
        line: usize,
        key: &'static str,
        value: String,
        family: u8,
    },
    #[error("line {line}: FLANNEL_MTU: invalid MTU {value:?}")]
    BadMtu { line: usize, value: String },
    #[error("missing {0}")]
    Missing(String),
}

/// The contents of subnet.env. Networks are the cluster-wide pod networks (a comma-separated
/// list upstream, deduplicated); subnets are this node's pod subnets, stored as their
/// network address (flanneld writes the first host address, e.g. `10.244.1.1/24`, and the
/// plugin uses `10.244.1.0/24`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Vec<Ipv4Network>,
    pub subnet: Option<Ipv4Network>,
    pub ipv6_network: Vec<Ipv6Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// Parses `a.b.c.d/len` (or the v6 form) like Go's `net.ParseCIDR`: the prefix is required.
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    IpNetwork::new(addr, len).ok()
}

/// The network (host bits cleared) of a CIDR.
pub fn network_of(n: IpNetwork) -> IpNetwork {
    // The prefix is valid for the family, so rebuilding cannot fail.
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

impl SubnetEnv {
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut network: Option<Vec<Ipv4Network>> = None;
        let mut ipv6_network: Option<Vec<Ipv6Network>> = None;
        let mut subnet = None;
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;

        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            // Upstream does not trim; tolerating CR/blanks is harmless and saves a support case.
            let Some((key, value)) = raw.trim().split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key {
                "FLANNEL_NETWORK" => {
                    let mut list = Vec::new();
                    for item in value.split(',') {
                        let n = v4(
                            parse(line, "FLANNEL_NETWORK", item)?,
                            line,
                            "FLANNEL_NETWORK",
                        )?;
                        if !list.contains(&n) {
                            list.push(n);
                        }
                    }
                    network = Some(list);
                }
                "FLANNEL_IPV6_NETWORK" => {
                    let mut list = Vec::new();
                    for item in value.split(',') {
                        let n = v6(
                            parse(line, "FLANNEL_IPV6_NETWORK", item)?,
                            line,
                            "FLANNEL_IPV6_NETWORK",
                        )?;
                        if !list.contains(&n) {
                            list.push(n);
                        }
                    }
                    ipv6_network = Some(list);
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(v4(
                        parse(line, "FLANNEL_SUBNET", value)?,
                        line,
                        "FLANNEL_SUBNET",
                    )?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    ipv6_subnet = Some(v6(
                        parse(line, "FLANNEL_IPV6_SUBNET", value)?,
                        line,
                        "FLANNEL_IPV6_SUBNET",
                    )?)
                }
                "FLANNEL_MTU" => {
                    mtu = Some(value.parse::<u32>().map_err(|_| SubnetEnvError::BadMtu {
                        line,
                        value: value.to_string(),
                    })?)
                }
                "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
                _ => {}
            }
        }

        let network = network.unwrap_or_default();
        let ipv6_network = ipv6_network.unwrap_or_default();
        let mut missing = Vec::new();
        if network.is_empty() && ipv6_network.is_empty() {
            missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
        }
        if subnet.is_none() && ipv6_subnet.is_none() {
            missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        match (mtu, ipmasq) {
            (Some(mtu), Some(ipmasq)) if missing.is_empty() => Ok(SubnetEnv {
                network,
                subnet,
                ipv6_network,
                ipv6_subnet,
                mtu,
                ipmasq,
            }),
            _ => Err(SubnetEnvError::Missing(missing.join(", "))),
        }
    }
}

fn parse(line: usize, key: &'static str, value: &str) -> Result<IpNetwork, SubnetEnvError> {
    parse_cidr(value.trim())
        .map(network_of)
        .ok_or_else(|| SubnetEnvError::BadCidr {
            line,
            key,
            value: value.to_string(),
        })
}

fn v4(n: IpNetwork, line: usize, key: &'static str) -> Result<Ipv4Network, SubnetEnvError> {
    match n {
        IpNetwork::V4(n) => Ok(n),
        IpNetwork::V6(_) => Err(SubnetEnvError::WrongFamily {
            line,
            key,
            value: n.to_string(),
            family: 4,
        }),
    }
}

fn v6(n: IpNetwork, line: usize, key: &'static str) -> Result<Ipv6Network, SubnetEnvError> {
    match n {
        IpNetwork::V6(n) => Ok(n),
        IpNetwork::V4(_) => Err(SubnetEnvError::WrongFamily {
            line,
            key,
            value: n.to_string(),
            family: 6,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ipv4_file_flanneld_writes() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(env.network, vec!["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(env.subnet, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(env.subnet.unwrap().to_string(), "10.244.1.0/24");
        assert!(env.ipv6_network.is_empty());
        assert_eq!(env.ipv6_subnet, None);
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
    }

    #[test]
    fn parses_dual_stack_and_dedups_network_lists() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\n\
             FLANNEL_SUBNET=10.244.7.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
             FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n\
             FLANNEL_MTU=8950\n\
             FLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(env.network.len(), 2);
        assert_eq!(
            env.ipv6_subnet.unwrap().to_string(),
            "fd00:10:244:7::/64",
            "v6 subnet is the network, not the first host"
        );
        assert_eq!(env.ipv6_network[0].to_string(), "fd00:10:244::/56");
        assert!(!env.ipmasq);
        assert_eq!(env.mtu, 8950);
    }

    #[test]
    fn parses_ipv6_only() {
        let env = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true",
        )
        .unwrap();
        assert!(env.network.is_empty());
        assert!(env.subnet.is_none());
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "fd00:0:0:3::/64");
    }

    #[test]
    fn ipmasq_is_true_only_for_the_exact_word() {
        for (v, want) in [("true", true), ("TRUE", false), ("1", false), ("", false)] {
            let env = SubnetEnv::parse(&format!(
                "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.0.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ={v}\n"
            ))
            .unwrap();
            assert_eq!(env.ipmasq, want, "{v:?}");
        }
    }

    #[test]
    fn names_every_missing_key() {
        let err = SubnetEnv::parse("FLANNEL_MTU=1450\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
        );
        let err = SubnetEnv::parse("").unwrap_err();
        assert!(err.to_string().contains("FLANNEL_MTU"));
    }

    #[test]
    fn rejects_bad_values_with_the_line() {
        let err = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0\n").unwrap_err();
        assert!(
            matches!(err, SubnetEnvError::BadCidr { line: 1, .. }),
            "{err}"
        );
        let err = SubnetEnv::parse("\nFLANNEL_MTU=big\n").unwrap_err();
        assert!(
            matches!(err, SubnetEnvError::BadMtu { line: 2, .. }),
            "{err}"
        );
        let err = SubnetEnv::parse("FLANNEL_SUBNET=fd00::1/64\n").unwrap_err();
        assert!(matches!(err, SubnetEnvError::WrongFamily { .. }), "{err}");
        let err = SubnetEnv::parse("FLANNEL_NETWORK=\n").unwrap_err();
        assert!(matches!(err, SubnetEnvError::BadCidr { .. }), "{err}");
    }

    #[test]
    fn tolerates_crlf_comments_and_unknown_keys() {
        let env = SubnetEnv::parse(
            "# written by flanneld\r\nFLANNEL_NETWORK=10.244.0.0/16\r\nFLANNEL_SUBNET=10.244.1.1/24\r\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=true\r\nOTHER=x\r\n",
        )
        .unwrap();
        assert_eq!(env.mtu, 1450);
    }

    #[test]
    fn cidr_parser_needs_a_prefix() {
        assert!(parse_cidr("10.0.0.1").is_none());
        assert!(parse_cidr("10.0.0.1/33").is_none());
        assert!(parse_cidr("10.0.0.1/+8").is_none());
        assert_eq!(parse_cidr("10.0.0.1/8").unwrap().to_string(), "10.0.0.1/8");
        assert_eq!(
            network_of(parse_cidr("10.0.0.1/8").unwrap()).to_string(),
            "10.0.0.0/8"
        );
    }
}
