//! bench-peers: the real `flanneld` (release build) in a node namespace of the test lab, against
//! kube-testserver holding N realistic Nodes (~15.7 KB JSON each, flannel annotations, podCIDRs
//! from 10.128.0.0/9, public IPs from 192.168.0.0/16). Per N it measures:
//!
//! - start → all 3N entries programmed (neighbour, FDB, route on flannel.1), timed by a netlink
//!   monitor in the node namespace (kernel notifications, no polling load on the daemon), and
//!   the programming window (first entry → last entry) within it;
//! - the same 3N entries through `ip -batch` / `bridge -batch` into a fresh namespace in the same
//!   run (median of `--batch-reps`) → ratios;
//! - flanneld's RSS (VmRSS, split into anonymous and file-backed, and VmHWM = the start-up
//!   peak) after convergence;
//! - `--churn-rate` irrelevant Node updates/s (kubelet-heartbeat-like status writes) for
//!   `--churn-secs`: netlink writes and reconcile passes (from /metrics) and flanneld's CPU share
//!   (utime+stime from /proc/PID/stat);
//! - `--joins` nodes joining one at a time: API write (server's request log) → its three entries
//!   in the kernel (monitor timestamps), p50/p99.
//!
//! The layout: Network 10.0.0.0/8, our node 10.1.0.0/24 on underlay 172.31.250.1/24; peers'
//! public IPs are data only (programming does not need them reachable; DirectRouting is off).
//! Everything lives in `frs-` namespaces and temp dirs of the lab, removed on exit or error.
//!
//! Usage: cargo build --profile dist --bins && target/dist/bench-peers [N ...] (default 1000 5000)
//! (the shipped profile; `--release` works too, with a larger binary and RSS)

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use flannel_rs::netlink::{MonitorEvent, MonitorGroups, Netlink, RouteFilter};
use flannel_rs::netns::{NetnsGuard, remove_stale_test_namespaces};
use frs_testsupport::iproute;
use frs_testsupport::kube_testserver::{LogFilter, TestServerOptions};
use frs_testsupport::lab::{Flanneld, Lab, LabOptions, peer_annotations};
use frs_testsupport::procfs::{clock_ticks_per_sec, cpu_ticks, status_kib};
use frs_testsupport::topology::Host;
use futures::StreamExt;
use ipnetwork::IpNetwork;

const DEV: &str = "flannel.1";
const NET_CONF: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
const SELF_NODE: &str = "bench-self";
const SELF_CIDR: &str = "10.1.0.0/24";

#[derive(Parser, Debug)]
#[command(about = "flanneld against N realistic nodes: convergence, memory, churn, joins")]
struct Args {
    /// Cluster sizes (realistic nodes besides our own).
    #[arg(default_values_t = vec![1000u32, 5000])]
    nodes: Vec<u32>,
    /// Nodes joining one at a time after convergence (latency percentiles).
    #[arg(long, default_value_t = 50)]
    joins: u32,
    /// Irrelevant Node updates per second during the churn phase.
    #[arg(long, default_value_t = 500.0)]
    churn_rate: f64,
    #[arg(long, default_value_t = 10)]
    churn_secs: u64,
    /// Whole tunnel probe rounds to measure (CPU and packet rate of the prober; every fake
    /// peer is silent, so every round escalates for all of them: the worst case).
    #[arg(long, default_value_t = 1)]
    probe_rounds: u64,
    /// Repetitions of the `ip -batch` reference (median reported).
    #[arg(long, default_value_t = 3)]
    batch_reps: usize,
    /// flanneld binary (default: next to this binary).
    #[arg(long)]
    flanneld: Option<PathBuf>,
    /// kube-testserver binary (default: next to this binary).
    #[arg(long)]
    testserver: Option<PathBuf>,
    /// Extra argument for flanneld (repeatable), e.g. --flanneld-arg=--resync-period=10s.
    #[arg(long = "flanneld-arg", allow_hyphen_values = true)]
    flanneld_args: Vec<String>,
    /// Copy flanneld's log here as flanneld-N.log before the lab is removed.
    #[arg(long)]
    keep_log: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-peers must run as root (it creates network namespaces)"
    );
    ensure!(args.joins <= 250, "--joins must be at most 250");
    let sibling = |name: &str| -> Result<PathBuf> {
        let exe = std::env::current_exe().context("locate bench-peers")?;
        Ok(exe
            .parent()
            .context("bench-peers has no parent directory")?
            .join(name))
    };
    let flanneld = match &args.flanneld {
        Some(p) => p.clone(),
        None => sibling("flanneld")?,
    };
    let testserver = match &args.testserver {
        Some(p) => p.clone(),
        None => sibling("kube-testserver")?,
    };
    for bin in [&flanneld, &testserver] {
        ensure!(
            bin.exists(),
            "{} not found (cargo build --profile dist --bins)",
            bin.display()
        );
    }
    remove_stale_test_namespaces();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "# bench-peers: {} CPU(s), kernel {}, flanneld {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        flanneld.display()
    );
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let row =
            run_one(&args, n, &flanneld, &testserver, &rt).with_context(|| format!("N = {n}"))?;
        rows.push(row);
    }
    print_table(&args, &rows);
    Ok(())
}

