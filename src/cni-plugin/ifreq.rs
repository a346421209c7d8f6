//! The one link setting the netlink layer does not carry: the transmit queue length. The
//! reference plugin creates both veth ends with `txqlen 0`; `SIOCSIFTXQLEN` on a plain socket
//! sets it for a device of the calling thread's network namespace.

use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

#[derive(Debug, thiserror::Error)]
#[error("set txqueuelen {qlen} on {ifname}: {source}")]
pub struct TxqlenError {
    pub ifname: String,
    pub qlen: u32,
    pub source: std::io::Error,
}

pub fn set_txqlen(ifname: &str, qlen: u32) -> Result<(), TxqlenError> {
    let fail = |source| TxqlenError {
        ifname: ifname.to_string(),
        qlen,
        source,
    };
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(fail(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail(e.into()))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // `ifr_qlen` shares the int slot of the union with `ifr_ifindex`.
    req.ifr_ifru.ifru_ifindex = i32::try_from(qlen).unwrap_or(i32::MAX);
    // SAFETY: SIOCSIFTXQLEN reads a struct ifreq that lives for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFTXQLEN as _, &mut req) };
    if rc < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_device() {
        let err = set_txqlen("frs-no-such-if", 0).unwrap_err();
        assert!(err.to_string().contains("frs-no-such-if"), "{err}");
        assert!(set_txqlen("", 0).is_err());
        assert!(set_txqlen("abcdefghijklmnopq", 0).is_err());
    }
}
