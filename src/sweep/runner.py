"""One trial's life in a worker: draw its params, compose its config, run the task as a Hydra job in this
process, tell the study its `TrialOutcome`. Also the best trial's one replay on the test set."""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import TRAIN_CONFIG, command
from ..errors import UserError
from . import progress
from .compose import Composer
from .hydra_internals import run_task
from .optuna_internals import trials_read_once
from .outcome import TrialOutcome, tell
from .pruning import PruningHook, current_hook
from .replay import definition, differences
from .space import SearchSpace, override_key
from .study import best_test, best_trial, suggest

log = logging.getLogger(__name__)
SAVE_MODEL = "++trainer.save_model=true"


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
        self.stopping = threading.Event()  # set in a launcher job when its command asks its workers to stop
        self.on_told: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = []  # trackers: MLflow, HParams
        self.defined: list[str] | None = None  # the sweep definition's settings, once `sweep_definition` found them

    def run_trial(self, study: optuna.Study, trial: optuna.Trial, pruning: bool) -> None:
        """Draw the trial's params, train it as its own Hydra job, tell the study (Ctrl-C passes through: the
        worker gives the trial back)."""
        overrides = self.space.overrides(self.draw(study, trial)) + self.keep
        hook = self.hook(trial, pruning, live=self.live)
        self.record(study, trial, self.run_job(overrides, trial.number, hook=hook))

    def draw(self, study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's params (a queued retry keeps its own). A trial that cannot draw them is fatal: it is
        given back and the sweep stops (e.g. a queued retry whose stored params no longer fit the space)."""
        try:
            with trials_read_once(study):
                params = suggest(trial, self.space.distributions)
                if self.extend is not None:
                    self.extend(self.config, trial)
                    params = dict(trial.params)
        except Exception as e:  # noqa: BLE001 - told as fatal: the next line raises
            self.record(study, trial, TrialOutcome.failed(f"trial {trial.number}: cannot draw its params: {e}; set "
                                                          f"hydra.sweeper.study_name to start a new study", fatal=True))
        return params

    def hook(self, trial: optuna.Trial, pruning: bool, live: bool = False) -> PruningHook:
        """The per-epoch hook through which `trial` reports to the pruner (and to the live line)."""
        return PruningHook(trial, self.objectives[0], pruning, report=len(self.objectives) == 1,
                           show=progress.live_line(trial.number, self.objectives[0]) if live else None,
                           stopping=self.stopping)

    def record(self, study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        """Tell the study the search trial's outcome, then the trackers (e.g. MLflow's logger)."""
        told = tell(study, trial, outcome, self.objectives, f"{self.folder}/trials/{trial.number}")
        for tracker in self.on_told if told is not None else []:
            tracker(study, told)

    def run_job(self, overrides: list[str], number: int, subdir: str | None = None,
                hook: PruningHook | None = None) -> TrialOutcome:
        """Run the task on `overrides` as Hydra job `number` (in `subdir`), `hook` receiving its epochs."""
        try:
            job = self.job_config(overrides, number, subdir)
        except UserError as e:
            return TrialOutcome.failed(e)
        return self.run_config(job, hook)

    def run_config(self, job: DictConfig, hook: PruningHook | None = None) -> TrialOutcome:
        """Run the task as the Hydra job `job` (from `job_config`) in this process, `hook` receiving its epochs."""
        token = current_hook.set(hook)
        try:
            returned = run_task(self.hydra_context, self.task_function, job, self.config)
        except Exception as e:  # noqa: BLE001 - Hydra's own steps around the task (its folder, its logs): the trial failed
            returned = e
        finally:  # Ctrl-C passes through: the worker gives back every trial it claimed
            current_hook.reset(token)
        return TrialOutcome.of(returned, self.objectives, hook.pruned_at if hook is not None else None)

    def job_config(self, overrides: list[str], number: int, subdir: str | None = None) -> DictConfig:
        """Hydra job `number`'s config for `overrides`, its folder set, and no password in its hydra node; a
        `UserError` naming the overrides when Hydra cannot compose them."""
        try:
            cfg = self.load(overrides)
        except HydraException as e:
            raise UserError(f"cannot compose {' '.join(overrides)}: {e}") from None
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

    @property
    def own(self) -> bool:
        """Whether the task is this project's training (another Hydra app brings its own config and command)."""
        return "trainer" in self.config

    def replay(self, trial: FrozenTrial) -> list[str]:
        """The command that replays a trial: `python -m src.train` (another app: the command that started the
        sweep, without -m, and its config name), the command line's --config-dir, if any, what the sweep
        definition sets outside its params (`src.sweep.replay`), the trial's overrides (the definition's choice
        dropped) and, for a trial trained batched, the program it trained in (`trainer.program`), so that the
        replay gives its numbers exactly."""
        dirs = [f"--config-dir={os.path.relpath(s.path)}" for s in self.config.hydra.runtime.config_sources
                if s.provider == "command-line" and s.schema == "file"]
        overrides = [o for o in self.space.overrides(trial.params) if not o.startswith("sweep=")]
        try:
            defined, different = self._settings_for(trial)
        except HydraException as e:
            defined, different = [], [f"({str(e).splitlines()[0]})"]
        if different:
            log.warning(f"note: the replay line of trial {trial.number} may not give its numbers: it cannot set "
                        f"{', '.join(different)} as the trial had; its folder's .hydra/config.yaml has them all")
        named = [] if self.own else [f"--config-name={self.replay_config}"]
        return app_command(self.own) + dirs + named + defined + overrides + program_of(trial)

    def _settings_for(self, trial: FrozenTrial) -> tuple[list[str], list[str]]:
        """The sweep definition's settings on a trial's replay line, and what they cannot set: the sweep's (found
        once by its command) but for the keys the trial's params set, when one composition confirms them; else the
        trial's own (three compositions)."""
        searched = self.space.overrides(trial.params)
        if self.defined is not None and self.composer.loader is not None:
            defined = [o for o in self.defined if override_key(o) not in trial.params]
            line = defined + [o for o in searched if not o.startswith("sweep=")]
            if not differences(self.composer.loader, self.replay_config, self.load(searched), line):
                return defined, []
        return self.definition(searched)

    @property
    def replay_config(self) -> str:
        """The primary config of the replay command: `src.train`'s, or the other app's own."""
        return TRAIN_CONFIG if self.own else self.config.hydra.job.config_name

    def sweep_definition(self) -> list[str] | None:
        """What the sweep definition sets for every trial (`definition` of the fixed overrides), kept for the replay
        lines: a replay then checks it with one composition instead of finding it with three. None when the training
        command cannot compose it (each replay line then finds its own, with its note)."""
        try:
            self.defined = self.definition(self.space.fixed)[0]
        except HydraException:
            return None
        return self.defined

    def definition(self, overrides: list[str]) -> tuple[list[str], list[str]]:
        """What the sweep definition (and the sweep's primary config) sets beyond `overrides`, as overrides of the
        replay command (`src.sweep.replay`); and what those cannot set. Nothing without Hydra's config loader."""
        if self.composer.loader is None:
            return [], []
        return definition(self.composer.loader, self.replay_config, self.load(overrides),
                          [o for o in overrides if not o.startswith("sweep=")])

    def test_best(self, study: optuna.Study, test_overrides: list[str]) -> dict[str, Any] | None:
        """Replay the best trial once with `test_overrides` (e.g. trainer.test=true); the test set never chooses."""
        best = best_trial(study)
        if best is None or not test_overrides:
            return None
        done = best_test(study)
        if done is not None:
            return done
        overrides = self.space.overrides(best.params) + program_of(best) + list(test_overrides)
        print(f"replaying best trial #{best.number} on the test set: {' '.join(overrides)}", flush=True)
        outcome = self.run_job(overrides, best.number, subdir="best")
        if outcome.error is not None:
            log.error(f"error: the best trial's replay failed: {outcome.error}")
            return None
        test = {"trial": best.number, **{k: outcome.metrics.get(k) for k in
                                         ("test_accuracy", "test_loss", "val_accuracy", "val_loss")},
                "run_dir": f"{self.folder}/best"}
        study.set_user_attr("best_test", test)
        return test


def app_command(own: bool) -> list[str]:
    """How a replay line starts: `python -m src.train` (installed: `keras-sweep train`), or for another Hydra app
    the interpreter's script or
    `-m module` that started this sweep (what precedes the app's own arguments)."""
    if own:
        return command("train").split()
    start = sys.orig_argv[:len(sys.orig_argv) - len(sys.argv) + 1]
    return ["python", *start[1:]]


def program_of(trial: FrozenTrial) -> list[str]:
    """`trainer.program=<layout>` for a trial trained batched (its metrics name the program), else nothing."""
    program = trial.user_attrs.get("program")
    return [f"trainer.program={program}"] if program else []


def task_config(job: DictConfig) -> DictConfig:
    """The task's part of a job config (what `python -m src.train` composes), without the hydra node: a copy of
    the other keys only (the hydra node is most of a job; copying it for each trial cost ~6 ms)."""
    cfg = OmegaConf.masked_copy(job, [key for key in job if key != "hydra"])
    OmegaConf.set_struct(cfg, OmegaConf.is_struct(job))
    OmegaConf.set_readonly(cfg, OmegaConf.is_readonly(job))
    return cfg

