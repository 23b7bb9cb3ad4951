"""The one place that knows which device a rank computes on and where its collectives' tensors live.

Why one place: NCCL only takes CUDA tensors on the rank's own device, gloo takes CPU tensors everywhere,
and two ranks in one NCCL communicator may not share a GPU. Code that builds a tensor for a small
collective (a flag, a count, a loss) asks :func:`collective_device` instead of assuming the CPU.

Device choice per rank is ``cuda:<index of the rank among the ranks on its host>``. The local backend
restarts ``LOCAL_RANK`` at 0 on every simulated node, although all of them share this host's GPUs, so
its launcher sets ``ORCH_HOST_LOCAL_RANK`` (node slot on the host × ranks per node + local rank) and
``ORCH_HOST_LOCAL_WORLD``; under Slurm ``SLURM_LOCALID`` is already host-local.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

HOST_RANK_ENV = "ORCH_HOST_LOCAL_RANK"
HOST_WORLD_ENV = "ORCH_HOST_LOCAL_WORLD"
# "gloo" keeps CUDA tensors but talks gloo: ranks may then share a GPU (NCCL refuses duplicate GPUs in
# one communicator). For tests and for machines with fewer GPUs than ranks; "nccl" is the default on CUDA.
BACKEND_ENV = "ORCH_DIST_BACKEND"

Requested = Literal["auto", "cpu", "cuda"]


class DeviceUnavailable(RuntimeError):
    """``cluster.device: cuda`` asked for a GPU this node cannot give; the message names node and gap.

    The text "cluster.device is cuda but" is what the exit classifier matches (a config error: abort,
    a relaunch would fail the same way)."""


@dataclass(frozen=True)
class Placement:
    """Where one rank computes and how its process group talks."""

    device: torch.device
    backend: str  # "nccl" | "gloo"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass(frozen=True)
class CudaInventory:
    """What this process sees of CUDA: the GPU count and, when it is 0, why."""

    count: int
    missing: str = ""


def host_local_rank(env: Mapping[str, str]) -> int:
    """This rank's index among the ranks on its host (not on its simulated node)."""
    for name in (HOST_RANK_ENV, "SLURM_LOCALID", "LOCAL_RANK"):
        if env.get(name, "") != "":
            return int(env[name])
    return 0


def host_local_world(env: Mapping[str, str], ranks_per_node: int) -> int:
    """How many ranks share this host's GPUs (the local backend: all of them; Slurm: one node's)."""
    value = env.get(HOST_WORLD_ENV, "")
    return int(value) if value else ranks_per_node


