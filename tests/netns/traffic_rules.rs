//! ip-masq / forward rules and the blackhole route (`flanneld::traffic`) against the real
//! iptables, ip6tables, nft and kernel, each test inside its own network namespace. The code
//! under test runs on a thread that entered the namespace (its child processes inherit it);
//! the checks use `ip netns exec NS iptables -S` / `nft list` as an independent view.

use std::future::Future;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use flannel_rs::flanneld::traffic::{
    BlackholeRoutes, BlackholeState, EnsureOutcome, FamilyNets, ToolNames, TrafficConfig,
    TrafficRules,
};
use flannel_rs::netlink::Netlink;
use flannel_rs::subnet_env::SubnetEnv;
use nix::sched::{CloneFlags, setns};
use tokio_util::sync::CancellationToken;

use crate::harness::{NetnsGuard, add_veth, ip_json, netns};

const N4: &str = "10.244.0.0/16";
const S4: &str = "10.244.1.0/24";
const N6: &str = "fd00:10::/56";
const S6: &str = "fd00:10:0:1::/64";

/// Runs `body` on a current-thread runtime on a thread inside `ns`, after proving that the
/// thread really is in the test namespace (never the root namespace's firewall).
fn in_netns<F, Fut, T>(ns: &NetnsGuard, body: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let file = ns.open().expect("open the test namespace");
    let want = std::fs::metadata(ns.path()).expect("stat test netns").ino();
    let outer = std::fs::metadata("/proc/self/ns/net")
        .expect("stat own netns")
        .ino();
    assert_ne!(
        want, outer,
        "test namespace must differ from the test process's"
    );
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            setns(file.file().as_fd(), CloneFlags::CLONE_NEWNET).expect("enter test netns");
            let here = std::fs::metadata("/proc/thread-self/ns/net")
                .expect("stat thread netns")
                .ino();
            assert_eq!(
                here, want,
                "code under test must run inside the test namespace"
            );
            assert_ne!(here, outer);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `ip netns exec NS program args`: stdout, panicking with stderr on failure.
fn sh(ns: &NetnsGuard, program: &str, args: &[&str]) -> String {
    let out = ns.exec(program, args).expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn nets(n: &str, s: &str) -> FamilyNets {
    FamilyNets {
        network: n.parse().unwrap(),
        subnet: s.parse().unwrap(),
    }
}

fn config(masq: bool, forward: bool, nftables: bool) -> TrafficConfig {
    let mut c = TrafficConfig::new(Some(nets(N4, S4)), Some(nets(N6, S6)));
    c.ip_masq = masq;
    c.forward_rules = forward;
    c.nftables = nftables;
    c
}

/// One `ensure` of fresh rules for `config`; what it repaired.
async fn ensure_once(config: TrafficConfig) -> Vec<String> {
    repaired(TrafficRules::new(config).unwrap().ensure().await.unwrap())
}

fn repaired(outcome: EnsureOutcome) -> Vec<String> {
    match outcome {
        EnsureOutcome::Repaired { what } => what,
        EnsureOutcome::Unchanged => panic!("expected a repair, got Unchanged"),
    }
}

/// One `ensure` of `rules` repairs exactly `want`, in that order.
async fn assert_repairs(rules: &TrafficRules, want: &[&str]) {
    assert_eq!(repaired(rules.ensure().await.unwrap()), want);
}

/// With everything in place, `ensure` changes nothing, again and again (the figure: how long
/// one takes, for `setup`), and a restarted daemon (new instance, `config`) adopts the rules as
/// they are.
async fn assert_steady(rules: &TrafficRules, config: TrafficConfig, setup: &str) {
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
    }
    eprintln!(
        "figure: ensure() with everything in place ({setup}): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    let restarted = TrafficRules::new(config).unwrap();
    assert_eq!(restarted.ensure().await.unwrap(), EnsureOutcome::Unchanged);
}

// Golden text from upstream (upstream's pkg/trafficmngr), written out literally on purpose.
const MASQ_JUMP: &str = r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#;
const FWD_JUMP: &str = r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#;
const FOREIGN_NAT: &str =
    r#"-A POSTROUTING -s 192.0.2.0/24 -m comment --comment "someone else" -j MASQUERADE"#;
const FOREIGN_FWD: &str =
    r#"-A FORWARD -s 192.0.2.0/24 -m comment --comment "someone else" -j DROP"#;
const FOREIGN_NAT6: &str =
    r#"-A POSTROUTING -s 2001:db8::/64 -m comment --comment "someone else" -j MASQUERADE"#;

fn golden_postrtg_v4(random_fully: &str) -> Vec<String> {
    let c = r#"-m comment --comment "flanneld masq""#;
    vec![
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
        format!(
            "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {c} -j MASQUERADE{random_fully}"
        ),
        format!(
            "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {c} -j MASQUERADE{random_fully}"
        ),
    ]
}

fn golden_postrtg_v6() -> Vec<String> {
    let c = r#"-m comment --comment "flanneld masq""#;
    vec![
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd00:10:0:1::/64 -d fd00:10::/56 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s fd00:10::/56 -d fd00:10:0:1::/64 {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s fd00:10::/56 -d fd00:10:0:1::/64 {c} -j RETURN"),
        format!(
            "-A FLANNEL-POSTRTG -s fd00:10::/56 ! -d ff00::/8 {c} -j MASQUERADE --random-fully"
        ),
        format!(
            "-A FLANNEL-POSTRTG ! -s fd00:10::/56 -d fd00:10::/56 {c} -j MASQUERADE --random-fully"
        ),
    ]
}

fn golden_fwd(n: &str) -> Vec<String> {
    vec![
        format!(r#"-A FLANNEL-FWD -s {n} -m comment --comment "flanneld forward" -j ACCEPT"#),
        format!(r#"-A FLANNEL-FWD -d {n} -m comment --comment "flanneld forward" -j ACCEPT"#),
    ]
}

/// The full `iptables -t nat -S` listing: policies, our chain, hook rules in order, our rules.
fn nat_listing(hook: &[&str], chain: &[String]) -> Vec<String> {
    let mut want = lines(
        "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG",
    );
    want.extend(hook.iter().map(|s| s.to_string()));
    want.extend(chain.iter().cloned());
    want
}

fn filter_listing(hook: &[&str], chain: &[String]) -> Vec<String> {
    let mut want = lines("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N FLANNEL-FWD");
    want.extend(hook.iter().map(|s| s.to_string()));
    want.extend(chain.iter().cloned());
    want
}

fn ipt(ns: &NetnsGuard, bin: &str, table: &str) -> Vec<String> {
    lines(&sh(ns, bin, &["-t", table, "-S"]))
}

/// The nat and filter tables of both families, as listed.
fn all_iptables(ns: &NetnsGuard) -> Vec<Vec<String>> {
    ["nat", "filter"]
        .iter()
        .flat_map(|t| [ipt(ns, "iptables", t), ipt(ns, "ip6tables", t)])
        .collect()
}

fn assert_all_golden(ns: &NetnsGuard, foreign: bool) {
    let (nat4, nat6, fwd): (Vec<&str>, Vec<&str>, Vec<&str>) = if foreign {
        (
            vec![FOREIGN_NAT, MASQ_JUMP],
            vec![FOREIGN_NAT6, MASQ_JUMP],
            vec![FOREIGN_FWD, FWD_JUMP],
        )
    } else {
        (vec![MASQ_JUMP], vec![MASQ_JUMP], vec![FWD_JUMP])
    };
    assert_eq!(
        ipt(ns, "iptables", "nat"),
        nat_listing(&nat4, &golden_postrtg_v4(" --random-fully"))
    );
    assert_eq!(
        ipt(ns, "ip6tables", "nat"),
        nat_listing(&nat6, &golden_postrtg_v6())
    );
    assert_eq!(
        ipt(ns, "iptables", "filter"),
        filter_listing(&fwd, &golden_fwd(N4))
    );
    let fwd6: Vec<&str> = vec![FWD_JUMP];
    assert_eq!(
        ipt(ns, "ip6tables", "filter"),
        filter_listing(&fwd6, &golden_fwd("fd00:10::/56"))
    );
}

fn add_foreign_rules(ns: &NetnsGuard) {
    let c = ["-m", "comment", "--comment", "someone else"];
    let mut a = vec!["-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24"];
    a.extend(c);
    a.extend(["-j", "MASQUERADE"]);
    sh(ns, "iptables", &a);
    let mut a = vec!["-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8::/64"];
    a.extend(c);
    a.extend(["-j", "MASQUERADE"]);
    sh(ns, "ip6tables", &a);
    let mut a = vec!["-A", "FORWARD", "-s", "192.0.2.0/24"];
    a.extend(c);
    a.extend(["-j", "DROP"]);
    sh(ns, "iptables", &a);
}

#[test]
fn iptables_rules_match_upstream_layout_and_second_ensure_changes_nothing() {
    let ns = netns("tr-gold");
    add_foreign_rules(&ns);
    in_netns(&ns, || async {
        let rules = TrafficRules::new(config(true, true, false)).unwrap();
        assert_repairs(
            &rules,
            &[
                "IPv4 nat FLANNEL-POSTRTG: chain missing",
                "IPv4 filter FLANNEL-FWD: chain missing",
                "IPv6 nat FLANNEL-POSTRTG: chain missing",
                "IPv6 filter FLANNEL-FWD: chain missing",
            ],
        )
        .await;
        assert_all_golden(&ns, true);
        let before = all_iptables(&ns);
        assert_steady(
            &rules,
            config(true, true, false),
            "IPv4+IPv6, masq+forward, iptables-nft",
        )
        .await;
        assert_eq!(
            before,
            all_iptables(&ns),
            "nothing rewritten, nothing duplicated"
        );
    });
}

#[test]
fn random_fully_is_left_out_when_disabled() {
    let ns = netns("tr-norand");
    in_netns(&ns, || async {
        let mut cfg = config(true, false, false);
        cfg.v6 = None;
        cfg.fully_random_wanted = false;
        let rules = TrafficRules::new(cfg).unwrap();
        repaired(rules.ensure().await.unwrap());
        assert_eq!(
            ipt(&ns, "iptables", "nat"),
            nat_listing(&[MASQ_JUMP], &golden_postrtg_v4(""))
        );
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
        // Forward rules off: the filter table was never touched.
        assert!(!sh(&ns, "iptables", &["-S"]).contains("FLANNEL"));
    });
}

#[test]
fn deleted_rules_jumps_chains_and_intruders_are_repaired_in_order() {
    let ns = netns("tr-repair");
    add_foreign_rules(&ns);
    in_netns(&ns, || async {
        let rules = TrafficRules::new(config(true, true, false)).unwrap();
        repaired(rules.ensure().await.unwrap());

        // A rule in the middle of our chain deleted.
        sh(
            &ns,
            "iptables",
            &["-t", "nat", "-D", "FLANNEL-POSTRTG", "3"],
        );
        assert_repairs(&rules, &["IPv4 nat FLANNEL-POSTRTG: rule list differs"]).await;
        assert_all_golden(&ns, true);

        // Someone inserts a rule into our chain.
        sh(
            &ns,
            "ip6tables",
            &["-t", "nat", "-I", "FLANNEL-POSTRTG", "1", "-j", "RETURN"],
        );
        assert_repairs(&rules, &["IPv6 nat FLANNEL-POSTRTG: rule list differs"]).await;
        assert_all_golden(&ns, true);

        // The jump deleted while a foreign rule was appended after it: jump re-appended.
        let jump_args = [
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ];
        let mut del = vec!["-t", "nat", "-D", "POSTROUTING"];
        del.extend(jump_args);
        sh(&ns, "iptables", &del);
        sh(
            &ns,
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-d",
                "198.51.100.0/24",
                "-j",
                "RETURN",
            ],
        );
        assert_repairs(
            &rules,
            &["IPv4 nat FLANNEL-POSTRTG: jump from POSTROUTING missing"],
        )
        .await;
        let later = "-A POSTROUTING -d 198.51.100.0/24 -j RETURN";
        assert_eq!(
            ipt(&ns, "iptables", "nat"),
            nat_listing(
                &[FOREIGN_NAT, later, MASQ_JUMP],
                &golden_postrtg_v4(" --random-fully")
            )
        );

        // A duplicate jump (e.g. appended by an old flanneld) is removed; one stays.
        let mut dup = vec!["-t", "nat", "-A", "POSTROUTING"];
        dup.extend(jump_args);
        sh(&ns, "iptables", &dup);
        assert_repairs(
            &rules,
            &["IPv4 nat FLANNEL-POSTRTG: 1 stale rule(s) in POSTROUTING"],
        )
        .await;
        let nat = ipt(&ns, "iptables", "nat");
        assert_eq!(
            nat.iter().filter(|l| *l == MASQ_JUMP).count(),
            1,
            "{nat:#?}"
        );
        assert!(nat.contains(&FOREIGN_NAT.to_string()) && nat.contains(&later.to_string()));

        // The whole filter chain deleted (jump first, then the chain).
        sh(
            &ns,
            "iptables",
            &[
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "flanneld forward",
                "-j",
                "FLANNEL-FWD",
            ],
        );
        sh(&ns, "iptables", &["-F", "FLANNEL-FWD"]);
        sh(&ns, "iptables", &["-X", "FLANNEL-FWD"]);
        assert_repairs(&rules, &["IPv4 filter FLANNEL-FWD: chain missing"]).await;
        assert_eq!(
            ipt(&ns, "iptables", "filter"),
            filter_listing(&[FOREIGN_FWD, FWD_JUMP], &golden_fwd(N4))
        );
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
    });
}

#[test]
fn network_change_replaces_old_rules_including_old_layout_leftovers() {
    let ns = netns("tr-netchg");
    in_netns(&ns, || async {
        let mut old = config(true, true, false);
        old.v4 = Some(nets("10.1.0.0/16", "10.1.7.0/24"));
        old.v6 = None;
        ensure_once(old).await;
        assert!(sh(&ns, "iptables", &["-t", "nat", "-S"]).contains("10.1.7.0/24"));
        // A rule of the pre-v0.20 layout (masquerade rules directly in POSTROUTING).
        sh(
            &ns,
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.1.0.0/16",
                "-d",
                "10.1.0.0/16",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN",
            ],
        );

        let mut new = config(true, true, false);
        new.v6 = None;
        new.previous = Some(
            SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
                .unwrap(),
        );
        let what = ensure_once(new).await;
        assert_eq!(
            what,
            [
                "IPv4 nat FLANNEL-POSTRTG: rule list differs",
                "IPv4 filter FLANNEL-FWD: rule list differs",
            ]
        );
        let nat = sh(&ns, "iptables", &["-t", "nat", "-S"]);
        let filter = sh(&ns, "iptables", &["-S"]);
        assert!(
            !nat.contains("10.1.") && !filter.contains("10.1."),
            "{nat}\n{filter}"
        );
        assert_eq!(
            ipt(&ns, "iptables", "nat"),
            nat_listing(&[MASQ_JUMP], &golden_postrtg_v4(" --random-fully"))
        );
        assert_eq!(
            ipt(&ns, "iptables", "filter"),
            filter_listing(&[FWD_JUMP], &golden_fwd(N4))
        );
    });
}

#[test]
fn disabling_masquerade_removes_only_our_masquerade_chain() {
    let ns = netns("tr-off");
    add_foreign_rules(&ns);
    in_netns(&ns, || async {
        ensure_once(config(true, true, false)).await;
        let rules = TrafficRules::new(config(false, true, false)).unwrap();
        assert_repairs(
            &rules,
            &[
                "IPv4 nat FLANNEL-POSTRTG: removed",
                "IPv6 nat FLANNEL-POSTRTG: removed",
            ],
        )
        .await;
        assert_eq!(
            ipt(&ns, "iptables", "nat"),
            lines(
                "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"
            )
            .into_iter()
            .chain([FOREIGN_NAT.to_string()])
            .collect::<Vec<_>>()
        );
        assert_eq!(
            ipt(&ns, "iptables", "filter"),
            filter_listing(&[FOREIGN_FWD, FWD_JUMP], &golden_fwd(N4))
        );
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
    });
}

const NFT_V4: &str = "table ip flannel-ipv4 {
\tcomment \"rules for flannel-ipv4\"
\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}

\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
}
";

const NFT_V6: &str = "table ip6 flannel-ipv6 {
\tcomment \"rules for flannel-ipv6\"
\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip6 saddr fd00:10::/56 accept
\t\tip6 daddr fd00:10::/56 accept
\t}

