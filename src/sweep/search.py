"""The search phase's policy on the claim-and-drain loop: trials the sampler draws, within the budget, K at a
time (a worker's even share), trained alone or batched, told; then the tables and one line per trial."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import optuna
from optuna.trial import FrozenTrial

from ..errors import UserError
from . import budget, progress
from .budget import Step
from .context import Sweep
from .processes import COMMAND_STOPPED, Stopped

if TYPE_CHECKING:
    from .batch_runner import BatchRunner


class Search:
    """One worker's search: `ran` counts what brings it closer to retirement (trials trained alone, batched groups)."""

    def __init__(self, sweep: Sweep, batcher: BatchRunner | None) -> None:
        self.sweep, self.batcher, self.ran = sweep, batcher, 0

    def check(self, trials: Sequence[FrozenTrial]) -> None:
        if self.sweep.runner.stopping.is_set():
            raise Stopped(reason=COMMAND_STOPPED)
        reason = budget.too_many_failures(trials, self.sweep.started, self.sweep.settings)
        if reason:
            raise UserError(reason)

    def step(self, trials: Sequence[FrozenTrial]) -> Step:
        return budget.next_step(trials, self.sweep.budget)

    def claim_size(self, trials: Sequence[FrozenTrial]) -> int:
        """0 (retire: a fresh process takes over, TensorFlow keeps a little memory per model and program) once
        max_trials_per_worker is reached, checked only when a trial is to run."""
        s = self.sweep.settings
        if self.ran >= s.max_trials_per_worker:
            return 0
        if self.batcher is None or not self.batcher.together:  # trained one at a time: claim one at a time, so
            return 1  # the sampler learns from each
        return budget.claim_size(trials, self.sweep.budget, s, self.sweep.started, self.ran)

    def admit(self, study: optuna.Study, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> str | None:
        if budget.within_budget(trials, trial.number, self.sweep.budget):
            return None
        return "not run: another worker took the study's last trial first"

    def joins(self, study: optuna.Study, first: optuna.Trial) -> None:
        return None  # any: the sampler draws each trial

    def run(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        pruning = self.sweep.settings.pruning
        if self.batcher is not None:  # a batch counts its groups (one program each) and its trials trained alone
            self.ran += self.batcher.run(study, trials, pruning)
        else:
            self.sweep.runner.run_trial(study, trials[0], pruning)
            self.ran += 1

    def after(self, study: optuna.Study, trials: list[optuna.Trial], completed: bool) -> None:
        self.sweep.write_tables(study)
        if completed and not self.sweep.quiet:
            numbers, seen = [t.number for t in trials], study.get_trials(deepcopy=False)
            for i, trial in enumerate(trials):  # in turn, each counted as if the batch's next ones were not done
                progress.print_trial(study, seen, trial.number, self.sweep.budget, self.sweep.objectives[0],
                                     self.sweep.started, self.sweep.runner.live, later=frozenset(numbers[i + 1:]))
