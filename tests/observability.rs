//! Observability against real receivers: the spans of a ride request, sent by the edge and the
//! workers as separate processes over Kafka, reach a real OTLP receiver (PyPI `oteltap`) as one trace;
//! a real Prometheus scrapes every process during a short scenario and its HTTP API answers the
//! business, lag and HTTP queries of docs/observability.md; `promtool` checks and unit-tests the
//! alert rules; log lines carry the request's trace and correlation ids.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, Log, Server, Worker, as_refs, server_env};

/// A real OTLP/HTTP receiver printing each span it gets as a JSON line into a file.
struct Receiver {
    _process: Worker,
    port: u16,
    spans: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, oteltap: &str) -> Self {
        let port = ridehail_contract::tls::free_port();
        let spans = dir.join("spans.ndjson");
        let process = Command::new(oteltap)
            .args(["--port", &port.to_string()])
            .stdout(std::fs::File::create(&spans).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("oteltap starts");
        let process = Worker::new(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "oteltap did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { _process: process, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        text.lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The first span named `name` (or fails after 30 s).
    async fn first(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(span) = self.spans().into_iter().find(|s| s["name"] == name) {
                return span;
            }
            assert!(Instant::now() < deadline, "no {name} span in 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The spans of `trace`, once `ready` holds of them (or fails after 30 s).
    async fn trace(&self, trace: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Value> = self.spans().into_iter().filter(|s| s["traceId"] == trace).collect();
            if ready(&spans) {
                return spans;
            }
            let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
            assert!(Instant::now() < deadline, "trace {trace} incomplete after 30 s: {names:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    let attributes = span["attributes"].as_array()?;
    attributes.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn string_attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attribute(span, key)?["stringValue"].as_str()
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// Whether `span` is `ancestor` or below it.
fn descends_from(spans: &[Value], span: &Value, ancestor: &Value) -> bool {
    let by_id: HashMap<&str, &Value> = spans.iter().filter_map(|s| Some((s["spanId"].as_str()?, s))).collect();
    let mut current = span;
    loop {
        if current["spanId"] == ancestor["spanId"] {
            return true;
        }
        match current["parentSpanId"].as_str().and_then(|p| by_id.get(p)) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
}

/// Edge, user worker and ride worker as separate processes over Kafka, MongoDB and Redis, all
/// exporting to `receiver`, every span sampled.
struct Stack {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    edge: Server,
    workers: Vec<(Worker, String)>,
    log: Log,
}

impl Stack {
    fn start(mut env: Vec<(String, String)>) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        env.push(("RIDEHAIL__LOG_FORMAT".into(), "json".into()));
        let refs = as_refs(&env);
        support::prepare_servers(dir.path(), &refs);
        let log: Log = Default::default();
        let edge = Server::start_logged(dir.path(), "edge", &refs, &log);
        let workers = ["user-worker", "ride-worker"]
            .into_iter()
            .map(|w| support::start_worker_with_admin(dir.path(), w, &refs, &log))
            .collect();
        Self { dir, env, edge, workers, log }
    }

    fn lines(&self) -> Vec<Value> {
        let lines = self.log.lock().unwrap();
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

fn tracing_env(env: Vec<(String, String)>, receiver: &Receiver) -> Vec<(String, String)> {
    env.into_iter()
        .chain([
            ("RIDEHAIL__TRACING__OTLP_ENDPOINT".to_owned(), receiver.endpoint()),
            ("RIDEHAIL__TRACING__SAMPLING_RATIO".to_owned(), "1.0".to_owned()),
            ("RIDEHAIL__TRACING__BATCH_DELAY_MS".to_owned(), "200".to_owned()),
        ])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ride_request_is_one_trace_from_the_edge_through_kafka_to_every_effect() {
    let Some(env) = server_env() else { return };
    let Some(oteltap) = ridehail_contract::test_server("RIDEHAIL_TEST_OTELTAP") else { return };
    let dir = tempfile::TempDir::new().unwrap();
    let receiver = Receiver::start(dir.path(), &oteltap);
    let stack = Stack::start(tracing_env(env, &receiver));
    let api = Api::new(&stack.edge.url);
    let first_ride = support::readme_session(&api).await;

    // A second request continues the trace its client started, and keeps the client's correlation id.
    let (_, rider_token) = api.login(support::RIDER_EMAIL, support::RIDER_PASSWORD).await;
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let correlation_id = uuid::Uuid::now_v7().to_string();
    let response = api
        .client
        .post(format!("{}/v1/rides", api.base))
        .bearer_auth(&rider_token)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .header("x-correlation-id", &correlation_id)
        .header("prefer", "wait=5")
        .json(&json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let ride: Value = response.json().await.unwrap();
    assert_ne!(ride["ride_id"].as_str(), Some(first_ride.as_str()));

    let spans = receiver
        .trace(client_trace, |spans| {
            named(spans, "POST /v1/rides").len() == 1
                && spans.iter().any(|s| s["name"].as_str().is_some_and(|n| n.ends_with("ridehail.ride.events")))
                && !named(spans, "effects").is_empty()
        })
        .await;

    // The edge's server span, a child of the client's span.
    let server = named(&spans, "POST /v1/rides")[0];
    assert_eq!(server["kind"], 2, "server");
    assert_eq!(server["parentSpanId"], client_span);
    assert_eq!(string_attribute(server, "http.route"), Some("/v1/rides"));
    assert_eq!(attribute(server, "http.response.status_code").unwrap()["intValue"], "201");

    // The command's publish (producer), under the server span.
    let send = spans
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with("send ") && n.ends_with("ridehail.ride.commands")))
        .expect("a send span for the command");
    assert_eq!(send["kind"], 4, "producer");
    assert!(descends_from(&spans, send, server));
    assert_eq!(string_attribute(send, "messaging.system"), Some("kafka"));
    assert_eq!(string_attribute(send, "messaging.operation.type"), Some("send"));

    // Its consumption in the ride worker (another process): a child of the producer span, linked to it.
    let process = spans
        .iter()
        .find(|s| {
            s["name"].as_str().is_some_and(|n| n.starts_with("process ") && n.ends_with("ridehail.ride.commands"))
        })
        .expect("a process span for the command");
    assert_eq!(process["kind"], 5, "consumer");
    assert_eq!(process["parentSpanId"], send["spanId"], "the consumer continues the producer's span");
    let links = process["links"].as_array().unwrap();
    assert!(links.iter().any(|l| l["spanId"] == send["spanId"] && l["traceId"] == client_trace), "{links:?}");
    assert_eq!(string_attribute(process, "messaging.system"), Some("kafka"));
    assert!(string_attribute(process, "messaging.destination.name").unwrap().ends_with("ridehail.ride.commands"));
    assert!(string_attribute(process, "messaging.consumer.group.name").unwrap().ends_with("ride-worker"));
    assert!(string_attribute(process, "messaging.destination.partition.id").unwrap().parse::<u32>().is_ok());
    assert!(attribute(process, "messaging.kafka.offset").unwrap()["intValue"].as_str().is_some());

    // The executor's steps and the outside calls, under the process span.
    for step in ["load", "decide", "append", "effects"] {
        let found = named(&spans, step);
        assert!(found.iter().any(|s| s["parentSpanId"] == process["spanId"]), "{step} under the process span");
    }
    let call = |name: &str| {
        let found = named(&spans, name);
        assert!(!found.is_empty(), "a {name} span");
        assert!(found.iter().all(|s| descends_from(&spans, s, process)), "{name} under the process span");
        found[0].clone()
    };
    assert_eq!(string_attribute(&call("event_store append"), "db.system.name"), Some("mongodb"));
    assert_eq!(string_attribute(&call("event_store read_stream"), "db.system.name"), Some("mongodb"));
    assert_eq!(string_attribute(&call("driver_locator reserve_nearest"), "db.system.name"), Some("redis"));
    // The projection that serves the ride's read, and the published events.
    assert_eq!(call("ride_views upsert_many")["kind"], 3, "client");
    let events = spans
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with("send ") && n.ends_with("ridehail.ride.events")))
        .unwrap();
    assert!(descends_from(&spans, events, process));

    // No personal data in any span, attribute or event of any trace.
    let everything = std::fs::read_to_string(&receiver.spans).unwrap();
    for secret in [
        support::RIDER_EMAIL,
        support::DRIVER_EMAIL,
        support::RIDER_PASSWORD,
        support::DRIVER_PASSWORD,
        "\"Dora\"",
        "\"Rui\"",
        "38.72",
        "-9.13",
        "-9.14",
    ] {
        assert!(!everything.contains(secret), "{secret:?} appears in the exported spans");
    }

    // The edge's log line for that command names the trace and the client's correlation id.
    let lines = stack.lines();
    let published = lines
        .iter()
        .find(|l| l["message"] == "command published" && l["correlation_id"] == correlation_id.as_str())
        .unwrap_or_else(|| panic!("no `command published` line with correlation id {correlation_id}"));
    assert_eq!(published["trace_id"], client_trace);
    assert_eq!(published["service"], "api-edge");
    assert_eq!(published["span_id"].as_str().map(str::len), Some(16));
    assert!(published["timestamp"].as_str().is_some() && published["level"] == "INFO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_bus_too_a_command_s_consumption_continues_its_publish() {
    let Some(oteltap) = ridehail_contract::test_server("RIDEHAIL_TEST_OTELTAP") else { return };
    let dir = tempfile::TempDir::new().unwrap();
    let receiver = Receiver::start(dir.path(), &oteltap);
    let env = tracing_env(Vec::new(), &receiver);
    let server = Server::start(&dir.path().join("data"), &as_refs(&env));
    let api = Api::new(&server.url);
    support::readme_session(&api).await;
    // The server logs at `warn`: its spans are exported all the same.
    let request = receiver.first("POST /v1/rides").await;
    let trace = request["traceId"].as_str().unwrap().to_owned();
    // The request's command: its publish, and its consumption (the trace holds the events' publish too).
    let command = |prefix: &str, s: &Value| {
        s["name"].as_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with("ridehail.ride.commands"))
    };
    let spans = receiver
        .trace(&trace, |spans| {
            spans.iter().any(|s| command("process ", s)) && !named(spans, "event_store append").is_empty()
        })
        .await;
    let send = spans.iter().find(|s| command("send ", s)).unwrap();
    let process = spans.iter().find(|s| command("process ", s)).unwrap();
    assert_eq!(process["parentSpanId"], send["spanId"]);
    assert_eq!(string_attribute(process, "messaging.system"), Some("ridehail_embedded"));
    assert_eq!(string_attribute(&call_span(&spans, "event_store append"), "db.system.name"), Some("sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_caller_and_spans_still_buffered_are_sent_at_shutdown() {
    let Some(oteltap) = ridehail_contract::test_server("RIDEHAIL_TEST_OTELTAP") else { return };
    let dir = tempfile::TempDir::new().unwrap();
    let receiver = Receiver::start(dir.path(), &oteltap);
    // Nothing of its own sampled, and batches held for a minute: only the shutdown flush sends them.
    let env: Vec<(String, String)> = tracing_env(Vec::new(), &receiver)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "RIDEHAIL__TRACING__SAMPLING_RATIO" => (k, "0.0".to_owned()),
            "RIDEHAIL__TRACING__BATCH_DELAY_MS" => (k, "60000".to_owned()),
            _ => (k, v),
        })
        .collect();
    let mut server = Server::start(&dir.path().join("data"), &as_refs(&env));
    let api = Api::new(&server.url);
    let sampled = "0af7651916cd43dd8448eb211c80319c";
    for traceparent in [None, Some(format!("00-{sampled}-b7ad6b7169203331-01"))] {
        let mut request = api.client.get(format!("{}/health/live", api.base));
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        assert!(request.send().await.unwrap().status().is_success());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.spans().is_empty(), "held in the batch until shutdown");
    assert!(server.terminate().success());
    let spans = receiver.trace(sampled, |spans| !named(spans, "GET /health/live").is_empty()).await;
    assert_eq!(spans[0]["parentSpanId"], "b7ad6b7169203331");
    let all = receiver.spans();
    let health: Vec<&Value> = all.iter().filter(|s| s["name"] == "GET /health/live").collect();
    assert_eq!(health.len(), 1, "the request without a sampled caller was not recorded: {health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_s_command_continues_the_trace_of_the_command_that_set_it() {
    let Some(oteltap) = ridehail_contract::test_server("RIDEHAIL_TEST_OTELTAP") else { return };
    let dir = tempfile::TempDir::new().unwrap();
    let receiver = Receiver::start(dir.path(), &oteltap);
    // No driver anywhere: the request schedules a wider search a second later (a timer), which finds
    // nobody either and expires the ride.
    let mut env = tracing_env(Vec::new(), &receiver);
    env.push(("RIDEHAIL__RIDE_WORKER__MATCHING__RETRY_INTERVAL_S".into(), "1".into()));
    env.push(("RIDEHAIL__RIDE_WORKER__MATCHING__MAX_RADIUS_M".into(), "4000".into()));
    let server = Server::start(&dir.path().join("data"), &as_refs(&env));
    let api = Api::new(&server.url);
    let (email, password) = ("lonely@example.com", "nobody-drives-here");
    let body = json!({ "email": email, "password": password, "name": "Lone", "role": "rider" });
    assert_eq!(api.send("POST", "/v1/users", None, Some(body)).await.0, 201);
    let (_, token) = api.login(email, password).await;
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (status, ride) = api.send("POST", "/v1/rides", Some(&token), Some(trip)).await;
    assert!(status == 201 || status == 202, "{status} {ride}");
    let request = receiver.first("POST /v1/rides").await;
    let trace = request["traceId"].as_str().unwrap().to_owned();
    let is_system =
        |s: &Value| s["name"].as_str().is_some_and(|n| n.starts_with("process ") && n.ends_with("system-commands"));
    let spans = receiver.trace(&trace, |spans| spans.iter().any(is_system)).await;
    let fired = call_span(&spans, "fire timer");
    let process = spans.iter().find(|s| is_system(s)).unwrap();
    assert!(descends_from(&spans, process, &fired), "the timer's command is processed under its firing");
    // The timer was set while the request's command was processed.
    let request_process = spans
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with("process ") && n.ends_with("ride.commands")))
        .unwrap();
    assert!(descends_from(&spans, request_process, &request));
    assert!(descends_from(&spans, &fired, request_process), "the timer keeps the context of the command that set it");
}

fn call_span(spans: &[Value], name: &str) -> Value {
    named(spans, name).first().map(|s| (*s).clone()).unwrap_or_else(|| panic!("no {name} span"))
}

/// Prometheus's HTTP API: the value of an instant query (the sum of its series), once it is there.
async fn query(client: &reqwest::Client, prometheus: &str, expr: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let answer: Value =
            match client.get(format!("{prometheus}/api/v1/query")).query(&[("query", expr)]).send().await {
                Ok(response) => response.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
        let values: Vec<f64> = answer["data"]["result"]
            .as_array()
            .map(|r| r.iter().filter_map(|s| s["value"][1].as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if !values.is_empty() {
            let total: f64 = values.iter().sum();
            if want(total) {
                return total;
            }
        }
        assert!(Instant::now() < deadline, "{expr}: not as expected after 45 s; last answer {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_process_and_answers_the_business_questions() {
    let Some(env) = server_env() else { return };
    let Some(prometheus) = ridehail_contract::test_server("RIDEHAIL_TEST_PROMETHEUS") else { return };
    let stack = Stack::start(env);
    let target = |url: &str| url.trim_start_matches("http://").to_owned();
    let targets: Vec<String> =
        std::iter::once(target(&stack.edge.url)).chain(stack.workers.iter().map(|(_, admin)| target(admin))).collect();
    let dir = stack.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ridehail\n    \
         static_configs:\n      - targets: {targets:?}\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = ridehail_contract::tls::free_port();
    let process = Command::new(&prometheus)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts");
    let _prometheus = Worker::new(process);
    let url = format!("http://127.0.0.1:{port}");
    let api = Api::new(&stack.edge.url);
    let client = api.client.clone();
    // Every process is a target that answers.
    query(&client, &url, "sum(up)", |v| v == targets.len() as f64).await;

    let ride_id = support::readme_session(&api).await;
    let (_, rider_token) = api.login(support::RIDER_EMAIL, support::RIDER_PASSWORD).await;
    let (_, ride) = api.send("GET", &format!("/v1/rides/{ride_id}"), Some(&rider_token), None).await;
    let fare = ride["fare"]["total_minor"].as_f64().unwrap();
    // A second ride, cancelled by its rider.
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (status, second) = api.send("POST", "/v1/rides", Some(&rider_token), Some(trip)).await;
    assert_eq!(status, 201, "{second}");
    let path = format!("/v1/rides/{}/cancel", second["ride_id"].as_str().unwrap());
    let (status, body) =
        api.send("POST", &path, Some(&rider_token), Some(json!({ "reason": "changed my mind" }))).await;
    assert_eq!(status, 200, "{body}");

    // The business counters, as docs/observability.md writes the questions.
    let exactly = |n: f64| move |v: f64| (v - n).abs() < 1e-9;
    query(&client, &url, "sum(ridehail_rides_requested_total)", exactly(2.0)).await;
    query(&client, &url, "sum(ridehail_rides_completed_total)", exactly(1.0)).await;
    query(&client, &url, r#"sum(ridehail_rides_cancelled_total{by="rider"})"#, exactly(1.0)).await;
    query(&client, &url, "sum(increase(ridehail_rides_completed_total[1h]))", |v| v >= 0.0).await;
    let average = "sum(ridehail_fare_minor_sum) / sum(ridehail_fare_minor_count)";
    query(&client, &url, average, exactly(fare)).await;
    query(&client, &url, "sum(ridehail_time_to_match_seconds_count)", |v| v >= 1.0).await;
    query(&client, &url, "max(ridehail_drivers_online)", exactly(1.0)).await;
    // An HTTP histogram by route template (never the raw path).
    query(
        &client,
        &url,
        r#"sum(ridehail_http_request_duration_seconds_count{method="POST",route="/v1/rides"})"#,
        exactly(2.0),
    )
    .await;
    query(
        &client,
        &url,
        r#"sum(ridehail_http_requests_total{route="/v1/rides/{id}/cancel",status="200"})"#,
        exactly(1.0),
    )
    .await;
    // Over every request since start (a rate needs the window to hold an increase).
    let p95 =
        r#"histogram_quantile(0.95, sum by (le) (ridehail_http_request_duration_seconds_bucket{route="/v1/rides"}))"#;
    query(&client, &url, p95, |v| v > 0.0 && v < 10.0).await;
    // Lag per partition, reported by both workers' groups, back to zero once the scenario is done.
    query(&client, &url, r#"count(ridehail_consumer_lag{group=~".*ride-worker"})"#, |v| v >= 6.0).await;
    query(&client, &url, r#"count(ridehail_consumer_lag{group=~".*user-worker"})"#, |v| v >= 1.0).await;
    query(&client, &url, "sum(ridehail_consumer_lag)", exactly(0.0)).await;
    // Records consumed by the ride worker, port calls by engine.
    query(&client, &url, r#"sum(ridehail_records_consumed_total{outcome="processed"})"#, |v| v >= 8.0).await;
    query(&client, &url, r#"count(ridehail_port_call_duration_seconds_count{backend="mongodb"})"#, |v| v >= 3.0).await;
    query(&client, &url, "sum(ridehail_circuit_breaker_open)", exactly(0.0)).await;
    // The ride reads went through the Redis cache.
    query(&client, &url, r#"sum(ridehail_cache_reads_total{view="ride"})"#, |v| v >= 1.0).await;
    let _ = &stack.env;
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = ridehail_contract::test_server("RIDEHAIL_TEST_PROMTOOL") else { return };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts.test.yml"][..]] {
        let output = Command::new(&promtool).args(args).current_dir(&rules).output().expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every metric the dashboard and the alert rules query is one the processes export.
#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_that_exist() {
    use ridehail_runtime::metrics as m;
    let exported = [
        m::HTTP_REQUESTS,
        m::HTTP_DURATION,
        m::HTTP_IN_FLIGHT,
        m::HTTP_SHED,
        m::RECORDS_CONSUMED,
        m::RECORDS_RETRIED,
        m::DEAD_LETTERS,
        m::PROCESSING_DURATION,
        m::CONSUMER_LAG,
        m::RECORDS_PUBLISHED,
        m::PUBLISH_DURATION,
        m::PORT_DURATION,
        m::PORT_ERRORS,
        m::BREAKER_OPEN,
        m::CACHE_READS,
        m::RIDES_REQUESTED,
        m::RIDES_MATCHED,
        m::RIDES_COMPLETED,
        m::RIDES_CANCELLED,
        m::RIDES_EXPIRED,
        m::TIME_TO_MATCH,
        m::FARE,
        m::SURGE,
        m::DRIVERS_ONLINE,
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/ridehail.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 16, "the dashboard has its panels");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    exprs.push(alerts);
    let mut used = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(base) = word.strip_prefix("ridehail_") {
                let name = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                assert!(exported.contains(&name), "{name} (in {expr:.80}) is not an exported metric ({base})");
                used += 1;
            }
        }
    }
    assert!(used > 20);
}