def cuda_inventory() -> CudaInventory:
    """Ask torch (not NVML: a driver without a CUDA-enabled torch is still no usable GPU)."""
    if torch.version.cuda is None:
        return CudaInventory(0, f"this torch build ({torch.__version__}) has no CUDA support")
    count = torch.cuda.device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = "no NVIDIA driver or no GPU visible to torch"
        return CudaInventory(0, why + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
    return CudaInventory(count)


def choose(requested: Requested, index: int, host_world: int, inv: CudaInventory, node: str,
           backend_override: str | None = None) -> Placement:
    """Pure: the placement of the rank with host-local ``index`` among ``host_world`` ranks.

    ``auto`` takes CUDA only when every rank on the host gets its own GPU (or gloo lets them share),
    so all ranks on a host decide alike; ``cuda`` without a usable GPU raises :class:`DeviceUnavailable`.
    """
    if requested == "cpu" or (requested == "auto" and not _auto_fits(index, host_world, inv, backend_override)):
        return Placement(torch.device("cpu"), "gloo")
    if inv.count == 0:
        raise DeviceUnavailable(f"{node}: cluster.device is cuda but no usable GPU: {inv.missing}")
    backend = backend_override or "nccl"
    if backend == "nccl" and index >= inv.count:
        raise DeviceUnavailable(
            f"{node}: cluster.device is cuda but this rank needs GPU cuda:{index} (host-local rank {index} "
            f"of {host_world}) and only {inv.count} GPU(s) are visible; NCCL needs one GPU per rank: "
            f"lower cluster.ranks_per_node or set {BACKEND_ENV}=gloo to share GPUs")
    return Placement(torch.device("cuda", index % inv.count), backend)


def _auto_fits(index: int, host_world: int, inv: CudaInventory, backend_override: str | None) -> bool:
    if inv.count == 0:
        return False
    return backend_override == "gloo" or max(host_world, index + 1) <= inv.count


def place_rank(requested: Requested, node: str, ranks_per_node: int,
               env: Mapping[str, str] | None = None) -> Placement:
    """The placement of this process, from its environment and what CUDA it sees."""
    env = os.environ if env is None else env
    override = env.get(BACKEND_ENV) or None
    if override not in (None, "gloo", "nccl"):
        raise ValueError(f"{BACKEND_ENV}={override!r}; valid values are gloo, nccl")
    inv = cuda_inventory() if requested != "cpu" else CudaInventory(0, "not asked for")
    return choose(requested, host_local_rank(env), host_local_world(env, ranks_per_node), inv, node, override)


def host_gap(requested: Requested, node: str, host_world: int, env: Mapping[str, str] | None = None) -> str | None:
    """What this host lacks for ``host_world`` ranks (the message the highest-indexed rank would fail
    with), or None. ``orchestrator probe`` reports it, so the probe and the rank say the same thing."""
    env = os.environ if env is None else env
    try:
        choose(requested, host_world - 1, host_world, cuda_inventory(), node, env.get(BACKEND_ENV) or None)
    except DeviceUnavailable as exc:
        return str(exc)
    return None


def activate(p: Placement, node: str) -> None:
    """Make ``p.device`` current and prove it works (a tiny allocation), so a broken GPU fails here with
    a clear message and not at the first collective."""
    if not p.cuda:
        return
    try:
        torch.cuda.set_device(p.device)
        torch.zeros(1, device=p.device).add_(1).item()
    except RuntimeError as exc:
        # not "cluster.device is cuda but": a GPU that fails here is the node's fault (exclude it),
        # the CUDA error text in the message lets the exit classifier say so
        raise DeviceUnavailable(f"{node}: {p.device} is not usable: {exc}") from exc


def init_process_group(p: Placement, rank: int, world: int, timeout: Any) -> None:
    """Initialise the default group on ``p``'s backend; NCCL is bound to the device (``device_id``:
    the communicator forms now, so a bad GPU or fabric fails at start-up, and barriers know the GPU)."""
    kwargs: dict[str, Any] = {"device_id": p.device} if p.backend == "nccl" else {}
    dist.init_process_group(p.backend, rank=rank, world_size=world, timeout=timeout, **kwargs)


def collective_device(group: Any = None) -> torch.device:
    """Where a tensor for a collective on ``group`` (default: the world) must live.

    NCCL: the current CUDA device. gloo: the CPU, even when the model is on a GPU: gloo copies CUDA
    tensors through the host anyway and supports them for only some collectives.
    """
    if dist.is_initialized() and "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def flags_tensor(values: list[float], dtype: torch.dtype = torch.float64, group: Any = None) -> torch.Tensor:
    """A small tensor of flags or counts on ``group``'s device, ready for an all-reduce."""
    return torch.tensor(values, dtype=dtype, device=collective_device(group))


class SpanTimer:
    """Times a span of local work: CUDA events on a GPU (kernels run asynchronously, so the host clock
    would measure the launches, not the compute), ``perf_counter`` on the CPU. The end event is
    synchronised only when the time is read, so timing never stalls the step by itself."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._t0 = self._t1 = 0.0
        self._events: tuple[Any, Any] | None = None
        self._pending = False

    def start(self) -> None:
        if self.cuda:
            if self._events is None:
                self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda and self._events is not None:
            self._events[1].record()
            self._pending = True
        else:
            self._t1 = time.perf_counter()

    def seconds(self) -> float:
        """The last span's length; on CUDA waits for the end event (not for work queued after it)."""
        if not self.cuda:
            return max(self._t1 - self._t0, 0.0)
        if self._events is None or not self._pending:
            return 0.0
        self._events[1].synchronize()
        return float(self._events[0].elapsed_time(self._events[1])) / 1000.0
