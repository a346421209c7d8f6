//! `flanneld diagnose`: one command that names what is broken between this node and its peers,
//! and why. It derives the desired state from the API the way the reconciler does (the same
//! peer selection and desired-state functions), compares it with the kernel, probes every
//! peer through the tunnel, and asks the API who last wrote a Node that lost its annotations.
//! It works whether the daemon runs or not.
//!
//! - [`checks`]: the judgements (pure); [`report`]: codes, JSON and text (pure);
//! - the ICMP probes are the daemon's ([`super::probe`]); this module gathers the inputs.

pub mod checks;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, ListParams};

use self::checks::{DeviceCheck, NodeRecord};
use self::report::{Code, PeerReport, Problem, Report};
use super::datapath;
use super::explain;
use super::kube as kube_io;
use super::probe::{self, Pacing, TunnelEnd};
use super::pure::annotations::{self, AnnotationKeys};
use super::pure::attribution::{self, FIELD_MANAGER};
use super::pure::config::{DaemonConfig, NodeIdentity, status_socket_path};
use super::pure::desired::{self, OwnMacs};
use super::pure::lease::PodSubnets;
use super::pure::netconf::NetConf;
use super::pure::node::NodeInfo;
use super::pure::peers::{self, PeerSelection, ValidationContext};
use crate::net::Family;
use crate::netlink::Netlink;

/// What to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// This node and every peer.
    Node,
    /// This node and one peer.
    Peer(String),
    /// The node owning a pod IP, and the path to it from here.
    Ip(IpAddr),
    /// Every Node, from the API alone (no kernel, no node identity needed).
    Cluster,
}

/// Why no diagnosis could be made (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("read {path}: {source}")]
    NetConfRead {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    NetConf(#[from] super::pure::netconf::NetConfError),
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("Node {0:?} is not in the API")]
    NoSuchNode(String),
    #[error("this node's podCIDR: {0}")]
    Lease(String),
    #[error(
        "netlink: {0} (diagnose reads the kernel: run it as root in the node's network namespace)"
    )]
    Netlink(String),
    #[error("interface: {0}")]
    Iface(String),
    #[error("probes: {0}")]
    Probe(#[from] super::probe::ProbeError),
}

/// Packets per second the probes may send, and how long to wait for late answers.
const PACING: Pacing = Pacing {
    first_gap: Duration::from_micros(200),
    second_gap: Duration::from_micros(200),
    wait: Duration::from_millis(1000),
};

pub async fn diagnose(config: &DaemonConfig, scope: &Scope) -> Result<Report, DiagnoseError> {
    let path = config.net_config_path.display().to_string();
    let text = std::fs::read_to_string(&config.net_config_path)
        .map_err(|source| DiagnoseError::NetConfRead { path, source })?;
    let netconf = NetConf::parse(&text)?;
    let client = kube_io::build_client(
        config.kube.kubeconfig_file.as_deref(),
        config.kube.api_url.as_deref(),
        kube_io::NodeLists::Full,
    )
    .await
    .map_err(|e| DiagnoseError::Api(format!("{e:#}")))?;
    let keys = &config.annotation_keys;
    if *scope == Scope::Cluster {
        let listed = list_nodes(&client, keys, None).await?;
        return Ok(cluster_report(&netconf, keys, &listed.nodes));
    }
    let name = node_name(&client, &config.node).await?;
    let listed = list_nodes(&client, keys, Some(&name)).await?;
    node_report(config, &netconf, &listed, &name, scope).await
}

/// Every Node, and the whole `managedFields` of one (this node's: its own clobber check
/// attributes each of its keys).
struct ListedNodes {
    nodes: Vec<NodeRecord>,
    own_managed_fields: Vec<ManagedFieldsEntry>,
}

/// Every Node, page by page, with who last wrote each (attribution). Small pages: a full
/// Node (managedFields included) is ~16 KB of JSON, and the client holds a page whole, in
/// several copies, before it is decoded; 100 a page keeps that to a few MB at any cluster size.
async fn list_nodes(
    client: &kube::Client,
    keys: &AnnotationKeys,
    own: Option<&str>,
) -> Result<ListedNodes, DiagnoseError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut own_managed_fields = Vec::new();
    let mut params = ListParams::default().limit(100);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|e| DiagnoseError::Api(format!("list nodes: {e}")))?;
        for mut node in page.items {
            let managed = node.metadata.managed_fields.take().unwrap_or_default();
            let info = NodeInfo::from_node(&node, &keys.prefix);
            let record = NodeRecord::new(info, &managed, keys);
            if own == Some(record.info.name.as_str()) {
                own_managed_fields = managed;
            }
            out.push(record);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(ListedNodes {
        nodes: out,
        own_managed_fields,
    })
}

