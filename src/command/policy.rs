//! How slotline handles each command: the one place that says it. The generated table
//! (`table.rs`) holds only what Redis says of a command (arity, flags, ACL family, key specs);
//! [`route`] decides from those facts and the lists below whether slotline answers it itself, routes
//! it by key, cuts it per key and merges the parts, sends it to every node and merges the replies,
//! runs it on the client's own backend connection, or refuses it and why. The session only carries
//! the decision out.

use super::spec::{flags, Facts, Spec};
use super::Request;

/// How slotline handles a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Sent to the node that owns its keys' slot.
    Keyed,
    /// Keyed, and cut per slot (per server in a sharded pool) when its keys live apart; the parts'
    /// replies are merged.
    Split(Split),
    /// Keyed, and may block (BLPOP ...): sent on a backend connection of the client's own, so that it
    /// never holds up other clients' requests on a shared one.
    Blocking,
    /// Keyed, but blocking when given a `BLOCK` option (XREAD, XREADGROUP).
    BlockingOption,
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: the session runs the transaction on a connection of the
    /// client's own.
    Transaction,
    /// Keyless, and any node gives the same answer.
    AnyNode,
    /// Keyless, and about the whole data set: sent to every master (or server) as it is, and the
    /// replies merged; refused unless the pool option `needs` names is set.
    EveryNode {
        merge: Merge,
        needs: Option<PoolOption>,
    },
    /// An administrative command, sent to the nodes only with `allow_admin`.
    Admin(Admin),
    /// SCAN: every master in turn, the master's number in the cursor's top bits.
    Scan,
    /// WAIT: every master, each asked to count the replicas that reached its own offset.
    Wait,
    /// About the script running now, wherever it runs (SCRIPT KILL, FUNCTION KILL, FUNCTION
    /// STATS): every master, each on a connection of the client's own (the shared one may be the
    /// very connection whose script runs, and Redis reads nothing more from it until the script
    /// ends), the replies merged.
    RunningScript(Merge),
    /// Answered by slotline itself.
    Local,
    /// SUBSCRIBE and its kin, and PUBLISH: the session places them (subscriptions live on backend
    /// connections of the client's own; PUBLISH goes where the channel's subscribers are).
    PubSub,
    /// Has subcommands; the subcommand decides.
    Container,
    /// Refused with an error naming the command and this reason.
    Unsupported(&'static str),
}

/// How the replies of the parts become the client's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// MGET: each part answers an array of values; the client gets one array in key order.
    Values,
    /// MSET: every part answers +OK.
    AllOk,
    /// DEL, UNLINK, EXISTS, TOUCH, DBSIZE: each part answers a count; the client gets the sum.
    Sum,
    /// KEYS: the arrays, one after the other.
    Concat,
    /// PUBSUB NUMPAT: slotline's patterns are all on one node (a cluster's pub/sub home, where
    /// those that may hear keyspace notifications are joined by every other master) or on every
    /// server of a sharded pool, so the node that counts most counts them all.
    Max,
    /// PUBSUB CHANNELS, SHARDCHANNELS: the arrays' elements, each once.
    Union,
    /// PUBSUB NUMSUB, SHARDNUMSUB: every node answers `[channel, count, ...]` for the same channels;
    /// the client gets each channel once with the counts summed.
    SumPairs,
    /// SCRIPT LOAD, FUNCTION LOAD: every node must give the same answer (a SHA, a library name).
    Same,
    /// SCRIPT EXISTS: per script, 1 only when every node has it.
    AllHave,
    /// RANDOMKEY: the first key any node names.
    AnyValue,
    /// SCAN on master number `node` of `nodes`: the reply's cursor is rewritten to carry the node.
    Scan { node: usize, nodes: usize },
    /// CONFIG GET from one node, with `port` showing slotline's own (the port the client connected
    /// to): every node has a port of its own, and none of them is the client's.
    Config { port: u16 },
    /// SCRIPT KILL on every master: +OK when one killed a script, else the most telling error
    /// (`UNKILLABLE` before `NOTBUSY`).
    AnyOk,
    /// INFO: slotline's own sections with what every master holds summed (see
    /// `server::info::NodeFacts`), composed once all have answered.
    NodeInfo,
    /// FUNCTION STATS on every master: the reply of the master that runs a script, else the first
    /// (the engines are alike on every node).
    Running,
    /// A transaction (MULTI, the commands, EXEC) or a WATCH: the last reply is the client's.
    Last,
    /// A transaction with commands slotline answered itself: EXEC's reply with their replies put
    /// in their places.
    Exec,
    /// WAIT: per master, the reply of the script that marks the offset, then WAIT's count; the
    /// client gets the least count.
    Wait,
}

