//! Following a cluster's MOVED, ASK, TRYAGAIN and CLUSTERDOWN replies, and a demoted master's READONLY.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::super::{Pool, Router};
use super::Waiting;
use crate::backend::{Node, ReplyTo, Via};
use crate::cluster::{classify, migrating_to, Cluster, Redirect, Topology};
use crate::command;
use crate::metrics::RedirectKind;
use crate::route::Slot;
use crate::throttle::Throttle;

/// What came of a backend reply that may be a cluster redirect.
pub(super) enum Redirected {
    /// Not a redirect to follow (not an error, not a cluster pool, or a request on the client's own
    /// connection, which gets the redirect as is): the reply stands.
    No,
    /// Resent; its reply will arrive again.
    Followed(RedirectKind),
    /// A redirect that may not be followed again (too many, or out of time): the reply stands.
    Refused,
}

/// Follows `reply` when it is a MOVED, ASK, TRYAGAIN or CLUSTERDOWN that `w` may follow; `resend`
/// says where the resent request's reply goes.
#[inline]
pub(super) fn follow_reply(
    pool: &Pool,
    pick: usize,
    via: Via,
    w: &mut Waiting,
    reply: &[u8],
    resend: impl FnOnce() -> ReplyTo,
) -> Redirected {
    // Almost every reply: no error, nothing to follow, no call.
    if reply.first() != Some(&b'-') || w.own_connection {
        return Redirected::No;
    }
    follow_error(pool, pick, via, w, reply, resend)
}

/// An error reply: a redirect to follow, a READONLY from a demoted master, or the client's.
fn follow_error(
    pool: &Pool,
    pick: usize,
    via: Via,
    w: &mut Waiting,
    reply: &[u8],
    resend: impl FnOnce() -> ReplyTo,
) -> Redirected {
    if let Some(sent_to) = &w.scripted {
        return follow_script_redirect(pool, pick, via, w, sent_to.clone(), reply, resend);
    }
    let cluster = match &pool.router {
        Router::Cluster(cluster) => cluster,
        Router::Primary(primary) if reply.starts_with(b"-READONLY") => {
            // Refused by a master that has been demoted: it did not run, so it may run once on the
            // new one.
            if w.redirects > 0 || Instant::now() >= w.deadline {
                return Redirected::Refused;
            }
            w.redirects += 1;
            let refused = Bytes::copy_from_slice(reply);
            primary.resend_to_new_master(w.frame.clone(), via, pick, refused, w.deadline, resend());
            return Redirected::Followed(RedirectKind::Readonly);
        }
        _ => return Redirected::No,
    };
    let Some(redirect) = classify(reply) else {
        return Redirected::No;
    };
    let kind = RedirectKind::from(&redirect);
    let Some(to) = Resend::take(pool, cluster, pick, via, w, resend) else {
        // The client gets the cluster's reply as is.
        return Redirected::Refused;
    };
    match redirect {
        Redirect::Moved { slot, addr } | Redirect::Ask { slot, addr } => {
            let asking = matches!(redirect, Redirect::Ask { .. });
            if !asking {
                cluster.request_refresh();
            }
            if !asking && w.redirects > 1 {
                // Moved again: the nodes do not agree yet on who owns the slot (a takeover
                // reaches each of them a moment apart). Bouncing between them at once would use
                // up the redirects in a millisecond; the refreshed map's owner, a little later,
                // is where the request goes.
                to.send_to_owner_later(Some(slot), w.redirects);
                return Redirected::Followed(kind);
            }
            let addr = complete_endpoint(addr, &cluster.topology(), slot);
            if !to.send_to(addr, asking, reply, w.deadline) {
                // Its answer, should it be another redirect, is not followed.
                w.redirects = pool.config.max_redirects;
            }
        }
        Redirect::Retry => to.send_to_owner_later(w.slot, w.redirects),
    }
    Redirected::Followed(kind)
}

