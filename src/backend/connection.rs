//! One multiplexed connection to a backend, reconnecting with backoff.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};

use super::{BackendError, Message, ReplyTo, Settings};
use crate::protocol::ReplyScanner;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Requests taken from the queue per write.
const BATCH: usize = 512;
const READ_CHUNK: usize = 64 * 1024;
/// How long a connection whose node was dropped waits for its outstanding replies.
const DRAIN: Duration = Duration::from_secs(10);
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// Who is waiting for the next reply: a client, or nobody (the `ASKING` sent before an ASK retry).
type Inflight = Mutex<VecDeque<Option<ReplyTo>>>;

/// Runs until every sender of `rx` is gone.
pub(super) async fn run(
    addr: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    settings: Settings,
) {
    let mut backoff = MIN_BACKOFF;
    // Log state changes, not every retry: a node that stays down logs once.
    let mut was_down = false;
    loop {
        let connected = match timeout(settings.connect_timeout, connect(&addr, &settings)).await {
            Ok(result) => result,
            Err(_) => Err("connect timed out".to_string()),
        };
        let stream = match connected {
            Ok(stream) => Some(stream),
            Err(error) if !was_down => {
                tracing::warn!(backend = %addr, %error, "backend unreachable");
                was_down = true;
                None
            }
            Err(error) => {
                tracing::debug!(backend = %addr, %error, "backend still unreachable");
                None
            }
        };
        if let Some(stream) = stream {
            if was_down {
                tracing::info!(backend = %addr, "backend reachable again");
            }
            backoff = MIN_BACKOFF;
            match serve(stream, &addr, &mut rx).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(backend = %addr, error = %e, "backend connection failed");
                    was_down = true;
                    notify(&settings);
                }
            }
            continue;
        }
        notify(&settings);
        // While the node is unreachable, fail requests at once instead of letting them wait for a timeout.
        let retry_at = Instant::now() + backoff;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => msg.reply.send(Err(BackendError::Connect(addr.clone()))),
                    None => return,
                },
                _ = sleep_until(retry_at) => break,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens a connection and runs the handshake on it.
async fn connect(addr: &str, settings: &Settings) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    if let Some(handshake) = &settings.handshake {
        stream
            .write_all(&handshake.frames)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(256);
        for _ in 0..handshake.replies {
            let mut scanner = ReplyScanner::default();
            let len = loop {
                if let Some(len) = scanner.scan(&buf).map_err(|e| e.to_string())? {
                    break len;
                }
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("closed during AUTH/SELECT".into());
                }
            };
            let reply = buf.split_to(len);
            if reply.first() == Some(&b'-') {
                let line = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                return Err(format!("AUTH/SELECT refused: {line}"));
            }
        }
    }
    Ok(stream)
}

fn notify(settings: &Settings) {
    if let Some(n) = &settings.on_failure {
        n.notify_one();
    }
}

/// Pipelines requests over one established connection. `Ok` when the queue closed, `Err` when the
/// connection failed; either way, requests still waiting for a reply are failed.
async fn serve(
    stream: TcpStream,
    addr: &Arc<str>,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<(), BackendError> {
    let (mut rd, mut wr) = stream.into_split();
    let inflight: Inflight = Mutex::new(VecDeque::with_capacity(BATCH));

    let writer = async {
        let mut batch = Vec::with_capacity(BATCH);
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                // Nobody can send any more (the node left the topology): let the replies already on
                // their way arrive before closing.
                let deadline = Instant::now() + DRAIN;
                while !inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Ok(());
            }
            if batch.len() < BATCH {
                // Let every other task that is ready run first: sessions woken by the same poll of the
                // I/O driver add their requests, and they all leave in this one write. This is what
                // turns many clients' single requests into one pipeline for Redis.
                tokio::task::yield_now().await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(msg) => batch.push(msg),
                        Err(_) => break,
                    }
                }
            }
            {
                // Queue the reply slots before the bytes leave, so the reader always finds them.
                let mut queue = inflight.lock().unwrap_or_else(PoisonError::into_inner);
                for msg in batch.drain(..) {
                    if msg.asking {
                        out.extend_from_slice(ASKING);
                        queue.push_back(None);
                    }
                    out.extend_from_slice(&msg.frame);
                    queue.push_back(Some(msg.reply));
                }
            }
            wr.write_all(&out)
                .await
                .map_err(|_| BackendError::Closed(addr.clone()))?;
            out.clear();
        }
    };

    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut scanner = ReplyScanner::default();
        loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(BackendError::Closed(addr.clone())),
                Ok(_) => {}
            }
            while let Some(len) = scanner
                .scan(&buf)
                .map_err(|_| BackendError::Protocol(addr.clone()))?
            {
                let reply = buf.split_to(len).freeze();
                let waiter = inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                match waiter {
                    // The client may have given up (timeout, disconnect): the reply is dropped.
                    Some(Some(tx)) => tx.send(Ok(reply)),
                    Some(None) => {}
                    // A reply nobody asked for: the stream is out of step and cannot be trusted.
                    None => return Err(BackendError::Protocol(addr.clone())),
                }
            }
        }
    };

    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    let failed = match &result {
        Ok(()) => BackendError::Closed(addr.clone()),
        Err(e) => e.clone(),
    };
    for tx in inflight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .flatten()
    {
        tx.send(Err(failed.clone()));
    }
    result
}
