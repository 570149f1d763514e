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
# Prints ops/s, ratios, each proxy's CPU seconds per 100k requests, and latency (p50, p99, p99.9 with
# 50 and with 1,000 clients at -P 1).
#
#   tls:     GET and SET at each -P against one redis-server speaking TLS (certificates made with
#            openssl): direct over TLS, slotline with TLS on both sides, and slotline in plaintext to the
#            same server. Ratios: TLS through slotline / plaintext through slotline, and / direct TLS.
#            TLS=0 leaves the section out.
#
#   acl:     GET and SET at each -P through slotline's sharded pool twice, on the same three shards:
#            without users, and with an ACL file of 100 users (the benchmark's user has ten key
#            patterns, its keys matching the last). Ratio: CPU per request with users / without.
#            ACL=0 leaves the section out.
#
#   reads:   GET and SET at each -P through two cluster pools on the same 3-master/3-replica cluster:
#            read_from: master (the default) and read_from: replica (read-your-writes on). Ratio: CPU
#            per request with replica reads / master-only. READS=0 leaves the section out.
#
#   benches/compare.sh            # -c 50, -n 300000
#   N=1000000 CLIENTS=50 benches/compare.sh
#   REPEAT=5 benches/compare.sh   # runs per cell (median shown; default 3)
#   LATENCY_CLIENTS="50 1000" LATENCY_N=100000 benches/compare.sh   # the latency table's cells
#   CLUSTER_WORKLOADS= SHARD_WORKLOADS= LATENCY_CLIENTS= benches/compare.sh   # the TLS rows alone
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

. benches/rig.sh compare

