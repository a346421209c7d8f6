//! The CNI side of a container runtime, for the lab: runs a network configuration list the
//! way libcni does (ADD: every plugin in order, each given the previous one's result as
//! `prevResult`; DEL: in reverse order), each plugin a separate process started inside the
//! node's network namespace with `CNI_*` in the environment and its config on stdin.
//!
//! Every file path the stock kube-flannel conflist would take from the host (`subnetFile`,
//! `dataDir`, the IPAM `dataDir`, the result cache) is pointed into a per-node dir by
//! [`NodeCniPaths::localize`], so nothing is ever written to /run/flannel, /var/lib/cni or
//! /etc/cni.
//!
//! [`FlannelImpl::UpstreamDelegation`] stands in for upstream's `flannel` CNI binary (which
//! Debian does not ship): it renders the `bridge` delegate config from subnet.env exactly as
//! flannel-io/cni-plugin does and runs the reference `bridge` (+ `host-local`)
//! from the plugin path, so a node can have its pods wired by upstream's plugin chain.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value, json};

use flannel_rs::netns::NetnsFile;
use flannel_rs::subnet_env::SubnetEnv;

/// kube-flannel.yml's `cni-conf.json`, as shipped.
pub const STOCK_CONFLIST: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}"#;

#[derive(Debug, thiserror::Error)]
pub enum CniRuntimeError {
    #[error("invalid network configuration list: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("plugin {plugin:?} not found in {path:?}")]
    NotFound { plugin: String, path: Vec<PathBuf> },
    #[error("{0}")]
    Plugin(Box<PluginFailure>),
    #[error("{plugin} {command}: output is not a CNI result ({detail}): {stdout:?}")]
    BadOutput {
        plugin: String,
        command: String,
        detail: String,
        stdout: String,
    },
    #[error("upstream flannel delegation: {0}")]
    Delegation(String),
}

/// A plugin that exited non-zero, with its CNI error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    pub plugin: String,
    pub command: String,
    /// CNI error code (-1 when stdout held no error JSON).
    pub code: i64,
    pub msg: String,
    pub details: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} failed (code {}): {}{}",
            self.plugin, self.command, self.code, self.msg, self.details
        )?;
        if !self.stderr.is_empty() {
            write!(f, "; stderr: {}", self.stderr)?;
        }
        Ok(())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CniRuntimeError {
    let context = context.into();
    move |source| CniRuntimeError::Io { context, source }
}

/// A parsed network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    pub fn parse(text: &str) -> Result<Self, CniRuntimeError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| CniRuntimeError::Config(e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CniRuntimeError::Config(format!("missing string {k:?}")))
        };
        let name = field("name")?;
        let cni_version = field("cniVersion")?;
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| CniRuntimeError::Config("missing \"plugins\" list".into()))?
            .iter()
            .map(|p| {
                let obj = p
                    .as_object()
                    .ok_or_else(|| CniRuntimeError::Config(format!("plugin {p} is no object")))?;
                if !obj.get("type").is_some_and(Value::is_string) {
                    return Err(CniRuntimeError::Config(format!("plugin {p} has no type")));
                }
                Ok(obj.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if plugins.is_empty() {
            return Err(CniRuntimeError::Config("empty \"plugins\" list".into()));
        }
        Ok(Self {
            name,
            cni_version,
            plugins,
        })
    }

    pub fn stock() -> Self {
        // The constant is valid by construction (unit-tested).
        Self::parse(STOCK_CONFLIST).unwrap_or_else(|e| unreachable!("stock conflist: {e}"))
    }

    /// The config one plugin gets on stdin, as libcni builds it: the plugin's own object with
    /// the list's `name` and `cniVersion`, `runtimeConfig` for the capabilities it declares
    /// (and the runtime has data for), `prevResult` when given; `capabilities` removed.
    pub fn plugin_config(
        &self,
        index: usize,
        capability_args: &Map<String, Value>,
        prev_result: Option<&Value>,
    ) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        if let Some(Value::Object(caps)) = conf.remove("capabilities") {
            let mut runtime = Map::new();
            for (cap, enabled) in caps {
                if enabled == Value::Bool(true)
                    && let Some(arg) = capability_args.get(&cap)
                {
                    runtime.insert(cap, arg.clone());
                }
            }
            if !runtime.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(runtime));
            }
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }
}

