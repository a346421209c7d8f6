//! Neighbours and VXLAN FDB entries through `flannel_rs::netlink`, checked with
//! `ip -json neigh` and `bridge -json fdb`.

use std::net::IpAddr;

use flannel_rs::netlink::{Fdb, Neighbour};

use flannel_rs::net::MacAddr;
use serde_json::Value;

use crate::harness::{NetnsGuard, bridge_json, ip_json, netns};
use crate::netlink_util::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ip_neighs(ns: &NetnsGuard, dev: &str) -> Vec<Value> {
    ip_json(ns, &["neigh", "show", "dev", dev])
        .as_array()
        .unwrap()
        .clone()
}

fn fdb_dsts(ns: &NetnsGuard, dev: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = bridge_json(ns, &["fdb", "show", "dev", dev])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("dst").is_some())
        .map(|e| {
            assert_eq!(e["state"], "permanent", "{e}");
            assert!(
                e["flags"].as_array().unwrap().iter().any(|f| f == "self"),
                "{e}"
            );
            (
                e["mac"].as_str().unwrap().to_string(),
                e["dst"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn permanent_neighbours_v4_and_v6() {
    let ns = &netns("nb");
    let fl = ip_flannel(ns);
    let other = veth_pair(ns, "nbo0", "nbo1");
    // Entries that are not ours to manage: a learned one on flannel.1, one on another link.
    ns.ip(&[
        "neigh",
        "add",
        "10.244.9.9",
        "lladdr",
        "0e:00:00:00:09:09",
        "dev",
        "flannel.1",
        "nud",
        "reachable",
    ])
    .unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "10.7.7.7",
        "lladdr",
        "0e:00:00:00:07:07",
        "dev",
        "nbo0",
        "nud",
        "permanent",
    ])
    .unwrap();
    with_netlink(ns, |nl| async move {
        let neighbour = |addr: &str, lladdr: &str| Neighbour {
            ifindex: fl,
            ip: ip(addr),
            mac: mac(lladdr),
        };
        let v4 = neighbour("10.244.3.0", "0e:00:00:00:03:03");
        let v6 = neighbour("fd00:244::3", "0e:00:00:00:03:04");
        for n in [&v4, &v6] {
            nl.ensure_neighbour(n).await.unwrap();
            nl.ensure_neighbour(n).await.unwrap();
        }
        let seen = ip_neighs(ns, "flannel.1");
        for n in [&v4, &v6] {
            let e = seen
                .iter()
                .find(|e| e["dst"] == n.ip.to_string())
                .unwrap_or_else(|| panic!("{} missing: {seen:?}", n.ip));
            assert_eq!(e["lladdr"], n.mac.to_string());
            assert_eq!(e["state"], serde_json::json!(["PERMANENT"]));
        }

        let mut ours = nl.neighbours(fl).await.unwrap();
        ours.sort_by_key(|n| n.ip);
        assert_eq!(ours, vec![v4, v6], "only permanent entries of flannel.1");
        let all = nl.neighbour_entries(fl).await.unwrap();
        assert!(all.iter().any(|e| e.ip == ip("10.244.9.9") && !e.permanent));
        assert!(all.iter().all(|e| e.ifindex == fl));
        assert_eq!(nl.neighbours(other).await.unwrap().len(), 1);

        // Replace changes the MAC of the existing entry.
        let moved = Neighbour {
            mac: mac("0e:00:00:00:03:99"),
            ..v4
        };
        nl.ensure_neighbour(&moved).await.unwrap();
        let seen = ip_neighs(ns, "flannel.1");
        let e = seen.iter().find(|e| e["dst"] == "10.244.3.0").unwrap();
        assert_eq!(e["lladdr"], "0e:00:00:00:03:99");

        for n in [&moved, &v6] {
            nl.remove_neighbour(n).await.unwrap();
            nl.remove_neighbour(n).await.unwrap();
        }
        let left: Vec<_> = ip_neighs(ns, "flannel.1")
            .into_iter()
            .filter(|e| e["state"] == serde_json::json!(["PERMANENT"]))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    });
}

#[test]
fn fdb_entries_on_vxlan() {
    let ns = &netns("fd");
    let fl = ip_flannel(ns);
    // A second VXLAN device whose entries must not show up in flannel.1's listing.
    ns.ip(&[
        "link",
        "add",
        "vx2",
        "type",
        "vxlan",
        "id",
        "2",
        "dstport",
        "8472",
        "local",
        "192.168.77.1",
        "dev",
        "under0",
    ])
    .unwrap();
    let vx2 = ifindex(ns, "vx2");
    std::process::Command::new("bridge")
        .args([
            "-n",
            ns.name(),
            "fdb",
            "add",
            "0e:00:00:00:02:02",
            "dev",
            "vx2",
        ])
        .args(["dst", "192.168.77.22", "self", "permanent"])
        .status()
        .unwrap();
    with_netlink(ns, |nl| async move {
        let peer = Fdb {
            ifindex: fl,
            mac: mac("0e:00:00:00:03:03"),
            dst: ip("192.168.77.3"),
        };
        nl.ensure_fdb(&peer).await.unwrap();
        nl.ensure_fdb(&peer).await.unwrap();
        assert_eq!(
            fdb_dsts(ns, "flannel.1"),
            vec![("0e:00:00:00:03:03".into(), "192.168.77.3".into())]
        );

        // Replace moves the MAC to another VTEP: still one entry.
        let moved = Fdb {
            dst: ip("192.168.77.4"),
            ..peer
        };
        nl.ensure_fdb(&moved).await.unwrap();
        assert_eq!(
            fdb_dsts(ns, "flannel.1"),
            vec![("0e:00:00:00:03:03".into(), "192.168.77.4".into())]
        );

        // Append: the all-zero MAC floods to several VTEPs.
        let flood = |dst: &str| Fdb {
            ifindex: fl,
            mac: MacAddr::ZERO,
            dst: ip(dst),
        };
        nl.append_fdb(&flood("192.168.77.5")).await.unwrap();
        nl.append_fdb(&flood("192.168.77.6")).await.unwrap();
        nl.append_fdb(&flood("192.168.77.6")).await.unwrap(); // already there: Ok
        assert_eq!(
            fdb_dsts(ns, "flannel.1"),
            vec![
                ("00:00:00:00:00:00".into(), "192.168.77.5".into()),
                ("00:00:00:00:00:00".into(), "192.168.77.6".into()),
                ("0e:00:00:00:03:03".into(), "192.168.77.4".into()),
            ]
        );

        let mut ours = nl.fdb_entries(fl).await.unwrap();
        ours.sort_by_key(|e| (e.mac, e.dst));
        assert_eq!(
            ours,
            vec![flood("192.168.77.5"), flood("192.168.77.6"), moved]
        );
        let theirs = nl.fdb_entries(vx2).await.unwrap();
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0].dst, ip("192.168.77.22"));

        // Removing one flood destination keeps the other.
        nl.remove_fdb(&flood("192.168.77.5")).await.unwrap();
        assert_eq!(
            fdb_dsts(ns, "flannel.1"),
            vec![
                ("00:00:00:00:00:00".into(), "192.168.77.6".into()),
                ("0e:00:00:00:03:03".into(), "192.168.77.4".into()),
            ]
        );
        for e in [flood("192.168.77.6"), moved] {
            nl.remove_fdb(&e).await.unwrap();
            nl.remove_fdb(&e).await.unwrap();
        }
        assert!(fdb_dsts(ns, "flannel.1").is_empty());
        assert_eq!(fdb_dsts(ns, "vx2").len(), 1, "other device untouched");
    });
}
