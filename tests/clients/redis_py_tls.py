"""redis-py over TLS through slotline, as an application with `ssl=True` uses it.

Usage: redis_py_tls.py PORT CA_FILE [CLIENT_CERT CLIENT_KEY]

Writes and reads keys, a pipeline and a transaction over one verified TLS connection, and checks
that a connection without the CA to verify slotline against is refused.
"""
import ssl
import sys

import redis

port, ca = int(sys.argv[1]), sys.argv[2]
cert = sys.argv[3] if len(sys.argv) > 3 else None
key = sys.argv[4] if len(sys.argv) > 4 else None

r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, ssl_certfile=cert,
                ssl_keyfile=key, protocol=2, socket_timeout=5)
for i in range(200):
    assert r.set(f"py:tls:{i}", f"v{i}") is True
assert [r.get(f"py:tls:{i}") for i in range(0, 200, 50)] == [b"v0", b"v50", b"v100", b"v150"]
pipe = r.pipeline(transaction=False)
for i in range(100):
    pipe.incr("py:tls:{counter}")
assert pipe.execute()[-1] == 100
tx = r.pipeline(transaction=True)
tx.set("py:tls:{t}a", 1).incr("py:tls:{t}a").get("py:tls:{t}a")
assert tx.execute() == [True, 2, b"2"]
big = "x" * 300_000
r.set("py:tls:big", big)
assert r.get("py:tls:big") == big.encode()
assert r.delete(*[f"py:tls:{i}" for i in range(200)]) == 200

# Verification is real: without the CA, slotline's certificate is not trusted.
untrusting = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_cert_reqs="required",
                         protocol=2, socket_timeout=5)
try:
    untrusting.ping()
    raise SystemExit("a client that does not trust the CA connected")
except redis.exceptions.ConnectionError as e:
    assert "CERTIFICATE_VERIFY_FAILED" in str(e) or "certificate verify failed" in str(e), e
print("ok")
