"""Slurm host list expansion and compression (slurm.hostlist)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm.hostlist import HostlistError, compress, expand


@pytest.mark.parametrize("text, hosts", [
    ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
    ("a[01-03],b5", ["a01", "a02", "a03", "b5"]),
    ("node1", ["node1"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("x[098-101]", ["x098", "x099", "x100", "x101"]),
    ("gpu[1-2],cpu[3,5-6],login", ["gpu1", "gpu2", "cpu3", "cpu5", "cpu6", "login"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("node[1-2],node2", ["node1", "node2"]),
    (" node[1-2] ", ["node1", "node2"]),
    ("(null)", []), ("None assigned", []), ("", []),
])
def test_expand(text: str, hosts: list[str]) -> None:
    assert expand(text) == hosts


@pytest.mark.parametrize("bad", ["node[1-3", "node1-3]", "node[]", "node[3-1]", "node[a-b]", "n[1]]"])
def test_expand_rejects_what_slurm_rejects(bad: str) -> None:
    with pytest.raises(HostlistError):
        expand(bad)


@pytest.mark.parametrize("hosts, text", [
    (["node1", "node2", "node3", "node7"], "node[1-3,7]"),
    (["node3", "node1", "node2"], "node[1-3]"),
    (["a01", "a02", "a03", "b5"], "a[01-03],b5"),
    (["n9", "n10"], "n[9-10]"),
    (["n09", "n10"], "n[09-10]"),
    (["n9", "n010"], "n[9,010]"),
    (["node2"], "node2"),
    (["login", "node1", "node1"], "node1,login"),
    ([], ""),
])
def test_compress(hosts: list[str], text: str) -> None:
    assert compress(hosts) == text


def test_compress_rejects_expressions() -> None:
    with pytest.raises(HostlistError):
        compress(["node[1-2]"])


names = st.builds(lambda p, n, w: f"{p}{str(n).zfill(w)}",
                  st.sampled_from(["node", "gpu", "a", "rack1n"]), st.integers(0, 120), st.integers(0, 3))


@given(st.lists(names, max_size=30))
def test_round_trip(hosts: list[str]) -> None:
    assert sorted(expand(compress(hosts))) == sorted(set(hosts))
