//! The daemon's life: start-up in upstream's order (health first, though), then the long-running
//! tasks — node watcher, annotation keeper, reconciler, traffic rules — until SIGTERM/SIGINT.
//! Every task is spawned on the [`Tasks`] supervisor: one that ends or panics before shutdown
//! ends the daemon with an error naming it. Shutdown, either way, leaves the datapath in
//! place: no flush, no device removal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::netlink::{Netlink, RouteFilter};

use super::health::{self, HealthState};
use super::keeper::{AnnotationKeeper, KeeperTiming, PatchFor};
use super::kube::{self as kube_io, NodeStatusWriter};
use super::memory;
use super::metrics::Metrics;
use super::node_cache::{self, NodeCache};
use super::pure::annotations::{self, AnnotationKeys, OwnAdvertisement};
use super::pure::config::{DaemonConfig, NodeIdentity};
use super::pure::desired::{self, OwnMacs};
use super::pure::iface::{
    self, AddrFlags, HostNetwork, LinkAddress, LinkInfo, RouteHint, SelectionRequest,
};
use super::pure::lease::PodSubnets;
use super::pure::netconf::NetConf;
use super::pure::node::{NodeInfo, SlimNode};
use super::pure::peers::ValidationContext;
use super::pure::watchdog::PassWatchdog;
use super::reconcile::{PassSummary, ReconcileInputs, ReconcileTiming, Reconciler, Trigger};
use super::tasks::{Tasks, test_faults};
use super::traffic::{BlackholeRoutes, TrafficConfig, TrafficRules};
use crate::net::Family;
use crate::subnet_env::{self, SubnetEnv};

/// Knobs tests and benchmarks may shorten; production uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct DaemonTuning {
    pub keeper: KeeperTiming,
    pub coalesce: Option<Duration>,
    /// How long a requested reconcile pass may take before `/healthz` fails.
    pub pass_bound: Option<Duration>,
}

/// Runs the daemon until `shutdown` is cancelled, or until one of its tasks stops.
pub async fn run(
    config: DaemonConfig,
    tuning: DaemonTuning,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tasks, mut exits) = Tasks::new();
    let daemon = run_supervised(config, tuning, shutdown.clone(), &tasks);
    tokio::pin!(daemon);
    loop {
        tokio::select! {
            biased;
            result = &mut daemon => return result,
            exit = exits.next() => {
                // Tasks end on their own once shutdown began; that is no failure.
                if shutdown.is_cancelled() {
                    continue;
                }
                // main prints it as the one line naming the task; the datapath stays.
                return Err(exit.into());
            }
        }
    }
}

