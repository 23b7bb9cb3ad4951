"""The replay verdict rules (pure), the burn-in compute check and the lemon store's hardware record."""

from __future__ import annotations

import math
from pathlib import Path

from health.detectors.lemon import LemonNodeStore
from health.detectors.replay_rules import Computation, agree, decide
from health.probes.burn_in import KNOWN_CHECKSUM, compute_check, reference_checksum
from spec.faults import CHAOS, FAULTS, VERDICT_KIND

NAN = float("nan")
TOL = 1e-3


def shifted(losses: dict[int, float], computed_by: dict[int, float] | None = None) -> list[Computation]:
    """Replica d computes replica d+1's batch; ``computed_by`` overrides what d got for it."""
    dp = len(losses)
    got = computed_by or {}
    return [Computation((d + 1) % dp, d, got.get(d, losses[(d + 1) % dp])) for d in range(dp)]


def test_clean_replay_is_transient_and_names_the_replica_that_changed() -> None:
    v = decide(False, {0: 3.1, 1: NAN, 2: 3.0}, {0: 3.1, 1: 3.05, 2: 3.0}, [], [], TOL)
    assert (v.verdict, v.suspects) == ("transient", (1,))


def test_a_clean_replay_after_every_replica_was_bad_counts_against_no_node() -> None:
    v = decide(False, {0: 7.9, 1: 8.2}, {0: 3.1, 1: 3.0}, [], [], TOL)  # a corrupted read, on every replica
    assert (v.verdict, v.suspects) == ("transient", ()) and "not a node" in v.reason
    one = decide(False, {0: NAN}, {0: 3.1}, [], [], TOL)  # one replica: nothing to compare it with
    assert one.suspects == (0,)


def test_gradients_that_follow_the_node_are_hardware_when_the_losses_agree() -> None:
    """A fault in the backward pass only: every loss agrees; replica 1's node spoils the gradients of
    whatever it computes (its local fingerprint is inf), so batch 1 disagrees on its own replica and
    batch 2 on replica 1: replica 1 is blamed, and only it."""
    loss = {0: 3.0, 1: 3.1, 2: 3.2}
    grad = {0: 5.0, 1: math.inf, 2: 6.0}
    cross = [Computation(1, 0, 3.1, 5.5), Computation(2, 1, 3.2, math.inf), Computation(0, 2, 3.0, 5.0)]
    v = decide(True, loss, loss, cross, [False, False], TOL, grad)
    assert (v.verdict, v.suspects) == ("hardware", (1,)) and "gradient norm²" in v.reason
    # without fingerprints (a sharded layout) the same replays can only say: the batch
    blind = [Computation(c.batch, c.computer, c.loss) for c in cross]
    assert decide(True, loss, loss, blind, [False, False], TOL, grad).verdict == "data"


def test_grad_print_sees_a_faulty_nodes_local_gradient(tmp_path: Path) -> None:
    """The fingerprint hook runs after the chaos hook, on the gradient as backward produced it."""
    import torch

    from spec.config import ChaosFault
    from trainer.chaos import Chaos
    from trainer.replay_gather import GradPrint

    def fingerprint(node_index: int) -> float:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        chaos = Chaos([ChaosFault(fault="sdc", node=1, step=2, target="grad")], tmp_path / str(node_index),
                      rank=node_index, node_index=node_index, ranks_per_node=1, node_name=f"node{node_index}")
        chaos.install_sdc([model])
        prints = GradPrint([model])
        chaos.step = 2
        prints.start()
        loss = model(torch.ones(2, 4)).square().mean()
        loss.backward()
        return prints.take()

    healthy, faulty = fingerprint(0), fingerprint(1)
    assert math.isfinite(healthy) and healthy > 0 and faulty == math.inf


def test_a_result_that_follows_the_node_is_hardware() -> None:
    same = {0: 3.0, 1: 9.0, 2: 3.1, 3: 3.2}  # replica 1's node corrupts whatever it computes
    cross = shifted(same, computed_by={0: 2.9 + 0.1, 1: 9.5})  # 0 computes batch 1 cleanly; 1 spoils batch 2
    v = decide(True, same, same, cross, [False, False], TOL)
    assert (v.verdict, v.suspects) == ("hardware", (1,))


def test_hardware_with_two_replicas_blames_the_higher_side() -> None:
    same = {0: 3.0, 1: 9.0}
    v = decide(True, same, same, [Computation(1, 0, 3.05), Computation(0, 1, 8.7)], [False], TOL)
    assert (v.verdict, v.suspects) == ("hardware", (1,))


def test_a_result_that_follows_the_batch_is_data_when_neighbours_are_fine() -> None:
    same = {0: 3.0, 1: 6.2}
    v = decide(True, same, same, shifted(same), [False, False], TOL)
    assert v.verdict == "data" and v.suspects == ()


def test_bad_everywhere_and_on_neighbours_is_dynamics() -> None:
    same = {0: 8.1, 1: 8.3}
    assert decide(True, same, same, shifted(same), [True, True], TOL).verdict == "dynamics"
    assert decide(True, same, same, shifted(same), [True, False], TOL).verdict == "data"  # a bad region


