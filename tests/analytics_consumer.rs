//! Analytics teams read Ridehail's public event topics with their own tools, not with Ridehail's code.
//! This runs the system as separate processes over Kafka, MongoDB and Redis, drives the README
//! session, then hands the namespaced event topics to `tests/analytics/consume_and_validate.py`: an
//! independent client (PyPI `confluent-kafka`, in a consumer group of its own) that knows nothing of
//! Ridehail but the files in `schemas/`. Every record must match the schema its type and version
//! headers name, carry the documented headers and be keyed by its aggregate id; the event types read
//! must be exactly the README session's public ones. Tampered copies of a real record, published to a
//! scratch topic in the same namespace, show that the validator rejects what it should.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Instant;

use ridehail_contract::{test_server, unique_name};
use ridehail_events::topics;
use serde_json::Value;
use support::{Api, Server, as_refs, readme_session, server_env, start_worker_with};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/analytics/consume_and_validate.py");
const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
const TIMEOUT_SECS: &str = "60";

/// The public events of the README session (two sign-ups, a driver going online, one ride rated by
/// both sides). `PasswordSet` and `EmailClaimed` stay in the event store.
const README_SESSION_EVENTS: [(&str, u64); 9] = [
    ("UserRegistered", 2),
    ("DriverWentOnline", 1),
    ("RideRequested", 1),
    ("DriverOffered", 1),
    ("DriverAssigned", 1),
    ("DriverArrived", 1),
    ("RideStarted", 1),
    ("RideCompleted", 1),
    ("RideRated", 2),
];

/// A ride the previous code published (`RideRequested` and `RideCompleted` at schema version 1):
/// on the topic before the session, so the consumer reads both versions of those types.
const PREVIOUS_CODE_RIDE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/crates/events/tests/fixtures/ride-history.v1.json");

/// Each broken copy the script publishes, with a fragment of the error that must reject it (the copied
/// record may be of any schema version: the topic holds v1 and v2 ride events).
const TAMPERED_CASES: [(&str, &str); 7] = [
    ("payload-unknown-field", "'unexpected_field' was unexpected"),
    ("occurred-at-not-a-time", "is not a 'date-time'"),
    ("internal-type-without-schema", "no schema for PasswordSet v"),
    ("key-not-aggregate-id", "is not the envelope's aggregate_id"),
    ("correlation-header-missing", "missing header ridehail-correlation-id"),
    ("version-header-disagrees", "but envelope schema_version="),
    ("value-not-json", "value is not JSON"),
];

/// Runs the script; returns its exit code and the JSON it printed.
fn run_script(python: &str, args: &[&str]) -> (Option<i32>, Value) {
    let output = Command::new(python)
        .arg(SCRIPT)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("the analytics script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the script printed no JSON ({e}), status {}: {stdout}", output.status));
    (output.status.code(), printed)
}

