#!/usr/bin/env bash
# Runs the fuzz targets (all, or those named) for FUZZ_SECONDS each (600 by default),
# FUZZ_PARALLEL at a time (1 by default), with cargo-fuzz on the nightly toolchain. Each grows
# its committed corpus in fuzz/corpus/<target>/, which is then minimized. A crash stops that
# target with its input under fuzz/artifacts/<target>/: make it a regression test (and a
# corpus entry) before fixing it. Prints each target's runs and corpus at the end.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-600}
parallel=${FUZZ_PARALLEL:-1}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
cargo +nightly fuzz build >/dev/null
mkdir -p logs
run() {
  local t=$1
  mkdir -p "corpus/$t"
  if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 \
      -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    cargo +nightly fuzz cmin "$t" "corpus/$t" >"logs/$t.cmin.log" 2>&1 || true
    echo "$t: $(grep -oE 'stat::number_of_executed_units: [0-9]+' "logs/$t.log" | grep -oE '[0-9]+') runs in ${seconds}s, no crash; corpus $(ls "corpus/$t" | wc -l) inputs"
  else
    echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
status=0
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || status=1; done
  run "$t" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
exit $status
