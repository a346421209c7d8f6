//! The supervisor: the one process that owns a running cluster (its namespaces, the API
//! server, the daemons, the pods) and serves the other subcommands over a Unix socket in the
//! run dir. All cluster state lives in this process, so tear-down is the cluster's own
//! `Drop`: on `down` (SIGTERM from the `down` subcommand), Ctrl-C, SIGTERM or SIGHUP.
//! A second signal while tearing down sweeps by prefix and exits at once. If the supervisor
//! dies without tearing down (kill -9, a crash), `down` or the next `up` sweeps what is left
//! by prefix and state.json (see rundir.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use frs_testsupport::cluster::{Binaries, Cluster, ClusterOptions, PodWiring, cancel_flag};
use frs_testsupport::kube_testserver::TestServerOptions;
use frs_testsupport::lab::LabOptions;

use crate::commands::{self, Request};
use crate::rundir::{self, Proc, RunDir, State};

/// How the cluster is brought up.
#[derive(Debug, Clone)]
pub struct UpArgs {
    pub nodes: usize,
    pub pods: usize,
    /// Nodes (counted from the last) whose pods use the reference plugin chain.
    pub reference_nodes: usize,
    pub underlay: [u8; 3],
    pub bin_dir: PathBuf,
}

impl UpArgs {
    /// The arguments of `__supervise` that reproduce these.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--nodes={}", self.nodes),
            format!("--pods={}", self.pods),
            format!("--reference-nodes={}", self.reference_nodes),
            format!(
                "--underlay={}.{}.{}",
                self.underlay[0], self.underlay[1], self.underlay[2]
            ),
            format!("--bin-dir={}", self.bin_dir.display()),
        ]
    }
}

/// Makes sure no cluster of this name runs, sweeps what a crashed one left, creates the run
/// dir. Prints what was swept.
pub fn prepare(run: &RunDir, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(sup) = run.live_supervisor() {
        bail!(
            "cluster {:?} is already up (supervisor pid {}); run `cluster --name {} down` first",
            run.name,
            sup.pid,
            run.name
        );
    }
    let report = rundir::sweep(run, Duration::from_secs(20));
    if !report.is_empty() {
        writeln!(
            out,
            "cleaned up after an earlier run of {:?} that did not finish: {}",
            run.name,
            rundir::describe(&report)
        )?;
    }
    run.create()
}

/// Ctrl-C, SIGTERM and SIGHUP set `cancel` (the owner then tears down); a second one sweeps
/// by prefix and exits immediately.
pub fn install_signal_handler(cancel: Arc<AtomicBool>, run: RunDir) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    // Register in this thread so no signal is missed once we return.
    let mut signals = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                let name = rt.block_on(async {
                    tokio::select! {
                        _ = signals.0.recv() => "SIGINT",
                        _ = signals.1.recv() => "SIGTERM",
                        _ = signals.2.recv() => "SIGHUP",
                    }
                });
                seen += 1;
                if seen == 1 {
                    eprintln!("\n{name}: tearing the cluster down (again to force)");
                    cancel.store(true, Ordering::SeqCst);
                } else {
                    eprintln!("{name}: forced clean-up by prefix {}", run.netns_prefix());
                    let report = rundir::sweep(&run, Duration::ZERO);
                    eprintln!("{}", rundir::describe(&report));
                    std::process::exit(130);
                }
            }
        })
        .context("signal thread")?;
    Ok(())
}

/// The state file's view of a cluster.
pub fn snapshot(run: &RunDir, cluster: Option<&Cluster>, phase: &str) -> State {
    let supervisor = Proc::of("supervisor", std::process::id()).unwrap_or(Proc {
        role: "supervisor".into(),
        pid: std::process::id(),
        start_ticks: 0,
    });
    let mut state = State {
        name: run.name.clone(),
        netns_prefix: run.netns_prefix(),
        run_dir: run.dir.clone(),
        phase: phase.into(),
        supervisor,
        processes: Vec::new(),
        namespaces: run.namespaces(),
        nodes: Vec::new(),
        pods: Vec::new(),
    };
    if let Some(c) = cluster {
        state.processes = c
            .processes()
            .into_iter()
            .filter_map(|(role, pid)| Proc::of(&role, pid))
            .collect();
        state.namespaces = c.namespaces();
        state.nodes = c.nodes.iter().map(|n| n.name.clone()).collect();
        state.pods = c.pods().map(|p| p.name.clone()).collect();
    }
    state
}

