//! `cluster`: a local multi-node flannel-rs cluster in network namespaces.
//!
//! ```text
//! cluster up [--nodes 3] [--pods 2] [--detach]   # foreground: Ctrl-C tears it down
//! cluster status | ping-matrix | add-node | remove-node NODE | add-pod NODE
//! cluster remove-pod POD | restart-daemon NODE | incident NODE | explain NODE
//! cluster down                                    # also cleans up after a crashed run
//! cluster demo                                    # the README's demo (hack/demo.sh)
//! cluster soak [--minutes 10] [--seed N]          # the chaos soak (hack/soak.sh)
//! ```
//!
//! One process — the supervisor, started by `up` — owns the cluster and serves the other
//! subcommands over `/tmp/frs-cluster-NAME/control.sock`; see supervisor.rs and rundir.rs
//! for the lifecycle and what `down` removes. Needs root (namespaces).

mod commands;
mod demo;
mod rundir;
mod soak;
mod soak_report;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use commands::Request;
use frs_testsupport::cluster::ClusterError;
use rundir::RunDir;
use supervisor::UpArgs;

#[derive(Parser, Debug)]
#[command(
    name = "cluster",
    about = "A local multi-node flannel-rs cluster in network namespaces",
    long_about = "A local multi-node flannel-rs cluster in network namespaces: an underlay \
        switch, an API host running kube-testserver over HTTPS, node namespaces each running \
        the real flanneld as the DaemonSet does, and pods wired by the real flannel CNI plugin \
        with the stock kube-flannel conflist. `up` starts a supervisor process that owns it \
        all; the other subcommands talk to it. Everything lives in namespaces frs-NAME-* and \
        /tmp/frs-cluster-NAME/ and is removed by `down`, Ctrl-C on a foreground `up`, or the \
        next `up`/`down` after a crash."
)]
struct Cli {
    /// Cluster name (prefixes every namespace: frs-NAME-…) [default: `demo` for the demo,
    /// `local` otherwise].
    #[arg(long, global = true, env = "FRS_CLUSTER")]
    name: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct BringUp {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    nodes: u64,
    /// Pods per node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=50))]
    pods: u64,
    /// How many nodes (the last ones) wire their pods with upstream's chain (reference
    /// bridge + host-local from /usr/lib/cni) instead of our flannel plugin.
    #[arg(long, default_value_t = 0)]
    reference_nodes: u64,
    /// First three octets of the underlay /24.
    #[arg(long, default_value = "192.168.100")]
    underlay: String,
    /// Where flanneld, flannel and kube-testserver are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Brings a cluster up and supervises it (foreground unless --detach).
    Up {
        #[command(flatten)]
        up: BringUp,
        /// Run the supervisor in the background and return once the cluster is up.
        #[arg(long, short)]
        detach: bool,
    },
    /// Adds a node (with --pods pods).
    AddNode {
        /// Wire its pods with upstream's reference bridge + host-local chain.
        #[arg(long)]
        reference: bool,
        #[arg(long, default_value_t = 0)]
        pods: usize,
    },
    /// Deletes a node's Node object, stops its flanneld and removes its namespaces.
    RemoveNode { node: String },
    /// Adds a pod to a node (CNI ADD through the node's conflist).
    AddPod { node: String },
    /// Removes a pod (CNI DEL, then its namespace).
    RemovePod { pod: String },
    /// Nodes, daemons, VTEPs, programmed peers and pods.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// SIGTERM to a node's flanneld and a fresh start.
    RestartDaemon { node: String },
    /// Every pod pings every other pod once.
    PingMatrix,
    /// The incident: a stale unconditional update drops NODE's flannel annotations while
    /// other pods ping NODE's pods; shows the heal.
    Incident { node: String },
    /// `flanneld explain` inside a node's namespace.
    Explain { node: String },
    /// Tears the cluster down, or removes what a crashed run left behind.
    Down,
    /// The README's demo: up, ping matrix, the incident, explain, tear-down (foreground).
    Demo {
        #[command(flatten)]
        up: BringUp,
    },
    /// The chaos soak: 3 nodes × 1 pod pinging across nodes every 10 ms while faults are
    /// injected one after another in a seeded random order; prints the fault table and
    /// writes it with an SVG chart of the daemons' RSS and fds (foreground; exits non-zero
    /// naming the failing fault).
    Soak {
        /// How long to inject faults (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Replays a run's fault order (every run prints its seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the fault table and the chart go.
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
        /// First three octets of the underlay /24.
        #[arg(long, default_value = "192.168.101")]
        underlay: String,
        /// Where flanneld, flannel and kube-testserver are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    #[command(hide = true, name = "__supervise")]
    Supervise {
        #[command(flatten)]
        up: BringUp,
    },
}

fn up_args(b: &BringUp) -> anyhow::Result<UpArgs> {
    let octets: Vec<u8> = b
        .underlay
        .split('.')
        .map(|o| o.parse::<u8>())
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "--underlay {:?}: expected three octets like 192.168.100",
                b.underlay
            )
        })?;
    let underlay: [u8; 3] = octets
        .try_into()
        .map_err(|_| anyhow::anyhow!("--underlay {:?}: expected three octets", b.underlay))?;
    let bin_dir = match &b.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locate this binary")?
            .parent()
            .context("binary without a parent dir")?
            .to_path_buf(),
    };
    if b.reference_nodes > b.nodes {
        bail!(
            "--reference-nodes {} exceeds --nodes {}",
            b.reference_nodes,
            b.nodes
        );
    }
    Ok(UpArgs {
        nodes: b.nodes as usize,
        pods: b.pods as usize,
        reference_nodes: b.reference_nodes as usize,
        underlay,
        bin_dir,
    })
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("cluster needs root (it creates network namespaces); run it with sudo");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    require_root()?;
    let default_name = match cli.command {
        Cmd::Demo { .. } => "demo",
        Cmd::Soak { .. } => "soak",
        _ => "local",
    };
    let run = RunDir::new(cli.name.as_deref().unwrap_or(default_name))?;
    let req = match cli.command {
        Cmd::Up { up, detach } => {
            let args = up_args(&up)?;
            supervisor::prepare(&run, &mut std::io::stdout())?;
            if detach {
                supervisor::up_detached(&run, &args)?;
            } else {
                supervisor::supervise(&run, &args, false)?;
            }
            return Ok(true);
        }
        Cmd::Supervise { up } => {
            supervisor::supervise(&run, &up_args(&up)?, true)?;
            return Ok(true);
        }
        Cmd::Demo { up } => {
            demo::run(&run, &up_args(&up)?)?;
            return Ok(true);
        }
        Cmd::Soak {
            minutes,
            seed,
            out,
            underlay,
            bin_dir,
        } => {
            if !(minutes > 0.0 && minutes <= 120.0) {
                bail!("--minutes {minutes}: expected more than 0 and at most 120");
            }
            let up = up_args(&BringUp {
                nodes: 3,
                pods: 1,
                reference_nodes: 0,
                underlay,
                bin_dir,
            })?;
            soak::run(
                &run,
                &soak::SoakArgs {
                    minutes,
                    seed,
                    out_dir: out,
                    up,
                },
            )?;
            return Ok(true);
        }
        Cmd::Down => {
            let report = rundir::sweep(&run, Duration::from_secs(30));
            if report.is_empty() {
                println!("cluster {:?}: nothing to remove", run.name);
            } else {
                println!("cluster {:?}: {}", run.name, rundir::describe(&report));
            }
            let left = rundir::leftovers(&run, &[]);
            if !left.is_empty() {
                bail!("still there: {}", left.join(", "));
            }
            return Ok(true);
        }
        Cmd::AddNode { reference, pods } => Request::AddNode { reference, pods },
        Cmd::RemoveNode { node } => Request::RemoveNode { node },
        Cmd::AddPod { node } => Request::AddPod { node },
        Cmd::RemovePod { pod } => Request::RemovePod { pod },
        Cmd::Status { json } => Request::Status { json },
        Cmd::RestartDaemon { node } => Request::RestartDaemon { node },
        Cmd::PingMatrix => Request::PingMatrix,
        Cmd::Incident { node } => Request::Incident { node },
        Cmd::Explain { node } => Request::Explain { node },
    };
    supervisor::request(&run, &req)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cluster: {e:#}");
            // Interrupted by a signal: the shell convention for SIGINT.
            let interrupted = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<ClusterError>(),
                    Some(ClusterError::Interrupted)
                )
            });
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