def test_nan_agrees_with_nan_and_one_replica_says_hardware_is_not_ruled_out() -> None:
    assert agree(NAN, math.inf, TOL) and not agree(NAN, 3.0, TOL) and agree(3.0, 3.0 + 1e-5, TOL)
    v = decide(True, {0: NAN}, {0: NAN}, [], [False, False], TOL)
    assert v.verdict == "data" and "hardware not ruled out" in v.reason


def test_vocabulary_maps_every_verdict_and_chaos_names_its_verdict() -> None:
    assert set(VERDICT_KIND) == {"data", "transient", "hardware", "dynamics"}
    assert all(k in FAULTS for k in VERDICT_KIND.values())
    assert CHAOS["sdc"].verdict == "hardware" and "sdc" in CHAOS["sdc"].detected_as
    assert CHAOS["bad_batch"].verdict == "data" and CHAOS["diverge"].verdict == "dynamics"
    assert FAULTS["sdc"].node_bound and not FAULTS["sdc"].in_step


def test_burn_in_compute_check_has_a_known_answer() -> None:
    assert reference_checksum() == KNOWN_CHECKSUM  # pure Python integers, no device
    assert compute_check("n1").verdict == "ok"
    bad = compute_check("n1", checksum=lambda device: KNOWN_CHECKSUM ^ 1)  # a device one bit off
    assert bad.verdict == "failed" and bad.fault_kind == "sdc"


def test_hardware_verdict_excludes_at_once_until_burn_in(tmp_path: Path) -> None:
    store = LemonNodeStore(tmp_path / "nodes.db", fault_threshold=3)
    store.record_hardware("node1", "sdc", 100.0, "replay")
    assert store.nodes_to_exclude(101.0) == ["node1"]  # one verdict, not three strikes
    assert "hardware verdict" in (store.exclusion_reason("node1") or "")
    store.mark_burn_in_passed("node1", 200.0)
    assert store.nodes_to_exclude(201.0) == []


def test_replay_budget_is_per_run_and_bounds_replays(tmp_path: Path) -> None:
    """Past max_replays a flagged step is not replayed (review returns None: skip as before), and the count
    survives a relaunch (it is read back from the run directory)."""
    from types import SimpleNamespace

    from health.detectors.loss_rules import LossVerdict, SpikeParams
    from spec.config import RunConfig
    from trainer.data import Sampler
    from trainer.replay import Budget, Replayer

    Budget.load(tmp_path).spend(1.5, persist=True)
    Budget.load(tmp_path).spend(0.5, persist=True)  # a later attempt adds to the same file
    used = Budget.load(tmp_path)
    assert (used.count, used.seconds) == (2, 2.0)
    cfg = RunConfig.model_validate({"policy": {"replay": {"enabled": True, "max_replays": 2}}})
    import torch
    engine = SimpleNamespace(loss_weight=1.0, dp_rank=0, dp_size=1, module=torch.nn.Linear(2, 2))
    chaos = SimpleNamespace(install_sdc=lambda parts: None)
    r = Replayer(cfg, engine, None, chaos, SimpleNamespace(phase="step"), 0, None, tmp_path)  # type: ignore[arg-type]
    assert r.review(5, [0, 1], float("nan"), LossVerdict(True, "nonfinite_loss"), Sampler(), [],
                    SpikeParams(), 0.0) is None


def test_a_replica_spanning_nodes_is_narrowed_to_the_first_stage_that_diverged() -> None:
    """dp2 x pp2, one rank per node: replica 0 is ranks 0 (stage 0) and 1 (stage 1). Rank 1's node spoils
    what it computes: stage 0's outputs agree on both computations, stage 1's do not, so only rank 1 (not
    rank 0, on a healthy node) is blamed. Without stage prints the whole replica stays suspect."""
    from trainer.replay import narrow
    from trainer.replay_gather import Gathered

    def g(stages: dict[int, dict[int, float]]) -> Gathered:
        ranks = {(0, 0): {0}, (0, 1): {1}, (1, 0): {2}, (1, 1): {3}}
        return Gathered({}, {}, {}, {}, {0: 0, 1: 1, 2: 2, 3: 3}, {0: 0, 1: 0, 2: 1, 3: 1}, 0.0, False,
                        stages, ranks)

    same = g({0: {0: 10.0, 1: 99.0}, 1: {0: 11.0, 1: 12.0}})  # replica 0 spoils its batch at stage 1
    cross = g({0: {0: 11.0, 1: 97.0}, 1: {0: 10.0, 1: 8.0}})  # replica 0 spoils replica 1's batch there too
    v = decide(True, {0: 9.0, 1: 3.1}, {0: 9.0, 1: 3.1}, [Computation(1, 0, 8.5), Computation(0, 1, 3.0)],
               [False], TOL)
    assert (v.verdict, v.suspects) == ("hardware", (0,))
    assert narrow(v, same, cross, TOL) == [1]
    assert narrow(v, g({}), g({}), TOL) is None  # no prints: nothing to narrow with
