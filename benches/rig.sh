# Sourced by the benches (`. benches/rig.sh NAME`): a temp dir ($work) removed at exit with every
# process started into $pids, redis-servers on loopback, waiting for a port to answer, and a Redis
# Cluster made of running servers. wait_port speaks TLS when the caller sets tls_args.

work=$(mktemp -d "/tmp/slotline-$1.XXXXXX")
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

wait_port() { # port
    for _ in $(seq 100); do
        redis-cli ${tls_args[@]+"${tls_args[@]}"} -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "${0##*/}: nothing answers on port $1" >&2; cat "$work/redis-$1/log" >&2 2>/dev/null; exit 1
}

create_cluster() { # replicas-per-master port...: redis-cli --cluster create, then every node ok
    local replicas=$1
    shift
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "$@") --cluster-replicas "$replicas" --cluster-yes >/dev/null
    for _ in $(seq 100); do
        local ok=1
        for p in "$@"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0; done
        [ $ok = 1 ] && return 0
        sleep 0.2
    done
}