cluster_ports=()
for i in 0 1 2 3 4 5; do cluster_ports+=($((BASE + i))); start_redis $((BASE + i)) cluster; done
shard_ports=($((BASE + 10)) $((BASE + 11)) $((BASE + 12)))
for p in "${shard_ports[@]}"; do start_redis "$p"; done
# The TLS section's server: plaintext on tls_plain_port, TLS on tls_port, with a CA and a server
# certificate for 127.0.0.1 made here.
TLS=${TLS:-1}
tls_plain_port=$((BASE + 30)) tls_port=$((BASE + 31))
tls_slotline_port=$((BASE + 32)) tls_slotline_plain_port=$((BASE + 33)) tls_slotline_clear_port=$((BASE + 34))
tls_yaml=""
if [ "$TLS" = 1 ]; then
    command -v openssl >/dev/null || { echo "compare.sh: openssl not found (TLS=0 skips the TLS rows)" >&2; exit 1; }
    benches/tls-certs.sh "$work"
    mkdir -p "$work/redis-$tls_plain_port"
    redis-server --port "$tls_plain_port" --tls-port "$tls_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work/redis-$tls_plain_port" --logfile "$work/redis-$tls_plain_port/log" \
        --tls-cert-file "$work/tls.crt" --tls-key-file "$work/tls.key" --tls-ca-cert-file "$work/ca.crt" \
        --tls-auth-clients no &
    tls_redis_pid=$!; pids+=($tls_redis_pid)
    wait_port "$tls_plain_port"
    tls_yaml="  tls_both:
    listen: 127.0.0.1:$tls_slotline_plain_port
    mode: ketama
    servers: [\"127.0.0.1:$tls_port:1\"]
    tls:
      listen: 127.0.0.1:$tls_slotline_port
      cert_file: $work/tls.crt
      key_file: $work/tls.key
    backend_tls:
      ca_file: $work/ca.crt
  tls_clear:
    listen: 127.0.0.1:$tls_slotline_clear_port
    mode: ketama
    servers: [\"127.0.0.1:$tls_plain_port:1\"]"
fi
for p in "${cluster_ports[@]}" "${shard_ports[@]}"; do wait_port "$p"; done
create_cluster 1 "${cluster_ports[@]}"

slotline_port=$((BASE + 20))
nutcracker_port=$((BASE + 21))
slotline_shards_port=$((BASE + 23))
# The ACL section: the shards again, behind 100 users.
ACL=${ACL:-1}
acl_port=$((BASE + 24))
acl_yaml=""
if [ "$ACL" = 1 ]; then
    benches/users-acl.sh "$work"
    acl_yaml="  shards_acl:
    listen: 127.0.0.1:$acl_port
    mode: ketama
    hash: murmur
    aclfile: $work/users.acl
    servers:
$(for p in "${shard_ports[@]}"; do echo "      - 127.0.0.1:$p:1"; done)"
fi
READS=${READS:-1}
reads_port=$((BASE + 25))
cat >"$work/slotline.yml" <<YAML
workers: $WORKERS
pools:
  main:
    listen: 127.0.0.1:$slotline_port
    mode: cluster
    servers: [127.0.0.1:${cluster_ports[0]}]
  main_replicas:
    listen: 127.0.0.1:$reads_port
    mode: cluster
    read_from: replica
    servers: [127.0.0.1:${cluster_ports[0]}]
  shards:
    listen: 127.0.0.1:$slotline_shards_port
    mode: ketama
    hash: murmur
    servers:
$(for p in "${shard_ports[@]}"; do echo "      - 127.0.0.1:$p:1"; done)
$tls_yaml
$acl_yaml
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
[ "$ACL" = 1 ] && wait_port "$acl_port"
wait_port "$reads_port"
if [ "$READS" = 1 ]; then
    # The replicas' first sync waits out repl-diskless-sync-delay; until they have synced and been
    # measured, read_from: replica answers errors.
    for _ in $(seq 300); do
        [ "$(redis-cli -p "$reads_port" info slotline | grep -c '^replica_main_replicas_.*serving_reads=1')" = 3 ] && break
        sleep 0.1
    done
fi

# CPU of a process in clock ticks: "user system".
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
tick_hz=$(getconf CLK_TCK)
# CPU of a process in nanoseconds: the scheduler's run time of each of its threads. The per-request
# figures come from this, not from the ticks: at -P 16 a run of 300,000 requests costs the proxy
# some 20 ticks, so ticks would resolve it only in steps of 5%. (Ticks, where the kernel keeps no
# schedstat.)
cpu_ns() {
    if [ -r "/proc/$1/schedstat" ]; then
        cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ns += $1} END {printf "%.0f\n", ns}'
    else
        awk -v hz="$tick_hz" '{printf "%.0f\n", ($14 + $15) * 1e9 / hz}' "/proc/$1/stat"
    fi
}
cluster_pids=("${pids[@]:0:6}")
shard_pids=("${pids[@]:6:3}")
redis_ticks() { # pid...: user + system ticks of them all
    local t=0 u s
    for pid in "$@"; do read -r u s < <(cpu_ticks "$pid"); t=$((t + u + s)); done
    echo $t
}

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
bench() { # port workload pipeline [--cluster]: "ops client_cpu_seconds"
    local out
    # `times` in the command substitution's subshell: the CPU its child, redis-benchmark, used.
    # shellcheck disable=SC2046
    out=$(redis-benchmark -p "$1" -c "$CLIENTS" -n "$N" -P "$3" -r 100000 --csv ${4:-} $(workload_args "$2") 2>/dev/null; times)
    awk -F, '
        /^"[A-Z]/ && $1 != "\"test\"" && ops == "" { gsub(/"/, "", $2); ops = $2 }
        END {
            # last line of `times`: "XmY.YYYs XmY.YYYs", the children'"'"'s user and system time
            split($0, t, /[ms ]+/)
            printf "%s %.3f\n", (ops == "" ? 0 : ops), t[1] * 60 + t[2] + t[3] * 60 + t[4]
        }' <<<"$out"
}
# One run; appends "section workload P side ops client_s proxy_user proxy_sys redis proxy_ns" to the
# results (CPU in ticks but the client's, in seconds, and the proxy's total, in nanoseconds; side is
# direct, nutcracker or slotline).
measure() { # section workload pipeline side proxy_pid port [--cluster]
    local redis u0 s0 u1 s1 r0 r1 run n0=0 n1=0
    case $1 in
        cluster|reads) redis=("${cluster_pids[@]}") ;;
        tls) redis=("$tls_redis_pid") ;;
        *) redis=("${shard_pids[@]}") ;;
    esac
    [ "$5" = - ] && { u0=0; s0=0; } || { read -r u0 s0 < <(cpu_ticks "$5"); n0=$(cpu_ns "$5"); }
    r0=$(redis_ticks "${redis[@]}")
    run=$(bench "$6" "$2" "$3" "${7:-}")
    r1=$(redis_ticks "${redis[@]}")
    [ "$5" = - ] && { u1=0; s1=0; } || { read -r u1 s1 < <(cpu_ticks "$5"); n1=$(cpu_ns "$5"); }
    echo "$1 $2 $3 $4 $run $((u1 - u0)) $((s1 - s0)) $((r1 - r0)) $((n1 - n0))" >>"$results"
}

