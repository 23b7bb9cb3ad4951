"""trainer.device: per-rank device choice, the fail-fast message, collective tensors, straggler timing.

The choice is a pure function of (requested, host-local index, ranks on the host, GPUs seen), so every
case, GPUs included, is tested here on CPU; the end-to-end case is a real submit with
``cluster.device: cuda`` that must stop at once (CPU machines) with the node and the gap in the reason.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from health.detectors.hardware import classify_exit
from spec.config import RunConfig
from trainer import device as dv
from trainer.device import CudaInventory, DeviceUnavailable, choose

NO_GPU = CudaInventory(0, "this torch build (2.13.0+cpu) has no CUDA support")
EIGHT = CudaInventory(8)


def test_auto_is_the_default_and_validates_without_gpus() -> None:
    assert RunConfig().cluster.device == "auto"
    assert RunConfig.model_validate({"cluster": {"device": "cuda"}}).cluster.device == "cuda"


def test_cpu_and_auto_without_gpu_use_gloo_on_cpu() -> None:
    for req in ("cpu", "auto"):
        p = choose(req, 3, 4, NO_GPU, "n0")  # type: ignore[arg-type]
        assert (p.device, p.backend) == (torch.device("cpu"), "gloo")
    assert choose("cpu", 0, 1, EIGHT, "n0").device.type == "cpu"


def test_device_is_the_host_local_index_so_simulated_nodes_get_disjoint_gpus() -> None:
    """2 simulated nodes x 2 ranks on one 8-GPU host: LOCAL_RANK is 0,1,0,1; the GPUs must be 0..3."""
    env = {"LOCAL_RANK": "0", "SLURM_LOCALID": ""}
    devices = []
    for node in range(2):
        for local in range(2):
            env.update({dv.HOST_RANK_ENV: str(node * 2 + local), dv.HOST_WORLD_ENV: "4", "LOCAL_RANK": str(local)})
            p = choose("auto", dv.host_local_rank(env), dv.host_local_world(env, 2), EIGHT, f"node{node}")
            assert p.backend == "nccl"
            devices.append(p.device.index)
    assert devices == [0, 1, 2, 3]


def test_host_local_rank_falls_back_to_slurm_then_local_rank() -> None:
    assert dv.host_local_rank({"SLURM_LOCALID": "5", "LOCAL_RANK": "1"}) == 5
    assert dv.host_local_rank({"LOCAL_RANK": "1"}) == 1
    assert dv.host_local_world({}, 4) == 4


def test_auto_needs_a_gpu_for_every_rank_on_the_host() -> None:
    """All ranks of a host decide alike: a 1-GPU host with 4 ranks trains all four on CPU."""
    one = CudaInventory(1)
    assert {choose("auto", i, 4, one, "n").device.type for i in range(4)} == {"cpu"}
    assert choose("auto", 0, 1, one, "n").device == torch.device("cuda", 0)


def test_cuda_without_gpu_fails_naming_node_and_what_is_missing() -> None:
    with pytest.raises(DeviceUnavailable) as e:
        choose("cuda", 0, 2, NO_GPU, "node1")
    assert str(e.value).startswith("node1: cluster.device is cuda but no usable GPU")
    assert "no CUDA support" in str(e.value)


def test_cuda_with_too_few_gpus_for_nccl_fails_but_gloo_may_share() -> None:
    two = CudaInventory(2)
    with pytest.raises(DeviceUnavailable, match=r"node0: .*needs GPU cuda:3 .* only 2 GPU"):
        choose("cuda", 3, 4, two, "node0")
    shared = [choose("cuda", i, 4, two, "node0", backend_override="gloo") for i in range(4)]
    assert [(p.device.index, p.backend) for p in shared] == [(0, "gloo"), (1, "gloo"), (0, "gloo"), (1, "gloo")]


def test_place_rank_reads_the_environment_and_rejects_unknown_backends() -> None:
    assert dv.place_rank("cpu", "n", 2, env={}).backend == "gloo"
    with pytest.raises(ValueError, match="valid values are gloo, nccl"):
        dv.place_rank("cpu", "n", 2, env={dv.BACKEND_ENV: "mpi"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_place_rank_cuda_on_this_cpu_machine_fails_fast() -> None:
    with pytest.raises(DeviceUnavailable, match="cluster.device is cuda but no usable GPU"):
        dv.place_rank("cuda", "login1", 1, env={})
    assert dv.place_rank("auto", "login1", 1, env={}).device.type == "cpu"


def test_the_exit_classifier_aborts_on_the_message_instead_of_relaunching() -> None:
    msg = "rank 0: node0: cluster.device is cuda but no usable GPU: no NVIDIA driver"
    c = classify_exit(1, None, "Traceback...\n" + msg + "\n")
    assert (c.kind, c.action) == ("config_error", "abort") and "node0" in c.evidence
    broken = classify_exit(1, None, "rank 0: node0: cuda:0 is not usable: CUDA error: unspecified launch failure")
    assert broken.action == "exclude_node"  # a GPU that fails its first allocation is the node's fault


def test_collective_device_is_cpu_for_gloo_and_without_a_group(tmp_path: Path) -> None:
    assert dv.collective_device() == torch.device("cpu")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        assert dv.collective_device() == torch.device("cpu")
        t = dv.flags_tensor([1.0, 2.0])
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 2.0] and t.dtype == torch.float64
        from trainer.engine import agree_with_counts
        assert agree_with_counts(2.0, 1.0, False, (1.0,)) == (2.0, False, [1.0])
        assert agree_with_counts(float("nan"), 1.0, False)[1] is True
    finally:
        dist.destroy_process_group()


def test_span_timer_on_cpu_measures_wall_time_of_the_span() -> None:
    t = dv.SpanTimer(torch.device("cpu"))
    t.start()
    x = torch.randn(64, 64)
    for _ in range(5):
        x = x @ x.T / 64
    t.stop()
    assert 0.0 < t.seconds() < 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_span_timer_on_cuda_waits_for_the_kernels_not_the_launch() -> None:
    dev = torch.device("cuda", 0)
    t = dv.SpanTimer(dev)
    x = torch.randn(4096, 4096, device=dev)
    torch.cuda.synchronize()
    t.start()
    for _ in range(20):
        x = torch.tanh(x @ x)
    t.stop()
    secs = t.seconds()
    assert secs > 0.001  # 20 4k matmuls: milliseconds of GPU time, not microseconds of launches


def test_engine_fp16_has_a_loss_scaler_and_fp32_masters() -> None:
    """The non-FSDP path: fp16 with a GradScaler, bf16 without; parameters stay fp32 either way."""
    from trainer.engine import Engine
    base = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 4, "seq_len": 16}}
    x = torch.randint(0, 256, (2, 16))
    for prec, scaled in (("fp16", True), ("bf16", False)):
        cfg = RunConfig.model_validate({**base, "train": {"precision": prec}})
        eng = Engine(cfg, 0, 1, torch.device("cpu"))
        assert (eng.scaler is not None) is scaled
        loss = eng.forward_backward(x, x)
        norm = eng.clip_grad_norm(1.0)
        assert loss > 0 and eng.local_s > 0
        if not eng.last_overflow:
            eng.apply(1e-3)
        assert {p.dtype for p in eng.module.parameters()} == {torch.float32}
        assert set(eng.tensor_dtypes().values()) == {"float32"}
        assert ("scaler" in eng.state_dict()) is scaled
        assert norm == norm or eng.last_overflow  # finite unless the scaler saw an overflow


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a usable GPU")
def test_submit_with_cuda_and_no_gpu_aborts_at_once_naming_node_and_gap(tmp_path: Path) -> None:
    """No relaunches: the first rank exit is a config_error, and the run fails with the rank's line
    (pre-flight off, so the ranks themselves meet the missing GPU, as under Slurm)."""
    from tests.conftest import run_submit
    r = run_submit(tmp_path, {"cluster": {"nodes": 1, "ranks_per_node": 1, "spare_nodes": 0, "device": "cuda"},
                              "health": {"preflight": False}, "train": {"steps": 10},
                              "checkpoint": {"every_steps": 5}})
    assert r.code == 1 and r.status["state"] == "FAILED"
    assert [(f["kind"], f["action"], f["node"]) for f in r.status["faults"]] == [("config_error", "abort", "node0")]
    assert "node0: cluster.device is cuda but no usable GPU" in r.status["faults"][0]["detail"]
    assert len(r.events("launch")) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a usable GPU")
def test_local_preflight_stops_a_cuda_run_with_the_same_line_instead_of_excluding_nodes(tmp_path: Path) -> None:
    from tests.conftest import run_submit
    r = run_submit(tmp_path, {"cluster": {"nodes": 2, "ranks_per_node": 1, "spare_nodes": 1, "device": "cuda"},
                              "health": {"probes": ["node", "gpu"]}, "train": {"steps": 10},
                              "checkpoint": {"every_steps": 5}})
    assert r.code == 1 and r.status["state"] == "FAILED"
    assert r.status["reason"].startswith("node0, node1: cluster.device is cuda but no usable GPU")
    assert r.events("launch") == [] and r.status.get("excluded_nodes", []) == []
