//! `cluster soak`: the chaos soak. A 3-node cluster (one pod per node), every pod pinging
//! every other node's pod every 10 ms, and faults one after another in a seeded random
//! order until the time is up. Each fault is measured against the kernel or the API (never
//! a fixed figure): the time until the datapath is whole again, the watches are back, the
//! daemon is ready or the chains are restored; and the pings lost while it lasted.
//!
//! Pass: no ping lost for a fault that does not cut the datapath, a cutting fault repaired
//! within 1 s, no veth, IP reservation or CNI chain left over, and flat RSS / fds for the
//! daemon that lives through the whole soak (node-1's: restarts only hit the other nodes).
//! Everything lives in the cluster's namespaces and run dir and goes on exit, Ctrl-C or a
//! panic (the cluster's `Drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng;
use rand::rngs::StdRng;

use frs_testsupport::cluster::{Cluster, PingStats, Pinger, VXLAN_DEVICE, cancel_flag};
use frs_testsupport::cni_runtime::Attachment;
use frs_testsupport::kube_testserver::{Fault, LogFilter};

use crate::rundir::RunDir;
use crate::soak_report::{
    FaultDeck, FaultKind, FaultRecord, Lifetime, Sample, lifetimes, render_summary, render_svg,
    render_table,
};
use crate::supervisor::{self, UpArgs};

/// Ping interval of every pinger.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// The bar for a fault that cuts the datapath.
const CUT_REPAIR_BOUND: Duration = Duration::from_secs(1);
/// How long any fault may take to be repaired before the soak calls it broken.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long API faults are held before they are lifted.
const API_FAULT_HOLD: Duration = Duration::from_secs(2);
/// RSS and fd trends the long-lived daemon may show (per minute, after its first 20 %).
const RSS_SLOPE_BOUND_KIB: f64 = 512.0;
const FD_SLOPE_BOUND: f64 = 2.0;
/// The trend is fitted to the floor of each window of this many seconds.
const TREND_WINDOW: f64 = 10.0;
/// The node whose daemon is never restarted: its process is the one whose trend counts.
const LONG_LIVED: usize = 0;

pub struct SoakArgs {
    pub minutes: f64,
    pub seed: Option<u64>,
    pub out_dir: PathBuf,
    pub up: UpArgs,
}

pub fn run(run: &RunDir, args: &SoakArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut out = std::io::stdout();
    writeln!(
        out,
        "== chaos soak: {} min, seed {seed} (replay with --seed {seed}), 3 nodes × 1 pod, pings every {} ms",
        args.minutes,
        PING_INTERVAL.as_millis()
    )?;
    supervisor::prepare(run, &mut out)?;
    let cancel = cancel_flag();
    supervisor::install_signal_handler(cancel.clone(), run.clone())?;
    run.write_state(&supervisor::snapshot(run, None, "starting"))?;
    let mut cluster = supervisor::build(run, &args.up, cancel.clone(), &mut out)?;
    run.write_state(&supervisor::snapshot(run, Some(&cluster), "soaking"))?;
    // A panic inside unwinds to here so the tear-down below still runs.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        soak(&mut cluster, args, seed, &cancel, &mut out)
    }))
    .unwrap_or_else(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(anyhow::anyhow!("the soak panicked: {text}"))
    });
    writeln!(out, "== tearing down")?;
    let down = supervisor::teardown(run, cluster, &mut out);
    result.and(down)
}

/// The daemons' pids by node, shared with the sampler thread.
type Pids = Arc<Mutex<BTreeMap<String, u32>>>;

fn current_pids(c: &Cluster) -> BTreeMap<String, u32> {
    c.nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.flanneld.as_ref()?.pid()?)))
        .collect()
}

