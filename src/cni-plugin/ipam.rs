//! IPAM compatible with the reference `host-local` plugin, on disk and in behaviour:
//!
//! * directory `<dataDir or /var/lib/cni/networks>/<network name>/`;
//! * one file per reserved IP, named by the IP, holding `<containerID>\r\n<ifname>`;
//! * `last_reserved_ip.<range set index>` with the last IP handed out (round-robin cursor);
//! * an empty `lock` file, `flock(LOCK_EX)` around every read-modify-write.
//!
//! So host-local and this module can run on the same node, each respecting the other's
//! reservations. Differences, all on the safe side: a repeated ADD for the same
//! (container, ifname) returns the IP it already holds instead of failing, an ADD that
//! fails later releases exactly the reservations it made, an empty reservation file (a writer
//! killed between create and write) is taken over when the range is otherwise full, and no
//! file here is opened through a symlink.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::DEFAULT_IPAM_DATA_DIR;
use super::types::{Dns, Route};
use crate::net::parse_cidr_addr;

pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid ipam config: {0}")]
    Config(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to allocate for range {index}: no IP addresses available in range set: {set}")]
    Exhausted { index: usize, set: String },
    #[error(
        "failed to allocate for range {index}: requested IP address {ip} is not available in range set {set}"
    )]
    RequestedTaken {
        index: usize,
        ip: IpAddr,
        set: String,
    },
    #[error("failed to allocate for range {index}: requested ip {ip} is subnet's gateway")]
    RequestedGateway { index: usize, ip: IpAddr },
    #[error("failed to allocate all requested IPs: {0}")]
    RequestedUnmatched(String),
    #[error(
        "{owned} is allocated to {container_id}/{ifname}, which requests {requested}: one IP per range set"
    )]
    RequestedConflict {
        owned: IpAddr,
        requested: IpAddr,
        container_id: String,
        ifname: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Io {
        op,
        path: path.to_path_buf(),
        source: super::state::explain_symlink(source),
    }
}

/// Every file in the store is opened with these: a symlink planted in the directory (say
/// `last_reserved_ip.0 -> /etc/shadow`) fails the open instead of redirecting a root write.
const OPEN_FLAGS: i32 = nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW;

fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ELOOP)
}

/// A small file's text, not through a symlink (and not blocking on a FIFO).
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS | nix::libc::O_NONBLOCK)
        .open(path)?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Address arithmetic on u128, family kept alongside.

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// One `{subnet, rangeStart, rangeEnd, gateway}` after host-local's canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    /// Defaults like host-local: gateway = network+1, start = network+1, end = broadcast−1
    /// for IPv4 and the last address for IPv6. /31, /32 (and /127, /128) are too small.
    pub fn new(
        subnet: IpNetwork,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Self, IpamError> {
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(IpamError::Config(format!(
                "Network {subnet} too small to allocate from"
            )));
        }
        if subnet.ip() != subnet.network() {
            return Err(IpamError::Config(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                subnet.prefix(),
                subnet.network()
            )));
        }
        let v4 = subnet.is_ipv4();
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let in_subnet = |ip: IpAddr, what: &str| -> Result<IpAddr, IpamError> {
            if ip.is_ipv4() != v4 || !subnet.contains(ip) {
                return Err(IpamError::Config(format!(
                    "{what} {ip} not in network {subnet}"
                )));
            }
            Ok(ip)
        };
        let start = match start {
            Some(ip) => in_subnet(ip, "RangeStart")?,
            None => from_u128(net + 1, v4),
        };
        let end = match end {
            Some(ip) => in_subnet(ip, "RangeEnd")?,
            None => from_u128(if v4 { last - 1 } else { last }, v4),
        };
        let gateway = match gateway {
            Some(ip) if ip.is_ipv4() != v4 => {
                return Err(IpamError::Config(format!(
                    "gateway {ip} is not in the family of network {subnet}"
                )));
            }
            Some(ip) => ip,
            None => from_u128(net + 1, v4),
        };
        if to_u128(start) > to_u128(end) {
            return Err(IpamError::Config(format!(
                "RangeStart {start} is after RangeEnd {end}"
            )));
        }
        Ok(Self {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && self.subnet.contains(ip)
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.subnet.is_ipv4() == other.subnet.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }
}

/// A range set: one IP is handed out per set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|r| r.subnet.is_ipv4())
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}-{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// The host-local candidate order: round-robin from the IP after `last`, across the ranges
/// of the set and from the end back to the start, never the gateway, each IP once.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    range_idx: usize,
    cur: Option<u128>,
    start: Option<u128>,
    done: bool,
}

