//! Commands slotline answers itself: connection handshakes, introspection, and INFO.

use std::time::Instant;

use bytes::Bytes;

use super::session::{printable, Ctx, ReplyMode};
use crate::clients;
use crate::command::{self, flags, Request, Spec};
use crate::protocol::{parse_int, Reply};
use crate::tracking;

/// What became of a locally handled command.
pub(crate) enum Outcome {
    /// A reply was queued.
    Answered,
    /// Best answered by a node after all (static data only the server has, like COMMAND DOCS).
    Forward,
    /// Answered by every master: PING while a script runs, so that a busy node answers `-BUSY`.
    EveryMaster,
    /// INFO with sections only the masters can fill (their keys and keyspace counters).
    Info,
    /// AUTH, or HELLO with AUTH, as a node user (`node_logins`): a master checks the login, whose
    /// user is argument `user_at` (the password follows it).
    NodeLogin { user_at: usize },
    /// Reply queued; close the connection once everything before it is written.
    Quit,
}

pub(crate) fn handle(ctx: &mut Ctx, req: Request<'_>, spec: &Spec) -> Outcome {
    let name = spec.name.split('|').next().unwrap_or(spec.name);
    match name {
        "ping" => match req.argc() {
            1 | 2 if ctx.others_run_scripts() => return Outcome::EveryMaster,
            1 => ctx.reply(|r| r.status("PONG")),
            2 => ctx.reply(|r| r.bulk(req.arg(1))),
            _ => ctx.error("ERR wrong number of arguments for 'ping' command"),
        },
        "echo" => ctx.reply(|r| r.bulk(req.arg(1))),
        "quit" => {
            ctx.reply(|r| r.ok());
            return Outcome::Quit;
        }
        "select" => match parse_int(req.arg(1)) {
            Some(0) => ctx.reply(|r| r.ok()),
            Some(_) => {
                let msg = match ctx.pool.router {
                    super::Router::Cluster(_) => format!(
                        "ERR SELECT is not allowed: pool '{}' is a Redis Cluster, which has only database 0",
                        ctx.pool.name
                    ),
                    super::Router::Shards(_) | super::Router::Primary(_) => format!(
                        "ERR SELECT is not allowed: pool '{}' serves database 0 only",
                        ctx.pool.name
                    ),
                };
                ctx.error(&msg)
            }
            None => ctx.error("ERR value is not an integer or out of range"),
        },
        "readonly" => {
            // Redis Cluster's opt-in to replica reads, for this connection: the pool's policy
            // when it reads from replicas, prefer_replica when it does not.
            let pool_policy = ctx.pool.config.read_from;
            ctx.reads.chosen = Some(match pool_policy {
                crate::read::ReadFrom::Master => crate::read::ReadFrom::PreferReplica,
                other => other,
            });
            match &ctx.pool.router {
                crate::server::Router::Cluster(cluster) => cluster.read_from_replicas(),
                crate::server::Router::Primary(primary) => primary.read_from_replicas(),
                crate::server::Router::Shards(_) => {}
            }
            ctx.reply(|r| r.ok())
        }
        "readwrite" => {
            ctx.reads.chosen = Some(crate::read::ReadFrom::Master);
            ctx.reply(|r| r.ok())
        }
        "reset" => {
            ctx.reads = Default::default();
            ctx.end_transaction();
            ctx.end_pubsub();
            ctx.reset_reply_mode();
            ctx.pool.tracking.disable(ctx.client.id());
            ctx.tracking = None;
            ctx.set_protocol(2);
            ctx.client.record.set_name(None);
            let initial = ctx.pool.acl.initial();
            ctx.set_user(initial);
            ctx.reply(|r| r.status("RESET"));
        }
        "auth" => return auth(ctx, req),
        "acl" => acl(ctx, req),
        "hello" => return hello(ctx, req),
        "client" => client(ctx, req),
        "slowlog" => slowlog(ctx, req),
        "latency" => latency(ctx, req),
        "monitor" => ctx.start_monitor(),
        "command" => return command_cmd(ctx, req),
        "info" if super::info::needs_nodes(req) => return Outcome::Info,
        "info" => {
            let text = super::info::render(&ctx.pool, &ctx.client, req, None);
            ctx.reply(|r| r.bulk(text.as_bytes()));
        }
        _ => {
            let msg = format!("ERR {} is not supported by slotline", spec.display_name());
            ctx.error(&msg)
        }
    }
    Outcome::Answered
}

