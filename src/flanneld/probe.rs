//! ICMP probes through and around the tunnel, for `flanneld diagnose` (one shot) and the
//! daemon's prober (every round): one engine, one reading of the answers
//! ([`TunnelVerdict::classify`]).
//!
//! A peer gets up to four IPv4 echo requests, sent on raw sockets so that the source address
//! and the DF bit are ours to choose:
//! - `Tunnel`: from our VTEP address to the peer's; the answer needs the peer's entries for
//!   us (its route, neighbour and FDB entry), so it proves the path both ways;
//! - `TunnelMtu`: the same at the full device MTU with DF set: lost alone, the underlay path
//!   carries less than a full VXLAN frame (an MTU black hole);
//! - `TunnelFromUnderlay`: through the tunnel, but from our underlay address, so the peer
//!   answers over the plain underlay: it arrives when the peer receives our VXLAN packets but
//!   cannot send back through the tunnel (one-way: it lacks our entries). It is written as a
//!   whole frame onto the VXLAN device ([`Path::Injected`]): routed, the masquerade rules
//!   would rewrite its source to our VTEP address and make it a plain `Tunnel` probe;
//! - `Underlay`: plain ping of the peer's public IP: whether the node is up at all.
//!
//! `TunnelMtu` goes to every peer; the other three only to those it did not come back from
//! ([`probe_peers`]). The peer's kernel answers all four; no daemon is needed on
//! the far side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::time::Instant;

pub use super::pure::reachability::{ProbeKind, TunnelVerdict};
use crate::net::MacAddr;
/// How a probe leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Routed by the kernel like any packet of this node.
    Routed,
    /// Written as an Ethernet frame onto a device (no routing, no netfilter): the VXLAN
    /// device encapsulates it by its FDB entry for `dst_mac`.
    Injected {
        ifindex: u32,
        src_mac: MacAddr,
        dst_mac: MacAddr,
    },
}

/// One echo request to send: from `src` to `dst`, `size` bytes of IP packet, DF set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The caller's index (the peer it belongs to).
    pub target: usize,
    pub kind: ProbeKind,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub size: u16,
    pub path: Path,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("open a raw ICMP socket: {0} (needs root or CAP_NET_RAW)")]
    Socket(std::io::Error),
    #[error("send an echo request to {dst}: {source}")]
    Send {
        dst: Ipv4Addr,
        source: std::io::Error,
    },
}

/// How often a run wakes: it sends what is due and reads what has arrived, then sleeps.
/// Answers are not waited for one by one (the kernel's receive timestamp gives each its round
/// trip), so at hundreds of probes a second the daemon wakes 20 times a second, not once per
/// packet sent or received.
const TICK: Duration = Duration::from_millis(50);

/// Smallest probe: IPv4 header, ICMP header and our 16-byte payload.
pub const MIN_PROBE_SIZE: u16 = 20 + 8 + 16;
const MAGIC: &[u8; 8] = b"frs-diag";

/// An answered probe: which one, and its round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub target: usize,
    pub kind: ProbeKind,
    pub rtt: Duration,
}

