//! Redis over TLS, against a real `redis-server` started here with `--tls-port` (Debian's build has
//! TLS) and certificates from a CA this test makes: the client verifies the server against that CA,
//! and the server refuses plaintext.

use std::process::Command;

use ridehail_contract::tls::{Process, TestCa, free_port, have_binary, wait_for_port};
use ridehail_ports::{Admission, Limiter, Rate};
use ridehail_redis::{RedisLimiter, RedisSettings};

/// A TLS-only redis-server, or `None` (skipped, visibly) when redis-server is not installed.
fn tls_redis(ca: &TestCa) -> Option<(Process, u16)> {
    if !have_binary("redis-server") {
        return None;
    }
    let port = free_port();
    let process = Process::spawn(Command::new("redis-server").args([
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        ca.cert_file.to_str().unwrap(),
        "--tls-key-file",
        ca.key_file.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.ca_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]));
    wait_for_port(port);
    Some((process, port))
}

fn settings(url: String, ca: Option<&TestCa>) -> RedisSettings {
    RedisSettings {
        url,
        key_prefix: format!("{}:", ridehail_contract::unique_name("tls")),
        tls_ca_file: ca.map(|ca| ca.ca_file.clone()),
        connect_timeout_ms: 2_000,
        ..RedisSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_tls_to_a_tls_only_server_and_plaintext_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::TempDir::new().unwrap();
    let ca = TestCa::new(dir.path());
    let Some((_server, port)) = tls_redis(&ca) else { return };

    let redis = ridehail_redis::connect(&settings(format!("rediss://127.0.0.1:{port}"), Some(&ca))).await.unwrap();
    redis.ping().await.unwrap();
    let limiter = RedisLimiter::new(redis.clone());
    let rate = Rate::new(1, 60, 1);
    assert_eq!(limiter.admit("tls-check", rate).await.unwrap(), Admission::Admitted);
    assert!(matches!(limiter.admit("tls-check", rate).await.unwrap(), Admission::Limited { .. }), "counted in Redis");

    // Plaintext to the TLS port: no answer.
    let plain = ridehail_redis::connect(&settings(format!("redis://127.0.0.1:{port}"), None)).await;
    assert!(plain.is_err(), "a plaintext client got through");
    // A server certificate from a CA the client does not trust: refused.
    let other_dir = tempfile::TempDir::new().unwrap();
    let stranger = TestCa::new(other_dir.path());
    let untrusted = ridehail_redis::connect(&settings(format!("rediss://127.0.0.1:{port}"), Some(&stranger))).await;
    assert!(untrusted.is_err(), "a server the client cannot verify was trusted");
}
