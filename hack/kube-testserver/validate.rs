//! Name/label validation following apimachinery's `validation` package, with its messages.

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars()
            .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.')
}

/// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', alphanumeric at both ends, ≤ 253.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (value {s:?})"
        ))
    }
}

/// Label/annotation key: `[prefix/]name`, prefix a DNS subdomain.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!("prefix part must be non-empty (key {s:?})"));
        }
        dns_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if !qualified_name_part(name) {
        return Err(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters (key {s:?})"
        ));
    }
    Ok(())
}

/// Label value: empty, or a qualified-name part.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_name_part(s) {
        Ok(())
    } else {
        Err(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters (value {s:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(dns_subdomain("node-1.example.com").is_ok());
        assert!(dns_subdomain("Node").is_err());
        assert!(dns_subdomain("-a").is_err());
        assert!(dns_subdomain("").is_err());
        assert!(qualified_name("flannel.alpha.coreos.com/backend-data").is_ok());
        assert!(qualified_name("kubernetes.io/hostname").is_ok());
        assert!(qualified_name("plain_key.1").is_ok());
        assert!(qualified_name("/x").is_err());
        assert!(qualified_name("a/b/c").is_err());
        assert!(qualified_name(&"a".repeat(64)).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("has space").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }
}
