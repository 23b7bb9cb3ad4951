"""Exit classification, table-driven with stderr tails as the real tools print them."""

from __future__ import annotations

import signal

import pytest

from health.detectors.hardware import classify_exit

CASES = [
    # (code, signal, stderr tail, kind, action)
    (1, None, "RuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel errors "
     "might be asynchronously reported", "gpu_error", "exclude_node"),
    (1, None, "[Sat Mar  2 10:01:02 2024] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off "
     "the bus.", "gpu_error", "exclude_node"),
    (1, None, "RuntimeError: CUDA error: uncorrectable ECC error encountered", "gpu_error", "exclude_node"),
    (1, None, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB "
     "total capacity; 75.01 GiB already allocated)", "oom", "abort"),
    (None, signal.SIGKILL, "Out of memory: Killed process 4242 (python) total-vm:81234567kB",
     "oom", "abort"),
    (137, None, "", "rank_crash", "relaunch"),
    (1, None, "[rank3]:[E ProcessGroupNCCL.cpp:607] [Rank 3] Watchdog caught collective operation "
     "timeout: WorkNCCL(SeqNum=1234, OpType=ALLREDUCE, NumelIn=1048576, Timeout(ms)=600000) ran for "
     "600012 milliseconds before timing out.", "collective_timeout", "relaunch"),
    (1, None, "RuntimeError: [../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out "
     "waiting 1800000ms for recv operation to complete", "collective_timeout", "relaunch"),
    (1, None, "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
     "ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL "
     "version 2.20.5\nncclSystemError: System call (e.g. socket, malloc) or external library call "
     "failed", "nccl_error", "relaunch"),
    (1, None, "OSError: [Errno 5] Input/output error: '/lustre/ckpt/step_00000100/__0_0.distcp'",
     "io_error", "exclude_node"),
    (1, None, "LustreError: 11-0: scratch-OST0003-osc: operation ost_write to node 10.0.0.3@o2ib "
     "failed: rc = -107", "lustre_error", "exclude_node"),
    (1, None, "OSError: [Errno 28] No space left on device: '/shared/ckpt/step_00000200/.metadata'",
     "disk_full", "abort"),
    (1, None, "OSError: [Errno 28] No space left on device: '/tmp/torchinductor_root/abc.so'",
     "local_disk_full", "exclude_node"),
    (1, None, "../aten/src/ATen/native/cuda/IndexKernel.cu:92: Assertion failed.\nRuntimeError: CUDA "
     "error: device-side assert triggered", "rank_crash", "relaunch"),
    (1, None, "Traceback (most recent call last):\n  File \"train.py\", line 3\nValueError: bad shape",
     "rank_crash", "relaunch"),
    (-11, None, "", "rank_crash", "relaunch"),
]


@pytest.mark.parametrize("code,sig,tail,kind,action", CASES)
def test_classification(code: int | None, sig: int | None, tail: str, kind: str, action: str) -> None:
    fc = classify_exit(code, sig, tail)
    assert (fc.kind, fc.action) == (kind, action), fc
    assert fc.advice


def test_evidence_is_the_matching_line() -> None:
    fc = classify_exit(1, None, "step 10\nstep 11\nRuntimeError: CUDA out of memory. Tried\nexit")
    assert fc.evidence == "RuntimeError: CUDA out of memory. Tried"


def test_signals_named() -> None:
    assert "SIGSEGV" in classify_exit(-11, None, "").evidence
    assert "SIGKILL" in classify_exit(None, 9, "").evidence and "OOM" in classify_exit(None, 9, "").advice
