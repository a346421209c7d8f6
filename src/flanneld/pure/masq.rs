//! ip-masq and forward rules (upstream's pkg/trafficmngr) as pure text: the upstream rule set in `iptables -S`
//! form, `iptables-restore --noflush` payloads that rewrite our chains atomically, checks of
//! `iptables -S` output, and the nftables ruleset for `EnableNFTables`. The I/O side that runs
//! the tools is [`crate::flanneld::traffic`].
//!
//! Mechanism note: one `iptables-restore --noflush` transaction per table replaces our chain as a
//! whole (the `:CHAIN - [0:0]` line flushes it), so stale rules from an old subnet vanish in the
//! same atomic step and nobody else's rules are touched. In the hook chain (POSTROUTING,
//! FORWARD) our rules are recognised by our comment: the jump is appended only when missing, so
//! resyncs never reorder the hook chain, and any other rule of ours there (duplicate jumps,
//! the pre-v0.20 layout) is deleted in the same transaction. Only rules just seen in `-S`
//! output are deleted, because deleting an absent rule fails the whole transaction.
//! Checks against real iptables 1.8.9 (nf_tables and legacy) and nft 1.0.6 confirmed that the
//! tools print these rules exactly as rendered here (tests/netns/traffic_rules.rs).

use ipnetwork::IpNetwork;

use crate::net::{Family, go_net_string};

pub const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
pub const MASQ_COMMENT: &str = "flanneld masq";
pub const FWD_COMMENT: &str = "flanneld forward";

/// The multicast range excluded from masquerading.
pub fn multicast_range(family: Family) -> &'static str {
    match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
}

/// `iptables` or `ip6tables`.
pub fn iptables_binary(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// Masquerade inputs for one family: `N` = cluster network, `S` = our pod subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqSpec {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
    /// Use `--random-fully` (flag not disabled and supported by iptables).
    pub fully_random: bool,
}

impl MasqSpec {
    pub fn family(&self) -> Family {
        Family::of_net(self.network)
    }
}

/// `-A POSTROUTING … -j FLANNEL-POSTRTG`.
pub fn masq_jump_rule() -> String {
    format!("-A POSTROUTING -m comment --comment \"{MASQ_COMMENT}\" -j {POSTRTG_CHAIN}")
}

/// `-A FORWARD … -j FLANNEL-FWD`.
pub fn forward_jump_rule() -> String {
    format!("-A FORWARD -m comment --comment \"{FWD_COMMENT}\" -j {FWD_CHAIN}")
}

/// The rules of `FLANNEL-POSTRTG` exactly as `iptables -t nat -S FLANNEL-POSTRTG` prints them.
pub fn masq_rules(spec: &MasqSpec) -> Vec<String> {
    let n = go_net_string(spec.network);
    let s = go_net_string(spec.subnet);
    let mc = multicast_range(spec.family());
    let c = format!("-m comment --comment \"{MASQ_COMMENT}\"");
    let masq = if spec.fully_random {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    let ch = POSTRTG_CHAIN;
    vec![
        format!("-A {ch} -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A {ch} -s {s} -d {n} {c} -j RETURN"),
        format!("-A {ch} -s {n} -d {s} {c} -j RETURN"),
        format!("-A {ch} ! -s {n} -d {s} {c} -j RETURN"),
        format!("-A {ch} -s {n} ! -d {mc} {c} {masq}"),
        format!("-A {ch} ! -s {n} -d {n} {c} {masq}"),
    ]
}

/// The rules of `FLANNEL-FWD` as `iptables -t filter -S FLANNEL-FWD` prints them.
pub fn forward_rules(network: IpNetwork) -> Vec<String> {
    let n = go_net_string(network);
    let c = format!("-m comment --comment \"{FWD_COMMENT}\"");
    vec![
        format!("-A {FWD_CHAIN} -s {n} {c} -j ACCEPT"),
        format!("-A {FWD_CHAIN} -d {n} {c} -j ACCEPT"),
    ]
}

/// What [`check_hook`] found of ours in a hook chain (`POSTROUTING`, `FORWARD`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookCheck {
    /// A rule jumping to our chain is present; it is left where it is so that a resync never
    /// reorders the hook chain (others append after it).
    pub jump_present: bool,
    /// Our other rules there, as printed by `-S`: duplicate jumps and rules of older layouts
    /// (before v0.20 the masquerade rules sat directly in POSTROUTING). They are deleted.
    pub stale: Vec<String>,
}

