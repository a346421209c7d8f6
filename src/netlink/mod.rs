//! A small typed async layer over rtnetlink: links, addresses, routes, neighbours, VXLAN FDB
//! entries, pipelined batches and a change monitor, each bound to one network namespace.
//!
//! Everything the daemon and the CNI plugin do to the kernel's network state goes through
//! here (never through `ip`/`bridge`). Design points:
//! - A [`Netlink`] owns one `NETLINK_ROUTE` socket created *inside* its namespace on a
//!   short-lived helper thread (setns is per thread), then driven by the tokio runtime.
//! - The socket uses strict checking (`NETLINK_GET_STRICT_CHK`) so dump filters are applied
//!   by the kernel; results are filtered client-side as well.
//! - `ensure_*` use replace semantics and `remove_*` accept "already gone", so calling either
//!   twice leaves the same state and returns `Ok`.
//! - [`Netlink::apply`] pipelines thousands of requests on the one socket in multi-message
//!   datagrams and returns one result per request, applied by the kernel in the given order.
//! - Errors name the operation and the object ([`NetlinkError`]).

mod addr;
mod batch;
mod error;
mod link;
pub mod monitor;
mod neigh;
pub(crate) mod route;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use netlink_packet_route::AddressFamily;
use transport::Transport;

use crate::net::Family;
use crate::netns::NetnsFile;

pub use addr::Address;
pub use batch::Op;
pub use error::NetlinkError;
pub use link::{Link, VethPair, VxlanInfo, VxlanOutcome, VxlanSpec};
pub use monitor::{Monitor, MonitorEvent, MonitorGroups};
pub use neigh::Fdb;
pub(crate) use neigh::FdbRecord;
pub use neigh::{Neighbour, NeighbourRecord};
// Link and route attribute types used in [`Link`] and [`Route`] (re-exported so callers
// need no extra crate).
pub use netlink_packet_route::link::State as LinkOperState;
pub use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
pub use route::{RT_TABLE_LOCAL, RT_TABLE_MAIN, Route, RouteFilter};

/// A handle on the network stack of one namespace. Cheap to clone (clones share the socket);
/// must be created inside a tokio runtime, whose tasks then drive the socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    /// Kept open so monitors can be created in the same namespace later.
    netns: NetnsFile,
    /// How the namespace was named by the caller (for messages).
    netns_label: String,
}

impl Netlink {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetlinkError> {
        Self::in_netns(&NetnsFile::current()?)
    }

    /// A namespace created by `ip netns add NAME` (`/run/netns/NAME`).
    pub fn in_named(name: &str) -> Result<Self, NetlinkError> {
        Self::in_netns(&NetnsFile::open_named(name)?)
    }

    /// A namespace by path (`/proc/PID/ns/net`, a CNI_NETNS path, ...).
    pub fn in_path(path: impl AsRef<Path>) -> Result<Self, NetlinkError> {
        Self::in_netns(&NetnsFile::open(path)?)
    }

    /// The namespace behind an open handle.
    pub fn in_netns(ns: &NetnsFile) -> Result<Self, NetlinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetlinkError::NoRuntime);
        }
        let socket = transport::open_socket(ns, transport::REQUEST_RCVBUF, true)?;
        let transport = Transport::spawn(socket).map_err(|source| NetlinkError::Socket {
            netns: ns.path().display().to_string(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                netns: transport::dup_netns(ns)?,
                netns_label: ns.path().display().to_string(),
            }),
        })
    }

    /// The namespace this handle works in.
    pub fn netns(&self) -> &NetnsFile {
        &self.inner.netns
    }

    /// The namespace path as given when the handle was created.
    pub fn netns_label(&self) -> &str {
        &self.inner.netns_label
    }

    /// A change monitor on the same namespace.
    pub fn monitor(&self, groups: MonitorGroups) -> Result<Monitor, NetlinkError> {
        Monitor::open(&self.inner.netns, groups)
    }

    fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Interface names for error messages (`if<N>` when the link is gone or unreadable).
    async fn ifnames(&self, indexes: impl IntoIterator<Item = u32>) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        for index in indexes {
            if names.contains_key(&index) {
                continue;
            }
            let name = match self.link_by_index(index).await {
                Ok(Some(link)) => link.name,
                _ => format!("if{index}"),
            };
            names.insert(index, name);
        }
        names
    }

    async fn ifname(&self, index: u32) -> String {
        self.ifnames([index])
            .await
            .remove(&index)
            .unwrap_or_else(|| format!("if{index}"))
    }

    /// Dumps `request`, which asks about the link `ifindex`; an error names `op` and the link.
    async fn dump_of_link(
        &self,
        op: &'static str,
        ifindex: u32,
        request: netlink_packet_route::RouteNetlinkMessage,
    ) -> Result<Vec<netlink_packet_route::RouteNetlinkMessage>, NetlinkError> {
        match self.transport().dump(request).await {
            Ok(replies) => Ok(replies),
            Err(e) => {
                let name = self.ifname(ifindex).await;
                Err(e.into_error(op, format!("dev {name}")))
            }
        }
    }
}

