//! Commands slotline answers itself: connection handshakes, introspection, and INFO. Logging in
//! (AUTH, HELLO's AUTH) is [`login`]'s; CLIENT and its subcommands are [`client`]'s.

use super::session::{printable, Ctx};
use crate::command::{self, flags, Request, Spec};
use crate::protocol::{parse_int, Reply};

mod client;
mod login;

use client::client;
pub(crate) use login::login_failed;
use login::{acl, auth, hello};

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
pub(super) fn help_reply(ctx: &mut Ctx, lines: &[&str]) {
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
