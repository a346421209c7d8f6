//! Spawns `kube-testserver` for tests and benchmarks and drives its admin API.
//!
//! ```ignore
//! let server = KubeTestServer::spawn(env!("CARGO_BIN_EXE_kube-testserver"), TestServerOptions::default())?;
//! let kubeconfig = server.kubeconfig("flannel").unwrap();
//! server.inject_fault(&Fault::fail(409).verb("patch").resource("nodes/status").times(1))?;
//! ```
//!
//! Everything lives in a per-run temp dir removed on drop; the server is killed on drop
//! (also while unwinding from a panic) and exits by itself if the spawning process dies.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};

/// The admin API's documents, defined once beside the server.
pub use kube_testserver::{Fault, LogEntry};

#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("kube-testserver did not start: {0}")]
    Startup(String),
    #[error("admin {method} {path} failed with HTTP {code}: {body}")]
    Admin {
        method: String,
        path: String,
        code: u16,
        body: String,
    },
    #[error("bad response from kube-testserver: {0}")]
    Protocol(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestServerError {
    let context = context.into();
    move |source| TestServerError::Io { context, source }
}

/// Command-line options of the server to spawn.
#[derive(Debug, Clone)]
pub struct TestServerOptions {
    pub tls: bool,
    /// Synthetic nodes created at start (`node-00000`, …).
    pub nodes: u32,
    pub realistic: bool,
    pub history_limit: Option<usize>,
    pub churn_per_sec: Option<f64>,
    pub bookmark_interval: Option<Duration>,
    /// Server-side timeout of watches that send no timeoutSeconds.
    pub watch_timeout: Option<Duration>,
    /// How long to wait for server.json (node generation can take a while).
    pub startup_timeout: Duration,
    pub extra_args: Vec<String>,
    /// Run the server inside this network namespace (a path such as `/run/netns/NAME`);
    /// admin calls then connect from inside it too.
    pub netns: Option<PathBuf>,
    /// API listen address (default `127.0.0.1:0`), e.g. an underlay address in `netns`.
    pub listen: Option<String>,
    /// Where the per-run dir is created (default: the system temp dir). A long-lived local
    /// cluster keeps everything under its own run dir so a crashed run can be swept.
    pub work_dir: Option<PathBuf>,
}

impl Default for TestServerOptions {
    fn default() -> Self {
        Self {
            tls: true,
            nodes: 0,
            realistic: false,
            history_limit: None,
            churn_per_sec: None,
            bookmark_interval: None,
            watch_timeout: None,
            startup_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
            netns: None,
            listen: None,
            work_dir: None,
        }
    }
}

/// What `clobber` overwrites the node's annotations with (an unconditional PUT).
#[derive(Debug, Clone)]
pub enum Clobber {
    /// Exactly these annotations.
    Annotations(BTreeMap<String, String>),
    /// The whole node as it was at this resourceVersion (must still be in history).
    AtResourceVersion(String),
    /// A copy taken before keys with this prefix were written.
    DropAnnotationPrefix(String),
}

/// From a request log: the time of the clobber (the admin's unconditional stale write) and
/// the first successful flanneld PATCH of `node` after it — a heal as the server's own clock
/// saw it. Entries are in `seq` order, so the first match is also the earliest.
pub fn heal_after_clobber<'a>(
    log: &'a [LogEntry],
    node: &str,
) -> Result<(u64, &'a LogEntry), &'static str> {
    let clobber_at = log
        .iter()
        .find(|e| e.identity.as_deref() == Some("clobber"))
        .map(|e| e.time_ms)
        .ok_or("the clobber is not in the request log")?;
    let heal = log
        .iter()
        .find(|e| {
            e.identity.as_deref() == Some("flannel")
                && e.method == "PATCH"
                && e.code == 200
                && e.name.as_deref() == Some(node)
                && e.time_ms >= clobber_at
        })
        .ok_or("no healing patch in the request log")?;
    Ok((clobber_at, heal))
}

/// Filters for `request_log`; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub since: Option<u64>,
    pub method: Option<String>,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub identity: Option<String>,
    pub path_prefix: Option<String>,
}

#[derive(Deserialize)]
struct ServerJson {
    url: String,
    admin_url: String,
    pid: u32,
    ca_file: Option<String>,
    kubeconfigs: BTreeMap<String, String>,
    tokens: BTreeMap<String, String>,
}

/// A running kube-testserver; killed and its temp dir removed on drop.
pub struct KubeTestServer {
    child: Option<Child>,
    dir: PathBuf,
    url: String,
    admin_url: String,
    pid: u32,
    ca_file: Option<PathBuf>,
    kubeconfigs: BTreeMap<String, PathBuf>,
    tokens: BTreeMap<String, String>,
    netns: Option<flannel_rs::netns::NetnsFile>,
}

