//! `flanneld` entry point. The daemon's logic lives in the library (`flannel_rs::flanneld`);
//! this file only turns process arguments and environment into a validated configuration.

use std::process::ExitCode;

use anyhow::Context as _;
use flannel_rs::flanneld::daemon::{self, DaemonTuning};
use flannel_rs::flanneld::pure::config::{Flags, FlagsError};
use flannel_rs::flanneld::pure::netconf::NetConf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `flanneld explain [--healthz-ip=…] [--healthz-port=…]`: ask the running daemon.
    let explain = args.get(1).is_some_and(|a| a == "explain");
    if explain {
        args.remove(1);
    }
    if args.get(1).is_some_and(|a| a == "diagnose") {
        args.remove(1);
        return diagnose(args);
    }
    let flags = match Flags::parse_with_env(args, env) {
        Ok(f) => f,
        // --help and usage errors: clap prints and picks the exit code.
        Err(FlagsError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("flanneld: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        // Upstream prints the version to stderr and exits 0.
        eprintln!("v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if explain {
        return explain_running_daemon(&flags);
    }
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flanneld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let config = flags.resolve(env)?;
    init_logging(config.log_level.as_filter());
    // Validate net-conf.json before anything else so a typo is one clear line and exit 1.
    let text = std::fs::read_to_string(&config.net_config_path)
        .with_context(|| format!("reading {}", config.net_config_path.display()))?;
    NetConf::parse(&text)?;
    // Before touching the node: without NET_ADMIN the first netlink write fails with a bare EPERM.
    flannel_rs::flanneld::caps::require_net_admin()?;

    // Before any thread exists (see flanneld::memory).
    flannel_rs::flanneld::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            signals.cancel();
        });
        daemon::run(config, DaemonTuning::default(), shutdown).await
    });
    // Tasks still running (watches, timers) are dropped: nothing in them needs flushing, and
    // the datapath must stay as it is.
    runtime.shutdown_timeout(Duration::from_millis(300));
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(default_level: &str) {
    // RUST_LOG, when set, wins over -v.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: under a container runtime stderr is a pipe to a log file,
    // where escape sequences end up as garbage in `kubectl logs` and break log parsers.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Prints what the daemon on this node believes and did (its `/status`), for operators.
fn explain_running_daemon(flags: &Flags) -> ExitCode {
    // The stock manifest serves health on 8081; use it when no port was given.
    let port = if flags.healthz_port == 0 {
        8081
    } else {
        flags.healthz_port
    };
    let ip = match flags.healthz_ip.as_str() {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
    let addr = match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port),
        Err(_) => {
            eprintln!("flanneld explain: --healthz-ip {ip:?} is not an IP address");
            return ExitCode::FAILURE;
        }
    };
    match flannel_rs::flanneld::explain::explain(addr) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flanneld explain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `flanneld diagnose [--peer NODE | --ip ADDRESS | --cluster] [--json]` plus the daemon's own
/// flags (they say where the API, net-conf.json and the interface are). Exit status: 0 no
/// problem found, 1 problems found, 2 could not diagnose.
#[derive(clap::Parser, Debug)]
#[command(
    name = "flanneld diagnose",
    about = "Check this node's flannel datapath, annotations and tunnels against the API \
             (takes the daemon's flags too: --kubeconfig-file, --kube-api-url, \
             --net-config-path, --kube-annotation-prefix, --iface, ...)"
)]
struct DiagnoseArgs {
    /// Check only the path to this peer node.
    #[arg(long, conflicts_with_all = ["ip", "cluster"])]
    peer: Option<String>,
    /// Which node owns this pod IP, and is the path to it in place?
    #[arg(long, conflicts_with = "cluster")]
    ip: Option<std::net::IpAddr>,
    /// Every Node, from the API alone (needs only a kubeconfig).
    #[arg(long)]
    cluster: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn diagnose(args: Vec<String>) -> ExitCode {
    use clap::Parser as _;
    use flannel_rs::flanneld::diagnose::{self, Scope};
    const OWN: [&str; 4] = ["--peer", "--ip", "--cluster", "--json"];
    // Split ours from the daemon's flags (both forms: `--peer=n2` and `--peer n2`).
    let (mut own, mut daemon) = (vec!["flanneld diagnose".to_string()], vec![args[0].clone()]);
    let mut rest = args.into_iter().skip(1).peekable();
    while let Some(a) = rest.next() {
        let name = a.split('=').next().unwrap_or("");
        if a == "-h" || a == "--help" || OWN.contains(&name) {
            let takes_value = (name == "--peer" || name == "--ip") && !a.contains('=');
            own.push(a);
            if takes_value && let Some(v) = rest.next() {
                own.push(v);
            }
        } else {
            daemon.push(a);
        }
    }
    let opts = match DiagnoseArgs::try_parse_from(&own) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    if !daemon.iter().any(|a| a.starts_with("--kube-subnet-mgr")) {
        daemon.push("--kube-subnet-mgr".into());
    }
    let cluster = opts.cluster;
    // --cluster judges every Node; it needs no identity of its own.
    let env_or_any_node = move |k: &str| match env(k) {
        None if cluster && k == "NODE_NAME" => Some("-".into()),
        v => v,
    };
    let could_not = |e: String| {
        eprintln!("flanneld diagnose: could not diagnose: {e}");
        ExitCode::from(2)
    };
    let config = match Flags::parse_with_env(daemon, env)
        .map_err(|e| e.to_string())
        .and_then(|f| f.resolve(env_or_any_node).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return could_not(e),
    };
    let scope = match (opts.peer, opts.ip) {
        _ if cluster => Scope::Cluster,
        (Some(p), _) => Scope::Peer(p),
        (None, Some(ip)) => Scope::Ip(ip),
        (None, None) => Scope::Node,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return could_not(e.to_string()),
    };
    match runtime.block_on(diagnose::diagnose(&config, &scope)) {
        Ok(report) => {
            if opts.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => could_not(e.to_string()),
    }
}
