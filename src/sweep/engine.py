"""One sweep command from start to finish: check everything before any trial, run the workers, finish.

    settings + search space -> study (created or joined) -> workers: ask, run, tell, tables -> finish

Any number of commands, here or on other machines, can run this on one study: they share nothing but
the storage (see `study.py` for the rules that keep the budget exact and recover dead workers' trials).
"""
from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution
from sqlalchemy.exc import SQLAlchemyError

from src.config import check as check_config
from src.errors import UserError, first_line
from src.sweep import budget, confirm, processes, progress, results, tracking
from src.sweep.context import Sweep
from src.sweep.optuna_internals import close
from src.sweep.recovery import give_back_owned
from src.sweep.runner import Runner
from src.sweep.samplers import grid_size
from src.sweep.settings import SweeperSettings
from src.sweep.space import SearchSpace, describe, format_value, parse
from src.sweep.storage import Storage, masking
from src.sweep.study import best_test, best_trial, check_space
from src.sweep.worker import work


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
        raise UserError(storage.mask(f"the study's storage failed: {first_line(e)}; rerun to resume")) from None


def _run(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
         config: DictConfig, arguments: list[str], folder: Path, storage: Storage) -> None:
    sweep = prepare(settings, hydra_context, task_function, config, arguments, folder, storage)
    n_workers = join(sweep)
    progress.print_start(sweep.name, sweep.budget, settings, n_workers, folder, storage.display)
    try:
        if n_workers:
            processes.run(lambda slot, owner: work(sweep, slot, owner), n_workers,
                          lambda owner, reason: give_back_worker(sweep, owner, reason), settings.max_failures)
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


def prepare(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
            config: DictConfig, arguments: list[str], folder: Path, storage: Storage) -> Sweep:
    """Everything checked before the study is touched: the launcher, the search space, every trial config."""
    launcher = config.hydra.runtime.choices.get("hydra/launcher", "basic")
    if launcher != "basic":
        raise UserError(f"hydra/launcher={launcher} is not used: the keras_optuna sweeper runs its trials in its own "
                        f"worker processes; use hydra.sweeper.n_workers (here) or the same command on more machines")
    space = parse(settings.params, arguments)
    n_trials = min(settings.n_trials, grid_size(space)) if settings.sampler_name == "grid" else settings.n_trials
    runner = Runner(hydra_context, task_function, config, space, list(settings.objectives), folder,
                    masking(storage.url, settings.mlflow.tracking_uri),
                    extend=get_method(settings.custom_search_space) if settings.custom_search_space else None,
                    keep_models=settings.confirm.top_k > 0)
    if settings.pruner_name not in ("none", "NopPruner") and not settings.pruning:
        print("note: pruning is off: Optuna cannot prune multi-objective studies", flush=True)
    return Sweep(settings, space, settings.study_name or "sweep", storage, folder, n_trials, runner,
                 task_config=validate(runner, space, settings.confirm.top_k > 0), started=datetime.now())


def join(sweep: Sweep) -> int:
    """Create or join the study (its search space must match), write study.yaml; how many workers to start."""
    settings, folder = sweep.settings, sweep.folder
    with results.writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    if settings.mlflow.tracking_uri:  # each finished trial as an MLflow run (e.g. sqlite:///<sweep dir>/mlflow.db)
        sweep.runner.on_told = logger = tracking.MlflowLogger(settings.mlflow, sweep.name, sweep.runner.mask)
        logger.prepare()
    study = sweep.open()
    check_space(study, {k: describe(d) for k, d in sweep.space.distributions.items()}, sweep.space.fixed)
    trials = study.get_trials(deepcopy=False)
    _check_folder(folder, sweep.name, trials)
    with results.writing(folder):
        results.write_study_info(folder / "study.yaml", sweep.name, sweep.storage.display, settings, sweep.space,
                                 sweep.budget)
    n_workers = plan_workers(settings.n_workers, sweep.budget, trials, sweep.name, needs_replay(sweep, study),
                             confirming=settings.confirm.top_k > 0 and not confirm.Confirmation(sweep).finished())
    close(study)  # no connection crosses the fork
    return n_workers


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
            raise UserError(f"{first_line(e, typed=False)}{where}") from None
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
    return bool(sweep.settings.test_overrides) and best_trial(study) is not None and best_test(study) is None


def plan_workers(requested: int, n_trials: int, trials: list[Any], name: str, replay: bool, confirming: bool = False) -> int:
    """How many worker processes to start: no more than the cores or the trials left (with a note)."""
    used, left = budget.slots_used(trials), budget.left(trials, n_trials)
    cores = len(os.sched_getaffinity(0))
    if budget.next_step(trials, n_trials) == "done":
        if confirming:  # the search is done; its confirmation runs are not
            return max(1, min(requested, cores))
        print(f"study {name!r} is complete: {used}/{n_trials} trials; raise n_trials or set study_name", flush=True)
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
    if best is not None:
        with results.writing(sweep.folder):
            results.write_best(sweep.folder / "best.yaml", best, sweep.objectives, sweep.runner.replay(best.params),
                               sweep.runner.compose(best.params), test, confirmed)
    progress.print_summary(study, sweep.storage.display, sweep.folder, sweep.objectives, best, test,
                           sweep.runner.replay(best.params) if best else [], confirmed)
