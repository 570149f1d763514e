#!/usr/bin/env bash
# The migration mover's speed, and what clients get meanwhile (docs/migration.md): N small keys on
# three standalone shards (placed by a ketama pool, as nutcracker would) move into a 3-master cluster.
#
#   normal      redis-benchmark GET/SET -c 50 against a plain cluster pool on the same cluster
#   mover only  keys/s moved with no client load
#   under load  keys/s moved while redis-benchmark runs, and the clients' ops/s (ratio to normal)
#
#   benches/migrate.sh               # N=200000 keys
#   N=50000 benches/migrate.sh
#
# Needs redis-server, redis-cli and redis-benchmark; builds slotline --release.
set -euo pipefail

N=${N:-200000}
BASE=${BASE:-17400}

cd "$(dirname "$0")/.."
cargo build --release --quiet
. benches/rig.sh migrate
cluster_ports=($BASE $((BASE + 1)) $((BASE + 2)))
shard_ports=($((BASE + 10)) $((BASE + 11)) $((BASE + 12)))
for p in "${cluster_ports[@]}"; do start_redis "$p" cluster; done
for p in "${shard_ports[@]}"; do start_redis "$p"; done
for p in "${cluster_ports[@]}" "${shard_ports[@]}"; do wait_port "$p"; done
create_cluster 0 "${cluster_ports[@]}"

servers=$(for i in 0 1 2; do printf '          - 127.0.0.1:%s:1 s%s\n' "${shard_ports[$i]}" "$i"; done)
seeds="[127.0.0.1:${cluster_ports[0]}]"
config() { # port rate
    cat <<YAML
workers: 1
pools:
  main:
    listen: 127.0.0.1:$1
    mode: cluster
    servers: $seeds
    migrate:
      rate: $2
      batch: 500
      from:
        mode: ketama
        servers:
$servers
YAML
}
cat >"$work/plain.yml" <<YAML
workers: 1
pools:
  shards:
    listen: 127.0.0.1:$((BASE + 20))
    mode: ketama
    servers:
$(printf '%s\n' "$servers" | sed 's/^    //')
  cluster:
    listen: 127.0.0.1:$((BASE + 21))
    mode: cluster
    servers: $seeds
YAML
target/release/slotline --config "$work/plain.yml" 2>"$work/plain.log" &
pids+=($!)
wait_port $((BASE + 20))
wait_port $((BASE + 21))

load() { # port: "ops/s" of GET and SET, -c 50 -P 1, random keys of the loaded range
    redis-benchmark -p "$1" -c 50 -n 200000 -r "$N" -t set,get --csv 2>/dev/null |
        awk -F, '/^"(SET|GET)"/ { gsub(/"/, "", $2); s += $2; n++ } END { printf "%.0f", n ? s / n : 0 }'
}
fill() { # the N keys key:000000000000 ... on the shards, through the ketama pool
    # -r draws keys at random: about 63% of N distinct ones; the count moved is what is there.
    redis-benchmark -p $((BASE + 20)) -c 50 -n "$N" -r "$N" -t set -P 64 -q >/dev/null 2>&1
}
keys_on_shards() { local t=0; for p in "${shard_ports[@]}"; do t=$((t + $(redis-cli -p "$p" dbsize))); done; echo $t; }
empty_all() { for p in "${cluster_ports[@]}" "${shard_ports[@]}"; do redis-cli -p "$p" flushall >/dev/null; done; }
migrate() { # label with_load: moves the shards' keys into the cluster
    local port=$((BASE + 30)) start end keys ops=-
    config $port 1000000 >"$work/migrate.yml"
    keys=$(keys_on_shards)
    target/release/slotline --config "$work/migrate.yml" 2>"$work/migrate.log" &
    local pid=$!
    wait_port $port
    # Timed from the end of the start's hold (2 s, once: docs/migration.md).
    until redis-cli -p $port info migration | grep -q 'migration_state:\(moving\|done\)'; do sleep 0.05; done
    start=$(date +%s.%N)
    if [ "$2" = 1 ]; then ops=$(load $port); fi
    until redis-cli -p $port info migration | grep -q 'migration_state:done'; do sleep 0.1; done
    end=$(date +%s.%N)
    # Keys that moved, read and written through the pool that moved them (still migrate:-configured).
    local after=-
    if [ "$2" = 0 ]; then after=$(load $port); fi
    kill $pid; wait $pid 2>/dev/null || true
    awk -v l="$1" -v k="$keys" -v s="$start" -v e="$end" -v o="$ops" -v a="$after" -v n="$normal" 'BEGIN {
        printf "%-12s %9d keys in %5.1f s: %7.0f keys/s; clients %s ops/s", l, k, e - s, k / (e - s), o
        if (o != "-" && n > 0) printf " (%.2f of normal)", o / n
        printf "\n"
        if (a != "-" && n > 0) printf "%-12s clients %s ops/s on the moved keys, pool done (%.2f of normal)\n", "after", a, a / n
    }'
}

empty_all
normal=$(load $((BASE + 21)))
echo "normal (plain cluster pool): $normal ops/s (GET and SET, -c 50, mean)"
empty_all; fill; migrate "mover only" 0
empty_all; fill; migrate "under load" 1
echo "(slotline workers: 1; $(nproc) cores; N=$N; the clients' keys are the moved ones)"
