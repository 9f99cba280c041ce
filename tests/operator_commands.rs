//! The operator commands on the real binary: `seed` (on the embedded backend and on the servers),
//! `migrate`, and `topics apply`, each safe to run twice.

mod support;

use serde_json::{Value, json};
use support::{Api, Server, as_refs, run_command, server_env};

fn seed(dir: &std::path::Path, env: &[(&str, &str)]) -> Value {
    let (ok, out) = run_command(dir, &["seed", "--drivers", "4", "--riders", "2"], env);
    assert!(ok, "seed failed: {out}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn seed_creates_demo_users_once_and_they_can_ride() {
    let dir = tempfile::TempDir::new().unwrap();
    let first = seed(dir.path(), &[]);
    assert_eq!((first["created"].as_u64(), first["drivers_put_online"].as_u64()), (Some(6), Some(4)));
    let second = seed(dir.path(), &[]);
    assert_eq!((second["created"].as_u64(), second["existing"].as_u64()), (Some(0), Some(6)), "{second}");
    assert_eq!(second["drivers_put_online"].as_u64(), Some(0));

    let server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    let password = first["password"].as_str().unwrap();
    let (_, rider_token) = api.login("rider000@seed.ridehail.dev", password).await;
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (status, ride) = api.send("POST", "/v1/rides", Some(&rider_token), Some(trip)).await;
    assert_eq!(status, 201, "{ride}");
    assert!(ride["offered_driver_id"].is_string(), "a seeded driver is online near the centre: {ride}");
}

#[test]
fn seed_is_refused_in_production() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret = ("RIDEHAIL_JWT_SECRET", "0123456789abcdef0123456789abcdef-long-enough");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("seed")
        .envs([("RIDEHAIL__ENVIRONMENT", "production"), secret])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("development only"), "refused for another reason: {stderr}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing was created before refusing");
}

#[tokio::test]
async fn topics_migrations_and_seeds_on_the_servers_are_safe_to_repeat() {
    let Some(env) = server_env() else { return };
    let env = as_refs(&env);
    let dir = tempfile::TempDir::new().unwrap();

    let status = |env: &[(&str, &str)]| run_command(dir.path(), &["migrate", "status"], env).1;
    let migrations = status(&env);
    assert!(!migrations.is_empty() && migrations.lines().all(|line| line.ends_with("pending")), "{migrations}");

    // A service refuses to start without its topics. In development it migrates at start-up first.
    let (ok, _) = run_command(dir.path(), &["user-worker"], &env);
    assert!(!ok, "a worker started without its topics");
    let migrations = status(&env);
    assert!(migrations.lines().all(|line| line.contains("applied")), "{migrations}");

    for expected in ["created", "exists"] {
        let (ok, out) = run_command(dir.path(), &["topics", "apply"], &env);
        assert!(ok, "{out}");
        assert_eq!(out.lines().count(), ridehail_events::topics::ALL.len(), "{out}");
        assert!(out.lines().all(|line| line.ends_with(expected)), "{out}");
    }

    let (ok, out) = run_command(dir.path(), &["migrate", "up"], &env);
    assert!(ok && out.trim() == "up to date", "{out}");
    let (ok, out) = run_command(dir.path(), &["migrate", "down", "--steps", "1"], &env);
    assert!(ok && out.starts_with("reverted"), "{out}");
    let after_down = status(&env);
    assert_eq!(after_down.lines().filter(|line| line.ends_with("pending")).count(), 1, "{after_down}");
    // Production does not migrate at start-up: a service refuses to run on a pending migration.
    let mut production = env.clone();
    production.extend([
        ("RIDEHAIL__ENVIRONMENT", "production"),
        ("RIDEHAIL_JWT_SECRET", "0123456789abcdef0123456789abcdef-long-enough"),
    ]);
    let (ok, _) = run_command(dir.path(), &["user-worker"], &production);
    assert!(!ok, "production started on a pending migration");
    assert_eq!(status(&env).lines().filter(|line| line.ends_with("pending")).count(), 1);
    let (ok, out) = run_command(dir.path(), &["migrate", "up"], &env);
    assert!(ok && out.starts_with("applied"), "{out}");

    let first = seed(dir.path(), &env);
    assert_eq!(first["created"].as_u64(), Some(6), "{first}");
    let second = seed(dir.path(), &env);
    assert_eq!((second["created"].as_u64(), second["existing"].as_u64()), (Some(0), Some(6)), "{second}");
}
