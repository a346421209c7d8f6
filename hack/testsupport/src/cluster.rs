//! A local multi-node flannel cluster in network namespaces, built on the [`Lab`]: node hosts
//! on the underlay switch, each running the real `flanneld` as the DaemonSet does, with pods
//! (namespaces) wired by a CNI conflist through [`CniRuntime`] — the real `flannel` binary
//! with the stock kube-flannel conflist, or upstream's plugin chain (reference `bridge` +
//! `host-local`). Tools to see and prove the datapath: kernel probes of the VXLAN entries,
//! one-shot pings, a ping matrix and continuous pings that count every lost reply.
//!
//! Numbering: node slot `K` (1..=253) has underlay address `a.b.c.K` and podCIDR
//! `10.244.K.0/24` (the stock net-conf Network is 10.244.0.0/16).
//!
//! Everything is owned: dropping the cluster kills the daemons and deletes every namespace
//! (pods, nodes, then the lab's API host and switch) and the lab's files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::cni_runtime::{
    Attachment, CniRuntime, CniRuntimeError, ConfList, FlannelImpl, NodeCniPaths,
};
use super::lab::{Flanneld, Lab, LabError, LabOptions};
use super::topology::Host;
use flannel_rs::net::{Family, MacAddr};
use flannel_rs::netlink::{Netlink, RouteFilter};
use flannel_rs::netns::NetnsGuard;

/// The VXLAN device flanneld manages (VNI 1).
pub const VXLAN_DEVICE: &str = "flannel.1";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Cni(Box<CniRuntimeError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{context}: {detail}")]
    Probe { context: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

impl From<CniRuntimeError> for ClusterError {
    fn from(e: CniRuntimeError) -> Self {
        ClusterError::Cni(Box::new(e))
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// The executables a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub flanneld: PathBuf,
    pub testserver: PathBuf,
    /// Our CNI plugin (`flannel`).
    pub flannel_cni: PathBuf,
    /// The reference plugins (`bridge`, `host-local`, `portmap`): Debian's
    /// containernetworking-plugins.
    pub reference_cni_dir: PathBuf,
}

impl Binaries {
    /// `flanneld`, `kube-testserver` and `flannel` from `dir` (a cargo target dir), the
    /// reference plugins from /usr/lib/cni.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            flanneld: dir.join("flanneld"),
            testserver: dir.join("kube-testserver"),
            flannel_cni: dir.join("flannel"),
            reference_cni_dir: PathBuf::from("/usr/lib/cni"),
        }
    }

    /// Names every missing executable.
    pub fn check(&self) -> Result<(), ClusterError> {
        let mut missing = Vec::new();
        for p in [&self.flanneld, &self.testserver, &self.flannel_cni] {
            if !p.is_file() {
                missing.push(p.display().to_string());
            }
        }
        for p in ["bridge", "host-local", "portmap"] {
            let path = self.reference_cni_dir.join(p);
            if !path.is_file() {
                missing.push(format!(
                    "{} (Debian package containernetworking-plugins)",
                    path.display()
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::NotFound(format!(
                "missing executables: {}",
                missing.join(", ")
            )))
        }
    }
}

pub struct ClusterOptions {
    pub lab: LabOptions,
    pub binaries: Binaries,
    /// Extra flanneld arguments (after the DaemonSet's own).
    pub flanneld_args: Vec<String>,
    /// Extra environment for every flanneld (a test build's knobs).
    pub flanneld_env: Vec<(String, String)>,
    /// How long a daemon may take to become ready.
    pub ready_timeout: Duration,
    /// Set from outside (a signal handler) to abort waits with [`ClusterError::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl ClusterOptions {
    pub fn new(lab: LabOptions, binaries: Binaries) -> Self {
        Self {
            lab,
            binaries,
            flanneld_args: Vec::new(),
            flanneld_env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            cancel: None,
        }
    }
}

/// How a node's pods are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodWiring {
    /// Our `flannel` binary, stock kube-flannel conflist (flannel + portmap).
    Flannel,
    /// Upstream's chain: flannel's delegation to the reference `bridge` + `host-local`
    /// (+ reference `portmap`), all fed by the subnet.env our daemon writes.
    Reference,
}

impl std::fmt::Display for PodWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodWiring::Flannel => "flannel (ours)",
            PodWiring::Reference => "reference bridge+host-local",
        })
    }
}

/// How a node's Node object comes into the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Created through the API (as kubelet registers itself), named `node-K`.
    Api,
    /// Created by the test server's admin API (works while the API listener is down), named
    /// `<prefix><K:05>` by the server.
    Admin { prefix: String },
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub wiring: PodWiring,
    pub registration: Registration,
    pub start_daemon: bool,
    pub wait_ready: bool,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            wiring: PodWiring::Flannel,
            registration: Registration::Api,
            start_daemon: true,
            wait_ready: true,
        }
    }
}

/// A pod: a namespace with `eth0` attached by the node's conflist.
pub struct Pod {
    pub ns: NetnsGuard,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub attachment: Attachment,
}

/// One node: its host namespace, daemon and pods (drop order: pods, daemon, host).
pub struct NodeRig {
    pub pods: Vec<Pod>,
    pub flanneld: Option<Flanneld>,
    pub host: Host,
    pub name: String,
    pub slot: u8,
    pub subnet: Ipv4Network,
    pub wiring: PodWiring,
    /// The node's files: subnet.env, flanneld logs, CNI data.
    pub dir: PathBuf,
    pub cni: CniRuntime,
    pub conflist: ConfList,
    next_pod: u32,
}