\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip6 saddr fd00:10:0:1::/64 ip6 daddr fd00:10::/56 return
\t\tip6 saddr fd00:10::/56 ip6 daddr fd00:10:0:1::/64 return
\t\tip6 saddr != fd00:10:0:1::/64 ip6 daddr fd00:10::/56 return
\t\tip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade fully-random
\t\tip6 saddr != fd00:10::/56 ip6 daddr fd00:10::/56 masquerade fully-random
\t}
}
";

fn nft_table(ns: &NetnsGuard, family: &str, name: &str) -> String {
    sh(ns, "nft", &["list", "table", family, name])
}

fn no_flannel_iptables(ns: &NetnsGuard) {
    for bin in ["iptables", "ip6tables"] {
        for table in ["nat", "filter"] {
            let listing = sh(ns, bin, &["-t", table, "-S"]);
            assert!(
                !listing.contains("FLANNEL") && !listing.contains("flanneld"),
                "{bin} {table}: {listing}"
            );
        }
    }
}

#[test]
fn nftables_mode_creates_tables_cleans_iptables_leftovers_and_resyncs() {
    let ns = netns("tr-nft");
    add_foreign_rules(&ns);
    in_netns(&ns, || async {
        // iptables mode first (as before a switch to EnableNFTables).
        ensure_once(config(true, true, false)).await;

        let rules = TrafficRules::new(config(true, true, true)).unwrap();
        assert_repairs(
            &rules,
            &[
                "nft ip flannel-ipv4: table missing",
                "nft ip6 flannel-ipv6: table missing",
                "IPv4 nat FLANNEL-POSTRTG: removed",
                "IPv4 filter FLANNEL-FWD: removed",
                "IPv6 nat FLANNEL-POSTRTG: removed",
                "IPv6 filter FLANNEL-FWD: removed",
            ],
        )
        .await;
        assert_eq!(nft_table(&ns, "ip", "flannel-ipv4"), NFT_V4);
        assert_eq!(nft_table(&ns, "ip6", "flannel-ipv6"), NFT_V6);
        no_flannel_iptables(&ns);
        // Others' rules stay.
        assert!(ipt(&ns, "iptables", "nat").contains(&FOREIGN_NAT.to_string()));
        assert!(ipt(&ns, "ip6tables", "nat").contains(&FOREIGN_NAT6.to_string()));
        assert!(ipt(&ns, "iptables", "filter").contains(&FOREIGN_FWD.to_string()));

        assert_steady(&rules, config(true, true, true), "IPv4+IPv6 nft tables").await;

        // Resync (beyond upstream): a flushed chain and a deleted table come back.
        sh(
            &ns,
            "nft",
            &["flush", "chain", "ip", "flannel-ipv4", "postrtg"],
        );
        assert_repairs(&rules, &["nft ip flannel-ipv4: table differs"]).await;
        assert_eq!(nft_table(&ns, "ip", "flannel-ipv4"), NFT_V4);
        sh(&ns, "nft", &["delete", "table", "ip6", "flannel-ipv6"]);
        assert_repairs(&rules, &["nft ip6 flannel-ipv6: table missing"]).await;
        assert_eq!(nft_table(&ns, "ip6", "flannel-ipv6"), NFT_V6);
        // A rule someone adds to our table is removed.
        sh(
            &ns,
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "flannel-ipv4",
                "forward",
                "ip",
                "saddr",
                "192.0.2.1",
                "drop",
            ],
        );
        assert_repairs(&rules, &["nft ip flannel-ipv4: table differs"]).await;
        assert_eq!(nft_table(&ns, "ip", "flannel-ipv4"), NFT_V4);
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
    });
}

