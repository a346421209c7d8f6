//! Links: lookup, VXLAN, bridge, veth (peer created directly in another namespace),
//! up/down, MTU, MAC, master, hairpin, delete.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use super::error::{NetlinkError, RawError};
use super::{Netlink, Op};
use crate::net::MacAddr;
use crate::netlink::LinkOperState;
use crate::netns::NetnsFile;

const ENODEV: i32 = nix::libc::ENODEV;
const EEXIST: i32 = nix::libc::EEXIST;

/// RTM_NEWLINK body creating the VXLAN device described by `spec`.
pub(crate) fn vxlan_message(spec: &VxlanSpec) -> LinkMessage {
    let mut b = LinkVxlan::new(&spec.name, spec.vni)
        .port(spec.port)
        .learning(spec.learning);
    b = match spec.local {
        IpAddr::V4(ip) => b.local(ip),
        IpAddr::V6(ip) => b.local6(ip),
    };
    if let Some(index) = spec.underlay_index {
        // IFLA_VXLAN_LINK (the generic `.link()` would set IFLA_LINK instead).
        b = b.dev(index);
    }
    if spec.gbp {
        b = b.gbp();
    }
    if let Some(mtu) = spec.mtu {
        b = b.mtu(mtu);
    }
    if let Some(mac) = spec.mac {
        b = b.address(mac.octets().to_vec());
    }
    b.build()
}

fn single_link(replies: Vec<RouteNetlinkMessage>) -> Option<Link> {
    replies.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Link::from_message(l),
        _ => None,
    })
}

/// A veth pair for [`Netlink::create_veth_with_peer_in`].
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    pub host_name: &'a str,
    pub peer_name: &'a str,
    /// Where the peer end is created.
    pub peer_ns: &'a NetnsFile,
    pub mtu: u32,
    /// Bridge to enslave the host end to.
    pub master: Option<u32>,
    pub peer_mac: Option<MacAddr>,
    /// Set the host end up in the same request.
    pub host_up: bool,
}

