//! API errors rendered as `meta/v1 Status` objects, with the reasons, codes and message
//! formats kube-apiserver uses (apimachinery `errors` package).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<StatusDetails>>,
    pub retry_after_seconds: Option<u32>,
}

fn details(kind: &str, name: &str) -> Option<Box<StatusDetails>> {
    Some(Box::new(StatusDetails {
        name: (!name.is_empty()).then(|| name.to_string()),
        kind: Some(kind.to_string()),
        ..Default::default()
    }))
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }

    /// `nodes "x" not found`
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self {
            details: details(resource, name),
            ..Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
        }
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self {
            details: details(resource, name),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{resource} \"{name}\" already exists"),
            )
        }
    }

    /// `Operation cannot be fulfilled on nodes "x": <why>`
    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        Self {
            details: details(resource, name),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
            )
        }
    }

    pub fn stale_resource_version(resource: &str, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per (field, message): `Node "x" is invalid: field: message`.
    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let rendered: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let joined = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        Self {
            details: Some(Box::new(StatusDetails {
                name: (!name.is_empty()).then(|| name.to_string()),
                kind: Some(kind.to_string()),
                causes: Some(
                    causes
                        .into_iter()
                        .map(|(field, message)| StatusCause {
                            field: Some(field),
                            message: Some(message),
                            reason: Some("FieldValueInvalid".into()),
                        })
                        .collect(),
                ),
                ..Default::default()
            })),
            ..Self::new(
                422,
                "Invalid",
                format!("{kind} \"{name}\" is invalid: {joined}"),
            )
        }
    }

    /// 422 without field causes (e.g. a failed JSON-patch `test`).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 410 Gone with reason `Expired`, what the watch cache and etcd list paths return.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self {
            details: Some(Box::new(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ResourceVersionTooLarge".into()),
                    message: Some("Too large resource version".into()),
                    field: None,
                }]),
                retry_after_seconds: Some(1),
                ..Default::default()
            })),
            ..Self::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The Status body (also used as the object of a watch `ERROR` event).
    pub fn to_status(&self) -> Status {
        let mut details = self.details.as_deref().cloned();
        if let Some(secs) = self.retry_after_seconds {
            let d = details.get_or_insert_with(Default::default);
            d.retry_after_seconds = Some(secs as i32);
        }
        Status {
            code: Some(i32::from(self.code)),
            details,
            message: Some(self.message.clone()),
            reason: Some(self.reason.to_string()),
            status: Some("Failure".into()),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_status()).unwrap_or_else(|_| b"{}".to_vec())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, self.to_json()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
