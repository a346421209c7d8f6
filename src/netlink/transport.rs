//! Netlink sockets bound to a namespace, and the request / dump / pipelined-batch machinery.
//!
//! One `NETLINK_ROUTE` socket per [`super::Netlink`], driven by a netlink-proto `Connection`
//! task. Batches are sent as multi-message datagrams (the kernel processes every message of a
//! datagram in order and acks each one), so thousands of requests cost a few dozen `sendmsg`
//! calls and one `recvmsg` per ack — the same kernel work as `ip -batch`, without its
//! one-request-one-wait pattern.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_proto::{ConnectionHandle, NetlinkCodec};
use netlink_sys::{AsyncSocket, Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::{NetlinkError, RawError};
use crate::netns::NetnsFile;

/// Receive buffer of request sockets: acks of one datagram must always fit.
pub(crate) const REQUEST_RCVBUF: usize = 8 << 20;
/// Receive buffer of monitor sockets: absorbs bursts of notifications (flannel lost FDB
/// updates to ENOBUFS when many nodes joined at once).
pub(crate) const MONITOR_RCVBUF: usize = 32 << 20;
/// Messages per datagram in a batch. Bounded so one datagram's acks stay far below the
/// receive buffer and a datagram stays far below the socket's send buffer.
const BATCH_MAX_MESSAGES: usize = 128;
const BATCH_MAX_BYTES: usize = 48 << 10;
/// A dump interrupted by concurrent changes (NLM_F_DUMP_INTR) is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

const NLMSGERR_ATTR_MSG: u16 = 1;

/// Creates a `NETLINK_ROUTE` socket inside `ns` (on a helper thread; setns is per thread) and
/// sets the options every socket of this layer uses.
pub(crate) fn open_socket(
    ns: &NetnsFile,
    rcvbuf: usize,
    strict: bool,
) -> Result<Socket, NetlinkError> {
    let sock_err = |source: io::Error| NetlinkError::Socket {
        netns: ns.path().display().to_string(),
        source,
    };
    let socket = ns.run(|| Socket::new(NETLINK_ROUTE))?.map_err(sock_err)?;
    set_rcvbuf(socket.as_raw_fd(), rcvbuf).map_err(sock_err)?;
    // Extended acks carry the kernel's error text; capped acks keep error replies small.
    socket.set_ext_ack(true).map_err(sock_err)?;
    socket.set_cap_ack(true).map_err(sock_err)?;
    if strict {
        // Strict checking makes the kernel honour dump filters (table/oif/protocol for routes,
        // ifindex for FDB and addresses) and reject malformed dump requests.
        socket.set_netlink_get_strict_chk(true).map_err(sock_err)?;
    }
    socket.set_non_blocking(true).map_err(sock_err)?;
    Ok(socket)
}

/// SO_RCVBUFFORCE (root may exceed rmem_max), falling back to SO_RCVBUF.
fn set_rcvbuf(fd: RawFd, size: usize) -> io::Result<()> {
    let value = nix::libc::c_int::try_from(size).unwrap_or(nix::libc::c_int::MAX);
    for option in [nix::libc::SO_RCVBUFFORCE, nix::libc::SO_RCVBUF] {
        // SAFETY: plain setsockopt with a c_int value on a socket we own.
        let rc = unsafe {
            nix::libc::setsockopt(
                fd,
                nix::libc::SOL_SOCKET,
                option,
                (&value as *const nix::libc::c_int).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// A netlink socket registered with the tokio reactor (netlink-sys' own `TokioSocket` panics
/// when registration fails; this one reports it).
pub(crate) struct NsSocket(AsyncFd<Socket>);

impl NsSocket {
    pub(crate) fn new(socket: Socket) -> io::Result<Self> {
        register(socket, Interest::READABLE | Interest::WRITABLE).map(Self)
    }
}

impl AsRawFd for NsSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }
}

impl AsyncSocket for NsSocket {
    fn socket_ref(&self) -> &Socket {
        self.0.get_ref()
    }

    fn socket_mut(&mut self) -> &mut Socket {
        self.0.get_mut()
    }

    fn new(_protocol: isize) -> io::Result<Self> {
        // Sockets of this layer are always created inside a given namespace; see open_socket.
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "NsSocket is created from an existing socket",
        ))
    }

    fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            if let Ok(res) = guard.try_io(|inner| inner.get_ref().send(buf, 0)) {
                return Poll::Ready(res);
            }
        }
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        addr: &SocketAddr,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            if let Ok(res) = guard.try_io(|inner| inner.get_ref().send_to(buf, addr, 0)) {
                return Poll::Ready(res);
            }
        }
    }

    fn poll_recv<B: bytes::BufMut>(
        &self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|inner| inner.get_ref().recv(buf, 0)) {
                return Poll::Ready(res.map(|_| ()));
            }
        }
    }

    fn poll_recv_from<B: bytes::BufMut>(
        &self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<SocketAddr>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|inner| inner.get_ref().recv_from(buf, 0)) {
                return Poll::Ready(res.map(|(_, addr)| addr));
            }
        }
    }

    fn poll_recv_from_full(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Vec<u8>, SocketAddr)>> {
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|inner| inner.get_ref().recv_from_full()) {
                return Poll::Ready(res);
            }
        }
    }
}