/// Sends every probe, one every `gap`, and waits up to `wait` after the last one for the
/// answers; returns the answered probes and how many left (those the kernel did not refuse).
/// Async (non-blocking raw sockets): dropping the future stops it.
pub async fn run(
    probes: &[Probe],
    gap: Duration,
    wait: Duration,
) -> Result<(Vec<Answer>, usize), ProbeError> {
    let open = |domain, protocol| -> Result<Socket, ProbeError> {
        let s = Socket::new(domain, Type::RAW, protocol).map_err(ProbeError::Socket)?;
        s.set_nonblocking(true).map_err(ProbeError::Socket)?;
        Ok(s)
    };
    // IPPROTO_RAW: we write the IP header (source address, DF); such a socket never receives.
    let send = open(Domain::IPV4, Some(Protocol::from(255)))?;
    let frames = if probes.iter().any(|p| p.path != Path::Routed) {
        Some(open(Domain::PACKET, None)?)
    } else {
        None
    };
    let recv = open(Domain::IPV4, Some(Protocol::ICMPV4))?;
    setsockopt(&recv, sockopt::ReceiveTimestampns, &true)
        .map_err(|e| ProbeError::Socket(e.into()))?;
    let ident: u16 = rand::random();
    // When each probe left, by the clock the kernel stamps arrivals with.
    let mut sent_at: HashMap<usize, Duration> = HashMap::new();
    let mut answered: BTreeMap<usize, Answer> = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut sent = 0usize;
    let mut deadline = None;
    loop {
        let now = Instant::now();
        // Everything due by now (the timer may have woken late).
        while sent < probes.len() && start + gap * (sent as u32) <= now {
            let p = &probes[sent];
            let packet = echo_request(p, ident, sent as u32);
            // Before the send: in a namespace lab the answer can arrive (and be stamped)
            // before send_to returns.
            let leaves = realtime_now();
            let result = match (p.path, &frames) {
                (
                    Path::Injected {
                        ifindex,
                        src_mac,
                        dst_mac,
                    },
                    Some(frames),
                ) => {
                    let mut frame = Vec::with_capacity(14 + packet.len());
                    frame.extend_from_slice(&dst_mac.octets());
                    frame.extend_from_slice(&src_mac.octets());
                    frame.extend_from_slice(&0x0800u16.to_be_bytes());
                    frame.extend_from_slice(&packet);
                    frames.send_to(&frame, &link_address(ifindex, dst_mac))
                }
                _ => send.send_to(&packet, &SockAddr::from(SocketAddrV4::new(p.dst, 0))),
            };
            match result {
                Ok(_) => {
                    sent_at.insert(sent, leaves);
                }
                // No route, larger than the device, a full queue: this probe is not answered.
                Err(e) if is_local_refusal(&e) => {}
                Err(source) => return Err(ProbeError::Send { dst: p.dst, source }),
            }
            sent += 1;
        }
        while let Some((n, arrived)) = receive(&recv, &mut buf)? {
            if let Some(index) = echo_reply_index(&buf[..n], ident)
                && let Some(p) = probes.get(index as usize)
                && reply_matches(&buf[..n], p)
                && let Some(t) = sent_at.get(&(index as usize))
            {
                answered.insert(
                    index as usize,
                    Answer {
                        target: p.target,
                        kind: p.kind,
                        rtt: elapsed(*t, arrived),
                    },
                );
            }
        }
        if sent == probes.len() && deadline.is_none() {
            deadline = Some(now + wait);
        }
        if deadline.is_some_and(|d| now >= d)
            || (sent == probes.len() && answered.len() == sent_at.len())
        {
            break;
        }
        let next = match deadline {
            Some(d) => d.min(now + TICK),
            None => (start + gap * (sent as u32)).max(now + TICK),
        };
        tokio::time::sleep_until(next).await;
    }
    Ok((answered.into_values().collect(), sent_at.len()))
}

/// The next datagram waiting on `socket` (non-blocking): its length in `buf` and the kernel's
/// time of its arrival; None when none is waiting.
fn receive(socket: &Socket, buf: &mut [u8]) -> Result<Option<(usize, Duration)>, ProbeError> {
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    loop {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(msg) => {
                // Without the stamp (never on Linux once asked for), now is near enough.
                let arrived = msg
                    .cmsgs()
                    .ok()
                    .into_iter()
                    .flatten()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmTimestampns(ts) => Some(since_epoch(ts)),
                        _ => None,
                    })
                    .unwrap_or_else(realtime_now);
                return Ok(Some((msg.bytes, arrived)));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(ProbeError::Socket(e.into())),
        }
    }
}

/// From `from` to `to` (zero if the clock stepped back in between).
fn elapsed(from: Duration, to: Duration) -> Duration {
    to.saturating_sub(from)
}

/// The clock the kernel stamps arrivals with (`SO_TIMESTAMPNS`: the real-time clock), as
/// the time since the epoch.
fn realtime_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A kernel time stamp as the time since the epoch.
fn since_epoch(ts: TimeSpec) -> Duration {
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Our end of the IPv4 tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelEnd {
    /// Our VTEP address (the network address of our pod subnet, on the device).
    pub vtep: Ipv4Addr,
    /// Our underlay address.
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub ifindex: u32,
    pub mac: MacAddr,
}

/// A peer's end: its VTEP address (the gateway of its subnet), public IP and VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub public: Ipv4Addr,
    pub mac: MacAddr,
}

/// How fast the two phases send, and how long each waits for late answers.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Between two probes of the first phase (one per peer).
    pub first_gap: Duration,
    /// Between two probes of the escalation (three per silent peer).
    pub second_gap: Duration,
    pub wait: Duration,
}

/// What one peer answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAnswers {
    pub answered: BTreeSet<ProbeKind>,
    /// Round trip of the tunnel probe answered (full-size, else small).
    pub rtt: Option<Duration>,
}

