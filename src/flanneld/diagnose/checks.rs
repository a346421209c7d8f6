//! The judgements of `flanneld diagnose` (pure): the API's view of every Node, this node's
//! kernel entries against the desired state the reconciler computes from the same inputs, and
//! what the probe answers mean.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

use super::report::{Code, Problem};
use crate::flanneld::pure::annotations::AnnotationKeys;
use crate::flanneld::pure::attribution::{self, FIELD_MANAGER};
use crate::flanneld::pure::desired::{FdbEntry, KernelEntries, NeighbourEntry, RouteEntry};
use crate::flanneld::pure::node::NodeInfo;
use crate::flanneld::pure::peers::{Peer, PeerSelection, RejectKind, Rejection};
use crate::flanneld::pure::reachability::TunnelVerdict;

/// Rejections that mean only "no (complete) flannel annotations": the node may have lost
/// them, and flanneld keeps such a node's entries while it exists.
pub const LOST_ANNOTATIONS: [RejectKind; 2] =
    [RejectKind::NotManaged, RejectKind::MissingAnnotation];

/// A Node as diagnose reads it: what flanneld decides on, plus who wrote its metadata last
/// (for attribution). Only that clause is kept of `managedFields`: they are several KB per
/// Node, and diagnose reads every Node of the cluster.
#[derive(Debug, Clone, Default)]
pub struct NodeRecord {
    pub info: NodeInfo,
    pub last_writer: Option<String>,
}

impl NodeRecord {
    pub fn new(
        info: NodeInfo,
        managed_fields: &[ManagedFieldsEntry],
        keys: &AnnotationKeys,
    ) -> Self {
        let last_writer = last_writer(&info, managed_fields, keys);
        NodeRecord { info, last_writer }
    }
}

/// Problems per Node name, from the API alone (the `--cluster` view, also part of every other).
pub fn api_findings(
    nodes: &[NodeRecord],
    selection: &PeerSelection,
    keys: &AnnotationKeys,
) -> BTreeMap<String, Vec<Problem>> {
    let by_name: BTreeMap<&str, &NodeRecord> =
        nodes.iter().map(|n| (n.info.name.as_str(), n)).collect();
    let mut out: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    for r in &selection.rejected {
        let Some(node) = by_name.get(r.name.as_str()) else {
            continue;
        };
        if let Some(p) = rejection_problem(node, &r.reason, keys) {
            out.entry(r.name.clone()).or_default().push(p);
        }
    }
    for peer in &selection.peers {
        if let Some(node) = by_name.get(peer.name.as_str())
            && let Some(p) = public_ip_problem(node, peer, keys)
        {
            out.entry(peer.name.clone()).or_default().push(p);
        }
    }
    out
}

/// Our flannel keys, for attribution: a node without any of them lost all of them.
fn flannel_keys(keys: &AnnotationKeys) -> [&str; 4] {
    [
        keys.kube_subnet_manager.as_str(),
        keys.backend_type.as_str(),
        keys.backend_data.as_str(),
        keys.public_ip.as_str(),
    ]
}

/// Who last wrote a Node's metadata after flanneld did, as a clause for a detail text.
fn last_writer(
    node: &NodeInfo,
    managed_fields: &[ManagedFieldsEntry],
    keys: &AnnotationKeys,
) -> Option<String> {
    let ours = flannel_keys(keys);
    let had: BTreeMap<String, String> = ours
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
    let now: BTreeMap<String, String> = node.annotations.to_map();
    let a = attribution::attribute(managed_fields, &had, &now, &ours, FIELD_MANAGER, None)?;
    let when = a
        .time
        .map(|t| format!(" at {}", t.strftime("%Y-%m-%dT%H:%M:%SZ")))
        .unwrap_or_default();
    Some(format!(
        "last written by field manager {:?} ({}){when}",
        a.manager, a.operation
    ))
}

fn rejection_problem(
    node: &NodeRecord,
    reason: &Rejection,
    keys: &AnnotationKeys,
) -> Option<Problem> {
    let name = &node.info.name;
    let has_cidr = !node.info.pod_cidrs.iter().all(|c| c.is_empty());
    let no_flannel = flannel_keys(keys)
        .iter()
        .all(|k| !node.info.annotations.contains_key(k));
    match reason.kind() {
        // Waiting for a podCIDR, or another backend / a node flannel does not run on.
        RejectKind::NoPodCidr | RejectKind::BackendType => None,
        kind if LOST_ANNOTATIONS.contains(&kind) && has_cidr => {
            let what = if no_flannel {
                "no flannel annotations".to_string()
            } else {
                format!("incomplete flannel annotations ({reason})")
            };
            let writer = (node.last_writer.as_ref())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            Some(Problem::new(
                Code::NoAnnotations,
                format!(
                    "{what} although it has a podCIDR: no node can reach its pods — its flanneld \
                     is not running, or another controller removed them{writer}"
                ),
                format!("check the kube-flannel pod on {name} and whoever writes its Node object"),
            ))
        }
        kind if LOST_ANNOTATIONS.contains(&kind) => None,
        _ => Some(Problem::new(
            Code::Rejected,
            format!("flanneld does not program it: {reason}"),
            "fix the Node's podCIDR or annotations (see the reason); its pods are unreachable \
             from every node meanwhile",
        )),
    }
}

