//! Peers: parse a [`NodeInfo`]'s podCIDRs and flannel annotations once into a typed [`Peer`],
//! validating everything a hostile or broken node could use to hurt us or other peers. A node
//! that fails gets a typed [`Rejection`] and touches nothing; all other peers are unaffected.
//!
//! Conflicts between peers (overlapping subnets, shared VTEP MAC) are resolved by age: the node
//! with the older creationTimestamp (then the smaller name) keeps its entries, so a newcomer can
//! never displace or cut into an established peer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::jiff::Timestamp;
use thiserror::Error;

use super::annotations::{
    AnnotationKeys, BACKEND_TYPE_VXLAN, BackendData, BackendDataError, KUBE_SUBNET_MANAGER_TRUE,
    parse_family_ip,
};
use super::lease::{PodCidrError, PodSubnets};
use super::netconf::NetConf;
use super::node::NodeInfo;
use crate::net::{Excerpt, Family, MacAddr, is_within, overlaps, parse_cidr};

/// One family's tunnel endpoint of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerEndpoint {
    /// The peer's pod subnet (normalised; its network address is the route gateway).
    pub subnet: IpNetwork,
    pub vtep_mac: MacAddr,
    /// Underlay address the peer's VXLAN packets go to (`public-ip` / `public-ipv6`).
    pub public_ip: IpAddr,
    /// VNI the peer advertises (`None` for very old annotations without it).
    pub vni: Option<u32>,
}

/// A validated peer node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    pub v4: Option<PeerEndpoint>,
    pub v6: Option<PeerEndpoint>,
}

#[cfg(test)]
impl Peer {
    /// A test peer: subnet 10.244.`i`.0/24, VTEP MAC 0e:00:00:00:00:`i`, public IP
    /// `<public_net>.i`, VNI 1.
    pub(crate) fn numbered(name: &str, i: u8, public_net: &str) -> Peer {
        Peer {
            name: name.into(),
            uid: format!("uid-{name}"),
            created: None,
            v4: Some(PeerEndpoint {
                subnet: format!("10.244.{i}.0/24").parse().unwrap(),
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, i]),
                public_ip: format!("{public_net}.{i}").parse().unwrap(),
                vni: Some(1),
            }),
            v6: None,
        }
    }
}

impl Peer {
    pub fn endpoint(&self, family: Family) -> Option<&PeerEndpoint> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    pub fn subnet_v4(&self) -> Option<Ipv4Network> {
        match self.v4?.subnet {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }

    pub fn subnet_v6(&self) -> Option<Ipv6Network> {
        match self.v6?.subnet {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (Family, &PeerEndpoint)> {
        [
            (Family::V4, self.v4.as_ref()),
            (Family::V6, self.v6.as_ref()),
        ]
        .into_iter()
        .filter_map(|(f, e)| e.map(|e| (f, e)))
    }
}

/// What we know about ourselves when judging peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationContext {
    pub own_node: String,
    pub own_subnets: PodSubnets,
    /// Enabled families have `Some` network.
    pub network_v4: Option<Ipv4Network>,
    pub network_v6: Option<Ipv6Network>,
    pub vni: u32,
    /// Our own addresses (local/external/advertised); a peer claiming one is refused.
    pub own_ips: Vec<IpAddr>,
    /// Our own VTEP MACs.
    pub own_macs: Vec<MacAddr>,
}

impl ValidationContext {
    pub fn new(
        netconf: &NetConf,
        own_node: impl Into<String>,
        own_subnets: PodSubnets,
        own_ips: Vec<IpAddr>,
        own_macs: Vec<MacAddr>,
    ) -> ValidationContext {
        ValidationContext {
            own_node: own_node.into(),
            own_subnets,
            network_v4: netconf.network_v4,
            network_v6: netconf.network_v6,
            vni: netconf.backend.vni,
            own_ips,
            own_macs,
        }
    }

    fn network(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V4 => self.network_v4.map(IpNetwork::V4),
            Family::V6 => self.network_v6.map(IpNetwork::V6),
        }
    }
}

/// What is wrong with a VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacProblem {
    AllZero,
    Broadcast,
    Multicast,
    /// Equal to one of our own VTEP MACs.
    Ours,
}

/// What is wrong with a public IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicIpProblem {
    Malformed,
    Unspecified,
    Loopback,
    Multicast,
    Broadcast,
    /// One of our own addresses.
    Ours,
    /// Inside the pod network: the tunnel would route into itself.
    InsidePodNetwork,
}

/// Why a node is not (or not entirely) programmed as a peer. Values from the Node are quoted
/// as bounded [`Excerpt`]s: rejections are kept (tracker, memo, `/status`) and logged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("not managed by a kube subnet manager (kube-subnet-manager = {value:?})")]
    NotManaged { value: Option<Excerpt> },
    #[error("backend-type is {found:?}, not \"vxlan\"")]
    BackendType { found: Option<Excerpt> },
    #[error("{0}")]
    PodCidr(PodCidrError),
    #[error("no {family} podCIDR assigned")]
    NoPodCidr { family: Family },
    #[error("{family} subnet {subnet} equals or contains the whole network {network}")]
    SubnetCoversNetwork {
        family: Family,
        subnet: IpNetwork,
        network: IpNetwork,
    },
    #[error("{family} subnet {subnet} is outside the network {network}")]
    SubnetOutsideNetwork {
        family: Family,
        subnet: IpNetwork,
        network: IpNetwork,
    },
    #[error("{family} subnet {subnet} overlaps our own subnet {own}")]
    SubnetOverlapsOwn {
        family: Family,
        subnet: IpNetwork,
        own: IpNetwork,
    },
    #[error("{family} subnet {subnet} overlaps the subnet of established peer {holder:?}")]
    SubnetConflict {
        family: Family,
        subnet: IpNetwork,
        holder: String,
    },
    #[error("annotation {key:?} is missing")]
    MissingAnnotation { key: String },
    #[error("{family} backend data is invalid: {error}")]
    BackendData {
        family: Family,
        error: BackendDataError,
    },
    #[error("{family} VNI {found} differs from ours ({expected})")]
    VniMismatch {
        family: Family,
        expected: u32,
        found: u32,
    },
    #[error("{family} VtepMAC {mac} is unusable: {problem:?}")]
    MacAddr {
        family: Family,
        mac: MacAddr,
        problem: MacProblem,
    },
    #[error("{family} VtepMAC {mac} is already used by established peer {holder:?}")]
    VtepMacConflict {
        family: Family,
        mac: MacAddr,
        holder: String,
    },
    #[error("{family} public IP {value:?} is unusable: {problem:?}")]
    PublicIp {
        family: Family,
        value: Excerpt,
        problem: PublicIpProblem,
    },
}