/// A script's error is its own, whatever it says: following it blindly would send the script to a
/// host of its choosing, or run it twice. A redirect is followed only once the cluster itself
/// confirms it, which means the node the script was sent to refused it unrun (Redis checks a
/// script's keys before running it): a MOVED when a topology refreshed from the cluster says the
/// slot now belongs to the node it names and not to that node; an ASK when that node's own
/// `CLUSTER NODES` lists the slot as migrating to the node the ASK names.
fn follow_script_redirect(
    pool: &Pool,
    pick: usize,
    via: Via,
    w: &mut Waiting,
    sent_to: Arc<str>,
    reply: &[u8],
    resend: impl FnOnce() -> ReplyTo,
) -> Redirected {
    let Router::Cluster(cluster) = &pool.router else {
        return Redirected::No;
    };
    let Some(redirect) = classify(reply) else {
        return Redirected::No;
    };
    let Some((slot, addr, asking)) = redirect.target() else {
        return Redirected::No;
    };
    let kind = RedirectKind::from(&redirect);
    let Some(to) = Resend::take(pool, cluster, pick, via, w, resend) else {
        return Redirected::Refused;
    };
    let addr = complete_endpoint(addr, &cluster.topology(), slot);
    // If confirmed, the script goes there: a redirect in its answer is that node's.
    w.scripted = Some(Arc::from(addr.as_str()));
    let as_came = Bytes::copy_from_slice(reply);
    let deadline = w.deadline;
    let wait = deadline.saturating_duration_since(Instant::now());
    tokio::spawn(async move {
        // An ASK the source no longer confirms may be a migration that finished since: then the
        // slot is the ASK target's, which a MOVED would have said.
        let migrating = match asking {
            true => ask_confirmed(&to.cluster, &sent_to, slot, &addr, wait).await,
            false => None,
        };
        let confirmed = match migrating {
            Some(node) => Some((node, true)),
            None => moved_confirmed(&to.cluster, &sent_to, slot, &addr, deadline)
                .await
                .map(|node| (node, false)),
        };
        match confirmed {
            Some((node, asking)) => to.deliver(&node, asking),
            None => to.reply.send(Ok(as_came)),
        }
    });
    Redirected::Followed(kind)
}

/// The node `addr` names when a topology refreshed from the cluster says `slot` now belongs to it
/// and not to `sent_to`.
async fn moved_confirmed(
    cluster: &Cluster,
    sent_to: &str,
    slot: Slot,
    addr: &str,
    deadline: Instant,
) -> Option<Arc<Node>> {
    let mut rechecks = SCRIPT_RECHECKS;
    loop {
        cluster
            .refreshed(deadline.saturating_duration_since(Instant::now()))
            .await;
        let owner = cluster.topology().node_for(slot).cloned();
        match owner {
            // The node asked may not have heard of the move yet (a promotion takes a moment to
            // reach every node): ask again a few times, while time is left (a script's made-up
            // MOVED gets its answer that much later).
            Some(node)
                if **node.addr() == *sent_to
                    && rechecks > 0
                    && Instant::now() + SCRIPT_RECHECK < deadline =>
            {
                rechecks -= 1;
                tokio::time::sleep(SCRIPT_RECHECK).await;
            }
            owner => {
                return owner.filter(|node| **node.addr() == *addr && **node.addr() != *sent_to)
            }
        }
    }
}

/// The node `addr` names when `sent_to`'s own `CLUSTER NODES` lists `slot` as migrating to it.
async fn ask_confirmed(
    cluster: &Cluster,
    sent_to: &str,
    slot: Slot,
    addr: &str,
    wait: Duration,
) -> Option<Arc<Node>> {
    let source = cluster.redirect_node(sent_to)?;
    let nodes = Bytes::from_static(CLUSTER_NODES);
    match tokio::time::timeout(wait, source.request(&nodes)).await {
        Ok(Ok(nodes)) if migrating_to(&nodes, slot, addr) => cluster.redirect_node(addr),
        _ => None,
    }
}

/// Between refreshes that may confirm a script's MOVED, and how many.
const SCRIPT_RECHECK: Duration = Duration::from_millis(50);
const SCRIPT_RECHECKS: u32 = 4;
/// Further refreshes that may name a node a MOVED or ASK leads to, after the first.
const UNKNOWN_RECHECKS: u32 = 4;

const CLUSTER_NODES: &[u8] = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nNODES\r\n";

/// Redis's reply to a client blocked on a master that became a replica (a failover, a master back
/// as a replica): the command did not run. (`CLIENT UNBLOCK ... ERROR` says otherwise, and is the
/// client's.)
pub(super) const DEMOTED: &[u8] =
    b"-UNBLOCKED force unblock from blocking operation, instance state changed";

