//! Dead letters on the running binary (embedded bus): a command that fails on damaged data is
//! dead-lettered and its status is `failed`; `ridehail dlq list` and `/admin/dead-letters` show it;
//! after the data is repaired, `ridehail dlq redrive` runs it again and its status becomes its real
//! outcome; a poison record is purged (with confirmation) and hidden. Admin endpoints need an admin
//! token, which no rider or driver token is.

mod support;

use std::time::{Duration, Instant};

use ridehail_ports::{MessageBus, OutgoingMessage};
use serde_json::{Value, json};
use support::{Api, JWT_SECRET_VAR, Server, TEST_JWT_SECRET, run_command};

/// A command sent without `Prefer: wait`: its `202` and body.
async fn submit(api: &Api, path: &str, token: &str, body: Value) -> (u16, Value) {
    let response = api.client.post(format!("{}{path}", api.base)).bearer_auth(token).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn lines(printed: &str) -> Vec<Value> {
    printed.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_for_state(api: &Api, token: &str, command: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api.send("GET", &format!("/v1/commands/{command}"), Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        if body["state"] == state {
            return body;
        }
        assert!(Instant::now() < deadline, "command {command} never reached {state}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Renames the event type of the ride's first event in the store (`from` → `to`): damaged data the
/// ride worker cannot decode, and its repair.
fn rename_event_type(dir: &std::path::Path, ride: &str, from: &str, to: &str) {
    let db = ridehail_sqlite::Db::open(&dir.join("events.sqlite")).unwrap();
    let changed = db
        .with(|conn| {
            Ok(conn.execute(
                "UPDATE events SET body = replace(body, ?1, ?2) WHERE aggregate_id = ?3 AND sequence = 1",
                rusqlite::params![format!("\"{from}\""), format!("\"{to}\""), ride],
            )?)
        })
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_command_is_listed_redriven_after_the_fix_and_reaches_its_outcome() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret = [(JWT_SECRET_VAR, TEST_JWT_SECRET)];
    let server = Server::start(dir.path(), &secret);
    let api = Api::new(&server.url);
    let rider = ridehail_events::UserId::new();
    let token = support::token_for(rider, ridehail_events::Role::Rider);
    let trip = json!({"pickup": {"lat": 38.72, "lon": -9.14}, "dropoff": {"lat": 38.74, "lon": -9.12}});
    let (status, requested) = submit(&api, "/v1/rides", &token, trip).await;
    assert_eq!(status, 202, "{requested}");
    let ride = requested["ride_id"].as_str().unwrap().to_owned();
    wait_for_state(&api, &token, requested["command_id"].as_str().unwrap(), "accepted").await;

    // Damaged history: the cancel cannot be decided, is retried, then dead-lettered as failed.
    rename_event_type(dir.path(), &ride, "RideRequested", "RideRequestedDamaged");
    let cancel = json!({"reason": "changed my mind"});
    let (status, cancelled) = submit(&api, &format!("/v1/rides/{ride}/cancel"), &token, cancel).await;
    assert_eq!(status, 202, "{cancelled}");
    let command = cancelled["command_id"].as_str().unwrap().to_owned();
    let failed = wait_for_state(&api, &token, &command, "failed").await;
    assert!(failed.to_string().contains("failed"), "{failed}");

    let (ok, printed) = run_command(dir.path(), &["dlq", "list", "--type", "CancelRide"], &secret);
    assert!(ok, "{printed}");
    let listed = lines(&printed);
    assert_eq!(listed.len(), 1, "{printed}");
    let letter = &listed[0];
    assert_eq!(letter["state"], "open");
    assert_eq!(letter["source_topic"], ridehail_events::topics::RIDE_COMMANDS);
    assert_eq!(letter["command_id"], command.as_str());
    assert!(!letter["reason"].as_str().unwrap().is_empty(), "{letter}");
    let id = letter["id"].as_str().unwrap().to_owned();
    let (ok, none) = run_command(dir.path(), &["dlq", "list", "--source-topic", "no.such.topic"], &secret);
    assert!(ok && none.trim().is_empty(), "filters narrow: {none}");

    // The admin endpoints: an operator's token sees it; a rider's never does.
    let (ok, issued) = run_command(dir.path(), &["admin", "token", "--name", "test-oncall"], &secret);
    assert!(ok, "{issued}");
    let admin: Value = serde_json::from_str(issued.trim()).unwrap();
    let admin = admin["token"].as_str().unwrap();
    let (status, body) = api.send("GET", "/admin/dead-letters?message_type=CancelRide", Some(admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["id"], id.as_str(), "{body}");
    let (status, one) = api.send("GET", &format!("/admin/dead-letters/{id}"), Some(admin), None).await;
    assert_eq!((status, &one["payload"]["command_id"]), (200, &json!(command)), "{one}");
    let (status, _) = api.send("GET", "/admin/dead-letters", Some(&token), None).await;
    assert_eq!(status, 403, "a rider's token is refused");
    let (status, _) = api.send("GET", "/admin/dead-letters", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = api.send("GET", "/v1/me", Some(admin), None).await;
    assert_eq!(status, 401, "an operator's token is not a user's");
    let (status, body) = api.send("POST", "/admin/dead-letters/redrive", Some(admin), Some(json!({}))).await;
    assert_eq!(status, 422, "redriving everything takes all: true: {body}");

    // Repaired, redriven: the same command runs again and reaches its real outcome.
    rename_event_type(dir.path(), &ride, "RideRequestedDamaged", "RideRequested");
    let (ok, redriven) = run_command(dir.path(), &["dlq", "redrive", &id], &secret);
    assert!(ok, "{redriven}");
    assert_eq!(lines(&redriven)[0]["redriven"], 1, "{redriven}");
    wait_for_state(&api, &token, &command, "accepted").await;
    let (status, view) = api.send("GET", &format!("/v1/rides/{ride}"), Some(&token), None).await;
    assert_eq!((status, &view["status"]), (200, &json!("cancelled")), "{view}");
    let (ok, open) = run_command(dir.path(), &["dlq", "list"], &secret);
    assert!(ok && open.trim().is_empty(), "nothing open: {open}");
    let (ok, all) = run_command(dir.path(), &["dlq", "list", "--all-states"], &secret);
    assert!(ok && lines(&all).iter().any(|l| l["id"] == id.as_str() && l["state"] == "redriven"), "{all}");
    let (ok, again) = run_command(dir.path(), &["dlq", "redrive", &id], &secret);
    assert!(ok && lines(&again)[0]["redriven"] == 0, "a redriven letter is not redriven twice: {again}");

    // Poison (bytes that are no command): listed with its reason, purged only when confirmed.
    let bus = ridehail_sqlite::open_bus(dir.path(), 4).unwrap();
    let poison = OutgoingMessage { key: ride.clone(), headers: vec![], payload: b"{not json".to_vec() };
    bus.publish(ridehail_events::topics::RIDE_COMMANDS, vec![poison]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let poisoned = loop {
        let (ok, printed) = run_command(dir.path(), &["dlq", "list", "--reason", "poison"], &secret);
        assert!(ok, "{printed}");
        if let Some(found) = lines(&printed).into_iter().next() {
            break found;
        }
        assert!(Instant::now() < deadline, "the poison record was never dead-lettered");
    };
    assert_eq!(poisoned["payload"], "{not json", "{poisoned}");
    let (ok, _) = run_command(dir.path(), &["dlq", "purge", "--reason", "poison"], &secret);
    assert!(!ok, "a purge without --yes off a terminal is refused");
    let (status, body) =
        api.send("POST", "/admin/dead-letters/purge", Some(admin), Some(json!({"reason": "poison"}))).await;
    assert_eq!(status, 422, "a purge needs confirm: {body}");
    let selection = json!({"reason": "poison", "confirm": true});
    let (status, body) = api.send("POST", "/admin/dead-letters/purge", Some(admin), Some(selection)).await;
    assert_eq!((status, &body["count"]), (200, &json!(1)), "{body}");
    let (ok, open) = run_command(dir.path(), &["dlq", "list"], &secret);
    assert!(ok && open.trim().is_empty(), "purged ones are hidden: {open}");
    drop(server);
}
