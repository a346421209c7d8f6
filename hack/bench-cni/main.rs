//! bench-cni: our `flannel` CNI plugin against the reference chain (`bridge` + `host-local`,
//! Debian containernetworking-plugins, fed the delegate config upstream flannel renders),
//! measured the same way in the same run:
//!
//! * sequential ADD then sequential DEL of N pods (median, p95, min, max), the subjects taking
//!   turns pod by pod so that load from elsewhere hits them alike;
//! * P ADDs with `PAR` workers in parallel, then the P DELs in parallel (wall time, rate),
//!   subjects alternating, several rounds, median reported.
//!
//! The subjects share the pod namespaces; each uses its own `CNI_IFNAME` (eth0, eth1, …) and
//! its own node namespace, IPAM dir and flannel dataDir.
//!
//! Every invocation is a process spawned directly by a worker thread that entered the node
//! namespace (setns), with `CNI_*` in its environment and the config on stdin: no `ip netns
//! exec` or shell per call. Everything lives in `frs-<pid>-*` namespaces and a temp dir.
//!
//! Usage (root): bench-cni [--n 200] [--par-n 60] [--par 8] [--plugin PATH] [--ref-dir /usr/lib/cni]

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use flannel_rs::netns::{NetnsFile, NetnsGuard};
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Benchmark the flannel CNI plugin against the reference bridge+host-local chain")]
struct Args {
    /// Pods for the sequential ADD/DEL phases (≥ 200 for the report; ≤ 250 fit one /24).
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Pods for the parallel phase.
    #[arg(long, default_value_t = 60)]
    par_n: usize,
    /// Parallel workers.
    #[arg(long, default_value_t = 8)]
    par: usize,
    /// Our plugin binary (default: `flannel` next to this binary).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Directory with the reference `bridge` and `host-local`.
    #[arg(long, default_value = "/usr/lib/cni")]
    ref_dir: PathBuf,
    /// cniVersion of the configs.
    #[arg(long, default_value = "0.3.1")]
    cni_version: String,
    /// Also measure ours with `ipam.fsync: true` (durable reservations).
    #[arg(long)]
    with_fsync: bool,
    /// Rounds of the parallel phase (the median wall time is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// One implementation under test: which binary, with which stdin.
struct Subject {
    label: String,
    /// Subjects share the pod namespaces, each with its own interface name.
    ifname: String,
    binary: PathBuf,
    config: Vec<u8>,
    ipam_dir: PathBuf,
    node: NetnsGuard,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default, Clone)]
struct Stats {
    /// Wall time per invocation.
    samples: Vec<Duration>,
    /// CPU time per invocation (plugin process and its waited-for children).
    cpu: Vec<Duration>,
}

impl Stats {
    fn push(&mut self, c: Cost) {
        self.samples.push(c.wall);
        self.cpu.push(c.cpu);
    }

    fn cpu_median(&self) -> f64 {
        Stats {
            samples: self.cpu.clone(),
            cpu: Vec::new(),
        }
        .median()
    }
}

impl Stats {
    fn ms(&self, q: f64) -> f64 {
        let mut v = self.samples.clone();
        v.sort();
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx].as_secs_f64() * 1000.0
    }
    fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort();
        let n = v.len();
        if n == 0 {
            return f64::NAN;
        }
        let m = if n % 2 == 1 {
            v[n / 2].as_secs_f64()
        } else {
            (v[n / 2 - 1].as_secs_f64() + v[n / 2].as_secs_f64()) / 2.0
        };
        m * 1000.0
    }
    fn min(&self) -> f64 {
        self.samples
            .iter()
            .min()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
    fn max(&self) -> f64 {
        self.samples
            .iter()
            .max()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
    /// `median / p95 (min / max)` in ms, as the report prints a latency.
    fn spread(&self) -> String {
        format!(
            "{:.2} / {:.2} ({:.2} / {:.2})",
            self.median(),
            self.ms(0.95),
            self.min(),
            self.max()
        )
    }
}

struct Results {
    seq_add: Stats,
    seq_del: Stats,
    par_add_wall: Duration,
    par_add: Stats,
    par_del_wall: Duration,
    version: Stats,
}

/// One invocation's cost: wall time, and CPU time of the plugin process including the
/// children it waited for (the reference `bridge` runs `host-local`), from `wait4`.
#[derive(Clone, Copy, Default)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// Runs one plugin invocation from the calling thread (which is inside the node namespace).
fn invoke(
    binary: &Path,
    command: &str,
    cid: &str,
    netns: &str,
    ifname: &str,
    path: &Path,
    stdin: &[u8],
) -> Result<(Cost, Vec<u8>)> {
    use std::io::Read;
    let t0 = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", path)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid};K8S_POD_INFRA_CONTAINER_ID={cid}"),
        )
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", binary.display()))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin)?;
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr)?;
    }
    let pid = i32::try_from(child.id()).context("pid")?;
    let mut status: nix::libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child, which std has not reaped.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t0.elapsed();
    ensure!(rc == pid, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: nix::libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let ok = nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0;
    if !ok {
        bail!(
            "{} {command} {cid} failed: {} {}",
            binary.display(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    }
    Ok((Cost { wall, cpu }, stdout))
}

/// Runs `f` on a fresh thread that entered `node` (so its children start there).
fn in_node<T: Send>(node: &NetnsFile, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            setns(node.file().as_fd(), CloneFlags::CLONE_NEWNET).context("setns into the node")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("worker panicked"))?
    })
}

