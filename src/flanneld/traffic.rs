//! Applies and keeps the ip-masq / forward rules (upstream's pkg/trafficmngr) and the `--ip-blackhole-route`
//! route (upstream's pkg/trafficmngr): the I/O side of [`super::pure::masq`].
//!
//! Design note — why atomic `iptables-restore` / `nft -f` batches and not a netlink-native
//! nftables crate:
//! - Coexistence: in iptables mode our rules must live in the same backend kube-proxy uses
//!   (legacy or nf_tables). The `iptables` on PATH (the image's iptables-wrapper) makes that
//!   choice exactly like kube-proxy; iptables-nft rules are xtables matches in a private
//!   encoding that only the iptables userspace writes correctly, and legacy tables can only be
//!   replaced as whole blobs. Shelling out is the one correct writer for both.
//! - Reliability: one `iptables-restore --noflush` transaction per table (and one `nft -f`
//!   script per table) is atomic: the chain is rewritten in one step, stale rules of an old
//!   Network/subnet vanish in the same step, no window with half a rule set, no other chain's
//!   rules touched. `--wait` takes `/run/xtables.lock`, shared with kube-proxy, so a legacy
//!   whole-table replace never races another writer.
//! - Speed is not the constraint: ~10 rules, checked every resync with two `iptables -S` per
//!   chain (fewer processes than upstream's one `-C` per rule); a repair is one process. A
//!   netlink-native crate would save milliseconds per period and add an unaudited, version-
//!   sensitive dependency; `nft`'s text format is its stable public interface.
//!
//! Checks compare listings with the golden text; because tools of other versions may print a
//! rule differently, the listing taken right after our own write is accepted too, so a format
//! difference can never cause a rebuild on every resync.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnetwork::IpNetwork;
use rand::SeedableRng;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::pure::backoff::Backoff;
use super::pure::config::DaemonConfig;
use super::pure::lease::PodSubnets;
use super::pure::masq::{
    self, FWD_CHAIN, FWD_COMMENT, MASQ_COMMENT, MasqSpec, NftSpec, POSTRTG_CHAIN,
};
use super::pure::netconf::NetConf;
use crate::net::{Family, go_net_string, is_within};
use crate::netlink::{Netlink, NetlinkError, Route, RouteFilter, RouteType};
use crate::subnet_env::SubnetEnv;

/// How long one iptables/nft invocation may take (it may wait for the xtables lock).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod network and our pod subnet of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNets {
    /// `N`: the cluster pod network (`Network` / `IPv6Network`).
    pub network: IpNetwork,
    /// `S`: our node's pod subnet (podCIDR).
    pub subnet: IpNetwork,
}

/// Program names (looked up on PATH). The defaults are what upstream calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolNames {
    pub iptables: String,
    pub ip6tables: String,
    pub iptables_restore: String,
    pub ip6tables_restore: String,
    pub nft: String,
}

impl Default for ToolNames {
    fn default() -> Self {
        ToolNames {
            iptables: masq::iptables_binary(Family::V4).into(),
            ip6tables: masq::iptables_binary(Family::V6).into(),
            iptables_restore: "iptables-restore".into(),
            ip6tables_restore: "ip6tables-restore".into(),
            nft: "nft".into(),
        }
    }
}

impl ToolNames {
    /// The `*-legacy` variants (hosts whose kube-proxy uses the legacy backend without a
    /// wrapper choosing it).
    pub fn legacy() -> Self {
        ToolNames {
            iptables: "iptables-legacy".into(),
            ip6tables: "ip6tables-legacy".into(),
            iptables_restore: "iptables-legacy-restore".into(),
            ip6tables_restore: "ip6tables-legacy-restore".into(),
            nft: "nft".into(),
        }
    }

    fn iptables(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }

    fn restore(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables_restore,
            Family::V6 => &self.ip6tables_restore,
        }
    }
}

/// What rules to keep, for which families.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub v4: Option<FamilyNets>,
    pub v6: Option<FamilyNets>,
    /// `--ip-masq`: the FLANNEL-POSTRTG chain / nft `postrtg` chain.
    pub ip_masq: bool,
    /// `--iptables-forward-rules`: the FLANNEL-FWD chain / nft `forward` chain.
    pub forward_rules: bool,
    /// `--random-fully` / `fully-random` unless disabled; used only when the tools support it.
    pub fully_random_wanted: bool,
    /// `EnableNFTables` in net-conf.json.
    pub nftables: bool,
    /// The previous run's subnet.env, to report a Network/subnet change (the old rules are
    /// replaced in the same transaction that installs the new ones).
    pub previous: Option<SubnetEnv>,
    pub tools: ToolNames,
    pub command_timeout: Duration,
}