/// What one N produced.
#[derive(Debug, Default)]
struct Row {
    n: u32,
    server_load: f64,
    start_to_list_synced: Option<f64>,
    start_to_first_entry: f64,
    start_to_programmed: f64,
    window: f64,
    start_to_ready: f64,
    batch: f64,
    rss_kib: u64,
    rss_anon_kib: u64,
    rss_file_kib: u64,
    hwm_kib: u64,
    churn_events: u64,
    churn_ops: u64,
    churn_passes: u64,
    churn_cpu_pct: f64,
    rss_after_churn_kib: u64,
    probe_round_secs: f64,
    probe_cpu_pct: f64,
    probe_pps: f64,
    rss_after_probes_kib: u64,
    join_ms: Vec<f64>,
    join_client_ms: Vec<f64>,
    pass_ms: Vec<f64>,
    /// `flanneld diagnose` wall seconds: this node (probes included), then `--cluster`.
    diagnose_node: f64,
    diagnose_cluster: f64,
    /// Peak RSS (KiB) of each of those runs.
    diagnose_node_kib: u64,
    diagnose_cluster_kib: u64,
}

fn run_one(
    args: &Args,
    n: u32,
    flanneld: &Path,
    testserver: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<Row> {
    let mut row = Row {
        n,
        ..Row::default()
    };
    eprintln!("# N={n}: starting kube-testserver with {n} realistic nodes");
    let t = Instant::now();
    let lab = Lab::new(
        LabOptions {
            tag: format!("bp{n}"),
            underlay: [172, 31, 250],
            net_conf: NET_CONF.into(),
            server: TestServerOptions {
                nodes: n,
                realistic: true,
                startup_timeout: Duration::from_secs(600),
                ..TestServerOptions::default()
            },
            ..LabOptions::default()
        },
        testserver,
    )?;
    row.server_load = t.elapsed().as_secs_f64();
    let host = lab.add_host(&format!("bp{n}-self"), 1)?;
    lab.create_node(
        SELF_NODE,
        SELF_CIDR,
        host.address,
        std::collections::BTreeMap::new(),
    )?;

    // Warm the underlay path first: on a freshly attached lab host the very first ARP request
    // goes unanswered and is retried after 1 s (a lab artefact a real node, whose network is up
    // long before flanneld starts, does not have). Without this, N = 1000 shows ~1 s more.
    let ping = host.ns.exec(
        "ping",
        &["-c", "1", "-W", "3", &lab.api.address.to_string()],
    )?;
    ensure!(
        ping.status.success(),
        "node cannot reach the API host: {ping:?}"
    );
    let monitor = KernelWitness::start(host.ns.name())?;
    let extra: Vec<&str> = args.flanneld_args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let t0_epoch = epoch_ms();
    let mut d = lab.start_flanneld(flanneld, &host, SELF_NODE, &extra)?;
    let pid = d.pid().context("flanneld pid")?;
    let n_us = n as usize;
    loop {
        let (a, b, c) = monitor.counts();
        if a >= n_us && b >= n_us && c >= n_us {
            break;
        }
        if !d.is_running() {
            bail!("flanneld exited:\n{}", d.log());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!(
                "not converged after 300 s: {:?} of {n}; log:\n{}",
                (a, b, c),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    {
        let seen = monitor.seen.lock().expect("monitor state");
        ensure!(!seen.overflow, "the monitor overflowed; timings unreliable");
        let first = seen.first.context("no first entry")?;
        let last = seen.last.context("no last entry")?;
        row.start_to_first_entry = first.duration_since(t0).as_secs_f64();
        row.start_to_programmed = last.duration_since(t0).as_secs_f64();
        row.window = last.duration_since(first).as_secs_f64();
    }
    d.wait_ready(Duration::from_secs(60))?;
    row.start_to_ready = t0.elapsed().as_secs_f64();
    row.start_to_list_synced =
        log_time(&d.log(), "node list synced").map(|ms| (ms - t0_epoch) / 1e3);

    // Where the start-up time went, by the API server's clock.
    for e in lab.server.request_log(&LogFilter {
        identity: Some("flannel".into()),
        ..LogFilter::default()
    })? {
        eprintln!(
            "#   +{:>7.1} ms  {} {} → {}",
            e.time_ms as f64 - t0_epoch,
            e.method,
            e.path,
            e.code
        );
    }
    for line in d.log().lines().take(8) {
        let clean = strip_ansi(line);
        if let Some(ms) = log_time(&clean, "") {
            let msg: String = clean
                .split_whitespace()
                .skip(2)
                .take(4)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("#   +{:>7.1} ms  flanneld: {msg}", ms - t0_epoch);
        }
    }
    // Independent check: exact counts by dump.
    let entries = rt.block_on(dump_entries(host.ns.name()))?;
    ensure!(
        (entries.neigh.len(), entries.fdb.len(), entries.routes.len()) == (n_us, n_us, n_us),
        "dump counts {:?}, want {n} each",
        (entries.neigh.len(), entries.fdb.len(), entries.routes.len())
    );
    eprintln!(
        "# N={n}: programmed {:.3} s after start (window {:.3} s), ready after {:.3} s",
        row.start_to_programmed, row.window, row.start_to_ready
    );

    // Memory after convergence.
    std::thread::sleep(Duration::from_secs(2));
    (row.rss_kib, row.hwm_kib) = rss(pid)?;
    (row.rss_anon_kib, row.rss_file_kib) = (
        status_kib(pid, "RssAnon").context("no RssAnon in /proc/PID/status")?,
        status_kib(pid, "RssFile").context("no RssFile in /proc/PID/status")?,
    );
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let parts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("Threads"))
            .collect();
        eprintln!(
            "# N={n}: {}",
            parts
                .join(", ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    // The reference: the same entries through ip -batch into fresh namespaces.
    let mut batch = Vec::new();
    let dir = lab.dir.path();
    for rep in 0..args.batch_reps.max(1) {
        let secs = rt.block_on(ip_batch(&entries, dir, n, rep))?;
        eprintln!("# N={n}: ip -batch rep {rep}: {secs:.3} s");
        batch.push(secs);
    }
    batch.sort_by(f64::total_cmp);
    row.batch = batch[batch.len() / 2];

    // Irrelevant churn.
    let ops0 = metric(&d, "flannel_netlink_ops_total")?;
    let passes0 = metric(&d, "flannel_reconciles_total")?;
    let ticks0 = cpu_ticks(pid).context("read /proc/PID/stat")?;
    let rv0 = lab.server.resource_version()?;
    let t = Instant::now();
    lab.server.start_churn(args.churn_rate)?;
    std::thread::sleep(Duration::from_secs(args.churn_secs));
    lab.server.stop_churn()?;
    let rv1 = lab.server.resource_version()?;
    // Let the daemon drain what the watch still carries; the CPU share covers this too.
    std::thread::sleep(Duration::from_millis(500));
    let wall = t.elapsed().as_secs_f64();
    let ticks1 = cpu_ticks(pid).context("read /proc/PID/stat")?;
    row.churn_events = rv1 - rv0;
    row.churn_ops = metric(&d, "flannel_netlink_ops_total")? - ops0;
    row.churn_passes = metric(&d, "flannel_reconciles_total")? - passes0;
    row.churn_cpu_pct = (ticks1 - ticks0) as f64 / clock_ticks_per_sec() / wall * 100.0;
    (row.rss_after_churn_kib, _) = rss(pid)?;
    eprintln!(
        "# N={n}: churn {} events: {} netlink ops, {} passes, CPU {:.1} %",
        row.churn_events, row.churn_ops, row.churn_passes, row.churn_cpu_pct
    );

    // Tunnel probes: from the end of one round to the end of `--probe-rounds` more.
    if args.probe_rounds > 0 {
        let wait_rounds = |above: u64| -> Result<u64> {
            let t = Instant::now();
            loop {
                let r = metric(&d, "flannel_probe_rounds_total")?;
                if r > above {
                    return Ok(r);
                }
                ensure!(
                    t.elapsed() < Duration::from_secs(600),
                    "no probe round in 600 s"
                );
                // Rarely: each scrape costs the daemon CPU, which would count as the probes'.
                // A round at 5000 lasts tens of seconds, so ±0.25 s on each end is noise.
                std::thread::sleep(Duration::from_millis(250));
            }
        };
        let r0 = wait_rounds(metric(&d, "flannel_probe_rounds_total")?)?;
        let (sent0, ticks0, t) = (
            metric(&d, "flannel_probe_packets_sent_total")?,
            cpu_ticks(pid).context("read /proc/PID/stat")?,
            Instant::now(),
        );
        wait_rounds(r0 + args.probe_rounds - 1)?;
        let wall = t.elapsed().as_secs_f64();
        let ticks1 = cpu_ticks(pid).context("read /proc/PID/stat")?;
        let sent = metric(&d, "flannel_probe_packets_sent_total")? - sent0;
        row.probe_round_secs = wall / args.probe_rounds as f64;
        row.probe_cpu_pct = (ticks1 - ticks0) as f64 / clock_ticks_per_sec() / wall * 100.0;
        row.probe_pps = sent as f64 / wall;
        (row.rss_after_probes_kib, _) = rss(pid)?;
        eprintln!(
            "# N={n}: probes: {} round(s) of {:.1} s, {sent} packets ({:.0}/s), CPU {:.2} %",
            args.probe_rounds, row.probe_round_secs, row.probe_pps, row.probe_cpu_pct
        );
    }

    // Joins, one at a time.
    let log_seq = lab.server.reset_request_log()?;
    let _ = log_seq;
    let mut programmed_at = HashMap::new();
    for j in 0..args.joins {
        let name = format!("join-{j:03}");
        let cidr = format!("10.2.{j}.0/24");
        let dst: IpNetwork = cidr.parse()?;
        let public = Ipv4Addr::new(172, 16, 0, (j + 1) as u8);
        let mac = [0x0e, 0, 0, 2, 0, j as u8];
        let mac_text = format!("0e:00:00:02:00:{j:02x}");
        let t = Instant::now();
        lab.create_node(
            &name,
            &cidr,
            public,
            peer_annotations(&mac_text, &public.to_string()),
        )?;
        let at = loop {
            if let Some(at) = monitor.peer_programmed(dst, mac) {
                break at;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(30),
                "{name} not programmed after 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        row.join_client_ms.push(t.elapsed().as_secs_f64() * 1e3);
        programmed_at.insert(name, at);
        if let Some(ms) = last_pass_ms(&d)? {
            row.pass_ms.push(ms);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let creates = lab.server.request_log(&LogFilter {
        verb: Some("create".into()),
        resource: Some("nodes".into()),
        ..LogFilter::default()
    })?;
    for e in creates {
        let name = e.name.clone().or_else(|| {
            e.body_json()
                .and_then(|b| b["metadata"]["name"].as_str().map(str::to_string))
        });
        if let Some(at) = name.and_then(|n| programmed_at.get(&n)) {
            row.join_ms.push(at - e.time_ms as f64);
        }
    }
    ensure!(
        row.join_ms.len() == args.joins as usize,
        "matched {} of {} joins in the request log",
        row.join_ms.len(),
        args.joins
    );

    // Last: its probes to the lab's addressless peers fill the neighbour table of the
    // underlay, which the daemon hears about (a real cluster's peers are there already).
    [
        (row.diagnose_node, row.diagnose_node_kib),
        (row.diagnose_cluster, row.diagnose_cluster_kib),
    ] = time_diagnose(&lab, flanneld, &host, n)?;

    d.stop();
    if let Some(dir) = &args.keep_log {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("flanneld-{n}.log")), d.log())?;
    }
    monitor.stop();
    drop(host);
    drop(lab);
    Ok(row)
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Removes terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Epoch ms of the first log line containing `needle` (tracing's RFC 3339 timestamp first).
fn log_time(log: &str, needle: &str) -> Option<f64> {
    let log = strip_ansi(log);
    let line = log.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    let ts: k8s_openapi::jiff::Timestamp = stamp.parse().ok()?;
    Some(ts.as_microsecond() as f64 / 1e3)
}

// ---------------------------------------------------------------------------------------------
// Kernel witness: a netlink monitor in the node namespace, on its own thread.

#[derive(Default)]
struct Seen {
    dev: Option<u32>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Entry → epoch ms when it appeared.
    neigh: HashMap<IpAddr, f64>,
    fdb: HashMap<[u8; 6], f64>,
    routes: HashMap<IpNetwork, f64>,
    overflow: bool,
    error: Option<String>,
}

struct KernelWitness {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KernelWitness {
    fn start(ns: &str) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns = ns.to_string();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let monitor = Netlink::in_named(&ns).and_then(|nl| {
                    nl.monitor(
                        MonitorGroups::LINK | MonitorGroups::NEIGH | MonitorGroups::IPV4_ROUTE,
                    )
                });
                let mut monitor = match monitor {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while !stop2.load(Ordering::Relaxed) {
                    let event = tokio::select! {
                        e = monitor.next() => e,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    };
                    let mut s = match seen2.lock() {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    match event {
                        Some(Ok(e)) => s.record(e),
                        Some(Err(e)) => s.error = Some(e.to_string()),
                        None => return,
                    }
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("kernel monitor: {e}"),
            Err(_) => bail!("kernel monitor thread died"),
        }
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    fn counts(&self) -> (usize, usize, usize) {
        self.seen
            .lock()
            .map(|s| (s.neigh.len(), s.fdb.len(), s.routes.len()))
            .unwrap_or_default()
    }

    /// Epoch ms when the last of a peer's three entries appeared.
    fn peer_programmed(&self, dst: IpNetwork, mac: [u8; 6]) -> Option<f64> {
        let s = self.seen.lock().ok()?;
        let r = s.routes.get(&dst)?;
        let n = s.neigh.get(&dst.network())?;
        let f = s.fdb.get(&mac)?;
        Some(r.max(*n).max(*f))
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Inserts `k` unless present; whether it was new.
fn insert_new<K: std::hash::Hash + Eq>(map: &mut HashMap<K, f64>, k: K, at: f64) -> bool {
    match map.entry(k) {
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(at);
            true
        }
        std::collections::hash_map::Entry::Occupied(_) => false,
    }
}

impl Seen {
    fn record(&mut self, e: MonitorEvent) {
        let now = epoch_ms();
        let on_dev = |ifindex: u32| Some(ifindex) == self.dev;
        let added = match e {
            MonitorEvent::LinkNew(l) if l.name == DEV => {
                self.dev = Some(l.index);
                false
            }
            MonitorEvent::NeighbourNew(n)
                if on_dev(n.ifindex) && n.permanent && n.mac.is_some() =>
            {
                insert_new(&mut self.neigh, n.ip, now)
            }
            MonitorEvent::NeighbourDel(n) if on_dev(n.ifindex) => {
                self.neigh.remove(&n.ip);
                false
            }
            MonitorEvent::FdbNew(f) if on_dev(f.ifindex) => insert_new(&mut self.fdb, f.mac.0, now),
            MonitorEvent::FdbDel(f) if on_dev(f.ifindex) => {
                self.fdb.remove(&f.mac.0);
                false
            }
            MonitorEvent::RouteNew(r) if r.oif.is_some_and(on_dev) && r.gateway.is_some() => {
                insert_new(&mut self.routes, r.dst, now)
            }
            MonitorEvent::RouteDel(r) if r.oif.is_some_and(on_dev) => {
                self.routes.remove(&r.dst);
                false
            }
            MonitorEvent::Overflow => {
                self.overflow = true;
                false
            }
            _ => false,
        };
        if added {
            let t = Instant::now();
            self.first.get_or_insert(t);
            self.last = Some(t);
        }
    }
}

impl Drop for KernelWitness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dumps and the ip -batch reference.

#[derive(Default)]
struct Dumped {
    /// (gateway, mac)
    neigh: Vec<(IpAddr, String)>,
    /// (mac, dst)
    fdb: Vec<(String, IpAddr)>,
    /// (dst, gateway)
    routes: Vec<(IpNetwork, IpAddr)>,
}

async fn dump_entries(ns: &str) -> Result<Dumped> {
    let nl = Netlink::in_named(ns)?;
    let link = nl.link_by_name(DEV).await?.context("no flannel.1")?;
    let mut out = Dumped::default();
    for n in nl.neighbours(link.index).await? {
        out.neigh.push((n.ip, n.mac.to_string()));
    }
    for f in nl.fdb_entries(link.index).await? {
        out.fdb.push((f.mac.to_string(), f.dst));
    }
    for r in nl.routes(&RouteFilter::main().oif(link.index)).await? {
        if let Some(gw) = r.gateway {
            out.routes.push((r.dst, gw));
        }
    }
    Ok(out)
}

/// Programs `entries` into a fresh namespace's flannel.1 with three batch processes
/// (neighbours → FDB → routes, flannel's order) and returns the wall time of the three.
/// The same kernel witness as in the daemon's run listens there: a listener makes the kernel
/// build a notification for every entry, which the daemon's figure pays too.
async fn ip_batch(entries: &Dumped, dir: &Path, n: u32, rep: usize) -> Result<f64> {
    let ns = NetnsGuard::new(&format!("bp{n}-batch{rep}"))?;
    let witness = KernelWitness::start(ns.name())?;
    for args in [
        "link add under0 type veth peer name under0p",
        "link set under0p up",
        "addr add 172.31.251.1/24 dev under0",
        "link set under0 up",
        "link add flannel.1 type vxlan id 1 dstport 8472 nolearning local 172.31.251.1 dev under0",
        "addr add 10.1.0.0/32 dev flannel.1",
        "link set flannel.1 up",
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        ns.ip(&args).map_err(anyhow::Error::msg)?;
    }
    let write = |name: &str, lines: Vec<String>| -> Result<PathBuf> {
        let p = dir.join(format!("batch-{n}-{name}"));
        std::fs::write(&p, lines.join("\n") + "\n")?;
        Ok(p)
    };
    let neigh = write(
        "neigh",
        entries
            .neigh
            .iter()
            .map(|(ip, mac)| format!("neigh add {ip} lladdr {mac} dev {DEV} nud permanent"))
            .collect(),
    )?;
    let fdb = write(
        "fdb",
        entries
            .fdb
            .iter()
            .map(|(mac, dst)| format!("fdb add {mac} dev {DEV} dst {dst} self permanent"))
            .collect(),
    )?;
    let routes = write(
        "routes",
        entries
            .routes
            .iter()
            .map(|(dst, gw)| format!("route add {dst} via {gw} dev {DEV} onlink"))
            .collect(),
    )?;
    let t = Instant::now();
    for (tool, file) in [("ip", &neigh), ("bridge", &fdb), ("ip", &routes)] {
        iproute::batch(ns.name(), tool, file).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let want = (entries.neigh.len(), entries.fdb.len(), entries.routes.len());
    let seen_by = Instant::now() + Duration::from_secs(5);
    while witness.counts() != want && Instant::now() < seen_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Ok(seen) = witness.seen.lock() {
        ensure!(!seen.overflow, "the witness overflowed during ip -batch");
        if let Some(e) = &seen.error {
            bail!("the witness failed during ip -batch: {e}");
        }
    }
    ensure!(
        witness.counts() == want,
        "the witness saw {:?} of the {want:?} entries ip -batch programmed",
        witness.counts()
    );
    drop(witness);
    let check = dump_entries(ns.name()).await?;
    ensure!(
        (check.neigh.len(), check.fdb.len(), check.routes.len())
            == (entries.neigh.len(), entries.fdb.len(), entries.routes.len()),
        "ip -batch programmed a different number of entries"
    );
    Ok(secs)
}

// ---------------------------------------------------------------------------------------------
// The daemon's process and metrics.

fn metric(d: &Flanneld, series: &str) -> Result<u64> {
    let (code, body) = d.health("/metrics").context("GET /metrics")?;
    ensure!(code == 200, "/metrics answered {code}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .with_context(|| format!("no {series} in /metrics"))
}

/// Duration of the daemon's last reconcile pass (from /status).
fn last_pass_ms(d: &Flanneld) -> Result<Option<f64>> {
    let (code, body) = d.status_http("/status").context("GET /status")?;
    ensure!(code == 200, "/status answered {code}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["last_reconcile"]["duration_ms"].as_f64())
}

/// (VmRSS, VmHWM) in KiB.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let field = |name: &str| {
        status_kib(pid, name).with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS")?, field("VmHWM")?))
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Runs `flanneld diagnose --json` on our node (every peer checked and probed; the lab's
/// peers are API objects only, so every probe goes unanswered: the slowest case) and
/// `--cluster`; wall seconds of each, and what they found.
fn time_diagnose(lab: &Lab, flanneld: &Path, host: &Host, n: u32) -> Result<[(f64, u64); 2]> {
    let mut runs = [(0.0, 0); 2];
    for (i, extra) in [&[][..], &["--cluster"][..]].into_iter().enumerate() {
        let t = Instant::now();
        let mut cmd = lab.flanneld_command(
            flanneld,
            host,
            SELF_NODE,
            &lab.default_subnet_file(SELF_NODE),
            Some("diagnose"),
        );
        cmd.arg("--json").args(extra);
        let (out, peak_kib) = output_with_peak_rss(cmd)?;
        runs[i] = (t.elapsed().as_secs_f64(), peak_kib);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("diagnose: {}", String::from_utf8_lossy(&out.stderr)))?;
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        let peers = doc["peers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in peers
            .iter()
            .flat_map(|p| p["problems"].as_array().into_iter().flatten())
        {
            *codes
                .entry(p["code"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        eprintln!(
            "# N={n}: diagnose{} {:.2} s, peak RSS {:.1} MiB, exit {:?}, {} peers, problems {codes:?}",
            extra.first().map(|a| format!(" {a}")).unwrap_or_default(),
            runs[i].0,
            peak_kib as f64 / 1024.0,
            out.status.code(),
            peers.len()
        );
    }
    Ok(runs)
}

/// Runs `cmd` to its end like `Command::output`, plus its peak resident size (KiB, the
/// kernel's `ru_maxrss` of that child alone: it is reaped with `wait4`).
fn output_with_peak_rss(mut cmd: std::process::Command) -> Result<(std::process::Output, u64)> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_end(&mut stdout)?;
    let stderr = err_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader panicked"))??;
    let pid = i32::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 writes both out-parameters.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; the pointers are to live locals.
    let rc = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(rc == pid, "wait4: {}", std::io::Error::last_os_error());
    let output = std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
    };
    Ok((output, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

fn print_table(args: &Args, rows: &[Row]) {
    println!();
    println!(
        "| {:<52} | {} |",
        "figure",
        rows.iter()
            .map(|r| format!("{:>12}", format!("N = {}", r.n)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "|:{}|{}",
        "-".repeat(53),
        rows.iter()
            .map(|_| format!("{}:|", "-".repeat(13)))
            .collect::<String>()
    );
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        println!(
            "| {:<52} | {} |",
            name,
            rows.iter()
                .map(|r| format!("{:>12}", f(r)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    };
    line("API server load of the nodes (s)", &|r| {
        format!("{:.2}", r.server_load)
    });
    line("start → node list synced (s, daemon log)", &|r| {
        r.start_to_list_synced
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "-".into())
    });
    line("start → first entry in the kernel (s)", &|r| {
        format!("{:.3}", r.start_to_first_entry)
    });
    line("start → all 3N entries programmed (s)", &|r| {
        format!("{:.3}", r.start_to_programmed)
    });
    line("programming window, first → last entry (s)", &|r| {
        format!("{:.3}", r.window)
    });
    line("start → /readyz 200 (s)", &|r| {
        format!("{:.3}", r.start_to_ready)
    });
    line("flanneld diagnose, every peer probed (s)", &|r| {
        format!("{:.2}", r.diagnose_node)
    });
    line("flanneld diagnose, peak RSS (MiB)", &|r| {
        format!("{:.1}", r.diagnose_node_kib as f64 / 1024.0)
    });
    line("flanneld diagnose --cluster (s)", &|r| {
        format!("{:.2}", r.diagnose_cluster)
    });
    line("flanneld diagnose --cluster, peak RSS (MiB)", &|r| {
        format!("{:.1}", r.diagnose_cluster_kib as f64 / 1024.0)
    });
    line(
        "ip -batch, same 3N entries, fresh netns (s, median)",
        &|r| format!("{:.3}", r.batch),
    );
    line("ratio programming window / ip -batch (≤ 1.5)", &|r| {
        format!("{:.2}", r.window / r.batch)
    });
    line("ratio start → programmed / ip -batch", &|r| {
        format!("{:.2}", r.start_to_programmed / r.batch)
    });
    line(
        "flanneld VmRSS after convergence (MiB, ≤ 20 @5000)",
        &|r| format!("{:.1}", r.rss_kib as f64 / 1024.0),
    );
    line("  of it anonymous / file-backed (MiB)", &|r| {
        format!(
            "{:.1} / {:.1}",
            r.rss_anon_kib as f64 / 1024.0,
            r.rss_file_kib as f64 / 1024.0
        )
    });
    line("flanneld VmHWM, start-up peak (MiB, ≤ 25 @5000)", &|r| {
        format!("{:.1}", r.hwm_kib as f64 / 1024.0)
    });
    line(
        &format!(
            "churn {}/s × {} s: Node events",
            args.churn_rate, args.churn_secs
        ),
        &|r| r.churn_events.to_string(),
    );
    line("churn: netlink writes (target 0)", &|r| {
        r.churn_ops.to_string()
    });
    line("churn: reconcile passes", &|r| r.churn_passes.to_string());
    line("churn: flanneld CPU (% of one core)", &|r| {
        format!("{:.1}", r.churn_cpu_pct)
    });
    line("tunnel probes: one round, all peers silent (s)", &|r| {
        format!("{:.1}", r.probe_round_secs)
    });
    line("tunnel probes: packets sent per second", &|r| {
        format!("{:.0}", r.probe_pps)
    });
    line("tunnel probes: flanneld CPU (% of one core, ≤ 1)", &|r| {
        format!("{:.2}", r.probe_cpu_pct)
    });
    line("tunnel probes: VmRSS after (MiB)", &|r| {
        format!("{:.1}", r.rss_after_probes_kib as f64 / 1024.0)
    });
    line("churn: VmRSS after (MiB)", &|r| {
        format!("{:.1}", r.rss_after_churn_kib as f64 / 1024.0)
    });
    line(
        &format!("join ({} joins): API write → entries, p50 (ms)", args.joins),
        &|r| format!("{:.1}", percentile(&r.join_ms, 50.0)),
    );
    line("join: API write → entries, p99 (ms)", &|r| {
        format!("{:.1}", percentile(&r.join_ms, 99.0))
    });
    line("join: client create → entries, p50 (ms)", &|r| {
        format!("{:.1}", percentile(&r.join_client_ms, 50.0))
    });
    line("join: reconcile pass duration, p50 (ms, /status)", &|r| {
        format!("{:.1}", percentile(&r.pass_ms, 50.0))
    });
    line("join: reconcile pass duration, p99 (ms, /status)", &|r| {
        format!("{:.1}", percentile(&r.pass_ms, 99.0))
    });
    println!();
    println!(
        "# start = flanneld spawned; entries timed by RTM_NEWNEIGH/RTM_NEWROUTE notifications."
    );
    println!("# API write time = the test API server's request log (request received).");
}
