//! Asking the sentinels who is master, and listening to their failover announcements.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::ask;
use super::replies::{self, Event};
use crate::backend::{self, Node};
use crate::config::SentinelConfig;
use crate::protocol::Reply;

/// A sentinel's announcement stream may not hold more than this unparsed (sentinel messages are short).
const MAX_BUFFERED: usize = 1 << 20;
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The sentinels of one pool: connections to ask them, and one subscriber task per sentinel.
pub(super) struct Sentinels {
    master_name: String,
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` and `SENTINEL REPLICAS` for `master_name`, asked every look.
    get_master: Bytes,
    get_replicas: Bytes,
    /// `AUTH` for the subscriber connections, when the sentinels ask for a password.
    auth: Option<Bytes>,
    settings: backend::Settings,
    nodes: HashMap<Arc<str>, Arc<Node>>,
    subscribers: HashMap<Arc<str>, JoinHandle<()>>,
}

/// What the sentinels said in one round.
pub(super) struct Answer {
    /// The master a majority of the sentinels that answered agree on.
    pub master: Option<String>,
    /// The replicas any of them consider up.
    pub replicas: Vec<String>,
    /// How many sentinels answered, of how many asked.
    pub answered: usize,
    pub asked: usize,
}

impl Sentinels {
    pub(super) fn new(
        config: &SentinelConfig,
        connect_timeout: Duration,
        tls: Option<Arc<crate::tls::Connector>>,
    ) -> Sentinels {
        let name = config.master_name.as_bytes();
        let mut frames = BytesMut::new();
        Reply(&mut frames).command(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", name]);
        let get_master = frames.split().freeze();
        Reply(&mut frames).command(&[b"SENTINEL", b"REPLICAS", name]);
        let get_replicas = frames.split().freeze();
        Sentinels {
            master_name: config.master_name.clone(),
            get_master,
            get_replicas,
            auth: config.password.as_deref().map(|password| {
                backend::auth_command(config.username.as_deref(), password, &mut frames);
                frames.split().freeze()
            }),
            settings: backend::Settings {
                tls,
                ..backend::Settings::new(1, connect_timeout)
            }
            .with_login(config.username.as_deref(), config.password.as_deref(), 0),
            nodes: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }

    /// Keeps one subscription to the failover announcements per sentinel in `addrs` (and none to
    /// others): those about this pool's master are sent to `events`; `look` is woken whenever a subscription
    /// (re)starts, since announcements made while it was down are lost.
    pub(super) fn follow(
        &mut self,
        addrs: &[Arc<str>],
        events: &mpsc::UnboundedSender<Event>,
        look: &Arc<Notify>,
    ) {
        self.subscribers.retain(|addr, task| {
            let keep = addrs.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        self.nodes.retain(|addr, _| addrs.contains(addr));
        for addr in addrs {
            if !self.subscribers.contains_key(addr) {
                let task = tokio::spawn(subscribe(
                    addr.clone(),
                    self.master_name.clone(),
                    self.auth.clone(),
                    self.settings.tls.clone(),
                    events.clone(),
                    look.clone(),
                ));
                self.subscribers.insert(addr.clone(), task);
            }
        }
    }

    /// Asks every sentinel in `addrs` for the master and its replicas, each within `wait`.
    pub(super) async fn ask(&mut self, addrs: &[Arc<str>], wait: Duration) -> Answer {
        let asks = addrs.iter().map(|addr| {
            let node = self
                .nodes
                .entry(addr.clone())
                .or_insert_with(|| Node::spawn(addr.clone(), &self.settings))
                .clone();
            let (get_master, get_replicas) = (self.get_master.clone(), self.get_replicas.clone());
            async move {
                let (master, replicas) = tokio::join!(
                    ask(&node, get_master, wait),
                    ask(&node, get_replicas, wait)
                );
                let master = master.and_then(|r| {
                    replies::master_addr(&r)
                        .map_err(|e| tracing::debug!(sentinel = %node.addr(), error = %e, "unusable sentinel reply"))
                        .ok()
                });
                let replicas = replicas
                    .and_then(|r| replies::replicas(&r).ok())
                    .unwrap_or_default();
                (master, replicas)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let reached: Vec<Option<String>> = answers.iter().filter_map(|(m, _)| m.clone()).collect();
        let mut replicas: Vec<String> = answers.into_iter().flat_map(|(_, r)| r).collect();
        replicas.sort();
        replicas.dedup();
        Answer {
            master: replies::agreed(&reached),
            replicas,
            answered: reached.len(),
            asked: addrs.len(),
        }
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for task in self.subscribers.values() {
            task.abort();
        }
    }
}

/// Follows one sentinel's failover channels for as long as the task lives, reconnecting with
/// backoff.
async fn subscribe(
    addr: Arc<str>,
    master_name: String,
    auth: Option<Bytes>,
    tls: Option<Arc<crate::tls::Connector>>,
    events: mpsc::UnboundedSender<Event>,
    look: Arc<Notify>,
) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let listened = listen(
            &addr,
            &master_name,
            auth.as_deref(),
            tls.as_deref(),
            &events,
            &look,
        );
        match listened.await {
            Ok(()) => return, // nobody listens to the events any more
            Err(e) => {
                tracing::debug!(sentinel = %addr, error = %e, "sentinel subscription lost; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// One subscription: returns Ok when `events` has no receiver left, Err when the connection failed.
async fn listen(
    addr: &str,
    master_name: &str,
    auth: Option<&[u8]>,
    tls: Option<&crate::tls::Connector>,
    events: &mpsc::UnboundedSender<Event>,
    look: &Notify,
) -> Result<(), String> {
    let mut stream = timeout(Duration::from_secs(2), backend::Stream::connect(addr, tls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    if let Some(auth) = auth {
        out.extend_from_slice(auth);
    }
    let mut subscribe = vec![&b"SUBSCRIBE"[..]];
    subscribe.extend(replies::EVENT_CHANNELS);
    Reply(&mut out).command(&subscribe);
    Reply(&mut out).command(&[b"PSUBSCRIBE", replies::ABORT_PATTERN]);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut subscribed = false;
    loop {
        while let Some((frame, len)) = redis_protocol::resp2::decode::decode(&buf)
            .map_err(|e| format!("undecodable: {e:?}"))?
        {
            buf.advance(len);
            if let redis_protocol::resp2::types::OwnedFrame::Error(e) = &frame {
                return Err(e.clone());
            }
            if !subscribed {
                // Subscribed (the first frame after AUTH's +OK): anything missed so far is found by a
                // look.
                subscribed = true;
                look.notify_one();
            }
            if let Some(event) = replies::sentinel_event(&frame, master_name) {
                tracing::debug!(sentinel = %addr, ?event, "failover event");
                if events.send(event).is_err() {
                    return Ok(());
                }
            }
        }
        if buf.len() > MAX_BUFFERED {
            return Err("oversized message".into());
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
    }
}
