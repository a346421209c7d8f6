//! The monitor stream: changes made behind our back (with `ip`/`bridge`) arrive as typed
//! events; a full socket buffer surfaces as `Overflow`.

use std::net::IpAddr;
use std::time::Duration;

use flannel_rs::netlink::{Fdb, Monitor, MonitorEvent, MonitorGroups, Neighbour, Op, Route};

use crate::harness::netns;
use crate::netlink_util::*;

/// Reads events until `pred` matches one (returning it) or 10 s pass (panicking with what
/// was seen).
async fn wait_for(
    monitor: &mut Monitor,
    what: &str,
    mut pred: impl FnMut(&MonitorEvent) -> bool,
) -> MonitorEvent {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, monitor.next_event()).await {
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(e)) => panic!("monitor failed while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within 10 s; saw {seen:#?}"),
        }
    }
}

#[test]
fn changes_made_with_ip_show_up_as_events() {
    let ns = &netns("mon");
    with_flannel_netlink(ns, |fl, nl| async move {
        let mut monitor = nl.monitor(MonitorGroups::ALL).unwrap();
        let gw: IpAddr = "10.244.3.0".parse().unwrap();
        let mac = mac("0e:00:00:00:03:03");
        let route = Route::new("10.244.3.0/24".parse().unwrap())
            .via(gw)
            .dev(fl)
            .onlink();
        let neigh = Neighbour {
            ifindex: fl,
            ip: gw,
            mac,
        };
        let fdb = Fdb {
            ifindex: fl,
            mac,
            dst: "192.168.77.3".parse().unwrap(),
        };
        nl.apply_all(&[
            Op::ReplaceNeighbour(neigh),
            Op::ReplaceFdb(fdb),
            Op::ReplaceRoute(route.clone()),
        ])
        .await
        .unwrap();
        wait_for(
            &mut monitor,
            "our neighbour",
            |e| matches!(e, MonitorEvent::NeighbourNew(n) if n.as_permanent() == Some(neigh)),
        )
        .await;
        wait_for(&mut monitor, "our fdb entry", |e| {
            e == &MonitorEvent::FdbNew(fdb)
        })
        .await;
        wait_for(&mut monitor, "our route", |e| {
            e == &MonitorEvent::RouteNew(route.clone())
        })
        .await;

        // Someone else deletes them.
        ns.ip(&["route", "del", "10.244.3.0/24", "dev", "flannel.1"])
            .unwrap();
        wait_for(
            &mut monitor,
            "route deletion",
            |e| matches!(e, MonitorEvent::RouteDel(r) if r.dst == route.dst && r.oif == Some(fl)),
        )
        .await;
        ns.ip(&["neigh", "del", "10.244.3.0", "dev", "flannel.1"])
            .unwrap();
        wait_for(
            &mut monitor,
            "neighbour deletion",
            |e| matches!(e, MonitorEvent::NeighbourDel(n) if n.ip == gw && n.ifindex == fl),
        )
        .await;
        let out = std::process::Command::new("bridge")
            .args(["-n", ns.name(), "fdb", "del", "0e:00:00:00:03:03"])
            .args(["dev", "flannel.1", "dst", "192.168.77.3", "self"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(&mut monitor, "fdb deletion", |e| {
            e == &MonitorEvent::FdbDel(fdb)
        })
        .await;

        ns.ip(&["addr", "del", "10.244.1.0/32", "dev", "flannel.1"])
            .unwrap();
        wait_for(&mut monitor, "address deletion", |e| {
            matches!(e, MonitorEvent::AddressDel(a) if a.ifindex == fl
                && a.net == "10.244.1.0/32".parse().unwrap())
        })
        .await;

        ns.ip(&["link", "set", "flannel.1", "down"]).unwrap();
        wait_for(
            &mut monitor,
            "link down",
            |e| matches!(e, MonitorEvent::LinkNew(l) if l.index == fl && !l.up),
        )
        .await;
        ns.ip(&["link", "del", "flannel.1"]).unwrap();
        let MonitorEvent::LinkDel(link) = wait_for(
            &mut monitor,
            "link deletion",
            |e| matches!(e, MonitorEvent::LinkDel(l) if l.index == fl),
        )
        .await
        else {
            unreachable!()
        };
        assert_eq!(link.name, "flannel.1");
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
    });
}

#[test]
fn a_full_buffer_surfaces_as_overflow() {
    let ns = &netns("ovf");
    with_flannel_netlink(ns, |fl, nl| async move {
        // Smallest buffer the kernel allows; 2000 neighbours are far more than it holds.
        let mut monitor = Monitor::open_with_buffer(nl.netns(), MonitorGroups::NEIGH, 1).unwrap();
        let ops: Vec<Op> = (0..2000u32)
            .map(|i| {
                Op::ReplaceNeighbour(Neighbour {
                    ifindex: fl,
                    ip: IpAddr::V4(std::net::Ipv4Addr::new(
                        10,
                        200,
                        (i / 256) as u8,
                        (i % 256) as u8,
                    )),
                    mac: flannel_rs::net::MacAddr([2, 0, 0, 0, (i / 256) as u8, (i % 256) as u8]),
                })
            })
            .collect();
        nl.apply_all(&ops).await.unwrap();
        wait_for(&mut monitor, "overflow", |e| e == &MonitorEvent::Overflow).await;

        // The monitor keeps working after an overflow: drain what was queued, then change more.
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(200), monitor.next_event()).await
        {}
        let late = Neighbour {
            ifindex: fl,
            ip: "10.201.0.1".parse().unwrap(),
            mac: mac("0e:00:00:00:00:01"),
        };
        nl.ensure_neighbour(&late).await.unwrap();
        wait_for(
            &mut monitor,
            "event after overflow",
            |e| matches!(e, MonitorEvent::NeighbourNew(n) if n.as_permanent() == Some(late)),
        )
        .await;
    });
}