/// AUTH, against the pool's users (see [`crate::acl`]); the one-argument form logs in as the default
/// user (the pool's one user, without users of its own), as Redis's does.
fn auth(ctx: &mut Ctx, req: Request<'_>) -> Outcome {
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

/// Failed logins are a client's to provoke: said now and then.
static AUTH_LOG: crate::throttle::Throttle =
    crate::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// Whether CLIENT KILL USER names a user of the pool.
fn known_user(ctx: &Ctx, name: &str) -> bool {
    let acl = &ctx.pool.acl;
    match acl.configured() {
        true => acl.users().get(name).is_some(),
        false => name == "default",
    }
}

/// ACL, answered from the pool's own users.
fn acl(ctx: &mut Ctx, req: Request<'_>) {
    let acl = ctx.pool.acl.clone();
    let user = ctx.user.clone();
    let asker = crate::acl::command::Asker {
        user: user.as_deref(),
        proto: ctx.protocol(),
    };
    ctx.reply(|r| crate::acl::command::answer(&acl, req, &asker, r));
}

fn hello(ctx: &mut Ctx, req: Request<'_>) -> Outcome {
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

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn client(ctx: &mut Ctx, req: Request<'_>) {
    let sub = req.arg(1).to_ascii_lowercase();
    let argc = req.argc();
    match (sub.as_slice(), argc) {
        (b"setname", 3) => {
            if !valid_client_name(req.arg(2)) {
                return ctx.error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            let name = (!req.arg(2).is_empty()).then(|| Bytes::copy_from_slice(req.arg(2)));
            ctx.client.record.set_name(name);
            ctx.reply(|r| r.ok());
        }
        (b"getname", 2) => match ctx.client.record.name() {
            Some(name) => ctx.reply(|r| r.bulk(&name)),
            None => ctx.reply(|r| r.null()),
        },
        (b"id", 2) => {
            let id = ctx.client.id() as i64;
            ctx.reply(|r| r.int(id));
        }
        (b"setinfo", 4) => {
            let value = Bytes::copy_from_slice(req.arg(3));
            let attr = req.arg(2).to_ascii_lowercase();
            match attr.as_slice() {
                b"lib-name" => ctx.client.record.set_lib(false, value),
                b"lib-ver" => ctx.client.record.set_lib(true, value),
                _ => {
                    let msg = format!("ERR Unrecognized option '{}'", printable(req.arg(2)));
                    return ctx.error(&msg);
                }
            }
            ctx.reply(|r| r.ok());
        }
        (b"info", 2) => {
            // This very command is the client's last, as Redis shows it.
            ctx.publish_client_state();
            let line = ctx.client.record.line(Instant::now(), req.frame.len());
            ctx.reply(|r| r.bulk(line.as_bytes()));
        }
        (b"list", _) => client_list(ctx, req),
        (b"pause", 3 | 4) => {
            let mode = match req.argc() {
                3 => crate::pause::Mode::All,
                _ if req.arg(3).eq_ignore_ascii_case(b"write") => crate::pause::Mode::Write,
                _ if req.arg(3).eq_ignore_ascii_case(b"all") => crate::pause::Mode::All,
                _ => return ctx.error("ERR syntax error"),
            };
            match parse_int(req.arg(2)) {
                Some(ms) if ms >= 0 => {
                    let timeout = std::time::Duration::from_millis(ms as u64);
                    ctx.pool.shared.pause.pause(timeout, mode);
                    ctx.reply(|r| r.ok());
                }
                Some(_) => ctx.error("ERR timeout is negative"),
                None => ctx.error("ERR timeout is not an integer or out of range"),
            }
        }
        (b"unpause", 2) => {
            ctx.pool.shared.pause.unpause();
            ctx.reply(|r| r.ok());
        }
        (b"unblock", 3 | 4) => {
            let how = match req.argc() {
                3 => Some(clients::Unblock::Timeout),
                _ if req.arg(3).eq_ignore_ascii_case(b"timeout") => Some(clients::Unblock::Timeout),
                _ if req.arg(3).eq_ignore_ascii_case(b"error") => Some(clients::Unblock::Error),
                _ => None,
            };
            let (Some(how), Some(id)) = (how, parse_int(req.arg(2))) else {
                return match how {
                    None => ctx.error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
                    Some(_) => ctx.error("ERR value is not an integer or out of range"),
                };
            };
            let target = u64::try_from(id)
                .ok()
                .and_then(|id| ctx.pool.shared.clients.get(id));
            let unblocked = target.is_some_and(|t| t.unblock(how));
            if unblocked {
                ctx.pool.shared.lifecycle.nudge(id as u64);
            }
            ctx.reply(|r| r.int(i64::from(unblocked)));
        }
        (b"tracking", 3..) => client_tracking(ctx, req),
        (b"caching", 3) => client_caching(ctx, req),
        (b"getredir", 2) => {
            let status = ctx.pool.tracking.status(ctx.client.id());
            ctx.reply(|r| r.int(status.map_or(-1, |s| s.options.redirect as i64)))
        }
        (b"trackinginfo", 2) => tracking_info(ctx),
        (b"kill", 3..) => client_kill(ctx, req),
        (b"no-evict" | b"no-touch", 3) => ctx.reply(|r| r.ok()),
        (b"reply", 3) => match ReplyMode::parse(req.arg(2)) {
            Some(mode) => ctx.set_reply_mode(mode),
            None => ctx.error("ERR syntax error"),
        },
        (b"help", 2) => help_reply(
            ctx,
            &[
                "CLIENT <subcommand> (answered by slotline for its own clients). Subcommands are:",
                "ID",
                "GETNAME",
                "SETNAME <name>",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "INFO",
                "LIST [TYPE NORMAL|PUBSUB|MASTER|REPLICA] [ID <id> ...]",
                "PAUSE <timeout> [WRITE|ALL]",
                "UNPAUSE",
                "KILL <ip:port> | KILL <ID|ADDR|LADDR|TYPE|USER|SKIPME|MAXAGE> <value> ...",
            ],
        ),
        (b"setname" | b"getname" | b"id" | b"setinfo" | b"info" | b"help", _) => {
            let msg = format!(
                "ERR wrong number of arguments for 'client|{}' command",
                printable(&sub)
            );
            ctx.error(&msg)
        }
        // A subcommand Redis does not know either: Redis's own error (clients probe with them).
        _ if command::lookup(b"client", Some(&sub)).is_err() => {
            let msg = format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                printable(req.arg(1))
            );
            ctx.error(&msg)
        }
        _ => {
            let msg = format!(
                "ERR CLIENT {} is not supported by slotline: it describes one server connection, not the proxy",
                printable(req.arg(1)).to_uppercase()
            );
            ctx.error(&msg)
        }
    }
}

/// LATENCY about slotline itself. It keeps no latency events (as Redis with its default
/// `latency-monitor-threshold 0`): LATEST and HISTORY are empty, RESET resets none, DOCTOR says
/// where slotline's latency is measured instead; GRAPH and HISTOGRAM are refused with the reason.
fn latency(ctx: &mut Ctx, req: Request<'_>) {
    match req.arg(1).to_ascii_lowercase().as_slice() {
        b"latest" | b"history" => ctx.reply(|r| r.array(0)),
        b"reset" => ctx.reply(|r| r.int(0)),
        b"doctor" => ctx.reply(|r| {
            r.bulk(
                b"slotline records no latency events. Requests slower than slowlog_log_slower_than \
                  are in SLOWLOG (timed end to end), and every request's latency is in /metrics \
                  (slotline_request_duration_seconds). Ask the nodes for their own LATENCY.",
            )
        }),
        b"help" => help_reply(
            ctx,
            &[
                "LATENCY <subcommand> (about slotline itself, which records no latency events). Subcommands are:",
                "LATEST",
                "HISTORY <event>",
                "RESET [<event> ...]",
                "DOCTOR",
            ],
        ),
        _ => {
            let msg = format!(
                "ERR LATENCY {} is not supported by slotline: it records no latency events (see SLOWLOG and /metrics)",
                printable(req.arg(1)).to_uppercase()
            );
            ctx.error(&msg)
        }
    }
}

/// A HELP reply: one status line each.
fn help_reply(ctx: &mut Ctx, lines: &[&str]) {
    ctx.reply(|r| {
        r.array(lines.len());
        for l in lines {
            r.status(l);
        }
    });
}

/// SLOWLOG GET [count] | LEN | RESET | HELP: slotline's own log (see `slowlog`).
fn slowlog(ctx: &mut Ctx, req: Request<'_>) {
    let log = &ctx.pool.shared.slowlog;
    match (req.arg(1).to_ascii_lowercase().as_slice(), req.argc()) {
        (b"get", 2 | 3) => {
            let count = match req.argc() {
                2 => Some(10),
                _ => match parse_int(req.arg(2)) {
                    Some(-1) => None,
                    Some(n) if n >= 0 => Some(n as usize),
                    _ => {
                        return ctx.error(
                            "ERR count should be greater than or equal to -1",
                        )
                    }
                },
            };
            let entries = log.get(count);
            ctx.reply(|r| {
                r.array(entries.len());
                for e in &entries {
                    r.array(6);
                    r.int(e.id as i64);
                    r.int(e.at as i64);
                    r.int(e.micros as i64);
                    r.array(e.args.len());
                    for a in &e.args {
                        r.bulk(a);
                    }
                    r.bulk(e.client_addr.as_bytes());
                    r.bulk(&e.client_name);
                }
            });
        }
        (b"len", 2) => {
            let len = log.len() as i64;
            ctx.reply(|r| r.int(len));
        }
        (b"reset", 2) => {
            log.reset();
            ctx.reply(|r| r.ok());
        }
        (b"help", 2) => help_reply(
            ctx,
            &[
                "SLOWLOG <subcommand> (slotline's own log: requests timed end to end). Subcommands are:",
                "GET [<count>]",
                "LEN",
                "RESET",
            ],
        ),
        _ => {
            let msg = format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
                printable(req.arg(1))
            );
            ctx.error(&msg)
        }
    }
}

/// CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...]: slotline's own clients, every pool's.
fn client_list(ctx: &mut Ctx, req: Request<'_>) {
    let mut filter = clients::Filter::default();
    let mut i = 2;
    while i < req.argc() {
        let opt = req.arg(i).to_ascii_lowercase();
        match (opt.as_slice(), req.argc() - i) {
            (b"type", 2..) => match clients::Kind::parse(req.arg(i + 1)) {
                Some(kind) => filter.kind = Some(kind),
                None => {
                    let msg = format!("ERR Unknown client type '{}'", printable(req.arg(i + 1)));
                    return ctx.error(&msg);
                }
            },
            (b"id", 2..) => {
                for j in i + 1..req.argc() {
                    match parse_int(req.arg(j)) {
                        Some(id) if id > 0 => filter.ids.push(id as u64),
                        _ => return ctx.error("ERR Invalid client ID"),
                    }
                }
                i = req.argc();
                continue;
            }
            _ => return ctx.error("ERR syntax error"),
        }
        i += 2;
    }
    ctx.publish_client_state();
    let now = Instant::now();
    let mut list = String::new();
    let me = ctx.client.id();
    for record in ctx.pool.shared.clients.all() {
        if filter.matches(&record, 0, now) {
            let qbuf = if record.id == me { req.frame.len() } else { 0 };
            list.push_str(&record.line(now, qbuf));
        }
    }
    ctx.reply(|r| r.bulk(list.as_bytes()));
}

/// CLIENT KILL addr:port (old syntax: +OK or an error), or CLIENT KILL <filter> <value> ... (the
/// number killed).
fn client_kill(ctx: &mut Ctx, req: Request<'_>) {
    let now = Instant::now();
    let (filter, old_syntax) = match req.argc() {
        3 => {
            let filter = clients::Filter {
                addr: Some(String::from_utf8_lossy(req.arg(2)).into_owned()),
                ..clients::Filter::default()
            };
            (filter, true)
        }
        _ => {
            let args: Vec<&[u8]> = (2..req.argc()).map(|i| req.arg(i)).collect();
            match clients::Filter::parse_kill(&args) {
                // A user the pool knows (without users of its own: `default`, as before).
                Ok(clients::Filter {
                    user: Some(user), ..
                }) if !known_user(ctx, &user) => {
                    return ctx.error(&format!("ERR No such user '{user}'"));
                }
                Ok(filter) => (filter, false),
                Err(msg) => return ctx.error(msg),
            }
        }
    };
    let me = ctx.client.id();
    let killed = ctx
        .pool
        .shared
        .kill_clients(|record| filter.matches(record, me, now));
    match (old_syntax, killed) {
        (true, 0) => ctx.error("ERR No such client"),
        (true, _) => ctx.reply(|r| r.ok()),
        (false, n) => ctx.reply(|r| r.int(n as i64)),
    }
}

fn command_cmd(ctx: &mut Ctx, req: Request<'_>) -> Outcome {
    let sub = req.arg(1).to_ascii_lowercase();
    match sub.as_slice() {
        b"" => {
            let specs: Vec<&Spec> = command::top_level().collect();
            ctx.reply(|r| {
                r.array(specs.len());
                for spec in specs {
                    command_info(r, spec);
                }
            });
        }
        b"count" => {
            let n = command::top_level().count() as i64;
            ctx.reply(|r| r.int(n));
        }
        b"info" => ctx.reply(|r| {
            r.array(req.argc() - 2);
            for i in 2..req.argc() {
                match command::lookup(req.arg(i), None) {
                    Ok(spec) => command_info(r, spec),
                    Err(_) => r.0.extend_from_slice(b"*-1\r\n"),
                }
            }
        }),
        // Static server data (documentation, the command list and its filters, key flags): the
        // nodes have it and slotline need not copy it.
        b"docs" | b"list" | b"getkeysandflags" => return Outcome::Forward,
        b"getkeys" => {
            let inner = Request {
                frame: req.frame,
                args: &req.args[2..],
            };
            let found = command::lookup(inner.arg(0), (inner.argc() > 1).then(|| inner.arg(1)));
            match found {
                Ok(spec) if spec.arity_ok(inner.argc()) => {
                    let mut keys = Vec::new();
                    inner.for_each_key(spec, |k| keys.push(k));
                    if spec.keys.is_empty() {
                        ctx.error("ERR The command has no key arguments");
                    } else if keys.is_empty() && !spec.has(flags::NO_MANDATORY_KEYS) {
                        ctx.error("ERR Invalid arguments specified for command");
                    } else {
                        ctx.reply(|r| {
                            r.array(keys.len());
                            for k in keys {
                                r.bulk(k);
                            }
                        });
                    }
                }
                Ok(_) => ctx.error("ERR Invalid number of arguments specified for command"),
                Err(_) => ctx.error("ERR Invalid command specified"),
            }
        }
        b"help" => ctx.reply(|r| {
            r.array(1);
            r.status("COMMAND [COUNT | INFO name... | LIST | DOCS name... | GETKEYS cmd args...]");
        }),
        _ => {
            let msg = format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                printable(req.arg(1))
            );
            ctx.error(&msg);
        }
    }
    Outcome::Answered
}

