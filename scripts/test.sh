#!/usr/bin/env bash
# Install, start the services the tests need (a real Slurm cluster: munge, MariaDB, slurmdbd, slurmctld,
# four slurmd; the Prometheus server and promtool), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install-prometheus.sh
bash slurm/local-cluster.sh start
export OMP_NUM_THREADS=1 CI="${CI:-true}"
# Two workers: the Slurm tests spend most of their time waiting on the controller (scheduling, a dead
# node's timeout) and run one after another on one worker while the other runs the rest; each other
# file stays on one worker (tests/conftest.py). ORCH_TEST_WORKERS=0 runs everything in this process.
workers="${ORCH_TEST_WORKERS:-2}"
par=()
[ "$workers" -gt 0 ] && par=(-n "$workers" --dist loadgroup)
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "${par[@]}" "$@"
code=$?
set -e
[ "$code" -eq 5 ] && { echo "no tests collected"; exit 1; }
exit "$code"