/// A blocking command on the client's own connection, on its way again.
pub(super) struct OwnResend {
    /// Where it goes: a node the cluster lists.
    pub(super) node: Arc<Node>,
    /// ASKING goes first.
    pub(super) asking: bool,
    pub(super) kind: RedirectKind,
    /// The request, with what it already waited taken off its timeout where slotline can find it.
    pub(super) frame: Bytes,
}

/// Where a blocking command sent on the client's own connection goes when its node answered MOVED
/// or ASK, or unblocked it as it was demoted (it did not run). Only a command whose timeout can be
/// made to count what it waited is sent again after an UNBLOCKED. `None`: the reply stands (not a
/// redirect, too many, or a node the topology does not hold).
pub(super) fn own_redirect(pool: &Pool, w: &mut Waiting, reply: &[u8]) -> Option<OwnResend> {
    let Router::Cluster(cluster) = &pool.router else {
        return None;
    };
    if w.redirects >= pool.config.max_redirects {
        return None;
    }
    let time_left = |w: &Waiting| command::with_time_left(&w.frame, w.sent.elapsed());
    if reply.starts_with(DEMOTED) {
        let frame = time_left(w)?;
        // It did not run. Sent to the slot's owner as slotline knows it: the demoted node itself
        // until a refresh shows the new master, and that node answers MOVED to it.
        cluster.request_refresh();
        let node = cluster.topology().node_for(w.slot?)?.clone();
        w.redirects += 1;
        let kind = RedirectKind::Unblocked;
        return Some(OwnResend {
            node,
            asking: false,
            kind,
            frame,
        });
    }
    let redirect = classify(reply)?;
    let kind = RedirectKind::from(&redirect);
    let (slot, addr, asking) = redirect.target()?;
    if !asking {
        cluster.request_refresh();
    }
    let node = cluster.redirect_node(&complete_endpoint(addr, &cluster.topology(), slot))?;
    w.redirects += 1;
    let frame = time_left(w).unwrap_or_else(|| w.frame.clone());
    Some(OwnResend {
        node,
        asking,
        kind,
        frame,
    })
}

/// A request on its way to where a redirect says it belongs.
struct Resend {
    cluster: Arc<Cluster>,
    pick: usize,
    via: Via,
    frame: Bytes,
    reply: ReplyTo,
}

impl Resend {
    /// The request of `w` on its way again, counted as one more redirect; `None` when it may not
    /// be redirected again (too many, or out of time).
    fn take(
        pool: &Pool,
        cluster: &Arc<Cluster>,
        pick: usize,
        via: Via,
        w: &mut Waiting,
        resend: impl FnOnce() -> ReplyTo,
    ) -> Option<Resend> {
        if w.redirects >= pool.config.max_redirects || Instant::now() >= w.deadline {
            return None;
        }
        w.redirects += 1;
        Some(Resend {
            cluster: cluster.clone(),
            pick,
            via,
            frame: w.frame.clone(),
            reply: resend(),
        })
    }

    fn deliver(self, node: &Arc<Node>, asking: bool) {
        node.via(self.via)
            .send(self.pick, &self.frame, asking, self.reply);
    }

    /// Sends the request to `addr` if the topology lists a node there, and returns true. Otherwise
    /// (a node new to slotline, or an address made up by whatever wrote the reply) nothing goes there
    /// until a refreshed topology learnt from the cluster vouches for it; if none does before
    /// `deadline`, the client gets `redirect`, the reply as it came. Returns false then.
    fn send_to(self, addr: String, asking: bool, redirect: &[u8], deadline: Instant) -> bool {
        if let Some(node) = self.cluster.redirect_node(&addr) {
            self.deliver(&node, asking);
            return true;
        }
        let redirect = Bytes::copy_from_slice(redirect);
        tokio::spawn(async move {
            // Each refresh asks the next node, and right after a failover some have not heard of
            // the new master yet: a few tries, while time is left.
            for _ in 0..=UNKNOWN_RECHECKS {
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                self.cluster.refreshed(wait).await;
                if let Some(node) = self.cluster.redirect_node(&addr) {
                    return self.deliver(&node, asking);
                }
            }
            warn_unknown_node(&addr);
            self.reply.send(Ok(redirect));
        });
        false
    }

