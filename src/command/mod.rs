//! Commands: the table of what Redis commands exist (generated from Redis's `COMMAND` by
//! `generate.py`), how slotline handles each (`policy`, the one place that decides), the view of one
//! parsed request, and key extraction.

mod blocking;
mod deny;
mod keys;
pub mod policy;
pub mod script;
mod spec;
mod table;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use blocking::with_time_left;
pub use deny::Denied;
pub use keys::{for_each_key, for_each_key_access};
pub use policy::{Admin, Merge, PoolOption, Route, Split};
pub use spec::{flags, key_access, Begin, Facts, Family, Find, KeySpec, Spec};

/// Version of the Redis server the command table was generated from.
pub const TABLE_REDIS_VERSION: &str = table::REDIS_VERSION;

/// Every command and subcommand slotline knows, sorted by name.
pub fn all() -> &'static [Spec] {
    static ALL: OnceLock<Box<[Spec]>> = OnceLock::new();
    ALL.get_or_init(|| {
        table::COMMANDS
            .iter()
            .enumerate()
            .map(|(i, facts)| Spec::new(i, facts))
            .collect()
    })
}

/// The position of `spec` in [`all`], for a compact reference to it; None for a spec that is not
/// one of the table's.
pub fn index_of(spec: &Spec) -> Option<u32> {
    // Every spec is one of the table's (`Spec::new` is this module's), numbered as it was built.
    (spec.number != u16::MAX).then_some(u32::from(spec.number))
}

/// Top-level commands only (no `container|sub` entries): what `COMMAND COUNT` counts.
pub fn top_level() -> impl Iterator<Item = &'static Spec> {
    all().iter().filter(|s| !s.name.contains('|'))
}

/// Command names are short and not attacker-chosen keys of a long-lived map, so FNV-1a beats SipHash.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Index = HashMap<&'static [u8], &'static Spec, std::hash::BuildHasherDefault<Fnv>>;

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| all().iter().map(|s| (s.name.as_bytes(), s)).collect())
}

/// Why a command could not be looked up.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupError {
    UnknownCommand,
    UnknownSubcommand,
}

/// Longest name (`container|sub` included) that can name a real command.
const MAX_NAME: usize = 48;

/// Whether a request's first argument names the command `name` (a spec's name, lower case): as
/// Redis reads command names, in any case. One case change per byte, where
/// `eq_ignore_ascii_case` makes two.
#[inline]
pub fn names(arg: &[u8], name: &str) -> bool {
    arg.len() == name.len()
        && arg
            .iter()
            .zip(name.as_bytes())
            .all(|(a, n)| a.to_ascii_lowercase() == *n)
}

/// Finds the spec for a command, descending into the subcommand when the command has them.
pub fn lookup(name: &[u8], sub: Option<&[u8]>) -> Result<&'static Spec, LookupError> {
    let mut buf = [0u8; MAX_NAME];
    let spec = find(&mut buf, name, None).ok_or(LookupError::UnknownCommand)?;
    if spec.route != Route::Container && spec.route != Route::Local {
        return Ok(spec);
    }
    let Some(sub) = sub else {
        return Ok(spec);
    };
    match find(&mut buf, name, Some(sub)) {
        Some(s) => Ok(s),
        // Commands answered locally decide about their subcommands themselves (e.g. CLIENT SETINFO,
        // newer than the table).
        None if spec.route == Route::Local => Ok(spec),
        None if spec.route == Route::Container => Err(LookupError::UnknownSubcommand),
        None => Ok(spec),
    }
}

fn find(buf: &mut [u8; MAX_NAME], name: &[u8], sub: Option<&[u8]>) -> Option<&'static Spec> {
    let sub_len = sub.map_or(0, |s| s.len() + 1);
    let len = name.len() + sub_len;
    if len > MAX_NAME {
        return None;
    }
    buf[..name.len()].copy_from_slice(name);
    if let Some(sub) = sub {
        buf[name.len()] = b'|';
        buf[name.len() + 1..len].copy_from_slice(sub);
    }
    let key = &mut buf[..len];
    key.make_ascii_lowercase();
    index().get(&*key).copied()
}

