//! The shipped manifest, checked against upstream's (v0.28.9) objects and RBAC and against
//! what our binaries accept and use by default. No root, no network: plain file checks.

mod manifest;

use std::collections::BTreeMap;
use std::path::Path;

use flannel_rs::cni::config::DEFAULT_SUBNET_FILE;
use flannel_rs::cni::install::{self, DEFAULT_CONF_DIR, DEFAULT_PLUGIN_DIR};
use flannel_rs::flanneld::pure::config::Flags;
use flannel_rs::flanneld::pure::netconf::NetConf;
use k8s_openapi::api::core::v1::{Container, VolumeMount};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use manifest::{Manifest, argv, flag_value, load};

fn the_manifest() -> Manifest {
    load(manifest::MANIFEST).unwrap_or_else(|e| panic!("{e}"))
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn rule(resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn every_object_parses_strictly_and_matches_upstreams_names() {
    let m = the_manifest();
    let order: Vec<(&str, &str)> = m
        .order
        .iter()
        .map(|(k, n)| (k.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("Namespace", "kube-flannel"),
            ("ClusterRole", "flannel"),
            ("ClusterRoleBinding", "flannel"),
            ("ServiceAccount", "flannel"),
            ("ConfigMap", "kube-flannel-cfg"),
            ("DaemonSet", "kube-flannel-ds"),
        ]
    );
    assert_eq!(
        m.namespaces[0].metadata.labels,
        labels(&[
            ("k8s-app", "flannel"),
            ("pod-security.kubernetes.io/enforce", "privileged")
        ])
    );
    assert_eq!(
        m.cluster_roles[0].metadata.labels,
        labels(&[("k8s-app", "flannel")])
    );
    let node_labels = labels(&[("tier", "node"), ("k8s-app", "flannel"), ("app", "flannel")]);
    assert_eq!(m.config_map().metadata.labels, node_labels);
    assert_eq!(m.daemon_set().metadata.labels, node_labels);
    for ns in [
        &m.service_accounts[0].metadata.namespace,
        &m.config_map().metadata.namespace,
        &m.daemon_set().metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some("kube-flannel"));
    }
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "flannel");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "flannel", Some("kube-flannel"))
    );
    let ds = m.daemon_set().spec.as_ref().expect("spec");
    assert_eq!(ds.selector.match_labels, labels(&[("app", "flannel")]));
    assert_eq!(
        ds.template.metadata.as_ref().and_then(|m| m.labels.clone()),
        labels(&[("tier", "node"), ("app", "flannel")])
    );
}

#[test]
fn an_unknown_field_is_an_error() {
    let text = std::fs::read_to_string(manifest::repo_path(manifest::MANIFEST)).expect("read");
    let typo = text.replacen(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrok: true",
        1,
    );
    assert_ne!(typo, text);
    let err = manifest::parse(&typo).expect_err("a misspelt field must fail");
    assert!(
        err.contains("DaemonSet") && err.contains("hostNetwrok"),
        "{err}"
    );
    let wrong_kind = text.replacen("\nkind: ServiceAccount\n", "\nkind: ServiceAcount\n", 1);
    assert_ne!(wrong_kind, text);
    assert!(manifest::parse(&wrong_kind).is_err());
    let wrong_type = text.replacen("hostNetwork: true", "hostNetwork: \"yes\"", 1);
    assert!(manifest::parse(&wrong_type).is_err());
}

#[test]
fn the_cluster_role_is_exactly_upstreams() {
    let m = the_manifest();
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(
        m.cluster_roles[0].rules.as_deref().unwrap_or_default(),
        [
            rule("pods", &["get"]),
            rule("nodes", &["get", "list", "watch"]),
            rule("nodes/status", &["patch"]),
        ]
    );
    assert!(m.cluster_roles[0].aggregation_rule.is_none());
}

