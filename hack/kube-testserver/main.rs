//! kube-testserver: a local Kubernetes API server for core/v1 Nodes with the semantics
//! flanneld depends on (global resourceVersion, watch with history/410/bookmarks, conflicts,
//! status subresource, RBAC, TLS), plus an admin API for fault injection. See README.md.

mod admin;
mod api;
mod app;
mod auth;
mod errors;
mod events;
mod events_api;
mod faults;
mod managed;
mod nodegen;
mod role_file;
mod selector;
mod server;
mod smp;
mod store;
mod table;
mod tls;
mod validate;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, Settings, lock};
use crate::auth::Identity;
use crate::faults::{FaultTable, RequestLog};
use crate::nodegen::GenerateSpec;
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "kube-testserver",
    about = "Test Kubernetes API server for Nodes"
)]
struct Cli {
    /// API listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS with a CA and server certificate generated at start (writes ca.crt).
    #[arg(long)]
    tls: bool,
    /// Directory for kubeconfigs, ca.crt and server.json (created if missing).
    #[arg(long)]
    state_dir: PathBuf,
    /// Synthetic nodes to create at start.
    #[arg(long, default_value_t = 0)]
    nodes: u32,
    /// Make the start-up nodes realistic (~15–20 KB each: images, conditions, managedFields).
    #[arg(long)]
    realistic: bool,
    /// Pod CIDR range the start-up nodes' /24s are carved from.
    #[arg(long, default_value = "10.128.0.0/9")]
    pod_cidr_base: String,
    /// Heartbeat-like status writes per second to random nodes.
    #[arg(long)]
    churn_per_sec: Option<f64>,
    /// Retained watch history (events); older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    history_limit: usize,
    /// Admin API listen address (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: SocketAddr,
    /// Interval of BOOKMARK events to watches that allow them.
    #[arg(long, default_value_t = 60_000)]
    bookmark_interval_ms: u64,
    /// Server-side watch timeout when the client sends no timeoutSeconds.
    #[arg(long, default_value_t = 1800)]
    watch_timeout_secs: u64,
    /// Request log entries kept (oldest dropped beyond this).
    #[arg(long, default_value_t = 100_000)]
    request_log_cap: usize,
    /// Grant an identity an extra role, as `ID=ROLE` (repeatable). Roles: `events`
    /// (events.k8s.io events: create, patch — what kube-rs's Recorder needs).
    #[arg(long = "grant", value_name = "ID=ROLE")]
    grants: Vec<String>,
    /// Shut down when the parent process goes away (test helpers pass this so a killed test
    /// run leaves no server behind).
    #[arg(long)]
    exit_with_parent: bool,
    /// Take the flannel identity's rules from this ClusterRole (JSON) instead of upstream's.
    #[arg(long, value_name = "FILE")]
    flannel_role: Option<PathBuf>,
}

