//! The CNI verbs. Each validates all of its input before it changes anything.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::Path;

use serde_json::{Map, Value};

use super::bridge;
use super::config::{BridgeConf, CniArgs, NetConf, Plan, delegate_bytes};
use super::delegate;
use super::env::{self, RuntimeEnv};
use super::ipam::{History, IpamConf, Owner, Store, parse_record};
use super::ipmasq;
use super::state;
use crate::net::MacAddr;
use crate::subnet_env::SubnetEnv;

use super::types::{CniError, CniResult, CniVersion, ErrorCode, version_info};

/// Runs one invocation; `Ok(Some(text))` is printed on stdout.
pub fn run(env: &RuntimeEnv, command: &str, stdin: &[u8]) -> Result<Option<String>, CniError> {
    match env::Command::parse(command)? {
        env::Command::Version => Ok(Some(version_info(
            super::config::peek_version(stdin).as_deref(),
        ))),
        env::Command::Add => add(env, stdin).map(Some),
        env::Command::Del => del(env, stdin).map(|()| None),
        env::Command::Check => check(env, stdin).map(|()| None),
        env::Command::Gc => gc(env, stdin).map(|()| None),
        env::Command::Status => status(env, stdin).map(|()| None),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::internal("cannot start the async runtime").with_details(e.to_string())
        })
}

fn check_flanneld_hint(path: &Path) -> String {
    format!(
        "check the flanneld pod on this node (it writes {} once it has a subnet lease) and its log",
        path.display()
    )
}

/// subnet.env as written by flanneld. Missing or broken means the daemon is not ready yet:
/// a transient condition for ADD (code 11).
fn load_subnet_env(path: &Path, code: ErrorCode) -> Result<SubnetEnv, CniError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(CniError::new(
                code,
                format!(
                    "{} does not exist: flanneld is not ready on this node; {}",
                    path.display(),
                    check_flanneld_hint(path)
                ),
            ));
        }
        Err(e) => {
            return Err(CniError::new(
                code,
                format!(
                    "cannot read {}; {}",
                    path.display(),
                    check_flanneld_hint(path)
                ),
            )
            .with_details(e.to_string()));
        }
    };
    SubnetEnv::parse(&text).map_err(|e| {
        CniError::new(
            code,
            format!(
                "{} is invalid ({e}); {}",
                path.display(),
                check_flanneld_hint(path)
            ),
        )
    })
}

fn cni_args(env: &RuntimeEnv) -> Result<CniArgs, CniError> {
    CniArgs::parse(env.args.as_deref().unwrap_or(""))
}

fn ipam_section(delegate: &Map<String, Value>) -> Map<String, Value> {
    delegate
        .get("ipam")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn fsync_wanted(delegate: &Map<String, Value>) -> bool {
    ipam_section(delegate).get("fsync").and_then(Value::as_bool) == Some(true)
}

fn ipam_config_error(e: super::ipam::IpamError) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, e.to_string())
}

fn state_error(e: state::StateError) -> CniError {
    CniError::new(ErrorCode::Io, e.to_string())
}

/// What ADD will do, decided before anything is changed.
enum Prepared {
    Native {
        bridge: Box<BridgeConf>,
        ipam: IpamConf,
        mac: Option<MacAddr>,
        requested: Vec<std::net::IpAddr>,
    },
    Exec {
        plugin: std::path::PathBuf,
    },
}

fn prepare(
    delegate: &Map<String, Value>,
    name: &str,
    env: &RuntimeEnv,
    args: &CniArgs,
) -> Result<Prepared, CniError> {
    let bridge = BridgeConf::from_delegate(delegate)?;
    match bridge.plan() {
        Plan::Native => {
            let ipam = IpamConf::from_ipam(name, &bridge.ipam).map_err(ipam_config_error)?;
            let mac = match bridge.requested_mac(args) {
                None => None,
                Some(m) => Some(m.parse::<MacAddr>().map_err(|_| {
                    CniError::new(
                        ErrorCode::InvalidNetworkConfig,
                        format!("invalid MAC address {m:?} requested for the container interface"),
                    )
                })?),
            };
            let requested = bridge.requested_ips(args)?;
            Ok(Prepared::Native {
                bridge: Box::new(bridge),
                ipam,
                mac,
                requested,
            })
        }
        Plan::Exec { plugin, reason } => {
            tracing::debug!(plugin, reason, "delegating to an external plugin");
            Ok(Prepared::Exec {
                plugin: delegate::find(&plugin, env)?,
            })
        }
    }
}