/// Where one node keeps what a real node keeps under /run/flannel and /var/lib/cni.
#[derive(Debug, Clone)]
pub struct NodeCniPaths {
    pub subnet_file: PathBuf,
    /// flannel's `dataDir` (per-container delegate configs).
    pub flannel_data_dir: PathBuf,
    /// host-local's `dataDir` (reservations in `<it>/<network name>`).
    pub ipam_data_dir: PathBuf,
    /// The runtime's result cache (libcni's `/var/lib/cni/results`).
    pub cache_dir: PathBuf,
}

impl NodeCniPaths {
    /// Paths under `dir` for flanneld's `subnet_file`.
    pub fn under(dir: &Path, subnet_file: &Path) -> Self {
        Self {
            subnet_file: subnet_file.to_path_buf(),
            flannel_data_dir: dir.join("cni/flannel"),
            ipam_data_dir: dir.join("cni/networks"),
            cache_dir: dir.join("cni/results"),
        }
    }

    /// Points the `flannel` entries of `list` at these paths (`subnetFile`, `dataDir`,
    /// `ipam.dataDir`); other keys stay as they are.
    pub fn localize(&self, list: &mut ConfList) {
        for plugin in &mut list.plugins {
            if plugin.get("type").and_then(Value::as_str) != Some("flannel") {
                continue;
            }
            plugin.insert("subnetFile".into(), json!(self.subnet_file));
            plugin.insert("dataDir".into(), json!(self.flannel_data_dir));
            let ipam = plugin
                .entry("ipam")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(ipam) = ipam {
                ipam.insert("dataDir".into(), json!(self.ipam_data_dir));
            }
        }
    }
}

/// One pod attachment (what the runtime knows about the sandbox).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`, e.g. `/run/netns/<pod namespace>`.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` (kubelet's `IgnoreUnknown=1;K8S_POD_NAMESPACE=…;…`).
    pub args: String,
    /// Capability arguments (`portMappings`, …) injected as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    /// A pod sandbox as kubelet + containerd describe it (no host ports).
    pub fn pod(namespace: &str, name: &str, container_id: &str, netns: &Path) -> Self {
        let mut capability_args = Map::new();
        capability_args.insert("portMappings".into(), json!([]));
        Self {
            container_id: container_id.into(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id}"
            ),
            capability_args,
        }
    }
}

/// Which implementation serves `"type": "flannel"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlannelImpl {
    /// The `flannel` executable found in the plugin path (ours).
    Binary,
    /// Upstream flannel-io/cni-plugin's behaviour: subnet.env → `bridge` delegate config,
    /// saved in `dataDir/<containerID>`, executed from the plugin path (reference plugins).
    UpstreamDelegation,
}

/// Runs conflists for one node.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    /// The node's network namespace (`/run/netns/<node>`): plugins run inside it.
    pub node_netns: PathBuf,
    /// `CNI_PATH`, searched in order.
    pub plugin_path: Vec<PathBuf>,
    pub paths: NodeCniPaths,
    pub flannel: FlannelImpl,
}

