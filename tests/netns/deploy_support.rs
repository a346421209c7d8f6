//! Runs deploy/kube-flannel-rs.yml's DaemonSet pod with podman, as kubelet would, on node
//! namespaces of a lab. The manifest is the only source of truth: containers, commands, args,
//! env, capabilities, volumes, memory limit and probes are read from it. What kubelet does and
//! podman cannot, done here: downward-API env values, the ServiceAccount token + CA mount and
//! KUBERNETES_SERVICE_HOST/PORT (in-cluster config), hostPath roots (each node gets its own
//! directory tree under the run's temp dir standing for `/`), init containers in order.
//!
//! Every container is named `frs-<pid>-…` and removed on drop, after a panic too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

use crate::deploy_e2e::manifest::{self, Manifest};
use frs_testsupport::cni_runtime::{ConfList, NodeCniPaths};
use frs_testsupport::lab::Lab;
use frs_testsupport::topology::Host;

pub const IMAGE: &str = concat!("localhost/flannel-rs:", env!("CARGO_PKG_VERSION"));

/// podman with this run's containers.conf.
pub struct Podman {
    conf: PathBuf,
    /// `frs-<pid>-<n>-`: container names of tests running in parallel in one process differ.
    prefix: String,
}

impl Drop for Podman {
    /// Waits (up to 10 s) for the podman processes still working with this conf to end: the
    /// `container cleanup` conmon starts when a container exits runs on after `podman rm`
    /// returns and recreates the network config dir in the run's dir (its lock file) after
    /// the test removed it.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.processes_left() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Podman {
    /// Whether a process other than this test has our containers.conf in its environment or
    /// our run dir on its command line.
    fn processes_left(&self) -> bool {
        let conf = self.conf.to_string_lossy().into_owned();
        let dir = self
            .conf
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        frs_testsupport::procfs::other_pids()
            .into_iter()
            .any(|pid| {
                let has = |file: &str, needle: &str| {
                    std::fs::read(format!("/proc/{pid}/{file}"))
                        .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
                };
                has("environ", &conf) || (!dir.is_empty() && has("cmdline", &dir))
            })
    }
}

/// `Max open files`-style row of /proc/self/limits: (soft, hard).
fn limit(row: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with(row))?;
    let mut fields = line[row.len()..].split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

impl Podman {
    /// Writes `dir/containers.conf`. The OCI runtimes here refuse to set rlimits above what
    /// they run with (the defaults podman asks for), so the container gets our own limits
    /// (nproc capped: higher values are refused too); runc and cgroupfs because crun refuses
    /// this machine's hybrid cgroup layout; podman's own network config dir (it keeps a lock
    /// file there) inside the run's dir, not /etc/cni.
    pub fn new(dir: &Path) -> Podman {
        let (nofile_soft, nofile_hard) =
            limit("Max open files").unwrap_or(("1024".into(), "1024".into()));
        let (memlock_soft, memlock_hard) =
            limit("Max locked memory").unwrap_or(("65536".into(), "65536".into()));
        let nproc = limit("Max processes")
            .and_then(|(_, h)| h.parse::<u64>().ok())
            .unwrap_or(32768)
            .min(32768);
        let conf = dir.join("containers.conf");
        let net_dir = dir.join("podman-net.d");
        std::fs::create_dir_all(&net_dir).expect("podman network dir");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile_soft}:{nofile_hard}\", \
                 \"nproc={nproc}:{nproc}\", \"memlock={memlock_soft}:{memlock_hard}\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_config_dir = \"{}\"\n",
                net_dir.display()
            ),
        )
        .expect("write containers.conf");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("frs-{}-{n}-", std::process::id());
        Podman { conf, prefix }
    }

    /// A container name unique to this test's podman (`frs-…`, as hack/test.sh checks).
    pub fn name(&self, s: &str) -> String {
        format!("{}{s}", self.prefix)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    pub fn output(&self, args: &[String]) -> Output {
        self.cmd().args(args).output().expect("run podman")
    }

    /// Fails the test (never skips) when the image is not built.
    pub fn require_image(&self) {
        let out = self.output(&["image".into(), "exists".into(), IMAGE.into()]);
        assert!(
            out.status.success(),
            "image {IMAGE} not found: build it with hack/image.sh (hack/test.sh does)"
        );
    }
}

/// A container removed (`podman rm -f`) on drop.
pub struct ContainerGuard<'p> {
    pub name: String,
    podman: &'p Podman,
}

