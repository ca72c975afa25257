"""`Sweep`: what every phase of one sweep command reads (the question, where its answer lives, how a trial
runs), made once by the engine before any worker starts and handed to each."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from omegaconf import DictConfig

from . import results
from .pruning import make_pruner
from .samplers import make_sampler
from .settings import SweeperSettings
from .space import SearchSpace
from .storage import Storage
from .study import open_study

if TYPE_CHECKING:
    from .runner import Runner


@dataclass
class Sweep:
    """The settings and search space, the study's name, storage, folder and budget, the trial runner, one
    composed task config (for the workers' warm-up), when this command started and whether its workers print."""

    settings: SweeperSettings
    space: SearchSpace
    name: str
    storage: Storage
    folder: Path
    budget: int
    runner: Runner
    task_config: DictConfig
    started: datetime
    quiet: bool = False  # a launcher job's worker: the sweep command prints each trial's line from the storage

    @property
    def objectives(self) -> list[str]:
        return list(self.settings.objectives)

    def open(self, create: bool = False) -> optuna.Study:
        """A new connection to the study, with this process's sampler and pruner; only the command's first
        (`create`) may create its storage."""
        s = self.settings
        sampler = make_sampler(s.sampler, s.seed, s.samplers.get(s.sampler_name) or {}, self.space)
        pruner = make_pruner(s.pruner, s.pruners.get(s.pruner_name) or {})
        study = open_study(self.storage.connect(create), self.name, list(s.directions), sampler, pruner)
        if create and study.metric_names != self.objectives:  # dashboards name the objectives (once per command)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(self.objectives)
        return study

    def write_tables(self, study: optuna.Study, importance: bool = False) -> None:
        with results.writing(self.folder):
            results.write_sweep_tables(self.folder, study, self.objectives, self.settings.leaderboard_size, importance)
