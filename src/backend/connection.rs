//! One multiplexed connection to a backend, reconnecting with backoff.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::stream::Stream;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};

use super::queue::{Batch, Receiver, Written};
use super::{BackendError, BackendResult, Health, ReplyTo, Settings};
use crate::protocol::{ReplyScanner, REPLY_TOO_LONG};
use crate::stats::{self, ServerStats};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A connection that lasted this long was healthy: the backoff starts over, and a failure after it
/// is replaced at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Requests taken from the queue per write, and their bytes (past which one more request ends the
/// batch).
const BATCH: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Longest reply to a request that opens a connection (AUTH, SELECT, PING): Redis answers them with a
/// short line. Anything longer is a node not to be trusted with the connection, refused at its header.
const OPENING_REPLY: usize = 4 * 1024;

/// What one connection task serves and reports to.
pub(super) struct Link {
    pub addr: Arc<str>,
    pub settings: Settings,
    pub stats: Arc<ServerStats>,
    pub health: Option<Arc<Health>>,
}

impl Link {
    fn failed(&self) {
        if let Some(health) = &self.health {
            health.failed();
        }
    }
}

/// Requests written and not yet answered, oldest first.
#[derive(Default)]
struct Queue {
    written: VecDeque<Written>,
    /// Replies read so far: the number of the oldest unanswered request.
    answered: u64,
    /// When each batch was written, with the count of requests written before it: the oldest request's
    /// write time is found here once the requests before it are answered.
    batches: VecDeque<(u64, Instant)>,
    total_written: u64,
    /// Replies to the oldest request's batch that are not its last, read and not yet delivered:
    /// those read together reach its session under one lock of its inbox (see
    /// [`Queue::deliver_next`]).
    next: Vec<(u64, BackendResult)>,
}

impl Queue {
    fn push_batch(&mut self, at: Instant) {
        self.batches.push_back((self.total_written, at));
    }

    fn push(&mut self, w: Written) {
        self.written.push_back(w);
        self.total_written += 1;
    }

    /// One more reply, `reply`, has been read, for the oldest request. A batch's replies but its last
    /// are kept to be delivered together (see [`Queue::deliver_next`]); the request itself is
    /// returned with its last reply (`Err` when no request was waiting: the server is out of step).
    fn answer(&mut self, reply: Bytes) -> Result<Option<(Written, Bytes)>, ()> {
        let front = self.written.front_mut().ok_or(())?;
        if let Some(tx) = front.reply.as_mut().filter(|tx| tx.owed() > 1) {
            tx.hold_next(Ok(reply), &mut self.next);
            return Ok(None);
        }
        self.deliver_next();
        Ok(self.pop().map(|w| (w, reply)))
    }

    /// Delivers the replies [`Queue::answer`] kept for the oldest request's batch: before its last
    /// reply, and once the replies read so far are scanned.
    fn deliver_next(&mut self) {
        if self.next.is_empty() {
            return;
        }
        if let Some(tx) = self.written.front().and_then(|w| w.reply.as_ref()) {
            tx.deliver_next(&mut self.next);
        }
        self.next.clear();
    }

    /// Replies still to come.
    fn unanswered(&self) -> i64 {
        self.written.iter().map(|w| i64::from(w.owed())).sum()
    }

    fn pop(&mut self) -> Option<Written> {
        let w = self.written.pop_front()?;
        self.answered += 1;
        // Batches whose requests are all answered are forgotten.
        while self.batches.len() > 1 && self.batches[1].0 <= self.answered {
            self.batches.pop_front();
        }
        Some(w)
    }

    /// When the oldest unanswered request was written, and its number.
    fn oldest(&self) -> Option<(u64, Instant)> {
        if self.written.is_empty() {
            return None;
        }
        let (_, at) = self.batches.front()?;
        Some((self.answered, *at))
    }
}

type Inflight = Mutex<Queue>;

