//! `subnet.env` (spec §6): the file flanneld writes and the flannel CNI plugin reads.
//! [`SubnetEnv`] renders upstream's exact content and parses it back the way the CNI plugin
//! does; [`write_if_changed`] replaces the file atomically and only when its content changes.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use thiserror::Error;

use super::netconf::NetConf;
use super::types::{
    PodSubnets, first_host_v4, first_host_v6, go_net_string, normalize_v4, normalize_v6, parse_cidr,
};

pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
pub const KEY_MTU: &str = "FLANNEL_MTU";
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";

/// File mode of subnet.env (regardless of umask).
pub const FILE_MODE: u32 = 0o644;
/// Mode of a parent directory we create.
pub const DIR_MODE: u32 = 0o755;

/// The content of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (flanneld writes one; the CNI plugin accepts a comma-separated list).
    pub networks_v4: Vec<Ipv4Network>,
    /// `FLANNEL_SUBNET` as written: the first host address with the subnet's prefix
    /// (`10.244.1.1/24`). See [`SubnetEnv::subnet_v4_network`].
    pub subnet_v4: Option<Ipv4Network>,
    pub networks_v6: Vec<Ipv6Network>,
    pub subnet_v6: Option<Ipv6Network>,
    pub mtu: u32,
    pub ip_masq: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubnetEnvError {
    #[error("subnet.env: {key}: invalid value {value:?}")]
    Invalid { key: &'static str, value: String },
    #[error("subnet.env: missing {}", .0.join(", "))]
    Missing(Vec<&'static str>),
}

impl SubnetEnv {
    /// What flanneld writes for our lease: enabled families only, with `.1` subnets.
    pub fn for_lease(netconf: &NetConf, lease: &PodSubnets, mtu: u32, ip_masq: bool) -> SubnetEnv {
        let v4 = netconf.enable_ipv4;
        let v6 = netconf.enable_ipv6;
        SubnetEnv {
            networks_v4: netconf.network_v4.filter(|_| v4).into_iter().collect(),
            subnet_v4: lease.v4.filter(|_| v4).map(first_host_v4),
            networks_v6: netconf.network_v6.filter(|_| v6).into_iter().collect(),
            subnet_v6: lease.v6.filter(|_| v6).map(first_host_v6),
            mtu,
            ip_masq,
        }
    }

    /// Upstream's exact text: v4 network + subnet, v6 network + subnet, MTU, IPMASQ; one
    /// `KEY=value` per line, `\n`-terminated, Go's compressed IPv6 form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let join = |nets: Vec<IpNetwork>| {
            nets.into_iter()
                .map(go_net_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.networks_v4.is_empty() {
            let nets = self.networks_v4.iter().map(|n| IpNetwork::V4(*n)).collect();
            out.push_str(&format!("{KEY_NETWORK}={}\n", join(nets)));
        }
        if let Some(s) = self.subnet_v4 {
            out.push_str(&format!(
                "{KEY_SUBNET}={}\n",
                go_net_string(IpNetwork::V4(s))
            ));
        }
        if !self.networks_v6.is_empty() {
            let nets = self.networks_v6.iter().map(|n| IpNetwork::V6(*n)).collect();
            out.push_str(&format!("{KEY_IPV6_NETWORK}={}\n", join(nets)));
        }
        if let Some(s) = self.subnet_v6 {
            out.push_str(&format!(
                "{KEY_IPV6_SUBNET}={}\n",
                go_net_string(IpNetwork::V6(s))
            ));
        }
        out.push_str(&format!("{KEY_MTU}={}\n", self.mtu));
        out.push_str(&format!("{KEY_IPMASQ}={}\n", self.ip_masq));
        out
    }

    /// Parses like the flannel CNI plugin: `KEY=VALUE` lines split at the first `=`, unknown
    /// lines ignored, networks are comma-separated CIDR lists (deduplicated), `FLANNEL_IPMASQ`
    /// is true only for exactly `true`. Also accepts CRLF line ends.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut networks_v4: Vec<Ipv4Network> = Vec::new();
        let mut networks_v6: Vec<Ipv6Network> = Vec::new();
        let mut subnet_v4 = None;
        let mut subnet_v6 = None;
        let mut mtu = None;
        let mut ip_masq = None;
        for line in text.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let invalid = |key: &'static str| SubnetEnvError::Invalid {
                key,
                value: value.to_string(),
            };
            match key {
                KEY_NETWORK | KEY_IPV6_NETWORK => {
                    for item in value.split(',') {
                        // Like Go's ParseCIDR network result: host bits dropped.
                        match (key, parse_cidr(item)) {
                            (KEY_NETWORK, Ok(IpNetwork::V4(n))) => {
                                if !networks_v4.contains(&n) {
                                    networks_v4.push(n);
                                }
                            }
                            (KEY_IPV6_NETWORK, Ok(IpNetwork::V6(n))) => {
                                if !networks_v6.contains(&n) {
                                    networks_v6.push(n);
                                }
                            }
                            (KEY_NETWORK, _) => return Err(invalid(KEY_NETWORK)),
                            _ => return Err(invalid(KEY_IPV6_NETWORK)),
                        }
                    }
                }
                KEY_SUBNET => {
                    subnet_v4 = Some(parse_host_cidr_v4(value).ok_or(invalid(KEY_SUBNET))?)
                }
                KEY_IPV6_SUBNET => {
                    subnet_v6 = Some(parse_host_cidr_v6(value).ok_or(invalid(KEY_IPV6_SUBNET))?)
                }
                KEY_MTU => {
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                            .ok_or(invalid(KEY_MTU))?,
                    )
                }
                KEY_IPMASQ => ip_masq = Some(value == "true"),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        if networks_v4.is_empty() && networks_v6.is_empty() {
            missing.push("FLANNEL_NETWORK/FLANNEL_IPV6_NETWORK");
        }
        if subnet_v4.is_none() && subnet_v6.is_none() {
            missing.push("FLANNEL_SUBNET/FLANNEL_IPV6_SUBNET");
        }
        if mtu.is_none() {
            missing.push(KEY_MTU);
        }
        if ip_masq.is_none() {
            missing.push(KEY_IPMASQ);
        }
        match (mtu, ip_masq) {
            (Some(mtu), Some(ip_masq)) if missing.is_empty() => Ok(SubnetEnv {
                networks_v4,
                subnet_v4,
                networks_v6,
                subnet_v6,
                mtu,
                ip_masq,
            }),
            _ => Err(SubnetEnvError::Missing(missing)),
        }
    }

    /// The node's IPv4 pod subnet (`10.244.1.0/24`): what the CNI plugin uses for IPAM.
    pub fn subnet_v4_network(&self) -> Option<Ipv4Network> {
        self.subnet_v4.map(normalize_v4)
    }

    pub fn subnet_v6_network(&self) -> Option<Ipv6Network> {
        self.subnet_v6.map(normalize_v6)
    }
}

