//! What a pass did, as `/status` shows it and the logs summarise it.

use std::sync::Arc;

use serde::Serialize;

use super::Trigger;
use crate::flanneld::pure::peers::{Peer, PeerEndpoint};

/// The outcome of the last pass, for `/status` and logs. (Fields here and below in name order:
/// `/status` serializes them as they are, with the sorted keys it always had.)
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassSummary {
    /// The VXLAN devices the pass programmed, one per family.
    pub devices: Vec<DeviceSummary>,
    pub duration_ms: f64,
    /// The kernel's refusals, as it worded them.
    pub errors: Vec<String>,
    /// Peers whose entries the kernel refused (in this pass, or in the last one that
    /// attempted them): retried, reported here and in `flannel_peers_failed`.
    pub failed_peers: Vec<FailedPeerSummary>,
    /// When the pass ended (wall clock, for operators comparing with logs).
    pub finished_unix_ms: u64,
    /// Netlink operations applied (0 when the kernel already matched).
    pub operations: usize,
    pub peers: PeerList,
    /// Ran before the first complete node list: only additions were applied.
    pub provisional: bool,
    /// Nodes not programmed, and why.
    pub rejected: Vec<RejectedSummary>,
    /// What started the pass.
    pub trigger: Option<Trigger>,
}

/// The programmed peers, as `/status` lists them: the very peers the pass selected, shared
/// with the lost-annotation rule's memory (one copy of every peer lives between passes; the
/// string form would take several times the memory). Each serialized as
/// `{"node", "subnets": [..], "public_ips": [..], "vtep_macs": [..]}`.
#[derive(Debug, Clone, Default)]
pub struct PeerList(pub Arc<[Peer]>);

impl PeerList {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for PeerList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ShownPeer))
    }
}

struct ShownPeer<'a>(&'a Peer);

impl Serialize for ShownPeer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Displayed<'a, T, F>(&'a Peer, F)
        where
            F: Fn(&PeerEndpoint) -> T;
        impl<T: std::fmt::Display, F: Fn(&PeerEndpoint) -> T> Serialize for Displayed<'_, T, F> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.endpoints().map(|(_, e)| (self.1)(e).to_string()))
            }
        }
        let p = self.0;
        let mut st = serializer.serialize_struct("PeerSummary", 4)?;
        st.serialize_field("node", &p.name)?;
        st.serialize_field("public_ips", &Displayed(p, |e| e.public_ip))?;
        st.serialize_field("subnets", &Displayed(p, |e| e.subnet))?;
        st.serialize_field("vtep_macs", &Displayed(p, |e| e.vtep_mac))?;
        st.end()
    }
}

/// A peer the kernel refuses, with its first error.
#[derive(Debug, Clone, Serialize)]
pub struct FailedPeerSummary {
    pub error: String,
    pub node: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedSummary {
    pub kind: String,
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub entries: usize,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MacAddr;

    #[test]
    fn a_peer_list_serializes_as_lists_of_strings() {
        let p = Peer {
            name: "n2".into(),
            uid: "u2".into(),
            created: None,
            v4: Some(PeerEndpoint {
                subnet: "10.244.2.0/24".parse().unwrap(),
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 2]),
                public_ip: "192.0.2.2".parse().unwrap(),
                vni: Some(1),
            }),
            v6: Some(PeerEndpoint {
                subnet: "fd00:10:0:2::/64".parse().unwrap(),
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 6, 2]),
                public_ip: "2001:db8::2".parse().unwrap(),
                vni: Some(1),
            }),
        };
        assert_eq!(
            serde_json::to_value(PeerList(vec![p].into())).unwrap(),
            serde_json::json!([{
                "node": "n2",
                "subnets": ["10.244.2.0/24", "fd00:10:0:2::/64"],
                "public_ips": ["192.0.2.2", "2001:db8::2"],
                "vtep_macs": ["0e:00:00:00:00:02", "0e:00:00:00:06:02"],
            }])
        );
    }
}
