//! Routes through `flannel_rs::netlink`, checked with `ip -json route`.

use std::net::IpAddr;

use flannel_rs::netlink::{Route, RouteFilter, RouteProtocol, RouteScope};

use flannel_rs::net::Family;
use serde_json::Value;

use crate::harness::{NetnsGuard, ip_json, netns};
use crate::netlink_util::*;

fn ip_routes(ns: &NetnsGuard, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["route", "show"];
    full.extend_from_slice(args);
    ip_json(ns, &full).as_array().unwrap().clone()
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn onlink_gateway_route_is_ensured_and_removed() {
    let ns = &netns("ro");
    with_flannel_netlink(ns, |fl, nl| async move {
        let route = Route::new(net("10.244.3.0/24"))
            .via(ip("10.244.3.0"))
            .dev(fl)
            .onlink();
        nl.ensure_route(&route).await.unwrap();
        nl.ensure_route(&route).await.unwrap();
        let seen = ip_routes(ns, &["dev", "flannel.1"]);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["dst"], "10.244.3.0/24");
        assert_eq!(seen[0]["gateway"], "10.244.3.0");
        assert_eq!(seen[0]["flags"], serde_json::json!(["onlink"]));
        assert!(
            seen[0].get("protocol").is_none(),
            "proto boot (ip hides it): {}",
            seen[0]
        );

        let ours = nl
            .routes(&RouteFilter::main().oif(fl).family(Family::V4))
            .await
            .unwrap();
        assert_eq!(ours, vec![route.clone()]);

        nl.remove_route(&route).await.unwrap();
        assert!(ip_routes(ns, &["dev", "flannel.1"]).is_empty());
        nl.remove_route(&route).await.unwrap(); // already gone: Ok
    });
}

#[test]
fn gateway_route_without_onlink_fails_naming_op_and_object() {
    let ns = &netns("ru");
    with_flannel_netlink(ns, |fl, nl| async move {
        let route = Route::new(net("10.244.3.0/24"))
            .via(ip("10.244.3.0"))
            .dev(fl);
        let err = nl.ensure_route(&route).await.unwrap_err();
        assert_eq!(err.errno(), Some(101), "{err}");
        assert!(
            err.to_string().starts_with(
                "replace route 10.244.3.0/24 via 10.244.3.0 dev flannel.1: Network is unreachable (os error 101)"
            ),
            "{err}"
        );
        assert!(ip_routes(ns, &["dev", "flannel.1"]).is_empty());
    });
}

#[test]
fn route_attributes_reach_the_kernel() {
    let ns = &netns("ra");
    let u = underlay(ns); // 192.168.77.1/24 on under0
    ns.ip(&["addr", "add", "fd00:77::1/64", "dev", "under0", "nodad"])
        .unwrap();
    with_netlink(ns, |nl| async move {
        let scoped = Route::new(net("10.9.0.0/24"))
            .dev(u)
            .scope(RouteScope::Link)
            .source(ip("192.168.77.1"))
            .metric(5)
            .protocol(RouteProtocol::Other(77))
            .table(100);
        let big_table = Route::new(net("10.10.0.0/16"))
            .via(ip("192.168.77.254"))
            .dev(u)
            .table(1000);
        let v6 = Route::new(net("fd00:99::/64"))
            .via(ip("fd00:77::fe"))
            .dev(u)
            .metric(300);
        for r in [&scoped, &big_table, &v6] {
            nl.ensure_route(r).await.unwrap();
        }

        let t100 = ip_routes(ns, &["table", "100"]);
        assert_eq!(t100.len(), 1, "{t100:?}");
        assert_eq!(t100[0]["dst"], "10.9.0.0/24");
        assert_eq!(t100[0]["scope"], "link");
        assert_eq!(t100[0]["prefsrc"], "192.168.77.1");
        assert_eq!(t100[0]["metric"], 5);
        assert_eq!(t100[0]["protocol"], "77");
        let t1000 = ip_routes(ns, &["table", "1000"]);
        assert_eq!(t1000[0]["gateway"], "192.168.77.254", "{t1000:?}");
        let r6 = ip_json(ns, &["-6", "route", "show", "fd00:99::/64"]);
        assert_eq!(r6[0]["gateway"], "fd00:77::fe", "{r6}");
        assert_eq!(r6[0]["metric"], 300);

        assert_eq!(
            nl.routes(&RouteFilter::default().table(100)).await.unwrap(),
            vec![scoped.clone()]
        );
        assert_eq!(
            nl.routes(&RouteFilter::default().table(1000))
                .await
                .unwrap(),
            vec![big_table.clone()]
        );
        let ours6 = nl
            .routes(&RouteFilter::main().family(Family::V6).oif(u))
            .await
            .unwrap();
        assert!(ours6.contains(&v6), "{ours6:?}");

        // Replace in place: a new gateway for the same destination is one route, not two.
        let moved = big_table.clone().via(ip("192.168.77.253"));
        nl.ensure_route(&moved).await.unwrap();
        let t1000 = ip_routes(ns, &["table", "1000"]);
        assert_eq!(t1000.len(), 1);
        assert_eq!(t1000[0]["gateway"], "192.168.77.253");

        for r in [&scoped, &moved, &v6] {
            nl.remove_route(r).await.unwrap();
            nl.remove_route(r).await.unwrap();
        }
        assert!(ip_routes(ns, &["table", "100"]).is_empty());
        assert!(ip_routes(ns, &["table", "1000"]).is_empty());
        assert!(
            ip_json(ns, &["-6", "route", "show", "fd00:99::/64"])
                .as_array()
                .unwrap()
                .is_empty()
        );
    });
}