impl HookCheck {
    /// Exactly one jump and nothing else of ours.
    pub fn is_clean(&self) -> bool {
        self.jump_present && self.stale.is_empty()
    }

    /// Every rule of ours in the hook chain (the jump included), for removal.
    pub fn all_ours(&self, jump: String) -> Vec<String> {
        let mut all = self.stale.clone();
        if self.jump_present {
            all.insert(0, jump);
        }
        all
    }
}

/// Our rules in the `iptables -S <HOOK>` output: those carrying our comment. The first one that
/// jumps to `chain` is the jump; every other one is stale.
pub fn check_hook(iptables_s_output: &str, hook: &str, chain: &str, comment: &str) -> HookCheck {
    let prefix = format!("-A {hook} ");
    let marker = format!("--comment \"{comment}\"");
    let jump_suffix = format!(" -j {chain}");
    let mut check = HookCheck::default();
    for line in iptables_s_output.lines().map(str::trim_end) {
        if !line.starts_with(&prefix) || !line.contains(&marker) {
            continue;
        }
        if !check.jump_present && line.ends_with(&jump_suffix) {
            check.jump_present = true;
        } else {
            check.stale.push(line.to_string());
        }
    }
    check
}

/// The `-D` form of a rule printed as `-A CHAIN …` (deletes the first identical rule).
pub fn delete_rule(printed: &str) -> String {
    match printed.strip_prefix("-A ") {
        Some(rest) => format!("-D {rest}"),
        None => printed.to_string(),
    }
}

/// `iptables-restore --noflush` input that deletes `stale` hook rules, rewrites `chain` as a
/// whole (the `:CHAIN - [0:0]` line creates or flushes it) and appends `jump` when given —
/// one atomic transaction that touches no other chain's rules.
pub fn chain_restore_payload(
    table: &str,
    chain: &str,
    rules: &[String],
    stale: &[String],
    jump: Option<String>,
) -> String {
    let mut out = format!("*{table}\n");
    for r in stale {
        out.push_str(&delete_rule(r));
        out.push('\n');
    }
    out.push_str(&format!(":{chain} - [0:0]\n"));
    for r in rules {
        out.push_str(r);
        out.push('\n');
    }
    if let Some(j) = jump {
        out.push_str(&j);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input that removes our chain and our hook rules (`hook_rules`
/// as printed by `-S`, see [`HookCheck::all_ours`]). Deleting a rule that is not there fails
/// the transaction, so only rules just seen are listed; the chain line makes `-X` safe.
pub fn chain_removal_payload(table: &str, chain: &str, hook_rules: &[String]) -> String {
    let mut out = format!("*{table}\n");
    for r in hook_rules {
        out.push_str(&delete_rule(r));
        out.push('\n');
    }
    out.push_str(&format!(":{chain} - [0:0]\n-X {chain}\nCOMMIT\n"));
    out
}

/// `iptables-restore --noflush` input (table `nat`) that rewrites `FLANNEL-POSTRTG`, deletes
/// stale hook rules and appends the POSTROUTING jump only when it is missing.
pub fn masq_restore_payload(spec: &MasqSpec, hook: &HookCheck) -> String {
    chain_restore_payload(
        "nat",
        POSTRTG_CHAIN,
        &masq_rules(spec),
        &hook.stale,
        (!hook.jump_present).then(masq_jump_rule),
    )
}

/// `iptables-restore --noflush` input (table `filter`) for `FLANNEL-FWD` and its FORWARD jump.
pub fn forward_restore_payload(network: IpNetwork, hook: &HookCheck) -> String {
    chain_restore_payload(
        "filter",
        FWD_CHAIN,
        &forward_rules(network),
        &hook.stale,
        (!hook.jump_present).then(forward_jump_rule),
    )
}

/// The chain's own rules in `iptables -S` output (the `-N`/`-P` lines and other chains'
/// rules dropped), trailing blanks trimmed.
pub fn chain_rule_lines<'a>(iptables_s_output: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    iptables_s_output
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// True when `iptables -S <CHAIN>` output holds exactly `expected` as the chain's rules, in
/// order (the `-N` line is ignored).
pub fn chain_matches(iptables_s_output: &str, chain: &str, expected: &[String]) -> bool {
    let actual = chain_rule_lines(iptables_s_output, chain);
    actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, e)| a == e)
}

/// True when `iptables -S <HOOK CHAIN>` output contains `rule` (e.g. [`masq_jump_rule`]).
pub fn rule_present(iptables_s_output: &str, rule: &str) -> bool {
    iptables_s_output.lines().any(|l| l.trim_end() == rule)
}

/// What the nftables table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftSpec {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
    /// `--ip-masq`: the `postrtg` chain.
    pub masquerade: bool,
    /// `--iptables-forward-rules`: the `forward` chain.
    pub forward: bool,
    pub fully_random: bool,
}

