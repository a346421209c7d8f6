//! Masquerading for pods when the delegate config has `ipMasq: true` (flanneld runs without
//! `--ip-masq`). Same iptables layout as the reference plugins (`pkg/ip/ipmasq_linux.go`), so
//! either implementation tears down the other's rules:
//!
//! ```text
//! -t nat -N CNI-<24 hex of sha512(name + containerID)>
//! -A CNI-…  -d <pod IP>/<prefix> -j ACCEPT      -m comment --comment 'name: "<net>" id: "<cid>"'
//! -A CNI-…  ! -d 224.0.0.0/4 -j MASQUERADE     -m comment --comment …
//! -A POSTROUTING -s <pod IP> -j CNI-…         -m comment --comment …
//! ```
//!
//! The rules are written by exec'ing `iptables`/`ip6tables` (like go-iptables does) in the
//! plugin's own namespace, the node's. Unlike go-iptables, which waits for the xtables lock
//! forever, each call is bounded ([`command_timeout`]): a wedged kube-proxy or iptables fails
//! the ADD or DEL with a clear error (the runtime retries) instead of hanging it.

use std::process::Stdio;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::process::Command;

/// How long iptables may wait for the xtables lock (`--wait`), as the daemon allows for one
/// invocation; overridden by `FLANNEL_CNI_IPTABLES_TIMEOUT` (whole seconds).
pub const DEFAULT_LOCK_WAIT_SECS: u64 = 30;
/// Grace after the lock wait (at most as long as the wait) before the process is killed:
/// iptables' own "stopped waiting" error is the clearer one, so the kill only catches an
/// iptables that hangs elsewhere.
const KILL_GRACE: Duration = Duration::from_secs(5);
pub const TIMEOUT_ENV: &str = "FLANNEL_CNI_IPTABLES_TIMEOUT";

/// The lock wait, from [`TIMEOUT_ENV`] when it is set to a positive number of seconds.
pub fn command_timeout() -> Duration {
    let secs = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_LOCK_WAIT_SECS);
    Duration::from_secs(secs)
}

#[derive(Debug, thiserror::Error)]
pub enum IpMasqError {
    #[error("run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} {args} did not finish within {timeout:?} and was killed")]
    Timeout {
        program: &'static str,
        args: String,
        timeout: Duration,
    },
    #[error("{program} {args}: {stderr}")]
    Failed {
        program: &'static str,
        args: String,
        stderr: String,
    },
}

/// `CNI-` + the first 24 hex digits of sha512(name + containerID).
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA512,
        format!("{network}{container_id}").as_bytes(),
    );
    let hex: String = digest
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("CNI-{hex}")
}

/// The rule comment, formatted like Go's `%q`.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

fn program(v4: bool) -> &'static str {
    if v4 { "iptables" } else { "ip6tables" }
}

async fn run(program: &'static str, args: &[&str]) -> Result<bool, IpMasqError> {
    let wait = command_timeout();
    let wait_arg = wait.as_secs().to_string();
    let child = Command::new(program)
        .args(["--wait", &wait_arg])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IpMasqError::Spawn { program, source })?;
    let limit = wait + KILL_GRACE.min(wait);
    // On timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| IpMasqError::Spawn { program, source })?,
        Err(_) => {
            return Err(IpMasqError::Timeout {
                program,
                args: args.join(" "),
                timeout: limit,
            });
        }
    };
    if out.status.success() {
        return Ok(true);
    }
    // Exit status 1 = rule/chain does not exist (or already exists for -N); anything else
    // (2 = bad arguments, 4 = resource problem or lock wait exceeded) is a real failure.
    if out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(IpMasqError::Failed {
        program,
        args: args.join(" "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

async fn append_unique(
    program: &'static str,
    chain: &str,
    rule: &[&str],
) -> Result<(), IpMasqError> {
    let mut check = vec!["-t", "nat", "-C", chain];
    check.extend_from_slice(rule);
    if run(program, &check).await? {
        return Ok(());
    }
    let mut append = vec!["-t", "nat", "-A", chain];
    append.extend_from_slice(rule);
    if run(program, &append).await? {
        Ok(())
    } else {
        Err(IpMasqError::Failed {
            program,
            args: append.join(" "),
            stderr: "exit status 1".into(),
        })
    }
}

/// Installs the masquerade chain for one pod address (`ip` with its subnet prefix).
pub async fn setup(ip: IpNetwork, chain: &str, comment: &str) -> Result<(), IpMasqError> {
    let prog = program(ip.is_ipv4());
    let multicast = if ip.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    // -N fails with status 1 when the chain exists, which is fine.
    run(prog, &["-t", "nat", "-N", chain]).await?;
    let dst = ip.to_string();
    append_unique(
        prog,
        chain,
        &[
            "-d",
            &dst,
            "-j",
            "ACCEPT",
            "-m",
            "comment",
            "--comment",
            comment,
        ],
    )
    .await?;
    append_unique(
        prog,
        chain,
        &[
            "!",
            "-d",
            multicast,
            "-j",
            "MASQUERADE",
            "-m",
            "comment",
            "--comment",
            comment,
        ],
    )
    .await?;
    let src = ip.ip().to_string();
    append_unique(prog, "POSTROUTING", &postrouting_rule(&src, chain, comment)).await
}

/// The POSTROUTING rule sending traffic from `src` to the pod's chain.
fn postrouting_rule<'a>(src: &'a str, chain: &'a str, comment: &'a str) -> [&'a str; 8] {
    [
        "-s",
        src,
        "-j",
        chain,
        "-m",
        "comment",
        "--comment",
        comment,
    ]
}

/// Removes what [`setup`] installed; anything already gone is fine.
pub async fn teardown(ip: IpNetwork, chain: &str, comment: &str) -> Result<(), IpMasqError> {
    let prog = program(ip.is_ipv4());
    let src = ip.ip().to_string();
    let legacy_src = ip.to_string();
    for s in [src.as_str(), legacy_src.as_str()] {
        let mut delete = vec!["-t", "nat", "-D", "POSTROUTING"];
        delete.extend_from_slice(&postrouting_rule(s, chain, comment));
        run(prog, &delete).await?;
    }
    run(prog, &["-t", "nat", "-F", chain]).await?;
    run(prog, &["-t", "nat", "-X", chain]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_name_is_cni_plus_24_hex_of_sha512() {
        // sha512("cbr0" + "abc") computed independently with coreutils' sha512sum.
        let expected = {
            let out = std::process::Command::new("sh")
                .args(["-c", "printf %s cbr0abc | sha512sum"])
                .output()
                .unwrap();
            format!("CNI-{}", &String::from_utf8_lossy(&out.stdout)[..24])
        };
        assert_eq!(chain_name("cbr0", "abc"), expected);
        assert_eq!(chain_name("cbr0", "abc").len(), 28);
    }

    #[test]
    fn comment_quotes_like_go() {
        assert_eq!(comment("cbr0", "c1"), r#"name: "cbr0" id: "c1""#);
    }
}