impl CniRuntime {
    /// ADD: every plugin in order, chaining results. On failure the plugins already added are
    /// deleted again (libcni leaves that to the runtime's DEL; we do it at once so a failed
    /// ADD leaves nothing behind). Returns the final result, also cached.
    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value, CniRuntimeError> {
        let mut prev: Option<Value> = None;
        for index in 0..list.plugins.len() {
            let conf = list.plugin_config(index, &att.capability_args, prev.as_ref());
            match self.run_plugin(list, index, "ADD", att, &conf) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let _ = self.del(list, att);
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        self.cache_result(list, att, Some(&result))?;
        Ok(result)
    }

    /// DEL: every plugin in reverse order; `prevResult` is the cached ADD result for
    /// cniVersion ≥ 0.4.0 (none before, as in libcni). All plugins run; the first error is
    /// returned.
    pub fn del(&self, list: &ConfList, att: &Attachment) -> Result<(), CniRuntimeError> {
        let cached = if version_at_least(&list.cni_version, (0, 4, 0)) {
            self.cached_result(list, att)
        } else {
            None
        };
        let mut first_err = None;
        for index in (0..list.plugins.len()).rev() {
            let conf = list.plugin_config(index, &att.capability_args, cached.as_ref());
            if let Err(e) = self.run_plugin(list, index, "DEL", att, &conf) {
                first_err.get_or_insert(e);
            }
        }
        self.cache_result(list, att, None)?;
        first_err.map_or(Ok(()), Err)
    }

    fn cache_path(&self, list: &ConfList, att: &Attachment) -> PathBuf {
        self.paths
            .cache_dir
            .join(format!("{}-{}-{}", list.name, att.container_id, att.ifname))
    }

    /// The result of the last successful ADD of this attachment.
    pub fn cached_result(&self, list: &ConfList, att: &Attachment) -> Option<Value> {
        let text = std::fs::read_to_string(self.cache_path(list, att)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn cache_result(
        &self,
        list: &ConfList,
        att: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), CniRuntimeError> {
        let path = self.cache_path(list, att);
        match result {
            Some(r) => {
                std::fs::create_dir_all(&self.paths.cache_dir)
                    .map_err(io(format!("create {}", self.paths.cache_dir.display())))?;
                std::fs::write(&path, r.to_string())
                    .map_err(io(format!("write {}", path.display())))
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io(format!("remove {}", path.display()))(e))
                }
                _ => Ok(()),
            },
        }
    }

    fn run_plugin(
        &self,
        list: &ConfList,
        index: usize,
        command: &str,
        att: &Attachment,
        conf: &Value,
    ) -> Result<Value, CniRuntimeError> {
        let kind = list.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind == "flannel" && self.flannel == FlannelImpl::UpstreamDelegation {
            return self.upstream_flannel(command, att, conf);
        }
        self.exec(kind, command, att, conf.to_string().as_bytes())
    }

    /// Finds `plugin` in the plugin path.
    pub fn find(&self, plugin: &str) -> Result<PathBuf, CniRuntimeError> {
        self.plugin_path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniRuntimeError::NotFound {
                plugin: plugin.into(),
                path: self.plugin_path.clone(),
            })
    }

