use std::collections::BTreeMap;

use serde::Deserialize;

/// How Ridehail talks to Kafka. Every field has a default that works against a local broker; production
/// sets `brokers`, `replication_factor` and, for TLS/SASL, the matching librdkafka `properties`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// `client.id` prefix; each process appends its role (e.g. `ridehail-ride-worker`).
    pub client_id: String,
    /// Prepended to every topic and consumer-group name: lets several deployments (or parallel test
    /// runs) share one cluster. Empty in production.
    pub namespace: String,
    /// Partitions per topic created by `ridehail topics apply` (commands and events). More partitions
    /// = more workers can share the load; changing it later remaps keys, so pick it once.
    pub partitions: u32,
    /// Partitions of the dead-letter topic (low volume).
    pub dead_letter_partitions: u32,
    /// Replicas per partition created by `topics apply` (3 in production, 1 on a single broker).
    pub replication_factor: i32,
    /// A member that stops heartbeating for this long loses its partitions to the others. Lower =
    /// faster take-over after a crash, higher = fewer spurious rebalances on a slow machine.
    pub session_timeout_ms: u32,
    /// How long the broker may hold a fetch waiting for data. Kafka answers as soon as data arrives,
    /// so this only bounds how often an idle consumer asks again; tansu (the test broker) answers after
    /// about half of it even when data is there, so tests set 10.
    pub fetch_wait_max_ms: u32,
    /// How long the producer waits to fill a batch. Small keeps publish latency low.
    pub linger_ms: u32,
    /// A publish not acknowledged within this time fails (and the caller retries or reports it).
    pub delivery_timeout_ms: u32,
    /// How often stored offsets (of finished records) are committed; also committed on revoke and close.
    pub auto_commit_interval_ms: u32,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanisms`). Secrets belong in files referenced here, not inline.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "ridehail".into(),
            namespace: String::new(),
            partitions: 6,
            dead_letter_partitions: 1,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            fetch_wait_max_ms: 100,
            linger_ms: 1,
            delivery_timeout_ms: 10_000,
            auto_commit_interval_ms: 500,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.brokers.trim().is_empty(), "kafka.brokers must not be empty");
        anyhow::ensure!(self.partitions >= 1, "kafka.partitions must be at least 1");
        anyhow::ensure!(self.dead_letter_partitions >= 1, "kafka.dead_letter_partitions must be at least 1");
        anyhow::ensure!(self.replication_factor >= 1, "kafka.replication_factor must be at least 1");
        anyhow::ensure!(self.session_timeout_ms >= 1_000, "kafka.session_timeout_ms must be at least 1000");
        Ok(())
    }

    /// The broker-side name of one of Ridehail's (logical) topic or group names.
    pub fn physical(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// Partitions `topics apply` gives a topic.
    pub fn partitions_of(&self, topic: &str) -> u32 {
        if topic == ridehail_events::topics::DEAD_LETTERS { self.dead_letter_partitions } else { self.partitions }
    }
}