/// The classic six fields of `COMMAND INFO` plus empty ACL categories, tips, key specs and subcommands.
fn command_info(r: &mut Reply<'_>, spec: &Spec) {
    r.array(10);
    r.bulk(spec.name.as_bytes());
    r.int(spec.arity as i64);
    let names: Vec<&str> = flags::NAMES
        .iter()
        .filter(|(f, _)| spec.has(*f))
        .map(|(_, n)| *n)
        .collect();
    r.array(names.len());
    for n in names {
        r.status(n);
    }
    let (first, last, step) = legacy_key_range(spec);
    r.int(first);
    r.int(last);
    r.int(step);
    for _ in 0..4 {
        r.array(0);
    }
}

/// First/last/step as in pre-7 `COMMAND` output: the consecutive plain range specs merged, as Redis's
/// `populateCommandLegacyRangeSpec` does.
fn legacy_key_range(spec: &Spec) -> (i64, i64, i64) {
    use crate::command::{Begin, Find};
    let range = |ks: &crate::command::KeySpec| match (ks.begin, ks.find) {
        (Begin::Index(pos), Find::Range { last_key, step, .. }) => {
            Some((pos as i64, last_key as i64, step as i64))
        }
        _ => None,
    };
    if let [only] = spec.keys {
        if let Some((pos, last, step)) = range(only) {
            return (pos, if last >= 0 { pos + last } else { last }, step);
        }
    }
    let (mut first, mut last, mut prev_last) = (i64::MAX, 0i64, 0i64);
    for (pos, last_key, step) in spec.keys.iter().filter_map(range) {
        if step != 1 || (prev_last != 0 && prev_last != pos - 1) {
            continue;
        }
        first = first.min(pos);
        let abs = if last_key >= 0 {
            last_key + pos
        } else {
            last_key
        };
        // Compared as unsigned, like Redis, so that a negative (from the end) last key wins.
        if abs as u64 > last as u64 {
            last = abs;
        }
        prev_last = last;
    }
    if first == i64::MAX {
        (0, 0, 0)
    } else {
        (first, last, 1)
    }
}

/// CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP], with
/// Redis's checks and errors (see [`crate::tracking`]).
fn client_tracking(ctx: &mut Ctx, req: Request<'_>) {
    let mut options = tracking::Options::default();
    let mut i = 3;
    while i < req.argc() {
        let more = i + 1 < req.argc();
        match req.arg(i).to_ascii_lowercase().as_slice() {
            b"redirect" if more => {
                i += 1;
                if options.redirect != 0 {
                    return ctx.error("ERR A client can only redirect to a single other client");
                }
                let Some(id) = parse_int(req.arg(i)) else {
                    return ctx.error("ERR value is not an integer or out of range");
                };
                if u64::try_from(id)
                    .ok()
                    .and_then(|id| ctx.pool.shared.clients.get(id))
                    .is_none()
                {
                    return ctx.error("ERR The client ID you want redirect to does not exist");
                }
                options.redirect = id as u64;
            }
            b"bcast" => options.bcast = true,
            b"optin" => options.optin = true,
            b"optout" => options.optout = true,
            b"noloop" => options.noloop = true,
            b"prefix" if more => {
                i += 1;
                options.prefixes.push(Bytes::copy_from_slice(req.arg(i)));
            }
            _ => return ctx.error("ERR syntax error"),
        }
        i += 1;
    }
    let id = ctx.client.id();
    match req.arg(2).to_ascii_lowercase().as_slice() {
        b"on" => {
            if ctx.pool.migration.as_ref().is_some_and(|m| m.verifying()) {
                // Its invalidations come from the new placement's nodes, and the data is still on
                // the old one.
                return ctx.error("ERR slotline: CLIENT TRACKING is not available while the pool's migration verifies (until `slotline migrate start`)");
            }
            if !options.bcast && !options.prefixes.is_empty() {
                return ctx.error("ERR PREFIX option requires BCAST mode to be enabled");
            }
            let current = ctx.pool.tracking.status(id).map(|s| s.options);
            if current.as_ref().is_some_and(|c| c.bcast != options.bcast) {
                return ctx.error("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.");
            }
            if options.bcast && (options.optin || options.optout) {
                return ctx.error("ERR OPTIN and OPTOUT are not compatible with BCAST");
            }
            if options.optin && options.optout {
                return ctx.error("ERR You can't specify both OPTIN mode and OPTOUT mode");
            }
            if current
                .as_ref()
                .is_some_and(|c| (options.optin && c.optout) || (options.optout && c.optin))
            {
                return ctx.error("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.");
            }
            if options.bcast {
                let existing = current.map(|c| c.prefixes).unwrap_or_default();
                if let Some(msg) = prefix_collision(&options.prefixes, &existing) {
                    return ctx.error(&msg);
                }
            }
            let pool = ctx.pool.clone();
            let at_once = tracking::Tracking::enable(&pool, id, options, || ctx.answer_later());
            if let Some(status) = pool.tracking.status(id) {
                let caching = ctx.tracking.as_ref().is_some_and(|t| t.caching);
                ctx.tracking = Some(Box::new(tracking::ClientSide {
                    caching,
                    ..tracking::ClientSide::new(&status.options)
                }));
            }
            if at_once {
                ctx.reply(|r| r.ok());
            }
        }
        b"off" => {
            ctx.pool.tracking.disable(id);
            ctx.tracking = None;
            ctx.reply(|r| r.ok());
        }
        _ => ctx.error("ERR syntax error"),
    }
}