# Each cell is the median of REPEAT runs, interleaved (direct, slotline, nutcracker, slotline, ...) so
# that a noisy neighbour slows every side alike. A failed run (a cross-slot MGET sent straight to a
# cluster) counts 0 ops/s.
results="$work/results"
: >"$results"
CLUSTER_WORKLOADS=${CLUSTER_WORKLOADS-"set get mget10 mget10tag"}
SHARD_WORKLOADS=${SHARD_WORKLOADS-"set get mget10"}
for r in $(seq "$REPEAT"); do
    for P in $PIPELINES; do
        for w in $CLUSTER_WORKLOADS; do
            measure cluster "$w" "$P" direct - "${cluster_ports[0]}" --cluster
            measure cluster "$w" "$P" slotline $slotline_pid "$slotline_port"
        done
        for w in $SHARD_WORKLOADS; do
            measure shards "$w" "$P" nutcracker $nutcracker_pid "$nutcracker_port"
            measure shards "$w" "$P" slotline $slotline_pid "$slotline_shards_port"
        done
        if [ "$TLS" = 1 ]; then
            for w in get set; do
                measure tls "$w" "$P" direct - "$tls_port" "--tls --cacert $work/ca.crt"
                measure tls "$w" "$P" slotline $slotline_pid "$tls_slotline_port" "--tls --cacert $work/ca.crt"
                measure tls "$w" "$P" plaintext $slotline_pid "$tls_slotline_clear_port"
            done
        fi
        if [ "$ACL" = 1 ]; then
            for w in get set; do
                measure acl "$w" "$P" plain $slotline_pid "$slotline_shards_port"
                measure acl "$w" "$P" users $slotline_pid "$acl_port" "--user bench -a benchpw"
            done
        fi
        if [ "$READS" = 1 ]; then
            for w in get set; do
                measure reads "$w" "$P" master $slotline_pid "$slotline_port"
                measure reads "$w" "$P" replica $slotline_pid "$reads_port"
            done
        fi
    done
done

# The median of each column of each (section, workload, P, side) cell:
# "section workload P side ops client_s proxy_user proxy_sys redis proxy_ns", in first-seen order.
medians() {
    awk '
        function median(a, n,   i, j, x) {
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { k = $1 " " $2 " " $3 " " $4; if (!(k in n)) order[++cells] = k; i = ++n[k]; for (f = 5; f <= 10; f++) v[k, f, i] = $f }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; line = k
                for (f = 5; f <= 10; f++) { for (i = 1; i <= n[k]; i++) a[i] = v[k, f, i]; line = line " " median(a, n[k]) }
                print line
            }
        }' "$results"
}
medians >"$work/medians"

report() { # section base-side
    printf '\n%-8s %-10s %-3s %12s %9s %12s %9s %7s %9s\n' "$1" workload P "$2" "cpu/100k" slotline "cpu/100k" ratio \
        "cpu ratio"
    awk -v sec="$1" -v base="$2" -v N="$N" '
        $1 == sec { k = $2 " " $3; if (!(k in seen)) { seen[k]; order[++cells] = k }
                    ops[k, $4] = $5; cpu[k, $4] = $10 / 1e9 * 100000 / N }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; split(k, parts, " "); b = ops[k, base]; s = ops[k, "slotline"]
                x = cpu[k, base]; y = cpu[k, "slotline"]
                printf "%-8s %-10s %-3s %12.0f %9.4f %12.0f %9.4f %7s %9s\n", "", parts[1], parts[2], b, x,
                    s, y, (b > 0 ? sprintf("%.2f", s / b) : "-"), (x > 0 ? sprintf("%.3f", y / x) : "-")
            }
        }' "$work/medians"
}
[ -n "${RAW:-}" ] && cat "$results"
report cluster direct
# The split's cost: a cross-slot MGET (mget10, which Redis Cluster itself refuses, hence no direct
# figure) against the same MGET with its keys in one slot (mget10tag), through slotline and direct.
if grep -q '^cluster mget10 ' "$work/medians" && grep -q '^cluster mget10tag ' "$work/medians"; then
    echo
    echo "cross-slot 10-key MGET through slotline (keys on every master):"
    awk '
        $1 == "cluster" && $4 == "slotline" { proxied[$2, $3] = $5; ps[$3] }
        $1 == "cluster" && $4 == "direct" { direct[$2, $3] = $5 }
        END {
            for (p in ps) {
                if (!(("mget10", p) in proxied) || !(("mget10tag", p) in proxied)) continue
                c = proxied["mget10", p]; t = proxied["mget10tag", p]; d = direct["mget10tag", p]
                printf "         -P %-3s %9.0f ops/s: %.2fx the same-slot MGET through slotline (%.0f), %.2fx it direct (%.0f)\n",
                    p, c, (t > 0 ? c / t : 0), t, (d > 0 ? c / d : 0), d
            }
        }' "$work/medians" | sort -t P -k2n