impl TrafficConfig {
    /// Forward rules on, masquerade off, iptables mode, default tools (upstream defaults).
    pub fn new(v4: Option<FamilyNets>, v6: Option<FamilyNets>) -> Self {
        TrafficConfig {
            v4,
            v6,
            ip_masq: false,
            forward_rules: true,
            fully_random_wanted: true,
            nftables: false,
            previous: None,
            tools: ToolNames::default(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The configuration the daemon runs with: enabled families with their network and
    /// lease, the flags, `EnableNFTables`, and the previous subnet.env (if it parsed).
    pub fn from_daemon(
        config: &DaemonConfig,
        netconf: &NetConf,
        lease: &PodSubnets,
        previous: Option<SubnetEnv>,
    ) -> Self {
        let nets = |family: Family| {
            Some(FamilyNets {
                network: netconf
                    .network(family)
                    .filter(|_| netconf.enabled(family))?,
                subnet: lease.get(family)?,
            })
        };
        TrafficConfig {
            ip_masq: config.ip_masq,
            forward_rules: config.iptables_forward_rules,
            fully_random_wanted: config.masq_fully_random,
            nftables: netconf.enable_nftables,
            previous,
            ..TrafficConfig::new(nets(Family::V4), nets(Family::V6))
        }
    }

    fn families(&self) -> impl Iterator<Item = (Family, FamilyNets)> + '_ {
        [(Family::V4, self.v4), (Family::V6, self.v6)]
            .into_iter()
            .filter_map(|(f, n)| Some((f, n?)))
    }

    fn validate(&self) -> Result<(), TrafficError> {
        if self.v4.is_none() && self.v6.is_none() {
            return Err(TrafficError::Config("no address family configured".into()));
        }
        for (family, nets) in self.families() {
            for (what, net) in [("network", nets.network), ("subnet", nets.subnet)] {
                if Family::of_net(net) != family {
                    return Err(TrafficError::Config(format!(
                        "{family} {what} {net} is of the other address family"
                    )));
                }
            }
            let (n, s) = (nets.network, nets.subnet);
            if !is_within(s, n) {
                return Err(TrafficError::Config(format!(
                    "{family} subnet {s} is not inside network {n}"
                )));
            }
        }
        Ok(())
    }
}

/// A failed rule or route operation. Command errors name the command line and its stderr.
#[derive(Debug, Error)]
pub enum TrafficError {
    #[error("invalid traffic rule configuration: {0}")]
    Config(String),
    #[error("`{program}` is not installed or not on PATH (needed for `{command}`)")]
    Missing { program: String, command: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{} does not exist: load the br_netfilter kernel module (required unless EnableNFTables)",
        .path.display()
    )]
    BrNetfilterMissing { path: PathBuf },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl TrafficError {
    /// The program is not installed.
    fn is_missing_program(&self) -> bool {
        matches!(self, TrafficError::Missing { .. })
    }
}

/// What [`TrafficRules::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// Everything was in place; nothing was written.
    Unchanged,
    /// These objects were (re)written or removed, e.g.
    /// `IPv4 nat FLANNEL-POSTRTG: rule list differs`.
    Repaired { what: Vec<String> },
}

/// One of our iptables chains and the hook chain that jumps to it.
#[derive(Debug, Clone, Copy)]
struct IptChain {
    table: &'static str,
    hook: &'static str,
    chain: &'static str,
    comment: &'static str,
    jump: fn() -> String,
}

const MASQ_CHAIN: IptChain = IptChain {
    table: "nat",
    hook: "POSTROUTING",
    chain: POSTRTG_CHAIN,
    comment: MASQ_COMMENT,
    jump: masq::masq_jump_rule,
};

const FORWARD_CHAIN: IptChain = IptChain {
    table: "filter",
    hook: "FORWARD",
    chain: FWD_CHAIN,
    comment: FWD_COMMENT,
    jump: masq::forward_jump_rule,
};

/// What the installed iptables of one family can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IptCaps {
    random_fully: bool,
    restore_wait: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The start-up cleanup (other mode's leftovers, disabled rule sets) succeeded once.
    cleaned_up: bool,
    ipt_caps: [Option<IptCaps>; 2],
    nft_fully_random: Option<bool>,
    /// Listing of each of our chains/tables right after our own last write.
    written: HashMap<String, Vec<String>>,
}

/// Keeps our masquerade/forward rules in place (see the module note).
#[derive(Debug)]
pub struct TrafficRules {
    config: TrafficConfig,
    state: Mutex<State>,
}

impl TrafficRules {
    pub fn new(config: TrafficConfig) -> Result<Self, TrafficError> {
        config.validate()?;
        Ok(TrafficRules {
            config,
            state: Mutex::new(State::default()),
        })
    }

    pub fn config(&self) -> &TrafficConfig {
        &self.config
    }

