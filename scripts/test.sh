#!/usr/bin/env bash
# The whole test suite: installs the official verifiers the compatibility test runs, then
# every unit and integration test of the workspace (the storage contract on SQLite and on a
# private PostgreSQL server the tests start), then the server's integration tests again with
# PostgreSQL as the backend. Extra arguments go to `cargo test`.
#
# Each run has 30 minutes (a few, normally): a test that hangs fails the suite with what
# it printed, rather than holding it until whoever runs it gives up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/compat-setup.sh
timeout 30m cargo test --workspace --locked "$@"
MERPATI_TEST_BACKEND=postgres timeout 30m cargo test --locked -p merpati --test it "$@"
