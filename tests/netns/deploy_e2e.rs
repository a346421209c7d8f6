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
use frs_testsupport::cluster::{PingStats, Pinger, poll};
use frs_testsupport::cni_runtime::{Attachment, CniRuntime, ConfList, FlannelImpl};
use frs_testsupport::kube_testserver::TestServerOptions;
use frs_testsupport::lab::{Lab, LabOptions};
use frs_testsupport::topology::Host;

use crate::daemon_control::testserver;
use crate::deploy_support::{
    ContainerGuard, DaemonSetRunner, DsNode, IMAGE, Podman, Probe, hwm_kib, link_mac,
    load_manifest, routes_on, rss_kib, vtep_mac, write_role,
};

const VXLAN: &str = "flannel.1";
const PING_EVERY: Duration = Duration::from_millis(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Rig {
    // Drop order: containers (in the tests), then podman's own processes, before the lab's
    // namespaces and the run's dir.
    podman: Podman,
    lab: Lab,
    dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::Builder::new()
        .prefix(&format!("frs-{}-deploy-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let m = load_manifest();
    let role = write_role(&m, dir.path());
    let podman = Podman::new(dir.path());
    podman.require_image();
    let underlay = frs_testsupport::topology::next_underlay();
    let lab = Lab::new(
        LabOptions {
            tag: format!("d{}", underlay[2]),
            underlay,
            server: TestServerOptions {
                extra_args: vec!["--flannel-role".into(), role.display().to_string()],
                ..Default::default()
            },
            ..Default::default()
        },
        testserver(),
    )
    .expect("lab");
    Rig { podman, lab, dir }
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
    let paths = node.localize(&mut list);
    let runtime = CniRuntime {
        node_netns: node.host.ns.path(),
        // The node's CNI bin dir first (our plugin, installed), then the distro's plugins
        // (portmap), as a node with the CNI plugins package has them.
        plugin_path: vec![node.path("/opt/cni/bin"), "/usr/lib/cni".into()],
        paths,
        flannel: FlannelImpl::Binary,
    };
    wire_pod(runtime, list, podman, node, tag)
}

/// ADD through `runtime`, then a podman container in the pod's namespace.
fn wire_pod<'p>(
    runtime: CniRuntime,
    list: ConfList,
    podman: &'p Podman,
    node: &DsNode,
    tag: &str,
) -> TestPod<'p> {
    let ns = NetnsGuard::new(&format!("{}-{tag}", node.name)).expect("pod netns");
    let attachment = Attachment::pod("default", tag, &format!("{}-{tag}", node.name), &ns.path());
    let result = runtime.add(&list, &attachment).expect("CNI ADD");
    let ip: std::net::Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 in {result}"));
    let name = podman.name(&format!("{}-{tag}", node.name));
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

/// Waits for the container to stop, checks it failed (non-zero exit), returns its state line
/// and its log.
fn failed_run(c: &ContainerGuard<'_>) -> (String, String) {
    let (state, _) = poll(READY_TIMEOUT, Duration::from_millis(50), || {
        let s = c.state();
        (!s.starts_with("running") && !s.starts_with("created")).then_some(s)
    })
    .expect("the daemon exits");
    assert!(
        (state.starts_with("exited") || state.starts_with("stopped")) && !state.ends_with(" 0"),
        "{state}"
    );
    (state, c.logs())
}

/// Waits for `more` replies on every pinger, stops them, prints the tallies and checks that
/// none lost a packet.
fn no_ping_lost(pingers: Vec<Pinger>, more: u64, what: &str) {
    for p in &pingers {
        let n = p.received_so_far() + more;
        assert!(p.wait_replies(n, Duration::from_secs(10)));
    }
    for p in pingers {
        let s: PingStats = p.stop().expect("ping stats");
        eprintln!("{what}: {s}");
        assert_eq!(s.lost, 0, "{s}");
        assert!(s.received > 0, "{s}");
    }
}

#[test]
fn deploy_manifest_three_nodes_ping_and_rolling_restart() {
    let rig = rig();
    let m = load_manifest();
    let size = rig.podman.output(&[
        "image".into(),
        "inspect".into(),
        "--format".into(),
        "{{.Size}}".into(),
        IMAGE.into(),
    ]);
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("image size");
    eprintln!(
        "image {IMAGE}: {:.1} MiB uncompressed",
        size as f64 / (1024.0 * 1024.0)
    );
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

    // One command on a node: the daemon's own binary in its pod, with only the pod's
    // environment (in-cluster config, POD_NAME): a healthy mesh, exit 0.
    let out = rig.podman.output(&[
        "exec".into(),
        daemons[0].name.clone(),
        "/opt/bin/flanneld".into(),
        "diagnose".into(),
        "--json".into(),
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{doc}");
    assert_eq!(doc["node"], "node-1", "{doc}");
    assert_eq!(doc["peers"].as_array().map(Vec::len), Some(2), "{doc}");

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
    no_ping_lost(pingers, 20, "rolling restart");
    drop(pods);
    drop(restarted);
}

/// What upstream flannel leaves on a node it ran on: the device with its MAC, the node's
/// subnet address, each peer's neighbour, FDB entry and route, subnet.env.
fn plant_upstream_node(node: &DsNode, subnet: u8, mac: &str, peers: &[(u8, String, String)]) {
    let ip = |args: &[&str]| {
        node.host
            .ns
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
    };
    crate::daemon_data::plant_device(&node.host.ns, node.host.address, Some(mac));
    ip(&["link", "set", VXLAN, "mtu", "1450"]);
    ip(&[
        "addr",
        "add",
        &format!("10.244.{subnet}.0/32"),
        "dev",
        VXLAN,
    ]);
    for (peer_subnet, peer_mac, peer_ip) in peers {
        let gw = format!("10.244.{peer_subnet}.0");
        ip(&[
            "neigh",
            "add",
            &gw,
            "lladdr",
            peer_mac,
            "dev",
            VXLAN,
            "nud",
            "permanent",
        ]);
        node.host
            .ns
            .command("bridge")
            .args([
                "fdb",
                "append",
                peer_mac,
                "dev",
                VXLAN,
                "dst",
                peer_ip,
                "self",
                "permanent",
            ])
            .status()
            .expect("bridge fdb");
        ip(&[
            "route",
            "add",
            &format!("10.244.{peer_subnet}.0/24"),
            "via",
            &gw,
            "dev",
            VXLAN,
            "onlink",
        ]);
    }
    let env = node.path("/run/flannel/subnet.env");
    std::fs::create_dir_all(env.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &env,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{subnet}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        ),
    )
    .expect("subnet.env");
}

/// A pod wired by upstream's plugin chain (flannel → reference bridge + host-local), with the
/// stock conflist, as on a node upstream flannel served.
fn start_upstream_pod<'p>(
    runner: &DaemonSetRunner,
    podman: &'p Podman,
    node: &DsNode,
    tag: &str,
) -> TestPod<'p> {
    let mut list = ConfList::parse(runner.manifest.config("cni-conf.json").expect("conflist"))
        .expect("conflist");
    let paths = node.localize(&mut list);
    let runtime = CniRuntime {
        node_netns: node.host.ns.path(),
        plugin_path: vec!["/usr/lib/cni".into()],
        paths,
        flannel: FlannelImpl::UpstreamDelegation,
    };
    wire_pod(runtime, list, podman, node, tag)
}

#[test]
fn deploy_manifest_takes_over_a_node_left_by_upstream() {
    let rig = rig();
    let m = load_manifest();
    let runner = DaemonSetRunner::new(&m, &rig.podman, &rig.lab, rig.dir.path());
    let hosts: Vec<Host> = (1..=3)
        .map(|i| rig.lab.add_host(&format!("n{i}"), i).expect("host"))
        .collect();
    // node-3 was served by upstream flannel: its annotations carry the MAC of its device.
    let upstream_mac = "0e:5a:3c:00:00:03";
    for (i, host) in hosts.iter().enumerate() {
        let annotations = if i == 2 {
            frs_testsupport::lab::peer_annotations(upstream_mac, &host.address.to_string())
        } else {
            Default::default()
        };
        rig.lab
            .create_node(
                &format!("node-{}", i + 1),
                &format!("10.244.{}.0/24", i + 1),
                host.address,
                annotations,
            )
            .expect("node");
    }
    let nodes: Vec<DsNode> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = format!("node-{}", i + 1);
            runner.node(&name, h, rig.dir.path().join(&name))
        })
        .collect();
    let mut daemons = Vec::new();
    for node in &nodes[..2] {
        runner
            .run_init(node)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        let c = runner.start_main(node, &[]);
        runner
            .wait_ready(node, &c, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        daemons.push(c);
    }
    let peers: Vec<(u8, String, String)> = nodes[..2]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                i as u8 + 1,
                vtep_mac(&rig.lab, &n.name).expect("peer MAC"),
                n.host.address.to_string(),
            )
        })
        .collect();
    plant_upstream_node(&nodes[2], 3, upstream_mac, &peers);
    let host_refs: Vec<&Host> = hosts.iter().collect();
    wait_mesh(&host_refs, 2, READY_TIMEOUT).expect("mesh with the upstream node");

    let upstream_pod = start_upstream_pod(&runner, &rig.podman, &nodes[2], "u");
    let pods: Vec<TestPod> = nodes[..2]
        .iter()
        .map(|n| start_pod(&runner, &rig.podman, n, "p"))
        .collect();
    for p in &pods {
        assert!(ping_from_container(
            &rig.podman,
            &p.container,
            upstream_pod.ip
        ));
        assert!(ping_from_container(
            &rig.podman,
            &upstream_pod.container,
            p.ip
        ));
    }
    let mut pingers = vec![
        Pinger::start(
            &upstream_pod.ns,
            &upstream_pod.container.name,
            pods[0].ip,
            PING_EVERY,
        )
        .expect("ping"),
    ];
    for p in &pods {
        pingers.push(
            Pinger::start(&p.ns, &p.container.name, upstream_pod.ip, PING_EVERY).expect("ping"),
        );
    }
    for p in &pingers {
        assert!(p.wait_replies(20, Duration::from_secs(10)), "pings flow");
    }

    // The image swap on node-3: our DaemonSet pod takes over what upstream left.
    let started = Instant::now();
    let out = runner
        .run_init(&nodes[2])
        .unwrap_or_else(|e| panic!("node-3: {e}"));
    assert!(out.iter().all(|o| o.contains("installed")), "{out:?}");
    let takeover = runner.start_main(&nodes[2], &[]);
    runner
        .wait_ready(&nodes[2], &takeover, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("node-3: {e}"));
    eprintln!(
        "node-3: takeover, container start → ready {:.2} s",
        started.elapsed().as_secs_f64()
    );
    no_ping_lost(pingers, 50, "upstream takeover");
    assert_eq!(
        link_mac(nodes[2].host, VXLAN).as_deref(),
        Some(upstream_mac)
    );
    assert_eq!(vtep_mac(&rig.lab, "node-3").as_deref(), Some(upstream_mac));
    // A new pod on the taken-over node, wired by our plugin, reaches the others.
    let ours = start_pod(&runner, &rig.podman, &nodes[2], "q");
    for p in &pods {
        assert!(ping_from_container(&rig.podman, &ours.container, p.ip));
    }
    assert!(ping_from_container(
        &rig.podman,
        &ours.container,
        upstream_pod.ip
    ));
    drop(ours);
    drop(pods);
    drop(upstream_pod);
    drop(takeover);
    drop(daemons);
}

