#!/usr/bin/env bash
# What PostgreSQL alone spends per event on the log's writes, with the schema as migrated and
# with fewer indexes: BENCHMARKS.md's "the server's floor under 25,000 events/s". A private
# PostgreSQL of the distribution, a database migrated by `merpati migrate`, then pgbench
# sending what a node sends for 100 events of one endpoint: the ingest's group (events,
# their rids and deliveries handed to the owner) and the owner's records (attempts, and
# each delivery marked succeeded), each as one statement over 100 rows.
# Usage: bench/pg_rows.sh [seconds] [clients]   (default 20 s, 4 clients)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
clients="${2:-4}"
cargo build --release --quiet
bin="$PWD/target/release/merpati"
. bench/private_postgres.sh
trap stop_private_postgres EXIT
start_private_postgres

# The server's CPU time so far, in clock ticks: the postmaster's own and its ended
# children's (pgbench's sessions end with it), and its live children's.
server_ticks() {
    local main total pid
    main="$(head -1 "$work/pg/postmaster.pid")"
    total="$(awk '{print $14 + $15 + $16 + $17}' "/proc/$main/stat")"
    for pid in $(pgrep -P "$main"); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

cat >"$work/ingest.sql" <<'EOF'
\set now 1700000000000
WITH new AS (
    SELECT nextval('event_numbers') AS seq, nextval('delivery_numbers') AS delivery,
           md5(random()::text) AS tag,
           'evt_' || to_char(clock_timestamp(), 'YYYYMMDDHH24MISSMS') || left(md5(random()::text), 16) AS id
    FROM generate_series(1, 100)
), stored AS (
    INSERT INTO events (seq, id, account_id, type, device_id, channel_id, business_id,
                        payload, created_at)
    SELECT seq, id, 'acct_bench', 'sms', 'dev_' || (seq % 128), 'ch_1', 'biz_1',
           '{"id":' || seq || ',"rid":"' || seq || '","phone":"+639171234567","message":"bench 1234567890","sim":1,"received_at":"2026-12-05T07:00:00Z"}',
           (:now::BIGINT)
    FROM new
), rids AS (
    INSERT INTO event_rids (account_id, device_id, rid, content_hash, event_seq, event_id)
    SELECT 'acct_bench', 'dev_' || (seq % 128), seq::text, decode(tag, 'hex'), seq,
           id
    FROM new
), handed AS (
    INSERT INTO deliveries (id, event_seq, endpoint_id, status, next_attempt_at, created_at,
                            order_key, claimed_at, slot)
    SELECT delivery, seq, 'ep_bench', 'pending', (:now::BIGINT) + 30000, (:now::BIGINT), NULL, (:now::BIGINT), 7
    FROM new
    RETURNING id
)
SELECT array_agg(id) AS handed FROM handed \gset
WITH done AS (
    UPDATE deliveries d SET status = 'succeeded', attempts = 1, next_attempt_at = NULL,
                            claimed_at = NULL, completed_at = (:now::BIGINT) + 5
    WHERE d.id = ANY(:handed::BIGINT[]) AND d.slot = 7 AND d.attempts < 1
    RETURNING d.id
)
INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code)
SELECT id, 1, (:now::BIGINT) + 1, 2, 200 FROM done;
EOF

# Sends the two statements for `seconds` and prints the server's microseconds an event.
measure() {
    local db="$1" label="$2" before after events
    sql "$db" "CHECKPOINT" >/dev/null
    before="$(server_ticks)"
    local out
    out="$(as_postgres "$pg_bin/pgbench" -h "$work" -U postgres -n -M prepared \
        -c "$clients" -j "$clients" -T "$seconds" -f "$work/ingest.sql" "$db" 2>&1)"
    sleep 1
    after="$(server_ticks)"
    local tx
    tx="$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}' | cut -d/ -f1)"
    events=$((tx * 100))
    local ticks_per_s
    ticks_per_s="$(getconf CLK_TCK)"
    awk -v l="$label" -v e="$events" -v t="$((after - before))" -v hz="$ticks_per_s" -v s="$seconds" \
        'BEGIN { printf "%-44s %8d events/s  server %5.1f us an event  (%.2f cores)\n",
                 l, e / s, t / hz * 1e6 / e, t / hz / s }'
}

prepare() {
    local db="$1"
    as_postgres "$pg_bin/createdb" -h "$work" -U postgres "$db"
    MERPATI_DATABASE_URL="postgres://postgres@$socket/$db" MERPATI_DATA_DIR="$work/data" \
        MERPATI_LOG=warn "$bin" migrate >/dev/null
}

# Each case: a database as migrated, then the indexes it drops (a table's key as
# table.constraint).
listings="events_account_type events_account_device deliveries_endpoint"
lookups="events_account events_id deliveries_event deliveries_owed event_rids_event"
case_of() {
    local db="$1" label="$2" index
    shift 2
    prepare "$db"
    for index in "$@"; do
        case "$index" in
            *.*) sql "$db" "ALTER TABLE ${index%.*} DROP CONSTRAINT ${index#*.}" ;;
            *) sql "$db" "DROP INDEX $index" ;;
        esac
    done
    measure "$db" "$label"
}
case_of as_migrated "as migrated"
# shellcheck disable=SC2086 # the lists split into index names
case_of no_listing "without the listings' 3 indexes" $listings
# shellcheck disable=SC2086
case_of keys_only "primary keys and the due index only" $listings $lookups
# shellcheck disable=SC2086
case_of no_rids "no index but the log's primary keys" $listings $lookups deliveries_due \
    event_rids.event_rids_pkey
