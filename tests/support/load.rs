//! Steady ride traffic for the fault and shutdown tests: riders (minted tokens, one ride each) asking
//! for rides at a fixed rate, drivers who keep reporting where they are and drive every ride they are
//! offered, and the checks that nothing was lost or done twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Api;

pub const CENTRE: (f64, f64) = (38.7223, -9.1393);

/// A ride request the edge answered `202`.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub command_id: String,
    pub ride_id: String,
    pub token: String,
    /// When the request was sent.
    pub at: Instant,
    /// How long its `202` took.
    pub took: Duration,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub accepted: Vec<Submitted>,
    /// Answers other than `202`, by status (`0`: no answer at all).
    pub refused: HashMap<u16, usize>,
}

/// Ride requests at `rate` per second, each by a new rider, until `stop`.
pub async fn ride_requests(api: Arc<Api>, rate: u32, stop: Arc<AtomicBool>) -> Tally {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        n += 1;
        let api = api.clone();
        tasks.spawn(async move {
            let rider = ridehail_events::UserId::new();
            let token = super::token_for(rider, ridehail_events::Role::Rider);
            let offset = (n % 40) as f64 * 0.0005;
            let trip = json!({
                "pickup": { "lat": CENTRE.0 + offset, "lon": CENTRE.1 - offset },
                "dropoff": { "lat": CENTRE.0 + 0.02, "lon": CENTRE.1 + 0.01 },
            });
            let at = Instant::now();
            let sent = api
                .client
                .post(format!("{}/v1/rides", api.base))
                .bearer_auth(&token)
                .json(&trip)
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(_) => return Err(0),
            };
            let status = response.status().as_u16();
            if status != 202 {
                return Err(status);
            }
            let body: Value = response.json().await.map_err(|_| 0u16)?;
            Ok(Submitted {
                command_id: body["command_id"].as_str().unwrap_or_default().to_owned(),
                ride_id: body["ride_id"].as_str().unwrap_or_default().to_owned(),
                token,
                at,
                took: at.elapsed(),
            })
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(submitted) => tally.accepted.push(submitted),
            Err(status) => *tally.refused.entry(status).or_default() += 1,
        }
    }
    tally
}

/// A registered driver.
#[derive(Debug, Clone)]
pub struct Driver {
    pub id: String,
    pub token: String,
    pub spot: (f64, f64),
}

pub async fn register_drivers(api: &Api, count: usize) -> Vec<Driver> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut drivers = Vec::new();
    for n in 0..count {
        let email = format!("driver-{n}-{tag}@example.com");
        let body = json!({ "email": email, "password": "correct-horse-battery", "name": "Fault Test", "role": "driver",
            "vehicle": { "make": "Seat", "model": "Leon", "colour": "red", "plate": format!("FT-{n:04}") } });
        let (status, created) = api.send("POST", "/v1/users", None, Some(body)).await;
        assert_eq!(status, 201, "{created}");
        let (id, token) = api.login(&email, "correct-horse-battery").await;
        let spot = (CENTRE.0 + (n % 5) as f64 * 0.002, CENTRE.1 + (n / 5) as f64 * 0.002);
        drivers.push(Driver { id, token, spot });
    }
    drivers
}