impl Netlink {
    /// The link called `name`, or `None`.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(req, || name.to_string()).await
    }

    /// The link with index `index`, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        self.get_link(req, || format!("index {index}")).await
    }

    /// One GetLink request: the link it names, `None` where the kernel has no such device;
    /// `what` names the link in an error.
    async fn get_link(
        &self,
        req: LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Option<Link>, NetlinkError> {
        match self
            .transport()
            .request(RouteNetlinkMessage::GetLink(req), 0)
            .await
        {
            Ok(replies) => Ok(single_link(replies)),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e.into_error("get link", what())),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self
            .transport()
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(|e| e.into_error("list", "links".to_string()))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Link::from_message(l),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, or `NotFound` naming the operation that needed it.
    async fn require_link(&self, op: &'static str, name: &str) -> Result<Link, NetlinkError> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                op,
                object: format!("link {name}"),
            })
    }

    /// Creates the VXLAN device (fails with EEXIST if the name is taken). It is left down.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        self.transport()
            .request(
                RouteNetlinkMessage::NewLink(vxlan_message(spec)),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
            .map_err(|e| e.into_error("create vxlan", spec.name.clone()))?;
        self.require_link("create vxlan", &spec.name).await
    }

    /// Makes sure the VXLAN device of `spec` exists: creates it, or adopts a compatible one
    /// (fixing MTU and MAC in place), or reports [`VxlanOutcome::NeedsRecreate`] when VNI,
    /// local address, port, underlay, learning or GBP differ — the kernel cannot change those
    /// in place. Does not bring the device up.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<VxlanOutcome, NetlinkError> {
        let existing = match self.link_by_name(&spec.name).await? {
            Some(link) => link,
            None => match self.create_vxlan(spec).await {
                Ok(link) => return Ok(VxlanOutcome::Created(link)),
                // Created concurrently by someone else: inspect it like any existing device.
                Err(e) if e.errno() == Some(EEXIST) => {
                    self.require_link("create vxlan", &spec.name).await?
                }
                Err(e) => return Err(e),
            },
        };
        let differences = spec.differences(&existing);
        if !differences.is_empty() {
            return Ok(VxlanOutcome::NeedsRecreate {
                existing,
                differences,
            });
        }
        self.align_mtu_mac(&existing, spec.mtu, spec.mac).await?;
        Ok(VxlanOutcome::Adopted(
            self.require_link("adopt vxlan", &spec.name).await?,
        ))
    }

    async fn align_mtu_mac(
        &self,
        link: &Link,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
    ) -> Result<(), NetlinkError> {
        if let Some(mtu) = mtu
            && link.mtu != mtu
        {
            self.set_link_mtu(link.index, mtu).await?;
        }
        if let Some(mac) = mac
            && link.mac != Some(mac)
        {
            self.set_link_mac(link.index, mac).await?;
        }
        Ok(())
    }

    /// Makes sure a bridge called `name` exists with this MTU (and MAC, if given) and is up.
    /// A non-bridge link with that name is an error.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: Option<MacAddr>,
    ) -> Result<Link, NetlinkError> {
        let existing = match self.link_by_name(name).await? {
            Some(link) => link,
            None => {
                let mut b = LinkBridge::new(name).mtu(mtu).up();
                if let Some(mac) = mac {
                    b = b.address(mac.octets().to_vec());
                }
                match self
                    .transport()
                    .request(
                        RouteNetlinkMessage::NewLink(b.build()),
                        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                    )
                    .await
                {
                    Ok(_) => return self.require_link("create bridge", name).await,
                    Err(e) if e.errno() == Some(EEXIST) => {
                        self.require_link("create bridge", name).await?
                    }
                    Err(e) => return Err(e.into_error("create bridge", name.to_string())),
                }
            }
        };
        if existing.kind.as_deref() != Some("bridge") {
            return Err(NetlinkError::InvalidInput {
                op: "ensure bridge",
                object: name.to_string(),
                reason: format!(
                    "a link of kind {} already has this name",
                    existing.kind.as_deref().unwrap_or("none")
                ),
            });
        }
        self.align_mtu_mac(&existing, Some(mtu), mac).await?;
        if !existing.up {
            self.set_link_up(existing.index).await?;
        }
        self.require_link("ensure bridge", name).await
    }

    /// Creates a veth pair whose host end lives in this handle's namespace (up if
    /// `host_up`, enslaved to `master` if given) and whose peer is created directly inside
    /// `peer_ns` (IFLA_NET_NS_FD; no move afterwards), left down for its owner to configure.
    /// Returns the host end.
    pub async fn create_veth_with_peer_in(
        &self,
        pair: &VethPair<'_>,
    ) -> Result<Link, NetlinkError> {
        let &VethPair {
            host_name,
            peer_name,
            peer_ns,
            mtu,
            master,
            peer_mac,
            host_up,
        } = pair;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name)
            .setns_by_fd(peer_ns.file().as_raw_fd())
            .mtu(mtu);
        if let Some(mac) = peer_mac {
            peer = peer.address(mac.octets().to_vec());
        }
        let mut host = LinkVeth::new(host_name, peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .mtu(mtu);
        if host_up {
            host = host.up();
        }
        if let Some(master) = master {
            host = host.controller(master);
        }
        let object = || {
            format!(
                "{host_name} (peer {peer_name} in {})",
                peer_ns.path().display()
            )
        };
        // `peer_ns` (borrowed) keeps the fd in the message valid until the kernel acked.
        self.transport()
            .request(
                RouteNetlinkMessage::NewLink(host.build()),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
            .map_err(|e| e.into_error("create veth", object()))?;
        self.require_link("create veth", host_name).await
    }

    async fn set_link(
        &self,
        op: &'static str,
        index: u32,
        msg: RouteNetlinkMessage,
    ) -> Result<(), NetlinkError> {
        match self.transport().request(msg, NLM_F_ACK).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.link_error(op, index, e).await),
        }
    }

    async fn link_error(&self, op: &'static str, index: u32, e: RawError) -> NetlinkError {
        let name = self.ifname(index).await;
        e.into_error(op, format!("link {name}"))
    }

    /// `ip link set up`.
    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.apply_one(Op::SetLinkUp(index)).await
    }

    /// `ip link set` of what `set` adds to a message for link `index`.
    async fn set_link_attrs(
        &self,
        op: &'static str,
        index: u32,
        set: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), NetlinkError> {
        let msg = set(LinkUnspec::new_with_index(index)).build();
        self.set_link(op, index, RouteNetlinkMessage::SetLink(msg))
            .await
    }

    /// `ip link set down`.
    pub async fn set_link_down(&self, index: u32) -> Result<(), NetlinkError> {
        self.set_link_attrs("set down", index, |b| b.down()).await
    }

    /// `ip link set mtu`.
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link_attrs("set mtu", index, |b| b.mtu(mtu)).await
    }

    /// `ip link set address`.
    pub async fn set_link_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        self.set_link_attrs("set address", index, |b| b.address(mac.octets().to_vec()))
            .await
    }

    /// `ip link set master M` (`None` = `nomaster`).
    pub async fn set_link_master(
        &self,
        index: u32,
        master: Option<u32>,
    ) -> Result<(), NetlinkError> {
        self.set_link_attrs("set master", index, |b| match master {
            Some(m) => b.controller(m),
            None => b.nocontroller(),
        })
        .await
    }

    /// Hairpin mode of a bridge port (`ip link set X type bridge_slave hairpin on|off`).
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.set_link("set hairpin", index, RouteNetlinkMessage::NewLink(msg))
            .await
    }

    /// Deletes a link (both ends of a veth); `Ok` if it does not exist.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.del_link(msg).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.link_error("delete", index, e).await),
        }
    }

    /// Deletes a link by name; `Ok` if it does not exist.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.del_link(msg)
            .await
            .map_err(|e| e.into_error("delete", format!("link {name}")))
    }

    /// One DelLink request; a link that is already gone is no error.
    async fn del_link(&self, msg: LinkMessage) -> Result<(), RawError> {
        match self
            .transport()
            .request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// VXLAN parameters of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    /// IFLA_VXLAN_LINK: the underlay device.
    pub underlay_index: Option<u32>,
    /// UDP destination port.
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`"vxlan"`, `"bridge"`, `"veth"`, ...); `None` for `lo` and plain devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// RFC 2863 operational state (`IFLA_OPERSTATE`). `Unknown` on a device whose carrier
    /// has never changed since it was created.
    pub operstate: LinkOperState,
    /// Index of the master (bridge) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK` when it differs from the link's own index: for a veth the peer's index,
    /// which lives in the namespace named by [`Link::link_netnsid`] when that is set.
    pub link_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace, as an id local to the queried namespace.
    pub link_netnsid: Option<i32>,
    pub vxlan: Option<VxlanInfo>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Option<Link> {
        let mut name = None;
        let mut kind = None;
        let mut mtu = 0;
        let mut mac = None;
        let mut master = None;
        let mut link_index = None;
        let mut link_netnsid = None;
        let mut vxlan = None;
        let mut operstate = LinkOperState::Unknown;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = *m,
                LinkAttribute::Address(a) => mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
                // 0: a veth whose peer is gone.
                LinkAttribute::Link(l) if *l != 0 && *l != msg.header.index => {
                    link_index = Some(*l)
                }
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link_netnsid = Some(*id),
                LinkAttribute::OperState(state) => operstate = *state,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(info_kind_name(k)),
                            LinkInfo::Data(InfoData::Vxlan(v)) => vxlan = Some(vxlan_info(v)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Link {
            index: msg.header.index,
            name: name?,
            kind,
            mtu,
            mac,
            up: msg.header.flags.contains(LinkFlags::Up),
            operstate,
            master,
            link_index,
            link_netnsid,
            vxlan,
        })
    }
}

