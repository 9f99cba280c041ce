//! Operator recovery on the running binary: `ridehail projections rebuild rides` while ride traffic
//! flows, killed with SIGKILL half-way and resumed. No read fails or goes backwards, the rebuilt
//! generation equals a fold of the history (`replay --verify`), nothing was published twice.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ridehail_ports::EventStore;
use serde_json::Value;
use support::load::{self, Submitted};
use support::{Api, Server, as_refs, load_test_limits, run_command};

/// Rides appended straight to the event store before the test (a history long enough for the
/// rebuild to be caught half-way); they have no view in generation 0 at all.
const BACKLOG_RIDES: usize = 2500;

/// `ridehail projections rebuild rides` with `args`, its progress lines (JSON on stderr) collected.
fn start_rebuild(dir: &std::path::Path, args: &[&str]) -> (std::process::Child, Arc<Mutex<Vec<Value>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .arg("--data-dir")
        .arg(dir)
        .args(["projections", "rebuild", "rides"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(progress) = serde_json::from_str::<Value>(&line) {
                collected.lock().unwrap().push(progress);
            }
        }
    });
    (child, lines)
}

fn status(dir: &std::path::Path) -> Value {
    let (ok, printed) = run_command(dir, &["projections", "status"], &[]);
    assert!(ok, "{printed}");
    let all: Value = serde_json::from_str(&printed).unwrap();
    all["projections"].as_array().unwrap().iter().find(|p| p["projection"] == "rides").unwrap().clone()
}

