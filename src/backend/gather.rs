//! Requests a session routes in one step, gathered per connection and queued together when the
//! step ends: one lock of the connection's queue and one promise of replies per connection and
//! step, rather than per request.
//!
//! A pipeline of 16 GETs over three shards took 16 locks and 16 references to the session's inbox
//! (each made and dropped: four atomic operations per request, each about 1% of slotline's CPU at
//! `-P 16`); gathered, it takes three of each. The requests' bytes are copied into the gathering
//! buffer and again into the queue: for requests this small, cheaper than the atomic operations.
//!
//! The gathering is the worker thread's, used within one synchronous session step. Anything sent
//! on this thread through [`Node::send`](super::Node::send) sends what is gathered first, so no
//! request overtakes one gathered before it, whatever path sends it; and each run carries its own
//! session's inbox, so what one session gathered can only ever be answered to that session.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::BytesMut;

use super::{Inbox, Node, ReplyTo};

/// Requests larger than this are sent at once: copying them twice would cost more than it saves.
pub const LARGEST: usize = 4 * 1024;
/// Bytes gathered in all, past which everything gathered is sent: what a step may queue before it
/// learns that a connection is congested (see [`Node::send`](super::Node::send)).
const MOST_BYTES: usize = 16 * 1024;
/// Runs open at once, past which everything gathered is sent.
const MOST_RUNS: usize = 8;
/// A run's buffer that grew past this is not kept for the next step.
const KEEP: usize = 64 * 1024;

thread_local! {
    static GATHERED: RefCell<Gathered> = const {
        RefCell::new(Gathered { runs: Vec::new(), open: 0, bytes: 0 })
    };
}

struct Gathered {
    /// `runs[..open]` hold requests; the rest keep their buffers for the next step.
    runs: Vec<Run>,
    open: usize,
    bytes: usize,
}

/// Requests for one connection of one node, their replies for one session.
#[derive(Default)]
struct Run {
    to: Option<(Arc<Node>, usize, ReplyTo)>,
    frames: BytesMut,
}

/// Gathers request number `seq`, `frame`, for connection `pick` of `node`, its reply for `inbox`.
/// Returns a node found congested when what was gathered had to be sent now.
pub fn gather(
    node: &Arc<Node>,
    pick: usize,
    frame: &[u8],
    inbox: &Arc<Inbox>,
    seq: u64,
) -> Option<Arc<Node>> {
    let conn = node.conn_index(pick);
    let (added, full) = GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        let g = &mut *g;
        let found = g.runs[..g.open].iter_mut().find(|r| {
            r.to.as_ref().is_some_and(|(n, c, reply)| {
                Arc::ptr_eq(n, node) && *c == conn && reply.is_for(inbox)
            })
        });
        let added = match found {
            Some(r) => {
                let taken =
                    r.to.as_mut()
                        .is_some_and(|(_, _, reply)| reply.take_in(seq));
                if taken {
                    r.frames.extend_from_slice(frame);
                }
                taken
            }
            None if g.open < MOST_RUNS => {
                if g.runs.len() == g.open {
                    g.runs.push(Run::default());
                }
                let r = &mut g.runs[g.open];
                r.to = Some((node.clone(), conn, inbox.reply_to(seq)));
                r.frames.extend_from_slice(frame);
                g.open += 1;
                true
            }
            None => false,
        };
        if added {
            g.bytes += frame.len();
        }
        (added, g.bytes > MOST_BYTES)
    });
    if added && !full {
        return None;
    }
    // A run that cannot take it (too long, or too many runs open), or too many bytes gathered:
    // what is gathered goes now, and this request with it, or at once after it.
    let congested = send_gathered();
    if added {
        return congested;
    }
    let now = node.send(conn, frame, false, inbox.reply_to(seq));
    congested.or_else(|| now.then(|| node.clone()))
}

/// Whether this thread holds gathered requests.
pub fn gathering() -> bool {
    GATHERED.with(|g| g.borrow().open > 0)
}

