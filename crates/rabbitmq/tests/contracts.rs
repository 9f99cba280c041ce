//! The bus contract suite and the consume suite (the same bodies the embedded and Kafka buses pass)
//! against a real RabbitMQ, each test in its own namespace so tests run in parallel on one broker;
//! then what is RabbitMQ's own: topology as code, a standby member taking a partition over.

use std::time::Duration;

use ridehail_contract::{Fixture, test_server, unique_name};
use ridehail_ports::{IncomingMessage, MessageBus, OutgoingMessage, PartitionOffset, StartFrom};
use ridehail_rabbitmq::{RabbitMqBus, RabbitMqSettings, TopicState, apply_topics};

const TOPIC: &str = "contract.topic";
const DEAD_LETTERS: &str = "contract.dead-letters";

/// Settings for a fresh namespace on the test broker, or `None` (test skipped) without one.
pub fn settings() -> Option<RabbitMqSettings> {
    let url = test_server("RIDEHAIL_TEST_RABBITMQ_URL")?;
    Some(RabbitMqSettings {
        url,
        namespace: format!("{}.", unique_name("t")),
        partitions: 3,
        ..RabbitMqSettings::default()
    })
}

async fn bus_with_topic() -> Option<(RabbitMqSettings, RabbitMqBus)> {
    let settings = settings()?;
    apply_topics(&settings, &[TOPIC]).await.unwrap();
    let bus = RabbitMqBus::connect(&settings, "contract").unwrap();
    Some((settings, bus))
}

/// A bus in a fresh namespace with the contract's topics (three partitions; the dead-letter topic
/// too). RabbitMQ streams honour every start position, so nothing is marked as lacking.
async fn fixture() -> Option<Fixture<RabbitMqBus>> {
    let settings = settings()?;
    apply_topics(&settings, &[TOPIC, DEAD_LETTERS]).await.unwrap();
    let bus = RabbitMqBus::connect(&settings, "contract").unwrap();
    Some(Fixture::new(std::sync::Arc::new(bus)).with_topics(TOPIC, DEAD_LETTERS))
}
ridehail_contract::bus_suite!(fixture);
ridehail_contract::consumer_suite!(fixture);

fn record(n: u32) -> OutgoingMessage {
    OutgoingMessage { key: format!("key-{n}"), headers: vec![], payload: n.to_be_bytes().to_vec() }
}

fn number(message: &IncomingMessage) -> u32 {
    u32::from_be_bytes(message.payload[..4].try_into().unwrap())
}

