//! A local lab for end-to-end runs: an underlay switch, an API host running the test API
//! server over HTTPS, and node hosts running the real `flanneld` exactly as the upstream
//! DaemonSet starts it. Everything lives in namespaces and a temp dir owned by the lab and is
//! removed on drop (processes are killed first).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::kube_testserver::{KubeTestServer, TestServerError, TestServerOptions};
use super::topology::{Host, Switch, TopologyError};
use flannel_rs::netns::NetnsGuard;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Server(#[from] TestServerError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("kube API: {0}")]
    Kube(String),
    #[error("{0}")]
    Timeout(String),
}

/// The stock net-conf.json of kube-flannel.yml.
pub const STOCK_NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;

/// Octet of the API host on the underlay.
pub const API_OCTET: u8 = 254;

pub struct LabOptions {
    /// Namespace name tag (after `frs-<pid>-<n>-`): the switch is `<tag>-sw`, the API host
    /// `<tag>-api` (`sw` and `api` when empty).
    pub tag: String,
    /// First three octets of the underlay /24.
    pub underlay: [u8; 3],
    pub net_conf: String,
    pub server: TestServerOptions,
    /// Exact namespace names `<netns_prefix><tag>` instead of `frs-<pid>-<n>-<tag>`: a
    /// long-lived cluster owns a fixed prefix so that a later run can sweep what a crashed one
    /// left behind. Tags must then be unique within the lab.
    pub netns_prefix: Option<String>,
    /// Parent of the lab's temp dir and the API server's dir (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// Dual-stack underlay: the API host and every node host also get an IPv6 address
    /// (`fd00:a:b:c::octet/64`, see [`Switch::address_v6`]), and node hosts an IPv6 default
    /// route to the API host, so flanneld finds the same interface for both families.
    pub ipv6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            tag: "lab".into(),
            underlay: [192, 168, 77],
            net_conf: STOCK_NET_CONF.into(),
            server: TestServerOptions::default(),
            netns_prefix: None,
            work_dir: None,
            ipv6: false,
        }
    }
}

pub struct Lab {
    // Field order is drop order: the server (in the API host) goes before the namespaces.
    pub server: KubeTestServer,
    pub api: Host,
    pub switch: Switch,
    pub dir: tempfile::TempDir,
    pub net_conf_path: PathBuf,
    netns_prefix: Option<String>,
    ipv6: bool,
}

impl Lab {
    /// Builds the switch and the API host and starts `kube-testserver` (path `server_bin`) in
    /// it, listening on the API host's underlay address.
    pub fn new(opts: LabOptions, server_bin: impl AsRef<Path>) -> Result<Lab, LabError> {
        let mut builder = tempfile::Builder::new();
        let prefix = format!("frs-{}-lab-", std::process::id());
        builder.prefix(&prefix);
        let dir = match &opts.work_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(|source| LabError::Io {
            context: "create lab temp dir".into(),
            source,
        })?;
        let new_netns = |role: &str| {
            let tag = if opts.tag.is_empty() {
                role.to_string()
            } else {
                format!("{}-{role}", opts.tag)
            };
            make_netns(opts.netns_prefix.as_deref(), &tag)
        };
        let switch = Switch::in_netns(new_netns("sw")?, opts.underlay)?;
        let mut api = switch.attach_netns(new_netns("api")?, API_OCTET, 1500)?;
        if opts.ipv6 {
            switch.enable_ipv6(&mut api)?;
        }
        let mut server_opts = opts.server;
        server_opts.netns = Some(api.ns.path());
        server_opts.listen = Some(format!("{}:0", api.address));
        if server_opts.work_dir.is_none() {
            server_opts.work_dir = opts.work_dir.clone();
        }
        let server = KubeTestServer::spawn(server_bin, server_opts)?;
        let net_conf_path = dir.path().join("net-conf.json");
        std::fs::write(&net_conf_path, &opts.net_conf).map_err(|source| LabError::Io {
            context: format!("write {}", net_conf_path.display()),
            source,
        })?;
        Ok(Lab {
            server,
            api,
            switch,
            dir,
            net_conf_path,
            netns_prefix: opts.netns_prefix,
            ipv6: opts.ipv6,
        })
    }

    /// A new namespace named by the lab's scheme (`<netns_prefix><tag>` or
    /// `frs-<pid>-<n>-<tag>`), removed when the guard drops.
    pub fn new_netns(&self, tag: &str) -> Result<NetnsGuard, LabError> {
        make_netns(self.netns_prefix.as_deref(), tag)
    }

