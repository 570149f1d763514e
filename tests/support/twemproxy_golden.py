#!/usr/bin/env python3
"""Print golden values for src/route/hash.rs by calling the hash functions of the real nutcracker binary.

Usage: python3 tests/support/twemproxy_golden.py [/usr/sbin/nutcracker]

Debian's nutcracker exports its functions (hash_fnv1a_64, ketama_hash, ...) as dynamic symbols, so gdb can
call them inside a live nutcracker process (stopped in conf_create, after libc is loaded). The output is
pasted into the unit tests: the values come from the binary users run, not from our reading of its source.
Needs gdb.
"""
import subprocess
import sys
import tempfile

HASHES = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64", "fnv1_32",
          "fnv1a_32", "hsieh", "murmur", "jenkins"]

# Lengths 0..27 with bytes >= 0x80 where sign extension matters (hsieh reads a 3-byte tail's last byte
# as a signed char) and more than one 12-byte block for jenkins.
KEYS = [
    b"",
    b"a",
    b"foo",
    b"user:1000",
    "été".encode(),
    b"\x00\x7f\x80\xff\xfe\xc3\xa9",
    b"The quick brown fox jumps \xe9\xff",
]

# (string, alignment) pairs for ketama_hash: the ring points of "127.0.0.1:6379-0".
KETAMA = [(b"127.0.0.1:6379-0", a) for a in range(4)]


def c_literal(data):
    return '"' + "".join("\\%03o" % b for b in data) + '"'


def rust_literal(data):
    out = 'b"'
    for b in data:
        if 0x20 <= b < 0x7f and chr(b) not in '"\\':
            out += chr(b)
        else:
            out += "\\x%02x" % b
    return out + '"'


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "/usr/sbin/nutcracker"
    calls = []
    for name in HASHES:
        for key in KEYS:
            calls.append("print (unsigned int)hash_%s(%s, %d)" % (name, c_literal(key), len(key)))
    for key, a in KETAMA:
        calls.append("print (unsigned int)ketama_hash(%s, %d, %d)" % (c_literal(key), len(key), a))
    with tempfile.TemporaryDirectory() as tmp:
        conf = tmp + "/golden.yml"
        with open(conf, "w") as f:
            f.write("golden:\n  listen: 127.0.0.1:22121\n  servers:\n   - 127.0.0.1:6379:1\n")
        script = tmp + "/golden.gdb"
        with open(script, "w") as f:
            f.write("set pagination off\nbreak conf_create\nrun -t -c %s\n" % conf)
            f.write("\n".join(calls) + "\nkill\n")
        out = subprocess.run(["gdb", "-q", "-batch", "-x", script, binary],
                             capture_output=True, text=True, check=True).stdout
    values = [int(line.split("=")[1]) for line in out.splitlines() if line.startswith("$")]
    assert len(values) == len(calls), out
    it = iter(values)
    print("const KEYS: [&[u8]; %d] = [" % len(KEYS))
    for key in KEYS:
        print("    %s," % rust_literal(key))
    print("];")
    print("const GOLDEN: [(&str, [u32; %d]); %d] = [" % (len(KEYS), len(HASHES)))
    for name in HASHES:
        print('    ("%s", [%s]),' % (name, ", ".join(str(next(it)) for _ in KEYS)))
    print("];")
    print("// ketama_hash(\"127.0.0.1:6379-0\", a) for a = 0..3")
    print("[%s]" % ", ".join(str(next(it)) for _ in KETAMA))


if __name__ == "__main__":
    main()
