//! `subnet.env`: the file flanneld writes (`/run/flannel/subnet.env`) and the flannel CNI
//! plugin reads. One type for both sides, so what the daemon renders is exactly what the
//! plugin parses.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_IPV6_NETWORK=fd00:10:244::/56
//! FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! Like upstream (flannel `WriteSubnetFile`), the subnets are written as the node's pod subnet
//! with its first host address, which is the bridge gateway (`10.244.1.1/24`); the plugin only
//! uses their network (`10.244.1.0/24`), see [`SubnetEnv::subnet_v4_network`]. [`SubnetEnv`]
//! keeps the address as written so that a parse → render round trip is byte-for-byte.
//!
//! [`write_if_changed`] replaces the file atomically and only when its content changes.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use thiserror::Error;

use crate::net::{go_net_string, normalize_v4, normalize_v6, parse_cidr_addr};

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
    /// `FLANNEL_NETWORK`: flanneld writes one; the plugin accepts a comma-separated list
    /// (deduplicated). Networks, host bits dropped.
    pub networks_v4: Vec<Ipv4Network>,
    /// `FLANNEL_SUBNET` as written: normally the first host address with the subnet's prefix
    /// (`10.244.1.1/24`).
    pub subnet_v4: Option<Ipv4Network>,
    pub networks_v6: Vec<Ipv6Network>,
    pub subnet_v6: Option<Ipv6Network>,
    pub mtu: u32,
    pub ip_masq: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubnetEnvError {
    #[error("line {line}: {key}: {value:?} is not {expected}")]
    Invalid {
        line: usize,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Upstream's list: both spellings of a family-less key, comma-separated.
    #[error("missing {}", .0.join(", "))]
    Missing(Vec<&'static str>),
}

impl SubnetEnv {
    /// Upstream's exact text: v4 network + subnet, v6 network + subnet, MTU, IPMASQ; one
    /// `KEY=value` per line, `\n`-terminated, Go's textual forms of the addresses.
    pub fn render(&self) -> String {
        fn join(nets: impl Iterator<Item = IpNetwork>) -> String {
            nets.map(go_net_string).collect::<Vec<_>>().join(",")
        }
        let mut out = String::new();
        if !self.networks_v4.is_empty() {
            let nets = join(self.networks_v4.iter().map(|n| IpNetwork::V4(*n)));
            out.push_str(&format!("{KEY_NETWORK}={nets}\n"));
        }
        if let Some(s) = self.subnet_v4 {
            out.push_str(&format!("{KEY_SUBNET}={}\n", go_net_string(s.into())));
        }
        if !self.networks_v6.is_empty() {
            let nets = join(self.networks_v6.iter().map(|n| IpNetwork::V6(*n)));
            out.push_str(&format!("{KEY_IPV6_NETWORK}={nets}\n"));
        }
        if let Some(s) = self.subnet_v6 {
            out.push_str(&format!("{KEY_IPV6_SUBNET}={}\n", go_net_string(s.into())));
        }
        out.push_str(&format!("{KEY_MTU}={}\n", self.mtu));
        out.push_str(&format!("{KEY_IPMASQ}={}\n", self.ip_masq));
        out
    }

    /// Parses like the flannel CNI plugin (`loadFlannelSubnetEnv`): lines split at the first
    /// `=`, no trimming (Go's `bufio.Scanner` only drops a trailing `\r`); unknown keys and
    /// lines without `=` ignored; a repeated key replaces the earlier value; CIDRs as Go's
    /// `net.ParseCIDR`; MTU as `strconv.ParseUint(_, 10, 32)`; `FLANNEL_IPMASQ` is true only
    /// for exactly `true`. At least one family's network and subnet, the MTU and IPMASQ are
    /// required.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut networks_v4 = Vec::new();
        let mut networks_v6 = Vec::new();
        let mut subnet_v4 = None;
        let mut subnet_v6 = None;
        let mut mtu = None;
        let mut ip_masq = None;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let invalid = |key: &'static str, expected: &'static str| SubnetEnvError::Invalid {
                line: line_no,
                key,
                value: value.to_string(),
                expected,
            };
            match key {
                KEY_NETWORK => {
                    networks_v4 = parse_list(value, |item| match parse_cidr_addr(item) {
                        Ok(IpNetwork::V4(n)) => Some(normalize_v4(n)),
                        _ => None,
                    })
                    .ok_or_else(|| invalid(KEY_NETWORK, "a list of IPv4 CIDRs"))?;
                }
                KEY_IPV6_NETWORK => {
                    networks_v6 = parse_list(value, |item| match parse_cidr_addr(item) {
                        Ok(IpNetwork::V6(n)) => Some(normalize_v6(n)),
                        _ => None,
                    })
                    .ok_or_else(|| invalid(KEY_IPV6_NETWORK, "a list of IPv6 CIDRs"))?;
                }
                KEY_SUBNET => match parse_cidr_addr(value) {
                    Ok(IpNetwork::V4(n)) => subnet_v4 = Some(n),
                    _ => return Err(invalid(KEY_SUBNET, "an IPv4 CIDR")),
                },
                KEY_IPV6_SUBNET => match parse_cidr_addr(value) {
                    Ok(IpNetwork::V6(n)) => subnet_v6 = Some(n),
                    _ => return Err(invalid(KEY_IPV6_SUBNET, "an IPv6 CIDR")),
                },
                KEY_MTU => {
                    // Rust's u32 parser accepts a leading '+', Go's ParseUint does not.
                    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|_| digits)
                            .ok_or_else(|| invalid(KEY_MTU, "a decimal MTU"))?,
                    );
                }
                KEY_IPMASQ => ip_masq = Some(value == "true"),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        if networks_v4.is_empty() && networks_v6.is_empty() {
            missing.extend([KEY_NETWORK, KEY_IPV6_NETWORK]);
        }
        if subnet_v4.is_none() && subnet_v6.is_none() {
            missing.extend([KEY_SUBNET, KEY_IPV6_SUBNET]);
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

    /// The node's IPv4 pod subnet (`10.244.1.0/24`): what the CNI plugin hands to IPAM.
    pub fn subnet_v4_network(&self) -> Option<Ipv4Network> {
        self.subnet_v4.map(normalize_v4)
    }

    /// The node's IPv6 pod subnet (`fd00:10:244:1::/64`).
    pub fn subnet_v6_network(&self) -> Option<Ipv6Network> {
        self.subnet_v6.map(normalize_v6)
    }
}

/// A comma-separated list, each item parsed by `item`, duplicates dropped (order kept).
/// `None` when any item is invalid (an empty value included, like Go's `ParseCIDR("")`).
fn parse_list<T: PartialEq>(value: &str, item: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let mut list = Vec::new();
    for text in value.split(',') {
        let n = item(text)?;
        if !list.contains(&n) {
            list.push(n);
        }
    }
    Some(list)
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

    fn net<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    const V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
    const DUAL: &str = "FLANNEL_NETWORK=10.42.0.0/16\n\
                        FLANNEL_SUBNET=10.42.0.1/24\n\
                        FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
                        FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
                        FLANNEL_MTU=1450\n\
                        FLANNEL_IPMASQ=true\n";

    #[test]
    fn v4_parses_with_the_gateway_address_kept_and_the_network_derived() {
        let env = SubnetEnv::parse(V4).unwrap();
        assert_eq!(env.networks_v4, vec![net::<Ipv4Network>("10.244.0.0/16")]);
        assert_eq!(env.subnet_v4, Some(net("10.244.1.1/24")));
        assert_eq!(env.subnet_v4.unwrap().ip().to_string(), "10.244.1.1");
        assert_eq!(env.subnet_v4_network(), Some(net("10.244.1.0/24")));
        assert_eq!(
            env.subnet_v4_network().unwrap().to_string(),
            "10.244.1.0/24"
        );
        assert!(env.networks_v6.is_empty());
        assert_eq!((env.subnet_v6, env.subnet_v6_network()), (None, None));
        assert_eq!(env.mtu, 1450);
        assert!(env.ip_masq);
    }

    #[test]
    fn v6_only_parses() {
        let env = SubnetEnv::parse(V6).unwrap();
        assert!(env.networks_v4.is_empty());
        assert_eq!(env.subnet_v4, None);
        assert_eq!(env.networks_v6, vec![net::<Ipv6Network>("fd00:10::/56")]);
        assert_eq!(env.subnet_v6, Some(net("fd00:10:0:3::1/64")));
        assert_eq!(
            env.subnet_v6_network().unwrap().to_string(),
            "fd00:10:0:3::/64",
            "the network, not the first host"
        );
        assert_eq!(env.mtu, 1430);
        assert!(!env.ip_masq);
    }

    #[test]
    fn dual_stack_parses() {
        let env = SubnetEnv::parse(DUAL).unwrap();
        assert_eq!(env.subnet_v4_network(), Some(net("10.42.0.0/24")));
        assert_eq!(env.subnet_v6_network(), Some(net("2001:cafe:42::/64")));
        assert_eq!(env.networks_v4.len(), 1);
        assert_eq!(env.networks_v6.len(), 1);
    }

    #[test]
    fn render_parse_round_trip_is_byte_exact() {
        for text in [V4, V6, DUAL] {
            let env = SubnetEnv::parse(text).unwrap();
            assert_eq!(env.render(), text);
            assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
        }
        let env = SubnetEnv {
            networks_v4: vec![net("10.1.0.0/16"), net("10.2.0.0/16")],
            subnet_v4: Some(net("10.1.5.1/24")),
            networks_v6: vec![],
            subnet_v6: None,
            mtu: 8950,
            ip_masq: false,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\nFLANNEL_MTU=8950\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
    }

    #[test]
    fn ipv6_is_rendered_in_gos_compressed_form() {
        let env = SubnetEnv {
            networks_v4: vec![],
            subnet_v4: None,
            networks_v6: vec![net("fd00:10:0:0:0:0:0:0/56")],
            subnet_v6: Some(net("fd00:10:0:3:0:0:0:1/64")),
            mtu: 1430,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn network_lists_are_deduplicated_and_a_repeated_key_replaces() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.9.0.0/16\nFLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.7.0/16\n\
             FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(
            env.networks_v4,
            vec![net::<Ipv4Network>("10.244.0.0/16"), net("10.245.0.0/16")],
            "host bits dropped, duplicates removed, the earlier line replaced"
        );
    }

    #[test]
    fn garbage_lines_comments_crlf_and_unknown_keys_are_ignored() {
        let env = SubnetEnv::parse(
            "# written by flanneld\r\nFLANNEL_NETWORK=10.1.0.0/16\r\ngarbage line\r\n\r\nOTHER=x\r\nFLANNEL_SUBNET=10.1.5.1/24\r\nFLANNEL_MTU=1400\r\nFLANNEL_IPMASQ=true\r",
        )
        .unwrap();
        assert_eq!(env.subnet_v4, Some(net("10.1.5.1/24")));
        assert_eq!(env.mtu, 1400);
        assert!(env.ip_masq);
        // Not trimmed, like upstream: a key with blanks is an unknown key.
        let e = SubnetEnv::parse(" FLANNEL_MTU=1450\n").unwrap_err();
        assert!(
            matches!(&e, SubnetEnvError::Missing(m) if m.contains(&KEY_MTU)),
            "{e}"
        );
    }

    #[test]
    fn ipmasq_is_true_only_for_the_exact_word() {
        for (v, want) in [
            ("true", true),
            ("TRUE", false),
            ("True", false),
            ("1", false),
            ("", false),
        ] {
            let env = SubnetEnv::parse(&format!(
                "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.1.0.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ={v}\n"
            ))
            .unwrap();
            assert_eq!(env.ip_masq, want, "{v:?}");
        }
    }

    #[test]
    fn missing_keys_are_listed_like_upstream() {
        let e = SubnetEnv::parse("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        let e = SubnetEnv::parse("FLANNEL_MTU=1450\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
        );
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.0.1.1/24\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap_err();
        assert_eq!(e, SubnetEnvError::Missing(vec![KEY_MTU]));
        // One family is enough; its network without a subnet is not.
        let e = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            SubnetEnvError::Missing(vec![KEY_SUBNET, KEY_IPV6_SUBNET])
        );
    }

    #[test]
    fn invalid_values_name_the_line_and_key() {
        for (text, line, key) in [
            ("FLANNEL_NETWORK=10.0.0.0/33", 1, KEY_NETWORK),
            ("FLANNEL_NETWORK=10.244.0.0", 1, KEY_NETWORK),
            ("FLANNEL_NETWORK=", 1, KEY_NETWORK),
            ("FLANNEL_NETWORK=10.0.0.0/8,", 1, KEY_NETWORK),
            ("FLANNEL_NETWORK=fd00::/8", 1, KEY_NETWORK),
            ("\nFLANNEL_IPV6_NETWORK=10.0.0.0/8", 2, KEY_IPV6_NETWORK),
            ("FLANNEL_SUBNET=10.0.1.1", 1, KEY_SUBNET),
            ("FLANNEL_SUBNET=fd00::1/64", 1, KEY_SUBNET),
            ("FLANNEL_SUBNET= 10.0.1.1/24", 1, KEY_SUBNET),
            ("FLANNEL_IPV6_SUBNET=10.0.0.1/24", 1, KEY_IPV6_SUBNET),
            ("#\n#\nFLANNEL_MTU=big", 3, KEY_MTU),
            ("FLANNEL_MTU=-1", 1, KEY_MTU),
            ("FLANNEL_MTU=+1450", 1, KEY_MTU),
            ("FLANNEL_MTU=1450 ", 1, KEY_MTU),
            ("FLANNEL_MTU=", 1, KEY_MTU),
            ("FLANNEL_MTU=4294967296", 1, KEY_MTU),
        ] {
            match SubnetEnv::parse(text) {
                Err(SubnetEnvError::Invalid {
                    line: l, key: k, ..
                }) if (l, k) == (line, key) => {}
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let e = SubnetEnv::parse("FLANNEL_SUBNET=fd00::1/64").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: FLANNEL_SUBNET: \"fd00::1/64\" is not an IPv4 CIDR"
        );
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
    fn written_file_parses_back_to_the_same_value() {
        let t = TempDir::new("rt");
        let path = t.0.join("subnet.env");
        let env = SubnetEnv::parse(DUAL).unwrap();
        write_if_changed(&path, env.render().as_bytes()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), DUAL.as_bytes());
        let back = SubnetEnv::parse(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, env);
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
