"""Pruning: the pruner by name, and the per-epoch hook through which a trial reports to it.

The runner sets the hook of the trial it runs in a `ContextVar`; the task passes it to training.
"""
from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Any, Callable

import optuna

from ..errors import UserError
from ..metrics import rounded
from .processes import COMMAND_STOPPED, Stopped, signals_held

PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "threshold": optuna.pruners.ThresholdPruner}


def make_pruner(name: str | dict[str, Any], kwargs: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner `name` (one of PRUNERS) with `kwargs` (`threshold` needs `lower` or `upper`), or a
    `_target_` block instantiated by Hydra (hydra-optuna-sweeper's form)."""
    if isinstance(name, dict):
        from hydra.utils import instantiate

        try:
            return instantiate(name)
        except Exception as e:
            raise UserError(f"hydra.sweeper.pruner={name}: {str(e).splitlines()[0]}") from None
    if name not in PRUNERS:
        raise UserError(f"hydra.sweeper.pruner={name!r}; allowed: {', '.join(PRUNERS)}")
    try:
        return PRUNERS[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"hydra.sweeper.pruners.{name}={kwargs}: {e}") from None


class PruningHook:
    """Reports the objective after each epoch to the trial (with or without a pruner, so optuna-dashboard
    draws learning curves; Optuna takes no reports on multi-objective studies) and, when `enabled`, asks the
    pruner whether to stop; also hands each epoch to `show` (the live progress line), with the trial's epoch
    count the task sets in `epochs`."""

    def __init__(self, trial: optuna.Trial, metric: str, enabled: bool, report: bool = True,
                 show: Callable[[int, int | None, dict[str, float]], None] | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.trial, self.metric, self.enabled, self.report, self.show = trial, metric, enabled, report, show
        self.stopping = stopping  # set: the sweep command asked this worker to stop (raises at the next epoch)
        self.epochs: int | None = None
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, logs: dict[str, float]) -> bool:
        if self.stopping is not None and self.stopping.is_set():
            raise Stopped(reason=COMMAND_STOPPED)
        if self.show is not None:
            self.show(epoch, self.epochs, logs)
        if not self.report or self.metric not in logs:
            return False
        with signals_held():  # Ctrl-C waits for the storage write: cut mid-transaction, it leaves SQLite locked
            self.trial.report(rounded(logs[self.metric]), epoch)
            prune = self.enabled and self.trial.should_prune()
        if prune:
            self.pruned_at = epoch
        return prune


# The hook of the trial this process runs now; None outside a trial (e.g. the best trial's replay).
current_hook: ContextVar[PruningHook | None] = ContextVar("current_hook", default=None)
