//! Ridehail as it runs in production: the edge, the user worker and two ride workers as separate OS
//! processes talking over a real broker, once over Kafka (tansu) and once over RabbitMQ. The README session, then 1,000 concurrent ride
//! requests against online drivers who accept and drive, with one ride worker killed (`kill -9`)
//! halfway. Then the invariants: every accepted command has exactly one outcome, no command's effects
//! were applied twice, no driver ever had two rides at once, and every read model equals a replay of
//! its events.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, Server, as_refs, readme_session, run_command, server_env, start_worker_with};

const DRIVERS: usize = 60;
const RIDERS: usize = RIDES;
const RIDES: usize = 1_000;
const CENTRE: (f64, f64) = (38.7223, -9.1393);

struct Party {
    id: String,
    token: String,
}

async fn register(api: &Api, tag: &str, role: &str, n: usize) -> Party {
    let email = format!("{role}-{n}-{tag}@example.com");
    let mut body = json!({ "email": email, "password": "correct-horse-battery", "name": "Load Test", "role": role });
    if role == "driver" {
        body["vehicle"] = json!({ "make": "Seat", "model": "Leon", "colour": "red", "plate": format!("LT-{n:04}") });
    }
    let (status, created) = api.send("POST", "/v1/users", None, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let (id, token) = api.login(&email, "correct-horse-battery").await;
    Party { id, token }
}

/// Sends a driver's command and follows it to its outcome: true when accepted. A `Prefer: wait` that
/// runs out (e.g. while the partition moves to the surviving worker) answers 202: then poll the status.
async fn act(api: &Api, token: &str, path: &str, body: Option<Value>) -> bool {
    let (status, answer) = api.send("POST", path, Some(token), body).await;
    match status {
        200 => true,
        202 => {
            let status_url = answer["status_url"].as_str().unwrap().to_owned();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, command) = api.send("GET", &status_url, Some(token), None).await;
                match command["state"].as_str().unwrap() {
                    "accepted" => return true,
                    "rejected" => return false,
                    _ => {
                        assert!(Instant::now() < deadline, "{path}: no outcome in 60 s");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        _ => false,
    }
}

/// A driver who accepts every offer and drives the ride to the end, until `stop`.
async fn drive(api: Arc<Api>, driver: Party, stop: Arc<AtomicBool>) -> usize {
    let mut driven = 0;
    while !stop.load(Ordering::Relaxed) {
        let (status, page) = api.send("GET", "/v1/rides?status=requested&limit=20", Some(&driver.token), None).await;
        assert_eq!(status, 200, "{page}");
        let offered = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "requested" && r["offered_driver_id"].as_str() == Some(driver.id.as_str()));
        let Some(ride) = offered else {
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        };
        let id = ride["ride_id"].as_str().unwrap().to_owned();
        if !act(&api, &driver.token, &format!("/v1/rides/{id}/accept"), None).await {
            continue; // The offer lapsed or the rider cancelled: both fine.
        }
        for step in ["arrive", "start"] {
            assert!(act(&api, &driver.token, &format!("/v1/rides/{id}/{step}"), None).await, "{step} refused");
        }
        let done = json!({ "distance_meters": 1800 });
        assert!(act(&api, &driver.token, &format!("/v1/rides/{id}/complete"), Some(done)).await, "complete refused");
        driven += 1;
    }
    driven
}

/// Submits a ride request without waiting for its outcome: 202 + the command id.
async fn request_ride(api: &Api, rider: &Party, n: usize) -> (String, String) {
    let offset = (n % 40) as f64 * 0.0005;
    let trip = json!({
        "pickup": { "lat": CENTRE.0 + offset, "lon": CENTRE.1 - offset },
        "dropoff": { "lat": CENTRE.0 + 0.02, "lon": CENTRE.1 + 0.01 },
    });
    let response =
        api.client.post(format!("{}/v1/rides", api.base)).bearer_auth(&rider.token).json(&trip).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    (body["command_id"].as_str().unwrap().to_owned(), body["ride_id"].as_str().unwrap().to_owned())
}

/// Reads each `(rider, path)` as that rider every half second until `settled` holds for all of them
/// (every answer must be 200); fails after 120 s naming what is still unsettled.
async fn wait_until_all(
    api: &Api,
    riders: &[Party],
    mut waiting: Vec<(usize, String)>,
    what: &str,
    settled: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut unsettled: Vec<Value> = Vec::new();
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{what} after 120 s: {} {unsettled:?}", waiting.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answers = futures::future::join_all(
            waiting.iter().map(|(rider, path)| api.send("GET", path, Some(&riders[*rider].token), None)),
        )
        .await;
        unsettled.clear();
        let mut still = Vec::new();
        for (entry, (status, body)) in waiting.into_iter().zip(answers) {
            assert_eq!(status, 200, "{body}");
            if !settled(&body) {
                still.push(entry);
                unsettled.push(body);
            }
        }
        waiting = still;
    }
}

fn time_of(event: &Value) -> chrono::DateTime<chrono::Utc> {
    event["occurred_at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_over_kafka_lose_nothing_when_a_ride_worker_is_killed() {
    let Some(env) = server_env() else { return };
    lose_nothing_when_a_ride_worker_is_killed(env, "kafka").await;
}

/// The same over RabbitMQ: the killed worker's partitions go to the standby member of each lease
/// queue, which resumes from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_over_rabbitmq_lose_nothing_when_a_ride_worker_is_killed() {
    let Some(env) = support::rabbitmq_server_env() else { return };
    lose_nothing_when_a_ride_worker_is_killed(env, "rabbitmq").await;
}

