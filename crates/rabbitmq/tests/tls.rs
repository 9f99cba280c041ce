//! RabbitMQ over TLS (`amqps://`, rustls): stunnel with a certificate from a CA this test makes, in
//! front of the test broker (the Debian build is not configured for TLS here; the handshake, the
//! verification against `rabbitmq.tls_ca_file` and AMQP over it are what is checked). A client
//! without TLS, or trusting another CA, gets nothing through.

use std::time::Duration;

use ridehail_contract::tls::{TestCa, free_port, have_binary, stunnel};
use ridehail_contract::{test_server, unique_name};
use ridehail_ports::{MessageBus, OutgoingMessage, StartFrom};
use ridehail_rabbitmq::{RabbitMqBus, RabbitMqSettings, apply_topics};

const TOPIC: &str = "tls.topic";

fn settings(url: String, ca: Option<&TestCa>, namespace: &str) -> RabbitMqSettings {
    RabbitMqSettings {
        url,
        namespace: namespace.to_owned(),
        partitions: 2,
        tls_ca_file: ca.map(|ca| ca.ca_file.to_str().unwrap().to_owned()),
        ..RabbitMqSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_travel_over_tls_and_clients_that_cannot_verify_the_broker_get_nothing_through() {
    let Some(plain_url) = test_server("RIDEHAIL_TEST_RABBITMQ_URL") else { return };
    if !have_binary(&std::env::var("RIDEHAIL_TEST_STUNNEL").unwrap_or_else(|_| "stunnel4".into())) {
        return;
    }
    let port: u16 = plain_url.rsplit_once(':').unwrap().1.split('/').next().unwrap().parse().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let ca = TestCa::new(dir.path());
    let tls_port = free_port();
    let _terminator = stunnel(&ca, tls_port, port);
    let namespace = format!("{}.", unique_name("tls"));
    let tls_url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
    let tls = settings(tls_url.clone(), Some(&ca), &namespace);
    assert!(tls.uses_tls());
    apply_topics(&tls, &[TOPIC]).await.unwrap();
    let bus = RabbitMqBus::connect(&tls, "tls-test").unwrap();
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

    // Plaintext to the TLS port, and TLS trusting another CA: no connection.
    let other_dir = tempfile::TempDir::new().unwrap();
    let stranger = TestCa::new(other_dir.path());
    let plaintext = format!("amqp://guest:guest@127.0.0.1:{tls_port}/%2f");
    for (what, settings) in [
        ("plaintext", settings(plaintext, None, &namespace)),
        ("another CA", settings(tls_url, Some(&stranger), &namespace)),
    ] {
        let bus = RabbitMqBus::connect(&settings, "tls-test").unwrap();
        assert!(bus.ping().await.is_err(), "{what}: the broker answered");
    }
}
