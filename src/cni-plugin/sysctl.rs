//! `/proc/sys` writes. Under `/proc/sys/net` the kernel answers for the network namespace of
//! the *thread* that opens the file, so pod-side settings are written from a thread that
//! entered the pod namespace ([`crate::netns::NetnsFile::run`]).

use std::io::ErrorKind;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}={value}: {source}")]
pub struct SysctlError {
    pub key: String,
    pub value: String,
    pub source: std::io::Error,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

/// Writes `value` to `/proc/sys/<key>` (e.g. `net/ipv4/conf/eth0/arp_notify`).
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path(key), value).map_err(|source| SysctlError {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Like [`set`], but a missing key (IPv6 disabled, no such device) is not an error.
pub fn set_if_present(key: &str, value: &str) -> Result<(), SysctlError> {
    match set(key, value) {
        Err(e) if e.source.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Reads `/proc/sys/<key>`, trimmed.
pub fn get(key: &str) -> Option<String> {
    std::fs::read_to_string(path(key))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Writes only when the current value differs (forwarding switches: avoid needless writes,
/// which on `ip_forward` reset per-device settings in older kernels).
pub fn ensure(key: &str, value: &str) -> Result<(), SysctlError> {
    if get(key).as_deref() == Some(value) {
        return Ok(());
    }
    set(key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_reports_errors_with_the_key() {
        assert!(get("kernel/ostype").is_some_and(|v| v == "Linux"));
        assert_eq!(get("net/does/not/exist"), None);
        let err = set("net/does/not/exist", "1").unwrap_err();
        assert!(
            err.to_string().starts_with("sysctl net/does/not/exist=1"),
            "{err}"
        );
        set_if_present("net/does/not/exist", "1").unwrap();
    }
}
