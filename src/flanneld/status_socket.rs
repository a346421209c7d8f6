//! The private status socket: a Unix socket only its owner (root, in the DaemonSet) may open,
//! because `/status` lists every peer's public IP and VTEP MAC — enough to forge VXLAN frames
//! into pods — and the health port is reachable from every pod.
//!
//! The socket is made in a fresh 0700 directory, set to 0600 and only then renamed into
//! place, so nobody else can connect in between. A socket left by a daemon that died is
//! removed at start; a live one is an error (two daemons with one subnet file); ours is
//! removed when [`StatusSocket`] is dropped, unless another daemon has replaced it.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Linux's `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("status socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "status socket {path}: another flanneld answers on it (two daemons with the same \
         --subnet-file?)"
    )]
    InUse { path: PathBuf },
    #[error("status socket {path}: something other than a socket is there; not removing it")]
    NotASocket { path: PathBuf },
    #[error(
        "status socket {path}: longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes); \
         use a shorter --subnet-file path"
    )]
    PathTooLong { path: PathBuf },
}

/// Our socket file; removed on drop if it is still the one we made.
#[derive(Debug)]
pub struct StatusSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl StatusSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours && let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "could not remove the status socket");
        }
    }
}

/// Binds the socket at `path` (mode 0600, owned by this process's user). Needs a Tokio runtime.
pub fn bind(path: &Path) -> Result<(tokio::net::UnixListener, StatusSocket), SocketError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| SocketError::Io { path, what, source }
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::PathTooLong { path: path.into() });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    remove_stale(path)?;

    // tempfile makes the directory 0700: nobody but us can reach the socket inside it.
    let private = tempfile::Builder::new()
        .prefix(".flanneld-")
        .tempdir_in(dir)
        .map_err(io("create a private directory next to it"))?;
    let inner = private.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&inner).map_err(io("bind"))?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set mode 0600"))?;
    std::fs::rename(&inner, path).map_err(io("move into place"))?;
    drop(private);

    let meta = std::fs::symlink_metadata(path).map_err(io("stat"))?;
    listener
        .set_nonblocking(true)
        .map_err(io("set non-blocking"))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io("register"))?;
    Ok((
        listener,
        StatusSocket {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Removes a socket nobody answers on (its daemon died); refuses a live one or a non-socket.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.into(),
                what: "stat",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { path: path.into() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse { path: path.into() });
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a stale status socket");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Io {
            path: path.into(),
            what: "remove the stale socket",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn made_private_stale_replaced_live_refused_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flanneld-subnet.env.sock");

        let (listener, guard) = bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        // Only the socket is left in the directory (the private one is gone).
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("flanneld-subnet.env.sock")]
        );

        // A second daemon on the same path is refused while the first listens.
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");

        // The first dies without cleaning up (listener closed, file left): stale, replaced.
        drop(listener);
        std::mem::forget(guard);
        let (_listener, guard) = bind(&path).unwrap();
        assert!(path.exists());
        drop(guard);
        assert!(!path.exists(), "removed on drop");

        // Never removes what is not a socket.
        std::fs::write(&path, "x").unwrap();
        assert!(matches!(
            bind(&path).unwrap_err(),
            SocketError::NotASocket { .. }
        ));
    }

    #[tokio::test]
    async fn a_successors_socket_is_not_removed_by_our_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (_first_listener, first) = bind(&path).unwrap();
        // Someone moved ours aside (its inode stays in use) and another daemon bound anew.
        std::fs::rename(&path, dir.path().join("old.sock")).unwrap();
        let (_second_listener, _second) = bind(&path).unwrap();
        drop(first);
        assert!(path.exists());
    }

    #[test]
    fn an_overlong_path_is_a_clear_error() {
        let path = PathBuf::from(format!("/tmp/{}/s.sock", "x".repeat(120)));
        let err = bind(&path).unwrap_err();
        assert!(err.to_string().contains("shorter --subnet-file"), "{err}");
    }
}
