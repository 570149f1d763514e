#!/usr/bin/env python3
"""Generate src/command/table.rs from a real redis-server's COMMAND output.

Usage: redis-server --port 16999 --save "" & python3 tests/support/gen_command_table.py 16999 > src/command/table.rs

The key specs come straight from Redis 7 (begin_search / find_keys), so key extraction matches what the
server itself does. How slotline treats each command (the `Route`) is decided here from the flags and
request policy tips, with a few explicit overrides below; tests/commands.rs checks the table against a
live server so a Redis upgrade that changes a command is noticed.
"""
import socket
import sys


def read_reply(f):
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise RuntimeError("unexpected reply %r" % line)


def command(f, sock, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    return read_reply(f)


def pairs(flat):
    return dict(zip(flat[0::2], flat[1::2]))


# Commands slotline answers itself (src/command/local.rs).
LOCAL = {
    "ping", "echo", "quit", "select", "hello", "auth", "info", "readonly", "readwrite", "reset",
    "command", "command|count", "command|info", "command|docs", "command|getkeys", "command|list",
    "command|help", "command|getkeysandflags",
    "client", "client|setname", "client|getname", "client|setinfo", "client|id", "client|info",
    "client|help", "client|no-evict", "client|no-touch", "client|reply",
}
# Keyless commands whose answer does not depend on which node gives it.
ANY_NODE = {"time", "lolwut", "cluster|keyslot", "object|help", "xinfo|help",
            "memory|help", "xgroup|help", "config|help", "pubsub|help", "script|help", "function|help"}
# Sent to every master (every server of a sharded pool) and the replies merged (src/server/fanout.rs).
EVERY_NODE = {"keys", "scan", "dbsize", "randomkey", "flushall", "flushdb", "script|load",
              "script|exists", "script|flush", "function|load", "function|delete", "function|flush",
              "pubsub|channels", "pubsub|numpat", "pubsub|numsub", "pubsub|shardchannels",
              "pubsub|shardnumsub", "wait"}
TRANSACTION = {"multi", "exec", "discard", "watch", "unwatch"}
# Subscriptions and PUBLISH: the session's pub/sub module (src/server/session/pubsub.rs) places them.
# SPUBLISH is an ordinary keyed command (its channel is its key).
PUBSUB = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
          "publish"}
# Blocking only when given a BLOCK option: decided per request (see Route::BlockingOption).
BLOCK_OPTION = {"xread", "xreadgroup"}


# Keyed, but they take keys where slotline does not place them: another database (a pool serves one;
# with redis_db it is not even the client's number) or another server altogether.
ELSEWHERE = {
    "move": "a pool serves one database",
    "migrate": "it sends keys to a server slotline does not place them on; ask the nodes directly",
}


def route(name, flags, tips, specs, is_container):
    if name in ELSEWHERE:
        return 'Route::Unsupported("%s")' % ELSEWHERE[name]
    if name in LOCAL:
        return "Route::Local"
    if name in TRANSACTION:
        return "Route::Transaction"
    if name in PUBSUB:
        return "Route::PubSub"
    if name in BLOCK_OPTION:
        return "Route::BlockingOption"
    if "blocking" in flags:
        return "Route::Blocking"
    if name in ANY_NODE:
        return "Route::AnyNode"
    if name in EVERY_NODE:
        return "Route::EveryNode"
    if is_container:
        return "Route::Container"
    if specs:
        return "Route::Keyed"
    if name.startswith("cluster"):
        return 'Route::Unsupported("slotline presents the cluster as one server; ask the nodes directly")'
    if any(t.startswith("request_policy:all_shards") or t.startswith("request_policy:all_nodes")
           or t.startswith("request_policy:special") for t in tips):
        return 'Route::Unsupported("it needs every node of the cluster (not supported yet)")'
    if "admin" in flags or "noscript" in flags and "no_mandatory_keys" not in flags:
        return 'Route::Unsupported("administrative commands go to the Redis nodes directly")'
    if name.startswith("client|"):
        return 'Route::Unsupported("it describes one server connection, not slotline")'
    if "no_mandatory_keys" in flags or "movablekeys" in flags:
        return "Route::Keyed"
    return 'Route::Unsupported("it has no key to route by and its answer differs per node")'


