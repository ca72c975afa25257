"""The claim-and-drain loop in-process, on a real SQLite study, without Hydra or TensorFlow: claiming and giving
back on every exit path, the order of a drain's steps, and both phases' policies (the search, the queues)."""
from __future__ import annotations

import errno
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from src.errors import UserError
from src.sweep import budget
from src.sweep.confirm import Confirmation, RunQueue
from src.sweep.context import Sweep
from src.sweep import recovery
from src.sweep.loop import Claim, Patience, drain
from src.sweep.optuna_internals import frozen, heartbeat, set_system_attr
from src.sweep.processes import Stopped, raise_on_signals, restore_signals
from src.sweep.outcome import TrialOutcome, tell
from src.sweep.recovery import STALE, give_back, queue_again
from src.sweep.search import Search
from src.sweep.settings import SweeperSettings
from src.sweep.space import SearchSpace
from src.sweep.storage import Storage
from src.sweep.study import open_study

SPACE = {"x": FloatDistribution(0.0, 1.0)}


def new_study(tmp_path: Path, name: str = "s") -> optuna.Study:
    storage = Storage(f"sqlite:///{tmp_path / 'study.db'}", 1, 2)
    return open_study(storage.connect(), name, ["maximize"], optuna.samplers.RandomSampler(seed=0),
                      optuna.pruners.NopPruner())


