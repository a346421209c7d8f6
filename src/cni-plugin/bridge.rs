//! The reference `bridge` plugin with `host-local` IPAM, done natively: `cni0` created or
//! adopted (gateway address, MTU, up, MAC pinned), a veth whose container end is created
//! directly in the pod namespace, addresses, routes and the sysctls the reference sets.
//!
//! Order of ADD (each step undone on failure, in reverse):
//! IP reservation → bridge → gateway address + MAC pin + forwarding → veth (host end
//! enslaved, still down — up at once only as a brand-new bridge's first port; hairpin) → pod
//! side (sysctls, addresses, up, routes) → host end up → masquerade. Reserving first means an
//! exhausted pool fails before anything is created.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::netlink::{
    Address, Link, LinkOperState, Netlink, NetlinkError, Op, Route as NlRoute, RouteFilter,
    RouteScope, VethPair,
};

use crate::net::{Family, MacAddr};
use crate::netns::{NetnsError, NetnsFile};
use nix::sched::{CloneFlags, setns};
use std::os::fd::AsFd;

use super::config::BridgeConf;
use super::ifreq::{TxqlenError, set_txqlen};
use super::ipam::{self, Allocation, History, IpamConf, IpamError, Owner, Store};
use super::ipmasq::{self, IpMasqError};
use super::sysctl::{self, SysctlError};
use super::types::{CniError, CniResult, ErrorCode, Interface, IpConfig, Route};

const EEXIST: i32 = nix::libc::EEXIST;
/// Attempts at a random host veth name before giving up (the reference tries 10 times).
const VETH_NAME_TRIES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    IpMasq(#[from] IpMasqError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Txqlen(#[from] TxqlenError),
    #[error("{0:?} already exists but is not a bridge")]
    NotABridge(String),
    #[error("{bridge:?} already has an IP address different from {wanted}")]
    AddressConflict { bridge: String, wanted: IpNetwork },
    #[error("container veth name provided ({0}) already exists")]
    InterfaceExists(String),
    #[error("could not find a free host veth name after {VETH_NAME_TRIES} tries")]
    NoVethName,
    #[error("IPAM plugin returned missing IP config")]
    NoAddresses,
    #[error("{0}")]
    Check(String),
    #[error("{0}")]
    Internal(String),
}

impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> Self {
        let code = match &e {
            BridgeError::Ipam(IpamError::Config(_)) => ErrorCode::InvalidNetworkConfig,
            _ => ErrorCode::Internal,
        };
        CniError::new(code, e.to_string())
    }
}

/// Who is being attached, and where.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    /// The network name (IPAM directory, masquerade chain).
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: &'a NetnsFile,
    /// `CNI_NETNS` as given: the result's `sandbox`.
    pub netns_path: &'a str,
}

impl Attach<'_> {
    fn owner(&self) -> Owner {
        Owner::new(self.container_id, self.ifname)
    }
}

/// An ADD that failed: the error, and whether everything it did was undone.
#[derive(Debug)]
pub struct AddFailure {
    pub error: BridgeError,
    /// False when some undo step failed: the caller keeps its DEL record so that the
    /// runtime's DEL can finish the job.
    pub rolled_back: bool,
    pub undo_errors: Vec<String>,
}

#[derive(Default)]
struct Undo {
    allocations: Vec<Allocation>,
    host_veth: Option<String>,
    masquerade: Vec<IpNetwork>,
}

