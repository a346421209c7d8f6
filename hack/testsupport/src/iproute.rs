//! The reference the benchmarks compare against: iproute2's own batch mode.

use std::path::Path;

/// `ip -batch` or `bridge -batch` failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("run {tool} -batch: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} -batch {file}: {stderr}")]
    Failed {
        tool: String,
        file: String,
        stderr: String,
    },
}

/// Runs `tool -n NETNS -batch FILE` (`tool` is `ip` or `bridge`): one process, one netlink
/// socket, one request after another — what iproute2 itself can do.
pub async fn batch(netns: &str, tool: &str, file: &Path) -> Result<(), BatchError> {
    let out = tokio::process::Command::new(tool)
        .args(["-n", netns, "-batch"])
        .arg(file)
        .output()
        .await
        .map_err(|source| BatchError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(BatchError::Failed {
            tool: tool.to_string(),
            file: file.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