/// Redis's error when two prefixes of one client would invalidate the same key.
fn prefix_collision(new: &[Bytes], existing: &[Bytes]) -> Option<String> {
    let overlap = |a: &[u8], b: &[u8]| a.starts_with(b) || b.starts_with(a);
    for (i, p) in new.iter().enumerate() {
        if let Some(old) = existing.iter().find(|old| overlap(old, p)) {
            return Some(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                printable(p),
                printable(old)
            ));
        }
        if let Some(other) = new[i + 1..].iter().find(|other| overlap(other, p)) {
            return Some(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                printable(p),
                printable(other)
            ));
        }
    }
    None
}

/// CLIENT CACHING YES|NO: whether the next command's keys are tracked (OPTIN, OPTOUT).
fn client_caching(ctx: &mut Ctx, req: Request<'_>) {
    let Some(side) = ctx.tracking.as_deref_mut() else {
        return ctx.error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
    };
    let err = match req.arg(2).to_ascii_lowercase().as_slice() {
        b"yes" if side.optin => None,
        b"yes" => {
            Some("ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.")
        }
        b"no" if side.optout => None,
        b"no" => {
            Some("ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.")
        }
        _ => Some("ERR syntax error"),
    };
    match err {
        Some(msg) => ctx.error(msg),
        None => {
            side.caching = true;
            ctx.reply(|r| r.ok());
        }
    }
}

