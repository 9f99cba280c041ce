use std::collections::BTreeMap;

use serde::Deserialize;

/// How Ridehail talks to Kafka. Every field has a default that works against a local broker; production
/// sets `brokers`, `replication_factor` and, for TLS/SASL, the matching librdkafka `properties`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
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
    /// `sasl.mechanisms`). Secrets belong in files referenced here, not inline. They override the
    /// clients' defaults (e.g. the producer's `enable.idempotence`, `linger.ms`), never what delivery
    /// at least once rests on (the consumer's group and offset handling).
    pub properties: BTreeMap<String, String>,
    /// TLS: the CA that signed the brokers' certificates (PEM file). Setting it (or a client
    /// certificate) turns TLS on.
    pub tls_ca_file: Option<String>,
    /// Mutual TLS: this client's certificate and key (PEM files).
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// SASL over TLS: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// From a file in production: `RIDEHAIL__KAFKA__SASL_PASSWORD_FILE`.
    pub sasl_password: Option<String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("password") || k.ends_with(".pem") || k.contains("secret");
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("namespace", &self.namespace)
            .field("partitions", &self.partitions)
            .field("properties", &properties)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
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
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
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
        anyhow::ensure!(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "kafka.tls_cert_file and kafka.tls_key_file go together"
        );
        if let Some(mechanism) = &self.sasl_mechanism {
            anyhow::ensure!(
                ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()),
                "kafka.sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            );
            anyhow::ensure!(
                self.sasl_username.is_some() && self.sasl_password.is_some(),
                "kafka.sasl_mechanism needs kafka.sasl_username and kafka.sasl_password"
            );
        }
        Ok(())
    }

    /// The librdkafka properties of the typed TLS and SASL settings (the pass-through `properties`
    /// win where both say something).
    pub fn security_properties(&self) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        let tls = self.tls_ca_file.is_some() || self.tls_cert_file.is_some();
        let sasl = self.sasl_mechanism.is_some();
        match (tls || sasl, sasl) {
            (true, true) => out.insert("security.protocol", "sasl_ssl".to_owned()),
            (true, false) => out.insert("security.protocol", "ssl".to_owned()),
            _ => None,
        };
        let files = [
            ("ssl.ca.location", &self.tls_ca_file),
            ("ssl.certificate.location", &self.tls_cert_file),
            ("ssl.key.location", &self.tls_key_file),
            ("sasl.mechanisms", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
        ];
        for (key, value) in files {
            if let Some(value) = value {
                out.insert(key, value.clone());
            }
        }
        out
    }

    /// Whether the clients speak TLS to the brokers.
    pub fn uses_tls(&self) -> bool {
        let protocol = self
            .properties
            .get("security.protocol")
            .cloned()
            .or_else(|| self.security_properties().remove("security.protocol"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        protocol == "ssl" || protocol == "sasl_ssl"
    }

    /// The brokers' host names (for the production check on plaintext to other hosts).
    pub fn hosts(&self) -> Vec<String> {
        self.brokers.split(',').map(|b| host_of(b.trim())).filter(|h| !h.is_empty()).collect()
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

/// The host of `host:port` (IPv6 in brackets kept without them).
fn host_of(address: &str) -> String {
    let address = address.rsplit_once("://").map_or(address, |(_, rest)| rest);
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    address.rsplit_once(':').map_or(address, |(host, _)| host).to_owned()
}
