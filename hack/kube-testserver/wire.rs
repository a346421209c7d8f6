//! The admin API's request and response documents, shared by the server and the test-support
//! client that drives it (one definition, so the two cannot drift apart).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault rule for `POST /admin/faults`: requests matching every set field fail with `code`
/// or are delayed by `delay_ms`. `count` bounds how many requests it applies to (absent =
/// until removed).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Kube verb (get, list, watch, create, update, patch, delete, deletecollection) or HTTP
    /// method (GET, PUT, …); absent or "*" = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// `nodes`, `nodes/status`, `pods`; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prefix of the request path (without query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Identity id (`admin`, `flannel`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// HTTP status to fail with: 409, 429, 500, 503 (others are accepted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// For 429/503: value of the Retry-After header and `details.retryAfterSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl Fault {
    /// Why the server refuses this rule, if it does.
    pub fn validate(&self) -> Result<(), String> {
        if self.code.is_none() && self.delay_ms.is_none() {
            return Err("a fault needs `code` and/or `delayMs`".into());
        }
        if let Some(code) = self.code
            && !(400..=599).contains(&code)
        {
            return Err(format!("code {code} is not an error status"));
        }
        if self.count == Some(0) {
            return Err("count must be at least 1 (omit it for unlimited)".into());
        }
        Ok(())
    }

    /// Fail matching requests with this HTTP status (409, 429, 500, 503, …).
    pub fn fail(code: u16) -> Self {
        Self {
            code: Some(code),
            ..Self::default()
        }
    }

    /// Delay matching requests.
    pub fn latency(delay: Duration) -> Self {
        Self {
            delay_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            ..Self::default()
        }
    }

    /// Kube verb (`get`, `list`, `watch`, `patch`, …) or HTTP method.
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.into());
        self
    }

    /// `nodes`, `nodes/status`, `pods`.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    pub fn identity(mut self, identity: &str) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Apply to the next `n` matching requests only (default: until removed).
    pub fn times(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }
}

/// One request-log entry (`GET /admin/requestlog`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub time_ms: u64,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub code: u16,
    /// Identity id (`admin`, `flannel`, `clobber`, …); absent when unauthenticated.
    pub identity: Option<String>,
    pub user: Option<String>,
    pub verb: String,
    pub resource: String,
    pub name: Option<String>,
    /// True when a fault rule produced the response.
    pub injected: bool,
}

impl LogEntry {
    /// The logged body as JSON, when it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        self.body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }
}
