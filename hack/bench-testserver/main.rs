//! Benchmark of kube-testserver: full paginated list of N realistic nodes, and watch fan-out
//! latency (write sent → event received by every watcher) with W concurrent watchers.
//!
//! Run: `cargo run --release --bin bench-testserver -- [--nodes 5000] [--watchers 20]`
//! (expects the kube-testserver binary next to this one, as cargo builds them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use frs_testsupport::kube_testserver::{KubeTestServer, TestServerOptions};
use frs_testsupport::procfs::status_kib;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5000)]
    nodes: u32,
    #[arg(long, default_value_t = 20)]
    watchers: usize,
    #[arg(long, default_value_t = 200)]
    writes: usize,
    #[arg(long, default_value_t = 10)]
    write_interval_ms: u64,
    #[arg(long, default_value_t = 500)]
    page_size: u32,
    #[arg(long, default_value_t = 5)]
    list_rounds: usize,
    /// kube-testserver binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Per watcher: (resourceVersion, arrival time) of every event received.
type Arrivals = Arc<Mutex<Vec<Vec<(u64, Instant)>>>>;

#[derive(Deserialize)]
struct Line {
    object: LineObject,
}

#[derive(Deserialize)]
struct LineObject {
    metadata: LineMeta,
}

#[derive(Deserialize)]
struct LineMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
}

async fn client(server: &KubeTestServer) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig_admin())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

#[derive(Deserialize)]
struct RawPage {
    metadata: RawListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawListMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

/// Raw paginated list: server time + transfer (JSON only scanned, not decoded into Nodes).
async fn raw_list(c: &kube::Client, page_size: u32) -> anyhow::Result<(usize, usize)> {
    let mut cont = String::new();
    let (mut items, mut bytes) = (0, 0);
    loop {
        let mut uri = format!("/api/v1/nodes?limit={page_size}");
        if !cont.is_empty() {
            uri.push_str(&format!("&continue={cont}"));
        }
        let resp = c
            .send(http::Request::get(uri).body(kube::client::Body::empty())?)
            .await?;
        let body = resp.into_body().collect().await?.to_bytes();
        bytes += body.len();
        let page: RawPage = serde_json::from_slice(&body)?;
        items += page.items.len();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => cont = c,
            _ => return Ok((items, bytes)),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.server_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("kube-testserver"),
    };
    let started = Instant::now();
    let server = KubeTestServer::spawn(
        &bin,
        TestServerOptions {
            tls: true,
            nodes: args.nodes,
            realistic: true,
            startup_timeout: Duration::from_secs(600),
            ..Default::default()
        },
    )
    .with_context(|| format!("starting {}", bin.display()))?;
    println!(
        "kube-testserver: {} realistic nodes loaded in {:.2} s; server RSS {} MiB",
        args.nodes,
        started.elapsed().as_secs_f64(),
        status_kib(server.pid(), "VmRSS").unwrap_or(0) / 1024
    );
    let c = client(&server).await?;
    let nodes: Api<Node> = Api::all(c.clone());

    // --- list ---
    let mut raw_times = Vec::new();
    let mut typed_times = Vec::new();
    let mut total_bytes = 0;
    for _ in 0..args.list_rounds {
        let t = Instant::now();
        let (items, bytes) = raw_list(&c, args.page_size).await?;
        raw_times.push(t.elapsed());
        if items != args.nodes as usize {
            bail!("raw list returned {items} items, expected {}", args.nodes);
        }
        total_bytes = bytes;
        let t = Instant::now();
        let mut count = 0;
        let mut lp = ListParams::default().limit(args.page_size);
        loop {
            let page = nodes.list(&lp).await?;
            count += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
        typed_times.push(t.elapsed());
        if count != args.nodes as usize {
            bail!("typed list returned {count} items");
        }
    }
    raw_times.sort();
    typed_times.sort();
    println!(
        "list {} nodes in pages of {} ({:.1} MB, {:.1} KB/node), {} rounds:",
        args.nodes,
        args.page_size,
        total_bytes as f64 / 1e6,
        total_bytes as f64 / 1e3 / args.nodes.max(1) as f64,
        args.list_rounds
    );
    println!(
        "  raw HTTPS (server + transfer, JSON scanned): median {:.0} ms  min {:.0} ms",
        ms(percentile(&raw_times, 0.5)),
        ms(raw_times[0])
    );
    println!(
        "  kube-rs Api::list (decoded into Node):        median {:.0} ms  min {:.0} ms",
        ms(percentile(&typed_times, 0.5)),
        ms(typed_times[0])
    );

    // --- watch fan-out ---
    let start_rv = server.resource_version()?;
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); args.watchers]));
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let c = client(&server).await?;
        let arrivals = arrivals.clone();
        let expected = args.writes;
        tasks.push(tokio::spawn(async move {
            let uri = format!(
                "/api/v1/nodes?watch=1&resourceVersion={start_rv}&allowWatchBookmarks=true"
            );
            let req = http::Request::get(uri).body(kube::client::Body::empty())?;
            let mut body = c.send(req).await?.into_body();
            let mut buf: Vec<u8> = Vec::new();
            let mut seen = 0;
            while seen < expected {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let parsed: Line = serde_json::from_slice(&line)?;
                    let rv: u64 = parsed.object.metadata.resource_version.parse()?;
                    arrivals.lock().await[w].push((rv, now));
                    seen += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    server.wait_for_watches(args.watchers as u64, Duration::from_secs(30))?;
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(args.writes);
    let pp = PatchParams::default();
    let mut tick = tokio::time::interval(Duration::from_millis(args.write_interval_ms));
    for i in 0..args.writes {
        tick.tick().await;
        let name = format!("node-{:05}", (i * 7919) % args.nodes as usize);
        let t = Instant::now();
        let n = nodes
            .patch_status(
                &name,
                &pp,
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"bench.example.com/seq": i.to_string()}}}),
                ),
            )
            .await?;
        let rv: u64 = n.metadata.resource_version.context("rv")?.parse()?;
        sent.push((rv, t));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .context("watchers did not receive every write")???;
    }
    let arrivals = arrivals.lock().await;
    let mut latencies = Vec::with_capacity(args.writes * args.watchers);
    for per_watcher in arrivals.iter() {
        for (rv, at) in per_watcher {
            if let Some((_, t0)) = sent.iter().find(|(r, _)| r == rv) {
                latencies.push(at.saturating_duration_since(*t0));
            }
        }
    }
    if latencies.len() != args.writes * args.watchers {
        bail!(
            "expected {} deliveries, measured {}",
            args.writes * args.watchers,
            latencies.len()
        );
    }
    latencies.sort();
    println!(
        "watch fan-out: {} writes (~16 KB nodes, one every {} ms) x {} watchers = {} deliveries",
        args.writes,
        args.write_interval_ms,
        args.watchers,
        latencies.len()
    );
    println!(
        "  write sent -> event received: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "server RSS after run: {} MiB",
        status_kib(server.pid(), "VmRSS").unwrap_or(0) / 1024
    );
    Ok(())
}