/// Reads every accepted ride again and again until `stop`: an answer other than 200 once the ride
/// was seen, or a version lower than one already read, is recorded as a failure.
async fn watch_reads(api: Arc<Api>, rides: Arc<Mutex<Vec<Submitted>>>, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let (mut reads, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<Submitted> = rides.lock().unwrap().clone();
        for ride in batch {
            let path = format!("/v1/rides/{}", ride.ride_id);
            let (status, body) = load::try_send(&api, "GET", &path, &ride.token, None).await;
            reads += 1;
            match (status, seen.get(&ride.ride_id)) {
                (200, previous) => {
                    let version = body["version"].as_u64().unwrap();
                    if previous.is_some_and(|p| version < *p) {
                        failures.push(format!("{}: version {version} after {previous:?}", ride.ride_id));
                    }
                    seen.insert(ride.ride_id.clone(), version.max(previous.copied().unwrap_or(0)));
                }
                (404, None) => {}
                (status, _) => failures.push(format!("{}: {status} {body}", ride.ride_id)),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (reads, failures)
}

/// Ride requests, two a second, each shared with the reader as soon as it is accepted.
async fn share_requests(api: Arc<Api>, known: Arc<Mutex<Vec<Submitted>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let rider = ridehail_events::UserId::new();
        let token = support::token_for(rider, ridehail_events::Role::Rider);
        let (lat, lon) = load::CENTRE;
        let trip = serde_json::json!({"pickup": {"lat": lat, "lon": lon}, "dropoff": {"lat": lat + 0.02, "lon": lon}});
        let at = Instant::now();
        let sent = api.client.post(format!("{}/v1/rides", api.base)).bearer_auth(&token).json(&trip).send().await;
        let Ok(response) = sent else { continue };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        if status == 202 {
            known.lock().unwrap().push(Submitted {
                command_id: body["command_id"].as_str().unwrap().to_owned(),
                ride_id: body["ride_id"].as_str().unwrap().to_owned(),
                token,
                at,
                took: at.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_rebuild_under_load_killed_and_resumed_loses_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    {
        let events = ridehail_sqlite::EmbeddedEventStore::open(&dir.path().join("events.sqlite")).unwrap();
        let at = chrono::Utc::now() - chrono::Duration::days(30);
        for _ in 0..BACKLOG_RIDES {
            let (ride, rider, driver) =
                (ridehail_events::RideId::new(), ridehail_events::UserId::new(), ridehail_events::UserId::new());
            events.append(0, &ridehail_contract::completed_ride_history(ride, rider, driver, at)).await.unwrap();
        }
    }
    // Views built by this code version already: the rebuild under test is the operator's, not the
    // one a worker starts by itself when the ride projection's version rises.
    {
        use ridehail_ports::projections::{Projection, ProjectionCatalogue as _, ProjectionRecord};
        let db = ridehail_sqlite::Db::open(&dir.path().join("projections.sqlite")).unwrap();
        let catalogue = ridehail_sqlite::EmbeddedCatalogue::new(db).unwrap();
        let mut current = ProjectionRecord::initial();
        current.generations[0].code_version = ride_worker::projection::VERSION;
        assert!(catalogue.store(Projection::Rides, 0, &current).await.unwrap());
    }
    let mut env = load_test_limits();
    env.push((support::JWT_SECRET_VAR.into(), support::TEST_JWT_SECRET.into()));
    let server = Server::start(dir.path(), &as_refs(&env));
    let api = Arc::new(Api::new(&server.url));

    // Steady traffic: ride requests, drivers taking them to the end, and a reader of every ride.
    let stop = Arc::new(AtomicBool::new(false));
    let (stop_driving, completed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let drivers = load::register_drivers(&api, 6).await;
    let mut driving = tokio::task::JoinSet::new();
    for driver in drivers {
        driving.spawn(load::drive(api.clone(), driver, stop_driving.clone(), completed.clone()));
    }
    let requests = tokio::spawn(load::ride_requests(api.clone(), 4, stop.clone()));
    let known = Arc::new(Mutex::new(Vec::<Submitted>::new()));
    let stop_reads = Arc::new(AtomicBool::new(false));
    // The reader follows rides known from their `202`, polled from the history as it is accepted.
    let reader = tokio::spawn(watch_reads(api.clone(), known.clone(), stop_reads.clone()));
    let feeder = tokio::spawn(share_requests(api.clone(), known.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The first rebuild, throttled so it is still running when it is killed.
    let (mut first, progress) =
        start_rebuild(dir.path(), &["--page", "200", "--max-rate", "2500", "--lease-seconds", "2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let checkpoint = loop {
        assert!(Instant::now() < deadline, "no checkpoint within a minute");
        let rides = status(dir.path());
        if let Some(position) = rides["rebuild"]["position"].as_u64().filter(|p| *p >= 2000) {
            break position;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    first.kill().unwrap(); // SIGKILL: no checkpoint, no lease release
    first.wait().unwrap();
    let interrupted = status(dir.path());
    assert!(interrupted["rebuild"]["position"].as_u64().unwrap() >= checkpoint, "{interrupted}");
    assert_eq!(interrupted["active_generation"], 0, "still served from the old generation: {interrupted}");
    assert!(interrupted["rebuild"]["lag"].as_u64().unwrap() > 0, "{interrupted}");
    assert!(!progress.lock().unwrap().is_empty(), "progress lines were written");

    // Within the dead process's lease a second rebuild is refused; after it, it resumes.
    let (ok, _) = run_command(dir.path(), &["projections", "rebuild", "rides"], &[]);
    let lease_live = interrupted["rebuild"]["lease_until"].as_str().unwrap();
    let lease_live = chrono::DateTime::parse_from_rfc3339(lease_live).unwrap() > chrono::Utc::now();
    if lease_live {
        assert!(!ok, "a rebuild ran while another's lease was live");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut second, progress) = start_rebuild(dir.path(), &["--page", "500"]);
    let mut summary = String::new();
    std::io::Read::read_to_string(second.stdout.as_mut().unwrap(), &mut summary).unwrap();
    assert!(second.wait().unwrap().success(), "the resumed rebuild finished: {summary}");
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    let first_line = progress.lock().unwrap().first().cloned().unwrap();
    assert!(first_line["position"].as_u64().unwrap() >= checkpoint, "resumed at the checkpoint: {first_line}");
    assert_eq!(summary["generation"], interrupted["rebuild"]["generation"], "{summary}");

    // Traffic goes on a little after the switch, then stops; every ride ends.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = requests.await.unwrap();
    feeder.await.unwrap();
    let mut accepted = tally.accepted.clone();
    accepted.extend(known.lock().unwrap().iter().cloned());
    assert!(accepted.len() > 20, "traffic ran: {} accepted", accepted.len());
    load::check_nothing_lost_or_doubled(&api, &accepted, Duration::from_secs(90)).await;
    stop_driving.store(true, Ordering::Relaxed);
    while driving.join_next().await.is_some() {}
    assert!(completed.load(Ordering::Relaxed) > 0, "drivers completed rides");
    stop_reads.store(true, Ordering::Relaxed);
    let (reads, failures) = reader.await.unwrap();
    assert!(reads > 100, "the reader kept reading ({reads} reads)");
    assert!(failures.is_empty(), "reads failed or went backwards: {failures:?}");

    let rides = status(dir.path());
    assert_eq!(rides["active_generation"], summary["generation"], "{rides}");
    assert!(rides["rebuild"].is_null(), "{rides}");
    let (ok, report) = run_command(dir.path(), &["replay", "--verify"], &[]);
    assert!(ok, "the new generation equals a fold of the history: {report}");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(report["rides"].as_u64().unwrap() >= BACKLOG_RIDES as u64, "{report}");

    // Nothing published twice: every event id on the ride events topic once.
    let bus = ridehail_sqlite::open_bus(dir.path(), 4).unwrap();
    let records =
        ridehail_contract::records_on(&bus, ridehail_events::topics::RIDE_EVENTS, Duration::from_millis(500)).await;
    let mut ids = HashSet::new();
    for record in &records {
        let event: Value = serde_json::from_slice(&record.payload).unwrap();
        assert!(ids.insert(event["event_id"].as_str().unwrap().to_owned()), "published twice: {event}");
    }
    let published = records.len();
    let stored =
        ridehail_sqlite::EmbeddedEventStore::open(&dir.path().join("events.sqlite")).unwrap().head().await.unwrap();
    assert!(published > 0 && (published as u64) < stored, "only live events are published ({published} of {stored})");
    drop(server);
}
