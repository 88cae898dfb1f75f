#!/usr/bin/env bash
# Every delivery target of BENCHMARKS.md, one 60 s run each (about 15 minutes in all).
# Usage: bench/delivery-targets.sh [duration]   (e.g. 20s for a quicker look)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60s}"
cargo build --release --quiet
bench() {
    echo "\$ merpati bench delivery --duration $duration $*"
    ./target/release/merpati bench delivery --duration "$duration" "$@"
    echo
}
bench                                                         # 1 item a request, full speed, 64 devices
bench --devices 128 --concurrency 128                         # … 128 devices, a request under way each
bench --items-per-request 100 --concurrency 16 --idle 30s    # 100 items a request, then idle
bench --items-per-request 100 --concurrency 16 --rate 20000  # … at a steady 20,000/s
bench --rate 2000                                             # steady rate: latency
bench --rate 150 --endpoints 100 --concurrency 16             # fan-out to 100 endpoints: 15,000/s offered
bench --rate 250 --endpoints 100 --concurrency 16             # … 25,000/s offered: the most it delivers
bench --slow-endpoint 10s                                     # isolation, full speed
bench --rate 4000                                             # isolation at a steady rate: alone
bench --rate 4000 --slow-endpoint 10s                         # … and beside a 10 s endpoint
