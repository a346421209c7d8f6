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
use kube::api::Api;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::netlink::{Netlink, RouteFilter};

use super::events::Events;
use super::health::{self, HealthState, Readiness};
use super::keeper::{AnnotationKeeper, HealRecord, KeeperTiming, PatchFor, SharedHeal};
use super::kube::{self as kube_io, NodeStatusWriter};
use super::memory;
use super::metrics::Metrics;
use super::node_cache::{self, NodeCache};
use super::prober::{OurEnd, ProbeStatus, Prober, ProberTiming, SharedProbeStatus};
use super::pure::annotations::{self, AnnotationKeys, AnnotationWarning, OwnAdvertisement};
use super::pure::config::{DaemonConfig, NodeIdentity};
use super::pure::desired::{self, OwnMacs};
use super::pure::iface::{
    self, AddrFlags, ExternalInterface, HostNetwork, LinkAddress, LinkInfo, RouteHint,
    SelectionRequest,
};
use super::pure::lease::PodSubnets;
use super::pure::netconf::NetConf;
use super::pure::node::{NodeInfo, SlimNode};
use super::pure::peers::ValidationContext;
use super::pure::readiness::{Gates, TrafficGate};
use super::pure::watchdog::PassWatchdog;
use super::reconcile::{PassSummary, ReconcileInputs, ReconcileTiming, Reconciler, Trigger};
use super::tasks::{Tasks, test_faults};
use super::traffic::{BlackholeRoutes, EnsureOutcome, TrafficConfig, TrafficError, TrafficRules};
use crate::net::Family;
use crate::subnet_env::{self, SubnetEnv};

