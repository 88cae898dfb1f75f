#!/usr/bin/env bash
# Saves every dashboard page, light and dark, to docs/screenshots, by running the browser
# test with MERPATI_SCREENSHOTS set (needs Debian's chromium and chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
MERPATI_SCREENSHOTS="$PWD/docs/screenshots" \
  cargo test -p merpati --test it --locked browser:: -- --exact browser::the_dashboard_in_a_real_browser
ls docs/screenshots