async fn node_name(
    client: &kube::Client,
    identity: &NodeIdentity,
) -> Result<String, DiagnoseError> {
    match identity {
        NodeIdentity::Named(n) => Ok(n.clone()),
        NodeIdentity::Pod { namespace, name } => kube_io::node_of_pod(client, namespace, name)
            .await
            .map_err(|e| DiagnoseError::Api(format!("get pod {namespace}/{name}: {e}")))?
            .ok_or_else(|| {
                DiagnoseError::Api(format!("pod {namespace}/{name} has no spec.nodeName"))
            }),
    }
}

/// `--cluster`: every Node judged as a peer of nobody in particular.
fn cluster_report(netconf: &NetConf, keys: &AnnotationKeys, nodes: &[NodeRecord]) -> Report {
    let ctx = ValidationContext::new(netconf, "", PodSubnets::default(), vec![], vec![]);
    let selection = peers::select_peers(nodes.iter().map(|n| &n.info), keys, &ctx);
    let mut found = checks::api_findings(nodes, &selection, keys);
    let peers = nodes
        .iter()
        .map(|n| PeerReport::new(&n.info.name, found.remove(&n.info.name).unwrap_or_default()))
        .collect();
    let mut report = Report::new("", vec![], peers);
    report.context.push(format!(
        "cluster: {} Nodes, {} programmable as peers",
        nodes.len(),
        selection.peers.len()
    ));
    report
}