/// Knobs tests and benchmarks may shorten; production uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct DaemonTuning {
    pub keeper: KeeperTiming,
    pub coalesce: Option<Duration>,
    /// How long a requested reconcile pass may take before `/healthz` fails.
    pub pass_bound: Option<Duration>,
    pub prober: ProberTiming,
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
    let readiness = Readiness::default();
    readiness.update(|g| g.traffic_required = config.ip_masq);

    // Health first: liveness must answer during a long initial list.
    let health_state = {
        let metrics = metrics.clone();
        let status = status.clone();
        let metrics_for_status = metrics.clone();
        let gates = readiness.clone();
        HealthState::new(
            Arc::new(move || metrics.render()),
            Arc::new(move || render_status(&status, &metrics_for_status, &gates.gates())),
            readiness.clone(),
        )
    };
    if let Some(addr) = config.healthz {
        let defaults = health::Limits::default();
        let limits = health::Limits {
            header_read_timeout: test_faults::header_read_timeout()
                .unwrap_or(defaults.header_read_timeout),
            ..defaults
        };
        let (bound, serve) =
            health::bind(addr, health_state.clone(), limits, shutdown.clone()).await?;
        tracing::info!(addr = %bound, "health server listening");
        tasks.spawn("health-server", serve);
    }
    // Removed when this function's frame goes: on shutdown, or when a task failed.
    let (_status_socket, serve) = health::bind_private(
        &config.status_socket,
        health_state.clone(),
        shutdown.clone(),
    )?;
    tracing::info!(path = %config.status_socket.display(), "status socket listening");
    tasks.spawn("status-socket", serve);
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
        kube_io::NodeLists::Slim,
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
    readiness.update(|g| g.lease = true);

    // The underlay: interface and addresses, honouring node-public-ip annotations.
    let nl = Netlink::current().context("open netlink")?;
    let (ext, warnings) = external_interface(&nl, &config, &netconf, &own).await?;
    for w in warnings {
        tracing::warn!(node = %node_name, warning = ?w, "ignoring node-public-ip annotation");
    }
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
    // Events on our Node: optional (403 → one warning), never in the way of anything else.
    let (events, publisher) = Events::new(client.clone(), &node_name, metrics.clone());
    tasks.spawn("events", publisher.run(shutdown.clone()));
    reconciler.events = events.clone();
    reconciler.watchdog = health_state.watchdog();
    reconciler.readiness = readiness.clone();
    // The summary of 5000 peers is not kept: it would otherwise live as long as `run`. The
    // pass reports its end to the readiness gates itself.
    drop(reconciler.pass(Trigger::Startup).await?);
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
    let last_heal = SharedHeal::default();
    set_status(&status, |s| s.last_heal = Some(last_heal.clone()));
    let keeper = AnnotationKeeper {
        writer: NodeStatusWriter::new(client.clone(), &node_name),
        cache: cache.clone(),
        patch_for: patch_for(keys.clone(), advertisements),
        prefix: keys.prefix.clone(),
        metrics: metrics.clone(),
        timing: tuning.keeper.clone(),
        readiness: readiness.clone(),
        last_heal: last_heal.clone(),
        events: events.clone(),
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
    // A missing or failing iptables / nft does not end the daemon: it stays alive and not
    // ready (the reason in /readyz and /status, one error line), keeps the datapath for the
    // pods already running converged, and picks the tool up as soon as it works.
    let report = {
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        move |outcome: &Result<EnsureOutcome, TrafficError>| {
            metrics.observe_traffic_rules(outcome.is_ok());
            let gate = match outcome {
                Ok(_) => TrafficGate::InPlace,
                Err(e) => TrafficGate::Failing(e.to_string()),
            };
            readiness.update(|g| g.traffic = gate);
        }
    };
    tasks.spawn(
        "traffic-rules",
        traffic.run(config.iptables_resync, report, shutdown.clone()),
    );
    if config.ip_blackhole_route {
        let blackholes = BlackholeRoutes::for_lease(&netconf, &lease);
        tasks.spawn(
            "blackhole-routes",
            blackholes.run(nl.clone(), config.iptables_resync, shutdown.clone()),
        );
    }

    // The long-running reconciler, which also owns the kernel monitor it waits on for drift.
    let last_pass = reconciler.last.clone();
    set_status(&status, |s| s.last_pass = Some(last_pass.clone()));
    tasks.spawn(
        "reconciler",
        reconciler.run(signals.peers_changed.clone(), shutdown.clone()),
    );

    // Every programmed peer probed through the tunnel (IPv4: the probes are ICMPv4).
    if let (Some(subnet), Some(local)) = (lease.v4, ext.underlay().local_v4) {
        let probes = SharedProbeStatus::default();
        set_status(&status, |s| s.probes = Some(probes.clone()));
        let prober = Prober {
            end: OurEnd {
                device: desired::device_name(Family::V4, netconf.backend.vni),
                vtep: subnet.network(),
                local,
            },
            last_pass,
            metrics: metrics.clone(),
            status: probes,
            timing: test_faults::prober_timing().unwrap_or(tuning.prober),
            events: events.clone(),
        };
        tasks.spawn("tunnel-prober", prober.run(shutdown.clone()));
    }

    // subnet.env for the CNI plugin, once the rules its pods need are in place.
    let mut gates = readiness.subscribe();
    let mut said_waiting = false;
    while !gates.borrow_and_update().subnet_env_allowed() {
        if !said_waiting && matches!(gates.borrow().traffic, TrafficGate::Failing(_)) {
            tracing::warn!(path = %config.subnet_file.display(),
                "subnet.env waits for the traffic rules (--ip-masq): no pod starts on this node until they are in place");
            said_waiting = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = gates.changed() => changed.context("readiness gates closed")?,
        }
    }
    let env = netconf.subnet_env(&lease, pod_mtu, config.ip_masq);
    match subnet_env::write_if_changed(&config.subnet_file, env.render().as_bytes()) {
        Ok(outcome) => {
            tracing::info!(path = %config.subnet_file.display(), outcome = ?outcome, "subnet.env")
        }
        Err(err) => anyhow::bail!("write {}: {err}", config.subnet_file.display()),
    }
    readiness.update(|g| g.subnet_env_written = true);

    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ready = gates.wait_for(|g| g.verdict().is_ready()) => {
            ready.context("readiness gates closed")?;
        }
    }
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

    // Readiness can be lost again (the rules cannot be checked, a pass cannot read the
    // kernel): one line per change, with what it waits for.
    let mut was_ready = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = gates.changed() => if changed.is_err() { break },
        }
        let verdict = gates.borrow_and_update().verdict();
        if verdict.is_ready() != was_ready {
            was_ready = verdict.is_ready();
            if was_ready {
                tracing::info!(node = %node_name, "flanneld is ready again");
            } else {
                tracing::warn!(node = %node_name, waiting_for = ?verdict.waiting_for, "flanneld is not ready");
            }
        }
    }
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
    let mut delay = Duration::from_millis(500);
    loop {
        match kube_io::node_of_pod(client, namespace, name).await {
            Ok(node) => {
                return node
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

/// The underlay interface the daemon uses: the flags, our Node's node-public-ip annotations
/// (with what was wrong with them) and this namespace's links and routes.
pub(crate) async fn external_interface(
    nl: &Netlink,
    config: &DaemonConfig,
    netconf: &NetConf,
    own: &NodeInfo,
) -> anyhow::Result<(ExternalInterface, Vec<AnnotationWarning>)> {
    let (override_v4, override_v6, warnings) =
        annotations::node_public_ip_override(&config.annotation_keys, &own.annotations.to_map());
    let host = host_network(nl, config.selectors.can_reach).await?;
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
    Ok((ext, warnings))
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
    last_heal: Option<SharedHeal>,
    probes: Option<SharedProbeStatus>,
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
    events: EventCounts,
    last_reconcile: Option<PassSummary>,
    lease: &'a [String],
    node: &'a str,
    probes: Option<ProbeStatus>,
    ready: bool,
    traffic_rules: TrafficView<'a>,
    waiting_for: Vec<String>,
}

#[derive(serde::Serialize)]
struct AnnotationCounts {
    conflicts: u64,
    errors: u64,
    heals: u64,
    last_heal: Option<HealRecord>,
    last_heal_ms: u64,
    writes: u64,
}

/// Events this daemon wrote, folded into a series, or dropped (limit, 403, errors).
#[derive(serde::Serialize)]
struct EventCounts {
    aggregated: u64,
    dropped: u64,
    written: u64,
}

/// The traffic rules' gate: `pending`, `in-place` or `failing` (with the error).
#[derive(serde::Serialize)]
struct TrafficView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    state: &'static str,
}

impl<'a> From<&'a TrafficGate> for TrafficView<'a> {
    fn from(gate: &'a TrafficGate) -> Self {
        let (state, error) = match gate {
            TrafficGate::Pending => ("pending", None),
            TrafficGate::InPlace => ("in-place", None),
            TrafficGate::Failing(e) => ("failing", Some(e.as_str())),
        };
        TrafficView { error, state }
    }
}

fn render_status(status: &std::sync::Mutex<StatusDoc>, metrics: &Metrics, gates: &Gates) -> String {
    let Ok(s) = status.lock() else {
        return "{}".into();
    };
    // A clone is cheap (the peers are shared) and frees the reconciler's lock at once.
    let last = s
        .last_pass
        .as_ref()
        .and_then(|p| p.lock().ok().map(|p| p.clone()));
    let last_heal = s
        .last_heal
        .as_ref()
        .and_then(|h| h.lock().ok().and_then(|h| h.clone()));
    let probes = s
        .probes
        .as_ref()
        .and_then(|p| p.lock().ok().map(|p| p.clone()));
    let (writes, heals, conflicts, errors, last_heal_ms) = metrics.annotation_counts();
    let (events_written, events_aggregated, events_dropped) = metrics.event_counts();
    let verdict = gates.verdict();
    let doc = StatusView {
        annotations: AnnotationCounts {
            conflicts,
            errors,
            heals,
            last_heal,
            last_heal_ms,
            writes,
        },
        drift_repairs: metrics.drift_repairs(),
        events: EventCounts {
            aggregated: events_aggregated,
            dropped: events_dropped,
            written: events_written,
        },
        last_reconcile: last,
        lease: &s.lease,
        node: &s.node,
        probes,
        ready: verdict.is_ready(),
        traffic_rules: (&gates.traffic).into(),
        waiting_for: verdict.waiting_for,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::flanneld::pure::peers::Peer;
    use crate::flanneld::reconcile::{DeviceSummary, FailedPeerSummary, PeerList, RejectedSummary};

    /// What `/status` was when it was built as a `serde_json::Value` tree.
    fn as_value_tree(s: &StatusDoc, metrics: &Metrics, gates: &Gates) -> String {
        let last = s.last_pass.as_ref().map(|p| p.lock().unwrap().clone());
        let (writes, heals, conflicts, errors, last_heal_ms) = metrics.annotation_counts();
        let verdict = gates.verdict();
        let traffic = match &gates.traffic {
            TrafficGate::Pending => serde_json::json!({"state": "pending"}),
            TrafficGate::InPlace => serde_json::json!({"state": "in-place"}),
            TrafficGate::Failing(error) => serde_json::json!({"state": "failing", "error": error}),
        };
        let doc = serde_json::json!({
            "node": s.node,
            "lease": s.lease,
            "ready": verdict.is_ready(),
            "waiting_for": verdict.waiting_for,
            "traffic_rules": traffic,
            "annotations": {
                "writes": writes,
                "heals": heals,
                "conflicts": conflicts,
                "errors": errors,
                "last_heal_ms": last_heal_ms,
                "last_heal": null,
            },
            "drift_repairs": metrics.drift_repairs(),
            "events": {"written": 0, "aggregated": 0, "dropped": 0},
            "last_reconcile": last,
            "probes": null,
        });
        serde_json::to_string_pretty(&doc).unwrap()
    }

    #[test]
    fn status_is_rendered_as_the_value_tree_was_byte_for_byte() {
        let peer = |name: &str, n: u8| Peer::numbered(name, n, "192.0.2");
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
            failed_peers: vec![FailedPeerSummary {
                error: "replace route 10.244.3.0/24: Invalid argument".into(),
                node: "d".into(),
            }],
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
        metrics.count_annotation_heal(Duration::from_millis(3), None);
        let status = Mutex::new(StatusDoc {
            node: "n1".into(),
            lease: vec!["10.244.1.0/24".into()],
            last_pass: None,
            last_heal: None,
            probes: None,
        });
        let mut gates = Gates::default();
        assert_eq!(
            render_status(&status, &metrics, &gates),
            as_value_tree(&status.lock().unwrap(), &metrics, &gates)
        );
        gates.traffic = TrafficGate::Failing("`iptables` is not installed".into());
        status.lock().unwrap().last_pass = Some(Arc::new(Mutex::new(summary)));
        let rendered = render_status(&status, &metrics, &gates);
        assert_eq!(
            rendered,
            as_value_tree(&status.lock().unwrap(), &metrics, &gates)
        );
        assert!(rendered.contains("\"vtep_macs\""), "{rendered}");
    }
}
