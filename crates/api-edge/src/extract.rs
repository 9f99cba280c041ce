//! Request extractors that turn bad input into clear problems: JSON bodies, ids in paths, the
//! correlation id, `Idempotency-Key` and `Prefer: wait`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ridehail_events::CorrelationId;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// A JSON body; syntax, shape and type errors become 4xx problems naming the field.
#[derive(Debug, Clone)]
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::MalformedJson(text),
        JsonRejection::JsonDataError(_) => {
            // axum reports "...target type: <path>: <message>"; the path names the field.
            let detail = text.split_once("target type: ").map(|(_, rest)| rest.to_owned()).unwrap_or(text);
            let field = detail.split_once(": ").map(|(path, _)| path.to_owned()).filter(|p| !p.contains(' '));
            ApiError::InvalidBody { status, detail, field }
        }
        _ => ApiError::InvalidBody { status, detail: text, field: None },
    }
}

/// Query parameters; a malformed query string is a 400 problem naming the parameter.
#[derive(Debug, Clone)]
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(ApiError::InvalidBody { status: rejection.status(), detail: rejection.body_text(), field: None })
            }
        }
    }
}

/// Parses an id from a path segment, or fails naming the parameter.
pub fn parse_id<T: std::str::FromStr>(raw: &str, name: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::field(name, "must be a UUID"))
}

/// The request's correlation id: the client's `X-Correlation-Id` when it is a UUID, else a new one.
/// Set by [`correlation_layer`].
#[derive(Debug, Clone, Copy)]
pub struct Correlation(pub CorrelationId);

/// When the edge received the request (for deadlines). Set by [`correlation_layer`].
#[derive(Debug, Clone, Copy)]
pub struct Received(pub tokio::time::Instant);

/// Middleware: assigns the correlation id, opens the request span with it, echoes it back.
pub async fn correlation_layer(mut req: Request, next: Next) -> Response {
    let correlation_id = req
        .headers()
        .get(&CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .map(CorrelationId)
        .unwrap_or_default();
    req.extensions_mut().insert(Correlation(correlation_id));
    req.extensions_mut().insert(Received(tokio::time::Instant::now()));
    // The route's template, never the raw path: ids would make every ride a metric and a span name.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        correlation_id = %correlation_id,
    );
    // A client's W3C trace context: this request continues its trace.
    let trace_headers: Vec<(String, String)> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), req.headers().get(name)?.to_str().ok()?.to_owned())))
        .collect();
    ridehail_runtime::propagation::adopt(&span, &trace_headers);
    let started = std::time::Instant::now();
    // Counted down on drop: a request whose client went away is no longer in flight either.
    let in_flight = InFlight::enter();
    let mut response = next.run(req).instrument(span.clone()).await;
    drop(in_flight);
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if response.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    ridehail_runtime::metrics::http_request(method, route, status, started.elapsed());
    if let Ok(value) = HeaderValue::from_str(&correlation_id.to_string()) {
        response.headers_mut().insert(CORRELATION_HEADER.clone(), value);
    }
    response
}

/// One request in `ridehail_http_requests_in_flight`, for as long as it lives.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let gauge = metrics::gauge!(ridehail_runtime::metrics::HTTP_IN_FLIGHT);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What a command submission needs from the request's headers.
#[derive(Debug, Clone)]
pub struct CommandHeaders {
    pub correlation_id: CorrelationId,
    pub idempotency_key: Option<String>,
    /// `Prefer: wait=N`, capped at the configured maximum.
    pub wait: Option<Duration>,
    /// When waiting must stop so the answer beats the request timeout.
    pub deadline: tokio::time::Instant,
}

impl FromRequestParts<AppState> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let correlation_id = parts.extensions.get::<Correlation>().map(|c| c.0).unwrap_or_default();
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let key = value.to_str().map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?;
                let key = key.trim().trim_matches('"');
                if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(ApiError::field("Idempotency-Key", "must be 1 to 255 visible ASCII characters"));
                }
                Some(key.to_owned())
            }
        };
        let wait = parse_prefer_wait(parts.headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()))
            .map(|secs| Duration::from_secs(secs.min(state.config.max_wait_seconds)));
        let received = parts.extensions.get::<Received>().map(|r| r.0).unwrap_or_else(tokio::time::Instant::now);
        // Leave a margin for answering before the whole-request timeout fires.
        let deadline = received + Duration::from_secs(state.config.request_timeout_seconds.saturating_sub(2));
        Ok(Self { correlation_id, idempotency_key, wait, deadline })
    }
}

/// Finds `wait=N` among `Prefer` header values (RFC 7240); other preferences are ignored.
pub fn parse_prefer_wait<'a>(values: impl Iterator<Item = &'a str>) -> Option<u64> {
    values
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| pref.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("wait"))
        .and_then(|(_, value)| value.trim().trim_matches('"').parse().ok())
}

#[cfg(test)]
mod tests {
    use super::parse_prefer_wait;

    #[test]
    fn prefer_wait_is_found_among_other_preferences() {
        assert_eq!(parse_prefer_wait(["wait=5"].into_iter()), Some(5));
        assert_eq!(parse_prefer_wait(["respond-async, wait=3"].into_iter()), Some(3));
        assert_eq!(parse_prefer_wait(["return=minimal", "Wait = \"7\""].into_iter()), Some(7));
        assert_eq!(parse_prefer_wait(["wait=soon"].into_iter()), None);
        assert_eq!(parse_prefer_wait(std::iter::empty()), None);
    }
}
