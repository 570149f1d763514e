//! The ACL command, answered from a pool's own users (when they come from `aclfile` or `users`):
//! WHOAMI, USERS, LIST, GETUSER, CAT, DRYRUN, LOG, GENPASS and HELP in Redis's formats. The users
//! are the file's to change, so SETUSER, DELUSER, LOAD and SAVE are refused.

use std::time::Instant;

use super::{Acl, Active, CATEGORIES};
use crate::command::{self, Request};
use crate::protocol::{parse_int, Reply};

/// Who asks, and how it wants its replies.
pub struct Asker<'a> {
    pub user: Option<&'a Active>,
    /// RESP version: 3 gets maps where RESP2 gets flat arrays.
    pub proto: u8,
}

/// Answers `ACL <subcommand> ...` (its arity already checked against the command table).
pub fn answer(acl: &Acl, req: Request<'_>, asker: &Asker<'_>, r: &mut Reply<'_>) {
    let sub = req.arg(1).to_ascii_lowercase();
    match sub.as_slice() {
        b"whoami" => match asker.user {
            Some(user) => r.bulk(user.rules.name.as_bytes()),
            None => r.bulk(acl.default_name().as_bytes()),
        },
        b"users" => {
            let users = acl.users();
            let names: Vec<_> = users.iter().map(|u| u.rules.name.clone()).collect();
            r.array(names.len());
            for name in names {
                r.bulk(name.as_bytes());
            }
        }
        b"list" => {
            let users = acl.users();
            let lines: Vec<_> = users.iter().map(|u| u.rules.describe()).collect();
            r.array(lines.len());
            for line in lines {
                r.bulk(line.as_bytes());
            }
        }
        b"getuser" => getuser(acl, req.arg(2), asker.proto, r),
        b"cat" => cat(req, r),
        b"dryrun" => dryrun(acl, req, r),
        b"log" => log(acl, req, asker.proto, r),
        b"genpass" => genpass(req, r),
        b"help" => {
            let lines = [
                "ACL <subcommand> [<arg> [value] [opt] ...]. slotline answers from its own users:",
                "CAT [<category>]",
                "DRYRUN <username> <command> [<arg> ...]",
                "GETUSER <username>",
                "GENPASS [<bits>]",
                "LIST",
                "LOG [<count> | RESET]",
                "USERS",
                "WHOAMI",
                "SETUSER, DELUSER, LOAD and SAVE are refused: change the users where they come from.",
            ];
            r.array(lines.len());
            for line in lines {
                r.status(line);
            }
        }
        b"setuser" | b"deluser" | b"load" | b"save" => {
            let from = match acl.file() {
                Some(path) => format!("the ACL file {}", path.display()),
                None => "the pool's users: setting".into(),
            };
            r.error(&format!(
                "ERR slotline: ACL {} is refused: the users come from {from}; change them there",
                String::from_utf8_lossy(&sub).to_uppercase()
            ));
        }
        _ => r.error(&format!(
            "ERR unknown subcommand '{}'. Try ACL HELP.",
            crate::server::printable(req.arg(1))
        )),
    }
}

fn getuser(acl: &Acl, name: &[u8], proto: u8, r: &mut Reply<'_>) {
    let users = acl.users();
    let Some(user) = std::str::from_utf8(name).ok().and_then(|n| users.get(n)) else {
        return r.null();
    };
    let u = &user.rules;
    r.pairs(proto, 6);
    r.bulk(b"flags");
    let mut flags = vec![if u.enabled { "on" } else { "off" }];
    if u.nopass {
        flags.push("nopass");
    }
    r.array(flags.len());
    for f in flags {
        r.bulk(f.as_bytes());
    }
    r.bulk(b"passwords");
    r.array(u.passwords.len());
    for p in &u.passwords {
        r.bulk(super::rules::hex(p).as_bytes());
    }
    r.bulk(b"commands");
    r.bulk(u.describe_commands().as_bytes());
    r.bulk(b"keys");
    r.bulk(u.describe_keys().as_bytes());
    r.bulk(b"channels");
    r.bulk(u.describe_channels().as_bytes());
    r.bulk(b"selectors");
    r.array(0);
}

