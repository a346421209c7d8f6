//! IPv4/IPv6 addresses.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::AddressMessageBuilder;

use super::batch::Op;
use super::error::NetlinkError;
use super::{Netlink, address_family};
use crate::net::Family;

/// RTM_NEWADDR/RTM_DELADDR body: IFA_LOCAL + IFA_ADDRESS (+ broadcast for IPv4 < /31).
pub(crate) fn message(a: &Address) -> AddressMessage {
    match a.net.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(a.ifindex)
            .address(ip, a.net.prefix())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(a.ifindex)
            .address(ip, a.net.prefix())
            .build(),
    }
}

impl Netlink {
    /// Adds the address or replaces its attributes (`ip addr replace`).
    pub async fn ensure_address(&self, address: &Address) -> Result<(), NetlinkError> {
        self.apply_one(Op::ReplaceAddress(*address)).await
    }

    /// Removes the address; `Ok` if it is not there.
    pub async fn remove_address(&self, address: &Address) -> Result<(), NetlinkError> {
        self.apply_one(Op::RemoveAddress(*address)).await
    }

    /// IPv4 and IPv6 addresses of one link (including kernel-assigned IPv6 link-local ones).
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<Address>, NetlinkError> {
        let mut out = self.addresses_in(ifindex, Family::V4).await?;
        out.extend(self.addresses_in(ifindex, Family::V6).await?);
        Ok(out)
    }

    /// The addresses of one family on one link (one dump).
    pub async fn addresses_in(
        &self,
        ifindex: u32,
        family: Family,
    ) -> Result<Vec<Address>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = address_family(family);
        // Honoured by the kernel on a strict socket; also checked below.
        req.header.index = ifindex;
        let replies = self
            .dump_of_link(
                "list addresses",
                ifindex,
                RouteNetlinkMessage::GetAddress(req),
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .filter(|a| a.ifindex == ifindex)
            .collect())
    }
}

/// An IP address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub ifindex: u32,
    pub net: IpNetwork,
}

impl Address {
    pub fn new(ifindex: u32, net: IpNetwork) -> Self {
        Self { ifindex, net }
    }

    pub(crate) fn from_message(msg: &AddressMessage) -> Option<Address> {
        let mut local = None;
        let mut address = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        let ip = local.or(address)?;
        let net = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
        Some(Address {
            ifindex: msg.header.index,
            net,
        })
    }
}
