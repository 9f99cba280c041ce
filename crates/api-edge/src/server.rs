//! The edge's HTTP server: hyper's HTTP/1.1 connections under our own accept loop, so that one
//! client cannot take the API down.
//!
//! - At most `edge.max_connections` connections at once; beyond that new ones wait in the listen
//!   backlog (the loop stops accepting), so idle or slow sockets cannot exhaust the process.
//! - A request's headers must arrive within `edge.header_read_timeout_seconds`, which is also how long
//!   an idle keep-alive connection is kept (hyper's header-read timer runs between requests too).
//! - Bodies are read under their own deadline before a request takes a place in flight (see
//!   [`crate::router`]).
//! - HTTPS with rustls (TLS 1.2 and 1.3, ring): the certificate and key come from PEM files and are
//!   reloaded when the files change, without a restart; plain HTTP on the TLS port fails the
//!   handshake. The handshake itself has a deadline.
//! - Shutdown: the listener closes, every connection finishes the request in hand and closes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ridehail_ports::RetryPolicy;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::AppState;

/// How failing accepts (out of file descriptors) are waited out.
const ACCEPT_RETRY: RetryPolicy = RetryPolicy::unbounded(10, 1_000);

/// HTTPS at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// How often the files are checked for a new certificate, in seconds.
    #[serde(default = "default_reload_seconds")]
    pub reload_seconds: u64,
    /// `Strict-Transport-Security: max-age` sent on every answer, in seconds (0: no header).
    #[serde(default = "default_hsts_seconds")]
    pub hsts_max_age_seconds: u64,
}

fn default_reload_seconds() -> u64 {
    30
}

fn default_hsts_seconds() -> u64 {
    365 * 24 * 3600
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate currently served, swapped when the files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    current: arc_swap::ArcSwap<CertifiedKey>,
    /// A hash of the files the current certificate was read from.
    loaded_from: std::sync::Mutex<[u8; 32]>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cert = std::fs::read(cert_file).with_context(|| format!("reading {}", cert_file.display()))?;
    let key = std::fs::read(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    Ok((cert, key))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(cert);
    hasher.update([0]);
    hasher.update(key);
    hasher.finalize().into()
}

fn certified_key(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>().context("the certificate file is not PEM")?;
    anyhow::ensure!(!chain.is_empty(), "the certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key).context("the key file holds no private key")?;
    CertifiedKey::from_der(chain, key, provider).context("the key does not match the certificate")
}

impl ReloadingCertificate {
    pub fn load(config: &TlsConfig, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let (cert, key) = read_pair(&config.cert_file, &config.key_file)?;
        let current = certified_key(&cert, &key, &provider)?;
        Ok(Self {
            current: arc_swap::ArcSwap::from_pointee(current),
            loaded_from: std::sync::Mutex::new(digest(&cert, &key)),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            provider,
        })
    }

    /// Reads the files again; serves the new pair if they changed and make a valid pair (a
    /// certificate written before its key is not valid yet: the next check picks the pair up).
    pub fn reload(&self) -> anyhow::Result<bool> {
        let (cert, key) = read_pair(&self.cert_file, &self.key_file)?;
        let seen = digest(&cert, &key);
        let mut loaded = self.loaded_from.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == seen {
            return Ok(false);
        }
        let fresh = certified_key(&cert, &key, &self.provider)?;
        self.current.store(Arc::new(fresh));
        *loaded = seen;
        Ok(true)
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 only, HTTP/1.1 by ALPN, certificates from
/// `resolver`.
pub fn tls_config(resolver: Arc<ReloadingCertificate>) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(resolver.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the edge on `listener` until `shutdown`, then stops accepting and lets every connection
/// finish the request in hand.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = state.config.clone();
    let tls = match &config.tls {
        Some(tls) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let resolver = Arc::new(ReloadingCertificate::load(tls, provider)?);
            spawn_reloader(resolver.clone(), Duration::from_secs(tls.reload_seconds.max(1)), shutdown.clone());
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(resolver)?)))
        }
        None => None,
    };
    // Live updates: this edge follows the ride events on the bus, and its open streams end when it
    // shuts down (before the graceful wait, which would otherwise wait for them).
    let live = tokio::spawn(state.live.clone().follow(state.backend.bus.clone(), shutdown.clone()));
    {
        let (streams, shutdown) = (state.shutdown.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            streams.cancel();
        });
    }
    let router = crate::router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_seconds))
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut accept_waits = ACCEPT_RETRY.delays();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit?,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_waits = ACCEPT_RETRY.delays();
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    let wait = accept_waits.next().unwrap_or(Duration::from_millis(ACCEPT_RETRY.max_delay_ms));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "accepting a connection failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let served = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    match live.await {
        Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "the live-update feed stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the live-update feed panicked"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

fn spawn_reloader(resolver: Arc<ReloadingCertificate>, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            match resolver.reload() {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "TLS certificate not reloaded; serving the previous one")
                }
            }
        }
    });
}
