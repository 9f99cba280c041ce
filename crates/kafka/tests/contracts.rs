//! The bus contract suite (the same bodies the embedded bus passes) against a real Kafka-protocol
//! broker, each test in its own namespace so tests run in parallel on one broker.

use ridehail_contract::{Capability, Fixture, test_server, unique_name};
use ridehail_kafka::{KafkaBus, KafkaSettings, TopicState, apply_topics};
use ridehail_ports::{MessageBus, OutgoingMessage, PartitionOffset, StartFrom};

const TOPIC: &str = "contract.topic";
const DEAD_LETTERS: &str = "contract.dead-letters";

/// Settings for a fresh namespace on the test broker, or `None` (test skipped) without one.
pub fn settings() -> Option<KafkaSettings> {
    let brokers = test_server("RIDEHAIL_TEST_KAFKA_BROKERS")?;
    Some(KafkaSettings {
        brokers,
        namespace: format!("{}.", unique_name("t")),
        partitions: 3,
        // Join a group in ~3 s instead of ~5 s (tansu waits half the session timeout).
        session_timeout_ms: 6_000,
        // tansu holds a fetch for about half of this even when records are waiting.
        fetch_wait_max_ms: 10,
        ..KafkaSettings::default()
    })
}

async fn bus_with_topic() -> Option<KafkaBus> {
    let settings = settings()?;
    apply_topics(&settings, &[TOPIC]).await.unwrap();
    Some(KafkaBus::connect(&settings, "contract").unwrap())
}

/// A bus in a fresh namespace with the contract's topics (three partitions; the dead-letter topic
/// too), marked as lacking faithful offset lookups where the broker does (tansu).
async fn fixture() -> Option<Fixture<KafkaBus>> {
    let settings = settings()?;
    apply_topics(&settings, &[TOPIC, DEAD_LETTERS]).await.unwrap();
    let bus = KafkaBus::connect(&settings, "contract").unwrap();
    let mut fixture = Fixture::new(std::sync::Arc::new(bus)).with_topics(TOPIC, DEAD_LETTERS);
    if !server_lists_offsets_faithfully(&settings).await {
        fixture = fixture.lacking(Capability::OffsetLookup, UNFAITHFUL_REASON);
    }
    Some(fixture)
}
ridehail_contract::bus_suite!(fixture);
ridehail_contract::consumer_suite!(fixture);

/// Whether the broker answers ListOffsets faithfully. tansu does not: it reports a partition's high
/// watermark as the last *batch's* base offset + 1 (so `Latest` starts inside the last multi-record
/// batch) and answers every timestamp lookup with the earliest offset. Real Kafka does both right.
async fn server_lists_offsets_faithfully(settings: &KafkaSettings) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let settings = KafkaSettings { partitions: 1, ..settings.clone() };
    apply_topics(&settings, &["probe"]).await.unwrap();
    let bus = KafkaBus::connect(&settings, "probe").unwrap();
    let two = (0..2).map(|n| OutgoingMessage { key: "k".into(), headers: vec![], payload: vec![n] }).collect();
    bus.publish("probe", two).await.unwrap();
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &settings.brokers).create().unwrap();
    let topic = settings.physical("probe");
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).timestamp_millis();
    let (high, by_time) = tokio::task::spawn_blocking(move || {
        let timeout = std::time::Duration::from_secs(5);
        let (_, high) = consumer.fetch_watermarks(&topic, 0, timeout).unwrap();
        let by_time = consumer.offsets_for_timestamp(future, timeout).unwrap_or_default();
        (high, by_time.elements().first().map(|e| e.offset()))
    })
    .await
    .unwrap();
    high == 2 && !matches!(by_time, Some(rdkafka::Offset::Offset(0)))
}

const UNFAITHFUL_REASON: &str =
    "server lacks faithful ListOffsets: high watermark and timestamp lookups; tansu, see docs/testing.md";

