//! `AUTH user password` for a node user (`node_logins`): a master checks the password, on a
//! connection of the client's own, and the client's requests then run as that user on the nodes
//! (see [`crate::backend::Logins`]). What the client sends after the AUTH waits for its answer
//! (a request on a connection of the client's own is serial: nothing more is read meanwhile), as
//! on one Redis connection it would run as whoever the AUTH left it.
//!
//! The check is the oldest request's [`Waiting`](super::Waiting), sent as `AUTH user password` and numbered as
//! AUTH or HELLO: AUTH and HELLO are otherwise answered by slotline, so no other request looks
//! like it, and an idle session carries nothing for it.

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::super::fanout;
use super::view::{Place, View};
use super::{Ctx, HeadEvent, Pending};
use crate::backend::NODE_LOGINS;
use crate::command::{self, Request};
use crate::protocol::{Reply, RequestParser};

impl Ctx {
    /// Whether the oldest request is a login a node is checking: AUTH, or HELLO's AUTH (then the
    /// HELLO, without it, is the next request).
    #[inline]
    pub(super) fn checks_login(&self) -> Option<bool> {
        let Some(Pending::Wait(w)) = self.pending.front() else {
            return None;
        };
        if !w.own_connection {
            return None;
        }
        match command::all().get(usize::from(w.command))?.name {
            "auth" => Some(false),
            "hello" => Some(true),
            _ => None,
        }
    }

    /// Sends `AUTH user password` (of an AUTH, or of a HELLO's AUTH option) to a master on a
    /// connection of the client's own. A HELLO goes on without its AUTH once the login holds.
    pub(super) fn check_node_login(
        &mut self,
        req: Request<'_>,
        user_at: usize,
        view: &View<'_>,
        now: Instant,
    ) {
        // The node's user is not known before the node has answered: any other login.
        if !self.may_log_in_as(None) {
            return;
        }
        let Some(master) = view.target(Place::Any, self.client.id() as usize).cloned() else {
            return self.no_backend(view, Place::Any);
        };
        // AUTH's user is its first argument; a HELLO's follows its AUTH option.
        let hello = user_at > 1;
        let (user, password) = (req.arg(user_at), req.arg(user_at + 1));
        let mut auth = BytesMut::new();
        Reply(&mut auth).command(&[b"AUTH", user, password]);
        let auth = auth.freeze();
        let timeout = std::time::Duration::from_millis(self.pool.config.timeout);
        // The login is read again when the node has answered; never logged (see
        // `node_login_checked`, which answers it before SLOWLOG could see it).
        self.on_own_connection(&master, auth, None, now, now + timeout);
        if hello {
            // Right behind the check: released once it passed, dropped if it did not. Without
            // any AUTH option (HELLO read them all; the last one counts, as in Redis).
            let mut keep = vec![0, 1];
            let mut i = 2;
            while i < req.argc() {
                let auth = req.arg(i).eq_ignore_ascii_case(b"AUTH");
                if !auth {
                    // SETNAME and its name.
                    keep.extend(i..req.argc().min(i + 2));
                }
                i += if auth { 3 } else { 2 };
            }
            self.hold(&fanout::with_args(&req, &keep));
        }
    }

    /// The node answered the login (or could not): the client is that user from now on, or stays
    /// who it was. `hello`: a HELLO is the next request, and answers for both.
    #[cold]
    pub(super) fn node_login_checked(&mut self, event: HeadEvent, hello: bool) {
        let Some(Pending::Wait(w)) = self.pending.front() else {
            return;
        };
        let login = w.frame.clone();
        let passed = match event {
            HeadEvent::Reply(Ok(reply)) if &reply[..] == b"+OK\r\n" => self.logged_in(&login),
            // The node's refusal (WRONGPASS ...): counted and slowed down as slotline's own.
            HeadEvent::Reply(Ok(reply)) => {
                let user = login_args(&login).map(|(user, _)| user);
                super::super::local::login_failed(self, user.as_deref());
                self.out.extend_from_slice(&reply);
                false
            }
            HeadEvent::Reply(Err(e)) => {
                self.own = None;
                self.error_now(&format!("ERR slotline: {e}"));
                false
            }
            HeadEvent::Timeout => {
                self.own = None;
                self.timed_out();
                false
            }
        };
        // A HELLO's login: the HELLO behind it answers, or goes with it.
        if passed && !hello {
            Reply(&mut self.out).ok();
        }
        self.pop_front();
        if hello && !passed {
            self.pop_front();
        }
    }

    /// A node accepted `AUTH user password`: the client's requests run as that user from now on.
    /// False, with the client told why, when the pool has no room for another login.
    fn logged_in(&mut self, login: &Bytes) -> bool {
        let Some((user, password)) = login_args(login) else {
            return false;
        };
        let active = (self.pool.router.settings().logins)
            .add(&user, &password)
            .and_then(|index| self.pool.acl.node_login(&user, index));
        // Its connections so far are logged in as who it was (the one that took the AUTH
        // included, were it refused below).
        self.leave_own_connections();
        let Some(active) = active else {
            self.error_now(&format!(
                "ERR slotline: pool '{}' already logs in to its nodes as {NODE_LOGINS} other users (node_logins)",
                self.pool.name
            ));
            return false;
        };
        self.pool.acl.failures.succeeded(self.client.addr());
        self.set_user(Some(active));
        true
    }
}

/// The user and password of the `AUTH user password` a login check sent.
fn login_args(login: &Bytes) -> Option<(Bytes, Bytes)> {
    let parser = RequestParser::parsed_again(login)?;
    let req = Request {
        frame: login,
        args: parser.args(),
    };
    (req.argc() == 3).then(|| {
        (
            Bytes::copy_from_slice(req.arg(1)),
            Bytes::copy_from_slice(req.arg(2)),
        )
    })
}
