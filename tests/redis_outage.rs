//! Redis goes away under a running system: reads are still answered from MongoDB (through the cache's
//! fallback) and readiness says which dependency is down. The test runs its own Redis so that killing
//! it disturbs no other test.

mod support;

use support::{Api, PrivateRedis, RIDER_EMAIL, RIDER_PASSWORD, Server, as_refs, readme_session, server_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_mongodb_when_redis_dies_and_readiness_says_so() {
    let Some(mut env) = server_env() else { return };
    let mut redis = PrivateRedis::start();
    env.retain(|(key, _)| key != "RIDEHAIL__REDIS__URL");
    env.push(("RIDEHAIL__REDIS__URL".into(), redis.url.clone()));
    let env = as_refs(&env);
    let dir = tempfile::TempDir::new().unwrap();
    support::prepare_servers(dir.path(), &env);
    let edge = Server::start_service(dir.path(), "edge", &env);
    let _workers = [
        support::start_worker_with(dir.path(), "user-worker", &env),
        support::start_worker_with(dir.path(), "ride-worker", &env),
    ];
    let api = Api::new(&edge.url);
    let ride_id = readme_session(&api).await;
    let (_, token) = api.login(RIDER_EMAIL, RIDER_PASSWORD).await;
    let ride_path = format!("/v1/rides/{ride_id}");
    let (status, cached) = api.send("GET", &ride_path, Some(&token), None).await;
    assert_eq!(status, 200, "{cached}");
    let (_, me_cached) = api.send("GET", "/v1/me", Some(&token), None).await;
    let (status, _) = api.send("GET", "/health/ready", None, None).await;
    assert_eq!(status, 200);

    redis.kill();

    // Several reads, so the fallback path (and its once-per-interval warning) is taken repeatedly.
    for _ in 0..5 {
        let (status, ride) = api.send("GET", &ride_path, Some(&token), None).await;
        assert_eq!((status, &ride), (200, &cached), "the ride is read from MongoDB");
        let (status, me) = api.send("GET", "/v1/me", Some(&token), None).await;
        assert_eq!((status, &me), (200, &me_cached), "the profile is read from MongoDB");
    }
    let (status, ready) = api.send("GET", "/health/ready", None, None).await;
    assert_eq!(status, 503, "{ready}");
    let failing: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failing.contains(&"driver_locator") && failing.contains(&"command_status"), "{ready}");
    assert!(!failing.contains(&"ride_views") && !failing.contains(&"event_store"), "{ready}");
}