#[test]
fn the_events_role_is_separate_and_optional() {
    let m = load(manifest::EVENTS_MANIFEST).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(
        m.cluster_roles[0].metadata.name.as_deref(),
        Some("flannel-events")
    );
    assert_eq!(
        m.cluster_roles[0].rules.as_deref().unwrap_or_default(),
        [PolicyRule {
            api_groups: Some(vec!["events.k8s.io".into()]),
            resources: Some(vec!["events".into()]),
            verbs: vec!["create".into(), "patch".into()],
            ..Default::default()
        }]
    );
    let b = &m.cluster_role_bindings[0];
    assert_eq!(b.role_ref.name, "flannel-events");
    assert_eq!(b.metadata.name.as_deref(), Some("flannel-events"));
    assert_eq!(m.order.len(), 2, "only the role and its binding");
}

#[test]
fn the_pod_is_scheduled_like_upstreams() {
    let m = the_manifest();
    let spec = m.pod_spec();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.service_account_name.as_deref(), Some("flannel"));
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
    let terms = &spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("required node affinity")
        .node_selector_terms;
    let expr = &terms[0].match_expressions.as_deref().unwrap_or_default()[0];
    assert_eq!(
        (
            expr.key.as_str(),
            expr.operator.as_str(),
            expr.values.clone()
        ),
        ("kubernetes.io/os", "In", Some(vec!["linux".to_string()]))
    );
}

#[test]
fn every_container_runs_our_image_of_this_version() {
    let m = the_manifest();
    let expected = format!("localhost/flannel-rs:{}", env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = m
        .init_containers()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["install-cni-plugin", "install-cni"]);
    for c in m.init_containers().iter().chain([m.main_container()]) {
        assert_eq!(c.image.as_deref(), Some(expected.as_str()), "{}", c.name);
    }
    assert_eq!(m.main_container().name, "kube-flannel");
}

#[test]
fn the_daemon_args_are_flags_flanneld_accepts() {
    let m = the_manifest();
    let c = m.main_container();
    let argv = argv(c);
    assert_eq!(argv[0], "/opt/bin/flanneld");
    assert_eq!(
        &argv[1..],
        ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    );
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let flags = Flags::parse_with_env(argv.clone(), |k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("flanneld refuses the manifest's args {argv:?}: {e}"));
    assert!(flags.ip_masq && flags.kube_subnet_mgr);
    assert_eq!(flags.healthz_port, 8081);
    // A flag flanneld does not know fails the same parser (so the check above can fail).
    assert!(Flags::parse_with_env(["flanneld", "--no-such-flag"], |_| None).is_err());

    let ports = c.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("healthz"));
    assert_eq!(ports[0].container_port, i32::from(flags.healthz_port));
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    for (probe, path, delay, period) in [
        (c.liveness_probe.as_ref(), "/healthz", 10, 30),
        (c.readiness_probe.as_ref(), "/readyz", 5, 10),
    ] {
        let probe = probe.expect("probe");
        let get = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("healthz".into())
        );
        assert_eq!(probe.initial_delay_seconds, Some(delay));
        assert_eq!(probe.period_seconds, Some(period));
    }
    let downward: Vec<(&str, &str)> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let f = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.as_str(), f.field_path.as_str()))
        })
        .collect();
    assert_eq!(
        downward,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ]
    );
}

