//! Starts the real `ridehail` binary on port 0 with its own data directory, and talks to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub mod load;

pub struct Server {
    pub child: Child,
    pub url: String,
}

/// The lines a server logged.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

impl Server {
    /// Starts `ridehail dev` on 127.0.0.1:0 and waits for its "listening on" line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_service(data_dir, "dev", env)
    }

    /// Starts `ridehail <service>` (`dev` or `edge`) on 127.0.0.1:0 and waits for its URL.
    pub fn start_service(data_dir: &Path, service: &str, env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, service, env, None)
    }

    /// [`Server::start_service`], keeping every line the server logs (at `info` and above) in `log`.
    pub fn start_logged(data_dir: &Path, service: &str, env: &[(&str, &str)], log: &Log) -> Server {
        Self::spawn(data_dir, service, env, Some(log.clone()))
    }

    fn spawn(data_dir: &Path, service: &str, env: &[(&str, &str)], log: Option<Log>) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ridehail"));
        command
            .args(["--data-dir", data_dir.to_str().unwrap(), service, "--bind", "127.0.0.1:0"])
            .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(if log.is_some() { Stdio::piped() } else { Stdio::inherit() });
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("ridehail starts");
        if let Some(log) = log {
            collect_stderr(&mut child, &log);
        }
        let stdout = child.stdout.take().unwrap();
        // Killed on drop even if the URL never comes.
        let child = Worker(Some(child));
        let url = printed(stdout, "ridehail listening on ").expect("ridehail printed its URL");
        Server { child: child.into_inner(), url }
    }

    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

/// A child process, killed when dropped (also when a test fails).
pub struct Worker(Option<Child>);

impl Worker {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Takes the child out; it is no longer killed on drop.
    fn into_inner(mut self) -> Child {
        self.0.take().expect("a worker holds its child until taken")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a worker process (`ride-worker` or `user-worker`) on the data directory.
pub fn start_worker(data_dir: &Path, worker: &str) -> Worker {
    start_worker_with(data_dir, worker, &[])
}

/// Starts a worker process with extra environment (e.g. the backend settings).
pub fn start_worker_with(data_dir: &Path, worker: &str, env: &[(&str, &str)]) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", data_dir.to_str().unwrap(), worker])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker starts");
    Worker(Some(child))
}

/// [`start_worker_with`], keeping the lines it logs (at `info` and above) in `log`.
pub fn start_worker_logged(data_dir: &Path, worker: &str, env: &[(&str, &str)], log: &Log) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", data_dir.to_str().unwrap(), worker])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    collect_stderr(&mut child, log);
    Worker(Some(child))
}

/// [`start_worker_logged`], also waiting for the worker's admin listener (metrics, health): returns
/// its URL.
pub fn start_worker_with_admin(data_dir: &Path, worker: &str, env: &[(&str, &str)], log: &Log) -> (Worker, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .args(["--data-dir", data_dir.to_str().unwrap(), worker])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker starts");
    collect_stderr(&mut child, log);
    let stdout = child.stdout.take().unwrap();
    let worker = Worker(Some(child));
    let url = printed(stdout, "ridehail admin listening on ").expect("the worker printed its admin URL");
    (worker, url)
}

/// Keeps every line the child writes to its (piped) stderr in `log`.
fn collect_stderr(child: &mut Child, log: &Log) {
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
}

