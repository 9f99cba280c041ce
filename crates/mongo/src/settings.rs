use std::time::Duration;

use anyhow::Context;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use serde::Deserialize;

/// How Ridehail talks to MongoDB. Every default works against a local server; production sets `uri`
/// (a replica set: the event store's conflict detection needs its unique indexes, which any MongoDB
/// has, and durable writes want a majority write concern, set in the URI with `w=majority`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoSettings {
    /// A MongoDB connection string, `mongodb://[user:password@]host[:port][,host..]/[?options]` or
    /// `mongodb+srv://..`. Driver options (TLS, write concern, replica set) go in its query. A password
    /// here is never printed: `Debug` redacts it.
    pub uri: String,
    /// The database holding every Ridehail collection.
    pub database: String,
    /// Connections kept open per server even when idle, so the first requests after a quiet spell do
    /// not pay for a TCP (and TLS) handshake.
    pub min_pool_size: u32,
    /// Upper bound of connections per server. A 2-core service has at most a few dozen operations in
    /// flight, each of a few milliseconds; 16 covers that with room to spare, and caps what one
    /// process costs the server (each connection is ~1 MiB of server memory) when many replicas run.
    pub max_pool_size: u32,
    /// A TCP connect attempt fails after this long. Same-zone servers connect in about a millisecond;
    /// two seconds covers a TLS handshake on a busy machine.
    pub connect_timeout_ms: u64,
    /// An operation waits at most this long for a suitable server (e.g. a primary during an election,
    /// which takes around ten seconds at worst, or a server that is down), then fails. Three seconds
    /// lets readiness probes and callers see the outage quickly; at-least-once consumers retry.
    pub server_selection_timeout_ms: u64,
    /// Whether [`crate::open`] applies pending migrations. `None` leaves it to the binary, which
    /// typically migrates in development and the all-in-one mode and leaves production to an explicit
    /// migrate step.
    pub migrate_on_start: Option<bool>,
    /// TLS: the CA that signed the servers' certificates (PEM). Setting it turns TLS on (as does
    /// `tls=true` in the URI).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Mutual TLS: this client's certificate and key in one PEM file.
    pub tls_cert_key_file: Option<std::path::PathBuf>,
    /// Multi-event appends in one transaction: `None` (the default) when the server runs
    /// transactions (a replica set or a mongos; detected at start-up), `true` to refuse to start
    /// without them, `false` never (ordered inserts; see the event store).
    pub transactions: Option<bool>,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "ridehail".into(),
            min_pool_size: 2,
            max_pool_size: 16,
            connect_timeout_ms: 2_000,
            server_selection_timeout_ms: 3_000,
            migrate_on_start: None,
            tls_ca_file: None,
            tls_cert_key_file: None,
            transactions: None,
        }
    }
}

impl std::fmt::Debug for MongoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSettings")
            .field("uri", &redacted_uri(&self.uri))
            .field("database", &self.database)
            .field("min_pool_size", &self.min_pool_size)
            .field("max_pool_size", &self.max_pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("server_selection_timeout_ms", &self.server_selection_timeout_ms)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_key_file", &self.tls_cert_key_file)
            .field("transactions", &self.transactions)
            .finish()
    }
}

impl MongoSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.uri.trim().is_empty(), "mongodb.uri must not be empty");
        anyhow::ensure!(
            !self.database.is_empty() && !self.database.contains(['/', '\\', '.', ' ', '"', '$']),
            "mongodb.database must be a valid database name"
        );
        anyhow::ensure!(self.max_pool_size >= 1, "mongodb.max_pool_size must be at least 1");
        anyhow::ensure!(
            self.min_pool_size <= self.max_pool_size,
            "mongodb.min_pool_size must not exceed mongodb.max_pool_size"
        );
        anyhow::ensure!(self.connect_timeout_ms >= 1, "mongodb.connect_timeout_ms must be at least 1");
        anyhow::ensure!(
            self.server_selection_timeout_ms >= 1,
            "mongodb.server_selection_timeout_ms must be at least 1"
        );
        Ok(())
    }

    /// Whether the client speaks TLS to the servers.
    pub fn uses_tls(&self) -> bool {
        let query = self.uri.split_once('?').map(|(_, q)| q.to_ascii_lowercase()).unwrap_or_default();
        self.uri.starts_with("mongodb+srv://")
            || query.split('&').any(|o| o == "tls=true" || o == "ssl=true")
            || self.tls_ca_file.is_some()
            || self.tls_cert_key_file.is_some()
    }

    /// The servers' host names in the URI (for the production check on plaintext to other hosts).
    pub fn hosts(&self) -> Vec<String> {
        let Some((_, rest)) = self.uri.split_once("://") else { return Vec::new() };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
        hosts
            .split(',')
            .map(|h| match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
                None => h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned(),
            })
            .filter(|h| !h.is_empty())
            .collect()
    }
}

