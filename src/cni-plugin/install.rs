//! `flannel install`: what the DaemonSet's init containers run instead of upstream's `cp -f`
//! and `install-conf`. It puts this very executable into the CNI bin dir and/or the conflist
//! into the CNI conf dir.
//!
//! Each file is written as a temp file in the target directory, fsync'd, renamed over the
//! target and the directory fsync'd: kubelet never execs a half-written plugin and the runtime
//! never reads a half-written conflist, even across a crash. A target that already holds the
//! same bytes and mode is not written at all. The conflist is validated (JSON, `plugins`, first
//! plugin `flannel` with a config this plugin accepts) before the conf dir is touched.
//!
//! Needs no shell or coreutils in the image. As `install-conf SRC DST` (the name of upstream's
//! tool, e.g. through a symlink) it installs a conflist like upstream's, so the stock
//! manifest's init container works with this image too.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;
use thiserror::Error;

use super::config::NetConf;

/// Default CNI binary directory (kubelet's and the stock manifest's).
pub const DEFAULT_PLUGIN_DIR: &str = "/opt/cni/bin";
/// Default CNI config directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Default conflist file name (the stock manifest's).
pub const DEFAULT_CONF_NAME: &str = "10-flannel.conflist";

/// `flannel install [--plugin-dir DIR] [--conflist SRC [--conf-dir DIR] [--conf-name NAME]]`
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "flannel install",
    about = "Install the flannel CNI plugin and/or its conflist atomically and idempotently",
    long_about = None
)]
pub struct InstallArgs {
    /// Install this executable as `<DIR>/<--plugin-name>`.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// File name of the installed plugin.
    #[arg(long, default_value = "flannel")]
    pub plugin_name: String,
    /// Conflist to validate and install (the ConfigMap's cni-conf.json).
    #[arg(long, value_name = "SRC")]
    pub conflist: Option<PathBuf>,
    /// Directory the conflist is installed into.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
    /// File name of the installed conflist.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONF_NAME)]
    pub conf_name: String,
}

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: invalid conflist: {reason}; {target} left unchanged")]
    InvalidConflist {
        path: PathBuf,
        reason: String,
        target: PathBuf,
    },
    #[error("{0:?} is not a plain file name")]
    BadName(String),
    #[error("nothing to install: give --plugin-dir and/or --conflist")]
    NothingToDo,
    #[error("{0}")]
    Usage(String),
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Unchanged,
}

/// Checks a conflist the way the runtime and this plugin will read it: a JSON object with a
/// `name`, a `cniVersion` and a non-empty `plugins` list of objects with a `type`, the first
/// one `flannel`, whose config (with the list's name and version, as libcni passes it) this
/// plugin accepts. The error is one line.
pub fn validate_conflist(bytes: &[u8]) -> Result<(), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(list) = value else {
        return Err("not a JSON object".into());
    };
    let name = match list.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("no network \"name\"".into()),
    };
    let version = match list.get("cniVersion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("no \"cniVersion\"".into()),
    };
    let plugins = match list.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) => return Err("\"plugins\" is empty".into()),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => return Err("no \"plugins\" (a single-plugin .conf is not a conflist)".into()),
    };
    for (i, plugin) in plugins.iter().enumerate() {
        match plugin.get("type") {
            Some(Value::String(t)) if !t.is_empty() => {}
            _ => return Err(format!("plugins[{i}] has no \"type\"")),
        }
    }
    let first = plugins[0]["type"].as_str().unwrap_or_default();
    if first != "flannel" {
        return Err(format!(
            "the first plugin is {first:?}, expected \"flannel\""
        ));
    }
    let mut flannel = plugins[0].as_object().cloned().unwrap_or_default();
    flannel.insert("name".into(), Value::String(name));
    flannel.insert("cniVersion".into(), Value::String(version));
    let bytes = serde_json::to_vec(&flannel).map_err(|e| e.to_string())?;
    NetConf::parse(&bytes).map_err(|e| format!("plugins[0] (flannel): {}", e.msg))?;
    Ok(())
}

fn plain_name(name: &str) -> Result<&str, InstallError> {
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    if ok {
        Ok(name)
    } else {
        Err(InstallError::BadName(name.to_string()))
    }
}

/// Writes `bytes` to `dir/name` with `mode` atomically; does nothing when the file already has
/// exactly these bytes and this mode.
pub fn install_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<Outcome, InstallError> {
    let target = dir.join(plain_name(name)?);
    if let Ok(meta) = fs::metadata(&target)
        && meta.is_file()
        && meta.len() == bytes.len() as u64
        && meta.permissions().mode() & 0o7777 == mode
        && fs::read(&target).is_ok_and(|old| old == bytes)
    {
        return Ok(Outcome::Unchanged);
    }
    fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
    // A dot name: the runtime only loads *.conf/*.conflist/*.json, and a crash leaves at most
    // this temp file, which the next run's rename does not depend on.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir, "create temp file"))?;
    tmp.write_all(bytes).map_err(io(tmp.path(), "write"))?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(io(&target, "chmod"))?;
    tmp.as_file().sync_all().map_err(io(&target, "fsync"))?;
    tmp.persist(&target).map_err(|e| InstallError::Io {
        path: target.clone(),
        what: "rename into place",
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))?;
    Ok(Outcome::Installed)
}

