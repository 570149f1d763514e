#!/usr/bin/env bash
# Planned failovers under writers at full speed (SENTINEL FAILOVER, Redis FAILOVER with ROLE
# probes, REPLICAOF by hand with the master demoted first, CLUSTER FAILOVER): how many writes
# slotline acknowledged, how many of them the serving master lacks afterwards (must be 0), how many
# were refused, how long writes were held for each promotion. A live reshard of 4000 slots under 32
# pipelining clients: wrong replies (must be 0), throughput before and during. 10 crashes (SIGKILL)
# of cluster masters under writers on every master: how long after the replica's promotion the dead
# master's slots work again, errors elsewhere (must be 0), writes Redis itself lost in the crash.
#
#   benches/failover.sh            # 20 failovers of each kind (FAILOVERS=N), RESHARD_SLOTS=4000,
#                                  # CRASHES=10
#
# It is tests/failover.rs with more rounds, in a release build: real redis-servers, a Redis Cluster
# and three real redis-sentinels on loopback ports. Needs redis-server, redis-sentinel, redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/slotline-failover.XXXXXX)
status=0
FAILOVERS=${FAILOVERS:-20} RESHARD_SLOTS=${RESHARD_SLOTS:-4000} CRASHES=${CRASHES:-10} cargo test --release --quiet --test failover -- --nocapture --test-threads 1 \
    >"$log" 2>&1 || status=$?
grep -E -A1 '^(round|crash|[0-9]+ x |[0-9]+ crash|SENTINEL|resharding)|panicked|^test result' "$log" | grep -v '^--$' || true
echo "full output: $log"
exit $status