/// A label-friendly rejection category (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    NotManaged,
    BackendType,
    BadPodCidr,
    NoPodCidr,
    SubnetCoversNetwork,
    SubnetOutsideNetwork,
    SubnetOverlapsOwn,
    SubnetConflict,
    MissingAnnotation,
    BadBackendData,
    VniMismatch,
    BadVtepMac,
    VtepMacConflict,
    BadPublicIp,
}

impl RejectKind {
    pub const ALL: [RejectKind; 14] = [
        RejectKind::NotManaged,
        RejectKind::BackendType,
        RejectKind::BadPodCidr,
        RejectKind::NoPodCidr,
        RejectKind::SubnetCoversNetwork,
        RejectKind::SubnetOutsideNetwork,
        RejectKind::SubnetOverlapsOwn,
        RejectKind::SubnetConflict,
        RejectKind::MissingAnnotation,
        RejectKind::BadBackendData,
        RejectKind::VniMismatch,
        RejectKind::BadVtepMac,
        RejectKind::VtepMacConflict,
        RejectKind::BadPublicIp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NotManaged => "not_managed",
            RejectKind::BackendType => "backend_type",
            RejectKind::BadPodCidr => "bad_pod_cidr",
            RejectKind::NoPodCidr => "no_pod_cidr",
            RejectKind::SubnetCoversNetwork => "subnet_covers_network",
            RejectKind::SubnetOutsideNetwork => "subnet_outside_network",
            RejectKind::SubnetOverlapsOwn => "subnet_overlaps_own",
            RejectKind::SubnetConflict => "subnet_conflict",
            RejectKind::MissingAnnotation => "missing_annotation",
            RejectKind::BadBackendData => "bad_backend_data",
            RejectKind::VniMismatch => "vni_mismatch",
            RejectKind::BadVtepMac => "bad_vtep_mac",
            RejectKind::VtepMacConflict => "vtep_mac_conflict",
            RejectKind::BadPublicIp => "bad_public_ip",
        }
    }

    /// Position in [`RejectKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejection {
    pub fn kind(&self) -> RejectKind {
        match self {
            Rejection::NotManaged { .. } => RejectKind::NotManaged,
            Rejection::BackendType { .. } => RejectKind::BackendType,
            Rejection::PodCidr(PodCidrError::NotAssigned) => RejectKind::NoPodCidr,
            Rejection::PodCidr(_) => RejectKind::BadPodCidr,
            Rejection::NoPodCidr { .. } => RejectKind::NoPodCidr,
            Rejection::SubnetCoversNetwork { .. } => RejectKind::SubnetCoversNetwork,
            Rejection::SubnetOutsideNetwork { .. } => RejectKind::SubnetOutsideNetwork,
            Rejection::SubnetOverlapsOwn { .. } => RejectKind::SubnetOverlapsOwn,
            Rejection::SubnetConflict { .. } => RejectKind::SubnetConflict,
            Rejection::MissingAnnotation { .. } => RejectKind::MissingAnnotation,
            // A MAC that does not parse is a MAC problem, not a JSON problem.
            Rejection::BackendData {
                error: BackendDataError::Mac(_),
                ..
            } => RejectKind::BadVtepMac,
            Rejection::BackendData { .. } => RejectKind::BadBackendData,
            Rejection::VniMismatch { .. } => RejectKind::VniMismatch,
            Rejection::MacAddr { .. } => RejectKind::BadVtepMac,
            Rejection::VtepMacConflict { .. } => RejectKind::VtepMacConflict,
            Rejection::PublicIp { .. } => RejectKind::BadPublicIp,
        }
    }

    /// Expected in healthy clusters (nodes without flannel, other backends, nodes waiting for
    /// a podCIDR): log quietly.
    pub fn is_benign(&self) -> bool {
        matches!(
            self.kind(),
            RejectKind::NotManaged | RejectKind::BackendType | RejectKind::NoPodCidr
        )
    }
}

/// Parses and validates one node on its own (no cross-peer checks; see [`select_peers`]).
pub fn parse_peer(
    node: &NodeInfo,
    keys: &AnnotationKeys,
    ctx: &ValidationContext,
) -> Result<Peer, Rejection> {
    let ann = |k: &str| node.annotations.get(k);
    match ann(&keys.kube_subnet_manager) {
        Some(v) if v == KUBE_SUBNET_MANAGER_TRUE => {}
        other => {
            return Err(Rejection::NotManaged {
                value: other.map(Excerpt::new),
            });
        }
    }
    match ann(&keys.backend_type) {
        Some(v) if v == BACKEND_TYPE_VXLAN => {}
        other => {
            return Err(Rejection::BackendType {
                found: other.map(Excerpt::new),
            });
        }
    }
    let subnets = PodSubnets::from_pod_cidrs(&node.pod_cidrs).map_err(Rejection::PodCidr)?;

    let mut peer = Peer {
        name: node.name.clone(),
        uid: node.uid.clone(),
        created: node.created,
        v4: None,
        v6: None,
    };
    for family in [Family::V4, Family::V6] {
        let Some(network) = ctx.network(family) else {
            continue;
        };
        let subnet = subnets.get(family).ok_or(Rejection::NoPodCidr { family })?;
        check_subnet(family, subnet, network, ctx.own_subnets.get(family))?;
        let data_key = keys.backend_data_for(family);
        let raw = ann(data_key).ok_or_else(|| Rejection::MissingAnnotation {
            key: data_key.to_string(),
        })?;
        let data =
            BackendData::decode(raw).map_err(|error| Rejection::BackendData { family, error })?;
        if let Some(found) = data.vni
            && found != ctx.vni
        {
            return Err(Rejection::VniMismatch {
                family,
                expected: ctx.vni,
                found,
            });
        }
        check_mac(family, data.vtep_mac, &ctx.own_macs)?;
        let ip_key = keys.public_ip_for(family);
        let raw_ip = ann(ip_key).ok_or_else(|| Rejection::MissingAnnotation {
            key: ip_key.to_string(),
        })?;
        let public_ip = check_public_ip(family, raw_ip, ctx)?;
        let endpoint = PeerEndpoint {
            subnet,
            vtep_mac: data.vtep_mac,
            public_ip,
            vni: data.vni,
        };
        match family {
            Family::V4 => peer.v4 = Some(endpoint),
            Family::V6 => peer.v6 = Some(endpoint),
        }
    }
    Ok(peer)
}