/// Samples every daemon's VmRSS and open fds every 200 ms until `stop`.
fn start_sampler(
    pids: Pids,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, Vec<Sample>>> {
    std::thread::spawn(move || {
        let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let now: Vec<(String, u32)> = pids
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            for (node, pid) in now {
                if let Some((rss_kib, fds)) = rss_and_fds(pid) {
                    samples.entry(node).or_default().push(Sample {
                        t: start.elapsed().as_secs_f64(),
                        pid,
                        rss_kib,
                        fds,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        samples
    })
}

fn rss_and_fds(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// Every node has every other node's route, neighbour and FDB entry, with the VTEP MACs
/// the devices have now (a missing device is not converged).
fn converged(c: &Cluster) -> bool {
    let mut peers = Vec::new();
    for n in &c.nodes {
        match c.peer_facts(&n.name) {
            Ok(f) => peers.push(f),
            Err(_) => return false,
        }
    }
    peers.iter().all(|x| {
        c.datapath(&x.name).is_ok_and(|dp| {
            peers
                .iter()
                .filter(|y| y.name != x.name)
                .all(|y| dp.has_peer(y))
        })
    })
}

/// Polls `f` every 5 ms until true; the time it took, or `None` after `timeout`.
fn until(
    cancel: &AtomicBool,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    loop {
        if cancel.load(Ordering::Relaxed) {
            bail!(frs_testsupport::cluster::ClusterError::Interrupted);
        }
        if f() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ip netns exec NS sh -c SCRIPT`; its stdout.
fn in_ns(ns: &str, script: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .with_context(|| format!("run in {ns}: {script}"))?;
    if !out.status.success() {
        bail!(
            "in {ns}: `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_of(c: &Cluster, node: &str) -> anyhow::Result<String> {
    Ok(c.node(node)?.host.ns.name().to_string())
}

/// Pods pinging every other node's pod.
struct Pingers(Vec<Pinger>);

impl Pingers {
    fn start(c: &Cluster) -> anyhow::Result<Self> {
        let pods: Vec<(String, String, std::net::Ipv4Addr)> = c
            .pods()
            .map(|p| (p.name.clone(), p.node.clone(), p.ip))
            .collect();
        let mut v = Vec::new();
        for (from, from_node, _) in &pods {
            for (_, to_node, to) in &pods {
                if from_node != to_node {
                    v.push(c.start_pinger(from, *to, PING_INTERVAL)?);
                }
            }
        }
        for p in &v {
            if !p.wait_replies(1, Duration::from_secs(5)) {
                bail!("{} gets no reply from {} before the fault", p.from, p.to);
            }
        }
        Ok(Self(v))
    }

    fn stop(self) -> anyhow::Result<Vec<PingStats>> {
        self.0
            .into_iter()
            .map(|p| p.stop().map_err(anyhow::Error::from))
            .collect()
    }
}

/// What one fault measured.
struct Outcome {
    target: String,
    repair: Option<Duration>,
    measured: &'static str,
    detail: String,
    failures: Vec<String>,
}

impl Outcome {
    fn new(target: impl Into<String>, measured: &'static str) -> Self {
        Self {
            target: target.into(),
            repair: None,
            measured,
            detail: String::new(),
            failures: Vec::new(),
        }
    }

    fn repaired(mut self, what: &str, took: Option<Duration>) -> Self {
        match took {
            Some(d) => self.repair = Some(d),
            None => self
                .failures
                .push(format!("{what} not repaired within {REPAIR_TIMEOUT:?}")),
        }
        self
    }
}

fn soak(
    c: &mut Cluster,
    args: &SoakArgs,
    seed: u64,
    cancel: &Arc<AtomicBool>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("create {}", args.out_dir.display()))?;
    let baseline = Baseline::take(c)?;
    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let pids: Pids = Arc::new(Mutex::new(current_pids(c)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = start_sampler(pids.clone(), start, stop.clone());
    let mut deck = FaultDeck::new(seed);
    let mut records: Vec<FaultRecord> = Vec::new();
    let watchers = c.nodes.len() as u64;
    writeln!(
        out,
        "{:>3} {:>7}  {:<25} {:<7} {:>10} {:>6} {:>5}",
        "#", "t (s)", "fault", "target", "repair ms", "pings", "lost"
    )?;
    let result = (|| -> anyhow::Result<()> {
        while start.elapsed() < duration {
            if cancel.load(Ordering::Relaxed) {
                bail!(frs_testsupport::cluster::ClusterError::Interrupted);
            }
            let Some(kind) = deck.next() else { break };
            // Each fault starts from a whole, quiet cluster.
            c.wait_converged(Duration::from_secs(20))
                .context("the cluster did not converge between faults")?;
            c.lab
                .server
                .wait_for_watches(watchers, Duration::from_secs(20))
                .context("the daemons' watches did not come back between faults")?;
            let pingers = Pingers::start(c)?;
            std::thread::sleep(Duration::from_millis(100));
            let at = start.elapsed().as_secs_f64();
            let outcome = inject(c, kind, deck.rng(), cancel, watchers, &baseline)?;
            *pids
                .lock()
                .map_err(|_| anyhow::anyhow!("pid map poisoned"))? = current_pids(c);
            // Replies in flight when the fault was repaired are still counted.
            std::thread::sleep(Duration::from_millis(300));
            let stats = pingers.stop()?;
            let record = judge(records.len() + 1, at, kind, outcome, &stats);
            writeln!(
                out,
                "{:>3} {:>7.1}  {:<25} {:<7} {:>10} {:>6} {:>5}{}",
                record.index,
                record.at,
                kind.name(),
                record.target,
                record
                    .repair_ms
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_else(|| "-".into()),
                record.pings_sent,
                record.pings_lost,
                if record.failures.is_empty() {
                    String::new()
                } else {
                    format!("  FAIL: {}", record.failures.join("; "))
                }
            )?;
            records.push(record);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let elapsed = start.elapsed().as_secs_f64();
    result?;

    c.wait_converged(Duration::from_secs(20))
        .context("the cluster did not converge after the last fault")?;
    let leaks = baseline.leaks(c)?;
    let lives = lifetimes(&samples);
    let (trend_text, trend_failures) = trends(c, &lives);

    let table = render_table(&records);
    let summary = render_summary(&records);
    let svg = render_svg(&lives, &records, elapsed);
    let table_path = args.out_dir.join("soak-faults.txt");
    let svg_path = args.out_dir.join("soak.svg");
    std::fs::write(
        &table_path,
        format!("seed {seed}, {elapsed:.0} s\n\n{table}\n{summary}\n{trend_text}"),
    )
    .with_context(|| format!("write {}", table_path.display()))?;
    std::fs::write(&svg_path, svg).with_context(|| format!("write {}", svg_path.display()))?;
    writeln!(
        out,
        "\n== faults (seed {seed}, {elapsed:.0} s)\n{table}\n{summary}\n{trend_text}"
    )?;
    writeln!(
        out,
        "leaks at the end: {}",
        if leaks.is_empty() {
            "none (veths, IP reservations, flannel data files, CNI chains as before the soak)"
                .to_string()
        } else {
            leaks.join("; ")
        }
    )?;
    writeln!(
        out,
        "wrote {} and {}",
        table_path.display(),
        svg_path.display()
    )?;

    let mut failed: Vec<String> = records
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| {
            format!(
                "fault #{} {} on {}: {}",
                r.index,
                r.kind.name(),
                r.target,
                r.failures.join("; ")
            )
        })
        .collect();
    failed.extend(leaks.into_iter().map(|l| format!("leak: {l}")));
    failed.extend(trend_failures);
    if !failed.is_empty() {
        bail!("the soak failed:\n  {}", failed.join("\n  "));
    }
    writeln!(out, "soak passed: {} faults, seed {seed}", records.len())?;
    Ok(())
}

/// The record of one fault, with the pass criteria applied.
fn judge(
    index: usize,
    at: f64,
    kind: FaultKind,
    outcome: Outcome,
    stats: &[PingStats],
) -> FaultRecord {
    let sent: u64 = stats.iter().map(|s| s.transmitted).sum();
    let lost: u64 = stats.iter().map(|s| s.lost).sum();
    let gap = stats.iter().map(|s| s.longest_gap).max().unwrap_or(0);
    let gap_ms = gap as f64 * PING_INTERVAL.as_secs_f64() * 1000.0;
    let mut failures = outcome.failures;
    if kind.cuts_datapath() {
        if let Some(r) = outcome.repair
            && r > CUT_REPAIR_BOUND
        {
            failures.push(format!(
                "repaired in {:.0} ms (bound {} ms)",
                r.as_secs_f64() * 1000.0,
                CUT_REPAIR_BOUND.as_millis()
            ));
        }
        if gap_ms > CUT_REPAIR_BOUND.as_secs_f64() * 1000.0 {
            failures.push(format!(
                "pings lost for {gap_ms:.0} ms in a row (bound {} ms)",
                CUT_REPAIR_BOUND.as_millis()
            ));
        }
    } else if lost > 0 {
        let who: Vec<String> = stats
            .iter()
            .filter(|s| s.lost > 0)
            .map(|s| format!("{} → {}: {}", s.from, s.to, s.lost))
            .collect();
        failures.push(format!("{lost} pings lost ({})", who.join(", ")));
    }
    FaultRecord {
        index,
        at,
        kind,
        target: outcome.target,
        repair_ms: outcome.repair.map(|d| d.as_secs_f64() * 1000.0),
        measured: outcome.measured,
        pings_sent: sent,
        pings_lost: lost,
        gap_ms,
        detail: outcome.detail,
        failures,
    }
}

fn pick_node(c: &Cluster, rng: &mut StdRng, restartable: bool) -> String {
    let first = if restartable { LONG_LIVED + 1 } else { 0 };
    let i = rng.random_range(first..c.nodes.len());
    c.nodes[i].name.clone()
}

fn inject(
    c: &mut Cluster,
    kind: FaultKind,
    rng: &mut StdRng,
    cancel: &AtomicBool,
    watchers: u64,
    baseline: &Baseline,
) -> anyhow::Result<Outcome> {
    match kind {
        FaultKind::Api500 => api_fault(c, cancel, watchers, |f| f.code = Some(500)),
        FaultKind::Api429 => api_fault(c, cancel, watchers, |f| {
            f.code = Some(429);
            f.retry_after_seconds = Some(1);
        }),
        FaultKind::ApiLatency => api_fault(c, cancel, watchers, |f| f.delay_ms = Some(400)),
        FaultKind::WatchDrop => {
            let seq = next_log_seq(c)?;
            let closed = c.lab.server.close_watches()?;
            let took = until(cancel, REPAIR_TIMEOUT, || {
                watches_back(c, seq, watchers.min(closed.max(1)))
            })?;
            let mut o =
                Outcome::new("api", "watches re-opened (request log)").repaired("watches", took);
            o.detail = format!("{closed} watches closed");
            Ok(o)
        }
        FaultKind::ApiRestartCompacted => {
            let down = Duration::from_secs(1);
            c.lab.server.outage(down)?;
            let compacted = c.lab.server.compact_history()?;
            let seq = next_log_seq(c)?;
            // The server's own word for when it listens again.
            until(cancel, Duration::from_secs(10), || {
                c.lab
                    .server
                    .state()
                    .is_ok_and(|s| s["outageRemainingMs"].as_u64() == Some(0))
            })?;
            let took = until(cancel, REPAIR_TIMEOUT, || watches_back(c, seq, watchers))?;
            let mut o =
                Outcome::new("api", "watches re-opened after return").repaired("watches", took);
            o.detail = format!("down {down:?}, history compacted at rv {compacted}");
            Ok(o)
        }
        FaultKind::DaemonSigkill | FaultKind::DaemonSigterm => {
            let node = pick_node(c, rng, true);
            let t0 = Instant::now();
            let how = if kind == FaultKind::DaemonSigkill {
                // Dropping the handle is SIGKILL and a wait.
                drop(c.node_mut(&node)?.flanneld.take());
                "SIGKILL".to_string()
            } else {
                let exit = c.stop_daemon(&node)?;
                format!("SIGTERM, exited in {:.0} ms", exit.as_secs_f64() * 1000.0)
            };
            c.start_daemon(&node)?;
            c.wait_ready(&node)?;
            let mut o = Outcome::new(&node, "restarted daemon ready (/readyz)");
            o.repair = Some(t0.elapsed());
            o.detail = how;
            Ok(o)
        }
        FaultKind::DeviceDeleted => kernel_fault(
            c,
            rng,
            cancel,
            &format!("ip link del {VXLAN_DEVICE}"),
            "flannel.1",
            "ip link del flannel.1",
        ),
        FaultKind::EntriesFlushed => {
            let dev = VXLAN_DEVICE;
            // One shell: all three go within a few ms.
            let script = format!(
                "ip route flush dev {dev}; ip neigh flush dev {dev} nud all; \
                 bridge fdb show dev {dev} | awk '/ dst /{{print $1, $3}}' | while read mac dst; do \
                 bridge fdb del \"$mac\" dev {dev} dst \"$dst\"; done"
            );
            kernel_fault(
                c,
                rng,
                cancel,
                &script,
                "entries",
                "routes, neighbours, FDB on flannel.1 flushed",
            )
        }
        FaultKind::ChainsFlushed => {
            let node = pick_node(c, rng, false);
            let ns = ns_of(c, &node)?;
            let before = flannel_chains(&ns)?;
            in_ns(
                &ns,
                "iptables -w -t nat -F FLANNEL-POSTRTG && iptables -w -t filter -F FLANNEL-FWD",
            )?;
            let t0 = Instant::now();
            let took = until(cancel, REPAIR_TIMEOUT, || {
                flannel_chains(&ns).is_ok_and(|now| now == before)
            })?;
            let mut o = Outcome::new(&node, "chains restored (iptables -S)")
                .repaired("chains", took.map(|_| t0.elapsed()));
            o.detail = format!(
                "FLANNEL-POSTRTG + FLANNEL-FWD flushed ({} rules)",
                before.lines().filter(|l| l.starts_with("-A")).count()
            );
            Ok(o)
        }
        FaultKind::VtepMacChanged => {
            let node = pick_node(c, rng, false);
            let ns = ns_of(c, &node)?;
            let old = c.peer_facts(&node)?.vtep_mac;
            let new = format!(
                "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>()
            );
            in_ns(&ns, &format!("ip link set {VXLAN_DEVICE} address {new}"))?;
            let t0 = Instant::now();
            let took = until(cancel, REPAIR_TIMEOUT, || converged(c))?;
            let now = c.peer_facts(&node)?.vtep_mac;
            let mut o = Outcome::new(&node, "kernel entries converged")
                .repaired("VTEP MAC", took.map(|_| t0.elapsed()));
            o.detail = format!("{old} → {new}; device now {now}");
            Ok(o)
        }
        FaultKind::CniStorm => {
            let node = pick_node(c, rng, false);
            let plan = StormPlan::random(rng);
            let report = cni_storm(c, &node, &plan)?;
            let mut o = Outcome::new(&node, "-");
            o.detail = format!(
                "{} sandboxes: {} ADD ok, {} ADD failed, {} DEL retried, SIGKILLed mid-call: {} ADD {} DEL, {:.0} ms",
                plan.ids.len(),
                report.add_ok,
                report.add_failed,
                report.del_retries,
                report.killed_add,
                report.killed_del,
                report.took.as_secs_f64() * 1000.0
            );
            // Only a kill may fail an ADD, and every DEL must succeed in the end.
            if report.add_failed > report.killed_add {
                o.failures.push(format!(
                    "{} ADDs failed but only {} were killed; first error: {}",
                    report.add_failed,
                    report.killed_add,
                    report.add_error.as_deref().unwrap_or("-")
                ));
            }
            if report.del_gave_up > 0 {
                o.failures.push(format!(
                    "{} sandboxes' DEL still failed after 5 retries",
                    report.del_gave_up
                ));
            }
            o.failures.extend(baseline.node_leaks(c, &node)?);
            Ok(o)
        }
    }
}

fn next_log_seq(c: &Cluster) -> anyhow::Result<u64> {
    Ok(c.lab.server.state()?["requestLogNextSeq"]
        .as_u64()
        .unwrap_or(0))
}

/// At least `n` successful watch requests since `seq` and as many watches open.
fn watches_back(c: &Cluster, seq: u64, n: u64) -> bool {
    let filter = LogFilter {
        since: Some(seq),
        verb: Some("watch".into()),
        ..LogFilter::default()
    };
    let opened = c
        .lab
        .server
        .request_log(&filter)
        .map(|l| l.iter().filter(|e| e.code == 200).count() as u64)
        .unwrap_or(0);
    opened >= n && c.lab.server.open_watches().is_ok_and(|o| o >= n)
}

/// `script` run on a random node's host (it breaks the datapath: `what` names the part);
/// repaired when every node's kernel entries have converged again.
fn kernel_fault(
    c: &mut Cluster,
    rng: &mut StdRng,
    cancel: &AtomicBool,
    script: &str,
    what: &str,
    detail: &str,
) -> anyhow::Result<Outcome> {
    let node = pick_node(c, rng, false);
    let ns = ns_of(c, &node)?;
    in_ns(&ns, script)?;
    let t0 = Instant::now();
    let took = until(cancel, REPAIR_TIMEOUT, || converged(c))?;
    let mut o =
        Outcome::new(&node, "kernel entries converged").repaired(what, took.map(|_| t0.elapsed()));
    o.detail = detail.into();
    Ok(o)
}

/// API fault on the daemons' requests (identity `flannel`; what it does set by `shape`), held
/// for a while with the watches closed (so every daemon meets it), then lifted; the repair is
/// measured from the lifting.
fn api_fault(
    c: &Cluster,
    cancel: &AtomicBool,
    watchers: u64,
    shape: impl FnOnce(&mut Fault),
) -> anyhow::Result<Outcome> {
    let mut fault = Fault {
        identity: Some("flannel".into()),
        ..Fault::default()
    };
    shape(&mut fault);
    let id = c.lab.server.inject_fault(&fault)?;
    let closed = c.lab.server.close_watches()?;
    std::thread::sleep(API_FAULT_HOLD);
    let hits = c.lab.server.faults()?["faults"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["id"].as_u64() == Some(id)))
        .and_then(|f| f["hits"].as_u64())
        .unwrap_or(0);
    let seq = next_log_seq(c)?;
    c.lab.server.remove_fault(id)?;
    let took = until(cancel, REPAIR_TIMEOUT, || {
        if fault.code.is_some() {
            watches_back(c, seq, watchers)
        } else {
            // Latency delays requests without failing them: watches may be back already.
            c.lab.server.open_watches().is_ok_and(|o| o >= watchers)
        }
    })?;
    let mut o = Outcome::new("api", "watches re-opened after lifting").repaired("watches", took);
    o.detail = format!("held {API_FAULT_HOLD:?}, {closed} watches closed, {hits} requests hit");
    Ok(o)
}

/// `iptables -S` of flannel's two chains.
fn flannel_chains(ns: &str) -> anyhow::Result<String> {
    in_ns(
        ns,
        "iptables -w -t nat -S FLANNEL-POSTRTG && iptables -w -t filter -S FLANNEL-FWD",
    )
}

/// A storm: `pods` concurrent sandboxes ADDed then DELeted; each plugin call is SIGKILLed
/// mid-call with probability `kill_chance` (once per call), and a failed DEL is retried as
/// kubelet does.
struct StormPlan {
    /// Container IDs of the sandboxes.
    ids: Vec<String>,
    /// `(CNI_COMMAND, container ID)` of the plugin calls to SIGKILL.
    doomed: BTreeSet<(String, String)>,
    /// Delay between seeing the plugin process and killing it.
    kill_after: Duration,
}

impl StormPlan {
    /// From the soak's generator, so a seed replays the storm's shape and its victims.
    fn random(rng: &mut StdRng) -> Self {
        let ids: Vec<String> = (0..rng.random_range(4..=10))
            .map(|_| format!("{:064x}", rng.random::<u128>()))
            .collect();
        let mut doomed = BTreeSet::new();
        for id in &ids {
            for cmd in ["ADD", "DEL"] {
                if rng.random_bool(0.4) {
                    doomed.insert((cmd.to_string(), id.clone()));
                }
            }
        }
        Self {
            ids,
            doomed,
            kill_after: Duration::from_micros(rng.random_range(0..2000)),
        }
    }
}

#[derive(Default)]
struct StormReport {
    add_ok: u64,
    add_failed: u64,
    del_retries: u64,
    killed_add: u64,
    killed_del: u64,
    /// Sandboxes whose DEL still failed after 5 retries.
    del_gave_up: u64,
    add_error: Option<String>,
    took: Duration,
}

/// `(pid, CNI_COMMAND, CNI_CONTAINERID)` of our children running `plugin`.
fn plugin_calls(plugin: &Path) -> Vec<(i32, String, String)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for pid in frs_testsupport::procfs::other_pids() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised comm) is the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid != Some(me.as_str()) {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .as_deref()
            != Some(plugin)
        {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mut command = String::new();
        let mut id = String::new();
        for kv in env.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some(v) = kv.strip_prefix("CNI_COMMAND=") {
                command = v.to_string();
            } else if let Some(v) = kv.strip_prefix("CNI_CONTAINERID=") {
                id = v.to_string();
            }
        }
        // pid_max is at most 2^22: a pid always fits the i32 kill(2) takes.
        out.push((pid as i32, command, id));
    }
    out
}

fn cni_storm(c: &Cluster, node: &str, plan: &StormPlan) -> anyhow::Result<StormReport> {
    let rig = c.node(node)?;
    let plugin = std::fs::canonicalize(&c.binaries().flannel_cni)?;
    let doomed = &plan.doomed;
    let mut sandboxes = Vec::new();
    for (i, id) in plan.ids.iter().enumerate() {
        let ns = c.lab.new_netns(&format!("storm-{}-{i}", rig.slot))?;
        let att = Attachment::pod("default", &format!("storm-{i}"), id, &ns.path());
        sandboxes.push((ns, att));
    }
    let stop = AtomicBool::new(false);
    let killed_add = AtomicU64::new(0);
    let killed_del = AtomicU64::new(0);
    let start = Instant::now();
    let results: Vec<(Result<serde_json::Value, String>, u64, bool)> = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut done: BTreeSet<(String, String)> = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for (pid, cmd, id) in plugin_calls(&plugin) {
                    let key = (cmd, id);
                    if doomed.contains(&key) && done.insert(key.clone()) {
                        std::thread::sleep(plan.kill_after);
                        let pid = nix::unistd::Pid::from_raw(pid);
                        // Only a call still running counts (ESRCH: it finished first).
                        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                            let counter = if key.0 == "ADD" {
                                &killed_add
                            } else {
                                &killed_del
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        let workers: Vec<_> = sandboxes
            .iter()
            .map(|(_, att)| {
                s.spawn(|| {
                    let added = rig.cni.add(&rig.conflist, att).map_err(|e| e.to_string());
                    // kubelet tears a sandbox down with DEL until DEL succeeds.
                    let mut retries = 0;
                    let deleted = loop {
                        if rig.cni.del(&rig.conflist, att).is_ok() {
                            break true;
                        }
                        if retries == 5 {
                            break false;
                        }
                        retries += 1;
                    };
                    (added, retries, deleted)
                })
            })
            .collect();
        let results = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        stop.store(true, Ordering::Relaxed);
        let _ = killer.join();
        results
    });
    let mut report = StormReport {
        killed_add: killed_add.load(Ordering::Relaxed),
        killed_del: killed_del.load(Ordering::Relaxed),
        took: start.elapsed(),
        ..StormReport::default()
    };
    for (added, retries, deleted) in results {
        match added {
            Ok(_) => report.add_ok += 1,
            Err(e) => {
                report.add_failed += 1;
                report.add_error.get_or_insert(e);
            }
        }
        report.del_retries += retries;
        if !deleted {
            report.del_gave_up += 1;
        }
    }
    drop(sandboxes);
    Ok(report)
}

/// What the nodes hold before the soak, to compare with after.
struct Baseline {
    cni_chains: BTreeMap<String, usize>,
    /// veths that are not pods' (the node's own underlay link).
    infra_veths: BTreeMap<String, usize>,
}

impl Baseline {
    fn take(c: &Cluster) -> anyhow::Result<Self> {
        let mut cni_chains = BTreeMap::new();
        let mut infra_veths = BTreeMap::new();
        for n in &c.nodes {
            cni_chains.insert(n.name.clone(), cni_chain_count(n.host.ns.name())?);
            let veths = veth_count(n.host.ns.name())?;
            infra_veths.insert(n.name.clone(), veths.saturating_sub(n.pods.len()));
        }
        Ok(Self {
            cni_chains,
            infra_veths,
        })
    }

    /// Everything left on any node beyond its pods, and CNI chains beyond the baseline.
    fn leaks(&self, c: &Cluster) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for n in &c.nodes {
            out.extend(self.node_leaks(c, &n.name)?);
            let chains = cni_chain_count(n.host.ns.name())?;
            let before = self.cni_chains.get(&n.name).copied().unwrap_or(0);
            if chains != before {
                out.push(format!("{}: {chains} CNI- chains, {before} before", n.name));
            }
        }
        Ok(out)
    }

    /// veths, IP reservations and flannel data files on `node` beyond its pods.
    fn node_leaks(&self, c: &Cluster, node: &str) -> anyhow::Result<Vec<String>> {
        let rig = c.node(node)?;
        let pods = rig.pods.len();
        let mut out = Vec::new();
        let infra = self.infra_veths.get(node).copied().unwrap_or(0);
        let veths = veth_count(rig.host.ns.name())?;
        if veths != pods + infra {
            out.push(format!(
                "{node}: {veths} veths for {pods} pods (+{infra} of the node)"
            ));
        }
        let reserved = files_matching(&rig.cni.paths.ipam_data_dir, |name| {
            name.parse::<IpAddr>().is_ok()
        });
        if reserved.len() != pods {
            out.push(format!(
                "{node}: {} IP reservations for {pods} pods ({})",
                reserved.len(),
                reserved.join(" ")
            ));
        }
        let ids: BTreeSet<&str> = rig.pods.iter().map(|p| p.container_id.as_str()).collect();
        let data = files_matching(&rig.cni.paths.flannel_data_dir, |name| {
            name.len() == 64 && !ids.contains(name)
        });
        if !data.is_empty() {
            out.push(format!(
                "{node}: flannel data files of gone sandboxes: {}",
                data.join(" ")
            ));
        }
        Ok(out)
    }
}

/// Names of files under `dir` (recursively) that `keep` accepts.
fn files_matching(dir: &Path, keep: impl Fn(&str) -> bool + Copy) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_matching(&path, keep));
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && keep(name)
        {
            out.push(name.to_string());
        }
    }
    out
}

fn veth_count(ns: &str) -> anyhow::Result<usize> {
    Ok(in_ns(ns, "ip -o link show type veth")?.lines().count())
}

fn cni_chain_count(ns: &str) -> anyhow::Result<usize> {
    Ok(in_ns(ns, "iptables -w -t nat -S")?
        .lines()
        .filter(|l| l.starts_with("-N CNI-"))
        .count())
}

/// The trend lines: every daemon process's slopes, and a failure when the long-lived one
/// is not flat.
fn trends(c: &Cluster, lives: &[Lifetime]) -> (String, Vec<String>) {
    let long_lived = c.nodes.get(LONG_LIVED).map(|n| n.name.clone());
    let mut text = String::from(
        "daemon trends (least squares of each 10 s window's floor, after each process's first 20 %):\n",
    );
    let mut failures = Vec::new();
    // A process a fault restarted within seconds has no trend worth a line.
    let short = lives.iter().filter(|l| l.span() < 20.0).count();
    for l in lives.iter().filter(|l| l.span() >= 20.0) {
        let first = l.samples.first().map(|s| s.rss_kib).unwrap_or(0);
        let last = l.samples.last().map(|s| s.rss_kib).unwrap_or(0);
        let fds_last = l.samples.last().map(|s| s.fds).unwrap_or(0);
        let slopes = l.slopes(0.2, TREND_WINDOW);
        let counts = Some(&l.node) == long_lived.as_ref() && l.span() >= 20.0;
        text.push_str(&format!(
            "  {:<8} pid {:<7} {:>5.0} s  RSS {:>6} → {:>6} KiB  fds → {:<3} slope {}{}\n",
            l.node,
            l.pid,
            l.span(),
            first,
            last,
            fds_last,
            slopes
                .map(|(r, f)| format!("{r:+.1} KiB/min, {f:+.2} fds/min"))
                .unwrap_or_else(|| "-".into()),
            if counts {
                "  (lived through every fault)"
            } else {
                ""
            }
        ));
        if counts {
            match slopes {
                Some((r, f)) => {
                    if r > RSS_SLOPE_BOUND_KIB {
                        failures.push(format!(
                            "{} daemon RSS grows {r:.0} KiB/min (bound {RSS_SLOPE_BOUND_KIB})",
                            l.node
                        ));
                    }
                    if f > FD_SLOPE_BOUND {
                        failures.push(format!(
                            "{} daemon open fds grow {f:.2}/min (bound {FD_SLOPE_BOUND})",
                            l.node
                        ));
                    }
                }
                None => failures.push(format!("{}: too few samples for a trend", l.node)),
            }
        }
    }
    if short > 0 {
        text.push_str(&format!(
            "  (+{short} daemon processes that lived under 20 s between restarts)\n"
        ));
    }
    if !lives
        .iter()
        .any(|l| Some(&l.node) == long_lived.as_ref() && l.span() >= 20.0)
    {
        failures.push("no daemon lived 20 s: no trend to judge (run longer)".into());
    }
    (text, failures)
}
