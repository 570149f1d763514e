#!/usr/bin/env python3
"""Generate src/command/table.rs from a real redis-server's COMMAND output.

Usage: redis-server --port 16999 --save "" & python3 src/command/generate.py 16999 > src/command/table.rs

The table holds Redis's facts only: arity, flags, ACL categories (and the family metrics fold them
into), key specs (begin_search / find_keys, so key extraction matches what the server itself does, and
whether ACL checks each key for reading or writing), whether a command has subcommands and whether its
request policy tip asks for every node. How slotline handles each command is decided in
src/command/policy.rs, not here.
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


FLAG_NAMES = ["write", "readonly", "denyoom", "admin", "pubsub", "noscript", "blocking", "loading",
              "stale", "fast", "movablekeys", "no_mandatory_keys", "no_multi", "no_auth"]


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
    # What ACL checks a key against, as Redis's ACLSelectorCheckKey reads the spec's flags: reading
    # its value (access) needs read permission, changing it (insert, delete, update) write.
    key_flags = [f.decode() if isinstance(f, bytes) else f for f in spec.get("flags", [])]
    access = []
    if "access" in key_flags:
        access.append("key_access::READ")
    if any(f in key_flags for f in ("insert", "delete", "update")):
        access.append("key_access::WRITE")
    if "variable_flags" in key_flags:
        access.append("key_access::VARIABLE")
    return "KeySpec { begin: %s, find: %s, access: %s }" % (begin, find, " | ".join(access) or "0")


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


# Redis's ACL categories, in the order ACL CAT lists them: a command's are a bit mask in this order.
CATEGORIES = ["keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
              "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous",
              "connection", "transaction", "scripting"]


def acl_mask(categories):
    mask = 0
    for c in categories:
        c = c.decode() if isinstance(c, bytes) else c
        mask |= 1 << CATEGORIES.index(c.lstrip("@"))
    return "0x%06x" % mask


def emit(entries, name, info):
    arity, flags = info[1], info[2]
    categories = info[6] if len(info) > 6 else []
    tips = info[7] if len(info) > 7 else []
    specs = info[8] if len(info) > 8 else []
    subs = info[9] if len(info) > 9 else []
    rust_specs = ", ".join(key_spec(s) for s in specs)
    every_node_tip = any(t.startswith("request_policy:all_shards") or t.startswith("request_policy:all_nodes")
                         or t.startswith("request_policy:special") for t in tips)
    entries.append('    Facts { name: "%s", arity: %d, flags: %s, family: %s, acl: %s, keys: &[%s], container: %s, every_node_tip: %s },' % (
        name, arity, rust_flags(flags), family(categories), acl_mask(categories), rust_specs,
        str(bool(subs)).lower(), str(every_node_tip).lower()))
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
    print("// @generated by src/command/generate.py from redis-server %s. Do not edit: Redis's facts only;" % version)
    print("// how slotline handles each command is src/command/policy.rs.")
    print("use super::spec::{flags, key_access, Begin, Facts, Family, Find, KeySpec};")
    print()
    print("pub(super) static REDIS_VERSION: &str = \"%s\";" % version)
    print()
    print("// One line per command, however long: easier to read and to diff than rustfmt's layout.")
    print("#[rustfmt::skip]")
    print("pub(super) static COMMANDS: &[Facts] = &[")
    for e in entries:
        print(e)
    print("];")


main()
