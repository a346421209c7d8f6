//! deploy/kube-flannel-rs.yml run for real: the DaemonSet's pod (init containers, then the
//! daemon) started by podman from the image hack/image.sh builds, on node namespaces of a lab
//! whose test API server enforces the manifest's ClusterRole; containers on the nodes, wired
//! through the conflist and plugin the init containers installed, ping each other. Each test
//! owns its lab (underlay third octet 160–164); everything is removed when it ends or panics.

use std::time::{Duration, Instant};

#[path = "../deploy/manifest.rs"]
#[allow(dead_code)]
pub mod manifest;

use flannel_rs::netns::NetnsGuard;
use flannel_rs::testsupport::cluster::{PingStats, Pinger, poll};
use flannel_rs::testsupport::cni_runtime::{
    Attachment, CniRuntime, ConfList, FlannelImpl, NodeCniPaths,
};
use flannel_rs::testsupport::kube_testserver::TestServerOptions;
use flannel_rs::testsupport::lab::{Lab, LabOptions};
use flannel_rs::testsupport::topology::Host;

use crate::daemon_control::TESTSERVER;
use crate::deploy_support::{
    ContainerGuard, DaemonSetRunner, DsNode, IMAGE, Podman, Probe, hwm_kib, link_mac,
    load_manifest, routes_on, rss_kib, vtep_mac, write_role,
};

const VXLAN: &str = "flannel.1";
const PING_EVERY: Duration = Duration::from_millis(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Rig {
    // Drop order: containers (in the tests) before the lab's namespaces.
    lab: Lab,
    dir: tempfile::TempDir,
    podman: Podman,
}

fn rig(third_octet: u8) -> Rig {
    let dir = tempfile::Builder::new()
        .prefix(&format!("frs-{}-deploy-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let m = load_manifest();
    let role = write_role(&m, dir.path());
    let podman = Podman::new(dir.path());
    podman.require_image();
    let lab = Lab::new(
        LabOptions {
            tag: format!("d{third_octet}"),
            underlay: [192, 168, third_octet],
            server: TestServerOptions {
                extra_args: vec!["--flannel-role".into(), role.display().to_string()],
                ..Default::default()
            },
            ..Default::default()
        },
        TESTSERVER,
    )
    .expect("lab");
    Rig { lab, dir, podman }
}

/// A pod on a node: a network namespace wired by the installed conflist and plugin (as the
/// container runtime would call them), and a podman container living in it.
struct TestPod<'p> {
    container: ContainerGuard<'p>,
    runtime: CniRuntime,
    list: ConfList,
    attachment: Attachment,
    ip: std::net::Ipv4Addr,
    ns: NetnsGuard,
}

impl Drop for TestPod<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.del(&self.list, &self.attachment);
    }
}

/// Wires a pod on `node` through the conflist in the node's conf dir and the plugin in its
/// bin dir (what the init containers installed), then starts a podman container in it.
fn start_pod<'p>(
    runner: &DaemonSetRunner,
    podman: &'p Podman,
    node: &DsNode,
    tag: &str,
) -> TestPod<'p> {
    let m = runner.manifest;
    let conf_path = node.path("/etc/cni/net.d/10-flannel.conflist");
    let installed = std::fs::read_to_string(&conf_path)
        .unwrap_or_else(|e| panic!("{}: {e}", conf_path.display()));
    assert_eq!(
        Some(installed.as_str()),
        m.config("cni-conf.json"),
        "the installed conflist is the ConfigMap's"
    );
    let mut list = ConfList::parse(&installed).expect("conflist");
    // The node's root stands for `/`: host paths the plugin would use go under it too.
    let paths = NodeCniPaths::under(
        &node.path("/var/lib"),
        &node.path("/run/flannel/subnet.env"),
    );
    paths.localize(&mut list);
    let runtime = CniRuntime {
        node_netns: node.host.ns.path(),
        // The node's CNI bin dir first (our plugin, installed), then the distro's plugins
        // (portmap), as a node with the CNI plugins package has them.
        plugin_path: vec![node.path("/opt/cni/bin"), "/usr/lib/cni".into()],
        paths,
        flannel: FlannelImpl::Binary,
    };
    let ns = NetnsGuard::new(&format!("{}-{tag}", node.name)).expect("pod netns");
    let attachment = Attachment::pod("default", tag, &format!("{}-{tag}", node.name), &ns.path());
    let result = runtime.add(&list, &attachment).expect("CNI ADD");
    let ip: std::net::Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 in {result}"));
    let name = format!("frs-{}-{}-{tag}", std::process::id(), node.name);
    let container = ContainerGuard::new(&name, podman);
    let out = podman.output(&[
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.clone(),
        format!("--network=ns:{}", ns.path().display()),
        "--cap-add=NET_RAW".into(),
        "--entrypoint=[\"sleep\",\"infinity\"]".into(),
        IMAGE.into(),
    ]);
    assert!(
        out.status.success(),
        "podman run {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TestPod {
        container,
        runtime,
        list,
        attachment,
        ip,
        ns,
    }
}

/// `podman exec CONTAINER ping` to `to`: replies received of `count`.
fn ping_from_container(podman: &Podman, c: &ContainerGuard, to: std::net::Ipv4Addr) -> bool {
    let out = podman.output(&[
        "exec".into(),
        c.name.clone(),
        "ping".into(),
        "-c".into(),
        "3".into(),
        "-i".into(),
        "0.2".into(),
        "-W".into(),
        "2".into(),
        to.to_string(),
    ]);
    out.status.success()
}

fn wait_mesh(nodes: &[&Host], peers: usize, timeout: Duration) -> Option<Duration> {
    poll(timeout, Duration::from_millis(20), || {
        nodes
            .iter()
            .all(|h| routes_on(h, VXLAN) == peers)
            .then_some(())
    })
    .map(|(_, d)| d)
}

