"""Trial configs composed fast: Hydra composes the first config of each shape in full (the
defaults tree, every config file, the schemas); the next trials of that shape, which differ only in plain
values, copy it and set their values with Hydra's own override step.

A shape is the list of override keys with the value of every override that is not a plain value: a config
group choice (`optimizer=sgd`), a dict or list, an addition or deletion, a Hydra setting. So
`model.units=35 optimizer=sgd` and `model.units=64 optimizer=sgd` share a shape, `optimizer=adam` does not.
"""
from __future__ import annotations

import copy
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, DictConfig, OmegaConf

from .hydra_internals import apply_overrides, overrides_dirname

_ABSENT = object()


class Composer:
    """`load(overrides)` gives what Hydra's `load_sweep_config(master, overrides)` gives, faster."""

    def __init__(self, loader: Any, master: DictConfig) -> None:
        self.loader, self.master = loader, master
        self.parser = OverridesParser.create()
        self.plain: dict[tuple[str, ...], frozenset[int]] = {}  # key shape -> positions that set a leaf value
        self.templates: dict[tuple[Any, ...], DictConfig] = {}

    def load(self, overrides: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(overrides)
        keys = tuple(f"{o.type.name} {o.key_or_group}" for o in parsed)
        plain = self.plain.get(keys)
        if plain is not None:
            template = self.templates.get(_shape(keys, parsed, plain))
            if template is not None:
                return self._fill(template, parsed, plain)
        cfg = self.loader.load_sweep_config(self.master, overrides)
        if plain is None:
            plain = self.plain[keys] = frozenset(i for i, o in enumerate(parsed) if self._sets_leaf(o, parsed, cfg))
        self.templates[_shape(keys, parsed, plain)] = copy.deepcopy(cfg)
        return cfg

    def _fill(self, template: DictConfig, parsed: list[Override], plain: frozenset[int]) -> DictConfig:
        """The template with this trial's plain values, set as Hydra sets them (types checked by the schema)."""
        cfg = copy.deepcopy(template)
        apply_overrides([parsed[i] for i in sorted(plain)], cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in task]
        cfg.hydra.job.override_dirname = overrides_dirname(task, cfg.hydra.job.config.override_dirname)
        return cfg

    def _sets_leaf(self, override: Override, parsed: list[Override], cfg: DictConfig) -> bool:
        """Whether `override` only sets one leaf value, which no other value override touches."""
        key = override.key_or_group
        if override.type not in (OverrideType.CHANGE, OverrideType.FORCE_ADD) or override.package is not None \
                or override.is_hydra_override() or self._group(override):
            return False
        if not isinstance(override.value(), (str, int, float, bool, type(None))):
            return False
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        if node is _ABSENT or isinstance(node, Container):
            return False
        return not any(o is not override and not self._group(o) and (
            o.key_or_group == key or o.key_or_group.startswith(key + ".") or key.startswith(o.key_or_group + "."))
            for o in parsed)

    def _group(self, override: Override) -> bool:
        """Whether `override` chooses a config group's option (it shapes the composition, sets no value), as
        Hydra's defaults list tells them apart."""
        return self.loader.repository.group_exists(override.key_or_group) and not isinstance(override.value(), dict)


def _shape(keys: tuple[str, ...], parsed: list[Override], plain: frozenset[int]) -> tuple[Any, ...]:
    return keys, tuple(o.input_line for i, o in enumerate(parsed) if i not in plain)