fn add(env: &RuntimeEnv, stdin: &[u8]) -> Result<String, CniError> {
    let at = env::require_attachment(env)?;
    let conf = NetConf::parse(stdin)?;
    let args = cni_args(env)?;
    let netns = env::open_netns(env)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let subnet_env = load_subnet_env(&conf.subnet_file, ErrorCode::TryAgainLater)?;
    let delegate = conf.render_delegate(&subnet_env)?;
    let bytes = delegate_bytes(&delegate);
    let prepared = prepare(&delegate, &conf.name, env, &args)?;

    let mut native = match &prepared {
        Prepared::Native { .. } => Some(runtime()?),
        Prepared::Exec { .. } => None,
    };

    // First side effect: the DEL record, locked for the whole ADD (a DEL or another ADD for
    // this container waits), so even a crash mid-ADD leaves DEL what it needs.
    let mut record = lock_record(&conf, &at.container_id)?;
    let history = if record.is_new() {
        History::New
    } else {
        History::MayExist
    };
    record
        .write(&bytes, fsync_wanted(&delegate))
        .map_err(state_error)?;

    let outcome: Result<String, (CniError, bool)> = match &prepared {
        Prepared::Native {
            bridge,
            ipam,
            mac,
            requested,
        } => {
            let attach = at.in_netns(&conf.name, &netns, &netns_path);
            match native.take() {
                None => Err((CniError::internal("native path not prepared"), true)),
                Some(rt) => bridge::add(&rt, bridge, ipam, &attach, *mac, requested, history)
                    .map(|mut result| {
                        let dns = bridge.dns.clone().filter(|d| !d.is_empty());
                        result.dns = match dns {
                            Some(d) => d,
                            None => ipam.dns().unwrap_or_default(),
                        };
                        result.render(conf.version)
                    })
                    .map_err(|f| {
                        let mut err = CniError::from(f.error);
                        if !f.undo_errors.is_empty() {
                            err = err.with_details(format!(
                                "undo incomplete, DEL will retry: {}",
                                f.undo_errors.join("; ")
                            ));
                        }
                        (err, f.rolled_back)
                    }),
            }
        }
        Prepared::Exec { plugin } => match delegate::exec(plugin, "ADD", env, &bytes) {
            Ok(out) => Ok(render_delegate_result(&out, conf.version)),
            Err(e) => {
                // Like a runtime would: DEL what the failed ADD may have left.
                let cleaned = delegate::exec(plugin, "DEL", env, &bytes).is_ok();
                Err((e, cleaned))
            }
        },
    };
    match outcome {
        Ok(out) => Ok(out),
        Err((err, clean)) => {
            if clean {
                if let Err(e) = record.revert() {
                    tracing::error!(error = %e, "cannot remove the DEL record of a failed ADD");
                }
            } else {
                tracing::warn!(
                    container_id = at.container_id,
                    "ADD failed and was not fully undone; keeping the DEL record"
                );
            }
            Err(err)
        }
    }
}

/// A delegate's result in the request's version (upstream prints it via `PrintResult`).
fn render_delegate_result(stdout: &[u8], version: CniVersion) -> String {
    serde_json::from_slice::<Value>(stdout)
        .ok()
        .and_then(|v| CniResult::parse(&v).ok())
        .map(|r| r.render(version))
        .unwrap_or_else(|| String::from_utf8_lossy(stdout).into_owned())
}

/// The container's record, locked (see [`state`]): ADD and DEL hold it from start to end.
fn lock_record(conf: &NetConf, container_id: &str) -> Result<state::Record, CniError> {
    match state::lock(&conf.data_dir, container_id, state::Acquire::Wait) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(CniError::internal("record lock not taken")),
        Err(e) => Err(state_error(e)),
    }
}

