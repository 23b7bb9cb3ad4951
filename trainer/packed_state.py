"""A checkpoint state whose scalars travel in DCP as one object per distinct set, not one item each.

Why: DCP stores every non-tensor leaf as its own item and ``torch.load``s each one back. The flattened
optimizer state repeats the param-group hyper-parameters (lr, betas, eps, ...) and AdamW's 0-d ``step``
for every parameter, so the demo model's restore did 1,035 ``torch.load``s per rank, 828 of them for
scalars: most of the 2 s a rank crash spent restoring from storage. Here the tensors (weights, Adam
moments, DTensor shards: what DCP reshards) stay DCP items; every scalar leaf of the state goes into one
pickled dict per rank, stored under ``packed_scalars.<digest of its bytes>``. Ranks that hold the same
parameters (data-parallel replicas, tensor-parallel peers) produce the same bytes, so DCP's de-duplication
keeps one copy; a load reads every packed dict in the checkpoint (one per pipeline stage or so) and takes
the keys its own layout needs, so resharding across layouts still works.

A checkpoint without ``packed_scalars`` (written before this format) loads the old way, item by item.
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.tensor import DTensor

SCALARS = "packed_scalars"  # top-level key; its presence in a checkpoint is the format's version mark


def is_scalar(value: Any) -> bool:
    """A leaf DCP would store as a separate tiny item: any non-tensor, or a 0-d plain tensor."""
    if not isinstance(value, torch.Tensor):
        return True
    return value.dim() == 0 and not isinstance(value, DTensor)


def _plain(value: Any) -> Any:
    """A 0-d tensor as a Python number (its bytes then compare equal across ranks); else the value."""
    return value.item() if isinstance(value, torch.Tensor) else value


def pack(state: dict[str, Any]) -> dict[str, Any]:
    """The state to hand DCP: each section's tensors as they are, its scalars in one packed object."""
    out: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for section, items in state.items():
        if not isinstance(items, dict):
            out[section] = items
            continue
        out[section] = {k: v for k, v in items.items() if not is_scalar(v)}
        scalars.update({f"{section}.{k}": _plain(v) for k, v in items.items() if is_scalar(v)})
    if scalars:
        blob = pickle.dumps(scalars, protocol=4)
        out[SCALARS] = {hashlib.sha256(blob).hexdigest()[:24]: blob}
    return out


def stored_digests(metadata: Metadata) -> list[str] | None:
    """The packed objects a checkpoint holds; None for a checkpoint in the old, item-per-scalar format."""
    keys = metadata.state_dict_metadata
    prefix = f"{SCALARS}."
    digests = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    return digests or None


def load_target(state: dict[str, Any], digests: list[str]) -> dict[str, Any]:
    """What to ask DCP for: the state's tensors (filled in place) and every packed object."""
    target = {s: ({k: v for k, v in items.items() if not is_scalar(v)} if isinstance(items, dict) else items)
              for s, items in state.items()}
    target[SCALARS] = {d: b"" for d in digests}
    return target


def unpack_into(state: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Set ``state``'s scalars from the packed objects DCP filled into ``loaded`` (tensors in place)."""
    merged: dict[str, Any] = {}
    for blob in loaded[SCALARS].values():
        merged.update(pickle.loads(blob))
    missing = []
    for section, items in state.items():
        if not isinstance(items, dict):
            continue
        for k, v in items.items():
            if not is_scalar(v):
                continue
            key = f"{section}.{k}"
            if key not in merged:
                missing.append(key)
            elif isinstance(v, torch.Tensor):
                v.fill_(merged[key])
            else:
                items[k] = merged[key]
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} scalar(s) this layout needs, e.g. {missing[:3]}")
