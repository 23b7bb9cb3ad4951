"""A DCP storage reader that reads each shard file once and decodes tensors without ``torch.load``.

Why: DCP's ``FileSystemReader`` hands every tensor item to ``torch.load(weights_only=True)``, whose
unpickler is pure Python and whose tensor rebuild walks the fake-mode machinery: ~0.7 ms per item on an
idle core and several times that under load, per item, on every rank of a restart (113 items for the
tests' model, 209 for the demo's). An item is a small ``torch.save`` archive: a pickle that names one
storage and calls ``torch._utils._rebuild_tensor_v2``, plus the storage's bytes. Here each file is read
with one ``read``, and each item's pickle runs through the C unpickler with an allow-list of exactly
those globals (the restricting-globals pattern of the ``pickle`` docs), so nothing else can be
constructed; the tensor is a strided view of the stored bytes. An item that is anything else (another
global, a big-endian archive, a storage transform) goes to ``torch.load(weights_only=True)`` as before,
so the reader accepts everything DCP's own does, and DCP's planner still reshards across layouts.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class NotPlainTensor(Exception):
    """The item is not the one-storage tensor archive this decoder knows: load it the general way."""


def _rebuild(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
             requires_grad: bool, hooks: Any, metadata: Any = None) -> torch.Tensor:
    """``_rebuild_tensor_v2`` for a plain CPU tensor: a strided view of the stored elements."""
    if hooks or metadata:
        raise NotPlainTensor("backward hooks or tensor metadata")
    return storage.as_strided(size, stride, offset)


class _TensorUnpickler(pickle.Unpickler):
    """The C unpickler, allowed to build a tensor from the archive's storages and nothing else."""

    def __init__(self, data: io.BytesIO, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(data)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise NotPlainTensor(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[3] == "cpu"
                and isinstance(pid[1], torch.dtype)):
            raise NotPlainTensor(f"storage {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{pid[2]}"))
        return torch.frombuffer(raw, dtype=pid[1]) if raw else torch.empty(0, dtype=pid[1])


def decode_tensor(blob: bytes | memoryview) -> torch.Tensor:
    """One item written by ``torch.save(tensor)``; raises NotPlainTensor for anything else."""
    archive = zipfile.ZipFile(io.BytesIO(blob))
    pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
    if pkl is None:
        raise NotPlainTensor("no data.pkl")
    prefix = pkl[: -len("/data.pkl")]
    if archive.read(f"{prefix}/byteorder") != b"little":
        raise NotPlainTensor("not little-endian")
    tensor = _TensorUnpickler(io.BytesIO(archive.read(pkl)), archive, prefix).load()
    if not isinstance(tensor, torch.Tensor):
        raise NotPlainTensor(type(tensor).__name__)
    return tensor


def _general_load(blob: bytes | memoryview) -> torch.Tensor:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


class OnePassReader(FileSystemReader):
    """``FileSystemReader`` with one read per shard file, fast tensor decoding and the metadata read once
    (``checkpoint.load`` asks for it before DCP does)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._metadata: Metadata | None = None
        self.files_read = 0  # shard files opened by read_data: what tests bound
        self.general_loads = 0  # items that needed torch.load

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if args or kwargs:  # a rank-local metadata file: DCP's fallback, not cached
            return super().read_metadata(*args, **kwargs)
        if self._metadata is None:
            self._metadata = super().read_metadata()
        return self._metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if any(self.storage_data[r.storage_index].transform_descriptors for r in plan.items):
            return super().read_data(plan, planner)  # compressed or otherwise transformed: DCP's path
        per_file: dict[str, list[ReadItem]] = {}
        for req in plan.items:
            per_file.setdefault(self.storage_data[req.storage_index].relative_path, []).append(req)
        for rel, reqs in per_file.items():
            with open(self.fs.concat_path(self.path, rel), "rb") as f:
                data = memoryview(f.read())
            self.files_read += 1
            for req in reqs:
                info = self.storage_data[req.storage_index]
                self._apply(req, data[info.offset: info.offset + info.length], planner)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _apply(self, req: ReadItem, blob: memoryview, planner: LoadPlanner) -> None:
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(blob))
            return
        try:
            tensor = decode_tensor(blob)
        except NotPlainTensor:
            self.general_loads += 1
            tensor = _general_load(blob)
        tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise RuntimeError(f"{req.storage_index}: stored size {tuple(tensor.size())}, "
                               f"wanted {tuple(target.size())}")
        target.copy_(tensor)
        planner.commit_tensor(req, target)
