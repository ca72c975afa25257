"""One trial's life in a worker: draw its params, compose its config, run the task as a Hydra job in this
process, tell the study the outcome. Also the best trial's one replay on the test set."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import optuna
from hydra.core.utils import JobReturn, configure_log, run_job
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from src.errors import UserError
from src.sweep import progress
from src.sweep.compose import Composer
from src.sweep import study as studies
from src.sweep.pruning import PruningHook, current_hook
from src.sweep.space import SearchSpace
from src.sweep.workers import signals_held

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted by Ctrl-C"
SAVE_MODEL = "++trainer.save_model=true"
RESERVED = ("worker", "error", "interrupted", "run_dir")  # the sweeper's own user attributes


class Runner:
    """Runs trials of one search space as Hydra jobs of the sweep's config, in this process."""

    def __init__(self, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
                 space: SearchSpace, objectives: list[str], folder: Path, mask: Callable[[str], str],
                 extend: Callable[[DictConfig, optuna.Trial], None] | None = None, keep_models: bool = False) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.composer = Composer(getattr(hydra_context, "config_loader", None), config)
        # each trial saves its model: the confirmation scores the winner's saved models on the test set
        self.keep = [SAVE_MODEL] if keep_models else []
        self.space, self.objectives, self.folder, self.mask = space, objectives, folder, mask
        self.extend = extend  # hydra-optuna-sweeper's custom_search_space: suggests extra, conditional params
        self.live = False  # a live line per epoch (one worker writing to a terminal)
        self.on_told: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None  # e.g. MLflow's logger

    def run_trial(self, study: optuna.Study, trial: optuna.Trial, pruning: bool) -> None:
        """Draw the trial's params, train it, tell the study (Ctrl-C passes through: the worker gives it back)."""
        self.train_alone(study, trial, self.draw(study, trial), pruning)

    def draw(self, study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's params (a queued retry keeps its own); a trial that cannot draw them is given back."""
        try:
            params = studies.suggest(trial, self.space.distributions)
            if self.extend is not None:
                self.extend(self.config, trial)
                params = dict(trial.params)
        except Exception as e:  # e.g. a queued retry whose stored params no longer fit
            studies.give_back(study, studies.frozen(study, trial), f"cannot draw params: {e}", retry=False)
            raise UserError(f"trial {trial.number}: cannot draw its params: {e}; set hydra.sweeper.study_name "
                            f"to start a new study") from None
        return params

    def hook(self, trial: optuna.Trial, pruning: bool, live: bool = False) -> PruningHook:
        """The per-epoch hook through which `trial` reports to the pruner (and to the live line)."""
        return PruningHook(trial, self.objectives[0], pruning, report=len(self.objectives) == 1,
                           show=progress.live_line(trial.number, self.objectives[0]) if live else None)

    def train_alone(self, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], pruning: bool) -> None:
        """Train a drawn trial as its own Hydra job in this process and tell the study."""
        hook = self.hook(trial, pruning, live=self.live)
        token = current_hook.set(hook)
        try:
            outcome = self.run_job(self.space.overrides(params) + self.keep, trial.number)
        except Exception as e:  # Hydra's own steps around the task (its folder, its logs): the trial failed
            outcome = e
        finally:  # Ctrl-C: the worker gives back every trial it claimed, once their heartbeats have stopped
            current_hook.reset(token)
        self.finish(study, trial, outcome, hook)

    def finish(self, study: optuna.Study, trial: optuna.Trial, outcome: Any, hook: PruningHook) -> None:
        """Tell the study what the trial's task returned or raised (unless another worker failed it meanwhile)."""
        try:
            with signals_held():  # told whole: a stop signal cutting a storage transaction would leave it locked
                self.tell(study, trial, outcome, hook)
        except optuna.exceptions.UpdateFinishedTrialError:
            print(f"trial {trial.number} was failed by another worker while it ran (no heartbeat within "
                  f"the grace period); its result is not recorded", flush=True)
        else:
            if self.on_told is not None:
                self.on_told(study, studies.frozen(study, trial))

    def tell(self, study: optuna.Study, trial: optuna.Trial, outcome: Any, hook: PruningHook) -> None:
        """Record what the task returned (a dict of metrics or one number) or raised."""
        trial.set_user_attr("run_dir", f"{self.folder}/trials/{trial.number}")
        if isinstance(outcome, BaseException):
            message = str(outcome) if isinstance(outcome, UserError) else f"{type(outcome).__name__}: {outcome}"
            trial.set_user_attr("error", message.splitlines()[0] if message else type(outcome).__name__)
            return _tell(study, trial, state=TrialState.FAIL)
        metrics = outcome if isinstance(outcome, dict) else {self.objectives[0]: outcome}
        for key, value in metrics.items():  # one attribute per metric: optuna-dashboard sorts and filters by them
            if _plain(value) and value is not None and key not in RESERVED:
                trial.set_user_attr(key, value)
        if hook.pruned_at is not None:
            return _tell(study, trial, state=TrialState.PRUNED)
        values = [metrics.get(m) for m in self.objectives]
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            trial.set_user_attr("error", f"objective {self.objectives} not in the task's metrics or not finite: {values}")
            return _tell(study, trial, state=TrialState.FAIL)
        _tell(study, trial, values=values)

    def run_job(self, overrides: list[str], number: int, subdir: str | None = None) -> Any:
        """Run the task on `overrides` as Hydra job `number`: what it returned, or the exception it raised."""
        try:
            cfg = self.job_config(overrides, number, subdir)
        except HydraException as e:
            return UserError(f"cannot compose {' '.join(overrides)}: {e}")
        return self.run_config(cfg)

    def run_config(self, cfg: DictConfig) -> Any:
        """Run the task as the Hydra job `cfg` (from `job_config`): what it returned, or the exception it raised."""
        ret: JobReturn = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                 config=cfg, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # as Hydra's launcher does
        return ret._return_value

    def job_config(self, overrides: list[str], number: int, subdir: str | None = None) -> DictConfig:
        """Hydra job `number`'s config for `overrides`, its folder set, and no password in its hydra node."""
        cfg = self.load(overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = number
            if subdir is not None:
                cfg.hydra.sweep.subdir = subdir
            # the job's .hydra/*.yaml copies never hold the storage password
            if cfg.hydra.sweeper.get("storage"):
                cfg.hydra.sweeper.storage = self.mask(str(cfg.hydra.sweeper.storage))
            if cfg.hydra.sweeper.get("mlflow") and cfg.hydra.sweeper.mlflow.get("tracking_uri"):
                cfg.hydra.sweeper.mlflow.tracking_uri = self.mask(str(cfg.hydra.sweeper.mlflow.tracking_uri))
            cfg.hydra.overrides.hydra = [self.mask(o) for o in cfg.hydra.overrides.hydra]
        return cfg

    def load(self, overrides: list[str]) -> DictConfig:
        """The job's config for `overrides`, hydra node included, as Hydra composes it for a sweep job."""
        return self.composer.load(overrides)

    def compose(self, params: dict[str, Any], resolve: bool = True) -> Any:
        """The task's config for `params` (without the hydra node): a plain dict, or a DictConfig unresolved."""
        cfg = task_config(self.load(self.space.overrides(params)))
        return OmegaConf.to_container(cfg, resolve=True) if resolve else cfg

    def replay(self, params: dict[str, Any]) -> list[str]:
        """The arguments that replay a trial with `python -m src.train`: the command line's --config-dir, if any,
        and the trial's overrides (the sweep definition's choice dropped)."""
        dirs = [f"--config-dir={os.path.relpath(s.path)}" for s in self.config.hydra.runtime.config_sources
                if s.provider == "command-line" and s.schema == "file"]
        return dirs + [o for o in self.space.overrides(params) if not o.startswith("sweep=")]

    def test_best(self, study: optuna.Study, test_overrides: list[str]) -> dict[str, Any] | None:
        """Replay the best trial once with `test_overrides` (e.g. trainer.test=true); the test set never chooses."""
        best = studies.best_trial(study)
        if best is None or not test_overrides:
            return None
        done = studies.best_test(study)
        if done is not None:
            return done
        overrides = self.space.overrides(best.params) + list(test_overrides)
        print(f"replaying best trial #{best.number} on the test set: {' '.join(overrides)}", flush=True)
        outcome = self.run_job(overrides, best.number, subdir="best")
        if isinstance(outcome, BaseException) or not isinstance(outcome, dict):
            log.error(f"error: the best trial's replay failed: {outcome}")
            return None
        test = {"trial": best.number, **{k: outcome.get(k) for k in
                                         ("test_accuracy", "test_loss", "val_accuracy", "val_loss")},
                "run_dir": f"{self.folder}/best"}
        study.set_user_attr("best_test", test)
        return test


def task_config(job: DictConfig) -> DictConfig:
    """The task's part of a job config (what `python -m src.train` composes), without the hydra node."""
    cfg = job.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _tell(study: optuna.Study, trial: optuna.Trial, **result: Any) -> None:
    """`study.tell`, minus the grid sampler's `study.stop()` on its last point, which ask-and-tell forbids
    (Optuna stores the result before that call; our budget already ends the sweep)."""
    try:
        study.tell(trial, skip_if_finished=True, **result)  # failed meanwhile as stale: Optuna warns
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
