"""Pub/Sub as an application does it with redis-py: python3 redis_py_pubsub.py PORT PROTOCOL

Run by tests/pubsub.rs against a cluster pool and a ketama pool, with RESP2 and with RESP3. Exits
non-zero on the first surprise.
"""
import sys
import time

import redis

port, protocol = int(sys.argv[1]), int(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
tag = f"py{protocol}"


def next_message(p, kind, timeout=5.0):
    """The next message of `kind`, skipping nothing else silently."""
    end = time.time() + timeout
    while time.time() < end:
        m = p.get_message(timeout=0.5)
        if m is None:
            continue
        assert m["type"] == kind, m
        return m
    raise AssertionError(f"no {kind} within {timeout}s")


p = r.pubsub()
channels = [f"{tag}:news:{i}" for i in range(20)]
p.subscribe(*channels)
for i, ch in enumerate(channels):
    m = next_message(p, "subscribe")
    assert m["channel"] == ch.encode() and m["data"] == i + 1, m
p.psubscribe(f"{tag}:alerts:*")
m = next_message(p, "psubscribe")
assert m["data"] == 21, m

numsub = dict(r.pubsub_numsub(*channels[:3]))
assert numsub == {ch.encode(): 1 for ch in channels[:3]}, numsub
assert set(channels) <= set(c.decode() for c in r.pubsub_channels(f"{tag}:news:*"))

for ch in channels:
    # In a cluster PUBLISH counts the receivers of one node only, as Redis Cluster does.
    r.publish(ch, f"about {ch}")
# Each channel's message arrives once. In a sharded pool the channels live on different servers,
# whose streams have no order between them, so the order of arrival is not checked.
heard = []
for _ in channels:
    m = next_message(p, "message")
    assert m["data"] == b"about " + m["channel"], m
    heard.append(m["channel"].decode())
assert sorted(heard) == sorted(channels), heard
r.publish(f"{tag}:alerts:fire", "run")
m = next_message(p, "pmessage")
assert m["pattern"] == f"{tag}:alerts:*".encode() and m["data"] == b"run", m

# redis-py's own health check: PING on the subscribed connection.
p.ping()
m = p.get_message(timeout=5)
assert m is not None and m["type"] == "pong", m

p.unsubscribe()
for i in range(len(channels)):
    m = next_message(p, "unsubscribe")
p.punsubscribe()
m = next_message(p, "punsubscribe")
assert m["data"] == 0, m
assert not p.subscribed
p.close()

# A callback-driven subscriber in a thread, as applications run them.
got = []
p = r.pubsub()
p.subscribe(**{f"{tag}:jobs": lambda m: got.append(m["data"])})
worker = p.run_in_thread(sleep_time=0.05)
deadline = time.time() + 5
while dict(r.pubsub_numsub(f"{tag}:jobs")).get(f"{tag}:jobs".encode(), 0) < 1:
    assert time.time() < deadline, "the thread never subscribed"
    time.sleep(0.05)
for i in range(10):
    r.publish(f"{tag}:jobs", i)
while len(got) < 10 and time.time() < deadline:
    time.sleep(0.05)
worker.stop()
assert got == [str(i).encode() for i in range(10)], got
print("ok")
