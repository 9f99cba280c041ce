//! Graceful shutdown under load: `SIGTERM` while 300 ride requests a second flow into the one-process
//! system, with a client trickling a request body. The process stops taking connections, answers what
//! it holds, finishes the records in hand, commits and exits within its grace period; the slow client
//! does not hold it. After a restart on the same data directory, every request that got a `202`
//! reaches its final outcome.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Api, Server, load};
use tokio::io::AsyncWriteExt as _;

const GRACE_SECONDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_what_it_holds_exits_in_time_and_loses_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut env = support::load_test_limits();
    env.push((support::JWT_SECRET_VAR.into(), support::TEST_JWT_SECRET.into()));
    env.push(("RIDEHAIL__EDGE__MAX_IN_FLIGHT".into(), "4096".into()));
    env.push(("RIDEHAIL__SHUTDOWN_GRACE_SECONDS".into(), GRACE_SECONDS.to_string()));
    let env = support::as_refs(&env);
    let mut server = Server::start(dir.path(), &env);
    let api = Arc::new(Api::new(&server.url));

    // A client trickling a body, still at it when the signal comes.
    let address = server.url.trim_start_matches("http://").to_owned();
    let token = support::token_for(ridehail_events::UserId::new(), ridehail_events::Role::Rider);
    let slow = tokio::spawn(async move {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await else { return };
        let head = format!(
            "POST /v1/rides HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 1000\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes()).await;
        for _ in 0..60 {
            if stream.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let riding = tokio::spawn(load::ride_requests(api.clone(), 300, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    });
    // The load goes on through the shutdown: requests after it are refused or unanswered, never lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = exit.await.unwrap();
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let tally = riding.await.unwrap();
    slow.abort();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(GRACE_SECONDS + 1), "exit took {took:?}, grace is {GRACE_SECONDS} s");
    assert!(tally.accepted.len() > 300, "the load ran: {} accepted, refused {:?}", tally.accepted.len(), tally.refused);

    // Restarted on the same data: every 202 gets its outcome.
    let server = Server::start(dir.path(), &env);
    let api = Api::new(&server.url);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = tally.accepted.clone();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} commands without an outcome after the restart", pending.len());
        let mut still = Vec::new();
        for request in pending {
            let path = format!("/v1/commands/{}", request.command_id);
            let (code, body) = load::try_send(&api, "GET", &path, &request.token, None).await;
            assert_eq!(code, 200, "{body}");
            match body["state"].as_str() {
                Some("accepted") => {}
                Some("pending") => still.push(request),
                other => panic!("a ride request came to {other:?}: {body}"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "shutdown under load: exited in {took:.1?}; {} requests accepted, all with an outcome after the restart; \
         refused during the shutdown: {:?}",
        tally.accepted.len(),
        tally.refused
    );
}