/// How a splittable command is laid out and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub merge: Merge,
    /// Arguments per key: 2 for MSET (key and value), 1 otherwise.
    pub step: usize,
}

/// Where an administrative command goes, with `allow_admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// It changes one node's own state (its config, its users, its functions): sent to every master
    /// and replica (every server of a sharded pool) and merged (+OK only when every one said so);
    /// an error from any answers the whole command.
    EveryMember(Merge),
    /// It reads what the nodes hold alike when configured alike (CONFIG GET, FUNCTION LIST, ACL
    /// LIST ...): answered by one master, as it is. Nodes that differ are not merged: ask them.
    OneNode,
}

/// A pool option a command needs before slotline sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOption {
    /// `allow_flush`: FLUSHALL and FLUSHDB empty every master of the pool.
    AllowFlush,
}

/// ACL's subcommands: a pool with users of its own (`aclfile`, `users`) answers them from those
/// users (`crate::acl::command`); otherwise they are the nodes' (see [`admin`]).
pub fn answered_from_users(spec: &Spec) -> bool {
    spec.name.starts_with("acl|")
}

/// Administrative commands slotline sends with `allow_admin`. Never, even then: SHUTDOWN, DEBUG,
/// CLUSTER's writes, REPLICAOF, MIGRATE, MODULE, SAVE, BGSAVE, FAILOVER ... which change what the
/// cluster is rather than how each node behaves.
fn admin(name: &str) -> Option<Admin> {
    match name {
        "config|set" | "config|resetstat" | "function|restore" | "acl|setuser" => {
            Some(Admin::EveryMember(Merge::AllOk))
        }
        // How many users it deleted: the same number from every node that has the same users.
        "acl|deluser" => Some(Admin::EveryMember(Merge::Same)),
        "config|get" | "function|list" | "function|dump" | "acl|list" | "acl|getuser"
        | "acl|users" | "acl|whoami" | "acl|cat" => Some(Admin::OneNode),
        _ => None,
    }
}

/// Commands slotline answers itself (src/server/local.rs).
const LOCAL: &[&str] = &[
    "ping",
    "echo",
    "quit",
    "select",
    "hello",
    "auth",
    "info",
    "readonly",
    "readwrite",
    "reset",
    "command",
    "command|count",
    "command|info",
    "command|docs",
    "command|getkeys",
    "command|list",
    "command|help",
    "command|getkeysandflags",
    "client",
    "client|setname",
    "client|getname",
    "client|setinfo",
    "client|id",
    "client|info",
    "client|help",
    "client|no-evict",
    "client|no-touch",
    "client|reply",
    "client|list",
    "client|kill",
    "client|getredir",
    "client|trackinginfo",
    "client|tracking",
    "client|caching",
    "client|unblock",
    "client|pause",
    "client|unpause",
    "monitor",
    "slowlog",
    "slowlog|get",
    "slowlog|len",
    "slowlog|reset",
    "slowlog|help",
    "latency",
    "latency|latest",
    "latency|history",
    "latency|reset",
    "latency|doctor",
    "latency|graph",
    "latency|histogram",
    "latency|help",
];

/// Keyless commands whose answer does not depend on which node gives it.
const ANY_NODE: &[&str] = &[
    "time",
    "lolwut",
    "cluster|keyslot",
    "object|help",
    "xinfo|help",
    "memory|help",
    "xgroup|help",
    "config|help",
    "pubsub|help",
    "script|help",
    "function|help",
];

/// Keyed commands that may carry keys of several slots: cut per slot (server) and merged.
fn split(name: &str) -> Option<Split> {
    let (merge, step) = match name {
        "mget" => (Merge::Values, 1),
        "mset" => (Merge::AllOk, 2),
        "del" | "unlink" | "exists" | "touch" => (Merge::Sum, 1),
        _ => return None,
    };
    Some(Split { merge, step })
}

/// Commands about the whole data set, sent to every master (every server of a sharded pool).
fn every_node(name: &str) -> Option<Route> {
    let merge = match name {
        "scan" => return Some(Route::Scan),
        "wait" => return Some(Route::Wait),
        "script|kill" | "function|kill" => return Some(Route::RunningScript(Merge::AnyOk)),
        "function|stats" => return Some(Route::RunningScript(Merge::Running)),
        "flushall" | "flushdb" => {
            return Some(Route::EveryNode {
                merge: Merge::AllOk,
                needs: Some(PoolOption::AllowFlush),
            })
        }
        "keys" => Merge::Concat,
        "dbsize" => Merge::Sum,
        "pubsub|numpat" => Merge::Max,
        "pubsub|channels" | "pubsub|shardchannels" => Merge::Union,
        "pubsub|numsub" | "pubsub|shardnumsub" => Merge::SumPairs,
        "randomkey" => Merge::AnyValue,
        "script|flush" | "function|flush" | "function|delete" => Merge::AllOk,
        "script|load" | "function|load" => Merge::Same,
        "script|exists" => Merge::AllHave,
        _ => return None,
    };
    Some(Route::EveryNode { merge, needs: None })
}

