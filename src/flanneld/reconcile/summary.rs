//! What a pass did, as `/status` shows it and the logs summarise it.

use serde::Serialize;

use super::Trigger;
use crate::flanneld::pure::peers::PeerEndpoint;

/// The outcome of the last pass, for `/status` and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassSummary {
    pub trigger: Option<Trigger>,
    pub finished_unix_ms: u64,
    pub duration_ms: f64,
    pub peers: Vec<PeerSummary>,
    pub rejected: Vec<RejectedSummary>,
    pub devices: Vec<DeviceSummary>,
    pub operations: usize,
    pub errors: Vec<String>,
    /// Peers whose entries the kernel refused (in this pass, or in the last one that
    /// attempted them): retried, reported here and in `flannel_peers_failed`.
    pub failed_peers: Vec<FailedPeerSummary>,
    /// Ran before the first complete node list: only additions were applied.
    pub provisional: bool,
}

/// A programmed peer, as `/status` lists it. Kept typed (one small allocation per peer) rather
/// than as strings: the summary of every peer lives for the daemon's lifetime, and the string
/// form takes several times the memory. Serialized as
/// `{"node", "subnets": [..], "public_ips": [..], "vtep_macs": [..]}`.
#[derive(Debug, Clone)]
pub struct PeerSummary {
    pub node: String,
    pub endpoints: Vec<PeerEndpoint>,
}

impl Serialize for PeerSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Displayed<'a, T, F>(&'a [PeerEndpoint], F)
        where
            F: Fn(&PeerEndpoint) -> T;
        impl<T: std::fmt::Display, F: Fn(&PeerEndpoint) -> T> Serialize for Displayed<'_, T, F> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|e| (self.1)(e).to_string()))
            }
        }
        let mut st = serializer.serialize_struct("PeerSummary", 4)?;
        st.serialize_field("node", &self.node)?;
        st.serialize_field("subnets", &Displayed(&self.endpoints, |e| e.subnet))?;
        st.serialize_field("public_ips", &Displayed(&self.endpoints, |e| e.public_ip))?;
        st.serialize_field("vtep_macs", &Displayed(&self.endpoints, |e| e.vtep_mac))?;
        st.end()
    }
}

/// A peer the kernel refuses, with its first error.
#[derive(Debug, Clone, Serialize)]
pub struct FailedPeerSummary {
    pub node: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedSummary {
    pub node: String,
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub entries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MacAddr;

    #[test]
    fn a_peer_summary_serializes_as_lists_of_strings() {
        let p = PeerSummary {
            node: "n2".into(),
            endpoints: vec![
                PeerEndpoint {
                    subnet: "10.244.2.0/24".parse().unwrap(),
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 2]),
                    public_ip: "192.0.2.2".parse().unwrap(),
                    vni: Some(1),
                },
                PeerEndpoint {
                    subnet: "fd00:10:0:2::/64".parse().unwrap(),
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 6, 2]),
                    public_ip: "2001:db8::2".parse().unwrap(),
                    vni: Some(1),
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "node": "n2",
                "subnets": ["10.244.2.0/24", "fd00:10:0:2::/64"],
                "public_ips": ["192.0.2.2", "2001:db8::2"],
                "vtep_macs": ["0e:00:00:00:00:02", "0e:00:00:00:06:02"],
            })
        );
    }
}