fn unique_dir(parent: Option<&Path>) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    parent
        .map_or_else(std::env::temp_dir, Path::to_path_buf)
        .join(format!(
            "frs-kts-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl KubeTestServer {
    /// Starts `bin` (from integration tests: `env!("CARGO_BIN_EXE_kube-testserver")`) with a
    /// fresh state dir and waits until it has written server.json.
    pub fn spawn(bin: impl AsRef<Path>, opts: TestServerOptions) -> Result<Self, TestServerError> {
        let dir = unique_dir(opts.work_dir.as_deref());
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let state_dir = dir.join("state");
        let stdout =
            std::fs::File::create(dir.join("server.out")).map_err(io_err("creating server.out"))?;
        let stderr =
            std::fs::File::create(dir.join("server.log")).map_err(io_err("creating server.log"))?;
        let mut cmd = Command::new(bin.as_ref());
        cmd.arg("--listen")
            .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--exit-with-parent")
            .arg("--nodes")
            .arg(opts.nodes.to_string());
        if opts.tls {
            cmd.arg("--tls");
        }
        if opts.realistic {
            cmd.arg("--realistic");
        }
        if let Some(h) = opts.history_limit {
            cmd.arg("--history-limit").arg(h.to_string());
        }
        if let Some(r) = opts.churn_per_sec {
            cmd.arg("--churn-per-sec").arg(r.to_string());
        }
        if let Some(b) = opts.bookmark_interval {
            cmd.arg("--bookmark-interval-ms")
                .arg(b.as_millis().to_string());
        }
        if let Some(t) = opts.watch_timeout {
            cmd.arg("--watch-timeout-secs").arg(t.as_secs().to_string());
        }
        cmd.args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let netns = match &opts.netns {
            Some(path) => Some(
                flannel_rs::netns::NetnsFile::open(path)
                    .map_err(|e| TestServerError::Startup(e.to_string()))?,
            ),
            None => None,
        };
        if let Some(ns) = &netns {
            crate::spawn::enter_netns_on_exec(&mut cmd, ns);
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", bin.as_ref().display())))?;
        // From here on, Drop cleans up whatever happens.
        let mut server = Self {
            child: Some(child),
            dir,
            url: String::new(),
            admin_url: String::new(),
            pid: 0,
            ca_file: None,
            kubeconfigs: BTreeMap::new(),
            tokens: BTreeMap::new(),
            netns,
        };
        let info_path = state_dir.join("server.json");
        let deadline = Instant::now() + opts.startup_timeout;
        let info: ServerJson = loop {
            if let Ok(text) = std::fs::read_to_string(&info_path) {
                break serde_json::from_str(&text).map_err(|e| {
                    TestServerError::Protocol(format!("server.json does not parse: {e}"))
                })?;
            }
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(TestServerError::Startup(format!(
                    "exited with {status}; log:\n{}",
                    server.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(TestServerError::Startup(format!(
                    "no server.json after {:?}; log:\n{}",
                    opts.startup_timeout,
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        server.url = info.url;
        server.admin_url = info.admin_url;
        server.pid = info.pid;
        server.ca_file = info.ca_file.map(PathBuf::from);
        server.kubeconfigs = info
            .kubeconfigs
            .into_iter()
            .map(|(k, v)| (k, PathBuf::from(v)))
            .collect();
        server.tokens = info.tokens;
        Ok(server)
    }

    /// The last lines of the server's stderr log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// API base URL, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Admin API base URL (plain HTTP).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The per-run temp dir (state dir is `dir()/state`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// CA certificate when started with TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Kubeconfig of an identity: `admin` or `flannel` (upstream flannel's ClusterRole).
    pub fn kubeconfig(&self, identity: &str) -> Option<&Path> {
        self.kubeconfigs.get(identity).map(PathBuf::as_path)
    }

    pub fn kubeconfig_admin(&self) -> &Path {
        self.kubeconfig("admin")
            .expect("kube-testserver always writes kubeconfig-admin")
    }

    pub fn kubeconfig_flannel(&self) -> &Path {
        self.kubeconfig("flannel")
            .expect("kube-testserver always writes kubeconfig-flannel")
    }

    pub fn token(&self, identity: &str) -> Option<&str> {
        self.tokens.get(identity).map(String::as_str)
    }

    /// One admin call: returns the JSON body, or an error for a non-2xx status.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, TestServerError> {
        let hostport = self
            .admin_url
            .strip_prefix("http://")
            .ok_or_else(|| TestServerError::Protocol(format!("admin url {}", self.admin_url)))?;
        let stream = self.connect(hostport)?;
        let (code, text) = http_request(stream, hostport, method, path, body)?;
        if !(200..300).contains(&code) {
            return Err(TestServerError::Admin {
                method: method.into(),
                path: path.into(),
                code,
                body: text,
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| TestServerError::Protocol(format!("admin {method} {path}: {e}: {text}")))
    }

    pub fn state(&self) -> Result<Value, TestServerError> {
        self.admin("GET", "/admin/state", None)
    }

    /// Current global resourceVersion.
    pub fn resource_version(&self) -> Result<u64, TestServerError> {
        let s = self.state()?;
        s["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| TestServerError::Protocol(format!("state without resourceVersion: {s}")))
    }

    /// `POST /admin/nodes/generate` with e.g. `{"count": 10, "realistic": true}`.
    pub fn generate_nodes(&self, spec: &Value) -> Result<Value, TestServerError> {
        self.admin("POST", "/admin/nodes/generate", Some(spec))
    }

    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node_name: &str,
    ) -> Result<Value, TestServerError> {
        self.admin(
            "POST",
            "/admin/pods",
            Some(&json!({"namespace": namespace, "name": name, "nodeName": node_name})),
        )
    }

    /// Adds a fault rule; returns its id.
    pub fn inject_fault(&self, fault: &Fault) -> Result<u64, TestServerError> {
        let body =
            serde_json::to_value(fault).map_err(|e| TestServerError::Protocol(e.to_string()))?;
        let v = self.admin("POST", "/admin/faults", Some(&body))?;
        v["id"]
            .as_u64()
            .ok_or_else(|| TestServerError::Protocol(format!("no fault id in {v}")))
    }

    pub fn remove_fault(&self, id: u64) -> Result<(), TestServerError> {
        self.admin("DELETE", &format!("/admin/faults/{id}"), None)
            .map(|_| ())
    }

    pub fn clear_faults(&self) -> Result<(), TestServerError> {
        self.admin("DELETE", "/admin/faults", None).map(|_| ())
    }

    /// Rules with their remaining counts and hits.
    pub fn faults(&self) -> Result<Value, TestServerError> {
        self.admin("GET", "/admin/faults", None)
    }

    /// Closes every open watch; returns how many were open.
    pub fn close_watches(&self) -> Result<u64, TestServerError> {
        let v = self.admin("POST", "/admin/watches/close", None)?;
        Ok(v["closed"].as_u64().unwrap_or(0))
    }

    pub fn open_watches(&self) -> Result<u64, TestServerError> {
        let v = self.admin("GET", "/admin/watches", None)?;
        Ok(v["open"].as_u64().unwrap_or(0))
    }

    /// Polls until at least `n` watches are open.
    pub fn wait_for_watches(&self, n: u64, timeout: Duration) -> Result<(), TestServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_watches()?;
            if open >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestServerError::Protocol(format!(
                    "only {open} of {n} watches open after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a BOOKMARK (at the current resourceVersion) to every watch that allows them.
    pub fn bookmark(&self) -> Result<u64, TestServerError> {
        let v = self.admin("POST", "/admin/bookmarks", None)?;
        Ok(v["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// API listener down (connections reset, then refused) for `d`; state is kept.
    pub fn outage(&self, d: Duration) -> Result<(), TestServerError> {
        self.admin(
            "POST",
            "/admin/outage",
            Some(&json!({"seconds": d.as_secs_f64()})),
        )
        .map(|_| ())
    }

    /// Drops all retained history; returns the compaction resourceVersion. Watches and
    /// continue tokens from before it get 410 Gone.
    pub fn compact_history(&self) -> Result<u64, TestServerError> {
        let v = self.admin("POST", "/admin/history/compact", None)?;
        Ok(v["compactedResourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Overwrites a node's annotations with a stale copy via an unconditional update (logged
    /// in the request log as a PUT by identity `clobber`). Returns the server's answer.
    pub fn clobber(&self, node: &str, how: &Clobber) -> Result<Value, TestServerError> {
        self.clobber_as(node, how, None)
    }

    /// The incident as a test makes it: `manager` writes `node` back from a stale copy without
    /// a resourceVersion, its annotations only one key of its own (`example.com/synced-by`),
    /// none of flannel's. Panics unless the server took the write.
    pub fn stale_write_by(&self, node: &str, manager: &str) {
        let stale = [("example.com/synced-by".to_string(), manager.to_string())].into();
        let answer = self
            .clobber_as(node, &Clobber::Annotations(stale), Some(manager))
            .unwrap_or_else(|e| panic!("stale write of {node} by {manager}: {e}"));
        assert_eq!(answer["code"], 200, "{answer}");
    }

    /// `clobber` recorded in managedFields under `field_manager` (server default: `clobber`).
    pub fn clobber_as(
        &self,
        node: &str,
        how: &Clobber,
        field_manager: Option<&str>,
    ) -> Result<Value, TestServerError> {
        let mut body = json!({"node": node});
        if let Some(m) = field_manager {
            body["fieldManager"] = json!(m);
        }
        match how {
            Clobber::Annotations(a) => body["annotations"] = json!(a),
            Clobber::AtResourceVersion(rv) => body["atResourceVersion"] = json!(rv),
            Clobber::DropAnnotationPrefix(p) => body["dropAnnotationPrefix"] = json!(p),
        }
        self.admin("POST", "/admin/clobber", Some(&body))
    }

    /// `GET /admin/events`: `{"events", "created", "patched", "updated", "items": [...]}` —
    /// the write counters only grow, so a test counts a burst by their difference.
    pub fn events(&self) -> Result<Value, TestServerError> {
        self.admin("GET", "/admin/events", None)
    }

    pub fn start_churn(&self, per_second: f64) -> Result<(), TestServerError> {
        self.admin(
            "POST",
            "/admin/churn",
            Some(&json!({"perSecond": per_second})),
        )
        .map(|_| ())
    }

    pub fn stop_churn(&self) -> Result<(), TestServerError> {
        self.admin("DELETE", "/admin/churn", None).map(|_| ())
    }

    pub fn request_log(&self, filter: &LogFilter) -> Result<Vec<LogEntry>, TestServerError> {
        let mut params = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                params.push(format!("{k}={}", percent_encode(v)));
            }
        };
        add("since", &filter.since.map(|s| s.to_string()));
        add("method", &filter.method);
        add("verb", &filter.verb);
        add("resource", &filter.resource);
        add("name", &filter.name);
        add("identity", &filter.identity);
        add("pathPrefix", &filter.path_prefix);
        let path = if params.is_empty() {
            "/admin/requestlog".to_string()
        } else {
            format!("/admin/requestlog?{}", params.join("&"))
        };
        let v = self.admin("GET", &path, None)?;
        serde_json::from_value(v["entries"].clone())
            .map_err(|e| TestServerError::Protocol(format!("request log: {e}")))
    }

    /// Empties the request log; returns the next sequence number (usable as `since`).
    pub fn reset_request_log(&self) -> Result<u64, TestServerError> {
        let v = self.admin("DELETE", "/admin/requestlog", None)?;
        Ok(v["nextSeq"].as_u64().unwrap_or(0))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it; returns its exit
    /// status (None if it was already stopped or could not be waited for).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Err(_) => return None,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for KubeTestServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl KubeTestServer {
    /// A TCP connection to `hostport` made from the server's namespace (a socket stays in the
    /// namespace it was created in, so it can then be used from this thread).
    fn connect(&self, hostport: &str) -> Result<TcpStream, TestServerError> {
        let Some(ns) = &self.netns else {
            return TcpStream::connect(hostport)
                .map_err(io_err(format!("connecting to {hostport}")));
        };
        let target = hostport.to_string();
        ns.run(move || TcpStream::connect(target))
            .map_err(|e| TestServerError::Startup(e.to_string()))?
            .map_err(io_err(format!(
                "connecting to {hostport} in {}",
                ns.path().display()
            )))
    }
}

/// Minimal blocking HTTP/1.1 client for the admin API (Connection: close).
fn http_request(
    mut stream: TcpStream,
    hostport: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), TestServerError> {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io_err("setting read timeout"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(io_err("sending admin request"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(io_err("reading admin response"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| TestServerError::Protocol("response without header end".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| TestServerError::Protocol(format!("bad status line: {head}")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload)?;
    }
    Ok((code, String::from_utf8_lossy(&payload).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, TestServerError> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| TestServerError::Protocol("truncated chunk".into()))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| TestServerError::Protocol(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(TestServerError::Protocol("truncated chunk body".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[test]
    fn fault_builder_serializes_camel_case() {
        let f = Fault::fail(429)
            .verb("patch")
            .resource("nodes/status")
            .times(2)
            .retry_after(3);
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"verb": "patch", "resource": "nodes/status", "count": 2, "code": 429, "retryAfterSeconds": 3})
        );
        assert_eq!(percent_encode("/api/v1/nodes?x=1"), "/api/v1/nodes%3Fx%3D1");
    }
}