impl NodeRig {
    pub fn daemon_running(&mut self) -> bool {
        self.flanneld.as_mut().is_some_and(Flanneld::is_running)
    }

    /// All flanneld logs of this node (one file per start), oldest first.
    pub fn daemon_logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("flanneld-") && n.ends_with(".log"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }
}

/// What peers must program for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFacts {
    pub name: String,
    pub subnet: Ipv4Network,
    pub vtep_mac: MacAddr,
    pub underlay: Ipv4Addr,
}

/// The flannel entries of one node's kernel: on `flannel.1`, its routes, permanent
/// neighbours and FDB entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Datapath {
    /// `(ifindex, MAC)` of flannel.1 when it exists.
    pub device: Option<(u32, MacAddr)>,
    /// dst → gateway.
    pub routes: BTreeMap<IpNetwork, Option<IpAddr>>,
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
    pub fdb: BTreeMap<MacAddr, IpAddr>,
}

impl Datapath {
    /// Route, neighbour and FDB entry exactly as flannel programs them for `peer`.
    pub fn has_peer(&self, peer: &PeerFacts) -> bool {
        self.missing_for(peer).is_empty()
    }

    /// What is missing or wrong for `peer` (empty when all three entries are right).
    pub fn missing_for(&self, peer: &PeerFacts) -> Vec<String> {
        let gw = IpAddr::V4(peer.subnet.network());
        let mut missing = Vec::new();
        if self.routes.get(&IpNetwork::V4(peer.subnet)) != Some(&Some(gw)) {
            missing.push(format!("route {} via {gw}", peer.subnet));
        }
        if self.neighbours.get(&gw) != Some(&peer.vtep_mac) {
            missing.push(format!("neighbour {gw} lladdr {}", peer.vtep_mac));
        }
        if self.fdb.get(&peer.vtep_mac) != Some(&IpAddr::V4(peer.underlay)) {
            missing.push(format!("fdb {} dst {}", peer.vtep_mac, peer.underlay));
        }
        missing
    }

    /// Any entry that points at `peer` (its subnet, its VTEP MAC or its underlay address).
    pub fn mentions(&self, peer: &PeerFacts) -> bool {
        let gw = IpAddr::V4(peer.subnet.network());
        self.routes.contains_key(&IpNetwork::V4(peer.subnet))
            || self.neighbours.contains_key(&gw)
            || self.neighbours.values().any(|m| *m == peer.vtep_mac)
            || self.fdb.contains_key(&peer.vtep_mac)
            || self.fdb.values().any(|ip| *ip == IpAddr::V4(peer.underlay))
    }

    /// Routes on flannel.1 (peers programmed, by subnet).
    pub fn peer_count(&self) -> usize {
        self.routes.len()
    }
}

