#!/usr/bin/env bash
# Writes DIR/users.acl: the ACL file the benchmarks' users rows run with. 100 users: the default user
# (everything), 98 applications with their own keys and channels, and `bench` (password benchpw),
# whom redis-benchmark logs in as: ten key patterns, its keys (key:*) matching the last.
#
#   benches/users-acl.sh DIR
set -euo pipefail
dir=${1:?usage: benches/users-acl.sh DIR}
{
    echo "user default on nopass ~* &* +@all"
    for i in $(seq 1 98); do echo "user app$i on >pw$i ~app$i:* %R~shared$i:* &app$i:* +@all -@dangerous"; done
    echo "user bench on >benchpw $(for i in $(seq 1 9); do printf '~app%s:* ' "$i"; done)~key:* resetchannels +@all -@dangerous"
} >"$dir/users.acl"
