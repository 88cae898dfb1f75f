#!/usr/bin/env bash
# The whole test suite: installs the official verifiers the compatibility test runs, then
# every unit and integration test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/compat-setup.sh
cargo test --workspace --locked "$@"
