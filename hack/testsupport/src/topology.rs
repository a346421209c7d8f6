//! Throwaway network topologies for tests, benchmarks and the local cluster: an underlay
//! "switch" (a bridge in its own namespace) and hosts (namespaces with an `eth0` on the
//! switch). Everything is created in namespaces this process owns and removed on drop.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use flannel_rs::netns::{NetnsError, NetnsGuard};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Ip(String),
}

/// An L2 segment: a bridge `br0` inside its own namespace. Hosts attach with a veth.
#[derive(Debug)]
pub struct Switch {
    ns: NetnsGuard,
    /// First three octets of the underlay /24, e.g. `[192, 168, 77]`.
    prefix: [u8; 3],
    next_port: AtomicU32,
}

/// A host on the switch: its own namespace with `eth0` at `address/24` (and, once
/// [`Switch::enable_ipv6`] ran, at `address_v6/64`).
#[derive(Debug)]
pub struct Host {
    pub ns: NetnsGuard,
    pub address: Ipv4Addr,
    pub address_v6: Option<Ipv6Addr>,
    /// The switch port's name inside the switch namespace.
    pub port: String,
}

impl Switch {
    /// Creates the switch namespace (`frs-<pid>-<n>-<tag>`) with a bridge, for the underlay
    /// subnet `a.b.c.0/24`.
    pub fn new(tag: &str, prefix: [u8; 3]) -> Result<Self, TopologyError> {
        Self::in_netns(NetnsGuard::new(tag)?, prefix)
    }

    /// Builds the switch in a namespace the caller created (and named).
    pub fn in_netns(ns: NetnsGuard, prefix: [u8; 3]) -> Result<Self, TopologyError> {
        ns.ip(&["link", "add", "br0", "type", "bridge"])
            .map_err(TopologyError::Ip)?;
        ns.ip(&["link", "set", "br0", "up"])
            .map_err(TopologyError::Ip)?;
        Ok(Self {
            ns,
            prefix,
            next_port: AtomicU32::new(0),
        })
    }

    pub fn netns(&self) -> &NetnsGuard {
        &self.ns
    }