/// A driver app: reports its position every few seconds (so a geo index lost with Redis fills
/// again), drives every ride it is offered to the end, and shrugs off errors (the faults cause
/// them). Returns the rides it completed.
pub async fn drive(api: Arc<Api>, driver: Driver, stop: Arc<AtomicBool>, completed: Arc<AtomicUsize>) {
    let mut last_ping: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if last_ping.is_none_or(|at| at.elapsed() > Duration::from_secs(3)) {
            let here = json!({ "online": true, "location": { "lat": driver.spot.0, "lon": driver.spot.1 } });
            let (status, _) = try_send(&api, "PUT", "/v1/drivers/me/availability", &driver.token, Some(here)).await;
            if status == 200 || status == 202 {
                last_ping = Some(Instant::now());
            }
        }
        let (status, page) = try_send(&api, "GET", "/v1/rides?status=requested&limit=20", &driver.token, None).await;
        let offered = (status == 200)
            .then(|| {
                page["items"].as_array().and_then(|items| {
                    items.iter().find(|r| r["offered_driver_id"].as_str() == Some(driver.id.as_str())).cloned()
                })
            })
            .flatten();
        let Some(ride) = offered else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let id = ride["ride_id"].as_str().unwrap_or_default().to_owned();
        let mut steps = vec![("accept", None), ("arrive", None), ("start", None)];
        steps.push(("complete", Some(json!({ "distance_meters": 1800 }))));
        for (step, body) in steps {
            // An offer is answered within 90 s or not at all (it expires meanwhile); a ride the driver
            // took is driven to its end however long the system is down, as a driver app does.
            let patience = if step == "accept" { Some(Duration::from_secs(90)) } else { None };
            let path = format!("/v1/rides/{id}/{step}");
            match act(&api, &driver.token, &path, body, patience, &stop).await {
                Act::Accepted => {}
                Act::Refused { status, answer } => {
                    if step != "accept" {
                        eprintln!("driver {}: {step} of ride {id} refused ({status}): {answer}", driver.id);
                    }
                    break;
                }
                Act::GaveUp { waited, last } => {
                    eprintln!("driver {}: gave {step} of ride {id} up after {waited:?}; last answer {last}", driver.id);
                    break;
                }
            }
            if step == "complete" {
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What became of a driver's command.
enum Act {
    Accepted,
    /// Rejected, failed, or answered with a status that retrying cannot change.
    Refused {
        status: u16,
        answer: Value,
    },
    /// No final answer within the patience (or the drivers were stopped).
    GaveUp {
        waited: Duration,
        last: Value,
    },
}

/// One request that never panics: the status (`0`: no answer) and the body.
pub async fn try_send(api: &Api, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = api
        .client
        .request(method, format!("{}{path}", api.base))
        .header("prefer", "wait=5")
        .bearer_auth(token)
        .timeout(Duration::from_secs(15));
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A driver's command followed to its outcome, retried while the system is unavailable, for at most
/// `patience` (`None`: until `stop`).
async fn act(
    api: &Api,
    token: &str,
    path: &str,
    body: Option<Value>,
    patience: Option<Duration>,
    stop: &AtomicBool,
) -> Act {
    let started = Instant::now();
    let waiting = || !stop.load(Ordering::Relaxed) && patience.is_none_or(|p| started.elapsed() < p);
    let mut last = Value::Null;
    while waiting() {
        let (status, answer) = try_send(api, "POST", path, token, body.clone()).await;
        match status {
            200 => return Act::Accepted,
            202 => {
                let url = answer["status_url"].as_str().unwrap_or_default().to_owned();
                while waiting() {
                    let (_, command) = try_send(api, "GET", &url, token, None).await;
                    match command["state"].as_str() {
                        Some("accepted") => return Act::Accepted,
                        Some("rejected" | "failed") => return Act::Refused { status: 202, answer: command },
                        _ => tokio::time::sleep(Duration::from_millis(300)).await,
                    }
                    last = command;
                }
            }
            // Unavailable during a fault (or over a rate): try again shortly.
            0 | 429 | 503 => {
                last = json!({ "status": status, "answer": answer });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => return Act::Refused { status, answer },
        }
    }
    Act::GaveUp { waited: started.elapsed(), last }
}

/// Every accepted request reaches one final outcome, its ride is requested once, no command's events
/// were appended twice, and every ride ends (or waits, timer armed, for a driver): panics naming what
/// does not hold, within `patience`. Returns the rides' final statuses, counted.
pub async fn check_nothing_lost_or_doubled(
    api: &Api,
    accepted: &[Submitted],
    patience: Duration,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + patience;
    let mut open: Vec<&Submitted> = accepted.iter().collect();
    let mut ends: HashMap<String, usize> = HashMap::new();
    let mut last_seen: Vec<String> = Vec::new();
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "{} rides still open after {patience:?}: {last_seen:?}", open.len());
        let mut still = Vec::new();
        last_seen.clear();
        for request in open {
            let (status, history) =
                try_send(api, "GET", &format!("/v1/rides/{}/history", request.ride_id), &request.token, None).await;
            if status != 200 {
                still.push(request);
                last_seen.push(format!("{}: history {status}", request.ride_id));
                continue;
            }
            let events = history["events"].as_array().cloned().unwrap_or_default();
            let count = |t: &str| events.iter().filter(|e| e["event_type"] == t).count();
            assert_eq!(count("RideRequested"), 1, "requested once: {history}");
            let mut batches: Vec<&str> = Vec::new();
            for event in &events {
                let cause = event["causation_id"].as_str().unwrap_or_default();
                if batches.last() != Some(&cause) {
                    assert!(!batches.contains(&cause), "a command's events were appended twice: {history}");
                    batches.push(cause);
                }
            }
            // The request's outcome is durable: its own events carry its id as their cause.
            assert!(
                events.iter().any(|e| e["causation_id"] == request.command_id.as_str()),
                "the request's events are not caused by its command: {history}"
            );
            let end = events.iter().rev().find_map(|e| match e["event_type"].as_str() {
                Some(t @ ("RideCompleted" | "RideCancelled" | "RideExpired")) => Some(t.to_owned()),
                _ => None,
            });
            match end {
                Some(end) => *ends.entry(end).or_default() += 1,
                None => {
                    last_seen.push(format!("{}: {:?}", request.ride_id, events.last().map(|e| &e["event_type"])));
                    still.push(request);
                }
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    ends
}

/// The statuses of the commands that still have one (Redis keeps them for a day; a Redis restarted
/// empty forgets them, and the history above is then the proof of the outcome): none is pending or
/// failed.
pub async fn check_statuses_are_final(api: &Api, accepted: &[Submitted]) -> usize {
    let mut known = 0;
    for request in accepted {
        let (status, body) =
            try_send(api, "GET", &format!("/v1/commands/{}", request.command_id), &request.token, None).await;
        if status == 404 {
            continue;
        }
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "accepted", "{body}");
        known += 1;
    }
    known
}
