//! Logging in: AUTH, HELLO's AUTH, and the ACL commands a client may run about itself.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::session::{printable, Ctx};
use super::client::valid_client_name;
use super::Outcome;
use crate::command::{self, Request};
use crate::protocol::parse_int;

/// Failed logins are a client's to provoke: said now and then.
static AUTH_LOG: crate::throttle::Throttle =
    crate::throttle::Throttle::new(Duration::from_secs(10));

/// AUTH, against the pool's users (see [`crate::acl`]); the one-argument form logs in as the default
/// user (the pool's one user, without users of its own), as Redis's does.
pub(super) fn auth(ctx: &mut Ctx, req: Request<'_>) -> Outcome {
    let (user, password) = match req.argc() {
        2 => (None, req.arg(1)),
        3 => (Some(req.arg(1)), req.arg(2)),
        _ => {
            ctx.error("ERR syntax error");
            return Outcome::Answered;
        }
    };
    if user.is_none() && ctx.pool.acl.default_needs_no_password() {
        ctx.error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
        return Outcome::Answered;
    }
    if node_user(ctx, user) {
        return Outcome::NodeLogin { user_at: 1 };
    }
    if login(ctx, user, password) {
        ctx.reply(|r| r.ok());
    }
    Outcome::Answered
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Logs the client in as `user` (the default user when absent) if `password` is its; false when it
/// did not, the client told why (`WRONGPASS`, or that it is subscribed: see
/// [`Ctx::may_log_in_as`]). A wrong password is counted, logged now and then, put in ACL LOG, and
/// delays the client's reply (see [`crate::acl::Failures`]).
fn login(ctx: &mut Ctx, user: Option<&[u8]>, password: &[u8]) -> bool {
    let acl = ctx.pool.acl.clone();
    if let Some(active) = acl.login(user, password) {
        acl.failures.succeeded(ctx.client.addr());
        if !ctx.may_log_in_as(Some(active.backend)) {
            return false;
        }
        ctx.set_user(Some(active));
        return true;
    }
    login_failed(ctx, user);
    ctx.error(WRONGPASS);
    false
}

/// A failed login as `user` (the default user when absent): counted, logged now and then, put in
/// ACL LOG, and the client's reply delayed.
pub(crate) fn login_failed(ctx: &mut Ctx, user: Option<&[u8]>) {
    let acl = ctx.pool.acl.clone();
    let now = Instant::now();
    let wait = acl.failures.failed(ctx.client.addr(), now);
    ctx.penalty_ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let username = user.unwrap_or(acl.default_name().as_bytes());
    if AUTH_LOG.ready() {
        // Never the password; the user name helps tell a misconfigured client from a guesser.
        tracing::warn!(pool = %ctx.pool.name, client = %ctx.client.addr(), user = %printable(username),
            failures = acl.failures.total(), "failed login (logged at most every 10 s)");
    }
    acl.log
        .note("auth", "toplevel", b"AUTH", username, &ctx.client.record);
}

/// Whether CLIENT KILL USER names a user of the pool.
pub(super) fn known_user(ctx: &Ctx, name: &str) -> bool {
    let acl = &ctx.pool.acl;
    match acl.configured() {
        true => acl.users().get(name).is_some(),
        false => name == "default",
    }
}

/// ACL, answered from the pool's own users.
pub(super) fn acl(ctx: &mut Ctx, req: Request<'_>) {
    let acl = ctx.pool.acl.clone();
    let user = ctx.user.clone();
    let asker = crate::acl::command::Asker {
        user: user.as_deref(),
        proto: ctx.protocol(),
    };
    ctx.reply(|r| crate::acl::command::answer(&acl, req, &asker, r));
}

pub(super) fn hello(ctx: &mut Ctx, req: Request<'_>) -> Outcome {
    let mut proto = ctx.protocol();
    if req.argc() >= 2 {
        match parse_int(req.arg(1)) {
            Some(p @ (2 | 3)) => proto = p as u8,
            Some(_) => {
                ctx.error("NOPROTO unsupported protocol version");
                return Outcome::Answered;
            }
            None => {
                ctx.error("ERR Protocol version is not an integer or out of range");
                return Outcome::Answered;
            }
        }
    }
    // Every option is read before any takes effect, as Redis does.
    let (mut i, mut name, mut auth) = (2, None, None);
    while i < req.argc() {
        let opt = req.arg(i);
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < req.argc() {
            auth = Some(i + 1);
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < req.argc() {
            name = Some(req.arg(i + 1));
            i += 2;
        } else {
            let msg = format!("ERR Syntax error in HELLO option '{}'", printable(opt));
            ctx.error(&msg);
            return Outcome::Answered;
        }
    }
    if let Some(user_at) = auth {
        let (user, password) = (req.arg(user_at), req.arg(user_at + 1));
        if node_user(ctx, Some(user)) {
            return Outcome::NodeLogin { user_at };
        }
        if !login(ctx, Some(user), password) {
            return Outcome::Answered;
        }
    }
    if ctx.user.is_none() {
        ctx.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        return Outcome::Answered;
    }
    if name.is_some_and(|name| !valid_client_name(name)) {
        ctx.error("ERR Client names cannot contain spaces, newlines or special characters.");
        return Outcome::Answered;
    }
    let name = name.map(Bytes::copy_from_slice);
    if name.is_some() {
        ctx.client.record.set_name(name);
    }
    ctx.set_protocol(proto);
    let id = ctx.client.id() as i64;
    ctx.reply(|r| {
        r.pairs(proto, 7);
        r.bulk(b"server");
        r.bulk(b"redis");
        r.bulk(b"version");
        r.bulk(command::TABLE_REDIS_VERSION.as_bytes());
        r.bulk(b"proto");
        r.int(proto as i64);
        r.bulk(b"id");
        r.int(id);
        r.bulk(b"mode");
        r.bulk(b"standalone");
        r.bulk(b"role");
        r.bulk(b"master");
        r.bulk(b"modules");
        r.array(0);
    });
    Outcome::Answered
}

/// Whether a login as `user` is the nodes' to check (`node_logins`: any user but slotline's own).
fn node_user(ctx: &Ctx, user: Option<&[u8]>) -> bool {
    ctx.pool.config.node_logins && user.is_some_and(|u| u != ctx.pool.acl.default_name().as_bytes())
}
