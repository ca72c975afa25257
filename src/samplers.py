"""Optuna samplers and pruners by the names a sweep config uses."""
from __future__ import annotations

from typing import Any

import optuna

from src.errors import UserError
from src.search_space import SearchSpace

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc")
PRUNERS = ("none", "median", "hyperband", "successive_halving", "threshold")


def make_sampler(name: str, seed: int | None, kwargs: dict[str, Any], space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler `name` (one of SAMPLERS), seeded, with `kwargs` passed through to Optuna."""
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **kwargs)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **kwargs)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed, **kwargs)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, **kwargs)
    except TypeError as e:
        raise UserError(f"hydra.sweeper.samplers.{name}: {e}") from None
    raise UserError(f"hydra.sweeper.sampler={name!r}; allowed: {', '.join(SAMPLERS)}")


def make_pruner(name: str, kwargs: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner `name` (one of PRUNERS) with `kwargs`; `threshold` needs `lower` or `upper`."""
    pruners = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "hyperband": optuna.pruners.HyperbandPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "threshold": optuna.pruners.ThresholdPruner}
    if name not in pruners:
        raise UserError(f"hydra.sweeper.pruner={name!r}; allowed: {', '.join(PRUNERS)}")
    try:
        return pruners[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"hydra.sweeper.pruners.{name}={kwargs}: {e}") from None


def grid_size(space: SearchSpace) -> int:
    """How many points a grid search over `space` has."""
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size