fn yaml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn kubeconfig(server_url: &str, ca_file: Option<&Path>, identity: &Identity) -> String {
    let ca = match ca_file {
        Some(p) => format!(
            "    certificate-authority: {}\n",
            yaml_string(&p.display().to_string())
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-testserver\n  cluster:\n    server: {server}\n{ca}contexts:\n- name: {id}@kube-testserver\n  context:\n    cluster: kube-testserver\n    user: {id}\ncurrent-context: {id}@kube-testserver\nusers:\n- name: {id}\n  user:\n    token: {token}\npreferences: {{}}\n",
        server = yaml_string(server_url),
        id = identity.id,
        token = yaml_string(&identity.token),
    )
}

fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("creating state dir {}", cli.state_dir.display()))?;
    let state_dir = cli
        .state_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", cli.state_dir.display()))?;
    // A server.json from an earlier run must not be mistaken for ours.
    let server_json = state_dir.join("server.json");
    let _ = std::fs::remove_file(&server_json);

    let api_listener = server::bind(cli.listen)?;
    let api_addr = api_listener.local_addr()?;
    let admin_listener = server::bind(cli.admin_listen)?;
    let admin_addr = admin_listener.local_addr()?;

    let mut identities = auth::default_identities();
    if let Some(path) = &cli.flannel_role {
        let rules = role_file::rules_from_file(path)?;
        for id in identities.iter_mut().filter(|i| i.id == "flannel") {
            id.rules = rules.clone();
        }
    }
    auth::apply_grants(&mut identities, &cli.grants).map_err(anyhow::Error::msg)?;
    let (outage_tx, outage_rx) = mpsc::unbounded_channel();
    let app = Arc::new(AppState {
        store: Mutex::new(Store::new(
            cli.history_limit,
            cli.history_limit.clamp(1024, 16_384),
        )),
        identities,
        faults: Mutex::new(FaultTable::default()),
        log: Mutex::new(RequestLog::new(cli.request_log_cap)),
        watch_close: Mutex::new(CancellationToken::new()),
        open_watches: AtomicUsize::new(0),
        pods: Mutex::new(BTreeMap::new()),
        settings: Settings {
            bookmark_interval: Duration::from_millis(cli.bookmark_interval_ms.max(10)),
            default_watch_timeout: Duration::from_secs(cli.watch_timeout_secs),
            public_addr: Mutex::new(api_addr.to_string()),
        },
        outage_tx,
        outage_until: Mutex::new(None),
        churn: Mutex::new(None),
    });

    if cli.nodes > 0 {
        let spec = GenerateSpec {
            count: cli.nodes,
            realistic: cli.realistic,
            pod_cidr_base: cli.pod_cidr_base.clone(),
            ..GenerateSpec::default()
        };
        let started = std::time::Instant::now();
        let app2 = app.clone();
        let (created, rv) =
            tokio::task::spawn_blocking(move || admin::generate_nodes(&app2, &spec))
                .await
                .context("node generation task")?
                .map_err(anyhow::Error::msg)
                .context("generating start-up nodes")?;
        tracing::info!(
            created,
            rv,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "nodes generated"
        );
    }

    let (scheme, tls_acceptor, ca_file) = if cli.tls {
        let generated = tls::generate(cli.listen.ip())?;
        let ca_path = state_dir.join("ca.crt");
        std::fs::write(&ca_path, generated.ca_pem.as_bytes())
            .with_context(|| format!("writing {}", ca_path.display()))?;
        (
            "https",
            Some(tokio_rustls::TlsAcceptor::from(generated.server_config)),
            Some(ca_path),
        )
    } else {
        ("http", None, None)
    };
    let url = format!("{scheme}://{api_addr}");
    let admin_url = format!("http://{admin_addr}");

    let mut kubeconfigs = serde_json::Map::new();
    let mut tokens = serde_json::Map::new();
    for identity in &app.identities {
        let path = state_dir.join(format!("kubeconfig-{}", identity.id));
        std::fs::write(&path, kubeconfig(&url, ca_file.as_deref(), identity))
            .with_context(|| format!("writing {}", path.display()))?;
        kubeconfigs.insert(identity.id.clone(), json!(path.display().to_string()));
        tokens.insert(identity.id.clone(), json!(identity.token));
    }

    let shutdown = CancellationToken::new();
    let api_router = api::router(app.clone());
    let api_task = tokio::spawn(server::run_api(
        app.clone(),
        api_listener,
        api_router,
        tls_acceptor,
        outage_rx,
        shutdown.clone(),
    ));
    let admin_router = admin::router(app.clone());
    let admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(async move { admin_shutdown.cancelled().await })
            .await
    });
    let bookmark_app = app.clone();
    let bookmark_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(bookmark_app.settings.bookmark_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            lock(&bookmark_app.store).bookmark();
        }
    });
    if let Some(rate) = cli.churn_per_sec.filter(|r| *r > 0.0) {
        admin::start_churn_task(&app, rate);
    }

    let info = json!({
        "url": url,
        "admin_url": admin_url,
        "pid": std::process::id(),
        "tls": cli.tls,
        "ca_file": ca_file.as_ref().map(|p| p.display().to_string()),
        "kubeconfigs": kubeconfigs,
        "tokens": tokens,
        "state_dir": state_dir.display().to_string(),
    });
    write_atomically(
        &server_json,
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    println!(
        "kube-testserver: API {url}  admin {admin_url}  nodes {}",
        lock(&app.store).len()
    );
    for identity in &app.identities {
        println!(
            "kubeconfig-{}={}",
            identity.id,
            state_dir
                .join(format!("kubeconfig-{}", identity.id))
                .display()
        );
    }
    tracing::info!(%url, %admin_url, "kube-testserver ready");

    let parent_gone = async {
        if !cli.exit_with_parent {
            return std::future::pending::<()>().await;
        }
        let parent = nix::unistd::getppid();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if nix::unistd::getppid() != parent {
                return;
            }
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = parent_gone => tracing::info!("parent process exited: shutting down"),
        r = api_task => {
            let _ = std::fs::remove_file(&server_json);
            return match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("API server stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("API server task failed: {e}")),
            };
        }
    }
    shutdown.cancel();
    bookmark_task.abort();
    if let Some(c) = lock(&app.churn).take() {
        c.task.abort();
    }
    // Open watches would hold graceful shutdown forever; close them first.
    lock(&app.watch_close).cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    let _ = std::fs::remove_file(&server_json);
    Ok(())
}
