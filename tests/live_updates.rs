//! Live ride updates over Server-Sent Events on the real binary: a client receives every state of a
//! ride in order, reconnects with `Last-Event-ID` mid-ride and misses nothing; over the embedded
//! default and over Kafka with two edge processes (the reconnect lands on the other edge); another
//! rider's stream is 404; a command's outcome streams too.

mod support;

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use support::{Api, Server, as_refs, server_env};

/// One SSE event as received.
#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: String,
}

/// An open event stream.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl Stream {
    async fn open(api: &Api, path: &str, token: &str, last_event_id: Option<&str>) -> Result<Self, u16> {
        let mut request =
            api.client.get(format!("{}{path}", api.base)).bearer_auth(token).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        if !response.status().is_success() {
            return Err(response.status().as_u16());
        }
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        Ok(Self { body: response.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec())).boxed(), buffer: String::new() })
    }

    /// The next event (heartbeat comments skipped), within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { id: None, event: "message".into(), data: String::new() };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one of type `until` (included).
    async fn until(&mut self, until: &str) -> Vec<SseEvent> {
        let mut got = Vec::new();
        loop {
            let event = self.next(Duration::from_secs(20)).await;
            let event = event.unwrap_or_else(|| panic!("no {until} within 20 s; got {got:?}"));
            let done = event.event == until;
            got.push(event);
            if done {
                return got;
            }
        }
    }
}

async fn register(api: &Api, email: &str, role: &str) -> (String, String) {
    let mut body = json!({ "email": email, "password": "long-enough-password", "name": "Test", "role": role });
    if role == "driver" {
        body["vehicle"] = json!({ "make": "Toyota", "model": "Prius", "colour": "white", "plate": "AA-11-BB" });
    }
    let (status, answer) = api.send("POST", "/v1/users", None, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    api.login(email, "long-enough-password").await
}

async fn act(api: &Api, token: &str, ride: &str, action: &str, body: Option<Value>) {
    let (status, answer) = api.send("POST", &format!("/v1/rides/{ride}/{action}"), Some(token), body).await;
    assert_eq!(status, 200, "{action}: {answer}");
}

/// The whole life of a ride on `first`'s stream, the connection dropped after the assignment and
/// resumed on `second` with `Last-Event-ID`.
async fn a_ride_streams_every_state_and_resumes_without_gaps(first: &Api, second: &Api) {
    let (_, driver) = register(first, "driver-live@example.com", "driver").await;
    let (_, rider) = register(first, "rider-live@example.com", "rider").await;
    let (_, other) = register(first, "other-live@example.com", "rider").await;
    let body = json!({ "online": true, "location": { "lat": 38.7230, "lon": -9.1400 } });
    assert_eq!(first.send("PUT", "/v1/drivers/me/availability", Some(&driver), Some(body)).await.0, 200);
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    let (status, ride) = first.send("POST", "/v1/rides", Some(&rider), Some(trip)).await;
    assert_eq!(status, 201, "{ride}");
    let ride = ride["ride_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/rides/{ride}/updates");

    assert_eq!(Stream::open(first, &path, &other, None).await.err(), Some(404), "another rider's stream");

    let mut stream = Stream::open(first, &path, &rider, None).await.unwrap();
    let mut seen = stream.until("DriverOffered").await;
    act(first, &driver, &ride, "accept", None).await;
    seen.extend(stream.until("DriverAssigned").await);
    drop(stream);

    // While nobody listens, the ride moves on; the client comes back (to the other edge) with the
    // id of the last event it has.
    act(first, &driver, &ride, "arrive", None).await;
    act(first, &driver, &ride, "start", None).await;
    let last = seen.last().unwrap().id.clone().unwrap();
    let mut resumed = Stream::open(second, &path, &rider, Some(&last)).await.unwrap();
    seen.extend(resumed.until("RideStarted").await);
    act(first, &driver, &ride, "complete", Some(json!({ "distance_meters": 2300 }))).await;
    let completed = resumed.until("RideCompleted").await;
    let fare: Value = serde_json::from_str(&completed.last().unwrap().data).unwrap();
    assert!(fare["payload"]["fare"]["total_minor"].as_i64().unwrap() >= 500, "the fare travels with it: {fare}");
    seen.extend(completed);

    let types: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        types,
        ["RideRequested", "DriverOffered", "DriverAssigned", "DriverArrived", "RideStarted", "RideCompleted"]
    );
    let ids: Vec<u64> = seen.iter().map(|e| e.id.as_deref().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<u64>>(), "every event once, in order, none missed across the reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_default_a_ride_streams_every_state_and_resumes_without_gaps() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    a_ride_streams_every_state_and_resumes_without_gaps(&api, &api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_kafka_a_stream_resumes_on_another_edge_without_gaps() {
    let Some(env) = server_env() else { return };
    let dir = tempfile::TempDir::new().unwrap();
    let refs = as_refs(&env);
    support::prepare_servers(dir.path(), &refs);
    let edge_a = Server::start_service(dir.path(), "edge", &refs);
    let edge_b = Server::start_service(dir.path(), "edge", &refs);
    let _users = support::start_worker_with(dir.path(), "user-worker", &refs);
    let _rides = support::start_worker_with(dir.path(), "ride-worker", &refs);
    let (a, b) = (Api::new(&edge_a.url), Api::new(&edge_b.url));
    a_ride_streams_every_state_and_resumes_without_gaps(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_s_outcome_streams_until_it_is_final() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[]);
    let api = Api::new(&server.url);
    let (_, rider) = register(&api, "rider-outcome@example.com", "rider").await;
    let trip = json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
    // No `Prefer: wait`: a bare 202 with the command to follow.
    let response =
        api.client.post(format!("{}/v1/rides", api.base)).bearer_auth(&rider).json(&trip).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let command = accepted["command_id"].as_str().unwrap();
    let mut stream = Stream::open(&api, &format!("/v1/commands/{command}"), &rider, None).await.unwrap();
    let mut last = Value::Null;
    while let Some(event) = stream.next(Duration::from_secs(20)).await {
        assert_eq!(event.event, "status");
        last = serde_json::from_str(&event.data).unwrap();
    }
    assert_eq!(last["command_id"], command);
    assert_eq!(last["state"], "accepted", "the stream ends with the final outcome: {last}");
}