fn public_ip_problem(node: &NodeRecord, peer: &Peer, keys: &AnnotationKeys) -> Option<Problem> {
    let ann = &node.info.annotations;
    let overridden = [
        &keys.public_ip_overwrite,
        &keys.public_ipv6_overwrite,
        &keys.node_public_ip,
        &keys.node_public_ipv6,
    ]
    .iter()
    .any(|k| ann.contains_key(k));
    let addresses: BTreeSet<IpAddr> = node
        .info
        .internal_ips
        .iter()
        .chain(&node.info.external_ips)
        .filter_map(|a| a.parse().ok())
        .collect();
    if overridden || addresses.is_empty() {
        return None;
    }
    let foreign: Vec<String> = peer
        .endpoints()
        .map(|(_, e)| e.public_ip)
        .filter(|ip| !addresses.contains(ip))
        .map(|ip| ip.to_string())
        .collect();
    if foreign.is_empty() {
        return None;
    }
    let listed: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    Some(Problem::new(
        Code::PublicIpNotOwned,
        format!(
            "public IP {} is none of the Node's addresses ({}): VXLAN packets for its pods go \
             there",
            foreign.join(", "),
            listed.join(", ")
        ),
        "fine if set on purpose with --public-ip; otherwise check --iface/--iface-regex on that \
         node",
    ))
}

/// One device's entries: what the desired state wants and what the kernel holds.
#[derive(Debug, Clone, Default)]
pub struct DeviceCheck {
    pub device: String,
    pub desired: KernelEntries,
    pub actual: KernelEntries,
}

/// Missing or wrong entries per accepted peer, and entries no Node explains (for this node).
/// `kept` are Nodes flanneld deliberately keeps programmed although they lost their
/// annotations (their entries are explained, not stale).
pub fn entry_findings(
    check: &DeviceCheck,
    peers: &[Peer],
    kept: &[&NodeInfo],
) -> (BTreeMap<String, Vec<Problem>>, Vec<Problem>) {
    let dev = &check.device;
    let mut per_peer: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    let fix = "flanneld repairs this within a second when it runs; if it stays, see its log";
    for peer in peers {
        for (_, ep) in peer.endpoints() {
            let gateway = ep.subnet.network();
            let wanted_routes: Vec<&RouteEntry> = check
                .desired
                .routes
                .iter()
                .filter(|r| r.dst == ep.subnet)
                .collect();
            let mut problems = Vec::new();
            for r in wanted_routes {
                if !check.actual.routes.contains(r) {
                    problems.push(Problem::new(
                        Code::MissingRoute,
                        format!("no route {} via {} on {dev}", r.dst, r.gateway),
                        fix,
                    ));
                }
            }
            let want_n = NeighbourEntry {
                ip: gateway,
                mac: ep.vtep_mac,
            };
            if check.desired.neighbours.contains(&want_n)
                && !check.actual.neighbours.contains(&want_n)
            {
                match check.actual.neighbours.iter().find(|n| n.ip == gateway) {
                    Some(n) => problems.push(Problem::new(
                        Code::WrongMac,
                        format!(
                            "neighbour {gateway} on {dev} has MAC {} but the Node advertises {}",
                            n.mac, ep.vtep_mac
                        ),
                        fix,
                    )),
                    None => problems.push(Problem::new(
                        Code::MissingNeighbour,
                        format!(
                            "no permanent neighbour {gateway} lladdr {} on {dev}",
                            ep.vtep_mac
                        ),
                        fix,
                    )),
                }
            }
            let want_f = FdbEntry {
                mac: ep.vtep_mac,
                dst: ep.public_ip,
            };
            if check.desired.fdb.contains(&want_f) && !check.actual.fdb.contains(&want_f) {
                problems.push(Problem::new(
                    Code::MissingFdb,
                    format!("no FDB entry {} dst {} on {dev}", ep.vtep_mac, ep.public_ip),
                    fix,
                ));
            }
            if !problems.is_empty() {
                per_peer
                    .entry(peer.name.clone())
                    .or_default()
                    .extend(problems);
            }
        }
    }

    // Stale: held by the kernel, wanted by nothing, and not a kept node's.
    let kept_nets: BTreeSet<String> = kept.iter().flat_map(|n| n.pod_cidrs.clone()).collect();
    let kept_ips: BTreeSet<IpAddr> = kept
        .iter()
        .flat_map(|n| n.internal_ips.iter().chain(&n.external_ips))
        .filter_map(|a| a.parse().ok())
        .collect();
    let kept_route = |r: &RouteEntry| kept_nets.contains(&r.dst.to_string());
    let kept_gateway = |ip: IpAddr| {
        kept_nets
            .iter()
            .filter_map(|c| c.parse::<ipnetwork::IpNetwork>().ok())
            .any(|c| c.network() == ip)
    };
    let stale_fix = "flanneld removes it on its next pass; if it stays, flanneld is not running";
    let mut stale = Vec::new();
    for r in check.actual.routes.difference(&check.desired.routes) {
        if !kept_route(r) {
            stale.push(Problem::new(
                Code::StaleEntry,
                format!(
                    "route {} via {} on {dev}: no Node has this subnet",
                    r.dst, r.gateway
                ),
                stale_fix,
            ));
        }
    }
    let mac_taken = |m| check.desired.neighbours.iter().any(|n| n.mac == m);
    for n in check
        .actual
        .neighbours
        .difference(&check.desired.neighbours)
    {
        // A wrong-MAC neighbour is reported with its peer.
        let of_peer = check.desired.neighbours.iter().any(|d| d.ip == n.ip);
        if !of_peer && !kept_gateway(n.ip) {
            stale.push(Problem::new(
                Code::StaleEntry,
                format!(
                    "neighbour {} lladdr {} on {dev}: no Node has this gateway",
                    n.ip, n.mac
                ),
                stale_fix,
            ));
        }
    }
    for f in check.actual.fdb.difference(&check.desired.fdb) {
        if !mac_taken(f.mac) && !kept_ips.contains(&f.dst) {
            stale.push(Problem::new(
                Code::StaleEntry,
                format!(
                    "FDB entry {} dst {} on {dev}: no Node has this VTEP",
                    f.mac, f.dst
                ),
                stale_fix,
            ));
        }
    }
    (per_peer, stale)
}

