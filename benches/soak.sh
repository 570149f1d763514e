#!/usr/bin/env bash
# Fault-injection soak: 64 clients pipelining GET/SET/INCR/MGET/MSET/EVAL/MULTI/BLPOP/PUBLISH (and
# subscribers) through slotline's three kinds of pool while a chaos loop drops backend connections,
# fails masters over (CLUSTER FAILOVER, SENTINEL FAILOVER), migrates slots, SIGSTOPs a node past
# `timeout`, moves a pod to a new IP through the fake Kubernetes API, and SIGKILLs a master. Every
# reply is checked against the client's own model; prints the counts (requests, wrong replies: must
# be 0, errors by kind, reads explained by writes lost in crashes, subscriber messages, peak RSS).
#
#   benches/soak.sh                          # 10 rounds of every fault, at least 1,000,000 requests
#   SOAK_ROUNDS=50 SOAK_REQUESTS=10000000 benches/soak.sh
#
# It is tests/soak.rs (whose short mode, one round, runs in `cargo test`) in a release build. Needs
# redis-server, redis-sentinel, redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/slotline-soak.XXXXXX)
status=0
SOAK_ROUNDS=${SOAK_ROUNDS:-10} SOAK_REQUESTS=${SOAK_REQUESTS:-1000000} \
    cargo test --release --quiet --test soak -- --nocapture >"$log" 2>&1 || status=$?
grep -E -A30 '^(round|soak:)|panicked|^test result' "$log" | grep -E '^(round|soak:|test result)|panicked|^ +"|^\]' || true
echo "full output: $log"
exit $status