impl PeerAnswers {
    pub fn verdict(&self) -> TunnelVerdict {
        TunnelVerdict::classify(&self.answered)
    }
}

/// Probes every target: the full-size tunnel probe first, then, for the peers that did not
/// answer it, the three that tell why. One entry per target, in order, and the
/// number of probes that left.
pub async fn probe_peers(
    targets: &[ProbeTarget],
    end: &TunnelEnd,
    pacing: Pacing,
) -> Result<(Vec<PeerAnswers>, usize), ProbeError> {
    let mut out = vec![PeerAnswers::default(); targets.len()];
    if targets.is_empty() {
        return Ok((out, 0));
    }
    let full = u16::try_from(end.mtu).unwrap_or(u16::MAX);
    let small = MIN_PROBE_SIZE;
    let probe = |target, kind, src, dst, size, path| Probe {
        target,
        kind,
        src,
        dst,
        size,
        path,
    };
    // A full-size answer proves the path both ways at the device MTU: one probe per healthy
    // peer per round.
    let first: Vec<Probe> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            probe(
                i,
                ProbeKind::TunnelMtu,
                end.vtep,
                t.gateway,
                full,
                Path::Routed,
            )
        })
        .collect();
    let take = |(answers, sent): (Vec<Answer>, usize), out: &mut [PeerAnswers]| {
        for a in answers {
            let slot = &mut out[a.target];
            slot.answered.insert(a.kind);
            if matches!(a.kind, ProbeKind::Tunnel | ProbeKind::TunnelMtu) {
                slot.rtt = Some(a.rtt);
            }
        }
        sent
    };
    let mut sent = take(run(&first, pacing.first_gap, pacing.wait).await?, &mut out);
    // Only the silent ones get the probes that tell why: a small one through the tunnel (an
    // MTU black hole if it alone is answered), then the two that tell one-way from dropped.
    let mut second = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if out[i].answered.contains(&ProbeKind::TunnelMtu) {
            continue;
        }
        second.push(probe(
            i,
            ProbeKind::Tunnel,
            end.vtep,
            t.gateway,
            small,
            Path::Routed,
        ));
        let injected = Path::Injected {
            ifindex: end.ifindex,
            src_mac: end.mac,
            dst_mac: t.mac,
        };
        second.push(probe(
            i,
            ProbeKind::TunnelFromUnderlay,
            end.local,
            t.gateway,
            small,
            injected,
        ));
        second.push(probe(
            i,
            ProbeKind::Underlay,
            end.local,
            t.public,
            small,
            Path::Routed,
        ));
    }
    if !second.is_empty() {
        sent += take(
            run(&second, pacing.second_gap, pacing.wait).await?,
            &mut out,
        );
    }
    Ok((out, sent))
}

/// The targets of `peers` with an IPv4 endpoint (the tunnel probes are IPv4).
pub fn targets_of<'a>(
    peers: impl IntoIterator<Item = &'a super::pure::peers::Peer>,
) -> Vec<ProbeTarget> {
    peers
        .into_iter()
        .filter_map(|p| {
            let ep = p.v4?;
            match (ep.subnet.network(), ep.public_ip) {
                (IpAddr::V4(gateway), IpAddr::V4(public)) => Some(ProbeTarget {
                    name: p.name.clone(),
                    gateway,
                    public,
                    mac: ep.vtep_mac,
                }),
                _ => None,
            }
        })
        .collect()
}

fn is_local_refusal(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc_errno::ENETUNREACH
                | libc_errno::EHOSTUNREACH
                | libc_errno::EMSGSIZE
                | libc_errno::ENOBUFS
                | libc_errno::EAGAIN
        )
    )
}

mod libc_errno {
    pub const EHOSTUNREACH: i32 = nix::errno::Errno::EHOSTUNREACH as i32;
    pub const ENETUNREACH: i32 = nix::errno::Errno::ENETUNREACH as i32;
    pub const EMSGSIZE: i32 = nix::errno::Errno::EMSGSIZE as i32;
    pub const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;
    pub const EAGAIN: i32 = nix::errno::Errno::EAGAIN as i32;
}

/// `sockaddr_ll` for sending a frame to `dst` on device `ifindex`.
fn link_address(ifindex: u32, dst: MacAddr) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: a sockaddr_storage is large and aligned enough for any socket address, and
    // sockaddr_ll is plain data for which all-zero bytes are valid.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    ll.sll_ifindex = ifindex as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&dst.octets());
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of `len` bytes.
    unsafe { SockAddr::new(storage, len) }
}

