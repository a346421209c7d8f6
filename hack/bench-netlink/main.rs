//! bench-netlink: programs N flannel peers through `flannel_rs::netlink` and through
//! `ip -batch`/`bridge -batch`, and prints both times and the ratio.
//!
//! Each peer is one permanent neighbour, one FDB entry (`self permanent`, distinct underlay
//! IP) and one onlink route `10.X.Y.0/24 via 10.X.Y.0 dev flannel.1` (the address scheme of
//! ../shared/bench/netlink-limit.sh). Per N and side: add all (neighbours → FDB → routes),
//! verify the counts, time a full dump of the three tables, delete all, verify nothing is
//! left. Everything happens in fresh `frs-` namespaces with `flannel.1` over a veth underlay;
//! namespaces and batch files are removed on exit, on error and on Ctrl-C.
//!
//! Usage: bench-netlink [--reps R] [--current-thread] [N ...]   (default N = 1000 5000)

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use flannel_rs::net::{Family, MacAddr};
use flannel_rs::netlink::{
    Address, Fdb, Neighbour, Netlink, Op, Route, RouteFilter, VethPair, VxlanOutcome, VxlanSpec,
};
use flannel_rs::netns::{NetnsGuard, remove_stale_test_namespaces};
use frs_testsupport::iproute;
use ipnetwork::IpNetwork;

#[derive(Parser, Debug)]
#[command(about = "flannel peer programming: flannel_rs::netlink vs ip -batch")]
struct Args {
    /// Numbers of peers to program (each = 3 kernel entries); at most 32000.
    #[arg(default_values_t = vec![1000u32, 5000])]
    peers: Vec<u32>,
    /// Repetitions per N and side (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Drive the netlink socket from a current-thread runtime instead of 2 worker threads.
    #[arg(long)]
    current_thread: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.reps >= 1, "--reps must be at least 1");
    for &n in &args.peers {
        ensure!(
            (1..=32000).contains(&n),
            "N must be 1..=32000 (10.128.0.0/9 holds 32768 /24s): {n}"
        );
    }
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-netlink must run as root (it creates network namespaces)"
    );
    remove_stale_test_namespaces();
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            res = run(&args) => res,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; namespaces and files removed"),
            _ = sigterm.recv() => bail!("terminated; namespaces and files removed"),
        }
    })
}

#[derive(Default, Clone, Copy)]
struct Times {
    add: f64,
    /// The add split by kind: neighbours, FDB entries, routes.
    add_split: [f64; 3],
    dump: f64,
    delete: f64,
}

