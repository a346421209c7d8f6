//! The runtime's environment variables and their validation. Everything here runs before the
//! plugin touches any file or interface, so bad input can leave nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::netns::{NetnsError, NetnsFile};

use super::types::{CniError, ErrorCode};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            "GC" => Ok(Self::Gc),
            "STATUS" => Ok(Self::Status),
            other => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("unknown CNI_COMMAND: {other}"),
            )),
        }
    }
}

/// The environment of one invocation, as given (validated per command by [`RuntimeEnv::require`]).
#[derive(Debug, Clone, Default)]
pub struct RuntimeEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    pub netns_override: bool,
}

impl RuntimeEnv {
    /// Reads `CNI_*` from a lookup function (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
            netns_override: get("CNI_NETNS_OVERRIDE")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        }
    }

    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `CNI_PATH` split into directories.
    pub fn search_path(&self) -> Vec<PathBuf> {
        self.path
            .as_deref()
            .unwrap_or("")
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// A variable the verb needs: set and not empty.
fn required(value: &Option<String>, var: &str) -> Result<String, CniError> {
    value.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("required environment variable {var} is missing or empty"),
        )
    })
}

pub use super::config::Attachment;

/// The runtime's attachment, validated: safe to use in file names and as an interface name.
pub fn require_attachment(env: &RuntimeEnv) -> Result<Attachment, CniError> {
    let container_id = required(&env.container_id, "CNI_CONTAINERID")?;
    validate_container_id(&container_id)?;
    let ifname = required(&env.ifname, "CNI_IFNAME")?;
    validate_ifname(&ifname)?;
    Ok(Attachment {
        container_id,
        ifname,
    })
}

/// Container IDs name files (`<dataDir>/<id>`, host-local reservations): the Go skeleton's
/// charset, no `..`, at most 255 bytes (a file name).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !first_ok || !rest_ok || id.len() > 255 || id.contains("..") {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "invalid CNI_CONTAINERID {id:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$, at most 255 bytes, no \"..\""
            ),
        ));
    }
    Ok(())
}

/// Interface names: 1–15 bytes, not `.`/`..`, no `/`, `:`, whitespace or control bytes.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if bad {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "invalid CNI_IFNAME {name:?}: 1 to 15 bytes, not \".\" or \"..\", no '/', ':' or whitespace"
            ),
        ));
    }
    Ok(())
}

/// Opens `CNI_NETNS`, checks it is a network namespace and not the plugin's own one.
pub fn open_netns(env: &RuntimeEnv) -> Result<NetnsFile, CniError> {
    let path = required(&env.netns, "CNI_NETNS")?;
    let ns = NetnsFile::open(&path).map_err(|e| match e {
        NetnsError::NotNetns { .. } => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {path:?} is not a network namespace"),
        ),
        other => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {path:?} cannot be opened"),
        )
        .with_details(other.to_string()),
    })?;
    if !env.netns_override && same_namespace(ns.path(), Path::new("/proc/self/ns/net")) {
        return Err(CniError::new(
            ErrorCode::InvalidNetns,
            format!(
                "CNI_NETNS {path:?} is the plugin's own network namespace (set CNI_NETNS_OVERRIDE=1 if that is intended)"
            ),
        ));
    }
    Ok(ns)
}

/// DEL's view of `CNI_NETNS`: optional, and a namespace that no longer exists (missing path,
/// or a stale file that is no longer a namespace mount) means there is nothing to delete in it.
pub fn open_netns_for_del(env: &RuntimeEnv) -> Result<Option<NetnsFile>, CniError> {
    let Some(path) = env.netns.clone().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ns = match NetnsFile::open(&path) {
        Ok(ns) => ns,
        Err(NetnsError::NotNetns { .. }) => return Ok(None),
        Err(NetnsError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(other) => {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_NETNS {path:?} cannot be opened"),
            )
            .with_details(other.to_string()));
        }
    };
    if !env.netns_override && same_namespace(ns.path(), Path::new("/proc/self/ns/net")) {
        return Err(CniError::new(
            ErrorCode::InvalidNetns,
            format!(
                "CNI_NETNS {path:?} is the plugin's own network namespace (set CNI_NETNS_OVERRIDE=1 if that is intended)"
            ),
        ));
    }
    Ok(Some(ns))
}

fn same_namespace(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for ok in [
            "a",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "pod_1.x-y",
        ] {
            validate_container_id(ok).unwrap();
        }
        let long = "a".repeat(256);
        for bad in [
            "", "../x", "a/b", "a..b", ".a", "-a", "a b", "a\u{0}b", "ä", &long, "a\nb",
        ] {
            let err = validate_container_id(bad).unwrap_err();
            assert_eq!(err.code, 4, "{bad:?}");
            assert!(err.msg.contains("CNI_CONTAINERID"));
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "net1", "a", "123456789012345", "e-x_y.z"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth:0",
            "e th",
            "1234567890123456",
            "e\tx",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }

    #[test]
    fn attachment_requires_both_variables() {
        let env = RuntimeEnv::from_lookup(|k| match k {
            "CNI_CONTAINERID" => Some("c1".into()),
            _ => None,
        });
        let err = require_attachment(&env).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_IFNAME"), "{err}");
    }

    #[test]
    fn netns_checks() {
        let with = |p: &str| RuntimeEnv {
            netns: Some(p.into()),
            ..Default::default()
        };
        let err = open_netns(&with("/nonexistent/netns")).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_NETNS"));
        let err = open_netns(&with("/proc/self/status")).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("not a network namespace"), "{err}");
        let err = open_netns(&RuntimeEnv::default()).unwrap_err();
        assert_eq!(err.code, 4);
        let err = open_netns(&with("/proc/self/ns/net")).unwrap_err();
        assert_eq!(err.code, 8, "own namespace refused: {err}");
        let mut env = with("/proc/self/ns/net");
        env.netns_override = true;
        open_netns(&env).unwrap();

        assert!(
            open_netns_for_del(&with("/nonexistent/netns"))
                .unwrap()
                .is_none()
        );
        assert!(
            open_netns_for_del(&with("/proc/self/status"))
                .unwrap()
                .is_none()
        );
        assert!(
            open_netns_for_del(&RuntimeEnv::default())
                .unwrap()
                .is_none()
        );
        assert_eq!(
            open_netns_for_del(&with("/proc/self/ns/net"))
                .unwrap_err()
                .code,
            8,
            "DEL must never delete CNI_IFNAME in the node's own namespace"
        );
    }

    #[test]
    fn commands_and_path() {
        assert_eq!(Command::parse("ADD").unwrap(), Command::Add);
        assert_eq!(Command::parse("add").unwrap_err().code, 4);
        let env = RuntimeEnv {
            path: Some("/opt/cni/bin::/usr/lib/cni".into()),
            ..Default::default()
        };
        assert_eq!(
            env.search_path(),
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }
}