/// Keyed, but they take keys where slotline does not place them: another database (a pool serves
/// one; with redis_db it is not even the client's number) or another server altogether.
fn elsewhere(name: &str) -> Option<&'static str> {
    match name {
        "move" => Some("a pool serves one database"),
        "migrate" => Some(
            "it sends keys to a server slotline does not place them on; ask the nodes directly",
        ),
        _ => None,
    }
}

/// How slotline handles the command `facts` describes.
pub(super) fn route(facts: &Facts) -> Route {
    let name = facts.name;
    let has = |flag| facts.flags & flag != 0;
    if let Some(reason) = elsewhere(name) {
        return Route::Unsupported(reason);
    }
    if LOCAL.contains(&name) {
        return Route::Local;
    }
    match name {
        "multi" | "exec" | "discard" | "watch" | "unwatch" => return Route::Transaction,
        // SPUBLISH is an ordinary keyed command (its channel is its key).
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
        | "sunsubscribe" | "publish" => return Route::PubSub,
        "xread" | "xreadgroup" => return Route::BlockingOption,
        _ => {}
    }
    if has(flags::BLOCKING) {
        return Route::Blocking;
    }
    if ANY_NODE.contains(&name) {
        return Route::AnyNode;
    }
    if let Some(route) = every_node(name) {
        return route;
    }
    if let Some(admin) = admin(name) {
        return Route::Admin(admin);
    }
    if facts.container {
        return Route::Container;
    }
    if !facts.keys.is_empty() {
        return match split(name) {
            Some(split) => Route::Split(split),
            None => Route::Keyed,
        };
    }
    if name.starts_with("cluster") {
        return Route::Unsupported(
            "slotline presents the cluster as one server; ask the nodes directly",
        );
    }
    if facts.every_node_tip {
        return Route::Unsupported("it needs every node of the cluster (not supported yet)");
    }
    if has(flags::ADMIN) || has(flags::NOSCRIPT) && !has(flags::NO_MANDATORY_KEYS) {
        return Route::Unsupported("administrative commands go to the Redis nodes directly");
    }
    if name.starts_with("client|") {
        return Route::Unsupported("it describes one server connection, not slotline");
    }
    if has(flags::NO_MANDATORY_KEYS) || has(flags::MOVABLEKEYS) {
        return Route::Keyed;
    }
    Route::Unsupported("it has no key to route by and its answer differs per node")
}

/// Whether a client may send it before it has authenticated.
pub fn before_auth(spec: &Spec) -> bool {
    spec.has(flags::NO_AUTH)
}

/// Whether it must wait until everything the client sent before it is answered: EXEC, WATCH and
/// UNWATCH run on the transaction's connection; HELLO and RESET change the protocol, and so the
/// connections later requests take.
#[inline]
pub fn after_earlier_replies(spec: &Spec) -> bool {
    // The route first: asked of every pipelined request, and most are keyed.
    matches!(spec.route, Route::Transaction | Route::Local)
        && matches!(spec.name, "exec" | "watch" | "unwatch" | "hello" | "reset")
}

/// Whether it may write or propagate, as Redis's `may-replicate`: writes, scripts that are not the
/// read-only forms, EXEC, PUBLISH, PFCOUNT, WAIT. What a CLIENT PAUSE WRITE holds.
pub fn may_write(spec: &Spec) -> bool {
    spec.has(flags::WRITE)
        || (spec.runs_script() && !spec.has(flags::READONLY))
        || matches!(
            spec.name,
            "exec" | "publish" | "spublish" | "pfcount" | "wait"
        )
}

/// EVAL of a script whose shebang declares `no-writes` (`#!lua flags=no-writes`): Redis runs it as
/// a read, through a CLIENT PAUSE WRITE too. (EVALSHA's and FCALL's flags are the nodes' to know.)
pub fn declares_no_writes(req: Request<'_>, spec: &Spec) -> bool {
    if spec.name != "eval" {
        return false;
    }
    let body = req.arg(1);
    let Some(shebang) = body.strip_prefix(b"#!") else {
        return false;
    };
    let line = shebang.split(|&b| b == b'\n').next().unwrap_or_default();
    line.split(|b| b.is_ascii_whitespace())
        .filter_map(|word| word.strip_prefix(b"flags="))
        .any(|flags| flags.split(|&b| b == b',').any(|f| f == b"no-writes"))
}

