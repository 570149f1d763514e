#!/usr/bin/env bash
# Planned Sentinel failovers under writers at full speed: how many writes slotline acknowledged, how
# many of them the serving master lacks afterwards (must be 0), how many were refused, and how long
# writes were held for each promotion.
#
#   benches/failover.sh            # 20 failovers (FAILOVERS=N for another count)
#
# It is tests/failover.rs with more rounds, in a release build: real redis-servers (a master and a
# replica) and three real redis-sentinels on loopback ports. Needs redis-server and redis-sentinel.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/slotline-failover.XXXXXX)
status=0
FAILOVERS=${FAILOVERS:-20} cargo test --release --quiet --test failover -- --nocapture --test-threads 1 \
    >"$log" 2>&1 || status=$?
grep -E -A1 '^(round|[0-9]+ x )|panicked|^test result' "$log" | grep -v '^--$' || true
echo "full output: $log"
exit $status