/// [`build_cluster`], and on failure a sweep of whatever it left (the error's unwinding drops
/// what was built; the sweep takes the rest), said in one line on `out`.
pub fn build(
    run: &RunDir,
    args: &UpArgs,
    cancel: Arc<AtomicBool>,
    out: &mut dyn Write,
) -> anyhow::Result<Cluster> {
    build_cluster(run, args, cancel, out).inspect_err(|_| {
        let report = rundir::sweep(run, Duration::ZERO);
        let _ = writeln!(out, "bring-up failed; {}", rundir::describe(&report));
    })
}

/// Builds the cluster, printing each step.
fn build_cluster(
    run: &RunDir,
    args: &UpArgs,
    cancel: Arc<AtomicBool>,
    out: &mut dyn Write,
) -> anyhow::Result<Cluster> {
    let binaries = Binaries::in_dir(&args.bin_dir);
    let lab = LabOptions {
        tag: String::new(),
        underlay: args.underlay,
        netns_prefix: Some(run.netns_prefix()),
        work_dir: Some(run.dir.clone()),
        // The optional events role (deploy/kube-flannel-rs-events.yml) is applied.
        server: TestServerOptions {
            extra_args: vec!["--grant".into(), "flannel=events".into()],
            ..TestServerOptions::default()
        },
        ..LabOptions::default()
    };
    let mut opts = ClusterOptions::new(lab, binaries);
    opts.cancel = Some(cancel);
    let start = Instant::now();
    let mut c = Cluster::new(opts)?;
    writeln!(
        out,
        "  underlay switch {} ({}.{}.{}.0/24), API host {} running kube-testserver at {} ({:.1} s)",
        c.lab.switch.netns().name(),
        args.underlay[0],
        args.underlay[1],
        args.underlay[2],
        c.lab.api.ns.name(),
        c.lab.server.url(),
        start.elapsed().as_secs_f64()
    )?;
    run.write_state(&snapshot(run, Some(&c), "starting"))?;
    for i in 0..args.nodes {
        let wiring = if i + args.reference_nodes >= args.nodes {
            PodWiring::Reference
        } else {
            PodWiring::Flannel
        };
        commands::add_node(&mut c, wiring, args.pods, out)?;
        run.write_state(&snapshot(run, Some(&c), "starting"))?;
    }
    let took = c.wait_converged(Duration::from_secs(60))?;
    writeln!(
        out,
        "  every node has a route, a neighbour and an FDB entry for every peer (+{:.0} ms)",
        took.as_secs_f64() * 1000.0
    )?;
    Ok(c)
}

/// Writes output lines as JSON `{"out": line}` records to a control connection.
struct JsonLines<'a> {
    stream: &'a UnixStream,
    pending: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Reply {
    Out { out: String },
    Done { ok: bool, error: Option<String> },
}

impl JsonLines<'_> {
    fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
        line.push(b'\n');
        (&mut &*self.stream).write_all(&line)
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            self.send(&Reply::Out { out: text })?;
        }
        Ok(())
    }
}

impl Write for JsonLines<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.send(&Reply::Out { out: text })?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves control connections until `cancel` is set.
pub fn serve(
    run: &RunDir,
    cluster: &mut Cluster,
    cancel: &AtomicBool,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    let socket = run.socket_path();
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    while !cancel.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle(run, cluster, stream, log) {
                    writeln!(log, "control connection: {e:#}")?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accept a control connection"),
        }
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn handle(
    run: &RunDir,
    cluster: &mut Cluster,
    stream: UnixStream,
    log: &mut dyn Write,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let req: Request = serde_json::from_str(&line).context("bad request")?;
    writeln!(log, "> {req:?}")?;
    let mut out = JsonLines {
        stream: &stream,
        pending: Vec::new(),
    };
    let result = commands::execute(cluster, &req, &mut out);
    out.flush_pending()?;
    if req.mutates() {
        run.write_state(&snapshot(run, Some(cluster), "ready"))?;
    }
    let done = match &result {
        Ok(()) => Reply::Done {
            ok: true,
            error: None,
        },
        Err(e) => {
            writeln!(log, "  failed: {e:#}")?;
            Reply::Done {
                ok: false,
                error: Some(format!("{e:#}")),
            }
        }
    };
    out.send(&done)?;
    Ok(())
}

/// Sends one request to the running supervisor and prints its output. Returns whether the
/// command succeeded.
pub fn request(run: &RunDir, req: &Request) -> anyhow::Result<bool> {
    let unreachable = |e: &dyn std::fmt::Display| -> anyhow::Error {
        let hint = match run.read_state() {
            Some(s) if !s.supervisor.is_alive() => format!(
                "its supervisor (pid {}) is gone; run `cluster --name {} down` to clean up",
                s.supervisor.pid, run.name
            ),
            Some(s) if s.phase != "ready" => format!("it is {} — try again shortly", s.phase),
            Some(_) => format!("cannot connect: {e}"),
            None => "start one with `cluster up`".to_string(),
        };
        anyhow::anyhow!("cluster {:?} is not reachable: {hint}", run.name)
    };
    let stream = UnixStream::connect(run.socket_path()).map_err(|e| unreachable(&e))?;
    match converse(&stream, req) {
        Ok(ok) => Ok(ok),
        // A supervisor dying while we connect can leave a connection that is then reset.
        Err(e) if e.chain().any(|c| c.is::<std::io::Error>()) => Err(unreachable(&e)),
        Err(e) => Err(e),
    }
}

fn converse(stream: &UnixStream, req: &Request) -> anyhow::Result<bool> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    let mut writer = stream;
    writer.write_all(&line)?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.context("read from the supervisor")?;
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Out { out }) => println!("{out}"),
            Ok(Reply::Done { ok, error }) => {
                if let Some(e) = error {
                    eprintln!("error: {e}");
                }
                return Ok(ok);
            }
            Err(_) => println!("{line}"),
        }
    }
    bail!("the supervisor closed the connection without an answer (did it stop?)")
}

