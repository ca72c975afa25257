"""Trials cut short (Ctrl-C, a signal, a dead worker, a trial asked past the budget): failed so that they no
longer count, and their params queued again, at most MAX_RETRY times.

Coordination is Optuna's own: a heartbeat thread marks a running trial alive, the storage's stale-trial check
finds the ones whose worker stopped beating, and Optuna's retry callback (`queue_again`) queues their params
again. Only the process whose FAIL lands queues the retry, so a trial is never queued twice; the trial holds
its slot from its FAIL until its retry is queued (`budget.awaiting_retry`), so no fresh trial takes it.
"""
from __future__ import annotations

import copy
import sys
import time

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .budget import RETRY, awaiting_retry
from .optuna_internals import fail, free_grid_point, has_heartbeat, set_system_attr, set_user_attrs, stale_trials

MAX_RETRY = 3  # a trial cut short is queued again at most this often
OWN_ATTRS = ("worker", "error", "interrupted")  # belong to one attempt, not to the params queued again
STALE = "its worker stopped: no heartbeat within the grace period"  # as trials.csv tells older stale trials


def queue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a cut-short trial's params as a new WAITING trial (Optuna's retry callback, at most MAX_RETRY
    times), without its owner or last heartbeat: those belong to the attempt that ended."""
    fresh = copy.deepcopy(trial)
    fresh.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OWN_ATTRS}
    fresh.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in ("heartbeat", RETRY)}
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, fresh)


def give_back(study: optuna.Study, trial: FrozenTrial, reason: str, retry: bool = True) -> bool:
    """Fail a running trial whose run was cut short so that it no longer counts, then queue its params again.

    Returns False when the trial had finished already (another worker or its own process got there first):
    only the process whose FAIL lands queues the retry, as with Optuna's stale-trial check.
    """
    retry = retry and bool(trial.params or "fixed_params" in trial.system_attrs) and \
        len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY  # a queued trial cut short before it drew: none
    try:
        set_user_attrs(study, trial, {"interrupted": True, "error": reason})
        if retry:
            set_system_attr(study, trial, RETRY, True)  # its slot stays taken from the FAIL to the queued retry
        else:  # no retry will run its grid point: another trial may
            free_grid_point(study, trial)
        if not fail(study, trial):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry:
        queue_again(study, trial)
    return True


def fail_stale(study: optuna.Study) -> list[int]:
    """Give back the trials whose worker stopped beating (Optuna's stale-trial check), each as one cut short:
    Optuna's `fail_stale_trials` would fail them all before queuing any, leaving their slots free meanwhile."""
    return [t.number for t in stale_trials(study) if give_back(study, t, STALE)]


def give_back_owned(study: optuna.Study, owner: str, reason: str) -> list[int]:
    """Give back the running trials of a worker process known to have ended; their numbers."""
    mine = [t for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == owner]
    return [t.number for t in mine if give_back(study, t, reason)]


class Unclaimed:
    """Running trials that never beat: their process died between creating them and their first heartbeat,
    which Optuna's thread records a moment later (longer while the storage is busy), owner set or not; Optuna's
    stale-trial check never sees them. Given back once this process has seen one without a heartbeat for the
    grace period (timed by this process's own clock, so no two machines' clocks are compared). A trial seen
    beating is not asked about again: a beat that stops later is the stale-trial check's."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.seen: dict[int, float] = {}
        self.beating: set[int] = set()

    def recover(self, study: optuna.Study, trials: list[FrozenTrial]) -> bool:
        """Whether it gave any trial back."""
        now, gave = time.monotonic(), False
        silent = {t.number: t for t in trials if t.state == TrialState.RUNNING and t.number not in self.beating}
        self.seen = {n: self.seen.get(n, now) for n in silent}
        for number, since in self.seen.items():
            if now - since <= self.grace:
                continue
            if has_heartbeat(study, silent[number]):
                self.beating.add(number)
            else:
                give_back(study, silent[number], "its worker process died before the trial's first heartbeat")
                gave = True
        return gave


class Unretried:
    """Trials cut short whose retry was never queued: the process that failed them died before it queued it.
    Once this process has seen one so for the grace period (by its own clock), its slot is let go: a FAIL record
    takes the retry's place (a finished trial takes no new attribute). Its params are not run again: queuing
    them here could queue them twice, from two processes at once; two FAIL records hold no slot."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.seen: dict[int, float] = {}

    def recover(self, study: optuna.Study, trials: list[FrozenTrial]) -> bool:
        """Whether it let any slot go."""
        now, gone = time.monotonic(), False
        awaiting = {t.number: t for t in awaiting_retry(trials)}
        self.seen = {n: self.seen.get(n, now) for n in awaiting}
        for number, since in self.seen.items():
            if now - since > self.grace:
                print(f"warning: trial {number} was cut short and its retry never queued (the process that failed "
                      f"it ended); its slot goes to a new trial", file=sys.stderr, flush=True)
                _let_go(study, awaiting[number])
                gone = True
        return gone


def _let_go(study: optuna.Study, trial: FrozenTrial) -> None:
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params=trial.params, distributions=trial.distributions,
        user_attrs={"error": "not run: the retry of a trial whose process ended before queuing it", "interrupted": True},
        system_attrs={"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}))