    /// One plugin process inside the node namespace: a clean environment with `CNI_*`, the
    /// config on stdin, the result (or a CNI error) on stdout.
    pub fn exec(
        &self,
        plugin: &str,
        command: &str,
        att: &Attachment,
        stdin: &[u8],
    ) -> Result<Value, CniRuntimeError> {
        let bin = self.find(plugin)?;
        let ns = NetnsFile::open(&self.node_netns).map_err(|e| CniRuntimeError::Io {
            context: format!("open node namespace {}", self.node_netns.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let cni_path = std::env::join_paths(&self.plugin_path)
            .map_err(|e| CniRuntimeError::Config(format!("plugin path: {e}")))?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", &att.args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = ns.file().as_raw_fd();
        // SAFETY: only the setns syscall runs between fork and exec; `ns` (and so the fd)
        // stays open in the parent for the whole spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        drop(ns);
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading stdin closes the pipe: its exit status and
            // output tell what went wrong, not this write.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(io(format!("wait for {}", bin.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            let err: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
            return Err(CniRuntimeError::Plugin(Box::new(PluginFailure {
                plugin: plugin.into(),
                command: command.into(),
                code: err["code"].as_i64().unwrap_or(-1),
                msg: err["msg"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{} ({stdout})", out.status)),
                details: err["details"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                stderr,
            })));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| CniRuntimeError::BadOutput {
            plugin: plugin.into(),
            command: command.into(),
            detail: e.to_string(),
            stdout,
        })
    }

    /// Upstream flannel's ADD/DEL: render, save and run the delegate (DEL replays the saved
    /// config; a missing one means there is nothing to undo).
    fn upstream_flannel(
        &self,
        command: &str,
        att: &Attachment,
        conf: &Value,
    ) -> Result<Value, CniRuntimeError> {
        let data_dir = conf["dataDir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.paths.flannel_data_dir.clone());
        let saved = data_dir.join(&att.container_id);
        match command {
            "ADD" => {
                let subnet_file = conf["subnetFile"]
                    .as_str()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| self.paths.subnet_file.clone());
                let text = std::fs::read_to_string(&subnet_file)
                    .map_err(io(format!("read {}", subnet_file.display())))?;
                let env = SubnetEnv::parse(&text).map_err(|e| {
                    CniRuntimeError::Delegation(format!("{}: {e}", subnet_file.display()))
                })?;
                let delegate =
                    upstream_delegate_config(conf, &env).map_err(CniRuntimeError::Delegation)?;
                let bytes = delegate.to_string();
                std::fs::create_dir_all(&data_dir)
                    .map_err(io(format!("create {}", data_dir.display())))?;
                std::fs::write(&saved, &bytes).map_err(io(format!("write {}", saved.display())))?;
                let kind = delegate["type"].as_str().unwrap_or("bridge").to_string();
                self.exec(&kind, "ADD", att, bytes.as_bytes())
            }
            "DEL" => {
                let Ok(bytes) = std::fs::read(&saved) else {
                    return Ok(Value::Null);
                };
                let kind = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|d| d["type"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "bridge".into());
                let result = self.exec(&kind, "DEL", att, &bytes);
                let _ = std::fs::remove_file(&saved);
                result
            }
            other => Err(CniRuntimeError::Delegation(format!(
                "command {other} not supported"
            ))),
        }
    }
}

/// The delegate config upstream flannel hands to `bridge` (flannel_linux.go):
/// delegate keys win; `type` bridge, `ipMasq` = !FLANNEL_IPMASQ, `mtu`, `isGateway` (bridge)
/// by default; `cniVersion` and `name` from the flannel config; `ipam` = the flannel config's
/// `ipam` with `type` host-local by default, `ranges` from the subnet and `routes` + one route
/// per network.
pub fn upstream_delegate_config(conf: &Value, env: &SubnetEnv) -> Result<Value, String> {
    let mut delegate = match conf.get("delegate") {
        Some(Value::Object(d)) => d.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(format!("delegate is not an object: {other}")),
    };
    for forbidden in ["name", "ipam"] {
        if delegate.contains_key(forbidden) {
            return Err(format!("\"delegate\" must not contain {forbidden:?}"));
        }
    }
    delegate.entry("type").or_insert_with(|| json!("bridge"));
    delegate
        .entry("ipMasq")
        .or_insert_with(|| json!(!env.ip_masq));
    delegate.entry("mtu").or_insert_with(|| json!(env.mtu));
    if delegate["type"] == "bridge" {
        delegate.entry("isGateway").or_insert_with(|| json!(true));
    }
    if let Some(v) = conf.get("cniVersion").filter(|v| v.is_string()) {
        delegate.insert("cniVersion".into(), v.clone());
    }
    if let Some(rc) = conf.get("runtimeConfig") {
        delegate.insert("runtimeConfig".into(), rc.clone());
    }
    let mut ipam = match conf.get("ipam") {
        Some(Value::Object(i)) => i.clone(),
        _ => Map::new(),
    };
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    // One range set per family, each the subnet's network (flanneld writes the gateway).
    let v4 = env.subnet_v4_network().map(|n| n.to_string());
    let v6 = env.subnet_v6_network().map(|n| n.to_string());
    let ranges: Vec<Value> = v4
        .into_iter()
        .chain(v6)
        .map(|s| json!([{ "subnet": s }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let networks = env.networks_v4.iter().map(ToString::to_string);
    for n in networks.chain(env.networks_v6.iter().map(ToString::to_string)) {
        routes.push(json!({"dst": n}));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    delegate.insert("ipam".into(), Value::Object(ipam));
    delegate.insert("name".into(), conf["name"].clone());
    Ok(Value::Object(delegate))
}

fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_conflist_parses_and_builds_plugin_configs_like_libcni() {
        let list = ConfList::stock();
        assert_eq!(list.name, "cbr0");
        assert_eq!(list.cni_version, "0.3.1");
        assert_eq!(list.plugins.len(), 2);
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([]));
        let flannel = list.plugin_config(0, &caps, None);
        assert_eq!(
            flannel,
            json!({"type":"flannel","name":"cbr0","cniVersion":"0.3.1",
                   "delegate":{"hairpinMode":true,"isDefaultGateway":true}}),
            "no runtimeConfig for a plugin without capabilities"
        );
        let prev = json!({"cniVersion":"0.3.1","ips":[]});
        let portmap = list.plugin_config(1, &caps, Some(&prev));
        assert_eq!(
            portmap,
            json!({"type":"portmap","name":"cbr0","cniVersion":"0.3.1",
                   "runtimeConfig":{"portMappings":[]},"prevResult":prev}),
            "capabilities become runtimeConfig; prevResult chained"
        );
        let none = list.plugin_config(1, &Map::new(), None);
        assert!(none.get("runtimeConfig").is_none());
    }

    #[test]
    fn bad_conflists_are_clear_errors() {
        for (text, want) in [
            ("{", "EOF"),
            (r#"{"cniVersion":"0.3.1","plugins":[{"type":"x"}]}"#, "name"),
            (r#"{"name":"n","cniVersion":"0.3.1","plugins":[]}"#, "empty"),
            (
                r#"{"name":"n","cniVersion":"0.3.1","plugins":[{}]}"#,
                "no type",
            ),
        ] {
            let e = ConfList::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn localize_points_every_path_into_the_node_dir() {
        let mut list = ConfList::stock();
        let paths = NodeCniPaths::under(Path::new("/tmp/x/n1"), Path::new("/tmp/x/n1/subnet.env"));
        paths.localize(&mut list);
        let f = &list.plugins[0];
        assert_eq!(f["subnetFile"], "/tmp/x/n1/subnet.env");
        assert_eq!(f["dataDir"], "/tmp/x/n1/cni/flannel");
        assert_eq!(f["ipam"]["dataDir"], "/tmp/x/n1/cni/networks");
        assert!(
            list.plugins[1].get("dataDir").is_none(),
            "portmap untouched"
        );
    }

    #[test]
    fn upstream_delegate_matches_flannels_rendering() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let conf = ConfList::stock().plugin_config(0, &Map::new(), None);
        let d = upstream_delegate_config(&conf, &env).unwrap();
        // the exact delegate for this subnet.env.
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(d, want);
    }

    #[test]
    fn upstream_delegate_keeps_overrides_and_refuses_name_or_ipam() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let conf = json!({"name":"n","type":"flannel","delegate":{"mtu":1300,"isGateway":false},
                          "ipam":{"dataDir":"/d","routes":[{"dst":"1.2.3.0/24"}]}});
        let d = upstream_delegate_config(&conf, &env).unwrap();
        assert_eq!(d["mtu"], 1300);
        assert_eq!(d["isGateway"], false);
        assert_eq!(d["ipMasq"], true);
        assert!(
            d.get("cniVersion").is_none(),
            "no cniVersion without one in the conf"
        );
        assert_eq!(d["ipam"]["dataDir"], "/d");
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst":"1.2.3.0/24"},{"dst":"10.244.0.0/16"},{"dst":"10.245.0.0/16"}])
        );
        let bad = json!({"name":"n","delegate":{"name":"x"}});
        assert!(upstream_delegate_config(&bad, &env).is_err());
    }

    #[test]
    fn versions_compare() {
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(version_at_least("1.0.0", (0, 4, 0)));
    }
}
