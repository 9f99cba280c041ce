//! The fault matrix: the services as separate processes over Kafka + MongoDB (CongoDB here) + Redis,
//! under steady ride traffic, while one fault at a time is injected on a real server:
//!
//! - Redis killed, then restarted empty;
//! - MongoDB unreachable (a TCP proxy in front of it cuts every connection and refuses new ones);
//! - MongoDB slow (the same proxy adds 200 ms to everything): breakers open, the edge stays
//!   responsive, and they close when it heals;
//! - a ride worker stopped with SIGTERM mid-load;
//! - (a ride worker `kill -9`ed mid-load: `tests/services_over_brokers.rs`; the Kafka broker restarted:
//!   `broker_restart`, which needs the durable tansu of `scripts/install-durable-tansu`).
//!
//! After each: every `202` reached exactly one outcome, no command's effects were applied twice,
//! every ride ended, and `replay --verify` finds the read models equal to the history. Each test
//! prints, for its fault, the requests accepted during the fault, lost (0), duplicated (0) and the time
//! to recover after the fault ended. The fault lasts `RIDEHAIL_FAULT_SECONDS` (30).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::load::{self, Submitted};
use support::{Api, Log, Server, Worker, as_refs, run_command, server_env};

fn fault_duration() -> Duration {
    let seconds = std::env::var("RIDEHAIL_FAULT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Rides per second of the steady load (two cores run every process here).
const RATE: u32 = 5;
const DRIVERS: usize = 20;

/// The system under test: an edge, a user worker and two ride workers, with their logs.
struct Stack {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    _edge: Server,
    _user_worker: Worker,
    ride_workers: Vec<Worker>,
    api: Arc<Api>,
    log: Log,
}

impl Stack {
    async fn start(env: Vec<(String, String)>) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let refs = as_refs(&env);
        support::prepare_servers(dir.path(), &refs);
        let log: Log = Arc::default();
        let edge = Server::start_logged(dir.path(), "edge", &refs, &log);
        let user_worker = support::start_worker_logged(dir.path(), "user-worker", &refs, &log);
        let ride_workers =
            (0..2).map(|_| support::start_worker_logged(dir.path(), "ride-worker", &refs, &log)).collect();
        let api = Arc::new(Api::new(&edge.url));
        Self { dir, env, _edge: edge, _user_worker: user_worker, ride_workers, api, log }
    }

    /// Drivers on the road and riders asking: `run` injects the fault while the load flows; then the
    /// checks, and a report of what the load saw.
    async fn under_load(&self, name: &str, run: impl AsyncFnOnce(&Stack) -> Instant) {
        let drivers = load::register_drivers(&self.api, DRIVERS).await;
        let (stop_drivers, completed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let driving: Vec<_> = drivers
            .into_iter()
            .map(|d| tokio::spawn(load::drive(self.api.clone(), d, stop_drivers.clone(), completed.clone())))
            .collect();
        let stop_riders = Arc::new(AtomicBool::new(false));
        let riding = tokio::spawn(load::ride_requests(self.api.clone(), RATE, stop_riders.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let fault_started = Instant::now();
        let fault_ended = run(self).await;
        let recovered = self.recovery_time(fault_ended).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop_riders.store(true, Ordering::Relaxed);
        let tally = riding.await.unwrap();

        let during = |s: &&Submitted| s.at >= fault_started && s.at <= fault_ended;
        let accepted_during = tally.accepted.iter().filter(during).count();
        let slowest = tally.accepted.iter().map(|s| s.took).max().unwrap_or_default();
        let ends = load::check_nothing_lost_or_doubled(&self.api, &tally.accepted, Duration::from_secs(180)).await;
        let known = load::check_statuses_are_final(&self.api, &tally.accepted).await;
        stop_drivers.store(true, Ordering::Relaxed);
        for driver in driving {
            driver.await.unwrap();
        }
        let (ok, report) = run_command(self.dir.path(), &["replay", "--verify"], &as_refs(&self.env));
        assert!(ok, "replay --verify found differences after {name}: {report}");
        eprintln!(
            "fault {name}: {} requests accepted ({accepted_during} sent during the fault; the slowest `202` took \
             {slowest:.1?}), refused {:?}; lost 0, duplicated 0; ends {ends:?}; {known} statuses still known; \
             recovered {recovered:.1?} after the fault",
            tally.accepted.len(),
            tally.refused,
        );
    }

    /// How long after `since` a new ride request comes back accepted within its wait: the time to
    /// recover.
    async fn recovery_time(&self, since: Instant) -> Duration {
        let deadline = since + Duration::from_secs(120);
        loop {
            let rider = ridehail_events::UserId::new();
            let token = support::token_for(rider, ridehail_events::Role::Rider);
            let trip = serde_json::json!({ "pickup": { "lat": 38.7223, "lon": -9.1393 },
                "dropoff": { "lat": 38.7369, "lon": -9.1427 } });
            let (status, body) = load::try_send(&self.api, "POST", "/v1/rides", &token, Some(trip)).await;
            if status == 201 {
                // Not counted in the load: this rider cancels at once.
                let id = body["ride_id"].as_str().unwrap_or_default();
                let reason = serde_json::json!({ "reason": "recovery probe" });
                load::try_send(&self.api, "POST", &format!("/v1/rides/{id}/cancel"), &token, Some(reason)).await;
                return since.elapsed();
            }
            assert!(Instant::now() < deadline, "not recovered 120 s after the fault: {status} {body}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn logged(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Fails with `what`, and the first warnings the services logged, unless a line contains `needle`.
    fn assert_logged(&self, needle: &str, what: &str) {
        if self.logged(needle) == 0 {
            let lines = self.log.lock().unwrap();
            let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN")).take(30).collect();
            panic!("{what}: no line contains {needle:?}; the first warnings: {warnings:#?}");
        }
    }
}

fn with(mut env: Vec<(String, String)>, set: &[(&str, String)]) -> Vec<(String, String)> {
    for (key, value) in set {
        env.retain(|(k, _)| k != key);
        env.push(((*key).to_owned(), value.clone()));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_empty_loses_nothing() {
    let Some(env) = server_env() else { return };
    let mut redis = support::PrivateRedis::start();
    let stack = Stack::start(with(env, &[("RIDEHAIL__REDIS__URL", redis.url.clone())])).await;
    stack
        .under_load("redis killed", async |_| {
            redis.kill();
            tokio::time::sleep(fault_duration()).await;
            redis.restart_empty();
            Instant::now()
        })
        .await;
    stack.assert_logged("record not processed yet; retrying", "the workers waited the outage out");
    assert_eq!(stack.logged("dead-lettering message"), 0, "an outage is not a poison message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_unreachable_loses_nothing() {
    let Some(env) = server_env() else { return };
    let uri = env.iter().find(|(k, _)| k == "RIDEHAIL__MONGODB__URI").unwrap().1.clone();
    let proxy = ridehail_contract::proxy::FaultProxy::start(mongo_address(&uri)).await;
    let stack = Stack::start(with(env, &[("RIDEHAIL__MONGODB__URI", through_proxy(&uri, proxy.port()))])).await;
    stack
        .under_load("mongodb unreachable", async |stack| {
            proxy.cut();
            let started = Instant::now();
            // Meanwhile the edge still answers: liveness at once, readiness says what is down.
            let (live, _) = stack.api.send("GET", "/health/live", None, None).await;
            assert_eq!(live, 200);
            tokio::time::sleep(fault_duration().saturating_sub(started.elapsed())).await;
            let (ready, body) = stack.api.send("GET", "/health/ready", None, None).await;
            assert_eq!(ready, 503, "{body}");
            proxy.restore();
            Instant::now()
        })
        .await;
    stack.assert_logged("circuit breaker open", "the breakers opened during the outage");
    assert_eq!(stack.logged("dead-lettering message"), 0, "an outage is not a poison message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_mongodb_opens_the_breakers_the_edge_stays_responsive_and_they_close_when_it_heals() {
    let Some(env) = server_env() else { return };
    let uri = env.iter().find(|(k, _)| k == "RIDEHAIL__MONGODB__URI").unwrap().1.clone();
    let proxy = ridehail_contract::proxy::FaultProxy::start(mongo_address(&uri)).await;
    let env = with(
        env,
        &[
            ("RIDEHAIL__MONGODB__URI", through_proxy(&uri, proxy.port())),
            // A store call slower than 300 ms counts as slow; half of them in the window open the breaker.
            ("RIDEHAIL__RESILIENCE__STORE__SLOW_CALL_MS", "300".into()),
            ("RIDEHAIL__RESILIENCE__STORE__SLOW_CALL_RATE_PERCENT", "50".into()),
        ],
    );
    let stack = Stack::start(env).await;
    stack
        .under_load("mongodb slow (200 ms)", async |stack| {
            proxy.set_latency(Duration::from_millis(200));
            let started = Instant::now();
            let mut latencies = Vec::new();
            while started.elapsed() < fault_duration() {
                let asked = Instant::now();
                let (status, _) = stack.api.send("GET", "/health/live", None, None).await;
                latencies.push(asked.elapsed());
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            latencies.sort();
            let p99 = latencies[latencies.len() * 99 / 100];
            assert!(p99 < Duration::from_millis(100), "the edge stopped answering promptly: p99 {p99:?}");
            proxy.set_latency(Duration::ZERO);
            Instant::now()
        })
        .await;
    stack.assert_logged("circuit breaker open", "slow calls opened a breaker");
    stack.assert_logged("to=Closed", "the breakers closed again once the store healed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ride_worker_stopped_mid_load_finishes_what_it_holds_and_loses_nothing() {
    let Some(env) = server_env() else { return };
    let mut stack = Stack::start(env).await;
    let mut leaving = stack.ride_workers.remove(0);
    stack
        .under_load("ride worker SIGTERM", async |_| {
            let asked = Instant::now();
            let status = leaving.terminate();
            let took = asked.elapsed();
            assert!(status.success(), "{status:?}");
            assert!(took < Duration::from_secs(10), "the grace period is 10 s; it took {took:?}");
            tokio::time::sleep(fault_duration()).await;
            Instant::now()
        })
        .await;
}

/// How long the crashed broker stays down before it is started again.
const BROKER_DOWN: Duration = Duration::from_secs(5);

/// tansu 0.6 cannot bump an idempotent producer's epoch (`InitProducerId` for a known producer is
/// `todo!()` in its SQLite engine), and librdkafka bumps it whenever a request was in flight when
/// the broker died (or a record timed out): the broker then panics and refuses every later produce.
/// So against tansu the producers run without idempotence and with one request in flight per
/// connection (order kept); a batch the broker wrote but did not acknowledge is written again on
/// retry, and the invariants below check the handlers absorb such duplicates. docs/testing.md.
const TANSU_PRODUCER: &str = "[kafka.properties]\n\"enable.idempotence\" = \"false\"\n\
                              \"max.in.flight.requests.per.connection\" = \"1\"\n";

/// The Kafka broker restarted under load. Needs a broker that keeps its data across a restart: tansu
/// built with its SQLite storage (`scripts/install-durable-tansu`, ~15 minutes on two cores, so not in
/// the README's test command; the hosted workflow runs it). Without it: a visible SKIPPED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_broker_restarted_loses_nothing() {
    let Ok(tansu) = std::env::var("RIDEHAIL_TEST_TANSU_DURABLE") else {
        eprintln!("SKIPPED (broker restart: RIDEHAIL_TEST_TANSU_DURABLE unset; see scripts/install-durable-tansu)");
        return;
    };
    let Some(env) = server_env() else { return };
    let data = tempfile::TempDir::new().unwrap();
    let port = ridehail_contract::tls::free_port();
    let start = || {
        // An absolute path takes four slashes: tansu reads what follows `sqlite://` as a relative path.
        let storage = format!("sqlite:///{}", data.path().join("tansu.db").display());
        let mut command = std::process::Command::new(&tansu);
        command.args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")]);
        command.args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{port}"), "--storage-engine", &storage]);
        let broker = ridehail_contract::tls::Process::spawn(&mut command);
        ridehail_contract::tls::wait_for_port(port);
        broker
    };
    let mut broker = Some(start());
    let config = data.path().join("ridehail.toml");
    std::fs::write(&config, TANSU_PRODUCER).unwrap();
    let env = with(
        env,
        &[("RIDEHAIL__KAFKA__BROKERS", format!("127.0.0.1:{port}")), ("RIDEHAIL_CONFIG", config.display().to_string())],
    );
    let stack = Stack::start(env).await;
    stack
        .under_load("kafka broker restarted", async |_| {
            drop(broker.take()); // SIGKILL: a crash, not a clean stop
            tokio::time::sleep(BROKER_DOWN).await;
            broker = Some(start());
            Instant::now()
        })
        .await;
}

fn mongo_address(uri: &str) -> std::net::SocketAddr {
    let authority = uri.split("://").nth(1).unwrap().split(['/', '?']).next().unwrap();
    authority.parse().unwrap_or_else(|_| {
        let port = authority.rsplit(':').next().unwrap().parse().unwrap();
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    })
}

fn through_proxy(uri: &str, port: u16) -> String {
    let rest = uri.split("://").nth(1).unwrap();
    let path = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    format!("mongodb://127.0.0.1:{port}{path}")
}