class Budgeted:
    """A policy of n_trials trials, `k` at a time; `run` tells each the value of x (or does what `act` says)."""

    def __init__(self, n_trials: int, k: int, act: Any = None) -> None:
        self.n_trials, self.k, self.act = n_trials, k, act
        self.claims: list[list[int]] = []
        self.afters: list[tuple[list[int], bool]] = []

    def check(self, trials: Sequence[FrozenTrial]) -> None:
        pass

    def step(self, trials: Sequence[FrozenTrial]) -> budget.Step:
        return budget.next_step(trials, self.n_trials)

    def claim_size(self, trials: Sequence[FrozenTrial]) -> int:
        return self.k

    def admit(self, study: optuna.Study, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> str | None:
        return None if budget.within_budget(study.get_trials(deepcopy=False), trial.number, self.n_trials) else "past"

    def joins(self, study: optuna.Study, first: optuna.Trial) -> None:
        return None

    def run(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        self.claims.append([t.number for t in trials])
        xs = [trial.suggest_float("x", 0.0, 1.0) for trial in trials]
        for i, (trial, x) in enumerate(zip(trials, xs)):
            if self.act is not None:
                self.act(i, trial)
            tell(study, trial, TrialOutcome.of({"value": x}, ["value"]), ["value"], "nowhere")

    def after(self, study: optuna.Study, trials: list[optuna.Trial], completed: bool) -> None:
        self.afters.append(([t.number for t in trials], completed))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_drain_runs_exactly_the_budget_k_at_a_time(tmp_path):
    study, policy = new_study(tmp_path), Budgeted(5, 2)
    assert drain(study, policy, "w", grace=2, heartbeat_interval=1) == "done"
    assert policy.claims == [[0, 1], [2, 3], [4]]  # the last claim stops at the budget
    assert states(study) == ["COMPLETE"] * 5
    assert [t.user_attrs["worker"] for t in study.get_trials()] == ["w"] * 5
    assert policy.afters == [([0, 1], True), ([2, 3], True), ([4], True)]


@pytest.mark.parametrize("error, reason", [
    (KeyboardInterrupt(), "interrupted by Ctrl-C"),
    (KeyboardInterrupt("interrupted by SIGTERM"), "interrupted by SIGTERM"),
    (RuntimeError("disk on fire\nsecond line"), "its worker stopped: disk on fire"),
])
def test_every_claimed_trial_not_told_is_given_back_on_any_exit(tmp_path, error, reason):
    def second_fails(i: int, trial: optuna.Trial) -> None:
        if i == 1:
            raise error

    study, policy = new_study(tmp_path), Budgeted(5, 3, act=second_fails)
    with pytest.raises(type(error)):
        drain(study, policy, "w", grace=2, heartbeat_interval=1)
    trials = study.get_trials()
    assert [t.state.name for t in trials[:3]] == ["COMPLETE", "FAIL", "FAIL"]  # the told one stays told
    assert all(t.user_attrs["error"] == reason and t.user_attrs["interrupted"] for t in trials[1:3])
    assert not any(budget.uses_slot(t) for t in trials[1:3])
    assert [t.state.name for t in trials[3:]] == ["WAITING", "WAITING"]  # queued again, one per trial given back
    assert policy.afters == [([0, 1, 2], False)]


def test_a_stop_signal_a_library_turned_into_another_error_gives_the_trials_back_for_the_stop(tmp_path):
    """OmegaConf, cut by SLURM's warning signal mid-call, raised AttributeError: the trials are given back as
    interrupted by the signal, and the worker goes on stopping (not a failure of its own)."""
    def cut(i: int, trial: optuna.Trial) -> None:
        signal.raise_signal(signal.SIGUSR2)  # the handler raises Stopped; the "library" turns it into another error

    def library(i: int, trial: optuna.Trial) -> None:
        try:
            cut(i, trial)
        except Stopped:
            raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'") from None

    previous = raise_on_signals(once=True)
    try:
        study, policy = new_study(tmp_path), Budgeted(5, 2, act=library)
        with pytest.raises(Stopped, match="interrupted by SIGUSR2"):
            drain(study, policy, "w", grace=2, heartbeat_interval=1)
    finally:
        restore_signals(previous)
    trials = study.get_trials()
    assert [t.state.name for t in trials[:2]] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["error"] == "interrupted by SIGUSR2" and t.user_attrs["interrupted"] for t in trials[:2])


def test_a_claim_left_before_any_run_gives_back_what_it_asked(tmp_path):
    study = new_study(tmp_path)
    with pytest.raises(KeyboardInterrupt), Claim(study, "w") as claim:
        claim.take(2, Budgeted(5, 2))
        raise KeyboardInterrupt
    assert states(study)[:2] == ["FAIL", "FAIL"] and len(study.get_trials()) == 2  # no params drawn: nothing queued


def test_a_trial_the_policy_refuses_is_given_back_without_retry_and_ends_the_claim(tmp_path):
    study = new_study(tmp_path)
    for _ in range(2):  # another worker's two running trials use both slots
        study.ask().set_user_attr("worker", "other")
    with Claim(study, "w") as claim:
        claim.take(2, Budgeted(2, 2))
    trials = study.get_trials()
    assert claim.trials == [] and trials[2].state == TrialState.FAIL and trials[2].user_attrs["error"] == "past"
    assert len(trials) == 3 and not budget.uses_slot(trials[2])  # not queued again, no slot used


def test_drain_fails_stale_and_unclaimed_trials_before_it_decides(tmp_path):
    study = new_study(tmp_path)
    orphan = study.ask()  # its process died as it asked: no owner, no heartbeat
    policy = Budgeted(2, 1)
    start = time.monotonic()
    assert drain(study, policy, "w", grace=0.3, heartbeat_interval=0.1) == "done"  # waits, then gives it back
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL and trials[orphan.number].user_attrs["interrupted"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2 and time.monotonic() - start < 30


def test_a_trial_given_back_holds_its_slot_until_its_retry_is_queued(tmp_path, monkeypatch):
    """A worker looking between another's FAIL and its queued retry asks no fresh trial; the retry then runs."""
    study = new_study(tmp_path)
    study.tell(first := study.ask(), first.suggest_float("x", 0.0, 1.0))
    cut = study.ask()
    x = cut.suggest_float("x", 0.0, 1.0)
    looked: list[str] = []

    def look_first(study: optuna.Study, trial: FrozenTrial) -> None:
        looked.append(budget.next_step(study.get_trials(deepcopy=False), 2))
        queue_again(study, trial)

    monkeypatch.setattr(recovery, "queue_again", look_first)
    assert give_back(study, frozen(study, cut), "its worker died")
    assert looked == ["wait"]  # a free slot here would go to a fresh trial and leave the retry past the budget
    monkeypatch.undo()
    assert drain(study, Budgeted(2, 1), "w", grace=2, heartbeat_interval=1) == "done"
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and done[1].params == {"x": x}  # the cut trial's params ran again, within the budget


def test_a_stale_trial_is_given_back_with_its_reason_and_its_params_run_again(tmp_path):
    study = new_study(tmp_path)
    stale = study.ask()
    x = stale.suggest_float("x", 0.0, 1.0)
    with heartbeat(study, stale):  # one beat, then its worker is gone
        time.sleep(0.1)
    assert drain(study, Budgeted(1, 1), "w", grace=2, heartbeat_interval=1) == "done"  # waits out the grace
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["error"] == STALE
    assert [t.params for t in trials if t.state == TrialState.COMPLETE] == [{"x": x}]


def test_a_retry_never_queued_lets_its_slot_go_after_the_grace_period(tmp_path, capsys):
    study = new_study(tmp_path)
    cut = study.ask()
    cut.suggest_float("x", 0.0, 1.0)
    set_system_attr(study, frozen(study, cut), "retry", True)  # its process died between the FAIL and the queue
    study.tell(cut, state=TrialState.FAIL)
    assert budget.next_step(study.get_trials(), 1) == "wait"
    assert drain(study, Budgeted(1, 1), "w", grace=0.3, heartbeat_interval=0.1) == "done"
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]  # let go, then new
    assert not budget.uses_slot(trials[1]) and trials[1].system_attrs["retry_history"] == [0]
    assert "trial 0 was cut short and its retry never queued" in capsys.readouterr().err


def test_retire_when_the_policy_claims_nothing(tmp_path):
    study, policy = new_study(tmp_path), Budgeted(3, 0)
    assert drain(study, policy, "w", grace=2, heartbeat_interval=1) == "retired"
    assert study.get_trials() == []


def test_patience_doubles_up_to_its_cap_and_resets():
    patience = Patience(heartbeat_interval=0.2)
    waits = []
    for _ in range(4):
        waits.append(patience.next)
        patience.next = min(2 * patience.next, patience.longest)  # as pause() does, without sleeping
    assert waits == [0.05, 0.1, 0.2, 0.2]
    patience.reset()
    assert patience.next == 0.05


# --- the two phases' policies, with a stand-in for the Hydra runner --------------------------------------

class FakeRunner:
    """Trains nothing: a trial's value is its x; seeds come from params, as Hydra would compose them."""

    live, keep, on_told = False, [], None

    def __init__(self, folder: Path) -> None:
        self.folder, self.objectives = folder, ["val_accuracy"]
        self.jobs: list[list[str]] = []
        self.stopping = threading.Event()

    def run_trial(self, study: optuna.Study, trial: optuna.Trial, pruning: bool) -> None:
        x = trial.suggest_float("x", 0.0, 1.0)
        outcome = TrialOutcome.of({"val_accuracy": x}, ["val_accuracy"])
        tell(study, trial, outcome, self.objectives, f"{self.folder}/trials/{trial.number}")

    def compose(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"trainer": {"seed": 0}, "data": {"seed": 7}}

    def run_job(self, overrides: list[str], number: int, subdir: str | None = None) -> TrialOutcome:
        self.jobs.append(overrides)
        seed = int(next(o for o in overrides if o.startswith("trainer.seed=")).split("=")[1])
        x = float(next(o for o in overrides if o.startswith("x=")).split("=")[1])
        return TrialOutcome.of({"val_accuracy": x - seed / 100, "test_accuracy": x / 2, "test_loss": 1.0}, ["val_accuracy"])


def make_sweep(tmp_path: Path, **settings: Any) -> Sweep:
    s = SweeperSettings(**{"n_trials": 4, "batch_trials": 2, "sampler": "random", "objectives": ["val_accuracy"],
                           "directions": ["maximize"], **settings})  # as conf/sweep.yaml sets them
    space = SearchSpace(distributions=dict(SPACE))
    sweep = Sweep(s, space, "s", Storage(f"sqlite:///{tmp_path / 'study.db'}", 1, 2), tmp_path, s.n_trials,
                  FakeRunner(tmp_path), task_config=None, started=datetime.now())  # type: ignore[arg-type]
    sweep.open(create=True)  # as the command does before its workers start
    return sweep


def test_search_policy_runs_the_budget_and_writes_the_tables(tmp_path):
    sweep = make_sweep(tmp_path)
    study = sweep.open()
    assert drain(study, Search(sweep, None), "w", 2, 1) == "done"
    table = pd.read_csv(tmp_path / "trials.csv")
    assert list(table["number"]) == [0, 1, 2, 3] and (table["state"] == "COMPLETE").all()
    assert list(table["value"]) == [t.params["x"] for t in study.get_trials()]


def test_search_policy_stops_on_max_failures(tmp_path):
    sweep = make_sweep(tmp_path, max_failures=1)
    study = sweep.open()
    trial = study.ask()
    tell(study, trial, TrialOutcome.failed(ValueError("bad")), ["val_accuracy"], "x")  # after this command started
    with pytest.raises(UserError, match=r"stopped after 1 failed trials .*last error: ValueError: bad"):
        drain(study, Search(sweep, None), "w", 2, 1)


def test_search_policy_retires_after_max_trials_per_worker(tmp_path):
    sweep = make_sweep(tmp_path, max_trials_per_worker=2, batch_trials=1)
    study = sweep.open()
    assert drain(study, Search(sweep, None), "w", 2, 1) == "retired"
    assert states(study) == ["COMPLETE", "COMPLETE"]


def test_confirmation_phase_runs_each_queued_run_once_then_tests_the_winner(tmp_path, capsys):
    sweep = make_sweep(tmp_path, confirm={"top_k": 2, "seeds": 2}, test_overrides=["trainer.test=true"])
    study = sweep.open()
    drain(study, Search(sweep, None), "w", 2, 1)
    phase = Confirmation(sweep)
    assert not phase.finished()
    phase.work("w")
    assert phase.finished()
    confirm, test = phase.queues()
    top2 = [t.number for t in sorted(study.get_trials(), key=lambda t: -t.values[0])[:2]]
    assert sorted((t.params["config"], t.params["seed"]) for t in confirm.get_trials()) == \
        sorted((c, s) for c in top2 for s in (1, 2))
    assert all(t.state == TrialState.COMPLETE for t in confirm.get_trials() + test.get_trials())
    confirmed = phase.results(study)
    assert confirmed["winner"] == top2[0] and sorted(t.params["seed"] for t in test.get_trials()) == [0, 1, 2]
    rows = pd.read_csv(tmp_path / "confirm.csv")
    assert list(rows["run"]).count("test") == 3 and not rows.duplicated(["run", "config", "seed"]).any()
    assert all("data.seed=7" in job for job in sweep.runner.jobs)  # the data split stays the trial's
    assert "test run: trial #" in capsys.readouterr().out
    phase.work("w")  # a second worker, or a resumed command, finds nothing left to run
    assert len(confirm.get_trials()) == 4 and len(test.get_trials()) == 3


def test_a_confirmation_claim_of_several_workers_takes_one_trials_runs_whatever_the_queues_order(tmp_path):
    """Runs of trials 5 and 9 queued in turn, as two workers asking at once would meet them: a claim takes its
    first run's trial's runs and skips the other's; one whose trial has no run left waiting ends short."""
    sweep = make_sweep(tmp_path, n_workers=2, confirm={"top_k": 2, "seeds": 2})
    queue = optuna.create_study(storage=sweep.storage.connect(create=False), study_name="s:confirm")
    for config, seed in ((5, 1), (9, 1), (5, 2), (9, 2)):
        queue.enqueue_trial({"config": config, "seed": seed})
    policy = RunQueue(Confirmation(sweep), sweep.open(), "confirm", 4, None)
    with Claim(queue, "w") as claim:
        claim.take(2, policy)
    assert [frozen(queue, t).system_attrs["fixed_params"] for t in claim.trials] == [{"config": 5, "seed": 1},
                                                                                    {"config": 5, "seed": 2}]
    queue.ask()  # another worker takes trial 9's first run
    with Claim(queue, "v") as claim:
        claim.take(2, policy)
    assert [frozen(queue, t).system_attrs["fixed_params"] for t in claim.trials] == [{"config": 9, "seed": 2}]
    assert [t.state.name for t in queue.get_trials()] == ["RUNNING"] * 4


def test_tell_records_a_fatal_outcome_as_given_back_and_raises(tmp_path):
    study = new_study(tmp_path)
    trial = study.ask()
    with pytest.raises(UserError, match="cannot draw"):
        tell(study, trial, TrialOutcome.failed("cannot draw", fatal=True), ["value"], "x")
    told = study.get_trials()[0]
    assert told.state == TrialState.FAIL and told.user_attrs["interrupted"] and not budget.uses_slot(told)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_trial_the_machine_failed_is_given_back_and_queued_again_never_counted(tmp_path, code):
    """A read-only sweep folder or a full disk fails the run (Hydra cannot make its folder, Keras cannot save):
    that is the machine, not the params, so the trial spends no budget and runs again on the rerun."""
    study = new_study(tmp_path)
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    try:
        try:
            raise OSError(code, os.strerror(code), str(tmp_path / "trials" / "0"))
        except OSError as e:
            raise RuntimeError("Error executing job with overrides: []") from e  # as a framework wraps it
    except RuntimeError as e:
        outcome = TrialOutcome.failed(e)
    with pytest.raises(UserError, match=f"the machine failed, not the trial \\({os.strerror(code)}\\)"):
        tell(study, trial, outcome, ["value"], "x")
    told, again = study.get_trials()
    assert told.state == TrialState.FAIL and told.user_attrs["interrupted"] and not budget.uses_slot(told)
    assert again.state == TrialState.WAITING and again.params == {"x": x}
    assert TrialOutcome.failed(OSError(errno.ENOENT, "No such file")).fatal is False  # a trial's own bad path


def test_tell_fails_a_trial_whose_objective_is_missing_or_not_finite(tmp_path):
    study = new_study(tmp_path)
    for metrics in ({"other": 1.0}, {"value": float("nan")}):
        tell(study, study.ask(), TrialOutcome.of(metrics, ["value"]), ["value"], "x")
    assert states(study) == ["FAIL", "FAIL"]
    assert all("not in the task's metrics or not finite" in t.user_attrs["error"] for t in study.get_trials())
    tell(study, study.ask(), TrialOutcome.of(0.5, ["value"], pruned_at=2), ["value"], "x")
    assert study.get_trials()[2].state == TrialState.PRUNED and study.get_trials()[2].user_attrs["value"] == 0.5


def test_a_stop_asked_through_the_storage_ends_the_search_before_its_next_claim(tmp_path):
    from src.sweep.processes import Stopped

    sweep = make_sweep(tmp_path)
    study = sweep.open()
    sweep.runner.stopping.set()  # a launcher job's watcher saw its command's stop
    with pytest.raises(Stopped, match="its sweep command was stopped"):
        drain(study, Search(sweep, None), "w", 2, 1)
    assert study.get_trials() == []


def test_a_launcher_job_that_starts_after_its_commands_stop_claims_nothing(tmp_path):
    """The job's first look at the study already sees the stop: the command no longer waits for a job it never
    saw alive, so one that claimed in the heartbeat interval before its next look left its trial RUNNING."""
    from src.sweep.launch import Watcher
    from src.sweep.optuna_internals import set_study_system_attr

    sweep = make_sweep(tmp_path)
    study = sweep.open()
    set_study_system_attr(study, "stop:cmd", 1.0)  # the command's Ctrl-C, before this job started
    with Watcher(sweep, "cmd/1/host/1", "cmd"):
        assert sweep.runner.stopping.is_set()
        with pytest.raises(Stopped):
            drain(study, Search(sweep, None), "cmd/1/host/1", 2, 1)
    assert study.get_trials() == []


def test_failed_heartbeats_are_one_line_per_claim_and_the_beats_go_on(tmp_path, monkeypatch, capfd):
    """A storage down for a while (PostgreSQL restarted): Optuna's beating thread would print a traceback and
    stop, one per claimed trial (523 lines seen); here one warning line, and each trial beats again."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    beats: list[int] = []

    def down(self: Any, trial_id: int) -> None:
        beats.append(trial_id)
        raise OperationalError("UPDATE trial_heartbeats", {}, sqlite3.OperationalError("database is locked"))

    study = new_study(tmp_path)
    with Claim(study, "w") as claim:
        claim.take(3, Budgeted(5, 3))
        monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", down)
        time.sleep(2.5)  # heartbeat_interval is 1 s: every trial's thread tries 2 or 3 times
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert warnings == ["warning: the study's storage took no heartbeat (OperationalError: database is locked); "
                        "trying again every beat"]
    assert len(claim.trials) == 3 and len(set(beats)) == 3 and len(beats) >= 6  # each beat again after failing


def test_a_batchs_lines_count_and_rank_in_turn(capsys):
    """A batch of 3 told together prints 1/3, 2/3, 3/3 done, each best among the lines printed so far (it printed
    3/3 three times, and a best trial whose line had not come yet)."""
    from src.sweep import progress

    study = optuna.create_study(direction="maximize")
    for x in (0.5, 0.9, 0.7):
        trial = study.ask()
        trial.set_user_attr("value", x)
        study.tell(trial, x)
    numbers = [0, 1, 2]
    for i, n in enumerate(numbers):
        progress.print_trial(study, study.get_trials(), n, 3, "value", datetime.now(), later=frozenset(numbers[i + 1:]))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" elapsed")[0].rsplit(" ", 1)[0] for line in lines] == [
        "trial 0 COMPLETE value=0.5000 best=0.5000 (#0) 1/3 done",
        "trial 1 COMPLETE value=0.9000 best=0.9000 (#1) 2/3 done",
        "trial 2 COMPLETE value=0.7000 best=0.9000 (#1) 3/3 done"]
