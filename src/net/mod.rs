//! Value types every layer shares — the netlink layer, the daemon, the CNI plugin and
//! subnet.env alike: the address family (and a per-family pair), the MAC address, and CIDRs
//! as Go parses and prints them. Pure: no I/O.

mod cidr;
mod excerpt;
mod family;
mod mac;

pub use cidr::{
    CidrError, first_host, first_host_v4, first_host_v6, go_ip_string, go_net_string, is_within,
    network_address, normalize, normalize_v4, normalize_v6, overlaps, parse_cidr, parse_cidr_addr,
    parse_cidr_v4, parse_cidr_v6,
};
pub use excerpt::{EXCERPT_BYTES, Excerpt};
pub use family::{Family, PerFamily};
pub use mac::{MacAddr, MacError};
