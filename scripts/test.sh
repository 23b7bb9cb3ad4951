#!/usr/bin/env bash
# Install, start the services the tests need (a real Slurm cluster: munge, MariaDB, slurmdbd, slurmctld,
# four slurmd; the Prometheus server and promtool), then run the whole test suite.
#
# Two pytest processes run at the same time: the tests on the one shared Slurm cluster (marker `slurm`,
# one at a time, in their own process: they mostly wait on daemons and timeouts) and everything else on
# two xdist workers. pytest-xdist alone cannot keep the Slurm tests on one worker here (its loadgroup did
# not group them), so the split is by process. Extra arguments go to both; the 25 slowest tests of each
# part are printed for whoever trims the suite next.
# The shared cluster's nodes are hosts (each slurmd in its own network namespace) wherever the machine
# allows it; then the Slurm part requires it (ORCH_REQUIRE_NETNS_SLURM=1: a namespace test that would skip
# fails). Where it does not (no root, no namespaces), tests/test_slurm_netns.py runs again on a second
# instance (`ORCH_SLURM_INSTANCE=ns`) after the Slurm part, where a plain cluster is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install-prometheus.sh
bash slurm/local-cluster.sh start
export OMP_NUM_THREADS=1 CI="${CI:-true}"
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25)
slurm_log="$(mktemp /tmp/orch-slurm-tests.XXXXXX.log)"
set +e
namespaced() { grep -q '"netns": true' "${1:-/etc/slurm}/orch-local-cluster.json" 2>/dev/null; }
slurm_part() {
  local rc=0 ns=0
  if namespaced; then
    ORCH_REQUIRE_NETNS_SLURM=1 "${PYTEST[@]}" -m slurm "$@" || rc=$?
    return "$rc"
  fi
  "${PYTEST[@]}" -m slurm "$@" || rc=$?
  (($# == 0)) || return "$rc"  # a chosen file or option: that part only
  echo "=== the shared cluster is plain: tests/test_slurm_netns.py on a namespaced instance (ORCH_SLURM_INSTANCE=ns) ==="
  if ORCH_SLURM_INSTANCE=ns bash slurm/local-cluster.sh start && namespaced /etc/slurm-ns; then
    ORCH_SLURM_INSTANCE=ns SLURM_CONF=/etc/slurm-ns/slurm.conf ORCH_REQUIRE_NETNS_SLURM=1 \
      "${PYTEST[@]}" tests/test_slurm_netns.py || ns=$?
  else
    ns=1
  fi
  ((rc != 0)) && return "$rc"
  return "$ns"
}
slurm_part "$@" >"$slurm_log" 2>&1 &
slurm_pid=$!
"${PYTEST[@]}" -m "not slurm" -n 2 --dist worksteal "$@"
rest=$?
wait "$slurm_pid"
slurm=$?
set -e
echo "=== tests on the Slurm cluster (pytest -m slurm) ==="
cat "$slurm_log"
echo "=== exit codes: not-slurm $rest, slurm $slurm ==="
# 5 = nothing collected: a part that collects nothing means the suite is broken, not green.
for code in "$rest" "$slurm"; do
  [ "$code" -eq 5 ] && { echo "a part collected no tests"; exit 1; }
  [ "$code" -ne 0 ] && exit "$code"
done
exit 0