/// One complete request: its bytes and where its arguments lie in them.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub frame: &'a [u8],
    pub args: &'a [(u32, u32)],
}

impl<'a> Request<'a> {
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name); empty when out of range.
    pub fn arg(&self, i: usize) -> &'a [u8] {
        match self.args.get(i) {
            Some(&(s, e)) => &self.frame[s as usize..e as usize],
            None => &[],
        }
    }

    /// Argument `i` as it came on the wire (`$<len>\r\n<bytes>\r\n`), to copy into a request of
    /// slotline's own without encoding it again; None for an inline command or `i` out of range.
    pub fn raw_arg(&self, i: usize) -> Option<&'a [u8]> {
        let &(start, end) = self.args.get(i)?;
        let from = match i {
            // The first argument follows the array's header line.
            0 => self.frame.iter().position(|&b| b == b'\n')? + 1,
            _ => self.args[i - 1].1 as usize + 2,
        };
        let raw = self.frame.get(from..end as usize + 2)?;
        // Arguments of a RESP array lie back to back, each a bulk string: anything else (an inline
        // command's words) is not what the parser cut, and gets encoded instead.
        (self.frame.first() == Some(&b'*')
            && raw.first() == Some(&b'$')
            && from < start as usize
            && raw.ends_with(b"\r\n"))
        .then_some(raw)
    }

    /// Calls `found` with each key of the request.
    pub fn for_each_key(&self, spec: &Spec, mut found: impl FnMut(&'a [u8])) {
        for_each_key(spec, self.argc(), |i| self.arg(i), |i| found(self.arg(i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_named_in_any_case_and_by_nothing_else() {
        // `names` lowers the request's bytes only: every spec's name must be lower case already.
        for spec in all() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase(), "{}", spec.name);
            assert!(names(spec.name.to_ascii_uppercase().as_bytes(), spec.name));
        }
        assert!(names(b"GeT", "get"));
        assert!(!names(b"gets", "get"));
        assert!(!names(b"ge", "get"));
        // Not letters: '\r' is '-' with the case bit cleared, and must not pass for it.
        assert!(!names(b"\rx", "-x"));
    }

    #[test]
    fn families_follow_redis_acl_categories() {
        for (name, family) in [
            (&b"get"[..], Family::String),
            (b"pfadd", Family::String),
            (b"hset", Family::Hash),
            (b"lpush", Family::List),
            (b"sadd", Family::Set),
            (b"geoadd", Family::SortedSet),
            (b"xadd", Family::Stream),
            (b"publish", Family::PubSub),
            (b"evalsha", Family::Scripting),
            (b"expire", Family::Keyspace),
            (b"config", Family::Other),
            (b"info", Family::Server),
            (b"ping", Family::Connection),
            (b"multi", Family::Other),
        ] {
            let spec = lookup(name, None).unwrap();
            assert_eq!(spec.family, family, "{}", spec.name);
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_descends_into_subcommands() {
        assert_eq!(lookup(b"gEt", None).unwrap().name, "get");
        assert_eq!(
            lookup(b"object", Some(b"Encoding")).unwrap().name,
            "object|encoding"
        );
        assert_eq!(
            lookup(b"object", Some(b"nope")).err(),
            Some(LookupError::UnknownSubcommand)
        );
        assert_eq!(
            lookup(b"client", Some(b"setinfo")).unwrap().route,
            Route::Local
        );
        assert_eq!(
            lookup(b"nosuchcommand", None).err(),
            Some(LookupError::UnknownCommand)
        );
        assert_eq!(
            lookup(&[b'x'; 100], None).err(),
            Some(LookupError::UnknownCommand)
        );
        assert_eq!(
            lookup(b"\xff\xfe", None).err(),
            Some(LookupError::UnknownCommand)
        );
    }

    #[test]
    fn arity() {
        let get = lookup(b"get", None).unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let mget = lookup(b"mget", None).unwrap();
        assert!(mget.arity_ok(2) && mget.arity_ok(9) && !mget.arity_ok(1));
    }
}
