//! The check of one parsed request against one user, in Redis's order: the command, then its keys,
//! then its channels.

use super::{User, READ, WRITE};
use crate::command::{flags, key_access, Request, Spec};

/// What a user was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Command,
    Key,
    Channel,
}

impl Reason {
    /// As ACL LOG's `reason` field says it.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Command => "command",
            Reason::Key => "key",
            Reason::Channel => "channel",
        }
    }
}

/// A refusal: why, and of what (the command's name, the key or the channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub object: Vec<u8>,
}

impl Denial {
    /// Out of line: refusals are rare, and their allocation kept out of the check's hot path.
    #[cold]
    #[inline(never)]
    fn of(reason: Reason, object: &[u8]) -> Denial {
        Denial {
            reason,
            object: object.to_vec(),
        }
    }

    /// The error the client gets, in Redis 7.0's words.
    pub fn message(&self) -> String {
        match self.reason {
            Reason::Command => format!(
                "NOPERM this user has no permissions to run the '{}' command",
                String::from_utf8_lossy(&self.object)
            ),
            Reason::Key => {
                "NOPERM this user has no permissions to access one of the keys used as arguments"
                    .into()
            }
            Reason::Channel => {
                "NOPERM this user has no permissions to access one of the channels used as arguments"
                    .into()
            }
        }
    }

    /// ACL DRYRUN's answer, in Redis's words.
    pub fn dry_run_message(&self) -> String {
        let object = String::from_utf8_lossy(&self.object);
        match self.reason {
            Reason::Command => {
                format!("This user has no permissions to run the '{object}' command")
            }
            Reason::Key => format!("This user has no permissions to access the '{object}' key"),
            Reason::Channel => {
                format!("This user has no permissions to access the '{object}' channel")
            }
        }
    }
}

impl User {
    /// Whether the user may run `req` (whose command is `spec`).
    #[inline]
    pub fn check(&self, req: Request<'_>, spec: &Spec) -> Result<(), Denial> {
        match self.passes_at_once(req, spec) {
            true => Ok(()),
            false => self.check_in_full(req, spec),
        }
    }

    /// The common case, in a few instructions: a command the user may run, with no channels and
    /// at most one key at a fixed place, which the pattern its last key matched matches too.
    /// False says only that the full check must answer.
    #[inline]
    fn passes_at_once(&self, req: Request<'_>, spec: &Spec) -> bool {
        self.may_run(spec)
            && !spec.has(flags::PUBSUB)
            && match spec.one_key {
                Some((at, access)) if access & key_access::VARIABLE == 0 => {
                    let at = usize::from(at);
                    at < req.argc() && self.may_use_key_at_once(req.arg(at), access)
                }
                Some(_) => false,
                None => spec.keys.is_empty(),
            }
    }

    /// Every rule, in Redis's order.
    #[inline(never)]
    fn check_in_full(&self, req: Request<'_>, spec: &Spec) -> Result<(), Denial> {
        // Logging in (and out) is for everyone, as Redis's `no-auth` commands are.
        if !self.may_run(spec) && !spec.has(flags::NO_AUTH) {
            return Err(Denial::of(Reason::Command, spec.name.as_bytes()));
        }
        if !self.all_keys && !spec.keys.is_empty() {
            self.check_keys(req, spec)?;
        }
        if !self.all_channels && spec.has(flags::PUBSUB) {
            return self.check_channels(req, spec);
        }
        Ok(())
    }

    /// Every key of `req`, with the access its command makes of each (a command's one key at a
    /// fixed place is found at once: see [`crate::command::for_each_key_access`]).
    fn check_keys(&self, req: Request<'_>, spec: &Spec) -> Result<(), Denial> {
        let access_of = |access: u8| match access & key_access::VARIABLE {
            0 => access,
            _ => access_by_arguments(req, spec),
        };
        let mut refused = None;
        crate::command::for_each_key_access(
            spec,
            req.argc(),
            |i| req.arg(i),
            |i, access| {
                let key = req.arg(i);
                if refused.is_none() && !self.may_use_key(key, access_of(access)) {
                    refused = Some(key);
                }
            },
        );
        match refused {
            Some(key) => Err(Denial::of(Reason::Key, key)),
            None => Ok(()),
        }
    }

    /// The channels of PUBLISH and SUBSCRIBE and their kin.
    #[inline(never)]
    fn check_channels(&self, req: Request<'_>, spec: &Spec) -> Result<(), Denial> {
        let (first, pattern) = match spec.name {
            "publish" | "spublish" => (1..2.min(req.argc()), false),
            "subscribe" | "ssubscribe" => (1..req.argc(), false),
            "psubscribe" => (1..req.argc(), true),
            _ => (0..0, false),
        };
        match first
            .map(|i| req.arg(i))
            .find(|c| !self.may_use_channel(c, pattern))
        {
            Some(channel) => Err(Denial::of(Reason::Channel, channel)),
            None => Ok(()),
        }
    }
}

/// The access of commands whose key flags depend on their arguments (Redis's `VARIABLE_FLAGS`): SET
/// reads its key only with GET, BITFIELD writes it only with SET or INCRBY.
fn access_by_arguments(req: Request<'_>, spec: &Spec) -> u8 {
    let has = |word: &[u8], from: usize| {
        (from..req.argc()).any(|i| req.arg(i).eq_ignore_ascii_case(word))
    };
    match spec.name {
        "set" if has(b"GET", 3) => READ | WRITE,
        "set" => WRITE,
        "bitfield" if has(b"SET", 2) || has(b"INCRBY", 2) => READ | WRITE,
        "bitfield" => READ,
        _ => READ | WRITE,
    }
}