impl<'a> Candidates<'a> {
    pub fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> Self {
        let found = last_reserved.and_then(|ip| {
            set.0
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, to_u128(ip)))
        });
        match found {
            Some((i, cur)) => Self {
                set,
                range_idx: i,
                cur: Some(cur),
                start: None,
                done: false,
            },
            None => Self {
                set,
                range_idx: 0,
                cur: None,
                start: None,
                done: false,
            },
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = (IpAddr, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.set.0.is_empty() {
            return None;
        }
        let v4 = self.set.is_ipv4();
        loop {
            let r = &self.set.0[self.range_idx];
            let cur = match self.cur {
                None => {
                    let s = to_u128(r.start);
                    self.start = Some(s);
                    s
                }
                Some(c) => {
                    let next = if c == to_u128(r.end) {
                        self.range_idx = (self.range_idx + 1) % self.set.0.len();
                        to_u128(self.set.0[self.range_idx].start)
                    } else {
                        c + 1
                    };
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => {
                            self.done = true;
                            return None;
                        }
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(cur);
            let r = &self.set.0[self.range_idx];
            if cur == to_u128(r.gateway) {
                continue;
            }
            return Some((from_u128(cur, v4), self.range_idx));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration (the delegate's `ipam` section).

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeWire {
    subnet: String,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamWire {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    ranges: Vec<Vec<RangeWire>>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    resolv_conf: Option<String>,
    /// Not a host-local key: fsync each reservation (see [`Durability`]).
    #[serde(default)]
    fsync: bool,
}

/// Whether reservations are fsync'd before they are used.
///
/// The default is the page cache, like host-local: a reservation is visible to every process
/// the moment it is created, so a plugin killed mid-ADD can never cause a duplicate. fsync only
/// adds survival across power loss, after which every pod is gone anyway (a durable stale
/// reservation is exactly the leak users fight), and it costs a disk flush per ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    PageCache,
    Fsync,
}

/// host-local's configuration after validation.
#[derive(Debug, Clone)]
pub struct IpamConf {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// `<dataDir>/<network name>`.
    pub dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub durability: Durability,
}

fn parse_range(w: &RangeWire) -> Result<Range, IpamError> {
    let subnet = parse_cidr_addr(&w.subnet)
        .ok()
        .ok_or_else(|| IpamError::Config(format!("invalid subnet {:?}", w.subnet)))?;
    Range::new(subnet, w.range_start, w.range_end, w.gateway)
}

impl IpamConf {
    /// `ip` with the prefix of its range (the host prefix when it is in none): the pod
    /// address as ADD configured it, which keys the masquerade rules.
    pub fn pod_network(&self, ip: IpAddr) -> Result<IpNetwork, ipnetwork::IpNetworkError> {
        let prefix = self
            .ranges
            .iter()
            .find_map(|s| s.range_for(ip))
            .map(|r| r.subnet.prefix())
            .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        IpNetwork::new(ip, prefix)
    }

    pub fn from_ipam(network_name: &str, ipam: &Map<String, Value>) -> Result<Self, IpamError> {
        let wire: IpamWire = serde_json::from_value(Value::Object(ipam.clone()))
            .map_err(|e| IpamError::Config(e.to_string()))?;
        let mut sets_wire: Vec<Vec<&RangeWire>> = Vec::new();
        let legacy = wire.subnet.as_ref().map(|s| RangeWire {
            subnet: s.clone(),
            range_start: wire.range_start,
            range_end: wire.range_end,
            gateway: wire.gateway,
        });
        if let Some(l) = &legacy {
            sets_wire.push(vec![l]);
        }
        sets_wire.extend(wire.ranges.iter().map(|s| s.iter().collect()));
        if sets_wire.is_empty() {
            return Err(IpamError::Config("no IP ranges specified".into()));
        }
        let mut ranges = Vec::new();
        for (i, set) in sets_wire.iter().enumerate() {
            let parsed = set
                .iter()
                .map(|w| parse_range(w))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| IpamError::Config(format!("invalid range set {i}: {e}")))?;
            if parsed.is_empty() {
                return Err(IpamError::Config(format!(
                    "invalid range set {i}: empty range set"
                )));
            }
            if parsed
                .iter()
                .any(|r| r.subnet.is_ipv4() != parsed[0].subnet.is_ipv4())
            {
                return Err(IpamError::Config(format!(
                    "invalid range set {i}: mixed address families"
                )));
            }
            for (a, ra) in parsed.iter().enumerate() {
                for rb in &parsed[a + 1..] {
                    if ra.overlaps(rb) {
                        return Err(IpamError::Config(format!(
                            "invalid range set {i}: subnets {} and {} overlap",
                            ra.subnet, rb.subnet
                        )));
                    }
                }
            }
            ranges.push(RangeSet(parsed));
        }
        for i in 0..ranges.len() {
            for j in i + 1..ranges.len() {
                let overlap = ranges[i]
                    .0
                    .iter()
                    .any(|a| ranges[j].0.iter().any(|b| a.overlaps(b)));
                if overlap {
                    return Err(IpamError::Config(format!(
                        "range set {i} overlaps with {j}"
                    )));
                }
            }
        }
        let data_dir = wire
            .data_dir
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_IPAM_DATA_DIR.to_string());
        Ok(Self {
            ranges,
            routes: wire.routes,
            dir: Path::new(&data_dir).join(network_name),
            resolv_conf: wire
                .resolv_conf
                .filter(|r| !r.is_empty())
                .map(PathBuf::from),
            durability: if wire.fsync {
                Durability::Fsync
            } else {
                Durability::PageCache
            },
        })
    }

    /// Where reservations live, for DEL and GC: ranges are parsed when they are valid and
    /// left empty otherwise (releasing needs only the directory).
    pub fn for_release(network_name: &str, ipam: &Map<String, Value>) -> Self {
        if let Ok(conf) = Self::from_ipam(network_name, ipam) {
            return conf;
        }
        let data_dir = ipam
            .get("dataDir")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .unwrap_or(DEFAULT_IPAM_DATA_DIR);
        Self {
            ranges: Vec::new(),
            routes: Vec::new(),
            dir: Path::new(data_dir).join(network_name),
            resolv_conf: None,
            durability: if ipam.get("fsync").and_then(Value::as_bool) == Some(true) {
                Durability::Fsync
            } else {
                Durability::PageCache
            },
        }
    }

    /// DNS from `resolvConf`, parsed like host-local (nameserver, domain, search, options).
    pub fn dns(&self) -> Result<Dns, IpamError> {
        let Some(path) = &self.resolv_conf else {
            return Ok(Dns::default());
        };
        let text = std::fs::read_to_string(path).map_err(io_err("read resolvConf", path))?;
        Ok(parse_resolv_conf(&text))
    }
}

pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => dns.nameservers.extend(fields.next().map(str::to_string)),
            Some("domain") => {
                if let Some(d) = fields.next() {
                    dns.domain = d.to_string();
                }
            }
            Some("search") => dns.search.extend(fields.map(str::to_string)),
            Some("options") => dns.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

// ---------------------------------------------------------------------------------------
// The on-disk store.

/// Who holds a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// The file content host-local writes.
    fn record(&self) -> String {
        format!("{}\r\n{}", self.container_id.trim(), self.ifname)
    }

    /// host-local's match: the full record, or a legacy file with only the container ID.
    fn matches(&self, content: &str) -> bool {
        let c = content.trim();
        c == self.record() || c == self.container_id.trim()
    }
}

/// A reservation file's owner as written (`None` for empty or unreadable content).
pub fn parse_record(content: &str) -> Option<Owner> {
    let c = content.trim();
    if c.is_empty() {
        return None;
    }
    match c.split_once("\r\n") {
        Some((id, ifname)) => Some(Owner::new(id.trim(), ifname.trim())),
        None => Some(Owner::new(c, "")),
    }
}

/// The reservation directory of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    durability: Durability,
}

/// The store with `lock` held (released on drop).
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

fn ip_file_name(ip: IpAddr) -> String {
    ip.to_string()
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>, durability: Durability) -> Self {
        Self {
            dir: dir.into(),
            durability,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0755, like host-local) and takes the lock.
    pub fn lock(&self) -> Result<Locked<'_>, IpamError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(io_err("create directory", &self.dir))?;
        self.lock_existing()
    }

    /// Takes the lock only if the directory exists (DEL/GC must not create anything).
    pub fn lock_if_exists(&self) -> Result<Option<Locked<'_>>, IpamError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        self.lock_existing().map(Some)
    }

    fn lock_existing(&self) -> Result<Locked<'_>, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(OPEN_FLAGS)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| IpamError::Io {
                op: "flock",
                path: path.clone(),
                source: std::io::Error::from(errno),
            })?;
        Ok(Locked {
            store: self,
            _lock: lock,
        })
    }
}

