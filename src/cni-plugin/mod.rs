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

pub mod bridge;
pub mod commands;
pub mod config;
pub mod delegate;
pub mod env;
pub mod ifreq;
pub mod ipam;
pub mod ipmasq;
pub mod state;
pub mod subnet_env;
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
