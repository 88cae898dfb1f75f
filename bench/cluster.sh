#!/usr/bin/env bash
# The figures of BENCHMARKS.md's "Several nodes on one PostgreSQL": a private PostgreSQL of
# the distribution (as the `postgres` user when run as root), then `bench delivery --url`
# against one node, and against three nodes on the same database, the devices posting
# through all three.
# Usage: bench/cluster.sh [duration]   (default 20s)
#        bench/cluster.sh kill [endpoints] (three nodes, devices posting 2,000 events/s for
#                                          60 s to each endpoint (default 3), the last node
#                                          killed with SIGKILL 20 s in: BENCHMARKS.md's
#                                          failover run)
#        bench/cluster.sh freeze             (three nodes, devices posting 2,000 events/s to
#                                          three endpoints through the first two for 50 s,
#                                          the third stopped with SIGSTOP 10 s in and woken
#                                          30 s later; the notification queue and the dead
#                                          nodes' listening sessions every 2 s meanwhile)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="figures"
if [ "${1:-}" = kill ]; then mode="kill"; endpoints="${2:-3}"; shift $#; fi
if [ "${1:-}" = freeze ]; then mode="freeze"; shift $#; fi
duration="${1:-20s}"
cargo build --release --quiet
bin="$PWD/target/release/merpati"
. bench/private_postgres.sh
nodes=()
cleanup() {
    for pid in "${nodes[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    stop_private_postgres
}
trap cleanup EXIT
start_private_postgres
key="$(head -c 32 /dev/urandom | base64)"
admin="bench-admin-token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# Starts `count` nodes on a fresh database; their URLs in $urls, their pids in $pids.
start_nodes() {
    local count="$1" db="$2"
    as_postgres "$pg_bin/createdb" -h "$work" -U postgres "$db"
    urls="" pids=""
    for i in $(seq 1 "$count"); do
        local port=$((18080 + i)) dir="$work/node-$db-$i"
        mkdir -p "$dir"
        MERPATI_DATABASE_URL="postgres://postgres@$socket/$db" MERPATI_SECRET_KEY="$key" \
            MERPATI_ADMIN_TOKEN="$admin" MERPATI_LISTEN="127.0.0.1:$port" \
            MERPATI_DATA_DIR="$dir" MERPATI_DELIVERY_ALLOWED_NETWORKS=127.0.0.0/8 \
            MERPATI_CLUSTER_NODE_NAME="node-$i" MERPATI_LOG=warn \
            "$bin" serve >"$dir/log" 2>&1 &
        nodes+=("$!")
        pids="${pids:+$pids,}$!"
        urls="${urls:+$urls,}http://127.0.0.1:$port"
        until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.2; done
    done
    # The slots shared out among them.
    sleep 3
}
stop_nodes() {
    for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    nodes=()
}
bench() {
    echo "\$ merpati bench delivery --url $urls --duration $duration $*"
    "$bin" bench delivery --url "$urls" --admin-token "$admin" --server-pid "$pids" \
        --duration "$duration" "$@"
    echo
}

if [ "$mode" = kill ]; then
    start_nodes 3 failover
    echo "\$ merpati bench delivery --url $urls --rate 2000 --concurrency 256 --endpoints $endpoints --duration 60s --kill-after 20s"
    "$bin" bench delivery --url "$urls" --admin-token "$admin" --server-pid "$pids" \
        --rate 2000 --concurrency 256 --endpoints "$endpoints" --duration 60s --kill-after 20s
    exit 0
fi

if [ "$mode" = freeze ]; then
    start_nodes 3 freeze
    first_two="${urls%,*}"
    echo "\$ merpati bench delivery --url $first_two --rate 2000 --concurrency 64 --endpoints 3 --duration 50s"
    "$bin" bench delivery --url "$first_two" --admin-token "$admin" \
        --rate 2000 --concurrency 64 --endpoints 3 --duration 50s >"$work/load" 2>&1 &
    load=$!
    sleep 10
    kill -STOP "${nodes[2]}"
    echo "node 3 stopped (SIGSTOP)"
    for t in $(seq 2 2 30); do
        sleep 2
        queue="$(sql freeze "SELECT round((pg_notification_queue_usage() * 8 * 1024 * 1024)::numeric)")"
        dead="$(sql freeze "SELECT COUNT(*) FROM pg_stat_activity a
                     WHERE a.datname = current_database()
                       AND starts_with(a.application_name, 'merpati listener ')
                       AND NOT EXISTS (SELECT 1 FROM cluster_nodes n
                           WHERE n.lease_until > extract(epoch FROM clock_timestamp()) * 1000
                             AND a.application_name = 'merpati listener ' || n.id)")"
        echo "${t} s after: notification queue ${queue} KiB, listening sessions of dead nodes ${dead}"
    done
    kill -CONT "${nodes[2]}"
    echo "node 3 woken (SIGCONT)"
    wait "$load"
    cat "$work/load"
    exit 0
fi

for count in 1 3; do
    echo "## $count node(s)"
    start_nodes "$count" "one_item_$count"
    bench
    stop_nodes
    start_nodes "$count" "hundred_items_$count"
    bench --items-per-request 100 --concurrency 16
    stop_nodes
    start_nodes "$count" "steady_$count"
    bench --rate 2000 --idle 10s
    stop_nodes
done