pub struct Cluster {
    // Field order is drop order: nodes (pods, daemons, hosts) before the lab.
    pub nodes: Vec<NodeRig>,
    pub lab: Lab,
    binaries: Binaries,
    flanneld_args: Vec<String>,
    flanneld_env: Vec<(String, String)>,
    ready_timeout: Duration,
    cancel: Arc<AtomicBool>,
    tag: String,
    cni_bin_dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// Pod subnet of node slot `k`.
pub fn slot_subnet(k: u8) -> Ipv4Network {
    // 10.244.k.0/24 is always a valid network.
    Ipv4Network::new(Ipv4Addr::new(10, 244, k, 0), 24)
        .unwrap_or_else(|e| unreachable!("10.244.{k}.0/24: {e}"))
}

impl Cluster {
    /// Builds the lab (switch, API host, test API server); no nodes yet.
    pub fn new(opts: ClusterOptions) -> Result<Self, ClusterError> {
        opts.binaries.check()?;
        let tag = opts.lab.tag.clone();
        let lab = Lab::new(opts.lab, &opts.binaries.testserver)?;
        // The plugin dir a runtime would have: our `flannel`, found first; the reference
        // plugins come after it in CNI_PATH.
        let cni_bin_dir = lab.dir.path().join("cni-bin");
        std::fs::create_dir_all(&cni_bin_dir)
            .map_err(io(format!("create {}", cni_bin_dir.display())))?;
        let flannel = std::fs::canonicalize(&opts.binaries.flannel_cni).map_err(io(format!(
            "resolve {}",
            opts.binaries.flannel_cni.display()
        )))?;
        std::os::unix::fs::symlink(&flannel, cni_bin_dir.join("flannel"))
            .map_err(io("link the flannel plugin"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("start the probe runtime"))?;
        Ok(Self {
            nodes: Vec::new(),
            lab,
            binaries: opts.binaries,
            flanneld_args: opts.flanneld_args,
            flanneld_env: opts.flanneld_env,
            ready_timeout: opts.ready_timeout,
            cancel: opts.cancel.unwrap_or_default(),
            tag,
            cni_bin_dir,
            runtime,
        })
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The flag that interrupts this cluster's waits.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn check_cancel(&self) -> Result<(), ClusterError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(ClusterError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn ns_tag(&self, what: &str) -> String {
        if self.tag.is_empty() {
            what.to_string()
        } else {
            format!("{}-{what}", self.tag)
        }
    }

    /// Sleeps in small steps, returning early with `Interrupted` when cancelled.
    pub fn sleep(&self, d: Duration) -> Result<(), ClusterError> {
        let end = Instant::now() + d;
        loop {
            self.check_cancel()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    pub fn node(&self, name: &str) -> Result<&NodeRig, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {name:?}")))
    }

    pub fn node_mut(&mut self, name: &str) -> Result<&mut NodeRig, ClusterError> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {name:?}")))
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, ClusterError> {
        self.pods()
            .find(|p| p.name == name)
            .ok_or_else(|| ClusterError::NotFound(format!("no pod {name:?}")))
    }

    fn free_slot(&self, also_next: bool) -> Result<u8, ClusterError> {
        let used: BTreeSet<u8> = self.nodes.iter().map(|n| n.slot).collect();
        (1..=252u8)
            .find(|k| !used.contains(k) && (!also_next || !used.contains(&(k + 1))))
            .ok_or_else(|| ClusterError::Invalid("no free node slot (max 252 nodes)".into()))
    }

    /// Adds a node: host namespace on the switch, Node object, and (per `spec`) the daemon.
    /// Returns the node's name.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<String, ClusterError> {
        self.check_cancel()?;
        let (slot, name, octet) = match &spec.registration {
            Registration::Api => {
                let k = self.free_slot(false)?;
                (k, format!("node-{k}"), k)
            }
            // The server names the node and gives it InternalIP host number index+1 of the
            // underlay; use that octet so the Node's address is the host's.
            Registration::Admin { prefix } => {
                let k = self.free_slot(true)?;
                (k, format!("{prefix}{k:05}"), k + 1)
            }
        };
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(ClusterError::Invalid(format!("node {name} exists")));
        }
        let subnet = slot_subnet(slot);
        let host = self.lab.add_host(&self.ns_tag(&name), octet)?;
        match &spec.registration {
            Registration::Api => {
                self.lab
                    .create_node(&name, &subnet.to_string(), host.address, BTreeMap::new())?;
            }
            Registration::Admin { prefix } => {
                let u = self.lab.switch.address(0).octets();
                let answer = self
                    .lab
                    .server
                    .generate_nodes(&json!({
                        "count": 1, "realistic": false, "prefix": prefix, "startIndex": slot,
                        "podCidrBase": "10.244.0.0/16", "podCidrPrefixLen": 24,
                        "nodeIpBase": format!("{}.{}.{}.0/24", u[0], u[1], u[2]),
                        "flannelAnnotations": false,
                    }))
                    .map_err(LabError::from)?;
                if answer["firstName"] != json!(name) {
                    return Err(ClusterError::Invalid(format!(
                        "server generated {} instead of {name}",
                        answer["firstName"]
                    )));
                }
            }
        }
        let dir = self.lab.dir.path().join(&name);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let paths = NodeCniPaths::under(&dir, &dir.join("subnet.env"));
        let mut conflist = ConfList::stock();
        paths.localize(&mut conflist);
        let cni = CniRuntime {
            node_netns: host.ns.path(),
            plugin_path: match spec.wiring {
                PodWiring::Flannel => vec![
                    self.cni_bin_dir.clone(),
                    self.binaries.reference_cni_dir.clone(),
                ],
                PodWiring::Reference => vec![self.binaries.reference_cni_dir.clone()],
            },
            paths,
            flannel: match spec.wiring {
                PodWiring::Flannel => FlannelImpl::Binary,
                PodWiring::Reference => FlannelImpl::UpstreamDelegation,
            },
        };
        self.nodes.push(NodeRig {
            pods: Vec::new(),
            flanneld: None,
            host,
            name: name.clone(),
            slot,
            subnet,
            wiring: spec.wiring,
            dir,
            cni,
            conflist,
            next_pod: 1,
        });
        if spec.start_daemon {
            self.start_daemon(&name)?;
            if spec.wait_ready {
                self.wait_ready(&name)?;
            }
        }
        Ok(name)
    }

    /// Starts flanneld on `node` (as the DaemonSet does; see [`Lab::start_flanneld`]).
    pub fn start_daemon(&mut self, node: &str) -> Result<(), ClusterError> {
        self.check_cancel()?;
        let args: Vec<&str> = self.flanneld_args.iter().map(String::as_str).collect();
        let rig = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {node:?}")))?;
        if self.nodes[rig].daemon_running() {
            return Err(ClusterError::Invalid(format!(
                "flanneld already runs on {node}"
            )));
        }
        let envs: Vec<(&str, &str)> = self
            .flanneld_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let subnet_file = self.lab.default_subnet_file(node);
        let d = self.lab.start_flanneld_at(
            &self.binaries.flanneld,
            &self.nodes[rig].host,
            node,
            &subnet_file,
            &args,
            &envs,
        )?;
        self.nodes[rig].flanneld = Some(d);
        Ok(())
    }

    /// Runs `flanneld diagnose ARGS` on `node` with the daemon's flags; (exit code, stdout,
    /// stderr).
    pub fn diagnose(
        &self,
        node: &str,
        args: &[&str],
    ) -> Result<(i32, String, String), ClusterError> {
        self.diagnose_under(&[], node, args)
    }

