"""Reading run.yaml: YAML → overrides → pydantic types → relations between fields.

Every failure becomes a :class:`ConfigError` holding ``(field.path, reason)`` pairs, so the CLI can print
one line per problem and exit 2 before anything is launched.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spec.config import NET_FAULT_KINDS, RunConfig


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(Exception):
    """A run.yaml that cannot be run; ``issues`` says which field and how to fix it."""

    def __init__(self, issues: list[ConfigIssue], source: str = "run.yaml") -> None:
        self.issues = issues
        self.source = source
        super().__init__("\n".join(f"{source}: {i}" for i in issues))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as YAML, so lists and numbers work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([ConfigIssue("--set", f"{text!r} is not of the form a.b=value")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(key, f"value {raw!r} is not valid YAML: {exc}")]) from None
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set a nested key, creating sections as needed; numeric keys index into lists."""
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError([ConfigIssue(".".join(keys[: i + 1]), "no such list item")])
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError([ConfigIssue(".".join(keys[:i]), "is not a section")])
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _from_validation(err: ValidationError) -> list[ConfigIssue]:
    issues = []
    for e in err.errors():
        loc = _loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against the run.yaml reference in README.md)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        issues.append(ConfigIssue(loc, msg))
    return issues


def check_relations(cfg: RunConfig) -> list[ConfigIssue]:
    """Checks that involve more than one field; each issue says what to change."""
    out: list[ConfigIssue] = []
    world = cfg.cluster.world_size
    if isinstance(cfg.checkpoint.every_steps, int) and cfg.checkpoint.every_steps > cfg.train.steps:
        out.append(ConfigIssue("checkpoint.every_steps", f"{cfg.checkpoint.every_steps} is larger than "
                               f"train.steps={cfg.train.steps}; lower it so at least one checkpoint is taken"))
    if cfg.health.agent_timeout < 2 * cfg.health.heartbeat_interval_s:
        out.append(ConfigIssue("health.agent_timeout_s", f"{cfg.health.agent_timeout_s} must be at least twice "
                               f"health.heartbeat_interval_s={cfg.health.heartbeat_interval_s}"))
    if 0 < cfg.health.agent_gap_multiple < 2:
        out.append(ConfigIssue("health.agent_gap_multiple", f"{cfg.health.agent_gap_multiple} must be 0 (the "
                               "fixed agent_timeout_s) or at least 2 (a heartbeat gap is not yet silence)"))
    if cfg.health.heartbeat_interval_s >= cfg.health.hang_timeout_s:
        out.append(ConfigIssue("health.heartbeat_interval_s", f"{cfg.health.heartbeat_interval_s} must be below "
                               f"health.hang_timeout_s={cfg.health.hang_timeout_s}"))
    if cfg.policy.backoff_initial_s > cfg.policy.backoff_max_s:
        out.append(ConfigIssue("policy.backoff_initial_s", "must not exceed policy.backoff_max_s"))
    if cfg.train.schedule.warmup_steps >= cfg.train.steps:
        out.append(ConfigIssue("train.schedule.warmup_steps",
                               f"must be below train.steps={cfg.train.steps}"))
    if cfg.train.schedule.min_lr > cfg.train.lr:
        out.append(ConfigIssue("train.schedule.min_lr", f"must not exceed train.lr={cfg.train.lr}"))
    out += _check_layout(cfg, world)
    out += _check_chaos(cfg, world)
    out += _check_metrics(cfg)
    out += _check_telemetry(cfg)
    if cfg.data.source == "files" and not cfg.data.paths:
        out.append(ConfigIssue("data.paths", "give at least one text file when data.source is 'files'"))
    for i, p in enumerate(cfg.data.paths):
        if not Path(p).is_file():
            out.append(ConfigIssue(f"data.paths.{i}", f"{p} is not a readable file"))
    return out


def _check_layout(cfg: RunConfig, world: int) -> list[ConfigIssue]:
    """Shapes and the (dp, pp, tp) layout against the cluster (trainer.parallel.validate has the rules)."""
    from trainer.parallel.validate import validate_layout
    out: list[ConfigIssue] = []
    par, m = cfg.parallel, cfg.model
    if m.d_model % m.n_heads:
        out.append(ConfigIssue("model.n_heads", f"d_model={m.d_model} is not divisible by n_heads={m.n_heads}"))
    errors, _ = validate_layout(cfg, world)
    seen = {i.path for i in out}
    out += [ConfigIssue(f, msg) for f, msg in errors if f not in seen]
    if any(i.path == "parallel" for i in out):
        return out
    dp = par.dp_of(world)
    if cfg.train.global_batch % (dp * par.microbatches):
        out.append(ConfigIssue("train.global_batch", f"{cfg.train.global_batch} is not divisible by "
                               f"dp*microbatches={dp * par.microbatches}"))
    return out


def layout_warnings(cfg: RunConfig) -> list[str]:
    """Defaults chosen for the user, and layouts that run but waste hardware (odd dimensions, a TP
    group across nodes)."""
    from trainer.parallel.validate import validate_layout
    return list(cfg._chosen_defaults) + validate_layout(cfg)[1]


