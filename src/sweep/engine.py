"""One sweep command from start to finish: check everything before any trial, run the workers, finish.

    settings + search space -> study (created or joined) -> workers: ask, run, tell, tables -> finish

Any number of commands, here or on other machines, can run this on one study: they share nothing but
the storage (see `study.py` for the rules that keep the budget exact and recover dead workers' trials).
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import optuna
import pandas as pd
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution
from sqlalchemy.exc import SQLAlchemyError

from src.config import check as check_config
from src.errors import UserError
from src.sweep import confirm, progress, results, tracking, workers
from src.sweep import study as studies
from src.sweep.pruning import make_pruner
from src.sweep.batch import Batcher
from src.sweep.runner import INTERRUPTED, Runner
from src.sweep.samplers import grid_size, make_sampler
from src.sweep.settings import SweeperSettings
from src.sweep.space import SearchSpace, format_value, parse


@dataclass
class Sweep:
    """What every worker of this command shares: the question, where its answer lives, how to run a trial."""

    settings: SweeperSettings
    space: SearchSpace
    name: str
    storage: studies.Storage
    folder: Path
    budget: int
    runner: Runner
    task_config: DictConfig
    started: datetime

    @property
    def objectives(self) -> list[str]:
        return list(self.settings.objectives)

    def open(self) -> optuna.Study:
        """A new connection to the study, with this process's sampler and pruner."""
        s = self.settings
        sampler = make_sampler(s.sampler, s.seed, s.samplers.get(s.sampler_name) or {}, self.space)
        pruner = make_pruner(s.pruner, s.pruners.get(s.pruner_name) or {})
        return studies.open_study(self.storage.connect(), self.name, list(s.directions), sampler, pruner)

    def write_tables(self, study: optuna.Study, importance: bool = False) -> None:
        with writing(self.folder):
            results.write_sweep_tables(self.folder, study, self.objectives, self.settings.leaderboard_size, importance)


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """A full disk or an unwritable folder as one line, not a traceback (what was written stays)."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write the sweep's files in {folder}: {e.strerror or e}") from None


def run(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
        config: DictConfig, arguments: list[str]) -> None:
    """The whole command; every error message leaves with the storage password masked."""
    folder = Path(config.hydra.sweep.dir).absolute()
    storage = studies.Storage(settings.storage or f"sqlite:///{folder / 'study.db'}",
                              settings.heartbeat_interval, settings.grace)
    try:
        _run(settings, hydra_context, task_function, config, arguments, folder, storage)
    except UserError as e:
        raise UserError(storage.mask(str(e))) from None
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:  # the storage failed mid-way
        lines = str(e).strip().splitlines()
        raise UserError(storage.mask(f"the study's storage failed: {type(e).__name__}: "
                                     f"{lines[0] if lines else ''}; rerun to resume")) from None


def _run(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
         config: DictConfig, arguments: list[str], folder: Path, storage: studies.Storage) -> None:
    launcher = config.hydra.runtime.choices.get("hydra/launcher", "basic")
    if launcher != "basic":
        raise UserError(f"hydra/launcher={launcher} is not used: the keras_optuna sweeper runs its trials in its own "
                        f"worker processes; use hydra.sweeper.n_workers (here) or the same command on more machines")
    space = parse(settings.params, arguments)
    budget = min(settings.n_trials, grid_size(space)) if settings.sampler_name == "grid" else settings.n_trials
    mask = tracking.mask_also(settings.mlflow.tracking_uri, storage.mask) if settings.mlflow.tracking_uri else storage.mask
    runner = Runner(hydra_context, task_function, config, space, list(settings.objectives), folder, mask,
                    extend=get_method(settings.custom_search_space) if settings.custom_search_space else None,
                    keep_models=settings.confirm.top_k > 0)
    if settings.pruner_name not in ("none", "NopPruner") and not settings.pruning:
        print("note: pruning is off: Optuna cannot prune multi-objective studies", flush=True)
    sweep = Sweep(settings, space, settings.study_name or "sweep", storage, folder, budget, runner,
                  task_config=validate(runner, space, settings.confirm.top_k > 0), started=datetime.now())

    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    if settings.mlflow.tracking_uri:  # each finished trial as an MLflow run (e.g. sqlite:///<sweep dir>/mlflow.db)
        runner.on_told = logger = tracking.MlflowLogger(settings.mlflow, sweep.name, mask)
        logger.prepare()
    study = sweep.open()
    studies.check_space(study, {k: results.describe(d) for k, d in space.distributions.items()}, space.fixed)
    trials = study.get_trials(deepcopy=False)
    _check_folder(folder, sweep.name, trials)
    with writing(folder):
        results.write_study_info(folder / "study.yaml", sweep.name, storage.display, settings, space, budget)
    n_workers = plan_workers(settings.n_workers, budget, trials, sweep.name, needs_replay(sweep, study),
                             confirming=settings.confirm.top_k > 0 and not confirm.finished(sweep))
    studies.close(study)  # no connection crosses the fork
    del study

    progress.print_start(sweep.name, budget, settings, n_workers, folder, storage.display)
    try:
        if n_workers:
            workers.run(lambda slot, owner: work(sweep, slot, owner), n_workers,
                        lambda owner, reason: give_back(sweep, owner, reason), settings.max_failures)
    except workers.Stopped as e:
        try:
            sweep.write_tables(sweep.open(), importance=True)
        except Exception:  # noqa: BLE001 - the tables of the last trial stay; nothing else to save
            pass
        print(f"{e}: the running trials are given back (marked FAIL, not counted); tables are in {folder}; "
              f"run the same command again to resume", file=sys.stderr, flush=True)
        raise SystemExit(e.code) from None
    except UserError:
        try:
            finish(sweep)
        except Exception:  # noqa: BLE001 - the storage or disk that failed the workers: their error is the one
            pass
        raise
    finish(sweep)


def validate(runner: Runner, space: SearchSpace, runner_confirms: bool = False) -> DictConfig:
    """Compose the trial config at every choice and at both ends of every range, and check each, so a bad
    key or a value that can only fail stops the sweep before any trial. Returns one (for warm-up)."""
    def ends(dist: Any) -> list[Any]:
        return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]

    base = {key: ends(dist)[0] for key, dist in space.distributions.items()}
    samples = [({}, base)] + [({key: v}, {**base, key: v}) for key, dist in space.distributions.items()
                              for v in ends(dist)[1:]]
    first = None
    for varied, params in samples:
        where = f" (with {', '.join(f'{k}={format_value(v)}' for k, v in varied.items())})" if varied else ""
        try:
            cfg = runner.compose(params, resolve=False)
        except HydraException as e:
            raise UserError(f"{str(e).splitlines()[0]}{where}") from None
        try:
            if "trainer" in cfg:  # this project's training config (another Hydra app brings its own checks)
                check_config(cfg)
            if runner_confirms:
                confirm.check(cfg)
        except UserError as e:
            raise UserError(f"{e}{where}") from None
        first = first if first is not None else cfg
    return first


def _check_folder(folder: Path, name: str, trials: list[Any]) -> None:
    """Refuse to start a new study over the tables of another one (a lost, emptied or replaced storage)."""
    table = folder / "trials.csv"
    if trials or not table.is_file():
        return
    try:
        rows = len(pd.read_csv(table))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        rows = 0
    if rows:
        raise UserError(f"{table} lists {rows} trials but study {name!r} has none in its storage (emptied or "
                        f"replaced?); restore the storage, or use another hydra.sweep.dir or study_name")


def needs_replay(sweep: Sweep, study: optuna.Study) -> bool:
    """Whether the best trial still lacks its one replay on the test set."""
    return bool(sweep.settings.test_overrides) and studies.best_trial(study) is not None \
        and studies.best_test(study) is None


def plan_workers(requested: int, budget: int, trials: list[Any], name: str, replay: bool, confirming: bool = False) -> int:
    """How many worker processes to start: no more than the cores or the trials left (with a note)."""
    used = sum(map(studies.counts, trials))
    left = max(budget - used, 0) + sum(t.state.name == "WAITING" for t in trials)
    cores = len(os.sched_getaffinity(0))
    if studies.next_step(trials, budget) == "done":
        if confirming:  # the search is done; its confirmation runs are not
            return max(1, min(requested, cores))
        print(f"study {name!r} is complete: {used}/{budget} trials; raise n_trials or set study_name", flush=True)
        return 1 if replay else 0
    n = max(1, min(requested, left, cores))
    if n < requested:
        print(f"note: hydra.sweeper.n_workers={requested} capped at {n} ({left} trials left, {cores} cores)", flush=True)
    return n


def work(sweep: Sweep, slot: int, owner: str) -> workers.Exit:
    """One worker process: warm up, then ask, run, tell, rewrite the tables and print a line, until done.

    Returns DONE when no trial is left (slot 0 then replays the best trial on the test set), RETIRED after
    `max_trials_per_worker` trials trained alone or batched groups (a fresh process takes over: TensorFlow keeps
    a little memory per model and per program).
    """
    s = sweep.settings
    if s.worker_init:
        get_method(s.worker_init)(sweep.task_config)
    study = sweep.open()
    sweep.runner.live = s.n_workers == 1 and sys.stdout.isatty()
    unclaimed, patience = studies.Unclaimed(s.grace), studies.Patience(s.heartbeat_interval)
    batcher = Batcher(sweep.runner, sweep.task_config) if s.batch_trials > 1 and "trainer" in sweep.task_config else None
    ran = 0
    while True:
        studies.fail_stale_trials(study)
        unclaimed.give_back(study, study.get_trials(deepcopy=False))
        trials = study.get_trials(deepcopy=False)
        failed = studies.failures_since(trials, sweep.started)
        if s.max_failure_rate is not None:
            ran_here = studies.finished_since(trials, sweep.started)
            if failed and len(failed) / len(ran_here) > s.max_failure_rate:
                raise UserError(f"stopped: {len(failed)} of {len(ran_here)} trials failed (hydra.sweeper."
                                f"max_failure_rate={s.max_failure_rate}); last error: {failed[-1].user_attrs.get('error')}")
        elif len(failed) >= s.max_failures:
            raise UserError(f"stopped after {len(failed)} failed trials (hydra.sweeper.max_failures="
                            f"{s.max_failures}); last error: {failed[-1].user_attrs.get('error')}")
        step = studies.next_step(trials, sweep.budget)
        if step == "done":
            if s.confirm.top_k:  # the top k retrained with more seeds; the winner tested once per seed
                confirm.work(sweep, slot, owner, batcher)
            elif slot == 0:
                sweep.runner.test_best(study, list(s.test_overrides))
            return workers.Exit.DONE
        if step == "wait":  # others' running trials use the last slots; one may die and give its slot back
            patience.pause()
            continue
        patience.reset()
        if ran >= s.max_trials_per_worker:  # retire only for a trial to run: the replay and confirmation need no fresh process
            return workers.Exit.RETIRED
        with ExitStack() as claimed:
            share = math.ceil((sweep.budget - sum(map(studies.counts, trials))) / s.n_workers)  # workers stay even
            room = s.max_failures - len(failed) if s.max_failure_rate is None else s.batch_trials  # stop on time
            n = max(1, min(s.batch_trials, s.max_trials_per_worker - ran, share, room))
            trials = _claim(sweep, study, owner, n, claimed)
            try:
                if batcher is not None:  # a batch counts its groups (one program each) and its trials trained alone
                    ran += batcher.run(study, trials, s.pruning)
                elif trials:
                    sweep.runner.run_trial(study, trials[0], s.pruning)
                    ran += 1
            except BaseException as e:  # Ctrl-C, or this worker stops on an error: every claimed trial not told
                reason = str(e) or INTERRUPTED if isinstance(e, KeyboardInterrupt) else f"its worker stopped: {e}"
                claimed.close()  # heartbeats first: a beat's SQLite transaction beside the give-back can deadlock both
                for trial in trials:  # yet goes back and is queued again (a no-op for told ones)
                    studies.give_back(study, studies.frozen(study, trial), reason)
                raise
            finally:
                if trials:
                    sweep.write_tables(study)
        for trial in trials:
            progress.print_trial(study, trial.number, sweep.budget, sweep.objectives[0], sweep.started, sweep.runner.live)


def _claim(sweep: Sweep, study: optuna.Study, owner: str, n: int, claimed: ExitStack) -> list[optuna.Trial]:
    """Up to `n` new trials for this worker, each created, beating and owned at once; none past the budget."""
    trials: list[optuna.Trial] = []
    while len(trials) < n and (not trials or studies.next_step(study.get_trials(deepcopy=False), sweep.budget) == "ask"):
        with workers.signals_held():  # the trial is created, beating and owned at once, or not at all
            trial = study.ask()
            claimed.enter_context(studies.heartbeat(study, trial))
            trial.set_user_attr("worker", owner)
        if not studies.within_budget(study.get_trials(deepcopy=False), trial.number, sweep.budget):
            studies.give_back(study, studies.frozen(study, trial), "not run: another worker took the "
                              "study's last trial first", retry=False)
            break
        trials.append(trial)
    return trials


def give_back(sweep: Sweep, owner: str, reason: str) -> None:
    """After a worker of this command ended abnormally: give back the trials it left running."""
    try:
        study = sweep.open()
        try:
            studies.give_back_owned(study, owner, reason)
        finally:
            studies.close(study)
    except Exception as e:  # the storage is down or full: the heartbeat check recovers the trial later
        print(f"could not give back the trials of a stopped worker ({type(e).__name__}); the next worker to "
              f"look recovers them after grace_period", file=sys.stderr, flush=True)


def finish(sweep: Sweep) -> None:
    """After every worker has exited: final tables with importance, best.yaml, the summary."""
    study = sweep.open()
    best, test = studies.best_trial(study), studies.best_test(study)
    sweep.write_tables(study, importance=True)
    with writing(sweep.folder):
        confirmed = confirm.finish(sweep, study) if sweep.settings.confirm.top_k else None
    if confirmed and confirmed["winner"] is not None:  # the winner by mean over seeds, not the luckiest run
        best, test = study.get_trials(deepcopy=False)[confirmed["winner"]], confirm.test_score(sweep, confirmed)
    if best is not None:
        with writing(sweep.folder):
            results.write_best(sweep.folder / "best.yaml", best, sweep.objectives, sweep.runner.replay(best.params),
                               sweep.runner.compose(best.params), test, confirmed)
    progress.print_summary(study, sweep.storage.display, sweep.folder, sweep.objectives, best, test,
                           sweep.runner.replay(best.params) if best else [], confirmed)
