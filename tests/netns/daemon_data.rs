//! flanneld's data plane against the real kernel: the real binary in node namespaces of the
//! lab, the test API server as the cluster, and every check through an independent view of
//! the kernel (`ip -json`, `bridge -json`, `ip monitor`, `iptables -S`, `tcpdump`).
//!
//! Each test uses its own underlay /24 (`next_underlay`) and its own namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use frs_testsupport::kube_testserver::Fault;
use frs_testsupport::lab::{Flanneld, Lab, peer_annotations};
use frs_testsupport::topology::Host;

use crate::daemon_control::{FLANNELD, lab};
use crate::harness::*;

const P: &str = "flannel.alpha.coreos.com/";
const DEV: &str = "flannel.1";

// ---------------------------------------------------------------------------------------------
// The kernel's view, via iproute2.

/// Everything on flannel.1 as iproute2 reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Entries {
    /// (gateway IP, MAC)
    neigh: BTreeSet<(String, String)>,
    /// (MAC, underlay destination)
    fdb: BTreeSet<(String, String)>,
    /// (destination, gateway)
    routes: BTreeSet<(String, String)>,
}

impl Entries {
    /// Adds the three entries upstream programs for a peer (upstream's pkg/backend/vxlan).
    fn add_peer(&mut self, pod_cidr: &str, mac: &str, public_ip: &str) {
        let net: Ipv4Network = pod_cidr.parse().expect("peer podCIDR");
        let gw = net.network().to_string();
        let dst = format!("{}/{}", net.network(), net.prefix());
        self.neigh.insert((gw.clone(), mac.to_string()));
        self.fdb.insert((mac.to_string(), public_ip.to_string()));
        self.routes.insert((dst, gw));
    }

    fn counts(&self) -> (usize, usize, usize) {
        (self.neigh.len(), self.fdb.len(), self.routes.len())
    }

    fn peer(pod_cidr: &str, mac: &str, public_ip: &str) -> Entries {
        let mut e = Entries::default();
        e.add_peer(pod_cidr, mac, public_ip);
        e
    }
}

pub(crate) fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// Reads neighbours, FDB entries and main-table routes on flannel.1, and checks that every one
/// of them has exactly the attributes flannel gives its own (permanent neighbour; permanent
/// `self` FDB entry; onlink unicast route, proto boot, scope global) — anything else on the
/// device is reported as a foreign entry.
fn kernel_entries(ns: &NetnsGuard) -> Entries {
    let mut e = Entries::default();
    for n in ip_json(ns, &["neigh", "show", "dev", DEV])
        .as_array()
        .unwrap()
    {
        assert_eq!(
            n["state"],
            json!(["PERMANENT"]),
            "foreign neighbour on {DEV}: {n}"
        );
        e.neigh.insert((str_of(&n["dst"]), str_of(&n["lladdr"])));
    }
    for f in bridge_json(ns, &["fdb", "show", "dev", DEV])
        .as_array()
        .unwrap()
    {
        assert!(
            f["flags"] == json!(["self"]) && f["state"] == "permanent",
            "foreign fdb entry on {DEV}: {f}"
        );
        e.fdb.insert((str_of(&f["mac"]), str_of(&f["dst"])));
    }
    for r in ip_json(ns, &["-d", "route", "show", "dev", DEV])
        .as_array()
        .unwrap()
    {
        assert!(
            r["flags"] == json!(["onlink"])
                && r["protocol"] == "boot"
                && r["scope"] == "global"
                && r["type"] == "unicast",
            "foreign route on {DEV}: {r}"
        );
        e.routes.insert((str_of(&r["dst"]), str_of(&r["gateway"])));
    }
    e
}