/// The request side of one netlink socket. Cloning shares the socket.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    handle: ConnectionHandle<RouteNetlinkMessage>,
}

impl Transport {
    /// Wraps `socket` (from [`open_socket`]) and spawns its connection task on the current
    /// runtime. The task ends once every clone of the transport is dropped.
    pub(crate) fn spawn(socket: Socket) -> io::Result<Self> {
        let socket = NsSocket::new(socket)?;
        let (mut conn, handle, unsolicited) =
            netlink_proto::from_socket_with_codec::<RouteNetlinkMessage, NsSocket, NetlinkCodec>(
                socket,
            );
        // Acks and end-of-dump markers are how batch results and dump errors are read.
        conn.set_forward_ack(true);
        conn.set_forward_done(true);
        // A unicast socket gets no notifications; dropping the receiver lets the task end.
        drop(unsolicited);
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Sends one request and collects the messages it returns until its ack.
    pub(crate) async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RawError> {
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = flags | NLM_F_REQUEST;
        let expects_ack = flags & NLM_F_ACK != 0;
        let mut replies = self
            .handle
            .request(nl, SocketAddr::new(0, 0))
            .map_err(|_| RawError::Closed)?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let flags = reply.header.flags;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok(out),
                    Some(code) => return Err(kernel_error(code.get(), flags, &e.header, true)),
                },
                NetlinkPayload::Done(d) if d.code < 0 => {
                    return Err(kernel_error(d.code, flags, &d.extended_ack, false));
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Overrun(_) => {
                    return Err(RawError::Protocol("receive buffer overrun".into()));
                }
                _ => {}
            }
        }
        // Without NLM_F_ACK a GET is answered by exactly one message.
        if !expects_ack && !out.is_empty() {
            Ok(out)
        } else {
            Err(RawError::Closed)
        }
    }

    /// Runs a dump (`NLM_F_DUMP`), retrying when the kernel flags it as interrupted by a
    /// concurrent change.
    pub(crate) async fn dump(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, RawError> {
        let mut attempt = 1;
        loop {
            let (messages, interrupted) = self.dump_once(msg.clone()).await?;
            if !interrupted || attempt == DUMP_ATTEMPTS {
                if interrupted {
                    tracing::warn!(
                        attempts = attempt,
                        "netlink dump kept being interrupted by concurrent changes"
                    );
                }
                return Ok(messages);
            }
            attempt += 1;
        }
    }

    async fn dump_once(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), RawError> {
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut replies = self
            .handle
            .request(nl, SocketAddr::new(0, 0))
            .map_err(|_| RawError::Closed)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        while let Some(reply) = replies.next().await {
            let flags = reply.header.flags;
            interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Done(d) if d.code < 0 => {
                    return Err(kernel_error(d.code, flags, &d.extended_ack, false));
                }
                NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                NetlinkPayload::Error(e) => match e.code {
                    None => return Ok((out, interrupted)),
                    Some(code) => return Err(kernel_error(code.get(), flags, &e.header, true)),
                },
                NetlinkPayload::Overrun(_) => {
                    return Err(RawError::Protocol("receive buffer overrun".into()));
                }
                _ => {}
            }
        }
        Err(RawError::Closed)
    }

    /// Sends every request (each must carry NLM_F_ACK) pipelined in multi-message datagrams
    /// and returns one result per request, in order. The kernel applies them in order.
    pub(crate) async fn batch(
        &self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Vec<Result<(), RawError>> {
        let total = requests.len();
        let mut results: Vec<Result<(), RawError>> = vec![Err(RawError::Closed); total];
        let mut in_flight = Vec::new();
        let mut requests = requests.into_iter().peekable();
        let mut start = 0;
        while requests.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while chunk.len() < BATCH_MAX_MESSAGES && bytes < BATCH_MAX_BYTES {
                let Some((msg, flags)) = requests.next() else {
                    break;
                };
                let mut nl = NetlinkMessage::from(msg);
                nl.header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
                bytes += nl.buffer_len();
                chunk.push(nl);
            }
            let len = chunk.len();
            match self.handle.request_batch(chunk, SocketAddr::new(0, 0)) {
                Ok(replies) => in_flight.push((start, len, replies)),
                Err(_) => break, // connection gone: the rest stays Closed
            }
            start += len;
        }
        for (start, len, mut replies) in in_flight {
            let mut first_seq = None;
            let mut seen = 0;
            while let Some(reply) = replies.next().await {
                let seq = reply.header.sequence_number;
                let flags = reply.header.flags;
                let NetlinkPayload::Error(e) = reply.payload else {
                    continue;
                };
                // Acks come back in request order; the sequence numbers of one datagram are
                // consecutive, so the offset from the first ack is the request's position.
                let base = *first_seq.get_or_insert(seq);
                let offset = seq.wrapping_sub(base) as usize;
                if offset >= len {
                    continue;
                }
                seen += 1;
                results[start + offset] = match e.code {
                    None => Ok(()),
                    Some(code) => Err(kernel_error(code.get(), flags, &e.header, true)),
                };
            }
            if seen < len {
                tracing::warn!(
                    expected = len,
                    received = seen,
                    "netlink batch ended with missing acks"
                );
            }
        }
        results
    }
}

