"""What a sweep definition sets for every trial, as overrides of the training command: the replay line spells it
out, and a resumed study checks it did not change.

A trial's config comes from the sweep's primary config, its sweep definition (`sweep=NAME`: what it sets outside
`params:` applies to every trial, e.g. fashion10's `data=fashion_mnist_10` and `model.batch_norm: true`) and the
trial's overrides. `python -m src.train` knows no sweep definition, so what differs is found by composing the
training command's config and comparing: config group choices first, then every other value.
"""
from __future__ import annotations

import re
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .space import format_value, override_key

# What a sweep sets for its trials that changes what a run prints, tests or saves, not its scores (sweep.yaml,
# the runner's model saving): the replay keeps the training command's own (progress bars, the test set).
OUTPUT_ONLY = frozenset({"trainer.verbose", "trainer.test", "trainer.save_model"})
_BARE = re.compile(r"[A-Za-z_][\w./-]*|\$\{[^'\\]*\}")  # an override value Hydra reads as this string unquoted


def definition(loader: Any, config_name: str, trial: DictConfig, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(settings, still different): what makes `config_name` with `overrides` compose `trial`'s config (a job
    config: task keys and the hydra node's group choices), as overrides; the keys a check finds still different."""
    groups = _group_changes(trial, _compose(loader, config_name, overrides))
    values = _value_changes(_task(trial), _task(_compose(loader, config_name, groups + overrides)))
    return groups + values, differences(loader, config_name, trial, groups + values + overrides)


def differences(loader: Any, config_name: str, trial: DictConfig, line: list[str]) -> list[str]:
    """The keys whose values `config_name` composed with `line` does not give as `trial` had them."""
    return [override_key(change) for change in _value_changes(_task(trial), _task(_compose(loader, config_name, line)))]


def _compose(loader: Any, config_name: str, overrides: list[str]) -> DictConfig:
    return loader.load_configuration(config_name=config_name, overrides=overrides, run_mode=RunMode.RUN)


def _task(cfg: DictConfig) -> dict[str, Any]:
    """The task's keys, unresolved (an interpolation is compared and written as written)."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}


def _group_changes(trial: DictConfig, replay: DictConfig) -> list[str]:
    """`group=option` for each config group (not Hydra's own, nor the sweep definition) chosen otherwise."""
    want, have = trial.hydra.runtime.choices, replay.hydra.runtime.choices
    changes = []
    for group, option in want.items():
        if group.startswith("hydra/") or group == "sweep" or "@" in group or have.get(group, option) == option:
            continue
        changes.append(f"{'' if group in have else '+'}{group}={'null' if option is None else option}")
    return changes


def _value_changes(want: dict[str, Any], have: dict[str, Any], prefix: str = "") -> list[str]:
    """The overrides that turn `have` into `want`: changed values, added keys (`+`), removed ones (`~`)."""
    changes = []
    for key, value in want.items():
        path = f"{prefix}{key}"
        if path in OUTPUT_ONLY:
            continue
        if key not in have:
            changes.append(f"+{path}={override_value(value)}")
        elif isinstance(value, dict) and isinstance(have[key], dict):
            changes += _value_changes(value, have[key], f"{path}.")
        elif value != have[key] or type(value) is not type(have[key]):
            changes.append(f"{path}={override_value(value)}")
    return changes + [f"~{prefix}{key}" for key in have if key not in want and f"{prefix}{key}" not in OUTPUT_ONLY]


def override_value(value: Any) -> str:
    """A config value as Hydra override text: `null`, `true`, `0.001`, `relu`, `[0,1]`, `{a:1}`, `'a b'`."""
    if isinstance(value, list):
        return "[" + ",".join(map(override_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if not isinstance(value, str):
        return format_value(value)  # null, true, a number
    if _BARE.fullmatch(value) and value.lower() not in ("null", "true", "false", "nan", "inf"):
        return value
    # Hydra's quoted strings: a quote is escaped, and so are the backslashes before a quote or at the end
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
