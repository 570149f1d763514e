"""Connections to a TLS listener while its certificate rotates.

Usage: tls_rotation.py PORT CA_FILE SECONDS

For SECONDS, one connection made at the start keeps sending commands, and a new connection is made
every few milliseconds, each running SET and GET. Prints one line of JSON: errors (each with its
message), how many new connections were made, and the serial number of the certificate each
handshake got, in order of first sight.
"""
import json
import socket
import ssl
import sys
import time

port, ca, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
context = ssl.create_default_context(cafile=ca)


def connect():
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    return conn, conn.getpeercert()["serialNumber"]


def command(conn, *args):
    out = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    conn.sendall(out.encode())
    reply = b""
    while not reply.endswith(b"\r\n") or (reply.startswith(b"$") and reply.count(b"\r\n") < 2
                                          and not reply.startswith(b"$-1")):
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        reply += chunk
    return reply


errors, serials, made = [], [], 0
steady, serial = connect()
serials.append(serial)
end = time.time() + seconds
i = 0
while time.time() < end:
    i += 1
    try:
        if command(steady, "SET", "rot:steady", str(i)) != b"+OK\r\n":
            errors.append("steady SET")
    except Exception as e:  # noqa: BLE001
        errors.append(f"steady connection: {e}")
        steady, _ = connect()
    try:
        conn, serial = connect()
        made += 1
        if serial not in serials:
            serials.append(serial)
        if command(conn, "SET", f"rot:{i % 10}", "v") != b"+OK\r\n":
            errors.append("SET")
        if command(conn, "GET", f"rot:{i % 10}") != b"$1\r\nv\r\n":
            errors.append("GET")
        conn.close()
    except Exception as e:  # noqa: BLE001
        errors.append(f"new connection: {e}")
    time.sleep(0.01)
print(json.dumps({"errors": errors, "made": made, "serials": serials}))