#[test]
fn deploy_manifest_bad_input_fails_clearly_and_leaves_the_node_alone() {
    let rig = rig();
    let m = load_manifest();
    let runner = DaemonSetRunner::new(&m, &rig.podman, &rig.lab, rig.dir.path());
    let host = rig.lab.add_host("n1", 1).expect("host");
    rig.lab
        .create_node("node-1", "10.244.1.0/24", host.address, Default::default())
        .expect("node");
    let node = runner.node("node-1", &host, rig.dir.path().join("node-1"));
    runner.run_init(&node).expect("init");
    let conflist = node.path("/etc/cni/net.d/10-flannel.conflist");
    let before = std::fs::metadata(&conflist)
        .and_then(|m| m.modified())
        .expect("mtime");

    // A broken cni-conf.json: the install step fails with one line, the conflist stays.
    runner.set_config(
        "cni-conf.json",
        r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"portmap"}]}"#,
    );
    let err = runner
        .run_init(&node)
        .expect_err("a bad conflist must fail");
    eprintln!("bad cni-conf.json: {err}");
    assert!(
        err.contains("install-cni") && err.contains("expected \"flannel\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(&conflist).ok().as_deref(),
        m.config("cni-conf.json")
    );
    assert_eq!(
        std::fs::metadata(&conflist).and_then(|m| m.modified()).ok(),
        Some(before)
    );
    runner.set_config(
        "cni-conf.json",
        m.config("cni-conf.json").expect("conflist"),
    );

    // A broken net-conf.json: the daemon exits with one line naming the field, and has done
    // nothing on the node.
    runner.set_config(
        "net-conf.json",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}"#,
    );
    let c = runner.start_main(&node, &[]);
    let (state, logs) = failed_run(&c);
    eprintln!("bad net-conf.json: {state}: {}", logs.trim());
    assert_eq!(logs.trim().lines().count(), 1, "{logs}");
    assert!(logs.contains("VNI"), "{logs}");
    assert!(host.ns.ip(&["link", "show", VXLAN]).is_err(), "no device");
    assert!(!node.path("/run/flannel/subnet.env").exists());
    drop(c);
    runner.set_config(
        "net-conf.json",
        m.config("net-conf.json").expect("net-conf"),
    );

    // Without NET_ADMIN: a clear error naming the capability, nothing done.
    let c = runner.start_main(&node, &["NET_ADMIN"]);
    let (state, logs) = failed_run(&c);
    eprintln!("no NET_ADMIN: {state}:\n{}", logs.trim());
    assert!(logs.contains("NET_ADMIN"), "{logs}");
    assert_eq!(logs.trim().lines().count(), 1, "{logs}");
    assert!(host.ns.ip(&["link", "show", VXLAN]).is_err(), "no device");
    drop(c);

    // With the manifest as shipped the same node comes up.
    let c = runner.start_main(&node, &[]);
    runner
        .wait_ready(&node, &c, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}
