//! What slotline knows about each Redis command: arity, flags, where its keys are (Redis's own facts,
//! generated into `table.rs`), and how it is routed (decided by `policy`).

use super::policy::Route;

/// Command flags, as Redis reports them in `COMMAND INFO`.
pub mod flags {
    pub const WRITE: u16 = 1 << 0;
    pub const READONLY: u16 = 1 << 1;
    pub const DENYOOM: u16 = 1 << 2;
    pub const ADMIN: u16 = 1 << 3;
    pub const PUBSUB: u16 = 1 << 4;
    pub const NOSCRIPT: u16 = 1 << 5;
    pub const BLOCKING: u16 = 1 << 6;
    pub const LOADING: u16 = 1 << 7;
    pub const STALE: u16 = 1 << 8;
    pub const FAST: u16 = 1 << 9;
    pub const MOVABLEKEYS: u16 = 1 << 10;
    pub const NO_MANDATORY_KEYS: u16 = 1 << 11;
    pub const NO_MULTI: u16 = 1 << 12;
    /// Runs before the client logs in, and whatever its user's ACL rules (AUTH, HELLO, RESET, QUIT).
    pub const NO_AUTH: u16 = 1 << 13;

    /// Flag names in the order `COMMAND INFO` lists them.
    pub const NAMES: [(u16, &str); 14] = [
        (WRITE, "write"),
        (READONLY, "readonly"),
        (DENYOOM, "denyoom"),
        (ADMIN, "admin"),
        (PUBSUB, "pubsub"),
        (NOSCRIPT, "noscript"),
        (BLOCKING, "blocking"),
        (LOADING, "loading"),
        (STALE, "stale"),
        (FAST, "fast"),
        (MOVABLEKEYS, "movablekeys"),
        (NO_MANDATORY_KEYS, "no_mandatory_keys"),
        (NO_MULTI, "no_multi"),
        (NO_AUTH, "no_auth"),
    ];
}

/// What ACL checks a key against (Redis's key-spec flags `access`, and `insert`/`delete`/`update`).
pub mod key_access {
    /// The command reads the key's value.
    pub const READ: u8 = 1 << 0;
    /// The command changes the key.
    pub const WRITE: u8 = 1 << 1;
    /// Its arguments decide (SET reads only with GET, BITFIELD writes only with SET or INCRBY).
    pub const VARIABLE: u8 = 1 << 2;
}

/// The kind of data a command works on: its Redis ACL category, folded into a small fixed set so that
/// metrics can count commands by family with bounded labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Strings, bitmaps and HyperLogLogs.
    String = 0,
    Hash,
    List,
    Set,
    /// Sorted sets and geo commands.
    SortedSet,
    Stream,
    PubSub,
    Scripting,
    /// Commands on keys of any type (DEL, EXPIRE, TYPE ...).
    Keyspace,
    /// Administration (CONFIG, INFO, FLUSHALL ...).
    Server,
    Connection,
    /// Transactions and everything else.
    Other,
}

impl Family {
    pub const ALL: [Family; 12] = [
        Family::String,
        Family::Hash,
        Family::List,
        Family::Set,
        Family::SortedSet,
        Family::Stream,
        Family::PubSub,
        Family::Scripting,
        Family::Keyspace,
        Family::Server,
        Family::Connection,
        Family::Other,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Family::String => "string",
            Family::Hash => "hash",
            Family::List => "list",
            Family::Set => "set",
            Family::SortedSet => "sortedset",
            Family::Stream => "stream",
            Family::PubSub => "pubsub",
            Family::Scripting => "scripting",
            Family::Keyspace => "keyspace",
            Family::Server => "server",
            Family::Connection => "connection",
            Family::Other => "other",
        }
    }
}

/// Redis 7 key specification: where the search for keys starts, and how keys are found from there.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
    /// [`key_access`] bits: how the command uses the keys this spec finds.
    pub access: u8,
}

#[derive(Debug, Clone, Copy)]
pub enum Begin {
    /// Keys start at this argument index.
    Index(i16),
    /// Keys start after this keyword, searched from `start_from` (negative: from the end, backwards).
    Keyword {
        keyword: &'static str,
        start_from: i16,
    },
    /// Only the command's own key-finding code knows (e.g. SORT ... STORE).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub enum Find {
    /// Keys up to `last_key` (relative to the start; negative: from the end), every `step` arguments;
    /// with `limit` > 0, only the first 1/limit of the remaining arguments.
    Range {
        last_key: i16,
        step: u16,
        limit: u16,
    },
    /// The argument at `start + keynum_idx` counts the keys, which start at `start + first_key`.
    KeyNum {
        keynum_idx: u16,
        first_key: u16,
        step: u16,
    },
    Unknown,
}

/// What Redis's `COMMAND` says of one command or subcommand: a line of the generated table.
#[derive(Debug)]
pub struct Facts {
    pub name: &'static str,
    pub arity: i16,
    pub flags: u16,
    pub family: Family,
    /// Its ACL categories, a bit each in the order of `crate::acl::CATEGORIES`.
    pub acl: u32,
    pub keys: &'static [KeySpec],
    /// It has subcommands.
    pub container: bool,
    /// Redis's request policy tip says it needs every node (`all_shards`, `all_nodes`, `special`).
    pub every_node_tip: bool,
}

/// One command or subcommand (named `container|sub`, lower case).
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// Redis convention: N means exactly N arguments (the name included), -N at least N.
    pub arity: i16,
    pub flags: u16,
    pub family: Family,
    /// Its ACL categories (see [`Facts::acl`]).
    pub acl: u32,
    pub route: Route,
    pub keys: &'static [KeySpec],
    /// The place and access of its one key, when `keys` names one key at a fixed place (GET, SET,
    /// HGET ...: most commands): key search answers it without walking `keys`.
    pub one_key: Option<(u8, u8)>,
    /// Its place in [`super::all`]: a compact reference to it (CLIENT LIST's last command, INFO
    /// commandstats).
    pub number: u16,
}

impl Spec {
    /// The command `facts` describes, routed as [`policy`](super::policy) decides.
    pub(super) fn new(number: usize, facts: &Facts) -> Spec {
        Spec {
            number: u16::try_from(number).unwrap_or(u16::MAX),
            name: facts.name,
            arity: facts.arity,
            flags: facts.flags,
            family: facts.family,
            acl: facts.acl,
            route: super::policy::route(facts),
            keys: facts.keys,
            one_key: match facts.keys {
                [KeySpec {
                    begin: Begin::Index(at),
                    find: Find::Range { last_key: 0, .. },
                    access,
                }] => u8::try_from(*at).ok().map(|at| (at, *access)),
                _ => None,
            },
        }
    }

    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.arity as isize;
        if arity >= 0 {
            argc as isize == arity
        } else {
            argc as isize >= -arity
        }
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Whether it runs a script or a function, whose replies (errors included) the script writes.
    pub fn runs_script(&self) -> bool {
        matches!(
            self.name,
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
        )
    }

    /// Whether a replica may run it for a client: no write, and no script but the read-only forms
    /// (`EVAL` may write whatever its script likes; `SCRIPT LOAD`/`FLUSH` and `FUNCTION LOAD` change
    /// what every node runs). What the replica listener lets through.
    pub fn replica_may_run(&self) -> bool {
        if self.has(flags::WRITE) {
            return false;
        }
        self.family != Family::Scripting
            || self.has(flags::READONLY)
            || self.name == "script|exists"
    }

    /// The name as clients write it: `GET`, or `CLIENT SETNAME` for a subcommand.
    pub fn display_name(&self) -> String {
        self.name.replace('|', " ").to_uppercase()
    }
}