impl Locked<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.store.dir.join(name)
    }

    /// Creates the reservation file with O_EXCL; false when the IP is taken.
    pub fn reserve(&self, owner: &Owner, ip: IpAddr, set_index: usize) -> Result<bool, IpamError> {
        let path = self.path(&ip_file_name(ip));
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OPEN_FLAGS)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create reservation", &path)(e)),
        };
        let written = file.write_all(owner.record().as_bytes()).and_then(|()| {
            if self.store.durability == Durability::Fsync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(io_err("write reservation", &path)(e));
        }
        drop(file);
        if self.store.durability == Durability::Fsync {
            File::open(&self.store.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync directory", &self.store.dir))?;
        }
        let cursor = self.path(&format!("{LAST_RESERVED_PREFIX}{set_index}"));
        if let Err(e) = write_cursor(&cursor, &ip.to_string()) {
            let _ = std::fs::remove_file(&path);
            return Err(io_err("write", &cursor)(e));
        }
        Ok(true)
    }

    /// Like [`Locked::reserve`], but an empty reservation file in the way is taken over.
    ///
    /// Every writer (host-local and us) creates and fills a reservation under the lock we
    /// hold, so an empty one is the leftover of a writer killed in between: no ADD ever
    /// configured that IP, and no DEL will release it (it names no owner).
    pub fn reserve_reclaiming(
        &self,
        owner: &Owner,
        ip: IpAddr,
        set_index: usize,
    ) -> Result<bool, IpamError> {
        if self.reserve(owner, ip, set_index)? {
            return Ok(true);
        }
        let path = self.path(&ip_file_name(ip));
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat reservation", &path)(e)),
        }
        tracing::info!(%ip, "reclaiming an empty reservation (left by a killed ADD)");
        remove_if_exists(&path)?;
        self.reserve(owner, ip, set_index)
    }

    pub fn last_reserved(&self, set_index: usize) -> Option<IpAddr> {
        read_nofollow(&self.path(&format!("{LAST_RESERVED_PREFIX}{set_index}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every reservation file: (IP, raw content). Files are read relative to the directory
    /// with one read each (they hold a few dozen bytes): this walk is what every ADD of a
    /// known attachment and every DEL pays per reserved IP, like host-local.
    pub fn reservations(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let dir = &self.store.dir;
        let dir_fd = File::open(dir).map_err(io_err("open directory", dir))?;
        let entries = std::fs::read_dir(dir).map_err(io_err("read directory", dir))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let fd = match nix::fcntl::openat(
                &dir_fd,
                name.as_os_str(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_CLOEXEC
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Gone between readdir and open: only a non-locking writer does that.
                Err(nix::errno::Errno::ENOENT) => continue,
                // Not read through: the IP counts as taken by nobody in particular.
                Err(nix::errno::Errno::ELOOP) => {
                    out.push((ip, String::new()));
                    continue;
                }
                Err(e) => return Err(io_err("open reservation", &entry.path())(e.into())),
            };
            let mut content = Vec::new();
            loop {
                match nix::unistd::read(&fd, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => content.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(io_err("read reservation", &entry.path())(e.into())),
                }
                if content.len() < buf.len() {
                    // A short read of a regular file means end of file.
                    break;
                }
            }
            out.push((ip, String::from_utf8_lossy(&content).into_owned()));
        }
        Ok(out)
    }

    /// IPs held by `owner` (host-local's GetByID, legacy records included).
    pub fn owned_by(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .reservations()?
            .into_iter()
            .filter(|(_, c)| owner.matches(c))
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Removes one reservation if (and only if) `owner` holds it.
    pub fn release_ip(&self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        let path = self.path(&ip_file_name(ip));
        match read_nofollow(&path) {
            Ok(c) if owner.matches(&c) => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("read reservation", &path)(e)),
        }
        remove_if_exists(&path)
    }

    /// The reservations [`Locked::release_owner`] would remove: host-local's ReleaseByID
    /// choice, exact records first, legacy container-ID-only records when there is no exact
    /// one.
    pub fn to_release(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let all = self.reservations()?;
        let exact = owner.record();
        let mut chosen: Vec<IpAddr> = all
            .iter()
            .filter(|(_, c)| c.trim() == exact)
            .map(|(ip, _)| *ip)
            .collect();
        if chosen.is_empty() {
            chosen = all
                .iter()
                .filter(|(_, c)| c.trim() == owner.container_id.trim())
                .map(|(ip, _)| *ip)
                .collect();
        }
        Ok(chosen)
    }

    /// Removes every reservation of `owner` (see [`Locked::to_release`]). Returns the
    /// released IPs.
    pub fn release_owner(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let mut released = Vec::new();
        for ip in self.to_release(owner)? {
            if remove_if_exists(&self.path(&ip_file_name(ip)))? {
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Removes a reservation regardless of owner if it still holds `content` (GC, which
    /// read it under an earlier lock).
    pub fn remove_if_unchanged(&self, ip: IpAddr, content: &str) -> Result<bool, IpamError> {
        let path = self.path(&ip_file_name(ip));
        match read_nofollow(&path) {
            Ok(c) if c == content => remove_if_exists(&path),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            // A symlink named like an IP reads as empty in the walk; it goes like one.
            Err(e) if is_symlink_error(&e) && content.is_empty() => remove_if_exists(&path),
            Err(e) => Err(io_err("read reservation", &path)(e)),
        }
    }
}

/// Rewrites the cursor file in place. host-local truncates and rewrites it; truncating a
/// non-empty file makes ext4 free and reallocate its block on every ADD, so the new text is
/// written over the old and the file is only shortened when the new text is shorter. Readers
/// (host-local and us) read it under the lock, so they never see the intermediate state.
fn write_cursor(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(OPEN_FLAGS)
        .open(path)?;
    f.write_all_at(text.as_bytes(), 0)?;
    let len = text.len() as u64;
    if f.metadata()?.len() > len {
        f.set_len(len)?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<bool, IpamError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove reservation", path)(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Allocation.

/// One IP handed out for one range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub set_index: usize,
    /// The IP with its subnet's prefix length.
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// False when the owner already held this IP (a repeated ADD): never roll that back.
    pub newly_reserved: bool,
}

fn with_prefix(ip: IpAddr, range: &Range) -> IpNetwork {
    // The IP lies in the range's subnet, so its prefix length is valid for the family.
    IpNetwork::new(ip, range.subnet.prefix()).unwrap_or(range.subnet)
}

/// Whether the owner may already hold reservations here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Unknown: walk the directory for the owner's reservations (host-local's behaviour).
    MayExist,
    /// The caller knows this attachment is new (flannel's DEL record did not exist before this
    /// ADD, and every ADD writes it before reserving), so the walk is skipped. Were the caller
    /// wrong, the owner would hold one extra reservation until its DEL, which releases every
    /// file of the owner; an IP is never handed out twice either way (O_EXCL).
    New,
}

/// Reserves one IP per range set for `owner`, all under one lock. On any error the
/// reservations made by this call are released again.
pub fn allocate(
    locked: &Locked<'_>,
    sets: &[RangeSet],
    owner: &Owner,
    requested: &[IpAddr],
    history: History,
) -> Result<Vec<Allocation>, IpamError> {
    let mut done: Vec<Allocation> = Vec::new();
    match allocate_inner(locked, sets, owner, requested, history, &mut done) {
        Ok(()) => Ok(done),
        Err(e) => {
            rollback(locked, owner, &done);
            Err(e)
        }
    }
}

/// Releases the reservations this ADD made (not ones the owner already held).
pub fn rollback(locked: &Locked<'_>, owner: &Owner, allocations: &[Allocation]) {
    for a in allocations.iter().filter(|a| a.newly_reserved) {
        if let Err(e) = locked.release_ip(a.address.ip(), owner) {
            tracing::warn!(ip = %a.address.ip(), error = %e, "rollback of a reservation failed");
        }
    }
}

fn allocate_inner(
    locked: &Locked<'_>,
    sets: &[RangeSet],
    owner: &Owner,
    requested: &[IpAddr],
    history: History,
    done: &mut Vec<Allocation>,
) -> Result<(), IpamError> {
    let held = match history {
        History::MayExist => locked.owned_by(owner)?,
        History::New => Vec::new(),
    };
    let mut pending: Vec<IpAddr> = requested.to_vec();
    for (index, set) in sets.iter().enumerate() {
        let wanted = pending
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|i| pending.remove(i));
        let already = held.iter().copied().find(|ip| set.contains(*ip));
        if let Some(ip) = wanted {
            // set.contains() held, so the range exists.
            let Some(range) = set.range_for(ip) else {
                continue;
            };
            if ip == range.gateway {
                return Err(IpamError::RequestedGateway { index, ip });
            }
            match already {
                Some(owned) if owned == ip => done.push(Allocation {
                    set_index: index,
                    address: with_prefix(ip, range),
                    gateway: range.gateway,
                    newly_reserved: false,
                }),
                Some(owned) => {
                    return Err(IpamError::RequestedConflict {
                        owned,
                        requested: ip,
                        container_id: owner.container_id.clone(),
                        ifname: owner.ifname.clone(),
                    });
                }
                None => {
                    if !locked.reserve_reclaiming(owner, ip, index)? {
                        return Err(IpamError::RequestedTaken {
                            index,
                            ip,
                            set: set.to_string(),
                        });
                    }
                    done.push(Allocation {
                        set_index: index,
                        address: with_prefix(ip, range),
                        gateway: range.gateway,
                        newly_reserved: true,
                    });
                }
            }
            continue;
        }
        if let Some(ip) = already
            && let Some(range) = set.range_for(ip)
        {
            done.push(Allocation {
                set_index: index,
                address: with_prefix(ip, range),
                gateway: range.gateway,
                newly_reserved: false,
            });
            continue;
        }
        let last = locked.last_reserved(index);
        let mut got = None;
        for (ip, range_idx) in Candidates::new(set, last) {
            if locked.reserve(owner, ip, index)? {
                got = Some((ip, range_idx));
                break;
            }
        }
        // Full: take over an empty reservation a killed ADD left, in the same order. Only
        // now, so the hot path pays nothing and such IPs are reused last.
        if got.is_none() {
            for (ip, range_idx) in Candidates::new(set, last) {
                if locked.reserve_reclaiming(owner, ip, index)? {
                    got = Some((ip, range_idx));
                    break;
                }
            }
        }
        let Some((ip, range_idx)) = got else {
            return Err(IpamError::Exhausted {
                index,
                set: set.to_string(),
            });
        };
        let range = &set.0[range_idx];
        done.push(Allocation {
            set_index: index,
            address: with_prefix(ip, range),
            gateway: range.gateway,
            newly_reserved: true,
        });
    }
    if !pending.is_empty() {
        let list: Vec<String> = pending.iter().map(|ip| ip.to_string()).collect();
        return Err(IpamError::RequestedUnmatched(list.join(" ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::temp_dir;
    use std::collections::HashSet;

    fn set(subnet: &str) -> RangeSet {
        RangeSet(vec![
            Range::new(subnet.parse().unwrap(), None, None, None).unwrap(),
        ])
    }

    /// A store in `<temp dir>/n` that does not fsync (the temp dir is returned to keep it).
    fn page_cache_store(tag: &str) -> (tempfile::TempDir, Store) {
        let tmp = temp_dir(tag);
        let store = Store::new(tmp.path().join("n"), Durability::PageCache);
        (tmp, store)
    }

    /// An allocation for `id`/eth0 on a store that may already hold its record, asking for
    /// `requested` addresses.
    fn alloc(
        locked: &Locked<'_>,
        sets: &[RangeSet],
        id: &str,
        requested: &[&str],
    ) -> Result<Vec<Allocation>, IpamError> {
        let requested: Vec<IpAddr> = requested.iter().map(|a| a.parse().unwrap()).collect();
        allocate(
            locked,
            sets,
            &Owner::new(id, "eth0"),
            &requested,
            History::MayExist,
        )
    }

    /// The addresses [`Candidates`] offers, in order, after `last` (the last reserved).
    fn candidate_order(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        Candidates::new(set, last.map(|a| a.parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect()
    }

    fn ipam(json: &str) -> Result<IpamConf, IpamError> {
        let m: Map<String, Value> = serde_json::from_str(json).unwrap();
        IpamConf::from_ipam("cbr0", &m)
    }

    #[test]
    fn range_defaults_follow_host_local() {
        let r = Range::new("10.244.1.0/24".parse().unwrap(), None, None, None).unwrap();
        assert_eq!(r.start.to_string(), "10.244.1.1");
        assert_eq!(r.end.to_string(), "10.244.1.254");
        assert_eq!(r.gateway.to_string(), "10.244.1.1");
        let r6 = Range::new("fd00::/120".parse().unwrap(), None, None, None).unwrap();
        assert_eq!(r6.end.to_string(), "fd00::ff", "IPv6 has no broadcast");
        assert!(Range::new("10.0.0.0/31".parse().unwrap(), None, None, None).is_err());
        assert!(Range::new("10.0.0.1/24".parse().unwrap(), None, None, None).is_err());
        assert!(
            Range::new(
                "10.0.0.0/24".parse().unwrap(),
                Some("10.0.1.5".parse().unwrap()),
                None,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn candidate_order_skips_gateway_network_and_broadcast_and_wraps() {
        let s = set("10.0.0.0/29"); // .1 gateway, .2-.6 usable, .7 broadcast
        let all = candidate_order(&s, None);
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let from4 = candidate_order(&s, Some("10.0.0.4"));
        assert_eq!(
            from4,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        let from_outside = candidate_order(&s, Some("192.168.0.1"));
        assert_eq!(from_outside[0], "10.0.0.2");
    }

    #[test]
    fn candidates_cross_ranges_of_a_set() {
        let s = RangeSet(vec![
            Range::new("10.0.0.0/30".parse().unwrap(), None, None, None).unwrap(),
            Range::new("10.0.1.0/30".parse().unwrap(), None, None, None).unwrap(),
        ]);
        let all = candidate_order(&s, Some("10.0.0.2"));
        assert_eq!(all, ["10.0.1.2", "10.0.0.2"]);
    }

    #[test]
    fn config_parsing_and_errors() {
        let c = ipam(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00::/64"}]],
                "routes":[{"dst":"10.244.0.0/16"}],"dataDir":"/tmp/d"}"#,
        )
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.dir, PathBuf::from("/tmp/d/cbr0"));
        assert_eq!(c.routes[0].dst.to_string(), "10.244.0.0/16");
        let legacy = ipam(r#"{"subnet":"10.1.0.0/16","rangeStart":"10.1.0.10"}"#).unwrap();
        assert_eq!(legacy.ranges[0].0[0].start.to_string(), "10.1.0.10");
        assert_eq!(legacy.dir, Path::new(DEFAULT_IPAM_DATA_DIR).join("cbr0"));
        for bad in [
            r#"{"type":"host-local"}"#,
            r#"{"ranges":[[{"subnet":"10.0.0.0/8"}],[{"subnet":"10.1.0.0/16"}]]}"#,
            r#"{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
            r#"{"ranges":[[{"subnet":"nonsense"}]]}"#,
            r#"{"ranges":[[]]}"#,
        ] {
            assert!(ipam(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn on_disk_format_matches_host_local() {
        let tmp = temp_dir("ipam-fmt");
        let store = Store::new(tmp.path().join("cbr0"), Durability::PageCache);
        let locked = store.lock().unwrap();
        let owner = Owner::new("cnib-seq-1", "eth0");
        let a = allocate(
            &locked,
            &[set("10.244.1.0/24")],
            &owner,
            &[],
            History::MayExist,
        )
        .unwrap();
        assert_eq!(a[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(a[0].gateway.to_string(), "10.244.1.1");
        let bytes = std::fs::read(tmp.path().join("cbr0/10.244.1.2")).unwrap();
        assert_eq!(bytes, b"cnib-seq-1\r\neth0", "CRLF, no trailing newline");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("cbr0/last_reserved_ip.0")).unwrap(),
            "10.244.1.2"
        );
        assert!(tmp.path().join("cbr0/lock").exists());
    }

    #[test]
    fn round_robin_repeat_add_release_and_exhaustion() {
        let (_tmp, store) = page_cache_store("ipam-rr");
        let sets = [set("10.0.0.0/29")];
        let locked = store.lock().unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            let a = allocate(
                &locked,
                &sets,
                &Owner::new(&format!("c{i}"), "eth0"),
                &[],
                History::MayExist,
            )
            .unwrap();
            assert!(a[0].newly_reserved);
            got.push(a[0].address.ip().to_string());
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );

        // The same (container, ifname) gets the same IP back, not a second one.
        let again = alloc(&locked, &sets, "c2", &[]).unwrap();
        assert_eq!(again[0].address.ip().to_string(), "10.0.0.4");
        assert!(!again[0].newly_reserved);

        let err = alloc(&locked, &sets, "c9", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6"
        );

        // Release c1 (.3): the cursor stays at .6, so the next ADD wraps to .3.
        assert_eq!(
            locked.release_owner(&Owner::new("c1", "eth0")).unwrap(),
            vec!["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(locked.last_reserved(0).unwrap().to_string(), "10.0.0.6");
        let a = alloc(&locked, &sets, "c7", &[]).unwrap();
        assert_eq!(a[0].address.ip().to_string(), "10.0.0.3");
        // Releasing what does not exist is fine.
        assert!(
            locked
                .release_owner(&Owner::new("nobody", "eth0"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn freed_ip_is_not_reused_until_the_cursor_wraps() {
        let (_tmp, store) = page_cache_store("ipam-wrap");
        let sets = [set("10.244.1.0/24")];
        let locked = store.lock().unwrap();
        for i in 0..3 {
            let o = Owner::new(&format!("c{i}"), "eth0");
            allocate(&locked, &sets, &o, &[], History::MayExist).unwrap();
            locked.release_owner(&o).unwrap();
        }
        let a = alloc(&locked, &sets, "x", &[]).unwrap();
        assert_eq!(a[0].address.ip().to_string(), "10.244.1.5");
    }

    #[test]
    fn dual_stack_rollback_releases_only_new_reservations() {
        let (tmp, store) = page_cache_store("ipam-dual");
        let sets = [set("10.0.0.0/24"), set("fd00::/126")]; // v6: ::2, ::3 usable
        let locked = store.lock().unwrap();
        let a = alloc(&locked, &sets, "a", &[]).unwrap();
        assert_eq!(a[1].address.to_string(), "fd00::2/126");
        assert_eq!(a[1].gateway.to_string(), "fd00::1");
        alloc(&locked, &sets, "b", &[]).unwrap();
        let err = alloc(&locked, &sets, "c", &[]).unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { index: 1, .. }),
            "{err}"
        );
        assert!(
            locked
                .owned_by(&Owner::new("c", "eth0"))
                .unwrap()
                .is_empty(),
            "the v4 IP of the failed ADD was released"
        );
        assert_eq!(locked.reservations().unwrap().len(), 4);
        assert!(tmp.path().join("n/last_reserved_ip.1").exists());
    }

    #[test]
    fn requested_ips() {
        let (_tmp, store) = page_cache_store("ipam-req");
        let sets = [set("10.0.0.0/24")];
        let locked = store.lock().unwrap();
        let a = alloc(&locked, &sets, "a", &["10.0.0.50"]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.50/24");
        let err = alloc(&locked, &sets, "b", &["10.0.0.50"]).unwrap_err();
        assert!(matches!(err, IpamError::RequestedTaken { .. }), "{err}");
        let err = alloc(&locked, &sets, "b", &["10.0.0.1"]).unwrap_err();
        assert!(matches!(err, IpamError::RequestedGateway { .. }), "{err}");
        let err = alloc(&locked, &sets, "b", &["192.168.0.1"]).unwrap_err();
        assert!(matches!(err, IpamError::RequestedUnmatched(_)), "{err}");
        assert!(
            locked
                .owned_by(&Owner::new("b", "eth0"))
                .unwrap()
                .is_empty()
        );
        // Same request again by the holder is idempotent.
        let again = alloc(&locked, &sets, "a", &["10.0.0.50"]).unwrap();
        assert!(!again[0].newly_reserved);
    }

    #[test]
    fn legacy_records_and_other_ifnames() {
        let tmp = temp_dir("ipam-legacy");
        let dir = tmp.path().join("n");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10.0.0.9"), "oldcontainer\n").unwrap();
        let store = Store::new(&dir, Durability::PageCache);
        let locked = store.lock().unwrap();
        let sets = [set("10.0.0.0/24")];
        alloc(&locked, &sets, "c", &[]).unwrap();
        allocate(
            &locked,
            &sets,
            &Owner::new("c", "net1"),
            &[],
            History::MayExist,
        )
        .unwrap();
        assert_eq!(locked.owned_by(&Owner::new("c", "eth0")).unwrap().len(), 1);
        assert_eq!(
            locked
                .owned_by(&Owner::new("oldcontainer", "eth0"))
                .unwrap(),
            vec!["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            locked
                .release_owner(&Owner::new("c", "net1"))
                .unwrap()
                .len(),
            1,
            "only the net1 reservation goes"
        );
        assert_eq!(locked.owned_by(&Owner::new("c", "eth0")).unwrap().len(), 1);
        assert_eq!(
            locked
                .release_owner(&Owner::new("oldcontainer", "eth0"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(parse_record("c\r\neth0"), Some(Owner::new("c", "eth0")));
        assert_eq!(parse_record(""), None);
    }

    #[test]
    fn fsync_durability_writes_the_same_files() {
        let tmp = temp_dir("ipam-fsync");
        let store = Store::new(tmp.path().join("n"), Durability::Fsync);
        let locked = store.lock().unwrap();
        allocate(
            &locked,
            &[set("10.0.0.0/24")],
            &Owner::new("c", "eth0"),
            &[],
            History::MayExist,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("n/10.0.0.2")).unwrap(),
            b"c\r\neth0"
        );
    }

    #[test]
    fn lock_if_exists_creates_nothing() {
        let tmp = temp_dir("ipam-noc");
        let store = Store::new(tmp.path().join("missing"), Durability::PageCache);
        assert!(store.lock_if_exists().unwrap().is_none());
        assert!(!tmp.path().join("missing").exists());
    }

    /// Many threads, each with its own open of `lock` (flock is per open file description, so
    /// threads contend exactly like processes): every IP is handed out once.
    #[test]
    fn concurrent_allocations_never_duplicate() {
        let tmp = temp_dir("ipam-conc");
        let dir = tmp.path().join("n");
        let sets = vec![set("10.9.0.0/24")];
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                let sets = sets.clone();
                std::thread::spawn(move || {
                    let store = Store::new(dir, Durability::PageCache);
                    let mut mine = Vec::new();
                    for i in 0..15 {
                        let locked = store.lock().unwrap();
                        let owner = Owner::new(&format!("t{t}-{i}"), "eth0");
                        let a = allocate(&locked, &sets, &owner, &[], History::MayExist).unwrap();
                        mine.push(a[0].address.ip());
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 240);
        assert_eq!(unique.len(), 240, "duplicate IP handed out");
        let store = Store::new(&dir, Durability::PageCache);
        assert_eq!(store.lock().unwrap().reservations().unwrap().len(), 240);
    }

    #[test]
    fn a_new_attachment_skips_the_walk_and_a_known_one_does_not() {
        let (_tmp, store) = page_cache_store("ipam-hist");
        let sets = [set("10.0.0.0/24")];
        let locked = store.lock().unwrap();
        let o = Owner::new("c", "eth0");
        let first = allocate(&locked, &sets, &o, &[], History::New).unwrap();
        let again = allocate(&locked, &sets, &o, &[], History::MayExist).unwrap();
        assert_eq!(first[0].address, again[0].address);
        assert!(!again[0].newly_reserved);
        // Claiming "new" wrongly costs one extra reservation, never a shared IP, and one
        // release frees both.
        let wrong = allocate(&locked, &sets, &o, &[], History::New).unwrap();
        assert_ne!(wrong[0].address, first[0].address);
        assert_eq!(locked.release_owner(&o).unwrap().len(), 2);
        assert!(locked.reservations().unwrap().is_empty());
    }

    #[test]
    fn reads_long_and_empty_records() {
        let tmp = temp_dir("ipam-long");
        let dir = tmp.path().join("n");
        std::fs::create_dir_all(&dir).unwrap();
        let long = format!("{}\r\neth0", "x".repeat(700));
        std::fs::write(dir.join("10.0.0.7"), &long).unwrap();
        std::fs::write(dir.join("10.0.0.8"), "").unwrap();
        std::fs::write(dir.join("not-an-ip"), "c\r\neth0").unwrap();
        let store = Store::new(&dir, Durability::PageCache);
        let mut r = store.lock().unwrap().reservations().unwrap();
        r.sort();
        assert_eq!(
            r,
            vec![
                ("10.0.0.7".parse().unwrap(), long),
                ("10.0.0.8".parse().unwrap(), String::new())
            ]
        );
    }

    /// A reservation file left empty (its writer was killed between create and write) is
    /// taken over once the range has no other IP, in candidate order; never before.
    #[test]
    fn an_empty_reservation_is_reclaimed_when_the_range_is_full() {
        let tmp = temp_dir("ipam-reclaim");
        let dir = tmp.path().join("n");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10.0.0.4"), "").unwrap();
        let store = Store::new(&dir, Durability::PageCache);
        let locked = store.lock().unwrap();
        let sets = [set("10.0.0.0/29")]; // .2-.6
        let mut got = Vec::new();
        for i in 0..5 {
            let o = Owner::new(&format!("c{i}"), "eth0");
            let a = allocate(&locked, &sets, &o, &[], History::New).unwrap();
            got.push(a[0].address.ip().to_string());
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6", "10.0.0.4"]
        );
        assert_eq!(std::fs::read(dir.join("10.0.0.4")).unwrap(), b"c4\r\neth0");
        assert!(matches!(
            allocate(&locked, &sets, &Owner::new("c5", "eth0"), &[], History::New),
            Err(IpamError::Exhausted { .. })
        ));
        // A requested IP held by an empty file is taken over as well; a real holder's is not.
        locked.release_owner(&Owner::new("c2", "eth0")).unwrap();
        std::fs::write(dir.join("10.0.0.5"), "").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = allocate(
            &locked,
            &sets,
            &Owner::new("r", "eth0"),
            &[ip("10.0.0.5")],
            History::New,
        )
        .unwrap();
        assert_eq!(a[0].address.ip(), ip("10.0.0.5"));
        assert!(matches!(
            allocate(
                &locked,
                &sets,
                &Owner::new("s", "eth0"),
                &[ip("10.0.0.6")],
                History::New
            ),
            Err(IpamError::RequestedTaken { .. })
        ));
    }

    #[test]
    fn symlinks_in_the_store_are_not_followed() {
        let tmp = temp_dir("ipam-links");
        let dir = tmp.path().join("n");
        std::fs::create_dir_all(&dir).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "c\r\neth0").unwrap();
        let link = |name: &str| std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        let store = Store::new(&dir, Durability::PageCache);
        let sets = [set("10.0.0.0/24")];
        let owner = Owner::new("c", "eth0");

        // A reservation that is a symlink: taken, owned by nobody, its target never read.
        link("10.0.0.2");
        {
            let locked = store.lock().unwrap();
            assert_eq!(
                locked.reservations().unwrap(),
                vec![("10.0.0.2".parse().unwrap(), String::new())]
            );
            assert!(locked.owned_by(&owner).unwrap().is_empty());
            let a = allocate(&locked, &sets, &owner, &[], History::MayExist).unwrap();
            assert_eq!(a[0].address.ip().to_string(), "10.0.0.3");
            assert_eq!(locked.release_owner(&owner).unwrap().len(), 1);
        }
        // The cursor and the lock file: the open fails, the target stays as it was.
        std::fs::remove_file(dir.join("last_reserved_ip.0")).unwrap();
        link("last_reserved_ip.0");
        {
            let locked = store.lock().unwrap();
            let e = allocate(&locked, &sets, &owner, &[], History::New).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(locked.owned_by(&owner).unwrap().is_empty(), "rolled back");
        }
        std::fs::remove_file(dir.join("lock")).unwrap();
        link("lock");
        let e = store
            .lock()
            .err()
            .expect("a symlinked lock file is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"c\r\neth0");
    }

    #[test]
    fn cursor_shrinks_and_grows_exactly() {
        let tmp = temp_dir("ipam-cur");
        let p = tmp.path().join("last_reserved_ip.0");
        for text in ["10.244.1.100", "10.244.1.9", "fd00::1234", "10.0.0.2"] {
            write_cursor(&p, text).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        }
    }

    #[test]
    fn resolv_conf_parsing() {
        let dns = parse_resolv_conf(
            "# comment\nnameserver 10.96.0.10\nnameserver 8.8.8.8\nsearch a.local b.local\ndomain x\noptions ndots:5\n",
        );
        assert_eq!(dns.nameservers, ["10.96.0.10", "8.8.8.8"]);
        assert_eq!(dns.search, ["a.local", "b.local"]);
        assert_eq!(dns.domain, "x");
        assert_eq!(dns.options, ["ndots:5"]);
    }
}
