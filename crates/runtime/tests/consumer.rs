//! The consume loop on the embedded bus: order per partition, poison messages to the dead-letter
//! topic without stalling, retries with backoff, commits only after the work. The bodies live in the
//! contract module and run against the Kafka bus too.

use std::sync::Arc;

use ridehail_runtime::contract;
use ridehail_runtime::embedded::EmbeddedBus;
use ridehail_runtime::ports::MessageBus;
use tempfile::TempDir;

const TOPIC: &str = "work";
const DLQ: &str = "dead";

fn bus() -> (TempDir, Arc<dyn MessageBus>) {
    let dir = TempDir::new().unwrap();
    let bus = EmbeddedBus::open(&dir.path().join("bus"), &[(TOPIC, 2), (DLQ, 1)]).unwrap();
    (dir, Arc::new(bus))
}

macro_rules! consumer_case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let (_dir, bus) = bus();
            contract::$name(bus, TOPIC, DLQ).await;
        }
    };
}

consumer_case!(consumer_dead_letters_poison_intact_and_moves_on_in_order);
consumer_case!(consumer_retries_transient_failures_and_dead_letters_after_the_attempts);
consumer_case!(consumer_retries_unfinished_records_and_never_dead_letters_them);
consumer_case!(consumer_commits_after_the_work_so_a_restart_resumes_after_it);
consumer_case!(consumer_partitions_do_not_wait_for_each_other);
