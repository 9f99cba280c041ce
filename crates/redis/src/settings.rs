use std::time::Duration;

use serde::Deserialize;

/// How Ridehail talks to Redis. Every default works against a local server; production sets `url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` with TLS support compiled in). A password
    /// here is never printed: `Debug` redacts it.
    pub url: String,
    /// Prepended to every key and channel, so several deployments (or parallel tests) share one server.
    /// Must not contain `{` or `}`: it is part of the locator's hash tag.
    pub key_prefix: String,
    /// Multiplexed connections, used round-robin. Each one pipelines every concurrent request over one
    /// socket driven by one task; two spread that work over a 2-core service's threads without
    /// multiplying server-side clients (measured: one connection already gives ~340k GET/s).
    pub connections: usize,
    /// A connection attempt fails after this long. Loopback or same-zone Redis connects in well under
    /// a millisecond; a second covers a slow TLS handshake while keeping start-up and reconnects snappy.
    pub connect_timeout_ms: u64,
    /// A command without an answer after this long fails. Redis answers in well under a millisecond;
    /// 500 ms means something is wrong, and the cache decorators then fall back to the inner store
    /// rather than make the request wait.
    pub response_timeout_ms: u64,
    /// How long a cached ride view or profile lives. Writers refresh entries on every change, so the
    /// TTL mainly evicts cold entries; it also bounds how long a stale entry can survive a Redis
    /// failure during a writer's update.
    pub cache_ttl_seconds: u64,
    /// How much longer an entry is kept past its TTL, to be served (marked stale) while the store
    /// behind the cache is down.
    pub cache_stale_seconds: u64,
    /// How long a command's status stays readable: a day covers any client polling or retrying.
    pub command_status_ttl_seconds: u64,
    /// While Redis is failing, the cache logs at most one warning per interval instead of one per
    /// request.
    pub fallback_log_interval_seconds: u64,
    /// After a Redis failure, the cache decorators go straight to the inner store for this long
    /// before trying Redis again, so an outage costs one timeout per interval, not one per request.
    pub cache_retry_interval_ms: u64,
    /// TLS (`rediss://` URLs): the CA that signed the server's certificate (PEM); without it the
    /// usual public roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Mutual TLS: this client's certificate and key (PEM files).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "ridehail:".into(),
            connections: 2,
            connect_timeout_ms: 1_000,
            response_timeout_ms: 500,
            cache_ttl_seconds: 300,
            cache_stale_seconds: 86_400,
            command_status_ttl_seconds: 86_400,
            fallback_log_interval_seconds: 30,
            cache_retry_interval_ms: 1_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connections", &self.connections)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("cache_ttl_seconds", &self.cache_ttl_seconds)
            .field("cache_stale_seconds", &self.cache_stale_seconds)
            .field("command_status_ttl_seconds", &self.command_status_ttl_seconds)
            .field("fallback_log_interval_seconds", &self.fallback_log_interval_seconds)
            .field("cache_retry_interval_ms", &self.cache_retry_interval_ms)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish()
    }
}

impl RedisSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.url.trim().is_empty(), "redis.url must not be empty");
        anyhow::ensure!(
            !self.key_prefix.contains(['{', '}']),
            "redis.key_prefix must not contain '{{' or '}}' (it is part of a cluster hash tag)"
        );
        anyhow::ensure!(self.connections >= 1, "redis.connections must be at least 1");
        anyhow::ensure!(self.connect_timeout_ms >= 1, "redis.connect_timeout_ms must be at least 1");
        anyhow::ensure!(self.response_timeout_ms >= 1, "redis.response_timeout_ms must be at least 1");
        anyhow::ensure!(self.cache_ttl_seconds >= 1, "redis.cache_ttl_seconds must be at least 1");
        anyhow::ensure!(self.command_status_ttl_seconds >= 1, "redis.command_status_ttl_seconds must be at least 1");
        anyhow::ensure!(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "redis.tls_cert_file and redis.tls_key_file go together"
        );
        anyhow::ensure!(
            self.uses_tls() || (self.tls_ca_file.is_none() && self.tls_cert_file.is_none()),
            "redis TLS files are set but redis.url is not rediss://"
        );
        Ok(())
    }

    /// Whether the client speaks TLS (a `rediss://` URL).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://") || self.url.starts_with("valkeys://")
    }

    /// The server's host name (for the production check on plaintext to other hosts).
    pub fn hosts(&self) -> Vec<String> {
        let Some((_, rest)) = self.url.split_once("://") else { return Vec::new() };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        vec![host.to_owned()]
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

/// The URL with any password replaced, for logs and `Debug`.
pub(crate) fn redacted_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let authority_end = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else {
        return url.to_owned();
    };
    match url[scheme_end..at].find(':').map(|i| scheme_end + i) {
        Some(colon) => format!("{}<redacted>{}", &url[..=colon], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password_in_the_url() {
        let settings = RedisSettings { url: "redis://app:s3cret@cache:6379/2".into(), ..RedisSettings::default() };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("redis://app:<redacted>@cache:6379/2"), "{printed}");
    }

    #[test]
    fn urls_without_a_password_print_unchanged() {
        assert_eq!(redacted_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted_url("redis://user@host:1/0"), "redis://user@host:1/0");
        assert_eq!(redacted_url("redis://:pw@host"), "redis://:<redacted>@host");
    }

    #[test]
    fn the_defaults_are_valid_and_prefixes_with_braces_are_not() {
        RedisSettings::default().validate().unwrap();
        let braces = RedisSettings { key_prefix: "a{b}".into(), ..RedisSettings::default() };
        assert!(braces.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused_and_missing_ones_default() {
        let parsed: RedisSettings = serde_json::from_str(r#"{"url": "redis://h:1"}"#).unwrap();
        assert_eq!(parsed, RedisSettings { url: "redis://h:1".into(), ..RedisSettings::default() });
        assert!(serde_json::from_str::<RedisSettings>(r#"{"urll": "x"}"#).is_err());
    }
}
