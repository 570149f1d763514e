"""Client-side caching as an application does it with redis-py: python3 redis_py_tracking.py PORT 2

redis-py's own cache needs Redis 7.4 in HELLO, and the nodes here are 7.0, so this keeps the cache
the way RESP2 applications do: a connection subscribed to __redis__:invalidate receives the
invalidations of a tracking connection that redirects to it (CLIENT TRACKING ON REDIRECT id), and
drops the keys it names from a dict. Reads through slotline, changes by another client; every
read after a change must see the new value. Run by tests/tracking.rs against a cluster pool.
"""
import sys
import time

import redis

port = int(sys.argv[1])
reader = redis.Redis(host="127.0.0.1", port=port, protocol=2, single_connection_client=True)
other = redis.Redis(host="127.0.0.1", port=port, protocol=2)

# The invalidation connection: subscribed, then found in CLIENT LIST by its address.
sub = reader.pubsub()
sub.subscribe("__redis__:invalidate")
assert sub.get_message(timeout=5)["type"] == "subscribe"
addr = "%s:%d" % sub.connection._sock.getsockname()[:2]
sub_id = next(int(c["id"]) for c in other.client_list() if c["addr"] == addr)
assert reader.client_tracking_on(clientid=sub_id)

cache = {}


def drain():
    """Applies every invalidation that has arrived."""
    while True:
        m = sub.get_message(timeout=0)
        if m is None:
            return
        assert m["type"] == "message" and m["channel"] == b"__redis__:invalidate", m
        for key in m["data"] if m["data"] is not None else list(cache):
            cache.pop(key.decode() if isinstance(key, bytes) else key, None)


def cached_get(key):
    drain()
    if key not in cache:
        cache[key] = reader.get(key)
    return cache[key]


keys = [f"py:cache:{i}" for i in range(30)]
for k in keys:
    other.set(k, "v1")
for k in keys:
    assert cached_get(k) == b"v1", k
for k in keys:
    other.set(k, "v2")
deadline = time.time() + 5
for k in keys:
    while cached_get(k) != b"v2":
        assert time.time() < deadline, f"{k}: still {cache.get(k)!r} in the cache"
        time.sleep(0.01)
# Without a change, reads stay cached: nothing was invalidated needlessly.
misses = 0
for k in keys:
    drain()
    misses += k not in cache
assert misses == 0, misses
print("ok")
