//! A stream of typed change events from rtnetlink multicast groups, so the daemon notices
//! drift (someone deleted a route, a link went away) without polling.
//!
//! When the kernel drops notifications because the socket buffer is full (ENOBUFS) the
//! stream yields [`MonitorEvent::Overflow`]: state may have changed unseen, resync.

use std::collections::VecDeque;
use std::io;
use std::ops::BitOr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::NetlinkError;
use super::transport::{MONITOR_RCVBUF, open_socket, register};
use super::{Address, Fdb, FdbRecord, Link, NeighbourRecord, Route};
use crate::netns::NetnsFile;

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}

/// Which multicast groups a [`Monitor`] joins. Combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorGroups(u32);

impl MonitorGroups {
    pub const LINK: Self = Self(group_bit(RTNLGRP_LINK));
    /// Neighbours and FDB entries.
    pub const NEIGH: Self = Self(group_bit(RTNLGRP_NEIGH));
    pub const IPV4_ADDR: Self = Self(group_bit(RTNLGRP_IPV4_IFADDR));
    pub const IPV6_ADDR: Self = Self(group_bit(RTNLGRP_IPV6_IFADDR));
    pub const IPV4_ROUTE: Self = Self(group_bit(RTNLGRP_IPV4_ROUTE));
    pub const IPV6_ROUTE: Self = Self(group_bit(RTNLGRP_IPV6_ROUTE));
    pub const ALL: Self = Self(
        group_bit(RTNLGRP_LINK)
            | group_bit(RTNLGRP_NEIGH)
            | group_bit(RTNLGRP_IPV4_IFADDR)
            | group_bit(RTNLGRP_IPV6_IFADDR)
            | group_bit(RTNLGRP_IPV4_ROUTE)
            | group_bit(RTNLGRP_IPV6_ROUTE),
    );

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for MonitorGroups {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// One change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// A link appeared or changed (flags, MTU, master, ...).
    LinkNew(Link),
    LinkDel(Link),
    AddressNew(Address),
    AddressDel(Address),
    RouteNew(Route),
    RouteDel(Route),
    /// An IPv4/IPv6 neighbour entry appeared or changed (any state).
    NeighbourNew(NeighbourRecord),
    /// Deleted neighbour entries usually carry no MAC.
    NeighbourDel(NeighbourRecord),
    /// An FDB entry with a destination (VXLAN) appeared or changed.
    FdbNew(Fdb),
    FdbDel(Fdb),
    /// The kernel dropped notifications (ENOBUFS): resynchronise from dumps.
    Overflow,
}

/// Notifications of one namespace. Implements `Stream<Item = Result<MonitorEvent, _>>`;
/// needs a tokio runtime.
pub struct Monitor {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
    pending: VecDeque<MonitorEvent>,
    netns_label: String,
}

const RECV_BUF: usize = 256 << 10;

impl Monitor {
    /// Subscribes to `groups` in the namespace `ns` (socket created inside it), with a 32 MiB
    /// receive buffer.
    pub fn open(ns: &NetnsFile, groups: MonitorGroups) -> Result<Self, NetlinkError> {
        Self::open_with_buffer(ns, groups, MONITOR_RCVBUF)
    }

    /// Like [`Monitor::open`] with an explicit socket receive buffer size in bytes (the kernel
    /// enforces a small minimum). A smaller buffer overflows sooner.
    pub fn open_with_buffer(
        ns: &NetnsFile,
        groups: MonitorGroups,
        rcvbuf: usize,
    ) -> Result<Self, NetlinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetlinkError::NoRuntime);
        }
        let netns_label = ns.path().display().to_string();
        let sock_err = |source: io::Error| NetlinkError::Socket {
            netns: netns_label.clone(),
            source,
        };
        let mut socket = open_socket(ns, rcvbuf, false)?;
        socket
            .bind(&SocketAddr::new(0, groups.bits()))
            .map_err(sock_err)?;
        let socket = register(socket, Interest::READABLE).map_err(sock_err)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
            pending: VecDeque::new(),
            netns_label,
        })
    }

    /// The next event (waits for one).
    pub async fn next_event(&mut self) -> Result<MonitorEvent, NetlinkError> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .unwrap_or_else(|| {
                Err(NetlinkError::Monitor {
                    netns: self.netns_label.clone(),
                    source: io::Error::from(io::ErrorKind::UnexpectedEof),
                })
            })
    }

    fn parse_datagram(&mut self, len: usize) {
        let mut offset = 0;
        while offset < len {
            let data = &self.buf[offset..len];
            let Ok(header) = NetlinkBuffer::new_checked(data) else {
                tracing::warn!(
                    bytes = data.len(),
                    "malformed netlink notification; skipped"
                );
                return;
            };
            let msg_len = header.length() as usize;
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..msg_len]) {
                Ok(msg) => {
                    if let Some(event) = event_of(msg.payload) {
                        self.pending.push_back(event);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "undecodable netlink notification; skipped"),
            }
            offset += (msg_len + 3) & !3;
        }
    }
}

