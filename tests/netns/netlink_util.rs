//! Helpers shared by the netlink-layer tests.

#![allow(dead_code)]

use std::future::Future;

use flannel_rs::netlink::{Netlink, VxlanSpec};

use flannel_rs::net::MacAddr;
use serde_json::Value;

use crate::harness::{NetnsGuard, add_veth, ip_json, runtime};

/// Runs `body` on a fresh runtime with a `Netlink` bound to `ns`.
pub fn with_netlink<F, Fut>(ns: &NetnsGuard, body: F)
where
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = ()>,
{
    runtime().block_on(async {
        let nl = Netlink::in_named(ns.name()).expect("netlink handle in test namespace");
        body(nl).await;
    });
}

/// [`with_netlink`] after [`ip_flannel`]: `body` gets flannel.1's index too.
pub fn with_flannel_netlink<F, Fut>(ns: &NetnsGuard, body: F)
where
    F: FnOnce(u32, Netlink) -> Fut,
    Fut: Future<Output = ()>,
{
    let fl = ip_flannel(ns);
    with_netlink(ns, |nl| body(fl, nl));
}

/// `ip -json link show NAME` (one object), or `None` if the link does not exist.
pub fn ip_link(ns: &NetnsGuard, name: &str) -> Option<Value> {
    let links = ip_json(ns, &["-d", "link", "show"]);
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
        .cloned()
}

pub fn ifindex(ns: &NetnsGuard, name: &str) -> u32 {
    let link = ip_link(ns, name).unwrap_or_else(|| panic!("no link {name} in {}", ns.name()));
    link["ifindex"].as_u64().unwrap() as u32
}

pub fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|f| f == flag)
}

/// An underlay for VXLAN devices: veth `under0` (192.168.77.1/24, up) whose peer stays in the
/// same namespace (this kernel has no dummy driver). Returns `under0`'s index.
pub fn underlay(ns: &NetnsGuard) -> u32 {
    add_veth(ns, "under0", "under1");
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "under0"])
        .unwrap();
    ns.ip(&["link", "set", "under0", "up"]).unwrap();
    ns.ip(&["link", "set", "under1", "up"]).unwrap();
    ifindex(ns, "under0")
}

/// A throwaway veth pair `a`/`b` in `ns`, both up; returns `a`'s index.
pub fn veth_pair(ns: &NetnsGuard, a: &str, b: &str) -> u32 {
    add_veth(ns, a, b);
    ns.ip(&["link", "set", a, "up"]).unwrap();
    ns.ip(&["link", "set", b, "up"]).unwrap();
    ifindex(ns, a)
}

pub fn flannel_spec(underlay: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        local: "192.168.77.1".parse().unwrap(),
        underlay_index: Some(underlay),
        port: 8472,
        learning: false,
        gbp: false,
        mtu: Some(1450),
        mac: Some(mac("0e:00:00:00:01:01")),
    }
}

pub fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

/// Creates `flannel.1` (up) over a fresh underlay with `ip`; returns its index.
pub fn ip_flannel(ns: &NetnsGuard) -> u32 {
    underlay(ns);
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
        "local",
        "192.168.77.1",
        "dev",
        "under0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.244.1.0/32", "dev", "flannel.1"])
        .unwrap();
    ns.ip(&["link", "set", "flannel.1", "up"]).unwrap();
    ifindex(ns, "flannel.1")
}

pub fn json_len(v: &Value) -> usize {
    v.as_array().map(Vec::len).unwrap_or(0)
}
