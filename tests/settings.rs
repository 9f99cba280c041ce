//! Start-up settings of the real binary: production refuses to run without an explicit secret.

use std::process::{Command, Stdio};

fn ridehail(data_dir: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ridehail"));
    command
        .args(["--data-dir", data_dir.to_str().unwrap(), "dev", "--bind", "127.0.0.1:0"])
        .env_remove("RIDEHAIL_JWT_SECRET")
        .env_remove("RIDEHAIL_JWT_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn production_without_a_jwt_secret_refuses_to_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = ridehail(dir.path(), &[("RIDEHAIL__ENVIRONMENT", "production")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("RIDEHAIL_JWT_SECRET"), "{stderr}");
    assert!(!dir.path().join("dev-jwt-secret").exists(), "no secret may be invented in production");
}

#[test]
fn a_short_secret_and_unknown_settings_are_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = ridehail(dir.path(), &[("RIDEHAIL__ENVIRONMENT", "production"), ("RIDEHAIL_JWT_SECRET", "too-short")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
    let out = ridehail(dir.path(), &[("RIDEHAIL__HTTP__BINDD", "127.0.0.1:1")]);
    assert!(!out.status.success(), "a misspelt setting must not be ignored");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bindd"));
}

#[test]
fn librdkafka_properties_from_the_settings_file_reach_the_kafka_clients() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("ridehail.toml");
    let toml = "[backend]\nbus = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n\
                [kafka.properties]\n\"security.protocol\" = \"NOT-A-PROTOCOL\"\n";
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--config", config.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap(), "topics", "apply"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("security.protocol") && stderr.contains("NOT-A-PROTOCOL"), "{stderr}");
}
