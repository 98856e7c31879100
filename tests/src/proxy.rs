//! A TCP proxy in front of a server that can break the path the ways networks do:
//! [`Proxy::freeze`] stops forwarding on every connection open now, in both directions,
//! without closing anything (a half-open connection, as a dropped NAT entry or a dead link
//! leaves it); [`Proxy::cut`] closes every open connection (a reset); [`Proxy::refuse`]
//! closes new connections as soon as they are made, until allowed again (a partition the
//! client can see). Connections made while nothing is refused are forwarded as usual.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Connections born before this generation are closed; bumped (and announced) by `cut`.
    cut_before: tokio::sync::watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
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
        let (cut_before, _) = tokio::sync::watch::channel(0);
        let refusing = Arc::new(AtomicBool::new(false));
        let (frozen, current, cut, refused) = (
            frozen_before.clone(),
            generation.clone(),
            cut_before.clone(),
            refusing.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refused.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let link = Link {
                    born,
                    frozen_before: frozen.clone(),
                    cut_before: cut.subscribe(),
                };
                tokio::spawn(forward(client_read, server_write, link.clone()));
                tokio::spawn(forward(server_read, client_write, link));
            }
        });
        Ok(Proxy {
            url: format!("nats://127.0.0.1:{port}"),
            frozen_before,
            generation,
            cut_before,
            refusing,
            accept,
        })
    }

    /// Silences every connection open now; later ones are forwarded.
    pub fn freeze(&self) {
        self.frozen_before
            .store(self.next_generation(), Ordering::SeqCst);
    }

    /// Closes every connection open now, in both directions.
    pub fn cut(&self) {
        self.cut_before.send_replace(self.next_generation());
    }

    /// While `refuse` is true, a new connection is closed as soon as it is made.
    pub fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What one direction of a connection needs to know of the faults.
#[derive(Clone)]
struct Link {
    /// The generation the connection was born in.
    born: u64,
    frozen_before: Arc<AtomicU64>,
    cut_before: tokio::sync::watch::Receiver<u64>,
}

impl Link {
    fn is_frozen(&self) -> bool {
        self.born < self.frozen_before.load(Ordering::SeqCst)
    }

    /// Resolves when the connection is cut.
    async fn cut(&mut self) {
        let born = self.born;
        let _ = self.cut_before.wait_for(|before| born < *before).await;
    }
}

/// Copies `from` to `to` until either closes or the connection is cut (both ends are dropped,
/// so closed); once the connection is frozen it holds both ends open and forwards nothing.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut link: Link,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cut = link.clone();
    let copy = async move {
        loop {
            let Ok(n) = from.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            if link.is_frozen() {
                link.cut().await;
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = cut.cut() => {}
    }
}
