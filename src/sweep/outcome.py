"""What one run of a trial came to (`TrialOutcome`), and `tell`: the one place that records it in the study.

Every path ends here: a trial trained alone, one trained in a batch, a confirmation or test run. KerasTuner
tells a failed trial from a fatal error the same way: a failed trial is recorded and the sweep goes on; a
fatal one (its params cannot even be drawn) gives the trial back and stops the worker.
"""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, first_line
from .optuna_internals import frozen, set_user_attrs
from .processes import signals_held, stop_received
from .recovery import give_back

RESERVED = ("worker", "error", "interrupted", "run_dir")  # the sweeper's own user attributes


@dataclass(frozen=True)
class TrialOutcome:
    """Metrics (what the task returned), or an error as one line; `pruned_at` the epoch a pruner stopped it."""

    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    fatal: bool = False  # the worker stops; the trial is given back (not counted)
    retry: bool = False  # a fatal trial's params are queued again (the machine failed, not the trial)
    pruned_at: int | None = None

    @classmethod
    def of(cls, returned: Any, objectives: list[str], pruned_at: int | None = None) -> TrialOutcome:
        """From what a task returned or raised: a dict of metrics, one value per objective (a tuple or list, as
        hydra-optuna-sweeper's multi-objective tasks return), or one number (the first objective's)."""
        if isinstance(returned, BaseException):
            return cls.failed(returned)
        if isinstance(returned, dict):
            return cls(metrics=dict(returned), pruned_at=pruned_at)
        if isinstance(returned, (list, tuple)):
            if len(returned) != len(objectives):
                return cls(error=f"the task returned {len(returned)} values for {len(objectives)} objectives "
                                 f"{objectives}: return one value per direction")
            return cls(metrics=dict(zip(objectives, returned)), pruned_at=pruned_at)
        return cls(metrics={objectives[0]: returned}, pruned_at=pruned_at)

    @classmethod
    def failed(cls, error: BaseException | str, fatal: bool = False) -> TrialOutcome:
        """A failed run; one the machine failed (disk full, a read-only or unwritable folder) is fatal and
        retried, so it spends no budget and its params are run again once the machine is mended."""
        if isinstance(error, str):
            return cls(error=error, fatal=fatal)
        machine = _machine_error(error)
        if machine is not None:
            return cls(error=f"{first_line(error)}: the machine failed, not the trial ({os.strerror(machine.errno)}); "
                             f"it is given back: free disk space or make the folder writable, then rerun the same "
                             f"command to resume", fatal=True, retry=True)
        return cls(error=first_line(error), fatal=fatal)

    def values(self, objectives: list[str]) -> list[float] | None:
        """The objectives' values, or None when one is missing or not a finite number."""
        values = [self.metrics.get(m) for m in objectives]
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        return values if ok else None


MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _machine_error(error: BaseException) -> OSError | None:
    """The OSError of the machine (disk full, read-only or unwritable folder) behind `error`, if any."""
    seen: BaseException | None = error
    for _ in range(10):  # the chain of causes, however the task wrapped it
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in MACHINE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, objectives: list[str],
         run_dir: str) -> FrozenTrial | None:
    """Record `outcome` as the trial's result, whole (stop signals held: a signal cutting a storage transaction
    would leave SQLite locked): its folder, one user attribute per plain metric (optuna-dashboard sorts and
    filters by them), then COMPLETE with the objectives' values, PRUNED, or FAIL with the error. Returns the
    told trial, or None when another worker failed it meanwhile (its heartbeat stopped for the grace period).
    A fatal outcome is given back instead (not counted; queued again if `retry`) and raised as a `UserError`; an
    error while a stop signal came is the stop's, raised as such (the claim gives the trial back)."""
    stop = stop_received()
    if outcome.error is not None and stop is not None:
        raise stop
    if outcome.fatal:
        give_back(study, frozen(study, trial), str(outcome.error), retry=outcome.retry)
        raise UserError(str(outcome.error))
    try:
        with signals_held():
            _record(study, trial, outcome, objectives, run_dir)
    except optuna.exceptions.UpdateFinishedTrialError:
        print(f"trial {trial.number} was failed by another worker while it ran (no heartbeat within "
              f"the grace period); its result is not recorded", flush=True)
        return None
    return frozen(study, trial)


def _record(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, objectives: list[str], run_dir: str) -> None:
    """Its folder, metrics and error as user attributes (one transaction), then the state and values."""
    attrs: dict[str, Any] = {"run_dir": run_dir}
    if outcome.error is not None:
        set_user_attrs(study, trial, {**attrs, "error": outcome.error})
        _tell(study, trial, state=TrialState.FAIL)
        return
    attrs.update({key: value for key, value in outcome.metrics.items()
                  if isinstance(value, (bool, int, float, str)) and key not in RESERVED})
    values = outcome.values(objectives)
    if outcome.pruned_at is None and values is None:
        found = [outcome.metrics.get(m) for m in objectives]
        attrs["error"] = f"objective {objectives} not in the task's metrics or not finite: {found}"
    set_user_attrs(study, trial, attrs)
    if outcome.pruned_at is not None:
        _tell(study, trial, state=TrialState.PRUNED)
    elif values is None:
        _tell(study, trial, state=TrialState.FAIL)
    else:
        _tell(study, trial, values=values)


def _tell(study: optuna.Study, trial: optuna.Trial, **result: Any) -> None:
    """`study.tell`, minus the grid sampler's `study.stop()` on its last point, which ask-and-tell forbids
    (Optuna stores the result before that call; the budget already ends the sweep)."""
    try:
        study.tell(trial, skip_if_finished=True, **result)  # failed meanwhile as stale: Optuna warns
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
