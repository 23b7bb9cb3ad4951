"""One rank of :func:`health.probes.collective.run_collective_probe`, as its own process so that the
parent can kill it at the deadline whatever state gloo/NCCL is in. Configured through the environment
(the torch.distributed ``env://`` convention plus ``ORCH_PROBE_*``); records its phase in a file so the
parent can tell which rank got least far when nothing finishes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _set_gpu(rank: int) -> "torch.device":
    """NCCL: every rank on its own GPU (all probe ranks run on this host, so the rank is the index);
    the caller starts at most as many ranks as there are GPUs."""
    import torch
    dev = torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
    torch.cuda.set_device(dev)
    return dev


def main() -> int:
    workdir = Path(os.environ["ORCH_PROBE_DIR"])
    rank = int(os.environ["RANK"])
    inject = os.environ.get("ORCH_PROBE_INJECT", "")

    def note(phase: str) -> None:
        tmp = workdir / f"rank{rank}.phase.tmp"
        tmp.write_text(phase)
        tmp.replace(workdir / f"rank{rank}.phase")  # atomic: the parent never reads half a phase

    note("started")
    if inject == "die":
        print("injected: rank dies before joining", file=sys.stderr)
        return 3
    import torch.distributed as dist

    from health.probes.collective import collective_check

    timeout_s = float(os.environ["ORCH_PROBE_TIMEOUT"])
    backend = os.environ.get("ORCH_PROBE_BACKEND", "gloo")
    kwargs = {"device_id": _set_gpu(rank)} if backend == "nccl" else {}
    init_s = float(os.environ.get("ORCH_PROBE_INIT_TIMEOUT", timeout_s))  # peers may still be importing
    store = os.environ.get("ORCH_PROBE_STORE")  # placed by node agents: meet in a file on the shared FS
    if store:
        kwargs.update(init_method=f"file://{store}", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=init_s), **kwargs)
    note("joined")
    if inject == "hang":
        while True:  # alive but never enters a collective: the parent must kill us
            time.sleep(1)
    try:
        rep = collective_check(os.environ["ORCH_PROBE_NODE"], timeout_s,
                               inject_delay_s=float(os.environ.get("ORCH_PROBE_DELAY", "0")),
                               progress=note)
        if rank == 0:
            (workdir / "result.json").write_text(json.dumps(asdict(rep)))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
