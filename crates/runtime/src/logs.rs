//! JSON log lines: one object per line, with the service, the trace and the correlation id of the
//! request or record the line was logged in.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The name of the span field that carries a correlation id (`correlation_id = %id`).
pub const CORRELATION_FIELD: &str = "correlation_id";

/// A span's correlation id, kept in its extensions by [`CorrelationLayer`].
#[derive(Debug, Clone)]
struct CorrelationId(String);

/// Remembers the `correlation_id` field of each span, so every line logged inside it (or inside its
/// children) can name it.
#[derive(Debug, Clone, Copy)]
pub struct CorrelationLayer;

impl<S> tracing_subscriber::Layer<S> for CorrelationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut found = FindCorrelation(None);
        attrs.record(&mut found);
        if let (Some(value), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(CorrelationId(value));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = FindCorrelation(None);
        values.record(&mut found);
        if let (Some(value), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(CorrelationId(value));
        }
    }
}

struct FindCorrelation(Option<String>);

impl Visit for FindCorrelation {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == CORRELATION_FIELD && !value.is_empty() {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == CORRELATION_FIELD {
            let value = format!("{value:?}");
            if !value.is_empty() {
                self.0 = Some(value);
            }
        }
    }
}

/// The event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// Formats each event as one JSON object: `timestamp`, `level`, `service`, `target`, `message` and
/// the event's fields, then `trace_id`/`span_id` (of the span current when it was logged) and the
/// nearest enclosing `correlation_id`.
#[derive(Debug, Clone)]
pub struct JsonLines {
    service: String,
}

impl JsonLines {
    pub fn new(service: &str) -> Self {
        Self { service: service.to_owned() }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("service".into(), Value::from(self.service.as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        event.record(&mut JsonFields(&mut line));
        let otel = opentelemetry::Context::current();
        let span = otel.span();
        let context = span.span_context();
        if context.is_valid() {
            line.insert("trace_id".into(), Value::from(context.trace_id().to_string()));
            line.insert("span_id".into(), Value::from(context.span_id().to_string()));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                if let Some(CorrelationId(id)) = span.extensions().get::<CorrelationId>() {
                    line.insert(CORRELATION_FIELD.into(), Value::from(id.as_str()));
                    break;
                }
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_inside_a_span_names_the_service_its_fields_and_the_nearest_correlation_id() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(CorrelationLayer).with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines::new("ride-worker"))
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("request", correlation_id = "c-outer");
            let _outer = outer.enter();
            let inner = tracing::info_span!("step");
            let _inner = inner.enter();
            tracing::warn!(attempt = 3u64, "retrying");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["service"], "ride-worker");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "retrying");
        assert_eq!(line["attempt"], 3);
        assert_eq!(line["correlation_id"], "c-outer", "inherited from the enclosing span: {line}");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(line.get("trace_id").is_none(), "no OpenTelemetry layer here, so no trace id");
    }
}
