//! Label and field selectors with the syntax and matching rules of apimachinery's
//! `labels.Parse` / `fields.ParseSelector`, restricted to what Nodes support.

use std::collections::BTreeMap;

use crate::validate;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOp {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    pub key: String,
    pub op: LabelOp,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::Equals(v) => value == Some(v),
                // `!=` and `notin` also match objects without the key, as upstream does.
                LabelOp::NotEquals(v) => value != Some(v),
                LabelOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
                LabelOp::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                LabelOp::GreaterThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    pub fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_top_level(input)? {
            let term = term.trim();
            if term.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(format!(
                    "unable to parse requirement: empty term in {input:?}"
                ));
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self { requirements })
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("unable to parse requirement: unbalanced ')' in {input:?}")
                })?
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unbalanced '(' in {input:?}"
        ));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(term: &str) -> Result<LabelRequirement, String> {
    let err = |why: &str| format!("unable to parse requirement: {why}: {term:?}");
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        check_key(key).map_err(|e| err(&e))?;
        return Ok(LabelRequirement {
            key: key.to_string(),
            op: LabelOp::DoesNotExist,
        });
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        for (kw, is_in) in [("notin", false), ("in", true)] {
            if let Some(list) = rest.strip_prefix(kw) {
                let list = list.trim();
                if !(list.starts_with('(') && list.ends_with(')')) {
                    continue;
                }
                let key = words[0].trim();
                check_key(key).map_err(|e| err(&e))?;
                let values: Vec<String> = list[1..list.len() - 1]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect();
                for v in &values {
                    validate::label_value(v).map_err(|e| err(&e))?;
                }
                if values.iter().all(String::is_empty) && is_in {
                    return Err(err("for 'in' operator, values set can't be empty"));
                }
                let op = if is_in {
                    LabelOp::In(values)
                } else {
                    LabelOp::NotIn(values)
                };
                return Ok(LabelRequirement {
                    key: key.to_string(),
                    op,
                });
            }
        }
    }
    // Equality-based, longest operators first.
    for (sym, kind) in [("==", 0), ("!=", 1), ("=", 0), (">", 2), ("<", 3)] {
        if let Some(pos) = term.find(sym) {
            let key = term[..pos].trim();
            let value = term[pos + sym.len()..].trim();
            check_key(key).map_err(|e| err(&e))?;
            let op = match kind {
                0 | 1 => {
                    validate::label_value(value).map_err(|e| err(&e))?;
                    if kind == 0 {
                        LabelOp::Equals(value.to_string())
                    } else {
                        LabelOp::NotEquals(value.to_string())
                    }
                }
                _ => {
                    let n: i64 = value.parse().map_err(|_| {
                        err("for 'Gt', 'Lt' operators, the value must be an integer")
                    })?;
                    if kind == 2 {
                        LabelOp::GreaterThan(n)
                    } else {
                        LabelOp::LessThan(n)
                    }
                }
            };
            return Ok(LabelRequirement {
                key: key.to_string(),
                op,
            });
        }
    }
    check_key(term).map_err(|e| err(&e))?;
    Ok(LabelRequirement {
        key: term.to_string(),
        op: LabelOp::Exists,
    })
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("invalid label key {key:?}"));
    }
    validate::qualified_name(key)
}

/// Field selector over Nodes: upstream supports `metadata.name` and `spec.unschedulable`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: NodeField,
    pub negate: bool,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeField {
    Name,
    Unschedulable,
}

/// The values a field selector looks at, taken from a stored Node.
pub struct FieldValues<'a> {
    pub name: &'a str,
    pub unschedulable: bool,
}