fn info_kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(s) => s.clone(),
        k => k.to_string(),
    }
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        local: None,
        underlay_index: None,
        port: 0,
        learning: false,
        gbp: false,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) if *i != 0 => info.underlay_index = Some(*i),
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Gbp => info.gbp = true,
            _ => {}
        }
    }
    info
}

/// Desired VXLAN device (flannel's `flannel.<VNI>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// Source address of encapsulated packets (the node's public IP).
    pub local: IpAddr,
    /// The underlay device (IFLA_VXLAN_LINK).
    pub underlay_index: Option<u32>,
    /// UDP destination port (flannel: 8472).
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

impl VxlanSpec {
    /// The parameters that cannot be changed in place and differ between `self` and `link`
    /// (empty when the link can be adopted). MTU and MAC are not listed: they are set in place.
    pub fn differences(&self, link: &Link) -> Vec<String> {
        let mut diffs = Vec::new();
        if link.kind.as_deref() != Some("vxlan") {
            diffs.push(format!(
                "kind {} (want vxlan)",
                link.kind.as_deref().unwrap_or("none")
            ));
            return diffs;
        }
        let Some(info) = &link.vxlan else {
            diffs.push("no vxlan attributes reported".to_string());
            return diffs;
        };
        if info.vni != self.vni {
            diffs.push(format!("vni {} (want {})", info.vni, self.vni));
        }
        if info.local != Some(self.local) {
            diffs.push(format!(
                "local {} (want {})",
                info.local
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "none".into()),
                self.local
            ));
        }
        if info.port != self.port {
            diffs.push(format!("dstport {} (want {})", info.port, self.port));
        }
        if let Some(want) = self.underlay_index
            && info.underlay_index != Some(want)
        {
            diffs.push(format!(
                "underlay ifindex {} (want {want})",
                info.underlay_index
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
        if info.learning != self.learning {
            diffs.push(format!(
                "learning {} (want {})",
                info.learning, self.learning
            ));
        }
        if info.gbp != self.gbp {
            diffs.push(format!("gbp {} (want {})", info.gbp, self.gbp));
        }
        diffs
    }
}

/// Result of [`crate::netlink::Netlink::ensure_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxlanOutcome {
    /// The device did not exist and was created.
    Created(Link),
    /// A compatible device existed; MTU/MAC were brought in line.
    Adopted(Link),
    /// A device with this name exists with parameters that cannot change in place (the kernel
    /// answers EOPNOTSUPP): the caller decides whether to delete and re-create it.
    NeedsRecreate {
        existing: Link,
        differences: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoVxlan, LinkInfo};

    #[test]
    fn vxlan_message_carries_every_spec_field() {
        let spec = VxlanSpec {
            gbp: true,
            mac: Some(MacAddr([0x0e, 0, 0, 0, 1, 1])),
            ..spec()
        };
        let msg = vxlan_message(&spec);
        let link = Link::from_message(&msg).unwrap();
        assert_eq!(link.name, "flannel.1");
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mtu, 1450);
        assert_eq!(link.mac, spec.mac);
        assert!(
            spec.differences(&link).is_empty(),
            "{:?}",
            spec.differences(&link)
        );
        // IFLA_VXLAN_LINK, not IFLA_LINK.
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Link(_)))
        );
        let has_vxlan_link = msg.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(
                i, LinkInfo::Data(InfoData::Vxlan(v)) if v.contains(&InfoVxlan::Link(3)))))
        });
        assert!(has_vxlan_link);
    }

    fn vxlan_link(info: VxlanInfo) -> Link {
        Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            mac: None,
            up: false,
            operstate: LinkOperState::Down,
            master: None,
            link_index: None,
            link_netnsid: None,
            vxlan: Some(info),
        }
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: "192.168.77.1".parse().unwrap(),
            underlay_index: Some(3),
            port: 8472,
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        }
    }

    fn matching_info() -> VxlanInfo {
        VxlanInfo {
            vni: 1,
            local: Some("192.168.77.1".parse().unwrap()),
            underlay_index: Some(3),
            port: 8472,
            learning: false,
            gbp: false,
        }
    }

    #[test]
    fn vxlan_spec_matching_link_has_no_differences() {
        assert!(spec().differences(&vxlan_link(matching_info())).is_empty());
        // No underlay wanted: any underlay is acceptable.
        let mut s = spec();
        s.underlay_index = None;
        assert!(s.differences(&vxlan_link(matching_info())).is_empty());
    }

    #[test]
    fn vxlan_spec_lists_every_immutable_difference() {
        let info = VxlanInfo {
            vni: 2,
            local: Some("192.168.77.9".parse().unwrap()),
            underlay_index: Some(4),
            port: 4789,
            learning: true,
            gbp: true,
        };
        let diffs = spec().differences(&vxlan_link(info));
        assert_eq!(
            diffs,
            vec![
                "vni 2 (want 1)",
                "local 192.168.77.9 (want 192.168.77.1)",
                "dstport 4789 (want 8472)",
                "underlay ifindex 4 (want 3)",
                "learning true (want false)",
                "gbp true (want false)",
            ]
        );
    }

    #[test]
    fn vxlan_spec_rejects_other_kinds() {
        let mut link = vxlan_link(matching_info());
        link.kind = Some("bridge".into());
        link.vxlan = None;
        assert_eq!(spec().differences(&link), vec!["kind bridge (want vxlan)"]);
    }
}
