#!/usr/bin/env bash
# Instructions slotline runs per request, in its own user space, counted by callgrind: repeatable
# where wall time on a shared machine is not, so small changes to the data path can be compared.
#
#   benches/instructions.sh            # GET through a ketama pool of one redis-server
#   MODE=cluster benches/instructions.sh   # GET through a cluster pool (3 masters)
#   N=20000 benches/instructions.sh    # requests per measured run
#   KEEP=1 benches/instructions.sh     # keep the dumps (callgrind_annotate shows where it goes)
#   USERS=1 benches/instructions.sh    # the pool with an ACL file of 100 users, the benchmark logged
#                                      # in as one whose keys match the last of its ten patterns
#   TEST=set benches/instructions.sh   # SETs instead of GETs
#   MODE=cluster READ_FROM=replica benches/instructions.sh   # 3 masters + 3 replicas, the pool
#                                      # reading from replicas (READ_FROM=master: the same cluster)
#
# slotline runs under valgrind --tool=callgrind with SLOWLOG off (valgrind's slowness would make
# every request slow); after a warm-up the counters are zeroed, redis-benchmark sends N GETs at
# -P 1 and then at -P 16 (one client), and the instructions counted in each run are divided by N.
# Needs valgrind (callgrind_control), redis-server, redis-cli, redis-benchmark.
set -euo pipefail
MODE=${MODE:-ketama}
TEST=${TEST:-get}
READ_FROM=${READ_FROM:-}
N=${N:-20000}
BASE=${BASE:-9310}
cd "$(dirname "$0")/.."
cargo build --release --quiet
work=$(mktemp -d /tmp/slotline-instructions.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "callgrind dumps kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

start_redis() { # port [cluster]
    mkdir -p "$work/$1"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$work/$1" --save "" --appendonly no \
        ${2:+--cluster-enabled yes --cluster-config-file nodes.conf} >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.05; done
    echo "instructions.sh: redis-server on $1 did not start" >&2
    exit 1
}

proxy=$((BASE + 80))
if [ "$MODE" = cluster ]; then
    nodes=(1 2 3)
    replicas=0
    if [ -n "$READ_FROM" ]; then nodes=(1 2 3 4 5 6); replicas=1; fi
    for i in "${nodes[@]}"; do start_redis $((BASE + i)) cluster; done
    echo yes | redis-cli --cluster create $(for i in "${nodes[@]}"; do printf '127.0.0.1:%s ' $((BASE + i)); done) \
        --cluster-replicas $replicas >/dev/null
    sleep 3
    servers="mode: cluster
    ${READ_FROM:+read_from: $READ_FROM}
    servers:
      - 127.0.0.1:$((BASE + 1))"
else
    start_redis $((BASE + 1))
    servers="mode: ketama
    servers:
      - 127.0.0.1:$((BASE + 1)):1 one"
fi
login=()
users=""
if [ "${USERS:-0}" = 1 ]; then
    benches/users-acl.sh "$work"
    users="aclfile: $work/users.acl"
    login=(--user bench -a benchpw)
fi
cat >"$work/slotline.yml" <<YAML
slowlog_log_slower_than: -1
workers: 1
pools:
  bench:
    listen: 127.0.0.1:$proxy
    timeout: 10000
    $users
    $servers
YAML
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    target/release/slotline --config "$work/slotline.yml" >"$work/slotline.log" 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 300); do redis-cli -p "$proxy" set key:__rand_int__ x >/dev/null 2>&1 && break; sleep 0.1; done
# Replica reads wait for the replicas to have synced and been measured.
for _ in $(seq 300); do redis-cli -p "$proxy" get key:1 2>&1 | grep -q ERR || break; sleep 0.1; done
redis-benchmark -p "$proxy" "${login[@]}" -t set -n 2000 -r 1000 -P 16 -c 1 -q >/dev/null
redis-benchmark -p "$proxy" "${login[@]}" -t get -n 2000 -r 1000 -c 1 -q >/dev/null

measure() { # pipeline
    callgrind_control -z "$pid" >/dev/null
    redis-benchmark -p "$proxy" "${login[@]}" -t "$TEST" -n "$N" -r 1000 -P "$1" -c 1 -q >/dev/null
    callgrind_control -d "$pid" >/dev/null
    local dump
    dump=$(ls -t "$work"/cg.out.* | head -1)
    local total
    total=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
    echo "$MODE${READ_FROM:+ read_from: $READ_FROM}${users:+ (100 users)} ${TEST^^} -P $1: $((total / N)) instructions per request ($total over $N)"
}
measure 1
measure 16