/// Start positions checked on any broker; timestamps only where the broker looks them up faithfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_offset_and_timestamp_starts_read_from_there() {
    let Some(settings) = settings() else { return };
    let faithful = server_lists_offsets_faithfully(&settings).await;
    apply_topics(&settings, &[TOPIC]).await.unwrap();
    let bus = KafkaBus::connect(&settings, "contract").unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for n in 0..3u8 {
        let record = OutgoingMessage { key: "k".into(), headers: vec![], payload: vec![n] };
        bus.publish(TOPIC, vec![record]).await.unwrap();
    }
    let read = |start: StartFrom, want: usize| {
        let bus = bus.clone();
        async move {
            let mut sub = bus.subscribe(&unique_name("g"), &[TOPIC], start).await.unwrap();
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while got.len() < want && tokio::time::Instant::now() < deadline {
                got.extend(sub.poll(10, std::time::Duration::from_millis(100)).await.unwrap());
            }
            got.extend(sub.poll(10, std::time::Duration::from_millis(200)).await.unwrap());
            got
        }
    };
    let all = read(StartFrom::Earliest, 3).await;
    assert_eq!(all.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [0, 1, 2]);
    let second = &all[1];
    let from = PartitionOffset { topic: TOPIC.into(), partition: second.partition, offset: second.offset };
    let tail = read(StartFrom::Offsets(vec![from]), 2).await;
    assert_eq!(tail.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [1, 2]);
    if !faithful {
        eprintln!("SKIPPED (timestamp starts: {UNFAITHFUL_REASON})");
        return;
    }
    let by_time = read(StartFrom::Timestamp(before), 3).await;
    assert_eq!(by_time.len(), 3);
    let future = read(StartFrom::Timestamp(chrono::Utc::now() + chrono::Duration::days(1)), 0).await;
    assert!(future.is_empty());
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
    let bus = KafkaBus::connect(&settings, "check").unwrap();
    assert_eq!(bus.partitions(ridehail_events::topics::RIDE_COMMANDS).await.unwrap(), 3);

    // A different partition count is reported, not applied.
    let wider = KafkaSettings { partitions: 5, ..settings };
    let third = apply_topics(&wider, &[ridehail_events::topics::RIDE_EVENTS]).await.unwrap();
    assert_eq!(third[0].state, TopicState::PartitionMismatch { actual: 3 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_an_unreachable_broker() {
    let Some(settings) = settings() else { return };
    let bus = KafkaBus::connect(&settings, "ping").unwrap();
    bus.ping().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere =
        KafkaBus::connect(&KafkaSettings { brokers: format!("127.0.0.1:{port}"), ..settings }, "ping").unwrap();
    assert!(nowhere.ping().await.is_err());
}

/// Two members of a group share the partitions; when one leaves, the other takes its partitions over
/// and resumes from what the leaver committed (nothing finished is read again, nothing is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_partitions_and_one_takes_over_when_the_other_leaves() {
    use std::collections::BTreeSet;
    use std::time::Duration;
    let Some(bus) = bus_with_topic().await else { return };
    let record =
        |n: u32| OutgoingMessage { key: format!("key-{n}"), headers: vec![], payload: n.to_be_bytes().to_vec() };
    let number = |m: &ridehail_ports::IncomingMessage| u32::from_be_bytes(m.payload[..4].try_into().unwrap());
    bus.publish(TOPIC, (0..30).map(record).collect()).await.unwrap();

    let mut a = bus.subscribe("shared", &[TOPIC], StartFrom::Committed).await.unwrap();
    let mut b = bus.subscribe("shared", &[TOPIC], StartFrom::Committed).await.unwrap();
    let (mut seen_a, mut seen_b) = (BTreeSet::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    // Keep both polling (a member that stops polling cannot take part in the rebalance), committing
    // what each one read, until both have partitions and every record is read.
    while (seen_a.len() + seen_b.len() < 30 || seen_a.is_empty() || seen_b.is_empty())
        && tokio::time::Instant::now() < deadline
    {
        for (member, seen) in [(&mut a, &mut seen_a), (&mut b, &mut seen_b)] {
            let got = member.poll(100, Duration::from_millis(100)).await.unwrap();
            let done: Vec<PartitionOffset> = got
                .iter()
                .map(|m| PartitionOffset { topic: m.topic.clone(), partition: m.partition, offset: m.offset + 1 })
                .collect();
            member.commit(&done).await.unwrap();
            seen.extend(got.iter().map(number));
        }
        if seen_a.len() + seen_b.len() >= 30 && (seen_a.is_empty() || seen_b.is_empty()) {
            // Everything went to the first member before the second joined: publish more so the
            // second, once it has partitions, gets some.
            bus.publish(TOPIC, (100..110).map(record).collect()).await.unwrap();
        }
    }
    assert!(!seen_a.is_empty() && !seen_b.is_empty(), "both members got partitions: {seen_a:?} / {seen_b:?}");
    let all: BTreeSet<u32> = seen_a.union(&seen_b).copied().collect();
    assert!((0..30).all(|n| all.contains(&n)), "every record read by one of them: {all:?}");

    drop(b); // Leaves the group after committing what it finished.
    bus.publish(TOPIC, (200..230).map(record).collect()).await.unwrap();
    let mut after = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while after.len() < 30 && tokio::time::Instant::now() < deadline {
        let got = a.poll(100, Duration::from_millis(200)).await.unwrap();
        after.extend(got.iter().map(number));
    }
    assert_eq!(after.iter().filter(|n| **n >= 200).count(), 30, "the survivor took every partition over");
    assert!(after.iter().all(|n| *n >= 100), "nothing committed before the hand-over is read again: {after:?}");
}

/// Finished records are committed while the member runs (not only when it leaves): a crash loses at
/// most what finished since the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_offsets_are_committed_while_running() {
    use std::time::Duration;
    let Some(bus) = bus_with_topic().await else { return };
    let record =
        |n: u32| OutgoingMessage { key: format!("key-{n}"), headers: vec![], payload: n.to_be_bytes().to_vec() };
    bus.publish(TOPIC, (0..30).map(record).collect()).await.unwrap();
    let mut member = bus.subscribe("running", &[TOPIC], StartFrom::Committed).await.unwrap();
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut committed = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let got = member.poll(100, Duration::from_millis(100)).await.unwrap();
        read += got.len();
        let done: Vec<PartitionOffset> = got
            .iter()
            .map(|m| PartitionOffset { topic: m.topic.clone(), partition: m.partition, offset: m.offset + 1 })
            .collect();
        member.commit(&done).await.unwrap();
        if read == 30 {
            committed = member.committed().await.unwrap();
            if committed.iter().map(|c| c.offset).sum::<u64>() == 30 {
                break;
            }
        }
    }
    assert_eq!(read, 30);
    assert_eq!(committed.iter().map(|c| c.offset).sum::<u64>(), 30, "{committed:?}");
}