fn kernel_error(code: i32, flags: u16, payload: &[u8], is_error_msg: bool) -> RawError {
    RawError::Kernel {
        errno: code.checked_abs().unwrap_or(i32::MAX),
        detail: ext_ack_message(flags, payload, is_error_msg),
    }
}

/// Extracts NLMSGERR_ATTR_MSG from an extended ack. In NLMSG_ERROR the TLVs follow the echoed
/// request (just its header when NLM_F_CAPPED); in NLMSG_DONE they follow the error code.
pub(crate) fn ext_ack_message(flags: u16, payload: &[u8], is_error_msg: bool) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let tlv_start = if !is_error_msg {
        0
    } else if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?) as usize;
        (len + 3) & !3
    };
    let mut rest = payload.get(tlv_start..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &rest[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = rest.get(((len + 3) & !3).min(rest.len())..)?;
    }
    None
}

/// Registers a socket with the current runtime's reactor.
pub(crate) fn register(socket: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its fd, closes it only on drop and always returns the same fd
    // from `as_raw_fd`, so the fd stays valid for the whole life of the AsyncFd.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(|e| e.into_parts().1)
}

/// Duplicates a namespace handle (a fresh open of the same nsfs inode).
pub(crate) fn dup_netns(ns: &NetnsFile) -> Result<NetnsFile, NetlinkError> {
    Ok(NetnsFile::open(format!(
        "/proc/self/fd/{}",
        ns.file().as_raw_fd()
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn ext_ack_message_from_capped_error() {
        let mut payload = vec![0u8; 16]; // echoed request header
        payload.extend(tlv(2, &7u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        payload.extend(tlv(1, b"Nexthop has invalid gateway\0"));
        let msg = ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload, true);
        assert_eq!(msg.as_deref(), Some("Nexthop has invalid gateway"));
    }

    #[test]
    fn ext_ack_message_from_uncapped_error_skips_the_echoed_request() {
        let mut payload = vec![0u8; 22];
        payload[0..4].copy_from_slice(&22u32.to_ne_bytes());
        payload.extend([0, 0]); // pad to 24
        payload.extend(tlv(1, b"bad\0"));
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &payload, true).as_deref(),
            Some("bad")
        );
    }

    #[test]
    fn ext_ack_message_from_done() {
        let payload = tlv(1, b"Invalid values in header for neighbor dump request\0");
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &payload, false).as_deref(),
            Some("Invalid values in header for neighbor dump request")
        );
    }

    #[test]
    fn no_ext_ack_without_flag_or_on_garbage() {
        assert_eq!(ext_ack_message(0, &tlv(1, b"x\0"), false), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[1, 0], false), None);
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &[200, 0, 1, 0, 0], false),
            None
        );
    }
}
