#!/usr/bin/env bash
# Installs everything the project needs on a Debian machine, as root: system packages, a virtual
# environment in .venv with the project and its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v git >/dev/null || need_apt+=(git)
command -v ip >/dev/null && command -v tc >/dev/null || need_apt+=(iproute2)  # namespaced local nodes
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" python3-dev >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
# NVIDIA's ft_launcher (the goodput benchmark's strongest peer, extra 'bench') without its pynvml
# dependency: that deprecated wrapper redirects nvidia-ml-py's pynvml and warns in every process that
# imports torch; ft_launcher only needs `import pynvml`, which nvidia-ml-py provides.
.venv/bin/pip install -q --no-deps 'nvidia-resiliency-ext==0.4.1' defusedxml 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import torch, orchestrator; print("installed: torch", torch.__version__)'
