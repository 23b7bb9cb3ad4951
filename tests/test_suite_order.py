"""The xdist part's order (tests/conftest.py ``order_for_two_workers``): each file stays together and in
order, the heavy files split into two even halves that each start with their heaviest file, and the
light files fill the first half up to worksteal's split by count (past it by at most one light file, so
the second worker's queue reaches its heavy files at once and never starts in the first half's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.conftest import FILE_SECONDS, order_for_two_workers


@dataclass(frozen=True)
class FakeItem:
    path: Path
    name: str


def items(counts: dict[str, int]) -> list[FakeItem]:
    return [FakeItem(Path("tests") / f, f"{f}::{i}") for f, n in counts.items() for i in range(n)]


def test_heavy_files_start_both_halves_and_every_file_stays_whole() -> None:
    light = {f"test_light_{i}.py": 20 for i in range(10)}
    heavy = {"test_local_faults.py": 12, "test_chaos_soak.py": 1, "test_parallel_chaos.py": 3,
             "test_bench_ftlauncher.py": 6}
    given = items({**light, **heavy})
    got = order_for_two_workers(given)  # type: ignore[arg-type]
    assert sorted(i.name for i in got) == sorted(i.name for i in given)
    files = [i.path.name for i in got]
    runs = [f for k, f in enumerate(files) if k == 0 or files[k - 1] != f]
    assert len(runs) == len(set(runs))  # each file contiguous
    for f in {*light, *heavy}:  # and in its own order
        assert [i.name for i in got if i.path.name == f] == [i.name for i in given if i.path.name == f]
    half = len(got) // 2
    first, second = files[:half], files[half:]
    assert first[0] == "test_local_faults.py"  # the heaviest file starts one half...
    straddling = [f for f in second if f == first[-1]]  # the light file the split by count may cut
    assert second[len(straddling)] in heavy  # ...another heavy one the other, right after it
    load = [sum(FILE_SECONDS[f] for f in set(h) if f in heavy) for h in (first, second)]
    assert max(load) - min(load) <= max(FILE_SECONDS[f] for f in heavy)  # even to within one file
    assert first[-1].startswith("test_light_") and second[-1].startswith("test_light_")  # short tests last


def test_without_heavy_files_the_order_is_unchanged() -> None:
    given = items({"test_a.py": 3, "test_b.py": 2})
    assert order_for_two_workers(given) == given  # type: ignore[arg-type]
