"""Optuna samplers by the names a sweep config uses, seeded per trial so that parallel workers differ."""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from .space import SearchSpace

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "nsgaii", "gp")


def make_sampler(name: str | dict[str, Any], seed: int | None, kwargs: dict[str, Any],
                 space: SearchSpace) -> BaseSampler:
    """The sampler `name` (one of SAMPLERS) with `kwargs` passed through to Optuna, or a `_target_` block of a
    class SweeperSettings does not map to a name (any sampler class, Optuna's or a user's, instantiated by Hydra).

    Grid and QMC draw their points by a sequence the storage indexes, so one seed serves every worker.
    The others are re-seeded per trial with `trial_seed(seed, trial number)`: workers on any machine draw
    different points (trial numbers are unique), and a run with the same seed and history draws the same.
    """
    if isinstance(name, dict):
        return _from_block(name, seed)
    if name not in SAMPLERS:
        raise UserError(f"hydra.sweeper.sampler={name!r}; allowed: {', '.join(SAMPLERS)} or a _target_ block")
    if name == "gp" and importlib.util.find_spec("torch") is None:
        raise UserError("hydra.sweeper.sampler=gp: Optuna's GPSampler needs PyTorch (pip install torch)")
    factories: dict[str, Callable[..., BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler,
        "nsgaii": optuna.samplers.NSGAIISampler, "gp": optuna.samplers.GPSampler,
        "grid": lambda **kw: optuna.samplers.GridSampler(space.grid(), **kw)}
    try:
        factories[name](seed=seed, **kwargs)  # fail on bad knobs now, not in a worker
    except (TypeError, ValueError) as e:
        raise UserError(f"hydra.sweeper.samplers.{name}={kwargs}: {e}") from None
    if name in ("grid", "qmc") or seed is None:
        return factories[name](seed=seed, **kwargs)
    return TrialSeeded(lambda s: factories[name](seed=s, **kwargs), seed)


def _from_block(block: dict[str, Any], seed: int | None) -> BaseSampler:
    """A `_target_` block; its own `seed` wins over hydra.sweeper.seed. Seeded per trial when it takes a seed."""
    import inspect

    from hydra.utils import get_class, instantiate

    try:
        takes_seed = "seed" in inspect.signature(get_class(block["_target_"])).parameters
        seed = block.get("seed", seed)
        make = (lambda s: instantiate({**block, "seed": s})) if takes_seed else (lambda s: instantiate(block))
        sampler = make(seed)
    except Exception as e:  # an unknown class or a bad keyword: one line
        raise UserError(f"hydra.sweeper.sampler={block}: {str(e).splitlines()[0]}") from None
    return TrialSeeded(make, seed) if takes_seed and seed is not None else sampler


SEED_STRIDE = 1_000_003  # a prime above any study's trial count


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler: `seed * SEED_STRIDE + number` (below 2**32, as samplers take), so
    that two sweep seeds never share a trial's seed (with `seed + number`, seed s's trial n was seed 0's trial
    n + s); seed 0 keeps the sequence it always drew."""
    return (seed * SEED_STRIDE + number) % 2**32


class TrialSeeded(BaseSampler):
    """Delegates each trial to its own sampler, made with `trial_seed(seed, trial.number)` when the trial starts: a worker
    that asks K trials before drawing any still draws each from its own seed, so trial n's draw does not depend
    on how many trials were claimed with it (nor on the number of workers)."""

    KEPT = 256  # samplers of trials not yet ended (a batch's); older ones are dropped

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._by_trial: OrderedDict[int, BaseSampler] = OrderedDict()

    def of(self, number: int) -> BaseSampler:
        """The sampler trial `number` draws from."""
        if number not in self._by_trial:
            self._by_trial[number] = self._make(trial_seed(self._seed, number))
            while len(self._by_trial) > self.KEPT:
                self._by_trial.popitem(last=False)
        return self._by_trial[number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.of(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.of(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.of(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.of(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self.of(trial.number).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        for sampler in self._by_trial.values():
            sampler.reseed_rng()


def grid_size(space: SearchSpace) -> int:
    """How many points a grid search over `space` has."""
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size