/// The URI with the password of its user info and any `*password*` option replaced.
pub(crate) fn redacted_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else { return uri.to_owned() };
    let authority_end = uri[scheme_end..].find(['/', '?']).map_or(uri.len(), |i| scheme_end + i);
    let mut out = match uri[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) {
        Some(at) => match uri[scheme_end..at].find(':').map(|i| scheme_end + i) {
            Some(colon) => format!("{}<redacted>{}", &uri[..=colon], &uri[at..authority_end]),
            None => uri[..authority_end].to_owned(),
        },
        None => uri[..authority_end].to_owned(),
    };
    let rest = &uri[authority_end..];
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let options: Vec<String> = query
                .split('&')
                .map(|option| match option.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=<redacted>"),
                    _ => option.to_owned(),
                })
                .collect();
            out.push_str(&options.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

/// A handle on the settings' database. The driver connects lazily and keeps a pool per server, so this
/// succeeds without a reachable server (a bad URI fails); use [`crate::ping`] to check reachability.
pub async fn connect(settings: &MongoSettings) -> anyhow::Result<Database> {
    settings.validate()?;
    // The driver's parse errors redact the addresses they quote, so a password cannot leak through them.
    let mut options = ClientOptions::parse(&settings.uri).await.context("parsing mongodb.uri")?;
    options.app_name.get_or_insert_with(|| "ridehail".to_owned());
    options.min_pool_size = Some(settings.min_pool_size);
    options.max_pool_size = Some(settings.max_pool_size);
    options.connect_timeout = Some(Duration::from_millis(settings.connect_timeout_ms));
    options.server_selection_timeout = Some(Duration::from_millis(settings.server_selection_timeout_ms));
    if settings.tls_ca_file.is_some() || settings.tls_cert_key_file.is_some() {
        let mut tls = match options.tls.take() {
            Some(mongodb::options::Tls::Enabled(tls)) => tls,
            _ => mongodb::options::TlsOptions::default(),
        };
        if let Some(ca) = &settings.tls_ca_file {
            tls.ca_file_path = Some(ca.clone());
        }
        if let Some(bundle) = &settings.tls_cert_key_file {
            tls.cert_key_file_path = Some(bundle.clone());
        }
        options.tls = Some(mongodb::options::Tls::Enabled(tls));
    }
    let client = Client::with_options(options).context("creating the MongoDB client")?;
    Ok(client.database(&settings.database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_password() {
        let settings = MongoSettings {
            uri: "mongodb://app:s3cret@db1:27017,db2/?replicaSet=rs&tlsCertificateKeyFilePassword=k3y".into(),
            ..MongoSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("mongodb://app:<redacted>@db1:27017,db2/?replicaSet=rs"), "{shown}");
        assert_eq!(redacted_uri("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017");
    }

    #[test]
    fn settings_default_and_refuse_unknown_fields() {
        let parsed: MongoSettings = serde_json::from_str(r#"{"database": "x"}"#).unwrap();
        assert_eq!(parsed, MongoSettings { database: "x".into(), ..MongoSettings::default() });
        assert!(serde_json::from_str::<MongoSettings>(r#"{"databse": "x"}"#).is_err());
        MongoSettings::default().validate().unwrap();
    }
}
