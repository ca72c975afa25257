"""The budget rules as pure functions of trial records: no storage, no Hydra, no TensorFlow."""
from __future__ import annotations

from datetime import datetime, timedelta

import optuna
from optuna.trial import TrialState

from src.sweep import budget
from src.sweep.settings import SweeperSettings

START = datetime(2026, 1, 1, 12, 0)


def trial(number: int, state: TrialState, started: datetime = START, **attrs: object) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs)
    t.number, t.datetime_start = number, started if state != TrialState.WAITING else None
    return t


def test_next_step_asks_waits_and_ends():
    running = [trial(0, TrialState.COMPLETE), trial(1, TrialState.RUNNING)]
    assert budget.next_step(running, 3) == "ask"
    assert budget.next_step(running, 2) == "wait"  # the running one may die and give its slot back
    assert budget.next_step([trial(0, TrialState.COMPLETE)] * 2, 2) == "done"
    given_back = [trial(0, TrialState.FAIL, error="interrupted", interrupted=True), trial(1, TrialState.WAITING)]
    assert budget.next_step(given_back, 1) == "ask" and budget.left(given_back, 1) == 1  # the queued retry


def test_a_trial_cut_short_holds_its_slot_until_its_retry_is_queued():
    cut = trial(0, TrialState.FAIL, error="interrupted", interrupted=True)
    cut.system_attrs = {"retry": True}  # noted just before its FAIL, by the process giving it back
    assert budget.slots_used([cut]) == 1 and budget.next_step([cut], 1) == "wait" and budget.queue_step([cut]) == "wait"
    retry = trial(1, TrialState.WAITING)
    retry.system_attrs = {"retry_history": [0]}  # Optuna's retry callback names the trial it retries
    assert budget.slots_used([cut, retry]) == 1 and budget.within_budget([cut, retry], 1, 1)
    assert budget.next_step([cut, retry], 1) == "ask"


def test_queue_step():
    assert budget.queue_step([trial(0, TrialState.WAITING)]) == "ask"
    assert budget.queue_step([trial(0, TrialState.RUNNING)]) == "wait"
    assert budget.queue_step([trial(0, TrialState.COMPLETE), trial(1, TrialState.FAIL)]) == "done"


def test_failures_count_only_this_commands_trials_and_stop_at_the_limit():
    before = trial(0, TrialState.FAIL, START - timedelta(hours=1), error="old")
    now = [trial(1, TrialState.FAIL, error="diverged"), trial(2, TrialState.FAIL, error="cut", interrupted=True),
           trial(3, TrialState.COMPLETE)]
    settings = SweeperSettings(max_failures=2)
    assert budget.failures_since([before, *now], START) == [now[0]]
    assert budget.too_many_failures([before, *now], START, settings) is None
    failed = [*now, trial(4, TrialState.FAIL, error="diverged again")]
    assert budget.too_many_failures(failed, START, settings) == \
        "stopped after 2 failed trials (hydra.sweeper.max_failures=2); last error: diverged again"
    rate = SweeperSettings(max_failure_rate=0.5)
    assert budget.too_many_failures(now, START, rate) is None  # 1 of 2 finished: not above a half
    assert "stopped: 2 of 3 trials failed (hydra.sweeper.max_failure_rate=0.5)" in budget.too_many_failures(failed, START, rate)


def test_claim_size_keeps_workers_even_and_within_every_limit():
    settings = SweeperSettings(batch_trials=8, n_workers=2, n_trials=20, max_trials_per_worker=20, max_failures=5)
    done = [trial(i, TrialState.COMPLETE) for i in range(10)]
    assert budget.claim_size(done, 20, settings, START, ran=0) == 5  # 10 slots left, two workers: 5 each
    assert budget.claim_size(done, 20, settings, START, ran=17) == 3  # retires after 20
    failed = [trial(i, TrialState.FAIL, error="x") for i in range(4)]
    assert budget.claim_size(failed, 20, settings, START, ran=0) == 1  # one more failure stops the sweep
    assert budget.claim_size(done, 10, settings, START, ran=0) == 1  # nothing left: one, refused by the budget


def test_until_the_median_pruner_can_judge_the_workers_share_one_batch():
    """Two workers claiming a full batch each would train 16 trials unpruned where one worker trains 8."""
    two = SweeperSettings(batch_trials=8, n_workers=2, n_trials=40, pruner="median", max_failures=10)
    one = SweeperSettings(batch_trials=8, n_workers=1, n_trials=40, pruner="median", max_failures=10)
    four = [trial(i, TrialState.COMPLETE) for i in range(4)]
    assert budget.claim_size([], 40, two, START, ran=0) == 4
    assert budget.claim_size(four, 40, two, START, ran=0) == 4  # 4 complete: the pruner's 5 not yet
    assert budget.claim_size([*four, trial(4, TrialState.COMPLETE)], 40, two, START, ran=0) == 8
    assert budget.claim_size([], 40, one, START, ran=0) == 8  # one worker: as before
    hyperband = SweeperSettings(batch_trials=8, n_workers=2, n_trials=40, pruner="hyperband", max_failures=10)
    assert budget.claim_size([], 40, hyperband, START, ran=0) == 8  # judges from the first trial
    block = SweeperSettings(batch_trials=8, n_workers=2, n_trials=40, max_failures=10,
                            pruner={"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 0})
    assert block.pruner_startup == 0 and budget.claim_size([], 40, block, START, ran=0) == 8
