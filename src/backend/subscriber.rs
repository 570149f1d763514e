//! A subscriber connection: one client's own connection to a backend, carrying its SUBSCRIBEs.
//!
//! A [`Node`](super::Node) connection matches each reply to one request; a subscribed connection does
//! not work that way (SUBSCRIBE of three channels is confirmed three times, and messages arrive
//! unasked). So every frame the server sends is handed to the session as it came, tagged with the
//! connection's id, and the session makes sense of it. What a slow client has not taken yet is
//! counted in its [`Feed`]: past the limit the client is dropped, as Redis drops a pub/sub client past
//! `client-output-buffer-limit pubsub`, instead of slotline buffering without end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;

use super::connection::connect;
use super::{BackendError, Settings};
use crate::protocol::ReplyScanner;

const READ_CHUNK: usize = 16 * 1024;

/// What a subscriber connection tells its session.
#[derive(Debug)]
pub enum SubEvent {
    /// A frame from the server, as it came.
    Frame(u32, Bytes),
    /// The connection could not be opened, or it closed; nothing more comes from it.
    Lost(u32, BackendError),
}

/// What one client's subscriber connections have delivered and the client has not been sent yet.
pub struct Feed {
    buffered: AtomicUsize,
    limit: usize,
    over: AtomicBool,
    overflow: Notify,
}

impl Feed {
    pub fn new(limit: usize) -> Arc<Feed> {
        Arc::new(Feed {
            buffered: AtomicUsize::new(0),
            limit,
            over: AtomicBool::new(false),
            overflow: Notify::new(),
        })
    }

    /// Counts `n` more bytes on their way to the client; false (and the session woken) when that
    /// passes the limit.
    fn add(&self, n: usize) -> bool {
        let total = self.buffered.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.limit {
            self.over.store(true, Ordering::Relaxed);
            self.overflow.notify_one();
            return false;
        }
        true
    }

    /// `n` bytes reached the client.
    pub fn written(&self, n: usize) {
        let _ = self
            .buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// Whether the client fell too far behind.
    pub fn overflowed(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Waits until the client falls too far behind.
    pub async fn wait_overflow(&self) {
        while !self.overflowed() {
            self.overflow.notified().await;
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The session's handle on one subscriber connection; dropping it closes the connection, which is
/// how the server forgets the subscriptions.
pub struct Subscriber {
    id: u32,
    addr: Arc<str>,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Subscriber {
    /// Opens a connection to `addr` (logged in and set up as `settings` say) that sends what it is
    /// given and delivers what it reads to `events`.
    pub fn spawn(
        id: u32,
        addr: Arc<str>,
        settings: &Settings,
        events: mpsc::UnboundedSender<SubEvent>,
        feed: Arc<Feed>,
    ) -> Subscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(id, addr.clone(), settings.clone(), rx, events, feed));
        Subscriber { id, addr, tx }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// Queues a request (SUBSCRIBE, UNSUBSCRIBE ...) for the server. If the connection is gone, its
    /// `Lost` event is already on its way.
    pub fn send(&self, frame: Bytes) {
        let _ = self.tx.send(frame);
    }
}

async fn run(
    id: u32,
    addr: Arc<str>,
    settings: Settings,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    events: mpsc::UnboundedSender<SubEvent>,
    feed: Arc<Feed>,
) {
    let stream = match timeout(settings.connect_timeout, connect(&addr, &settings)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(backend = %addr, %error, "subscriber connection failed");
            let _ = events.send(SubEvent::Lost(id, BackendError::Connect(addr)));
            return;
        }
        Err(_) => {
            tracing::warn!(backend = %addr, "subscriber connection timed out");
            let _ = events.send(SubEvent::Lost(id, BackendError::Connect(addr)));
            return;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::new(settings.max_reply);
    let lost = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => {
                    if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                        break BackendError::Closed(addr.clone());
                    }
                }
                // The session let go: closing the connection unsubscribes it on the server.
                None => return,
            },
            read = rd.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break BackendError::Closed(addr.clone()),
                    Ok(_) => {}
                }
                loop {
                    let len = match scanner.scan(&buf) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(_) => {
                            let _ = events.send(SubEvent::Lost(id, BackendError::Protocol(addr)));
                            return;
                        }
                    };
                    let frame = buf.split_to(len).freeze();
                    // Past the limit the session drops the client; reading on would only buffer more.
                    if !feed.add(len) || events.send(SubEvent::Frame(id, frame)).is_err() {
                        return;
                    }
                }
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
            }
        }
    };
    tracing::warn!(backend = %addr, error = %lost, "subscriber connection lost");
    let _ = events.send(SubEvent::Lost(id, lost));
}