async fn node_report(
    config: &DaemonConfig,
    netconf: &NetConf,
    listed: &ListedNodes,
    name: &str,
    scope: &Scope,
) -> Result<Report, DiagnoseError> {
    let keys = &config.annotation_keys;
    let nodes = &listed.nodes;
    let own = nodes
        .iter()
        .find(|n| n.info.name == name)
        .ok_or_else(|| DiagnoseError::NoSuchNode(name.to_string()))?;
    let lease = netconf
        .lease_from_pod_cidrs(name, &own.info.pod_cidrs)
        .map_err(|e| DiagnoseError::Lease(e.to_string()))?;
    let nl = Netlink::current().map_err(|e| DiagnoseError::Netlink(e.to_string()))?;
    let own_map = own.info.annotations.to_map();
    let (ext, _) = super::daemon::external_interface(&nl, config, netconf, &own.info)
        .await
        .map_err(|e| DiagnoseError::Iface(format!("{e:#}")))?;

    let mut problems = Vec::new();
    let mut macs = OwnMacs::default();
    let mut devices = Vec::new();
    let mut unusable = Vec::new();
    for family in netconf.families() {
        let dev = desired::device_name(family, netconf.backend.vni);
        let link = nl
            .link_by_name(&dev)
            .await
            .map_err(|e| DiagnoseError::Netlink(e.to_string()))?;
        match link {
            Some(l) if l.up && l.mac.is_some() => {
                *macs.get_mut(family) = l.mac;
                devices.push((family, l));
            }
            Some(_) => {
                problems.push(Problem::new(
                    Code::NoDevice,
                    format!("{dev} exists but is down"),
                    "flanneld brings it up when it runs; check its log",
                ));
                unusable.push(dev);
            }
            None => {
                problems.push(Problem::new(
                    Code::NoDevice,
                    format!(
                        "{dev} does not exist: no pod traffic leaves this node through the tunnel"
                    ),
                    "start flanneld on this node (it creates the device)",
                ));
                unusable.push(dev);
            }
        }
    }

    // Peers, exactly as the reconciler selects them.
    let ctx = ValidationContext::new(
        netconf,
        name,
        lease,
        ext.own_ips(),
        [macs.v4, macs.v6].into_iter().flatten().collect(),
    );
    let selection = peers::select_peers(nodes.iter().map(|n| &n.info), keys, &ctx);
    let mut per_peer = checks::api_findings(nodes, &selection, keys);
    per_peer.remove(name);

    // Our own annotations against what this node advertises.
    let ads: Vec<_> = devices
        .iter()
        .filter_map(|(f, l)| Some((*f, ext.advertisement(*f, netconf.backend.vni, l.mac?)?)))
        .collect();
    if !ads.is_empty() {
        let v4 = ads.iter().find(|(f, _)| *f == Family::V4).map(|(_, a)| a);
        let v6 = ads.iter().find(|(f, _)| *f == Family::V6).map(|(_, a)| a);
        let want = annotations::desired_annotations(keys, v4, v6, &own_map);
        if let Some(p) =
            own_annotations_problem(own, &listed.own_managed_fields, &want.annotations, name)
        {
            problems.push(p);
        }
    }

    // Kernel entries against the desired state, per device.
    let desired = desired::desired_state(
        &netconf.backend,
        &ext.underlay(),
        &lease,
        &macs,
        &selection.peers,
    );
    let kept = kept_nodes(nodes, &selection);
    let mut probes_for = Vec::new();
    if let Ok(desired) = &desired {
        for (family, link) in &devices {
            let Some(state) = desired.family(*family) else {
                continue;
            };
            let actual = datapath::actual_entries(&nl, link, *family)
                .await
                .map_err(|e| DiagnoseError::Netlink(e.to_string()))?;
            let check = DeviceCheck {
                device: link.name.clone(),
                desired: state.entries.clone(),
                actual,
            };
            let (missing, stale) = checks::entry_findings(&check, &selection.peers, &kept);
            for (peer, p) in missing {
                per_peer.entry(peer).or_default().extend(p);
            }
            problems.extend(stale);
            if *family == Family::V4
                && let (IpAddr::V4(vtep), Some(local)) =
                    (state.device.address.ip(), ext.underlay().local_v4)
            {
                probes_for.push(TunnelEnd {
                    vtep,
                    local,
                    mtu: state.device.mtu,
                    ifindex: link.index,
                    mac: state.device.mac,
                });
            }
        }
    }

    // Which peers the scope covers.
    let mut context = Vec::new();
    let wanted: Option<BTreeSet<String>> = match scope {
        Scope::Peer(p) => {
            if !nodes.iter().any(|n| &n.info.name == p) {
                return Err(DiagnoseError::NoSuchNode(p.clone()));
            }
            Some([p.clone()].into())
        }
        Scope::Ip(ip) => {
            match owner_of(nodes, *ip) {
                Some((owner, cidr)) if owner == name => {
                    context.push(format!("{ip} is in this node's own pod subnet {cidr}: its path is cni0 on this node"));
                    Some(BTreeSet::new())
                }
                Some((owner, cidr)) => {
                    context.push(format!("{ip} belongs to node {owner} (podCIDR {cidr})"));
                    Some([owner.to_string()].into())
                }
                None => {
                    problems.push(Problem::new(
                        Code::Rejected,
                        format!("no Node's podCIDR contains {ip}"),
                        "the pod may be gone, or its node's podCIDR changed",
                    ));
                    Some(BTreeSet::new())
                }
            }
        }
        _ => None,
    };
    let in_scope = |n: &str| wanted.as_ref().is_none_or(|w| w.contains(n));

    // Probes for peers whose entries here are complete (the rest are explained already).
    if let Some(end) = probes_for.first().copied() {
        let targets = probe::targets_of(
            selection
                .peers
                .iter()
                .filter(|p| in_scope(&p.name) && !per_peer.contains_key(&p.name)),
        );
        let (answers, _) = probe::probe_peers(&targets, &end, PACING).await?;
        for (t, a) in targets.iter().zip(answers) {
            if let Some(problem) = checks::probe_finding(a.verdict(), end.mtu, IpAddr::V4(t.public))
            {
                per_peer.entry(t.name.clone()).or_default().push(problem);
            }
        }
    }

    let (daemon, daemon_line) = daemon_view(config);
    problems.extend(daemon);

    let peers: Vec<PeerReport> = selection
        .peers
        .iter()
        .map(|p| p.name.clone())
        .chain(per_peer.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|n| in_scope(n))
        .map(|n| {
            let problems = per_peer.remove(&n).unwrap_or_default();
            PeerReport::new(n, problems)
        })
        .collect();
    let devices_line = if devices.is_empty() {
        "no VXLAN device up".to_string()
    } else {
        devices
            .iter()
            .map(|(_, l)| format!("{} (MTU {})", l.name, l.mtu))
            .collect::<Vec<_>>()
            .join(", ")
    };
    context.insert(
        0,
        format!(
            "node {name}: {devices_line}; {} peers programmable, {} other Nodes not",
            selection.peers.len(),
            selection.rejected.len()
        ),
    );
    context.insert(1, daemon_line);
    let mut report = Report::new(name, problems, peers);
    report.context = context;
    if !unusable.is_empty() {
        report.peers_unchecked = Some(format!("{} is not up", unusable.join(", ")));
    }
    Ok(report)
}

