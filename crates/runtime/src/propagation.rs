//! The W3C trace context (`traceparent`, `tracestate`) in record headers, on every bus alike.
//!
//! Publishing injects the current span's context into each record ([`inject`]); consuming makes
//! the record's span a child of the context it carries and links it to it ([`follow`]), as the
//! OpenTelemetry messaging conventions ask of a `process` span.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Record headers as the propagator writes them.
struct HeaderInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        match self.0.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

/// Record headers as the propagator reads them.
struct HeaderExtractor<'a>(&'a [(String, String)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Writes the context of `span` into `headers` (replacing a `traceparent` already there). Nothing
/// when the span has no valid context (no OpenTelemetry layer): the headers stay as they are.
pub fn inject(span: &tracing::Span, headers: &mut Vec<(String, String)>) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Whether `headers` carry a trace context: publishing keeps it instead of the send span's.
pub fn carries_context(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
}

/// `headers` without their trace context: for a record published again (a dead letter, a timer's
/// command, a redriven record), which continues the trace of the span publishing it.
pub fn without_context(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate"))
        .cloned()
        .collect()
}

/// The trace context `headers` carry (an empty context when they carry none).
pub fn extract(headers: &[(String, String)]) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// Makes `span` (not entered yet) a child of the context `headers` carry, linked to it; a span
/// whose record carries no context starts a trace of its own.
pub fn follow(span: &tracing::Span, headers: &[(String, String)]) {
    if let Some(remote) = adopt(span, headers) {
        span.add_link(remote);
    }
}

/// Makes `span` (not entered yet) a child of the context `headers` carry (an HTTP request's
/// `traceparent`); without one it starts a trace of its own.
/// Returns the context it adopted.
pub fn adopt(span: &tracing::Span, headers: &[(String, String)]) -> Option<opentelemetry::trace::SpanContext> {
    let parent = extract(headers);
    let remote = parent.span().span_context().clone();
    if !remote.is_valid() {
        return None;
    }
    let _ = span.set_parent(parent);
    Some(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_read_from_headers_is_the_one_written_there() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = vec![("Traceparent".to_owned(), traceparent.to_owned())];
        let context = extract(&headers);
        let span = context.span();
        let read = span.span_context();
        assert!(read.is_valid() && read.is_remote());
        assert_eq!(read.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(read.span_id().to_string(), "00f067aa0ba902b7");
        assert!(read.is_sampled());

        let mut out = vec![("traceparent".to_owned(), "stale".to_owned()), ("other".to_owned(), "kept".to_owned())];
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(&mut out)));
        assert_eq!(out[0], ("traceparent".to_owned(), traceparent.to_owned()), "replaced, not added");
        assert_eq!(out[1].1, "kept");
        assert!(!extract(&[]).span().span_context().is_valid(), "no header, no context");
    }
}