async fn lose_nothing_when_a_ride_worker_is_killed(mut env: Vec<(String, String)>, bus: &str) {
    env.push(("RIDEHAIL__EDGE__MAX_IN_FLIGHT".into(), "4096".into()));
    let env = as_refs(&env);
    let dir = tempfile::TempDir::new().unwrap();
    support::prepare_servers(dir.path(), &env);

    let edge = Server::start_service(dir.path(), "edge", &env);
    let _user_worker = start_worker_with(dir.path(), "user-worker", &env);
    let _ride_worker_a = start_worker_with(dir.path(), "ride-worker", &env);
    let mut ride_worker_b = start_worker_with(dir.path(), "ride-worker", &env);
    let api = Arc::new(Api::new(&edge.url));
    let readme_ride = readme_session(&api).await;

    let tag = uuid::Uuid::new_v4().simple().to_string();
    let drivers = futures::future::join_all((0..DRIVERS).map(|n| register(&api, &tag, "driver", n))).await;
    // One ride under way per rider: a rider per request, with tokens minted here (no sign-ups).
    let riders: Vec<Party> = (0..RIDERS)
        .map(|_| {
            let id = ridehail_events::UserId::new();
            Party { id: id.to_string(), token: support::token_for(id, ridehail_events::Role::Rider) }
        })
        .collect();
    for (n, driver) in drivers.iter().enumerate() {
        let spot = json!({ "online": true, "location": {
            "lat": CENTRE.0 + (n % 10) as f64 * 0.002, "lon": CENTRE.1 + (n / 10) as f64 * 0.002 } });
        let (status, body) = api.send("PUT", "/v1/drivers/me/availability", Some(&driver.token), Some(spot)).await;
        assert_eq!(status, 200, "{body}");
    }
    let driver_ids: Vec<String> = drivers.iter().map(|d| d.id.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let driving: Vec<_> = drivers.into_iter().map(|d| tokio::spawn(drive(api.clone(), d, stop.clone()))).collect();

    // 1,000 concurrent requests; one ride worker dies after the first half.
    let half = |range: std::ops::Range<usize>| {
        futures::future::join_all(range.map(|n| {
            let (api, rider) = (api.clone(), &riders[n % RIDERS]);
            async move { (n % RIDERS, request_ride(&api, rider, n).await) }
        }))
    };
    let mut submitted = half(0..RIDES / 2).await;
    ride_worker_b.kill_9();
    submitted.extend(half(RIDES / 2..RIDES).await);

    // Every accepted command gets its outcome, also those the dead worker had taken.
    let commands = submitted.iter().map(|(rider, (command, _))| (*rider, format!("/v1/commands/{command}"))).collect();
    wait_until_all(&api, &riders, commands, "commands still pending", |body| {
        assert_ne!(body["state"], "rejected", "a ride request was rejected: {body}");
        body["state"] != "pending"
    })
    .await;

    // Every ride ends: driven to completion, or expired when no driver was free in time.
    let rides: Vec<(usize, String)> = submitted.iter().map(|(rider, (_, ride))| (*rider, ride.clone())).collect();
    let views = rides.iter().map(|(rider, ride)| (*rider, format!("/v1/rides/{ride}"))).collect();
    wait_until_all(&api, &riders, views, "rides still open", |view| {
        ["completed", "expired", "cancelled"].contains(&view["status"].as_str().unwrap())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let driven: usize = futures::future::join_all(driving).await.into_iter().map(Result::unwrap).sum();

    // The histories: one request per ride, each command's events appended once, and per driver
    // assignments that never overlap.
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut assignments: HashMap<String, Vec<Span>> = HashMap::new();
    let mut completed = 0;
    for (rider, ride) in &rides {
        let (status, history) =
            api.send("GET", &format!("/v1/rides/{ride}/history"), Some(&riders[*rider].token), None).await;
        assert_eq!(status, 200);
        let events = history["events"].as_array().unwrap();
        let count = |t: &str| events.iter().filter(|e| e["event_type"] == t).count();
        assert_eq!(count("RideRequested"), 1, "{history}");
        assert!(count("DriverAssigned") <= 1, "{history}");
        let mut batches: Vec<&str> = Vec::new();
        for event in events {
            let cause = event["causation_id"].as_str().unwrap();
            if batches.last() != Some(&cause) {
                assert!(!batches.contains(&cause), "a command's events were appended twice: {history}");
                batches.push(cause);
            }
        }
        if let Some(assigned) = events.iter().find(|e| e["event_type"] == "DriverAssigned") {
            let end = events
                .iter()
                .find(|e| e["event_type"] == "RideCompleted" || e["event_type"] == "RideCancelled")
                .expect("an assigned ride ends completed or cancelled");
            let driver = assigned["payload"]["driver_id"].as_str().unwrap().to_owned();
            assert!(driver_ids.contains(&driver));
            assignments.entry(driver).or_default().push((time_of(assigned), time_of(end)));
        }
        completed += usize::from(count("RideCompleted") == 1);
    }
    for (driver, mut spans) in assignments {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "driver {driver} had two rides at once: {pair:?}");
        }
    }
    assert_eq!(completed, driven, "every ride a driver completed is completed in the history");
    assert!(completed > 0, "drivers completed rides");
    eprintln!(
        "services over {bus}: {RIDES} requests, {completed} completed, the rest expired; readme ride {readme_ride}"
    );

    // The read models equal a replay of the history.
    let (ok, report) = run_command(dir.path(), &["replay", "--verify"], &env);
    assert!(ok, "replay --verify found differences: {report}");
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    assert!(report["rides"].as_u64().unwrap() > RIDES as u64, "{report}");
    // The riders hold minted tokens and never signed up: the users are the drivers (and the README's).
    assert!(report["users"].as_u64().unwrap() >= DRIVERS as u64, "{report}");
}