/// `flannel-ipv4` / `flannel-ipv6`.
pub fn nft_table_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "flannel-ipv4",
        Family::V6 => "flannel-ipv6",
    }
}

/// nftables family keyword, which is also the address-match keyword (`ip saddr`, `ip6 saddr`).
pub fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The table definition as upstream builds it (upstream's pkg/trafficmngr). Rule 4 reproduces upstream's nftables rule
/// (`saddr != S daddr N`), which differs from its iptables rule 4 (`! -s N -d S`); kept identical
/// so that rule listings match upstream's golden output on mixed clusters.
pub fn nft_table(spec: &NftSpec) -> String {
    let family = Family::of_net(spec.network);
    let table_family = nft_family(family);
    let m = table_family;
    let name = nft_table_name(family);
    let n = go_net_string(spec.network);
    let s = go_net_string(spec.subnet);
    let mc = multicast_range(family);
    let fr = if spec.fully_random {
        " fully-random"
    } else {
        ""
    };
    let mut out = format!("table {table_family} {name} {{\n\tcomment \"rules for {name}\"\n");
    if spec.forward {
        out.push_str(&format!(
            "\tchain forward {{\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\t{m} saddr {n} accept\n\
             \t\t{m} daddr {n} accept\n\
             \t}}\n"
        ));
    }
    if spec.masquerade {
        out.push_str(&format!(
            "\tchain postrtg {{\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark 0x00004000 return\n\
             \t\t{m} saddr {s} {m} daddr {n} return\n\
             \t\t{m} saddr {n} {m} daddr {s} return\n\
             \t\t{m} saddr != {s} {m} daddr {n} return\n\
             \t\t{m} saddr {n} {m} daddr != {mc} masquerade{fr}\n\
             \t\t{m} saddr != {n} {m} daddr {n} masquerade{fr}\n\
             \t}}\n"
        ));
    }
    out.push_str("}\n");
    out
}

/// An `nft -f` script that atomically replaces our table (create-if-missing, delete, define —
/// one transaction), leaving every other table alone.
pub fn nft_replace_script(spec: &NftSpec) -> String {
    let family = Family::of_net(spec.network);
    let table_family = nft_family(family);
    let name = nft_table_name(family);
    format!(
        "table {table_family} {name}\ndelete table {table_family} {name}\n{}",
        nft_table(spec)
    )
}

/// An `nft -f` script that removes our table of `family` if it exists (declaring it first
/// makes the delete succeed either way).
pub fn nft_delete_script(family: Family) -> String {
    let table_family = nft_family(family);
    let name = nft_table_name(family);
    format!("table {table_family} {name}\ndelete table {table_family} {name}\n")
}

/// Which of our tables `nft list tables` shows (`table ip flannel-ipv4`, ...).
pub fn nft_tables_present(list_tables_output: &str) -> Vec<Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| {
            let want = format!("table {} {}", nft_family(*f), nft_table_name(*f));
            list_tables_output.lines().any(|l| l.trim() == want)
        })
        .collect()
}