/// Runs until every sender of `rx` is gone.
///
/// A node that cannot be reached, or that accepts and then fails at once (maxclients reached, a
/// protocol error, a closed door), is tried again after a backoff that doubles up to
/// [`MAX_BACKOFF`], and says so once per cause, not once per attempt. A connection that served for
/// [`HEALTHY_AFTER`] and then failed is replaced at once.
pub(super) async fn run(link: Link, mut rx: Receiver) {
    let (addr, settings) = (&link.addr, &link.settings);
    let mut backoff = MIN_BACKOFF;
    // Why the node is down, as last logged: a node that stays down the same way logs once.
    let mut down: Option<String> = None;
    loop {
        let connected = match timeout(settings.connect_timeout, connect(addr, settings)).await {
            Ok(result) => result,
            Err(_) => Err("connect timed out".to_string()),
        };
        let failure = match connected {
            Err(error) => {
                stats::add(&link.stats.server_err, 1);
                link.failed();
                notify(settings);
                format!("unreachable: {error}")
            }
            Ok(stream) => {
                stats::shift(&link.stats.server_connections, 1);
                let serving = serve(stream, &link, &mut rx);
                tokio::pin!(serving);
                let healthy = tokio::time::sleep(HEALTHY_AFTER);
                tokio::pin!(healthy);
                let mut served = false;
                let result = loop {
                    tokio::select! {
                        result = &mut serving => break result,
                        _ = &mut healthy, if !served => {
                            served = true;
                            backoff = MIN_BACKOFF;
                            if down.take().is_some() {
                                tracing::info!(backend = %addr, "backend reachable again");
                            }
                        }
                    }
                };
                stats::shift(&link.stats.server_connections, -1);
                let Err(e) = result else { return };
                let counter = match e {
                    BackendError::Closed(_) => &link.stats.server_eof,
                    _ => &link.stats.server_err,
                };
                stats::add(counter, 1);
                link.failed();
                notify(settings);
                if served {
                    tracing::warn!(backend = %addr, error = %e, "backend connection failed");
                    continue;
                }
                format!("connection failed at once: {e}")
            }
        };
        if down.as_deref() != Some(&failure) {
            tracing::warn!(backend = %addr, error = %failure, retry_ms = backoff.as_millis() as u64, "backend unreachable");
            down = Some(failure);
        } else {
            tracing::debug!(backend = %addr, error = %failure, retry_ms = backoff.as_millis() as u64, "backend still unreachable");
        }
        // While the node is unavailable, fail requests at once instead of letting them wait for a
        // timeout, and have the topology looked at again for each: the next look may find the
        // node's replacement (a promoted replica) long before the next connection attempt.
        let retry_at = Instant::now() + backoff;
        loop {
            tokio::select! {
                slot = rx.next_slot() => match slot {
                    Some(Written { reply: Some(reply), .. }) => {
                        reply.send(Err(BackendError::Connect(addr.clone())));
                        notify(settings);
                    }
                    // An ASKING: nobody waits for it.
                    Some(Written { reply: None, .. }) => {}
                    None => return,
                },
                _ = sleep_until(retry_at) => break,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Opens a connection and runs the handshake on it.
///
/// A connection is not up until the node has answered on it. Over TLS 1.3 the client's side of the
/// handshake ends before the node has judged it: a node that wants a client certificate and got
/// none sends its refusal (an alert) after that. So a TLS connection with no AUTH/SELECT to send
/// asks PING instead, and any reply, even an error, says the node took the session. A refusal
/// then fails the connect, and the requests that waited for it are told the node cannot be
/// reached; none of them was sent.
pub(super) async fn connect(addr: &str, settings: &Settings) -> Result<Stream, String> {
    let mut stream = Stream::connect(addr, settings.tls.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    match &settings.handshake {
        Some(handshake) => {
            send(&mut stream, &handshake.frames).await?;
            for _ in 0..handshake.replies {
                let reply = next_reply(&mut stream, &mut buf, "AUTH/SELECT").await?;
                if reply.first() == Some(&b'-') {
                    let line = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                    return Err(format!("AUTH/SELECT refused: {line}"));
                }
            }
        }
        None if matches!(stream, Stream::Tls(_)) => {
            send(&mut stream, b"*1\r\n$4\r\nPING\r\n").await?;
            next_reply(&mut stream, &mut buf, "PING").await?;
        }
        None => {}
    }
    Ok(stream)
}

async fn send(stream: &mut Stream, frames: &[u8]) -> Result<(), String> {
    stream.write_all(frames).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// The next whole reply on a connection being opened, to the request named `what`.
async fn next_reply(stream: &mut Stream, buf: &mut BytesMut, what: &str) -> Result<Bytes, String> {
    let mut scanner = ReplyScanner::new(OPENING_REPLY);
    let len = loop {
        match scanner.scan(buf) {
            Ok(Some(len)) => break len,
            Ok(None) => {}
            Err(e) if e == REPLY_TOO_LONG => {
                return Err(format!("reply to {what} over {OPENING_REPLY} bytes"))
            }
            Err(e) => return Err(format!("reply to {what}: {e}")),
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err(format!("closed during {what}"));
        }
    };
    Ok(buf.split_to(len).freeze())
}

fn notify(settings: &Settings) {
    if let Some(n) = &settings.on_failure {
        n.notify_one();
    }
}

/// Pipelines requests over one established connection. `Ok` when the queue closed, `Err` when the
/// connection failed; either way, requests still waiting for a reply are failed.
async fn serve(stream: Stream, link: &Link, rx: &mut Receiver) -> Result<(), BackendError> {
    let (addr, stats) = (&link.addr, &*link.stats);
    let (mut rd, mut wr) = stream.into_split();
    let inflight: Inflight = Mutex::new(Queue::default());

    let writer = async {
        let mut batch = Batch {
            slots: Vec::with_capacity(BATCH),
            ..Batch::default()
        };
        loop {
            let open =
                std::future::poll_fn(|cx| rx.poll_take(cx, &mut batch, BATCH, BATCH_BYTES)).await;
            if !open {
                // Nobody can send any more (the node left the topology): let the replies already on
                // their way arrive before closing.
                let deadline = Instant::now() + link.settings.drain;
                while !inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .written
                    .is_empty()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Ok(());
            }
            // Up to BATCH requests or BATCH_BYTES per write: what the connection takes off its queue
            // is what it writes now. The rest stays queued, where it counts against
            // `max_server_queue_bytes` and holds its senders back.
            if batch.slots.len() < BATCH && batch.out.len() < BATCH_BYTES {
                // The queue ran dry. Let every other task that is ready run first: sessions woken by
                // the same poll of the I/O driver add their requests, and they all leave in this one
                // write. This is what turns many clients' single requests into one pipeline for Redis.
                tokio::task::yield_now().await;
                rx.try_take(&mut batch, BATCH, BATCH_BYTES);
            }
            // Requests written: the queued ones plus any ASKING.
            let mut count = 0i64;
            {
                // Queue the reply slots before the bytes leave, so the reader always finds them.
                let mut queue = inflight.lock().unwrap_or_else(PoisonError::into_inner);
                queue.push_batch(Instant::now());
                for w in batch.slots.drain(..) {
                    count += i64::from(w.owed());
                    queue.push(w);
                }
            }
            let bytes = batch.out.len() as i64;
            stats::shift(&stats.out_queue, count);
            stats::shift(&stats.out_queue_bytes, bytes);
            stats::add(&stats.requests, count as u64);
            stats::add(&stats.request_bytes, bytes as u64);
            wr.write_all(&batch.out)
                .await
                .map_err(|_| BackendError::Closed(addr.clone()))?;
            wr.flush()
                .await
                .map_err(|_| BackendError::Closed(addr.clone()))?;
            batch.out.clear();
            if std::mem::take(&mut batch.burst) || batch.out.capacity() > 4 * READ_CHUNK {
                // A burst of large requests went out: the connection does not keep its buffer.
                batch.out = BytesMut::new();
            }
        }
    };

    let reader = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut scanner = ReplyScanner::new(link.settings.max_reply);
        // The replies of one read, delivered together once the queue is unlocked.
        let mut answered = Vec::new();
        loop {
            if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
                // A large reply went through: the connection does not keep its buffer.
                buf = BytesMut::with_capacity(READ_CHUNK);
            } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(BackendError::Closed(addr.clone())),
                Ok(_) => {}
            }
            let (mut replies, mut reply_bytes, mut request_bytes) = (0i64, 0i64, 0i64);
            let mut queue = inflight.lock().unwrap_or_else(PoisonError::into_inner);
            let scanned = loop {
                let len = match scanner.scan(&buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break Ok(()),
                    Err(_) => break Err(BackendError::Protocol(addr.clone())),
                };
                replies += 1;
                reply_bytes += len as i64;
                let reply = buf.split_to(len).freeze();
                let (written, reply) = match queue.answer(reply) {
                    Ok(Some(answered)) => answered,
                    Ok(None) => continue,
                    // A reply nobody asked for: the stream is out of step and cannot be trusted.
                    Err(()) => break Err(BackendError::Protocol(addr.clone())),
                };
                request_bytes += written.bytes as i64;
                // The client may have given up (timeout, disconnect): the reply is dropped.
                if let Some(tx) = written.reply {
                    answered.push((tx, Ok(reply)));
                }
            };
            queue.deliver_next();
            drop(queue);
            // Replies read before a failure still reach their clients.
            ReplyTo::send_all(&mut answered);
            scanned?;
            if replies > 0 {
                stats::add(&stats.responses, replies as u64);
                stats::add(&stats.response_bytes, reply_bytes as u64);
                stats::shift(&stats.out_queue, -replies);
                stats::shift(&stats.out_queue_bytes, -request_bytes);
                if let Some(health) = &link.health {
                    health.answered();
                }
            }
        }
    };

    // Counts each request that stays unanswered `timeout` after it was written, once. It does not
    // close the connection: the client already gets its own timeout error, and a slow command (a big
    // KEYS) should not fail every request pipelined behind it.
    let watchdog = async {
        let Some(limit) = link.settings.timeout else {
            return std::future::pending().await;
        };
        let tick = (limit / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
        let mut counted = None;
        loop {
            tokio::time::sleep(tick).await;
            let oldest = inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .oldest();
            if let Some((number, sent)) = oldest {
                if sent.elapsed() >= limit && counted != Some(number) {
                    counted = Some(number);
                    stats::add(&stats.server_timedout, 1);
                    link.failed();
                }
            }
        }
    };

    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
        r = watchdog => r,
    };
    let failed = match &result {
        Ok(()) => BackendError::Closed(addr.clone()),
        Err(e) => e.clone(),
    };
    let mut queue = inflight.lock().unwrap_or_else(PoisonError::into_inner);
    let unanswered = queue.unanswered();
    let unanswered_bytes: i64 = queue.written.iter().map(|w| w.bytes as i64).sum();
    stats::shift(&stats.out_queue, -unanswered);
    stats::shift(&stats.out_queue_bytes, -unanswered_bytes);
    for tx in queue.written.drain(..).filter_map(|w| w.reply) {
        tx.send(Err(failed.clone()));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Inbox;

    fn written(reply: Option<ReplyTo>) -> Written {
        Written { reply, bytes: 10 }
    }

    #[tokio::test]
    async fn a_batchs_replies_are_delivered_each_under_its_number_and_counted() {
        let inbox = Inbox::new();
        let mut queue = Queue::default();
        queue.push_batch(Instant::now());
        queue.push(written(None)); // an ASKING
        queue.push(written(Some(inbox.reply_to_each(10, 3))));
        queue.push(written(Some(inbox.reply_to(20))));
        assert_eq!(queue.unanswered(), 5);
        let reply = |s: &'static str| Bytes::from_static(s.as_bytes());

        let (asking, _) = queue
            .answer(reply("+OK\r\n"))
            .expect("waiting")
            .expect("answered");
        assert!(asking.reply.is_none());
        assert!(
            queue.answer(reply(":1\r\n")).expect("waiting").is_none(),
            "1 of 3"
        );
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert!(got.is_empty(), "kept until what was read is scanned");
        // The reader's read is scanned.
        queue.deliver_next();
        assert_eq!(inbox.recv(10).await, Ok(reply(":1\r\n")), "delivered");
        assert!(
            queue.answer(reply(":2\r\n")).expect("waiting").is_none(),
            "2 of 3"
        );
        assert_eq!(queue.unanswered(), 2);
        let (batch, last) = queue
            .answer(reply(":3\r\n"))
            .expect("waiting")
            .expect("3 of 3");
        // Returned with its last reply, the only one it still owes.
        assert_eq!((batch.owed(), &last[..]), (1, &b":3\r\n"[..]));
        assert_eq!(queue.unanswered(), 1);
        batch.reply.expect("a client").send(Ok(last));
        inbox.take(&mut got);
        assert_eq!(
            got,
            vec![(11, Ok(reply(":2\r\n"))), (12, Ok(reply(":3\r\n")))]
        );
        let (single, _) = queue
            .answer(reply("$-1\r\n"))
            .expect("waiting")
            .expect("answered");
        assert_eq!(single.owed(), 1);
        assert_eq!(queue.unanswered(), 0);
        assert!(
            queue.answer(reply("+OK\r\n")).is_err(),
            "a reply nobody waits for"
        );
    }

    #[tokio::test]
    async fn a_request_failed_while_its_node_is_down_has_the_topology_looked_at_again() {
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr: Arc<str> = Arc::from(closed.local_addr().expect("addr").to_string());
        drop(closed);
        let notify = Arc::new(tokio::sync::Notify::new());
        let settings = crate::backend::Settings {
            on_failure: Some(notify.clone()),
            ..crate::backend::Settings::new(1, Duration::from_secs(1))
        };
        let node = crate::backend::Node::spawn(addr.clone(), &settings);
        // The first connection attempt failed: the node waits out its backoff now.
        notify.notified().await;
        let reply = node.request(b"*1\r\n$4\r\nPING\r\n").await;
        assert_eq!(reply, Err(BackendError::Connect(addr)), "failed at once");
        // Asked for at once, not at the next connection attempt: the look may find who took over.
        assert!(
            tokio::time::timeout(Duration::ZERO, notify.notified())
                .await
                .is_ok(),
            "no look asked for the failed request"
        );
    }
}