fn validate(python: &str, brokers: &str, topics: &[String], min_messages: usize) -> (Option<i32>, Value) {
    let group = unique_name("analytics");
    let (topics, min_messages) = (topics.join(","), min_messages.to_string());
    run_script(
        python,
        &[
            "validate",
            "--brokers",
            brokers,
            "--topics",
            &topics,
            "--group",
            &group,
            "--min-messages",
            &min_messages,
            "--timeout",
            TIMEOUT_SECS,
            "--schemas",
            SCHEMAS,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_kafka_client_finds_every_published_event_valid_against_the_schemas() {
    let Some(env) = server_env() else { return };
    let Some(python) = test_server("RIDEHAIL_TEST_PYTHON") else { return };
    let started = Instant::now();
    let setting = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap();
    let (brokers, namespace) = (setting("RIDEHAIL__KAFKA__BROKERS"), setting("RIDEHAIL__KAFKA__NAMESPACE"));
    let env = as_refs(&env);
    let dir = tempfile::TempDir::new().unwrap();
    support::prepare_servers(dir.path(), &env);
    let previous: Vec<ridehail_events::WireEvent> =
        serde_json::from_str(&std::fs::read_to_string(PREVIOUS_CODE_RIDE).unwrap()).unwrap();
    let kafka = ridehail_kafka::KafkaSettings {
        brokers: brokers.clone(),
        namespace: namespace.clone(),
        ..ridehail_kafka::KafkaSettings::default()
    };
    let bus = ridehail_kafka::KafkaBus::connect(&kafka, "previous-release").unwrap();
    let records = previous.iter().map(ridehail_runtime::records::event_record).collect();
    ridehail_ports::MessageBus::publish(&bus, topics::RIDE_EVENTS, records).await.unwrap();
    let edge = Server::start_service(dir.path(), "edge", &env);
    let _user_worker = start_worker_with(dir.path(), "user-worker", &env);
    let _ride_worker = start_worker_with(dir.path(), "ride-worker", &env);
    readme_session(&Api::new(&edge.url)).await;

    // Every public record of the session, read and checked from outside.
    let event_topics = [topics::RIDE_EVENTS, topics::USER_EVENTS].map(|t| format!("{namespace}{t}"));
    let mut expected: BTreeMap<&str, u64> = README_SESSION_EVENTS.into_iter().collect();
    for event in &previous {
        *expected.get_mut(event.event_type.as_str()).unwrap() += 1;
    }
    assert!(previous.iter().any(|e| e.schema_version == 1 && e.event_type == "RideCompleted"));
    let total = expected.values().sum::<u64>() as usize;
    let (code, summary) = validate(&python, &brokers, &event_topics, total);
    eprintln!("analytics summary: {summary}");
    assert_eq!(code, Some(0), "the event topics hold invalid records or too few: {summary:#}");
    assert_eq!(summary["invalid"], Value::Array(vec![]), "{summary:#}");
    let seen: BTreeMap<&str, u64> =
        summary["by_type"].as_object().unwrap().iter().map(|(t, n)| (t.as_str(), n.as_u64().unwrap())).collect();
    assert!(
        !seen.contains_key("PasswordSet") && !seen.contains_key("EmailClaimed"),
        "internal events leaked: {seen:?}"
    );
    assert_eq!(seen, expected, "the README session's public events, each once");
    assert_eq!(summary["messages"], total);

    // The validator itself: tampered copies of a real ride event on a scratch topic. Its name ends with
    // the ride events' logical name (as a namespaced one does), so only the tampering can be wrong.
    let scratch = format!("{namespace}analytics-tampered.{}", topics::RIDE_EVENTS);
    let group = unique_name("analytics-tamper");
    let (code, published) = run_script(
        &python,
        &[
            "publish-tampered",
            "--brokers",
            &brokers,
            "--source-topic",
            &event_topics[0],
            "--target-topic",
            &scratch,
            "--group",
            &group,
            "--timeout",
            TIMEOUT_SECS,
        ],
    );
    assert_eq!(code, Some(0), "publishing tampered copies failed: {published}");
    let offsets: BTreeMap<u64, &str> = published["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["offset"].as_u64().unwrap(), c["case"].as_str().unwrap()))
        .collect();
    let cases: BTreeSet<&str> = offsets.values().copied().collect();
    let expected_cases: BTreeSet<&str> = TAMPERED_CASES.iter().map(|(case, _)| *case).chain(["unchanged"]).collect();
    assert_eq!(cases, expected_cases, "every published case has an expectation here: {published}");

    let (code, summary) = validate(&python, &brokers, &[scratch], offsets.len());
    eprintln!("tampered summary: {summary}");
    assert_eq!(code, Some(1), "the validator must fail on tampered records: {summary:#}");
    assert_eq!(summary["messages"], offsets.len());
    let rejected: BTreeMap<&str, String> = summary["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (offsets[&r["offset"].as_u64().unwrap()], r["errors"].to_string()))
        .collect();
    assert!(!rejected.contains_key("unchanged"), "the unchanged copy was rejected: {summary:#}");
    for (case, fragment) in TAMPERED_CASES {
        let errors = rejected.get(case).unwrap_or_else(|| panic!("{case} was accepted: {summary:#}"));
        assert!(errors.contains(fragment), "{case}: expected {fragment:?} among {errors}");
    }
    eprintln!("analytics consumer test took {:.1} s", started.elapsed().as_secs_f64());
}
