//! Exec'ing another CNI plugin from `CNI_PATH`, for delegate configs the native path does not
//! implement (a delegate type other than `bridge`, an IPAM other than `host-local`, exotic
//! bridge options). Same contract as libcni's `invoke`: the same environment with
//! `CNI_COMMAND` set, the config on stdin, the result or error JSON on stdout, stderr passed
//! through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::env::RuntimeEnv;
use super::types::{CniError, ErrorCode};

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, env: &RuntimeEnv) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("invalid delegate plugin type {plugin:?}"),
        ));
    }
    let dirs = env.search_path();
    if dirs.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_PATH is not set: it is needed to find the delegate plugin {plugin:?}"),
        ));
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("failed to find plugin {plugin:?} in path {dirs:?}"),
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `plugin` for `command` with `stdin`; returns its stdout on success, its error (or a
/// description of how it failed) otherwise.
pub fn exec(
    plugin: &Path,
    command: &str,
    env: &RuntimeEnv,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The runtime's other variables are inherited; make sure what we validated is what it sees.
    for (key, value) in [
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ] {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let mut child = cmd.spawn().map_err(|e| {
        CniError::internal(format!(
            "failed to run delegate plugin {}",
            plugin.display()
        ))
        .with_details(e.to_string())
    })?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe; its exit status tells.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::internal(format!(
            "failed to wait for delegate plugin {}",
            plugin.display()
        ))
        .with_details(e.to_string())
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(
        CniError::from_plugin_output(&out.stdout).unwrap_or_else(|| {
            CniError::internal(format!(
                "delegate plugin {} {command} failed ({})",
                plugin.display(),
                out.status
            ))
            .with_details(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_dir(tag: &str, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "frs-deleg-{}-{tag}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn finds_runs_and_relays_errors() {
        let dir = script_dir(
            "run",
            "fake",
            "#!/bin/sh\nin=$(cat)\nif [ \"$CNI_COMMAND\" = ADD ]; then printf '{\"got\":%s,\"cmd\":\"%s\",\"if\":\"%s\"}' \"$in\" \"$CNI_COMMAND\" \"$CNI_IFNAME\"; exit 0; fi\nprintf '{\"code\":7,\"msg\":\"nope\"}'; exit 1\n",
        );
        let env = RuntimeEnv {
            path: Some(format!("/nonexistent:{}", dir.display())),
            ifname: Some("eth0".into()),
            ..Default::default()
        };
        let p = find("fake", &env).unwrap();
        let out = exec(&p, "ADD", &env, b"{\"x\":1}").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["got"]["x"], 1);
        assert_eq!(v["if"], "eth0");
        let err = exec(&p, "DEL", &env, b"{}").unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (7, "nope"));
        assert_eq!(find("missing", &env).unwrap_err().code, 7);
        assert_eq!(find("../fake", &env).unwrap_err().code, 7);
        assert_eq!(find("fake", &RuntimeEnv::default()).unwrap_err().code, 4);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
