//! Idempotent operations on addresses, routes, neighbours and FDB entries, applied singly or
//! as a pipelined batch.

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::LinkUnspec;

use super::error::{NetlinkError, RawError};
use super::{Address, Fdb, Neighbour, Route};
use super::{Netlink, addr, neigh, route};

const ENOENT: i32 = nix::libc::ENOENT;
const ESRCH: i32 = nix::libc::ESRCH;
const ENODEV: i32 = nix::libc::ENODEV;
const EEXIST: i32 = nix::libc::EEXIST;
const EADDRNOTAVAIL: i32 = nix::libc::EADDRNOTAVAIL;

/// One change to kernel state. `Replace*` create or overwrite (NLM_F_CREATE|NLM_F_REPLACE),
/// `Remove*` succeed when the object is already gone, `AppendFdb` adds one more destination to
/// an entry (meaningful for the all-zero MAC used for flooding), `CreateRoute` creates a route
/// only when none with the same key exists (NLM_F_EXCL: EEXIST otherwise, never overwrites
/// someone else's route).
/// `SetLinkUp` sits among them so that a link can come up between its addresses and the
/// routes that need it up, in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ReplaceAddress(Address),
    RemoveAddress(Address),
    ReplaceRoute(Route),
    CreateRoute(Route),
    RemoveRoute(Route),
    ReplaceNeighbour(Neighbour),
    RemoveNeighbour(Neighbour),
    ReplaceFdb(Fdb),
    AppendFdb(Fdb),
    RemoveFdb(Fdb),
    /// `ip link set up` of the link with this index.
    SetLinkUp(u32),
}

impl Op {
    /// The operation as named in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::ReplaceAddress(_) => "replace address",
            Op::RemoveAddress(_) => "delete address",
            Op::ReplaceRoute(_) => "replace route",
            Op::CreateRoute(_) => "add route",
            Op::RemoveRoute(_) => "delete route",
            Op::ReplaceNeighbour(_) => "replace neighbour",
            Op::RemoveNeighbour(_) => "delete neighbour",
            Op::ReplaceFdb(_) => "replace fdb entry",
            Op::AppendFdb(_) => "append fdb entry",
            Op::RemoveFdb(_) => "delete fdb entry",
            Op::SetLinkUp(_) => "set up",
        }
    }

    /// The interface the object lives on.
    pub fn ifindex(&self) -> Option<u32> {
        match self {
            Op::ReplaceAddress(a) | Op::RemoveAddress(a) => Some(a.ifindex),
            Op::ReplaceRoute(r) | Op::CreateRoute(r) | Op::RemoveRoute(r) => r.oif,
            Op::ReplaceNeighbour(n) | Op::RemoveNeighbour(n) => Some(n.ifindex),
            Op::ReplaceFdb(f) | Op::AppendFdb(f) | Op::RemoveFdb(f) => Some(f.ifindex),
            Op::SetLinkUp(index) => Some(*index),
        }
    }

    /// `ip`-style description of the object, with the interface given by name.
    pub(crate) fn object(&self, ifname: &str) -> String {
        match self {
            Op::ReplaceAddress(a) | Op::RemoveAddress(a) => format!("{} dev {ifname}", a.net),
            Op::ReplaceRoute(r) | Op::CreateRoute(r) | Op::RemoveRoute(r) => {
                route::describe(r, ifname)
            }
            Op::ReplaceNeighbour(n) | Op::RemoveNeighbour(n) => {
                format!("{} lladdr {} dev {ifname}", n.ip, n.mac)
            }
            Op::ReplaceFdb(f) | Op::AppendFdb(f) | Op::RemoveFdb(f) => {
                format!("{} dst {} dev {ifname}", f.mac, f.dst)
            }
            Op::SetLinkUp(_) => format!("link {ifname}"),
        }
    }

    /// The kernel request and its extra NLM_F flags, or why the input is invalid.
    fn request(&self) -> Result<(RouteNetlinkMessage, u16), String> {
        const ENSURE: u16 = NLM_F_CREATE | NLM_F_REPLACE;
        Ok(match self {
            Op::ReplaceAddress(a) => (RouteNetlinkMessage::NewAddress(addr::message(a)), ENSURE),
            Op::RemoveAddress(a) => (RouteNetlinkMessage::DelAddress(addr::message(a)), 0),
            Op::ReplaceRoute(r) => {
                r.validate()?;
                (
                    RouteNetlinkMessage::NewRoute(route::route_message(r, false)),
                    ENSURE,
                )
            }
            Op::CreateRoute(r) => {
                r.validate()?;
                (
                    RouteNetlinkMessage::NewRoute(route::route_message(r, false)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
            }
            Op::RemoveRoute(r) => {
                r.validate()?;
                (
                    RouteNetlinkMessage::DelRoute(route::route_message(r, true)),
                    0,
                )
            }
            Op::ReplaceNeighbour(n) => (
                RouteNetlinkMessage::NewNeighbour(neigh::neighbour_message(n, false)),
                ENSURE,
            ),
            Op::RemoveNeighbour(n) => (
                RouteNetlinkMessage::DelNeighbour(neigh::neighbour_message(n, true)),
                0,
            ),
            Op::ReplaceFdb(f) => (
                RouteNetlinkMessage::NewNeighbour(neigh::fdb_message(f)),
                ENSURE,
            ),
            Op::AppendFdb(f) => (
                RouteNetlinkMessage::NewNeighbour(neigh::fdb_message(f)),
                NLM_F_CREATE | NLM_F_APPEND,
            ),
            Op::RemoveFdb(f) => (RouteNetlinkMessage::DelNeighbour(neigh::fdb_message(f)), 0),
            Op::SetLinkUp(index) => (
                RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(*index).up().build()),
                0,
            ),
        })
    }

    /// Errnos that still mean "the end state is what was asked for".
    fn tolerates(&self, errno: i32) -> bool {
        match self {
            Op::ReplaceAddress(_)
            | Op::ReplaceRoute(_)
            | Op::CreateRoute(_)
            | Op::ReplaceNeighbour(_)
            | Op::ReplaceFdb(_)
            | Op::SetLinkUp(_) => false,
            Op::AppendFdb(_) => errno == EEXIST,
            Op::RemoveAddress(_) => matches!(errno, EADDRNOTAVAIL | ENOENT | ENODEV),
            Op::RemoveRoute(_) => matches!(errno, ESRCH | ENOENT | ENODEV),
            Op::RemoveNeighbour(_) | Op::RemoveFdb(_) => matches!(errno, ENOENT | ENODEV),
        }
    }
}

