#!/usr/bin/env bash
# What a connection costs: the RSS of slotline and of nutcracker in the same run, in front of the same
# three standalone redis-servers (slotline also as a cluster pool in front of a 3-master cluster):
#
#   start                  RSS once listening (after one PING)
#   N idle clients         N connections that each sent one PING and wait (default 10,000)
#   10 s after they left   the same N closed, 10 s later
#   50 clients at -P 16    peak RSS (sampled every 0.1 s) while redis-benchmark -c 50 -P 16 runs
#                          GET and SET
#
#   benches/memory.sh                 # N=10000
#   N=2000 benches/memory.sh          # the short mode tests/ could run
#
# A last row has the ketama pool's clients speak TLS to slotline (certificates made with openssl):
# what a TLS client costs. TLS=0 leaves it out.
#
# Needs redis-server, redis-cli, redis-benchmark, nutcracker and python3 (and openssl for the TLS
# row); builds slotline --release.
# The file descriptor limit must allow N + 100 (ulimit -n).
set -euo pipefail

N=${N:-10000}
BASE=${BASE:-17100}
WORKERS=${WORKERS:-0}

cd "$(dirname "$0")/.."
for bin in redis-server redis-cli redis-benchmark nutcracker python3; do
    command -v "$bin" >/dev/null || { echo "memory.sh: $bin not found" >&2; exit 1; }
done
if [ "$(ulimit -n)" -lt $((N + 100)) ]; then
    ulimit -n $((N + 100)) 2>/dev/null || { echo "memory.sh: ulimit -n is below N + 100 ($N)" >&2; exit 1; }
fi
cargo build --release --quiet

. benches/rig.sh memory
# redis-cli's (and redis-benchmark's) TLS arguments while the TLS row is measured.
tls_args=()

cluster_ports=($BASE $((BASE + 1)) $((BASE + 2)))
shard_ports=($((BASE + 10)) $((BASE + 11)) $((BASE + 12)))
for p in "${cluster_ports[@]}"; do start_redis "$p" cluster; done
for p in "${shard_ports[@]}"; do start_redis "$p"; done
for p in "${cluster_ports[@]}" "${shard_ports[@]}"; do wait_port "$p"; done
create_cluster 0 "${cluster_ports[@]}"

servers=$(for i in 0 1 2; do printf '      - 127.0.0.1:%s:1 s%s\n' "${shard_ports[$i]}" "$i"; done)
cat >"$work/nutcracker.yml" <<YAML
shards:
  listen: 127.0.0.1:$((BASE + 21))
  hash: murmur
  distribution: ketama
  redis: true
  servers:
$servers
YAML
cat >"$work/slotline-shards.yml" <<YAML
workers: $WORKERS
pools:
  shards:
    listen: 127.0.0.1:$((BASE + 22))
    mode: ketama
    hash: murmur
    servers:
$servers
YAML
cat >"$work/slotline-cluster.yml" <<YAML
workers: $WORKERS
pools:
  main:
    listen: 127.0.0.1:$((BASE + 23))
    mode: cluster
    servers: [127.0.0.1:${cluster_ports[0]}]
YAML

# Opens N connections (over TLS, verified against CA_FILE, when given), sends PING on each, reads
# PONG, and holds them until told (a line on stdin).
cat >"$work/idle.py" <<'PY'
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
context = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if context:
        s = context.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    socks.append(s)
for s in socks:
    assert s.recv(16) == b"+PONG\r\n"
print("connected", flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
PY

rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }

measure() { # name port command...
    local name=$1 port=$2
    shift 2
    "$@" >"$work/$name.log" 2>&1 &
    local pid=$!
    pids+=($pid)
    wait_port "$port"
    redis-cli "${tls_args[@]}" -p "$port" ping >/dev/null
    local start; start=$(rss $pid)
    rm -f "$work/ctl"; mkfifo "$work/ctl"
    local ca=()
    [ ${#tls_args[@]} -gt 0 ] && ca=("$work/ca.crt")
    python3 "$work/idle.py" "$port" "$N" "${ca[@]}" <"$work/ctl" >"$work/idle.out" 2>&1 &
    exec 3>"$work/ctl"
    for _ in $(seq 600); do grep -q connected "$work/idle.out" && break; sleep 0.1; done
    grep -q connected "$work/idle.out" || { cat "$work/idle.out" >&2; exit 1; }
    local idle; idle=$(rss $pid)
    echo >&3
    exec 3>&-
    sleep 10
    local after; after=$(rss $pid)
    redis-benchmark "${tls_args[@]}" -p "$port" -c 50 -n 400000 -P 16 -t get,set -r 100000 -q >/dev/null 2>&1 &
    local bench=$! peak=0 now
    while kill -0 $bench 2>/dev/null; do
        now=$(rss $pid)
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 0.1
    done
    printf '| %s | %s | %s (%s KiB each) | %s | %s |\n' "$name" "$(mb "$start")" "$(mb "$idle")" \
        "$(awk -v a="$idle" -v b="$start" -v n="$N" 'BEGIN{printf "%.1f", (a - b) / n}')" \
        "$(mb "$after")" "$(mb "$peak")"
    kill $pid
}

echo "RSS in MB; $N idle clients; slotline workers: $WORKERS"
echo
echo "| proxy | start | $N idle clients | 10 s after they left | peak, 50 clients at -P 16 |"
echo "|---|--:|--:|--:|--:|"
measure "nutcracker (3 shards)" $((BASE + 21)) nutcracker -c "$work/nutcracker.yml" -s $((BASE + 30))
measure "slotline (ketama, 3 shards)" $((BASE + 22)) target/release/slotline --config "$work/slotline-shards.yml"
measure "slotline (cluster, 3 masters)" $((BASE + 23)) target/release/slotline --config "$work/slotline-cluster.yml"
if [ "${TLS:-1}" = 1 ]; then
    benches/tls-certs.sh "$work"
    sed -e "s/$((BASE + 22))/$((BASE + 24))/" "$work/slotline-shards.yml" >"$work/slotline-tls.yml"
    printf '    tls:\n      cert_file: %s\n      key_file: %s\n' "$work/tls.crt" "$work/tls.key" >>"$work/slotline-tls.yml"
    tls_args=(--tls --cacert "$work/ca.crt")
    measure "slotline (ketama, clients over TLS)" $((BASE + 24)) target/release/slotline --config "$work/slotline-tls.yml"
    tls_args=()
fi