    /// Attaches a node host (`eth0` = underlay `.octet`, in a dual-stack lab also
    /// `fd00:a:b:c::octet`). Its default route(s) point at the API host, which has nowhere to
    /// forward to: like a real node, flanneld finds its interface through the default route,
    /// yet nothing can leave the lab.
    pub fn add_host(&self, tag: &str, octet: u8) -> Result<Host, LabError> {
        let mut host = self
            .switch
            .attach_netns(self.new_netns(tag)?, octet, 1500)?;
        let gateway = self.api.address.to_string();
        host.ns
            .ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])
            .map_err(|e| LabError::Topology(TopologyError::Ip(e)))?;
        if let (true, Some(gateway_v6)) = (self.ipv6, self.api.address_v6) {
            self.switch.enable_ipv6(&mut host)?;
            let gateway_v6 = gateway_v6.to_string();
            host.ns
                .ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &gateway_v6,
                    "dev",
                    "eth0",
                ])
                .map_err(|e| LabError::Topology(TopologyError::Ip(e)))?;
        }
        Ok(host)
    }

    /// Runs `f` with an admin kube client whose connections are made from the API host's
    /// namespace (on a helper thread with its own runtime).
    pub fn kube<T, F, Fut>(&self, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let kubeconfig = self.server.kubeconfig_admin().to_path_buf();
        let ns = self
            .api
            .ns
            .open()
            .map_err(|e| LabError::Kube(e.to_string()))?;
        ns.run(move || -> Result<T, LabError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| LabError::Io {
                    context: "runtime".into(),
                    source,
                })?;
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
                    .map_err(|e| LabError::Kube(e.to_string()))?;
                let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| LabError::Kube(e.to_string()))?;
                // Tests want to see exactly what the server answers.
                config.default_retry = false;
                let client =
                    kube::Client::try_from(config).map_err(|e| LabError::Kube(e.to_string()))?;
                f(client).await.map_err(|e| LabError::Kube(e.to_string()))
            })
        })
        .map_err(|e| LabError::Kube(e.to_string()))?
    }

    /// Creates a Node with a podCIDR, an InternalIP and the given annotations (as kubelet
    /// and the controller-manager would).
    pub fn create_node(
        &self,
        name: &str,
        pod_cidr: &str,
        internal_ip: Ipv4Addr,
        annotations: BTreeMap<String, String>,
    ) -> Result<Node, LabError> {
        self.create_node_with_cidrs(name, &[pod_cidr], &[internal_ip.into()], annotations)
    }

    /// Peer `n<i>` as a running flannel node would publish it: podCIDR 10.244.<i>.0/24, the
    /// switch's address `i` as InternalIP and public IP, VTEP MAC 0e:00:00:00:00:<i>.
    pub fn create_numbered_peer(&self, i: u8) -> Result<Ipv4Addr, LabError> {
        let ip = self.switch.address(i);
        self.create_node(
            &format!("n{i}"),
            &format!("10.244.{i}.0/24"),
            ip,
            peer_annotations(&format!("0e:00:00:00:00:{i:02x}"), &ip.to_string()),
        )?;
        Ok(ip)
    }

    /// Like [`Lab::create_node`] for a dual-stack node: `spec.podCIDR` is the first of
    /// `pod_cidrs`, `spec.podCIDRs` all of them (as the controller-manager sets them), and
    /// every address becomes an InternalIP.
    pub fn create_node_with_cidrs(
        &self,
        name: &str,
        pod_cidrs: &[&str],
        internal_ips: &[IpAddr],
        annotations: BTreeMap<String, String>,
    ) -> Result<Node, LabError> {
        let node: Node =
            serde_json::from_value(node_json(name, pod_cidrs, internal_ips, annotations))
                .map_err(|e| LabError::Kube(e.to_string()))?;
        self.kube(move |c| async move {
            Api::<Node>::all(c)
                .create(&PostParams::default(), &node)
                .await
        })
    }

    pub fn get_node(&self, name: &str) -> Result<Node, LabError> {
        let name = name.to_string();
        self.kube(move |c| async move { Api::<Node>::all(c).get(&name).await })
    }

    /// The node's annotations whose keys start with `prefix` (e.g. flannel's
    /// `flannel.alpha.coreos.com/`).
    pub fn node_annotations(
        &self,
        name: &str,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, LabError> {
        Ok(self
            .get_node(name)?
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    pub fn delete_node(&self, name: &str) -> Result<(), LabError> {
        let name = name.to_string();
        self.kube(move |c| async move {
            Api::<Node>::all(c)
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
        })
    }

    /// An unconditional PUT of node `name` (no resourceVersion) with `?fieldManager=manager`:
    /// the stored object, changed by `edit`, written back the way a controller does with its
    /// copy. managedFields are left out of the body, so the server records the write.
    pub fn replace_node_as(
        &self,
        name: &str,
        manager: &str,
        edit: impl FnOnce(&mut Node) + Send + 'static,
    ) -> Result<Node, LabError> {
        let (name, manager) = (name.to_string(), manager.to_string());
        self.kube(move |c| async move {
            let api = Api::<Node>::all(c);
            let mut node = api.get(&name).await?;
            edit(&mut node);
            node.metadata.resource_version = None;
            node.metadata.managed_fields = None;
            let params = PostParams {
                field_manager: Some(manager),
                ..PostParams::default()
            };
            api.replace(&name, &params, &node).await
        })
    }

    /// Merge-patches a node's annotations (a `null` value removes a key).
    pub fn patch_annotations(&self, name: &str, annotations: Value) -> Result<Node, LabError> {
        let name = name.to_string();
        self.kube(move |c| async move {
            Api::<Node>::all(c)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
                )
                .await
        })
    }

    /// The subnet.env of `node`'s daemon unless a test gives another one.
    pub fn default_subnet_file(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("subnet.env")
    }

    /// `flanneld [SUBCOMMAND]` in `host` with the flags the DaemonSet passes (`--ip-masq
    /// --kube-subnet-mgr --healthz-port=8081`, the flannel RBAC kubeconfig, the lab's
    /// net-conf.json, `subnet_file`) and `NODE_NAME`: the daemon's own command line, which its
    /// subcommands (`diagnose`, `explain`) take too.
    pub fn flanneld_command(
        &self,
        bin: &Path,
        host: &Host,
        node: &str,
        subnet_file: &Path,
        subcommand: Option<&str>,
    ) -> Command {
        self.flanneld_command_under(&[], bin, host, node, subnet_file, subcommand)
    }

    /// [`Lab::flanneld_command`] with `wrapper` run inside the namespace in front of the
    /// binary (e.g. `setpriv` to drop capabilities).
    pub fn flanneld_command_under(
        &self,
        wrapper: &[&str],
        bin: &Path,
        host: &Host,
        node: &str,
        subnet_file: &Path,
        subcommand: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", host.ns.name()])
            .args(wrapper)
            .arg(bin)
            .args(subcommand)
            .args(["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"])
            .arg(format!(
                "--kubeconfig-file={}",
                self.server.kubeconfig_flannel().display()
            ))
            .arg(format!(
                "--net-config-path={}",
                self.net_conf_path.display()
            ))
            .arg(format!("--subnet-file={}", subnet_file.display()))
            .env("NODE_NAME", node);
        cmd
    }

    /// Starts `flanneld` (path `bin`) in `host` as the DaemonSet does: `--ip-masq
    /// --kube-subnet-mgr --healthz-port=8081`, the flannel RBAC kubeconfig, the lab's
    /// net-conf.json; subnet.env goes into a per-node dir of the lab.
    pub fn start_flanneld(
        &self,
        bin: impl AsRef<Path>,
        host: &Host,
        node: &str,
        extra_args: &[&str],
    ) -> Result<Flanneld, LabError> {
        let subnet_file = self.default_subnet_file(node);
        self.start_flanneld_at(bin, host, node, &subnet_file, extra_args, &[])
    }

    /// [`Lab::start_flanneld`] with `--subnet-file=subnet_file` (its status socket sits next
    /// to it; [`Lab::default_subnet_file`] is the usual one) and extra environment variables
    /// (a test build's fault knobs); logs still go into the node's dir of the lab.
    pub fn start_flanneld_at(
        &self,
        bin: impl AsRef<Path>,
        host: &Host,
        node: &str,
        subnet_file: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Flanneld, LabError> {
        let node_dir = self.dir.path().join(node);
        for dir in [Some(node_dir.as_path()), subnet_file.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
                context: format!("create {}", dir.display()),
                source,
            })?;
        }
        let subnet_file = subnet_file.to_path_buf();
        let log_path = node_dir.join(format!(
            "flanneld-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        ));
        let log = std::fs::File::create(&log_path).map_err(|source| LabError::Io {
            context: format!("create {}", log_path.display()),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| LabError::Io {
            context: "dup log".into(),
            source,
        })?;
        let mut cmd = self.flanneld_command(bin.as_ref(), host, node, &subnet_file, None);
        cmd.args(extra_args)
            // FRS_FLANNELD_LOG=debug shows e.g. the reconcile passes' step timings.
            .env(
                "RUST_LOG",
                std::env::var("FRS_FLANNELD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|source| LabError::Io {
            context: format!("start {}", bin.as_ref().display()),
            source,
        })?;
        Ok(Flanneld {
            child: Some(child),
            netns: host.ns.name().to_string(),
            node: node.to_string(),
            subnet_file,
            log_path,
        })
    }
}

fn make_netns(prefix: Option<&str>, tag: &str) -> Result<NetnsGuard, LabError> {
    let ns = match prefix {
        Some(p) => NetnsGuard::create(format!("{p}{tag}")),
        None => NetnsGuard::new(tag),
    };
    ns.map_err(|e| LabError::Topology(TopologyError::Netns(e)))
}

fn node_json(
    name: &str,
    pod_cidrs: &[&str],
    internal_ips: &[IpAddr],
    annotations: BTreeMap<String, String>,
) -> Value {
    let mut addresses: Vec<Value> = internal_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": annotations,
        },
        "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        }
    })
}