impl Undo {
    async fn run(self, node: Option<&Netlink>, conf: &IpamConf, at: &Attach<'_>) -> Vec<String> {
        let mut errors = Vec::new();
        let chain = ipmasq::chain_name(at.network, at.container_id);
        let comment = ipmasq::comment(at.network, at.container_id);
        for ip in &self.masquerade {
            if let Err(e) = ipmasq::teardown(*ip, &chain, &comment).await {
                errors.push(e.to_string());
            }
        }
        // Deleting the host end removes the container end with it.
        // A veth exists only if the node handle was there to create it.
        if let (Some(name), Some(node)) = (&self.host_veth, node)
            && let Err(e) = node.delete_link_by_name(name).await
        {
            errors.push(e.to_string());
        }
        if self.allocations.iter().any(|a| a.newly_reserved) {
            let store = Store::new(&conf.dir, conf.durability);
            match store.lock() {
                Ok(locked) => {
                    for a in self.allocations.iter().filter(|a| a.newly_reserved) {
                        if let Err(e) = locked.release_ip(a.address.ip(), &at.owner()) {
                            errors.push(e.to_string());
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }
}

/// ADD: returns the result (interfaces `[bridge, host veth, container]`, `ips[].interface = 2`).
///
/// Order: IP reservation (files) → node side on the current-thread runtime `rt` (bridge,
/// gateway address, forwarding, veth with its host end still down, hairpin) → a synchronous
/// step in which the calling thread briefly enters the pod namespace ([`in_pod_namespace`]:
/// sysctls, and the pod's netlink socket is opened there) → pod side (addresses, up, routes)
/// → host end up → masquerade. Reserving first means an exhausted pool fails before anything
/// else is touched.
///
/// No helper thread: both sockets are opened by the calling thread, in the namespace it is in
/// at that moment (a socket keeps the namespace it was created in).
pub fn add(
    rt: &tokio::runtime::Runtime,
    conf: &BridgeConf,
    ipam_conf: &IpamConf,
    at: &Attach<'_>,
    mac: Option<MacAddr>,
    requested: &[IpAddr],
    history: History,
) -> Result<CniResult, AddFailure> {
    let timer = StepTimer::new();
    let home = NetnsFile::current().map_err(|e| AddFailure {
        error: e.into(),
        rolled_back: true,
        undo_errors: Vec::new(),
    })?;
    let mut undo = Undo::default();
    let mut node = None;
    let outcome = (|| -> Result<CniResult, BridgeError> {
        {
            let store = Store::new(&ipam_conf.dir, ipam_conf.durability);
            let locked = store.lock()?;
            undo.allocations =
                ipam::allocate(&locked, &ipam_conf.ranges, &at.owner(), requested, history)?;
        }
        if undo.allocations.is_empty() {
            return Err(BridgeError::NoAddresses);
        }
        timer.step("ipam");
        let node = node.insert(open_netlink(rt, &home)?);
        timer.step("node socket");
        let node_side = rt.block_on(node_phase(
            node, conf, ipam_conf, at, mac, &mut undo, &timer,
        ))?;
        let has_v6 = undo.allocations.iter().any(|a| a.address.is_ipv6());
        let pod = in_pod_namespace(at.netns, &home, || {
            pod_settings(at.ifname, has_v6)?;
            open_netlink(rt, at.netns)
        })??;
        timer.step("pod settings and socket");
        rt.block_on(pod_phase(
            node, &pod, conf, at, node_side, &mut undo, &timer,
        ))
    })();
    match outcome {
        Ok(result) => Ok(result),
        Err(error) => {
            let undo_errors = rt.block_on(undo.run(node.as_ref(), ipam_conf, at));
            for e in &undo_errors {
                tracing::error!(container_id = at.container_id, error = %e, "undo after failed ADD");
            }
            Err(AddFailure {
                error,
                rolled_back: undo_errors.is_empty(),
                undo_errors,
            })
        }
    }
}

/// A netlink handle in `ns`, which must be the calling thread's namespace (then no helper
/// thread is involved).
fn open_netlink(rt: &tokio::runtime::Runtime, ns: &NetnsFile) -> Result<Netlink, BridgeError> {
    let _runtime = rt.enter();
    Ok(Netlink::in_netns(ns)?)
}

/// Debug-level timing of ADD's steps (`FLANNEL_CNI_LOG=debug`).
struct StepTimer(std::time::Instant);

impl StepTimer {
    fn new() -> Self {
        Self(std::time::Instant::now())
    }

    fn step(&self, name: &'static str) {
        tracing::debug!(
            step = name,
            elapsed_us = self.0.elapsed().as_micros() as u64,
            "ADD"
        );
    }
}

/// Runs `f` on the calling thread inside `target`, then returns to `home`.
///
/// Only called between two `block_on`s of the plugin's current-thread runtime: no async task
/// can run on this thread meanwhile, and sockets keep the namespace they were created in. It
/// saves the hand-off to a helper thread, which on a busy node costs milliseconds of
/// scheduling delay. If the thread cannot return, the ADD fails right there (the node-side
/// work that would follow must not run in the pod's namespace).
fn in_pod_namespace<T>(
    target: &NetnsFile,
    home: &NetnsFile,
    f: impl FnOnce() -> T,
) -> Result<T, BridgeError> {
    setns(target.file().as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| BridgeError::Internal(format!("enter {}: {e}", target.path().display())))?;
    let out = f();
    setns(home.file().as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        BridgeError::Internal(format!(
            "return to the node namespace from {}: {e}",
            target.path().display()
        ))
    })?;
    Ok(out)
}

/// `veth` and 8 random hex digits, like the reference. Straight from getrandom(2): the
/// plugin runs once per call and needs one number, not a seeded generator (whose seeding
/// costs a poll of /dev/random and a read of /dev/urandom in a static build).
fn random_veth_name() -> String {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let n = unsafe { nix::libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let value = if n == bytes.len() as isize {
        u32::from_ne_bytes(bytes)
    } else {
        rand::random::<u32>()
    };
    format!("veth{value:08x}")
}

/// Creates the bridge (MTU, up) or adopts an existing one without touching its MTU, like the
/// reference. (A gateway bridge's MAC is pinned when its address is added, before any port of
/// ours joins: see [`ensure_gateway_address`].)
async fn ensure_bridge(node: &Netlink, conf: &BridgeConf) -> Result<Link, BridgeError> {
    let link = match node.link_by_name(&conf.bridge).await? {
        Some(link) => {
            if link.kind.as_deref() != Some("bridge") {
                return Err(BridgeError::NotABridge(conf.bridge.clone()));
            }
            if !link.up {
                node.set_link_up(link.index).await?;
            }
            link
        }
        None => {
            let mtu = if conf.mtu == 0 { 1500 } else { conf.mtu };
            node.ensure_bridge(&conf.bridge, mtu, None).await?
        }
    };
    sysctl::set_if_present(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0")?;
    Ok(link)
}

/// The gateway address on the bridge: same address present → fine; for IPv4 any other
/// address, for IPv6 an overlapping one, is a conflict unless `forceAddress`.
async fn ensure_gateway_address(
    node: &Netlink,
    conf: &BridgeConf,
    bridge: &Link,
    wanted: IpNetwork,
) -> Result<(), BridgeError> {
    let family = Family::of_ip(wanted.ip());
    for a in &node.addresses_in(bridge.index, family).await? {
        if a.net == wanted {
            return Ok(());
        }
        let conflicts =
            wanted.is_ipv4() || a.net.contains(wanted.ip()) || wanted.contains(a.net.ip());
        if conflicts {
            if conf.force_address {
                node.remove_address(a).await?;
            } else {
                return Err(BridgeError::AddressConflict {
                    bridge: conf.bridge.clone(),
                    wanted,
                });
            }
        }
    }
    node.ensure_address(&Address::new(bridge.index, wanted))
        .await?;
    // Setting the MAC to itself marks it as set (addr_assign_type 3), so it no longer follows
    // the lowest port MAC as pods come and go. Only when the address was just added, like
    // the reference: a MAC change, even to the same value, makes the kernel flush the
    // bridge's ARP cache, which on every ADD would make the node re-resolve all its pods.
    if let Some(mac) = bridge.mac {
        node.set_link_mac(bridge.index, mac).await?;
    }
    Ok(())
}

/// The IPAM part of the result: gateways and, with `isDefaultGateway`, a default route per
/// family unless IPAM already gave one with a gateway.
fn ipam_result(conf: &BridgeConf, ipam_conf: &IpamConf, allocations: &[Allocation]) -> CniResult {
    let mut routes = ipam_conf.routes.clone();
    let mut ips = Vec::new();
    for a in allocations {
        ips.push(IpConfig {
            address: a.address,
            gateway: Some(a.gateway),
            interface: Some(2),
        });
    }
    if conf.is_default_gateway {
        for v4 in [true, false] {
            let Some(first) = allocations.iter().find(|a| a.address.is_ipv4() == v4) else {
                continue;
            };
            let default: IpNetwork = if v4 {
                IpNetwork::new(IpAddr::from([0u8; 4]), 0)
            } else {
                IpNetwork::new(IpAddr::from([0u16; 8]), 0)
            }
            .unwrap_or(first.address);
            let present = routes.iter().any(|r| r.gw.is_some() && r.dst == default);
            if !present {
                routes.push(Route::to(default, Some(first.gateway)));
            }
        }
    }
    CniResult {
        interfaces: Vec::new(),
        ips,
        routes,
        dns: Default::default(),
    }
}

/// A result route as installed in the pod: via its gateway, else the family's gateway.
fn pod_route(r: &Route, ifindex: u32, ips: &[IpConfig]) -> NlRoute {
    let family_gw = ips
        .iter()
        .find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
        .and_then(|ip| ip.gateway);
    let mut route = NlRoute::new(r.dst).dev(ifindex);
    match r.gw.or(family_gw) {
        Some(gw) => route = route.via(gw),
        None => route = route.scope(RouteScope::Link),
    }
    if let Some(p) = r.priority {
        route = route.metric(p);
    }
    if let Some(t) = r.table {
        route = route.table(t);
    }
    if let Some(s) = r.scope {
        route = route.scope(RouteScope::from(s));
    }
    route
}

/// Inside the pod, before addresses: txqlen 0 and the sysctls the reference writes.
fn pod_settings(ifname: &str, has_v6: bool) -> Result<(), BridgeError> {
    set_txqlen(ifname, 0)?;
    pod_sysctls(ifname, has_v6)?;
    Ok(())
}

fn pod_sysctls(ifname: &str, has_v6: bool) -> Result<(), SysctlError> {
    sysctl::set_if_present(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
    sysctl::set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
    if has_v6 {
        sysctl::set_if_present("net/ipv6/conf/lo/disable_ipv6", "0")?;
        sysctl::set(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
        sysctl::set(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
    }
    Ok(())
}

/// What the node-side phase hands to the pod-side phase.
struct NodeSide {
    bridge: Link,
    host: Link,
    result: CniResult,
}

/// Node side: bridge, gateway address, forwarding, veth (host end enslaved but down,
/// container end created in the pod namespace), hairpin.
async fn node_phase(
    node: &Netlink,
    conf: &BridgeConf,
    ipam_conf: &IpamConf,
    at: &Attach<'_>,
    container_mac: Option<MacAddr>,
    undo: &mut Undo,
    timer: &StepTimer,
) -> Result<NodeSide, BridgeError> {
    let bridge = ensure_bridge(node, conf).await?;
    timer.step("bridge");
    let result = ipam_result(conf, ipam_conf, &undo.allocations);

    if conf.is_gateway {
        for a in &undo.allocations {
            let gw = IpNetwork::new(a.gateway, a.address.prefix())
                .map_err(|e| BridgeError::Internal(e.to_string()))?;
            ensure_gateway_address(node, conf, &bridge, gw).await?;
        }
        if undo.allocations.iter().any(|a| a.address.is_ipv4()) {
            sysctl::ensure("net/ipv4/ip_forward", "1")?;
        }
        if undo.allocations.iter().any(|a| a.address.is_ipv6()) {
            sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
        }
    }
    timer.step("gateway");

    let mtu = if conf.mtu == 0 { bridge.mtu } else { conf.mtu };
    // The host end normally comes up only after the pod side is configured (see pod_phase).
    // A bridge whose carrier never changed yet (operstate UNKNOWN: just created), or that was
    // down until this ADD, gets its port up at once, as the reference does: the port then
    // starts without carrier and toggles the bridge's carrier, which is what moves the bridge
    // to operstate UP.
    let host_up_now = !bridge.up || bridge.operstate == LinkOperState::Unknown;
    let mut host = None;
    for _ in 0..VETH_NAME_TRIES {
        let name = random_veth_name();
        match node
            .create_veth_with_peer_in(&VethPair {
                host_name: &name,
                peer_name: at.ifname,
                peer_ns: at.netns,
                mtu,
                master: Some(bridge.index),
                peer_mac: container_mac,
                host_up: host_up_now,
            })
            .await
        {
            Ok(link) => {
                undo.host_veth = Some(name);
                host = Some(link);
                break;
            }
            // EEXIST is either our random host name (retry) or CNI_IFNAME in the pod.
            Err(e) if e.errno() == Some(EEXIST) => {
                if node.link_by_name(&name).await?.is_none() {
                    return Err(BridgeError::InterfaceExists(at.ifname.to_string()));
                }
            }
            Err(e) => {
                // The pair may exist even so (the create succeeded, reading it back failed):
                // the name is ours, so undo removes whatever is there under it.
                undo.host_veth = Some(name);
                return Err(e.into());
            }
        }
    }
    let host = host.ok_or(BridgeError::NoVethName)?;
    timer.step("veth");
    if conf.hairpin_mode {
        node.set_hairpin(host.index, true).await?;
    }
    set_txqlen(&host.name, 0)?;
    sysctl::set_if_present(&format!("net/ipv6/conf/{}/accept_ra", host.name), "0")?;
    Ok(NodeSide {
        bridge,
        host,
        result,
    })
}

/// Pod side: addresses, link up, routes (one batch); then the host end up, masquerading and
/// the result.
///
/// The host end comes up last so that the pair has no carrier while the pod side is being
/// configured: carrier starts the kernel's IPv6 DAD and link-watch work on both ends, which
/// takes the RTNL lock and would make our route requests wait (spinning) for it.
async fn pod_phase(
    node: &Netlink,
    pod: &Netlink,
    conf: &BridgeConf,
    at: &Attach<'_>,
    side: NodeSide,
    undo: &mut Undo,
    timer: &StepTimer,
) -> Result<CniResult, BridgeError> {
    let NodeSide {
        bridge,
        host,
        mut result,
    } = side;
    let container = pod
        .link_by_name(at.ifname)
        .await?
        .ok_or_else(|| BridgeError::Internal(format!("{} vanished from the pod", at.ifname)))?;
    let ops: Vec<Op> = undo
        .allocations
        .iter()
        .map(|a| Op::ReplaceAddress(Address::new(container.index, a.address)))
        .chain([Op::SetLinkUp(container.index)])
        .chain(
            result
                .routes
                .iter()
                .map(|r| Op::ReplaceRoute(pod_route(r, container.index, &result.ips))),
        )
        .collect();
    pod.apply_all(&ops).await?;
    timer.step("pod addresses, up, routes");
    if !host.up {
        node.set_link_up(host.index).await?;
        timer.step("host end up");
    }

    if conf.ip_masq {
        let chain = ipmasq::chain_name(at.network, at.container_id);
        let comment = ipmasq::comment(at.network, at.container_id);
        for a in &undo.allocations {
            undo.masquerade.push(a.address);
            ipmasq::setup(a.address, &chain, &comment).await?;
        }
        timer.step("masquerade");
    }

    // A gateway bridge had its MAC pinned to the value we read; otherwise it may have moved
    // to the lowest port MAC now that ours joined. The host end was read after it was
    // created enslaved, so its MAC is final.
    let bridge_now = if conf.is_gateway {
        bridge
    } else {
        node.link_by_name(&conf.bridge).await?.unwrap_or(bridge)
    };
    let mac_str = |m: Option<MacAddr>| m.map(|m| m.to_string()).unwrap_or_default();
    result.interfaces = vec![
        Interface {
            name: bridge_now.name.clone(),
            mac: mac_str(bridge_now.mac),
            mtu: Some(bridge_now.mtu),
            ..Default::default()
        },
        Interface {
            name: host.name.clone(),
            mac: mac_str(host.mac),
            mtu: Some(host.mtu),
            ..Default::default()
        },
        Interface {
            name: container.name.clone(),
            mac: mac_str(container.mac),
            sandbox: at.netns_path.to_string(),
            mtu: Some(container.mtu),
            ..Default::default()
        },
    ];
    timer.step("done");
    Ok(result)
}

/// DEL: the container interface goes (if the namespace still exists), then the masquerade
/// rules, then the reservation. Everything already gone counts as done.
///
/// The rules go before the reservation because the reservation is what names the pod's IPs:
/// a DEL that fails after releasing could never find the chain again, while a retry of one
/// that failed before still finds the IPs. The caller holds the container's record lock, so
/// no ADD for it can change its reservations in between.
pub async fn del(
    conf: &BridgeConf,
    ipam_conf: &IpamConf,
    network: &str,
    container_id: &str,
    ifname: &str,
    netns: Option<&NetnsFile>,
) -> Result<(), BridgeError> {
    // Interface before reservation: an IP is never free while a pod may still use it.
    if let Some(ns) = netns {
        let pod = Netlink::in_netns(ns)?;
        pod.delete_link_by_name(ifname).await?;
    }
    let store = Store::new(&ipam_conf.dir, ipam_conf.durability);
    let owner = Owner::new(container_id, ifname);
    if conf.ip_masq {
        // Not under the store lock: iptables takes milliseconds, and other ADDs wait for it.
        let held = match store.lock_if_exists()? {
            Some(locked) => locked.to_release(&owner)?,
            None => Vec::new(),
        };
        let chain = ipmasq::chain_name(network, container_id);
        let comment = ipmasq::comment(network, container_id);
        for ip in held {
            let net = ipam_conf
                .pod_network(ip)
                .map_err(|e| BridgeError::Internal(e.to_string()))?;
            ipmasq::teardown(net, &chain, &comment).await?;
        }
    }
    if let Some(locked) = store.lock_if_exists()? {
        locked.release_owner(&owner)?;
    }
    Ok(())
}

/// CHECK against the previous result: reservation, bridge, both veth ends, addresses, routes.
pub async fn check(
    conf: &BridgeConf,
    ipam_conf: &IpamConf,
    at: &Attach<'_>,
    prev: &CniResult,
) -> Result<(), BridgeError> {
    let fail = |msg: String| Err(BridgeError::Check(msg));
    let store = Store::new(&ipam_conf.dir, ipam_conf.durability);
    let held = match store.lock_if_exists()? {
        Some(locked) => locked.owned_by(&at.owner())?,
        None => Vec::new(),
    };
    if held.is_empty() {
        return fail(format!(
            "host-local: Failed to find address added by container {}",
            at.container_id
        ));
    }

    let node = Netlink::current()?;
    let Some(bridge) = node.link_by_name(&conf.bridge).await? else {
        return fail(format!("bridge {} not found", conf.bridge));
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return fail(format!("{} is not a bridge", conf.bridge));
    }
    let same_mac = |want: &str, have: Option<MacAddr>| {
        want.is_empty() || have.is_some_and(|m| m.to_string().eq_ignore_ascii_case(want))
    };
    let Some(container_pos) = prev
        .interfaces
        .iter()
        .position(|i| i.name == at.ifname && i.sandbox == at.netns_path)
    else {
        return fail(format!(
            "prevResult has no interface {} with sandbox {}",
            at.ifname, at.netns_path
        ));
    };
    let pod = Netlink::in_netns(at.netns)?;
    let want = &prev.interfaces[container_pos];
    let Some(container) = pod.link_by_name(at.ifname).await? else {
        return fail(format!(
            "interface {} not found in {}",
            at.ifname, at.netns_path
        ));
    };
    if container.kind.as_deref() != Some("veth") {
        return fail(format!("{} is not a veth", at.ifname));
    }
    if !same_mac(&want.mac, container.mac) {
        return fail(format!("{} MAC differs from prevResult", at.ifname));
    }

    // The host end is the prevResult host interface paired with the container veth, as in the
    // reference bridge plugin; other host interfaces (a chained plugin's, such as bandwidth's
    // ifb) are not ours to judge. Pairing is checked both ways because an ifindex alone is
    // only unique within one namespace.
    let mut host_names = Vec::new();
    let mut host_end = None;
    for (i, iface) in prev.interfaces.iter().enumerate() {
        if !iface.sandbox.is_empty() || i == container_pos {
            continue;
        }
        if iface.name == conf.bridge {
            if !same_mac(&iface.mac, bridge.mac) {
                return fail(format!(
                    "bridge {} MAC differs from prevResult",
                    conf.bridge
                ));
            }
            continue;
        }
        let Some(link) = node.link_by_name(&iface.name).await? else {
            host_names.push(format!("{} (not found)", iface.name));
            continue;
        };
        host_names.push(iface.name.clone());
        if link.kind.as_deref() == Some("veth")
            && link.link_index == Some(container.index)
            && container.link_index == Some(link.index)
        {
            host_end = Some(link);
        }
    }
    let Some(host_end) = host_end else {
        let peer = container
            .link_index
            .map_or("no peer".to_string(), |i| format!("peer index {i}"));
        return fail(if host_names.is_empty() {
            format!(
                "prevResult names no host-side veth for {} ({peer})",
                at.ifname
            )
        } else {
            format!(
                "{} in {} ({peer}) is not the veth peer of prevResult's host interface {}",
                at.ifname,
                at.netns_path,
                host_names.join(", ")
            )
        });
    };
    if host_end.master != Some(bridge.index) {
        return fail(format!(
            "host veth {} (peer of {}) is not enslaved to bridge {}",
            host_end.name, at.ifname, conf.bridge
        ));
    }

    let have_addrs = pod.addresses(container.index).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == container_pos))
    {
        if !have_addrs.iter().any(|a| a.net == ip.address) {
            return fail(format!("address {} not found on {}", ip.address, at.ifname));
        }
    }
    let have_routes = pod
        .routes(&RouteFilter::main().oif(container.index))
        .await?;
    for r in &prev.routes {
        let family_gw = prev
            .ips
            .iter()
            .find(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
            .and_then(|ip| ip.gateway);
        // A route without gw counts as installed directly or via the family's gateway (the
        // reference fixed its false negatives for exactly flannel's route in v1.3.0).
        let found = have_routes.iter().any(|h| {
            h.dst == r.dst
                && match r.gw {
                    Some(gw) => h.gateway == Some(gw),
                    None => h.gateway.is_none() || h.gateway == family_gw,
                }
        });
        if !found {
            return fail(format!(
                "route {}{} not found in the pod's routing table",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    fn conf(extra: Value) -> BridgeConf {
        let mut m: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "name": "cbr0", "type": "bridge", "isGateway": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}
        }))
        .unwrap();
        if let Value::Object(e) = extra {
            m.extend(e);
        }
        BridgeConf::from_delegate(&m).unwrap()
    }

    fn ipam(routes: Value) -> IpamConf {
        let m: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]],
            "routes": routes,
        }))
        .unwrap();
        IpamConf::from_ipam("cbr0", &m).unwrap()
    }

    fn alloc(addr: &str, gw: &str) -> Allocation {
        Allocation {
            set_index: 0,
            address: addr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            newly_reserved: true,
        }
    }

    #[test]
    fn default_routes_per_family_only_with_is_default_gateway() {
        let allocs = [
            alloc("10.244.1.2/24", "10.244.1.1"),
            alloc("fd00::2/64", "fd00::1"),
        ];
        let routes = serde_json::json!([{"dst": "10.244.0.0/16"}]);
        let r = ipam_result(&conf(serde_json::json!({})), &ipam(routes.clone()), &allocs);
        assert_eq!(r.routes.len(), 1);
        assert!(r.ips.iter().all(|ip| ip.interface == Some(2)));
        let r = ipam_result(
            &conf(serde_json::json!({"isDefaultGateway": true})),
            &ipam(routes),
            &allocs,
        );
        let dsts: Vec<String> = r
            .routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw))
            .collect();
        assert_eq!(
            dsts,
            [
                "10.244.0.0/16 None",
                "0.0.0.0/0 Some(10.244.1.1)",
                "::/0 Some(fd00::1)"
            ]
        );
    }

    #[test]
    fn an_ipam_default_route_with_gateway_is_kept_as_is() {
        let allocs = [alloc("10.244.1.2/24", "10.244.1.1")];
        let r = ipam_result(
            &conf(serde_json::json!({"isDefaultGateway": true})),
            &ipam(serde_json::json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.254"}])),
            &allocs,
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].gw.unwrap().to_string(), "10.244.1.254");
    }

    #[test]
    fn pod_routes_go_via_the_family_gateway_unless_given() {
        let ips = vec![IpConfig {
            address: "10.244.1.2/24".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            interface: Some(2),
        }];
        let r = pod_route(&Route::to("10.244.0.0/16".parse().unwrap(), None), 7, &ips);
        assert_eq!(r.gateway.unwrap().to_string(), "10.244.1.1");
        assert_eq!(r.oif, Some(7));
        let mut with = Route::to(
            "192.168.0.0/16".parse().unwrap(),
            Some("10.244.1.9".parse().unwrap()),
        );
        with.priority = Some(50);
        with.table = Some(100);
        let r = pod_route(&with, 7, &ips);
        assert_eq!(r.gateway.unwrap().to_string(), "10.244.1.9");
        assert_eq!((r.metric, r.table), (Some(50), 100));
        // No gateway of that family at all: a link-scope device route.
        let r = pod_route(&Route::to("fd00::/8".parse().unwrap(), None), 7, &ips);
        assert_eq!(r.gateway, None);
        assert_eq!(r.scope, RouteScope::Link);
    }
}
