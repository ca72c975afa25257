"""The study rules without Hydra or TensorFlow: budget, dead workers' trials, retries, best trial, storages."""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from contextlib import closing

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from src.errors import UserError
from src.sweep.budget import next_step, uses_slot, within_budget
from src.sweep.optuna_internals import frozen, heartbeat, set_user_attrs, trials_read_once
from src.sweep.recovery import Unclaimed, give_back
from src.sweep.storage import Storage, StorageGone, failure
from src.sweep.study import best_trial, check_space, open_study, suggest
from src.sweep.samplers import make_sampler
from src.sweep.space import describe, parse

SPACE = {"x": FloatDistribution(0.0, 1.0), "n": IntDistribution(1, 8)}


def sqlite_storage(tmp_path, interval=1, grace=2) -> Storage:
    return Storage(f"sqlite:///{tmp_path / 'study.db'}", interval, grace)


def new_study(storage: Storage, seed: int | None = 0, name: str = "s") -> optuna.Study:
    sampler = make_sampler("tpe", seed, {"n_startup_trials": 2}, parse({}, []))
    return open_study(storage.connect(), name, ["maximize"], sampler, optuna.pruners.NopPruner())


def ask(study: optuna.Study, budget: int, owner: str = "w") -> optuna.Trial | None:
    """What a worker does: ask, claim within the budget, draw params (None when asked past the budget)."""
    trial = study.ask()
    trial.set_user_attr("worker", owner)
    if not within_budget(study.get_trials(deepcopy=False), trial.number, budget):
        give_back(study, frozen(study, trial), "not run", retry=False)
        return None
    suggest(trial, SPACE)
    return trial


def complete(study: optuna.Study, trial: optuna.Trial) -> None:
    study.tell(trial, trial.params["x"])


def counted(study: optuna.Study) -> int:
    return sum(map(uses_slot, study.get_trials(deepcopy=False)))


