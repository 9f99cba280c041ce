//! Per-client limits hold across several edges: two edge processes over the same Redis count one
//! user's requests together, so the user cannot double their rate by spreading requests.

mod support;

use support::{Api, Server, as_refs, server_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_over_redis_share_a_users_rate() {
    let Some(mut env) = server_env() else { return };
    // Four requests a minute per user, four at once; everything else stays generous.
    env.retain(|(k, _)| !k.starts_with("RIDEHAIL__EDGE__LIMITS__PER_USER__"));
    env.extend([
        ("RIDEHAIL__EDGE__LIMITS__PER_USER__COUNT".to_owned(), "4".to_owned()),
        ("RIDEHAIL__EDGE__LIMITS__PER_USER__PERIOD_SECONDS".to_owned(), "60".to_owned()),
        ("RIDEHAIL__EDGE__LIMITS__PER_USER__BURST".to_owned(), "4".to_owned()),
    ]);
    let env = as_refs(&env);
    let dir = tempfile::TempDir::new().unwrap();
    support::prepare_servers(dir.path(), &env);
    let a = Server::start_service(&dir.path().join("a"), "edge", &env);
    let b = Server::start_service(&dir.path().join("b"), "edge", &env);
    let (a, b) = (Api::new(&a.url), Api::new(&b.url));
    let token = support::token_for(ridehail_events::UserId::new(), ridehail_events::Role::Rider);
    let mut statuses = Vec::new();
    for api in [&a, &b, &a, &b, &a, &b] {
        statuses.push(api.send("GET", "/v1/rides", Some(&token), None).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "the fifth request, on either edge, is over the rate");
    // Another user is not affected.
    let other = support::token_for(ridehail_events::UserId::new(), ridehail_events::Role::Rider);
    assert_eq!(b.send("GET", "/v1/rides", Some(&other), None).await.0, 200);
}
