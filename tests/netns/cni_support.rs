//! Support for the CNI plugin tests: a node namespace with its own temp dir (subnet.env, data
//! dirs), pod namespaces, and plugin invocations exactly as a runtime makes them — a process
//! inside the node namespace (`ip netns exec NODE plugin`), `CNI_*` in the environment, the
//! config on stdin.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{NetnsGuard, ip_json, netns};

pub const OURS: &str = env!("CARGO_BIN_EXE_flannel");
pub const REF_DIR: &str = "/usr/lib/cni";
pub const NET_NAME: &str = "cbr0";

pub const SUBNET_ENV_V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A per-test directory under the temp dir, removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("frs-cni-{tag}-"))
        .tempdir()
        .unwrap()
}

/// What a plugin invocation returned.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The error code of a failed call (its stdout must be CNI error JSON).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got success: {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        assert!(
            self.ok,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One invocation's environment.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str) -> Self {
        Self {
            command: command.into(),
            container_id: Some(container_id.into()),
            netns: Some(netns.into()),
            ifname: Some("eth0".into()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME={container_id};K8S_POD_INFRA_CONTAINER_ID={container_id}"
            )),
            path: Some(REF_DIR.into()),
            extra_env: Vec::new(),
        }
    }
}

/// A node: its namespace and a temp dir with subnet.env, flannel's dataDir and the IPAM dir.
pub struct Node {
    pub ns: NetnsGuard,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new(tag: &str) -> Self {
        Self::with_subnet_env(tag, SUBNET_ENV_V4)
    }

    pub fn with_subnet_env(tag: &str, subnet_env: &str) -> Self {
        let node = Node {
            ns: netns(tag),
            dir: temp_dir(tag),
        };
        node.write_subnet_env(subnet_env);
        node
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("run/flannel/subnet.env")
    }

    pub fn write_subnet_env(&self, text: &str) {
        let p = self.subnet_file();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove_subnet_env(&self) {
        std::fs::remove_file(self.subnet_file()).unwrap();
    }

    /// flannel's `dataDir` (DEL records).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("lib/cni/flannel")
    }

    /// host-local's `dataDir`; reservations live in `<it>/cbr0`.
    pub fn ipam_data_dir(&self) -> PathBuf {
        self.dir.path().join("lib/cni/networks")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_data_dir().join(NET_NAME)
    }

    /// The stock kube-flannel entry, with the paths pointed into the temp dir.
    pub fn conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": NET_NAME,
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": self.ipam_data_dir()},
        })
    }

    /// What flannel hands to `bridge` for SUBNET_ENV_V4 (upstream's flannel-io/cni-plugin), plus ipam.dataDir.
    pub fn reference_delegate(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "hairpinMode": true,
            "ipMasq": false,
            "ipam": {
                "dataDir": self.ipam_data_dir(),
                "ranges": [[{"subnet": "10.244.1.0/24"}]],
                "routes": [{"dst": "10.244.0.0/16"}],
                "type": "host-local"
            },
            "isDefaultGateway": true,
            "isGateway": true,
            "mtu": 1450,
            "name": NET_NAME,
            "type": "bridge"
        })
    }

    /// Runs `binary` inside the node namespace as a runtime would.
    pub fn invoke(&self, binary: &str, call: &Call, stdin: &[u8]) -> Outcome {
        let mut cmd = self.ns.command("env");
        cmd.arg("-i");
        let mut set = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                cmd.arg(format!("{k}={v}"));
            }
        };
        set("CNI_COMMAND", &Some(call.command.clone()));
        set("CNI_CONTAINERID", &call.container_id);
        set("CNI_NETNS", &call.netns);
        set("CNI_IFNAME", &call.ifname);
        set("CNI_ARGS", &call.args);
        set("CNI_PATH", &call.path);
        cmd.arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in &call.extra_env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(binary);
        run_with_stdin(cmd, stdin)
    }

    pub fn ours(&self, call: &Call, conf: &Value) -> Outcome {
        self.invoke(OURS, call, conf.to_string().as_bytes())
    }

    pub fn reference(&self, call: &Call, delegate: &Value) -> Outcome {
        self.invoke(
            &format!("{REF_DIR}/bridge"),
            call,
            delegate.to_string().as_bytes(),
        )
    }

    /// Names of the reservation files (IPs) in the IPAM dir.
    pub fn reservations(&self) -> Vec<String> {
        let mut v = file_names(&self.ipam_dir());
        v.retain(|n| n.parse::<std::net::IpAddr>().is_ok());
        v
    }

    /// Names of the files in the plugin's data dir (one record per attachment).
    pub fn records(&self) -> Vec<String> {
        file_names(&self.data_dir())
    }

    /// Names of the veth links in the node namespace.
    pub fn veths(&self) -> Vec<String> {
        links_of_kind(&self.ns, "veth")
    }

    /// After a pod namespace is deleted the kernel removes its veth peers asynchronously
    /// (netns cleanup work); wait for that, up to 10 s.
    pub fn wait_veths_gone(&self) {
        for _ in 0..200 {
            if self.veths().is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `cat /proc/sys/KEY` inside the node namespace.
    pub fn sysctl(&self, key: &str) -> String {
        sysctl_in(&self.ns, key)
    }

    /// Asserts the node holds no attachment state at all.
    #[track_caller]
    pub fn assert_clean(&self, what: &str) {
        assert_eq!(self.veths(), Vec::<String>::new(), "{what}: veths left");
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "{what}: reservations left"
        );
        assert_eq!(
            self.records(),
            Vec::<String>::new(),
            "{what}: DEL records left"
        );
    }
}

pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn links_of_kind(ns: &NetnsGuard, kind: &str) -> Vec<String> {
    let links = ip_json(ns, &["-d", "link", "show"]);
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"].as_str() == Some(kind))
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// `/sys/class/net/cni0/addr_assign_type` in `ns`: "3" once the bridge MAC is pinned.
pub fn bridge_mac_assign_type(ns: &NetnsGuard) -> String {
    read_in(ns, "/sys/class/net/cni0/addr_assign_type")
}

pub fn sysctl_in(ns: &NetnsGuard, key: &str) -> String {
    read_in(ns, &format!("/proc/sys/{key}"))
}

/// A file as seen from inside `ns` (its own /proc/sys and /sys), trimmed.
fn read_in(ns: &NetnsGuard, path: &str) -> String {
    let out = ns.exec("cat", &[path]).expect("run cat");
    assert!(
        out.status.success(),
        "read {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ip -json -d link show dev NAME` in `ns` (first entry).
pub fn link(ns: &NetnsGuard, name: &str) -> Value {
    ip_json(ns, &["-d", "link", "show", "dev", name])[0].clone()
}

/// Global addresses (`addr/prefix`) of `dev` in `ns`, both families.
pub fn global_addrs(ns: &NetnsGuard, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for a in v[0]["addr_info"].as_array().unwrap() {
        if a["scope"] == "global" {
            out.push(format!(
                "{}/{}",
                a["local"].as_str().unwrap(),
                a["prefixlen"].as_u64().unwrap()
            ));
        }
    }
    out
}

/// Routes of `ns` (main table, one family) as `dst [via gw] dev D [scope S] [proto P]` lines.
pub fn routes(ns: &NetnsGuard, family: &str) -> Vec<String> {
    let v = ip_json(ns, &[family, "route", "show", "table", "main"]);
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_string();
            if let Some(gw) = r["gateway"].as_str() {
                s.push_str(&format!(" via {gw}"));
            }
            s.push_str(&format!(" dev {}", r["dev"].as_str().unwrap_or("?")));
            if let Some(p) = r["protocol"].as_str() {
                s.push_str(&format!(" proto {p}"));
            }
            if let Some(sc) = r["scope"].as_str() {
                s.push_str(&format!(" scope {sc}"));
            }
            s
        })
        .collect();
    out.sort();
    out
}

pub fn pod(tag: &str) -> NetnsGuard {
    netns(tag)
}

pub fn path_of(ns: &NetnsGuard) -> String {
    ns.path().display().to_string()
}

pub fn file_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// The sorted names of the entries of `dir` (none when it does not exist).
fn file_names(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
