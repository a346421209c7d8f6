//! `flanneld` entry point. The daemon's logic lives in the library (`flannel_rs::flanneld`);
//! this file only turns process arguments and environment into a validated configuration.

use std::process::ExitCode;

use anyhow::Context as _;
use flannel_rs::flanneld::config::{Flags, FlagsError};
use flannel_rs::flanneld::netconf::NetConf;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let flags = match Flags::parse_with_env(args, env) {
        Ok(f) => f,
        // --help and usage errors: clap prints and picks the exit code.
        Err(FlagsError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("flanneld: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        // Upstream prints the version to stderr and exits 0.
        eprintln!("v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flanneld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let config = flags.resolve(env)?;
    let text = std::fs::read_to_string(&config.net_config_path)
        .with_context(|| format!("reading {}", config.net_config_path.display()))?;
    let _netconf = NetConf::parse(&text)?;
    anyhow::bail!(
        "configuration is valid, but the kube watch / netlink runtime is not wired into this \
         binary yet"
    )
}
