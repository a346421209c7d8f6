//! flanneld's pure core: no I/O, no clocks, no async — values in, values out, so every rule
//! is unit-tested in place. The daemon's I/O (one level up) calls these functions.
//!
//! Data flow (see docs/architecture.md): flags + net-conf.json → [`config`]/[`netconf`];
//! Node objects → [`node::NodeInfo`] (slim cache) → [`peers`] (parse + validate, conflicts)
//! → [`desired`] (kernel state as a pure function) → [`plan`] (diff against the kernel's
//! actual state). Our own Node's annotations are computed via [`annotations`]; the lease via
//! [`lease`]; the underlay interface is chosen by [`iface`] on plain data; [`masq`] renders the
//! ip-masq rules as text; [`backoff`] decides delays (the caller sleeps); [`readiness`] is the
//! one readiness rule and [`refusals`] tells which peer a refused kernel entry belongs to;
//! [`reachability`] reads tunnel probe answers and keeps each peer's reachability.
//!
//! Wiring recipe (what the I/O layer does around these functions):
//! 1. `Flags::parse_with_env` → `Flags::resolve` → [`config::DaemonConfig`];
//!    `NetConf::parse(file)`.
//! 2. Find our node (`NodeIdentity`), read it once: `annotations::node_public_ip_override`
//!    (overrides `--public-ip[v6]`), list links → `iface::select_external_interface`.
//! 3. Lease: `NetConf::lease_from_pod_cidrs(name, &node.pod_cidrs)`; `is_not_assigned()` ⇒ wait.
//! 4. MACs: `annotations::choose_vtep_mac(existing device MAC, own_mac_from_annotations, rng)`.
//! 5. Own annotations: `desired_annotations(keys, ext.advertisement(..), .., &node.annotations)`
//!    then `annotations_patch(&node.annotations, &desired, &node.resource_version)` → PATCH
//!    `nodes/NAME/status` (merge patch); 409 ⇒ re-read and recompute. Repeat on every own-node
//!    watch event whose `relevant_fingerprint` changed.
//! 6. Reconcile: `select_peers(cache, keys, &ValidationContext)` → `desired_state(..)` → per
//!    family `plan::diff(actual dump, desired)` → apply `Plan::steps()` in order.
//! 7. `NetConf::subnet_env(..).render()` → `crate::subnet_env::write_if_changed`; masq text from
//!    [`masq`].

pub mod annotations;
pub mod attribution;
pub mod backoff;
pub mod config;
pub mod desired;
pub mod events;
pub mod iface;
pub mod json_list;
pub mod lease;
pub mod masq;
pub mod netconf;
pub mod node;
pub mod peers;
pub mod plan;
pub mod reachability;
pub mod readiness;
pub mod refusals;
pub mod watchdog;

/// The whole pure pipeline on one realistic input, as the wiring will drive it.
#[cfg(test)]
mod pipeline_tests {
    use rand::SeedableRng;
    use serde_json::json;

    use super::annotations::{self, AnnotationKeys, MacSource};
    use super::config::IfaceSelectors;
    use super::desired::{self, FdbEntry, KernelEntries, NeighbourEntry, OwnMacs};
    use super::iface::{self, AddrFlags, HostNetwork, LinkAddress, LinkInfo, SelectionRequest};
    use super::masq;
    use super::netconf::NetConf;
    use super::node::{NodeInfo, SlimNode};
    use super::peers::{self, RejectKind, ValidationContext};
    use super::plan::{self, Step};
    use crate::net::{Family, MacAddr};

    const P: &str = "flannel.alpha.coreos.com/";