/// The delegate config DEL and CHECK replay: the saved one, or (when there is none, or it is
/// unreadable) one rendered from the current config. `None` when neither is possible.
fn replay_delegate(
    conf: &NetConf,
    container_id: &str,
    saved: Option<&[u8]>,
) -> Result<Option<Map<String, Value>>, CniError> {
    if let Some(bytes) = saved {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => return Ok(Some(m)),
            _ => tracing::warn!(
                container_id,
                "DEL record is not a JSON object; falling back to the current config"
            ),
        }
    }
    match load_subnet_env(&conf.subnet_file, ErrorCode::TryAgainLater) {
        Ok(env) => Ok(Some(conf.render_delegate(&env)?)),
        Err(_) => Ok(fallback_native_delegate(conf)),
    }
}

/// Without subnet.env and without a record, the native path can still release by
/// (container, ifname) and delete the interface: it needs only names and directories.
fn fallback_native_delegate(conf: &NetConf) -> Option<Map<String, Value>> {
    let delegate_type = conf
        .delegate
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge");
    let ipam = conf.ipam.clone().unwrap_or_default();
    let ipam_type = ipam
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("host-local");
    if delegate_type != "bridge" || ipam_type != "host-local" {
        return None;
    }
    let mut d = conf.delegate.clone();
    d.insert("name".into(), Value::String(conf.name.clone()));
    d.insert("type".into(), Value::String("bridge".into()));
    let mut ipam = ipam;
    ipam.insert("type".into(), Value::String("host-local".into()));
    d.insert("ipam".into(), Value::Object(ipam));
    Some(d)
}

fn del(env: &RuntimeEnv, stdin: &[u8]) -> Result<(), CniError> {
    let at = env::require_attachment(env)?;
    let conf = NetConf::parse(stdin)?;
    cni_args(env)?;
    let netns = env::open_netns_for_del(env)?;
    // Held to the end: an ADD for this container waits, so nothing DEL releases can be an IP
    // that ADD has reserved and is about to configure, nor the record it just wrote.
    let record = lock_record(&conf, &at.container_id)?;
    let delegate = replay_delegate(&conf, &at.container_id, record.saved())?;
    let Some(delegate) = delegate else {
        return Ok(());
    };
    let bridge = BridgeConf::from_delegate(&delegate)?;
    match bridge.plan() {
        Plan::Native => {
            let ipam = IpamConf::for_release(&conf.name, &bridge.ipam);
            runtime()?
                .block_on(bridge::del(
                    &bridge,
                    &ipam,
                    &conf.name,
                    &at.container_id,
                    &at.ifname,
                    netns.as_ref(),
                ))
                .map_err(CniError::from)?;
        }
        Plan::Exec { plugin, .. } => {
            let path = delegate::find(&plugin, env)?;
            delegate::exec(&path, "DEL", env, &delegate_bytes(&delegate))?;
        }
    }
    // Only now, with everything torn down, may the record go.
    record.remove().map_err(state_error)
}

/// The config of a verb that came with a later CNI version: refused where the config's
/// version predates `verb`.
fn parse_for_verb(
    stdin: &[u8],
    verb: &str,
    allows: fn(CniVersion) -> bool,
) -> Result<NetConf, CniError> {
    let conf = NetConf::parse(stdin)?;
    if !allows(conf.version) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("config version does not allow {verb}"),
        ));
    }
    Ok(conf)
}

