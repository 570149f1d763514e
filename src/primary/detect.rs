//! The detector: one task per primary pool that decides, look after look, who is master and which
//! replicas are healthy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::replies::{self, Event, Role};
use super::sentinel::Sentinels;
use super::{ask, handover, Primary, Via, ROLE};
use crate::config::PoolConfig;
use crate::discovery::{Discovery, EndpointSet};

/// Shortest time between two looks: a burst of failures costs one look.
const MIN_LOOK_GAP: Duration = Duration::from_millis(50);

/// Where the detector learns the members and the sentinels.
pub(super) struct Sources {
    members: Option<watch::Receiver<EndpointSet>>,
    sentinel: Option<(Sentinels, Discovery)>,
    interval: Duration,
    /// How long a probe or a sentinel may take to answer.
    wait: Duration,
    /// The last look's verdict was logged (so a lasting problem is logged once).
    complained: Option<String>,
}

impl Sources {
    pub(super) fn new(
        config: &PoolConfig,
        members: Option<watch::Receiver<EndpointSet>>,
        sentinels: Option<Discovery>,
        tls: Option<std::sync::Arc<crate::tls::Connector>>,
    ) -> Sources {
        let interval = Duration::from_millis(config.probe_interval);
        let sentinel = config.sentinel.as_ref().zip(sentinels).map(|(s, d)| {
            (
                Sentinels::new(s, Duration::from_millis(config.connect_timeout), tls),
                d,
            )
        });
        Sources {
            members,
            sentinel,
            interval,
            wait: interval.clamp(Duration::from_millis(100), Duration::from_secs(2)),
            complained: None,
        }
    }

