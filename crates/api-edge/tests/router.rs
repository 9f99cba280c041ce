//! The edge through its router (`oneshot`), on a fresh embedded backend per test. Validation tests run
//! without workers and check that nothing was published; flow tests run both workers.

use std::sync::Arc;
use std::time::Duration;

use api_edge::auth::{JwtKeys, KeyMaterial};
use api_edge::{AppState, EdgeConfig, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use ridehail_events::topics;
use ridehail_ports::StartFrom;
use ridehail_ports::{Backend, SystemClock};
use secrecy::SecretString;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "router-test-secret-router-test-secret";

struct TestApp {
    router: Router,
    backend: Backend,
    keys: JwtKeys,
    shutdown: CancellationToken,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn keys() -> JwtKeys {
    let material = KeyMaterial { secret: Some(SecretString::from(SECRET.to_owned())), ..KeyMaterial::default() };
    JwtKeys::new(&material, EdgeConfig::default().token_policy()).unwrap()
}

fn spawn_app(with_workers: bool) -> TestApp {
    spawn_app_with(with_workers, EdgeConfig::default())
}

fn spawn_app_with(with_workers: bool, config: EdgeConfig) -> TestApp {
    let dir = TempDir::new().unwrap();
    let backend = ridehail_sqlite::open(dir.path(), 2, Arc::new(SystemClock)).unwrap();
    let shutdown = CancellationToken::new();
    if with_workers {
        tokio::spawn(ride_worker::run(backend.clone(), Default::default(), shutdown.clone()));
        tokio::spawn(user_worker::run(backend.clone(), Default::default(), shutdown.clone()));
    }
    let hash_key = SecretString::from("router-test-hash-key-router-test-hash-key".to_owned());
    let state = AppState::new(backend.clone(), keys(), config, hash_key);
    TestApp { router: router(state), backend, keys: keys(), shutdown, _dir: dir }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

impl TestApp {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        let req = req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty)).unwrap();
        use tower::ServiceExt as _;
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text }
    }

    /// Records on a topic so far.
    async fn published(&self, topic: &str) -> usize {
        let group = uuid::Uuid::new_v4().to_string();
        let mut sub = self.backend.bus.subscribe(&group, &[topic], StartFrom::Earliest).await.unwrap();
        let mut n = 0;
        loop {
            let batch = sub.poll(1000, Duration::from_millis(20)).await.unwrap();
            if batch.is_empty() {
                return n;
            }
            n += batch.len();
        }
    }

    async fn wait_until_published(&self, topic: &str, count: usize) {
        for _ in 0..500 {
            if self.published(topic).await >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{count} record(s) never reached {topic}");
    }

    async fn register(&self, email: &str, role: &str) -> (String, String) {
        let mut body = json!({ "email": email, "password": "a-good-long-password", "name": "Test User", "role": role });
        if role == "driver" {
            body["vehicle"] = json!({ "make": "Seat", "model": "Leon", "colour": "red", "plate": "12-AB-34" });
        }
        let reply = self.call("POST", "/v1/users", None, Some(&body.to_string()), &[("prefer", "wait=10")]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let login = json!({ "email": email, "password": "a-good-long-password" }).to_string();
        let session = self.call("POST", "/v1/sessions", None, Some(&login), &[]).await;
        assert_eq!(session.status, StatusCode::OK, "{}", session.text);
        (
            session.body["user_id"].as_str().unwrap().to_owned(),
            session.body["access_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn driver_online(&self, token: &str, lat: f64, lon: f64) {
        let body = json!({ "online": true, "location": { "lat": lat, "lon": lon } }).to_string();
        let reply =
            self.call("PUT", "/v1/drivers/me/availability", Some(token), Some(&body), &[("prefer", "wait=10")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }

    async fn request_ride(&self, token: &str, extra: &[(&str, &str)]) -> Reply {
        let body =
            json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
        self.call("POST", "/v1/rides", Some(token), Some(&body.to_string()), extra).await
    }

    fn token_for(&self, role: ridehail_events::Role) -> String {
        self.keys.issue(ridehail_events::UserId::new(), role, chrono::Utc::now()).unwrap().0
    }
}

fn assert_problem(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(reply.body["title"].is_string());
}

fn rider_token(app: &TestApp) -> String {
    app.token_for(ridehail_events::Role::Rider)
}

// ------------------------------------------------------------------ bad input never publishes

#[tokio::test]
async fn malformed_json_is_a_400_problem_and_publishes_nothing() {
    let app = spawn_app(false);
    let reply = app.call("POST", "/v1/rides", Some(&rider_token(&app)), Some("{\"pickup\": "), &[]).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 0);
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_422_naming_the_field() {
    let app = spawn_app(false);
    let token = rider_token(&app);
    let unknown = r#"{"pickup":{"lat":1,"lon":1},"dropoff":{"lat":1.1,"lon":1},"tip":5}"#;
    let reply = app.call("POST", "/v1/rides", Some(&token), Some(unknown), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body["detail"].as_str().unwrap().contains("tip"), "{}", reply.text);
    let wrong = r#"{"pickup":{"lat":"north","lon":1},"dropoff":{"lat":1.1,"lon":1}}"#;
    let reply = app.call("POST", "/v1/rides", Some(&token), Some(wrong), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["field"], "pickup.lat", "{}", reply.text);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 0);
}

#[tokio::test]
async fn out_of_range_coordinates_are_refused_before_publishing() {
    let app = spawn_app(false);
    let body = r#"{"pickup":{"lat":95.0,"lon":1},"dropoff":{"lat":1.1,"lon":1}}"#;
    let reply = app.call("POST", "/v1/rides", Some(&rider_token(&app)), Some(body), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["field"], "pickup");
    let driver = app.token_for(ridehail_events::Role::Driver);
    let reply = app.call("PUT", "/v1/drivers/me/location", Some(&driver), Some(r#"{"lat":0,"lon":181}"#), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await + app.published(topics::USER_COMMANDS).await, 0);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app(false);
    let huge = format!(r#"{{"email":"a@b.co","password":"{}","name":"x","role":"rider"}}"#, "p".repeat(64 * 1024));
    let reply = app.call("POST", "/v1/users", None, Some(&huge), &[]).await;
    assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.published(topics::USER_COMMANDS).await, 0);
}

#[tokio::test]
async fn bad_ids_in_paths_are_4xx_naming_the_parameter() {
    let app = spawn_app(false);
    let reply = app.call("GET", "/v1/rides/not-a-uuid", Some(&rider_token(&app)), None, &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["field"], "ride_id");
    let reply = app.call("GET", "/v1/commands/42", Some(&rider_token(&app)), None, &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn missing_expired_and_tampered_tokens_are_401() {
    let app = spawn_app(false);
    let reply = app.call("GET", "/v1/me", None, None, &[]).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    let expired = app
        .keys
        .issue(
            ridehail_events::UserId::new(),
            ridehail_events::Role::Rider,
            chrono::Utc::now() - chrono::Duration::hours(2),
        )
        .unwrap()
        .0;
    let reply = app.call("GET", "/v1/me", Some(&expired), None, &[]).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED);
    assert!(reply.body["detail"].as_str().unwrap().contains("expired"));
    let mut tampered = rider_token(&app);
    tampered.insert(tampered.len() / 2, 'x');
    let reply = app.call("POST", "/v1/rides", Some(&tampered), Some("{}"), &[]).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 0);
}

#[tokio::test]
async fn roles_are_enforced_with_403() {
    let app = spawn_app(false);
    let rider = rider_token(&app);
    let reply = app.call("PUT", "/v1/drivers/me/location", Some(&rider), Some(r#"{"lat":1,"lon":1}"#), &[]).await;
    assert_problem(&reply, StatusCode::FORBIDDEN);
    let ride = uuid::Uuid::now_v7();
    let reply = app.call("POST", &format!("/v1/rides/{ride}/accept"), Some(&rider), None, &[]).await;
    assert_problem(&reply, StatusCode::FORBIDDEN);
    let driver = app.token_for(ridehail_events::Role::Driver);
    let reply = app.request_ride(&driver, &[]).await;
    assert_problem(&reply, StatusCode::FORBIDDEN);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await + app.published(topics::USER_COMMANDS).await, 0);
}

#[tokio::test]
async fn registration_validates_each_field() {
    let app = spawn_app(false);
    let body = r#"{"email":"not-an-email","password":"short","name":"","role":"driver"}"#;
    let reply = app.call("POST", "/v1/users", None, Some(body), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> =
        reply.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["email", "password", "name", "vehicle"]);
    let reply = app
        .call("POST", "/v1/users", None, Some(r#"{"email":"a@b.co","password":"x","name":"n","role":"admin"}"#), &[])
        .await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.published(topics::USER_COMMANDS).await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app(false);
    assert_problem(&app.call("GET", "/v2/nothing", None, None, &[]).await, StatusCode::NOT_FOUND);
    assert_problem(&app.call("DELETE", "/v1/rides", None, None, &[]).await, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = spawn_app(false);
    let live = app.call("GET", "/health/live", None, None, &[]).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = app.call("GET", "/health/ready", None, None, &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.body["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{}", ready.text);
    // Publicly only up or down per dependency: details (hosts, errors) go to the logs.
    let keys = |c: &Value| c.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(ready.body["checks"].as_array().unwrap().iter().all(|c| keys(c) == ["name", "ok"]), "{}", ready.text);
}

// ------------------------------------------------------------------ flows with workers

#[tokio::test]
async fn a_command_answers_202_with_ids_to_follow_and_keeps_a_valid_client_correlation_id() {
    let app = spawn_app(true);
    let correlation = uuid::Uuid::now_v7().to_string();
    let body =
        json!({ "email": "kim@example.com", "password": "a-good-long-password", "name": "Kim", "role": "rider" });
    let reply =
        app.call("POST", "/v1/users", None, Some(&body.to_string()), &[("x-correlation-id", &correlation)]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.headers["x-correlation-id"], correlation.as_str());
    assert_eq!(reply.body["correlation_id"], correlation.as_str());
    let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/commands/{}", reply.body["command_id"].as_str().unwrap()));
    // Follow it until the worker answered.
    let mut status = Value::Null;
    for _ in 0..500 {
        status = app.call("GET", &location, None, None, &[]).await.body;
        if status["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status["state"], "accepted", "{status}");
    assert_eq!(status["correlation_id"], correlation.as_str());
    // An invalid client correlation id is replaced, not echoed.
    let reply = app.call("GET", "/health/live", None, None, &[("x-correlation-id", "<script>")]).await;
    assert_ne!(reply.headers["x-correlation-id"], "<script>");
}

#[tokio::test]
async fn no_response_ever_carries_a_password_or_its_hash() {
    let app = spawn_app(true);
    let body =
        json!({ "email": "Lee@Example.com", "password": "a-good-long-password", "name": "Lee", "role": "rider" });
    let created = app.call("POST", "/v1/users", None, Some(&body.to_string()), &[("prefer", "wait=10")]).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let login = json!({ "email": "lee@example.COM", "password": "a-good-long-password" }).to_string();
    let session = app.call("POST", "/v1/sessions", None, Some(&login), &[]).await;
    assert_eq!(session.status, StatusCode::OK, "login is case-insensitive on the e-mail");
    let token = session.body["access_token"].as_str().unwrap().to_owned();
    let me = app.call("GET", "/v1/me", Some(&token), None, &[]).await;
    assert_eq!(me.body["name"], "Lee");
    for reply in [&created, &session, &me] {
        assert!(!reply.text.contains("a-good-long-password"), "{}", reply.text);
        assert!(!reply.text.contains("argon2"), "{}", reply.text);
        assert!(!reply.text.to_lowercase().contains("password"), "{}", reply.text);
    }
    let wrong = json!({ "email": "lee@example.com", "password": "not-the-password" }).to_string();
    assert_problem(&app.call("POST", "/v1/sessions", None, Some(&wrong), &[]).await, StatusCode::UNAUTHORIZED);
    let unknown = json!({ "email": "nobody@example.com", "password": "not-the-password" }).to_string();
    assert_problem(&app.call("POST", "/v1/sessions", None, Some(&unknown), &[]).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_email_registers_once_whatever_its_case() {
    let app = spawn_app(true);
    app.register("sam@example.com", "rider").await;
    let body =
        json!({ "email": "SAM@example.com", "password": "another-long-password", "name": "Sam 2", "role": "rider" });
    let reply = app.call("POST", "/v1/users", None, Some(&body.to_string()), &[("prefer", "wait=10")]).await;
    assert_problem(&reply, StatusCode::CONFLICT);
    assert_eq!(reply.body["code"], "email_taken");
}

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_creates_nothing_new() {
    let app = spawn_app(true);
    let (_, rider) = app.register("ida@example.com", "rider").await;
    let key = [("idempotency-key", "ride-123")];
    let first = app.request_ride(&rider, &key).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let second = app.request_ride(&rider, &key).await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(second.body, first.body, "the same response is replayed");
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 1);
    // Same key, different body: refused.
    let other =
        json!({ "pickup": { "lat": 38.70, "lon": -9.14 }, "dropoff": { "lat": 38.74, "lon": -9.14 } }).to_string();
    let reply = app.call("POST", "/v1/rides", Some(&rider), Some(&other), &key).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 1);
}

#[tokio::test]
async fn prefer_wait_returns_the_outcome_and_rejections_map_to_409() {
    let app = spawn_app(true);
    let (_, rider) = app.register("pia@example.com", "rider").await;
    let (driver_id, driver) = app.register("dan@example.com", "driver").await;
    app.driver_online(&driver, 38.7230, -9.1400).await;
    let ride = app.request_ride(&rider, &[("prefer", "wait=10")]).await;
    assert_eq!(ride.status, StatusCode::CREATED, "{}", ride.text);
    assert_eq!(ride.headers["preference-applied"], "wait=10");
    assert_eq!(ride.body["status"], "requested");
    assert_eq!(ride.body["offered_driver_id"], driver_id.as_str());
    assert!(ride.body["fare_estimate"]["total_minor"].as_i64().unwrap() >= 500);
    let id = ride.body["ride_id"].as_str().unwrap();
    // Starting before arriving is refused by the domain: 409 with its code.
    let accept =
        app.call("POST", &format!("/v1/rides/{id}/accept"), Some(&driver), None, &[("prefer", "wait=10")]).await;
    assert_eq!(accept.body["status"], "driver_assigned", "{}", accept.text);
    let start = app.call("POST", &format!("/v1/rides/{id}/start"), Some(&driver), None, &[("prefer", "wait=10")]).await;
    assert_problem(&start, StatusCode::CONFLICT);
    assert_eq!(start.body["code"], "invalid_ride_state");
}

#[tokio::test]
async fn someone_else_s_ride_is_not_found() {
    let app = spawn_app(true);
    let (_, rider) = app.register("ola@example.com", "rider").await;
    let (_, other_rider) = app.register("oli@example.com", "rider").await;
    let (_, driver) = app.register("ode@example.com", "driver").await;
    let (_, idle_driver) = app.register("oto@example.com", "driver").await;
    app.driver_online(&driver, 38.7230, -9.1400).await;
    let ride = app.request_ride(&rider, &[("prefer", "wait=10")]).await;
    let id = ride.body["ride_id"].as_str().unwrap();
    assert_eq!(app.call("GET", &format!("/v1/rides/{id}"), Some(&rider), None, &[]).await.status, StatusCode::OK);
    assert_eq!(app.call("GET", &format!("/v1/rides/{id}"), Some(&driver), None, &[]).await.status, StatusCode::OK);
    for token in [&other_rider, &idle_driver] {
        assert_problem(
            &app.call("GET", &format!("/v1/rides/{id}"), Some(token), None, &[]).await,
            StatusCode::NOT_FOUND,
        );
        let history = app.call("GET", &format!("/v1/rides/{id}/history"), Some(token), None, &[]).await;
        assert_problem(&history, StatusCode::NOT_FOUND);
    }
    let cancel =
        app.call("POST", &format!("/v1/rides/{id}/cancel"), Some(&other_rider), Some(r#"{"reason":"x"}"#), &[]).await;
    assert_problem(&cancel, StatusCode::NOT_FOUND);
    let no_reason = app.call("POST", &format!("/v1/rides/{id}/cancel"), Some(&rider), Some("{}"), &[]).await;
    assert_problem(&no_reason, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(no_reason.body["errors"][0]["field"], "reason");
    let accept = app.call("POST", &format!("/v1/rides/{id}/accept"), Some(&idle_driver), None, &[]).await;
    assert_problem(&accept, StatusCode::NOT_FOUND);
    // A command's status is only its issuer's.
    let status_url = app.request_ride(&rider, &[]).await.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(app.call("GET", &status_url, Some(&rider), None, &[]).await.status, StatusCode::OK);
    assert_problem(&app.call("GET", &status_url, Some(&other_rider), None, &[]).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rides_are_listed_newest_first_with_a_cursor() {
    let app = spawn_app(true);
    let (_, rider) = app.register("lia@example.com", "rider").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let ride = app.request_ride(&rider, &[("prefer", "wait=10")]).await;
        assert_eq!(ride.status, StatusCode::CREATED);
        let id = ride.body["ride_id"].as_str().unwrap().to_owned();
        // One ride under way per rider: end this one before asking for the next.
        let cancel = app
            .call(
                "POST",
                &format!("/v1/rides/{id}/cancel"),
                Some(&rider),
                Some(r#"{"reason":"next"}"#),
                &[("prefer", "wait=10")],
            )
            .await;
        assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text);
        ids.push(id);
    }
    let page1 = app.call("GET", "/v1/rides?limit=2", Some(&rider), None, &[]).await;
    let got: Vec<&str> =
        page1.body["items"].as_array().unwrap().iter().map(|r| r["ride_id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app.call("GET", &format!("/v1/rides?limit=2&cursor={cursor}"), Some(&rider), None, &[]).await;
    let got: Vec<&str> =
        page2.body["items"].as_array().unwrap().iter().map(|r| r["ride_id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[0].as_str()]);
    assert!(page2.body["next_cursor"].is_null());
    let filtered = app.call("GET", "/v1/rides?status=completed", Some(&rider), None, &[]).await;
    assert_eq!(filtered.body["items"].as_array().unwrap().len(), 0);
    let cancelled = app.call("GET", "/v1/rides?status=cancelled", Some(&rider), None, &[]).await;
    assert_eq!(cancelled.body["items"].as_array().unwrap().len(), 3);
    assert_problem(
        &app.call("GET", "/v1/rides?limit=101", Some(&rider), None, &[]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_problem(
        &app.call("GET", "/v1/rides?status=flying", Some(&rider), None, &[]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_problem(
        &app.call("GET", "/v1/rides?cursor=%%%", Some(&rider), None, &[]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    let bad_limit = app.call("GET", "/v1/rides?limit=many", Some(&rider), None, &[]).await;
    assert_problem(&bad_limit, StatusCode::BAD_REQUEST);
    assert!(bad_limit.body["detail"].as_str().unwrap().contains("limit"), "{}", bad_limit.text);
}

#[tokio::test]
async fn a_user_updates_their_profile() {
    let app = spawn_app(true);
    let (_, driver) = app.register("vic@example.com", "driver").await;
    let body = json!({ "name": "Victor", "vehicle": { "make": "Kia", "model": "Niro", "colour": "grey", "plate": "99-ZZ-99" } });
    let reply = app.call("PATCH", "/v1/me", Some(&driver), Some(&body.to_string()), &[("prefer", "wait=10")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["name"], "Victor");
    assert_eq!(reply.body["vehicle"]["model"], "Niro");
    let (_, rider) = app.register("val@example.com", "rider").await;
    let reply = app.call("PATCH", "/v1/me", Some(&rider), Some(&body.to_string()), &[]).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["field"], "vehicle");
    assert_problem(&app.call("PATCH", "/v1/me", Some(&rider), Some("{}"), &[]).await, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn beyond_the_in_flight_limit_requests_are_shed_with_503_at_once() {
    // No workers: a request that waits for its outcome holds its place for the whole wait.
    let app = Arc::new(spawn_app_with(false, EdgeConfig { max_in_flight: 1, ..EdgeConfig::default() }));
    let token = rider_token(&app);
    let holder = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { app.request_ride(&token, &[("prefer", "wait=2")]).await.status })
    };
    // Its command is on the bus: the holder is inside, waiting.
    app.wait_until_published(topics::RIDE_COMMANDS, 1).await;
    let started = std::time::Instant::now();
    let shed = app.call("GET", "/v1/rides", Some(&token), None, &[]).await;
    assert_problem(&shed, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers[header::RETRY_AFTER], "1");
    assert!(started.elapsed() < Duration::from_millis(1500), "shedding must not wait for the holder");
    // Health checks are never shed.
    assert_eq!(app.call("GET", "/health/live", None, None, &[]).await.status, StatusCode::OK);
    assert_eq!(holder.await.unwrap(), StatusCode::ACCEPTED, "the admitted request completes normally");
    assert_eq!(app.call("GET", "/v1/rides", Some(&token), None, &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_abandoned_idempotent_request_keeps_its_202_once_published() {
    // No workers: the request waits (Prefer: wait) after publishing, and the client gives up.
    let app = Arc::new(spawn_app(false));
    let token = rider_token(&app);
    let headers = [("idempotency-key", "abandoned-1"), ("prefer", "wait=5")];
    let first = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { app.request_ride(&token, &headers).await.status })
    };
    app.wait_until_published(topics::RIDE_COMMANDS, 1).await;
    first.abort();
    let _ = first.await;
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 1);
    // The retry gets the published command's 202, not a 409 and not a second command.
    let mut retry = app.request_ride(&token, &[("idempotency-key", "abandoned-1")]).await;
    for _ in 0..50 {
        if retry.status == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        retry = app.request_ride(&token, &[("idempotency-key", "abandoned-1")]).await;
    }
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.published(topics::RIDE_COMMANDS).await, 1);
}

#[tokio::test]
async fn a_wait_never_outlasts_the_request_deadline() {
    // A 3 s request timeout leaves 1 s to wait, whatever the client prefers.
    let config = EdgeConfig { request_timeout_seconds: 3, ..EdgeConfig::default() };
    let app = spawn_app_with(false, config);
    let started = std::time::Instant::now();
    let reply = app.request_ride(&rider_token(&app), &[("prefer", "wait=10")]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
}

#[test]
fn waits_longer_than_the_request_timeout_are_refused_at_start_up() {
    assert!(EdgeConfig::default().validate().is_ok());
    let bad = EdgeConfig { max_wait_seconds: 14, request_timeout_seconds: 15, ..EdgeConfig::default() };
    assert!(bad.validate().is_err());
}

/// A location ping is telemetry: it moves the driver in the geo index at once (a ride requested there
/// is offered to them), appends nothing to the driver's stream and publishes no command. A driver the
/// index does not know yet gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_ping_moves_the_driver_without_touching_their_stream() {
    let app = spawn_app(true);
    let (driver_id, driver) = app.register("pinging-driver@example.com", "driver").await;
    app.driver_online(&driver, 10.0, 10.0).await;
    let driver_id: uuid::Uuid = driver_id.parse().unwrap();
    let stream_before = app.backend.events.read_stream(driver_id).await.unwrap().len();
    let commands_before = app.published(topics::USER_COMMANDS).await;

    let ping = r#"{"lat":38.7224,"lon":-9.1394}"#;
    let reply = app.call("PUT", "/v1/drivers/me/location", Some(&driver), Some(ping), &[]).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
    assert_eq!(app.backend.events.read_stream(driver_id).await.unwrap().len(), stream_before);
    assert_eq!(app.published(topics::USER_COMMANDS).await, commands_before);
    let pickup = ridehail_events::GeoPoint { lat: 38.7223, lon: -9.1393 };
    assert_eq!(app.backend.drivers.available_in_cell(&pickup.cell(), chrono::Utc::now()).await.unwrap(), 1);

    let unknown = app.token_for(ridehail_events::Role::Driver);
    let reply = app.call("PUT", "/v1/drivers/me/location", Some(&unknown), Some(ping), &[]).await;
    assert_problem(&reply, StatusCode::NOT_FOUND);
}
