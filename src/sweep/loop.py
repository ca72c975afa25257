"""The claim-and-drain loop: what every worker runs, for the search and for the confirmation and test queues.

    drain(study, policy):
        fail stale trials (Optuna's heartbeat check), give back unclaimed ones, then ask the policy:
        done -> return; wait -> pause (others' running trials may give slots back); ask ->
        claim up to K trials, each asked, beating and owned at once; policy.run(trials) trains and tells them

A claimed trial leaves the loop told, or given back: on any exit but a tell (Ctrl-C, a signal, an error) its
heartbeat stops first, then it is failed as interrupted and its params are queued again (a no-op once told).
The search and the queues differ only in their `Policy`.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack, suppress
from typing import Callable, Literal, Protocol, Sequence

import optuna
from optuna.trial import FrozenTrial

from ..errors import first_line
from .budget import Step
from .optuna_internals import ask_waiting, frozen, heartbeat, storage_url
from .processes import INTERRUPTED, signals_held, stop_received
from .recovery import Unclaimed, Unretried, fail_stale, give_back
from .storage import cause, masking


class Policy(Protocol):
    """What a phase decides; the loop does the rest."""

    def check(self, trials: Sequence[FrozenTrial]) -> None:
        """Raise `UserError` when the phase must stop (e.g. too many failed trials)."""

    def step(self, trials: Sequence[FrozenTrial]) -> Step:
        """Whether to ask for a trial, wait for others' running ones, or stop: the phase is done."""

    def claim_size(self, trials: Sequence[FrozenTrial]) -> int:
        """How many trials to claim now; 0 to retire this worker instead."""

    def admit(self, study: optuna.Study, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> str | None:
        """Why a trial just asked may not run (it is given back, not queued again), or None; `trials`: the
        study's, read after the ask."""

    def joins(self, study: optuna.Study, first: optuna.Trial) -> Callable[[FrozenTrial], bool] | None:
        """Which waiting trials may join a claim that began with `first` (the claim ends when none is left);
        None: whatever Optuna's ask gives."""

    def run(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        """Train the claimed trials and tell each one."""

    def after(self, study: optuna.Study, trials: list[optuna.Trial], completed: bool) -> None:
        """After a claim ended, its trials told (`completed`) or given back."""


def drain(study: optuna.Study, policy: Policy, owner: str, grace: float, heartbeat_interval: float) -> Literal["done", "retired"]:
    """Claim and run trials until the policy's phase is done (or this worker should retire)."""
    unclaimed, unretried, patience = Unclaimed(grace), Unretried(grace), Patience(heartbeat_interval)
    while True:
        fail_stale(study)  # given back and queued again
        trials = study.get_trials(deepcopy=False)
        if unclaimed.recover(study, trials) | unretried.recover(study, trials):  # both look at the same trials
            trials = study.get_trials(deepcopy=False)
        policy.check(trials)
        step = policy.step(trials)
        if step == "done":
            return "done"
        if step == "wait":
            patience.pause()
            continue
        patience.reset()
        n = policy.claim_size(trials)
        if n == 0:
            return "retired"
        claim = Claim(study, owner)
        try:
            with claim:
                claim.take(n, policy)
                if claim.trials:
                    policy.run(study, claim.trials)
        except BaseException:
            if claim.trials:  # the tables; an error there (the folder that failed the trial) must not hide this one
                with suppress(Exception):
                    policy.after(study, claim.trials, False)
            raise
        if claim.trials:
            policy.after(study, claim.trials, True)


class Claim:
    """The trials a worker asked for in one go: each created, beating and owned at once (stop signals held,
    so all of it or none). Leaving the block stops their heartbeats; leaving it by an exception then gives
    back every trial asked (Optuna's tell makes that a no-op for those told already)."""

    def __init__(self, study: optuna.Study, owner: str) -> None:
        self.study, self.owner = study, owner
        self.asked: list[optuna.Trial] = []
        self.trials: list[optuna.Trial] = []  # the admitted ones
        self._beats = ExitStack()
        self._beat_failure_told = threading.Lock()  # taken by the first failed beat, never given back

    def take(self, n: int, policy: Policy) -> None:
        """Up to `n` trials the policy admits; the first it refuses is given back and ends the claim, as does
        finding no waiting trial the policy lets join it."""
        joins, trials = None, []  # the study's trials, read once after each ask for the policy's two looks
        while len(self.trials) < n and (not self.trials or policy.step(trials) == "ask"):
            with signals_held():
                trial = self.study.ask() if joins is None else ask_waiting(self.study, joins)
                if trial is None:
                    return
                self._beats.enter_context(heartbeat(self.study, trial, self._tell_beat_failure))
                trial.set_user_attr("worker", self.owner)
                self.asked.append(trial)
            trials = self.study.get_trials(deepcopy=False)
            refused = policy.admit(self.study, trial, trials)
            if refused:
                give_back(self.study, frozen(self.study, trial), refused, retry=False)
                return
            self.trials.append(trial)
            if len(self.trials) == 1:
                joins = policy.joins(self.study, trial)

    def _tell_beat_failure(self, error: Exception) -> None:
        """One line per claim, however many of its trials' beats fail (a storage down for a while)."""
        if self._beat_failure_told.acquire(blocking=False):
            message = f"warning: the study's storage took no heartbeat ({cause(error)}); trying again every beat"
            print(masking(storage_url(self.study))(message), file=sys.stderr, flush=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self._beats.close()  # heartbeats first: a beat's SQLite transaction beside the give-back can deadlock both
        if error is None:
            return
        # a stop signal that a library turned into another error (OmegaConf did: AttributeError, in a SLURM job
        # warned mid-trial) is the stop's: the trials are given back for it, and it goes on as such
        stop = None if isinstance(error, KeyboardInterrupt) else stop_received()
        if isinstance(error, KeyboardInterrupt) or stop is not None:
            reason = str(stop or error) or INTERRUPTED
        else:
            reason = f"its worker stopped: {first_line(error, typed=False)}"
        for trial in self.asked:
            give_back(self.study, frozen(self.study, trial), reason)
        if stop is not None:
            raise stop from error


class Patience:
    """Pauses while other workers' trials run: 50 ms at first, doubling up to 2 s (or the heartbeat interval,
    if shorter). A batch next door often ends within a second; a long wait should not query the storage many
    times a second."""

    def __init__(self, heartbeat_interval: float) -> None:
        self.longest = min(2.0, heartbeat_interval)
        self.reset()

    def reset(self) -> None:
        self.next = 0.05

    def pause(self) -> None:
        time.sleep(self.next)
        self.next = min(2 * self.next, self.longest)
