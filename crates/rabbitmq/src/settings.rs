use serde::Deserialize;

/// How Ridehail talks to RabbitMQ. Every field has a default that works against a local broker;
/// production sets `url` (an `amqps://` one off loopback) and `tls_ca_file` for a private CA.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitMqSettings {
    /// `amqp://user:password@host:port/vhost` or `amqps://…`. The password belongs in
    /// `RIDEHAIL__RABBITMQ__URL_FILE` (a file) in production, not inline.
    pub url: String,
    /// Prepended to every exchange and queue name: lets several deployments (or parallel test runs)
    /// share one broker. Empty in production.
    pub namespace: String,
    /// Partition streams per topic created by `ridehail topics apply` (commands and events). Changing
    /// it later remaps keys, so pick it once.
    pub partitions: u32,
    /// Partitions of the dead-letter topic (low volume).
    pub dead_letter_partitions: u32,
    /// Records a partition consumer may hold unhandled (AMQP prefetch per stream consumer).
    pub prefetch: u16,
    /// A publish not confirmed by the broker within this time fails (the caller retries it).
    pub confirm_timeout_ms: u64,
    /// Connection heartbeat: a broker or client silent this long is taken for dead. It bounds how
    /// fast a standby member takes a partition over when its owner's host vanishes (a killed process
    /// is seen at once: its socket closes).
    pub heartbeat_secs: u16,
    /// TLS: the CA that signed the broker's certificate (PEM file), for an `amqps://` URL. Without it
    /// the webpki roots are trusted.
    pub tls_ca_file: Option<String>,
}

impl std::fmt::Debug for RabbitMqSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSettings")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("partitions", &self.partitions)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish_non_exhaustive()
    }
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace: String::new(),
            partitions: 6,
            dead_letter_partitions: 1,
            prefetch: 256,
            confirm_timeout_ms: 10_000,
            heartbeat_secs: 10,
            tls_ca_file: None,
        }
    }
}

/// The URL with its password replaced, for logs and `Debug`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

impl RabbitMqSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.url.starts_with("amqp://") || self.url.starts_with("amqps://"),
            "rabbitmq.url must be an amqp:// or amqps:// URL"
        );
        anyhow::ensure!(self.partitions >= 1, "rabbitmq.partitions must be at least 1");
        anyhow::ensure!(self.dead_letter_partitions >= 1, "rabbitmq.dead_letter_partitions must be at least 1");
        anyhow::ensure!(self.prefetch >= 1, "rabbitmq.prefetch must be at least 1");
        anyhow::ensure!(self.confirm_timeout_ms >= 100, "rabbitmq.confirm_timeout_ms must be at least 100");
        anyhow::ensure!(self.tls_ca_file.is_none() || self.uses_tls(), "rabbitmq.tls_ca_file needs an amqps:// URL");
        Ok(())
    }

    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("amqps://")
    }

    /// The broker's host name (for the production check on plaintext to other hosts).
    pub fn hosts(&self) -> Vec<String> {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host_port.rsplit_once(':').map_or(host_port, |(host, _)| host),
        };
        if host.is_empty() { Vec::new() } else { vec![host.to_owned()] }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_and_hosts_are_read_from_the_url() {
        let settings = RabbitMqSettings {
            url: "amqps://ridehail:s3cret@rabbit.internal:5671/prod".into(),
            ..RabbitMqSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("ridehail:<redacted>@rabbit.internal:5671/prod"), "{shown}");
        assert_eq!(settings.hosts(), ["rabbit.internal"]);
        assert!(settings.uses_tls());
        assert_eq!(RabbitMqSettings::default().hosts(), ["127.0.0.1"]);
        let v6 = RabbitMqSettings { url: "amqp://[::1]:5672".into(), ..RabbitMqSettings::default() };
        assert_eq!(v6.hosts(), ["::1"]);
    }

    #[test]
    fn a_ca_file_needs_tls_and_the_url_needs_a_scheme() {
        let plain_with_ca = RabbitMqSettings { tls_ca_file: Some("/ca.pem".into()), ..RabbitMqSettings::default() };
        assert!(plain_with_ca.validate().is_err());
        let no_scheme = RabbitMqSettings { url: "127.0.0.1:5672".into(), ..RabbitMqSettings::default() };
        assert!(no_scheme.validate().is_err());
        RabbitMqSettings::default().validate().unwrap();
    }
}