FLAG_NAMES = ["write", "readonly", "denyoom", "admin", "pubsub", "noscript", "blocking", "loading",
              "stale", "fast", "movablekeys", "no_mandatory_keys"]


def rust_flags(flags):
    out = [f.upper() for f in flags if f in FLAG_NAMES]
    return " | ".join("flags::" + f for f in out) if out else "0"


def key_spec(spec):
    spec = pairs(spec)
    bs = pairs(spec["begin_search"])
    fk = pairs(spec["find_keys"])
    if bs["type"] == "index":
        begin = "Begin::Index(%d)" % pairs(bs["spec"])["index"]
    elif bs["type"] == "keyword":
        s = pairs(bs["spec"])
        begin = 'Begin::Keyword { keyword: "%s", start_from: %d }' % (s["keyword"], s["startfrom"])
    else:
        begin = "Begin::Unknown"
    if fk["type"] == "range":
        s = pairs(fk["spec"])
        find = "Find::Range { last_key: %d, step: %d, limit: %d }" % (s["lastkey"], s["keystep"], s["limit"])
    elif fk["type"] == "keynum":
        s = pairs(fk["spec"])
        find = "Find::KeyNum { keynum_idx: %d, first_key: %d, step: %d }" % (
            s["keynumidx"], s["firstkey"], s["keystep"])
    else:
        find = "Find::Unknown"
    return "KeySpec { begin: %s, find: %s }" % (begin, find)


# ACL categories -> the bounded family metrics count a command under; the first match wins, data
# types first, so that e.g. SORT (@list @set @sortedset) is a list command.
FAMILIES = [
    ("@string", "String"), ("@bitmap", "String"), ("@hyperloglog", "String"),
    ("@hash", "Hash"), ("@list", "List"), ("@set", "Set"), ("@sortedset", "SortedSet"),
    ("@geo", "SortedSet"), ("@stream", "Stream"), ("@pubsub", "PubSub"), ("@scripting", "Scripting"),
    ("@connection", "Connection"), ("@keyspace", "Keyspace"), ("@admin", "Server"),
    ("@dangerous", "Server"),
]


def family(categories):
    cats = [c.decode() if isinstance(c, bytes) else c for c in categories]
    for cat, fam in FAMILIES:
        if cat in cats:
            return "Family::" + fam
    return "Family::Other"


def emit(entries, name, info):
    arity, flags = info[1], info[2]
    categories = info[6] if len(info) > 6 else []
    tips = info[7] if len(info) > 7 else []
    specs = info[8] if len(info) > 8 else []
    subs = info[9] if len(info) > 9 else []
    rust_specs = ", ".join(key_spec(s) for s in specs)
    entries.append('    Spec { name: "%s", arity: %d, flags: %s, family: %s, route: %s, keys: &[%s] },' % (
        name, arity, rust_flags(flags), family(categories), route(name, flags, tips, specs, bool(subs)),
        rust_specs))
    # Redis lists subcommands in its dict's order, which changes from run to run: sorted, a regenerated
    # table differs only where a command did.
    for sub in sorted(subs, key=lambda s: s[0]):
        emit(entries, sub[0], sub)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 6379
    sock = socket.create_connection(("127.0.0.1", port))
    f = sock.makefile("rb")
    version = pairs(command(f, sock, "HELLO", "2"))["version"]
    infos = sorted(command(f, sock, "COMMAND"), key=lambda i: i[0])
    entries = []
    for info in infos:
        emit(entries, info[0], info)
    print("// @generated by tests/support/gen_command_table.py from redis-server %s. Do not edit;" % version)
    print("// change the generator's rules and run it again.")
    print("use super::spec::{flags, Begin, Family, Find, KeySpec, Route, Spec};")
    print()
    print("pub(super) static REDIS_VERSION: &str = \"%s\";" % version)
    print()
    print("// One line per command, however long: easier to read and to diff than rustfmt's layout.")
    print("#[rustfmt::skip]")
    print("pub(super) static COMMANDS: &[Spec] = &[")
    for e in entries:
        print(e)
    print("];")


main()
