#!/usr/bin/env bash
# The GPU path on a machine with one NVIDIA GPU (H100/H200), in at most 8 minutes, as one table:
#   torch sees CUDA · real NVML probe · 1-rank NCCL training through a NaN, a rank crash and a checkpoint
#   restore · the same crash restored from the memory tier
#   · 2 ranks on the same GPU over gloo with CUDA tensors · async checkpoint staging from GPU
#   memory at 1 and 10 GB (pinned vs pageable) · step time with and without the supervisor.
#   Then the device, GPU-probe, agent-fork and GPU test files under pytest.
# Every stage has its own timeout (their sum is 9m05s; H200 run: ~4 min); a failed stage is a FAIL row, the rest still run.
# On a machine without an NVIDIA GPU it prints "no GPU" and exits 0. Exit 1 if any stage failed.
# A borrowed GPU machine that cannot reach a package index but has a CUDA build of torch:
# PYTHON=python3 and the project's other needs as wheels in .whl/ (installed into $WORK/site); the
# table says which torch ran. Logs and the table go to $OUT too when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "no GPU: nvidia-smi finds no NVIDIA GPU; nothing to check"
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=4
SHM=${TMPDIR:-/tmp}  # where the benchmark's checkpoints go: RAM (/dev/shm) when it holds a 10 GB one
if [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt $((12 * 1024 * 1024)) ]; then
  SHM=/dev/shm
fi
export WORK RESULTS PY SHM ORCH_STR="$PY -m orchestrator.cli"

# stage NAME TIMEOUT_S CMD...: run CMD with a timeout, log to $WORK/NAME.log, record verdict and seconds.
# The last line CMD prints to $WORK/NAME.detail (if any) goes into the table.
stage() {
  local name=$1 limit=$2
  shift 2
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0  # ONLY="a b": just those stages
  local t0=$SECONDS verdict=ok
  echo "== $name (timeout ${limit}s)"
  if ! timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >"$WORK/$name.log" 2>&1; then
    verdict=FAIL
    tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'
  fi
  local detail=""
  [ -s "$WORK/$name.detail" ] && detail=$(tail -n 1 "$WORK/$name.detail")
  [ "$verdict" = FAIL ] && [ -z "$detail" ] && detail="see $WORK/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$((SECONDS - t0))" "$detail" >>"$RESULTS"
  [ -z "${OUT:-}" ] || { mkdir -p "$OUT" && cp "$RESULTS" "$OUT/results.tsv"; }  # rows so far, if cut short
}

install() {
  if [ -d .whl ] && [ "$PY" != .venv/bin/python ]; then  # no index: the wheels that travelled
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
  fi
  if "$PY" -c 'import torch, orchestrator, pydantic, submitit' 2>/dev/null; then
    echo "already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
  else
    bash scripts/install.sh
  fi
}

torch_cuda() {
  "$PY" - "$WORK/torch_cuda.detail" <<'EOF'
import sys, torch
ok = torch.cuda.is_available()
detail = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
          f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}" if ok else
          f"torch {torch.__version__} sees no GPU (CUDA build: {torch.version.cuda}); install a CUDA wheel")
open(sys.argv[1], "w").write(detail + "\n")
sys.exit(0 if ok else 1)
EOF
}

write_config() {  # a small 1-node config; chaos and layout come with --set
  cat >"$WORK/run.yaml" <<'EOF'
name: gpucheck
cluster: {backend: local, nodes: 1, ranks_per_node: 1, spare_nodes: 0, device: cuda}
model: {d_model: 256, n_layers: 4, n_heads: 8, seq_len: 128}
data: {max_bytes: 1000000}
train: {steps: 40, global_batch: 16, lr: 0.0006, precision: bf16, schedule: {warmup_steps: 5}}
checkpoint: {every_steps: 10, keep: 3, async_save: true}
health: {heartbeat_interval_s: 0.25, hang_timeout_s: 20, probes: [node, gpu]}
policy: {restart_budget: 3, backoff_initial_s: 0.1, backoff_max_s: 1}
metrics: {enabled: false}
EOF
}

