//! The edge over HTTPS (the real binary, certificate and key from files this test makes): a client
//! trusting the test CA gets answers with HSTS; plain HTTP on the TLS port gets none; a renewed
//! certificate written over the files is served without a restart. Plus the production checks that
//! refuse plaintext to other hosts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ridehail_contract::tls::TestCa;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use support::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn client(ca: &TestCa, versions: &[&'static rustls::SupportedProtocolVersion]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: a resumed session would show the certificate of the first.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One `GET` over TLS: the raw answer and the certificate the server presented.
async fn get_over_tls(connector: &tokio_rustls::TlsConnector, port: u16, path: &str) -> (String, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    (String::from_utf8_lossy(&answer).into_owned(), presented)
}

fn leaf_der(ca: &TestCa) -> Vec<u8> {
    CertificateDer::pem_file_iter(&ca.cert_file).unwrap().next().unwrap().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_https_refuses_plain_http_on_its_port_and_picks_up_a_renewed_certificate() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut ca = TestCa::new(dir.path());
    let env = [
        ("RIDEHAIL__EDGE__TLS__CERT_FILE", ca.cert_file.to_str().unwrap().to_owned()),
        ("RIDEHAIL__EDGE__TLS__KEY_FILE", ca.key_file.to_str().unwrap().to_owned()),
        ("RIDEHAIL__EDGE__TLS__RELOAD_SECONDS", "1".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&dir.path().join("data"), &env);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();

    let connector = client(&ca, &[&rustls::version::TLS13]);
    let (answer, presented) = get_over_tls(&connector, port, "/health/live").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{answer}");
    assert_eq!(presented, leaf_der(&ca));
    let (answer, _) = get_over_tls(&client(&ca, &[&rustls::version::TLS12]), port, "/health/ready").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "TLS 1.2 is accepted: {answer}");

    // Plain HTTP on the TLS port: the handshake fails, no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(b"GET /health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "plain HTTP was answered: {answer:?}");

    // A renewal writes a new certificate over the files: new handshakes get it, no restart.
    ca.issue_server("Ridehail test server, renewed");
    let renewed = leaf_der(&ca);
    let mut served = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        served = get_over_tls(&connector, port, "/health/live").await.1;
        if served == renewed {
            break;
        }
    }
    assert_eq!(served, renewed, "the renewed certificate was not picked up");
}