    /// The underlay address of host number `octet` (`a.b.c.octet`).
    pub fn address(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], octet)
    }

    /// The IPv6 underlay address of host number `octet`: `fd00:a:b:c::octet`, the decimal
    /// octets written as hex groups so that `192.168.77.1` reads as `fd00:192:168:77::1`.
    pub fn address_v6(&self, octet: u8) -> Ipv6Addr {
        underlay_v6(self.prefix, octet)
    }

    /// Gives `host` its IPv6 underlay address (`/64`, see [`Switch::address_v6`]) and turns
    /// on IPv6 forwarding. The address skips DAD: a tentative address can be neither chosen
    /// as a VXLAN source nor bound, and nobody else on the switch claims it.
    pub fn enable_ipv6(&self, host: &mut Host) -> Result<Ipv6Addr, TopologyError> {
        let address = self.address_v6(host.address.octets()[3]);
        let sysctl = host
            .ns
            .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
            .map_err(|e| TopologyError::Ip(format!("sysctl: {e}")))?;
        if !sysctl.status.success() {
            return Err(TopologyError::Ip(format!(
                "sysctl net.ipv6.conf.all.forwarding=1 in {}: {}",
                host.ns.name(),
                String::from_utf8_lossy(&sysctl.stderr).trim()
            )));
        }
        host.ns
            .ip(&[
                "addr",
                "add",
                &format!("{address}/64"),
                "dev",
                "eth0",
                "nodad",
            ])
            .map_err(TopologyError::Ip)?;
        host.address_v6 = Some(address);
        Ok(address)
    }

    /// Attaches a new host namespace with `eth0` = `a.b.c.octet/24`, MTU `mtu`, IP forwarding
    /// on (pods are routed through it) and no default route out.
    pub fn attach(&self, tag: &str, octet: u8, mtu: u32) -> Result<Host, TopologyError> {
        self.attach_netns(NetnsGuard::new(tag)?, octet, mtu)
    }

    /// Like [`Switch::attach`], with a namespace the caller created (and named).
    pub fn attach_netns(&self, ns: NetnsGuard, octet: u8, mtu: u32) -> Result<Host, TopologyError> {
        let n = self.next_port.fetch_add(1, Ordering::Relaxed);
        let port = format!("p{n}");
        let ip = |args: &[&str]| ns.ip(args).map_err(TopologyError::Ip);
        // Create the pair inside the host, then move the switch end (names are local to each
        // namespace, so the same names repeat across hosts without clashing).
        ip(&[
            "link",
            "add",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
        ])?;
        ip(&["link", "set", &port, "netns", self.ns.name()])?;
        let address = self.address(octet);
        ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ip(&["link", "set", "eth0", "up"])?;
        let sw = |args: &[&str]| self.ns.ip(args).map_err(TopologyError::Ip);
        sw(&["link", "set", &port, "master", "br0"])?;
        sw(&["link", "set", &port, "up"])?;
        let forward = ns
            .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .map_err(|e| TopologyError::Ip(format!("sysctl: {e}")))?;
        if !forward.status.success() {
            return Err(TopologyError::Ip(format!(
                "sysctl net.ipv4.ip_forward=1 in {}: {}",
                ns.name(),
                String::from_utf8_lossy(&forward.stderr).trim()
            )));
        }
        self.wait_forwarding(&ns, &port)?;
        Ok(Host {
            ns,
            address,
            address_v6: None,
            port,
        })
    }

    /// Waits until the kernel has really brought the new link up: both ends operationally
    /// UP and the switch port forwarding. Those state changes go through the kernel's
    /// linkwatch, which defers them by up to a second when a veth end happens to have the
    /// same ifindex as its peer (in different namespaces); frames sent before that are
    /// dropped, and the first ARP of a fresh host then costs a 1 s retransmit.
    fn wait_forwarding(&self, host: &NetnsGuard, port: &str) -> Result<(), TopologyError> {
        let start = std::time::Instant::now();
        loop {
            let host_up = oper_up(host, "eth0");
            let port_up = oper_up(&self.ns, port);
            let forwarding = std::process::Command::new("bridge")
                .args(["-n", self.ns.name(), "-json", "link", "show", "dev", port])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .is_some_and(|v| v[0]["state"] == "forwarding");
            if host_up && port_up && forwarding {
                return Ok(());
            }
            if start.elapsed() > std::time::Duration::from_secs(5) {
                return Err(TopologyError::Ip(format!(
                    "switch port {port} of {} not forwarding after 5 s (host eth0 up: {host_up}, port up: {port_up})",
                    host.name()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// `fd00:a:b:c::octet` with each decimal octet spelled as a hex group (see
/// [`Switch::address_v6`]).
pub fn underlay_v6(prefix: [u8; 3], octet: u8) -> Ipv6Addr {
    let group = |d: u8| {
        let d = u16::from(d);
        ((d / 100) << 8) | ((d / 10 % 10) << 4) | (d % 10)
    };
    let [a, b, c] = prefix;
    Ipv6Addr::new(0xfd00, group(a), group(b), group(c), 0, 0, 0, group(octet))
}

/// `ip -json link show dev NAME` reports operstate UP.
fn oper_up(ns: &NetnsGuard, dev: &str) -> bool {
    ns.ip(&["-json", "link", "show", "dev", dev])
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .is_some_and(|v| v[0]["operstate"] == "UP")
}

/// A fresh underlay /24 (`192.168.N.0/24`) for each lab or cluster a test process builds, so
/// no two tests of a run share addresses (they live in namespaces of their own anyway, but
/// distinct addresses keep captures and logs of parallel tests unambiguous). Panics after 150.
pub fn next_underlay() -> [u8; 3] {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(100);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 250, "more than 150 underlays in one test process");
    [192, 168, n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v6_underlay_address_reads_like_the_v4_one() {
        assert_eq!(
            underlay_v6([192, 168, 77], 1).to_string(),
            "fd00:192:168:77::1"
        );
        assert_eq!(
            underlay_v6([10, 0, 124], 254).to_string(),
            "fd00:10:0:124::254"
        );
        assert_eq!(underlay_v6([0, 9, 99], 0).to_string(), "fd00:0:9:99::");
    }
}
