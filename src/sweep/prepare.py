"""Before any study is touched: the search space parsed and the `Sweep` every phase reads (`prepare`), then the
trial config composed at every choice and at both ends of every range and checked (`check`). The sweep command
does both, its local workers warming up in between; a launcher job prepares again, from the same ingredients,
before it runs the worker loop."""
from __future__ import annotations

import pkgutil
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution

from ..cli import composition_error
from ..config import check as check_config
from ..data import check_folder
from ..errors import UserError
from ..metrics import RUN_METRICS, SETUP
from . import confirm, hparams
from .context import Sweep
from .runner import Runner
from .samplers import grid_size
from .settings import SweeperSettings
from .space import SearchSpace, format_value, parse
from .storage import Storage, masking
from .tracking import MlflowLogger
from .wandb_tracking import WandbLogger


def prepare(settings: SweeperSettings, hydra_context: HydraContext, task_function: TaskFunction,
            config: DictConfig, arguments: list[str], folder: Path, storage: Storage) -> Sweep:
    """The sweep's context, before the study is touched: the search space and one composed trial config (the
    workers warm up with it); `check` composes and checks the others. Each launcher job makes it again from
    the same ingredients."""
    space = parse(settings.params, arguments)
    n_trials = min(settings.n_trials, grid_size(space)) if settings.sampler_name == "grid" else settings.n_trials
    runner = Runner(hydra_context, task_function, config, space, list(settings.objectives), folder,
                    masking(storage.url, settings.mlflow.tracking_uri),
                    extend=user_function("hydra.sweeper.custom_search_space", settings.custom_search_space)
                    if settings.custom_search_space else None,
                    keep_models=settings.confirm.top_k > 0)
    if settings.pruner_name not in ("none", "NopPruner") and not settings.pruning:
        print("note: pruning is off: Optuna cannot prune multi-objective studies", flush=True)
    for note in [*settings.notes, *direction_notes(settings)]:
        print(f"note: {note}", flush=True)
    task_config = _compose(runner, *samples(space)[0])
    if task_config.get("trainer", {}).get("tensorboard"):  # each trial's HParams session, once told
        runner.on_told.append(hparams.SessionWriter())
    if settings.wandb.project:  # each told trial as a W&B run
        runner.on_told.append(WandbLogger(settings.wandb, folder))
    name = settings.study_name or fresh_name(runner, folder)
    if settings.mlflow.tracking_uri:  # each told trial as an MLflow run (the command makes its store, once)
        runner.on_told.append(MlflowLogger(settings.mlflow, name, runner.mask))
    return Sweep(settings, space, name, storage, folder, n_trials, runner, task_config=task_config,
                 started=datetime.now())


def direction_notes(settings: SweeperSettings) -> list[str]:
    """A direction that looks the wrong way for its metric (e.g. a hydra-optuna-sweeper file's `direction: minimize`
    meeting this sweeper's default objective, val_accuracy): legal, but the best trial is then the worst model."""
    notes = []
    for metric, direction in zip(settings.objectives, settings.directions):
        if ("acc" in metric and direction == "minimize") or ("loss" in metric and direction == "maximize"):
            notes.append(f"hydra.sweeper.directions: {direction} {metric}: the best trial has the "
                         f"{'lowest' if direction == 'minimize' else 'highest'} {metric}; to score another metric, "
                         f"set hydra.sweeper.objectives (e.g. [val_loss] with direction minimize)")
    return notes


def check_objectives(objectives: list[str], cfg: DictConfig) -> None:
    """Each objective must be a metric a trial returns (metrics.json's numbers, and `<m>` and `val_<m>` for each of
    `trainer.metrics`; never the test set's); unknowable when a metric is a `_target_` block (its own name)."""
    extra = list(cfg.trainer.metrics or [])
    if not all(isinstance(m, str) for m in extra):
        return
    allowed = [m for m in RUN_METRICS if m not in SETUP and not m.startswith("test_")] + [
        f"{p}{m}" for m in extra if m not in ("accuracy", "acc") for p in ("", "val_")]
    for objective in objectives:
        if objective not in allowed:
            raise UserError(f"hydra.sweeper.objectives: {objective!r} is not a metric the training returns; allowed: "
                            f"{', '.join(allowed)}")


def user_function(setting: str, path: str) -> Callable[..., Any]:
    """The function a setting names (`module.function`), or one line naming what cannot be imported."""
    try:
        function = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{setting}={path!r} cannot be imported: {e}") from None
    if not callable(function):
        raise UserError(f"{setting}={path!r} is a {type(function).__name__}, not a function")
    return function


def fresh_name(runner: Runner, folder: Path) -> str:
    """`study_name: null` means a fresh study per run (hydra-optuna-sweeper's meaning): named after the folder
    Hydra made for this run (`conf/sweep.yaml`: <sweep>-<time>; another app's: <app>-<date>-<time>), so that
    every job of the command finds the same study; printed, with how to resume it."""
    if runner.own:
        name, resume = folder.name, f"hydra.sweeper.study_name={folder.name}"
    else:
        name = f"{runner.config.hydra.job.name}-{folder.parent.name}-{folder.name}"
        resume = f"hydra.sweeper.study_name={name} hydra.sweep.dir={folder}"
    print(f"note: hydra.sweeper.study_name is null: a fresh study {name!r} (to resume it, rerun with {resume})",
          flush=True)
    return name


def samples(space: SearchSpace) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(what is varied, the params): every param at its first choice or low end, then each other choice and high
    end in turn."""
    def ends(dist: Any) -> list[Any]:
        return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]

    base = {key: ends(dist)[0] for key, dist in space.distributions.items()}
    return [({}, base)] + [({key: v}, {**base, key: v}) for key, dist in space.distributions.items()
                           for v in ends(dist)[1:]]


def check(sweep: Sweep) -> None:
    """Compose the trial config at every choice and at both ends of every range, and check each, so a bad
    key or a value that can only fail stops the sweep before any trial."""
    runner = sweep.runner
    for n, (varied, params) in enumerate(samples(sweep.space)):
        cfg = sweep.task_config if n == 0 else _compose(runner, varied, params)
        try:
            if runner.own:  # this project's training config (another Hydra app brings its own checks)
                check_config(cfg)
                if n == 0 and cfg.data.path is not None:  # the files, before a study is made for them
                    check_folder(cfg.data.path)
                if n == 0:
                    check_objectives(sweep.settings.objectives, cfg)
            if sweep.settings.confirm.top_k > 0:
                confirm.check(cfg)
        except UserError as e:
            raise UserError(f"{e}{_where(varied)}") from None


def _compose(runner: Runner, varied: dict[str, Any], params: dict[str, Any]) -> DictConfig:
    try:
        return runner.compose(params, resolve=False)
    except HydraException as e:
        raise UserError(f"{composition_error(e)}{_where(varied)}") from None


def _where(varied: dict[str, Any]) -> str:
    return f" (with {', '.join(f'{k}={format_value(v)}' for k, v in varied.items())})" if varied else ""