fn check_subnet(
    family: Family,
    subnet: IpNetwork,
    network: IpNetwork,
    own: Option<IpNetwork>,
) -> Result<(), Rejection> {
    if is_within(network, subnet) {
        return Err(Rejection::SubnetCoversNetwork {
            family,
            subnet,
            network,
        });
    }
    if !is_within(subnet, network) {
        return Err(Rejection::SubnetOutsideNetwork {
            family,
            subnet,
            network,
        });
    }
    if let Some(own) = own
        && overlaps(subnet, own)
    {
        return Err(Rejection::SubnetOverlapsOwn {
            family,
            subnet,
            own,
        });
    }
    Ok(())
}

fn check_mac(family: Family, mac: MacAddr, own: &[MacAddr]) -> Result<(), Rejection> {
    let problem = if mac.is_zero() {
        MacProblem::AllZero
    } else if mac.is_broadcast() {
        MacProblem::Broadcast
    } else if mac.is_multicast() {
        MacProblem::Multicast
    } else if own.contains(&mac) {
        MacProblem::Ours
    } else {
        return Ok(());
    };
    Err(Rejection::MacAddr {
        family,
        mac,
        problem,
    })
}

fn check_public_ip(
    family: Family,
    raw: &str,
    ctx: &ValidationContext,
) -> Result<IpAddr, Rejection> {
    let reject = |problem| Rejection::PublicIp {
        family,
        value: Excerpt::new(raw),
        problem,
    };
    let ip = parse_family_ip(raw, family).ok_or_else(|| reject(PublicIpProblem::Malformed))?;
    let problem = match ip {
        _ if ip.is_unspecified() => Some(PublicIpProblem::Unspecified),
        _ if ip.is_loopback() => Some(PublicIpProblem::Loopback),
        _ if ip.is_multicast() => Some(PublicIpProblem::Multicast),
        IpAddr::V4(v4) if v4.is_broadcast() => Some(PublicIpProblem::Broadcast),
        _ if ctx.own_ips.contains(&ip) => Some(PublicIpProblem::Ours),
        _ if [ctx.network(Family::V4), ctx.network(Family::V6)]
            .into_iter()
            .flatten()
            .any(|n| n.contains(ip)) =>
        {
            Some(PublicIpProblem::InsidePodNetwork)
        }
        _ => None,
    };
    match problem {
        Some(p) => Err(reject(p)),
        None => Ok(ip),
    }
}

/// A node that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedNode {
    pub name: String,
    pub reason: Rejection,
}

/// The outcome of judging all known nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSelection {
    /// Accepted peers, sorted by name.
    pub peers: Vec<Peer>,
    /// Rejected nodes, sorted by name.
    pub rejected: Vec<RejectedNode>,
}

#[cfg(test)]
impl PeerSelection {
    /// The accepted names and each rejected node's name and kind, for assertions.
    pub(crate) fn verdicts(&self) -> (Vec<&str>, Vec<(&str, RejectKind)>) {
        let names = self.peers.iter().map(|p| p.name.as_str()).collect();
        let rejected = self
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.kind()))
            .collect();
        (names, rejected)
    }
}

/// Judges every node (our own node, by name, is skipped): per-node validation, then conflicts
/// resolved in age order — the oldest node (then smallest name) keeps a contested subnet or
/// MAC; later claimants are rejected.
pub fn select_peers<'a, I>(
    nodes: I,
    keys: &AnnotationKeys,
    ctx: &ValidationContext,
) -> PeerSelection
where
    I: IntoIterator<Item = &'a NodeInfo>,
{
    select_peers_parsed_by(nodes, ctx, |node| parse_peer(node, keys, ctx))
}

/// [`select_peers`] with each node's [`parse_peer`] verdict supplied by `parse` (e.g. from a
/// memo of earlier passes).
pub fn select_peers_parsed_by<'a, I>(
    nodes: I,
    ctx: &ValidationContext,
    mut parse: impl FnMut(&NodeInfo) -> Result<Peer, Rejection>,
) -> PeerSelection
where
    I: IntoIterator<Item = &'a NodeInfo>,
{
    let mut out = PeerSelection::default();
    // Sized up front: at 5000 nodes, doubling would leave both vectors up to twice the bytes
    // at the start-up peak. (Names are unique, so the unstable sorts below are exact.)
    let nodes = nodes.into_iter();
    let mut candidates = Vec::with_capacity(nodes.size_hint().0);
    for node in nodes {
        if node.name == ctx.own_node {
            continue;
        }
        match parse(node) {
            Ok(p) => candidates.push(p),
            Err(reason) => out.rejected.push(RejectedNode {
                name: node.name.clone(),
                reason,
            }),
        }
    }
    // Age order; nodes without a creationTimestamp count as youngest.
    candidates.sort_unstable_by(|a, b| {
        (a.created.is_none(), a.created, &a.name).cmp(&(b.created.is_none(), b.created, &b.name))
    });
    out.peers.reserve_exact(candidates.len());
    let mut held = Holdings::default();
    for cand in candidates {
        match held.conflict(&cand, &out.peers) {
            Some(reason) => out.rejected.push(RejectedNode {
                name: cand.name,
                reason,
            }),
            None => {
                held.hold(&cand, out.peers.len());
                out.peers.push(cand);
            }
        }
    }
    out.peers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    out.rejected.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A node that still exists (same uid, same podCIDRs) but lost its flannel annotations keeps
/// the entries it had. That is the incident this project exists for — a stale overwrite of the
/// Node drops the annotations and the owner re-asserts them within milliseconds — and dropping
/// the peer meanwhile would cut its pods off from this node. Upstream likewise ignores
/// updates of a node without its annotation until the node is deleted. A kept peer must still
/// not conflict (the same rule as [`select_peers`]) with any accepted or kept one.
#[derive(Debug, Default)]
pub struct LostAnnotations {
    /// The last accepted form of every programmed peer, by name. Shared (the last pass's
    /// summary shows the same peers): one copy of every peer lives between passes.
    last_good: Arc<[Peer]>,
    /// Peers currently kept this way.
    kept: HashSet<String>,
}

impl LostAnnotations {
    /// Moves the peers that qualify from `selection.rejected` back into `selection.peers` (in
    /// their last accepted form) and remembers the result as the new last accepted set.
    /// `node` looks up a node's current state. Returns the peers kept now that were not kept
    /// by the previous call (to log each once).
    pub fn keep(
        &mut self,
        selection: &mut PeerSelection,
        node: impl Fn(&str) -> Option<NodeInfo>,
    ) -> Vec<String> {
        let mut held = Holdings::default();
        for (i, p) in selection.peers.iter().enumerate() {
            held.hold(p, i);
        }
        let mut kept: Vec<Peer> = Vec::new();
        let last_good = &self.last_good;
        let accepted = selection.peers.len();
        selection.rejected.retain(|r| {
            if r.reason.kind() != RejectKind::NotManaged {
                return true;
            }
            let prev = last_good
                .binary_search_by(|p| p.name.as_str().cmp(&r.name))
                .ok()
                .map(|i| &last_good[i]);
            let (Some(prev), Some(node)) = (prev, node(&r.name)) else {
                return true;
            };
            let same_node = node.uid == prev.uid
                && prev.endpoints().all(|(_, ep)| {
                    node.pod_cidrs
                        .iter()
                        .any(|c| parse_cidr(c).is_ok_and(|c| c == ep.subnet))
                });
            if same_node && held.conflict_index(prev).is_none() {
                held.hold(prev, accepted + kept.len());
                kept.push(prev.clone());
                false
            } else {
                true
            }
        });
        let kept_names: HashSet<String> = kept.iter().map(|p| p.name.clone()).collect();
        let newly: Vec<String> = kept_names.difference(&self.kept).cloned().collect();
        self.kept = kept_names;
        selection.peers.extend(kept);
        selection.peers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.last_good = selection.peers.as_slice().into();
        newly
    }

    /// The peers of the last [`LostAnnotations::keep`] (the programmed ones), in name order.
    pub fn programmed(&self) -> Arc<[Peer]> {
        self.last_good.clone()
    }
}

/// [`parse_peer`] verdicts by node name, valid while the node's uid and resourceVersion are
/// the same. Used during the first list, when a pass runs per page over every node listed so
/// far and would otherwise parse the first page's nodes once per page.
#[derive(Debug, Default)]
pub struct ParseMemo {
    by_name: HashMap<String, MemoEntry>,
}

#[derive(Debug)]
struct MemoEntry {
    /// The node's uid and resourceVersion as one digest (two strings per node less at the
    /// start-up peak). Only provisional passes use the memo and the first complete pass parses
    /// every node afresh, so even a digest collision could only delay a change to that pass.
    version: u64,
    /// Boxed: a map's spare slots (up to half of them) then cost a pointer, not a verdict.
    verdict: Box<Result<Peer, Rejection>>,
}

fn memo_version(node: &NodeInfo) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    (&node.uid, &node.resource_version).hash(&mut h);
    h.finish()
}