    /// TRYAGAIN / CLUSTERDOWN: waits a little (doubling with each try), then asks the slot's owner
    /// again.
    fn send_to_owner_later(self, slot: Option<Slot>, tries: u32) {
        let delay = Duration::from_millis(10 << tries.min(5));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let owner = self
                .cluster
                .topology()
                .node_for_request(slot, self.pick)
                .cloned();
            match owner {
                Some(node) => self.deliver(&node, false),
                None => self.reply.send(Ok(Bytes::from_static(
                    b"-CLUSTERDOWN Hash slot not served\r\n",
                ))),
            }
        });
    }
}

/// Logs a redirect to an address the cluster does not list: at most one warning every 10 s, since a
/// client's script can make as many as it likes.
fn warn_unknown_node(addr: &str) {
    static WARNED: Throttle = Throttle::new(Duration::from_secs(10));
    if WARNED.ready() {
        tracing::warn!(node = %addr, "redirect to a node the cluster does not list: answered to the client as it came, not followed");
    } else {
        tracing::debug!(node = %addr, "redirect to a node the cluster does not list");
    }
}

/// A redirect endpoint may leave the host out (`:6380` or `?:6380`): it is the host of the node that
/// answered, which is the slot's current owner.
pub(super) fn complete_endpoint(addr: &str, topology: &Topology, slot: Slot) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if host.is_empty() || host == "?" => {
            let owner = topology
                .node_for(slot)
                .map(|n| n.addr().to_string())
                .unwrap_or_default();
            let host = crate::config::split_host_port(&owner).map_or("127.0.0.1", |(h, _)| h);
            format!("{host}:{port}")
        }
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::backend::Inbox;
    use crate::command::Request;
    use crate::config::{Mode, PoolConfig};
    use crate::protocol::RequestParser;

    /// A node that answers `CLUSTER SLOTS` with `slots(n)` for its n-th such request, and anything
    /// else with `+<name>`. Just enough RESP for slotline's backend connections.
    async fn fake_node(
        name: &'static str,
        slots: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let slots = Arc::new(slots);
        let asked = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (slots, asked) = (slots.clone(), asked.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut parser = RequestParser::default();
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(used)) = parser.parse(&buf) {
                            let request = Request {
                                frame: parser.frame(&buf),
                                args: parser.args(),
                            };
                            let cluster = request.arg(0).eq_ignore_ascii_case(b"CLUSTER");
                            buf.drain(..used);
                            let reply = match cluster {
                                true => slots(asked.fetch_add(1, Ordering::SeqCst)),
                                false => format!("+{name}\r\n"),
                            };
                            if stream.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Every slot served by the node at `addr`.
    fn all_slots_at(addr: &str) -> String {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n${}\r\n{host}\r\n:{port}\r\n",
            host.len()
        )
    }

    /// Right after a failover some nodes' CLUSTER SLOTS do not list the new master yet: a MOVED to
    /// it is followed once a later refresh does, not answered to the client after the first.
    #[tokio::test]
    async fn a_redirect_to_a_node_a_later_refresh_learns_of_is_followed() {
        let new_master = fake_node("NEW", |_| "-ERR no\r\n".into()).await;
        let listed = new_master.clone();
        // The seed lists only itself for its first two answers (the first refresh, and the one the
        // MOVED asks for), then the new master.
        let seed_addr = Arc::new(std::sync::OnceLock::<String>::new());
        let seed_name = seed_addr.clone();
        let seed = fake_node("SEED", move |n| match n {
            0 | 1 => all_slots_at(seed_name.get().expect("seed address")),
            _ => all_slots_at(&listed),
        })
        .await;
        seed_addr.set(seed.clone()).expect("once");
        let config = PoolConfig::new("127.0.0.1:0".into(), Mode::Cluster, vec![seed.clone()]);
        let cluster = Cluster::start(&config, None);
        assert!(cluster.refresh_now().await, "a first topology");
        assert!(cluster.redirect_node(&new_master).is_none());

        let inbox = Inbox::new();
        let resend = Resend {
            cluster: cluster.clone(),
            pick: 0,
            via: Via::POOL,
            frame: Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            reply: inbox.reply_to(0),
        };
        let moved = format!("-MOVED 0 {new_master}\r\n");
        let deadline = Instant::now() + Duration::from_secs(3);
        assert!(!resend.send_to(new_master.clone(), false, moved.as_bytes(), deadline));
        let reply = tokio::time::timeout(Duration::from_secs(5), inbox.recv(0))
            .await
            .expect("a reply in time");
        assert_eq!(reply, Ok(Bytes::from_static(b"+NEW\r\n")));
    }
}