#[test]
fn iptables_mode_removes_nftables_mode_tables() {
    let ns = netns("tr-back");
    in_netns(&ns, || async {
        ensure_once(config(true, true, true)).await;
        assert_eq!(nft_table(&ns, "ip", "flannel-ipv4"), NFT_V4);
        // nftables mode created no iptables(-nft) tables while looking for leftovers.
        assert_eq!(
            sh(&ns, "nft", &["list", "tables"]),
            "table ip flannel-ipv4\ntable ip6 flannel-ipv6\n"
        );
        // An unrelated nft table must survive.
        sh(&ns, "nft", &["add", "table", "inet", "someone-else"]);

        let rules = TrafficRules::new(config(true, true, false)).unwrap();
        let what = repaired(rules.ensure().await.unwrap());
        assert!(
            what.contains(&"nft ip flannel-ipv4: removed".to_string()),
            "{what:?}"
        );
        assert!(
            what.contains(&"nft ip6 flannel-ipv6: removed".to_string()),
            "{what:?}"
        );
        let tables = sh(&ns, "nft", &["list", "tables"]);
        assert!(!tables.contains("flannel"), "{tables}");
        assert!(tables.contains("table inet someone-else"), "{tables}");
        assert_all_golden(&ns, false);
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
    });
}

#[test]
fn legacy_iptables_backend_gets_the_same_rules() {
    let ns = netns("tr-legacy");
    in_netns(&ns, || async {
        let mut cfg = config(true, true, false);
        cfg.tools = ToolNames::legacy();
        let rules = TrafficRules::new(cfg).unwrap();
        repaired(rules.ensure().await.unwrap());
        assert_eq!(
            ipt(&ns, "iptables-legacy", "nat"),
            nat_listing(&[MASQ_JUMP], &golden_postrtg_v4(" --random-fully"))
        );
        assert_eq!(
            ipt(&ns, "ip6tables-legacy", "nat"),
            nat_listing(&[MASQ_JUMP], &golden_postrtg_v6())
        );
        assert_eq!(
            ipt(&ns, "iptables-legacy", "filter"),
            filter_listing(&[FWD_JUMP], &golden_fwd(N4))
        );
        assert_eq!(rules.ensure().await.unwrap(), EnsureOutcome::Unchanged);
        sh(
            &ns,
            "iptables-legacy",
            &["-t", "nat", "-D", "FLANNEL-POSTRTG", "1"],
        );
        assert_repairs(&rules, &["IPv4 nat FLANNEL-POSTRTG: rule list differs"]).await;
        assert_eq!(
            ipt(&ns, "iptables-legacy", "nat"),
            nat_listing(&[MASQ_JUMP], &golden_postrtg_v4(" --random-fully"))
        );
    });
}