async fn run(args: &Args) -> Result<()> {
    println!(
        "# bench-netlink: {} CPU(s), kernel {}, {}, runtime {}, {} rep(s), medians",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        uname_release(),
        tool_version().await,
        if args.current_thread {
            "current-thread"
        } else {
            "multi-thread (2 workers)"
        },
        args.reps
    );
    let work = TempDir::new()?;
    let mut rows = Vec::new();
    for &n in &args.peers {
        let files = BatchFiles::write(work.path(), n)?;
        let ours_ns = NetnsGuard::new(&format!("bench-ours-{n}"))?;
        let ip_ns = NetnsGuard::new(&format!("bench-ip-{n}"))?;
        let nl = Netlink::in_named(ours_ns.name())?;
        let fl = setup_ours(&nl)
            .await
            .context("set up flannel.1 through netlink")?;
        setup_ip(&ip_ns).await.context("set up flannel.1 with ip")?;
        let (adds, removes) = peer_ops(fl, n);

        let mut ours = Vec::new();
        let mut ip = Vec::new();
        for rep in 1..=args.reps {
            // Alternate which side goes first so drift in machine load hits both alike.
            for side in if rep % 2 == 1 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    ours.push(
                        ours_rep(&nl, &ours_ns, fl, n, &adds, &removes)
                            .await
                            .with_context(|| format!("N={n} rep {rep}: flannel_rs::netlink"))?,
                    );
                } else {
                    ip.push(
                        ip_rep(&ip_ns, n, &files)
                            .await
                            .with_context(|| format!("N={n} rep {rep}: ip -batch"))?,
                    );
                }
            }
            let (o, i) = (ours[rep - 1], ip[rep - 1]);
            eprintln!(
                "# N={n} rep {rep}: ours add {:.3} dump {:.3} del {:.3} | ip-batch add {:.3} dump {:.3} del {:.3}",
                o.add, o.dump, o.delete, i.add, i.dump, i.delete
            );
        }
        rows.push((n, median(&ours), median(&ip)));
    }

    println!();
    println!(
        "| {:>6} | {:<7} | {:>9} | {:>12} | {:>11} | {:>16} |",
        "N", "phase", "ours (s)", "ip-batch (s)", "ratio", "ours µs/entry"
    );
    println!("|-------:|:--------|----------:|-------------:|------------:|-----------------:|");
    for (n, o, i) in &rows {
        for (phase, ours, ipb) in [
            ("add", o.add, i.add),
            ("dump", o.dump, i.dump),
            ("delete", o.delete, i.delete),
        ] {
            println!(
                "| {:>6} | {:<7} | {:>9.4} | {:>12.4} | {:>11.2} | {:>16.1} |",
                n,
                phase,
                ours,
                ipb,
                ours / ipb,
                ours * 1e6 / f64::from(3 * n)
            );
        }
    }
    println!();
    println!("# add split by kind (s): neighbours / FDB / routes");
    for (n, o, i) in &rows {
        println!(
            "#   N={n}: ours {:.4} / {:.4} / {:.4}   ip-batch {:.4} / {:.4} / {:.4}",
            o.add_split[0],
            o.add_split[1],
            o.add_split[2],
            i.add_split[0],
            i.add_split[1],
            i.add_split[2]
        );
    }
    println!("# ratio = ours / ip-batch (target ≤ 1.5 for add and dump); 3 entries per peer.");
    println!(
        "# ip-batch dump = `ip route show dev flannel.1`, `ip neigh show dev flannel.1 nud permanent`,"
    );
    println!(
        "#   `bridge fdb show dev flannel.1` (3 processes, lines counted); ours = 3 dumps into typed values."
    );
    Ok(())
}

fn median(samples: &[Times]) -> Times {
    let pick = |f: fn(&Times) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Times {
        add: pick(|t| t.add),
        add_split: [
            pick(|t| t.add_split[0]),
            pick(|t| t.add_split[1]),
            pick(|t| t.add_split[2]),
        ],
        dump: pick(|t| t.dump),
        delete: pick(|t| t.delete),
    }
}

/// Peer `i` as in netlink-limit.sh: podCIDR 10.(128+i/256).(i%256).0/24 with 10.244/16
/// skipped, gateway = the .0 address, VTEP MAC 02:4e:00:00:HH:LL, public IP
/// 10.99.((i+1)/256).((i+1)%256) (never 10.99.0.1, the local VTEP).
fn peer(i: u32) -> (IpNetwork, Ipv4Addr, MacAddr, Ipv4Addr) {
    let mut x = 128 + i / 256;
    if x >= 244 {
        x += 1;
    }
    let gw = Ipv4Addr::new(10, x as u8, (i % 256) as u8, 0);
    let mac = MacAddr([0x02, 0x4e, 0, 0, (i / 256) as u8, (i % 256) as u8]);
    let p = i + 1;
    let public = Ipv4Addr::new(10, 99, (p / 256) as u8, (p % 256) as u8);
    let net = IpNetwork::new(IpAddr::V4(gw), 24).expect("/24 is a valid prefix");
    (net, gw, mac, public)
}

