//! The CNI plugin's store under races and leftovers, with the real binary in test namespaces:
//! ADD and DEL of one container at the same moment, two ADDs of one container, symlinks
//! planted in the data dirs, an empty reservation left by a killed ADD, and masquerade
//! teardown when iptables fails or hangs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use serde_json::Value;

use crate::cni_support::*;
use crate::harness::NetnsGuard;

/// `ip` of every reservation in the IPAM dir, by its record's container ID.
fn reservations_by_owner(node: &Node) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for ip in node.reservations() {
        let content = std::fs::read_to_string(node.ipam_dir().join(&ip)).unwrap_or_default();
        let owner = content.split("\r\n").next().unwrap_or("").to_string();
        out.entry(owner).or_default().push(ip);
    }
    out
}

/// A race run: a CNI node, its conf, the pod namespaces `<tag><i>` and what every call of the
/// race returned (pod index, verb, outcome), and the reservations right after it.
struct Race {
    tag: String,
    node: Node,
    conf: Value,
    pods: Vec<NetnsGuard>,
    paths: Vec<String>,
    outcomes: Vec<(usize, &'static str, Outcome)>,
    by_owner: HashMap<String, Vec<String>>,
}

/// For each of `pairs` pods i, `verbs[0]` and `verbs[1]` of container `<tag>-<i>` at once (all
/// calls released by one barrier).
fn race(tag: &str, pairs: usize, verbs: [&'static str; 2]) -> Race {
    let node = Node::new(tag);
    let conf = node.conf("0.3.1");
    let pods: Vec<_> = (0..pairs).map(|i| pod(&format!("{tag}{i}"))).collect();
    let paths: Vec<String> = pods.iter().map(path_of).collect();
    let barrier = Barrier::new(2 * pairs);
    let outcomes = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            for verb in verbs {
                let (node, conf, barrier) = (&node, &conf, &barrier);
                handles.push(s.spawn(move || {
                    barrier.wait();
                    let out = node.ours(&Call::new(verb, &format!("{tag}-{i}"), p), conf);
                    (i, verb, out)
                }));
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let by_owner = reservations_by_owner(&node);
    Race {
        tag: tag.into(),
        node,
        conf,
        pods,
        paths,
        outcomes,
        by_owner,
    }
}

impl Race {
    /// DEL of every container of the race; then nothing may be left.
    fn delete_all(&self, when: &str) {
        for (i, p) in self.paths.iter().enumerate() {
            let cid = format!("{}-{i}", self.tag);
            self.node
                .ours(&Call::new("DEL", &cid, p), &self.conf)
                .expect_ok();
        }
        self.node.assert_clean(when);
    }
}

/// The pod's eth0 address without its prefix, or `None` when the pod has no veth.
fn pod_ip(p: &NetnsGuard) -> Option<String> {
    if links_of_kind(p, "veth").is_empty() {
        return None;
    }
    let addrs = global_addrs(p, "eth0");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    Some(addrs[0].split('/').next().unwrap().to_string())
}

/// After any mix of calls for `cid`, the attachment is whole or absent: a pod with eth0 holds
/// exactly its address as a reservation and has its DEL record; a pod without holds neither.
#[track_caller]
fn assert_whole_or_absent(
    node: &Node,
    by_owner: &HashMap<String, Vec<String>>,
    cid: &str,
    p: &NetnsGuard,
) {
    let held = by_owner.get(cid).cloned().unwrap_or_default();
    let record = node.data_dir().join(cid);
    match pod_ip(p) {
        Some(ip) => {
            assert_eq!(
                held,
                std::slice::from_ref(&ip),
                "{cid}: the pod uses {ip}, which must be reserved for it (and nothing else)"
            );
            let bytes = std::fs::read(&record)
                .unwrap_or_else(|e| panic!("{cid}: the pod is attached but its record: {e}"));
            let saved: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{cid}: record is not JSON ({e})"));
            assert_eq!(saved, node.reference_delegate("0.3.1"), "{cid}");
        }
        None => {
            assert!(
                held.is_empty(),
                "{cid}: no pod interface, yet holds {held:?}"
            );
            assert!(
                !file_exists(&record),
                "{cid}: no pod interface, yet a record"
            );
        }
    }
}

/// An ADD and a DEL for the same container ID started together, forty times. Whichever runs
/// first, the other must see its complete effect: never a pod configured with an IP that the
/// DEL released (the next ADD would hand it out twice), nor a pod whose record is gone.
#[test]
fn add_racing_del_of_one_container_leaves_it_whole_or_absent() {
    const PAIRS: usize = 40;
    let r = race("ad", PAIRS, ["ADD", "DEL"]);
    let node = &r.node;
    let mut attached = 0;
    for (i, p) in r.pods.iter().enumerate() {
        assert_whole_or_absent(node, &r.by_owner, &format!("ad-{i}"), p);
        attached += usize::from(pod_ip(p).is_some());
    }
    for (i, verb, out) in &r.outcomes {
        assert!(out.ok, "{verb} ad-{i}: {} {}", out.stdout, out.stderr);
    }
    assert_eq!(
        node.veths().len(),
        attached,
        "one host veth per attached pod"
    );
    assert_eq!(node.reservations().len(), attached);
    eprintln!("{attached} of {PAIRS} ADDs ran after their DEL");

    r.delete_all("after the ADD/DEL races");
}

/// Two ADDs for the same container started together, twenty times: one attaches the pod, the
/// other fails ("already exists") and must not revert the record or release the IP of the
/// one that succeeded.
#[test]
fn two_adds_of_one_container_keep_one_attachment_and_its_record() {
    const PAIRS: usize = 20;
    let r = race("aa", PAIRS, ["ADD", "ADD"]);
    for (i, p) in r.pods.iter().enumerate() {
        let cid = format!("aa-{i}");
        let ok: Vec<&Outcome> = r
            .outcomes
            .iter()
            .filter(|(j, _, o)| *j == i && o.ok)
            .map(|(_, _, o)| o)
            .collect();
        assert_eq!(ok.len(), 1, "{cid}: exactly one ADD attaches");
        let ip = pod_ip(p).unwrap_or_else(|| panic!("{cid}: the pod is not attached"));
        let reported = ok[0].json()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(reported, format!("{ip}/24"), "{cid}");
        assert_whole_or_absent(&r.node, &r.by_owner, &cid, p);
    }
    for (i, _, out) in r.outcomes.iter().filter(|(_, _, o)| !o.ok) {
        assert!(
            out.msg().contains("already exists"),
            "aa-{i}: {}",
            out.stdout
        );
    }
    r.delete_all("after the ADD/ADD races");
}

/// A symlink planted as the DEL record, the round-robin cursor or the lock file is refused,
/// and the file it points to is left as it was (all three are opened for writing as root).
#[test]
fn symlinks_planted_in_the_data_dirs_are_not_followed() {
    let node = Node::new("sl");
    let conf = node.conf("0.3.1");
    let p = pod("slp");
    let victim = node.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::create_dir_all(node.data_dir()).unwrap();
    std::fs::create_dir_all(node.ipam_dir()).unwrap();
    let planted: [(&str, PathBuf); 3] = [
        ("record", node.data_dir().join("c1")),
        ("cursor", node.ipam_dir().join("last_reserved_ip.0")),
        ("lock", node.ipam_dir().join("lock")),
    ];
    for (what, link) in &planted {
        // The previous case's ADD may have created the real file (the lock) already.
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&victim, link).unwrap();
        let out = node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf);
        assert!(!out.ok, "{what}: ADD through a symlink succeeded");
        assert!(
            out.msg().contains("symbolic link"),
            "{what}: {}",
            out.stdout
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{what}: the symlink's target was written"
        );
        assert!(node.reservations().is_empty(), "{what}");
        assert!(links_of_kind(&p, "veth").is_empty(), "{what}");
        std::fs::remove_file(link).unwrap();
    }
    node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("after the symlink cases");
}

/// A reservation file that a SIGKILLed ADD created but never wrote names no owner, so no DEL
/// releases it; the next ADD that finds the range otherwise full takes it over.
#[test]
fn an_empty_reservation_is_reclaimed_by_the_add_that_needs_it() {
    let node = Node::with_subnet_env(
        "er",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/29\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    let conf = node.conf("0.3.1");
    std::fs::create_dir_all(node.ipam_dir()).unwrap();
    std::fs::write(node.ipam_dir().join("10.244.1.4"), "").unwrap();
    let pods: Vec<_> = (0..5).map(|i| pod(&format!("er{i}"))).collect();
    let mut got = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let out = node.ours(&Call::new("ADD", &format!("er-{i}"), &path_of(p)), &conf);
        got.push(out.expect_ok().json()["ips"][0]["address"].clone());
    }
    assert_eq!(
        got,
        [
            "10.244.1.2/29",
            "10.244.1.3/29",
            "10.244.1.5/29",
            "10.244.1.6/29",
            "10.244.1.4/29"
        ]
    );
    assert_eq!(
        std::fs::read(node.ipam_dir().join("10.244.1.4")).unwrap(),
        b"er-4\r\neth0"
    );
    for (i, p) in pods.iter().enumerate() {
        node.ours(&Call::new("DEL", &format!("er-{i}"), &path_of(p)), &conf)
            .expect_ok();
    }
    node.assert_clean("after reclaiming");
}

/// A directory with an `iptables` wrapper first on PATH: `script` runs for every call, with
/// the real iptables as `$REAL`.
fn fake_iptables(node: &Node, script: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let real = ["/usr/sbin/iptables", "/sbin/iptables"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("iptables is installed");
    let bin = node.dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("iptables");
    std::fs::write(&path, format!("#!/bin/sh\nREAL={real}\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display())
}

fn nat_rules(node: &Node) -> String {
    let out = node.ns.exec("iptables-save", &["-t", "nat"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With FLANNEL_IPMASQ=false the bridge masquerades (a chain per pod).
const SUBNET_ENV_NO_MASQ: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

/// The first DEL fails while removing the pod's chain; the IP must still be reserved then,
/// because the reservation is what names the pod's IP for the retry, which removes the chain.
#[test]
fn a_retried_del_removes_the_masquerade_chain_the_failed_one_left() {
    let node = Node::with_subnet_env("md", SUBNET_ENV_NO_MASQ);
    let conf = node.conf("0.3.1");
    let p = pod("mdp");
    node.ours(&Call::new("ADD", "c1", &path_of(&p)), &conf)
        .expect_ok();
    let chain = flannel_rs::cni::ipmasq::chain_name(NET_NAME, "c1");
    assert!(nat_rules(&node).contains(&chain));

    let path = fake_iptables(
        &node,
        "case \" $* \" in *\" -X \"*) echo 'iptables: resource busy (fake)' >&2; exit 4;; esac\nexec $REAL \"$@\"",
    );
    let mut del = Call::new("DEL", "c1", &path_of(&p));
    del.extra_env.push(("PATH".into(), path));
    let out = node.ours(&del, &conf);
    assert!(!out.ok, "the fake made DEL fail");
    assert!(out.msg().contains("resource busy (fake)"), "{}", out.stdout);
    assert_eq!(node.reservations(), ["10.244.1.2"], "kept for the retry");
    assert_eq!(node.records(), ["c1"]);

    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    assert!(
        !nat_rules(&node).contains(&chain),
        "the retry removed the chain: {}",
        nat_rules(&node)
    );
    node.assert_clean("after the retried DEL");
}

/// An iptables that never returns (say, stuck behind the xtables lock) fails the ADD within
/// the plugin's bound instead of hanging it; the ADD's undo is bounded the same way.
#[test]
fn a_hanging_iptables_fails_the_add_instead_of_hanging_it() {
    let node = Node::with_subnet_env("mt", SUBNET_ENV_NO_MASQ);
    let conf = node.conf("0.3.1");
    let p = pod("mtp");
    // `exec` so that the killed process is the sleeper itself.
    let path = fake_iptables(&node, "exec sleep 600");
    let mut add = Call::new("ADD", "c1", &path_of(&p));
    add.extra_env.push(("PATH".into(), path));
    add.extra_env
        .push((flannel_rs::cni::ipmasq::TIMEOUT_ENV.into(), "1".into()));
    let out = node.ours(&add, &conf);
    assert!(!out.ok, "ADD succeeded with a hanging iptables");
    assert!(
        out.msg().contains("did not finish within"),
        "{}",
        out.stdout
    );
    assert!(links_of_kind(&p, "veth").is_empty(), "the ADD was undone");

    node.ours(&Call::new("DEL", "c1", &path_of(&p)), &conf)
        .expect_ok();
    node.assert_clean("after the timed-out ADD");
}