def test_exact_budget_when_workers_ask_at_once(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    a, b, c = ask(study, 2), ask(study, 2), ask(study, 2)  # three workers asked before any finished
    assert a is not None and b is not None and c is None
    surplus = study.get_trials(deepcopy=False)[2]
    assert surplus.state == TrialState.FAIL and not uses_slot(surplus) and not surplus.params
    complete(study, a)
    complete(study, b)
    assert counted(study) == 2 and next_step(study.get_trials(), 2) == "done"


def test_next_step_waits_while_others_run_and_asks_for_a_given_back_slot(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    a = ask(study, 2)
    b = ask(study, 2)
    complete(study, a)
    assert next_step(study.get_trials(), 2) == "wait"  # b runs elsewhere and may die
    assert give_back(study, frozen(study, b), "its worker process died")
    trials = study.get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"] and not uses_slot(trials[1])
    assert trials[2].state == TrialState.WAITING and trials[2].params == b.params  # queued again
    assert next_step(trials, 2) == "ask"
    retry = ask(study, 2)
    assert retry.number == 2 and retry.params == b.params
    complete(study, retry)
    assert counted(study) == 2 and next_step(study.get_trials(), 2) == "done"


def test_a_queued_trial_cut_short_before_it_drew_its_params_is_queued_again(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    study.enqueue_trial({"config": 3, "seed": 1})
    trial = study.ask()  # Ctrl-C lands here: claimed, nothing drawn yet
    assert trial.params == {} and give_back(study, frozen(study, trial), "interrupted by Ctrl-C")
    again = study.get_trials()[1]
    assert again.state == TrialState.WAITING and again.system_attrs["fixed_params"] == {"config": 3, "seed": 1}


def test_a_grid_point_given_back_without_a_retry_is_run_by_a_later_trial(tmp_path):
    """Two workers asking for a sweep's last slot at once: one trial is given back unrun. Optuna's GridSampler
    had counted its point as visited, so raising n_trials ran another point twice and that one never."""
    grid = parse({"u": "choice(8, 16, 24)"}, [])
    study = open_study(sqlite_storage(tmp_path).connect(), "g", ["maximize"], make_sampler("grid", 0, {}, grid),
                       optuna.pruners.NopPruner())
    first, second, past = study.ask(), study.ask(), study.ask()
    for trial in (first, second):
        study.tell(trial, suggest(trial, grid.distributions)["u"])
    assert give_back(study, frozen(study, past), "not run: another worker took the study's last trial first", retry=False)
    later = study.ask()  # the next command, with n_trials raised
    assert sorted([first.params["u"], second.params["u"], suggest(later, grid.distributions)["u"]]) == [8, 16, 24]


def test_give_back_of_a_finished_trial_changes_nothing(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    a = ask(study, 3)
    complete(study, a)
    assert not give_back(study, frozen(study, a), "late")
    assert study.get_trials()[0].state == TrialState.COMPLETE and len(study.get_trials()) == 1


def test_failed_task_counts_and_interrupted_does_not():
    def trial(state, **attrs):
        return optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                         user_attrs=attrs)

    assert uses_slot(trial(TrialState.COMPLETE))
    assert uses_slot(trial(TrialState.RUNNING)) and uses_slot(trial(TrialState.WAITING))
    assert uses_slot(trial(TrialState.FAIL, error="diverged"))
    assert not uses_slot(trial(TrialState.FAIL, error="interrupted by Ctrl-C", interrupted=True))
    assert not uses_slot(trial(TrialState.FAIL))  # failed by the stale-trial check: no error of ours


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_dead_workers_trial_is_failed_after_the_grace_period_and_queued_again(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'journal.log'}"
    storage = Storage(url, heartbeat_interval=1, grace_period=2)
    dead_side, live_side = new_study(storage), new_study(storage)
    dead = ask(dead_side, 5, "dead")
    with heartbeat(dead_side, dead):  # beats once, then its process "dies" (the beating stops)
        pass
    live = ask(live_side, 5, "live")
    with heartbeat(live_side, live):  # a live trial keeps beating through the grace period
        deadline = time.monotonic() + 60
        while live_side.get_trials()[0].state == TrialState.RUNNING and time.monotonic() < deadline:
            optuna.storages.fail_stale_trials(live_side)  # the dead one fails once its grace period is over
            time.sleep(0.2)
        trials = live_side.get_trials()
        assert trials[1].state == TrialState.RUNNING  # never fails a live trial
    assert trials[0].state == TrialState.FAIL and not uses_slot(trials[0])
    assert trials[2].state == TrialState.WAITING and trials[2].params == dead.params
    optuna.storages.fail_stale_trials(dead_side)  # a second look fails nothing more and queues nothing more
    assert len(live_side.get_trials()) == 3


def test_trial_seeded_sampler_differs_between_workers_and_repeats_for_a_seed(tmp_path):
    def draws(seed, path):
        study = new_study(Storage(f"sqlite:///{path}", 1, 2), seed=seed)
        trials = [ask(study, 10) for _ in range(4)]  # four workers asking at once: no duplicate points
        return [t.params for t in trials]

    first, again, other = draws(0, tmp_path / "a.db"), draws(0, tmp_path / "b.db"), draws(1, tmp_path / "c.db")
    assert first == again and first != other
    assert other[:3] != first[1:]  # seed 1 is not seed 0 one trial on (a seed of `seed + number` made it so)
    assert len({tuple(sorted(p.items())) for p in first}) == 4


def test_a_trials_draw_does_not_depend_on_how_many_were_asked_with_it(tmp_path):
    """A batched worker asks K trials, then draws each: trial n still draws from its own seed, so one worker
    claiming 4 and workers claiming 1 each draw the same start-up points."""
    def draws(path, together: bool) -> list[dict]:
        study = new_study(Storage(f"sqlite:///{path}", 1, 2))
        if together:
            trials = [study.ask() for _ in range(4)]
            for trial in trials:
                suggest(trial, SPACE)
        else:
            trials = []
            for _ in range(4):
                trials.append(study.ask())
                suggest(trials[-1], SPACE)
        return [t.params for t in trials]

    assert draws(tmp_path / "a.db", together=True) == draws(tmp_path / "b.db", together=False)


def described(space: dict) -> dict[str, str]:
    return {k: describe(d) for k, d in space.items()}


DEFINED = ["data=fashion_mnist_10", "model.layers=2"]


def test_changed_search_space_or_fixed_override_is_refused_with_both(tmp_path, capsys):
    study = new_study(sqlite_storage(tmp_path))
    check_space(study, described(SPACE), ["data.n_train=600"], DEFINED)  # the first run records the question
    assert give_back(study, frozen(study, ask(study, 3)), "interrupted by Ctrl-C")
    check_space(study, described(SPACE), ["data.n_train=600"], DEFINED)  # the same question: fine
    with pytest.raises(UserError, match=r"searched n as int in \[1, 8\]; this run asks int in \[1, 16\]: "
                                        r"set hydra.sweeper.study_name"):
        check_space(study, described({**SPACE, "n": IntDistribution(1, 16)}), [], DEFINED)
    with pytest.raises(UserError, match=r"searched a as nothing \(not searched\); this run asks choice\(u, v\)"):
        check_space(study, described({**SPACE, "a": CategoricalDistribution(["u", "v"])}), [], DEFINED)
    with pytest.raises(UserError, match=r"searched n as int in \[1, 8\]; this run asks nothing"):
        check_space(study, described({"x": SPACE["x"]}), [], DEFINED)
    with pytest.raises(UserError, match=r"^study 's' ran with data.n_train=600; this run has data.n_train=1200: rerun "
                                        r"with the study's fixed overrides \(data.n_train=600\), or set "
                                        r"hydra.sweeper.study_name to start a new study$"):
        check_space(study, described(SPACE), ["data.n_train=1200"], DEFINED)  # trained on other data: not one question
    with pytest.raises(UserError, match=r"ran with no model.dropout override; this run has \+model.dropout=0.2"):
        check_space(study, described(SPACE), ["data.n_train=600", "+model.dropout=0.2"], DEFINED)
    check_space(study, described(SPACE), ["data.n_train=600", "trainer.verbose=0"], DEFINED)  # how it shows, not its numbers
    assert "ran with fixed overrides ['data.n_train=600']; this run has ['data.n_train=600', 'trainer.verbose=0']" \
        in capsys.readouterr().out
    # what the sweep definition set outside its params: changed in the file, refused as a changed override is
    with pytest.raises(UserError, match=r"^study 's' ran with model.layers=2 from its sweep definition; this run has "
                                        r"model.layers=1: rerun with the study's definition, or set "
                                        r"hydra.sweeper.study_name to start a new study$"):
        check_space(study, described(SPACE), ["data.n_train=600"], ["data=fashion_mnist_10", "model.layers=1"])
    with pytest.raises(UserError, match=r"ran with data=fashion_mnist_10 from its sweep definition; this run has no data"):
        check_space(study, described(SPACE), ["data.n_train=600"], ["model.layers=2"])
    check_space(study, described(SPACE), ["data.n_train=600"], [*DEFINED, "trainer.tensorboard=true"])  # shown only
    check_space(study, described(SPACE), ["data.n_train=600"], [*DEFINED, "n=64"])  # searched: every trial sets n
    fresh = new_study(sqlite_storage(tmp_path), name="t")
    check_space(fresh, described(SPACE), [], [*DEFINED, "n=64"])  # recorded with a searched key
    check_space(fresh, described(SPACE), [], [*DEFINED, "n=128"])  # changed: no trial ever had it
    check_space(fresh, described(SPACE), [], None)  # the training command could not compose it: not checked


def test_a_trial_whose_params_cannot_be_drawn_is_given_back_not_left_running(tmp_path):
    from src.sweep.runner import Runner

    study = new_study(sqlite_storage(tmp_path))
    study.add_trial(optuna.trial.create_trial(  # a trial that drew n from another kind of range
        state=TrialState.FAIL, params={"n": "wide"}, distributions={"n": CategoricalDistribution(["wide"])}))
    runner = Runner(None, None, None, parse({}, []), ["x"], tmp_path, str)
    runner.space.distributions.update(SPACE)
    trial = study.ask()
    with pytest.raises(UserError, match="trial 1: cannot draw its params: Cannot set different distribution kind"):
        runner.run_trial(study, trial, pruning=False)
    failed = study.get_trials()[1]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"] and not uses_slot(failed)


def test_directions_must_match_the_stored_study(tmp_path):
    storage = sqlite_storage(tmp_path)
    new_study(storage)
    with pytest.raises(UserError, match=r"created with directions \['maximize'\], not \['minimize'\]"):
        open_study(storage.connect(), "s", ["minimize"], optuna.samplers.RandomSampler(),
                           optuna.pruners.NopPruner())


def test_best_trial_prefers_the_earlier_of_equals(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    assert best_trial(study) is None
    for value in (0.5, 0.9, 0.9, 0.1):
        t = study.ask()
        study.tell(t, value)
    assert best_trial(study).number == 1


def test_empty_or_foreign_storage_file_is_refused(tmp_path):
    (tmp_path / "study.db").write_bytes(b"")
    with pytest.raises(UserError, match="is empty \\(0 bytes\\), not an Optuna study"):
        sqlite_storage(tmp_path).connect()
    assert (tmp_path / "study.db").stat().st_size == 0  # left as it was
    (tmp_path / "study.db").unlink()
    with closing(sqlite3.connect(tmp_path / "study.db")) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
        con.commit()
    with pytest.raises(UserError, match="a SQLite database of something else \\(tables invoices\\)"):
        sqlite_storage(tmp_path).connect()
    (tmp_path / "notes.log").write_text("hello\n")
    with pytest.raises(UserError, match="not an Optuna journal"):
        Storage(f"journal:{tmp_path / 'notes.log'}", 1, 2).connect()


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://me:pa%40ss@db.example:5432/sweeps", "postgresql+psycopg2://me:***@db.example:5432/sweeps"),
    ("postgresql+psycopg2://u:SECRET%20PW@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("postgresql+psycopg2://u:x%2fy@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("postgresql+psycopg2://u:p@ss@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("postgresql+psycopg2://u@h/db?password=QSECRET&sslmode=require", "postgresql+psycopg2://u@h/db?password=***&sslmode=require"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_password_is_masked_in_what_is_shown(url, shown):
    assert Storage(url, 10, 30).display == shown


def test_password_is_masked_in_every_form_a_message_may_hold():
    storage = Storage("postgresql+psycopg2://me:pa%40ss@db.example:5432/sweeps", 10, 30)
    assert storage.mask("could not connect with pa@ss or pa%40ss") == "could not connect with *** or ***"


def test_concurrent_creation_of_one_sqlite_study(tmp_path):
    storage = sqlite_storage(tmp_path)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            new_study(storage)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(optuna.get_all_study_summaries(storage.url)) == 1


def test_categorical_params_are_drawn_with_suggest(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    trial = study.ask()
    params = suggest(trial, {"a": CategoricalDistribution(["relu", "tanh"]), **SPACE})
    assert params["a"] in ("relu", "tanh") and 1 <= params["n"] <= 8


def test_a_trial_whose_process_died_before_its_first_heartbeat_is_given_back(tmp_path):
    study = new_study(sqlite_storage(tmp_path))
    orphan = study.ask()  # created, then its process died before it beat or claimed the trial
    owned = study.ask()  # claimed (its owner set), then killed before the heartbeat thread's first beat
    owned.set_user_attr("worker", "cmd/0/host/1")
    beating = study.ask()
    with heartbeat(study, beating):  # a live trial (here one of another tool: beats, no owner of ours)
        unclaimed = Unclaimed(grace=0.5)
        unclaimed.recover(study, study.get_trials())
        assert study.get_trials()[0].state == TrialState.RUNNING  # not yet: seen for less than the grace period
        deadline = time.monotonic() + 30
        while TrialState.RUNNING in [t.state for t in study.get_trials()[:2]] and time.monotonic() < deadline:
            time.sleep(0.1)
            unclaimed.recover(study, study.get_trials())
        assert unclaimed.beating == {beating.number}  # seen beating once: not queried again
    trials = study.get_trials()
    for dead in (orphan, owned):
        assert trials[dead.number].state == TrialState.FAIL and not uses_slot(trials[dead.number])
        assert trials[dead.number].user_attrs["interrupted"]
    assert trials[beating.number].state == TrialState.RUNNING


def test_storage_errors_are_classified_by_type():
    """Creation races and lost connections are retried; a bad URL, a refused login or a foreign file is not."""
    from sqlalchemy import exc

    from src.sweep.storage import permanent

    class PgError(Exception):
        def __init__(self, text: str, pgcode: str | None) -> None:
            super().__init__(text)
            self.pgcode = pgcode

    assert not permanent(exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not permanent(exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked")))
    assert not permanent(exc.OperationalError("connect", {}, PgError("connection refused", None)))
    assert not permanent(exc.ProgrammingError("CREATE", {}, PgError("relation exists", "42P07")))
    assert permanent(exc.DatabaseError("SELECT", {}, sqlite3.DatabaseError("file is not a database")))
    assert permanent(exc.OperationalError("connect", {}, PgError("bad password", "28P01")))
    assert permanent(exc.OperationalError("connect", {}, PgError('database "x" does not exist', None)))
    assert permanent(exc.ArgumentError("Could not parse SQLAlchemy URL"))
    assert not permanent(RuntimeError("anything else"))



def pop_queue(storage: Storage, claimed: list[int], errors: list[Exception]) -> None:
    """A worker with a connection of its own: runs queued trials of study "q" until none is waiting."""
    try:
        study = optuna.load_study(study_name="q", storage=storage.connect())
        while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            trial = study.ask()
            if trial.number < 12:  # a queued one (past the queue, ask() samples a new trial)
                claimed.append(trial.number)
            study.tell(trial, 0.0)
    except Exception as e:  # noqa: BLE001 - a double claim shows as a tell of a finished trial
        errors.append(e)


def test_each_queued_trial_is_claimed_once_when_workers_pop_the_sqlite_queue_at_once(tmp_path):
    """Confirmation and test runs are queued trials; SQLite has no `SELECT ... FOR UPDATE`, so without
    `BEGIN IMMEDIATE` two workers could both move the same WAITING trial to RUNNING (seen: a confirmation
    run trained twice, then `UpdateFinishedTrialError`). 10 rounds of 3 workers on 12 queued trials."""
    for round_ in range(10):
        storage = Storage(f"sqlite:///{tmp_path / f'queue{round_}.db'}", 60, 120)
        queue = optuna.create_study(study_name="q", storage=storage.connect())
        for i in range(12):
            queue.enqueue_trial({"x": i / 12})
        claimed: list[int] = []
        errors: list[Exception] = []
        workers = [threading.Thread(target=pop_queue, args=(storage, claimed, errors)) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors and sorted(claimed) == list(range(12)), (round_, errors, sorted(claimed))


def test_a_sqlite_study_deleted_while_open_is_an_error_and_never_made_again(tmp_path):
    storage = sqlite_storage(tmp_path)
    study = new_study(storage)
    complete(study, ask(study, 5))
    (tmp_path / "study.db").unlink()
    with pytest.raises(StorageGone, match=r"study.db is gone \(deleted or replaced while the sweep ran\)"):
        ask(study, 5)  # an open connection would write on into the deleted file
    with pytest.raises(StorageGone):
        storage.connect(create=False)  # a worker's or the finish step's connection
    assert not (tmp_path / "study.db").exists()


def test_a_storage_fault_is_named_in_its_drivers_words():
    from sqlalchemy.exc import OperationalError

    try:
        try:
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
        except OperationalError as e:  # what Optuna's session wrapper does with it
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. ...") from e
    except optuna.exceptions.StorageInternalError as e:
        assert failure(e) == "the study's storage failed: OperationalError: database or disk is full; rerun the " \
                             "same command to resume"
    assert failure(ValueError("not a storage fault")) is None


def test_an_unreachable_grpc_storage_is_one_line_after_one_wait(monkeypatch):
    """Before: each of six tries waited 30 s, three minutes of silence, then `GRPC connection timeout`."""
    import src.sweep.storage

    monkeypatch.setattr(src.sweep.storage, "GRPC_WAIT", 1)
    waits: list[float] = []
    ready = optuna.storages.GrpcStorageProxy.wait_server_ready
    monkeypatch.setattr(optuna.storages.GrpcStorageProxy, "wait_server_ready",
                        lambda self, timeout: waits.append(timeout) or ready(self, timeout))
    with pytest.raises(UserError, match=r"^hydra.sweeper.storage=grpc://127.0.0.1:1: no gRPC storage proxy answered "
                                        r"at 127.0.0.1:1 within 1 s; start one"):
        Storage("grpc://127.0.0.1:1", 60, 120).connect()
    assert waits == [1]


def check_set_user_attrs(url: str) -> None:
    """All keys set in one go (new ones and one already there), on a live trial and on its frozen record; on a
    finished trial none is set and Optuna's UpdateFinishedTrialError is raised."""
    study = optuna.create_study(study_name="attrs", storage=url)
    trial = study.ask()
    trial.set_user_attr("metric_0", "old")
    metrics = {f"metric_{i}": i / 7 for i in range(16)} | {"error": None, "run_dir": "trials/0", "flag": True}
    set_user_attrs(study, trial, metrics)
    assert trial.user_attrs == metrics  # what the live trial keeps for its own reads
    set_user_attrs(study, frozen(study, trial), {"metric_1": "again", "late": [1, 2]})
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == {**metrics, "metric_1": "again", "late": [1, 2]}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(study, study.trials[0], {"metric_2": "after", "new": 1})
    assert study.trials[0].user_attrs["metric_2"] == 2 / 7 and "new" not in study.trials[0].user_attrs


def test_set_user_attrs_sets_every_key_in_one_transaction_and_none_once_told(tmp_path):
    check_set_user_attrs(f"sqlite:///{tmp_path / 'study.db'}")


def test_a_trials_draw_reads_the_study_once_and_draws_what_it_drew_reading_it_per_param(tmp_path, monkeypatch):
    """TPE with constant_liar (independent, as the sweeper runs it) reads every trial of the study for each param
    (uncached), and once more for its start-up check; a draw now reads them once (`trials_read_once`), and must
    draw exactly the same params, running liars included."""
    space = {"a": IntDistribution(8, 64, log=True), "b": IntDistribution(1, 2),
             "c": CategoricalDistribution(["relu", "tanh"]), "d": FloatDistribution(1e-3, 1e-2, log=True)}
    counted, read = [], RDBStorage._get_trials  # noqa: SLF001 - the storage reads, counted
    monkeypatch.setattr(RDBStorage, "_get_trials", lambda *a, **k: counted.append(1) or read(*a, **k))
    draws, reads = [], []
    for name, once in (("per_param", False), ("once", True)):
        (tmp_path / name).mkdir()
        storage = sqlite_storage(tmp_path / name)
        sampler = make_sampler("tpe", 0, {"n_startup_trials": 3, "multivariate": False, "constant_liar": True}, parse({}, []))
        study = open_study(storage.connect(), name, ["maximize"], sampler, optuna.pruners.NopPruner())
        for value in (0.1, 0.5, 0.3, 0.9):
            trial = study.ask()
            suggest(trial, space)
            study.tell(trial, value)
        liar = study.ask()  # running: TPE counts it as a liar
        suggest(liar, space)
        trial = study.ask()
        counted.clear()
        with trials_read_once(study) if once else contextlib.nullcontext():
            draws.append(suggest(trial, space))
        reads.append(len(counted))
    assert draws[0] == draws[1] and len(draws[0]) == 4
    assert reads == [5, 1]