fi
report shards nutcracker
if [ "$TLS" = 1 ]; then
    echo
    echo "TLS on both sides (one redis-server; slotline TLS to clients and to the server):"
    printf '%-8s %-10s %-3s %12s %12s %9s %12s %9s %11s %9s\n' "" workload P "direct tls" slotline-tls "cpu/100k" \
        "sl-plain" "cpu/100k" "tls/plain" "tls/dir"
    awk -v N="$N" '
        $1 == "tls" { k = $2 " " $3; if (!(k in seen)) { seen[k]; order[++cells] = k }
                      ops[k, $4] = $5; cpu[k, $4] = $10 / 1e9 * 100000 / N }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; split(k, p, " "); d = ops[k, "direct"]; t = ops[k, "slotline"]; q = ops[k, "plaintext"]
                printf "%-8s %-10s %-3s %12.0f %12.0f %9.4f %12.0f %9.4f %11s %9s\n", "", p[1], p[2], d, t, cpu[k, "slotline"],
                    q, cpu[k, "plaintext"], (q > 0 ? sprintf("%.2f", t / q) : "-"), (d > 0 ? sprintf("%.2f", t / d) : "-")
            }
        }' "$work/medians"
fi

# Two sides of one section by workload and -P: ops/s and CPU seconds per 100k requests of each, and
# the ratio of the second's CPU to the first's.
cpu_ratio_report() { # section side-a side-b heading-a heading-b
    printf '%-8s %-10s %-3s %12s %9s %12s %9s %11s\n' "" workload P "$4" "cpu/100k" "$5" "cpu/100k" "cpu ratio"
    awk -v sec="$1" -v a="$2" -v b="$3" -v N="$N" '
        $1 == sec { k = $2 " " $3; if (!(k in seen)) { seen[k]; order[++cells] = k }
                    ops[k, $4] = $5; cpu[k, $4] = $10 / 1e9 * 100000 / N }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; split(k, p, " "); x = cpu[k, a]; y = cpu[k, b]
                printf "%-8s %-10s %-3s %12.0f %9.4f %12.0f %9.4f %11s\n", "", p[1], p[2], ops[k, a], x,
                    ops[k, b], y, (x > 0 ? sprintf("%.3f", y / x) : "-")
            }
        }' "$work/medians"
}

if [ "$ACL" = 1 ]; then
    echo
    echo "Users (the same shards through slotline; an ACL file of 100 users, the benchmark logged in as one):"
    cpu_ratio_report acl plain users "no users" "100 users"
fi

if [ "$READS" = 1 ]; then
    echo
    echo "Replica reads (one cluster of 3 masters + 3 replicas; read_from: master, then replica):"
    cpu_ratio_report reads master replica master replica
fi

# Where the machine's CPU went, per request: the benchmark client, the proxy (and how much of it was the
# kernel's socket work) and the redis-servers. When `busy` is near the core count, throughput is their
# sum's inverse: a proxy can only gain by what it spends itself, and the kernel part of that is the
# floor for any proxy making the same reads and writes. `no user code` is the ops/s with the proxy's
# user-space time taken away (its kernel time kept): the most any rewrite of the proxy could reach.
echo
echo "CPU per request, µs (medians):"
printf '%-8s %-10s %-3s %-10s %9s %7s %12s %7s %6s %13s\n' "" workload P side ops/s client "proxy(sys)" redis busy "no user code"
awk -v hz="$tick_hz" -v N="$N" '
    {
        # The proxy: its total from the nanoseconds, the share of it in the kernel from the ticks.
        us = 1e6 / N; client = $6 * us; redis = $9 / hz * us; proxy = $10 / 1e3 / N
        sys = ($7 + $8 > 0) ? proxy * $8 / ($7 + $8) : 0; user = proxy - sys
        total = client + user + sys + redis
        busy = total * $5 / 1e6
        ceiling = (total - user > 0) ? $5 * total / (total - user) : 0
        printf "%-8s %-10s %-3s %-10s %9.0f %7.2f %5.2f(%4.2f) %7.2f %6.2f %13.0f\n", $1, $2, $3, $4, $5, client,
            user + sys, sys, redis, busy, ($4 == "direct" ? $5 : ceiling)
    }' "$work/medians"
