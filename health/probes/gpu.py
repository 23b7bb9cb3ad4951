"""GPU health through NVML: the faults that make a node's GPUs unfit before a job starts, or explain a
crash after it ended.

Every query goes through :func:`_query`, which turns "this GPU / driver / binding does not support
that" into evidence instead of an exception: consumer GPUs have no ECC, MIG slices hide NVLink, old
drivers lack row remapping. A probe that crashes on one unsupported counter would hide all the others.
The ``nvml`` parameter is the library boundary: tests pass a fake module, production gets ``pynvml``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from health.probes.result import ProbeResult, Verdict, worst_verdict

Problem = tuple[Verdict, str]


class _NA(str):
    """A query that could not be answered; a str so it lands in the JSON evidence as it is."""


@dataclass(frozen=True)
class GpuThresholds:
    """Limits above which a GPU is reported; defaults suit data-centre parts (A100/H100)."""

    max_temp_c: float = 87.0
    max_pcie_replays: int = 100
    max_nvlink_errors: int = 100
    max_foreign_mem_mib: float = 1024.0  # memory held by processes that are not ours
    min_sm_clock_frac: float = 0.5  # of the max SM clock, while busy
    busy_util_pct: float = 50.0
    xid_wait_ms: int = 50  # NVML only reports Xids raised after we register: a short listen


_BAD_THROTTLE = {  # reasons that mean hardware trouble; power cap and idle are normal operation
    "hw_slowdown": "nvmlClocksThrottleReasonHwSlowdown",
    "hw_thermal_slowdown": "nvmlClocksThrottleReasonHwThermalSlowdown",
    "hw_power_brake": "nvmlClocksThrottleReasonHwPowerBrakeSlowdown",
    "sw_thermal_slowdown": "nvmlClocksThrottleReasonSwThermalSlowdown",
}
_INFO_THROTTLE = {"sw_power_cap": "nvmlClocksThrottleReasonSwPowerCap",
                  "gpu_idle": "nvmlClocksThrottleReasonGpuIdle"}


def _query(nvml: Any, name: str, *args: Any) -> Any:
    """Call ``nvml.<name>(*args)``; unsupported or failing calls become an :class:`_NA` note."""
    fn = getattr(nvml, name, None)
    if fn is None:
        return _NA(f"{name} not in this NVML binding")
    try:
        return fn(*args)
    except nvml.NVMLError as e:
        not_supported = getattr(nvml, "NVMLError_NotSupported", None)
        if not_supported is not None and isinstance(e, not_supported):
            return _NA("not supported")
        return _NA(f"error: {e}")


def _na(*values: Any) -> bool:
    return any(isinstance(v, _NA) for v in values)


def _ecc(nvml: Any, h: Any) -> tuple[dict[str, Any], list[Problem]]:
    """Uncorrected errors since boot (volatile) mean this GPU corrupted data: failed. Aggregate
    (lifetime) counts are history, reported but not judged."""
    ev: dict[str, Any] = {}
    for label, err_type in (("corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
                            ("uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED")):
        for scope, counter in (("volatile", "NVML_VOLATILE_ECC"), ("aggregate", "NVML_AGGREGATE_ECC")):
            ev[f"ecc_{label}_{scope}"] = _query(nvml, "nvmlDeviceGetTotalEccErrors", h,
                                                getattr(nvml, err_type), getattr(nvml, counter))
    v = ev["ecc_uncorrected_volatile"]
    probs: list[Problem] = [] if _na(v) or not v else [("failed", f"{v} uncorrected ECC errors since boot")]
    return ev, probs


def _memory_retirement(nvml: Any, h: Any) -> tuple[dict[str, Any], list[Problem]]:
    """Pending page retirement / row remapping needs a GPU reset to take effect; a remapping failure
    means the memory is out of spare rows. Both make the GPU unfit until serviced."""
    ev: dict[str, Any] = {"retired_pages_pending": _query(nvml, "nvmlDeviceGetRetiredPagesPendingStatus", h)}
    probs: list[Problem] = []
    if not _na(ev["retired_pages_pending"]) and ev["retired_pages_pending"]:
        probs.append(("failed", "page retirement pending (reset the GPU)"))
    rows = _query(nvml, "nvmlDeviceGetRemappedRows", h)
    if _na(rows):
        ev["remapped_rows"] = rows
        return ev, probs
    corr, unc, pending, failure = rows
    ev["remapped_rows"] = {"correctable": corr, "uncorrectable": unc, "pending": bool(pending),
                           "failure": bool(failure)}
    if failure:
        probs.append(("failed", "row remapping failure: no spare rows left"))
    elif pending:
        probs.append(("failed", "row remapping pending (reset the GPU)"))
    return ev, probs


def _thermal_power(nvml: Any, h: Any, th: GpuThresholds) -> tuple[dict[str, Any], list[Problem]]:
    temp = _query(nvml, "nvmlDeviceGetTemperature", h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
    power = _query(nvml, "nvmlDeviceGetPowerUsage", h)
    limit = _query(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
    ev = {"temperature_c": temp,
          "power_w": power if _na(power) else power / 1000.0,
          "power_limit_w": limit if _na(limit) else limit / 1000.0}
    probs: list[Problem] = []
    if not _na(temp) and temp > th.max_temp_c:
        probs.append(("degraded", f"temperature {temp} C > {th.max_temp_c} C"))
    return ev, probs


def _throttle(nvml: Any, h: Any) -> tuple[dict[str, Any], list[Problem]]:
    """Hardware slowdown and thermal throttling make this rank a straggler for the whole job."""
    mask = _query(nvml, "nvmlDeviceGetCurrentClocksEventReasons", h)
    if _na(mask):
        mask = _query(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
    if _na(mask):
        return {"throttle_reasons": mask}, []
    bad = [k for k, attr in _BAD_THROTTLE.items() if mask & getattr(nvml, attr, 0)]
    info = [k for k, attr in _INFO_THROTTLE.items() if mask & getattr(nvml, attr, 0)]
    probs: list[Problem] = [("degraded", f"clocks throttled: {', '.join(bad)}")] if bad else []
    return {"throttle_reasons": bad + info, "throttle_mask": int(mask)}, probs


def _clocks(nvml: Any, h: Any, th: GpuThresholds) -> tuple[dict[str, Any], list[Problem]]:
    """A busy GPU at a fraction of its SM clock does little tensor-core work: a hidden straggler.
    (Tensor-core activity proper is a DCGM profiling metric NVML does not expose.)"""
    util = _query(nvml, "nvmlDeviceGetUtilizationRates", h)
    sm_id = getattr(nvml, "NVML_CLOCK_SM", 1)
    sm = _query(nvml, "nvmlDeviceGetClockInfo", h, sm_id)
    sm_max = _query(nvml, "nvmlDeviceGetMaxClockInfo", h, sm_id)
    ev: dict[str, Any] = {"sm_util_pct": util if _na(util) else util.gpu,
                          "mem_util_pct": util if _na(util) else util.memory,
                          "sm_clock_mhz": sm, "sm_clock_max_mhz": sm_max}
    probs: list[Problem] = []
    if not _na(util, sm, sm_max) and sm_max and util.gpu >= th.busy_util_pct \
            and sm < th.min_sm_clock_frac * sm_max:
        probs.append(("degraded", f"busy ({util.gpu}%) at {sm}/{sm_max} MHz SM clock"))
    return ev, probs


def _foreign_processes(nvml: Any, h: Any, th: GpuThresholds,
                       own_pids: set[int]) -> tuple[dict[str, Any], list[Problem]]:
    """Memory held by someone else's process (a leftover from a previous job) shrinks ours."""
    procs = _query(nvml, "nvmlDeviceGetComputeRunningProcesses", h)
    if _na(procs):
        return {"other_processes": procs}, []
    others = [p for p in procs if p.pid not in own_pids]
    mib = sum((p.usedGpuMemory or 0) for p in others) / 2**20
    ev = {"other_processes": [int(p.pid) for p in others], "other_processes_mem_mib": round(mib, 1)}
    probs: list[Problem] = []
    if mib > th.max_foreign_mem_mib:
        probs.append(("degraded", f"{mib:.0f} MiB used by other processes {ev['other_processes']}"))
    return ev, probs


