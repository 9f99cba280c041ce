//! The attack suite: the real binary (embedded default, one process) probed as an attacker would.
//! Every case asserts the exact status the edge must answer.
//!
//! - forged, expired, not-yet-valid, wrong-audience and over-long tokens are `401`; a rotated key
//!   keeps verifying until it is dropped;
//! - 300 connections trickling request bodies and 500 idle sockets do not slow a normal client
//!   (p99 under 100 ms), and the idle sockets are closed by the header-read timeout;
//! - a password guessed again and again locks the account out (`429` + `Retry-After`), with audit
//!   lines that name no address;
//! - 20 simultaneous sign-ups with one address: exactly one wins;
//! - nothing the suite sent as personal data (addresses, names, passwords, coordinates) appears in
//!   any log line, nor in any answer but those that show a user their own data;
//! - the data directory and every file in it are the owner's only.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_edge::auth::{JwtKeys, KeyMaterial, TokenPolicy};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ridehail_events::{Role, UserId};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use support::{Api, Log, Server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PASSWORD: &str = "attack-suite-password";

/// A signing key of the suite's own, given to the edge as a file.
fn signing_key(dir: &std::path::Path) -> (SecretString, std::path::PathBuf) {
    let pem = api_edge::auth::generate_signing_key().unwrap();
    let path = dir.join("jwt-key.pem");
    std::fs::write(&path, pem.expose_secret()).unwrap();
    (pem, path)
}

fn keys(pem: &SecretString, policy: TokenPolicy) -> JwtKeys {
    JwtKeys::new(&KeyMaterial { signing_key_pem: Some(pem.clone()), ..KeyMaterial::default() }, policy).unwrap()
}

fn policy() -> TokenPolicy {
    api_edge::EdgeConfig::default().token_policy()
}

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (header, payload, it.next().unwrap().to_owned())
}

async fn register(api: &Api, email: &str, name: &str, role: &str) -> (u16, Value) {
    let mut body = json!({ "email": email, "password": PASSWORD, "name": name, "role": role });
    if role == "driver" {
        body["vehicle"] = json!({ "make": "Kia", "model": "Niro", "colour": "grey", "plate": "AT-01-AK" });
    }
    api.send("POST", "/v1/users", None, Some(body)).await
}

