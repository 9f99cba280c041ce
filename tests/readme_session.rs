//! The README's curl session against the real binary, then `kill -9`, a restart on the same data
//! directory, and a check that every user, ride and history survived.

mod support;

use serde_json::{Value, json};
use support::{Api, DRIVER_EMAIL, DRIVER_PASSWORD, RIDER_EMAIL, RIDER_PASSWORD, Server, event_types, readme_session};

/// What the rider can read after the session: the ride, its history and their own profile.
async fn rider_view(api: &Api, rider_token: &str, ride_id: &str) -> (Value, Value, Value) {
    let (_, ride) = api.send("GET", &format!("/v1/rides/{ride_id}"), Some(rider_token), None).await;
    let (_, history) = api.send("GET", &format!("/v1/rides/{ride_id}/history"), Some(rider_token), None).await;
    let (_, me) = api.send("GET", "/v1/me", Some(rider_token), None).await;
    (ride, history, me)
}

#[tokio::test]
async fn the_readme_session_survives_kill_9_and_restart() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    let ride_id = readme_session(&api).await;
    let (_, rider_token) = api.login(RIDER_EMAIL, RIDER_PASSWORD).await;
    let before = rider_view(&api, &rider_token, &ride_id).await;

    server.kill_9();
    let server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);

    // Tokens issued before the restart are still valid (the development secret is kept on disk).
    assert_eq!(rider_view(&api, &rider_token, &ride_id).await, before);
    let (_, driver_token) = api.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let (_, driver_rides) = api.send("GET", "/v1/rides", Some(&driver_token), None).await;
    assert_eq!(driver_rides["items"][0]["ride_id"], ride_id.as_str());
    // And the restarted system keeps working.
    let (status, me) = api.send("GET", "/v1/me", Some(&driver_token), None).await;
    assert_eq!((status, me["online"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn sigterm_stops_the_process_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    let (status, _) = api.send("GET", "/health/ready", None, None).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let exit = server.terminate();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn an_offer_timeout_fires_after_a_restart() {
    let dir = tempfile::TempDir::new().unwrap();
    // Short offers, and a single search radius so that the ride expires once its only driver is gone.
    let env = [
        ("RIDEHAIL__RIDE_WORKER__MATCHING__OFFER_TIMEOUT_S", "2"),
        ("RIDEHAIL__RIDE_WORKER__MATCHING__MAX_RADIUS_M", "2000"),
    ];
    let mut server = Server::start(dir.path(), &env);
    let api = Api::new(&server.url);
    let driver = json!({
        "email": "tom@example.com", "password": "tom-is-never-on-time", "name": "Tom", "role": "driver",
        "vehicle": { "make": "Fiat", "model": "Panda", "colour": "blue", "plate": "TT-00-TT" }
    });
    assert_eq!(api.send("POST", "/v1/users", None, Some(driver)).await.0, 201);
    let rider =
        json!({ "email": "ana@example.com", "password": "ana-waits-patiently", "name": "Ana", "role": "rider" });
    assert_eq!(api.send("POST", "/v1/users", None, Some(rider)).await.0, 201);
    let (_, driver_token) = api.login("tom@example.com", "tom-is-never-on-time").await;
    let (_, rider_token) = api.login("ana@example.com", "ana-waits-patiently").await;
    let online = json!({ "online": true, "location": { "lat": 38.7230, "lon": -9.1400 } });
    assert_eq!(api.send("PUT", "/v1/drivers/me/availability", Some(&driver_token), Some(online)).await.0, 200);
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (_, ride) = api.send("POST", "/v1/rides", Some(&rider_token), Some(trip)).await;
    let ride_id = ride["ride_id"].as_str().unwrap().to_owned();
    assert!(ride["offered_driver_id"].is_string(), "{ride}");

    // Down while the offer runs out.
    server.kill_9();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let server = Server::start(dir.path(), &env);
    let api = Api::new(&server.url);

    let mut ride = Value::Null;
    for _ in 0..100 {
        ride = api.send("GET", &format!("/v1/rides/{ride_id}"), Some(&rider_token), None).await.1;
        if ride["status"] == "expired" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ride["status"], "expired", "{ride}");
    let (_, history) = api.send("GET", &format!("/v1/rides/{ride_id}/history"), Some(&rider_token), None).await;
    assert_eq!(event_types(&history), ["RideRequested", "DriverOffered", "OfferExpired", "RideExpired"]);
}

#[tokio::test]
async fn replay_rebuilds_deleted_read_models_from_the_event_history() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    let ride_id = readme_session(&api).await;
    let (_, rider_token) = api.login(RIDER_EMAIL, RIDER_PASSWORD).await;
    let before = rider_view(&api, &rider_token, &ride_id).await;
    assert!(server.terminate().success());

    for file in ["rides", "users", "drivers"] {
        for suffix in ["sqlite", "sqlite-wal", "sqlite-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("{file}.{suffix}")));
        }
    }
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "replay"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(replay.success());

    let server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    // Credentials were rebuilt too: logging in works.
    let (_, rider_token) = api.login(RIDER_EMAIL, RIDER_PASSWORD).await;
    assert_eq!(rider_view(&api, &rider_token, &ride_id).await, before);
    // The driver is back online where they were, and free: a new request is offered to them.
    let (driver_id, _) = api.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (status, ride) = api.send("POST", "/v1/rides", Some(&rider_token), Some(trip)).await;
    assert_eq!(status, 201, "{ride}");
    assert_eq!(ride["offered_driver_id"], driver_id.as_str());
}

#[tokio::test]
async fn the_services_also_run_as_separate_processes_on_one_data_directory() {
    let dir = tempfile::TempDir::new().unwrap();
    // The edge first: it creates the data directory's files and the development secret.
    let edge = Server::start_service(dir.path(), "edge", &[]);
    let _workers = [support::start_worker(dir.path(), "user-worker"), support::start_worker(dir.path(), "ride-worker")];
    let api = Api::new(&edge.url);
    readme_session(&api).await;
}