/// (add ops, remove ops), each split into neighbours, FDB entries and routes: the daemon
/// applies them in that order, one phase after the other.
fn peer_ops(fl: u32, n: u32) -> ([Vec<Op>; 3], [Vec<Op>; 3]) {
    let mut add = [Vec::new(), Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new(), Vec::new()];
    for i in 1..=n {
        let (net, gw, mac, public) = peer(i);
        let neigh = Neighbour {
            ifindex: fl,
            ip: gw.into(),
            mac,
        };
        let fdb = Fdb {
            ifindex: fl,
            mac,
            dst: public.into(),
        };
        let route = Route::new(net).via(gw.into()).dev(fl).onlink();
        add[0].push(Op::ReplaceNeighbour(neigh));
        add[1].push(Op::ReplaceFdb(fdb));
        add[2].push(Op::ReplaceRoute(route.clone()));
        del[0].push(Op::RemoveNeighbour(neigh));
        del[1].push(Op::RemoveFdb(fdb));
        del[2].push(Op::RemoveRoute(route));
    }
    (add, del)
}

async fn setup_ours(nl: &Netlink) -> Result<u32> {
    let ns = nl.netns();
    let under = nl
        .create_veth_with_peer_in(&VethPair {
            host_name: "nlb-under",
            peer_name: "nlb-under-p",
            peer_ns: ns,
            mtu: 1500,
            master: None,
            peer_mac: None,
            host_up: true,
        })
        .await?;
    let peer = nl
        .link_by_name("nlb-under-p")
        .await?
        .context("underlay peer missing")?;
    nl.set_link_up(peer.index).await?;
    nl.ensure_address(&Address::new(under.index, "10.99.0.1/16".parse()?))
        .await?;
    let spec = VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        local: "10.99.0.1".parse()?,
        underlay_index: Some(under.index),
        port: 8472,
        learning: false,
        gbp: false,
        mtu: None,
        mac: None,
    };
    let fl = match nl.ensure_vxlan(&spec).await? {
        VxlanOutcome::Created(link) | VxlanOutcome::Adopted(link) => link,
        VxlanOutcome::NeedsRecreate { differences, .. } => {
            bail!("fresh namespace holds an incompatible flannel.1: {differences:?}")
        }
    };
    nl.ensure_address(&Address::new(fl.index, "10.244.0.0/32".parse()?))
        .await?;
    nl.set_link_up(fl.index).await?;
    Ok(fl.index)
}

async fn setup_ip(ns: &NetnsGuard) -> Result<()> {
    for args in [
        "link add nlb-under type veth peer name nlb-under-p",
        "link set nlb-under-p up",
        "addr add 10.99.0.1/16 dev nlb-under",
        "link set nlb-under up",
        "link add flannel.1 type vxlan id 1 dstport 8472 nolearning local 10.99.0.1 dev nlb-under",
        "addr add 10.244.0.0/32 dev flannel.1",
        "link set flannel.1 up",
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        ns.ip(&args).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn ours_rep(
    nl: &Netlink,
    ns: &NetnsGuard,
    fl: u32,
    n: u32,
    adds: &[Vec<Op>; 3],
    removes: &[Vec<Op>; 3],
) -> Result<Times> {
    let n = n as usize;
    let mut add_split = [0.0; 3];
    for (phase, ops) in adds.iter().enumerate() {
        let t = Instant::now();
        let results = nl.apply(ops).await;
        add_split[phase] = secs(t.elapsed());
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err).context("add");
        }
    }
    let add = add_split.iter().sum();

    let t = Instant::now();
    let routes = nl
        .routes(&RouteFilter::main().oif(fl).family(Family::V4))
        .await?;
    let neighs = nl.neighbours(fl).await?;
    let fdbs = nl.fdb_entries(fl).await?;
    let dump = secs(t.elapsed());
    let counts = (routes.len(), neighs.len(), fdbs.len());
    ensure!(
        counts == (n, n, n),
        "our dump counted {counts:?}, want {n} each"
    );
    let seen = ip_counts(ns).await?;
    ensure!(
        seen == (n, n, n),
        "ip/bridge counted {seen:?}, want {n} each"
    );

    let mut delete = 0.0;
    for ops in removes {
        let t = Instant::now();
        let results = nl.apply(ops).await;
        delete += secs(t.elapsed());
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err).context("delete");
        }
    }
    let left = ip_counts(ns).await?;
    ensure!(left == (0, 0, 0), "entries left after delete: {left:?}");
    Ok(Times {
        add,
        add_split,
        dump,
        delete,
    })
}