    /// Upstream refuses to start in iptables mode without br_netfilter: bridged pod
    /// traffic would bypass the rules. Call before the first [`Self::ensure`].
    pub fn check_br_netfilter(&self) -> Result<(), TrafficError> {
        self.check_br_netfilter_in(Path::new("/proc/sys"))
    }

    fn check_br_netfilter_in(&self, proc_sys: &Path) -> Result<(), TrafficError> {
        if self.config.nftables {
            return Ok(());
        }
        for (family, _) in self.config.families() {
            let file = match family {
                Family::V4 => "bridge-nf-call-iptables",
                Family::V6 => "bridge-nf-call-ip6tables",
            };
            let path = proc_sys.join("net/bridge").join(file);
            if !path.exists() {
                return Err(TrafficError::BrNetfilterMissing { path });
            }
        }
        Ok(())
    }

    /// Brings the rules to the desired state: cheap when everything is in place (two listings
    /// per chain or one per nft table), otherwise one atomic transaction per table. The first
    /// successful call also removes the other mode's leftovers and disabled rule sets. All
    /// families are attempted; the first error is returned.
    pub async fn ensure(&self) -> Result<EnsureOutcome, TrafficError> {
        let mut st = self.state.lock().await;
        let mut what = Vec::new();
        let mut first_error = None;
        if !st.cleaned_up
            && let Some(note) = self.previous_change_note()
        {
            info!(change = %note, "pod network or subnet changed since the last run; replacing its rules");
        }
        // With neither rule set wanted there is nothing to keep (and no need for iptables or
        // nft to be installed); the start-up cleanup removes what an earlier run left.
        let wanted = self.config.ip_masq || self.config.forward_rules;
        for (family, nets) in self.config.families() {
            let result = if !wanted {
                Ok(Vec::new())
            } else if self.config.nftables {
                self.ensure_nft(&mut st, family, nets).await
            } else {
                self.ensure_iptables(&mut st, family, nets).await
            };
            match result {
                Ok(mut done) => what.append(&mut done),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !st.cleaned_up {
            match self.startup_cleanup(&mut st).await {
                Ok(mut done) => {
                    what.append(&mut done);
                    st.cleaned_up = true;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if what.is_empty() => Ok(EnsureOutcome::Unchanged),
            None => Ok(EnsureOutcome::Repaired { what }),
        }
    }

    /// Ensures now, then every `resync` until `shutdown` (both modes; upstream's nftables mode
    /// never checks again). While ensuring fails (a missing or failing iptables / nft) it
    /// retries after a backoff of 1 s doubling to 30 s instead, and logs one error line per
    /// distinct failure, not one per attempt. `report` hears every attempt's outcome (the
    /// daemon's readiness and metrics). Rules are left in place on shutdown, like upstream.
    pub async fn run(
        self,
        resync: Duration,
        report: impl Fn(&Result<EnsureOutcome, TrafficError>) + Send,
        shutdown: CancellationToken,
    ) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        // Until the first success, writes are the installation, not a repair of drift.
        let mut installed = false;
        let mut failing: Option<String> = None;
        loop {
            let outcome = self.ensure().await;
            report(&outcome);
            let wait = match &outcome {
                Ok(done) => {
                    match (done, failing.take()) {
                        (EnsureOutcome::Repaired { what }, _) if !installed => {
                            info!(changes = ?what, "traffic rules installed")
                        }
                        (EnsureOutcome::Repaired { what }, _) => {
                            warn!(repaired = ?what, "traffic rules were changed by someone; repaired")
                        }
                        (EnsureOutcome::Unchanged, Some(_)) => {
                            info!("traffic rules in place again")
                        }
                        (EnsureOutcome::Unchanged, None) => debug!("traffic rules in place"),
                    }
                    installed = true;
                    backoff.reset();
                    resync
                }
                Err(e) => {
                    let delay = backoff.next_delay(&mut rng);
                    let text = e.to_string();
                    if failing.as_deref() != Some(text.as_str()) {
                        error!(error = %text, retry_in_ms = delay.as_millis() as u64,
                            "traffic rules cannot be ensured; retrying with backoff (repeats of this error are logged at debug)");
                    } else {
                        debug!(error = %text, retry_in_ms = delay.as_millis() as u64, "traffic rules still cannot be ensured");
                    }
                    failing = Some(text);
                    delay
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn previous_change_note(&self) -> Option<String> {
        let prev = self.config.previous.as_ref()?;
        let mut notes = Vec::new();
        for (family, nets) in self.config.families() {
            let (old_net, old_sub) = match family {
                Family::V4 => (
                    prev.networks_v4.first().map(|n| IpNetwork::V4(*n)),
                    prev.subnet_v4_network().map(IpNetwork::V4),
                ),
                Family::V6 => (
                    prev.networks_v6.first().map(|n| IpNetwork::V6(*n)),
                    prev.subnet_v6_network().map(IpNetwork::V6),
                ),
            };
            if old_net.is_some_and(|n| n != nets.network)
                || old_sub.is_some_and(|s| s != nets.subnet)
            {
                notes.push(format!(
                    "{family}: {}/{} -> {}/{}",
                    old_net.map(go_net_string).unwrap_or_else(|| "-".into()),
                    old_sub.map(go_net_string).unwrap_or_else(|| "-".into()),
                    go_net_string(nets.network),
                    go_net_string(nets.subnet)
                ));
            }
        }
        (!notes.is_empty()).then(|| notes.join(", "))
    }

    // ---- iptables mode ----

    async fn ensure_iptables(
        &self,
        st: &mut State,
        family: Family,
        nets: FamilyNets,
    ) -> Result<Vec<String>, TrafficError> {
        let caps = self.ipt_caps(st, family).await?;
        let mut done = Vec::new();
        if self.config.ip_masq {
            let spec = MasqSpec {
                network: nets.network,
                subnet: nets.subnet,
                fully_random: self.config.fully_random_wanted && caps.random_fully,
            };
            let rules = masq::masq_rules(&spec);
            done.extend(
                self.ensure_chain(st, family, caps, MASQ_CHAIN, &rules)
                    .await?,
            );
        }
        if self.config.forward_rules {
            let rules = masq::forward_rules(nets.network);
            done.extend(
                self.ensure_chain(st, family, caps, FORWARD_CHAIN, &rules)
                    .await?,
            );
        }
        Ok(done)
    }

    /// Probes the iptables version once per family: `--random-fully` and
    /// `iptables-restore --wait` need ≥ 1.6.2 (as upstream's go-iptables decides).
    async fn ipt_caps(&self, st: &mut State, family: Family) -> Result<IptCaps, TrafficError> {
        let slot = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        if let Some(caps) = st.ipt_caps[slot] {
            return Ok(caps);
        }
        let program = self.config.tools.iptables(family);
        let out = self.run_tool(program, &["--version"], None).await?;
        let modern = match parse_iptables_version(&out) {
            Some(v) => v >= (1, 6, 2),
            None => {
                warn!(program, output = %out.trim(), "unrecognised iptables version; not using --random-fully or --wait");
                false
            }
        };
        let caps = IptCaps {
            random_fully: modern,
            restore_wait: modern,
        };
        info!(program, version = %out.trim(), random_fully = caps.random_fully, "iptables probed");
        st.ipt_caps[slot] = Some(caps);
        Ok(caps)
    }

    /// Checks one chain and its hook jump; rewrites both in one transaction when anything is
    /// off. Returns what was repaired.
    async fn ensure_chain(
        &self,
        st: &mut State,
        family: Family,
        caps: IptCaps,
        c: IptChain,
        rules: &[String],
    ) -> Result<Option<String>, TrafficError> {
        let ipt = self.config.tools.iptables(family);
        let chain_listing = self
            .run_tool(ipt, &["--wait", "-t", c.table, "-S", c.chain], None)
            .await;
        let hook_listing = self
            .run_tool(ipt, &["--wait", "-t", c.table, "-S", c.hook], None)
            .await?;
        let hook = masq::check_hook(&hook_listing, c.hook, c.chain, c.comment);
        let key = format!("{family} {} {}", c.table, c.chain);
        let chain_problem = match &chain_listing {
            Err(e) => {
                debug!(error = %e, chain = c.chain, "chain not listed; taking it as missing");
                Some("chain missing".to_string())
            }
            Ok(l) if masq::chain_matches(l, c.chain, rules) => None,
            Ok(l)
                if st
                    .written
                    .get(&key)
                    .is_some_and(|w| *w == owned_lines(masq::chain_rule_lines(l, c.chain))) =>
            {
                None
            }
            Ok(_) => Some("rule list differs".to_string()),
        };
        let problem = chain_problem
            .or_else(|| (!hook.jump_present).then(|| format!("jump from {} missing", c.hook)))
            .or_else(|| {
                (!hook.stale.is_empty())
                    .then(|| format!("{} stale rule(s) in {}", hook.stale.len(), c.hook))
            });
        let Some(problem) = problem else {
            return Ok(None);
        };
        let payload = masq::chain_restore_payload(
            c.table,
            c.chain,
            rules,
            &hook.stale,
            (!hook.jump_present).then(c.jump),
        );
        self.restore(family, caps, &payload).await?;
        self.remember_chain(st, family, c, rules, key).await;
        Ok(Some(format!("{family} {} {}: {problem}", c.table, c.chain)))
    }

    /// Records how the tool prints our chain right after our write (see the module note).
    async fn remember_chain(
        &self,
        st: &mut State,
        family: Family,
        c: IptChain,
        rules: &[String],
        key: String,
    ) {
        let ipt = self.config.tools.iptables(family);
        match self
            .run_tool(ipt, &["--wait", "-t", c.table, "-S", c.chain], None)
            .await
        {
            Ok(after) => {
                if !masq::chain_matches(&after, c.chain, rules) {
                    warn!(program = ipt, chain = c.chain, listing = %after.trim(),
                        "iptables prints our rules differently than expected; comparing with this listing from now on");
                }
                st.written
                    .insert(key, owned_lines(masq::chain_rule_lines(&after, c.chain)));
            }
            Err(e) => {
                st.written.remove(&key);
                warn!(error = %e, "listing our chain after writing it failed");
            }
        }
    }

    async fn restore(
        &self,
        family: Family,
        caps: IptCaps,
        payload: &str,
    ) -> Result<(), TrafficError> {
        let mut args = vec!["--noflush"];
        if caps.restore_wait {
            args.push("--wait");
        }
        debug!(%payload, "iptables-restore");
        self.run_tool(self.config.tools.restore(family), &args, Some(payload))
            .await
            .map(drop)
    }

    /// Removes our chain and every rule of ours in its hook chain, if any is there.
    /// A missing iptables binary means there is nothing to remove.
    async fn remove_chain(
        &self,
        st: &mut State,
        family: Family,
        c: IptChain,
    ) -> Result<Option<String>, TrafficError> {
        let ipt = self.config.tools.iptables(family);
        let hook_listing = match self
            .run_tool(ipt, &["--wait", "-t", c.table, "-S", c.hook], None)
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_missing_program() => return Ok(None),
            Err(e) => return Err(e),
        };
        let chain_exists = self
            .run_tool(ipt, &["--wait", "-t", c.table, "-S", c.chain], None)
            .await
            .is_ok();
        let ours = masq::check_hook(&hook_listing, c.hook, c.chain, c.comment).all_ours((c.jump)());
        if !chain_exists && ours.is_empty() {
            return Ok(None);
        }
        let caps = self.ipt_caps(st, family).await?;
        let payload = masq::chain_removal_payload(c.table, c.chain, &ours);
        self.restore(family, caps, &payload).await?;
        Ok(Some(format!("{family} {} {}: removed", c.table, c.chain)))
    }

    // ---- nftables mode ----

    async fn ensure_nft(
        &self,
        st: &mut State,
        family: Family,
        nets: FamilyNets,
    ) -> Result<Vec<String>, TrafficError> {
        let mut spec = NftSpec {
            network: nets.network,
            subnet: nets.subnet,
            masquerade: self.config.ip_masq,
            forward: self.config.forward_rules,
            fully_random: false,
        };
        spec.fully_random = self.config.fully_random_wanted
            && self.config.ip_masq
            && self.nft_fully_random(st, &spec).await?;
        let kw = masq::nft_family(family);
        let name = masq::nft_table_name(family);
        let nft = self.config.tools.nft.as_str();
        let key = format!("nft {kw} {name}");
        let problem = match self.run_tool(nft, &["list", "table", kw, name], None).await {
            Err(e) => {
                debug!(error = %e, table = name, "table not listed; taking it as missing");
                Some("table missing")
            }
            Ok(l) if masq::nft_table_matches(&l, &spec) => None,
            Ok(l)
                if st
                    .written
                    .get(&key)
                    .is_some_and(|w| *w == owned_lines(masq::nft_normalized(&l))) =>
            {
                None
            }
            Ok(_) => Some("table differs"),
        };
        let Some(problem) = problem else {
            return Ok(Vec::new());
        };
        let script = masq::nft_replace_script(&spec);
        debug!(%script, "nft -f");
        self.run_tool(nft, &["-f", "-"], Some(&script)).await?;
        match self.run_tool(nft, &["list", "table", kw, name], None).await {
            Ok(after) => {
                if !masq::nft_table_matches(&after, &spec) {
                    warn!(table = name, listing = %after.trim(),
                        "nft prints our table differently than expected; comparing with this listing from now on");
                }
                st.written
                    .insert(key, owned_lines(masq::nft_normalized(&after)));
            }
            Err(e) => {
                st.written.remove(&key);
                warn!(error = %e, "listing our table after writing it failed");
            }
        }
        Ok(vec![format!("nft {kw} {name}: {problem}")])
    }

    /// Probes once, with a dry-run (`nft -c`) of our own table, whether the kernel and nft
    /// accept `masquerade fully-random`.
    async fn nft_fully_random(&self, st: &mut State, spec: &NftSpec) -> Result<bool, TrafficError> {
        if let Some(ok) = st.nft_fully_random {
            return Ok(ok);
        }
        let probe = NftSpec {
            fully_random: true,
            ..*spec
        };
        let script = masq::nft_replace_script(&probe);
        let ok = match self
            .run_tool(&self.config.tools.nft, &["-c", "-f", "-"], Some(&script))
            .await
        {
            Ok(_) => true,
            Err(
                e @ (TrafficError::Missing { .. }
                | TrafficError::Spawn { .. }
                | TrafficError::Timeout { .. }),
            ) => return Err(e),
            Err(e) => {
                warn!(error = %e, "nft does not accept fully-random; masquerading without it");
                false
            }
        };
        st.nft_fully_random = Some(ok);
        Ok(ok)
    }

    // ---- start-up cleanup ----

    /// Removes what the other mode left behind and the rule sets that are now disabled.
    async fn startup_cleanup(&self, st: &mut State) -> Result<Vec<String>, TrafficError> {
        let mut done = Vec::new();
        let mut first_error = None;
        let nft_keep: Vec<Family> =
            if self.config.nftables && (self.config.ip_masq || self.config.forward_rules) {
                self.config.families().map(|(f, _)| f).collect()
            } else {
                Vec::new()
            };
        match self.remove_nft_tables(&nft_keep).await {
            Ok(mut d) => done.append(&mut d),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        for (family, _) in self.config.families() {
            for (c, enabled) in [
                (MASQ_CHAIN, self.config.ip_masq),
                (FORWARD_CHAIN, self.config.forward_rules),
            ] {
                if !self.config.nftables && enabled {
                    continue;
                }
                match self.remove_chain(st, family, c).await {
                    Ok(d) => done.extend(d),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Deletes our nft tables except those of `keep`. A missing `nft` means there are none.
    async fn remove_nft_tables(&self, keep: &[Family]) -> Result<Vec<String>, TrafficError> {
        let nft = self.config.tools.nft.as_str();
        let listing = match self.run_tool(nft, &["list", "tables"], None).await {
            Ok(l) => l,
            Err(e) if e.is_missing_program() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let remove: Vec<Family> = masq::nft_tables_present(&listing)
            .into_iter()
            .filter(|f| !keep.contains(f))
            .collect();
        if remove.is_empty() {
            return Ok(Vec::new());
        }
        let script: String = remove.iter().map(|f| masq::nft_delete_script(*f)).collect();
        self.run_tool(nft, &["-f", "-"], Some(&script)).await?;
        Ok(remove
            .iter()
            .map(|f| {
                format!(
                    "nft {} {}: removed",
                    masq::nft_family(*f),
                    masq::nft_table_name(*f)
                )
            })
            .collect())
    }

    // ---- processes ----

    /// Runs `program args` (stdin fed from `stdin`) with the configured timeout; returns
    /// stdout. The child is killed if the timeout expires.
    async fn run_tool(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, TrafficError> {
        run_command(program, args, stdin, self.config.command_timeout).await
    }
}

/// See [`TrafficRules::run_tool`].
async fn run_command(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String, TrafficError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TrafficError::Missing {
                program: program.to_string(),
                command: command.clone(),
            },
            _ => TrafficError::Spawn {
                command: command.clone(),
                source,
            },
        })?;
    let input = stdin.map(str::to_owned);
    let pipe = child.stdin.take();
    let work = async move {
        if let (Some(mut pipe), Some(input)) = (pipe, input) {
            // A tool that exits early closes the pipe; its exit status tells why.
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => return Err(TrafficError::Spawn { command, source }),
        Err(_) => return Err(TrafficError::Timeout { command, timeout }),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(TrafficError::Failed {
            command,
            status: output.status.to_string(),
            stderr: describe_failure(stderr.trim(), stdin),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The tool's stderr, plus the input line it complains about (`iptables-restore` says
/// `Error occurred at line: N` or `line N failed`; `nft` quotes the line itself).
fn describe_failure(stderr: &str, stdin: Option<&str>) -> String {
    let line_no = stderr.match_indices("line").find_map(|(at, _)| {
        let rest = stderr[at + 4..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    });
    let offending = line_no.and_then(|n| stdin?.lines().nth(n.checked_sub(1)?));
    let text = if stderr.is_empty() {
        "(no error output)"
    } else {
        stderr
    };
    match (line_no, offending) {
        (Some(n), Some(line)) => format!("{text} [input line {n}: {line}]"),
        _ => text.to_string(),
    }
}

fn owned_lines(lines: Vec<&str>) -> Vec<String> {
    lines.into_iter().map(str::to_owned).collect()
}

/// `(major, minor, patch)` from `iptables --version` (`iptables v1.8.9 (nf_tables)`).
pub fn parse_iptables_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

// ---- blackhole routes ----

/// What [`BlackholeRoutes::ensure`] found for one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlackholeState {
    /// `blackhole <subnet>` is in the main table.
    Present,
    /// It was missing and has been added.
    Added,
    /// Another route to exactly this subnet exists (e.g. the bridge plugin's `dev cni0`):
    /// unassigned pod addresses already cannot leak to the default route, and adding would
    /// either fail (EEXIST) or shadow that route, so nothing is done.
    CoveredBy(String),
}

/// `--ip-blackhole-route`: keeps `blackhole <own podCIDR>` (v4/v6) in the main table, so
/// traffic to unassigned pod addresses is dropped instead of following the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlackholeRoutes {
    subnets: Vec<IpNetwork>,
}

impl BlackholeRoutes {
    /// Host bits of the subnets are dropped.
    pub fn new(subnets: impl IntoIterator<Item = IpNetwork>) -> Self {
        let subnets = subnets
            .into_iter()
            .filter_map(|s| IpNetwork::new(s.network(), s.prefix()).ok())
            .collect();
        BlackholeRoutes { subnets }
    }

    /// Our lease's subnets of the enabled families.
    pub fn for_lease(netconf: &NetConf, lease: &PodSubnets) -> Self {
        Self::new(netconf.families().filter_map(|f| lease.get(f)))
    }

    pub fn subnets(&self) -> &[IpNetwork] {
        &self.subnets
    }

    /// Adds each missing blackhole route (`ip route add`, never replace). Returns the state per
    /// subnet, in order; all subnets are attempted, the first error is returned.
    pub async fn ensure(&self, nl: &Netlink) -> Result<Vec<BlackholeState>, TrafficError> {
        let mut states = Vec::with_capacity(self.subnets.len());
        let mut first_error = None;
        for subnet in &self.subnets {
            match self.ensure_one(nl, *subnet).await {
                Ok(s) => states.push(s),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(states),
        }
    }

    async fn ensure_one(
        &self,
        nl: &Netlink,
        subnet: IpNetwork,
    ) -> Result<BlackholeState, TrafficError> {
        let family = Family::of_ip(subnet.ip());
        let routes = nl.routes(&RouteFilter::main().family(family)).await?;
        if let Some(existing) = routes.iter().find(|r| r.dst == subnet) {
            return Ok(if existing.kind == RouteType::BlackHole {
                BlackholeState::Present
            } else {
                BlackholeState::CoveredBy(existing.to_string())
            });
        }
        let route = Route::new(subnet).kind(RouteType::BlackHole);
        match nl.add_route(&route).await {
            Ok(()) => Ok(BlackholeState::Added),
            // Someone added a route to the subnet since we listed: theirs stays.
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(BlackholeState::CoveredBy(
                format!("{subnet} (added concurrently)"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Ensures now, then every `period` until `shutdown`. The routes stay on shutdown.
    pub async fn run(self, nl: Netlink, period: Duration, shutdown: CancellationToken) {
        let mut reported: Vec<BlackholeState> = Vec::new();
        loop {
            match self.ensure(&nl).await {
                Ok(states) => {
                    for (subnet, state) in self.subnets.iter().zip(&states) {
                        match state {
                            BlackholeState::Added => info!(%subnet, "blackhole route added"),
                            BlackholeState::CoveredBy(by) if !reported.contains(state) => {
                                info!(%subnet, route = %by, "a route to our pod subnet exists; no blackhole route added")
                            }
                            _ => {}
                        }
                    }
                    reported = states;
                }
                Err(e) => {
                    warn!(error = %e, "ensuring the blackhole route failed; retrying next period")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(n: &str, s: &str) -> FamilyNets {
        FamilyNets {
            network: n.parse().unwrap(),
            subnet: s.parse().unwrap(),
        }
    }

    #[test]
    fn iptables_versions() {
        assert_eq!(
            parse_iptables_version("iptables v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_iptables_version("ip6tables v1.6.1"), Some((1, 6, 1)));
        assert_eq!(
            parse_iptables_version("iptables v1.8 (legacy)"),
            Some((1, 8, 0))
        );
        assert_eq!(parse_iptables_version("iptables-wrapper"), None);
        assert!(parse_iptables_version("iptables v1.6.2").unwrap() >= (1, 6, 2));
        assert!(parse_iptables_version("iptables v1.6.1").unwrap() < (1, 6, 2));
        assert!(parse_iptables_version("iptables v1.10.0").unwrap() >= (1, 6, 2));
    }

    #[test]
    fn config_validation() {
        let ok = TrafficConfig::new(Some(nets("10.244.0.0/16", "10.244.1.0/24")), None);
        assert!(TrafficRules::new(ok).is_ok());
        let both = TrafficConfig::new(
            Some(nets("10.244.0.0/16", "10.244.1.0/24")),
            Some(nets("fd00:10::/56", "fd00:10:0:1::/64")),
        );
        assert!(TrafficRules::new(both).is_ok());
        for (cfg, want) in [
            (TrafficConfig::new(None, None), "no address family"),
            (
                TrafficConfig::new(Some(nets("10.244.0.0/16", "10.245.1.0/24")), None),
                "not inside network",
            ),
            (
                TrafficConfig::new(Some(nets("10.244.0.0/16", "10.0.0.0/8")), None),
                "not inside network",
            ),
            (
                TrafficConfig::new(Some(nets("fd00::/56", "fd00::/64")), None),
                "other address family",
            ),
            (
                TrafficConfig::new(None, Some(nets("fd00::/56", "10.0.0.0/24"))),
                "other address family",
            ),
        ] {
            let err = TrafficRules::new(cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn previous_subnet_env_change_is_reported() {
        let mut cfg = TrafficConfig::new(Some(nets("10.244.0.0/16", "10.244.1.0/24")), None);
        cfg.previous = Some(
            SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
                .unwrap(),
        );
        let rules = TrafficRules::new(cfg.clone()).unwrap();
        assert_eq!(
            rules.previous_change_note().as_deref(),
            Some("IPv4: 10.1.0.0/16/10.1.7.0/24 -> 10.244.0.0/16/10.244.1.0/24")
        );
        cfg.previous = Some(
            SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
                .unwrap(),
        );
        assert_eq!(TrafficRules::new(cfg).unwrap().previous_change_note(), None);
    }

    #[test]
    fn failures_quote_the_offending_input_line() {
        let input = "*nat\n:FLANNEL-POSTRTG - [0:0]\n-X NOPE\nCOMMIT\n";
        assert_eq!(
            describe_failure(
                "iptables-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 3",
                Some(input)
            ),
            "iptables-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 3 [input line 3: -X NOPE]"
        );
        assert_eq!(
            describe_failure(
                "iptables-restore: line 2 failed: No chain/target/match by that name.",
                Some("*nat\n-D POSTROUTING -j X\nCOMMIT\n")
            ),
            "iptables-restore: line 2 failed: No chain/target/match by that name. [input line 2: -D POSTROUTING -j X]"
        );
        let nft = "/dev/stdin:2:2-6: Error: syntax error, unexpected string\n bogus\n ^^^^^";
        assert_eq!(
            describe_failure(nft, Some("table ip x {\n bogus\n}\n")),
            nft
        );
        assert_eq!(describe_failure("boom", Some("a\n")), "boom");
        assert_eq!(describe_failure("", None), "(no error output)");
    }

    #[test]
    fn br_netfilter_check_looks_for_the_sysctl_files() {
        let dir = std::env::temp_dir().join(format!("frs-brnf-{}", std::process::id()));
        let bridge = dir.join("net/bridge");
        std::fs::create_dir_all(&bridge).unwrap();
        let mut cfg = TrafficConfig::new(
            Some(nets("10.244.0.0/16", "10.244.1.0/24")),
            Some(nets("fd00:10::/56", "fd00:10:0:1::/64")),
        );
        let err = TrafficRules::new(cfg.clone())
            .unwrap()
            .check_br_netfilter_in(&dir)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("bridge-nf-call-iptables does not exist"),
            "{err}"
        );
        std::fs::write(bridge.join("bridge-nf-call-iptables"), "1").unwrap();
        let err = TrafficRules::new(cfg.clone())
            .unwrap()
            .check_br_netfilter_in(&dir)
            .unwrap_err();
        assert!(
            err.to_string().contains("bridge-nf-call-ip6tables"),
            "{err}"
        );
        std::fs::write(bridge.join("bridge-nf-call-ip6tables"), "1").unwrap();
        assert!(
            TrafficRules::new(cfg.clone())
                .unwrap()
                .check_br_netfilter_in(&dir)
                .is_ok()
        );
        cfg.nftables = true;
        assert!(
            TrafficRules::new(cfg)
                .unwrap()
                .check_br_netfilter_in(Path::new("/nonexistent"))
                .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn commands_report_stderr_missing_programs_and_timeouts() {
        let err = run_command(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c echo boom >&2; exit 3` failed (exit status: 3): boom"
        );
        let out = run_command("cat", &[], Some("fed via stdin\n"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out, "fed via stdin\n");
        let err = run_command("frs-no-such-tool", &["-S"], None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.is_missing_program(), "{err}");
        assert_eq!(
            err.to_string(),
            "`frs-no-such-tool` is not installed or not on PATH (needed for `frs-no-such-tool -S`)"
        );
        let started = std::time::Instant::now();
        let err = run_command("sleep", &["30"], None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, TrafficError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn blackhole_subnets_are_normalised() {
        let b = BlackholeRoutes::new([
            "10.244.1.1/24".parse().unwrap(),
            "fd00:10:0:1::5/64".parse().unwrap(),
        ]);
        assert_eq!(
            b.subnets(),
            [
                "10.244.1.0/24".parse::<IpNetwork>().unwrap(),
                "fd00:10:0:1::/64".parse().unwrap()
            ]
        );
    }
}