/// Tears the cluster down (its `Drop`), removes the run dir and checks nothing is left.
pub fn teardown(run: &RunDir, cluster: Cluster, out: &mut dyn Write) -> anyhow::Result<()> {
    let start = Instant::now();
    let _ = run.write_state(&snapshot(run, Some(&cluster), "stopping"));
    let procs: Vec<Proc> = cluster
        .processes()
        .into_iter()
        .filter_map(|(role, pid)| Proc::of(&role, pid))
        .collect();
    let namespaces = cluster.namespaces().len();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&run.dir);
    let left = rundir::leftovers(run, &procs);
    if left.is_empty() {
        writeln!(
            out,
            "  removed {namespaces} namespaces, stopped {} processes, deleted {} ({:.1} s); nothing left",
            procs.len(),
            run.dir.display(),
            start.elapsed().as_secs_f64()
        )?;
        Ok(())
    } else {
        bail!("left behind after tear-down: {}", left.join(", "))
    }
}

/// `up` in this process: build, serve until a signal or `down`, tear down.
pub fn supervise(run: &RunDir, args: &UpArgs, detached: bool) -> anyhow::Result<()> {
    let cancel = cancel_flag();
    install_signal_handler(cancel.clone(), run.clone())?;
    run.write_state(&snapshot(run, None, "starting"))?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "== cluster {:?}: {} node(s) × {} pod(s), namespaces {}*, files in {}",
        run.name,
        args.nodes,
        args.pods,
        run.netns_prefix(),
        run.dir.display()
    )?;
    let mut cluster = build(run, args, cancel.clone(), &mut out)?;
    run.write_state(&snapshot(run, Some(&cluster), "ready"))?;
    write!(out, "{}", cluster.status().render())?;
    writeln!(
        out,
        "== cluster {:?} is up. Try: cluster status | ping-matrix | add-pod node-1 | incident node-2 | down{}",
        run.name,
        if detached {
            String::new()
        } else {
            " (Ctrl-C here tears it down)".into()
        }
    )?;
    let served = serve(run, &mut cluster, &cancel, &mut out);
    writeln!(out, "== tearing down cluster {:?}", run.name)?;
    teardown(run, cluster, &mut out)?;
    served
}

/// `up --detach`: starts the supervisor in its own session and follows its log until the
/// cluster is ready.
pub fn up_detached(run: &RunDir, args: &UpArgs) -> anyhow::Result<()> {
    let log = std::fs::File::create(run.log_path())
        .with_context(|| format!("create {}", run.log_path().display()))?;
    let exe = std::env::current_exe().context("locate this binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg(format!("--name={}", run.name))
        .arg("__supervise")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid only, between fork and exec: the supervisor leaves our session so
    // terminal signals and our exit do not reach it.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("start the supervisor")?;
    let mut reader = std::fs::File::open(run.log_path())?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut buf = String::new();
    loop {
        buf.clear();
        reader.read_to_string(&mut buf)?;
        print!("{buf}");
        std::io::stdout().flush()?;
        if let Some(status) = child.try_wait()? {
            buf.clear();
            reader.read_to_string(&mut buf)?;
            print!("{buf}");
            bail!("the supervisor exited ({status}) before the cluster was up");
        }
        if run.read_state().is_some_and(|s| s.phase == "ready")
            && std::fs::metadata(run.socket_path()).is_ok()
        {
            buf.clear();
            reader.read_to_string(&mut buf)?;
            print!("{buf}");
            println!(
                "(supervisor pid {} runs in the background; its log: {})",
                child.id(),
                run.log_path().display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster was not up after 180 s; see {}",
                run.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
