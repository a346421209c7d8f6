//! Links through `flannel_rs::netlink`, each result checked with `ip -d -json link` /
//! `bridge -json link`.

use flannel_rs::netlink::{Netlink, NetlinkError, VethPair, VxlanOutcome};
use flannel_rs::netns::NetnsFile;

use crate::harness::{bridge_json, netns, runtime};
use crate::netlink_util::*;

#[test]
fn vxlan_is_created_then_adopted() {
    let ns = &netns("vx");
    let spec = flannel_spec(underlay(ns));
    with_netlink(ns, |nl| async move {
        let created = match nl.ensure_vxlan(&spec).await.unwrap() {
            VxlanOutcome::Created(link) => link,
            other => panic!("expected Created, got {other:?}"),
        };
        assert_eq!(created.name, "flannel.1");
        assert_eq!(created.vxlan.as_ref().unwrap().vni, 1);

        let seen = ip_link(ns, "flannel.1").expect("ip sees flannel.1");
        let data = &seen["linkinfo"]["info_data"];
        assert_eq!(seen["linkinfo"]["info_kind"], "vxlan");
        assert_eq!(data["id"], 1);
        assert_eq!(data["local"], "192.168.77.1");
        assert_eq!(data["link"], "under0");
        assert_eq!(data["port"], 8472);
        assert_eq!(data["learning"], false);
        assert!(data.get("gbp").is_none(), "gbp must be off: {data}");
        assert_eq!(seen["mtu"], 1450);
        assert_eq!(seen["address"], "0e:00:00:00:01:01");
        assert_eq!(seen["ifindex"], created.index);

        // Drift in MTU and MAC is repaired in place; the device is kept.
        ns.ip(&[
            "link",
            "set",
            "flannel.1",
            "mtu",
            "1400",
            "address",
            "0e:00:00:00:09:09",
        ])
        .unwrap();
        let adopted = match nl.ensure_vxlan(&spec).await.unwrap() {
            VxlanOutcome::Adopted(link) => link,
            other => panic!("expected Adopted, got {other:?}"),
        };
        assert_eq!(adopted.index, created.index);
        let seen = ip_link(ns, "flannel.1").unwrap();
        assert_eq!(seen["mtu"], 1450);
        assert_eq!(seen["address"], "0e:00:00:00:01:01");
        assert_eq!(seen["ifindex"], created.index);

        // A second create of the same name is refused with EEXIST, naming the device.
        let err = nl.create_vxlan(&spec).await.unwrap_err();
        assert_eq!(err.errno(), Some(17), "{err}");
        assert!(
            err.to_string()
                .starts_with("create vxlan flannel.1: File exists"),
            "{err}"
        );
    });
}

#[test]
fn vxlan_with_other_parameters_needs_recreate() {
    let ns = &netns("vr");
    let spec = flannel_spec(underlay(ns));
    with_netlink(ns, |nl| async move {
        nl.create_vxlan(&spec).await.unwrap();
        let cases = [
            ("vni", {
                let mut s = spec.clone();
                s.vni = 2;
                s
            }),
            ("dstport", {
                let mut s = spec.clone();
                s.port = 4789;
                s
            }),
            ("local", {
                let mut s = spec.clone();
                s.local = "192.168.77.9".parse().unwrap();
                s
            }),
            ("learning", {
                let mut s = spec.clone();
                s.learning = true;
                s
            }),
            ("gbp", {
                let mut s = spec.clone();
                s.gbp = true;
                s
            }),
        ];
        for (what, changed) in cases {
            match nl.ensure_vxlan(&changed).await.unwrap() {
                VxlanOutcome::NeedsRecreate {
                    existing,
                    differences,
                } => {
                    assert_eq!(existing.name, "flannel.1");
                    assert_eq!(differences.len(), 1, "{what}: {differences:?}");
                    assert!(differences[0].starts_with(what), "{what}: {differences:?}");
                }
                other => panic!("{what}: expected NeedsRecreate, got {other:?}"),
            }
            // Nothing was changed behind the caller's back.
            let seen = ip_link(ns, "flannel.1").unwrap();
            assert_eq!(seen["linkinfo"]["info_data"]["id"], 1);
            assert_eq!(seen["linkinfo"]["info_data"]["port"], 8472);
        }

        // The caller recreates: delete, create with the new spec.
        let mut new_spec = spec.clone();
        new_spec.vni = 7;
        new_spec.gbp = true;
        let old = nl.link_by_name("flannel.1").await.unwrap().unwrap();
        nl.delete_link(old.index).await.unwrap();
        let created = nl.create_vxlan(&new_spec).await.unwrap();
        assert_ne!(created.index, old.index);
        let seen = ip_link(ns, "flannel.1").unwrap();
        assert_eq!(seen["linkinfo"]["info_data"]["id"], 7);
        assert_eq!(seen["linkinfo"]["info_data"]["gbp"], true);
        assert!(matches!(
            nl.ensure_vxlan(&new_spec).await.unwrap(),
            VxlanOutcome::Adopted(_)
        ));
    });
}