fn cat(req: Request<'_>, r: &mut Reply<'_>) {
    if req.argc() == 2 {
        r.array(CATEGORIES.len());
        for c in CATEGORIES {
            r.bulk(c.as_bytes());
        }
        return;
    }
    let wanted = req.arg(2).to_ascii_lowercase();
    let Some(bit) = CATEGORIES.iter().position(|c| c.as_bytes() == wanted) else {
        return r.error(&format!(
            "ERR Unknown category '{}'",
            crate::server::printable(req.arg(2))
        ));
    };
    let names: Vec<_> = command::all()
        .iter()
        .filter(|s| s.acl & (1 << bit) != 0)
        .map(|s| s.name)
        .collect();
    r.array(names.len());
    for name in names {
        r.bulk(name.as_bytes());
    }
}

fn dryrun(acl: &Acl, req: Request<'_>, r: &mut Reply<'_>) {
    let users = acl.users();
    let name = req.arg(2);
    let Some(user) = std::str::from_utf8(name).ok().and_then(|n| users.get(n)) else {
        return r.error(&format!(
            "ERR User '{}' not found",
            crate::server::printable(name)
        ));
    };
    // The command under test, as a request of its own: arguments 3 and on.
    let args = &req.args[3..];
    let inner = Request {
        frame: req.frame,
        args,
    };
    let spec = match command::lookup(inner.arg(0), (inner.argc() > 1).then(|| inner.arg(1))) {
        Ok(spec) => spec,
        Err(_) => {
            return r.error(&format!(
                "ERR Command '{}' not found",
                crate::server::printable(inner.arg(0))
            ))
        }
    };
    if !spec.arity_ok(inner.argc()) {
        return r.error(&format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    match user.rules.check(inner, spec) {
        Ok(()) => r.ok(),
        Err(denial) => r.bulk(denial.dry_run_message().as_bytes()),
    }
}

fn log(acl: &Acl, req: Request<'_>, proto: u8, r: &mut Reply<'_>) {
    let count = match req.argc() {
        2 => 10,
        3 if req.arg(2).eq_ignore_ascii_case(b"RESET") => {
            acl.log.reset();
            return r.ok();
        }
        3 => match parse_int(req.arg(2)).filter(|n| *n >= 0) {
            Some(n) => n as usize,
            None => return r.error("ERR value is out of range, must be positive"),
        },
        _ => {
            return r.error(
                "ERR unknown subcommand or wrong number of arguments for 'LOG'. Try ACL HELP.",
            )
        }
    };
    let now = Instant::now();
    let entries = acl.log.newest(count);
    r.array(entries.len());
    for e in entries {
        r.pairs(proto, 7);
        r.bulk(b"count");
        r.int(e.count as i64);
        r.bulk(b"reason");
        r.bulk(e.reason.as_bytes());
        r.bulk(b"context");
        r.bulk(e.context.as_bytes());
        r.bulk(b"object");
        r.bulk(e.object.as_bytes());
        r.bulk(b"username");
        r.bulk(e.username.as_bytes());
        r.bulk(b"age-seconds");
        let age = now.saturating_duration_since(e.at).as_secs_f64();
        match proto {
            3 => {
                r.0.extend_from_slice(format!(",{age}\r\n").as_bytes());
            }
            _ => r.bulk(format!("{age}").as_bytes()),
        }
        r.bulk(b"client-info");
        r.bulk(e.client_info.trim_end().as_bytes());
    }
}

fn genpass(req: Request<'_>, r: &mut Reply<'_>) {
    let bits = match req.argc() {
        2 => 256,
        _ => match parse_int(req.arg(2)).filter(|b| (1..=4096).contains(b)) {
            Some(b) => b as usize,
            None => {
                return r.error("ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096")
            }
        },
    };
    let chars = bits.div_ceil(4);
    let mut bytes = vec![0u8; chars.div_ceil(2)];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return r.error("ERR slotline: no random numbers available");
    }
    let mut hex = super::rules::hex(&bytes);
    hex.truncate(chars);
    r.bulk(hex.as_bytes());
}
