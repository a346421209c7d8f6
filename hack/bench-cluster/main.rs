//! `bench-cluster`: N real flanneld daemons in a local namespace cluster (see
//! hack/testsupport/src/cluster.rs). Per N it measures
//! - convergence: from starting the daemons (all Node objects already registered, as after a
//!   DaemonSet roll-out) until every node has a route, a neighbour and an FDB entry for
//!   every other node, read from each node's kernel;
//! - when the last daemon reported ready (/readyz);
//! - resident memory (VmRSS) per daemon after convergence;
//! - CPU per daemon while idle, without and with API churn (the test server rewriting node
//!   heartbeats at a fixed rate: events every daemon receives and must ignore cheaply).
//!
//! Prints a table and writes a one-shot SVG chart of convergence time vs N.
//!
//! ```sh
//! sudo target/release/bench-cluster [--nodes 10,30] [--idle-secs 10] [--churn 20] [--svg FILE]
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use ipnetwork::IpNetwork;

use flannel_rs::netlink::{Netlink, RouteFilter};

use flannel_rs::net::Family;
use frs_testsupport::cluster::{
    Binaries, Cluster, ClusterOptions, NodeSpec, PeerFacts, VXLAN_DEVICE,
};
use frs_testsupport::lab::LabOptions;
use frs_testsupport::procfs::{clock_ticks_per_sec, cpu_ticks, status_kib};

#[derive(Parser, Debug)]
#[command(about = "N real flanneld daemons: convergence time, RSS and idle CPU (with API churn)")]
struct Args {
    /// Cluster sizes, comma-separated.
    #[arg(long, default_value = "10,30", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Seconds of each idle CPU measurement.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Node heartbeat writes per second during the churn measurement.
    #[arg(long, default_value_t = 20.0)]
    churn: f64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "target/bench-cluster.svg")]
    svg: PathBuf,
    /// Directory with flanneld, flannel and kube-testserver (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Row {
    nodes: usize,
    converged: Duration,
    last_ready: Duration,
    rss_avg_kib: u64,
    rss_max_kib: u64,
    cpu_idle_pct: f64,
    cpu_churn_pct: f64,
    churn_events: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-cluster needs root (network namespaces); run it with sudo");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .to_path_buf(),
    };
    flannel_rs::netns::remove_stale_test_namespaces();
    let mut rows = Vec::new();
    for &n in &args.nodes {
        if !(2..=250).contains(&n) {
            bail!("--nodes: {n} is outside 2..=250");
        }
        eprintln!("== {n} nodes");
        rows.push(measure(n, &args, &bin_dir)?);
    }
    println!();
    println!(
        "{:>5}  {:>14}  {:>14}  {:>16}  {:>16}  {:>24}",
        "nodes",
        "converged (s)",
        "last ready (s)",
        "RSS/daemon (MiB)",
        "CPU idle/daemon",
        "CPU with churn/daemon"
    );
    for r in &rows {
        println!(
            "{:>5}  {:>14.2}  {:>14.2}  {:>7.1} avg {:>4.1} max  {:>15.2}%  {:>11.2}% ({:.0} ev/s)",
            r.nodes,
            r.converged.as_secs_f64(),
            r.last_ready.as_secs_f64(),
            r.rss_avg_kib as f64 / 1024.0,
            r.rss_max_kib as f64 / 1024.0,
            r.cpu_idle_pct,
            r.cpu_churn_pct,
            r.churn_events
        );
    }
    if let Some(parent) = args.svg.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.svg, chart(&rows))
        .with_context(|| format!("write {}", args.svg.display()))?;
    println!("\nchart: {}", args.svg.display());
    Ok(())
}