/// What a peer's probe answers mean, as a problem; `None` when the tunnel works at full size.
pub fn probe_finding(verdict: TunnelVerdict, mtu: u32, public_ip: IpAddr) -> Option<Problem> {
    let code = match verdict {
        TunnelVerdict::Reachable => return None,
        TunnelVerdict::MtuBlackhole => Code::MtuBlackhole,
        TunnelVerdict::OneWay | TunnelVerdict::UdpDropped | TunnelVerdict::NoAnswer => {
            Code::TunnelUnreachable
        }
    };
    Some(Problem::new(
        code,
        verdict.detail(mtu, public_ip),
        verdict.fix(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flanneld::pure::annotations::AnnotationPrefix;
    use crate::net::MacAddr;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use serde_json::json;

    fn keys() -> AnnotationKeys {
        AnnotationKeys::new(AnnotationPrefix::new("flannel.alpha.coreos.com").unwrap())
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0e, 0, 0, 0, 0, last])
    }

    fn peer(name: &str, i: u8) -> Peer {
        Peer::numbered(name, i, "192.168.0")
    }

    fn entries_of(peers: &[Peer]) -> KernelEntries {
        let mut e = KernelEntries::default();
        for p in peers {
            let ep = p.v4.unwrap();
            e.routes.insert(RouteEntry {
                dst: ep.subnet,
                gateway: ep.subnet.network(),
                onlink: true,
                via_device: true,
            });
            e.neighbours.insert(NeighbourEntry {
                ip: ep.subnet.network(),
                mac: ep.vtep_mac,
            });
            e.fdb.insert(FdbEntry {
                mac: ep.vtep_mac,
                dst: ep.public_ip,
            });
        }
        e
    }

    fn codes(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.code.as_str()).collect()
    }

    #[test]
    fn each_missing_or_wrong_entry_is_named_with_its_peer_and_leftovers_are_stale() {
        let peers = [peer("n2", 2), peer("n3", 3), peer("n4", 4)];
        let desired = entries_of(&peers);
        let mut actual = desired.clone();
        // n2 lost its route, n3's neighbour carries an old MAC, n4 lost its FDB entry.
        actual
            .routes
            .retain(|r| r.dst.to_string() != "10.244.2.0/24");
        let n3 = *actual.neighbours.iter().find(|n| n.mac == mac(3)).unwrap();
        actual.neighbours.remove(&n3);
        actual
            .neighbours
            .insert(NeighbourEntry { mac: mac(99), ..n3 });
        actual.fdb.retain(|f| f.mac != mac(4));
        // Left behind by a node that is gone; and one of a node kept without annotations.
        actual
            .routes
            .extend(entries_of(&[peer("gone", 9), peer("kept", 7)]).routes);
        let kept = NodeInfo {
            name: "kept".into(),
            pod_cidrs: vec!["10.244.7.0/24".into()],
            ..NodeInfo::default()
        };
        let check = DeviceCheck {
            device: "flannel.1".into(),
            desired,
            actual,
        };
        let (per_peer, stale) = entry_findings(&check, &peers, &[&kept]);
        assert_eq!(codes(&per_peer["n2"]), ["missing-route"]);
        assert_eq!(codes(&per_peer["n3"]), ["wrong-mac"]);
        assert!(
            per_peer["n3"][0].detail.contains("0e:00:00:00:00:63"),
            "{:?}",
            per_peer["n3"]
        );
        assert_eq!(codes(&per_peer["n4"]), ["missing-fdb"]);
        assert_eq!(codes(&stale), ["stale-entry"]);
        assert!(
            stale[0].detail.starts_with("route 10.244.9.0/24"),
            "{stale:?}"
        );
    }

    #[test]
    fn a_complete_device_has_no_findings() {
        let peers = [peer("n2", 2)];
        let check = DeviceCheck {
            device: "flannel.1".into(),
            desired: entries_of(&peers),
            actual: entries_of(&peers),
        };
        let (per_peer, stale) = entry_findings(&check, &peers, &[]);
        assert!(per_peer.is_empty() && stale.is_empty());
    }

    #[test]
    fn probe_verdicts_become_the_stable_codes() {
        let ip: IpAddr = "192.168.0.2".parse().unwrap();
        use TunnelVerdict::*;
        assert_eq!(probe_finding(Reachable, 1450, ip), None);
        let code = |v| probe_finding(v, 1450, ip).unwrap();
        assert_eq!(code(MtuBlackhole).code, Code::MtuBlackhole);
        let one_way = code(OneWay);
        assert_eq!(one_way.code, Code::TunnelUnreachable);
        assert!(one_way.detail.starts_with("one-way"), "{one_way:?}");
        let dropped = code(UdpDropped);
        assert_eq!(dropped.code, Code::TunnelUnreachable);
        assert!(dropped.fix.contains("8472"), "{dropped:?}");
        assert_eq!(code(NoAnswer).code, Code::TunnelUnreachable);
    }

    fn record(
        name: &str,
        annotations: &[(&str, &str)],
        managed: Vec<ManagedFieldsEntry>,
    ) -> NodeRecord {
        let info = NodeInfo {
            name: name.into(),
            pod_cidrs: vec!["10.244.5.0/24".into()],
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            internal_ips: vec!["192.168.0.5".into()],
            ..NodeInfo::default()
        };
        NodeRecord::new(info, &managed, &keys())
    }

    #[test]
    fn a_node_without_annotations_names_who_wrote_it_last() {
        let ts = |s: &str| Some(Time(s.parse().unwrap()));
        let managed = vec![
            ManagedFieldsEntry {
                manager: Some("flanneld".into()),
                operation: Some("Update".into()),
                time: ts("2026-12-04T10:00:00Z"),
                fields_v1: Some(FieldsV1(json!({"f:metadata": {"f:annotations": {}}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("rancher".into()),
                operation: Some("Update".into()),
                time: ts("2026-12-04T10:14:02Z"),
                fields_v1: Some(FieldsV1(json!({"f:metadata": {"f:labels": {"f:x": {}}}}))),
                ..Default::default()
            },
        ];
        let nodes = [record("n5", &[], managed)];
        let selection = PeerSelection {
            peers: vec![],
            rejected: vec![crate::flanneld::pure::peers::RejectedNode {
                name: "n5".into(),
                reason: Rejection::NotManaged { value: None },
            }],
        };
        let found = api_findings(&nodes, &selection, &keys());
        let p = &found["n5"][0];
        assert_eq!(p.code, Code::NoAnnotations);
        assert!(
            p.detail
                .contains("field manager \"rancher\" (Update) at 2026-12-04T10:14:02Z"),
            "{p:?}"
        );
    }

    #[test]
    fn waiting_nodes_are_fine_and_a_foreign_public_ip_is_named() {
        let nodes = [record("waiting", &[], vec![]), record("n5", &[], vec![])];
        let mut p = peer("n5", 5);
        p.v4.as_mut().unwrap().public_ip = "192.168.0.77".parse().unwrap();
        let selection = PeerSelection {
            peers: vec![p],
            rejected: vec![crate::flanneld::pure::peers::RejectedNode {
                name: "waiting".into(),
                reason: Rejection::NoPodCidr {
                    family: crate::net::Family::V4,
                },
            }],
        };
        let found = api_findings(&nodes, &selection, &keys());
        assert!(!found.contains_key("waiting"));
        assert_eq!(codes(&found["n5"]), ["public-ip-not-owned"]);
    }
}
