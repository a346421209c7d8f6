//! Start-up check of the capabilities the daemon cannot work without, so a container started
//! without them fails with one line naming the capability instead of a bare EPERM from the
//! first netlink write.

use thiserror::Error;

/// `CAP_NET_ADMIN` (linux/capability.h): links, addresses, routes, neighbours, FDB, netfilter.
pub const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapsError {
    #[error(
        "flanneld needs the {name} capability and does not have it \
         (in the DaemonSet: securityContext.capabilities.add: [\"{name}\"])"
    )]
    Missing { name: &'static str },
    #[error("cannot read the effective capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// The `CapEff:` mask of a /proc/PID/status text.
pub fn effective_mask(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Checks `mask` for NET_ADMIN.
pub fn check(mask: u64) -> Result<(), CapsError> {
    if mask & (1 << CAP_NET_ADMIN) == 0 {
        return Err(CapsError::Missing { name: "NET_ADMIN" });
    }
    Ok(())
}

/// Checks this process's effective set.
pub fn require_net_admin() -> Result<(), CapsError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| CapsError::Unreadable(e.to_string()))?;
    let mask =
        effective_mask(&status).ok_or_else(|| CapsError::Unreadable("no CapEff line".into()))?;
    check(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_bit_12_of_cap_eff() {
        let status = "Name:\tflanneld\nCapInh:\t0000000000000000\nCapEff:\t00000000a80435fb\n";
        let mask = effective_mask(status).expect("mask");
        assert_eq!(mask, 0xa80435fb);
        // podman's default set (no NET_ADMIN) plus NET_RAW: refused, naming the capability.
        let err = check(0xa80425fb | (1 << 13)).expect_err("no NET_ADMIN");
        assert!(err.to_string().contains("NET_ADMIN"), "{err}");
        assert_eq!(check(mask), Ok(()));
        assert_eq!(check(u64::MAX), Ok(()));
        assert_eq!(effective_mask("Name:\tx\n"), None);
    }
}