/// Waits until flannel.1 holds exactly `want`; on timeout, shows the difference.
fn wait_entries(ns: &NetnsGuard, want: &Entries, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let have = kernel_entries(ns);
        if &have == want {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            let extra = |h: &BTreeSet<(String, String)>, w: &BTreeSet<(String, String)>| {
                h.difference(w).cloned().collect::<Vec<_>>()
            };
            panic!(
                "{DEV} in {} did not converge in {timeout:?}\n\
                 missing neigh {:?}\n  extra neigh {:?}\n\
                 missing fdb {:?}\n  extra fdb {:?}\n\
                 missing routes {:?}\n  extra routes {:?}",
                ns.name(),
                extra(&want.neigh, &have.neigh),
                extra(&have.neigh, &want.neigh),
                extra(&want.fdb, &have.fdb),
                extra(&have.fdb, &want.fdb),
                extra(&want.routes, &have.routes),
                extra(&have.routes, &want.routes),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The entries every flannel peer in the API should produce on `own`'s node, computed from
/// the Node objects alone (podCIDR, backend-data VtepMAC, public-ip).
fn expected_from_api(lab: &Lab, own: &str) -> Entries {
    let nodes: Vec<Node> = lab
        .kube(|c| async move {
            Api::<Node>::all(c)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
        })
        .unwrap();
    let mut want = Entries::default();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(own) {
            continue;
        }
        let a = n.metadata.annotations.unwrap_or_default();
        let Some(data) = a.get(&format!("{P}backend-data")) else {
            continue;
        };
        let data: Value = serde_json::from_str(data).unwrap();
        let cidr = n.spec.unwrap().pod_cidr.unwrap();
        want.add_peer(
            &cidr,
            data["VtepMAC"].as_str().unwrap(),
            &a[&format!("{P}public-ip")],
        );
    }
    want
}

// ---------------------------------------------------------------------------------------------
// The daemon and its lab.

pub(crate) fn start(lab: &Lab, host: &Host, node: &str, args: &[&str]) -> Flanneld {
    let mut d = lab.start_flanneld(FLANNELD, host, node, args).unwrap();
    d.wait_ready(Duration::from_secs(30)).unwrap();
    d
}

/// One sample of the daemon's Prometheus text (a full series name, labels included).
pub(crate) fn metric(d: &Flanneld, series: &str) -> u64 {
    let (code, body) = d.health("/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().expect("metric value") as u64)
        })
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{body}"))
}

fn status(d: &Flanneld) -> Value {
    d.status().expect("GET /status on the status socket")
}

/// A lab with node `n1` (10.244.1.0/24, underlay .1, no annotations yet) and its host.
fn lab_with_n1(tag: &str) -> (Lab, Host) {
    let lab = lab(tag);
    let host = lab.add_host(&format!("{tag}-n1"), 1).unwrap();
    lab.create_node("n1", "10.244.1.0/24", host.address, BTreeMap::new())
        .unwrap();
    (lab, host)
}

/// A synthetic peer `name` with podCIDR `cidr`, VTEP MAC and public IP (data only; nothing
/// answers on that IP, which programming does not need).
fn synthetic_peer(lab: &Lab, name: &str, cidr: &str, mac: &str, ip: &str) -> Entries {
    lab.create_node(name, cidr, ip.parse().unwrap(), peer_annotations(mac, ip))
        .unwrap();
    Entries::peer(cidr, mac, ip)
}

/// Peer `n<i>`: podCIDR 10.244.<i>.0/24, VTEP MAC 0e:00:00:00:00:<i>, public IP 172.20.0.<i>.
fn numbered_peer(lab: &Lab, i: u8) -> Entries {
    synthetic_peer(
        lab,
        &format!("n{i}"),
        &format!("10.244.{i}.0/24"),
        &format!("0e:00:00:00:00:{i:02x}"),
        &format!("172.20.0.{i}"),
    )
}

/// `count` (≤ 128) generated peers `peer-00000…` with /24 podCIDRs from 10.244.128.0/17 and
/// public IPs from 172.20.0.0/16.
fn generate_peers(lab: &Lab, count: u32) {
    generate_peers_sized(lab, count, 24);
}

/// Like [`generate_peers`] with podCIDRs of `/prefix_len` (26 → up to 512 peers).
fn generate_peers_sized(lab: &Lab, count: u32, prefix_len: u8) {
    lab.server
        .generate_nodes(&json!({
            "count": count,
            "realistic": false,
            "prefix": "peer-",
            "podCidrBase": "10.244.128.0/17",
            "podCidrPrefixLen": prefix_len,
            "nodeIpBase": "172.20.0.0/16",
        }))
        .unwrap();
}

/// The next `pages` list requests for Nodes take 300 ms more each: a page's pass surely runs
/// before the daemon's next page arrives.
fn slow_down_list_pages(lab: &Lab, pages: u64) {
    lab.server
        .inject_fault(
            &Fault::latency(Duration::from_millis(300))
                .verb("list")
                .resource("nodes")
                .times(pages),
        )
        .unwrap();
}

/// A `flannel.1` as a daemon that ran here before left it (up; `mac` if given).
pub(crate) fn plant_device(ns: &NetnsGuard, local: Ipv4Addr, mac: Option<&str>) {
    let local = local.to_string();
    let mut args = vec!["link", "add", DEV];
    if let Some(mac) = mac {
        args.extend(["address", mac]);
    }
    args.extend([
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&args).unwrap();
    ns.ip(&["link", "set", DEV, "up"]).unwrap();
}

/// A peer's neighbour and route on `flannel.1` as a daemon that ran here before left them.
fn plant_peer(ns: &NetnsGuard, cidr: &str, mac: &str) {
    let net: Ipv4Network = cidr.parse().unwrap();
    let gw = net.network().to_string();
    ns.ip(&[
        "neigh",
        "add",
        &gw,
        "lladdr",
        mac,
        "dev",
        DEV,
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip(&["route", "add", cidr, "via", &gw, "dev", DEV, "onlink"])
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// `ip monitor` as a witness of every change on the node.

struct IpMonitor {
    child: Child,
    out: PathBuf,
    marker: u8,
}

impl IpMonitor {
    /// Starts `ip monitor link neigh route` in the node namespace (neigh includes the AF_BRIDGE
    /// FDB entries) and returns once it is provably listening.
    fn start(lab: &Lab, ns: &NetnsGuard) -> IpMonitor {
        let out = lab.dir.path().join(format!("monitor-{}.txt", ns.name()));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("ip")
            .args(["-n", ns.name(), "monitor", "link", "neigh", "route"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        let mut m = IpMonitor {
            child,
            out,
            marker: 0,
        };
        m.sync(ns);
        m
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Makes a change nobody else makes (a /32 route on eth0 in TEST-NET-2, added and removed)
    /// and waits until the monitor printed it: every earlier event has then been captured.
    /// A freshly spawned `ip monitor` may not have subscribed yet when the first marker goes
    /// by, so a marker that does not show up soon is followed by a new one.
    fn sync(&mut self, ns: &NetnsGuard) {
        let started = Instant::now();
        loop {
            self.marker += 1;
            assert!(self.marker < 250, "ran out of marker addresses");
            let dst = format!("198.51.100.{}", self.marker);
            ns.ip(&["route", "add", &dst, "dev", "eth0"]).unwrap();
            ns.ip(&["route", "del", &dst, "dev", "eth0"]).unwrap();
            let deleted = format!("Deleted {dst} dev eth0");
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(500) {
                if self.text().contains(&deleted) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ip monitor never printed a marker route in 10 s"
            );
        }
    }

    /// Lines that concern flannel.1 (link, neighbour, FDB or route events).
    fn device_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(&format!("dev {DEV} ")) || l.contains(&format!(": {DEV}:")))
            // The kernel's own routes (IPv6 link-local once DAD is done) are no one's change.
            .filter(|l| !l.contains("proto kernel"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for IpMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn fifty_peers_get_exactly_their_entries_and_nothing_else() {
    let (lab, host) = lab_with_n1("dd1");
    generate_peers(&lab, 50);
    let want = expected_from_api(&lab, "n1");
    assert_eq!(want.counts(), (50, 50, 50));
    let routes_before = ip_json(&host.ns, &["route", "show"]);

    let d = start(&lab, &host, "n1", &[]);
    let took = wait_entries(&host.ns, &want, Duration::from_secs(10));
    println!(
        "50 peers programmed {:.0} ms after ready",
        took.as_secs_f64() * 1e3
    );

    // The device as upstream makes it (upstream's pkg/backend/vxlan).
    let link = &ip_json(&host.ns, &["-d", "link", "show", DEV])[0];
    let vx = &link["linkinfo"]["info_data"];
    assert_eq!(link["mtu"], 1450, "{link}");
    assert_eq!(vx["id"], 1, "{link}");
    assert_eq!(vx["port"], 8472, "{link}");
    assert_eq!(vx["local"], host.address.to_string(), "{link}");
    assert_eq!(vx["learning"], false, "{link}");
    assert!(link["flags"].as_array().unwrap().contains(&json!("UP")));
    let addrs: Vec<String> = ip_json(&host.ns, &["-4", "addr", "show", "dev", DEV])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", str_of(&a["local"]), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, ["10.244.1.0/32"]);

    // Nothing outside flannel.1: the main table gained exactly the 50 peer routes.
    let routes_after = ip_json(&host.ns, &["route", "show"]);
    let before: BTreeSet<String> = routes_before
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    let gained: Vec<&Value> = routes_after
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !before.contains(&r.to_string()))
        .collect();
    assert_eq!(gained.len(), 50, "{gained:#?}");
    assert!(gained.iter().all(|r| r["dev"] == DEV));
    assert_eq!(
        status(&d)["last_reconcile"]["peers"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    assert_eq!(metric(&d, "flannel_peers_programmed"), 50);
}

#[test]
fn a_peer_changing_mac_or_public_ip_is_updated_in_place() {
    let (lab, host) = lab_with_n1("dd2");
    let mut want = numbered_peer(&lab, 2);
    let n3 = numbered_peer(&lab, 3);
    want.neigh.extend(n3.neigh.clone());
    want.fdb.extend(n3.fdb.clone());
    want.routes.extend(n3.routes.clone());
    let _d = start(&lab, &host, "n1", &[]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    let mut monitor = IpMonitor::start(&lab, &host.ns);

    // New VTEP MAC (the peer recreated its device).
    lab.patch_annotations(
        "n2",
        json!({format!("{P}backend-data"): r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:22"}"#}),
    )
    .unwrap();
    let mut after_mac = Entries::peer("10.244.2.0/24", "0e:00:00:00:00:22", "172.20.0.2");
    after_mac.neigh.extend(n3.neigh.clone());
    after_mac.fdb.extend(n3.fdb.clone());
    after_mac.routes.extend(n3.routes.clone());
    let took = wait_entries(&host.ns, &after_mac, Duration::from_secs(10));
    println!(
        "MAC change applied after {:.0} ms",
        took.as_secs_f64() * 1e3
    );

    // New public IP (the peer moved).
    lab.patch_annotations("n2", json!({format!("{P}public-ip"): "172.20.0.222"}))
        .unwrap();
    let mut after_ip = Entries::peer("10.244.2.0/24", "0e:00:00:00:00:22", "172.20.0.222");
    after_ip.neigh.extend(n3.neigh.clone());
    after_ip.fdb.extend(n3.fdb.clone());
    after_ip.routes.extend(n3.routes.clone());
    let took = wait_entries(&host.ns, &after_ip, Duration::from_secs(10));
    println!(
        "public IP change applied after {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    monitor.sync(&host.ns);

    // In place: the route and the neighbour of n2 were never deleted (no gap for traffic), only
    // the FDB entry of the old MAC went; n3 was not touched at all.
    let lines = monitor.device_lines();
    println!(
        "monitor on n1 during the changes:\n  {}",
        lines.join("\n  ")
    );
    let deleted: Vec<&String> = lines.iter().filter(|l| l.starts_with("Deleted")).collect();
    assert!(
        deleted
            .iter()
            .all(|l| l.contains("lladdr 0e:00:00:00:00:02") || l.contains("0e:00:00:00:00:02 ")),
        "only the old MAC's FDB entry may be deleted: {lines:#?}"
    );
    assert!(
        deleted.iter().any(|l| l.contains("0e:00:00:00:00:02")),
        "the old MAC's FDB entry was removed: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("10.244.3.0") || l.contains("0e:00:00:00:00:03")),
        "n3 untouched: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("Deleted 10.244.2.0/24")),
        "route kept: {lines:#?}"
    );
}

#[test]
fn a_deleted_nodes_entries_go() {
    let (lab, host) = lab_with_n1("dd3");
    let n2 = numbered_peer(&lab, 2);
    let n3 = numbered_peer(&lab, 3);
    let mut both = n2.clone();
    both.neigh.extend(n3.neigh);
    both.fdb.extend(n3.fdb);
    both.routes.extend(n3.routes);
    let d = start(&lab, &host, "n1", &[]);
    wait_entries(&host.ns, &both, Duration::from_secs(10));

    lab.delete_node("n3").unwrap();
    let took = wait_entries(&host.ns, &n2, Duration::from_secs(10));
    println!(
        "deleted node's entries gone after {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(metric(&d, "flannel_peers_programmed"), 1);
}

#[test]
fn entries_deleted_or_changed_by_hand_are_restored_within_a_second() {
    let (lab, host) = lab_with_n1("dd4");
    generate_peers(&lab, 10);
    let want = expected_from_api(&lab, "n1");
    // A resync period of an hour: only the kernel monitor can explain a fast repair.
    let d = start(&lab, &host, "n1", &["--resync-period=1h"]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    let (gw, _) = want.neigh.iter().next().cloned().unwrap();
    let (route_dst, _) = want.routes.iter().next().cloned().unwrap();
    let (fdb_mac, fdb_dst) = want.fdb.iter().next().cloned().unwrap();
    let repairs_before = metric(&d, "flannel_drift_repairs_total");
    assert_eq!(repairs_before, 0, "nothing to repair at start");

    let mut report = Vec::new();
    let mut tamper = |what: &str, args: &[&str], bridge: bool| {
        let repairs = metric(&d, "flannel_drift_repairs_total");
        let start = Instant::now();
        if bridge {
            let out = Command::new("bridge")
                .args(["-n", host.ns.name()])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "bridge {args:?}: {out:?}");
        } else {
            host.ns.ip(args).unwrap();
        }
        // The repair can beat a re-read of the tables; the daemon's repair counter proves
        // that the change had an effect and was undone by the daemon.
        wait_entries(&host.ns, &want, Duration::from_secs(1));
        let took = start.elapsed();
        wait_until(
            &format!("{what} counted as a drift repair"),
            Duration::from_secs(1),
            || metric(&d, "flannel_drift_repairs_total") > repairs,
        );
        assert!(
            took < Duration::from_secs(1),
            "{what}: restored after {took:?}"
        );
        report.push(format!(
            "{what}: restored in {:.1} ms",
            took.as_secs_f64() * 1e3
        ));
    };
    tamper(
        "ip route del",
        &["route", "del", &route_dst, "dev", DEV],
        false,
    );
    tamper("ip neigh del", &["neigh", "del", &gw, "dev", DEV], false);
    tamper(
        "bridge fdb del",
        &["fdb", "del", &fdb_mac, "dev", DEV, "dst", &fdb_dst, "self"],
        true,
    );
    tamper(
        "ip neigh replace (wrong MAC)",
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            "0e:66:66:66:66:66",
            "dev",
            DEV,
            "nud",
            "permanent",
        ],
        false,
    );
    tamper(
        "ip route add (foreign route on flannel.1)",
        &[
            "route",
            "add",
            "10.244.77.0/24",
            "via",
            "10.244.77.0",
            "dev",
            DEV,
            "onlink",
        ],
        false,
    );
    tamper(
        "bridge fdb add (foreign entry)",
        &[
            "fdb",
            "add",
            "0e:66:66:66:66:67",
            "dev",
            DEV,
            "dst",
            "172.20.9.9",
            "self",
            "permanent",
        ],
        true,
    );
    for line in &report {
        println!("{line}");
    }
    assert!(
        metric(&d, "flannel_drift_repairs_total") >= repairs_before + 6,
        "drift repairs counted"
    );
}

#[test]
fn stale_entries_present_at_start_up_are_removed() {
    let (lab, host) = lab_with_n1("dd5");
    let n2 = numbered_peer(&lab, 2);
    // What a daemon that was down while n9 was deleted and n2 recreated its device leaves: a
    // flannel.1 of ours with n9's entries and n2's outdated MAC.
    let ns = &host.ns;
    plant_device(ns, host.address, Some("0e:aa:00:00:00:01"));
    plant_peer(ns, "10.244.9.0/24", "0e:00:00:00:00:09");
    plant_peer(ns, "10.244.2.0/24", "0e:00:00:00:00:f2");
    for args in [
        // Someone else's, outside flannel.1: must survive.
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            &lab.switch.address(7).to_string(),
            "dev",
            "eth0",
        ][..],
        &[
            "neigh",
            "add",
            &lab.switch.address(8).to_string(),
            "lladdr",
            "0e:bb:00:00:00:08",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        ns.ip(args).unwrap();
    }
    for (mac, dst) in [
        ("0e:00:00:00:00:09", "172.20.0.9"),
        ("0e:00:00:00:00:f2", "172.20.0.2"),
    ] {
        let out = Command::new("bridge")
            .args([
                "-n",
                ns.name(),
                "fdb",
                "add",
                mac,
                "dev",
                DEV,
                "dst",
                dst,
                "self",
                "permanent",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let index_before = ip_json(ns, &["link", "show", DEV])[0]["ifindex"].clone();

    let _d = start(&lab, &host, "n1", &[]);
    wait_entries(ns, &n2, Duration::from_secs(10));
    let link = &ip_json(ns, &["link", "show", DEV])[0];
    assert_eq!(
        link["ifindex"], index_before,
        "device adopted, not recreated"
    );
    assert_eq!(link["address"], "0e:aa:00:00:00:01", "existing MAC kept");
    let published = lab.get_node("n1").unwrap().metadata.annotations.unwrap();
    assert_eq!(
        published[&format!("{P}backend-data")],
        r#"{"VNI":1,"VtepMAC":"0e:aa:00:00:00:01"}"#
    );
    assert!(
        ns.ip(&["route", "show", "10.99.0.0/24"])
            .unwrap()
            .contains("dev eth0"),
        "foreign route survived"
    );
    assert!(
        ns.ip(&["neigh", "show", "dev", "eth0"])
            .unwrap()
            .contains("0e:bb:00:00:00:08"),
        "foreign neighbour survived"
    );
}

/// One hostile or broken node: its name, how it deviates from a valid peer, and the rejection
/// kind the daemon must report.
struct Hostile {
    name: &'static str,
    cidr: &'static str,
    mac: String,
    ip: String,
    backend_data: Option<&'static str>,
    kind: &'static str,
}

#[test]
fn hostile_peers_leave_no_entry_while_a_good_peer_stays_reachable() {
    let lab = lab("dd6");
    let h1 = lab.add_host("dd6-n1", 1).unwrap();
    let h2 = lab.add_host("dd6-n2", 2).unwrap();
    lab.create_node("n1", "10.244.1.0/24", h1.address, BTreeMap::new())
        .unwrap();
    lab.create_node("n2", "10.244.2.0/24", h2.address, BTreeMap::new())
        .unwrap();
    let _d2 = start(&lab, &h2, "n2", &[]);
    let d1 = start(&lab, &h1, "n1", &[]);
    let n2_mac = lab.get_node("n2").unwrap().metadata.annotations.unwrap()
        [&format!("{P}backend-data")]
        .clone();
    let n2_mac: Value = serde_json::from_str(&n2_mac).unwrap();
    let n2_mac = n2_mac["VtepMAC"].as_str().unwrap().to_string();
    let good = Entries::peer("10.244.2.0/24", &n2_mac, &h2.address.to_string());
    wait_entries(&h1.ns, &good, Duration::from_secs(10));
    let mut monitor = IpMonitor::start(&lab, &h1.ns);
    // creationTimestamps have one-second resolution: make the overlapping newcomer provably
    // younger than n2 (its name sorts first, so only age can protect n2).
    std::thread::sleep(Duration::from_millis(1100));

    let ip = |k: u8| format!("172.20.1.{k}");
    let hostile = vec![
        Hostile {
            name: "h-own-subnet",
            cidr: "10.244.1.0/24",
            mac: "0e:00:00:00:01:01".into(),
            ip: ip(1),
            backend_data: None,
            kind: "subnet_overlaps_own",
        },
        Hostile {
            name: "h-whole-network",
            cidr: "10.244.0.0/16",
            mac: "0e:00:00:00:01:02".into(),
            ip: ip(2),
            backend_data: None,
            kind: "subnet_covers_network",
        },
        Hostile {
            name: "h-outside-network",
            cidr: "10.99.3.0/24",
            mac: "0e:00:00:00:01:03".into(),
            ip: ip(3),
            backend_data: None,
            kind: "subnet_outside_network",
        },
        Hostile {
            name: "a-inside-n2",
            cidr: "10.244.2.128/25",
            mac: "0e:00:00:00:01:04".into(),
            ip: ip(4),
            backend_data: None,
            kind: "subnet_conflict",
        },
        Hostile {
            name: "h-ip-ours",
            cidr: "10.244.25.0/24",
            mac: "0e:00:00:00:01:05".into(),
            ip: h1.address.to_string(),
            backend_data: None,
            kind: "bad_public_ip",
        },
        Hostile {
            name: "h-ip-loopback",
            cidr: "10.244.26.0/24",
            mac: "0e:00:00:00:01:06".into(),
            ip: "127.0.0.1".into(),
            backend_data: None,
            kind: "bad_public_ip",
        },
        Hostile {
            name: "h-ip-multicast",
            cidr: "10.244.27.0/24",
            mac: "0e:00:00:00:01:07".into(),
            ip: "224.0.0.5".into(),
            backend_data: None,
            kind: "bad_public_ip",
        },
        Hostile {
            name: "h-ip-in-pod-network",
            cidr: "10.244.28.0/24",
            mac: "0e:00:00:00:01:08".into(),
            ip: "10.244.50.1".into(),
            backend_data: None,
            kind: "bad_public_ip",
        },
        Hostile {
            name: "h-mac-broadcast",
            cidr: "10.244.29.0/24",
            mac: "ff:ff:ff:ff:ff:ff".into(),
            ip: ip(9),
            backend_data: None,
            kind: "bad_vtep_mac",
        },
        Hostile {
            name: "h-mac-multicast",
            cidr: "10.244.30.0/24",
            mac: "01:00:5e:00:00:01".into(),
            ip: ip(10),
            backend_data: None,
            kind: "bad_vtep_mac",
        },
        Hostile {
            name: "h-mac-zero",
            cidr: "10.244.31.0/24",
            mac: "00:00:00:00:00:00".into(),
            ip: ip(11),
            backend_data: None,
            kind: "bad_vtep_mac",
        },
        Hostile {
            name: "h-mac-garbage",
            cidr: "10.244.32.0/24",
            mac: "zz:zz:zz".into(),
            ip: ip(12),
            backend_data: None,
            kind: "bad_vtep_mac",
        },
        Hostile {
            name: "h-mac-of-n2",
            cidr: "10.244.33.0/24",
            mac: n2_mac.clone(),
            ip: ip(13),
            backend_data: None,
            kind: "vtep_mac_conflict",
        },
        Hostile {
            name: "h-vni",
            cidr: "10.244.34.0/24",
            mac: "0e:00:00:00:01:0e".into(),
            ip: ip(14),
            backend_data: Some(r#"{"VNI":2,"VtepMAC":"0e:00:00:00:01:0e"}"#),
            kind: "vni_mismatch",
        },
        Hostile {
            name: "h-not-json",
            cidr: "10.244.35.0/24",
            mac: "0e:00:00:00:01:0f".into(),
            ip: ip(15),
            backend_data: Some("VtepMAC=0e:00:00:00:01:0f"),
            kind: "bad_backend_data",
        },
        Hostile {
            name: "h-bad-cidr",
            cidr: "10.244.36.0/33",
            mac: "0e:00:00:00:01:10".into(),
            ip: ip(16),
            backend_data: None,
            kind: "bad_pod_cidr",
        },
    ];
    for h in &hostile {
        let mut ann = peer_annotations(&h.mac, &h.ip);
        if let Some(data) = h.backend_data {
            ann.insert(format!("{P}backend-data"), data.to_string());
        }
        // Raw JSON: the test API server (like kube-apiserver) validates spec.podCIDRs, so the
        // broken podCIDR travels in the legacy single field only.
        let spec = if h.kind == "bad_pod_cidr" {
            json!({"podCIDR": h.cidr})
        } else {
            json!({"podCIDR": h.cidr, "podCIDRs": [h.cidr]})
        };
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": h.name, "annotations": ann},
            "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": "172.20.1.200"}]},
        }))
        .unwrap();
        lab.kube(move |c| async move {
            Api::<Node>::all(c)
                .create(&PostParams::default(), &node)
                .await
        })
        .unwrap_or_else(|e| panic!("create {}: {e}", h.name));
    }

    // All of them refused, each for its own reason, on /status.
    let mut rejected = BTreeMap::new();
    wait_until(
        "every hostile node listed as rejected",
        Duration::from_secs(10),
        || {
            rejected = status(&d1)["last_reconcile"]["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        str_of(&r["node"]),
                        (str_of(&r["kind"]), str_of(&r["reason"])),
                    )
                })
                .collect::<BTreeMap<_, _>>();
            hostile.iter().all(|h| rejected.contains_key(h.name))
        },
    );
    for h in &hostile {
        let (kind, reason) = &rejected[h.name];
        assert_eq!(kind, h.kind, "{}: {reason}", h.name);
        println!("{:<22} {kind:<24} {reason}", h.name);
    }
    assert_eq!(rejected.len(), hostile.len(), "{rejected:#?}");
    assert_eq!(
        metric(&d1, r#"flannel_peers_rejected{reason="bad_vtep_mac"}"#),
        4
    );
    assert_eq!(
        metric(&d1, r#"flannel_peers_rejected{reason="bad_public_ip"}"#),
        4
    );

    // The kernel: still exactly the good peer, and no entry for any hostile ever appeared.
    assert_eq!(kernel_entries(&h1.ns), good);
    monitor.sync(&h1.ns);
    let lines = monitor.device_lines();
    assert!(lines.is_empty(), "no change on {DEV} at all: {lines:#?}");

    // The good peer keeps working: n1 → n2 over VXLAN.
    let ping = h1
        .ns
        .exec("ping", &["-c", "2", "-W", "2", "10.244.2.0"])
        .unwrap();
    assert!(ping.status.success(), "ping n2 over VXLAN: {ping:?}");

    // And an operator sees the same with `flanneld explain`.
    let out = h1
        .ns
        .exec(FLANNELD, &["explain", &d1.subnet_file_flag()])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("peers programmed: 1"), "{text}");
    for h in &hostile {
        assert!(text.contains(h.name), "explain lists {}: {text}", h.name);
    }
    assert!(
        text.contains(&format!(
            "nodes not programmed: {} ({} refused",
            hostile.len(),
            hostile.len()
        )),
        "{text}"
    );

    // The start-up path judges them the same way.
    let mut d1 = d1;
    d1.stop().expect("clean exit");
    let d1 = start(&lab, &h1, "n1", &[]);
    assert_eq!(
        status(&d1)["last_reconcile"]["rejected"]
            .as_array()
            .unwrap()
            .len(),
        hostile.len()
    );
    assert_eq!(kernel_entries(&h1.ns), good);
    monitor.sync(&h1.ns);
    let lines = monitor.device_lines();
    assert!(
        lines.is_empty(),
        "no change on {DEV} across the restart: {lines:#?}"
    );
}

#[test]
fn a_restart_leaves_every_entry_untouched() {
    let (lab, host) = lab_with_n1("dd7");
    generate_peers(&lab, 20);
    let want = expected_from_api(&lab, "n1");
    let mut d = start(&lab, &host, "n1", &[]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    let link_before = ip_json(&host.ns, &["-d", "link", "show", DEV]);

    let mut monitor = IpMonitor::start(&lab, &host.ns);
    d.stop().expect("clean exit");
    let d2 = start(&lab, &host, "n1", &[]);
    // Let the reconciler's own loop run its first pass too.
    wait_until("reconciler loop ran", Duration::from_secs(5), || {
        metric(&d2, "flannel_reconciles_total") >= 2
    });
    monitor.sync(&host.ns);

    let lines = monitor.device_lines();
    assert!(
        lines.is_empty(),
        "no delete/re-add/change on {DEV} across the restart: {lines:#?}"
    );
    // Identical replaces are invisible to a monitor; the daemon's counter proves there were none.
    assert_eq!(metric(&d2, "flannel_netlink_ops_total"), 0);
    assert_eq!(kernel_entries(&host.ns), want);
    let mut link_after = ip_json(&host.ns, &["-d", "link", "show", DEV]);
    // Only the statistics may move.
    link_after[0].as_object_mut().unwrap().remove("stats64");
    let mut link_before = link_before;
    link_before[0].as_object_mut().unwrap().remove("stats64");
    assert_eq!(link_before, link_after);
}

#[test]
fn a_deleted_device_is_rebuilt_with_the_same_mac_and_every_peer() {
    let (lab, host) = lab_with_n1("dd8");
    generate_peers(&lab, 10);
    let want = expected_from_api(&lab, "n1");
    let _d = start(&lab, &host, "n1", &["--resync-period=1h"]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    let before = ip_json(&host.ns, &["-d", "link", "show", DEV])[0].clone();

    host.ns.ip(&["link", "del", DEV]).unwrap();
    let start = Instant::now();
    wait_until("flannel.1 recreated", Duration::from_secs(5), || {
        host.ns.ip(&["link", "show", DEV]).is_ok()
    });
    let took = wait_entries(&host.ns, &want, Duration::from_secs(5));
    println!(
        "device deleted → rebuilt with all 10 peers in {:.0} ms",
        (start.elapsed().max(took)).as_secs_f64() * 1e3
    );
    let after = ip_json(&host.ns, &["-d", "link", "show", DEV])[0].clone();
    assert_ne!(after["ifindex"], before["ifindex"], "a new device");
    assert_eq!(after["address"], before["address"], "same MAC");
    assert_eq!(after["mtu"], before["mtu"]);
    assert_eq!(
        after["linkinfo"]["info_data"],
        before["linkinfo"]["info_data"]
    );
    assert!(after["flags"].as_array().unwrap().contains(&json!("UP")));
    assert!(
        host.ns
            .ip(&["-4", "addr", "show", "dev", DEV])
            .unwrap()
            .contains("inet 10.244.1.0/32")
    );
}

#[test]
fn a_downed_device_or_a_removed_address_is_restored_with_every_peer() {
    let (lab, host) = lab_with_n1("dd12");
    generate_peers(&lab, 10);
    let want = expected_from_api(&lab, "n1");
    // Only the kernel monitor can explain a fast repair.
    let _d = start(&lab, &host, "n1", &["--resync-period=1h"]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    let is_up = || {
        ip_json(&host.ns, &["link", "show", DEV])[0]["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP"))
    };
    let has_address = || {
        host.ns
            .ip(&["-4", "addr", "show", "dev", DEV])
            .unwrap()
            .contains("inet 10.244.1.0/32")
    };

    // Down: the kernel silently drops the routes (and neighbours) through the device.
    let start = Instant::now();
    host.ns.ip(&["link", "set", DEV, "down"]).unwrap();
    wait_until("flannel.1 up again", Duration::from_secs(1), is_up);
    wait_entries(&host.ns, &want, Duration::from_secs(1));
    println!(
        "link down → up with all routes/neighbours in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let start = Instant::now();
    host.ns
        .ip(&["addr", "del", "10.244.1.0/32", "dev", DEV])
        .unwrap();
    wait_until("address restored", Duration::from_secs(1), has_address);
    wait_entries(&host.ns, &want, Duration::from_secs(1));
    println!(
        "address removed → restored in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn a_burst_of_500_joins_is_programmed_in_a_few_batched_passes() {
    let (lab, host) = lab_with_n1("dd13");
    let d = start(&lab, &host, "n1", &["--resync-period=1h"]);
    wait_until("reconciler loop ran", Duration::from_secs(5), || {
        metric(&d, "flannel_reconciles_total") >= 2
    });
    let passes = metric(&d, "flannel_reconciles_total");
    // 500 Nodes in one admin call: 500 watch events within milliseconds (flannel#958: upstream
    // hit ENOBUFS on 50 and lost peers).
    let burst = Instant::now();
    generate_peers_sized(&lab, 500, 26);
    let want = expected_from_api(&lab, "n1");
    assert_eq!(want.counts(), (500, 500, 500));
    wait_entries(&host.ns, &want, Duration::from_secs(20));
    let used = metric(&d, "flannel_reconciles_total") - passes;
    println!(
        "500 joins programmed ≤ {:.0} ms after the burst was sent, in {used} reconcile pass(es)",
        burst.elapsed().as_secs_f64() * 1e3
    );
    assert!(used <= 10, "{used} passes for one burst");
    assert_eq!(metric(&d, "flannel_reconcile_errors_total"), 0);
    assert_eq!(
        metric(&d, "flannel_netlink_ops_total"),
        1500,
        "one write per entry"
    );
}

/// A first list of several pages (the daemon lists 500 Nodes per page) is programmed page by
/// page, additively, and a subnet conflict whose newer claimant is listed first is settled for
/// the older node once the list is complete: the newcomer's entries, programmed from the first
/// page, are replaced or removed; stale entries go; the rest were never touched twice.
#[test]
fn a_first_list_of_several_pages_is_programmed_page_by_page_and_settled_at_the_end() {
    let (lab, host) = lab_with_n1("dd14");
    // 1100 peers `peer-…` (/28s): three pages with n1 and the two below.
    generate_peers_sized(&lab, 1100, 28);
    let mut want = expected_from_api(&lab, "n1");
    assert_eq!(want.counts(), (1100, 1100, 1100));
    // The older holder of 10.244.5.0/24 sorts last (page 3); the newcomer claiming the same
    // subnet sorts first (page 1). creationTimestamp has one-second resolution.
    want.add_peer("10.244.5.0/24", "0e:00:00:00:05:01", "172.21.0.1");
    lab.create_node(
        "zz-holder",
        "10.244.5.0/24",
        "172.21.0.1".parse().unwrap(),
        peer_annotations("0e:00:00:00:05:01", "172.21.0.1"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    lab.create_node(
        "a-newcomer",
        "10.244.5.0/24",
        "172.21.0.2".parse().unwrap(),
        peer_annotations("0e:00:00:00:05:02", "172.21.0.2"),
    )
    .unwrap();
    // A stale peer left by an earlier run, to be removed by the first complete pass.
    plant_device(&host.ns, host.address, None);
    plant_peer(&host.ns, "10.244.9.0/24", "0e:00:00:00:00:09");

    slow_down_list_pages(&lab, 3);
    let mut monitor = IpMonitor::start(&lab, &host.ns);
    let d = start(&lab, &host, "n1", &[]);
    wait_entries(&host.ns, &want, Duration::from_secs(30));

    // The newcomer was programmed from the first page, then replaced by the older holder.
    monitor.sync(&host.ns);
    let lines = monitor.device_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("10.244.5.0 ") && l.contains("lladdr 0e:00:00:00:05:02")),
        "the newcomer's neighbour never appeared:\n{}",
        lines.join("\n")
    );
    // Programming began before the list was complete (provisional passes, one per page).
    let log = d.log();
    let synced = log
        .find("node list synced")
        .expect("list synced in the log");
    let early = log[..synced].matches("applied kernel changes").count();
    assert!(
        early >= 1,
        "no pass applied changes before the list completed:\n{log}"
    );
    let st = status(&d);
    let rejected = st["last_reconcile"]["rejected"].as_array().unwrap();
    let newcomer: Vec<&Value> = rejected
        .iter()
        .filter(|r| r["node"] == "a-newcomer")
        .collect();
    assert_eq!(newcomer.len(), 1, "{rejected:#?}");
    assert_eq!(newcomer[0]["kind"], "subnet_conflict", "{:#}", newcomer[0]);
    assert_eq!(metric(&d, "flannel_peers_programmed"), 1101);
    assert_eq!(metric(&d, "flannel_reconcile_errors_total"), 0);
}

/// The first list's passes plan against a kept view of the kernel instead of dumping per page.
/// An entry that view holds but no pass wants yet (left by an earlier run for a node on a later
/// page) and that someone deletes meanwhile must still be programmed: the deletion drops the
/// view, and the next pass dumps.
#[test]
fn an_entry_deleted_during_the_first_list_is_programmed_all_the_same() {
    let (lab, host) = lab_with_n1("dd15");
    generate_peers_sized(&lab, 1100, 28);
    let want = expected_from_api(&lab, "n1");
    // A node on the last page, and its entries as an earlier run of the daemon left them.
    let late = lab.get_node("peer-01050").unwrap();
    let cidr = late.spec.unwrap().pod_cidr.unwrap();
    let ann = late.metadata.annotations.unwrap();
    let data: Value = serde_json::from_str(&ann[&format!("{P}backend-data")]).unwrap();
    let mac = data["VtepMAC"].as_str().unwrap().to_string();
    let gw = cidr.parse::<Ipv4Network>().unwrap().network().to_string();
    plant_device(&host.ns, host.address, None);
    plant_peer(&host.ns, &cidr, &mac);

    slow_down_list_pages(&lab, 3);
    let mut d = lab.start_flanneld(FLANNELD, &host, "n1", &[]).unwrap();
    // Once the first page is programmed (its pass dumped the device, so the view holds the
    // planted entries), the late node's neighbour goes, before its page arrives.
    wait_until("the first page programmed", Duration::from_secs(10), || {
        d.log().contains("applied kernel changes")
    });
    assert!(
        !d.log().contains("node list synced"),
        "the list completed before the deletion:\n{}",
        d.log()
    );
    host.ns.ip(&["neigh", "del", &gw, "dev", DEV]).unwrap();
    d.wait_ready(Duration::from_secs(30)).unwrap();
    wait_entries(&host.ns, &want, Duration::from_secs(10));
}

fn iptables_s(ns: &NetnsGuard, table: &str) -> Vec<String> {
    let out = ns.exec("iptables", &["-t", table, "-S"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ip_masq_rules_have_upstreams_layout_and_survive_a_restart() {
    let (lab, host) = lab_with_n1("dd9");
    let mut d = start(&lab, &host, "n1", &[]);
    let c = r#"-m comment --comment "flanneld masq""#;
    // Upstream's golden `iptables -t nat -S` (upstream's pkg/trafficmngr), written out literally.
    let golden_nat = vec![
        "-P PREROUTING ACCEPT".to_string(),
        "-P INPUT ACCEPT".into(),
        "-P OUTPUT ACCEPT".into(),
        "-P POSTROUTING ACCEPT".into(),
        "-N FLANNEL-POSTRTG".into(),
        format!("-A POSTROUTING {c} -j FLANNEL-POSTRTG"),
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
        format!(
            "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"
        ),
        format!(
            "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {c} -j MASQUERADE --random-fully"
        ),
    ];
    let f = r#"-m comment --comment "flanneld forward""#;
    let golden_filter = vec![
        "-P INPUT ACCEPT".to_string(),
        "-P FORWARD ACCEPT".into(),
        "-P OUTPUT ACCEPT".into(),
        "-N FLANNEL-FWD".into(),
        format!("-A FORWARD {f} -j FLANNEL-FWD"),
        format!("-A FLANNEL-FWD -s 10.244.0.0/16 {f} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d 10.244.0.0/16 {f} -j ACCEPT"),
    ];
    assert_eq!(iptables_s(&host.ns, "nat"), golden_nat);
    assert_eq!(iptables_s(&host.ns, "filter"), golden_filter);

    d.stop().expect("clean exit");
    assert_eq!(iptables_s(&host.ns, "nat"), golden_nat, "kept while down");
    let _d2 = start(&lab, &host, "n1", &[]);
    // Past the first iptables resync (5 s by default) of the new daemon.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        iptables_s(&host.ns, "nat"),
        golden_nat,
        "no duplicate after restart"
    );
    assert_eq!(iptables_s(&host.ns, "filter"), golden_filter);
}

/// A pod on `host`: namespace with eth0 = 10.244.K.2/24 (gateway .1), attached to a bridge
/// `cni0` = 10.244.K.1/24 on the node, as the bridge CNI plugin does.
fn add_pod(host: &Host, tag: &str, k: u8) -> NetnsGuard {
    add_pod_with(host, tag, k, 1450, false)
}

/// [`add_pod`] with the pod MTU given and, with `dual_stack`, also fd10:244:0:K::2/64 behind
/// cni0's ::1 (addresses skip DAD — nobody else claims them — so the pod can talk at once).
pub(crate) fn add_pod_with(
    host: &Host,
    tag: &str,
    k: u8,
    mtu: u32,
    dual_stack: bool,
) -> NetnsGuard {
    let pod = netns(tag);
    let node = &host.ns;
    let v6 = |h: u8| format!("fd10:244:0:{k}::{h}");
    node.ip(&["link", "add", "cni0", "type", "bridge"]).unwrap();
    node.ip(&["addr", "add", &format!("10.244.{k}.1/24"), "dev", "cni0"])
        .unwrap();
    if dual_stack {
        let gw6 = format!("{}/64", v6(1));
        node.ip(&["addr", "add", &gw6, "dev", "cni0", "nodad"])
            .unwrap();
    }
    node.ip(&["link", "set", "cni0", "up"]).unwrap();
    // The pod end is created directly in the pod's namespace.
    let veth = format!(
        "link add veth0 type veth peer name eth0 netns {}",
        pod.name()
    );
    node.ip(&veth.split(' ').collect::<Vec<_>>()).unwrap();
    node.ip(&["link", "set", "veth0", "master", "cni0"])
        .unwrap();
    node.ip(&["link", "set", "veth0", "up"]).unwrap();
    pod.ip(&["addr", "add", &format!("10.244.{k}.2/24"), "dev", "eth0"])
        .unwrap();
    if dual_stack {
        let addr6 = format!("{}/64", v6(2));
        pod.ip(&["addr", "add", &addr6, "dev", "eth0", "nodad"])
            .unwrap();
    }
    pod.ip(&["link", "set", "eth0", "mtu", &mtu.to_string()])
        .unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", &format!("10.244.{k}.1")])
        .unwrap();
    if dual_stack {
        pod.ip(&["-6", "route", "add", "default", "via", &v6(1)])
            .unwrap();
    }
    pod
}

pub(crate) fn link_stats(ns: &NetnsGuard, dev: &str) -> (u64, u64) {
    let l = &ip_json(ns, &["-s", "link", "show", dev])[0]["stats64"];
    (
        l["tx"]["packets"].as_u64().unwrap(),
        l["rx"]["packets"].as_u64().unwrap(),
    )
}

#[test]
fn pods_on_two_nodes_ping_each_other_across_vxlan() {
    let lab = lab("dd10");
    let h1 = lab.add_host("dd10-n1", 1).unwrap();
    let h2 = lab.add_host("dd10-n2", 2).unwrap();
    lab.create_node("n1", "10.244.1.0/24", h1.address, BTreeMap::new())
        .unwrap();
    lab.create_node("n2", "10.244.2.0/24", h2.address, BTreeMap::new())
        .unwrap();
    let _d1 = start(&lab, &h1, "n1", &[]);
    let _d2 = start(&lab, &h2, "n2", &[]);
    let pod1 = add_pod(&h1, "dd10-pod1", 1);
    let pod2 = add_pod(&h2, "dd10-pod2", 2);
    wait_until(
        "each node has the other's route",
        Duration::from_secs(10),
        || {
            h1.ns
                .ip(&["route", "show", "10.244.2.0/24"])
                .is_ok_and(|o| o.contains(DEV))
                && h2
                    .ns
                    .ip(&["route", "show", "10.244.1.0/24"])
                    .is_ok_and(|o| o.contains(DEV))
        },
    );

    // A witness on the receiving node's underlay: one VXLAN datagram.
    let mut tcpdump = h2
        .ns
        .command("timeout")
        .args([
            "15", "tcpdump", "-n", "-c", "1", "-l", "-i", "eth0", "udp", "dst", "port", "8472",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut err = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("listening on eth0") {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start: {seen}"
        );
        seen.push_str(&line);
    }

    let (tx1, _) = link_stats(&h1.ns, DEV);
    let (_, rx2) = link_stats(&h2.ns, DEV);
    let ping = pod1
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.244.2.2"])
        .unwrap();
    assert!(
        ping.status.success(),
        "pod1 → pod2: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let back = pod2
        .exec("ping", &["-c", "1", "-W", "2", "10.244.1.2"])
        .unwrap();
    assert!(back.status.success(), "pod2 → pod1: {back:?}");

    let out = tcpdump.wait_with_output().unwrap();
    let captured = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump saw no VXLAN datagram: {captured}"
    );
    // tcpdump decodes UDP 8472 as OTV (same header as VXLAN) and shows the inner packet.
    assert!(
        captured.contains(&format!("IP {}.", h1.address))
            && captured.contains(&format!("> {}.8472:", h2.address))
            && captured.contains("instance 1"),
        "a VNI 1 datagram from n1's underlay address to n2's port 8472: {captured}"
    );
    assert!(
        captured.contains("IP 10.244.1.2 > 10.244.2.2: ICMP echo request"),
        "carrying pod1's ping: {captured}"
    );
    let (tx1_after, _) = link_stats(&h1.ns, DEV);
    let (_, rx2_after) = link_stats(&h2.ns, DEV);
    assert!(
        tx1_after >= tx1 + 3,
        "n1's {DEV} sent the pings ({tx1} → {tx1_after})"
    );
    assert!(
        rx2_after >= rx2 + 3,
        "n2's {DEV} received them ({rx2} → {rx2_after})"
    );
    println!("tcpdump on n2 eth0: {}", captured.trim());
}

#[test]
fn kubelet_heartbeats_cost_no_netlink_write_and_no_reconcile() {
    let (lab, host) = lab_with_n1("dd11");
    generate_peers(&lab, 50);
    let want = expected_from_api(&lab, "n1");
    let d = start(&lab, &host, "n1", &["--resync-period=1h"]);
    wait_entries(&host.ns, &want, Duration::from_secs(10));
    wait_until("reconciler loop ran", Duration::from_secs(5), || {
        metric(&d, "flannel_reconciles_total") >= 2
    });
    std::thread::sleep(Duration::from_millis(200));
    lab.server
        .wait_for_watches(1, Duration::from_secs(5))
        .unwrap();
    let ops = metric(&d, "flannel_netlink_ops_total");
    let passes = metric(&d, "flannel_reconciles_total");
    let rv = lab.server.resource_version().unwrap();
    let log_seq = lab.server.reset_request_log().unwrap();
    let _ = log_seq;

    lab.server.start_churn(200.0).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    lab.server.stop_churn().unwrap();
    let events = lab.server.resource_version().unwrap() - rv;
    assert!(events >= 300, "churn produced only {events} writes");
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(
        metric(&d, "flannel_netlink_ops_total"),
        ops,
        "{events} heartbeats caused netlink writes"
    );
    assert_eq!(
        metric(&d, "flannel_reconciles_total"),
        passes,
        "{events} heartbeats caused reconcile passes"
    );
    let writes: Vec<_> = lab
        .server
        .request_log(&Default::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.identity.as_deref() == Some("flannel") && !matches!(e.method.as_str(), "GET"))
        .collect();
    assert!(writes.is_empty(), "no API writes either: {writes:#?}");
    println!("{events} heartbeat events: 0 netlink writes, 0 reconcile passes");

    // The watch is still alive and relevant changes still get through.
    let mut more = want.clone();
    more.add_peer("10.244.3.0/24", "0e:00:00:00:00:03", "172.21.0.3");
    synthetic_peer(
        &lab,
        "n3",
        "10.244.3.0/24",
        "0e:00:00:00:00:03",
        "172.21.0.3",
    );
    wait_entries(&host.ns, &more, Duration::from_secs(10));
    assert!(metric(&d, "flannel_reconciles_total") > passes);
}

// ---------------------------------------------------------------------------------------------
// DirectRouting (upstream's pkg/backend/vxlan).

const DIRECT_NET_CONF: &str = r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan","DirectRouting":true}}"#;

/// Main-table routes with our DirectRouting protocol (0x66 = 102), filtered by the kernel
/// dump itself, as (destination, gateway, device).
fn direct_routes(ns: &NetnsGuard) -> BTreeSet<(String, String, String)> {
    ip_json(ns, &["route", "show", "table", "main", "proto", "102"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (str_of(&r["dst"]), str_of(&r["gateway"]), str_of(&r["dev"])))
        .collect()
}

/// Every main-table route to exactly `dst`, as the kernel lists them (with details: scope,
/// type and protocol always shown).
fn routes_to(ns: &NetnsGuard, dst: &str) -> Vec<Value> {
    ip_json(ns, &["-d", "route", "show", "table", "main", "exact", dst])
        .as_array()
        .unwrap()
        .clone()
}

/// Starts `tcpdump -c 1` with `filter` on `iface` in `ns` and returns once it is listening;
/// its output is the first matching packet (or nothing when `timeout` s pass without one).
pub(crate) fn tcpdump_first(ns: &NetnsGuard, iface: &str, timeout: u32, filter: &[&str]) -> Child {
    let mut child = ns
        .command("timeout")
        .arg(timeout.to_string())
        .args(["tcpdump", "-n", "-c", "1", "-l", "-i", iface])
        .args(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains(&format!("listening on {iface}")) {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start: {seen}"
        );
        seen.push_str(&line);
    }
    child
}

pub(crate) fn ping_ok(pod: &NetnsGuard, args: &[&str], what: &str) {
    let out = pod.exec("ping", args).unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state DirectRouting wants on `host`: the same-subnet peer routed straight over eth0
/// via its underlay IP (proto 0x66, nothing on flannel.1 for it), `far` tunnelled as usual.
fn wait_direct(host: &Host, peer_cidr: &str, peer_ip: &str, far: &Entries) {
    let want = BTreeSet::from([(
        peer_cidr.to_string(),
        peer_ip.to_string(),
        "eth0".to_string(),
    )]);
    wait_until(
        &format!("direct route to {peer_cidr} in {}", host.ns.name()),
        Duration::from_secs(10),
        || direct_routes(&host.ns) == want,
    );
    wait_entries(&host.ns, far, Duration::from_secs(10));
    let routes = routes_to(&host.ns, peer_cidr);
    assert_eq!(routes.len(), 1, "one route to {peer_cidr}: {routes:#?}");
    let r = &routes[0];
    assert!(
        r["gateway"] == peer_ip
            && r["dev"] == "eth0"
            && r["scope"] == "global"
            && r["type"] == "unicast"
            && r["protocol"] == "102"
            && r.get("flags").is_none_or(|f| f == &json!([])),
        "{peer_cidr} via {peer_ip} dev eth0, proto 0x66, not onlink: {r}"
    );
}

#[test]
fn direct_routing_goes_straight_over_the_underlay_and_reverts_when_turned_off() {
    let lab = crate::daemon_control::lab_with(
        "dd14",
        frs_testsupport::lab::LabOptions {
            net_conf: DIRECT_NET_CONF.into(),
            ..Default::default()
        },
    );
    let h1 = lab.add_host("dd14-n1", 1).unwrap();
    let h2 = lab.add_host("dd14-n2", 2).unwrap();
    lab.create_node("n1", "10.244.1.0/24", h1.address, BTreeMap::new())
        .unwrap();
    lab.create_node("n2", "10.244.2.0/24", h2.address, BTreeMap::new())
        .unwrap();
    // A peer behind a router (not on the underlay /24): still tunnelled.
    let far = numbered_peer(&lab, 3);
    let (ip1, ip2) = (h1.address.to_string(), h2.address.to_string());
    let mut d1 = start(&lab, &h1, "n1", &[]);
    let mut d2 = start(&lab, &h2, "n2", &[]);
    let pod1 = add_pod(&h1, "dd14-pod1", 1);
    let pod2 = add_pod(&h2, "dd14-pod2", 2);
    wait_direct(&h1, "10.244.2.0/24", &ip2, &far);
    wait_direct(&h2, "10.244.1.0/24", &ip1, &far);

    // Pods reach each other as plain IP on the underlay; flannel.1 carries nothing.
    let tcpdump = tcpdump_first(&h2.ns, "eth0", 15, &["icmp", "and", "host", "10.244.1.2"]);
    let (tx1, _) = link_stats(&h1.ns, DEV);
    let (_, rx2) = link_stats(&h2.ns, DEV);
    ping_ok(
        &pod1,
        &["-c", "3", "-i", "0.2", "-W", "2", "10.244.2.2"],
        "pod1 → pod2 (direct)",
    );
    ping_ok(
        &pod2,
        &["-c", "1", "-W", "2", "10.244.1.2"],
        "pod2 → pod1 (direct)",
    );
    let out = tcpdump.wait_with_output().unwrap();
    let captured = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && captured.contains("IP 10.244.1.2 > 10.244.2.2: ICMP echo request"),
        "n2's eth0 saw pod1's ping unencapsulated: {captured}"
    );
    assert_eq!(link_stats(&h1.ns, DEV).0, tx1, "n1's {DEV} sent nothing");
    assert_eq!(
        link_stats(&h2.ns, DEV).1,
        rx2,
        "n2's {DEV} received nothing"
    );
    println!("direct: {}", captured.trim());

    // DirectRouting off: the direct routes go, the tunnel entries come (restart, as a
    // ConfigMap change is applied).
    d1.stop();
    d2.stop();
    std::fs::write(&lab.net_conf_path, frs_testsupport::lab::STOCK_NET_CONF).unwrap();
    d1 = start(&lab, &h1, "n1", &[]);
    d2 = start(&lab, &h2, "n2", &[]);
    for (host, own, peer_cidr) in [(&h1, "n1", "10.244.2.0/24"), (&h2, "n2", "10.244.1.0/24")] {
        let want = expected_from_api(&lab, own);
        assert_eq!(want.counts(), (2, 2, 2));
        wait_entries(&host.ns, &want, Duration::from_secs(10));
        assert!(
            direct_routes(&host.ns).is_empty(),
            "direct routes left in {own}"
        );
        let routes = routes_to(&host.ns, peer_cidr);
        assert!(
            routes.len() == 1 && routes[0]["dev"] == DEV,
            "only the tunnel route to {peer_cidr}: {routes:#?}"
        );
    }
    let tcpdump = tcpdump_first(&h2.ns, "eth0", 15, &["udp", "dst", "port", "8472"]);
    let (tx1, _) = link_stats(&h1.ns, DEV);
    let (_, rx2) = link_stats(&h2.ns, DEV);
    ping_ok(
        &pod1,
        &["-c", "3", "-i", "0.2", "-W", "2", "10.244.2.2"],
        "pod1 → pod2 (tunnel)",
    );
    let out = tcpdump.wait_with_output().unwrap();
    let captured = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && captured.contains(&format!("IP {ip1}."))
            && captured.contains("IP 10.244.1.2 > 10.244.2.2: ICMP echo request"),
        "pod1's ping in a VXLAN datagram from n1: {captured}"
    );
    assert!(
        link_stats(&h1.ns, DEV).0 >= tx1 + 3,
        "n1's {DEV} sent the pings"
    );
    assert!(
        link_stats(&h2.ns, DEV).1 >= rx2 + 3,
        "n2's {DEV} received them"
    );

    // And on again: the tunnel entries of the near peer go (neighbour and FDB too).
    d1.stop();
    d2.stop();
    std::fs::write(&lab.net_conf_path, DIRECT_NET_CONF).unwrap();
    let _d1 = start(&lab, &h1, "n1", &[]);
    let _d2 = start(&lab, &h2, "n2", &[]);
    wait_direct(&h1, "10.244.2.0/24", &ip2, &far);
    wait_direct(&h2, "10.244.1.0/24", &ip1, &far);
    ping_ok(
        &pod1,
        &["-c", "1", "-W", "2", "10.244.2.2"],
        "pod1 → pod2 (direct again)",
    );
}
