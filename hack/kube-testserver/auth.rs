//! Bearer-token authentication, kube-apiserver style request attributes (RequestInfo), and a
//! small RBAC role table: an admin identity and upstream flannel's ClusterRole.

use std::collections::HashMap;

use crate::errors::ApiError;

/// A group/verb/resource rule like one PolicyRule of a ClusterRole; `"*"` matches anything,
/// `""` is the core group.
#[derive(Debug, Clone)]
pub struct Rule {
    pub groups: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub resources: &'static [&'static str],
}

#[derive(Debug, Clone)]
pub struct Identity {
    /// Short id used in file names (`kubeconfig-<id>`) and the request log.
    pub id: String,
    /// The Kubernetes user name, as it appears in Forbidden messages.
    pub user: String,
    pub token: String,
    pub rules: Vec<Rule>,
}

/// Rules of upstream flannel's ClusterRole (Documentation/kube-flannel.yml).
pub const FLANNEL_RULES: &[Rule] = &[
    Rule {
        groups: &[""],
        verbs: &["get"],
        resources: &["pods"],
    },
    Rule {
        groups: &[""],
        verbs: &["get", "list", "watch"],
        resources: &["nodes"],
    },
    Rule {
        groups: &[""],
        verbs: &["patch"],
        resources: &["nodes/status"],
    },
];

pub const ADMIN_RULES: &[Rule] = &[Rule {
    groups: &["*"],
    verbs: &["*"],
    resources: &["*"],
}];

/// Extra roles `--grant ID=ROLE` adds to an identity.
pub const GRANTABLE: &[(&str, &[Rule])] = &[(
    // What kube-rs's events Recorder needs (create, then patch for a series), and no more:
    // the optional events role of the manifest.
    "events",
    &[Rule {
        groups: &["events.k8s.io"],
        verbs: &["create", "patch"],
        resources: &["events"],
    }],
)];

/// Applies `ID=ROLE` grants (from `--grant`) to the identities.
pub fn apply_grants(identities: &mut [Identity], grants: &[String]) -> Result<(), String> {
    for grant in grants {
        let (id, role) = grant
            .split_once('=')
            .ok_or_else(|| format!("--grant {grant:?}: expected ID=ROLE"))?;
        let rules = GRANTABLE
            .iter()
            .find(|(name, _)| *name == role)
            .map(|(_, rules)| *rules)
            .ok_or_else(|| {
                let known: Vec<&str> = GRANTABLE.iter().map(|(n, _)| *n).collect();
                format!(
                    "--grant {grant:?}: unknown role {role:?} (known: {})",
                    known.join(", ")
                )
            })?;
        let identity = identities
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or_else(|| format!("--grant {grant:?}: unknown identity {id:?}"))?;
        identity.rules.extend(rules.iter().cloned());
    }
    Ok(())
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn default_identities() -> Vec<Identity> {
    vec![
        Identity {
            id: "admin".into(),
            user: "kube-testserver:admin".into(),
            token: random_token(),
            rules: ADMIN_RULES.to_vec(),
        },
        Identity {
            id: "flannel".into(),
            user: "system:serviceaccount:kube-flannel:flannel".into(),
            token: random_token(),
            rules: FLANNEL_RULES.to_vec(),
        },
    ]
}

/// What a request addresses, derived from method, path and query like upstream's RequestInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub is_resource: bool,
    pub verb: String,
    /// `nodes`, `nodes/status`, `pods`, …
    pub resource: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub api_group: String,
}

impl RequestInfo {
    pub fn parse(method: &str, path: &str, query: &HashMap<String, String>) -> Self {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => (String::new(), rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
                ((*group).to_string(), rest)
            }
            _ => {
                return Self {
                    is_resource: false,
                    verb: method.to_ascii_lowercase(),
                    ..Default::default()
                };
            }
        };
        let mut rest: Vec<&str> = rest.to_vec();
        let mut watch_path = false;
        if rest.first() == Some(&"watch") {
            watch_path = true;
            rest.remove(0);
        }
        let mut namespace = None;
        if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            namespace = Some(rest[1].to_string());
            rest.drain(0..2);
        }
        let resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        let name = rest.get(1).map(|s| s.to_string());
        let sub = rest.get(2).map(|s| s.to_string());
        let is_watch = watch_path || query.get("watch").is_some_and(|v| v == "true" || v == "1");
        let verb = match (method, name.is_some()) {
            ("GET" | "HEAD", _) if is_watch => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => {
                return Self {
                    is_resource: true,
                    verb: other.to_ascii_lowercase(),
                    resource,
                    name,
                    namespace,
                    api_group: group,
                };
            }
        };
        let resource = match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        };
        Self {
            is_resource: true,
            verb: verb.to_string(),
            resource,
            name,
            namespace,
            api_group: group,
        }
    }
}

/// Paths anyone may read without credentials (upstream's system:public-info-viewer).
pub fn is_public_path(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

pub fn authenticate<'a>(
    identities: &'a [Identity],
    authorization: Option<&str>,
) -> Option<&'a Identity> {
    let token = authorization?.strip_prefix("Bearer ")?.trim();
    identities.iter().find(|i| i.token == token)
}

pub fn allows(identity: &Identity, info: &RequestInfo) -> bool {
    if !info.is_resource {
        // system:discovery / system:basic-user: every authenticated user reads discovery.
        return true;
    }
    identity.rules.iter().any(|r| {
        (r.groups.contains(&"*") || r.groups.contains(&info.api_group.as_str()))
            && (r.verbs.contains(&"*") || r.verbs.contains(&info.verb.as_str()))
            && (r.resources.contains(&"*") || r.resources.contains(&info.resource.as_str()))
    })
}