    fn node_json(name: &str, created: &str, cidr: &str, ann: serde_json::Value) -> NodeInfo {
        let slim: SlimNode = serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "77",
                         "creationTimestamp": created, "annotations": ann},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.1"}]}
        }))
        .unwrap();
        NodeInfo::from_slim(slim, &AnnotationKeys::default().prefix)
    }

    fn peer_ann(mac: &str, ip: &str) -> serde_json::Value {
        json!({
            format!("{P}kube-subnet-manager"): "true",
            format!("{P}backend-type"): "vxlan",
            format!("{P}backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            format!("{P}public-ip"): ip,
            "other.example.com/x": "kept out of the cache"
        })
    }

    #[test]
    fn own_node_clobbered_peers_mixed_kernel_stale() {
        let keys = AnnotationKeys::default();
        let netconf = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();

        // Our node: another controller wiped its annotations; the existing device keeps its MAC.
        let me = node_json("me", "2024-01-01T00:00:00Z", "10.244.1.0/24", json!({}));
        let lease = netconf.lease_from_pod_cidrs("me", &me.pod_cidrs).unwrap();

        let host = HostNetwork {
            links: vec![LinkInfo {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                addresses: vec![LinkAddress {
                    ip: "192.168.1.1".parse().unwrap(),
                    prefix_len: 24,
                    flags: AddrFlags {
                        permanent: true,
                        ..AddrFlags::default()
                    },
                }],
            }],
            default_v4: Some(2),
            ..HostNetwork::default()
        };
        let selectors = IfaceSelectors::default();
        let (pub4, pub6, warnings) =
            annotations::node_public_ip_override(&keys, &me.annotations.to_map());
        assert!(warnings.is_empty());
        let ext = iface::select_external_interface(
            &SelectionRequest {
                selectors: &selectors,
                public_ip: pub4,
                public_ipv6: pub6,
                enable_v4: true,
                enable_v6: false,
            },
            &host,
        )
        .unwrap();

        let device_mac = MacAddr([0x0e, 1, 2, 3, 4, 5]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let from_ann =
            annotations::own_mac_from_annotations(&keys, &me.annotations.to_map(), Family::V4);
        let (mac, source) = annotations::choose_vtep_mac(Some(device_mac), from_ann, &mut rng);
        assert_eq!((mac, source), (device_mac, MacSource::ExistingDevice));

        // Annotations: full re-assertion with the resourceVersion lock.
        let adv = ext
            .advertisement(Family::V4, netconf.backend.vni, mac)
            .unwrap();
        let want =
            annotations::desired_annotations(&keys, Some(&adv), None, &me.annotations.to_map());
        let patch = annotations::annotations_patch(
            &me.annotations.to_map(),
            &want.annotations,
            &me.resource_version,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!({"metadata": {"resourceVersion": "77", "annotations": {
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:01:02:03:04:05\"}",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "192.168.1.1"
            }}})
        );
        // After the patch the node is right: no further patch.
        let mut healed = me.annotations.to_map();
        healed.extend(want.annotations.clone());
        assert!(annotations::annotations_patch(&healed, &want.annotations, "78").is_none());

        // Peers: two good, one hostile (claims our public IP), one newcomer stealing a subnet.
        let cache = vec![
            me.clone(),
            node_json(
                "a",
                "2024-01-02T00:00:00Z",
                "10.244.2.0/24",
                peer_ann("02:00:00:00:00:02", "192.168.1.2"),
            ),
            node_json(
                "b",
                "2024-01-03T00:00:00Z",
                "10.244.3.0/24",
                peer_ann("02:00:00:00:00:03", "192.168.2.3"),
            ),
            node_json(
                "evil",
                "2024-01-04T00:00:00Z",
                "10.244.4.0/24",
                peer_ann("02:00:00:00:00:04", "192.168.1.1"),
            ),
            node_json(
                "thief",
                "2024-01-05T00:00:00Z",
                "10.244.2.0/25",
                peer_ann("02:00:00:00:00:05", "192.168.1.5"),
            ),
        ];
        assert_eq!(cache[1].annotations.len(), 4, "foreign annotation dropped");
        let ctx = ValidationContext::new(&netconf, "me", lease, ext.own_ips(), vec![mac]);
        let sel = peers::select_peers(&cache, &keys, &ctx);
        let (names, rejected) = sel.verdicts();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            rejected,
            [
                ("evil", RejectKind::BadPublicIp),
                ("thief", RejectKind::SubnetConflict)
            ]
        );

        // Desired state and the plan against a kernel with one stale peer and one missing route.
        let want_state = desired::desired_state(
            &netconf.backend,
            &ext.underlay(),
            &lease,
            &OwnMacs {
                v4: Some(mac),
                v6: None,
            },
            &sel.peers,
        )
        .unwrap();
        let fam = want_state.v4.as_ref().unwrap();
        assert_eq!(fam.device.name, "flannel.1");
        assert_eq!(fam.device.address.to_string(), "10.244.1.0/32");
        assert_eq!(fam.entries.len(), 6);

        let mut actual: KernelEntries = fam.entries.clone();
        let route_b = *actual
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.3.0/24")
            .unwrap();
        actual.routes.remove(&route_b);
        let stale_mac = MacAddr([2, 0, 0, 0, 0, 9]);
        actual.neighbours.insert(NeighbourEntry {
            ip: "10.244.9.0".parse().unwrap(),
            mac: stale_mac,
        });
        actual.fdb.insert(FdbEntry {
            mac: stale_mac,
            dst: "192.168.1.9".parse().unwrap(),
        });
        let p = plan::diff(&actual, &fam.entries);
        assert_eq!(
            p.steps(),
            vec![
                Step::AddRoute(route_b),
                Step::RemoveFdb(FdbEntry {
                    mac: stale_mac,
                    dst: "192.168.1.9".parse().unwrap()
                }),
                Step::RemoveNeighbour(NeighbourEntry {
                    ip: "10.244.9.0".parse().unwrap(),
                    mac: stale_mac
                }),
            ]
        );
        assert!(plan::diff(&fam.entries, &fam.entries).is_empty());

        // subnet.env and masquerade rules for the lease.
        let env = netconf.subnet_env(&lease, want_state.pod_mtu().unwrap(), true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let rules = masq::masq_rules(&masq::MasqSpec {
            network: netconf.network(Family::V4).unwrap(),
            subnet: lease.get(Family::V4).unwrap(),
            fully_random: true,
        });
        assert!(rules[1].starts_with("-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 "));
    }
}