# Latency as clients see it: p50, p99 and p99.9 beside ops/s, GET and SET at -P 1, with 50 and with
# 1,000 connected clients; the median of REPEAT interleaved runs of each cell. Direct: the cluster
# with --cluster, and the first shard alone (what one Redis answers without a proxy).
latency() { # port clients test [--cluster]: "ops p50 p99 p99.9" (ms)
    # p50 and p99 from the latency summary, which redis-benchmark reads off its histogram at exactly
    # those percentiles; p99.9 from the percentile distribution, whose lines halve the rest each
    # time (..., 99.219%, 99.609%, 99.805%, 99.902%): its first line at or past 99.9%. (That list
    # gives no p99: its first line past 99% is p99.2.)
    redis-benchmark -p "$1" -c "$2" -n "$LATENCY_N" -r 100000 -t "$3" ${4:-} 2>/dev/null | tr '\r' '\n' | awk '
        /requests per second/ && /throughput summary/ { ops = $3 }
        /^ *[0-9.]+% <= / {
            pct = $1; sub(/%/, "", pct); ms = $3
            if (p999 == "" && pct + 0 >= 99.9) p999 = ms
        }
        summary { p50 = $3; p99 = $5; summary = 0 }
        /avg +min +p50 +p95 +p99 +max/ { summary = 1 }
        END { printf "%s %s %s %s\n", ops + 0, p50 + 0, p99 + 0, p999 + 0 }'
}
LATENCY_CLIENTS=${LATENCY_CLIENTS-"50 1000"}
LATENCY_N=${LATENCY_N:-100000}
lat="$work/latency"
: >"$lat"
for r in $(seq "$REPEAT"); do
    for c in $LATENCY_CLIENTS; do
        for t in get set; do
            echo "cluster $t $c direct $(latency "${cluster_ports[0]}" "$c" "$t" --cluster)" >>"$lat"
            echo "cluster $t $c slotline $(latency "$slotline_port" "$c" "$t")" >>"$lat"
            echo "shards $t $c redis $(latency "${shard_ports[0]}" "$c" "$t")" >>"$lat"
            echo "shards $t $c nutcracker $(latency "$nutcracker_port" "$c" "$t")" >>"$lat"
            echo "shards $t $c slotline $(latency "$slotline_shards_port" "$c" "$t")" >>"$lat"
        done
    done
done
echo
echo "Latency at -P 1 (ms; medians of $REPEAT interleaved runs of $LATENCY_N requests):"
printf '%-8s %-4s %-6s %-11s %9s %7s %7s %7s\n' "" test client side ops/s p50 p99 p99.9
awk '
    function median(a, n,   i, j, x) {
        for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 " " $2 " " $3 " " $4; if (!(k in n)) order[++cells] = k; i = ++n[k]; for (f = 5; f <= 8; f++) v[k, f, i] = $f }
    END {
        for (c = 1; c <= cells; c++) {
            k = order[c]; split(k, p, " ")
            for (f = 5; f <= 8; f++) { for (i = 1; i <= n[k]; i++) a[i] = v[k, f, i]; m[f] = median(a, n[k]) }
            printf "%-8s %-4s %-6s %-11s %9.0f %7.3f %7.3f %7.3f\n", p[1], p[2], p[3], p[4], m[5], m[6], m[7], m[8]
        }
    }' "$lat"

echo
echo "(cluster ratio: slotline / direct to the cluster; shards ratio: slotline / nutcracker on the same three"
echo " shards; cpu/100k: the proxy's CPU seconds per 100k requests (direct: none); $(nproc) cores;"
echo " slotline workers: $WORKERS; -c $CLIENTS -n $N; median of $REPEAT interleaved runs)"
