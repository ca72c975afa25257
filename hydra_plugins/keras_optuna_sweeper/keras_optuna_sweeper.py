"""The Hydra sweeper plugin `keras_optuna`: config schema and the `Sweeper` class Hydra instantiates.

Hydra imports every module under `hydra_plugins` at start-up, so this one stays light: Optuna and the
engine (`src.sweeper`) load only when a sweep runs.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class KerasOptunaSweeperConf:
    """`hydra.sweeper.*`. Knobs are keyed by sampler and pruner name, so switching one never leaks the other's."""

    _target_: str = "hydra_plugins.keras_optuna_sweeper.keras_optuna_sweeper.KerasOptunaSweeper"
    study_name: Optional[str] = None      # default: the chosen sweep's name
    storage: Optional[str] = None         # Optuna RDB URL or journal:PATH; default sqlite:///<sweep dir>/study.db
    n_trials: int = 20                    # the study's total of finished trials (resume finishes it)
    n_workers: int = 1                    # worker processes on this machine sharing the study
    max_trials_per_worker: int = 20       # then a fresh process takes over (keeps memory flat)
    worker_init: Optional[str] = None     # function(task_config) each worker process runs once, first
    objectives: List[str] = field(default_factory=lambda: ["val_accuracy"])  # metrics the task returns
    directions: List[str] = field(default_factory=lambda: ["maximize"])      # one per objective
    sampler: str = "tpe"                  # tpe, random, grid, cmaes, qmc
    seed: Optional[int] = 0               # sampler seed: the same seed gives the same sequence of params
    samplers: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "tpe": {"n_startup_trials": 10, "multivariate": False},
        "random": {}, "grid": {}, "cmaes": {"n_startup_trials": 1},
        "qmc": {"qmc_type": "sobol", "scramble": True}})
    pruner: str = "none"                  # none, median, hyperband, successive_halving, threshold
    pruners: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "none": {},
        "median": {"n_startup_trials": 5, "n_warmup_steps": 0},
        "hyperband": {"min_resource": 1, "reduction_factor": 3},
        "successive_halving": {"min_resource": 1, "reduction_factor": 4},
        "threshold": {"lower": None, "upper": None, "n_warmup_steps": 0}})
    max_failures: int = 5                 # failed trials in one run before the sweep stops
    params: Optional[Dict[str, Any]] = None  # key: search expression or fixed value
    test_overrides: List[str] = field(default_factory=list)  # added when the best trial is replayed once
    leaderboard_size: int = 10


ConfigStore.instance().store(group="hydra/sweeper", name="keras_optuna", node=KerasOptunaSweeperConf,
                             provider="keras_optuna_sweeper")


class KerasOptunaSweeper(Sweeper):
    """Runs an Optuna study as a loop of workers (ask, compose, run the task in-process, tell)."""

    def __init__(self, **settings: Any) -> None:
        plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in settings.items()}
        self.settings = KerasOptunaSweeperConf(**plain)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: List[str]) -> None:
        from src import sweeper
        from src.errors import UserError, exit_with

        try:
            sweeper.run(self.settings, self.hydra_context, self.task_function,
                        self.config, arguments)
        except UserError as e:
            exit_with(e)