def _links(nvml: Any, h: Any, th: GpuThresholds) -> tuple[dict[str, Any], list[Problem]]:
    """PCIe replays and NVLink CRC/replay/recovery errors: a flaky link slows every collective."""
    replay = _query(nvml, "nvmlDeviceGetPcieReplayCounter", h)
    ev: dict[str, Any] = {"pcie_replays": replay}
    probs: list[Problem] = []
    if not _na(replay) and replay > th.max_pcie_replays:
        probs.append(("degraded", f"{replay} PCIe replays"))
    counters = {"replay": "NVML_NVLINK_ERROR_DL_REPLAY", "recovery": "NVML_NVLINK_ERROR_DL_RECOVERY",
                "crc_flit": "NVML_NVLINK_ERROR_DL_CRC_FLIT", "crc_data": "NVML_NVLINK_ERROR_DL_CRC_DATA"}
    links: dict[str, Any] = {}
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 0))):
        state = _query(nvml, "nvmlDeviceGetNvLinkState", h, link)
        if _na(state):
            break  # no NVLink, or past the last link of this GPU
        if not state:
            continue
        errs = {k: _query(nvml, "nvmlDeviceGetNvLinkErrorCounter", h, link, getattr(nvml, c, i))
                for i, (k, c) in enumerate(counters.items())}
        links[str(link)] = errs
        total = sum(v for v in errs.values() if not _na(v))
        if total > th.max_nvlink_errors:
            probs.append(("degraded", f"NVLink {link}: {total} errors"))
    ev["nvlink"] = links if links else _NA("no active NVLink exposed")
    return ev, probs