#[test]
fn resync_loop_repairs_until_shutdown_and_errors_name_the_command() {
    let ns = netns("tr-loop");
    in_netns(&ns, || async {
        let rules = TrafficRules::new(config(true, true, false)).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rules.run(Duration::from_millis(100), |_| {}, shutdown.clone()));
        let golden = nat_listing(&[MASQ_JUMP], &golden_postrtg_v4(" --random-fully"));
        let wait_for_golden = |what: &'static str| {
            let ns = &ns;
            let golden = golden.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while ipt(ns, "iptables", "nat") != golden {
                    assert!(Instant::now() < deadline, "not repaired: {what}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        wait_for_golden("initial install").await;
        sh(&ns, "iptables", &["-t", "nat", "-F", "FLANNEL-POSTRTG"]);
        wait_for_golden("flushed chain").await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run() stops on shutdown")
            .unwrap();
        // Rules stay after shutdown, like upstream.
        assert_eq!(ipt(&ns, "iptables", "nat"), golden);

        let mut broken = config(true, false, false);
        broken.tools.iptables = "frs-no-such-iptables".into();
        let err = TrafficRules::new(broken)
            .unwrap()
            .ensure()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`frs-no-such-iptables` is not installed or not on PATH (needed for `frs-no-such-iptables --version`)"
        );
    });
}

