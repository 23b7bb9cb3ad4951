#!/usr/bin/env bash
# Install, then run the demo job on the local cluster: 2 nodes x 2 ranks + a spare, with one of
# every fault injected; it prints a live display and a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rm -rf runs/demo-local
exec .venv/bin/orchestrator submit examples/local.yaml --run-dir runs/demo-local "$@"
