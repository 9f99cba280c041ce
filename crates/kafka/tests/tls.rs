//! Kafka over TLS: a tansu broker of this test's own behind stunnel (tansu's own TLS flags do not work
//! in the build we use, see docs/testing.md), with a certificate from a CA this test makes. The
//! clients (rdkafka with its `ssl` feature) verify the broker against that CA; a client without TLS,
//! or trusting another CA, gets nothing through.

use std::process::Command;
use std::time::Duration;

use ridehail_contract::tls::{Process, TestCa, free_port, have_binary, stunnel, wait_for_port};
use ridehail_kafka::{KafkaBus, KafkaSettings, apply_topics};
use ridehail_ports::{MessageBus, OutgoingMessage, StartFrom};

const TOPIC: &str = "tls.topic";

/// tansu on a plaintext port, advertised as the TLS port stunnel listens on.
fn broker_behind_tls(ca: &TestCa) -> Option<(Process, Process, u16)> {
    let tansu = match std::env::var("RIDEHAIL_TEST_TANSU") {
        Ok(path) => path,
        Err(_) => {
            ridehail_contract::test_server("RIDEHAIL_TEST_TANSU")?;
            return None;
        }
    };
    if !have_binary(&std::env::var("RIDEHAIL_TEST_STUNNEL").unwrap_or_else(|_| "stunnel4".into())) {
        return None;
    }
    let (plain, tls) = (free_port(), free_port());
    let broker = Process::spawn(Command::new(tansu).args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{plain}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{tls}"),
        "--storage-engine",
        "memory://tansu/",
    ]));
    wait_for_port(plain);
    let terminator = stunnel(ca, tls, plain);
    Some((broker, terminator, tls))
}

fn settings(port: u16, ca: Option<&TestCa>) -> KafkaSettings {
    KafkaSettings {
        brokers: format!("127.0.0.1:{port}"),
        partitions: 2,
        session_timeout_ms: 6_000,
        fetch_wait_max_ms: 10,
        delivery_timeout_ms: 5_000,
        tls_ca_file: ca.map(|ca| ca.ca_file.to_str().unwrap().to_owned()),
        ..KafkaSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_travel_over_tls_and_clients_that_cannot_verify_the_broker_get_nothing_through() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = TestCa::new(dir.path());
    let Some((_broker, _stunnel, port)) = broker_behind_tls(&ca) else { return };
    let tls = settings(port, Some(&ca));
    assert!(tls.uses_tls());
    apply_topics(&tls, &[TOPIC]).await.unwrap();
    let bus = KafkaBus::connect(&tls, "tls-test").unwrap();
    bus.ping().await.unwrap();
    let mut sub = bus.subscribe("tls-group", &[TOPIC], StartFrom::Earliest).await.unwrap();
    let records = (0..5u8).map(|n| OutgoingMessage { key: "k".into(), headers: vec![], payload: vec![n] }).collect();
    bus.publish(TOPIC, records).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 5 && tokio::time::Instant::now() < deadline {
        got.extend(sub.poll(10, Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    // Plaintext to the TLS port, and TLS trusting another CA: no metadata, no publish.
    let other_dir = tempfile::TempDir::new().unwrap();
    let stranger = TestCa::new(other_dir.path());
    for (what, settings) in [("plaintext", settings(port, None)), ("another CA", settings(port, Some(&stranger)))] {
        let bus = KafkaBus::connect(&settings, "tls-test").unwrap();
        assert!(bus.ping().await.is_err(), "{what}: the broker answered");
    }
    wait_for_port(port);
}
