//! Pipelined batches: 1000 flannel peers (neighbour, FDB entry, onlink route each) in one
//! `apply`, idempotent re-apply, per-op results in order, removal — counted with `ip`/`bridge`.

use std::net::IpAddr;

use flannel_rs::netlink::{Fdb, Neighbour, NetlinkError, Op, Route, RouteFilter};

use flannel_rs::net::{Family, MacAddr};
use ipnetwork::IpNetwork;

use crate::harness::{NetnsGuard, bridge_json, ip_json, netns};
use crate::netlink_util::*;

/// Peer `i` of the benchmarks' numbering, with the addresses as the netlink types take them.
fn peer(i: u32) -> (IpNetwork, IpAddr, MacAddr, IpAddr) {
    let (net, gw, mac, public) = frs_testsupport::topology::numbered_vxlan_peer(i);
    (net, gw.into(), mac, public.into())
}

/// Neighbours, then FDB entries, then routes (the daemon's order).
fn peer_ops(ifindex: u32, n: u32, remove: bool) -> Vec<Op> {
    let mut neighs = Vec::new();
    let mut fdbs = Vec::new();
    let mut routes = Vec::new();
    for i in 1..=n {
        let (net, gw, mac, public) = peer(i);
        let neigh = Neighbour {
            ifindex,
            ip: gw,
            mac,
        };
        let fdb = Fdb {
            ifindex,
            mac,
            dst: public,
        };
        let route = Route::new(net).via(gw).dev(ifindex).onlink();
        if remove {
            neighs.push(Op::RemoveNeighbour(neigh));
            fdbs.push(Op::RemoveFdb(fdb));
            routes.push(Op::RemoveRoute(route));
        } else {
            neighs.push(Op::ReplaceNeighbour(neigh));
            fdbs.push(Op::ReplaceFdb(fdb));
            routes.push(Op::ReplaceRoute(route));
        }
    }
    neighs.into_iter().chain(fdbs).chain(routes).collect()
}

/// (routes, permanent neighbours, FDB entries with dst) on flannel.1, as ip/bridge see them.
fn ip_counts(ns: &NetnsGuard) -> (usize, usize, usize) {
    let routes = json_len(&ip_json(ns, &["route", "show", "dev", "flannel.1"]));
    let neighs = json_len(&ip_json(
        ns,
        &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
    ));
    let fdbs = bridge_json(ns, &["fdb", "show", "dev", "flannel.1"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("dst").is_some())
        .count();
    (routes, neighs, fdbs)
}

#[test]
fn a_thousand_peers_in_one_batch() {
    let ns = &netns("b1k");
    with_flannel_netlink(ns, |fl, nl| async move {
        let ops = peer_ops(fl, 1000, false);
        assert_eq!(ops.len(), 3000);
        let results = nl.apply(&ops).await;
        assert_eq!(results.len(), 3000);
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
            panic!("batch failed: {err}");
        }
        assert_eq!(ip_counts(ns), (1000, 1000, 1000));

        // Spot-check one peer through ip.
        let (net, gw, mac, public) = peer(700);
        let r = ip_json(ns, &["route", "show", &net.to_string()]);
        assert_eq!(r[0]["gateway"], gw.to_string());
        assert_eq!(r[0]["flags"], serde_json::json!(["onlink"]));
        let nb = ip_json(ns, &["neigh", "show", &gw.to_string(), "dev", "flannel.1"]);
        assert_eq!(nb[0]["lladdr"], mac.to_string());
        let fdb = bridge_json(ns, &["fdb", "show", "dev", "flannel.1"]);
        let e = fdb
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac.to_string())
            .unwrap();
        assert_eq!(e["dst"], public.to_string());

        // Our dumps agree.
        let routes = nl
            .routes(&RouteFilter::main().oif(fl).family(Family::V4))
            .await
            .unwrap();
        assert_eq!(routes.len(), 1000);
        assert_eq!(nl.neighbours(fl).await.unwrap().len(), 1000);
        assert_eq!(nl.fdb_entries(fl).await.unwrap().len(), 1000);

        // Re-applying is a no-op that succeeds.
        assert!(nl.apply(&ops).await.iter().all(Result::is_ok));
        assert_eq!(ip_counts(ns), (1000, 1000, 1000));

        // Remove all, twice.
        let removals = peer_ops(fl, 1000, true);
        for _ in 0..2 {
            let results = nl.apply(&removals).await;
            if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
                panic!("removal failed: {err}");
            }
        }
        assert_eq!(ip_counts(ns), (0, 0, 0));
    });
}

#[test]
fn batch_results_stay_aligned_with_failures_in_between() {
    let ns = &netns("bal");
    with_flannel_netlink(ns, |fl, nl| async move {
        let (net1, gw1, mac1, _) = peer(1);
        let (net2, gw2, _, _) = peer(2);
        let (net3, gw3, _, _) = peer(3);
        let ops = vec![
            Op::ReplaceNeighbour(Neighbour {
                ifindex: fl,
                ip: gw1,
                mac: mac1,
            }),
            // No onlink: the kernel refuses (ENETUNREACH).
            Op::ReplaceRoute(Route::new(net2).via(gw2).dev(fl)),
            Op::ReplaceRoute(Route::new(net1).via(gw1).dev(fl).onlink()),
            // Invalid input: never sent.
            Op::ReplaceRoute(Route::new(net3).via("fd00::1".parse().unwrap()).dev(fl)),
            Op::RemoveRoute(Route::new(net3).via(gw3).dev(fl)),
            Op::RemoveNeighbour(Neighbour {
                ifindex: fl,
                ip: gw3,
                mac: mac1,
            }),
        ];
        let results = nl.apply(&ops).await;
        assert_eq!(results.len(), ops.len());
        assert!(results[0].is_ok(), "{:?}", results[0]);
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.errno(), Some(101));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "replace route {net2} via {gw2} dev flannel.1: Network is unreachable (os error 101)"
            )),
            "{text}"
        );
        // The kernel's extended-ack text is kept.
        assert!(text.ends_with("(Nexthop has invalid gateway)"), "{text}");
        assert!(results[2].is_ok(), "{:?}", results[2]);
        assert!(
            matches!(&results[3], Err(NetlinkError::InvalidInput { .. })),
            "{:?}",
            results[3]
        );
        assert!(
            results[3]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("gateway fd00::1")
        );
        assert!(results[4].is_ok(), "removing a missing route is Ok");
        assert!(results[5].is_ok(), "removing a missing neighbour is Ok");
        assert_eq!(ip_counts(ns), (1, 1, 0));
        let routes = ip_json(ns, &["route", "show", "dev", "flannel.1"]);
        assert_eq!(routes[0]["dst"], net1.to_string());

        assert!(nl.apply(&[]).await.is_empty());
        let err = nl.apply_all(&ops).await.unwrap_err();
        assert_eq!(err.errno(), Some(101), "first error: {err}");
    });
}
