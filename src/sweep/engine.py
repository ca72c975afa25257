"""One sweep command from start to finish: check everything before any trial, run the workers, finish.

    settings + search space -> study (created or joined) -> workers: ask, run, tell, tables -> finish

Any number of commands, here or on other machines, can run this on one study: they share nothing but
the storage (see `study.py` for the rules that keep the budget exact and recover dead workers' trials).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from sqlalchemy.exc import SQLAlchemyError

from ..errors import UserError, first_line
from . import budget, confirm, gpus, hparams, processes, progress, results, tracking
from .context import Sweep
from .launch import Launch, check_shareable
from .optuna_internals import close
from .recovery import give_back_owned
from .settings import SweeperSettings
from .space import describe
from .storage import Storage, StorageGone, failure
from .study import best_test, best_trial, check_space
from .prepare import check, prepare
from .worker import warm_up, work


def run(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
        config: DictConfig, arguments: list[str]) -> None:
    """The whole command; every error message leaves with the storage password masked."""
    folder = Path(config.hydra.sweep.dir).absolute()
    storage = Storage(settings.storage or f"sqlite:///{folder / 'study.db'}", settings.heartbeat_interval, settings.grace)
    try:
        _run(settings, hydra_context, task_function, config, arguments, folder, storage)
    except UserError as e:
        raise UserError(storage.mask(str(e))) from None
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as e:  # the storage failed mid-way
        raise UserError(storage.mask(failure(e) or first_line(e))) from None


def _run(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
         config: DictConfig, arguments: list[str], folder: Path, storage: Storage) -> None:
    sweep = prepare(settings, hydra_context, task_function, config, arguments, folder, storage)
    launcher = str(config.hydra.runtime.choices.get("hydra/launcher", "basic"))
    check_shareable(storage, launcher)
    local_gpus = launcher == "basic" and settings.gpus_per_worker > 0
    devices = gpus.slices(settings.gpus_per_worker, settings.n_workers) if local_gpus else None
    with processes.Pool(lambda slot, owner: work(sweep, slot, owner), lambda owner, reason: give_back_worker(sweep, owner, reason),
                        settings.max_failures, devices) as pool:
        if launcher == "basic" and settings.worker_init:  # forked workers import Keras and read the data meanwhile
            pool.warm_up(min(settings.n_workers, len(devices) if devices else len(os.sched_getaffinity(0))),
                         lambda: warm_up(sweep))
        check(sweep)
        n_workers = min(join(sweep, local=launcher == "basic"), len(devices) if devices else settings.n_workers)
        progress.print_start(sweep.name, sweep.budget, settings, n_workers, folder, storage.display, launcher)
        try:
            if n_workers and launcher == "basic":  # forked worker processes of this command
                pool.run(n_workers)
            elif n_workers:  # jobs of a Hydra launcher, each running the same worker loop
                Launch(sweep, hydra_context, task_function, config, arguments,
                       {**asdict(settings), "n_jobs": None}).run(n_workers)
        except processes.Stopped as e:
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


def join(sweep: Sweep, local: bool = True) -> int:
    """Create or join the study (its search space must match), write study.yaml; how many workers to start
    (`local` ones are capped at this machine's cores)."""
    settings, folder = sweep.settings, sweep.folder
    with results.writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    for tracker in sweep.runner.on_told:  # MLflow's store and experiment, once, before any worker logs to it
        if isinstance(tracker, tracking.MlflowLogger):
            tracker.prepare(folder)
    _check_folder(sweep)
    study = sweep.open(create=True)
    check_space(study, {k: describe(d) for k, d in sweep.space.distributions.items()}, sweep.space.fixed,
                sweep.runner.sweep_definition())
    trials = study.get_trials(deepcopy=False)
    with results.writing(folder):
        results.write_study_info(folder / "study.yaml", sweep.name, sweep.storage.display, settings, sweep.space,
                                 sweep.budget)
        if sweep.task_config.get("trainer", {}).get("tensorboard"):  # TensorBoard's HParams tab: the searched ranges
            hparams.write_sweep_experiment(folder, sweep.space.distributions, sweep.budget)
    n_workers = plan_workers(settings.n_workers, sweep.budget, trials, sweep.name, needs_replay(sweep, study),
                             confirming=settings.confirm.top_k > 0 and not confirm.Confirmation(sweep).finished(),
                             cores=len(os.sched_getaffinity(0)) if local else settings.n_workers,
                             whole_grid=sweep.budget < settings.n_trials)
    close(study)  # no connection crosses the fork
    return n_workers


def _check_folder(sweep: Sweep) -> None:
    """Refuse to start a new study over the tables of another one (a lost, emptied or replaced storage), before
    anything is created: a refused command leaves no empty study behind, in a storage of its own or a shared one."""
    table = sweep.folder / "trials.csv"
    if not table.is_file():
        return
    try:
        rows = len(pd.read_csv(table))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        rows = 0
    if not rows:
        return
    try:
        storage = sweep.storage.connect(create=False)
    except StorageGone:
        storage = None
    if storage is not None:
        try:
            if sweep.name in optuna.get_all_study_names(storage) and \
                    optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False):
                return
        finally:
            close(storage)  # no connection crosses the fork
    raise UserError(f"{table} lists {rows} trials but study {sweep.name!r} has none in its storage (emptied or "
                    f"replaced?); restore the storage, or use another hydra.sweep.dir or study_name")