fn check(env: &RuntimeEnv, stdin: &[u8]) -> Result<(), CniError> {
    let conf = parse_for_verb(stdin, "CHECK", CniVersion::allows_check)?;
    let at = env::require_attachment(env)?;
    cni_args(env)?;
    let netns = env::open_netns(env)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let prev_value = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "CHECK needs prevResult in the config",
        )
    })?;
    let prev = CniResult::parse(&prev_value)?;
    let saved = state::read(&conf.data_dir, &at.container_id).map_err(state_error)?;
    let delegate = replay_delegate(&conf, &at.container_id, saved.as_deref())?;
    let Some(mut delegate) = delegate else {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("no state for container {}", at.container_id),
        ));
    };
    let bridge = BridgeConf::from_delegate(&delegate)?;
    match bridge.plan() {
        Plan::Native => {
            let ipam = IpamConf::from_ipam(&conf.name, &bridge.ipam).map_err(ipam_config_error)?;
            let attach = at.in_netns(&conf.name, &netns, &netns_path);
            runtime()?
                .block_on(bridge::check(&bridge, &ipam, &attach, &prev))
                .map_err(CniError::from)
        }
        Plan::Exec { plugin, .. } => {
            let path = delegate::find(&plugin, env)?;
            delegate.insert("prevResult".into(), prev_value);
            delegate.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
            delegate::exec(&path, "CHECK", env, &delegate_bytes(&delegate)).map(|_| ())
        }
    }
}

/// True for a delegate's answer meaning "I do not know this verb" (plugins older than 1.1.0).
fn verb_unsupported(e: &CniError) -> bool {
    e.code == ErrorCode::IncompatibleVersion.code()
        || (e.code == ErrorCode::InvalidEnvironment.code() && e.msg.contains("unknown CNI_COMMAND"))
}

/// The reservations in `store` of attachments not in the valid list: (IP, raw content).
fn gc_candidates(
    store: &Store,
    valid_ids: &HashSet<&str>,
    valid_pairs: &HashSet<(String, String)>,
) -> Result<Vec<(std::net::IpAddr, String)>, super::ipam::IpamError> {
    let Some(locked) = store.lock_if_exists()? else {
        return Ok(Vec::new());
    };
    let mut stale = locked.reservations()?;
    stale.retain(|(_, content)| match parse_record(content) {
        Some(Owner {
            container_id,
            ifname,
        }) if ifname.is_empty() => !valid_ids.contains(container_id.as_str()),
        Some(Owner {
            container_id,
            ifname,
        }) => !valid_pairs.contains(&(container_id, ifname)),
        None => true,
    });
    Ok(stale)
}