/// The strict-checking decision, tested against the kernel: raw dumps (before any
/// client-side filtering) already contain only what the request's filter asks for.
/// Needs root and iproute2, like the namespace tests.
/// The kernel's address family for `family`.
pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        None
    }
}

#[cfg(test)]
mod kernel_filter_tests {
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::route::{RouteAttribute, RouteProtocol};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as M};

    use super::*;
    use crate::netns::NetnsGuard;

    fn ifindex(ns: &NetnsGuard, name: &str) -> u32 {
        let out = ns.ip(&["-o", "link", "show", name]).unwrap();
        out.split(':').next().unwrap().trim().parse().unwrap()
    }

    #[test]
    fn strict_socket_filters_dumps_in_the_kernel() {
        let ns = NetnsGuard::new("kf").unwrap_or_else(|e| {
            panic!("cannot create a network namespace ({e}); run the tests as root with iproute2")
        });
        let setup = [
            "link add a0 type veth peer name a1",
            "link add b0 type veth peer name b1",
            "link set a0 up",
            "link set b0 up",
            "addr add 10.1.0.1/24 dev a0",
            "addr add 10.2.0.1/24 dev b0",
            "neigh add 10.1.0.9 lladdr 02:00:00:00:00:01 dev a0 nud permanent",
            "neigh add 10.2.0.9 lladdr 02:00:00:00:00:02 dev b0 nud permanent",
            "link add vx1 type vxlan id 1 dstport 8472 local 10.1.0.1 dev a0",
            "link add vx2 type vxlan id 2 dstport 8472 local 10.1.0.1 dev a0",
            "route add 10.50.1.0/24 dev a0 proto 99",
            "route add 10.50.2.0/24 dev b0",
            "route add 10.50.3.0/24 dev a0 table 100",
        ];
        for line in setup {
            ns.ip(&line.split(' ').collect::<Vec<_>>()).unwrap();
        }
        for (mac, dev, dst) in [
            ("02:00:00:00:01:01", "vx1", "10.1.0.21"),
            ("02:00:00:00:02:02", "vx2", "10.1.0.22"),
        ] {
            let ok = std::process::Command::new("bridge")
                .args(["-n", ns.name(), "fdb", "add", mac, "dev", dev, "dst", dst])
                .args(["self", "permanent"])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let (a0, b0, vx1) = (ifindex(&ns, "a0"), ifindex(&ns, "b0"), ifindex(&ns, "vx1"));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::in_named(ns.name()).unwrap();
            let t = nl.transport();

            // FDB: header ifindex selects the device.
            let mut req = NeighbourMessage::default();
            req.header.family = AddressFamily::Bridge;
            req.header.ifindex = vx1;
            let fdb = t.dump(M::GetNeighbour(req)).await.unwrap();
            assert!(!fdb.is_empty());
            assert!(
                fdb.iter()
                    .all(|m| matches!(m, M::NewNeighbour(n) if n.header.ifindex == vx1)),
                "{fdb:?}"
            );

            // IP neighbours: NDA_IFINDEX selects the link ...
            let mut req = NeighbourMessage::default();
            req.attributes.push(NeighbourAttribute::IfIndex(a0));
            let neigh = t.dump(M::GetNeighbour(req)).await.unwrap();
            assert!(!neigh.is_empty());
            assert!(
                neigh
                    .iter()
                    .all(|m| matches!(m, M::NewNeighbour(n) if n.header.ifindex == a0))
            );
            // ... while a header ifindex is refused by a strict socket (hence the attribute).
            let mut req = NeighbourMessage::default();
            req.header.ifindex = a0;
            let err = t.dump(M::GetNeighbour(req)).await.unwrap_err();
            assert_eq!(err.errno(), Some(22), "{err:?}");

            // Addresses: header index selects the link.
            let mut req = AddressMessage::default();
            req.header.family = AddressFamily::Inet;
            req.header.index = b0;
            let addrs = t.dump(M::GetAddress(req)).await.unwrap();
            assert_eq!(addrs.len(), 1, "{addrs:?}");

            // Routes: table, output device and protocol.
            let dump = |f: RouteFilter| {
                let t = t.clone();
                async move {
                    t.dump(M::GetRoute(route::dump_request(crate::net::Family::V4, &f)))
                        .await
                        .unwrap()
                        .into_iter()
                        .filter_map(|m| match m {
                            M::NewRoute(r) => Some(r),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                }
            };
            let t100 = dump(RouteFilter::default().table(100)).await;
            assert_eq!(t100.len(), 1, "{t100:?}");
            let on_b0 = dump(RouteFilter::main().oif(b0)).await;
            assert!(!on_b0.is_empty());
            assert!(
                on_b0
                    .iter()
                    .all(|r| r.attributes.contains(&RouteAttribute::Oif(b0)))
            );
            let p99 = dump(RouteFilter::default().protocol(RouteProtocol::Other(99))).await;
            assert_eq!(p99.len(), 1, "{p99:?}");
        });
    }
}

#[cfg(test)]
mod value_tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn ip_from_bytes_handles_both_families() {
        assert_eq!(
            ip_from_bytes(&[192, 168, 77, 2]),
            Some("192.168.77.2".parse().unwrap())
        );
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(ip_from_bytes(&v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }
}