#[test]
fn the_init_containers_run_our_install_step() {
    let m = the_manifest();
    let [plugin, conf] = m.init_containers() else {
        panic!("two init containers")
    };
    let plugin_argv = argv(plugin);
    assert_eq!(plugin_argv[..2], ["/opt/bin/flannel", "install"]);
    let a = install::parse(&plugin_argv[1..].iter().map(Into::into).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{plugin_argv:?}: {e}"));
    assert_eq!(a.plugin_dir.as_deref(), Some(Path::new(DEFAULT_PLUGIN_DIR)));
    assert_eq!(a.plugin_name, "flannel");
    assert_eq!(a.conflist, None);

    let conf_argv = argv(conf);
    assert_eq!(conf_argv[..2], ["/opt/bin/flannel", "install"]);
    let a = install::parse(&conf_argv[1..].iter().map(Into::into).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{conf_argv:?}: {e}"));
    assert_eq!(a.plugin_dir, None);
    assert_eq!(a.conf_dir, Path::new(DEFAULT_CONF_DIR));
    assert_eq!(a.conf_name, "10-flannel.conflist");
    let src = a.conflist.expect("--conflist");
    assert_eq!(src, Path::new("/etc/kube-flannel/cni-conf.json"));
    // The file it reads is the ConfigMap's key, mounted where it looks.
    assert_eq!(
        flag_value(&conf_argv, "conflist"),
        Some("/etc/kube-flannel/cni-conf.json")
    );
    let cfg_mount = mount(conf, "flannel-cfg");
    assert_eq!(Path::new(&cfg_mount.mount_path).join("cni-conf.json"), src);
    let conflist = m.config("cni-conf.json").expect("cni-conf.json");
    install::validate_conflist(conflist.as_bytes()).expect("the ConfigMap's conflist installs");
    let v: serde_json::Value = serde_json::from_str(conflist).expect("json");
    assert_eq!(v["name"], "cbr0");
    assert_eq!(v["cniVersion"], "0.3.1");
    let types: Vec<&str> = v["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["flannel", "portmap"]);
    assert_eq!(
        v["plugins"][0]["delegate"],
        serde_json::json!({"hairpinMode":true,"isDefaultGateway":true})
    );
    assert_eq!(
        v["plugins"][1]["capabilities"],
        serde_json::json!({"portMappings":true})
    );
}

/// The container's volume mount named `name`, or a test failure.
fn mount<'c>(c: &'c Container, name: &str) -> &'c VolumeMount {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} mounted in {}", c.name))
}

#[test]
fn the_mounted_paths_are_the_binaries_defaults() {
    let m = the_manifest();
    let defaults = Flags::parse_with_env(["flanneld"], |_| None).expect("defaults");
    let daemon = m.main_container();
    let [plugin, conf] = m.init_containers() else {
        panic!("two init containers")
    };
    // net-conf.json: the daemon's default path is the ConfigMap key inside the mount.
    let cfg = mount(daemon, "flannel-cfg");
    assert_eq!(
        Path::new(&cfg.mount_path).join("net-conf.json"),
        defaults.net_config_path
    );
    assert_eq!(
        m.volume("flannel-cfg")
            .and_then(|v| v.config_map.as_ref())
            .map(|c| c.name.as_str()),
        Some("kube-flannel-cfg")
    );
    let net_conf = m.config("net-conf.json").expect("net-conf.json");
    let parsed = NetConf::parse(net_conf).unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.enable_ipv4 && !parsed.enable_ipv6);
    // subnet.env: written by the daemon to its default path, read by the plugin from its
    // default path on the host: the same host directory.
    let subnet_dir = defaults
        .subnet_file
        .parent()
        .expect("dir")
        .to_str()
        .expect("utf-8");
    assert_eq!(
        m.host_path_of(daemon, subnet_dir).as_deref(),
        Some(subnet_dir)
    );
    assert_eq!(Path::new(DEFAULT_SUBNET_FILE), defaults.subnet_file);
    // CNI dirs: mounted at the same path they have on the host, kubelet's defaults.
    assert_eq!(
        m.host_path_of(plugin, DEFAULT_PLUGIN_DIR).as_deref(),
        Some(DEFAULT_PLUGIN_DIR)
    );
    assert_eq!(
        m.host_path_of(conf, DEFAULT_CONF_DIR).as_deref(),
        Some(DEFAULT_CONF_DIR)
    );
    // The xtables lock is shared with the host (kube-proxy), created if missing.
    let lock = m
        .volume("xtables-lock")
        .and_then(|v| v.host_path.as_ref())
        .expect("hostPath");
    assert_eq!(lock.path, "/run/xtables.lock");
    assert_eq!(lock.type_.as_deref(), Some("FileOrCreate"));
    assert_eq!(
        m.host_path_of(daemon, "/run/xtables.lock").as_deref(),
        Some("/run/xtables.lock")
    );
}

#[test]
fn the_daemon_is_unprivileged_with_upstreams_requests_and_a_limit() {
    let m = the_manifest();
    let c = m.main_container();
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.add.clone()),
        Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()])
    );
    let r = c.resources.as_ref().expect("resources");
    let q = |s: &str| Quantity(s.to_string());
    assert_eq!(
        r.requests,
        Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("50Mi"))
        ]))
    );
    assert_eq!(
        r.limits,
        Some(BTreeMap::from([("memory".to_string(), q("128Mi"))]))
    );
}