#[test]
fn route_filters_match_ips_view() {
    let ns = &netns("rf");
    let a = veth_pair(ns, "rfa", "rfa1");
    let b = veth_pair(ns, "rfb", "rfb1");
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "rfa"])
        .unwrap();
    ns.ip(&["addr", "add", "10.2.0.1/24", "dev", "rfb"])
        .unwrap();
    for (dst, dev, proto, table) in [
        ("10.50.1.0/24", "rfa", "static", "main"),
        ("10.50.2.0/24", "rfa", "99", "main"),
        ("10.50.3.0/24", "rfb", "99", "main"),
        ("10.50.4.0/24", "rfb", "99", "200"),
    ] {
        ns.ip(&[
            "route", "add", dst, "dev", dev, "proto", proto, "table", table,
        ])
        .unwrap();
    }
    with_netlink(ns, |nl| async move {
        let dsts = |routes: Vec<Route>| {
            let mut v: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
            v.sort();
            v
        };
        let ip_dsts = |args: &[&str]| {
            let mut v: Vec<String> = ip_routes(ns, args)
                .iter()
                .map(|r| {
                    let d = r["dst"].as_str().unwrap();
                    if d.contains('/') {
                        d.to_string()
                    } else {
                        format!("{d}/32")
                    }
                })
                .collect();
            v.sort();
            v
        };
        let p99 = RouteProtocol::Other(99);
        let cases: Vec<(RouteFilter, Vec<&str>)> = vec![
            (
                RouteFilter::main().family(Family::V4),
                vec!["table", "main"],
            ),
            (
                RouteFilter::main().family(Family::V4).oif(a),
                vec!["table", "main", "dev", "rfa"],
            ),
            (
                RouteFilter::main().protocol(p99),
                vec!["table", "main", "proto", "99"],
            ),
            (
                RouteFilter::main().oif(b).protocol(p99),
                vec!["table", "main", "dev", "rfb", "proto", "99"],
            ),
            (RouteFilter::default().table(200), vec!["table", "200"]),
            (
                RouteFilter::default().protocol(p99).family(Family::V4),
                vec!["table", "all", "proto", "99"],
            ),
        ];
        for (filter, args) in cases {
            let ours = dsts(nl.routes(&filter).await.unwrap());
            assert_eq!(ours, ip_dsts(&args), "filter {filter:?} vs ip {args:?}");
            assert!(!ours.is_empty(), "{filter:?}");
        }
        // Kernel-side filtering: the table that was never created is simply empty.
        assert!(
            nl.routes(&RouteFilter::default().table(4242))
                .await
                .unwrap()
                .is_empty()
        );
        // Links that are gone have no routes.
        assert!(
            nl.routes(&RouteFilter::main().oif(999_999))
                .await
                .unwrap()
                .is_empty()
        );
        let v6 = nl
            .routes(&RouteFilter::main().family(Family::V6))
            .await
            .unwrap();
        assert!(v6.iter().all(|r| r.family() == Family::V6));
    });
}