/// `nodes "n1" is forbidden: User "u" cannot patch resource "nodes" in API group "" at the cluster scope`
pub fn forbidden(identity: &Identity, info: &RequestInfo) -> ApiError {
    let base = info.resource.split('/').next().unwrap_or("");
    // Upstream names the resource with its group: `events.events.k8s.io "x" is forbidden`.
    let qualified = if info.api_group.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{}", info.api_group)
    };
    let base = qualified.as_str();
    let subject = match &info.name {
        Some(n) => format!("{base} \"{n}\" is forbidden"),
        None => format!("{base} is forbidden"),
    };
    let scope = match &info.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let mut err = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject}: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            identity.user, info.verb, info.resource, info.api_group
        ),
    );
    err.details = Some(Box::new(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
            name: info.name.clone(),
            kind: Some(base.to_string()),
            group: Some(info.api_group.clone()),
            ..Default::default()
        },
    ));
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str, query: &[(&str, &str)]) -> RequestInfo {
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RequestInfo::parse(method, path, &q)
    }

    #[test]
    fn request_info() {
        let i = info("GET", "/api/v1/nodes", &[]);
        assert_eq!((i.verb.as_str(), i.resource.as_str()), ("list", "nodes"));
        let i = info("GET", "/api/v1/nodes", &[("watch", "1")]);
        assert_eq!(i.verb, "watch");
        let i = info("PATCH", "/api/v1/nodes/n1/status", &[]);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.name.as_deref()),
            ("patch", "nodes/status", Some("n1"))
        );
        let i = info("GET", "/api/v1/namespaces/kube-flannel/pods/p", &[]);
        assert_eq!(
            (i.resource.as_str(), i.namespace.as_deref()),
            ("pods", Some("kube-flannel"))
        );
        assert!(!info("GET", "/api/v1", &[]).is_resource);
        assert!(!info("GET", "/version", &[]).is_resource);
        assert_eq!(
            info("DELETE", "/api/v1/nodes", &[]).verb,
            "deletecollection"
        );
    }

    #[test]
    fn flannel_role_matches_upstream() {
        let ids = default_identities();
        let flannel = &ids[1];
        let ok = |m, p, q: &[(&str, &str)]| allows(flannel, &info(m, p, q));
        assert!(ok("GET", "/api/v1/nodes", &[]));
        assert!(ok("GET", "/api/v1/nodes", &[("watch", "true")]));
        assert!(ok("GET", "/api/v1/nodes/n1", &[]));
        assert!(ok("PATCH", "/api/v1/nodes/n1/status", &[]));
        assert!(ok("GET", "/api/v1/namespaces/x/pods/p", &[]));
        assert!(!ok("PATCH", "/api/v1/nodes/n1", &[]));
        assert!(!ok("PUT", "/api/v1/nodes/n1/status", &[]));
        assert!(!ok("PUT", "/api/v1/nodes/n1", &[]));
        assert!(!ok("DELETE", "/api/v1/nodes/n1", &[]));
        assert!(!ok("GET", "/api/v1/nodes/n1/status", &[]));
        assert!(!ok("GET", "/api/v1/namespaces/x/pods", &[]));
        let err = forbidden(flannel, &info("PATCH", "/api/v1/nodes/n1", &[]));
        assert_eq!(
            err.message,
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"
        );
        assert!(allows(&ids[0], &info("DELETE", "/api/v1/nodes/n1", &[])));
    }

    #[test]
    fn events_need_a_grant() {
        let mut ids = default_identities();
        let create = info(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/default/events",
            &[],
        );
        let patch = info(
            "PATCH",
            "/apis/events.k8s.io/v1/namespaces/default/events/e1",
            &[],
        );
        let list = info(
            "GET",
            "/apis/events.k8s.io/v1/namespaces/default/events",
            &[],
        );
        let core_create = info("POST", "/api/v1/namespaces/default/events", &[]);
        assert!(!allows(&ids[1], &create));
        let err = forbidden(&ids[1], &create);
        assert_eq!(
            err.message,
            "events.events.k8s.io is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot create resource \"events\" in API group \"events.k8s.io\" in the namespace \"default\""
        );
        assert!(allows(&ids[0], &create));
        apply_grants(&mut ids, &["flannel=events".to_string()]).unwrap();
        assert!(allows(&ids[1], &create) && allows(&ids[1], &patch));
        assert!(!allows(&ids[1], &list) && !allows(&ids[1], &core_create));
        // The grant adds only events rules: Nodes stay as upstream's role has them.
        assert!(!allows(&ids[1], &info("PATCH", "/api/v1/nodes/n1", &[])));
        assert!(apply_grants(&mut ids, &["flannel=nope".to_string()]).is_err());
        assert!(apply_grants(&mut ids, &["nobody=events".to_string()]).is_err());
        assert!(apply_grants(&mut ids, &["flannel".to_string()]).is_err());
    }

    #[test]
    fn tokens() {
        let ids = default_identities();
        let header = format!("Bearer {}", ids[1].token);
        assert_eq!(authenticate(&ids, Some(&header)).unwrap().id, "flannel");
        assert!(authenticate(&ids, Some("Bearer nope")).is_none());
        assert!(authenticate(&ids, None).is_none());
    }
}