fn measure(n: usize, args: &Args, bin_dir: &std::path::Path) -> anyhow::Result<Row> {
    let lab = LabOptions {
        tag: format!("bc{n}"),
        underlay: [192, 168, 130],
        ..LabOptions::default()
    };
    let mut c = Cluster::new(ClusterOptions::new(lab, Binaries::in_dir(bin_dir)))?;
    for _ in 0..n {
        c.add_node(NodeSpec {
            start_daemon: false,
            ..NodeSpec::default()
        })?;
    }
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let netns: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.host.ns.name().to_string())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Start every daemon; the clock runs from the first start.
    let start = Instant::now();
    for name in &names {
        c.start_daemon(name)?;
    }
    let started = start.elapsed();
    let handles: Vec<Netlink> = rt.block_on(async {
        netns
            .iter()
            .map(|ns| Netlink::in_named(ns))
            .collect::<Result<Vec<_>, _>>()
    })?;
    // Each node's VTEP (MAC from its flannel.1, once it exists).
    let mut facts: Vec<Option<PeerFacts>> = vec![None; n];
    let deadline = start + Duration::from_secs(120 + 4 * n as u64);
    let converged = loop {
        for (i, nl) in handles.iter().enumerate() {
            if facts[i].is_none()
                && let Some(link) = rt.block_on(nl.link_by_name(VXLAN_DEVICE))?
                && let Some(mac) = link.mac
            {
                let rig = &c.nodes[i];
                facts[i] = Some(PeerFacts {
                    name: rig.name.clone(),
                    subnet: rig.subnet,
                    vtep_mac: mac,
                    underlay: rig.host.address,
                });
            }
        }
        if facts.iter().all(Option::is_some) {
            let all: Vec<&PeerFacts> = facts.iter().flatten().collect();
            let mut done = true;
            for (i, nl) in handles.iter().enumerate() {
                if !has_all_peers(&rt, nl, all[i], &all)? {
                    done = false;
                    break;
                }
            }
            if done {
                break start.elapsed();
            }
        }
        if Instant::now() > deadline {
            bail!("{n} nodes did not converge within {:?}", deadline - start);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut last_ready = Duration::ZERO;
    for name in &names {
        c.wait_ready(name)?;
        last_ready = last_ready.max(start.elapsed());
    }
    eprintln!(
        "   daemons started in {:.2} s, converged after {:.2} s, last ready at {:.2} s",
        started.as_secs_f64(),
        converged.as_secs_f64(),
        last_ready.as_secs_f64()
    );

    let pids: Vec<u32> = c
        .nodes
        .iter()
        .filter_map(|r| r.flanneld.as_ref().and_then(|d| d.pid()))
        .collect();
    if pids.len() != n {
        bail!("only {} of {n} daemons have a pid", pids.len());
    }
    // Let start-up work settle before the idle measurement.
    std::thread::sleep(Duration::from_secs(2));
    let rss: Vec<u64> = pids
        .iter()
        .map(|p| status_kib(*p, "VmRSS").unwrap_or(0))
        .collect();
    let idle = Duration::from_secs(args.idle_secs);
    let cpu_idle = cpu_pct_per_daemon(&pids, idle)?;
    let rv0 = c.lab.server.resource_version()?;
    c.lab.server.start_churn(args.churn)?;
    let cpu_churn = cpu_pct_per_daemon(&pids, idle)?;
    c.lab.server.stop_churn()?;
    let rv1 = c.lab.server.resource_version()?;
    let churn_events = (rv1.saturating_sub(rv0)) as f64 / idle.as_secs_f64();
    eprintln!(
        "   RSS {:.1}–{:.1} MiB; CPU/daemon idle {cpu_idle:.2}%, with {churn_events:.0} heartbeat events/s {cpu_churn:.2}%",
        *rss.iter().min().unwrap_or(&0) as f64 / 1024.0,
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0,
    );
    // Nothing may have broken while idling.
    let gaps = c.unconverged()?;
    if !gaps.is_empty() {
        bail!("{n} nodes lost convergence while idle: {gaps:?}");
    }
    let t = Instant::now();
    drop(handles);
    drop(c);
    eprintln!("   torn down in {:.1} s", t.elapsed().as_secs_f64());
    Ok(Row {
        nodes: n,
        converged,
        last_ready,
        rss_avg_kib: rss.iter().sum::<u64>() / rss.len().max(1) as u64,
        rss_max_kib: rss.iter().copied().max().unwrap_or(0),
        cpu_idle_pct: cpu_idle,
        cpu_churn_pct: cpu_churn,
        churn_events,
    })
}

/// Route, neighbour and FDB entry for every other node, read on one socket.
fn has_all_peers(
    rt: &tokio::runtime::Runtime,
    nl: &Netlink,
    own: &PeerFacts,
    all: &[&PeerFacts],
) -> anyhow::Result<bool> {
    rt.block_on(async {
        let Some(link) = nl.link_by_name(VXLAN_DEVICE).await? else {
            return Ok(false);
        };
        let routes: HashMap<IpNetwork, Option<IpAddr>> = nl
            .routes(&RouteFilter::main().oif(link.index).family(Family::V4))
            .await?
            .into_iter()
            .map(|r| (r.dst, r.gateway))
            .collect();
        let neigh: HashMap<IpAddr, _> = nl
            .neighbours(link.index)
            .await?
            .into_iter()
            .map(|n| (n.ip, n.mac))
            .collect();
        let fdb: HashMap<_, IpAddr> = nl
            .fdb_entries(link.index)
            .await?
            .into_iter()
            .map(|f| (f.mac, f.dst))
            .collect();
        Ok(all.iter().filter(|p| p.name != own.name).all(|p| {
            let gw = IpAddr::V4(p.subnet.network());
            routes.get(&IpNetwork::V4(p.subnet)) == Some(&Some(gw))
                && neigh.get(&gw) == Some(&p.vtep_mac)
                && fdb.get(&p.vtep_mac) == Some(&IpAddr::V4(p.underlay))
        }))
    })
}

/// Average CPU per daemon (percent of one core) over `window`.
fn cpu_pct_per_daemon(pids: &[u32], window: Duration) -> anyhow::Result<f64> {
    let ticks_per_sec = clock_ticks_per_sec();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let used: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    Ok(used as f64 / ticks_per_sec / secs / pids.len() as f64 * 100.0)
}

/// A line chart of convergence (and last-ready) time vs cluster size, as plain SVG.
fn chart(rows: &[Row]) -> String {
    let (w, h) = (640.0, 400.0);
    let (left, right, top, bottom) = (70.0, 30.0, 50.0, 60.0);
    let max_n = rows.iter().map(|r| r.nodes).max().unwrap_or(1) as f64;
    let max_t = rows
        .iter()
        .map(|r| r.converged.max(r.last_ready).as_secs_f64())
        .fold(0.0, f64::max);
    let y_max = nice_ceiling(max_t.max(0.1));
    let x_max = nice_ceiling(max_n);
    let x = |n: f64| left + (w - left - right) * n / x_max;
    let y = |t: f64| h - bottom - (h - top - bottom) * t / y_max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="25" text-anchor="middle" font-size="15">flannel-rs: time until every node has every peer</text>
"#,
        w / 2.0
    );
    for i in 0..=5 {
        let t = y_max * f64::from(i) / 5.0;
        let n = x_max * f64::from(i) / 5.0;
        svg.push_str(&format!(
            r##"<line x1="{l}" y1="{yy:.1}" x2="{r}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{t:.2}</text>
<line x1="{xx:.1}" y1="{b}" x2="{xx:.1}" y2="{bb}" stroke="#333"/><text x="{xx:.1}" y="{lx}" text-anchor="middle">{n:.0}</text>
"##,
            l = left,
            r = w - right,
            yy = y(t),
            tx = left - 8.0,
            ty = y(t) + 4.0,
            xx = x(n),
            b = h - bottom,
            bb = h - bottom + 5.0,
            lx = h - bottom + 20.0,
        ));
    }
    svg.push_str(&format!(
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#333"/><line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/>
<text x="{cx}" y="{h2}" text-anchor="middle">nodes (real flanneld daemons)</text>
<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">seconds from daemon start</text>
"##,
        b = h - bottom,
        r = w - right,
        cx = (left + w - right) / 2.0,
        h2 = h - 15.0,
        cy = (top + h - bottom) / 2.0,
    ));
    for (label, color, value) in [
        ("every node has every peer", "#1f77b4", 0usize),
        ("last daemon ready", "#ff7f0e", 1),
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| {
                let t = if value == 0 {
                    r.converged
                } else {
                    r.last_ready
                };
                (x(r.nodes as f64), y(t.as_secs_f64()))
            })
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        svg.push_str(&format!(
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>
"#,
            path.join(" ")
        ));
        for ((px, py), r) in points.iter().zip(rows) {
            let t = if value == 0 {
                r.converged
            } else {
                r.last_ready
            };
            // Convergence labels above the point, readiness below: the two are often close.
            let dy = if value == 0 { -8.0 } else { 16.0 };
            svg.push_str(&format!(
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}">{:.2} s</text>
"#,
                px + 6.0,
                py + dy,
                t.as_secs_f64()
            ));
        }
        let ly = top + 5.0 + 18.0 * value as f64;
        svg.push_str(&format!(
            r#"<rect x="{lx}" y="{ly}" width="14" height="4" fill="{color}"/><text x="{tx}" y="{ty}">{label}</text>
"#,
            lx = left + 15.0,
            tx = left + 35.0,
            ty = ly + 6.0,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(30.0), 50.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
    }

    #[test]
    fn chart_is_svg_with_one_point_per_size_and_series() {
        let row = |n, s| Row {
            nodes: n,
            converged: Duration::from_secs_f64(s),
            last_ready: Duration::from_secs_f64(s + 0.5),
            rss_avg_kib: 1,
            rss_max_kib: 1,
            cpu_idle_pct: 0.0,
            cpu_churn_pct: 0.0,
            churn_events: 0.0,
        };
        let svg = chart(&[row(10, 1.2), row(30, 3.4)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("3.40 s") && svg.contains("1.70 s"), "{svg}");
    }

    #[test]
    fn stat_cpu_fields() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
    }
}
