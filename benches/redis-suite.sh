#!/usr/bin/env bash
# Redis's own Tcl test suite through slotline, beside the same suite against one redis-server that
# holds all 16384 slots (the baseline): how far slotline is a drop-in Redis endpoint.
#
#   benches/redis-suite.sh SUITE_DIR OUT            # every unit, slotline and the baseline
#   UNITS="unit/type/list unit/pubsub" benches/redis-suite.sh SUITE_DIR OUT   # some units
#   ONLY=slotline benches/redis-suite.sh ...        # skip the baseline (or ONLY=direct)
#   MODE=ketama ONLY=slotline benches/redis-suite.sh ...  # slotline over 3 standalone shards
#
# SUITE_DIR holds the suite's runner: run-suite.sh, compare.py and suite/ (Redis 7.0.15's tests; see
# its README). slotline runs in cluster mode in front of a 3-master cluster with allow_flush,
# allow_admin and node_logins (the suite logs in as users it makes on the nodes), the suite in
# --cluster-mode, its fixture commands sent to the nodes (SETUP_VIA).
# Results: OUT/slotline, OUT/direct, and compare.py's list of tests that pass directly and fail
# through slotline. Needs redis-server, redis-cli, tclsh, python3; builds slotline --release.
set -euo pipefail

SUITE=${1:?usage: redis-suite.sh SUITE_DIR OUT}
OUT=${2:?usage: redis-suite.sh SUITE_DIR OUT}
BASE=${BASE:-9510}
ONLY=${ONLY:-}
MODE=${MODE:-cluster}
SUITE=$(cd "$SUITE" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cd "$(dirname "$0")/.."
cargo build --release --quiet

work=$(mktemp -d /tmp/slotline-suite.XXXXXX)
pids=()
cleanup() {
    # -9: a node busy in a script that never ends ignores SIGTERM.
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # port [standalone]
    mkdir -p "$work/$1"
    local cluster=(--cluster-enabled yes --cluster-config-file nodes.conf)
    [ -n "${2:-}" ] && cluster=()
    redis-server --port "$1" --bind 127.0.0.1 --dir "$work/$1" --save "" --appendonly no \
        "${cluster[@]}" --enable-debug-command yes \
        --enable-module-command yes --loglevel warning >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.05; done
    echo "redis-suite.sh: redis-server on $1 did not start" >&2
    exit 1
}

label=slotline
[ "$MODE" = ketama ] && label=slotline-ketama
if [ "$ONLY" != direct ]; then
    masters=($((BASE + 1)) $((BASE + 2)) $((BASE + 3)))
    proxy=$((BASE + 80))
    if [ "$MODE" = ketama ]; then
        # Three independent shards, placed as twemproxy places keys; the suite's {t} hash tags keep
        # a test's keys on one shard, as `hash_tag: "{}"` does in a nutcracker.yml.
        for port in "${masters[@]}"; do start_redis "$port" standalone; done
        servers="hash_tag: \"{}\"
    servers:
$(for port in "${masters[@]}"; do echo "      - 127.0.0.1:$port:1 s$port"; done)"
    else
        for port in "${masters[@]}"; do start_redis "$port"; done
        echo yes | redis-cli --cluster create $(printf '127.0.0.1:%s ' "${masters[@]}") \
            --cluster-replicas 0 >/dev/null
        servers="servers:
$(printf '      - 127.0.0.1:%s\n' "${masters[@]}")"
    fi
    cat >"$work/slotline.yml" <<EOF
pools:
  suite:
    listen: 127.0.0.1:$proxy
    mode: $MODE
    allow_flush: true
    allow_admin: true
    node_logins: true
    $servers
EOF
    target/release/slotline --config "$work/slotline.yml" >"$work/slotline.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$proxy" set ready 1 >/dev/null 2>&1 && break; sleep 0.1; done
    # A test that fails before its own SCRIPT KILL leaves its node running `while true do end`, and
    # every later unit fails on that node's BUSY. Against one redis-server those tests pass (the
    # whole server is busy, so the test's other client sees BUSY too); behind slotline only one of
    # three masters is. So between units (the runner pings the endpoint with REDIS_CLI after each)
    # a node left busy has its script killed, as an operator would, and a CLIENT PAUSE left behind
    # by a test that stalled is lifted (Redis's own runner starts a fresh server per unit); each
    # kill goes to OUT/slotline/janitor.log.
    real_cli=$(command -v redis-cli)
    cat >"$work/redis-cli" <<EOF
#!/usr/bin/env bash
if [ "\$#" = 5 ] && [ "\$5" = ping ]; then
    # A pause a stalled test left behind holds slotline's clients in every later unit.
    "$real_cli" -p $proxy client unpause >/dev/null 2>&1
    for port in ${masters[*]}; do
        if "$real_cli" -p "\$port" ping 2>&1 | grep -q '^BUSY'; then
            echo "\$(date +%T) node \$port busy: \$("$real_cli" -p "\$port" script kill 2>&1) \$("$real_cli" -p "\$port" function kill 2>&1)" >>"$work/janitor.log"
            sleep 0.2
        fi
    done
fi
exec "$real_cli" "\$@"
EOF
    chmod +x "$work/redis-cli"
    touch "$work/janitor.log"
    REDIS_CLI="$work/redis-cli" \
    SETUP_VIA=$(printf '127.0.0.1:%s,' "${masters[@]}" | sed 's/,$//') \
        "$SUITE/run-suite.sh" "$SUITE/suite" 127.0.0.1 "$proxy" "$label" "$OUT" --cluster-mode
    cp "$work/slotline.log" "$OUT/$label/slotline.log"
    cp "$work/janitor.log" "$OUT/$label/janitor.log"
fi

if [ "$ONLY" != slotline ]; then
    direct=$((BASE + 100))
    start_redis "$direct"
    redis-cli -p "$direct" cluster addslotsrange 0 16383 >/dev/null
    for _ in $(seq 100); do
        redis-cli -p "$direct" cluster info | grep -q 'cluster_state:ok' && break
        sleep 0.1
    done
    "$SUITE/run-suite.sh" "$SUITE/suite" 127.0.0.1 "$direct" direct "$OUT" --cluster-mode
fi

if [ -z "$ONLY" ]; then
    python3 "$SUITE/compare.py" "$OUT/direct" "$OUT/$label" --details | tee "$OUT/compare.txt"
fi