fn blackholes(ns: &NetnsGuard, family: &str) -> Vec<String> {
    ip_json(ns, &[family, "route", "show", "type", "blackhole"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn blackhole_routes_are_added_kept_and_never_shadow_an_existing_route() {
    let ns = netns("tr-bh");
    // A bridge-plugin-like connected route for another subnet.
    add_veth(&ns, "cni0", "cni1");
    ns.ip(&["addr", "add", "10.244.5.1/24", "dev", "cni0"])
        .unwrap();
    ns.ip(&["link", "set", "cni0", "up"]).unwrap();
    in_netns(&ns, || async {
        let nl = Netlink::current().unwrap();
        let holes = BlackholeRoutes::new([S4.parse().unwrap(), S6.parse().unwrap()]);
        assert_eq!(
            holes.ensure(&nl).await.unwrap(),
            [BlackholeState::Added, BlackholeState::Added]
        );
        assert_eq!(blackholes(&ns, "-4"), ["10.244.1.0/24"]);
        assert_eq!(blackholes(&ns, "-6"), ["fd00:10:0:1::/64"]);
        assert_eq!(
            holes.ensure(&nl).await.unwrap(),
            [BlackholeState::Present, BlackholeState::Present]
        );
        assert_eq!(blackholes(&ns, "-4"), ["10.244.1.0/24"], "not duplicated");

        let covered = BlackholeRoutes::new(["10.244.5.0/24".parse().unwrap()]);
        let states = covered.ensure(&nl).await.unwrap();
        assert!(
            matches!(&states[..], [BlackholeState::CoveredBy(_)]),
            "{states:?}"
        );
        let cni = ip_json(&ns, &["route", "show", "10.244.5.0/24"]);
        assert_eq!(cni[0]["dev"], "cni0", "{cni}");
        assert_eq!(blackholes(&ns, "-4"), ["10.244.1.0/24"]);

        // The periodic loop restores a deleted blackhole route.
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(holes.clone().run(
            nl.clone(),
            Duration::from_millis(100),
            shutdown.clone(),
        ));
        ns.ip(&["route", "del", "blackhole", "10.244.1.0/24"])
            .unwrap();
        ns.ip(&["-6", "route", "del", "blackhole", "fd00:10:0:1::/64"])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while blackholes(&ns, "-4").is_empty() || blackholes(&ns, "-6").is_empty() {
            assert!(Instant::now() < deadline, "blackhole routes not restored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(blackholes(&ns, "-4"), ["10.244.1.0/24"]);
    });
}