/// Nodes flanneld keeps programmed although their annotations are gone (see
/// [`peers::LostAnnotations`]): their kernel entries are not stale.
fn kept_nodes<'a>(nodes: &'a [NodeRecord], selection: &PeerSelection) -> Vec<&'a NodeInfo> {
    let lost: BTreeSet<&str> = selection
        .rejected
        .iter()
        .filter(|r| checks::LOST_ANNOTATIONS.contains(&r.reason.kind()))
        .map(|r| r.name.as_str())
        .collect();
    nodes
        .iter()
        .filter(|n| lost.contains(n.info.name.as_str()))
        .map(|n| &n.info)
        .collect()
}

fn owner_of(nodes: &[NodeRecord], ip: IpAddr) -> Option<(&str, String)> {
    nodes.iter().find_map(|n| {
        n.info
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse::<ipnetwork::IpNetwork>().ok())
            .find(|c| c.contains(ip))
            .map(|c| (n.info.name.as_str(), c.to_string()))
    })
}

fn own_annotations_problem(
    own: &NodeRecord,
    managed_fields: &[ManagedFieldsEntry],
    want: &BTreeMap<String, String>,
    name: &str,
) -> Option<Problem> {
    let have = own.info.annotations.to_map();
    let wrong: Vec<&str> = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .collect();
    if wrong.is_empty() {
        return None;
    }
    let keys: Vec<&str> = want.keys().map(String::as_str).collect();
    let who = attribution::attribute(managed_fields, want, &have, &keys, FIELD_MANAGER, None)
        .map(|a| format!(" ({a})"))
        .unwrap_or_default();
    Some(Problem::new(
        Code::AnnotationsClobbered,
        format!(
            "this node's annotations {} are missing or differ from what it advertises{who}: \
             peers cannot program it",
            wrong.join(", ")
        ),
        format!(
            "flanneld re-asserts them within a second when it runs on {name}; if they keep \
             vanishing, stop the writer named here"
        ),
    ))
}

/// Whether the daemon answers on this node's status socket, and if so whether it is ready
/// (its own reasons when not).
fn daemon_view(config: &DaemonConfig) -> (Option<Problem>, String) {
    let socket = status_socket_path(&config.subnet_file);
    let probes = || {
        explain::get(&socket, "/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .map(|doc| daemon_probes_line(&doc["probes"]))
            .unwrap_or_default()
    };
    match explain::get(&socket, "/readyz") {
        Ok((200, _)) => (None, format!("daemon: running, ready{}", probes())),
        Ok((_, body)) => (
            None,
            format!(
                "daemon: running, not ready — {}{}",
                body.trim().replace('\n', ";"),
                probes()
            ),
        ),
        Err(e) => (
            Some(Problem::new(
                Code::DaemonNotRunning,
                format!(
                    "flanneld does not answer on {}: nothing repairs this node's entries or \
                     annotations ({e})",
                    socket.display()
                ),
                "check the kube-flannel pod on this node (kubectl -n kube-flannel get pods -o wide)",
            )),
            "daemon: not running".into(),
        ),
    }
}

/// The daemon's own view of its peers' reachability (its probe rounds), as a clause.
fn daemon_probes_line(probes: &serde_json::Value) -> String {
    if probes.is_null() {
        return String::new();
    }
    let n = |k: &str| probes[k].as_u64().unwrap_or(0);
    // Before its first round the counts are all zero, which would read as "no peers".
    if n("rounds") == 0 {
        return "; its tunnel probes: no round finished yet".into();
    }
    let down: Vec<String> = probes["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "unreachable")
        .map(|p| {
            format!(
                "{} {}",
                p["node"].as_str().unwrap_or("?"),
                p["verdict"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut line = format!(
        "; its tunnel probes: {} reachable, {} unreachable, {} not yet known",
        n("reachable"),
        n("unreachable"),
        n("unknown")
    );
    if !down.is_empty() {
        line.push_str(&format!(" ({})", down.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_daemons_probe_view_is_one_clause() {
        let doc = serde_json::json!({"rounds": 3, "reachable": 1, "unreachable": 1, "unknown": 0, "peers": [
            {"node": "n2", "state": "reachable", "verdict": "reachable"},
            {"node": "n3", "state": "unreachable", "verdict": "udp_dropped"}]});
        assert_eq!(
            super::daemon_probes_line(&doc),
            "; its tunnel probes: 1 reachable, 1 unreachable, 0 not yet known (n3 udp_dropped)"
        );
        assert_eq!(super::daemon_probes_line(&serde_json::Value::Null), "");
        let fresh = serde_json::json!({"rounds": 0, "reachable": 0, "unreachable": 0, "unknown": 0, "peers": []});
        assert_eq!(
            super::daemon_probes_line(&fresh),
            "; its tunnel probes: no round finished yet"
        );
    }
}
