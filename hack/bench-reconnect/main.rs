//! Benchmark: W node watchers (flanneld's own watcher and backoff, one API client each) against
//! the test API server on loopback, which goes away for a while and comes back with its history
//! compacted. Prints the requests per second the server sees in the first seconds after its
//! return (the reconnect stampede, or its absence), by verb and status, and how long until
//! every watcher has a Node created at the return.
//!
//! Run: `cargo run --release --bin bench-reconnect -- [--watchers 500] [--outage-s 10]`
//! (expects the kube-testserver binary next to this one, as cargo builds them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use flannel_rs::flanneld::node_cache::{NodeCache, node_watcher};
use flannel_rs::flanneld::pure::annotations::AnnotationPrefix;
use frs_testsupport::kube_testserver::{KubeTestServer, LogFilter, TestServerOptions};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 500)]
    watchers: usize,
    /// Nodes in the cluster (each re-list fetches them all).
    #[arg(long, default_value_t = 50)]
    nodes: u32,
    #[arg(long, default_value_t = 10)]
    outage_s: u64,
    /// Seconds after the return to count requests over.
    #[arg(long, default_value_t = 6)]
    observe_s: u64,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls: bool,
    /// kube-testserver binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.server_bin.clone() {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("kube-testserver"),
    };
    let server = KubeTestServer::spawn(
        &bin,
        TestServerOptions {
            tls: args.tls,
            nodes: args.nodes,
            realistic: true,
            startup_timeout: Duration::from_secs(300),
            ..Default::default()
        },
    )
    .with_context(|| format!("starting {}", bin.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let prefix = AnnotationPrefix::new("flannel.alpha.coreos.com")?;

    // The watchers: each one as a daemon has it (own client, own cache).
    let started = Instant::now();
    let mut caches = Vec::new();
    for w in 0..args.watchers {
        let c = rt.block_on(client(server.kubeconfig_flannel()))?;
        let cache = NodeCache::new();
        let (_signals, task) = node_watcher(
            c,
            format!("bench-{w}"),
            prefix.clone(),
            500,
            cache.clone(),
            shutdown.clone(),
        );
        rt.spawn(task);
        caches.push(cache);
    }
    let synced = |caches: &[Arc<NodeCache>]| caches.iter().filter(|c| c.is_synced()).count();
    while synced(&caches) < args.watchers || server.open_watches()? < args.watchers as u64 {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} watchers synced",
                synced(&caches),
                args.watchers
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} watchers synced and watching {} nodes in {:.1} s (TLS {})",
        args.watchers,
        args.nodes,
        started.elapsed().as_secs_f64(),
        args.tls
    );

    // The outage, with the history compacted meanwhile.
    let since = server.reset_request_log()?;
    server.outage(Duration::from_secs(args.outage_s))?;
    let remaining = server.state()?["outageRemainingMs"].as_u64().unwrap_or(0);
    let return_ms = now_ms() + remaining;
    std::thread::sleep(Duration::from_secs(1));
    // A change while the API is away, then its history is gone: every resume gets 410.
    server.generate_nodes(&serde_json::json!({
        "count": 1, "prefix": "outage-", "flannelAnnotations": false
    }))?;
    server.compact_history()?;
    while now_ms() < return_ms {
        std::thread::sleep(Duration::from_millis(5));
    }

    // A Node created at the return; every watcher must learn it.
    let admin = rt.block_on(client(server.kubeconfig_admin()))?;
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "late-node", "labels": {"kubernetes.io/hostname": "late-node"}},
        "spec": {"podCIDR": "10.250.0.0/24", "podCIDRs": ["10.250.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.250"}]}
    }))?;
    let nodes: Api<Node> = Api::all(admin);
    loop {
        match rt.block_on(nodes.create(&PostParams::default(), &node)) {
            Ok(_) => break,
            Err(e) if now_ms() - return_ms > 10_000 => bail!("API not back: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let created_ms = now_ms() - return_ms;
    let mut all_know = None;
    let observe_until = return_ms + args.observe_s * 1000;
    while now_ms() < observe_until {
        if all_know.is_none() && caches.iter().all(|c| c.get("late-node").is_some()) {
            all_know = Some(now_ms() - return_ms);
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // The server's view of the reconnect.
    let log = server.request_log(&LogFilter {
        since: Some(since),
        identity: Some("flannel".into()),
        ..LogFilter::default()
    })?;
    let after: Vec<_> = log
        .iter()
        .filter(|e| e.time_ms >= return_ms && e.time_ms < observe_until)
        .collect();
    println!(
        "API away {} s, history compacted; node created {created_ms} ms after the return; all {} watchers had it after {}",
        args.outage_s,
        args.watchers,
        all_know.map_or("(not within the window)".to_string(), |ms| format!(
            "{ms} ms"
        ))
    );
    println!(
        "requests at the server after its return ({} in {} s; {:.2} per watcher):",
        after.len(),
        args.observe_s,
        after.len() as f64 / args.watchers.max(1) as f64
    );
    let bucket_ms = 250;
    let mut buckets: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
    for e in &after {
        let b = (e.time_ms - return_ms) / bucket_ms;
        let kind = format!("{} {}", e.verb, e.code);
        *buckets.entry(b).or_default().entry(kind).or_default() += 1;
    }
    let mut peak = 0.0f64;
    for (b, kinds) in &buckets {
        let n: usize = kinds.values().sum();
        let rate = n as f64 * 1000.0 / bucket_ms as f64;
        peak = peak.max(rate);
        println!(
            "  {:>5}-{:<5} ms: {:>5} req/s  {:?}",
            b * bucket_ms,
            (b + 1) * bucket_ms,
            rate.round(),
            kinds
        );
    }
    let first_second = after
        .iter()
        .filter(|e| e.time_ms < return_ms + 1000)
        .count();
    println!(
        "first second: {first_second} requests; peak {:.0} req/s over {bucket_ms} ms; open watches now {} (one per watcher: {})",
        peak,
        server.open_watches()?,
        args.watchers
    );
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
