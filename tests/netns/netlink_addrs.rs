//! Addresses through `flannel_rs::netlink`, checked with `ip -json addr`.

use flannel_rs::netlink::Address;
use ipnetwork::IpNetwork;

use crate::harness::{ip_json, netns};
use crate::netlink_util::*;

/// `ip -json addr show dev NAME` as `addr/prefix` strings (global and link scope alike).
fn ip_addrs(ns: &crate::harness::NetnsGuard, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["addr", "show", "dev", dev]);
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    out.sort();
    out
}

#[test]
fn addresses_v4_and_v6_are_ensured_listed_and_removed() {
    let ns = &netns("ad");
    let a = veth_pair(ns, "ad0", "ad1");
    let other = veth_pair(ns, "ae0", "ae1");
    ns.ip(&["addr", "add", "10.0.9.9/24", "dev", "ae0"])
        .unwrap();
    with_netlink(ns, |nl| async move {
        let wanted: Vec<Address> = ["10.244.1.0/32", "10.244.1.1/24", "fd00:10::1/64"]
            .iter()
            .map(|s| Address::new(a, s.parse::<IpNetwork>().unwrap()))
            .collect();
        for addr in &wanted {
            nl.ensure_address(addr).await.unwrap();
            nl.ensure_address(addr).await.unwrap(); // replace: same state, no EEXIST
        }
        let seen = ip_addrs(ns, "ad0");
        for want in ["10.244.1.0/32", "10.244.1.1/24", "fd00:10::1/64"] {
            assert!(
                seen.contains(&want.to_string()),
                "{want} missing in {seen:?}"
            );
        }
        let v4: Vec<_> = ip_json(ns, &["-4", "addr", "show", "dev", "ad0"])[0]["addr_info"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(v4.len(), 2, "replace must not duplicate: {v4:?}");
        let brd = v4.iter().find(|a| a["prefixlen"] == 24).unwrap();
        assert_eq!(brd["broadcast"], "10.244.1.255");

        let mut listed: Vec<String> = nl
            .addresses(a)
            .await
            .unwrap()
            .iter()
            .inspect(|x| assert_eq!(x.ifindex, a))
            .map(|x| x.net.to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, seen, "our listing equals ip's (incl. link-local)");
        assert!(!listed.contains(&"10.0.9.9/24".to_string()));
        let others: Vec<Address> = nl
            .addresses(other)
            .await
            .unwrap()
            .into_iter()
            .filter(|x| x.net.is_ipv4())
            .collect();
        assert_eq!(
            others,
            vec![Address::new(other, "10.0.9.9/24".parse().unwrap())],
            "only the asked-for link"
        );

        for addr in &wanted {
            nl.remove_address(addr).await.unwrap();
            nl.remove_address(addr).await.unwrap(); // already gone: Ok
        }
        let left = ip_addrs(ns, "ad0");
        assert!(left.iter().all(|x| x.starts_with("fe80:")), "{left:?}");

        let err = nl
            .ensure_address(&Address::new(999_999, "10.1.1.1/24".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.errno(), Some(19));
        assert!(
            err.to_string()
                .starts_with("replace address 10.1.1.1/24 dev if999999: No such device"),
            "{err}"
        );
    });
}