/// The lines of an nft table text without indentation and blank lines, so that our
/// definition and `nft list table` output (which separates chains by a blank line) compare.
pub fn nft_normalized(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// True when `nft list table <family> <name>` output is exactly our table for `spec`.
pub fn nft_table_matches(listing: &str, spec: &NftSpec) -> bool {
    nft_normalized(listing) == nft_normalized(&nft_table(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(fully_random: bool) -> MasqSpec {
        MasqSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            fully_random,
        }
    }

    #[test]
    fn golden_postrtg_rules_v4() {
        let want = [
            r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
        ];
        assert_eq!(masq_rules(&v4(true)), want);
        assert_eq!(
            masq_jump_rule(),
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
        );
        let plain = masq_rules(&v4(false));
        assert!(plain[4].ends_with("-j MASQUERADE"));
        assert!(plain.iter().all(|r| !r.contains("random-fully")));
    }

    #[test]
    fn golden_postrtg_rules_v6() {
        let spec = MasqSpec {
            network: "fd00:10:0:0::/56".parse().unwrap(),
            subnet: "fd00:10:0:3::/64".parse().unwrap(),
            fully_random: true,
        };
        let r = masq_rules(&spec);
        assert_eq!(
            r[4],
            r#"-A FLANNEL-POSTRTG -s fd00:10::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
        );
        assert_eq!(
            r[1],
            r#"-A FLANNEL-POSTRTG -s fd00:10:0:3::/64 -d fd00:10::/56 -m comment --comment "flanneld masq" -j RETURN"#
        );
        assert_eq!(iptables_binary(spec.family()), "ip6tables");
    }

    #[test]
    fn golden_forward_rules() {
        assert_eq!(
            forward_rules("10.244.0.0/16".parse().unwrap()),
            [
                r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
        assert_eq!(
            forward_jump_rule(),
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#
        );
    }

    fn missing_jump() -> HookCheck {
        HookCheck::default()
    }

    fn clean_hook() -> HookCheck {
        HookCheck {
            jump_present: true,
            stale: vec![],
        }
    }

    #[test]
    fn restore_payloads() {
        let p = masq_restore_payload(&v4(true), &missing_jump());
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":FLANNEL-POSTRTG - [0:0]");
        assert_eq!(&lines[2..8], masq_rules(&v4(true)).as_slice());
        assert_eq!(lines[8], masq_jump_rule());
        assert_eq!(lines[9], "COMMIT");
        assert!(p.ends_with("COMMIT\n"));
        let p = masq_restore_payload(&v4(true), &clean_hook());
        assert!(!p.contains("POSTROUTING"), "existing jump left in place");
        assert_eq!(p.lines().count(), 9);

        let f = forward_restore_payload("10.244.0.0/16".parse().unwrap(), &missing_jump());
        assert_eq!(
            f,
            "*filter\n:FLANNEL-FWD - [0:0]\n\
             -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             COMMIT\n"
        );
    }

    #[test]
    fn stale_hook_rules_are_deleted_before_the_chain_is_rewritten() {
        let old = r#"-A POSTROUTING -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#;
        let hook = HookCheck {
            jump_present: true,
            stale: vec![old.to_string()],
        };
        let p = masq_restore_payload(&v4(false), &hook);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(
            lines[1],
            r#"-D POSTROUTING -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#
        );
        assert_eq!(lines[2], ":FLANNEL-POSTRTG - [0:0]");
        assert_eq!(lines.len(), 10, "{p}");
        assert!(!hook.is_clean());
        assert_eq!(
            hook.all_ours(masq_jump_rule()),
            [masq_jump_rule(), old.to_string()]
        );
    }

    #[test]
    fn hook_check_finds_our_jump_duplicates_and_old_layout_rules() {
        let kube = "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING";
        let jump = masq_jump_rule();
        let old = "-A POSTROUTING -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE";
        let listing = format!("-P POSTROUTING ACCEPT\n{kube}\n{jump}\n{old}\n{jump}  \n");
        let c = check_hook(&listing, "POSTROUTING", POSTRTG_CHAIN, MASQ_COMMENT);
        assert!(c.jump_present);
        assert_eq!(c.stale, [old.to_string(), jump.clone()]);
        assert!(!c.is_clean());

        let c = check_hook(
            &format!("{kube}\n{jump}\n"),
            "POSTROUTING",
            POSTRTG_CHAIN,
            MASQ_COMMENT,
        );
        assert!(c.is_clean());
        let c = check_hook(kube, "POSTROUTING", POSTRTG_CHAIN, MASQ_COMMENT);
        assert_eq!(c, HookCheck::default());
        // The FORWARD jump is not mistaken for the masquerade jump.
        let c = check_hook(&forward_jump_rule(), "FORWARD", POSTRTG_CHAIN, MASQ_COMMENT);
        assert_eq!(c, HookCheck::default());
        let c = check_hook(&forward_jump_rule(), "FORWARD", FWD_CHAIN, FWD_COMMENT);
        assert!(c.is_clean());
    }

    #[test]
    fn removal_payload_deletes_seen_rules_then_the_chain() {
        assert_eq!(
            delete_rule(&masq_jump_rule()),
            r#"-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#
        );
        assert_eq!(
            chain_removal_payload("nat", POSTRTG_CHAIN, &[masq_jump_rule()]),
            "*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             :FLANNEL-POSTRTG - [0:0]\n-X FLANNEL-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(
            chain_removal_payload("filter", FWD_CHAIN, &[]),
            "*filter\n:FLANNEL-FWD - [0:0]\n-X FLANNEL-FWD\nCOMMIT\n"
        );
    }

    #[test]
    fn checking_iptables_s_output() {
        let rules = masq_rules(&v4(true));
        let mut out = String::from("-N FLANNEL-POSTRTG\n");
        for r in &rules {
            out.push_str(r);
            out.push('\n');
        }
        assert!(chain_matches(&out, POSTRTG_CHAIN, &rules));
        // missing rule, reordered, or extra rule ⇒ not current
        let missing: String = out
            .lines()
            .filter(|l| !l.contains("0x4000"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!chain_matches(&missing, POSTRTG_CHAIN, &rules));
        let mut reordered = rules.clone();
        reordered.swap(1, 2);
        assert!(!chain_matches(&out, POSTRTG_CHAIN, &reordered));
        let extra = format!("{out}-A FLANNEL-POSTRTG -j ACCEPT\n");
        assert!(!chain_matches(&extra, POSTRTG_CHAIN, &rules));
        assert!(!chain_matches("", POSTRTG_CHAIN, &rules));

        let hook = "-P POSTROUTING ACCEPT\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
        assert!(rule_present(hook, &masq_jump_rule()));
        assert!(!rule_present(hook, &forward_jump_rule()));
    }

    #[test]
    fn golden_nftables_v4() {
        let spec = NftSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            fully_random: true,
        };
        assert_eq!(
            nft_table(&spec),
            "table ip flannel-ipv4 {\n\
             \tcomment \"rules for flannel-ipv4\"\n\
             \tchain forward {\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr 10.244.0.0/16 accept\n\
             \t\tip daddr 10.244.0.0/16 accept\n\
             \t}\n\
             \tchain postrtg {\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark 0x00004000 return\n\
             \t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n\
             \t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return\n\
             \t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n\
             \t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n\
             \t}\n\
             }\n"
        );
        let script = nft_replace_script(&spec);
        assert!(script.starts_with(
            "table ip flannel-ipv4\ndelete table ip flannel-ipv4\ntable ip flannel-ipv4 {\n"
        ));
    }

    #[test]
    fn nft_listing_comparison_and_table_discovery() {
        let spec = NftSpec {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            fully_random: true,
        };
        // `nft list table` indents with tabs and separates chains by a blank line.
        let listing = nft_table(&spec).replace("\t}\n\tchain postrtg", "\t}\n\n\tchain postrtg");
        assert_ne!(listing, nft_table(&spec));
        assert!(nft_table_matches(&listing, &spec));
        let edited = listing.replace("ip daddr 10.244.0.0/16 accept\n", "");
        assert!(!nft_table_matches(&edited, &spec));
        assert!(!nft_table_matches(
            &listing,
            &NftSpec {
                fully_random: false,
                ..spec
            }
        ));
        assert!(!nft_table_matches("", &spec));

        let tables = "table ip nat\ntable ip6 flannel-ipv6\ntable inet flannel-ipv4\n";
        assert_eq!(nft_tables_present(tables), [Family::V6]);
        assert_eq!(
            nft_tables_present("table ip flannel-ipv4\ntable ip6 flannel-ipv6\n"),
            [Family::V4, Family::V6]
        );
        assert_eq!(
            nft_delete_script(Family::V6),
            "table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n"
        );
    }

    #[test]
    fn nftables_v6_and_optional_chains() {
        let spec = NftSpec {
            network: "fd00:10::/56".parse().unwrap(),
            subnet: "fd00:10:0:3::/64".parse().unwrap(),
            masquerade: true,
            forward: false,
            fully_random: false,
        };
        let t = nft_table(&spec);
        assert!(t.starts_with("table ip6 flannel-ipv6 {\n\tcomment \"rules for flannel-ipv6\"\n"));
        assert!(!t.contains("chain forward"));
        assert!(t.contains("\t\tip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade\n"));
        assert!(!t.contains("fully-random"));
        let only_fwd = NftSpec {
            masquerade: false,
            forward: true,
            ..spec
        };
        let t = nft_table(&only_fwd);
        assert!(t.contains("chain forward") && !t.contains("chain postrtg"));
    }
}