    /// [`Cluster::diagnose`] with `wrapper` in front of the binary inside the node's namespace
    /// (e.g. `setpriv` dropping every capability).
    pub fn diagnose_under(
        &self,
        wrapper: &[&str],
        node: &str,
        args: &[&str],
    ) -> Result<(i32, String, String), ClusterError> {
        let rig = self.node(node)?;
        let out = self
            .lab
            .flanneld_command_under(
                wrapper,
                &self.binaries.flanneld,
                &rig.host,
                node,
                &self.lab.default_subnet_file(node),
                Some("diagnose"),
            )
            .args(args)
            .output()
            .map_err(|e| ClusterError::Invalid(format!("run flanneld diagnose: {e}")))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Waits until `node`'s daemon answers /readyz with 200.
    pub fn wait_ready(&mut self, node: &str) -> Result<Duration, ClusterError> {
        let timeout = self.ready_timeout;
        let cancel = self.cancel.clone();
        let rig = self.node_mut(node)?;
        let netns = rig.host.ns.name().to_string();
        let d = rig
            .flanneld
            .as_mut()
            .ok_or_else(|| ClusterError::Invalid(format!("no flanneld on {node}")))?;
        let start = Instant::now();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ClusterError::Interrupted);
            }
            if let Ok((200, _)) = health_get(&netns, "/readyz") {
                return Ok(start.elapsed());
            }
            if !d.is_running() {
                return Err(ClusterError::Timeout(format!(
                    "flanneld on {node} exited before it was ready; log:\n{}",
                    d.log()
                )));
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout(format!(
                    "flanneld on {node} not ready after {timeout:?}; log:\n{}",
                    d.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// GET `path` from `node`'s flanneld health server (port 8081, as the DaemonSet sets it).
    pub fn daemon_http(&self, node: &str, path: &str) -> Result<(u16, String), ClusterError> {
        health_get(self.node(node)?.host.ns.name(), path)
    }

    /// `node`'s daemon `/status` document, from its private status socket.
    pub fn daemon_status(&self, node: &str) -> Result<Value, ClusterError> {
        let d = self
            .node(node)?
            .flanneld
            .as_ref()
            .ok_or_else(|| ClusterError::Invalid(format!("no flanneld on {node}")))?;
        let (code, body) = d.status_http("/status").map_err(|e| ClusterError::Probe {
            context: format!("{node} /status on {}", d.status_socket().display()),
            detail: e.to_string(),
        })?;
        if code != 200 {
            return Err(ClusterError::Probe {
                context: format!("{node} /status"),
                detail: format!("HTTP {code}: {body}"),
            });
        }
        serde_json::from_str(&body).map_err(|e| ClusterError::Probe {
            context: format!("{node} /status"),
            detail: e.to_string(),
        })
    }

    /// SIGTERM to `node`'s daemon; returns how long it took to exit.
    pub fn stop_daemon(&mut self, node: &str) -> Result<Duration, ClusterError> {
        let rig = self.node_mut(node)?;
        let mut d = rig
            .flanneld
            .take()
            .ok_or_else(|| ClusterError::Invalid(format!("no flanneld on {node}")))?;
        d.stop()
            .ok_or_else(|| ClusterError::Timeout(format!("flanneld on {node} ignored SIGTERM")))
    }

    /// Stops and starts `node`'s daemon; returns (exit time, time from start to ready).
    pub fn restart_daemon(&mut self, node: &str) -> Result<(Duration, Duration), ClusterError> {
        let stopped = self.stop_daemon(node)?;
        self.start_daemon(node)?;
        let ready = self.wait_ready(node)?;
        Ok((stopped, ready))
    }

    /// Deletes the Node object, stops the daemon, removes the node's pods and host.
    pub fn remove_node(&mut self, node: &str) -> Result<(), ClusterError> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {node:?}")))?;
        self.lab.delete_node(node)?;
        let mut rig = self.nodes.remove(index);
        if let Some(mut d) = rig.flanneld.take() {
            d.stop();
        }
        drop(rig);
        Ok(())
    }

    /// Creates a pod on `node` and wires it through the node's conflist (CNI ADD).
    pub fn add_pod(&mut self, node: &str) -> Result<String, ClusterError> {
        self.check_cancel()?;
        let tag = self.tag.clone();
        let rig_index = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| ClusterError::NotFound(format!("no node {node:?}")))?;
        let (name, ns) = {
            let rig = &mut self.nodes[rig_index];
            let name = format!("pod-{}-{}", rig.slot, rig.next_pod);
            rig.next_pod += 1;
            let ns_tag = if tag.is_empty() {
                name.clone()
            } else {
                format!("{tag}-{name}")
            };
            (name, ns_tag)
        };
        let ns = self.lab.new_netns(&ns)?;
        let rig = &mut self.nodes[rig_index];
        let container_id = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let attachment = Attachment::pod("default", &name, &container_id, &ns.path());
        let result = rig.cni.add(&rig.conflist, &attachment)?;
        let ip = result_ipv4(&result).ok_or_else(|| {
            ClusterError::Invalid(format!("CNI result without an IPv4 address: {result}"))
        })?;
        rig.pods.push(Pod {
            ns,
            name: name.clone(),
            node: node.to_string(),
            ip,
            container_id,
            attachment,
        });
        Ok(name)
    }

    /// CNI DEL, then the pod's namespace goes.
    pub fn remove_pod(&mut self, pod: &str) -> Result<(), ClusterError> {
        for rig in &mut self.nodes {
            if let Some(i) = rig.pods.iter().position(|p| p.name == pod) {
                let p = rig.pods.remove(i);
                let del = rig.cni.del(&rig.conflist, &p.attachment);
                drop(p);
                return del.map_err(ClusterError::from);
            }
        }
        Err(ClusterError::NotFound(format!("no pod {pod:?}")))
    }

    /// The flannel entries in `node`'s kernel.
    pub fn datapath(&self, node: &str) -> Result<Datapath, ClusterError> {
        let ns = self.node(node)?.host.ns.name().to_string();
        self.datapath_in(&ns)
    }

    fn datapath_in(&self, netns: &str) -> Result<Datapath, ClusterError> {
        let probe = |detail: String| ClusterError::Probe {
            context: format!("read flannel entries in {netns}"),
            detail,
        };
        self.runtime.block_on(async {
            let nl = Netlink::in_named(netns).map_err(|e| probe(e.to_string()))?;
            let Some(link) = nl
                .link_by_name(VXLAN_DEVICE)
                .await
                .map_err(|e| probe(e.to_string()))?
            else {
                return Ok(Datapath::default());
            };
            let mut dp = Datapath {
                device: link.mac.map(|m| (link.index, m)),
                ..Datapath::default()
            };
            for r in nl
                .routes(&RouteFilter::main().oif(link.index).family(Family::V4))
                .await
                .map_err(|e| probe(e.to_string()))?
            {
                dp.routes.insert(r.dst, r.gateway);
            }
            for n in nl
                .neighbours(link.index)
                .await
                .map_err(|e| probe(e.to_string()))?
            {
                dp.neighbours.insert(n.ip, n.mac);
            }
            for f in nl
                .fdb_entries(link.index)
                .await
                .map_err(|e| probe(e.to_string()))?
            {
                dp.fdb.insert(f.mac, f.dst);
            }
            Ok(dp)
        })
    }

    /// What peers must program for `node` (its VTEP MAC read from its flannel.1).
    pub fn peer_facts(&self, node: &str) -> Result<PeerFacts, ClusterError> {
        let rig = self.node(node)?;
        let dp = self.datapath_in(rig.host.ns.name())?;
        let (_, mac) = dp
            .device
            .ok_or_else(|| ClusterError::NotFound(format!("{node} has no {VXLAN_DEVICE} yet")))?;
        Ok(PeerFacts {
            name: rig.name.clone(),
            subnet: rig.subnet,
            vtep_mac: mac,
            underlay: rig.host.address,
        })
    }

    /// Nodes whose daemon runs and whose VXLAN device exists, with what peers must program.
    pub fn live_peers(&mut self) -> Result<Vec<PeerFacts>, ClusterError> {
        let names: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.daemon_running().then(|| n.name.clone()))
            .collect();
        let mut out = Vec::new();
        for n in names {
            if let Ok(f) = self.peer_facts(&n) {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// What is still missing for full convergence: per live node, the peers whose entries
    /// are not (all) programmed. Empty = every live node has every other live node.
    pub fn unconverged(&mut self) -> Result<Vec<(String, String, Vec<String>)>, ClusterError> {
        let peers = self.live_peers()?;
        let mut gaps = Vec::new();
        for x in &peers {
            let dp = self.datapath(&x.name)?;
            for y in peers.iter().filter(|y| y.name != x.name) {
                let missing = dp.missing_for(y);
                if !missing.is_empty() {
                    gaps.push((x.name.clone(), y.name.clone(), missing));
                }
            }
        }
        Ok(gaps)
    }

    /// Waits until every live node has every other live node programmed.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        loop {
            self.check_cancel()?;
            let gaps = self.unconverged()?;
            if gaps.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                let text: Vec<String> = gaps
                    .iter()
                    .map(|(x, y, m)| format!("{x} lacks {y}: {}", m.join(", ")))
                    .collect();
                return Err(ClusterError::Timeout(format!(
                    "not converged after {timeout:?}: {}",
                    text.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// One ping from `from` (a pod) to `to`; the round trip, or `None` without a reply.
    pub fn ping(
        &self,
        from: &str,
        to: Ipv4Addr,
        wait: Duration,
    ) -> Result<Option<f64>, ClusterError> {
        ping_once(&self.pod(from)?.ns, to, wait)
    }

    /// Every pod pings every other pod once (sources in parallel).
    pub fn ping_matrix(&self) -> Result<PingMatrix, ClusterError> {
        let pods: Vec<MatrixPod> = self
            .pods()
            .map(|p| MatrixPod {
                name: p.name.clone(),
                node: p.node.clone(),
                ip: p.ip,
                netns: p.ns.name().to_string(),
            })
            .collect();
        let targets: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
        let handles: Vec<JoinHandle<Vec<Option<Option<f64>>>>> = pods
            .iter()
            .map(|src| {
                let netns = src.netns.clone();
                let own = src.ip;
                let targets = targets.clone();
                std::thread::spawn(move || {
                    targets
                        .iter()
                        .map(|t| {
                            (*t != own).then(|| {
                                ping_in(&netns, *t, Duration::from_secs(1)).unwrap_or(None)
                            })
                        })
                        .collect()
                })
            })
            .collect();
        let mut rtt = Vec::new();
        for h in handles {
            rtt.push(
                h.join()
                    .map_err(|_| ClusterError::Invalid("a ping matrix thread panicked".into()))?,
            );
        }
        Ok(PingMatrix { pods, rtt })
    }

    /// Starts a continuous ping from pod `from` to `to` every `interval`.
    pub fn start_pinger(
        &self,
        from: &str,
        to: Ipv4Addr,
        interval: Duration,
    ) -> Result<Pinger, ClusterError> {
        Pinger::start(&self.pod(from)?.ns, from, to, interval)
    }

    /// A snapshot for `status`.
    pub fn status(&mut self) -> ClusterStatus {
        let mut nodes = Vec::new();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            let dp = self.datapath(&name).ok();
            let Ok(rig) = self.node_mut(&name) else {
                continue;
            };
            let running = rig.daemon_running();
            let ready =
                running && health_get(rig.host.ns.name(), "/readyz").is_ok_and(|(c, _)| c == 200);
            nodes.push(NodeStatus {
                name: rig.name.clone(),
                netns: rig.host.ns.name().to_string(),
                underlay: rig.host.address,
                subnet: rig.subnet.to_string(),
                wiring: rig.wiring,
                daemon_pid: rig.flanneld.as_ref().and_then(Flanneld::pid),
                daemon_running: running,
                daemon_ready: ready,
                vtep_mac: dp
                    .as_ref()
                    .and_then(|d| d.device)
                    .map(|(_, m)| m.to_string()),
                peer_routes: dp
                    .as_ref()
                    .map(|d| d.routes.keys().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                pods: rig
                    .pods
                    .iter()
                    .map(|p| PodStatus {
                        name: p.name.clone(),
                        ip: p.ip,
                        netns: p.ns.name().to_string(),
                    })
                    .collect(),
            });
        }
        ClusterStatus {
            api_url: self.lab.server.url().to_string(),
            api_netns: self.lab.api.ns.name().to_string(),
            switch_netns: self.lab.switch.netns().name().to_string(),
            dir: self.lab.dir.path().to_path_buf(),
            nodes,
        }
    }

    /// Every namespace the cluster owns (for a state file).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![
            self.lab.switch.netns().name().to_string(),
            self.lab.api.ns.name().to_string(),
        ];
        for n in &self.nodes {
            v.push(n.host.ns.name().to_string());
            v.extend(n.pods.iter().map(|p| p.ns.name().to_string()));
        }
        v
    }

    /// Every process the cluster started that still runs: (role, pid).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut v = vec![("kube-testserver".to_string(), self.lab.server.pid())];
        for n in &self.nodes {
            if let Some(pid) = n.flanneld.as_ref().and_then(Flanneld::pid) {
                v.push((format!("flanneld {}", n.name), pid));
            }
        }
        v
    }
}

/// Port of flanneld's health server in the lab (`--healthz-port=8081`).
pub const HEALTHZ_PORT: u16 = 8081;

/// A plain HTTP/1.0 GET to the daemon's health server, from a socket made inside `netns`.
fn health_get(netns: &str, path: &str) -> Result<(u16, String), ClusterError> {
    let err = |detail: String| ClusterError::Probe {
        context: format!("GET {path} in {netns}"),
        detail,
    };
    let ns = flannel_rs::netns::NetnsFile::open_named(netns).map_err(|e| err(e.to_string()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
    let stream = ns
        .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| err(e.to_string()))?;
    flannel_rs::flanneld::explain::http_get_on(stream, path).map_err(|e| err(e.to_string()))
}

/// The first IPv4 address of a CNI result.
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        match addr.parse::<IpNetwork>().ok()? {
            IpNetwork::V4(n) => Some(n.ip()),
            IpNetwork::V6(_) => None,
        }
    })
}

fn ping_once(ns: &NetnsGuard, to: Ipv4Addr, wait: Duration) -> Result<Option<f64>, ClusterError> {
    ping_in(ns.name(), to, wait)
}

/// `ping -c 1` inside `netns`: the RTT in ms, `None` without a reply.
fn ping_in(netns: &str, to: Ipv4Addr, wait: Duration) -> Result<Option<f64>, ClusterError> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W"])
        .arg(format!("{:.3}", wait.as_secs_f64().max(0.001)))
        .arg(to.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(io("run ping"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success().then(|| parse_rtt_avg(&text)).flatten())
}

/// The average RTT of a ping summary (`rtt min/avg/max/mdev = a/b/c/d ms`).
fn parse_rtt_avg(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim();
    values.split('/').nth(1)?.trim().parse().ok()
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixPod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    #[serde(skip)]
    netns: String,
}

/// Pod-to-pod reachability: `rtt[i][j]` = ping from pod i to pod j (`None` on the diagonal,
/// `Some(None)` = no reply, `Some(Some(ms))`).
#[derive(Debug, Clone, Serialize)]
pub struct PingMatrix {
    pub pods: Vec<MatrixPod>,
    pub rtt: Vec<Vec<Option<Option<f64>>>>,
}

impl PingMatrix {
    /// `(from, to)` pairs without a reply.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, row) in self.rtt.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                if matches!(cell, Some(None)) {
                    out.push((self.pods[i].name.clone(), self.pods[j].name.clone()));
                }
            }
        }
        out
    }

    pub fn pairs(&self) -> usize {
        self.rtt.iter().flatten().filter(|c| c.is_some()).count()
    }

    /// A table: rows are sources, columns destinations, cells the RTT in ms or `LOST`.
    pub fn render(&self) -> String {
        let width = self
            .pods
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = format!("{:<w$}  {:<15}", "from \\ to", "", w = width);
        for p in &self.pods {
            out.push_str(&format!(" {:>w$}", p.name, w = width));
        }
        out.push('\n');
        for (i, row) in self.rtt.iter().enumerate() {
            let p = &self.pods[i];
            out.push_str(&format!(
                "{:<w$}  {:<15}",
                p.name,
                p.ip.to_string(),
                w = width
            ));
            for cell in row {
                let text = match cell {
                    None => "·".to_string(),
                    Some(None) => "LOST".to_string(),
                    Some(Some(ms)) => format!("{ms:.2}ms"),
                };
                out.push_str(&format!(" {text:>w$}", w = width));
            }
            out.push('\n');
        }
        out
    }
}