/// `a.b.c.d/len` keeping the host address (Go's ParseCIDR first result + mask).
fn parse_host_cidr_v4(text: &str) -> Option<Ipv4Network> {
    let (addr, _) = text.split_once('/')?;
    match parse_cidr(text).ok()? {
        IpNetwork::V4(n) => Ipv4Network::new(addr.parse().ok()?, n.prefix()).ok(),
        IpNetwork::V6(_) => None,
    }
}

fn parse_host_cidr_v6(text: &str) -> Option<Ipv6Network> {
    let (addr, _) = text.split_once('/')?;
    match parse_cidr(text).ok()? {
        IpNetwork::V6(n) => Ipv6Network::new(addr.parse().ok()?, n.prefix()).ok(),
        IpNetwork::V4(_) => None,
    }
}

/// Whether [`write_if_changed`] touched the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

#[derive(Debug, Error)]
#[error("{path}: {op}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `path` with `content` unless it already holds exactly that content with
/// mode 0644: temp file in the same directory, write, chmod 0644, fsync, rename, fsync the
/// directory. Missing parent directories are created with mode 0755. On failure the temp file
/// is removed and the old file is left as it was.
pub fn write_if_changed(path: &Path, content: &[u8]) -> Result<WriteOutcome, WriteError> {
    let err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError {
            path: p,
            op,
            source,
        }
    };
    if let Ok(existing) = fs::read(path)
        && existing == content
        && fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == FILE_MODE)
    {
        return Ok(WriteOutcome::Unchanged);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&dir)
        .map_err(err("create directory", &dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".to_string());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let guard = TempGuard(Some(tmp.clone()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(err("create temp file", &tmp))?;
    f.write_all(content).map_err(err("write", &tmp))?;
    // The create mode is subject to umask; set it explicitly.
    f.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(err("chmod", &tmp))?;
    f.sync_all().map_err(err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(err("rename", path))?;
    guard.disarm();
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", &dir))?;
    Ok(WriteOutcome::Written)
}

/// Removes the temp file unless disarmed (after a successful rename).
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual_conf() -> NetConf {
        NetConf::parse(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn golden_dual_stack_text_from_upstream_docs() {
        let lease = PodSubnets::from_pod_cidrs(&["10.42.0.0/24", "2001:cafe:42::/64"]).unwrap();
        let env = SubnetEnv::for_lease(&dual_conf(), &lease, 1450, true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\n\
             FLANNEL_SUBNET=10.42.0.1/24\n\
             FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
             FLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn golden_v4_and_v6_only() {
        let conf =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let lease = PodSubnets::from_pod_cidrs(&["10.244.1.0/24", "fd00::/64"]).unwrap();
        assert_eq!(
            SubnetEnv::for_lease(&conf, &lease, 1450, false).render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let conf = NetConf::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:0:0:0:0:0:0/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let lease = PodSubnets::from_pod_cidrs(&["fd00:10:0:3::/64"]).unwrap();
        assert_eq!(
            SubnetEnv::for_lease(&conf, &lease, 1430, true).render(),
            "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn parse_round_trip_and_cni_semantics() {
        let lease = PodSubnets::from_pod_cidrs(&["10.42.0.0/24", "2001:cafe:42::/64"]).unwrap();
        let env = SubnetEnv::for_lease(&dual_conf(), &lease, 1450, true);
        let back = SubnetEnv::parse(&env.render()).unwrap();
        assert_eq!(back, env);
        assert_eq!(
            back.subnet_v4_network(),
            Some("10.42.0.0/24".parse().unwrap())
        );
        assert_eq!(
            back.subnet_v6_network(),
            Some("2001:cafe:42::/64".parse().unwrap())
        );
        assert_eq!(back.subnet_v4.unwrap().ip().to_string(), "10.42.0.1");

        let e = SubnetEnv::parse(
            "# comment\r\nFLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16,10.1.0.0/16\r\nFLANNEL_SUBNET=10.1.5.1/24\r\nFLANNEL_MTU=1400\r\nFLANNEL_IPMASQ=True\r\nOTHER=x\r\ngarbage line\r\n",
        )
        .unwrap();
        assert_eq!(e.networks_v4.len(), 2, "deduplicated list");
        assert!(!e.ip_masq, "only exactly \"true\" is true");
        assert_eq!(e.mtu, 1400);
    }

    #[test]
    fn parse_errors() {
        let e = SubnetEnv::parse("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet.env: missing FLANNEL_NETWORK/FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET/FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.0.1.1/24\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap_err();
        assert_eq!(e, SubnetEnvError::Missing(vec![KEY_MTU]));
        for (text, key) in [
            ("FLANNEL_NETWORK=10.0.0.0/33", KEY_NETWORK),
            ("FLANNEL_NETWORK=fd00::/8", KEY_NETWORK),
            ("FLANNEL_IPV6_NETWORK=10.0.0.0/8", KEY_IPV6_NETWORK),
            ("FLANNEL_SUBNET=10.0.1.1", KEY_SUBNET),
            ("FLANNEL_SUBNET=fd00::1/64", KEY_SUBNET),
            ("FLANNEL_IPV6_SUBNET=10.0.0.1/24", KEY_IPV6_SUBNET),
            ("FLANNEL_MTU=-1", KEY_MTU),
            ("FLANNEL_MTU=+1450", KEY_MTU),
            ("FLANNEL_MTU=1450 ", KEY_MTU),
        ] {
            assert!(
                matches!(SubnetEnv::parse(text), Err(SubnetEnvError::Invalid { key: k, .. }) if k == key),
                "{text}"
            );
        }
    }

    /// A per-test temp directory, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "frs-subnetenv-{}-{tag}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_write_creates_dirs_and_skips_unchanged() {
        let t = TempDir::new("w");
        let path = t.0.join("run/flannel/subnet.env");
        assert_eq!(
            write_if_changed(&path, b"A=1\n").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&path).unwrap(), b"A=1\n");
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(path.parent().unwrap()) & 0o700, 0o700);
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        assert_eq!(
            write_if_changed(&path, b"A=1\n").unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(inode(&path), before, "unchanged content is not rewritten");
        assert_eq!(
            write_if_changed(&path, b"A=2\n").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&path).unwrap(), b"A=2\n");
        assert_ne!(inode(&path), before, "replaced by rename");
        // no temp files left behind
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
    }

    #[test]
    fn wrong_mode_is_repaired() {
        let t = TempDir::new("m");
        let path = t.0.join("subnet.env");
        write_if_changed(&path, b"A=1\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            write_if_changed(&path, b"A=1\n").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        let t = TempDir::new("f");
        fs::create_dir_all(&t.0).unwrap();
        // the target is a non-empty directory: rename must fail
        let path = t.0.join("subnet.env");
        fs::create_dir_all(path.join("x")).unwrap();
        let e = write_if_changed(&path, b"A=1\n").unwrap_err();
        assert_eq!(e.op, "rename");
        assert!(e.to_string().contains("subnet.env"));
        let names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("subnet.env")],
            "temp removed"
        );
    }
}
