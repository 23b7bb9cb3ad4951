"""GPU probe against a fake NVML: healthy, ECC errors, throttled, unsupported counters, no driver.

The fake replaces only the library boundary: it reuses pynvml's real constants and error classes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
import torch

from health.probes.gpu import probe_gpu


class Handle:
    """Like pynvml's ctypes handles: a new object on every lookup, and two handles to the same GPU
    compare unequal (identity equality), so the probe must compare GPUs by UUID or index."""

    def __init__(self, i: int) -> None:
        self.i = i


class FakeNvml:
    """Module-like: pynvml's constants and errors, device calls answered from per-GPU dicts.

    ``xids``: an Xid code (raised on GPU 0) or an (Xid, GPU index) pair per event."""

    def __init__(self, gpus: list[dict[str, Any]], init_error: Exception | None = None,
                 xids: list[int | tuple[int, int]] | None = None) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML_", "NVMLError", "nvmlClocks", "nvmlEventType")):
                setattr(self, name, getattr(pynvml, name))
        self.gpus, self.init_error, self.xids = gpus, init_error, list(xids or [])

    def _get(self, h: Handle, key: str, default: Any) -> Any:
        v = self.gpus[h.i].get(key, default)
        if v == "unsupported":
            raise pynvml.NVMLError_NotSupported()
        return v

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return len(self.gpus)
    def nvmlDeviceGetHandleByIndex(self, i: int) -> Handle: return Handle(i)
    def nvmlDeviceGetUUID(self, h: Handle) -> str:
        return self._get(h, "uuid", f"GPU-{h.i:08d}-fake") if h.i < len(self.gpus) else f"GPU-{h.i:08d}-fake"
    def nvmlDeviceGetIndex(self, h: Handle) -> int: return h.i
    def nvmlDeviceGetName(self, h: int) -> str: return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEccErrors(self, h: int, err: int, counter: int) -> int:
        if err == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED and counter == pynvml.NVML_VOLATILE_ECC:
            return self._get(h, "ecc_unc", 0)
        return 0

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int: return 0
    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        return self._get(h, "remap", (0, 0, 0, 0))
    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int: return self._get(h, "temp", 45)
    def nvmlDeviceGetPowerUsage(self, h: int) -> int: return 300_000
    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int: return 700_000
    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int: return self._get(h, "throttle", 0)
    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self._get(h, "util", 0), memory=10)
    def nvmlDeviceGetClockInfo(self, h: int, clk: int) -> int: return self._get(h, "sm_clock", 1980)
    def nvmlDeviceGetMaxClockInfo(self, h: int, clk: int) -> int: return 1980
    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._get(h, "procs", [])]
    def nvmlDeviceGetPcieReplayCounter(self, h: int) -> int: return self._get(h, "pcie", 0)
    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        if link >= 2:
            raise pynvml.NVMLError_NotSupported()
        return 1
    def nvmlDeviceGetNvLinkErrorCounter(self, h: int, link: int, counter: int) -> int:
        return self._get(h, "nvlink_err", 0)
    def nvmlEventSetCreate(self) -> str: return "set"
    def nvmlDeviceRegisterEvents(self, h: int, types: int, es: str) -> None: ...
    def nvmlEventSetFree(self, es: str) -> None: ...
    def nvmlEventSetWait_v2(self, es: str, ms: int) -> Any:
        if not self.xids:
            raise pynvml.NVMLError_Timeout()
        xid = self.xids.pop(0)
        xid, gpu = xid if isinstance(xid, tuple) else (xid, 0)
        return SimpleNamespace(eventData=xid, device=Handle(gpu), eventType=8)


def test_healthy() -> None:
    r = probe_gpu(expected_count=2, node="g1", nvml=FakeNvml([{}, {}]))
    assert (r.verdict, r.fault_kind) == ("ok", None), r.evidence["problems"]
    assert r.evidence["count"] == 2 and r.evidence["devices"][0]["power_w"] == 300.0
    assert set(r.evidence["devices"][0]["nvlink"]) == {"0", "1"}


def test_ecc_and_remap_fail() -> None:
    r = probe_gpu(nvml=FakeNvml([{}, {"ecc_unc": 3, "remap": (0, 1, 1, 0)}]))
    assert (r.verdict, r.fault_kind) == ("failed", "gpu_error")
    assert any("GPU 1: 3 uncorrected ECC" in p for p in r.evidence["problems"])
    assert any("remapping pending" in p for p in r.evidence["problems"])


def test_throttled_hot_and_busy_at_low_clock_degrade() -> None:
    mask = pynvml.nvmlClocksThrottleReasonHwThermalSlowdown | pynvml.nvmlClocksThrottleReasonSwPowerCap
    r = probe_gpu(nvml=FakeNvml([{"throttle": mask, "temp": 92, "util": 99, "sm_clock": 600}]))
    assert r.verdict == "degraded" and r.fault_kind is None
    dev = r.evidence["devices"][0]
    assert dev["throttle_reasons"] == ["hw_thermal_slowdown", "sw_power_cap"]
    assert len(r.evidence["problems"]) == 3


def test_unsupported_counters_are_evidence_not_errors() -> None:
    r = probe_gpu(nvml=FakeNvml([{"ecc_unc": "unsupported", "pcie": "unsupported", "remap": "unsupported",
                                  "procs": "unsupported"}]))
    assert r.verdict == "ok"
    dev = r.evidence["devices"][0]
    assert dev["ecc_uncorrected_volatile"] == "not supported" and dev["pcie_replays"] == "not supported"


def test_missing_gpu_foreign_memory_and_xid() -> None:
    fake = FakeNvml([{"procs": [(99999, 4 << 30)], "pcie": 500}], xids=[79])
    r = probe_gpu(expected_count=2, nvml=fake, own_pids={1})
    assert r.verdict == "failed"
    probs = " | ".join(r.evidence["problems"])
    assert "1 GPUs visible, 2 expected" in probs and "Xid 79" in probs
    assert "4096 MiB used by other processes [99999]" in probs and "PCIe" in probs


def test_xid_attributed_to_the_right_gpu_although_event_handles_are_new_objects() -> None:
    r = probe_gpu(nvml=FakeNvml([{}, {}, {}], xids=[(79, 2), (48, 0)]))
    assert r.verdict == "failed"
    assert r.evidence["xid_events"] == [{"xid": 79, "device": 2}, {"xid": 48, "device": 0}]
    assert "GPU 2: Xid 79" in r.evidence["problems"] and "GPU 0: Xid 48" in r.evidence["problems"]


def test_xid_falls_back_to_the_index_without_uuids_and_never_guesses() -> None:
    fake = FakeNvml([{"uuid": "unsupported"}, {"uuid": "unsupported"}], xids=[(13, 1)])
    assert probe_gpu(nvml=fake).evidence["xid_events"] == [{"xid": 13, "device": 1}]
    fake = FakeNvml([{}], xids=[(13, 5)])  # an event from a GPU we did not enumerate: unknown, not GPU 0
    assert probe_gpu(nvml=fake).evidence["xid_events"] == [{"xid": 13, "device": -1}]


def test_no_driver_skipped_or_failed_when_expected() -> None:
    fake = FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound())
    r = probe_gpu(nvml=fake)
    assert r.verdict == "skipped" and r.evidence["reason"] == "no GPU"
    assert probe_gpu(expected_count=4, nvml=fake).verdict == "failed"


def test_real_pynvml_on_this_machine_never_crashes() -> None:
    r = probe_gpu()
    assert r.verdict in ("skipped", "ok", "degraded", "failed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU and driver (real NVML)")
def test_real_nvml_probe_on_a_gpu_machine_is_ok_with_real_fields() -> None:
    r = probe_gpu(expected_count=torch.cuda.device_count())
    assert r.verdict == "ok", r.evidence["problems"]
    dev = r.evidence["devices"][0]
    assert dev["name"] and isinstance(dev["temperature_c"], int) and dev["power_limit_w"] > 0
    assert isinstance(dev["sm_clock_max_mhz"], int) and r.evidence["count"] == torch.cuda.device_count()