/// The terms of a field selector (`f=v`, `f==v`, `f!=v`, comma-separated) as (field, negated,
/// value), each field name resolved by `field_of`, which rejects the unsupported ones.
pub fn parse_field_terms<F>(
    input: &str,
    field_of: impl Fn(&str) -> Result<F, String>,
) -> Result<Vec<(F, bool, String)>, String> {
    let mut terms = Vec::new();
    for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, false, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, false, v)
        } else {
            return Err(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            ));
        };
        terms.push((field_of(field.trim())?, negate, value.trim().to_string()));
    }
    Ok(terms)
}

impl FieldSelector {
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn parse(input: &str) -> Result<Self, String> {
        let terms = parse_field_terms(input, |field| match field {
            "metadata.name" => Ok(NodeField::Name),
            "spec.unschedulable" => Ok(NodeField::Unschedulable),
            other => Err(format!("field label not supported: {other}")),
        })?;
        Ok(Self {
            terms: terms
                .into_iter()
                .map(|(field, negate, value)| FieldTerm {
                    field,
                    negate,
                    value,
                })
                .collect(),
        })
    }

    pub fn matches(&self, values: &FieldValues<'_>) -> bool {
        self.terms.iter().all(|t| {
            let actual = match t.field {
                NodeField::Name => values.name.to_string(),
                NodeField::Unschedulable => values.unschedulable.to_string(),
            };
            (actual == t.value) != t.negate
        })
    }

    /// The single name this selector pins, if any (lets lists skip the scan).
    pub fn exact_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == NodeField::Name && !t.negate)
            .map(|t| t.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Asserts each selector's verdict on `l`.
    #[track_caller]
    fn assert_label_verdicts(l: &BTreeMap<String, String>, cases: &[(&str, bool)]) {
        for (selector, want) in cases {
            let sel = LabelSelector::parse(selector).unwrap();
            assert_eq!(sel.matches(l), *want, "{selector:?}");
        }
    }

    #[test]
    fn equality_operators() {
        let l = labels(&[("zone", "a"), ("role", "worker")]);
        assert_label_verdicts(
            &l,
            &[
                ("zone=a", true),
                ("zone==a", true),
                ("zone=b", false),
                ("zone!=b", true),
                ("zone!=a", false),
                // != matches objects lacking the key.
                ("missing!=x", true),
                ("zone=a,role=worker", true),
                ("zone=a,role=master", false),
            ],
        );
    }

    #[test]
    fn set_and_existence_operators() {
        let l = labels(&[("zone", "a"), ("gpu", "")]);
        assert_label_verdicts(
            &l,
            &[
                ("zone in (a, b)", true),
                ("zone in (b,c)", false),
                ("zone notin (b,c)", true),
                ("zone notin (a)", false),
                ("missing notin (a)", true),
                ("missing in (a)", false),
                ("gpu", true),
                ("!gpu", false),
                ("!missing", true),
                ("zone in (a,b),!missing,gpu", true),
                ("", true),
            ],
        );
    }

    #[test]
    fn numeric_comparisons() {
        let l = labels(&[("n", "5")]);
        assert_label_verdicts(&l, &[("n>4", true), ("n>5", false), ("n<6", true)]);
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn rejects_malformed() {
        assert!(LabelSelector::parse("zone in (a").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("zone=a,,x=y").is_err());
        assert!(LabelSelector::parse("zone=bad value!").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
    }

    #[test]
    fn field_selectors() {
        let v = FieldValues {
            name: "n1",
            unschedulable: false,
        };
        for (selector, want) in [
            ("metadata.name=n1", true),
            ("metadata.name==n1", true),
            ("metadata.name=n2", false),
            ("metadata.name!=n2", true),
            ("spec.unschedulable=false", true),
        ] {
            let sel = FieldSelector::parse(selector).unwrap();
            assert_eq!(sel.matches(&v), want, "{selector:?}");
        }
        assert_eq!(
            FieldSelector::parse("metadata.name=n1")
                .unwrap()
                .exact_name(),
            Some("n1")
        );
        let err = FieldSelector::parse("status.phase=Running").unwrap_err();
        assert!(err.contains("field label not supported"), "{err}");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