def default_microbatches(per_replica: int, pp: int) -> int | None:
    """The smallest micro-batch count >= pp dividing the per-replica batch (one per stage at least,
    so 1F1B can run); None when the batch is too small for any."""
    return next((m for m in range(pp, per_replica + 1) if per_replica % m == 0), None)


def _choose_microbatches(cfg: RunConfig) -> None:
    """With pp > 1 and no ``parallel.microbatches`` given, pick a valid count instead of failing on
    the default 1; the choice lands in the resolved config and is said as a warning."""
    par = cfg.parallel
    if par.pp == 1 or "microbatches" in par.model_fields_set:
        return
    world = cfg.cluster.world_size
    dp = par.dp_of(world)
    if dp < 1 or cfg.train.global_batch % dp:
        return  # the layout check reports the real problem
    m = default_microbatches(cfg.train.global_batch // dp, par.pp)
    if m is None:
        return
    par.microbatches = m
    cfg._chosen_defaults.append(
        f"parallel.microbatches not set: using {m} (the smallest count >= pp={par.pp} dividing "
        f"global_batch/dp = {cfg.train.global_batch // dp}); set it to silence this")


def _check_chaos(cfg: RunConfig, world: int) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    for i, f in enumerate(cfg.chaos):
        if f.rank is not None and f.rank >= world:
            out.append(ConfigIssue(f"chaos.{i}.rank", f"rank {f.rank} does not exist: the world has {world} ranks "
                                   f"(0..{world - 1})"))
        if f.node is not None and f.node >= cfg.cluster.nodes:
            out.append(ConfigIssue(f"chaos.{i}.node", f"node {f.node} does not exist: the cluster has "
                                   f"{cfg.cluster.nodes} nodes (0..{cfg.cluster.nodes - 1})"))
        if f.step >= cfg.train.steps:
            out.append(ConfigIssue(f"chaos.{i}.step", f"step {f.step} is never reached: train.steps={cfg.train.steps}"))
        if f.fault == "node_failure" and f.node is None and f.rank is None:
            out.append(ConfigIssue(f"chaos.{i}.node", "node_failure needs a node (or a rank on it)"))
        if f.fault in NET_FAULT_KINDS:
            out += _check_net_fault(cfg, i, f.fault)
    return out


def _check_net_fault(cfg: RunConfig, i: int, fault: str) -> list[ConfigIssue]:
    """partition and slow_link act on a node's real link: only where the backend's nodes are namespaced
    (its plugin says why not, if not)."""
    from orchestrator.launcher.registry import net_fault_refusal
    why = net_fault_refusal(cfg.cluster.backend, fault)
    return [] if why is None else [ConfigIssue(f"chaos.{i}.fault", why)]


def _check_telemetry(cfg: RunConfig) -> list[ConfigIssue]:
    """Addresses only: binding beyond loopback is allowed because every datagram is authenticated."""
    out = []
    t = cfg.telemetry
    if t.bind_host is not None:
        try:
            ipaddress.ip_address(t.bind_host)
        except ValueError:
            out.append(ConfigIssue("telemetry.bind_host", f"{t.bind_host!r} is not an IP address"))
    if t.advertise_host is not None:
        bad = not t.advertise_host.strip() or any(c in t.advertise_host for c in " \n\r\x00:")
        if bad or t.advertise_host == "0.0.0.0":
            out.append(ConfigIssue("telemetry.advertise_host", f"{t.advertise_host!r}: give the address or host "
                                   "name the ranks send to (no port)"))
    return out


def _check_metrics(cfg: RunConfig) -> list[ConfigIssue]:
    if cfg.metrics.tensorboard and importlib.util.find_spec("tensorboard") is None:
        return [ConfigIssue("metrics.tensorboard", "needs the tensorboard package: "
                            "pip install 'orchestrator[tensorboard]' (or set it to false)")]
    host = cfg.metrics.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return [ConfigIssue("metrics.host", f"{host!r} is not an IP address or 'localhost'")]
    if not loopback and not cfg.metrics.allow_public_bind:
        return [ConfigIssue("metrics.host", f"{host} is not loopback; set metrics.allow_public_bind: true to "
                            "expose the endpoint beyond this machine")]
    return []


def load_config_data(data: Any, overrides: list[str] | None = None, source: str = "run.yaml") -> RunConfig:
    """Validate an already-parsed document (plus ``a.b=value`` overrides)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", f"the top level must be a mapping of sections, got {type(data).__name__}")],
                          source)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_from_validation(err), source) from None
    _choose_microbatches(cfg)
    issues = check_relations(cfg)
    if issues:
        raise ConfigError(issues, source)
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line (it spans several, with a caret under the column)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a run.yaml; raises ConfigError with every problem found."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", "no such file")], str(p)) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue("", "is a directory; give the run.yaml file")], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError([ConfigIssue("", f"cannot be read ({reason})")], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {_yaml_problem(exc)}")], str(p)) from None
    return load_config_data(data, overrides, str(p))
