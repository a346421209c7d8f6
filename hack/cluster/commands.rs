//! What the cluster can be asked to do, executed against a live [`Cluster`] with output to
//! any writer (the terminal for `demo` and a foreground `up`, a control connection for the
//! other subcommands).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use frs_testsupport::cluster::{Cluster, NodeSpec, PingStats, PodWiring, poll};
use frs_testsupport::kube_testserver::{Clobber, LogFilter, heal_after_clobber};

/// flannel's annotation prefix (upstream's default).
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";

/// Interval of the continuous pings during the incident.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    AddNode { reference: bool, pods: usize },
    RemoveNode { node: String },
    AddPod { node: String },
    RemovePod { pod: String },
    Status { json: bool },
    RestartDaemon { node: String },
    PingMatrix,
    Incident { node: String },
    Explain { node: String },
}

impl Request {
    /// Whether the request changes what the cluster owns (state.json is rewritten after).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::AddNode { .. }
                | Request::RemoveNode { .. }
                | Request::AddPod { .. }
                | Request::RemovePod { .. }
                | Request::RestartDaemon { .. }
                | Request::Incident { .. }
        )
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// A duration measured by the API server's millisecond clock.
pub fn server_ms(ms: u64) -> String {
    if ms == 0 {
        "< 1 ms".into()
    } else {
        format!("{ms} ms")
    }
}

pub fn execute(c: &mut Cluster, req: &Request, out: &mut dyn Write) -> anyhow::Result<()> {
    match req {
        Request::AddNode { reference, pods } => {
            let wiring = if *reference {
                PodWiring::Reference
            } else {
                PodWiring::Flannel
            };
            add_node(c, wiring, *pods, out)?;
            let took = c.wait_converged(Duration::from_secs(60))?;
            writeln!(
                out,
                "every node has every peer ({} after the last step)",
                ms(took)
            )?;
        }
        Request::RemoveNode { node } => {
            c.remove_node(node)?;
            writeln!(
                out,
                "{node}: Node deleted from the API, flanneld stopped, namespaces removed"
            )?;
        }
        Request::AddPod { node } => {
            let start = Instant::now();
            let pod = c.add_pod(node)?;
            let p = c.pod(&pod)?;
            writeln!(
                out,
                "{pod} on {node}: {} via {} ({})",
                p.ip,
                c.node(node)?.wiring,
                ms(start.elapsed())
            )?;
        }
        Request::RemovePod { pod } => {
            c.remove_pod(pod)?;
            writeln!(out, "{pod}: CNI DEL done, namespace removed")?;
        }
        Request::Status { json } => {
            let status = c.status();
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                write!(out, "{}", status.render())?;
            }
        }
        Request::RestartDaemon { node } => {
            let (stopped, ready) = c.restart_daemon(node)?;
            writeln!(
                out,
                "{node}: flanneld exited {} after SIGTERM (datapath left in place); the new one was ready in {}",
                ms(stopped),
                ms(ready)
            )?;
        }
        Request::PingMatrix => {
            ping_matrix(c, out)?;
        }
        Request::Incident { node } => {
            incident(c, node, out)?;
        }
        Request::Explain { node } => {
            write!(out, "{}", explain(c, node)?)?;
        }
    }
    Ok(())
}

/// Adds a node with `pods` pods, printing one progress line per step.
pub fn add_node(
    c: &mut Cluster,
    wiring: PodWiring,
    pods: usize,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let start = Instant::now();
    let name = c.add_node(NodeSpec {
        wiring,
        ..NodeSpec::default()
    })?;
    let rig = c.node(&name)?;
    writeln!(
        out,
        "  {name}: netns {}, eth0 {}/24, Node podCIDR {}, flanneld ready in {}",
        rig.host.ns.name(),
        rig.host.address,
        rig.subnet,
        ms(start.elapsed())
    )?;
    for _ in 0..pods {
        let start = Instant::now();
        let pod = c.add_pod(&name)?;
        let p = c.pod(&pod)?;
        writeln!(
            out,
            "    {pod}: {} (CNI ADD by {}, {})",
            p.ip,
            c.node(&name)?.wiring,
            ms(start.elapsed())
        )?;
    }
    Ok(name)
}

pub fn ping_matrix(c: &Cluster, out: &mut dyn Write) -> anyhow::Result<bool> {
    let m = c.ping_matrix()?;
    write!(out, "{}", m.render())?;
    let failures = m.failures();
    writeln!(
        out,
        "{}/{} pod pairs answered",
        m.pairs() - failures.len(),
        m.pairs()
    )?;
    Ok(failures.is_empty())
}