    /// One look: asks the sentinels (if any), probes `ROLE` on every member and every replica they
    /// name, and installs what it found.
    async fn look(&mut self, primary: &Primary, events: &mpsc::UnboundedSender<Event>) {
        let mut candidates = addrs(self.members.as_ref());
        let mut verdict = None;
        let mut named = None;
        if let Some((sentinels, discovery)) = &mut self.sentinel {
            let addrs = addrs(Some(&discovery.endpoints));
            sentinels.follow(&addrs, events, &primary.look);
            let answer = sentinels.ask(&addrs, self.wait).await;
            if answer.master.is_none() {
                verdict = Some(format!(
                    "no master agreed on by a majority of the sentinels ({} of {} answered)",
                    answer.answered, answer.asked
                ));
            }
            named = answer.master.map(|a| Arc::<str>::from(a.as_str()));
            candidates.extend(answer.replicas.iter().map(|a| Arc::from(a.as_str())));
            candidates.extend(named.clone());
        }
        let roles = primary.roles();
        let (current, based_on) = (
            roles.master.as_ref().map(|n| n.addr().clone()),
            roles.generation,
        );
        drop(roles);
        candidates.extend(current.clone());
        candidates.sort();
        candidates.dedup();
        let probes = candidates.iter().map(|addr| {
            let node = primary.node(addr);
            let wait = self.wait;
            async move {
                ask(&node, ROLE, wait)
                    .await
                    .and_then(|reply| replies::role(&reply).ok())
            }
        });
        let roles = futures::future::join_all(probes).await;
        let claims = |addr: &Arc<str>| {
            candidates
                .iter()
                .zip(&roles)
                .any(|(a, role)| a == addr && *role == Some(Role::Master))
        };
        let mut master = None;
        match (&self.sentinel, named) {
            (Some(_), Some(named)) => {
                // The sentinels' word, checked against the servers': right after a `+switch-master`
                // some sentinels still name the old master for a moment, and must not switch back to
                // it while the announced one serves.
                let current_serves = current.as_ref().is_some_and(|c| *c != named && claims(c));
                // Nor to the master a handover left: the sentinels name it until `+switch-master`,
                // and it is still master until they demote it, so ROLE cannot tell.
                let mut left = primary.left.lock().unwrap_or_else(PoisonError::into_inner);
                let was_left = left.as_ref() == Some(&named);
                if !was_left {
                    *left = None;
                }
                drop(left);
                if was_left {
                    // Expected for a second or so: not worth a warning.
                } else if claims(&named) && !current_serves {
                    master = Some((named, Via::Sentinel));
                } else if current.as_ref() != Some(&named) {
                    verdict = Some(format!(
                        "the sentinels name {named}, which does not answer ROLE as the only master; keeping {}",
                        current.as_deref().unwrap_or("none")
                    ));
                }
            }
            (Some(_), None) => {}
            (None, _) => {
                let claimers: Vec<&Arc<str>> = candidates.iter().filter(|a| claims(a)).collect();
                match claimers.as_slice() {
                    [one] => master = Some(((*one).clone(), Via::RoleProbe)),
                    [] => verdict = Some("no member answers ROLE as master".into()),
                    many => {
                        verdict = Some(format!(
                            "{} members claim to be master ({}); keeping the current one",
                            many.len(),
                            many.iter()
                                .map(|a| a.as_ref())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }
                }
            }
        }
        let replicas: Vec<Arc<str>> = candidates
            .iter()
            .zip(&roles)
            .filter(|(_, role)| **role == Some(Role::Replica { linked: true }))
            .map(|(addr, _)| addr.clone())
            .collect();
        primary.install(
            Some(based_on),
            master.as_ref().map(|(a, via)| (a.as_ref(), *via)),
            &replicas,
        );
        // Connections to members that left (and to nothing else) are dropped.
        let master = primary.roles().master.as_ref().map(|n| n.addr().clone());
        let keep = candidates.iter().chain(&master).map(|a| a.as_ref());
        primary.nodes.keep_only(keep);
        if verdict != self.complained {
            match &verdict {
                Some(problem) => tracing::warn!(pool = %primary.pool, "{problem}"),
                None => tracing::info!(pool = %primary.pool, "master known again"),
            }
            self.complained = verdict;
        }
    }
}

/// The `ip:port` of each endpoint of a set.
fn addrs(set: Option<&watch::Receiver<EndpointSet>>) -> Vec<Arc<str>> {
    set.and_then(|rx| {
        rx.borrow()
            .as_deref()
            .map(|s| s.iter().map(|e| e.addr.clone()).collect())
    })
    .unwrap_or_default()
}

/// Resolves when `rx` has a new value; never when there is none to watch (or its source is gone).
async fn changed(rx: Option<&mut watch::Receiver<EndpointSet>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Looks every `probe_interval`, and at once when asked to (a failure, a READONLY reply, a change of
/// members or sentinels); a `+switch-master` announcement switches before looking again, and a
/// replica announced for promotion starts a [`handover`].
pub(super) async fn run(primary: Weak<Primary>, mut sources: Sources) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    // The handover in progress: the replica being promoted, and the task holding the writes.
    let mut handover: Option<(Arc<str>, JoinHandle<()>)> = None;
    loop {
        let Some(p) = primary.upgrade() else { return };
        let begun = p.looks_begun.fetch_add(1, Ordering::Relaxed) + 1;
        sources.look(&p, &events_tx).await;
        p.looks_done.send_replace(begun);
        let look = p.look.clone();
        drop(p);
        let next = Instant::now() + MIN_LOOK_GAP;
        let (members, sentinels) = (
            sources.members.as_mut(),
            sources.sentinel.as_mut().map(|(_, d)| &mut d.endpoints),
        );
        tokio::select! {
            _ = sleep(sources.interval) => {}
            _ = look.notified() => {}
            _ = changed(members) => {}
            _ = changed(sentinels) => {}
            Some(event) = events.recv() => {
                let Some(p) = primary.upgrade() else { return };
                handover.take_if(|(_, task)| task.is_finished());
                match event {
                    Event::Switched(new_master) => {
                        // The replicas stay as they were until the look that follows at once.
                        let replicas: Vec<Arc<str>> =
                            p.roles().replicas.iter().map(|n| n.addr().clone()).collect();
                        p.install(None, Some((&new_master, Via::SentinelEvent)), &replicas);
                    }
                    // Announced twice (selected, then being sent REPLICAOF NO ONE): one handover.
                    Event::Promoting(replica) if handover.as_ref().is_some_and(|(r, _)| **r == *replica) => {}
                    Event::Promoting(replica) => {
                        let current = p.roles().master.as_ref().map(|n| n.addr().clone());
                        if current.as_deref() != Some(replica.as_str()) {
                            if let Some((_, task)) = handover.take() {
                                task.abort();
                            }
                            let replica = Arc::<str>::from(replica);
                            let bound = p.hold_bound;
                            let task = tokio::spawn(handover::run(p.clone(), replica.clone(), bound));
                            handover = Some((replica, task));
                        }
                    }
                    Event::Aborted => {
                        if let Some((_, task)) = handover.take() {
                            task.abort();
                        }
                    }
                }
                continue;
            }
        }
        tokio::time::sleep_until(next).await;
    }
}