fn done(got: &[IncomingMessage]) -> Vec<PartitionOffset> {
    got.iter()
        .map(|m| PartitionOffset { topic: m.topic.clone(), partition: m.partition, offset: m.offset + 1 })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_is_safe_to_run_twice() {
    let Some(settings) = settings() else { return };
    let topics = &ridehail_events::topics::ALL[..];
    let first = apply_topics(&settings, topics).await.unwrap();
    assert!(first.iter().all(|r| r.state == TopicState::Created), "{first:?}");
    let dead_letters = first.iter().find(|r| r.topic.ends_with(ridehail_events::topics::DEAD_LETTERS)).unwrap();
    assert_eq!(dead_letters.partitions, settings.dead_letter_partitions);
    let second = apply_topics(&settings, topics).await.unwrap();
    assert!(second.iter().all(|r| r.state == TopicState::Unchanged), "{second:?}");
    let bus = RabbitMqBus::connect(&settings, "check").unwrap();
    assert_eq!(bus.partitions(ridehail_events::topics::RIDE_COMMANDS).await.unwrap(), 3);

    // A different partition count is reported, not applied.
    let wider = RabbitMqSettings { partitions: 5, ..settings.clone() };
    let third = apply_topics(&wider, &[ridehail_events::topics::RIDE_EVENTS]).await.unwrap();
    assert_eq!(third[0].state, TopicState::PartitionMismatch { actual: 3 });
    assert_eq!(bus.partitions(ridehail_events::topics::RIDE_EVENTS).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_an_unreachable_broker() {
    let Some(settings) = settings() else { return };
    let bus = RabbitMqBus::connect(&settings, "ping").unwrap();
    bus.ping().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let nowhere = RabbitMqBus::connect(&RabbitMqSettings { url, ..settings }, "ping").unwrap();
    assert!(nowhere.ping().await.is_err());
}

async fn read(
    member: &mut Box<dyn ridehail_ports::Subscription>,
    want: usize,
    within: Duration,
) -> Vec<IncomingMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(member.poll(100, Duration::from_millis(100)).await.unwrap());
    }
    got
}

/// One active member per partition: a second member of the group stands by and reads nothing while
/// the first is there; when the first leaves it takes every partition over from what the first
/// committed, in order, and nothing committed is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_member_takes_the_partitions_over_from_the_committed_offsets() {
    let Some((_, bus)) = bus_with_topic().await else { return };
    bus.publish(TOPIC, (0..30).map(record).collect()).await.unwrap();
    let mut first = bus.subscribe("shared", &[TOPIC], StartFrom::Committed).await.unwrap();
    let mut standby = bus.subscribe("shared", &[TOPIC], StartFrom::Committed).await.unwrap();
    let got = read(&mut first, 30, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 30, "the first member owns every partition");
    // Finish (commit) the first 20 in publish order of each partition only up to record 19.
    let finished: Vec<IncomingMessage> = got.iter().filter(|m| number(m) < 20).cloned().collect();
    first.commit(&done(&finished)).await.unwrap();
    assert!(standby.poll(100, Duration::from_millis(500)).await.unwrap().is_empty(), "the standby reads nothing");
    assert!(standby.end_offsets().await.unwrap().is_empty(), "the standby owns no partition");

    drop(first);
    let taken = read(&mut standby, 10, Duration::from_secs(20)).await;
    let mut numbers: Vec<u32> = taken.iter().map(number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (20..30).collect::<Vec<_>>(), "resumed after the committed records, none lost");
    for partition in 0..3 {
        let offsets: Vec<u64> = taken.iter().filter(|m| m.partition == partition).map(|m| m.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in order within partition {partition}: {offsets:?}");
    }
    let committed = standby.committed().await.unwrap();
    assert_eq!(committed.len(), 3, "the new owner knows each partition's committed offset: {committed:?}");
}

/// A commit survives the member: a new member of the group (after every member left) starts after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_every_member_left() {
    let Some((_, bus)) = bus_with_topic().await else { return };
    let group = unique_name("g");
    bus.publish(TOPIC, (0..5).map(record).collect()).await.unwrap();
    let mut member = bus.subscribe(&group, &[TOPIC], StartFrom::Committed).await.unwrap();
    let got = read(&mut member, 5, Duration::from_secs(20)).await;
    member.commit(&done(&got)).await.unwrap();
    drop(member);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.publish(TOPIC, (5..8).map(record).collect()).await.unwrap();
    let mut again = bus.subscribe(&group, &[TOPIC], StartFrom::Committed).await.unwrap();
    let more = read(&mut again, 3, Duration::from_secs(20)).await;
    let mut numbers: Vec<u32> = more.iter().map(number).collect();
    numbers.extend(again.poll(100, Duration::from_millis(300)).await.unwrap().iter().map(number));
    numbers.sort_unstable();
    assert_eq!(numbers, [5, 6, 7]);
}

/// The broker unreachable for a while (every connection cut, new ones refused): publishing fails
/// meanwhile and works again after, and a group member reconnects by itself, takes its leases back
/// and goes on after what it committed — nothing lost, nothing committed read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_member_come_back_after_the_broker_was_unreachable() {
    use ridehail_contract::proxy::FaultProxy;
    let Some((settings, direct)) = bus_with_topic().await else { return };
    let authority = settings.url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let proxy = FaultProxy::start(authority.parse().unwrap()).await;
    let url = settings.url.replace(authority, &format!("127.0.0.1:{}", proxy.port()));
    let proxied = RabbitMqBus::connect(&RabbitMqSettings { url, ..settings.clone() }, "fault").unwrap();
    let group = unique_name("g");
    let mut member = proxied.subscribe(&group, &[TOPIC], StartFrom::Committed).await.unwrap();
    proxied.publish(TOPIC, (0..5).map(record).collect()).await.unwrap();
    let first = read(&mut member, 5, Duration::from_secs(20)).await;
    member.commit(&done(&first)).await.unwrap();

    proxy.cut();
    assert!(proxied.publish(TOPIC, vec![record(99)]).await.is_err(), "a publish to an unreachable broker fails");
    assert!(member.poll(10, Duration::from_millis(200)).await.is_err(), "the member notices the broker is gone");
    direct.publish(TOPIC, (5..8).map(record).collect()).await.unwrap();
    proxy.restore();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxied.publish(TOPIC, (8..10).map(record).collect()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the publisher never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut numbers = Vec::new();
    while numbers.iter().filter(|n| **n != 99).count() < 5 && tokio::time::Instant::now() < deadline {
        match member.poll(100, Duration::from_millis(200)).await {
            Ok(got) => numbers.extend(got.iter().map(number)),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Record 99's publish failed for the caller, but the broker may have stored it before the cut
    // took its confirm (at least once: the caller retries it, a duplicate is possible, a loss is not).
    numbers.retain(|n| *n != 99);
    numbers.sort_unstable();
    assert_eq!(numbers, [5, 6, 7, 8, 9], "resumed after the committed records, none lost");
}