impl Stream for Monitor {
    type Item = Result<MonitorEvent, NetlinkError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let mut guard = match this.socket.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(source)) => {
                    return Poll::Ready(Some(Err(NetlinkError::Monitor {
                        netns: this.netns_label.clone(),
                        source,
                    })));
                }
                Poll::Pending => return Poll::Pending,
            };
            this.buf.clear();
            let buf = &mut this.buf;
            match guard.try_io(|inner| inner.get_ref().recv(buf, 0)) {
                Ok(Ok(len)) => {
                    let len = len.min(this.buf.len());
                    this.parse_datagram(len);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    return Poll::Ready(Some(Ok(MonitorEvent::Overflow)));
                }
                Ok(Err(source)) => {
                    return Poll::Ready(Some(Err(NetlinkError::Monitor {
                        netns: this.netns_label.clone(),
                        source,
                    })));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

fn event_of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<MonitorEvent> {
    use MonitorEvent as E;
    use RouteNetlinkMessage as M;
    let inner = match payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        NetlinkPayload::Overrun(_) => return Some(E::Overflow),
        _ => return None,
    };
    match inner {
        M::NewLink(l) => Link::from_message(&l).map(E::LinkNew),
        M::DelLink(l) => Link::from_message(&l).map(E::LinkDel),
        M::NewAddress(a) => Address::from_message(&a).map(E::AddressNew),
        M::DelAddress(a) => Address::from_message(&a).map(E::AddressDel),
        M::NewRoute(r) => Route::from_message(&r).map(E::RouteNew),
        M::DelRoute(r) => Route::from_message(&r).map(E::RouteDel),
        M::NewNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            FdbRecord::from_message(&n).map(|r| E::FdbNew(r.entry))
        }
        M::DelNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            FdbRecord::from_message(&n).map(|r| E::FdbDel(r.entry))
        }
        M::NewNeighbour(n) => NeighbourRecord::from_message(&n).map(E::NeighbourNew),
        M::DelNeighbour(n) => NeighbourRecord::from_message(&n).map(E::NeighbourDel),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MacAddr;
    use crate::netlink::Neighbour;

    #[test]
    fn groups_combine_into_the_bind_mask() {
        assert_eq!(MonitorGroups::LINK.bits(), 0x1);
        assert_eq!(MonitorGroups::NEIGH.bits(), 0x4);
        assert_eq!(
            (MonitorGroups::IPV4_ROUTE | MonitorGroups::IPV6_ROUTE).bits(),
            0x440
        );
        assert_eq!(
            MonitorGroups::ALL.bits(),
            0x1 | 0x4 | 0x10 | 0x100 | 0x40 | 0x400
        );
    }

    #[test]
    fn neighbour_and_fdb_notifications_are_told_apart() {
        let fdb = Fdb {
            ifindex: 4,
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            dst: "10.99.0.9".parse().unwrap(),
        };
        let msg = crate::netlink::neigh::fdb_message(&fdb);
        assert_eq!(
            event_of(NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::DelNeighbour(msg)
            )),
            Some(MonitorEvent::FdbDel(fdb))
        );
        let n = Neighbour {
            ifindex: 4,
            ip: "10.244.9.0".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
        };
        let msg = crate::netlink::neigh::neighbour_message(&n, false);
        let Some(MonitorEvent::NeighbourNew(entry)) = event_of(NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(msg),
        )) else {
            panic!("not a neighbour event");
        };
        assert_eq!(entry.as_permanent(), Some(n));
        assert_eq!(
            event_of(NetlinkPayload::Overrun(vec![])),
            Some(MonitorEvent::Overflow)
        );
    }
}
