#!/usr/bin/env bash
# Installs the official Standard Webhooks verifiers (PyPI and npm), Prometheus' official
# Python client (whose OpenMetrics parser reads /metrics in a test) and an OpenAPI validator
# (which checks /openapi.json in a test), under target/compat, where the tests find them.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/compat
if [ ! -d "$dir/python/standardwebhooks" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir/python" 'standardwebhooks>=1.1,<2'
fi
if [ ! -d "$dir/python/prometheus_client" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir/python" 'prometheus_client>=0.20,<1'
fi
if [ ! -d "$dir/python/openapi_spec_validator" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir/python" 'openapi-spec-validator>=0.7,<0.8'
fi
if [ ! -d "$dir/node/node_modules/standardwebhooks" ]; then
  mkdir -p "$dir/node"
  npm install --silent --no-audit --no-fund --prefix "$dir/node" 'standardwebhooks@^1.1' >/dev/null
fi
