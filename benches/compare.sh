#!/usr/bin/env bash
# End-to-end throughput: redis-benchmark against a local Redis Cluster directly (--cluster), through
# nutcracker (twemproxy, in front of three standalone redis-servers: the same number of Redis processes),
# and through slotline, in one run on one machine. Prints ops/s, the ratio to direct, and the proxies' CPU
# seconds per 100k requests.
#
#   benches/compare.sh            # -c 50, -n 300000, SET and GET at -P 1 and -P 16
#   N=1000000 CLIENTS=50 benches/compare.sh
#   REPEAT=5 benches/compare.sh   # runs per cell (median shown; default 3)
#   WORKERS=2 benches/compare.sh  # slotline threads (default 1: on a 2-core box the benchmark client and
#                                 # the Redis processes need the other core)
#
# Needs redis-server, redis-cli, redis-benchmark (redis-tools) and nutcracker; builds slotline --release.
set -euo pipefail

N=${N:-300000}
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}
TESTS=${TESTS:-"set get"}
# Ports below the kernel's ephemeral range, so cluster bus ports (port + 10000) are never taken by chance.
BASE=${BASE:-17000}
WORKERS=${WORKERS:-1}
REPEAT=${REPEAT:-3}

cd "$(dirname "$0")/.."
for bin in redis-server redis-cli redis-benchmark nutcracker; do
    command -v "$bin" >/dev/null || { echo "compare.sh: $bin not found (apt-get install redis-server redis-tools nutcracker)" >&2; exit 1; }
done
cargo build --release --quiet

work=$(mktemp -d /tmp/slotline-compare.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # port [cluster]
    local port=$1 dir="$work/redis-$1"
    mkdir -p "$dir"
    local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile "$dir/log")
    [ "${2:-}" = cluster ] && args+=(--cluster-enabled yes --cluster-config-file "$dir/nodes.conf")
    redis-server "${args[@]}" &
    pids+=($!)
}
wait_port() {
    for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "compare.sh: nothing answers on port $1" >&2; cat "$work/redis-$1/log" >&2 2>/dev/null; exit 1
}

cluster_ports=()
for i in 0 1 2 3 4 5; do cluster_ports+=($((BASE + i))); start_redis $((BASE + i)) cluster; done
shard_ports=($((BASE + 10)) $((BASE + 11)) $((BASE + 12)))
for p in "${shard_ports[@]}"; do start_redis "$p"; done
for p in "${cluster_ports[@]}" "${shard_ports[@]}"; do wait_port "$p"; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 100); do
    ok=1
    for p in "${cluster_ports[@]}"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0; done
    [ $ok = 1 ] && break
    sleep 0.2
done

slotline_port=$((BASE + 20))
nutcracker_port=$((BASE + 21))
cat >"$work/slotline.yml" <<YAML
workers: $WORKERS
pools:
  main:
    listen: 127.0.0.1:$slotline_port
    mode: cluster
    servers: [127.0.0.1:${cluster_ports[0]}]
YAML
cat >"$work/nutcracker.yml" <<YAML
alpha:
  listen: 127.0.0.1:$nutcracker_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  servers:
$(for p in "${shard_ports[@]}"; do echo "   - 127.0.0.1:$p:1"; done)
YAML
RUST_LOG=warn target/release/slotline --config "$work/slotline.yml" 2>"$work/slotline.log" &
slotline_pid=$!; pids+=($slotline_pid)
nutcracker -c "$work/nutcracker.yml" -s $((BASE + 22)) -o "$work/nutcracker.log" &
nutcracker_pid=$!; pids+=($nutcracker_pid)
wait_port "$slotline_port"
wait_port "$nutcracker_port"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_hz=$(getconf CLK_TCK)

bench() { # port test pipeline [--cluster]
    redis-benchmark -p "$1" -c "$CLIENTS" -n "$N" -P "$3" -t "$2" -r 100000 --csv ${4:-} 2>/dev/null |
        awk -F, '/^"[A-Z]/ && $1 != "\"test\"" { gsub(/"/, "", $2); print $2; exit }'
}

# Each cell is the median of REPEAT runs, interleaved (direct, nutcracker, slotline, direct, ...) so
# that a noisy neighbour slows all three alike.
results="$work/results"
: >"$results"
for r in $(seq "$REPEAT"); do
    for P in $PIPELINES; do
        for t in $TESTS; do
            direct=$(bench "${cluster_ports[0]}" "$t" "$P" --cluster)
            n0=$(cpu_ticks $nutcracker_pid)
            nut=$(bench "$nutcracker_port" "$t" "$P")
            n1=$(cpu_ticks $nutcracker_pid)
            s0=$(cpu_ticks $slotline_pid)
            slot=$(bench "$slotline_port" "$t" "$P")
            s1=$(cpu_ticks $slotline_pid)
            echo "$t $P $direct $nut $((n1 - n0)) $slot $((s1 - s0))" >>"$results"
        done
    done
done

printf '%-5s %-3s %12s %12s %7s %9s %12s %7s %9s\n' test P direct nutcracker ratio "cpu/100k" slotline ratio "cpu/100k"
for P in $PIPELINES; do
    for t in $TESTS; do
        awk -v t="$t" -v P="$P" -v hz="$tick_hz" -v N="$N" '
            function median(a, n,   i, j, x) {
                for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            $1 == t && $2 == P { n++; d[n] = $3; nu[n] = $4; nc[n] = $5; s[n] = $6; sc[n] = $7 }
            END {
                D = median(d, n); NU = median(nu, n); S = median(s, n)
                printf "%-5s %-3s %12.0f %12.0f %7.2f %9.3f %12.0f %7.2f %9.3f\n", t, P, D, NU, NU / D,
                    median(nc, n) / hz * 100000 / N, S, S / D, median(sc, n) / hz * 100000 / N
            }' "$results"
    done
done
echo "(ratio: ops/s through the proxy / ops/s direct to the cluster; cpu/100k: proxy CPU seconds per 100k requests;"
echo " $(nproc) cores; slotline workers: $WORKERS; -c $CLIENTS -n $N; median of $REPEAT interleaved runs)"