#[test]
fn vxlan_made_by_ip_is_adopted() {
    let ns = &netns("va");
    let index = ip_flannel(ns);
    let mut spec = flannel_spec(ifindex(ns, "under0"));
    spec.mac = None;
    with_netlink(ns, |nl| async move {
        match nl.ensure_vxlan(&spec).await.unwrap() {
            VxlanOutcome::Adopted(link) => {
                assert_eq!(link.index, index);
                assert!(link.up);
            }
            other => panic!("expected Adopted, got {other:?}"),
        }
    });
}

#[test]
fn bridge_is_ensured_and_kept() {
    let ns = &netns("br");
    veth_pair(ns, "taken0", "taken1");
    with_netlink(ns, |nl| async move {
        let br = nl
            .ensure_bridge("cni0", 1450, Some(mac("0e:00:00:00:0b:0b")))
            .await
            .unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        let seen = ip_link(ns, "cni0").unwrap();
        assert_eq!(seen["linkinfo"]["info_kind"], "bridge");
        assert_eq!(seen["mtu"], 1450);
        assert_eq!(seen["address"], "0e:00:00:00:0b:0b");
        assert!(has_flag(&seen, "UP"), "{seen}");

        ns.ip(&["link", "set", "cni0", "down"]).unwrap();
        let again = nl.ensure_bridge("cni0", 1400, None).await.unwrap();
        assert_eq!(again.index, br.index);
        let seen = ip_link(ns, "cni0").unwrap();
        assert_eq!(seen["mtu"], 1400);
        assert_eq!(
            seen["address"], "0e:00:00:00:0b:0b",
            "MAC kept when not given"
        );
        assert!(has_flag(&seen, "UP"));

        let err = nl.ensure_bridge("taken0", 1450, None).await.unwrap_err();
        assert!(matches!(err, NetlinkError::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("taken0"), "{err}");
        assert!(err.to_string().contains("kind veth"), "{err}");
    });
}

#[test]
fn veth_peer_is_created_directly_in_the_other_namespace() {
    let host = netns("vh");
    let host = &host;
    let pod = netns("vp");
    let pod = &pod;
    with_netlink(host, |nl| async move {
        let br = nl.ensure_bridge("cni0", 1450, None).await.unwrap();
        let pod_ns = NetnsFile::open(pod.path()).unwrap();
        let veth = nl
            .create_veth_with_peer_in(&VethPair {
                host_name: "veth0123",
                peer_name: "eth0",
                peer_ns: &pod_ns,
                mtu: 1450,
                master: Some(br.index),
                peer_mac: Some(mac("0e:00:00:00:0a:0a")),
                host_up: true,
            })
            .await
            .unwrap();
        assert_eq!(veth.master, Some(br.index));
        assert!(veth.up);

        let host_side = ip_link(host, "veth0123").expect("host end in host ns");
        assert_eq!(host_side["master"], "cni0");
        assert_eq!(host_side["mtu"], 1450);
        assert!(has_flag(&host_side, "UP"));
        assert!(
            ip_link(host, "eth0").is_none(),
            "peer must not be in the host ns"
        );

        let pod_side = ip_link(pod, "eth0").expect("peer end in pod ns");
        assert_eq!(pod_side["mtu"], 1450);
        assert_eq!(pod_side["address"], "0e:00:00:00:0a:0a");
        assert_eq!(pod_side["linkinfo"]["info_kind"], "veth");
        assert!(ip_link(pod, "veth0123").is_none());

        // The pod side is reachable through a handle on the pod namespace.
        let pod_nl = Netlink::in_netns(&pod_ns).unwrap();
        let eth0 = pod_nl.link_by_name("eth0").await.unwrap().unwrap();
        assert_eq!(eth0.mac, Some(mac("0e:00:00:00:0a:0a")));
        // Each end names the other (IFLA_LINK) in the other namespace (IFLA_LINK_NETNSID).
        assert_eq!(eth0.link_index, Some(veth.index));
        assert_eq!(veth.link_index, Some(eth0.index));
        assert!(eth0.link_netnsid.is_some() && veth.link_netnsid.is_some());
        assert_eq!((eth0.master, eth0.kind.as_deref()), (None, Some("veth")));
        let br_now = nl.link_by_index(br.index).await.unwrap().unwrap();
        assert_eq!(
            br_now.link_index, None,
            "a bridge has no IFLA_LINK of its own"
        );

        let err = nl
            .create_veth_with_peer_in(&VethPair {
                host_name: "veth0123",
                peer_name: "eth1",
                peer_ns: &pod_ns,
                mtu: 1450,
                master: None,
                peer_mac: None,
                host_up: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.errno(), Some(17));
        assert!(
            err.to_string()
                .starts_with("create veth veth0123 (peer eth1 in "),
            "{err}"
        );

        nl.delete_link(veth.index).await.unwrap();
        assert!(ip_link(host, "veth0123").is_none());
        assert!(
            ip_link(pod, "eth0").is_none(),
            "deleting one end removes the pair"
        );
    });
}

#[test]
fn link_attributes_are_set() {
    let ns = &netns("la");
    let a = veth_pair(ns, "la0", "la1");
    ns.ip(&["link", "set", "la0", "down"]).unwrap();
    with_netlink(ns, |nl| async move {
        nl.set_link_up(a).await.unwrap();
        assert!(has_flag(&ip_link(ns, "la0").unwrap(), "UP"));
        nl.set_link_down(a).await.unwrap();
        assert!(!has_flag(&ip_link(ns, "la0").unwrap(), "UP"));

        nl.set_link_mtu(a, 1234).await.unwrap();
        assert_eq!(ip_link(ns, "la0").unwrap()["mtu"], 1234);
        nl.set_link_mac(a, mac("0e:12:34:56:78:9a")).await.unwrap();
        assert_eq!(ip_link(ns, "la0").unwrap()["address"], "0e:12:34:56:78:9a");

        let br = nl.ensure_bridge("br0", 1500, None).await.unwrap();
        nl.set_link_master(a, Some(br.index)).await.unwrap();
        assert_eq!(ip_link(ns, "la0").unwrap()["master"], "br0");
        let la0 = nl.link_by_index(a).await.unwrap().unwrap();
        assert_eq!(la0.master, Some(br.index));
        // Both ends in this namespace: the peer's index, no namespace id.
        let la1 = nl.link_by_name("la1").await.unwrap().unwrap();
        assert_eq!((la0.link_index, la0.link_netnsid), (Some(la1.index), None));

        nl.set_hairpin(a, true).await.unwrap();
        let slave = &ip_link(ns, "la0").unwrap()["linkinfo"]["info_slave_data"];
        assert_eq!(slave["hairpin"], true, "{slave}");
        let ports = bridge_json(ns, &["-d", "link", "show", "dev", "la0"]);
        assert_eq!(ports[0]["hairpin"], true, "{ports}");
        nl.set_hairpin(a, false).await.unwrap();
        let slave = &ip_link(ns, "la0").unwrap()["linkinfo"]["info_slave_data"];
        assert_eq!(slave["hairpin"], false);

        nl.set_link_master(a, None).await.unwrap();
        assert!(ip_link(ns, "la0").unwrap().get("master").is_none());

        let err = nl.set_link_mtu(a, 10).await.unwrap_err();
        assert_eq!(err.errno(), Some(22));
        assert!(
            err.to_string()
                .starts_with("set mtu link la0: Invalid argument"),
            "{err}"
        );
    });
}

#[test]
fn links_are_listed_found_and_deleted_idempotently() {
    let ns = &netns("ll");
    let a = veth_pair(ns, "ll0", "ll1");
    with_netlink(ns, |nl| async move {
        let mut ours: Vec<(u32, String)> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        let mut theirs: Vec<(u32, String)> = crate::harness::ip_json(ns, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["ifindex"].as_u64().unwrap() as u32,
                    l["ifname"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);

        let by_name = nl.link_by_name("ll0").await.unwrap().unwrap();
        assert_eq!(by_name.index, a);
        assert_eq!(by_name.kind.as_deref(), Some("veth"));
        assert_eq!(nl.link_by_index(a).await.unwrap().unwrap().name, "ll0");
        assert!(nl.link_by_name("nope0").await.unwrap().is_none());
        assert!(nl.link_by_index(999_999).await.unwrap().is_none());

        nl.delete_link(a).await.unwrap();
        assert!(ip_link(ns, "ll0").is_none());
        nl.delete_link(a).await.unwrap();
        nl.delete_link_by_name("ll0").await.unwrap();
    });
}

#[test]
fn handles_open_by_name_path_and_current() {
    let ns = &netns("hp");
    veth_pair(ns, "hp0", "hp1");
    runtime().block_on(async {
        let by_path = Netlink::in_path(ns.path()).unwrap();
        assert!(by_path.link_by_name("hp0").await.unwrap().is_some());
        let by_name = Netlink::in_named(ns.name()).unwrap();
        assert!(by_name.link_by_name("hp1").await.unwrap().is_some());
        // The test process's own namespace: read only, and it must not see the test links.
        let current = Netlink::current().unwrap();
        assert!(current.link_by_name("lo").await.unwrap().is_some());
        assert!(current.link_by_name("hp0").await.unwrap().is_none());
        let err = Netlink::in_named("frs-does-not-exist").unwrap_err();
        assert!(err.to_string().contains("frs-does-not-exist"), "{err}");
    });
    // Outside a runtime the handle cannot be driven: a clear error, not a panic.
    let err = Netlink::in_named(ns.name()).unwrap_err();
    assert!(matches!(err, NetlinkError::NoRuntime), "{err}");
}
