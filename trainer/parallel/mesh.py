"""The (dp, pp, tp) device mesh and where each rank sits in it.

Placement puts tp innermost so a tensor-parallel group is a run of consecutive ranks (and, with ranks
numbered node by node, one node's fast interconnect carries TP's per-layer collectives); pp comes next
(point-to-point, moderate volume) and dp outermost (one gradient reduction per step, the most tolerant
of slow links).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spec.config import RunConfig

if TYPE_CHECKING:  # torch only where a mesh is built: the layout arithmetic serves the config loader
    from torch.distributed.device_mesh import DeviceMesh

DIMS = ("dp", "pp", "tp")


def resolve_dp(cfg: RunConfig, world: int) -> int:
    """dp as configured, or whatever is left of the world after tp and pp."""
    return max(cfg.parallel.dp_of(world), 1)


def mesh_shape(cfg: RunConfig, world: int) -> tuple[int, int, int]:
    par = cfg.parallel
    shape = (resolve_dp(cfg, world), par.pp, par.tp)
    if shape[0] * shape[1] * shape[2] != world:
        raise ValueError(f"layout dp*pp*tp = {shape[0]}*{shape[1]}*{shape[2]} != world size {world}")
    return shape


def build_mesh(cfg: RunConfig, world: int, device_type: str) -> DeviceMesh:
    """One mesh for the whole run; sub-meshes ``mesh['dp']`` etc. give each dimension's groups."""
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device_type, mesh_shape(cfg, world), mesh_dim_names=DIMS)


def coords(rank: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(dp, pp, tp) coordinates of ``rank`` in row-major order (tp fastest)."""
    _, pp, tp = shape
    return rank // (pp * tp), (rank // tp) % pp, rank % tp


def shard_of(cfg: RunConfig, rank: int, world: int) -> tuple[int, int] | None:
    """(pp, tp) of ``rank`` in a world of ``world`` ranks: the part of the state it holds when dp
    replicates (None for a world this layout cannot take)."""
    try:
        return coords(rank, mesh_shape(cfg, world))[1:]
    except ValueError:
        return None


def rank_layout(cfg: RunConfig, world: int | None = None) -> dict[int, tuple[int, int, int]]:
    """rank → (dp, pp, tp) coordinates; the same arithmetic ``init_device_mesh`` uses."""
    world = world if world is not None else cfg.cluster.world_size
    shape = mesh_shape(cfg, world)
    return {r: coords(r, shape) for r in range(world)}


def node_map(cfg: RunConfig, world: int | None = None) -> str:
    """A printable rank → node table, with each rank's coordinates, one line per node."""
    rpn = cfg.cluster.ranks_per_node
    layout = rank_layout(cfg, world)
    lines = []
    for node in range(-(-len(layout) // rpn)):
        ranks = [r for r in layout if r // rpn == node]
        cells = [f"r{r}(dp{d},pp{p},tp{t})" for r in ranks for d, p, t in [layout[r]]]
        lines.append(f"node {node}: " + " ".join(cells))
    return "\n".join(lines)


def describe(mesh: DeviceMesh) -> dict[str, Any]:
    """This rank's coordinate and group size per mesh dimension (for telemetry)."""
    return {d: (mesh[d].get_local_rank(), mesh[d].size()) for d in DIMS}
