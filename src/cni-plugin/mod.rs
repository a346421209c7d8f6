//! The `flannel` CNI plugin: upstream's flannel → bridge → host-local chain in one process.
//!
//! The binary (`src/cni-plugin/main.rs`) only calls [`main_entry`]; everything else lives here
//! so the integration tests and the benchmark can reach it.
//!
//! * [`commands`]: ADD, DEL, CHECK, VERSION, GC, STATUS.
//! * [`config`]: the flannel netconf and the delegate config it renders (saved for DEL).
//! * [`bridge`]: the native bridge + veth + host-local path on the netlink layer.
//! * [`ipam`]: reservations in host-local's on-disk format.
//! * [`delegate`]: exec fallback for delegate configs the native path does not implement.
//!
//! Same as upstream (flannel-io/cni-plugin + reference `bridge` + `host-local`): the config
//! keys and defaults, the delegate config (byte-for-byte, saved as `<dataDir>/<containerID>`
//! and replayed by DEL), the node and pod state after ADD, the host-local files, the result
//! shapes per version, the iptables layout for `ipMasq`. The netns tests compare all of it
//! against the reference binaries.
//!
//! Deliberately different:
//! * a failed ADD undoes what it did (veth, new reservations, masquerade, its DEL record);
//! * DEL removes the DEL record only after everything is torn down, and, when the record is
//!   missing, still deletes `CNI_IFNAME` and releases the (container, ifname) reservations
//!   using the current config;
//! * a repeated ADD for an attachment that holds an IP gets that IP again (host-local refuses);
//! * GC releases reservations (and records) of attachments not in `cni.dev/valid-attachments`;
//!   STATUS answers 50 while subnet.env is missing; ADD then answers 11 (try again later);
//! * CHECK accepts flannel's gateway-less route installed via the gateway (plugins#887);
//! * ADD/DEL refuse `CNI_NETNS` = the plugin's own namespace (code 8) before acting, not after;
//! * reservations are not fsync'd unless `ipam.fsync` is true (host-local does not either; a
//!   reservation is visible to every process as soon as it exists, and durability across
//!   power loss only preserves reservations of pods that no longer exist);
//! * cniVersion 0.1.0/0.2.0 (legacy `ip4` results) are refused with code 1;
//! * calls for one container ID are serialised (ADD and DEL `flock` its DEL record for their
//!   whole run, see [`state`]), so a DEL racing an ADD never frees an IP the ADD configures;
//! * DEL removes the masquerade rules before the reservations that name the pod's IPs, so a
//!   retried DEL still finds the chain a failed one left;
//! * every iptables call is bounded (`--wait` plus a kill, [`ipmasq::command_timeout`]);
//! * files in the data dirs are never opened through a symlink (O_NOFOLLOW);
//! * an empty reservation (its writer killed between create and write) is taken over by the
//!   ADD that finds the range otherwise full.
//!
//! Not done natively (exec'd from `CNI_PATH` like upstream): a delegate type other than
//! `bridge`, an IPAM other than `host-local`, and the bridge options `vlan`, `vlanTrunk`,
//! `macspoofchk`, `disableContainerInterface`, `portIsolation`, `promiscMode`, `enabledad`,
//! `ipMasqBackend: nftables`, and `runtimeConfig.ipRanges`.

pub mod bridge;
pub mod commands;
pub mod config;
pub mod delegate;
pub mod env;
pub mod ifreq;
pub mod install;
pub mod ipam;
pub mod ipmasq;
pub mod state;
pub mod sysctl;
pub mod types;

use std::io::{Read, Write};
use std::process::ExitCode;

/// Logs go to stderr (runtimes keep stdout for the result); `FLANNEL_CNI_LOG` sets the filter.
fn init_tracing() {
    let filter = std::env::var("FLANNEL_CNI_LOG").unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// The plugin process: reads `CNI_*` and stdin, prints the result or the error JSON.
pub fn main_entry() -> ExitCode {
    init_tracing();
    let env = env::RuntimeEnv::from_process();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(mode) = install::wants_install(env.command.as_deref(), &argv) {
        return install::main_entry(mode, argv);
    }
    let Some(command) = env.command.clone() else {
        // Like the Go skeleton: a human ran the binary.
        eprintln!(
            "CNI flannel plugin (flannel-rs {})\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            types::SUPPORTED_VERSIONS.join(", ")
        );
        return ExitCode::SUCCESS;
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = types::CniError::new(types::ErrorCode::Io, "cannot read the config from stdin")
            .with_details(e.to_string());
        return finish(Err(err), None);
    }
    let version = config::peek_version(&stdin);
    finish(commands::run(&env, &command, &stdin), version.as_deref())
}

fn finish(outcome: Result<Option<String>, types::CniError>, version: Option<&str>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(text)) => {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!(code = e.code, msg = %e.msg, "failing");
            let _ = out.write_all(e.to_json(version).as_bytes());
            let _ = out.flush();
            ExitCode::FAILURE
        }
    }
}