fn gc(env: &RuntimeEnv, stdin: &[u8]) -> Result<(), CniError> {
    let conf = parse_for_verb(stdin, "GC", CniVersion::allows_gc_and_status)?;
    // Without the list, "release everything not listed" would release everything.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments in the config",
        )
    })?;
    let valid_pairs: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let subnet_env = load_subnet_env(&conf.subnet_file, ErrorCode::TryAgainLater).ok();
    let current = match &subnet_env {
        Some(e) => Some(conf.render_delegate(e)?),
        None => fallback_native_delegate(&conf),
    };
    let mut errors: Vec<String> = Vec::new();

    // Reservation directories: the current config's, and those named by stale records.
    let mut dirs: Vec<(IpamConf, bool)> = Vec::new();
    let mut add_dir = |delegate: &Map<String, Value>| {
        let Ok(b) = BridgeConf::from_delegate(delegate) else {
            return;
        };
        if b.plan() != Plan::Native {
            return;
        }
        let ipam = IpamConf::for_release(&conf.name, &b.ipam);
        if !dirs.iter().any(|(d, _)| d.dir == ipam.dir) {
            dirs.push((ipam, b.ip_masq));
        }
    };
    if let Some(d) = &current {
        add_dir(d);
    }
    let records = state::list(&conf.data_dir).map_err(state_error)?;
    let mut stale_records = Vec::new();
    for cid in records {
        if valid_ids.contains(cid.as_str()) {
            continue;
        }
        // A record someone holds belongs to an ADD or DEL in progress: not stale (yet).
        let record = match state::lock(&conf.data_dir, &cid, state::Acquire::TryExisting) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let delegate = record
            .saved()
            .and_then(|b| match serde_json::from_slice::<Value>(b) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            });
        match delegate {
            Some(d) if d.get("name").and_then(Value::as_str) == Some(conf.name.as_str()) => {
                add_dir(&d);
                stale_records.push(record);
            }
            // Records of other networks sharing the directory are not ours to judge.
            Some(_) => {}
            None => stale_records.push(record),
        }
    }

    let mut rt = None;
    for (ipam, ip_masq) in &dirs {
        let store = Store::new(&ipam.dir, ipam.durability);
        let stale = match gc_candidates(&store, &valid_ids, &valid_pairs) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if stale.is_empty() {
            continue;
        }
        // Masquerade rules before the reservation (which names the IP; see bridge::del),
        // outside the store lock (iptables is slow and ADDs wait for that lock).
        let mut releasable = Vec::new();
        for (ip, content) in stale {
            let owner = parse_record(&content);
            if *ip_masq
                && let Some(owner) = &owner
                && let Ok(net) = ipam.pod_network(ip)
            {
                let rt = match &rt {
                    Some(rt) => rt,
                    None => rt.insert(runtime()?),
                };
                if let Err(e) = rt.block_on(ipmasq::teardown(
                    net,
                    &ipmasq::chain_name(&conf.name, &owner.container_id),
                    &ipmasq::comment(&conf.name, &owner.container_id),
                )) {
                    errors.push(e.to_string());
                    continue;
                }
            }
            releasable.push((ip, content));
        }
        let locked = match store.lock_if_exists() {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for (ip, content) in releasable {
            tracing::info!(%ip, owner = content.trim(), dir = %ipam.dir.display(), "GC releases reservation");
            // Between the two locks its owner may have released it and another taken it.
            if let Err(e) = locked.remove_if_unchanged(ip, &content) {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        for record in stale_records {
            if let Err(e) = record.remove() {
                errors.push(e.to_string());
            }
        }
    }

    // Forward to an external delegate, like the spec asks; ones that predate GC are fine.
    if let Some(d) = &current
        && let Ok(b) = BridgeConf::from_delegate(d)
        && let Plan::Exec { plugin, .. } = b.plan()
    {
        let mut d = d.clone();
        if let Some(v) = conf.valid_attachments.as_ref() {
            let list = serde_json::to_value(
                v.iter()
                    .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_default();
            d.insert("cni.dev/valid-attachments".into(), list.clone());
            d.insert("cni.dev/attachments".into(), list);
        }
        match delegate::find(&plugin, env)
            .and_then(|p| delegate::exec(&p, "GC", env, &delegate_bytes(&d)))
        {
            Ok(_) => {}
            Err(e) if verb_unsupported(&e) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::internal("GC finished with errors").with_details(errors.join("; ")))
    }
}

fn status(env: &RuntimeEnv, stdin: &[u8]) -> Result<(), CniError> {
    let conf = parse_for_verb(stdin, "STATUS", CniVersion::allows_gc_and_status)?;
    let subnet_env = load_subnet_env(&conf.subnet_file, ErrorCode::PluginNotAvailable)?;
    let delegate = conf.render_delegate(&subnet_env)?;
    let bridge = BridgeConf::from_delegate(&delegate)?;
    if let Plan::Exec { plugin, .. } = bridge.plan() {
        let path = delegate::find(&plugin, env)
            .map_err(|e| CniError::new(ErrorCode::PluginNotAvailable, e.msg))?;
        match delegate::exec(&path, "STATUS", env, &delegate_bytes(&delegate)) {
            Ok(_) => {}
            Err(e) if verb_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "frs-cmd-{}-{tag}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn missing_subnet_env_is_try_again_with_a_helpful_message() {
        let dir = tmp("senv");
        let path = dir.join("subnet.env");
        let err = load_subnet_env(&path, ErrorCode::TryAgainLater).unwrap_err();
        assert_eq!(err.code, 11);
        assert!(err.msg.contains(&path.display().to_string()), "{err}");
        assert!(err.msg.contains("flanneld pod on this node"), "{err}");
        std::fs::write(&path, "FLANNEL_MTU=x\n").unwrap();
        let err = load_subnet_env(&path, ErrorCode::PluginNotAvailable).unwrap_err();
        assert_eq!(err.code, 50);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn version_needs_no_environment() {
        let out = run(
            &RuntimeEnv::default(),
            "VERSION",
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .unwrap()
        .unwrap();
        assert!(out.contains(r#""cniVersion":"0.4.0""#), "{out}");
        assert_eq!(run(&RuntimeEnv::default(), "FOO", b"").unwrap_err().code, 4);
    }
}