fn ridehail(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RIDEHAIL__ENVIRONMENT", "production")
        .env("RIDEHAIL_JWT_SECRET", "a-production-secret-of-enough-length-0123")
        .env("RIDEHAIL_HASH_KEY", "a-production-hash-key-of-enough-length-0123")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Loads the settings the way every command does, then does something harmless (writes a key):
/// `Ok` when the settings are accepted, `Err(stderr)` when refused.
fn settings_accepted(dir: &std::path::Path, env: &[(&str, &str)]) -> Result<(), String> {
    let out_file = dir.join(format!("key-{}.pem", uuid::Uuid::new_v4()));
    let out = ridehail(dir, &["keys", "generate", "--out", out_file.to_str().unwrap()], env);
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn production_refuses_plaintext_to_other_hosts_unless_told_the_network_is_trusted() {
    let dir = tempfile::TempDir::new().unwrap();
    let kafka = [("RIDEHAIL__BACKEND__BUS", "kafka"), ("RIDEHAIL__KAFKA__BROKERS", "kafka-1.internal:9092")];
    let refused = settings_accepted(dir.path(), &kafka).unwrap_err();
    assert!(
        refused.contains("plaintext connections to other hosts are refused") && refused.contains("kafka"),
        "{refused}"
    );
    let redis = [("RIDEHAIL__BACKEND__HOT_STORE", "redis"), ("RIDEHAIL__REDIS__URL", "redis://cache.internal:6379")];
    assert!(settings_accepted(dir.path(), &redis).unwrap_err().contains("redis (use a rediss:// URL)"));
    let rabbitmq =
        [("RIDEHAIL__BACKEND__BUS", "rabbitmq"), ("RIDEHAIL__RABBITMQ__URL", "amqp://u:p@rabbit.internal:5672/%2f")];
    assert!(settings_accepted(dir.path(), &rabbitmq).unwrap_err().contains("rabbitmq (use an amqps:// URL)"));
    let amqps = [rabbitmq[0], ("RIDEHAIL__RABBITMQ__URL", "amqps://u:p@rabbit.internal:5671/%2f")];
    settings_accepted(dir.path(), &amqps).unwrap();
    let mongo = [("RIDEHAIL__BACKEND__STORE", "mongodb"), ("RIDEHAIL__MONGODB__URI", "mongodb://db.internal:27017")];
    assert!(settings_accepted(dir.path(), &mongo).unwrap_err().contains("mongodb (set tls=true"));
    // On this machine, over TLS, or with plaintext explicitly allowed: accepted.
    let local = [("RIDEHAIL__BACKEND__BUS", "kafka"), ("RIDEHAIL__KAFKA__BROKERS", "127.0.0.1:9092")];
    settings_accepted(dir.path(), &local).unwrap();
    let tls =
        [("RIDEHAIL__BACKEND__STORE", "mongodb"), ("RIDEHAIL__MONGODB__URI", "mongodb://db.internal:27017/?tls=true")];
    settings_accepted(dir.path(), &tls).unwrap();
    let kafka_tls = [kafka[0], kafka[1], ("RIDEHAIL__KAFKA__TLS_CA_FILE", "/etc/ssl/kafka-ca.pem")];
    settings_accepted(dir.path(), &kafka_tls).unwrap();
    let rediss = [("RIDEHAIL__BACKEND__HOT_STORE", "redis"), ("RIDEHAIL__REDIS__URL", "rediss://cache.internal:6380")];
    settings_accepted(dir.path(), &rediss).unwrap();
    settings_accepted(dir.path(), &[kafka[0], kafka[1], ("RIDEHAIL__ALLOW_PLAINTEXT", "true")]).unwrap();
}

#[test]
fn secrets_can_come_from_files_and_a_cors_wildcard_is_refused_before_listening() {
    let dir = tempfile::TempDir::new().unwrap();
    let uri_file = dir.path().join("mongodb-uri");
    std::fs::write(&uri_file, "mongodb://db.internal:27017/?tls=true\n").unwrap();
    let from_file =
        [("RIDEHAIL__BACKEND__STORE", "mongodb"), ("RIDEHAIL__MONGODB__URI_FILE", uri_file.to_str().unwrap())];
    settings_accepted(dir.path(), &from_file).unwrap();
    std::fs::write(&uri_file, "mongodb://db.internal:27017\n").unwrap();
    assert!(
        settings_accepted(dir.path(), &from_file).unwrap_err().contains("mongodb (set tls=true"),
        "the file was read"
    );
    let both = [from_file[0], from_file[1], ("RIDEHAIL__MONGODB__URI", "mongodb://127.0.0.1")];
    assert!(settings_accepted(dir.path(), &both).unwrap_err().contains("give one"));
    let missing = [("RIDEHAIL__REDIS__URL_FILE", "/nonexistent/redis-url")];
    assert!(settings_accepted(dir.path(), &missing).unwrap_err().contains("cannot read RIDEHAIL__REDIS__URL_FILE"));
    let cors = [("RIDEHAIL__EDGE__CORS_ALLOWED_ORIGINS", "*")];
    let refused = settings_accepted(dir.path(), &cors).unwrap_err();
    assert!(refused.contains("cors_allowed_origins cannot be"), "{refused}");
    assert!(!refused.contains("panicked"), "{refused}");
}

#[test]
fn production_refuses_the_keys_development_generated() {
    let dir = tempfile::TempDir::new().unwrap();
    // Development generates its keys in the data directory...
    let dev = std::process::Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "dev", "--bind", "127.0.0.1:0"])
        .env_remove("RIDEHAIL_JWT_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut dev = support::Worker::new(dev);
    let key = dir.path().join("dev-jwt-key.pem");
    for _ in 0..100 {
        if std::fs::metadata(&key).is_ok_and(|m| m.len() > 0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    dev.kill_9();
    // ...and production given a copy of one of them refuses to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "edge", "--bind", "127.0.0.1:0"])
        .env("RIDEHAIL__ENVIRONMENT", "production")
        .env("RIDEHAIL_JWT_PRIVATE_KEY_FILE", &key)
        .env("RIDEHAIL_HASH_KEY", "a-production-hash-key-of-enough-length-0123")
        .env_remove("RIDEHAIL_JWT_SECRET")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the development key generated in the data directory"), "{stderr}");
}