/// EVALSHA's and FCALL's read-only twins (EVALSHA_RO, FCALL_RO), which run a script only when its
/// flags say it does not write.
pub fn read_only_twin(spec: &Spec) -> Option<&'static Spec> {
    let twin: &[u8] = match spec.name {
        "evalsha" => b"evalsha_ro",
        "fcall" => b"fcall_ro",
        _ => return None,
    };
    super::lookup(twin, None).ok()
}

/// Whether MONITOR shows it: not administrative commands, nor those carrying a password, as Redis.
pub fn monitored(spec: &Spec) -> bool {
    !spec.has(flags::ADMIN) && !matches!(spec.name, "auth" | "hello" | "migrate")
}

/// Whether it may be queued between MULTI and EXEC: a command for one node (the transaction's), or
/// one of the local commands Redis itself queues and slotline can answer in place.
pub fn queueable(spec: &Spec) -> bool {
    match spec.route {
        Route::Keyed
        | Route::Split(_)
        | Route::AnyNode
        | Route::Blocking
        | Route::BlockingOption => true,
        Route::Local => matches!(spec.name, "ping" | "echo"),
        _ => false,
    }
}

/// Local commands that Redis queues between MULTI and EXEC and slotline answers itself at EXEC, its
/// reply taking its place in the node's EXEC reply: a pause that starts where the transaction ends,
/// a slow log reset in the middle of one.
pub fn queued_locally(spec: &Spec) -> bool {
    spec.route == Route::Local
        && matches!(
            spec.name,
            "slowlog|get"
                | "slowlog|len"
                | "slowlog|reset"
                | "client|pause"
                | "client|unpause"
                | "client|getname"
                | "client|setname"
                | "client|id"
                | "client|info"
        )
}

/// Whether it closes the client's connection (and so is never queued in a transaction).
pub fn ends_connection(spec: &Spec) -> bool {
    spec.name == "quit"
}

/// A refusal that depends on the arguments, where the command itself is routed.
pub fn refusal(req: Request<'_>, spec: &Spec) -> Option<&'static str> {
    let argc = req.argc();
    // COPY into another database: a pool serves one (with redis_db, not even the one numbered).
    (argc > 4 && spec.name == "copy" && (3..argc).any(|i| req.arg(i).eq_ignore_ascii_case(b"DB")))
        .then_some("ERR COPY ... DB is not supported by slotline: a pool serves one database")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn route_of(name: &str, sub: Option<&str>) -> Route {
        lookup(name.as_bytes(), sub.map(str::as_bytes))
            .map(|s| s.route)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
    }

    #[test]
    fn every_kind_of_handling_is_decided_here() {
        assert_eq!(route_of("get", None), Route::Keyed);
        assert_eq!(
            route_of("mset", None),
            Route::Split(Split {
                merge: Merge::AllOk,
                step: 2
            })
        );
        assert_eq!(
            route_of("flushall", None),
            Route::EveryNode {
                merge: Merge::AllOk,
                needs: Some(PoolOption::AllowFlush)
            }
        );
        assert_eq!(route_of("scan", None), Route::Scan);
        assert_eq!(
            route_of("script", Some("kill")),
            Route::RunningScript(Merge::AnyOk)
        );
        assert_eq!(
            route_of("function", Some("stats")),
            Route::RunningScript(Merge::Running)
        );
        assert_eq!(route_of("blpop", None), Route::Blocking);
        assert_eq!(route_of("xread", None), Route::BlockingOption);
        assert_eq!(route_of("client", Some("setname")), Route::Local);
        assert_eq!(route_of("publish", None), Route::PubSub);
        assert_eq!(route_of("spublish", None), Route::Keyed);
        assert!(
            matches!(route_of("move", None), Route::Unsupported(r) if r.contains("one database"))
        );
        assert!(matches!(
            route_of("cluster", Some("addslots")),
            Route::Unsupported(_)
        ));
        assert_eq!(
            route_of("config", Some("set")),
            Route::Admin(Admin::EveryMember(Merge::AllOk))
        );
        assert_eq!(
            route_of("config", Some("get")),
            Route::Admin(Admin::OneNode)
        );
        assert!(matches!(route_of("shutdown", None), Route::Unsupported(_)));
        assert!(matches!(
            route_of("config", Some("rewrite")),
            Route::Unsupported(_)
        ));
    }
}