nvml_probe() {
  sed 's/probes: \[node, gpu\]/probes: [gpu]/' "$WORK/run.yaml" >"$WORK/probe.yaml"
  $ORCH_STR probe "$WORK/probe.yaml" --json >"$WORK/probe.json" || true
  "$PY" - "$WORK/probe.json" "$WORK/nvml_probe.detail" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
ev = r["evidence"]
d = (ev.get("devices") or [{}])[0]
line = (f"verdict {r['verdict']}: {d.get('name')}, {d.get('temperature_c')} C, {d.get('power_w')}/"
        f"{d.get('power_limit_w')} W, SM {d.get('sm_clock_mhz')}/{d.get('sm_clock_max_mhz')} MHz, "
        f"ECC unc. {d.get('ecc_uncorrected_volatile')}, xid {ev.get('xid_events')}; problems {ev.get('problems')}")
open(sys.argv[2], "w").write(line + "\n")
real = isinstance(d.get("temperature_c"), int) and isinstance(d.get("sm_clock_max_mhz"), int) and d.get("name")
sys.exit(0 if r["verdict"] == "ok" and real else 1)
EOF
}

# check_run RUN_DIR NAME EXPECTED_LOG_LINE KIND:ACTION...: COMPLETED, the faults seen and acted on, the device line
check_run() {
  "$PY" - "$@" "$WORK" <<'EOF'
import json, pathlib, sys
run, name, want_line, *kinds, work = sys.argv[1:]
run = pathlib.Path(run)
status = json.loads((run / "status.json").read_text())
journal = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines() if l.strip()]
seen = {f"{f['kind']}:{f['action']}" for f in status["faults"]}
kinds_met = all(any(k in seen for k in alt.split("|")) for alt in kinds)  # "a|b": either will do
lines = [l for p in sorted(run.glob("logs/attempt-*/*-rank*.log")) for l in p.read_text(errors="replace").splitlines()
         if ": device " in l]
loaded = [e["step"] for e in journal if e["event"] == "checkpoint_loaded"]
ckpt_ok = not any(k.startswith("checkpoint_error") for k in seen)  # every async save must land
ok = status["state"] == "COMPLETED" and kinds_met and ckpt_ok and lines and all(want_line in l for l in lines)
detail = (f"{status['state']} step {status.get('step')}, faults {sorted(seen)}, restored from {loaded or '-'}, "
          f"{len(lines)} rank start(s) on '{want_line}'" + ("" if ok else f"; reason: {status.get('reason')}"))
open(f"{work}/{name}.detail", "w").write(detail + "\n")
if not ok:  # why the ranks failed, from their own logs
    for log in sorted(run.glob("logs/attempt-*/*"))[:6]:
        print(f"--- {log}", *log.read_text(errors="replace").splitlines()[-25:], sep="\n")
sys.exit(0 if ok else 1)
EOF
}

nccl_run() {
  $ORCH_STR submit "$WORK/run.yaml" --run-dir "$WORK/nccl" --quiet \
    --set 'chaos=[{fault: nan, step: 5, rank: 0}, {fault: rank_crash, step: 25, rank: 0}]' || true
  check_run "$WORK/nccl" nccl_1rank "device cuda:0, backend nccl" "nan:skip_step|transient_fault:apply_clean" rank_crash:relaunch
}

memtier_run() {  # the memory tier on CUDA: a crash resumes from the node's RAM copy, not storage
  $ORCH_STR submit "$WORK/run.yaml" --run-dir "$WORK/memtier" --quiet --set checkpoint.memory.enabled=true \
    --set 'chaos=[{fault: rank_crash, step: 25, rank: 0}]' || true
  check_run "$WORK/memtier" memtier_1rank "device cuda:0, backend nccl" rank_crash:relaunch || return 1
  "$PY" - "$WORK/memtier/journal.jsonl" "$WORK/memtier_1rank.detail" <<'PYEOF'
import json, sys
loads = [e for e in map(json.loads, filter(str.strip, open(sys.argv[1]))) if e["event"] == "checkpoint_loaded"]
ok = bool(loads) and all(e.get("tier") == "memory" and e["step"] >= 24 for e in loads)
open(sys.argv[2], "a").write(f"loaded {[(e['step'], e.get('tier'), round(e['load_s'], 3)) for e in loads]}\n")
sys.exit(0 if ok else 1)
PYEOF
}