def _device_key(nvml: Any, h: Any) -> str | None:
    """A stable name for the GPU behind handle ``h``: its UUID, else its index. Handles themselves
    cannot be compared: nvidia-ml-py returns a new ctypes pointer object for every call, so the handle
    in an event never equals the one we registered, even for the same GPU."""
    uuid = _query(nvml, "nvmlDeviceGetUUID", h)
    if not _na(uuid):
        return f"uuid:{uuid.decode() if isinstance(uuid, bytes) else uuid}"
    index = _query(nvml, "nvmlDeviceGetIndex", h)
    return None if _na(index) else f"index:{int(index)}"


def _event_device(nvml: Any, device: Any, index_of: dict[str, int]) -> int:
    """Our index of the GPU an event names; -1 when it cannot be identified (never a guess)."""
    key = _device_key(nvml, device)
    return index_of.get(key, -1) if key is not None else -1


def _xid_events(nvml: Any, handles: list[Any], wait_ms: int) -> tuple[list[dict[str, int]], str | None]:
    """Listen briefly for critical Xid events on all devices; (events, note if unavailable)."""
    if wait_ms <= 0:
        return [], "not watched"
    es = _query(nvml, "nvmlEventSetCreate")
    if _na(es):
        return [], str(es)
    try:
        for h in handles:
            r = _query(nvml, "nvmlDeviceRegisterEvents", h, getattr(nvml, "nvmlEventTypeXidCriticalError", 8), es)
            if _na(r):
                return [], f"Xid events: {r}"
        index_of = {k: i for i, k in ((i, _device_key(nvml, h)) for i, h in enumerate(handles)) if k is not None}
        out = []
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        while True:
            try:
                data = wait(es, wait_ms)
            except nvml.NVMLError:  # timeout: no (more) events
                return out, None
            out.append({"xid": int(data.eventData), "device": _event_device(nvml, data.device, index_of)})
            wait_ms = 0 if len(out) > 64 else wait_ms
    finally:
        _query(nvml, "nvmlEventSetFree", es)


def _device(nvml: Any, i: int, h: Any, th: GpuThresholds, own: set[int]) -> tuple[dict[str, Any], list[Problem]]:
    name = _query(nvml, "nvmlDeviceGetName", h)
    ev: dict[str, Any] = {"index": i, "name": name.decode() if isinstance(name, bytes) else name}
    probs: list[Problem] = []
    for part in (_ecc(nvml, h), _memory_retirement(nvml, h), _thermal_power(nvml, h, th),
                 _throttle(nvml, h), _clocks(nvml, h, th), _foreign_processes(nvml, h, th, own),
                 _links(nvml, h, th)):
        ev.update(part[0])
        probs.extend(part[1])
    return ev, probs


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _init(nvml: Any) -> str | None:
    """Initialise NVML; a reason string when there is no usable driver."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        return str(e) or type(e).__name__
    return None


def probe_gpu(expected_count: int | None = None, node: str | None = None, nvml: Any = None,
              thresholds: GpuThresholds | None = None, own_pids: set[int] | None = None) -> ProbeResult:
    """Check every GPU of this node. No driver is 'skipped' unless GPUs were expected: then 'failed'."""
    node = node or socket.gethostname()
    nvml = nvml if nvml is not None else _load_pynvml()
    th = thresholds or GpuThresholds()
    reason = "nvidia-ml-py not installed" if nvml is None else _init(nvml)
    if reason is not None:
        if expected_count:
            return ProbeResult("gpu", node, "failed", {"reason": "no GPU", "detail": reason,
                                                       "expected": expected_count}, "gpu_error")
        return ProbeResult("gpu", node, "skipped", {"reason": "no GPU", "detail": reason})
    try:
        return _probe_devices(nvml, node, expected_count, th, own_pids or {os.getpid()})
    finally:
        _query(nvml, "nvmlShutdown")


def _probe_devices(nvml: Any, node: str, expected: int | None, th: GpuThresholds,
                   own: set[int]) -> ProbeResult:
    count = _query(nvml, "nvmlDeviceGetCount")
    count = 0 if _na(count) else int(count)
    if count == 0 and not expected:
        return ProbeResult("gpu", node, "skipped", {"reason": "no GPU", "detail": "driver sees 0 devices"})
    probs: list[Problem] = []
    if expected is not None and count < expected:
        probs.append(("failed", f"{count} GPUs visible, {expected} expected"))
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    devices = []
    for i, h in enumerate(handles):
        ev, p = _device(nvml, i, h, th, own)
        devices.append(ev)
        probs.extend((v, f"GPU {i}: {msg}") for v, msg in p)
    xids, note = _xid_events(nvml, handles, th.xid_wait_ms)
    probs.extend(("failed", f"GPU {x['device']}: Xid {x['xid']}") for x in xids)
    verdict = worst_verdict([v for v, _ in probs]) if probs else "ok"
    evidence = {"count": count, "expected": expected, "devices": devices,
                "xid_events": xids if note is None else _NA(note), "problems": [m for _, m in probs]}
    return ProbeResult("gpu", node, verdict, evidence, "gpu_error" if verdict == "failed" else None)
