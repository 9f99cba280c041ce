//! A TCP proxy for fault tests: it forwards a loopback port to a server and, on command, cuts every
//! connection and refuses new ones (the server is unreachable), or adds latency to everything it
//! forwards (the server is slow). No maintained crate does this without its own server process (see
//! docs/testing.md), so it is a small piece of tokio here, used by tests only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Faults {
    refusing: AtomicBool,
    latency_ms: AtomicU64,
    /// Cancelled to cut every open connection; replaced by a fresh one for the next.
    cut: std::sync::Mutex<CancellationToken>,
}

/// Forwards `127.0.0.1:port()` to the upstream until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts forwarding to `upstream` (inside a Tokio runtime).
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let stop = CancellationToken::new();
        let (accepting, until) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = until.cancelled() => return,
                };
                if accepting.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (faults, cut) = (accepting.clone(), accepting.cut.lock().unwrap().clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, &faults) => {}
                        _ = pump(server_read, client_write, &faults) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self { address, faults, stop }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The server becomes unreachable: open connections are cut, new ones refused.
    pub fn cut(&self) {
        self.faults.refusing.store(true, Ordering::SeqCst);
        let mut cut = self.faults.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// The server is reachable again.
    pub fn restore(&self) {
        self.faults.refusing.store(false, Ordering::SeqCst);
    }

    /// Adds `latency` to every chunk forwarded, either way (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.latency_ms.store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.faults.cut.lock().unwrap().cancel();
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, faults: &Faults) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