fn print_pings(what: &str, stats: &[PingStats]) {
    for s in stats {
        eprintln!("{what}: {s}");
    }
}

#[test]
fn deploy_manifest_three_nodes_ping_and_rolling_restart() {
    let rig = rig(160);
    let m = load_manifest();
    let runner = DaemonSetRunner::new(&m, &rig.podman, &rig.lab, rig.dir.path());
    let hosts: Vec<Host> = (1..=3)
        .map(|i| rig.lab.add_host(&format!("n{i}"), i).expect("host"))
        .collect();
    let mut nodes = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        rig.lab
            .create_node(
                &name,
                &format!("10.244.{}.0/24", i + 1),
                host.address,
                Default::default(),
            )
            .expect("node");
        nodes.push(runner.node(&name, host, rig.dir.path().join(&name)));
    }

    // The pod on every node, as the DaemonSet starts them: init containers, then the daemon.
    let start = Instant::now();
    let mut daemons = Vec::new();
    for node in &nodes {
        let out = runner
            .run_init(node)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        assert!(out.iter().all(|o| o.contains("installed")), "{out:?}");
        let started = Instant::now();
        daemons.push((started, runner.start_main(node, &[])));
    }
    // Readiness of all nodes polled together, so each figure is its own.
    let mut ready: Vec<Option<f64>> = vec![None; nodes.len()];
    poll(READY_TIMEOUT, Duration::from_millis(20), || {
        for (i, (node, (started, c))) in nodes.iter().zip(&daemons).enumerate() {
            if ready[i].is_none() {
                if let Some((200, _)) = runner.probe(node, Probe::Readiness) {
                    ready[i] = Some(started.elapsed().as_secs_f64());
                } else {
                    assert!(
                        c.state().starts_with("running"),
                        "{}: {} stopped; logs:\n{}",
                        node.name,
                        c.name,
                        c.logs()
                    );
                }
            }
        }
        ready.iter().all(Option::is_some).then_some(())
    })
    .unwrap_or_else(|| panic!("not all daemons ready: {ready:?}"));
    for (node, r) in nodes.iter().zip(&ready) {
        eprintln!(
            "{}: daemon container start → ready {:.2} s",
            node.name,
            r.unwrap_or_default()
        );
    }
    let daemons: Vec<ContainerGuard> = daemons.into_iter().map(|(_, c)| c).collect();
    for node in &nodes {
        assert_eq!(
            runner.probe(node, Probe::Liveness).map(|(c, _)| c),
            Some(200)
        );
        assert_eq!(
            runner.probe(node, Probe::Readiness).map(|(c, _)| c),
            Some(200)
        );
    }
    let host_refs: Vec<&Host> = hosts.iter().collect();
    wait_mesh(&host_refs, 2, READY_TIMEOUT).expect("full mesh");
    eprintln!(
        "3 nodes: first container start → full mesh {:.2} s",
        start.elapsed().as_secs_f64()
    );
    for (node, c) in nodes.iter().zip(&daemons) {
        let pid = c.pid().expect("daemon pid");
        eprintln!(
            "{}: daemon container RSS {} KiB (peak {} KiB)",
            node.name,
            rss_kib(pid).unwrap_or(0),
            hwm_kib(pid).unwrap_or(0)
        );
        // The MAC the daemon advertises is the device's.
        assert_eq!(vtep_mac(&rig.lab, &node.name), link_mac(node.host, VXLAN));
        // subnet.env landed in the hostPath the plugin reads.
        assert!(node.path("/run/flannel/subnet.env").is_file());
    }

    // Containers on every node, wired through what the init containers installed.
    let pods: Vec<TestPod> = nodes
        .iter()
        .map(|n| start_pod(&runner, &rig.podman, n, "p"))
        .collect();
    for a in &pods {
        for b in &pods {
            if a.ip != b.ip {
                assert!(
                    ping_from_container(&rig.podman, &a.container, b.ip),
                    "{} → {} failed",
                    a.container.name,
                    b.ip
                );
            }
        }
    }

    // Rolling restart: each node's pod replaced by a new one from the image, one node at a
    // time, while pods ping each other across nodes every 10 ms.
    let pingers: Vec<Pinger> = (0..pods.len())
        .map(|i| {
            let (a, b) = (&pods[i], &pods[(i + 1) % pods.len()]);
            Pinger::start(&a.ns, &a.container.name, b.ip, PING_EVERY).expect("ping")
        })
        .collect();
    for p in &pingers {
        assert!(p.wait_replies(20, Duration::from_secs(10)), "pings flow");
    }
    let mut restarted = Vec::new();
    for (node, old) in nodes.iter().zip(daemons) {
        old.stop();
        let out = runner
            .run_init(node)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        assert!(
            out.iter().all(|o| o.contains("unchanged")),
            "a second install writes nothing: {out:?}"
        );
        let started = Instant::now();
        let new = runner.start_main(node, &[]);
        runner
            .wait_ready(node, &new, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        eprintln!(
            "{}: restarted daemon container start → ready {:.2} s",
            node.name,
            started.elapsed().as_secs_f64()
        );
        restarted.push(new);
    }
    // A few more replies after the last restart, then the tally.
    for p in &pingers {
        let n = p.received_so_far() + 20;
        assert!(p.wait_replies(n, Duration::from_secs(10)));
    }
    let stats: Vec<PingStats> = pingers
        .into_iter()
        .map(|p| p.stop().expect("ping stats"))
        .collect();
    print_pings("rolling restart", &stats);
    for s in &stats {
        assert_eq!(s.lost, 0, "{s}");
        assert!(s.received > 0, "{s}");
    }
    drop(pods);
    drop(restarted);
}