impl ParseMemo {
    /// `parse_peer(node, ..)`, from the memo when the node is unchanged.
    pub fn parse(
        &mut self,
        node: &NodeInfo,
        keys: &AnnotationKeys,
        ctx: &ValidationContext,
    ) -> Result<Peer, Rejection> {
        let version = memo_version(node);
        if let Some(e) = self.by_name.get(&node.name)
            && e.version == version
        {
            return (*e.verdict).clone();
        }
        let verdict = parse_peer(node, keys, ctx);
        self.by_name.insert(
            node.name.clone(),
            MemoEntry {
                version,
                verdict: Box::new(verdict.clone()),
            },
        );
        verdict
    }
}

/// Remembers each node's last rejection so that a rejection is logged and counted once per
/// change, not on every reconcile.
#[derive(Debug, Clone, Default)]
pub struct RejectionTracker {
    last: HashMap<String, Rejection>,
}

impl RejectionTracker {
    /// Records the current rejections; returns those that are new or whose reason changed.
    /// Nodes no longer rejected (accepted or gone) are forgotten, so a later relapse reports
    /// again.
    pub fn update<'a>(&mut self, current: &'a [RejectedNode]) -> Vec<&'a RejectedNode> {
        let mut next = HashMap::with_capacity(current.len());
        let mut changed = Vec::new();
        for r in current {
            if self.last.get(&r.name) != Some(&r.reason) {
                changed.push(r);
            }
            next.insert(r.name.clone(), r.reason.clone());
        }
        self.last = next;
        changed
    }
}

/// Subnets and MACs held by accepted peers, for O(log n) conflict checks (a full-cluster
/// selection at 5000 nodes must not be quadratic).
#[derive(Debug, Default)]
struct Holdings {
    /// Per family: range start → (range end, index of the holder). Held ranges are disjoint.
    ranges: [BTreeMap<u128, (u128, usize)>; 2],
    macs: [HashMap<MacAddr, usize>; 2],
}

/// What a conflicting candidate clashed with, by the holder's index.
enum Held {
    Subnet(usize),
    Mac(usize),
}

