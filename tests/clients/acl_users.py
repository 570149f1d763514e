"""redis-py logging in to slotline with a user name (tests/acl.rs): its rules apply, and a wrong
password is refused."""
import sys, redis
port = int(sys.argv[1])
r = redis.Redis(port=port, username="app1", password="pw1", protocol=2)
assert r.execute_command("ACL", "WHOAMI") == b"app1"
r.set("app1:py", "1")
assert r.get("app1:py") == b"1"
try:
    r.get("app2:py")
    raise SystemExit("app1 read app2's key")
except redis.exceptions.NoPermissionError:
    pass
try:
    redis.Redis(port=port, username="app2", password="wrong", protocol=2).ping()
    raise SystemExit("a wrong password logged in")
except redis.exceptions.AuthenticationError:
    pass
print("ok")
