"""The budget rules, as pure functions of the study's trials: which trials use one of the `n_trials` slots,
what a worker does next, how many trials it claims, when failures stop the sweep.

No lock is needed: a trial may run only if fewer than `n_trials` trials with lower numbers use a slot
(`within_budget`), which no later change can make false, since a trial never starts using a slot again.
A trial cut short keeps its slot until its retry is queued (`awaiting_retry`): otherwise another worker
looking in between would take the slot for a fresh trial, and the retry, numbered after it, would find no
room and its params would be lost.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal, Sequence

from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
Step = Literal["ask", "wait", "done"]
RETRY = "retry"  # a trial's system attribute: True from just before its FAIL until its retry is queued (or let go)


def uses_slot(t: FrozenTrial) -> bool:
    """Whether a trial uses one of the study's `n_trials` slots.

    Queued, running and finished ones do. A failed one does only when the task itself failed (the sweeper
    records its `error`); one cut short (Ctrl-C, SIGTERM, its worker died, or asked past the budget) gives
    its slot back. A trial never goes from not using a slot to using one.
    """
    if t.state == TrialState.FAIL:
        return "error" in t.user_attrs and not t.user_attrs.get("interrupted")
    return True


def awaiting_retry(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials cut short whose params are to be queued again (`retry` noted before their FAIL) and are not yet:
    they keep their slot until the retry exists, which then holds it."""
    queued = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    return [t for t in trials if t.state == TrialState.FAIL and t.system_attrs.get(RETRY) is True
            and t.number not in queued]


def slot_holders(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials holding one of the study's slots: those using one and those awaiting their retry."""
    return [t for t in trials if uses_slot(t)] + awaiting_retry(trials)


def slots_used(trials: Sequence[FrozenTrial]) -> int:
    return len(slot_holders(trials))


def within_budget(trials: Sequence[FrozenTrial], number: int, budget: int) -> bool:
    """Whether trial `number` may run: fewer than `budget` trials numbered below it hold a slot."""
    return sum(1 for t in slot_holders(trials) if t.number < number) < budget


def next_step(trials: Sequence[FrozenTrial], budget: int) -> Step:
    """`ask` while a slot is free or a queued trial fits the budget; `wait` while others' running trials
    may still give slots back or a retry is about to be queued; `done` when every slot is used by a finished
    trial."""
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if slots_used(trials) < budget or any(within_budget(trials, t.number, budget) for t in waiting):
        return "ask"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) or awaiting_retry(trials) else "done"


def queue_step(trials: Sequence[FrozenTrial]) -> Step:
    """For a queue of fixed runs (confirmation, test): `ask` while one waits, `wait` while others run or a run
    cut short is about to be queued again."""
    if any(t.state == TrialState.WAITING for t in trials):
        return "ask"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) or awaiting_retry(trials) else "done"


def left(trials: Sequence[FrozenTrial], budget: int) -> int:
    """Trials still to run: free slots and queued trials."""
    return max(budget - slots_used(trials), 0) + sum(t.state == TrialState.WAITING for t in trials)


def even_share(remaining: int, n_workers: int) -> int:
    """One worker's share of `remaining` trials, so that the workers of a command end together."""
    return math.ceil(remaining / n_workers)


def finished_since(trials: Sequence[FrozenTrial], started: datetime) -> list[FrozenTrial]:
    """Finished trials using a slot that started at or after `started` (this command's)."""
    return [t for t in trials if t.state in FINISHED and uses_slot(t) and t.datetime_start and t.datetime_start >= started]


def failures_since(trials: Sequence[FrozenTrial], started: datetime) -> list[FrozenTrial]:
    """Failed trials using a slot that started at or after `started` (this command's failures)."""
    return [t for t in finished_since(trials, started) if t.state == TrialState.FAIL]


def too_many_failures(trials: Sequence[FrozenTrial], started: datetime, settings: Any) -> str | None:
    """Why this command stops for its failed trials (`max_failures`, or hydra-optuna-sweeper's
    `max_failure_rate` of its finished trials), or None."""
    failed = failures_since(trials, started)
    if not failed:
        return None
    last = failed[-1].user_attrs.get("error")
    if settings.max_failure_rate is not None:
        ran = finished_since(trials, started)
        if len(failed) / len(ran) > settings.max_failure_rate:
            return (f"stopped: {len(failed)} of {len(ran)} trials failed (hydra.sweeper.max_failure_rate="
                    f"{settings.max_failure_rate}); last error: {last}")
    elif len(failed) >= settings.max_failures:
        return f"stopped after {len(failed)} failed trials (hydra.sweeper.max_failures={settings.max_failures}); last error: {last}"
    return None


def claim_size(trials: Sequence[FrozenTrial], budget: int, settings: Any, started: datetime, ran: int) -> int:
    """How many search trials a worker claims at once: up to batch_trials, within its retirement count
    (`ran` so far), its even share of the slots left, and the failures still allowed (a batch never
    overshoots max_failures). Until the pruner can judge (its `n_startup_trials` complete), a command's
    workers share one batch: N workers would otherwise train N batches unpruned where one worker trains one."""
    share = even_share(budget - slots_used(trials), settings.n_workers)
    room = settings.max_failures - len(failures_since(trials, started)) if settings.max_failure_rate is None \
        else settings.batch_trials
    if sum(t.state == TrialState.COMPLETE for t in trials) < settings.pruner_startup:
        share = min(share, even_share(min(settings.batch_trials, room), settings.n_workers))
    return max(1, min(settings.batch_trials, settings.max_trials_per_worker - ran, share, room))