fn family_slot(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// First and last address of a network as integers.
fn bounds(net: IpNetwork) -> (u128, u128) {
    match net {
        IpNetwork::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNetwork::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl Holdings {
    fn conflict(&self, cand: &Peer, accepted: &[Peer]) -> Option<Rejection> {
        let (family, ep, what) = self.conflict_index(cand)?;
        Some(match what {
            Held::Subnet(idx) => Rejection::SubnetConflict {
                family,
                subnet: ep.subnet,
                holder: accepted[idx].name.clone(),
            },
            Held::Mac(idx) => Rejection::VtepMacConflict {
                family,
                mac: ep.vtep_mac,
                holder: accepted[idx].name.clone(),
            },
        })
    }

    /// The peer conflict rule: in one family, two peers may neither overlap in subnet nor
    /// share a VTEP MAC. Returns the first clash with what is held, and the holder's index.
    fn conflict_index<'p>(&self, cand: &'p Peer) -> Option<(Family, &'p PeerEndpoint, Held)> {
        for (family, ep) in cand.endpoints() {
            let slot = family_slot(family);
            let (start, end) = bounds(ep.subnet);
            // Disjoint held ranges: only the one starting last at or before our end can reach us.
            if let Some((_, &(held_end, idx))) = self.ranges[slot].range(..=end).next_back()
                && held_end >= start
            {
                return Some((family, ep, Held::Subnet(idx)));
            }
            if let Some(&idx) = self.macs[slot].get(&ep.vtep_mac) {
                return Some((family, ep, Held::Mac(idx)));
            }
        }
        None
    }

    fn hold(&mut self, peer: &Peer, idx: usize) {
        for (family, ep) in peer.endpoints() {
            let slot = family_slot(family);
            let (start, end) = bounds(ep.subnet);
            self.ranges[slot].insert(start, (end, idx));
            self.macs[slot].insert(ep.vtep_mac, idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const K: &str = "flannel.alpha.coreos.com/";

    fn netconf(dual: bool) -> NetConf {
        if dual {
            NetConf::parse(
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#,
            )
            .unwrap()
        } else {
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap()
        }
    }

    fn ctx(dual: bool) -> ValidationContext {
        let own = if dual {
            PodSubnets::from_pod_cidrs(&["10.244.0.0/24", "fd00:10::/64"]).unwrap()
        } else {
            PodSubnets::from_pod_cidrs(&["10.244.0.0/24"]).unwrap()
        };
        ValidationContext::new(
            &netconf(dual),
            "self",
            own,
            vec!["192.168.1.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
            vec![MacAddr([2, 0, 0, 0, 0, 1])],
        )
    }

    /// A valid v4 peer node `name` with subnet 10.244.<n>.0/24, MAC 02:..:n, public IP 192.168.1.<n>.
    fn node(name: &str, n: u8, created_secs: i64) -> NodeInfo {
        let mut a = BTreeMap::new();
        a.insert(format!("{K}kube-subnet-manager"), "true".to_string());
        a.insert(format!("{K}backend-type"), "vxlan".to_string());
        a.insert(
            format!("{K}backend-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"02:00:00:00:01:{n:02x}"}}"#),
        );
        a.insert(format!("{K}public-ip"), format!("192.168.1.{n}"));
        NodeInfo {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            created: Some(Timestamp::from_second(1_700_000_000 + created_secs).unwrap()),
            resource_version: "1".into(),
            pod_cidrs: vec![format!("10.244.{n}.0/24")],
            annotations: a.into(),
            ..NodeInfo::default()
        }
    }

    fn dual_node(name: &str, n: u8, created_secs: i64) -> NodeInfo {
        let mut nd = node(name, n, created_secs);
        nd.pod_cidrs.push(format!("fd00:10:0:{n:x}::/64"));
        nd.annotations.insert(
            format!("{K}backend-v6-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"02:00:00:00:06:{n:02x}"}}"#),
        );
        nd.annotations
            .insert(format!("{K}public-ipv6"), format!("fd00:1::{n:x}"));
        nd
    }

    fn keys() -> AnnotationKeys {
        AnnotationKeys::default()
    }

    fn judge(n: &NodeInfo) -> Result<Peer, Rejection> {
        parse_peer(n, &keys(), &ctx(false))
    }

    fn with(mut n: NodeInfo, key: &str, value: Option<&str>) -> NodeInfo {
        match value {
            Some(v) => n.annotations.insert(format!("{K}{key}"), v.to_string()),
            None => n.annotations.remove(&format!("{K}{key}")),
        };
        n
    }

    #[test]
    fn a_256_kib_annotation_is_kept_and_shown_only_as_a_bounded_excerpt() {
        // The API server allows 256 KiB of annotations; control characters make a Debug
        // rendering six times longer. Every copy the daemon keeps of a rejection (tracker,
        // memo, the pass summary's text) must stay small.
        let hostile = "\u{1}".repeat(256 << 10);
        let json_hostile = format!(
            r#"{{"VNI":1,"VtepMAC":{{"x":"{}"}}}}"#,
            "y".repeat(256 << 10)
        );
        let cases = [
            (
                "kube-subnet-manager",
                hostile.as_str(),
                RejectKind::NotManaged,
            ),
            ("backend-type", hostile.as_str(), RejectKind::BackendType),
            ("backend-data", hostile.as_str(), RejectKind::BadBackendData),
            (
                "backend-data",
                json_hostile.as_str(),
                RejectKind::BadBackendData,
            ),
            ("public-ip", hostile.as_str(), RejectKind::BadPublicIp),
        ];
        let mut tracker = RejectionTracker::default();
        let mut memo = ParseMemo::default();
        for (key, value, kind) in cases {
            let n = with(node("h", 9, 0), key, Some(value));
            let reason = judge(&n).unwrap_err();
            assert_eq!(reason.kind(), kind, "{key}");
            let shown = reason.to_string();
            assert!(shown.len() < 2048, "{key}: {} bytes shown", shown.len());
            assert!(format!("{reason:?}").len() < 2048, "{key}: Debug");
            assert!(memo.parse(&n, &keys(), &ctx(false)).is_err());
            let rejected = [RejectedNode {
                name: "h".into(),
                reason,
            }];
            tracker.update(&rejected);
        }
        let kept: usize = tracker.last.values().map(|r| format!("{r:?}").len()).sum();
        assert!(kept < 2048, "{kept} bytes");
        // A different hostile value past the excerpt is still a change: logged again.
        let other = format!("{}x", "\u{1}".repeat(256 << 10));
        let again = [RejectedNode {
            name: "h".into(),
            reason: judge(&with(node("h", 9, 0), "public-ip", Some(&other))).unwrap_err(),
        }];
        assert_eq!(tracker.update(&again).len(), 1);
        assert!(tracker.update(&again).is_empty());
    }

    #[test]
    fn the_parse_memo_reuses_a_verdict_only_for_the_same_node_version() {
        let ctx = ctx(false);
        let a = node("a", 5, 0);
        let clash = node("b", 5, 1); // same subnet, younger
        let broken = with(node("c", 7, 0), "backend-data", Some("{"));
        let nodes = [&a, &clash, &broken];
        let mut memo = ParseMemo::default();
        for _ in 0..2 {
            let memoed = select_peers_parsed_by(nodes, &ctx, |n| memo.parse(n, &keys(), &ctx));
            assert_eq!(memoed, select_peers(nodes, &keys(), &ctx));
        }
        // Same uid and resourceVersion: the remembered verdict stands (the API never changes
        // an object without a new resourceVersion).
        let same_version = with(node("c", 7, 0), "backend-data", None);
        assert!(matches!(
            memo.parse(&same_version, &keys(), &ctx),
            Err(Rejection::BackendData { .. })
        ));
        // A new version, or a new node under the old name, is parsed again.
        let new_version = NodeInfo {
            resource_version: "2".into(),
            ..same_version.clone()
        };
        assert!(matches!(
            memo.parse(&new_version, &keys(), &ctx),
            Err(Rejection::MissingAnnotation { .. })
        ));
        let recreated = NodeInfo {
            uid: "uid-c-2".into(),
            ..node("c", 7, 0)
        };
        assert_eq!(memo.parse(&recreated, &keys(), &ctx), judge(&recreated));
    }

    #[test]
    fn valid_v4_peer() {
        let p = judge(&node("a", 5, 0)).unwrap();
        assert_eq!(p.name, "a");
        assert_eq!(p.subnet_v4(), Some("10.244.5.0/24".parse().unwrap()));
        assert_eq!(p.subnet_v6(), None);
        let e = p.v4.unwrap();
        assert_eq!(e.vtep_mac, MacAddr([2, 0, 0, 0, 1, 5]));
        assert_eq!(e.public_ip, "192.168.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(e.vni, Some(1));
        assert!(p.v6.is_none());
    }

    #[test]
    fn valid_dual_stack_peer_and_missing_family() {
        let c = ctx(true);
        let p = parse_peer(&dual_node("a", 5, 0), &keys(), &c).unwrap();
        assert_eq!(p.subnet_v6(), Some("fd00:10:0:5::/64".parse().unwrap()));
        assert_eq!(
            p.v6.unwrap().public_ip,
            "fd00:1::5".parse::<IpAddr>().unwrap()
        );
        // v4-only peer in a dual-stack cluster: rejected like upstream
        assert_eq!(
            parse_peer(&node("b", 6, 0), &keys(), &c),
            Err(Rejection::NoPodCidr { family: Family::V6 })
        );
        let mut n = dual_node("c", 7, 0);
        n.annotations.remove(&format!("{K}public-ipv6"));
        assert_eq!(
            parse_peer(&n, &keys(), &c).unwrap_err().kind(),
            RejectKind::MissingAnnotation
        );
    }

    #[test]
    fn old_backend_data_without_vni_is_accepted() {
        let n = with(
            node("a", 5, 0),
            "backend-data",
            Some(r#"{"VtepMAC":"02-00-00-00-01-05"}"#),
        );
        let p = judge(&n).unwrap();
        assert_eq!(p.v4.unwrap().vni, None);
        assert_eq!(p.v4.unwrap().vtep_mac, MacAddr([2, 0, 0, 0, 1, 5]));
    }

    #[test]
    fn every_per_node_rejection_rule() {
        let n = || node("a", 5, 0);
        let mut no_cidr = n();
        no_cidr.pod_cidrs.clear();
        let mut bad_cidr = n();
        bad_cidr.pod_cidrs = vec!["10.244.5.0/33".into()];
        let mut v6_only_cidr = n();
        v6_only_cidr.pod_cidrs = vec!["fd00:10:0:5::/64".into()];
        let mut whole = n();
        whole.pod_cidrs = vec!["10.244.0.0/16".into()];
        let mut wider = n();
        wider.pod_cidrs = vec!["10.0.0.0/8".into()];
        let mut outside = n();
        outside.pod_cidrs = vec!["10.245.5.0/24".into()];
        let mut straddle = n();
        straddle.pod_cidrs = vec!["10.244.0.0/15".into()];
        let mut own = n();
        own.pod_cidrs = vec!["10.244.0.0/24".into()];
        let mut own_nested = n();
        own_nested.pod_cidrs = vec!["10.244.0.128/25".into()];
        let mut own_wider = n();
        own_wider.pod_cidrs = vec!["10.244.0.0/23".into()];

        let cases: Vec<(&str, NodeInfo, RejectKind)> = vec![
            (
                "no ksm",
                with(n(), "kube-subnet-manager", None),
                RejectKind::NotManaged,
            ),
            (
                "ksm false",
                with(n(), "kube-subnet-manager", Some("True")),
                RejectKind::NotManaged,
            ),
            (
                "no backend type",
                with(n(), "backend-type", None),
                RejectKind::BackendType,
            ),
            (
                "host-gw",
                with(n(), "backend-type", Some("host-gw")),
                RejectKind::BackendType,
            ),
            (
                "VXLAN case",
                with(n(), "backend-type", Some("VXLAN")),
                RejectKind::BackendType,
            ),
            ("no podCIDR", no_cidr, RejectKind::NoPodCidr),
            ("bad podCIDR", bad_cidr, RejectKind::BadPodCidr),
            ("only v6 podCIDR", v6_only_cidr, RejectKind::NoPodCidr),
            ("whole network", whole, RejectKind::SubnetCoversNetwork),
            ("wider than network", wider, RejectKind::SubnetCoversNetwork),
            ("outside", outside, RejectKind::SubnetOutsideNetwork),
            ("straddles", straddle, RejectKind::SubnetCoversNetwork),
            ("own subnet", own, RejectKind::SubnetOverlapsOwn),
            ("inside own", own_nested, RejectKind::SubnetOverlapsOwn),
            ("around own", own_wider, RejectKind::SubnetOverlapsOwn),
            (
                "no backend-data",
                with(n(), "backend-data", None),
                RejectKind::MissingAnnotation,
            ),
            (
                "garbage json",
                with(n(), "backend-data", Some("{not json")),
                RejectKind::BadBackendData,
            ),
            (
                "json array",
                with(n(), "backend-data", Some("[1,2]")),
                RejectKind::BadBackendData,
            ),
            (
                "no mac",
                with(n(), "backend-data", Some(r#"{"VNI":1}"#)),
                RejectKind::BadBackendData,
            ),
            (
                "malformed mac",
                with(n(), "backend-data", Some(r#"{"VNI":1,"VtepMAC":"02:00"}"#)),
                RejectKind::BadVtepMac,
            ),
            (
                "64-bit mac",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:00:00:01"}"#),
                ),
                RejectKind::BadVtepMac,
            ),
            (
                "mac not a string",
                with(n(), "backend-data", Some(r#"{"VNI":1,"VtepMAC":7}"#)),
                RejectKind::BadBackendData,
            ),
            (
                "vni",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":2,"VtepMAC":"02:00:00:00:01:05"}"#),
                ),
                RejectKind::VniMismatch,
            ),
            (
                "zero mac",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}"#),
                ),
                RejectKind::BadVtepMac,
            ),
            (
                "bcast mac",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#),
                ),
                RejectKind::BadVtepMac,
            ),
            (
                "mcast mac",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#),
                ),
                RejectKind::BadVtepMac,
            ),
            (
                "our mac",
                with(
                    n(),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}"#),
                ),
                RejectKind::BadVtepMac,
            ),
            (
                "no public ip",
                with(n(), "public-ip", None),
                RejectKind::MissingAnnotation,
            ),
            (
                "garbage ip",
                with(n(), "public-ip", Some("x.y")),
                RejectKind::BadPublicIp,
            ),
            (
                "v6 as public-ip",
                with(n(), "public-ip", Some("fd00::1")),
                RejectKind::BadPublicIp,
            ),
            (
                "unspecified",
                with(n(), "public-ip", Some("0.0.0.0")),
                RejectKind::BadPublicIp,
            ),
            (
                "loopback",
                with(n(), "public-ip", Some("127.0.0.2")),
                RejectKind::BadPublicIp,
            ),
            (
                "multicast",
                with(n(), "public-ip", Some("239.1.1.1")),
                RejectKind::BadPublicIp,
            ),
            (
                "broadcast",
                with(n(), "public-ip", Some("255.255.255.255")),
                RejectKind::BadPublicIp,
            ),
            (
                "ours",
                with(n(), "public-ip", Some("192.168.1.1")),
                RejectKind::BadPublicIp,
            ),
            (
                "in pod net",
                with(n(), "public-ip", Some("10.244.9.9")),
                RejectKind::BadPublicIp,
            ),
        ];
        for (what, node, want) in cases {
            let got = judge(&node);
            match got {
                Err(r) => {
                    assert_eq!(r.kind(), want, "{what}: {r}");
                    assert!(!r.to_string().is_empty());
                }
                Ok(_) => panic!("{what}: accepted"),
            }
        }
    }

    #[test]
    fn public_ip_problem_details() {
        let cases = [
            ("0.0.0.0", PublicIpProblem::Unspecified),
            ("127.0.0.1", PublicIpProblem::Loopback),
            ("224.0.0.1", PublicIpProblem::Multicast),
            ("255.255.255.255", PublicIpProblem::Broadcast),
            ("192.168.1.1", PublicIpProblem::Ours),
            ("10.244.3.3", PublicIpProblem::InsidePodNetwork),
            ("nope", PublicIpProblem::Malformed),
        ];
        for (ip, want) in cases {
            let r = judge(&with(node("a", 5, 0), "public-ip", Some(ip))).unwrap_err();
            assert!(
                matches!(r, Rejection::PublicIp { problem, .. } if problem == want),
                "{ip}: {r:?}"
            );
        }
        let c = ctx(true);
        for (ip, want) in [
            ("::", PublicIpProblem::Unspecified),
            ("::1", PublicIpProblem::Loopback),
            ("ff02::1", PublicIpProblem::Multicast),
            ("fd00:1::1", PublicIpProblem::Ours),
            ("fd00:10::99", PublicIpProblem::InsidePodNetwork),
            ("10.0.0.1", PublicIpProblem::Malformed),
        ] {
            let n = with(dual_node("a", 5, 0), "public-ipv6", Some(ip));
            let r = parse_peer(&n, &keys(), &c).unwrap_err();
            assert!(
                matches!(r, Rejection::PublicIp { family: Family::V6, problem, .. } if problem == want),
                "{ip}: {r:?}"
            );
        }
    }

    #[test]
    fn own_node_is_skipped_not_rejected() {
        let mut me = node("self", 0, 0);
        me.pod_cidrs = vec!["10.244.0.0/24".into()];
        let sel = select_peers([&me, &node("a", 5, 0)], &keys(), &ctx(false));
        assert_eq!(sel.peers.len(), 1);
        assert!(sel.rejected.is_empty());
    }

    #[test]
    fn older_peer_keeps_contested_subnet() {
        let old = node("zeta", 5, 0);
        let mut newer = node("alpha", 6, 100);
        newer.pod_cidrs = vec!["10.244.5.0/24".into()];
        let mut nested = node("beta", 7, 200);
        nested.pod_cidrs = vec!["10.244.5.128/25".into()];
        let mut around = node("gamma", 8, 300);
        around.pod_cidrs = vec!["10.244.4.0/23".into()];
        let fine = node("delta", 9, 400);
        // whatever the input order, the oldest wins
        for order in [
            vec![&old, &newer, &nested, &around, &fine],
            vec![&fine, &around, &nested, &newer, &old],
        ] {
            let sel = select_peers(order, &keys(), &ctx(false));
            let (names, rejected) = sel.verdicts();
            assert_eq!(names, vec!["delta", "zeta"]);
            assert_eq!(
                rejected,
                vec![
                    ("alpha", RejectKind::SubnetConflict),
                    ("beta", RejectKind::SubnetConflict),
                    ("gamma", RejectKind::SubnetConflict),
                ]
            );
            assert!(matches!(
                &sel.rejected[0].reason,
                Rejection::SubnetConflict { holder, .. } if holder == "zeta"
            ));
        }
    }

    #[test]
    fn same_age_tie_broken_by_name_and_missing_timestamp_is_youngest() {
        let a = node("a", 5, 0);
        let mut b = node("b", 6, 0);
        b.pod_cidrs = a.pod_cidrs.clone();
        let sel = select_peers([&b, &a], &keys(), &ctx(false));
        assert_eq!(sel.peers[0].name, "a");
        assert_eq!(sel.rejected[0].name, "b");

        let mut undated = node("aa", 7, 0);
        undated.created = None;
        let mut dated = node("zz", 8, 999);
        dated.pod_cidrs = undated.pod_cidrs.clone();
        let sel = select_peers([&undated, &dated], &keys(), &ctx(false));
        assert_eq!(sel.peers[0].name, "zz");
        assert_eq!(sel.rejected[0].name, "aa");
    }

    #[test]
    fn rejected_older_node_does_not_hold_its_subnet() {
        let broken_old = with(node("old", 5, 0), "public-ip", Some("127.0.0.1"));
        let mut newer = node("new", 6, 100);
        newer.pod_cidrs = vec!["10.244.5.0/24".into()];
        let sel = select_peers([&broken_old, &newer], &keys(), &ctx(false));
        assert_eq!(sel.peers.len(), 1);
        assert_eq!(sel.peers[0].name, "new");
        assert_eq!(sel.rejected[0].reason.kind(), RejectKind::BadPublicIp);
    }

    #[test]
    fn shared_vtep_mac_is_a_conflict() {
        let a = node("a", 5, 0);
        let b = with(
            node("b", 6, 10),
            "backend-data",
            Some(r#"{"VNI":1,"VtepMAC":"02:00:00:00:01:05"}"#),
        );
        let sel = select_peers([&a, &b], &keys(), &ctx(false));
        assert_eq!(sel.peers.len(), 1);
        assert_eq!(sel.rejected[0].reason.kind(), RejectKind::VtepMacConflict);
    }

    #[test]
    fn dual_stack_conflict_in_one_family_rejects_the_node() {
        let c = ctx(true);
        let a = dual_node("a", 5, 0);
        let mut b = dual_node("b", 6, 10);
        b.pod_cidrs[1] = "fd00:10:0:5::/64".into();
        let sel = select_peers([&a, &b], &keys(), &c);
        assert_eq!(sel.peers.len(), 1);
        assert!(matches!(
            sel.rejected[0].reason,
            Rejection::SubnetConflict {
                family: Family::V6,
                ..
            }
        ));
    }

    /// The indexed conflict check agrees with a brute-force pairwise check on random subnets
    /// of all sizes (nested, equal, adjacent, disjoint).
    #[test]
    fn indexed_conflicts_match_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let c = ctx(false);
        let mut conflicts = 0;
        for _ in 0..200 {
            let mut nodes = Vec::new();
            for i in 0..40u32 {
                let prefix = rng.random_range(20..=28u8);
                let third = rng.random_range(1..=255u8);
                let fourth = rng.random_range(0..=255u8);
                let mut n = node(&format!("n{i:02}"), 2, i64::from(rng.random_range(0..10u8)));
                n.pod_cidrs = vec![format!("10.244.{third}.{fourth}/{prefix}")];
                n.annotations.insert(
                    format!("{K}backend-data"),
                    format!(
                        r#"{{"VNI":1,"VtepMAC":"02:00:00:00:00:{:02x}"}}"#,
                        rng.random_range(2..60u8)
                    ),
                );
                nodes.push(n);
            }
            let sel = select_peers(&nodes, &keys(), &c);
            // reference: greedy in the same age order with pairwise checks
            let mut cands: Vec<Peer> = nodes
                .iter()
                .filter_map(|n| parse_peer(n, &keys(), &c).ok())
                .collect();
            cands.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
            let mut accepted: Vec<Peer> = Vec::new();
            for cand in cands {
                let e = cand.v4.unwrap();
                let clash = accepted.iter().any(|h| {
                    let he = h.v4.unwrap();
                    overlaps(e.subnet, he.subnet) || e.vtep_mac == he.vtep_mac
                });
                if !clash {
                    accepted.push(cand);
                }
            }
            accepted.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(sel.peers, accepted);
            conflicts += sel
                .rejected
                .iter()
                .filter(|r| {
                    matches!(
                        r.reason.kind(),
                        RejectKind::SubnetConflict | RejectKind::VtepMacConflict
                    )
                })
                .count();
        }
        assert!(conflicts > 1000, "conflicts exercised: {conflicts}");
    }

    #[test]
    fn rejections_reported_once_per_change() {
        let r = |name: &str, reason: Rejection| RejectedNode {
            name: name.into(),
            reason,
        };
        let mut t = RejectionTracker::default();
        let first = vec![
            r("a", Rejection::NotManaged { value: None }),
            r("b", Rejection::NoPodCidr { family: Family::V4 }),
        ];
        assert_eq!(t.update(&first).len(), 2);
        assert!(t.update(&first).is_empty(), "unchanged ⇒ silent");
        let changed = vec![
            r(
                "a",
                Rejection::NotManaged {
                    value: Some("false".into()),
                },
            ),
            r("b", Rejection::NoPodCidr { family: Family::V4 }),
        ];
        let out = t.update(&changed);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "a");
        assert!(t.update(&[]).is_empty());
        assert_eq!(
            t.update(&changed).len(),
            2,
            "relapse after recovery reports again"
        );
    }

    #[test]
    fn benign_and_kind_labels() {
        assert!(Rejection::NotManaged { value: None }.is_benign());
        assert!(Rejection::NoPodCidr { family: Family::V4 }.is_benign());
        assert!(!Rejection::MissingAnnotation { key: "k".into() }.is_benign());
        let labels: std::collections::HashSet<_> =
            RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), RejectKind::ALL.len());
        for (i, k) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    /// Property-style: no input, however broken, makes parsing or selection panic, and anything
    /// accepted satisfies the invariants.
    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xf1a77e1);
        let alphabet: Vec<char> =
            "0123456789abcdefABCDEF:-./{}[]\",VNIVtepMAC tfnul\\é€\u{0}ff::1/2425512"
                .chars()
                .collect();
        let seeds = [
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:01:05"}"#,
            "10.244.5.0/24",
            "fd00:10:0:5::/64",
            "192.168.1.5",
            "true",
            "vxlan",
        ];
        let gen_string = |rng: &mut rand::rngs::StdRng| -> String {
            if rng.random_bool(0.5) {
                // mutate a valid value
                let mut s: Vec<char> = seeds[rng.random_range(0..seeds.len())].chars().collect();
                for _ in 0..rng.random_range(1..4) {
                    let op = rng.random_range(0..3);
                    let pos = rng.random_range(0..=s.len());
                    match op {
                        0 if pos < s.len() => {
                            s.remove(pos);
                        }
                        1 => s.insert(pos, alphabet[rng.random_range(0..alphabet.len())]),
                        _ => s.truncate(pos),
                    }
                }
                s.into_iter().collect()
            } else {
                (0..rng.random_range(0..40))
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            }
        };
        let c = ctx(true);
        let k = keys();
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..300 {
            let mut nodes = Vec::new();
            for i in 0..20 {
                let mut n = dual_node(&format!("n{i}"), (i + 1) as u8, (round * 7 + i) as i64);
                for key in [
                    "kube-subnet-manager",
                    "backend-type",
                    "backend-data",
                    "public-ip",
                    "backend-v6-data",
                    "public-ipv6",
                ] {
                    if rng.random_bool(0.2) {
                        let v = gen_string(&mut rng);
                        n.annotations.insert(format!("{K}{key}"), v);
                    }
                }
                if rng.random_bool(0.2) {
                    let count = rng.random_range(0..4);
                    n.pod_cidrs = (0..count).map(|_| gen_string(&mut rng)).collect();
                }
                if rng.random_bool(0.1) {
                    n.created = None;
                }
                nodes.push(n);
            }
            let sel = select_peers(&nodes, &k, &c);
            assert_eq!(sel.peers.len() + sel.rejected.len(), nodes.len());
            accepted += sel.peers.len();
            rejected += sel.rejected.len();
            for (i, a) in sel.peers.iter().enumerate() {
                for f in [Family::V4, Family::V6] {
                    let ea = a.endpoint(f).expect("enabled family present");
                    assert!(ea.vtep_mac.is_unicast());
                    assert!(is_within(ea.subnet, c.network(f).unwrap()));
                    for b in &sel.peers[i + 1..] {
                        let eb = b.endpoint(f).unwrap();
                        assert!(!overlaps(ea.subnet, eb.subnet));
                        assert_ne!(ea.vtep_mac, eb.vtep_mac);
                    }
                }
            }
        }
        // Both paths must actually be exercised for the invariants above to mean anything.
        assert!(
            accepted > 500 && rejected > 500,
            "{accepted} accepted, {rejected} rejected"
        );
    }
}
