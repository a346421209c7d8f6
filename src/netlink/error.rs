//! The one error type of the netlink layer.

use std::io;

use crate::netns::NetnsError;

/// A failed netlink operation. Messages name the operation and the object, e.g.
/// `replace route 10.244.3.0/24 via 10.244.3.0 dev flannel.1: Network is unreachable (os error 101)`.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request. `detail` is the kernel's extended-ack text, if any.
    #[error("{op} {object}: {source}{}", detail_suffix(.detail))]
    Kernel {
        op: &'static str,
        object: String,
        source: io::Error,
        detail: Option<String>,
    },
    /// The request was not sent because its input is invalid.
    #[error("{op} {object}: {reason}")]
    InvalidInput {
        op: &'static str,
        object: String,
        reason: String,
    },
    /// The object that the operation needs does not exist.
    #[error("{op} {object}: not found")]
    NotFound { op: &'static str, object: String },
    /// The socket's background connection ended (the runtime shut down).
    #[error("{op} {object}: netlink connection closed")]
    ConnectionClosed { op: &'static str, object: String },
    /// The kernel answered something this layer does not understand.
    #[error("{op} {object}: unexpected netlink reply: {detail}")]
    Protocol {
        op: &'static str,
        object: String,
        detail: String,
    },
    /// Opening or configuring a netlink socket failed.
    #[error("open netlink socket in network namespace {netns}: {source}")]
    Socket { netns: String, source: io::Error },
    /// Reading notifications from a monitor socket failed.
    #[error("read netlink notifications in network namespace {netns}: {source}")]
    Monitor { netns: String, source: io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink handles must be created inside a tokio runtime")]
    NoRuntime,
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

impl NetlinkError {
    /// The errno the kernel (or a socket call) returned, if this error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. }
            | NetlinkError::Socket { source, .. }
            | NetlinkError::Monitor { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What a single request came back with, before it is tied to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawError {
    /// Positive errno plus extended-ack message.
    Kernel {
        errno: i32,
        detail: Option<String>,
    },
    Closed,
    Protocol(String),
}

impl RawError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            RawError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn into_error(self, op: &'static str, object: String) -> NetlinkError {
        match self {
            RawError::Kernel { errno, detail } => NetlinkError::Kernel {
                op,
                object,
                source: io::Error::from_raw_os_error(errno),
                detail,
            },
            RawError::Closed => NetlinkError::ConnectionClosed { op, object },
            RawError::Protocol(detail) => NetlinkError::Protocol { op, object, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_op_object_and_errno() {
        let err = RawError::Kernel {
            errno: 101,
            detail: None,
        }
        .into_error(
            "replace route",
            "10.244.3.0/24 via 10.244.3.0 dev flannel.1".into(),
        );
        assert_eq!(
            err.to_string(),
            "replace route 10.244.3.0/24 via 10.244.3.0 dev flannel.1: Network is unreachable (os error 101)"
        );
        assert_eq!(err.errno(), Some(101));
    }

    #[test]
    fn kernel_detail_is_appended() {
        let err = RawError::Kernel {
            errno: 22,
            detail: Some("Nexthop has invalid gateway".into()),
        }
        .into_error("replace route", "x".into());
        assert!(
            err.to_string()
                .ends_with("(os error 22) (Nexthop has invalid gateway)")
        );
    }

    #[test]
    fn non_kernel_errors_have_no_errno() {
        let err = RawError::Closed.into_error("dump", "routes".into());
        assert_eq!(err.errno(), None);
        assert!(err.to_string().contains("connection closed"));
    }
}
