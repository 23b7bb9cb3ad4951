#!/usr/bin/env bash
# Install, start the services the tests need (a real Slurm cluster: munge, MariaDB, slurmdbd, slurmctld,
# four slurmd; the Prometheus server and promtool), then run the whole test suite.
#
# Three pytest processes run at the same time: the tests marked `slurm`, split by file over two local
# Slurm clusters (the shared one and a second instance, ORCH_SLURM_INSTANCE=ci2; each runs its tests one
# at a time, and they mostly wait on daemons, timeouts and Slurm's requeue hold), and everything else on
# two xdist workers. pytest-xdist alone cannot keep Slurm tests on one worker (its loadgroup did not group
# them), so the split is by process. Extra arguments go to every part (and then the Slurm tests stay on
# the shared cluster); the 25 slowest tests of each part are printed for whoever trims the suite next.
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
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=40)
slurm_log="$(mktemp /tmp/orch-slurm-tests.XXXXXX.log)"
set +e
namespaced() { grep -q '"netns": true' "${1:-/etc/slurm}/orch-local-cluster.json" 2>/dev/null; }
slurm_part() {  # WHOLE=1: the whole first share (the netns fallback applies), else what the arguments chose
  local rc=0 ns=0
  if namespaced; then
    ORCH_REQUIRE_NETNS_SLURM=1 "${PYTEST[@]}" -m slurm "$@" || rc=$?
    return "$rc"
  fi
  "${PYTEST[@]}" -m slurm "$@" || rc=$?
  [ "${WHOLE:-0}" = 1 ] || return "$rc"  # a chosen file or option: that part only
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
# The second cluster's share, about half of the Slurm part's time (durations of the last full run).
SECOND=(tests/test_slurm_backend.py tests/test_slurm_preempt.py tests/test_slurm_inalloc.py)
second_part() {  # on instance ci2; 99: it could not start (the caller runs these on the shared cluster)
  ORCH_SLURM_INSTANCE=ci2 bash slurm/local-cluster.sh start || return 99
  ORCH_SLURM_INSTANCE=ci2 SLURM_CONF=/etc/slurm-ci2/slurm.conf "${PYTEST[@]}" -m slurm "${SECOND[@]}"
}
slurm_log2="$(mktemp /tmp/orch-slurm-tests.XXXXXX.log)"
slurm2_pid=""
if (($# == 0)); then
  WHOLE=1 slurm_part "${SECOND[@]/#/--ignore=}" >"$slurm_log" 2>&1 &
  slurm_pid=$!
  second_part >"$slurm_log2" 2>&1 &
  slurm2_pid=$!
else
  slurm_part "$@" >"$slurm_log" 2>&1 &
  slurm_pid=$!
fi
"${PYTEST[@]}" -m "not slurm" -n 2 --dist worksteal "$@"
rest=$?
wait "$slurm_pid"
slurm=$?
slurm2=0
if [ -n "$slurm2_pid" ]; then
  wait "$slurm2_pid"
  slurm2=$?
  if [ "$slurm2" -eq 99 ]; then
    echo "=== the second Slurm cluster did not start: ${SECOND[*]} on the shared one ===" >>"$slurm_log2"
    "${PYTEST[@]}" -m slurm "${SECOND[@]}" >>"$slurm_log2" 2>&1
    slurm2=$?
  fi
fi
set -e
echo "=== tests on the shared Slurm cluster (pytest -m slurm) ==="
cat "$slurm_log"
if [ -n "$slurm2_pid" ]; then
  echo "=== tests on the second Slurm cluster (ORCH_SLURM_INSTANCE=ci2: ${SECOND[*]}) ==="
  cat "$slurm_log2"
fi
echo "=== exit codes: not-slurm $rest, slurm $slurm, second slurm cluster $slurm2 ==="
# 5 = nothing collected: a part that collects nothing means the suite is broken, not green.
for code in "$rest" "$slurm" "$slurm2"; do
  [ "$code" -eq 5 ] && { echo "a part collected no tests"; exit 1; }
  [ "$code" -ne 0 ] && exit "$code"
done
exit 0