/// The IPv4 packet of an echo request (DF set; both checksums filled in, as a frame written
/// onto a device gets no help from the kernel).
fn echo_request(p: &Probe, ident: u16, index: u32) -> Vec<u8> {
    let size = usize::from(p.size.max(MIN_PROBE_SIZE));
    let mut pkt = vec![0u8; size];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    pkt[6] = 0x40; // DF
    pkt[8] = 64; // TTL
    pkt[9] = 1; // ICMP
    pkt[12..16].copy_from_slice(&p.src.octets());
    pkt[16..20].copy_from_slice(&p.dst.octets());
    let icmp = &mut pkt[20..];
    icmp[0] = 8; // echo request
    icmp[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&(index as u16).to_be_bytes());
    icmp[8..16].copy_from_slice(MAGIC);
    icmp[16..20].copy_from_slice(&index.to_be_bytes());
    icmp[20] = p.kind.tag();
    let sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt[4..6].copy_from_slice(&(index as u16).to_be_bytes());
    let sum = checksum(&pkt[..20]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// The probe index an echo reply (a whole IPv4 packet) carries, if it answers one of ours.
fn echo_reply_index(pkt: &[u8], ident: u16) -> Option<u32> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..)?;
    if icmp.len() < 21 || icmp[0] != 0 || icmp[4..6] != ident.to_be_bytes() {
        return None;
    }
    if &icmp[8..16] != MAGIC {
        return None;
    }
    let index = u32::from_be_bytes(icmp[16..20].try_into().ok()?);
    ProbeKind::from_tag(icmp[20])?;
    Some(index)
}

/// The reply comes from the address the probe went to, addressed to the probe's source.
fn reply_matches(pkt: &[u8], p: &Probe) -> bool {
    pkt.len() >= 20 && pkt[12..16] == p.dst.octets() && pkt[16..20] == p.src.octets()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: ProbeKind, size: u16) -> Probe {
        Probe {
            target: 3,
            kind,
            src: Ipv4Addr::new(10, 244, 1, 0),
            dst: Ipv4Addr::new(10, 244, 2, 0),
            size,
            path: Path::Routed,
        }
    }

    /// The reply a kernel sends back: addresses swapped, type 0, checksum redone.
    fn reply_to(req: &[u8]) -> Vec<u8> {
        let mut r = req.to_vec();
        r[12..16].copy_from_slice(&req[16..20]);
        r[16..20].copy_from_slice(&req[12..16]);
        r[20] = 0;
        r[22..24].fill(0);
        let sum = checksum(&r[20..]);
        r[22..24].copy_from_slice(&sum.to_be_bytes());
        r
    }

    #[test]
    fn a_request_is_a_valid_df_echo_of_the_asked_size() {
        let req = echo_request(&probe(ProbeKind::TunnelMtu, 1450), 0xbeef, 7);
        assert_eq!(req.len(), 1450);
        assert_eq!(u16::from_be_bytes([req[2], req[3]]), 1450);
        assert_eq!(req[6] & 0x40, 0x40, "DF");
        assert_eq!(req[20], 8);
        assert_eq!(checksum(&req[20..]), 0, "a correct checksum sums to zero");
        assert_eq!(checksum(&req[..20]), 0, "the header's too");
        // Too small a size still carries the whole payload.
        assert_eq!(
            echo_request(&probe(ProbeKind::Tunnel, 0), 1, 1).len(),
            MIN_PROBE_SIZE as usize
        );
    }

    #[test]
    fn only_replies_to_our_probes_are_taken() {
        let p = probe(ProbeKind::TunnelFromUnderlay, 64);
        let req = echo_request(&p, 0xbeef, 70_000);
        let reply = reply_to(&req);
        assert_eq!(echo_reply_index(&reply, 0xbeef), Some(70_000));
        assert!(reply_matches(&reply, &p));
        // Another run's identifier, the request itself, a truncated packet, a foreign payload.
        assert_eq!(echo_reply_index(&reply, 0xbeee), None);
        assert_eq!(echo_reply_index(&req, 0xbeef), None);
        assert_eq!(echo_reply_index(&reply[..30], 0xbeef), None);
        let mut foreign = reply.clone();
        foreign[28] ^= 1;
        assert_eq!(echo_reply_index(&foreign, 0xbeef), None);
        // From somewhere else.
        let other = Probe {
            dst: Ipv4Addr::new(10, 244, 9, 0),
            ..p
        };
        assert!(!reply_matches(&reply, &other));
    }
}