/// The status and problem code of `GET /v1/me` with `token`.
async fn me(api: &Api, token: &str) -> (u16, Value) {
    api.send("GET", "/v1/me", Some(token), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_tokens_are_refused_and_rotated_keys_verify_until_dropped() {
    let dir = tempfile::TempDir::new().unwrap();
    let (pem, key_file) = signing_key(dir.path());
    let key_env = ("RIDEHAIL_JWT_PRIVATE_KEY_FILE", key_file.to_str().unwrap());
    let server = Server::start(&dir.path().join("data"), &[key_env]);
    let api = Api::new(&server.url);
    assert_eq!(register(&api, "tess@example.com", "Tess", "rider").await.0, 201);
    let (user_id, token) = api.login("tess@example.com", PASSWORD).await;
    assert_eq!(me(&api, &token).await.0, 200, "the control: a real token works");
    let user: UserId = user_id.parse().unwrap();

    let (header, payload, _) = parts(&token);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    let ours = keys(&pem, policy());
    let mut forgeries: Vec<(&str, String)> = Vec::new();
    forgeries.push(("alg none", format!("{}.{}.", segment(&json!({"alg": "none", "kid": kid})), segment(&payload))));
    let published = serde_json::to_value(ours.jwks()).unwrap();
    let public_key = URL_SAFE_NO_PAD.decode(published["keys"][0]["x"].as_str().unwrap()).unwrap();
    for alg in [jsonwebtoken::Algorithm::HS256, jsonwebtoken::Algorithm::HS512] {
        // The classic confusion: an HMAC keyed with what anyone can read (the public key), under our kid.
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.clone());
        let key = jsonwebtoken::EncodingKey::from_secret(&public_key);
        let forged = jsonwebtoken::encode(&header, &payload, &key).unwrap();
        forgeries.push(("HMAC under the EdDSA kid", forged));
    }
    let rs256 = format!("{}.{}.{}", segment(&json!({"alg": "RS256", "kid": kid})), segment(&payload), "c2lnbmF0dXJl");
    forgeries.push(("RS256 header", rs256));
    let stranger = api_edge::auth::generate_signing_key().unwrap();
    forgeries.push(("another key", keys(&stranger, policy()).issue(user, Role::Rider, now).unwrap().0));
    let (_, _, signature) = parts(&token);
    let mut edited = payload.clone();
    edited["role"] = json!("driver");
    forgeries.push(("edited role", format!("{}.{}.{signature}", segment(&header), segment(&edited))));
    let mut edited = payload.clone();
    edited["sub"] = json!(UserId::new().to_string());
    forgeries.push(("edited subject", format!("{}.{}.{signature}", segment(&header), segment(&edited))));
    let mut no_kid = header.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    forgeries.push(("no kid", format!("{}.{}.{signature}", segment(&no_kid), segment(&payload))));
    forgeries.push(("expired", ours.issue(user, Role::Rider, now - chrono::Duration::hours(3)).unwrap().0));
    forgeries.push(("not valid yet", ours.issue(user, Role::Rider, now + chrono::Duration::hours(1)).unwrap().0));
    let other_audience = keys(&pem, TokenPolicy { audience: "billing-api".into(), ..policy() });
    forgeries.push(("another audience", other_audience.issue(user, Role::Rider, now).unwrap().0));
    let other_issuer = keys(&pem, TokenPolicy { issuer: "elsewhere".into(), ..policy() });
    forgeries.push(("another issuer", other_issuer.issue(user, Role::Rider, now).unwrap().0));
    let long = TokenPolicy { ttl: chrono::Duration::days(30), max_lifetime: chrono::Duration::days(30), ..policy() };
    forgeries.push(("a month-long token", keys(&pem, long).issue(user, Role::Rider, now).unwrap().0));
    forgeries.push(("garbage", "not.a.token".to_owned()));
    for (what, forged) in &forgeries {
        let (status, body) = me(&api, forged).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["code"], "unauthenticated", "{what}: {body}");
    }
    // The scheme is case-insensitive; another scheme is not a bearer token.
    let lower = api.client.get(format!("{}/v1/me", api.base)).header("authorization", format!("bearer {token}"));
    assert_eq!(lower.send().await.unwrap().status().as_u16(), 200);
    let basic = api.client.get(format!("{}/v1/me", api.base)).header("authorization", format!("Basic {token}"));
    assert_eq!(basic.send().await.unwrap().status().as_u16(), 401);

    // Rotation: the previous key's public half stays in the ring; then it is dropped.
    let (status, jwks) = api.send("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert!(jwks["keys"][0].get("d").is_none(), "no private part is published");
    drop(server);
    let previous = dir.path().join("previous-keys.json");
    std::fs::write(&previous, jwks.to_string()).unwrap();
    let new_key = dir.path().join("jwt-key-2.pem");
    let (ok, new_jwks) =
        support::run_command(dir.path(), &["keys", "generate", "--out", new_key.to_str().unwrap()], &[]);
    assert!(ok, "{new_jwks}");
    let rotated = [
        ("RIDEHAIL_JWT_PRIVATE_KEY_FILE", new_key.to_str().unwrap()),
        ("RIDEHAIL_JWT_PREVIOUS_PUBLIC_KEYS_FILE", previous.to_str().unwrap()),
    ];
    let server = Server::start(&dir.path().join("data"), &rotated);
    let api = Api::new(&server.url);
    assert_eq!(me(&api, &token).await.0, 200, "a token of the previous key still verifies");
    let (_, fresh) = api.login("tess@example.com", PASSWORD).await;
    let new_kid: Value = serde_json::from_str(new_jwks.trim()).unwrap();
    assert_eq!(parts(&fresh).0["kid"], new_jwks_kid(&new_kid), "new tokens are signed by the new key");
    assert_eq!(api.send("GET", "/.well-known/jwks.json", None, None).await.1["keys"].as_array().unwrap().len(), 2);
    drop(server);
    let server =
        Server::start(&dir.path().join("data"), &[("RIDEHAIL_JWT_PRIVATE_KEY_FILE", new_key.to_str().unwrap())]);
    let api = Api::new(&server.url);
    assert_eq!(me(&api, &token).await.0, 401, "once dropped from the ring, the old key verifies nothing");
    assert_eq!(me(&api, &fresh).await.0, 200);
}

fn new_jwks_kid(jwks: &Value) -> Value {
    jwks["keys"][0]["kid"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_connections_do_not_slow_a_normal_client_and_idle_ones_are_closed() {
    let dir = tempfile::TempDir::new().unwrap();
    let env =
        [("RIDEHAIL__EDGE__HEADER_READ_TIMEOUT_SECONDS", "3"), ("RIDEHAIL__EDGE__BODY_READ_TIMEOUT_SECONDS", "4")];
    let server = Server::start(dir.path(), &env);
    let api = Api::new(&server.url);
    assert_eq!(register(&api, "nia@example.com", "Nia", "rider").await.0, 201);
    let (_, token) = api.login("nia@example.com", PASSWORD).await;
    let address = server.url.trim_start_matches("http://").to_owned();

    // 300 clients that send headers announcing a body, then trickle it a byte at a time.
    let trickling: Vec<_> = (0..300)
        .map(|_| {
            let (address, token) = (address.clone(), token.clone());
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
                let head = format!(
                    "POST /v1/rides HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
                     content-type: application/json\r\ncontent-length: 4096\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                for _ in 0..20 {
                    if stream.write_all(b" ").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    // 500 sockets that connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile a normal client lists its rides.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let (status, body) = api.send("GET", "/v1/rides", Some(&token), None).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    eprintln!("normal client alongside 300 slow and 500 idle connections: p50 {:?}, p99 {p99:?}", latencies[50]);
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");

    // The slow bodies were cut off with a 408, not left to hold anything.
    let answers = futures::future::join_all(trickling).await;
    let timed_out = answers.iter().filter(|a| a.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 408"))).count();
    assert_eq!(timed_out, 300, "{:?}", answers.first());
    // The idle sockets were closed by the header-read timeout.
    let mut closed = 0;
    for mut socket in idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_taken_new_ones_wait_until_the_idle_ones_time_out() {
    let dir = tempfile::TempDir::new().unwrap();
    let env = [("RIDEHAIL__EDGE__MAX_CONNECTIONS", "20"), ("RIDEHAIL__EDGE__HEADER_READ_TIMEOUT_SECONDS", "2")];
    let server = Server::start(dir.path(), &env);
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = Api::new(&server.url);
    let started = Instant::now();
    let (status, _) = api.send("GET", "/health/live", None, None).await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(1200), "served before a place was free: {waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_password_locks_the_account_out_and_the_audit_names_no_address() {
    let dir = tempfile::TempDir::new().unwrap();
    let log: Log = Arc::default();
    let server = Server::start_logged(dir.path(), "dev", &[], &log);
    let api = Api::new(&server.url);
    let email = "vic.target@example.com";
    assert_eq!(register(&api, email, "Victoria Target", "rider").await.0, 201);
    let guess = |password: &'static str| {
        let api = &api;
        async move { api.send("POST", "/v1/sessions", None, Some(json!({ "email": email, "password": password }))).await }
    };
    // Five free failures, the sixth starts the lock-out (still answered as a wrong password).
    for n in 1..=6 {
        let (status, body) = guess("wrong-password-guess").await;
        assert_eq!(status, 401, "guess {n}: {body}");
        assert_eq!(body["code"], "invalid_credentials");
    }
    let response = api
        .client
        .post(format!("{}/v1/sessions", api.base))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429, "locked out, even with the right password");
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "login_locked");
    // Other accounts are not locked.
    assert_eq!(register(&api, "other.user@example.com", "Other", "rider").await.0, 201);
    api.login("other.user@example.com", PASSWORD).await;

    let lines = log.lock().unwrap().clone();
    let audit: Vec<&String> = lines.iter().filter(|l| l.contains("audit")).collect();
    assert_eq!(audit.iter().filter(|l| l.contains("login_failed")).count(), 6, "{audit:#?}");
    assert!(audit.iter().any(|l| l.contains("login_lockout")), "{audit:#?}");
    assert!(audit.iter().any(|l| l.contains("login_refused_locked_out")), "{audit:#?}");
    for line in &lines {
        assert!(!line.contains("vic.target") && !line.contains("Victoria"), "personal data logged: {line}");
        assert!(!line.contains("wrong-password-guess") && !line.contains(PASSWORD), "a password logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simultaneous_sign_ups_with_one_address_make_exactly_one_user() {
    let dir = tempfile::TempDir::new().unwrap();
    let limits = support::load_test_limits();
    let server = Server::start(dir.path(), &support::as_refs(&limits));
    let api = Arc::new(Api::new(&server.url));
    let attempts = (0..20).map(|n| {
        let api = api.clone();
        // The same address, as the same person typing it differently.
        let email = if n % 2 == 0 { "Zed@Example.com".to_owned() } else { " zed@example.COM".to_owned() };
        async move { register(&api, &email, "Zed", "rider").await }
    });
    let results = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    for (_, body) in results.iter().filter(|(s, _)| *s == 409) {
        assert_eq!(body["code"], "email_taken", "{body}");
    }
    api.login("zed@example.com", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_in_logs_idempotency_records_or_foreign_answers_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let log: Log = Arc::default();
    let server = Server::start_logged(&data, "dev", &[], &log);
    let api = Api::new(&server.url);
    let (rider_email, rider_name) = ("ursula.private@example.com", "Ursula Privatename");
    let (driver_email, driver_name) = ("dmitri.private@example.com", "Dmitri Privatename");
    let pickup = json!({ "lat": 38.712_345, "lon": -9.134_567 });
    let dropoff = json!({ "lat": 38.731_234, "lon": -9.145_678 });
    let location = json!({ "lat": 38.713_579, "lon": -9.135_791 });
    let secrets = [rider_email, rider_name, driver_email, driver_name, PASSWORD, "38.712345", "38.731234", "38.713579"];

    let mut answers: Vec<(String, Value)> = Vec::new();
    let signup = api
        .client
        .post(format!("{}/v1/users", api.base))
        .header("idempotency-key", "signup-1")
        .header("prefer", "wait=10")
        .json(&json!({ "email": rider_email, "password": PASSWORD, "name": rider_name, "role": "rider" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status().as_u16(), 201);
    // A retry with the same key but another password is another request.
    let retry = api
        .client
        .post(format!("{}/v1/users", api.base))
        .header("idempotency-key", "signup-1")
        .json(&json!({ "email": rider_email, "password": "another-password-entirely", "name": rider_name, "role": "rider" }))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status().as_u16(), 422);
    answers.push(("sign-up retried with another password".into(), retry.json().await.unwrap()));
    assert_eq!(register(&api, driver_email, driver_name, "driver").await.0, 201);
    let (_, rider) = api.login(rider_email, PASSWORD).await;
    let (_, driver) = api.login(driver_email, PASSWORD).await;
    let online = json!({ "online": true, "location": location });
    let (status, _) = api.send("PUT", "/v1/drivers/me/availability", Some(&driver), Some(online)).await;
    assert_eq!(status, 200);
    let (status, ride) =
        api.send("POST", "/v1/rides", Some(&rider), Some(json!({ "pickup": pickup, "dropoff": dropoff }))).await;
    assert_eq!(status, 201, "{ride}");
    let ride_id = ride["ride_id"].as_str().unwrap().to_owned();
    // Answers to someone else, or to nobody, carry none of it.
    let (_, stranger) = {
        assert_eq!(register(&api, "stranger@example.com", "Stranger", "rider").await.0, 201);
        api.login("stranger@example.com", PASSWORD).await
    };
    for (what, method, path, token, body) in [
        ("someone else's ride", "GET", format!("/v1/rides/{ride_id}"), Some(&stranger), None),
        ("someone else's history", "GET", format!("/v1/rides/{ride_id}/history"), Some(&stranger), None),
        (
            "a wrong password",
            "POST",
            "/v1/sessions".to_owned(),
            None,
            Some(json!({"email": rider_email, "password": "nope-nope-nope"})),
        ),
        ("readiness", "GET", "/health/ready".to_owned(), None, None),
        (
            "a taken address",
            "POST",
            "/v1/users".to_owned(),
            None,
            Some(json!({"email": rider_email, "password": PASSWORD, "name": rider_name, "role": "rider"})),
        ),
    ] {
        let (_, answer) = api.send(method, &path, token.map(String::as_str), body).await;
        answers.push((what.into(), answer));
    }
    for (what, answer) in &answers {
        let text = answer.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{what} reveals {secret:?}: {text}");
        }
        assert!(!text.contains("$argon2"), "{what} reveals a hash: {text}");
    }
    let (_, profile) = api.send("GET", "/v1/me", Some(&rider), None).await;
    assert!(!profile.to_string().contains("argon2") && profile.get("password_hash").is_none(), "{profile}");
    drop(server);

    for line in log.lock().unwrap().iter() {
        for secret in secrets {
            assert!(!line.contains(secret), "a log line reveals {secret:?}: {line}");
        }
        assert!(!line.contains("$argon2"), "a log line reveals a hash: {line}");
    }
    // The idempotency records keep neither the address nor the name (only ids and a keyed hash).
    for file in ["commands.sqlite", "commands.sqlite-wal"] {
        if let Ok(bytes) = std::fs::read(data.join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            for secret in [rider_email, rider_name] {
                assert!(!text.contains(secret), "{file} holds {secret:?}");
            }
        }
    }
    // Every file the process made is its owner's only.
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{name:?}");
        } else {
            assert_eq!(mode, 0o600, "{name:?}");
        }
    }
}