/// `flanneld explain` run inside the node's namespace (what an operator would run on it).
pub fn explain(c: &Cluster, node: &str) -> anyhow::Result<String> {
    let rig = c.node(node)?;
    let daemon = rig
        .flanneld
        .as_ref()
        .with_context(|| format!("no flanneld on {node}"))?;
    let out = rig
        .host
        .ns
        .command(&c.binaries().flanneld.display().to_string())
        .args(["explain".to_string(), daemon.subnet_file_flag()])
        .output()
        .context("run flanneld explain")?;
    if !out.status.success() {
        bail!(
            "flanneld explain on {node}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn flannel_annotations(c: &Cluster, node: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(c.lab
        .get_node(node)?
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .collect())
}

/// kubectl as the demo runs it (Debian's kubernetes-client).
const KUBECTL: &str = "/usr/bin/kubectl";

/// The Events on `node` as an operator sees them: `kubectl get events` for the Node, run in
/// the API host's namespace (where the server listens) with the admin kubeconfig; without
/// kubectl, the same Events from the API.
fn node_events(c: &Cluster, node: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let restored = |c: &Cluster| -> Option<()> {
        let summary = c.lab.server.events().ok()?;
        summary["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "AnnotationsRestored" && e["regarding"]["name"] == node)
            .then_some(())
    };
    if poll(Duration::from_secs(5), Duration::from_millis(20), || {
        restored(c)
    })
    .is_none()
    {
        bail!("no AnnotationsRestored Event on {node} within 5 s");
    }
    let selector = format!("involvedObject.kind=Node,involvedObject.name={node}");
    if std::path::Path::new(KUBECTL).exists() {
        let server = &c.lab.server;
        writeln!(out, "  $ kubectl get events -A --field-selector {selector}")?;
        let output = c
            .lab
            .api
            .ns
            .command(KUBECTL)
            .env("HOME", server.dir())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(server.kubeconfig_admin())
            .arg("--cache-dir")
            .arg(server.dir().join("kubectl-cache"))
            .args(["get", "events", "-A", "--field-selector", &selector])
            .output()
            .context("run kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl get events failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        for l in String::from_utf8_lossy(&output.stdout).lines() {
            writeln!(out, "    {l}")?;
        }
    } else {
        writeln!(
            out,
            "  Events on {node} (from the API; install kubectl to see them as `kubectl get events`):"
        )?;
        let summary = c.lab.server.events()?;
        for e in summary["items"].as_array().into_iter().flatten() {
            if e["regarding"]["name"] == node {
                writeln!(
                    out,
                    "    {} {} x{}: {}",
                    e["type"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or(""),
                    e["count"],
                    e["note"].as_str().unwrap_or("")
                )?;
            }
        }
    }
    Ok(())
}

/// What the incident showed.
pub struct IncidentReport {
    pub heal_ms_server: u64,
    pub heal_observed: Duration,
    pub pings: Vec<PingStats>,
    pub log_lines: Vec<String>,
}

impl IncidentReport {
    pub fn lost(&self) -> u64 {
        self.pings
            .iter()
            .map(|p| p.lost + p.trailing.saturating_sub(1))
            .sum()
    }
}

/// The field manager the incident's stale write is recorded under, and the annotation of its
/// own it sets (a write that only removed keys would leave no managedFields entry to name).
pub const CLOBBER_MANAGER: &str = "rancher";
const CLOBBER_OWN_KEY: &str = "cattle.io/status";

/// The incident: while every pod elsewhere pings `node`'s pods every 10 ms, `node`'s Node is
/// updated unconditionally with a stale copy that lacks flannel's annotations. Shows the
/// annotations coming back, the heal time, what flanneld logged, and the ping tally.
pub fn incident(
    c: &mut Cluster,
    node: &str,
    out: &mut dyn Write,
) -> anyhow::Result<IncidentReport> {
    let targets: Vec<(String, Ipv4Addr)> = c
        .node(node)?
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.ip))
        .collect();
    if targets.is_empty() {
        bail!("{node} has no pods to ping; add one with `cluster add-pod {node}`");
    }
    let sources: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| n.pods.first().map(|p| p.name.clone()))
        .collect();
    if sources.is_empty() {
        bail!("no pod on another node to ping {node}'s pods from");
    }
    let before = flannel_annotations(c, node)?;
    if before.is_empty() {
        bail!("{node} has no flannel annotations yet");
    }
    writeln!(out, "  {node}'s flannel annotations now:")?;
    for (k, v) in &before {
        writeln!(out, "    {k}={v}")?;
    }
    let mut pingers = Vec::new();
    for src in &sources {
        for (name, ip) in &targets {
            let p = c.start_pinger(src, *ip, PING_INTERVAL)?;
            writeln!(out, "  continuous ping every 10 ms: {src} → {name} ({ip})")?;
            pingers.push(p);
        }
    }
    for p in &mut pingers {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.wait_replies(5, Duration::from_millis(50)) {
            c.sleep(Duration::ZERO)?;
            if !p.is_running() {
                bail!("the ping {} → {} stopped", p.from, p.to);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} gets no replies from {} before the incident",
                    p.from,
                    p.to
                );
            }
        }
    }
    c.sleep(Duration::from_millis(300))?;
    // The controller's stale copy: the Node's other annotations plus one of its own, as a
    // controller that keeps bookkeeping on Nodes writes it.
    let mut stale: BTreeMap<String, String> = c
        .lab
        .get_node(node)?
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(ANNOTATION_PREFIX))
        .collect();
    stale.insert(CLOBBER_OWN_KEY.into(), "synced".into());
    let seq = c.lab.server.reset_request_log()?;
    writeln!(
        out,
        "  >>> another controller (field manager \"{CLOBBER_MANAGER}\") writes {node} back from a stale copy: PUT /api/v1/nodes/{node} without resourceVersion, no flannel annotations, its own {CLOBBER_OWN_KEY}"
    )?;
    let answer =
        c.lab
            .server
            .clobber_as(node, &Clobber::Annotations(stale), Some(CLOBBER_MANAGER))?;
    let remaining: Vec<String> = answer["annotations"]
        .as_object()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    writeln!(
        out,
        "      API server answered {} (resourceVersion {}); annotations left on the Node: {}",
        answer["code"],
        answer["resourceVersion"].as_str().unwrap_or("?"),
        if remaining.is_empty() {
            "none".to_string()
        } else {
            remaining.join(", ")
        }
    )?;
    let healed = poll(Duration::from_secs(10), Duration::from_millis(2), || {
        flannel_annotations(c, node)
            .ok()
            .filter(|now| *now == before)
            .map(|_| ())
    });
    let Some((_, observed)) = healed else {
        bail!("{node}'s annotations did not come back within 10 s");
    };
    // The precise figure comes from the server's own clock: clobber write → healing patch.
    let log = c.lab.server.request_log(&LogFilter {
        since: Some(seq),
        ..LogFilter::default()
    })?;
    let (clobber_at, heal) = heal_after_clobber(&log, node).map_err(anyhow::Error::msg)?;
    let heal_ms_server = heal.time_ms - clobber_at;
    writeln!(
        out,
        "  <<< annotations back after {} (API server clock, whole ms; seen by this tool after {}): flanneld on {node} sent PATCH {} with its resourceVersion",
        server_ms(heal_ms_server),
        ms(observed),
        heal.path.split('?').next().unwrap_or_default()
    )?;
    // Keep pinging a little after the heal: the peers' view must stay intact too.
    c.sleep(Duration::from_secs(1))?;
    let mut pings = Vec::new();
    for p in pingers {
        pings.push(p.stop()?);
    }
    let log_lines: Vec<String> = c
        .node(node)?
        .daemon_logs()
        .lines()
        .filter(|l| l.contains("restored in"))
        .map(strip_ansi)
        .collect();
    writeln!(out, "  flanneld on {node} logged:")?;
    for l in &log_lines {
        writeln!(out, "    {}", l.trim())?;
    }
    node_events(c, node, out)?;
    writeln!(out, "  pings to {node}'s pods during the incident:")?;
    for s in &pings {
        writeln!(out, "    {s}")?;
    }
    let report = IncidentReport {
        heal_ms_server,
        heal_observed: observed,
        pings,
        log_lines,
    };
    let sent: u64 = report.pings.iter().map(|p| p.transmitted).sum();
    if report.lost() == 0 {
        writeln!(
            out,
            "  => 0 of {sent} pings lost: {node}'s pods stayed reachable throughout"
        )?;
    } else {
        writeln!(out, "  => {} of {sent} pings LOST", report.lost())?;
    }
    Ok(report)
}

/// The text of a log line without terminal colour sequences (`ESC [ … m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi(
                "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m re-asserted \u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\u{1b}[0mnode-2"
            ),
            "2026  WARN re-asserted node=node-2"
        );
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::AddNode {
            reference: true,
            pods: 2,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"add-node","reference":true,"pods":2}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
    }
}