async fn run_supervised(
    config: DaemonConfig,
    tuning: DaemonTuning,
    shutdown: CancellationToken,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(std::sync::Mutex::new(StatusDoc::default()));

    // Health first: liveness must answer during a long initial list.
    let health_state = {
        let metrics = metrics.clone();
        let status = status.clone();
        let metrics_for_status = metrics.clone();
        HealthState::new(
            Arc::new(move || metrics.render()),
            Arc::new(move || render_status(&status, &metrics_for_status)),
        )
    };
    if let Some(addr) = config.healthz {
        let (bound, serve) = health::bind(addr, health_state.clone(), shutdown.clone()).await?;
        tracing::info!(addr = %bound, "health server listening");
        tasks.spawn("health-server", async move {
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "health server failed");
            }
        });
    }
    if let Some(bound) = tuning.pass_bound.or_else(test_faults::pass_bound)
        && let Ok(mut w) = health_state.watchdog().lock()
    {
        *w = PassWatchdog::new(bound);
    }

    let netconf_text = std::fs::read_to_string(&config.net_config_path)
        .with_context(|| format!("read net-conf {}", config.net_config_path.display()))?;
    let netconf = NetConf::parse(&netconf_text)?;
    let client = kube_io::build_client(
        config.kube.kubeconfig_file.as_deref(),
        config.kube.api_url.as_deref(),
    )
    .await?;
    let node_name = resolve_node_name(&client, &config.node, &shutdown).await?;
    tracing::info!(node = %node_name, "managing node");
    set_status(&status, |s| s.node = node_name.clone());

    let keys = config.annotation_keys.clone();
    let cache = NodeCache::new();
    let (signals, watcher) = node_cache::node_watcher(
        client.clone(),
        node_name.clone(),
        keys.prefix.clone(),
        500,
        cache.clone(),
        shutdown.clone(),
    );
    tasks.spawn("node-watcher", watcher);

    // Our Node on its own, while the list runs: the lease, the device and the first peers need
    // not wait for thousands of Nodes. Any failure just leaves it to the list.
    match Api::<SlimNode>::all(client.clone())
        .get_opt(&node_name)
        .await
    {
        Ok(Some(node)) => cache.seed(NodeInfo::from_slim(node, &keys.prefix)),
        Ok(None) => {}
        Err(err) => {
            tracing::debug!(node = %node_name, error = %err, "early GET of our Node failed; waiting for the list")
        }
    }

    // Our lease: wait (not ready) rather than crash-loop while the podCIDR is unassigned.
    let (own, lease) = match wait_for_lease(
        &cache,
        &node_name,
        &netconf,
        signals.own_node_changed.clone(),
        &shutdown,
    )
    .await?
    {
        Some(v) => v,
        None => return Ok(()),
    };
    tracing::info!(node = %node_name, subnet_v4 = ?lease.v4, subnet_v6 = ?lease.v6, "lease acquired");
    set_status(&status, |s| s.lease = lease_strings(&lease));

    // The underlay: interface and addresses, honouring node-public-ip annotations.
    let nl = Netlink::current().context("open netlink")?;
    let (override_v4, override_v6, warnings) =
        annotations::node_public_ip_override(&keys, &own.annotations.to_map());
    for w in warnings {
        tracing::warn!(node = %node_name, warning = ?w, "ignoring node-public-ip annotation");
    }
    let host = host_network(&nl, config.selectors.can_reach).await?;
    let ext = iface::select_external_interface(
        &SelectionRequest {
            selectors: &config.selectors,
            public_ip: override_v4.or(config.public_ip),
            public_ipv6: override_v6.or(config.public_ipv6),
            enable_v4: netconf.enabled(Family::V4),
            enable_v6: netconf.enabled(Family::V6),
        },
        &host,
    )?;
    tracing::info!(iface = %ext.name, public_ip = ?ext.ext_addr_v4, public_ipv6 = ?ext.ext_addr_v6, "using interface");

    // VTEP MACs: the existing device's, else our annotation's, else a fresh random one.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut macs = OwnMacs::default();
    for family in netconf.families() {
        let name = desired::device_name(family, netconf.backend.vni);
        let existing = nl.link_by_name(&name).await?.and_then(|l| l.mac);
        let from_annotation =
            annotations::own_mac_from_annotations(&keys, &own.annotations.to_map(), family);
        let (mac, source) = annotations::choose_vtep_mac(existing, from_annotation, &mut rng);
        tracing::info!(device = %name, mac = %mac, source = ?source, "VTEP MAC chosen");
        match family {
            Family::V4 => macs.v4 = Some(mac),
            Family::V6 => macs.v6 = Some(mac),
        }
    }

    // First reconcile: device up with address, peers programmed (or adopted as they are).
    let validation = ValidationContext::new(
        &netconf,
        node_name.clone(),
        lease,
        ext.own_ips(),
        [macs.v4, macs.v6].into_iter().flatten().collect(),
    );
    let mut reconciler = Reconciler::new(
        nl.clone(),
        ReconcileInputs {
            keys: keys.clone(),
            netconf: netconf.clone(),
            lease,
            underlay: ext.underlay(),
            own_macs: macs,
            validation,
        },
        cache.clone(),
        metrics.clone(),
        ReconcileTiming {
            resync: config.resync_period,
            coalesce: tuning
                .coalesce
                .unwrap_or(ReconcileTiming::default().coalesce),
        },
    );
    reconciler.watchdog = health_state.watchdog();
    // Only the verdict is kept: the summary of 5000 peers would otherwise live as long as `run`.
    // A provisional pass (the list still running) is not the readiness pass.
    let first_clean = {
        let summary = reconciler.pass(Trigger::Startup).await?;
        summary.errors.is_empty() && !summary.provisional
    };
    let pod_mtu = reconciler
        .pod_mtu
        .context("no address family enabled in net-conf.json")?;
    // The initial list and the first full programming are the daemon's largest allocations.
    memory::release_free_memory();

    // Annotations, kept forever.
    let advertisements: Vec<(Family, OwnAdvertisement)> = netconf
        .families()
        .filter_map(|f| {
            let mac = match f {
                Family::V4 => macs.v4,
                Family::V6 => macs.v6,
            }?;
            ext.advertisement(f, netconf.backend.vni, mac)
                .map(|a| (f, a))
        })
        .collect();
    let (published_tx, mut published_rx) = watch::channel(false);
    let keeper = AnnotationKeeper {
        writer: NodeStatusWriter::new(client.clone(), &node_name),
        cache: cache.clone(),
        patch_for: patch_for(keys.clone(), advertisements),
        prefix: keys.prefix.clone(),
        metrics: metrics.clone(),
        timing: tuning.keeper.clone(),
        published: published_tx,
    };
    tasks.spawn(
        "annotation-keeper",
        keeper.run(signals.own_node_changed.clone(), shutdown.clone()),
    );

    // Masquerade and forward rules before subnet.env (upstream's order): pods must not start
    // before their traffic is handled. The previous subnet.env tells which old rules to drop.
    let previous = std::fs::read_to_string(&config.subnet_file)
        .ok()
        .and_then(|t| SubnetEnv::parse(&t).ok());
    let traffic = TrafficRules::new(TrafficConfig::from_daemon(
        &config, &netconf, &lease, previous,
    ))?;
    traffic.check_br_netfilter()?;
    match traffic.ensure().await {
        Ok(outcome) => tracing::info!(outcome = ?outcome, "traffic rules in place"),
        // Retried by the resync loop; the datapath itself does not depend on them.
        Err(err) => tracing::warn!(error = %err, "traffic rules could not be installed yet"),
    }
    tasks.spawn(
        "traffic-rules",
        traffic.run(config.iptables_resync, shutdown.clone()),
    );
    if config.ip_blackhole_route {
        let blackholes = BlackholeRoutes::for_lease(&netconf, &lease);
        tasks.spawn(
            "blackhole-routes",
            blackholes.run(nl.clone(), config.iptables_resync, shutdown.clone()),
        );
    }

    // subnet.env for the CNI plugin.
    let env = netconf.subnet_env(&lease, pod_mtu, config.ip_masq);
    match subnet_env::write_if_changed(&config.subnet_file, env.render().as_bytes()) {
        Ok(outcome) => {
            tracing::info!(path = %config.subnet_file.display(), outcome = ?outcome, "subnet.env")
        }
        Err(err) => anyhow::bail!("write {}: {err}", config.subnet_file.display()),
    }

    // The long-running reconciler; readiness once annotations and datapath are in place.
    let (first_pass_tx, mut first_pass_rx) = watch::channel(first_clean);
    let last_pass = reconciler.last.clone();
    {
        let status = status.clone();
        set_status(&status, |s| s.last_pass = Some(last_pass));
    }
    // The reconciler also owns the kernel monitor it waits on for drift.
    tasks.spawn(
        "reconciler",
        reconciler.run(
            signals.peers_changed.clone(),
            first_pass_tx,
            shutdown.clone(),
        ),
    );

    let ready = async {
        published_rx.wait_for(|p| *p).await.ok();
        first_pass_rx.wait_for(|p| *p).await.ok();
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        _ = ready => {}
    }
    health_state.set_ready(true);
    tracing::info!(node = %node_name, "flanneld is ready");

    if config.set_node_network_unavailable {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let writer = NodeStatusWriter::new(client.clone(), &node_name);
        // A restart on a node that is already marked writes nothing.
        let already = writer.network_marked_available().await.unwrap_or(false);
        if !already
            && let Err(err) = writer
                .patch_status_strategic(&annotations::network_unavailable_patch(&now))
                .await
        {
            tracing::warn!(node = %node_name, error = %err, "could not set NetworkUnavailable=False");
        }
    }

    shutdown.cancelled().await;
    tracing::info!("exiting cleanly; the datapath stays in place");
    Ok(())
}

