"""An application's view of slotline, through redis-py: python3 redis_py.py PORT PROTOCOL

Run by tests/clients.rs against a cluster pool and a ketama pool, with RESP2 and with RESP3 (redis-py
8's default). Exits non-zero on the first surprise.
"""
import sys

import redis

port, protocol = int(sys.argv[1]), int(sys.argv[2])
r = redis.Redis(
    host="127.0.0.1", port=port, protocol=protocol, client_name="app", lib_name="redis-py-test"
)
assert r.ping() is True
assert r.client_getname() in (b"app", "app")
assert r.connection_pool.get_connection().protocol == protocol

# Strings, and multi-key commands whose keys land on different backends.
keys = [f"py:{i}" for i in range(50)]
assert r.mset({k: k.upper() for k in keys}) is True
assert r.mget(keys + ["py:absent"]) == [k.upper().encode() for k in keys] + [None]
assert r.exists(*keys) == len(keys)

# A plain pipeline: many commands in one write, replies in order.
pipe = r.pipeline(transaction=False)
for i, k in enumerate(keys):
    pipe.incrby(f"{k}:n", i)
assert pipe.execute() == list(range(50))

# A transaction with a hash tag (one slot / one server), with WATCH.
with r.pipeline(transaction=True) as tx:
    tx.watch("{acct}balance")
    tx.multi()
    tx.set("{acct}balance", 100)
    tx.incrby("{acct}balance", 5)
    tx.get("{acct}balance")
    assert tx.execute() == [True, 105, b"105"]
# A transaction reaching beyond its slot (its server, in a sharded pool) is refused, not half run.
refused = 0
for i in range(20):
    try:
        with r.pipeline(transaction=True) as tx:
            tx.set("{acct}balance", 1)
            tx.set(f"{{other{i}}}balance", 1)
            tx.execute()
        r.set("{acct}balance", 105)  # both keys were on one server: it ran, as it should
    except (redis.exceptions.ClusterCrossSlotError, redis.exceptions.ExecAbortError) as e:
        refused += 1
assert refused > 0, "no transaction across slots/servers was refused"
assert r.get("{acct}balance") == b"105"

# Scripts: registered once, run by SHA wherever the key lives.
script = r.register_script("return redis.call('GET', KEYS[1])")
for k in keys[:20]:
    assert script(keys=[k]) == k.upper().encode()

# Keyspace iteration sees every key once.
seen = list(r.scan_iter(match="py:*", count=10))
assert len(seen) == len(set(seen)), "SCAN returned duplicates"
assert set(seen) == {k.encode() for k in keys} | {f"{k}:n".encode() for k in keys}, len(seen)
assert r.dbsize() >= len(keys)

# A blocking pop that times out, and one that gets a value.
assert r.blpop(["py:queue"], timeout=1) is None
r.rpush("py:queue", "job")
assert tuple(r.blpop(["py:queue"], timeout=1)) == (b"py:queue", b"job")

# A hash comes back as a dict either way (RESP3 sends a map).
r.hset("py:hash", mapping={"f": "v", "g": "w"})
assert r.hgetall("py:hash") == {b"f": b"v", b"g": b"w"}
assert r.delete("py:hash") == 1

# Errors come back as errors, and the connection stays usable.
try:
    r.execute_command("NOSUCHCOMMAND")
    raise AssertionError("an unknown command succeeded")
except redis.exceptions.ResponseError:
    pass
assert "redis_version" in r.info("server")

assert r.delete(*keys, *[f"{k}:n" for k in keys], "{acct}balance") == 2 * len(keys) + 1
print(f"redis-py (RESP{protocol}) OK")
