"""Fuzz the config loader: any YAML document, and random values in every section, give either a valid
run or a ConfigError with field-named issues, never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config_load import ConfigError, load_config_data

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                    st.dictionaries(st.text(max_size=10), c, max_size=4)),
                      max_leaves=12)
SECTIONS = ["name", "cluster", "model", "data", "train", "checkpoint", "health", "policy", "chaos", "metrics",
            "parallel"]
FIELDS = {"cluster": ["nodes", "ranks_per_node", "spare_nodes", "backend"], "train": ["steps", "lr", "global_batch"],
          "checkpoint": ["every_steps", "keep"], "health": ["hang_timeout_s", "heartbeat_interval_s"],
          "parallel": ["dp", "tp", "pp", "microbatches"], "model": ["d_model", "n_heads", "n_layers"]}


def _check(doc: object) -> None:
    try:
        load_config_data(doc)
    except ConfigError as exc:
        assert exc.issues and all(isinstance(i.reason, str) and i.reason for i in exc.issues)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(SECTIONS), values, max_size=5))
def test_random_sections(doc: dict) -> None:
    _check(doc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), st.data())
def test_random_values_in_known_fields(section: str, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(FIELDS[section]))
    _check({section: {field: data.draw(scalars)}})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_text(text: str) -> None:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    _check(doc)
