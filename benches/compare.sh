#!/usr/bin/env bash
# End-to-end throughput, in one run on one machine, of the two things slotline replaces:
#
#   cluster: redis-benchmark against a local Redis Cluster directly (--cluster) and through slotline
#            (mode: cluster). Ratio: slotline / direct.
#   shards:  nutcracker (twemproxy) and slotline (mode: ketama, the same nutcracker.yml servers) in front
#            of the same three standalone redis-servers. Ratio: slotline / nutcracker. The hash is murmur:
#            twemproxy's fnv1a_64 keeps similar short keys (k1:123, k1:124 ...) close together on the
#            ring, so a 10-key MGET would often not spread over the shards at all.
#
# Workloads: SET and GET at -P 1 and -P 16, and a 10-key MGET whose keys spread over every
# master/shard (for the cluster, also a 10-key MGET whose keys share one slot, the no-split baseline).
# Prints ops/s, ratios, and each proxy's CPU seconds per 100k requests.
#
#   benches/compare.sh            # -c 50, -n 300000
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
slotline_shards_port=$((BASE + 23))
cat >"$work/slotline.yml" <<YAML
workers: $WORKERS
pools:
  main:
    listen: 127.0.0.1:$slotline_port
    mode: cluster
    servers: [127.0.0.1:${cluster_ports[0]}]
  shards:
    listen: 127.0.0.1:$slotline_shards_port
    mode: ketama
    hash: murmur
    servers:
$(for p in "${shard_ports[@]}"; do echo "      - 127.0.0.1:$p:1"; done)
YAML
cat >"$work/nutcracker.yml" <<YAML
alpha:
  listen: 127.0.0.1:$nutcracker_port
  hash: murmur
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
wait_port "$slotline_shards_port"
wait_port "$nutcracker_port"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_hz=$(getconf CLK_TCK)

# A workload: a redis-benchmark -t test name, or mget10 (10 random keys: on every master/shard) or
# mget10tag (10 random keys sharing one hash tag: one slot). `{tag}` is that hash tag through a
# proxy; redis-benchmark --cluster replaces it with a tag of the node each client talks to, so that
# the direct run spreads over the masters too.
workload_args() { # workload
    case $1 in
        mget10) echo "MGET $(for i in $(seq 10); do printf 'k%s:__rand_int__ ' "$i"; done)" ;;
        mget10tag) echo "MGET $(for i in $(seq 10); do printf '{tag}%s:__rand_int__ ' "$i"; done)" ;;
        *) echo "-t $1" ;;
    esac
}
bench() { # port workload pipeline [--cluster]
    # shellcheck disable=SC2046
    redis-benchmark -p "$1" -c "$CLIENTS" -n "$N" -P "$3" -r 100000 --csv ${4:-} $(workload_args "$2") 2>/dev/null |
        awk -F, '/^"[A-Z]/ && $1 != "\"test\"" { gsub(/"/, "", $2); print $2; exit }'
}
measure() { # pid port workload pipeline [--cluster]: "ops cpu_ticks"
    local c0 c1 ops
    [ "$1" = - ] || c0=$(cpu_ticks "$1")
    ops=$(bench "$2" "$3" "$4" "${5:-}")
    ops=${ops:-0}  # the workload failed (e.g. a cross-slot MGET sent straight to a cluster)
    [ "$1" = - ] || c1=$(cpu_ticks "$1")
    echo "$ops $([ "$1" = - ] && echo 0 || echo $((c1 - c0)))"
}

# Each cell is the median of REPEAT runs, interleaved (direct, slotline, nutcracker, slotline, ...) so
# that a noisy neighbour slows every side alike. Lines: section workload P base base_cpu slotline slotline_cpu
results="$work/results"
: >"$results"
CLUSTER_WORKLOADS=${CLUSTER_WORKLOADS:-"set get mget10 mget10tag"}
SHARD_WORKLOADS=${SHARD_WORKLOADS:-"set get mget10"}
for r in $(seq "$REPEAT"); do
    for P in $PIPELINES; do
        for w in $CLUSTER_WORKLOADS; do
            echo "cluster $w $P $(measure - "${cluster_ports[0]}" "$w" "$P" --cluster) $(measure $slotline_pid "$slotline_port" "$w" "$P")" >>"$results"
        done
        for w in $SHARD_WORKLOADS; do
            echo "shards $w $P $(measure $nutcracker_pid "$nutcracker_port" "$w" "$P") $(measure $slotline_pid "$slotline_shards_port" "$w" "$P")" >>"$results"
        done
    done
done

report() { # section base-name
    printf '\n%-8s %-10s %-3s %12s %9s %12s %9s %7s\n' "$1" workload P "$2" "cpu/100k" slotline "cpu/100k" ratio
    awk -v sec="$1" -v hz="$tick_hz" -v N="$N" '
        function median(a, n,   i, j, x) {
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        $1 == sec { k = $2 " " $3; if (!(k in n)) order[++cells] = k; i = ++n[k]; b[k, i] = $4; bc[k, i] = $5; s[k, i] = $6; sc[k, i] = $7 }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; m = n[k]
                for (i = 1; i <= m; i++) { B[i] = b[k, i]; BC[i] = bc[k, i]; S[i] = s[k, i]; SC[i] = sc[k, i] }
                Bm = median(B, m); Sm = median(S, m); split(k, parts, " ")
                printf "%-8s %-10s %-3s %12.0f %9.3f %12.0f %9.3f %7s\n", "", parts[1], parts[2], Bm,
                    median(BC, m) / hz * 100000 / N, Sm, median(SC, m) / hz * 100000 / N,
                    (Bm > 0 ? sprintf("%.2f", Sm / Bm) : "-")
            }
        }' "$results"
}
[ -n "${RAW:-}" ] && cat "$results"
report cluster direct
# The split's cost: a cross-slot MGET (mget10, which Redis Cluster itself refuses, hence no direct
# figure) against the same MGET with its keys in one slot (mget10tag), through slotline and direct.
cross_slot() {
    awk '
        function median(a, n,   i, j, x) {
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        $1 == "cluster" && ($2 == "mget10" || $2 == "mget10tag") {
            k = $2 " " $3; i = ++n[k]; direct[k, i] = $4; proxied[k, i] = $6; ps[$3] = 1
        }
        END {
            for (p in ps) {
                c = "mget10 " p; t = "mget10tag " p
                if (!(c in n) || !(t in n)) continue
                for (i = 1; i <= n[c]; i++) C[i] = proxied[c, i]; cm = median(C, n[c])
                for (i = 1; i <= n[t]; i++) { T[i] = proxied[t, i]; D[i] = direct[t, i] }
                tm = median(T, n[t]); dm = median(D, n[t])
                printf "         -P %-3s %9.0f ops/s: %.2fx the same-slot MGET through slotline (%.0f), %.2fx it direct (%.0f)\n",
                    p, cm, (tm > 0 ? cm / tm : 0), tm, (dm > 0 ? cm / dm : 0), dm
            }
        }' "$results" | sort -t P -k2n
}
if grep -q '^cluster mget10 ' "$results" && grep -q '^cluster mget10tag ' "$results"; then
    echo
    echo "cross-slot 10-key MGET through slotline (keys on every master):"
    cross_slot
fi
report shards nutcracker
echo
echo "(cluster ratio: slotline / direct to the cluster; shards ratio: slotline / nutcracker on the same three"
echo " shards; cpu/100k: the proxy's CPU seconds per 100k requests (direct: none); $(nproc) cores;"
echo " slotline workers: $WORKERS; -c $CLIENTS -n $N; median of $REPEAT interleaved runs)"