/// Why one op of a batch failed, before it is turned into a [`NetlinkError`].
enum Failure {
    Invalid(String),
    Raw(RawError),
}

impl Netlink {
    /// Applies `ops` in order, pipelined on this handle's socket (many requests in flight,
    /// acks collected), and returns one result per op in the same order. The kernel processes
    /// the requests in the given order, so e.g. neighbours → FDB → routes keeps its ordering.
    /// A failing op does not stop the ones after it.
    pub async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        // Invalid ops are answered here and never sent; the rest go out in one batch.
        let mut invalid: Vec<Option<String>> = Vec::with_capacity(ops.len());
        let mut requests = Vec::with_capacity(ops.len());
        for op in ops {
            match op.request() {
                Ok(req) => {
                    requests.push(req);
                    invalid.push(None);
                }
                Err(reason) => invalid.push(Some(reason)),
            }
        }
        let mut sent = self.transport().batch(requests).await.into_iter();
        let outcomes: Vec<Result<(), Failure>> = ops
            .iter()
            .zip(invalid)
            .map(|(op, invalid)| match invalid {
                Some(reason) => Err(Failure::Invalid(reason)),
                None => match sent.next().unwrap_or(Err(RawError::Closed)) {
                    Ok(()) => Ok(()),
                    Err(e) if e.errno().is_some_and(|n| op.tolerates(n)) => Ok(()),
                    Err(e) => Err(Failure::Raw(e)),
                },
            })
            .collect();

        // Name interfaces only for what failed (cold path).
        let failed_ifindexes: Vec<u32> = ops
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_err())
            .filter_map(|(op, _)| op.ifindex())
            .collect();
        let names = if failed_ifindexes.is_empty() {
            Default::default()
        } else {
            self.ifnames(failed_ifindexes).await
        };
        let object = |op: &Op| {
            let ifname = op
                .ifindex()
                .map(|i| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}")))
                .unwrap_or_default();
            op.object(&ifname)
        };

        ops.iter()
            .zip(outcomes)
            .map(|(op, outcome)| {
                outcome.map_err(|failure| match failure {
                    Failure::Invalid(reason) => NetlinkError::InvalidInput {
                        op: op.name(),
                        object: object(op),
                        reason,
                    },
                    Failure::Raw(e) => e.into_error(op.name(), object(op)),
                })
            })
            .collect()
    }

    /// [`Netlink::apply`] for a single op.
    pub async fn apply_one(&self, op: Op) -> Result<(), NetlinkError> {
        self.apply(std::slice::from_ref(&op))
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Applies `ops` and returns the first error, if any (all ops are still attempted).
    pub async fn apply_all(&self, ops: &[Op]) -> Result<(), NetlinkError> {
        self.apply(ops)
            .await
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }
}
