//! `flanneld` entry point. The daemon's logic lives in the library (`flannel_rs::flanneld`);
//! this file only turns process arguments and environment into a validated configuration.

use std::process::ExitCode;

use anyhow::Context as _;
use flannel_rs::flanneld::daemon::{self, DaemonTuning};
use flannel_rs::flanneld::pure::config::{Flags, FlagsError, Subcommands};
use flannel_rs::flanneld::pure::netconf::NetConf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
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
    match &flags.command {
        Some(Subcommands::Explain { json }) => return explain_running_daemon(&flags, *json),
        Some(Subcommands::Diagnose { .. }) => return diagnose(&flags),
        None => {}
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

/// Prints what the daemon on this node believes and did (its `/status`), for operators; with
/// `--json`, the document itself.
fn explain_running_daemon(flags: &Flags, json: bool) -> ExitCode {
    use flannel_rs::flanneld::explain;
    let socket = flags.status_socket();
    let text = if json {
        explain::fetch(&socket).map(|doc| format!("{doc:#}\n"))
    } else {
        explain::explain(&socket)
    };
    match text {
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

/// `flanneld diagnose`: the report on stdout; exit 0 (no problem), 1 (problems), 2 (could not
/// diagnose).
fn diagnose(flags: &Flags) -> ExitCode {
    use flannel_rs::flanneld::diagnose::{self, Scope};
    let Some(Subcommands::Diagnose {
        peer,
        ip,
        cluster,
        json,
    }) = flags.command.clone()
    else {
        return ExitCode::FAILURE;
    };
    let could_not = |e: String| {
        eprintln!("flanneld diagnose: could not diagnose: {e}");
        ExitCode::from(2)
    };
    // The daemon's command line is the natural input; only kube-subnet-mgr mode exists.
    let mut flags = flags.clone();
    flags.kube_subnet_mgr = true;
    // --cluster judges every Node; it needs no identity of its own.
    let env_or_any_node = |k: &str| match env(k) {
        None if cluster && k == "NODE_NAME" => Some("-".into()),
        v => v,
    };
    let config = match flags.resolve(env_or_any_node) {
        Ok(c) => c,
        Err(e) => return could_not(e.to_string()),
    };
    let scope = match (peer, ip) {
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
            if json {
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