/// Validates `src` and installs it as `dir/name` (0644). An invalid conflist leaves the
/// directory untouched (not even created).
pub fn install_conflist(src: &Path, dir: &Path, name: &str) -> Result<Outcome, InstallError> {
    let bytes = fs::read(src).map_err(io(src, "read"))?;
    let target = dir.join(plain_name(name)?);
    validate_conflist(&bytes).map_err(|reason| InstallError::InvalidConflist {
        path: src.to_path_buf(),
        reason,
        target: target.clone(),
    })?;
    install_file(dir, name, &bytes, 0o644)
}

/// Installs the running executable as `dir/name` (0755).
pub fn install_self(dir: &Path, name: &str) -> Result<Outcome, InstallError> {
    // /proc/self/exe is the file we were exec'd from, wherever the image put us.
    let exe = Path::new("/proc/self/exe");
    let bytes = fs::read(exe).map_err(io(exe, "read own executable"))?;
    install_file(dir, name, &bytes, 0o755)
}

/// Runs `flannel install` with the arguments after `install`; one line per target on stdout.
pub fn run(args: InstallArgs) -> Result<Vec<(PathBuf, Outcome)>, InstallError> {
    if args.plugin_dir.is_none() && args.conflist.is_none() {
        return Err(InstallError::NothingToDo);
    }
    // Validate before touching anything, so a bad conflist installs no plugin either.
    let conflist = match &args.conflist {
        Some(src) => {
            let bytes = fs::read(src).map_err(io(src, "read"))?;
            validate_conflist(&bytes).map_err(|reason| InstallError::InvalidConflist {
                path: src.clone(),
                reason,
                target: args.conf_dir.join(&args.conf_name),
            })?;
            Some(bytes)
        }
        None => None,
    };
    let mut done = Vec::new();
    if let Some(dir) = &args.plugin_dir {
        let outcome = install_self(dir, &args.plugin_name)?;
        done.push((dir.join(&args.plugin_name), outcome));
    }
    if let Some(bytes) = conflist {
        let outcome = install_file(&args.conf_dir, &args.conf_name, &bytes, 0o644)?;
        done.push((args.conf_dir.join(&args.conf_name), outcome));
    }
    Ok(done)
}

/// Parses `install …` (`argv[1..]`, starting with "install") or upstream's `install-conf SRC
/// DST` (`argv[0]` ends in `install-conf`).
pub fn parse(argv: &[OsString]) -> Result<InstallArgs, clap::Error> {
    InstallArgs::try_parse_from(argv)
}

/// `install-conf SRC DST` as upstream's tool: DST's directory and file name.
pub fn from_install_conf(argv: &[OsString]) -> Result<InstallArgs, InstallError> {
    let [_, src, dst] = argv else {
        return Err(InstallError::Usage(
            "usage: install-conf SRC DST".to_string(),
        ));
    };
    let dst = Path::new(dst);
    let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(InstallError::Usage(format!(
            "install-conf: {} is not a file path",
            dst.display()
        )));
    };
    Ok(InstallArgs {
        plugin_dir: None,
        plugin_name: "flannel".into(),
        conflist: Some(PathBuf::from(src)),
        conf_dir: dir.to_path_buf(),
        conf_name: name.to_string_lossy().into_owned(),
    })
}

/// Whether this process should act as the installer rather than as a CNI plugin: never when
/// `CNI_COMMAND` is set (runtimes set it on every call), else when the first argument is
/// `install` or the program is called `install-conf`.
pub fn wants_install(cni_command: Option<&str>, argv: &[OsString]) -> Option<Mode> {
    if cni_command.is_some() {
        return None;
    }
    let called_as_install_conf = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "install-conf");
    if called_as_install_conf {
        return Some(Mode::InstallConf);
    }
    (argv.get(1).is_some_and(|a| a == "install")).then_some(Mode::Install)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    InstallConf,
}

