//! Following a cluster's MOVED, ASK, TRYAGAIN and CLUSTERDOWN replies, and a demoted master's READONLY.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::super::{Pool, Router};
use super::Waiting;
use crate::backend::ReplyTo;
use crate::cluster::{classify, Cluster, Redirect, Topology};
use crate::metrics::RedirectKind;
use crate::route::Slot;

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
pub(super) fn follow_reply(
    pool: &Pool,
    pick: usize,
    proto: u8,
    w: &mut Waiting,
    reply: &[u8],
    resend: impl FnOnce() -> ReplyTo,
) -> Redirected {
    if reply.first() != Some(&b'-') || w.own_connection {
        return Redirected::No;
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
            primary.resend_to_new_master(
                w.frame.clone(),
                proto,
                pick,
                refused,
                w.deadline,
                resend(),
            );
            return Redirected::Followed(RedirectKind::Readonly);
        }
        _ => return Redirected::No,
    };
    let Some(redirect) = classify(reply) else {
        return Redirected::No;
    };
    let kind = RedirectKind::from(&redirect);
    let max = pool.config.max_redirects;
    match follow(cluster, max, pick, proto, w, redirect, resend()) {
        true => Redirected::Followed(kind),
        false => Redirected::Refused,
    }
}

/// Resends a redirected request; false when it may not be (too many redirects, or out of time), in which
/// case the client gets the cluster's reply as is.
fn follow(
    cluster: &Arc<Cluster>,
    max_redirects: u32,
    pick: usize,
    proto: u8,
    w: &mut Waiting,
    redirect: Redirect<'_>,
    reply: ReplyTo,
) -> bool {
    if w.redirects >= max_redirects || Instant::now() >= w.deadline {
        return false;
    }
    w.redirects += 1;
    match redirect {
        Redirect::Moved { slot, addr } | Redirect::Ask { slot, addr } => {
            let asking = matches!(redirect, Redirect::Ask { .. });
            if !asking {
                cluster.request_refresh();
            }
            let addr = complete_endpoint(addr, &cluster.topology(), slot);
            let node = cluster.node(&addr);
            node.for_protocol(proto)
                .send(pick, w.frame.clone(), asking, reply);
        }
        Redirect::Retry => {
            // TRYAGAIN / CLUSTERDOWN: wait a little (doubling), then ask the slot's owner again.
            let delay = Duration::from_millis(10 << w.redirects.min(5));
            let (cluster, frame, slot) = (cluster.clone(), w.frame.clone(), w.slot);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                match cluster.topology().node_for_request(slot, pick) {
                    Some(node) => node.for_protocol(proto).send(pick, frame, false, reply),
                    None => reply.send(Ok(Bytes::from_static(
                        b"-CLUSTERDOWN Hash slot not served\r\n",
                    ))),
                }
            });
        }
    }
    true
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