/// Upstream-format annotations of a flannel vxlan peer.
pub fn peer_annotations(mac: &str, public_ip: &str) -> BTreeMap<String, String> {
    let p = "flannel.alpha.coreos.com/";
    BTreeMap::from([
        (format!("{p}kube-subnet-manager"), "true".to_string()),
        (format!("{p}backend-type"), "vxlan".to_string()),
        (
            format!("{p}backend-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        ),
        (format!("{p}public-ip"), public_ip.to_string()),
    ])
}

/// A running `flanneld`; killed on drop (a test that wants a graceful stop calls `stop`).
pub struct Flanneld {
    child: Option<Child>,
    pub netns: String,
    pub node: String,
    pub subnet_file: PathBuf,
    pub log_path: PathBuf,
}

impl Flanneld {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            match self.child.as_mut()?.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// GET a path of the health server (from inside the node's namespace, with curl).
    pub fn health(&self, path: &str) -> Option<(u16, String)> {
        http_get_in(&self.netns, 8081, path)
    }

    /// The daemon's private status socket (found from its `--subnet-file`, as `explain` does).
    pub fn status_socket(&self) -> PathBuf {
        flannel_rs::flanneld::pure::config::status_socket_path(&self.subnet_file)
    }

    /// GET a path on the private status socket.
    pub fn status_http(&self, path: &str) -> std::io::Result<(u16, String)> {
        unix_http_get(&self.status_socket(), path)
    }

    /// The daemon's `/status` document, from its private socket.
    pub fn status(&self) -> Result<Value, LabError> {
        let io = |source| LabError::Io {
            context: format!("GET /status on {}", self.status_socket().display()),
            source,
        };
        let (code, body) = self.status_http("/status").map_err(io)?;
        if code != 200 {
            return Err(io(std::io::Error::other(format!("HTTP {code}: {body}"))));
        }
        serde_json::from_str(&body).map_err(|e| io(e.into()))
    }

    /// `--subnet-file=…` as this daemon got it, for `flanneld explain` to find its socket.
    pub fn subnet_file_flag(&self) -> String {
        format!("--subnet-file={}", self.subnet_file.display())
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, LabError> {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = self.health("/readyz") {
                return Ok(start.elapsed());
            }
            if !self.is_running() {
                return Err(LabError::Timeout(format!(
                    "flanneld on {} exited before ready; log:\n{}",
                    self.node,
                    self.log()
                )));
            }
            if start.elapsed() > timeout {
                return Err(LabError::Timeout(format!(
                    "flanneld on {} not ready after {timeout:?}; log:\n{}",
                    self.node,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit; returns how long the exit took (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Some(start.elapsed()),
                Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Flanneld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET `http://127.0.0.1:PORT/PATH` from inside the named namespace (curl, 2 s limit): the
/// status code and the body, or `None` when nothing answered.
pub fn http_get_in(netns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "2",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// A plain HTTP/1.0 GET on a Unix socket (a daemon's status socket): code and body.
pub fn unix_http_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    flannel_rs::flanneld::explain::http_get_on(stream, path)
}