/// The `flannel install` / `install-conf` process: prints what it did, one line per target;
/// on failure one line on stderr and exit 1.
pub fn main_entry(mode: Mode, argv: Vec<OsString>) -> std::process::ExitCode {
    let args = match mode {
        Mode::Install => match parse(&argv[1..]) {
            Ok(a) => a,
            Err(e) => e.exit(),
        },
        Mode::InstallConf => match from_install_conf(&argv) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    match run(args) {
        Ok(done) => {
            for (path, outcome) in done {
                match outcome {
                    Outcome::Installed => println!("installed {}", path.display()),
                    Outcome::Unchanged => {
                        println!("unchanged {} (same content, not written)", path.display())
                    }
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flannel install: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOCK: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[
        {"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn the_stock_conflist_is_valid() {
        assert_eq!(validate_conflist(STOCK.as_bytes()), Ok(()));
    }

    #[test]
    fn bad_conflists_are_refused_with_one_line() {
        let cases = [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}"#,
                "no network \"name\"",
            ),
            (
                r#"{"name":"cbr0","plugins":[{"type":"flannel"}]}"#,
                "no \"cniVersion\"",
            ),
            (r#"{"name":"cbr0","cniVersion":"0.3.1"}"#, "no \"plugins\""),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":{}}"#,
                "not a list",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{}]}"#,
                "plugins[1] has no \"type\"",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"bridge"},{"type":"flannel"}]}"#,
                "the first plugin is \"bridge\", expected \"flannel\"",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"ipam":{}}}]}"#,
                "plugins[0] (flannel): \"delegate\" must not contain \"ipam\"",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.1.0","plugins":[{"type":"flannel"}]}"#,
                "plugins[0] (flannel)",
            ),
        ];
        for (conflist, expected) in cases {
            let err = validate_conflist(conflist.as_bytes()).expect_err(conflist);
            assert!(
                err.contains(expected),
                "{conflist}: {err:?} lacks {expected:?}"
            );
            assert!(!err.contains('\n'), "{conflist}: {err:?} is not one line");
        }
    }

    #[test]
    fn cni_command_always_means_cni() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            wants_install(Some("ADD"), &argv(&["flannel", "install"])),
            None
        );
        assert_eq!(
            wants_install(Some("VERSION"), &argv(&["install-conf", "a", "b"])),
            None
        );
        assert_eq!(wants_install(None, &argv(&["flannel"])), None);
        assert_eq!(wants_install(None, &argv(&["flannel", "--help"])), None);
        assert_eq!(
            wants_install(
                None,
                &argv(&["/opt/bin/flannel", "install", "--plugin-dir=/x"])
            ),
            Some(Mode::Install)
        );
        assert_eq!(
            wants_install(None, &argv(&["/opt/bin/install-conf", "a", "b"])),
            Some(Mode::InstallConf)
        );
    }

    #[test]
    fn install_args_parse_with_defaults() {
        let argv: Vec<OsString> = ["install", "--conflist=/etc/kube-flannel/cni-conf.json"]
            .iter()
            .map(OsString::from)
            .collect();
        let a = parse(&argv).expect("parses");
        assert_eq!(a.plugin_dir, None);
        assert_eq!(a.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
        assert_eq!(a.conf_name, DEFAULT_CONF_NAME);
        let a = from_install_conf(
            &[
                "install-conf",
                "/src.json",
                "/etc/cni/net.d/10-flannel.conflist",
            ]
            .map(OsString::from),
        )
        .expect("parses");
        assert_eq!(a.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(a.conf_name, "10-flannel.conflist");
        assert!(from_install_conf(&["install-conf", "/src.json"].map(OsString::from)).is_err());
    }

    #[test]
    fn install_file_writes_once_and_leaves_no_temp_file() {
        let dir = crate::test_util::temp_dir("install");
        let target_dir = dir.path().join("bin");
        let install = |bytes: &[u8], mode| install_file(&target_dir, "p", bytes, mode).ok();
        assert_eq!(install(b"one", 0o755), Some(Outcome::Installed));
        assert_eq!(install(b"one", 0o755), Some(Outcome::Unchanged));
        // Same bytes, other mode: rewritten.
        assert_eq!(install(b"one", 0o644), Some(Outcome::Installed));
        assert_eq!(install(b"two", 0o644), Some(Outcome::Installed));
        assert_eq!(fs::read(target_dir.join("p")).expect("read"), b"two");
        let mode = fs::metadata(target_dir.join("p"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o644);
        let names: Vec<_> = fs::read_dir(&target_dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("p")]);
        assert!(matches!(
            install_file(&target_dir, "../p", b"x", 0o644),
            Err(InstallError::BadName(_))
        ));
    }

    #[test]
    fn an_invalid_conflist_leaves_the_conf_dir_alone() {
        let dir = crate::test_util::temp_dir("install");
        let src = dir.path().join("cni-conf.json");
        let conf_dir = dir.path().join("net.d");
        fs::write(&src, STOCK).expect("write");
        assert_eq!(
            install_conflist(&src, &conf_dir, DEFAULT_CONF_NAME).ok(),
            Some(Outcome::Installed)
        );
        let installed = conf_dir.join(DEFAULT_CONF_NAME);
        let before = fs::metadata(&installed)
            .expect("stat")
            .modified()
            .expect("mtime");
        fs::write(
            &src,
            r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"portmap"}]}"#,
        )
        .expect("write");
        let err = install_conflist(&src, &conf_dir, DEFAULT_CONF_NAME).expect_err("invalid");
        let line = err.to_string();
        assert!(
            line.contains("expected \"flannel\"") && line.contains("left unchanged"),
            "{line}"
        );
        assert_eq!(fs::read_to_string(&installed).expect("read"), STOCK);
        assert_eq!(
            fs::metadata(&installed)
                .expect("stat")
                .modified()
                .expect("mtime"),
            before
        );
        // Nothing was created for a bad conflist in a fresh dir either.
        let fresh = dir.path().join("fresh");
        assert!(install_conflist(&src, &fresh, DEFAULT_CONF_NAME).is_err());
        assert!(!fresh.exists());
    }
}