/// What follows `prefix` on the first stdout line that starts with it, within 30 s (the rest of the
/// output is read and dropped, so the child never blocks on a full pipe).
fn printed(stdout: std::process::ChildStdout, prefix: &'static str) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

impl Worker {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("a worker holds its child until taken");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    pub fn kill_9(&mut self) {
        if let Some(child) = self.0.as_mut() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

/// Runs the binary to completion (e.g. `topics apply`, `replay --verify`); returns status and stdout.
pub fn run_command(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ridehail"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .expect("ridehail runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a tool in `dir` with `env` added; whether it exited 0, and what it printed (stdout, then
/// stderr).
pub fn run_tool(program: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run: {e}"));
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// Settings (as environment) that put the binary on the production engines — Kafka, MongoDB and
/// Redis test servers — in a namespace of its own (topic/group prefix, database, key prefix).
/// `None` (test skipped) when the servers are not running.
pub fn server_env() -> Option<Vec<(String, String)>> {
    use ridehail_contract::{test_server, unique_name};
    let brokers = test_server("RIDEHAIL_TEST_KAFKA_BROKERS")?;
    let mongodb = test_server("RIDEHAIL_TEST_MONGODB_URI")?;
    let redis = test_server("RIDEHAIL_TEST_REDIS_URL")?;
    let name = unique_name("e2e");
    Some(
        vec![
            ("RIDEHAIL__BACKEND__BUS".into(), "kafka".into()),
            ("RIDEHAIL__BACKEND__STORE".into(), "mongodb".into()),
            ("RIDEHAIL__BACKEND__HOT_STORE".into(), "redis".into()),
            ("RIDEHAIL__KAFKA__BROKERS".into(), brokers),
            ("RIDEHAIL__KAFKA__NAMESPACE".into(), format!("{name}.")),
            ("RIDEHAIL__KAFKA__PARTITIONS".into(), "6".into()),
            ("RIDEHAIL__KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            // tansu holds a fetch for about half of this even when records are waiting.
            ("RIDEHAIL__KAFKA__FETCH_WAIT_MAX_MS".into(), "10".into()),
            ("RIDEHAIL__MONGODB__URI".into(), mongodb),
            ("RIDEHAIL__MONGODB__DATABASE".into(), name.replace('-', "_")),
            ("RIDEHAIL__REDIS__URL".into(), redis),
            ("RIDEHAIL__REDIS__KEY_PREFIX".into(), format!("{name}:")),
            // Eight processes share two cores here (servers, services, the test): a Redis answer can be
            // late by more than the production default of 500 ms without anything being wrong.
            ("RIDEHAIL__REDIS__RESPONSE_TIMEOUT_MS".into(), "3000".into()),
            (JWT_SECRET_VAR.into(), TEST_JWT_SECRET.into()),
        ]
        .into_iter()
        .chain(load_test_limits())
        .collect(),
    )
}

/// [`server_env`] with RabbitMQ as the bus instead of Kafka (`None` without a RabbitMQ test server).
pub fn rabbitmq_server_env() -> Option<Vec<(String, String)>> {
    let url = ridehail_contract::test_server("RIDEHAIL_TEST_RABBITMQ_URL")?;
    let mut env = server_env()?;
    let namespace = env.iter().find(|(k, _)| k == "RIDEHAIL__KAFKA__NAMESPACE")?.1.clone();
    env.retain(|(k, _)| !k.starts_with("RIDEHAIL__KAFKA__") && k != "RIDEHAIL__BACKEND__BUS");
    env.extend([
        ("RIDEHAIL__BACKEND__BUS".into(), "rabbitmq".into()),
        ("RIDEHAIL__RABBITMQ__URL".into(), url),
        ("RIDEHAIL__RABBITMQ__NAMESPACE".into(), namespace),
        ("RIDEHAIL__RABBITMQ__PARTITIONS".into(), "6".into()),
    ]);
    Some(env)
}

/// The HS256 secret the end-to-end tests give the edge, so that they can mint tokens themselves.
pub const TEST_JWT_SECRET: &str = "end-to-end-test-secret-end-to-end-test-secret";
pub const JWT_SECRET_VAR: &str = "RIDEHAIL_JWT_SECRET";

/// A token the edge accepts (signed with [`TEST_JWT_SECRET`]) for a user who need not be registered:
/// riders by the thousand without a thousand argon2 sign-ups.
pub fn token_for(user_id: ridehail_events::UserId, role: ridehail_events::Role) -> String {
    use api_edge::auth::{JwtKeys, KeyMaterial};
    let material =
        KeyMaterial { secret: Some(secrecy::SecretString::from(TEST_JWT_SECRET.to_owned())), ..KeyMaterial::default() };
    let keys = JwtKeys::new(&material, api_edge::EdgeConfig::default().token_policy()).unwrap();
    keys.issue(user_id, role, chrono::Utc::now()).unwrap().0
}

/// Per-client limits high enough for a load test, where every request comes from 127.0.0.1.
pub fn load_test_limits() -> Vec<(String, String)> {
    ["PER_IP", "PER_USER", "LOGINS_PER_IP", "SIGNUPS_PER_IP"]
        .into_iter()
        .flat_map(|rate| {
            [("COUNT", "100000"), ("PERIOD_SECONDS", "1"), ("BURST", "100000")]
                .map(|(field, value)| (format!("RIDEHAIL__EDGE__LIMITS__{rate}__{field}"), value.to_owned()))
        })
        .collect()
}

/// Creates the topics and applies the migrations a run on the servers needs (`topics apply`,
/// `migrate up`), failing the test if either fails.
pub fn prepare_servers(data_dir: &Path, env: &[(&str, &str)]) {
    for command in [&["topics", "apply"][..], &["migrate", "up"][..]] {
        let (ok, out) = run_command(data_dir, command, env);
        assert!(ok, "{command:?} failed: {out}");
    }
}

pub fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny JSON client.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Self {
        // reqwest's rustls, enabled in a workspace build by the benchmarks, needs the process's crypto
        // provider: the one the binary installs (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Idle connections are dropped before the edge's own idle timeout (10 s) closes them: a request
        // sent on a connection the server is closing at that moment is reset, and not retried.
        let client = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build().unwrap();
        Self { client, base: base.to_owned() }
    }

    pub async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base)).header("prefer", "wait=10");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let (status, body) =
            self.send("POST", "/v1/sessions", None, Some(json!({ "email": email, "password": password }))).await;
        assert_eq!(status, 200, "{body}");
        (body["user_id"].as_str().unwrap().to_owned(), body["access_token"].as_str().unwrap().to_owned())
    }
}

pub const DRIVER_EMAIL: &str = "dora@example.com";
pub const DRIVER_PASSWORD: &str = "dora-drives-safely";
pub const RIDER_EMAIL: &str = "rui@example.com";
pub const RIDER_PASSWORD: &str = "rui-rides-often";

/// The README session, step by step. Returns the ride id.
pub async fn readme_session(api: &Api) -> String {
    // Register a driver and a rider.
    let (status, driver) = api
        .send(
            "POST",
            "/v1/users",
            None,
            Some(json!({
                "email": DRIVER_EMAIL, "password": DRIVER_PASSWORD, "name": "Dora", "role": "driver",
                "vehicle": { "make": "Toyota", "model": "Prius", "colour": "white", "plate": "AA-11-BB" }
            })),
        )
        .await;
    assert_eq!(status, 201, "{driver}");
    let (status, rider) = api
        .send(
            "POST",
            "/v1/users",
            None,
            Some(json!({ "email": RIDER_EMAIL, "password": RIDER_PASSWORD, "name": "Rui", "role": "rider" })),
        )
        .await;
    assert_eq!(status, 201, "{rider}");

    // Log in.
    let (driver_id, driver_token) = api.login(DRIVER_EMAIL, DRIVER_PASSWORD).await;
    let (rider_id, rider_token) = api.login(RIDER_EMAIL, RIDER_PASSWORD).await;

    // The driver goes online near the pickup.
    let (status, body) = api
        .send(
            "PUT",
            "/v1/drivers/me/availability",
            Some(&driver_token),
            Some(json!({ "online": true, "location": { "lat": 38.7230, "lon": -9.1400 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"], true);

    // The rider requests a ride; it is offered to the driver.
    let (status, ride) = api
        .send(
            "POST",
            "/v1/rides",
            Some(&rider_token),
            Some(
                json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 }, "dropoff": { "lat": 38.7369, "lon": -9.1427 } }),
            ),
        )
        .await;
    assert_eq!(status, 201, "{ride}");
    assert_eq!(ride["offered_driver_id"], driver_id.as_str());
    let ride_id = ride["ride_id"].as_str().unwrap().to_owned();

    // The driver accepts, arrives, starts and completes.
    for (action, expected) in [("accept", "driver_assigned"), ("arrive", "driver_arrived"), ("start", "in_progress")] {
        let (status, body) =
            api.send("POST", &format!("/v1/rides/{ride_id}/{action}"), Some(&driver_token), None).await;
        assert_eq!((status, body["status"].as_str()), (200, Some(expected)), "{action}: {body}");
    }
    let (status, body) = api
        .send(
            "POST",
            &format!("/v1/rides/{ride_id}/complete"),
            Some(&driver_token),
            Some(json!({ "distance_meters": 2300 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["fare"]["distance_meters"], 2300);

    // Both rate.
    let (status, body) = api
        .send(
            "POST",
            &format!("/v1/rides/{ride_id}/rating"),
            Some(&rider_token),
            Some(json!({ "stars": 5, "comment": "smooth" })),
        )
        .await;
    assert_eq!((status, &body["rider_rating"]), (200, &json!(5)), "{body}");
    let (status, body) = api
        .send("POST", &format!("/v1/rides/{ride_id}/rating"), Some(&driver_token), Some(json!({ "stars": 4 })))
        .await;
    assert_eq!((status, &body["driver_rating"]), (200, &json!(4)), "{body}");

    // The rider reads the ride and its history.
    let (status, ride) = api.send("GET", &format!("/v1/rides/{ride_id}"), Some(&rider_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(ride["rider_id"], rider_id.as_str());
    assert_eq!(ride["driver_id"], driver_id.as_str());
    assert!(ride["fare"]["total_minor"].as_i64().unwrap() >= 500);
    let (status, history) = api.send("GET", &format!("/v1/rides/{ride_id}/history"), Some(&rider_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        event_types(&history),
        [
            "RideRequested",
            "DriverOffered",
            "DriverAssigned",
            "DriverArrived",
            "RideStarted",
            "RideCompleted",
            "RideRated",
            "RideRated"
        ]
    );
    ride_id
}

pub fn event_types(history: &Value) -> Vec<&str> {
    history["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect()
}

/// A private redis-server on a free loopback port, killed on drop: for tests that kill it.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    pub url: String,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Self::spawn(port);
        // Owned (and so killed and reaped on drop) before anything can fail.
        let redis = Self { child, port, url: format!("redis://127.0.0.1:{port}") };
        redis.wait_until_up();
        redis
    }

    fn spawn(port: u16) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test-services")
    }

    fn wait_until_up(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not open port {}", self.port);
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A new, empty redis-server on the same port (after [`PrivateRedis::kill`]).
    pub fn restart_empty(&mut self) {
        self.child = Self::spawn(self.port);
        self.wait_until_up();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
