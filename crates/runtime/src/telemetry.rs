//! Telemetry of every Ridehail process: logs, traces and metrics, set up once by [`init`].
//!
//! - **Logs**: readable text in development; in production one JSON object per line with
//!   `timestamp`, `level`, `service`, `target`, `message`, the event's fields, and — inside a request
//!   or a record — `trace_id`, `span_id` and `correlation_id`. Filtered by `RUST_LOG`.
//! - **Traces**: OpenTelemetry spans exported over OTLP/HTTP (protobuf) when `otlp_endpoint` is set,
//!   sampled parent-based at `sampling_ratio`. The OpenTelemetry layer is installed even without an
//!   exporter: spans then get ids (so logs carry them and a client's `traceparent` travels on through
//!   the bus) but nothing is recorded. The W3C trace context crosses the bus in record headers
//!   ([`crate::propagation`]).
//! - **Metrics**: a Prometheus recorder for the `metrics` facade; [`render_metrics`] is what
//!   `GET /metrics` answers. docs/observability.md lists every metric.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Where traces go and how many.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// The OTLP/HTTP traces endpoint, used as given (e.g. `http://127.0.0.1:4318/v1/traces`).
    /// Unset: no span is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded (0.0 to 1.0); a trace a caller started keeps the caller's
    /// decision (parent-based).
    pub sampling_ratio: f64,
    /// `service.name` of this process's spans; defaults to the process's role (`api-edge`, …).
    pub service_name: Option<String>,
    /// Further resource attributes (`deployment.environment.name`, `service.instance.id`, …).
    pub resource_attributes: BTreeMap<String, String>,
    /// A batch of spans is sent at the latest this long after its first span ended.
    pub batch_delay_ms: u64,
    /// One export may take this long.
    pub export_timeout_ms: u64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 0.1,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            batch_delay_ms: 2_000,
            export_timeout_ms: 5_000,
        }
    }
}

impl TracingSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sampling_ratio),
            "tracing.sampling_ratio must be between 0.0 and 1.0, not {}",
            self.sampling_ratio
        );
        if let Some(endpoint) = &self.otlp_endpoint {
            anyhow::ensure!(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "tracing.otlp_endpoint must be an http(s) URL, not {endpoint:?}"
            );
        }
        Ok(())
    }
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter (bounded by the export timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocking calls: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.force_flush() {
                    eprintln!("telemetry: flushing spans failed: {e}");
                }
                let _ = provider.shutdown();
            })
            .await;
        }
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The Prometheus text exposition of this process's metrics (empty before [`init`]).
pub fn render_metrics() -> String {
    METRICS.get().map(PrometheusHandle::render).unwrap_or_default()
}

/// Histogram buckets, in seconds, of every `*_duration_seconds` metric: from 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Time from request to match, in seconds.
const MATCH_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Fares, in minor units (cents): 2.50 to 200.00.
const FARE_BUCKETS: &[f64] = &[250.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, 20000.0];
/// Surge, in basis points (10000 = 1.0x).
const SURGE_BUCKETS: &[f64] = &[10000.0, 11000.0, 12500.0, 15000.0, 17500.0, 20000.0, 25000.0, 30000.0];

/// Installs the process's logs, traces and metrics. `service` names the process (`api-edge`,
/// `ride-worker`, …) in every log line, span and metric. Once per process: later calls (several
/// tests in one process) change nothing and return a handle with nothing to flush.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    service: &str,
    tracing: &TracingSettings,
) -> anyhow::Result<Telemetry> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.set(()).is_err() {
        return Ok(Telemetry { provider: None });
    }
    tracing.validate()?;
    install_metrics(service)?;
    let service_name = tracing.service_name.clone().unwrap_or_else(|| service.to_owned());
    let provider = tracer_provider(&service_name, tracing)?;
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("ridehail"))
        .with_error_events_to_status(true)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false);

    // RUST_LOG filters the log lines only; the exporter's own complaints are kept at warning level
    // whatever it says of the rest.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter))
        .add_directive("opentelemetry_sdk=warn".parse()?)
        .add_directive("opentelemetry_otlp=warn".parse()?);
    // Colours only on a terminal: logs collected from a pipe or a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(crate::logs::JsonLines::new(service))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter).boxed()
        }
    };
    // Spans are Ridehail's own at `info`, whatever the logs are filtered to: a process logging only
    // warnings still traces its requests and records.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("ridehail", tracing::Level::INFO)
        .with_target("api_edge", tracing::Level::INFO)
        .with_target("ride_worker", tracing::Level::INFO)
        .with_target("user_worker", tracing::Level::INFO);
    let _ = tracing_subscriber::registry()
        .with(crate::logs::CorrelationLayer)
        .with(otel.with_filter(spans))
        .with(logs)
        .try_init();
    let exporting = tracing.otlp_endpoint.is_some();
    Ok(Telemetry { provider: exporting.then_some(provider) })
}

/// The tracer provider: exporting over OTLP when an endpoint is set; otherwise one that records
/// nothing but still gives spans their ids.
fn tracer_provider(service_name: &str, settings: &TracingSettings) -> anyhow::Result<SdkTracerProvider> {
    let mut attributes: Vec<KeyValue> = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    attributes.extend(settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(attributes)
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &settings.otlp_endpoint else {
        return Ok(builder.with_sampler(Sampler::AlwaysOff).build());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_millis(settings.export_timeout_ms))
        .with_headers(std::collections::HashMap::new())
        .build()?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(settings.batch_delay_ms.max(1)))
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sampling_ratio)));
    Ok(builder.with_sampler(sampler).with_span_processor(processor).build())
}

fn install_metrics(service: &str) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("ridehail_time_to_match_seconds".into()), MATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("ridehail_fare_minor".into()), FARE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("ridehail_surge_bps".into()), SURGE_BUCKETS)?
        .install_recorder()?;
    crate::metrics::describe();
    // Histograms buffer samples until upkeep folds them in.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    let _ = METRICS.set(handle);
    Ok(())
}
