//! The edge's one error type, mapped to RFC 9457 `application/problem+json` in exactly one place.
//! 5xx details are logged once here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ridehail_ports::{BusError, Rejection, RejectionKind, StoreError};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON")]
    MalformedJson(String),
    #[error("the request body does not match the expected shape")]
    InvalidBody { status: StatusCode, detail: String, field: Option<String> },
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("authentication required")]
    Unauthenticated(&'static str),
    #[error("forbidden")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound(&'static str),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("a request with this idempotency key is in progress")]
    IdempotencyInProgress,
    #[error("the command was rejected")]
    Rejected(Rejection),
    /// The command was dead-lettered: it will not complete unless an operator redrives it.
    #[error("the command failed")]
    CommandFailed(ridehail_ports::Failure),
    #[error("too many requests")]
    TooManyRequests { code: &'static str, retry_after: std::time::Duration },
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the request body is too large")]
    BodyTooLarge,
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("unexpected error")]
    Unexpected(#[from] anyhow::Error),
}

impl From<crate::password::PoolError> for ApiError {
    fn from(error: crate::password::PoolError) -> Self {
        match error {
            crate::password::PoolError::Busy => Self::Unavailable(anyhow::anyhow!(error)),
            crate::password::PoolError::Failed(_) => Self::Unexpected(anyhow::anyhow!(error)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(e) => Self::Unavailable(e),
            corrupt @ StoreError::Corrupt(_) => Self::Unexpected(corrupt.into()),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        Self::Unavailable(error.into())
    }
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }
}

/// An RFC 9457 problem: every 4xx and 5xx answer of the API.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// `https://ridehail.example/problems/{code}`.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    #[schemars(range(min = 400, max = 599))]
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Stable and machine-readable: what a client branches on (see each response for its codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    /// The invalid fields (`validation_failed`, `invalid_request`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

/// Builds a problem response; also used for rejections replayed from command status.
pub fn problem(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: Option<String>,
    errors: Vec<FieldError>,
) -> Response {
    let body = Problem {
        kind: format!("https://ridehail.example/problems/{code}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        code: Some(code.to_owned()),
        errors,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

fn rejection_status(kind: RejectionKind) -> StatusCode {
    match kind {
        RejectionKind::NotFound => StatusCode::NOT_FOUND,
        RejectionKind::Conflict => StatusCode::CONFLICT,
        RejectionKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        RejectionKind::Forbidden => StatusCode::FORBIDDEN,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use StatusCode as S;
        match self {
            Self::MalformedJson(detail) => {
                problem(S::BAD_REQUEST, "malformed_json", "Malformed JSON", Some(detail), vec![])
            }
            Self::InvalidBody { status, detail, field } => {
                let errors = field.map(|field| vec![FieldError { field, message: detail.clone() }]).unwrap_or_default();
                problem(status, "invalid_request", "Invalid request", Some(detail), errors)
            }
            Self::Validation(errors) => {
                let detail =
                    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
                problem(S::UNPROCESSABLE_ENTITY, "validation_failed", "Validation failed", Some(detail), errors)
            }
            Self::Unauthenticated(why) => {
                let mut response =
                    problem(S::UNAUTHORIZED, "unauthenticated", "Authentication required", Some(why.into()), vec![]);
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::Forbidden(why) => problem(S::FORBIDDEN, "forbidden", "Forbidden", Some(why.into()), vec![]),
            Self::NotFound(what) => problem(S::NOT_FOUND, "not_found", "Not found", Some(what.into()), vec![]),
            Self::InvalidCredentials => problem(
                S::UNAUTHORIZED,
                "invalid_credentials",
                "Invalid credentials",
                Some("e-mail or password is wrong".into()),
                vec![],
            ),
            Self::IdempotencyMismatch => problem(
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                Some("this Idempotency-Key was used with a different request".into()),
                vec![],
            ),
            Self::IdempotencyInProgress => problem(
                S::CONFLICT,
                "idempotency_key_in_progress",
                "Request in progress",
                Some("a request with this Idempotency-Key is still being processed; retry later".into()),
                vec![],
            ),
            Self::Rejected(rejection) => problem(
                rejection_status(rejection.kind),
                &rejection.code,
                "Command rejected",
                Some(rejection.detail),
                vec![],
            ),
            Self::TooManyRequests { code, retry_after } => {
                let seconds = crate::limits::retry_after_seconds(retry_after);
                let mut response = problem(
                    S::TOO_MANY_REQUESTS,
                    code,
                    "Too many requests",
                    Some(format!("slow down; retry in {seconds} s")),
                    vec![],
                );
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Self::BodyTimeout => problem(
                S::REQUEST_TIMEOUT,
                "body_timeout",
                "Request body too slow",
                Some("the request body did not arrive in time".into()),
                vec![],
            ),
            Self::BodyTooLarge => problem(
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Request body too large",
                Some("the request body exceeds the limit".into()),
                vec![],
            ),
            Self::CommandFailed(failure) => {
                problem(S::INTERNAL_SERVER_ERROR, &failure.code, "Command failed", Some(failure.detail), vec![])
            }
            Self::Unavailable(e) => {
                // Once per interval, with the count held back: an outage fails every request, and a
                // line each would flood the logs (the 503s are counted in the metrics anyway).
                static UNAVAILABLE: std::sync::OnceLock<ridehail_ports::LogLimiter> = std::sync::OnceLock::new();
                let limiter =
                    UNAVAILABLE.get_or_init(|| ridehail_ports::LogLimiter::new(std::time::Duration::from_secs(10)));
                if let Some(held_back) = limiter.occurred(std::time::Instant::now()) {
                    tracing::error!(error = format!("{e:#}"), held_back, "dependency unavailable");
                }
                let mut response = problem(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    Some("try again shortly".into()),
                    vec![],
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Unexpected(e) => {
                tracing::error!(error = format!("{e:#}"), "unexpected error");
                problem(S::INTERNAL_SERVER_ERROR, "internal", "Internal error", None, vec![])
            }
        }
    }
}