impl<'p> ContainerGuard<'p> {
    /// Guards a container of that name (removed on drop whether it was started or not).
    pub fn new(name: &str, podman: &'p Podman) -> Self {
        ContainerGuard {
            name: name.to_string(),
            podman,
        }
    }

    pub fn logs(&self) -> String {
        let out = self.podman.output(&["logs".into(), self.name.clone()]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `running`, `exited`, …
    pub fn state(&self) -> String {
        let out = self.podman.output(&[
            "inspect".into(),
            "--format".into(),
            "{{.State.Status}} {{.State.ExitCode}}".into(),
            self.name.clone(),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pid(&self) -> Option<u32> {
        let out = self.podman.output(&[
            "inspect".into(),
            "--format".into(),
            "{{.State.Pid}}".into(),
            self.name.clone(),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    }

    /// `podman stop` (SIGTERM, as kubelet does), then remove.
    pub fn stop(self) -> Duration {
        let start = Instant::now();
        let _ = self
            .podman
            .output(&["stop".into(), "-t".into(), "10".into(), self.name.clone()]);
        start.elapsed()
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One node: its namespace (the lab host) and its filesystem root for hostPath volumes.
pub struct DsNode<'l> {
    pub name: String,
    pub host: &'l Host,
    pub root: PathBuf,
    pub pod_name: String,
}

impl DsNode<'_> {
    /// Host path `p` (absolute) on this node.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Moves the host paths the plugin would use in `list` under this node's root (which
    /// stands for `/`); those paths.
    pub fn localize(&self, list: &mut ConfList) -> NodeCniPaths {
        let paths = NodeCniPaths::under(
            &self.path("/var/lib"),
            &self.path("/run/flannel/subnet.env"),
        );
        paths.localize(list);
        paths
    }
}

/// The DaemonSet pod template, ready to run on lab nodes.
pub struct DaemonSetRunner<'a> {
    pub manifest: &'a Manifest,
    pub podman: &'a Podman,
    pub lab: &'a Lab,
    /// ServiceAccount dir (token, ca.crt, namespace) shared by all nodes.
    sa_dir: PathBuf,
    /// Where ConfigMap volumes are projected (one dir per ConfigMap).
    cm_dir: PathBuf,
    api_host: String,
    api_port: String,
    seq: std::sync::atomic::AtomicU32,
}

/// `128Mi` etc. in bytes.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, m)| q.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>().ok().map(|n| n * mult)
}

impl<'a> DaemonSetRunner<'a> {
    pub fn new(manifest: &'a Manifest, podman: &'a Podman, lab: &'a Lab, dir: &Path) -> Self {
        let namespace = manifest
            .daemon_set()
            .metadata
            .namespace
            .clone()
            .expect("DaemonSet namespace");
        let sa_dir = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).expect("sa dir");
        std::fs::write(
            sa_dir.join("token"),
            lab.server.token("flannel").expect("flannel token"),
        )
        .expect("token");
        std::fs::copy(lab.server.ca_file().expect("TLS"), sa_dir.join("ca.crt")).expect("ca");
        std::fs::write(sa_dir.join("namespace"), &namespace).expect("namespace");
        let cm_dir = dir.join("configmaps");
        for cm in &manifest.config_maps {
            let d = cm_dir.join(cm.metadata.name.as_deref().expect("name"));
            std::fs::create_dir_all(&d).expect("cm dir");
            for (k, v) in cm.data.iter().flatten() {
                std::fs::write(d.join(k), v).expect("cm key");
            }
        }
        let url = lab.server.url().trim_start_matches("https://").to_string();
        let (host, port) = url.rsplit_once(':').expect("host:port");
        DaemonSetRunner {
            manifest,
            podman,
            lab,
            sa_dir,
            cm_dir,
            api_host: host.to_string(),
            api_port: port.to_string(),
            seq: Default::default(),
        }
    }

    /// Replaces a ConfigMap key on the projected volume (as an edited ConfigMap would be).
    pub fn set_config(&self, key: &str, value: &str) {
        let name = self
            .manifest
            .config_map()
            .metadata
            .name
            .clone()
            .expect("name");
        std::fs::write(self.cm_dir.join(name).join(key), value).expect("write cm key");
    }

    pub fn namespace(&self) -> String {
        self.manifest
            .daemon_set()
            .metadata
            .namespace
            .clone()
            .expect("namespace")
    }

    /// Prepares a node root and registers the pod (for POD_NAME → spec.nodeName).
    pub fn node<'l>(&self, name: &str, host: &'l Host, root: PathBuf) -> DsNode<'l> {
        std::fs::create_dir_all(&root).expect("node root");
        let ds = self
            .manifest
            .daemon_set()
            .metadata
            .name
            .clone()
            .expect("name");
        let pod_name = format!("{ds}-{name}");
        self.lab
            .server
            .create_pod(&self.namespace(), &pod_name, name)
            .expect("create pod");
        DsNode {
            name: name.to_string(),
            host,
            root,
            pod_name,
        }
    }

    /// `podman run` arguments for `c` on `node` (without the image's command part).
    fn run_args(
        &self,
        c: &Container,
        node: &DsNode,
        name: &str,
        detach: bool,
        drop_caps: &[&str],
    ) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
        if detach {
            a.push("-d".into());
        }
        let spec = self.manifest.pod_spec();
        if spec.host_network == Some(true) {
            a.push(format!("--network=ns:{}", node.host.ns.path().display()));
        }
        for m in c.volume_mounts.iter().flatten() {
            let v = self
                .manifest
                .volume(&m.name)
                .unwrap_or_else(|| panic!("volume {}", m.name));
            let source = if let Some(hp) = &v.host_path {
                let p = node.path(&hp.path);
                match hp.type_.as_deref() {
                    Some("FileOrCreate") => {
                        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&p)
                            .expect("touch");
                    }
                    Some("File") => assert!(p.is_file(), "{} missing", p.display()),
                    // Unset or DirectoryOrCreate: the runtime creates a missing directory.
                    _ => std::fs::create_dir_all(&p).expect("mkdir"),
                }
                p
            } else if let Some(cm) = &v.config_map {
                self.cm_dir.join(&cm.name)
            } else {
                panic!("volume {} of an unsupported type", m.name)
            };
            let ro = if m.read_only == Some(true) || v.config_map.is_some() {
                ":ro"
            } else {
                ""
            };
            a.push("-v".into());
            a.push(format!("{}:{}{ro}", source.display(), m.mount_path));
        }
        // automountServiceAccountToken (default true) and the service's env, as kubelet does.
        a.push("-v".into());
        a.push(format!(
            "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            self.sa_dir.display()
        ));
        a.push(format!("--env=KUBERNETES_SERVICE_HOST={}", self.api_host));
        a.push(format!("--env=KUBERNETES_SERVICE_PORT={}", self.api_port));
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    let field = &from
                        .field_ref
                        .as_ref()
                        .expect("only fieldRef is supported")
                        .field_path;
                    match field.as_str() {
                        "metadata.name" => node.pod_name.clone(),
                        "metadata.namespace" => self.namespace(),
                        "spec.nodeName" => node.name.clone(),
                        other => panic!("downward API field {other} not supported"),
                    }
                }
                (None, None) => String::new(),
            };
            a.push(format!("--env={}={value}", e.name));
        }
        if let Some(sc) = &c.security_context {
            if sc.privileged == Some(true) {
                a.push("--privileged".into());
            }
            if let Some(caps) = &sc.capabilities {
                for cap in caps
                    .add
                    .iter()
                    .flatten()
                    .filter(|c| !drop_caps.contains(&c.as_str()))
                {
                    a.push(format!("--cap-add={cap}"));
                }
                for cap in caps.drop.iter().flatten() {
                    a.push(format!("--cap-drop={cap}"));
                }
            }
        }
        for cap in drop_caps {
            a.push(format!("--cap-drop={cap}"));
        }
        if let Some(mem) = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
        {
            let bytes =
                quantity_bytes(&mem.0).unwrap_or_else(|| panic!("memory limit {:?}", mem.0));
            a.push(format!("--memory={bytes}"));
        }
        let command = c.command.clone().unwrap_or_default();
        if !command.is_empty() {
            a.push(format!(
                "--entrypoint={}",
                serde_json::to_string(&command).expect("json")
            ));
        }
        a.push(c.image.clone().expect("image"));
        a.extend(c.args.iter().flatten().cloned());
        a
    }

    /// Runs the init containers in order, each to completion; the first failure is returned
    /// with its output.
    pub fn run_init(&self, node: &DsNode) -> Result<Vec<String>, String> {
        let mut outputs = Vec::new();
        for c in self.manifest.init_containers() {
            let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = self.podman.name(&format!("{}-{}-{n}", node.name, c.name));
            let guard = ContainerGuard {
                name: name.clone(),
                podman: self.podman,
            };
            let mut args = self.run_args(c, node, &name, false, &[]);
            args.insert(1, "--rm".into());
            let out = self.podman.output(&args);
            drop(guard);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                return Err(format!("init container {} failed: {}", c.name, text.trim()));
            }
            outputs.push(text);
        }
        Ok(outputs)
    }

    /// Starts the main container (detached); `drop_caps` removes capabilities the manifest
    /// adds (for the missing-capability test).
    pub fn start_main(&self, node: &DsNode, drop_caps: &[&str]) -> ContainerGuard<'a> {
        let c = self.manifest.main_container();
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = self.podman.name(&format!("{}-{}-{n}", node.name, c.name));
        let guard = ContainerGuard {
            name: name.clone(),
            podman: self.podman,
        };
        let out = self
            .podman
            .output(&self.run_args(c, node, &name, true, drop_caps));
        assert!(
            out.status.success(),
            "podman run {}: {}",
            c.name,
            String::from_utf8_lossy(&out.stderr)
        );
        guard
    }

    /// GETs a probe of the main container from inside the node: (status, body).
    pub fn probe(&self, node: &DsNode, which: Probe) -> Option<(u16, String)> {
        let c = self.manifest.main_container();
        let probe = match which {
            Probe::Liveness => c.liveness_probe.as_ref(),
            Probe::Readiness => c.readiness_probe.as_ref(),
        }?;
        let get = probe.http_get.as_ref()?;
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))?
                    .container_port
            }
        };
        let port = u16::try_from(port).ok()?;
        frs_testsupport::lab::http_get_in(
            node.host.ns.name(),
            port,
            get.path.as_deref().unwrap_or("/"),
        )
    }

    /// Waits until the readiness probe answers 200 or the container stops; the time it took.
    pub fn wait_ready(
        &self,
        node: &DsNode,
        c: &ContainerGuard,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = self.probe(node, Probe::Readiness) {
                return Ok(start.elapsed());
            }
            let state = c.state();
            if !state.starts_with("running") {
                return Err(format!("{} is {state}; logs:\n{}", c.name, c.logs()));
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} not ready after {timeout:?}; logs:\n{}",
                    c.name,
                    c.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Probe {
    Liveness,
    Readiness,
}

/// The flannel annotations' VTEP MAC of a node (backend-data).
pub fn vtep_mac(lab: &Lab, node: &str) -> Option<String> {
    let n = lab.get_node(node).ok()?;
    let data = n
        .metadata
        .annotations?
        .get("flannel.alpha.coreos.com/backend-data")?
        .clone();
    let v: Value = serde_json::from_str(&data).ok()?;
    v["VtepMAC"].as_str().map(str::to_string)
}

/// `ip -j link show dev DEV` address in `ns`.
pub fn link_mac(host: &Host, dev: &str) -> Option<String> {
    let out = host.ns.ip(&["-j", "link", "show", "dev", dev]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v[0]["address"].as_str().map(str::to_string)
}

/// Routes on `dev` in `host`.
pub fn routes_on(host: &Host, dev: &str) -> usize {
    host.ns
        .ip(&["-j", "route", "show", "dev", dev])
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<Value>>(&o).ok())
        .map_or(0, |v| v.len())
}

/// Resident memory of a process (VmRSS, KiB).
pub fn rss_kib(pid: u32) -> Option<u64> {
    frs_testsupport::procfs::status_kib(pid, "VmRSS")
}

/// Peak resident memory of a process (VmHWM, KiB).
pub fn hwm_kib(pid: u32) -> Option<u64> {
    frs_testsupport::procfs::status_kib(pid, "VmHWM")
}

/// The manifest, or a test failure naming the file.
pub fn load_manifest() -> Manifest {
    manifest::load(manifest::MANIFEST).unwrap_or_else(|e| panic!("{e}"))
}

/// The ClusterRole of the manifest as JSON for `kube-testserver --flannel-role`.
pub fn write_role(m: &Manifest, dir: &Path) -> PathBuf {
    let p = dir.join("clusterrole.json");
    std::fs::write(&p, serde_json::to_vec(&m.cluster_roles[0]).expect("json")).expect("write role");
    p
}