/// CLIENT TRACKINGINFO, in Redis's format.
fn tracking_info(ctx: &mut Ctx) {
    let status = ctx.pool.tracking.status(ctx.client.id());
    let caching = ctx.tracking.as_ref().is_some_and(|t| t.caching);
    let mut flags: Vec<&[u8]> = Vec::new();
    let (redirect, prefixes) = match &status {
        None => {
            flags.push(b"off");
            (-1, Vec::new())
        }
        Some(s) => {
            let o = &s.options;
            flags.push(b"on");
            if o.bcast {
                flags.push(b"bcast");
            }
            if o.optin {
                flags.push(b"optin");
                if caching {
                    flags.push(b"caching-yes");
                }
            }
            if o.optout {
                flags.push(b"optout");
                if caching {
                    flags.push(b"caching-no");
                }
            }
            if o.noloop {
                flags.push(b"noloop");
            }
            if s.broken {
                flags.push(b"broken_redirect");
            }
            let mut prefixes = o.prefixes.clone();
            prefixes.sort();
            (o.redirect as i64, prefixes)
        }
    };
    let proto = ctx.protocol();
    ctx.reply(|r| {
        r.pairs(proto, 3);
        r.bulk(b"flags");
        match proto {
            3 => r.set(flags.len()),
            _ => r.array(flags.len()),
        }
        for flag in &flags {
            r.bulk(flag);
        }
        r.bulk(b"redirect");
        r.int(redirect);
        r.bulk(b"prefixes");
        r.array(prefixes.len());
        for p in &prefixes {
            r.bulk(p);
        }
    });
}