gloo_shared() {
  ORCH_DIST_BACKEND=gloo CUDA_VISIBLE_DEVICES=0 $ORCH_STR submit "$WORK/run.yaml" \
    --run-dir "$WORK/gloo" --quiet --set cluster.nodes=2 --set train.steps=30 \
    --set 'chaos=[{fault: nan, step: 7, rank: 1}]' || true
  check_run "$WORK/gloo" gloo_2ranks_1gpu "device cuda:0, backend gloo" "nan:skip_step|transient_fault:apply_clean"
}

ckpt_bench() {
  "$PY" benchmarks/bench_checkpoint.py --gpu-only --gpu-sizes-gb 1,10 --gpu-repeats 2 --dir "$SHM" \
    --json "$WORK/ckpt.json"
  "$PY" - "$WORK/ckpt.json" "$WORK/ckpt_staging.detail" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["gpu_rows"]
last = {(r["size_gb"], r["host_memory"]): r for r in rows}  # the steady state: last save of each kind
parts = [f"{gb:g} GB {mem}: staged {r['until_staged_s']:.2f}s ({r['copy_gb_s']} GB/s), call {r['call_s']:.3f}s"
         for (gb, mem), r in sorted(last.items())]
open(sys.argv[2], "w").write("; ".join(parts) + "\n")
sys.exit(0 if rows else 1)
EOF
}

step_time() {
  "$PY" benchmarks/bench_gpu_step.py --device cuda --steps 100 --repeats 1 --json "$WORK/step.json"
  "$PY" - "$WORK/step.json" "$WORK/step_time.detail" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["median"]
open(sys.argv[2], "w").write(f"median step: supervisor {m['supervisor'] * 1e3:.2f} ms, bare trainer "
                             f"{m['bare'] * 1e3:.2f} ms ({100 * (m['supervisor'] / m['bare'] - 1):+.1f}%)\n")
EOF
}

gpu_tests() {  # to a file, not a pipe: a process a test leaves behind must not hold the stage open
  "$PY" -m pytest -q -p no:cacheprovider -rs -o addopts= tests/test_device.py tests/test_probes_gpu.py \
    tests/test_agent_cuda_fork.py tests/test_gpu.py >"$WORK/gpu_tests.out" 2>&1
  local rc=$?
  cat "$WORK/gpu_tests.out"
  tail -n 1 "$WORK/gpu_tests.out" >"$WORK/gpu_tests.detail"
  return "$rc"
}

export -f install gpu_tests torch_cuda nvml_probe check_run nccl_run memtier_run gloo_shared ckpt_bench step_time
write_config
[ -d .whl ] && [ "$PY" != .venv/bin/python ] && export PYTHONPATH="$PYTHONPATH:$WORK/site"
stage install 30 install
stage torch_cuda 30 torch_cuda
stage nvml_probe 30 nvml_probe
stage nccl_1rank 75 nccl_run
stage memtier_1rank 60 memtier_run
stage gloo_2ranks_1gpu 50 gloo_shared
stage gpu_tests 120 gpu_tests
stage ckpt_staging 90 ckpt_bench
stage step_time 60 step_time

echo
echo "GPU check ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)); logs in $WORK"
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
"$PY" - "$RESULTS" <<'EOF' | tee "${OUT:-$WORK}/table.md" || column -t -s $'\t' "$RESULTS"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| stage | verdict | s | result |\n|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
EOF
[ -n "${OUT:-}" ] && mkdir -p "$OUT" && for f in "$WORK"/*.log; do tail -c 200000 "$f" >"$OUT/$(basename "$f")"; done
! grep -q $'\tFAIL\t' "$RESULTS"