/// Queues everything gathered on this thread, each run as one batch. Returns a node that has more
/// bytes waiting than its share of `max_server_queue_bytes` (one of them, if several).
pub fn send_gathered() -> Option<Arc<Node>> {
    // Taken out of the thread's state while they are queued, which looks at it.
    let (mut runs, open) = GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        g.bytes = 0;
        (std::mem::take(&mut g.runs), std::mem::take(&mut g.open))
    });
    let mut congested = None;
    for r in runs.iter_mut().take(open) {
        let Some((node, conn, reply)) = r.to.take() else {
            continue;
        };
        if node.send_batch(conn, std::iter::once(&r.frames[..]), reply) {
            congested = Some(node);
        }
        r.frames.clear();
        if r.frames.capacity() > KEEP {
            r.frames = BytesMut::new();
        }
    }
    GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        if g.runs.is_empty() {
            g.runs = runs;
        }
    });
    congested
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Settings;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers each one-word request (`*1\r\n$N\r\nWORD\r\n`) with `+WORD\r\n`, and
    /// records the words in the order they came.
    async fn echo_server() -> (Arc<str>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: Arc<str> = Arc::from(listener.local_addr().expect("addr").to_string());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                // Whole requests only: `*1\r\n$N\r\n` + N bytes + `\r\n`.
                while let Some(word) = one_word(&buf) {
                    let used = word.len() + 10;
                    let _ = tx.send(word.clone());
                    let reply = format!("+{word}\r\n");
                    socket.write_all(reply.as_bytes()).await.expect("reply");
                    buf.drain(..used);
                }
            }
        });
        (addr, rx)
    }

    fn one_word(buf: &[u8]) -> Option<String> {
        // Words of 2 bytes, so the header is `*1\r\n$2\r\n`.
        let frame = buf.get(..12)?;
        assert_eq!(
            &frame[..8],
            b"*1\r\n$2\r\n",
            "a request the test did not send"
        );
        Some(String::from_utf8_lossy(&frame[8..10]).into_owned())
    }

    fn request(word: &str) -> Vec<u8> {
        format!("*1\r\n$2\r\n{word}\r\n").into_bytes()
    }

    /// The first `n` replies delivered to `inbox`, by number.
    async fn replies(inbox: &Inbox, n: usize) -> Vec<(u64, crate::backend::BackendResult)> {
        let mut got = Vec::new();
        let collect = async {
            while got.len() < n {
                let mut more = Vec::new();
                std::future::poll_fn(|cx| inbox.poll_take(cx, &mut more)).await;
                got.append(&mut more);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("replies within 10 s");
        got.sort_by_key(|(n, _)| *n);
        got
    }

    #[tokio::test]
    async fn gathered_requests_keep_their_order_per_connection_and_replies_find_their_numbers() {
        let ((a_addr, mut a_seen), (b_addr, mut b_seen)) =
            (echo_server().await, echo_server().await);
        let settings = Settings::new(1, Duration::from_secs(5));
        let (a, b) = (
            Node::spawn(a_addr, &settings),
            Node::spawn(b_addr, &settings),
        );
        let inbox = Inbox::new();
        // One step: requests 0 to 4 gathered over two nodes, then request 5 sent to the first at
        // once (as a request too large to gather would be), which must not overtake them.
        for (seq, (node, word)) in [(&a, "a0"), (&b, "b1"), (&a, "a2"), (&a, "a3"), (&b, "b4")]
            .into_iter()
            .enumerate()
        {
            assert!(node
                .send_soon(0, &request(word), &inbox, seq as u64)
                .is_none());
        }
        assert!(gathering());
        assert!(!a.send(0, &request("a5"), false, inbox.reply_to(5)));
        assert!(
            !gathering(),
            "sending anything sends what was gathered first"
        );
        // A second step, gathered and sent when it ends.
        assert!(b.send_soon(0, &request("b6"), &inbox, 6).is_none());
        assert!(a.send_soon(0, &request("a7"), &inbox, 7).is_none());
        assert!(send_gathered().is_none());
        assert!(!gathering());

        let got = replies(&inbox, 8).await;
        let words = ["a0", "b1", "a2", "a3", "b4", "a5", "b6", "a7"];
        let want: Vec<_> = words
            .iter()
            .enumerate()
            .map(|(n, w)| (n as u64, Ok(Bytes::from(format!("+{w}\r\n")))))
            .collect();
        assert_eq!(got, want);
        let seen = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
            std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>()
        };
        assert_eq!(seen(&mut a_seen), ["a0", "a2", "a3", "a5", "a7"]);
        assert_eq!(seen(&mut b_seen), ["b1", "b4", "b6"]);
    }

    #[tokio::test]
    async fn a_run_too_long_for_one_promise_is_sent_and_a_new_one_begun() {
        let (addr, mut seen) = echo_server().await;
        let node = Node::spawn(addr, &Settings::new(1, Duration::from_secs(5)));
        let inbox = Inbox::new();
        // Numbers 0, 70 and 71: 70 is too far from 0 for one promise.
        for (seq, word) in [(0, "x0"), (70, "x1"), (71, "x2")] {
            assert!(node.send_soon(0, &request(word), &inbox, seq).is_none());
        }
        send_gathered();
        let got = replies(&inbox, 3).await;
        let numbers: Vec<_> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 70, 71]);
        assert_eq!(got[1].1, Ok(Bytes::from_static(b"+x1\r\n")));
        let order: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
        assert_eq!(order, ["x0", "x1", "x2"]);
    }
}
