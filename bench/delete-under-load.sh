#!/usr/bin/env bash
# Deleting an endpoint with a long history (or, with DELETE=account, its whole account) while
# another account's devices send 2,000 events/s: how long the DELETE takes, what the other
# account's latency does meanwhile, and how long the deleted rows take to go.
# Usage: [DELETE=endpoint|account] bench/delete-under-load.sh [fill duration, default 20s] [binary, default target/release/merpati]
set -euo pipefail
cd "$(dirname "$0")/.."
fill="${1:-20s}"
what="${DELETE:-endpoint}"
case "$what" in endpoint | account) ;; *) echo "DELETE is endpoint or account" >&2; exit 2 ;; esac
bin="${2:-./target/release/merpati}"
[ "$bin" = ./target/release/merpati ] && cargo build --release --quiet
port="${PORT:-18090}"
url="http://127.0.0.1:$port"
data="$(mktemp -d)"
export MERPATI_ADMIN_TOKEN="bench-admin-token-$RANDOM$RANDOM"
MERPATI_DATA_DIR="$data" MERPATI_DELIVERY_ALLOWED_NETWORKS=127.0.0.0/8 \
    "$bin" serve --listen "127.0.0.1:$port" >"$data/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 50); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

echo "# one endpoint's history: $fill at full speed, one item a request"
"$bin" bench delivery --url "$url" --duration "$fill" --baseline-duration 1s >"$data/fill.txt" 2>&1
grep -E "^  (accepted|delivered) " "$data/fill.txt"
account=$(grep -o "sim_[0-9]*" "$data/fill.txt" | head -1)
admin="Authorization: Bearer $MERPATI_ADMIN_TOKEN"
key=$(curl -sf -XPOST "$url/v1/accounts/$account/api-keys" -H "$admin" | sed 's/.*"key":"\([^"]*\)".*/\1/')
endpoint=$(curl -sf "$url/v1/endpoints" -H "Authorization: Bearer $key" | grep -o '"id":"ep_[^"]*"' | head -1 | cut -d'"' -f4)

echo "# another account at 2,000 events/s for 20 s; the $what deleted 10 s in"
"$bin" bench delivery --url "$url" --rate 2000 --duration 20s --baseline-duration 1s >"$data/run.txt" 2>&1 &
run=$!
sleep 10
started=$(date +%s%N)
if [ "$what" = account ]; then
    path="/v1/accounts/$account" auth="$admin"
else
    path="/v1/endpoints/$endpoint" auth="Authorization: Bearer $key"
fi
status=$(curl -s -o /dev/null -w "%{http_code}" -XDELETE "$url$path" -H "$auth")
echo "DELETE $path: $status in $(( ($(date +%s%N) - started) / 1000000 )) ms"
wait $run
grep -E "^  (delivered|ingest-to-receipt|answer latency) " "$data/run.txt"
for _ in $(seq 600); do grep -q "purged deleted ${what}s" "$data/serve.log" && break; sleep 0.1; done
if purged=$(grep "purged deleted ${what}s" "$data/serve.log" | tail -1); then
    at=$(date -d "$(echo "$purged" | awk '{print $1}')" +%s%N)
    echo "purged $(echo "$purged" | grep -o 'rows=[0-9]*') $(( (at - started) / 1000000 )) ms after the DELETE"
else
    echo "no purge logged within a minute of the run"
fi
