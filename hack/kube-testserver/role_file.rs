//! `--flannel-role FILE`: the flannel identity's rules from a ClusterRole (JSON), e.g. the one
//! of a manifest under test, instead of the built-in copy of upstream's. A permission the
//! daemon needs but the role lacks then fails the test as it would fail on a cluster.

use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::rbac::v1::ClusterRole;

use crate::auth::Rule;

/// Converts the ClusterRole's rules, API groups included; `resourceNames` and
/// `nonResourceURLs` are refused rather than silently widened.
pub fn rules_from_file(path: &Path) -> anyhow::Result<Vec<Rule>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let role: ClusterRole = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a ClusterRole", path.display()))?;
    let mut rules = Vec::new();
    for (i, rule) in role.rules.unwrap_or_default().into_iter().enumerate() {
        if rule.resource_names.as_ref().is_some_and(|r| !r.is_empty())
            || rule
                .non_resource_urls
                .as_ref()
                .is_some_and(|r| !r.is_empty())
        {
            bail!(
                "{}: rules[{i}]: resourceNames/nonResourceURLs are not supported",
                path.display()
            );
        }
        // Rules live for the whole process; leaking them keeps the built-in table's type.
        let leak = |v: Vec<String>| -> &'static [&'static str] {
            Box::leak(
                v.into_iter()
                    .map(|s| &*Box::leak(s.into_boxed_str()))
                    .collect(),
            )
        };
        rules.push(Rule {
            groups: leak(rule.api_groups.unwrap_or_default()),
            verbs: leak(rule.verbs),
            resources: leak(rule.resources.unwrap_or_default()),
        });
    }
    Ok(rules)
}