/// A continuous `ping -i INTERVAL` from a pod; every reply's sequence number is recorded so
/// that a lost reply shows as a gap, wherever it falls.
pub struct Pinger {
    child: Option<Child>,
    reader: Option<JoinHandle<(Vec<u16>, String)>>,
    received: Arc<AtomicU64>,
    started: Instant,
    pub from: String,
    pub to: Ipv4Addr,
    pub interval: Duration,
}

/// What a continuous ping saw.
#[derive(Debug, Clone, Serialize)]
pub struct PingStats {
    pub from: String,
    pub to: Ipv4Addr,
    pub transmitted: u64,
    pub received: u64,
    /// Sequence numbers without a reply, before the last reply (real losses).
    pub lost: u64,
    /// Requests sent after the last reply (in flight when stopped, or lost at the end).
    pub trailing: u64,
    /// Longest run of consecutive lost replies.
    pub longest_gap: u64,
    pub duration: Duration,
}

impl std::fmt::Display for PingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} → {}: {} sent, {} received, {} lost in {:.1} s",
            self.from,
            self.to,
            self.transmitted,
            self.received,
            self.lost,
            self.duration.as_secs_f64()
        )
    }
}

impl Pinger {
    pub fn start(
        ns: &NetnsGuard,
        from: &str,
        to: Ipv4Addr,
        interval: Duration,
    ) -> Result<Self, ClusterError> {
        let mut child = ns
            .command("ping")
            .args(["-n", "-W", "1", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start ping"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ClusterError::Invalid("ping without stdout".into()))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let reader = std::thread::spawn(move || {
            let mut seqs = Vec::new();
            let mut summary = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(seq) = parse_reply_seq(&line) {
                    seqs.push(seq);
                    counter.fetch_add(1, Ordering::Relaxed);
                } else if line.contains("packets transmitted") {
                    summary = line;
                }
            }
            (seqs, summary)
        });
        Ok(Self {
            child: Some(child),
            reader: Some(reader),
            received,
            started: Instant::now(),
            from: from.into(),
            to,
            interval,
        })
    }

    /// Replies so far (live).
    pub fn received_so_far(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether the ping process still runs (it exits on a terminal's Ctrl-C, for one).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits (up to `timeout`) until the replies reach `n`.
    pub fn wait_replies(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.received_so_far() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.received_so_far() >= n
    }

    /// SIGINT (ping prints its summary), then the tally.
    pub fn stop(mut self) -> Result<PingStats, ClusterError> {
        let duration = self.started.elapsed();
        let mut child = self
            .child
            .take()
            .ok_or_else(|| ClusterError::Invalid("pinger already stopped".into()))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = child.wait();
        let (seqs, summary) = self
            .reader
            .take()
            .ok_or_else(|| ClusterError::Invalid("pinger without reader".into()))?
            .join()
            .map_err(|_| ClusterError::Invalid("ping reader panicked".into()))?;
        let transmitted = summary
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(tally(&self.from, self.to, &seqs, transmitted, duration))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `icmp_seq=N` of a reply line (`64 bytes from …: icmp_seq=12 ttl=62 time=0.1 ms`).
fn parse_reply_seq(line: &str) -> Option<u16> {
    if !line.contains("bytes from") {
        return None;
    }
    let rest = line.split("icmp_seq=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Losses from reply sequence numbers (1-based, as iputils numbers them; no wrap within a
/// run shorter than 65535 requests).
fn tally(
    from: &str,
    to: Ipv4Addr,
    seqs: &[u16],
    transmitted: u64,
    duration: Duration,
) -> PingStats {
    let got: BTreeSet<u16> = seqs.iter().copied().collect();
    let max = got.iter().next_back().copied().unwrap_or(0);
    let mut lost = 0;
    let mut gap = 0;
    let mut longest_gap = 0;
    for seq in 1..=max {
        if got.contains(&seq) {
            gap = 0;
        } else {
            lost += 1;
            gap += 1;
            longest_gap = longest_gap.max(gap);
        }
    }
    PingStats {
        from: from.into(),
        to,
        transmitted: transmitted.max(u64::from(max)),
        received: got.len() as u64,
        lost,
        trailing: transmitted.saturating_sub(u64::from(max)),
        longest_gap,
        duration,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub underlay: Ipv4Addr,
    pub subnet: String,
    pub wiring: PodWiring,
    pub daemon_pid: Option<u32>,
    pub daemon_running: bool,
    pub daemon_ready: bool,
    pub vtep_mac: Option<String>,
    /// Routes on flannel.1 (the peers this node has programmed).
    pub peer_routes: Vec<String>,
    pub pods: Vec<PodStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub api_url: String,
    pub api_netns: String,
    pub switch_netns: String,
    pub dir: PathBuf,
    pub nodes: Vec<NodeStatus>,
}

impl ClusterStatus {
    pub fn render(&self) -> String {
        let mut out = format!(
            "API server {} (in {}), switch {}\nfiles {}\n",
            self.api_url,
            self.api_netns,
            self.switch_netns,
            self.dir.display()
        );
        for n in &self.nodes {
            let daemon = match (n.daemon_running, n.daemon_ready) {
                (true, true) => format!("flanneld pid {} ready", n.daemon_pid.unwrap_or(0)),
                (true, false) => format!("flanneld pid {} NOT READY", n.daemon_pid.unwrap_or(0)),
                _ => "flanneld NOT RUNNING".to_string(),
            };
            out.push_str(&format!(
                "{:<12} {:<15} podCIDR {:<15} vtep {:<17} {daemon}; pods by {}\n",
                n.name,
                n.underlay.to_string(),
                n.subnet,
                n.vtep_mac.as_deref().unwrap_or("-"),
                n.wiring
            ));
            out.push_str(&format!(
                "    peers programmed: {}\n",
                if n.peer_routes.is_empty() {
                    "-".to_string()
                } else {
                    n.peer_routes.join(" ")
                }
            ));
            for p in &n.pods {
                out.push_str(&format!(
                    "    {:<10} {:<15} ns {}\n",
                    p.name,
                    p.ip.to_string(),
                    p.netns
                ));
            }
        }
        out
    }
}

/// Runs `f` until it returns `Some`, every `every`, for at most `timeout`.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A shared flag a signal handler can set to interrupt a cluster's waits.
pub fn cancel_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Log lines of a daemon that mention `needle`.
pub fn log_lines(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_reply_seq("64 bytes from 10.244.2.2: icmp_seq=12 ttl=62 time=0.123 ms"),
            Some(12)
        );
        assert_eq!(
            parse_reply_seq("From 10.244.1.1 icmp_seq=3 Destination Host Unreachable"),
            None
        );
        assert_eq!(
            parse_reply_seq("PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data."),
            None
        );
    }

    #[test]
    fn tally_counts_gaps_and_trailing_requests() {
        let to = Ipv4Addr::new(10, 244, 2, 2);
        let s = tally("a", to, &[1, 2, 3, 6, 7, 9], 10, Duration::from_secs(1));
        assert_eq!(
            (s.received, s.lost, s.longest_gap, s.trailing),
            (6, 3, 2, 1)
        );
        let clean = tally("a", to, &[1, 2, 3, 3], 3, Duration::from_secs(1));
        assert_eq!(
            (clean.received, clean.lost, clean.trailing),
            (3, 0, 0),
            "duplicates count once"
        );
        let none = tally("a", to, &[], 5, Duration::from_secs(1));
        assert_eq!((none.received, none.lost, none.trailing), (0, 0, 5));
    }

    #[test]
    fn rtt_and_result_parse() {
        let text = "1 packets transmitted, 1 received, 0% packet loss, time 0ms\nrtt min/avg/max/mdev = 0.061/0.061/0.061/0.000 ms\n";
        assert_eq!(parse_rtt_avg(text), Some(0.061));
        let r = json!({"ips":[{"version":"4","address":"10.244.1.2/24","gateway":"10.244.1.1"}]});
        assert_eq!(result_ipv4(&r), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(result_ipv4(&json!({})), None);
    }

    #[test]
    fn datapath_checks_all_three_entries() {
        let peer = PeerFacts {
            name: "node-2".into(),
            subnet: slot_subnet(2),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            underlay: Ipv4Addr::new(192, 168, 9, 2),
        };
        let mut dp = Datapath::default();
        assert_eq!(dp.missing_for(&peer).len(), 3);
        assert!(!dp.mentions(&peer));
        dp.routes.insert(
            IpNetwork::V4(peer.subnet),
            Some(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 0))),
        );
        dp.neighbours
            .insert(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 0)), peer.vtep_mac);
        assert!(dp.mentions(&peer));
        assert_eq!(
            dp.missing_for(&peer),
            vec!["fdb 02:00:00:00:00:02 dst 192.168.9.2"]
        );
        dp.fdb.insert(peer.vtep_mac, IpAddr::V4(peer.underlay));
        assert!(dp.has_peer(&peer));
    }

    #[test]
    fn matrix_renders_and_lists_failures() {
        let pod = |n: &str, ip: u8| MatrixPod {
            name: n.into(),
            node: "node-1".into(),
            ip: Ipv4Addr::new(10, 244, 1, ip),
            netns: String::new(),
        };
        let m = PingMatrix {
            pods: vec![pod("pod-1-1", 2), pod("pod-1-2", 3)],
            rtt: vec![vec![None, Some(Some(0.05))], vec![Some(None), None]],
        };
        assert_eq!(
            m.failures(),
            vec![("pod-1-2".to_string(), "pod-1-1".to_string())]
        );
        assert_eq!(m.pairs(), 2);
        let text = m.render();
        assert!(text.contains("0.05ms") && text.contains("LOST"), "{text}");
    }
}
