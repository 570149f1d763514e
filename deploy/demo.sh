#!/usr/bin/env bash
# slotline on one machine: a 3-master/3-replica Redis Cluster on 127.0.0.1:7000-7005 and slotline in
# front of it on 127.0.0.1:6380. Ctrl-C stops everything this script started.
#
#   deploy/demo.sh         install Redis if missing, build slotline (release), run the demo
#   deploy/demo.sh stop    stop what an interrupted earlier run left behind (by its recorded PIDs)
set -euo pipefail

cd "$(dirname "$0")/.."

REDIS_PORTS=(7000 7001 7002 7003 7004 7005)
PROXY_PORT=6380
STATE_DIR="${TMPDIR:-/tmp}/slotline-demo-$(id -u)"
PIDFILE="$STATE_DIR/pids"
DATA="$STATE_DIR/data"
PIDS=()

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Something accepts TCP connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# $1 is alive and is a redis-server or slotline (guards against a PID reused since it was recorded).
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qE 'redis-server|slotline'; }

# Stops the given PIDs: SIGTERM, up to 5 s to exit, then SIGKILL.
stop_pids() {
    local pid left i
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 50); do
        left=0
        for pid in "$@"; do ours "$pid" && left=1; done
        [ "$left" -eq 0 ] && return 0
        sleep 0.1
    done
    for pid in "$@"; do ours "$pid" && kill -9 "$pid" 2>/dev/null; done
    return 0
}

# PIDs recorded by an earlier run that are still running.
recorded_alive() {
    local pid
    [ -f "$PIDFILE" ] || return 0
    while read -r pid; do
        if [ -n "$pid" ] && ours "$pid"; then echo "$pid"; fi
    done <"$PIDFILE"
}

if [ "${1:-}" = "stop" ]; then
    mapfile -t stale < <(recorded_alive)
    if [ "${#stale[@]}" -gt 0 ]; then
        say "stopping PIDs ${stale[*]} from an earlier run"
        stop_pids "${stale[@]}"
    else
        say "nothing from an earlier run is running"
    fi
    rm -rf "$STATE_DIR"
    exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [stop]"

# An earlier run killed without its cleanup leaves processes on our ports: say so, never guess.
mapfile -t stale < <(recorded_alive)
if [ "${#stale[@]}" -gt 0 ]; then
    die "a demo is already running (PIDs ${stale[*]}). Stop it with Ctrl-C in its terminal, or with: $0 stop"
fi
busy=()
for port in "${REDIS_PORTS[@]}" "$PROXY_PORT"; do
    port_busy "$port" && busy+=("$port")
    # Cluster bus ports.
    [ "$port" = "$PROXY_PORT" ] || { port_busy $((port + 10000)) && busy+=($((port + 10000))); }
done
if [ "${#busy[@]}" -gt 0 ]; then
    pattern=$(
        IFS='|'
        echo "${busy[*]}"
    )
    die "port(s) ${busy[*]} are in use by another process; the demo needs 7000-7005, 17000-17005 and
$PROXY_PORT free. See what holds them with: ss -ltnp | grep -E ':($pattern)\b'"
fi

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    command -v apt-get >/dev/null || die "install redis-server and redis-cli (Redis 7), then run me again"
    say "installing redis-server and redis-tools"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
fi
command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"

say "building slotline (release)"
cargo build --release

cleanup() {
    trap - EXIT INT TERM
    if [ "${#PIDS[@]}" -gt 0 ]; then
        say "stopping slotline and the Redis nodes"
        stop_pids "${PIDS[@]}"
    fi
    rm -rf "$STATE_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$STATE_DIR"
mkdir -p "$DATA"
: >"$PIDFILE"

say "starting redis-server on ports ${REDIS_PORTS[*]} (data and logs in $DATA)"
for port in "${REDIS_PORTS[@]}"; do
    dir="$DATA/$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/nodes.conf" --dir "$dir" --save "" --appendonly no \
        --daemonize no --logfile "$dir/redis.log" &
    PIDS+=("$!")
    echo "$!" >>"$PIDFILE"
done
for port in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && continue 2
        sleep 0.1
    done
    die "redis-server on port $port did not start; see $DATA/$port/redis.log"
done

say "creating the cluster (3 masters, 1 replica each)"
addrs=()
for port in "${REDIS_PORTS[@]}"; do addrs+=("127.0.0.1:$port"); done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes </dev/null >"$DATA/create.log" 2>&1 ||
    die "redis-cli --cluster create failed:
$(cat "$DATA/create.log")"
for port in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 300); do
        redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && continue 2
        sleep 0.1
    done
    die "node $port did not reach cluster_state:ok; see $DATA/$port/redis.log"
done

config="$STATE_DIR/slotline.yml"
cat >"$config" <<EOF
pools:
  main:
    listen: 127.0.0.1:$PROXY_PORT
    mode: cluster
    servers:
      - 127.0.0.1:7000
      - 127.0.0.1:7001
      - 127.0.0.1:7002
    timeout: 1000
EOF

say "starting slotline --config $config"
target/release/slotline --config "$config" &
slotline=$!
PIDS+=("$slotline")
echo "$slotline" >>"$PIDFILE"
for _ in $(seq 100); do
    port_busy "$PROXY_PORT" && break
    ours "$slotline" || die "slotline exited before it listened (its output is above)"
    sleep 0.1
done
port_busy "$PROXY_PORT" || die "slotline did not listen on 127.0.0.1:$PROXY_PORT within 10 s"

cat <<EOF

  slotline is listening on 127.0.0.1:$PROXY_PORT, in front of the cluster on 127.0.0.1:7000-7005.

      connect with: redis-cli -p $PROXY_PORT

  Press Ctrl-C to stop slotline and the Redis nodes.

EOF

# Stay in the foreground until Ctrl-C (the trap cleans up) or until slotline exits by itself.
wait "$slotline"
