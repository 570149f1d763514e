//! CLIENT and its subcommands: the client's name and options, CLIENT LIST and KILL over every
//! client of the process, and CLIENT TRACKING's switches.

use std::time::Instant;

use bytes::Bytes;

use super::super::session::{printable, Ctx, ReplyMode};
use super::help_reply;
use super::login::known_user;
use crate::clients;
use crate::command::{self, Request};
use crate::protocol::parse_int;
use crate::tracking;

pub(super) fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

pub(super) fn client(ctx: &mut Ctx, req: Request<'_>) {
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