/// Waits until the CPUs are mostly idle (namespace teardown keeps the kernel busy for seconds).
fn wait_quiet() {
    let read = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let f: Vec<u64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 7 {
            return None;
        }
        let busy = f[0] + f[1] + f[2] + f[5] + f[6];
        Some((busy, busy + f[3] + f[4]))
    };
    for _ in 0..120 {
        let Some(a) = read() else { return };
        std::thread::sleep(Duration::from_millis(500));
        let Some(b) = read() else { return };
        let total = b.1.saturating_sub(a.1);
        if total > 0 && (b.0.saturating_sub(a.0)) * 100 / total < 10 {
            return;
        }
    }
    eprintln!("warning: system still busy; timings may be noisy");
}

fn count_reservations(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

fn ip_of(result: &[u8]) -> Result<String> {
    let v: Value = serde_json::from_slice(result)?;
    Ok(v["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Sequential phase: for each pod, one ADD per subject in turn (then the DELs the same way),
/// so load from elsewhere on the machine hits every subject alike.
fn sequential(subjects: &[Subject], paths: &[String], args: &Args) -> Result<Vec<(Stats, Stats)>> {
    let nodes: Vec<NetnsFile> = subjects
        .iter()
        .map(|s| s.node.open())
        .collect::<Result<_, _>>()?;
    let mut out = vec![(Stats::default(), Stats::default()); subjects.len()];
    for command in ["ADD", "DEL"] {
        wait_quiet();
        let mut ips: Vec<Vec<String>> = vec![Vec::new(); subjects.len()];
        for (i, pod) in paths.iter().take(args.n).enumerate() {
            for (k, s) in subjects.iter().enumerate() {
                let (d, stdout) = in_node(&nodes[k], || {
                    invoke(
                        &s.binary,
                        command,
                        &format!("seq-{i}"),
                        pod,
                        &s.ifname,
                        &args.ref_dir,
                        &s.config,
                    )
                })??;
                if command == "ADD" {
                    out[k].0.push(d);
                    ips[k].push(ip_of(&stdout)?);
                } else {
                    out[k].1.push(d);
                }
            }
        }
        for (k, s) in subjects.iter().enumerate() {
            if command == "ADD" {
                let unique: std::collections::HashSet<_> = ips[k].iter().collect();
                ensure!(
                    unique.len() == args.n,
                    "{}: duplicate IPs in sequential ADD",
                    s.label
                );
                ensure!(
                    count_reservations(&s.ipam_dir) == args.n,
                    "{}: reservation count",
                    s.label
                );
            } else {
                ensure!(
                    count_reservations(&s.ipam_dir) == 0,
                    "{}: reservations left after DEL",
                    s.label
                );
            }
        }
    }
    Ok(out)
}

/// `par_n` invocations of `command` by `par` workers, each worker a thread inside the node.
fn parallel(
    s: &Subject,
    command: &'static str,
    round: usize,
    paths: &[String],
    args: &Args,
) -> Result<(Duration, Stats, Vec<String>)> {
    let node = s.node.open()?;
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let ips = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.par {
            scope.spawn(|| {
                let r = in_node(&node, || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.par_n {
                            break;
                        }
                        let cid = format!("par-{round}-{i}");
                        match invoke(
                            &s.binary,
                            command,
                            &cid,
                            &paths[i],
                            &s.ifname,
                            &args.ref_dir,
                            &s.config,
                        ) {
                            Ok((d, out)) => {
                                samples.lock().unwrap_or_else(|e| e.into_inner()).push(d);
                                if command == "ADD" {
                                    let ip = ip_of(&out).unwrap_or_default();
                                    ips.lock().unwrap_or_else(|e| e.into_inner()).push(ip);
                                }
                            }
                            Err(e) => failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(e.to_string()),
                        }
                    }
                });
                if let Err(e) = r {
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string());
                }
            });
        }
    });
    let wall = t0.elapsed();
    let failures = failures.into_inner().unwrap_or_default();
    ensure!(
        failures.is_empty(),
        "{} parallel {command}: {failures:?}",
        s.label
    );
    let mut stats = Stats::default();
    for c in samples.into_inner().unwrap_or_default() {
        stats.push(c);
    }
    Ok((wall, stats, ips.into_inner().unwrap_or_default()))
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn run_all(subjects: &[Subject], pods: &[NetnsGuard], args: &Args) -> Result<Vec<Results>> {
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let mut versions = Vec::new();
    for s in subjects {
        let node = s.node.open()?;
        versions.push(in_node(&node, || -> Result<Stats> {
            let mut st = Stats::default();
            for _ in 0..20 {
                let (d, _) = invoke(
                    &s.binary,
                    "VERSION",
                    "v",
                    "",
                    &s.ifname,
                    &args.ref_dir,
                    b"{\"cniVersion\":\"0.3.1\"}",
                )?;
                st.push(d);
            }
            Ok(st)
        })??);
    }
    eprintln!("sequential phase ...");
    let seq = sequential(subjects, &paths, args)?;
    eprintln!("parallel phase ({} rounds) ...", args.rounds);
    let mut add_walls = vec![Vec::new(); subjects.len()];
    let mut del_walls = vec![Vec::new(); subjects.len()];
    let mut add_stats = vec![Stats::default(); subjects.len()];
    for round in 0..args.rounds {
        for (k, s) in subjects.iter().enumerate() {
            wait_quiet();
            let (wall, st, ips) = parallel(s, "ADD", round, &paths, args)?;
            let unique: std::collections::HashSet<_> = ips.iter().collect();
            ensure!(
                unique.len() == args.par_n,
                "{}: duplicate IPs in parallel ADD",
                s.label
            );
            add_walls[k].push(wall);
            add_stats[k].samples.extend(st.samples);
            add_stats[k].cpu.extend(st.cpu);
            wait_quiet();
            let (wall, _, _) = parallel(s, "DEL", round, &paths, args)?;
            ensure!(
                count_reservations(&s.ipam_dir) == 0,
                "{}: reservations left after parallel DEL",
                s.label
            );
            del_walls[k].push(wall);
        }
    }
    Ok(seq
        .into_iter()
        .zip(versions)
        .enumerate()
        .map(|(k, ((seq_add, seq_del), version))| Results {
            seq_add,
            seq_del,
            par_add_wall: median_duration(add_walls[k].clone()),
            par_add: add_stats[k].clone(),
            par_del_wall: median_duration(del_walls[k].clone()),
            version,
        })
        .collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-cni must run as root (network namespaces)"
    );
    ensure!(
        args.n >= 1 && args.n <= 250,
        "--n must be 1..=250 (one /24)"
    );
    ensure!(
        args.par_n >= 1 && args.par_n <= 250,
        "--par-n must be 1..=250"
    );
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .join("flannel"),
    };
    ensure!(
        plugin.exists(),
        "{} not found (cargo build --release --bin flannel)",
        plugin.display()
    );
    for b in ["bridge", "host-local"] {
        ensure!(
            args.ref_dir.join(b).exists(),
            "{} missing",
            args.ref_dir.join(b).display()
        );
    }
    flannel_rs::netns::remove_stale_test_namespaces();

    let tmp = TempDir(std::env::temp_dir().join(format!("frs-bench-cni-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;
    let subnet_file = tmp.0.join("subnet.env");
    std::fs::write(&subnet_file, SUBNET_ENV)?;

    let pods_needed = args.n.max(args.par_n);
    eprintln!("creating {pods_needed} pod namespaces ...");
    let pods: Vec<NetnsGuard> = (0..pods_needed)
        .map(|i| NetnsGuard::new(&format!("bp{i}")))
        .collect::<Result<_, _>>()?;

    let mut subjects = Vec::new();
    {
        let ipam_data = tmp.0.join("ref-ipam");
        let delegate = json!({
            "cniVersion": args.cni_version, "hairpinMode": true, "ipMasq": false,
            "ipam": {"dataDir": ipam_data, "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "10.244.0.0/16"}], "type": "host-local"},
            "isDefaultGateway": true, "isGateway": true, "mtu": 1450, "name": "cbr0", "type": "bridge"
        });
        subjects.push(Subject {
            label: "reference bridge+host-local".into(),
            ifname: "eth0".into(),
            binary: args.ref_dir.join("bridge"),
            config: delegate.to_string().into_bytes(),
            ipam_dir: ipam_data.join("cbr0"),
            node: NetnsGuard::new("bnode-ref")?,
        });
    }
    let ours = |label: &str, tag: &str, fsync: bool| -> Result<Subject> {
        let ipam_data = tmp.0.join(format!("{tag}-ipam"));
        let mut ipam = json!({"dataDir": ipam_data});
        if fsync {
            ipam["fsync"] = json!(true);
        }
        let conf = json!({
            "cniVersion": args.cni_version, "name": "cbr0", "type": "flannel",
            "subnetFile": subnet_file, "dataDir": tmp.0.join(format!("{tag}-flannel")),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": ipam,
        });
        Ok(Subject {
            label: label.into(),
            ifname: format!("eth{}", if fsync { 2 } else { 1 }),
            binary: plugin.clone(),
            config: conf.to_string().into_bytes(),
            ipam_dir: ipam_data.join("cbr0"),
            node: NetnsGuard::new(&format!("bnode-{tag}"))?,
        })
    };
    subjects.push(ours("ours (flannel)", "ours", false)?);
    if args.with_fsync {
        subjects.push(ours("ours, ipam.fsync", "oursf", true)?);
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "== bench-cni: cniVersion {}, sequential N={}, parallel {} ADDs with {} workers, {} CPUs, kernel {}",
        args.cni_version,
        args.n,
        args.par_n,
        args.par,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    );
    println!(
        "   ours: {}   reference: {}",
        plugin.display(),
        args.ref_dir.display()
    );
    let results = run_all(&subjects, &pods, &args)?;

    println!();
    println!(
        "sequential, wall ms: median / p95 (min / max); CPU ms per op (median, plugin + children)"
    );
    println!(
        "{:<30} {:>30} {:>30} {:>9} {:>9} {:>9}",
        "", "ADD wall", "DEL wall", "ADD cpu", "DEL cpu", "VERSION"
    );
    for (s, r) in subjects.iter().zip(&results) {
        println!(
            "{:<30} {:>30} {:>30} {:>9.2} {:>9.2} {:>9.2}",
            s.label,
            r.seq_add.spread(),
            r.seq_del.spread(),
            r.seq_add.cpu_median(),
            r.seq_del.cpu_median(),
            r.version.median(),
        );
    }
    println!();
    println!(
        "parallel: {} ADDs by {} workers, then the {} DELs; median of {} rounds",
        args.par_n, args.par, args.par_n, args.rounds
    );
    println!(
        "{:<30} {:>14} {:>10} {:>22} {:>10} {:>14}",
        "", "ADD wall ms", "ADD/s", "per-ADD med / p95 ms", "ADD cpu", "DEL wall ms"
    );
    for (s, r) in subjects.iter().zip(&results) {
        println!(
            "{:<30} {:>14.1} {:>10.1} {:>22} {:>10.2} {:>14.1}",
            s.label,
            r.par_add_wall.as_secs_f64() * 1000.0,
            args.par_n as f64 / r.par_add_wall.as_secs_f64(),
            format!("{:.2} / {:.2}", r.par_add.median(), r.par_add.ms(0.95)),
            r.par_add.cpu_median(),
            r.par_del_wall.as_secs_f64() * 1000.0,
        );
    }
    let (reference, ours) = (&results[0], &results[1]);
    println!();
    println!("ratios, ours / reference (targets: ADD ≤ 0.33, DEL ≤ 1.0, parallel speed-up ≥ 3.0)");
    println!(
        "  ADD median          {:.3}   (CPU per ADD {:.3})",
        ours.seq_add.median() / reference.seq_add.median(),
        ours.seq_add.cpu_median() / reference.seq_add.cpu_median()
    );
    println!(
        "  DEL median          {:.3}   (CPU per DEL {:.3})",
        ours.seq_del.median() / reference.seq_del.median(),
        ours.seq_del.cpu_median() / reference.seq_del.cpu_median()
    );
    println!(
        "  parallel ADD        {:.2}x faster",
        reference.par_add_wall.as_secs_f64() / ours.par_add_wall.as_secs_f64()
    );
    println!(
        "  parallel DEL        {:.2}x faster",
        reference.par_del_wall.as_secs_f64() / ours.par_del_wall.as_secs_f64()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("  (load average at the end: {})", load.trim());
    drop(subjects);
    drop(pods);
    Ok(())
}