async fn ip_rep(ns: &NetnsGuard, n: u32, files: &BatchFiles) -> Result<Times> {
    let n = n as usize;
    let mut add_split = [0.0; 3];
    for (phase, (tool, file)) in [
        ("ip", &files.neigh_add),
        ("bridge", &files.fdb_add),
        ("ip", &files.route_add),
    ]
    .into_iter()
    .enumerate()
    {
        let t = Instant::now();
        batch(ns, tool, file).await?;
        add_split[phase] = secs(t.elapsed());
    }
    let add = add_split.iter().sum();

    let t = Instant::now();
    let counts = ip_counts(ns).await?;
    let dump = secs(t.elapsed());
    ensure!(
        counts == (n, n, n),
        "ip/bridge counted {counts:?}, want {n} each"
    );

    let t = Instant::now();
    batch(ns, "ip", &files.neigh_del).await?;
    batch(ns, "bridge", &files.fdb_del).await?;
    batch(ns, "ip", &files.route_del).await?;
    let delete = secs(t.elapsed());
    let left = ip_counts(ns).await?;
    ensure!(left == (0, 0, 0), "entries left after delete: {left:?}");
    Ok(Times {
        add,
        add_split,
        dump,
        delete,
    })
}

async fn batch(ns: &NetnsGuard, tool: &str, file: &Path) -> Result<()> {
    Ok(iproute::batch(ns.name(), tool, file).await?)
}

async fn lines_of(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (routes, permanent neighbours, FDB entries with dst) on flannel.1, as netlink-limit.sh
/// counts them.
async fn ip_counts(ns: &NetnsGuard) -> Result<(usize, usize, usize)> {
    let name = ns.name();
    let routes = lines_of("ip", &["-n", name, "route", "show", "dev", "flannel.1"]).await?;
    let neighs = lines_of(
        "ip",
        &[
            "-n",
            name,
            "neigh",
            "show",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    )
    .await?;
    let fdbs = lines_of("bridge", &["-n", name, "fdb", "show", "dev", "flannel.1"]).await?;
    Ok((
        routes.lines().count(),
        neighs.lines().count(),
        fdbs.lines().filter(|l| l.contains(" dst ")).count(),
    ))
}

/// The six batch files for N peers.
struct BatchFiles {
    neigh_add: PathBuf,
    fdb_add: PathBuf,
    route_add: PathBuf,
    neigh_del: PathBuf,
    fdb_del: PathBuf,
    route_del: PathBuf,
}

impl BatchFiles {
    fn write(dir: &Path, n: u32) -> Result<Self> {
        let mut text: [String; 6] = Default::default();
        for i in 1..=n {
            let (net, gw, mac, public) = peer(i);
            let lines = [
                format!("neigh add {gw} lladdr {mac} dev flannel.1 nud permanent\n"),
                format!("fdb add {mac} dev flannel.1 dst {public} self permanent\n"),
                format!("route add {net} via {gw} dev flannel.1 onlink\n"),
                format!("neigh del {gw} dev flannel.1\n"),
                format!("fdb del {mac} dev flannel.1 self\n"),
                format!("route del {net} dev flannel.1\n"),
            ];
            for (buf, line) in text.iter_mut().zip(lines) {
                buf.push_str(&line);
            }
        }
        let names = [
            "neigh.add",
            "fdb.add",
            "route.add",
            "neigh.del",
            "fdb.del",
            "route.del",
        ];
        let mut paths = Vec::new();
        for (name, body) in names.iter().zip(&text) {
            let path = dir.join(format!("n{n}-{name}"));
            std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
            paths.push(path);
        }
        let mut paths = paths.into_iter();
        let mut next = || paths.next().expect("six paths");
        Ok(Self {
            neigh_add: next(),
            fdb_add: next(),
            route_add: next(),
            neigh_del: next(),
            fdb_del: next(),
            route_del: next(),
        })
    }
}

/// A private temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "frs-bench-netlink-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

async fn tool_version() -> String {
    lines_of("ip", &["-V"])
        .await
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "ip ?".into())
}
