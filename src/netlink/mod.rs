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
mod types;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use batch::Op;
pub use error::NetlinkError;
pub use monitor::{Monitor, MonitorEvent, MonitorGroups};
/// Route attribute types used in [`Route`] (re-exported so callers need no extra crate).
pub use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
pub use types::{
    Address, FdbEntry, IpFamily, Link, MacAddr, MacParseError, Neighbour, NeighbourEntry,
    RT_TABLE_LOCAL, RT_TABLE_MAIN, Route, RouteFilter, VxlanInfo, VxlanOutcome, VxlanSpec,
};

use crate::netns::NetnsFile;
use transport::Transport;

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
}