/// `NODE_NAME`, or the node of our pod (`POD_NAMESPACE`/`POD_NAME`), retried while the API
/// server is unreachable.
async fn resolve_node_name(
    client: &kube::Client,
    identity: &NodeIdentity,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    let (namespace, name) = match identity {
        NodeIdentity::Named(n) => return Ok(n.clone()),
        NodeIdentity::Pod { namespace, name } => (namespace, name),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut delay = Duration::from_millis(500);
    loop {
        match pods.get(name).await {
            Ok(pod) => {
                return pod
                    .spec
                    .and_then(|s| s.node_name)
                    .filter(|n| !n.is_empty())
                    .with_context(|| format!("pod {namespace}/{name} has no spec.nodeName"));
            }
            Err(err) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %err, "looking up our pod's node");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shutdown while resolving the node name"),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Waits until our Node is listed with a podCIDR; `Ok(None)` on shutdown. A podCIDR outside
/// the Network is fatal (a configuration error no waiting fixes).
async fn wait_for_lease(
    cache: &NodeCache,
    node: &str,
    netconf: &NetConf,
    mut own_changed: watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(NodeInfo, PodSubnets)>> {
    let mut said_missing = false;
    let mut said_unassigned = false;
    loop {
        if let Some(own) = cache.get(node) {
            match netconf.lease_from_pod_cidrs(node, &own.pod_cidrs) {
                Ok(lease) => return Ok(Some((own, lease))),
                Err(err) if err.is_not_assigned() => {
                    if !said_unassigned {
                        tracing::warn!(node = %node, "pod cidr not assigned yet; waiting (not ready)");
                        said_unassigned = true;
                    }
                }
                Err(err) => return Err(err.into()),
            }
        } else if cache.is_synced() && !said_missing {
            tracing::warn!(node = %node, "our Node is not in the API yet; waiting (not ready)");
            said_missing = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = own_changed.changed() => if r.is_err() { return Ok(None) },
        }
    }
}

/// Links, addresses and default routes of this namespace, for interface selection.
async fn host_network(nl: &Netlink, can_reach: Option<IpAddr>) -> anyhow::Result<HostNetwork> {
    let mut host = HostNetwork::default();
    for link in nl.links().await? {
        if link.name == "lo" {
            continue;
        }
        let addresses = nl
            .addresses(link.index)
            .await?
            .into_iter()
            .map(|a| LinkAddress {
                ip: a.net.ip(),
                prefix_len: a.net.prefix(),
                flags: AddrFlags {
                    permanent: true,
                    ..AddrFlags::default()
                },
            })
            .collect();
        host.links.push(LinkInfo {
            name: link.name,
            index: link.index,
            mtu: link.mtu,
            addresses,
        });
    }
    let routes = nl.routes(&RouteFilter::main()).await?;
    for r in &routes {
        if r.dst.prefix() == 0 {
            match r.dst {
                IpNetwork::V4(_) if host.default_v4.is_none() => host.default_v4 = r.oif,
                IpNetwork::V6(_) if host.default_v6.is_none() => host.default_v6 = r.oif,
                _ => {}
            }
        }
    }
    if let Some(target) = can_reach {
        // Longest-prefix match in the main table: what `ip route get` answers without policy rules.
        host.can_reach = routes
            .iter()
            .filter(|r| r.dst.contains(target) && r.oif.is_some())
            .max_by_key(|r| r.dst.prefix())
            .map(|r| RouteHint {
                ifindex: r.oif.unwrap_or_default(),
                src: r.source,
            });
    }
    Ok(host)
}

fn patch_for(keys: AnnotationKeys, ads: Vec<(Family, OwnAdvertisement)>) -> PatchFor {
    Arc::new(move |node: &NodeInfo| {
        let v4 = ads.iter().find(|(f, _)| *f == Family::V4).map(|(_, a)| a);
        let v6 = ads.iter().find(|(f, _)| *f == Family::V6).map(|(_, a)| a);
        let current = node.annotations.to_map();
        let want = annotations::desired_annotations(&keys, v4, v6, &current);
        annotations::annotations_patch(&current, &want.annotations, &node.resource_version)
            .and_then(|p| serde_json::to_value(p).ok())
    })
}

fn lease_strings(lease: &PodSubnets) -> Vec<String> {
    [
        lease.v4.map(|n| n.to_string()),
        lease.v6.map(|n| n.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The `/status` document: what this daemon believes and did, in one place.
#[derive(Default)]
struct StatusDoc {
    node: String,
    lease: Vec<String>,
    last_pass: Option<Arc<std::sync::Mutex<PassSummary>>>,
}

fn set_status(status: &std::sync::Mutex<StatusDoc>, f: impl FnOnce(&mut StatusDoc)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

/// `/status` as serialized: straight to text, since a `serde_json::Value` tree of the last
/// pass (5000 peers) took ~5 MB for an instant, and the text again as much. Keys in name order
/// at every level (here and in the pass summary's types), as the document always had them.
#[derive(serde::Serialize)]
struct StatusView<'a> {
    annotations: AnnotationCounts,
    drift_repairs: u64,
    last_reconcile: Option<PassSummary>,
    lease: &'a [String],
    node: &'a str,
}

#[derive(serde::Serialize)]
struct AnnotationCounts {
    conflicts: u64,
    errors: u64,
    heals: u64,
    last_heal_ms: u64,
    writes: u64,
}

fn render_status(status: &std::sync::Mutex<StatusDoc>, metrics: &Metrics) -> String {
    let Ok(s) = status.lock() else {
        return "{}".into();
    };
    // A clone is cheap (the peers are shared) and frees the reconciler's lock at once.
    let last = s
        .last_pass
        .as_ref()
        .and_then(|p| p.lock().ok().map(|p| p.clone()));
    let (writes, heals, conflicts, errors, last_heal_ms) = metrics.annotation_counts();
    let doc = StatusView {
        annotations: AnnotationCounts {
            conflicts,
            errors,
            heals,
            last_heal_ms,
            writes,
        },
        drift_repairs: metrics.drift_repairs(),
        last_reconcile: last,
        lease: &s.lease,
        node: &s.node,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::flanneld::pure::peers::{Peer, PeerEndpoint};
    use crate::flanneld::reconcile::{DeviceSummary, PeerList, RejectedSummary};
    use crate::net::MacAddr;

    /// What `/status` was when it was built as a `serde_json::Value` tree.
    fn as_value_tree(s: &StatusDoc, metrics: &Metrics) -> String {
        let last = s.last_pass.as_ref().map(|p| p.lock().unwrap().clone());
        let (writes, heals, conflicts, errors, last_heal_ms) = metrics.annotation_counts();
        let doc = serde_json::json!({
            "node": s.node,
            "lease": s.lease,
            "annotations": {
                "writes": writes,
                "heals": heals,
                "conflicts": conflicts,
                "errors": errors,
                "last_heal_ms": last_heal_ms,
            },
            "drift_repairs": metrics.drift_repairs(),
            "last_reconcile": last,
        });
        serde_json::to_string_pretty(&doc).unwrap()
    }

    #[test]
    fn status_is_rendered_as_the_value_tree_was_byte_for_byte() {
        let peer = |name: &str, n: u8| Peer {
            name: name.into(),
            uid: format!("u-{name}"),
            created: None,
            v4: Some(PeerEndpoint {
                subnet: format!("10.244.{n}.0/24").parse().unwrap(),
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, n]),
                public_ip: format!("192.0.2.{n}").parse().unwrap(),
                vni: Some(1),
            }),
            v6: None,
        };
        let summary = PassSummary {
            devices: vec![DeviceSummary {
                entries: 6,
                index: 7,
                mac: "0e:00:00:00:00:01".into(),
                mtu: 1450,
                name: "flannel.1".into(),
            }],
            duration_ms: 12.5,
            errors: vec!["File exists (os error 17)".into()],
            finished_unix_ms: 1_700_000_000_000,
            operations: 6,
            peers: PeerList(vec![peer("a", 2), peer("b", 3)].into()),
            provisional: false,
            rejected: vec![RejectedSummary {
                kind: "bad_public_ip".into(),
                node: "c".into(),
                reason: "IPv4 public IP \"x\" is unusable: Malformed".into(),
            }],
            trigger: Some(Trigger::NodeChange),
        };
        let metrics = Metrics::new();
        metrics.count_annotation_write();
        metrics.count_annotation_heal(Duration::from_millis(3));
        let status = Mutex::new(StatusDoc {
            node: "n1".into(),
            lease: vec!["10.244.1.0/24".into()],
            last_pass: None,
        });
        assert_eq!(
            render_status(&status, &metrics),
            as_value_tree(&status.lock().unwrap(), &metrics)
        );
        status.lock().unwrap().last_pass = Some(Arc::new(Mutex::new(summary)));
        let rendered = render_status(&status, &metrics);
        assert_eq!(rendered, as_value_tree(&status.lock().unwrap(), &metrics));
        assert!(rendered.contains("\"vtep_macs\""), "{rendered}");
    }
}
