//! Network namespaces: open one, run code on a thread inside one, and (for tests, benchmarks
//! and the local cluster) create uniquely named ones that are removed on drop.
//!
//! `setns(2)` switches only the calling thread, so nothing here ever enters a namespace on a
//! thread it does not own: work that must happen inside a namespace runs on a short-lived
//! helper thread that exits afterwards.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("thread running inside network namespace {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("create network namespace {name}: {detail}")]
    Create { name: String, detail: String },
}

/// An open handle on a network namespace (the file keeps it alive while open).
#[derive(Debug)]
pub struct NetnsFile {
    path: PathBuf,
    file: File,
}

impl NetnsFile {
    /// Opens a namespace by path (`/proc/PID/ns/net`, `/run/netns/NAME`, a CNI_NETNS path) and
    /// checks that it really is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        if !is_netns_file(&file) {
            return Err(NetnsError::NotNetns { path });
        }
        Ok(Self { path, file })
    }

    /// Opens a namespace created by `ip netns add NAME`.
    pub fn open_named(name: &str) -> Result<Self, NetnsError> {
        Self::open(Path::new(NETNS_RUN_DIR).join(name))
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a fresh OS thread that entered this namespace; the thread exits afterwards,
    /// so no pooled or runtime thread is ever left in a foreign namespace. When the calling
    /// thread is in this namespace already, `f` runs right here: no thread, no setns (a CNI
    /// ADD opens its node-side socket this way, and a thread costs it ~0.1 ms, more on a
    /// busy node).
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.is_current_thread_namespace() {
            return Ok(f());
        }
        let file = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        let handle = std::thread::Builder::new()
            .name("netns-helper".into())
            .spawn(move || -> Result<T, nix::Error> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Open {
                path: path.clone(),
                source,
            })?;
        match handle.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(NetnsError::Enter { path, source }),
            Err(_) => Err(NetnsError::ThreadPanicked { path }),
        }
    }
}

impl NetnsFile {
    /// Whether the calling thread's network namespace is this one (same nsfs inode). Any
    /// doubt answers false, which only costs the helper thread.
    fn is_current_thread_namespace(&self) -> bool {
        let Ok(ours) = nix::sys::stat::fstat(&self.file) else {
            return false;
        };
        match nix::sys::stat::stat("/proc/thread-self/ns/net") {
            Ok(current) => current.st_dev == ours.st_dev && current.st_ino == ours.st_ino,
            Err(_) => false,
        }
    }
}

/// True when `file` is an nsfs inode of type CLONE_NEWNET.
fn is_netns_file(file: &File) -> bool {
    // NS_GET_NSTYPE = _IO(0xb7, 0x3) returns the CLONE_NEW* flag of the namespace.
    const NS_GET_NSTYPE: nix::libc::c_ulong = 0xb703;
    use std::os::fd::AsRawFd;
    // SAFETY: this ioctl takes no argument and only reads the fd's namespace type.
    let kind = unsafe { nix::libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    kind == CloneFlags::CLONE_NEWNET.bits()
}

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace this project's tests, benchmarks and demos create.
pub const TEST_NETNS_PREFIX: &str = "frs-";

/// A named network namespace that exists for as long as this guard does. On drop, every
/// process still inside it is killed and the namespace is deleted — after a panic too.
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Creates `frs-<pid>-<n>[-tag]` with `ip netns add` and brings its loopback up.
    pub fn new(tag: &str) -> Result<Self, NetnsError> {
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("{TEST_NETNS_PREFIX}{}-{n}", std::process::id());
        if !tag.is_empty() {
            name.push('-');
            name.push_str(tag);
        }
        Self::create(name)
    }

    /// Creates a namespace with an exact name (callers own the prefix, e.g. a cluster run).
    pub fn create(name: String) -> Result<Self, NetnsError> {
        run_ip(&["netns", "add", &name]).map_err(|detail| NetnsError::Create {
            name: name.clone(),
            detail,
        })?;
        let guard = Self { name };
        run_ip(&["-n", &guard.name, "link", "set", "lo", "up"]).map_err(|detail| {
            NetnsError::Create {
                name: guard.name.clone(),
                detail,
            }
        })?;
        Ok(guard)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    pub fn open(&self) -> Result<NetnsFile, NetnsError> {
        NetnsFile::open(self.path())
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip ARGS` against this namespace (`ip -n NAME ARGS`) and returns stdout, or the
    /// command line and stderr on failure.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Runs an arbitrary program inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        self.command(program).args(args).output()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// Kills every process inside the named namespace, then deletes it. Best effort.
pub fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Deletes `frs-<pid>-…` namespaces left behind by processes of this project that no longer
/// run (a test binary killed hard). Only our own prefix is touched.
pub fn remove_stale_test_namespaces() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEST_NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_netns(&name);
            removed.push(name);
        }
    }
    removed
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        format!(
            "cannot run `ip {}`: {e} (is iproute2 installed?)",
            args.join(" ")
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = NetnsFile::open("/proc/self/status").unwrap_err();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
    }

    #[test]
    fn a_missing_path_is_an_open_error() {
        let err = NetnsFile::open("/nonexistent/ns").unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    }

    #[test]
    fn own_namespace_opens() {
        let ns = NetnsFile::current().expect("current netns");
        assert!(ns.path().ends_with("net"));
    }
}
