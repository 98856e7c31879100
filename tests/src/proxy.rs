//! A TCP proxy in front of a server that can make the path go silent: [`Proxy::freeze`] stops
//! forwarding on every connection open now, in both directions, without closing anything (a
//! half-open connection, as a dropped NAT entry or a dead link leaves it); connections made
//! afterwards are forwarded as usual.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::free_port;

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    /// `nats://127.0.0.1:PORT`, for clients to connect through.
    pub url: String,
    /// Connections opened before this generation are frozen.
    frozen_before: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Proxies a new local port to `target` (`nats://HOST:PORT`).
    pub async fn start(target: &str) -> anyhow::Result<Proxy> {
        let target = target.trim_start_matches("nats://").to_owned();
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let frozen_before = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(0));
        let (frozen, current) = (frozen_before.clone(), generation.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, born, frozen.clone()));
                tokio::spawn(forward(server_read, client_write, born, frozen.clone()));
            }
        });
        Ok(Proxy {
            url: format!("nats://127.0.0.1:{port}"),
            frozen_before,
            generation,
            accept,
        })
    }

    /// Silences every connection open now; later ones are forwarded.
    pub fn freeze(&self) {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.frozen_before.store(next, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` until either closes, or until the connection (born in generation
/// `born`) is frozen: then it holds both ends open and forwards nothing, forever.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    born: u64,
    frozen_before: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if born < frozen_before.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