def needs_replay(sweep: Sweep, study: optuna.Study) -> bool:
    """Whether the best trial still lacks its one replay on the test set."""
    return bool(sweep.settings.test_overrides) and best_trial(study) is not None and best_test(study) is None


def plan_workers(requested: int, n_trials: int, trials: list[Any], name: str, replay: bool, confirming: bool = False,
                 cores: int | None = None, whole_grid: bool = False) -> int:
    """How many workers to start: no more than the cores (local workers) or the trials left (with a note).
    `whole_grid`: n_trials is a grid's every point (fewer than asked)."""
    used, left = budget.slots_used(trials), budget.left(trials, n_trials)
    cores = cores or len(os.sched_getaffinity(0))
    if budget.next_step(trials, n_trials) == "done":
        if confirming:  # the search is done; its confirmation runs are not
            return max(1, min(requested, cores))
        more = "it ran the whole grid; set study_name" if whole_grid else "raise n_trials or set study_name"
        print(f"study {name!r} is complete: {used}/{n_trials} trials; {more}", flush=True)
        return 1 if replay else 0
    n = max(1, min(requested, left, cores))
    if n < requested:
        print(f"note: hydra.sweeper.n_workers={requested} capped at {n} ({left} trials left, {cores} cores)", flush=True)
    return n


def give_back_worker(sweep: Sweep, owner: str, reason: str) -> None:
    """After a worker of this command ended abnormally: give back the trials it left running."""
    try:
        study = sweep.open()
        try:
            give_back_owned(study, owner, reason)
        finally:
            close(study)
    except Exception as e:  # the storage is down or full: the heartbeat check recovers the trial later
        print(f"could not give back the trials of a stopped worker ({type(e).__name__}); the next worker to "
              f"look recovers them after grace_period", file=sys.stderr, flush=True)


def finish(sweep: Sweep) -> None:
    """After every worker has exited: final tables with importance, best.yaml, the summary."""
    study = sweep.open()
    best, test = best_trial(study), best_test(study)
    sweep.write_tables(study, importance=True)
    confirmation = confirm.Confirmation(sweep)
    with results.writing(sweep.folder):
        confirmed = confirmation.results(study) if sweep.settings.confirm.top_k else None
    if confirmed and confirmed["winner"] is not None:  # the winner by mean over seeds, not the luckiest run
        best, test = study.get_trials(deepcopy=False)[confirmed["winner"]], confirmation.test_score(confirmed)
    replay = sweep.runner.replay(best) if best is not None else []
    if best is not None:
        with results.writing(sweep.folder):
            results.write_best(sweep.folder / "best.yaml", best, sweep.objectives, replay,
                               sweep.runner.compose(best.params), test, confirmed)
    for tracker in sweep.runner.on_told:
        if isinstance(tracker, tracking.MlflowLogger):
            tracker.log_sweep(sweep, best, test)
    progress.print_summary(study, sweep.storage.display, sweep.folder, sweep.objectives, best, test,
                           replay, confirmed)
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL and budget.uses_slot(t)]
    if best is None and failed:  # a sweep whose every trial failed is a failed command, whatever n_trials
        raise UserError(f"no trial completed: {len(failed)} failed; the first (trial {failed[0].number}): "
                        f"{failed[0].user_attrs['error']}")
