"""`hydra.sweeper.*`: the sweeper's settings as a Hydra structured config, checked once when a sweep starts.

The Hydra plugin registers this schema; nothing here imports Optuna, so Hydra's start-up stays light.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from src.errors import UserError


@dataclass
class SweeperSettings:
    """Knobs of samplers and pruners are keyed by name, so switching one never leaks the other's."""

    _target_: str = "hydra_plugins.keras_optuna_sweeper.keras_optuna_sweeper.KerasOptunaSweeper"
    study_name: Optional[str] = None      # default: the chosen sweep's name
    storage: Optional[str] = None         # Optuna RDB URL, journal:PATH or grpc://HOST:PORT; default sqlite:///<sweep dir>/study.db
    n_trials: int = 20                    # the study's total of counted trials, over every command and machine
    n_workers: int = 1                    # worker processes of this command (capped at the cores and the trials left)
    max_trials_per_worker: int = 20       # then a fresh process takes over (keeps memory flat)
    worker_init: Optional[str] = None     # function(task_config) each worker process runs once, first
    heartbeat_interval: int = 10          # seconds between a running trial's heartbeats (Optuna's RDB/journal heartbeat)
    grace_period: Optional[int] = 30      # a running trial with no heartbeat for this long is failed and its slot given back
    objectives: List[str] = field(default_factory=lambda: ["val_accuracy"])  # metrics the task returns
    directions: List[str] = field(default_factory=lambda: ["maximize"])      # one per objective
    sampler: str = "tpe"                  # tpe, random, grid, cmaes, qmc
    seed: Optional[int] = 0               # sampler seed: the same seed gives the same sequence of params
    samplers: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "tpe": {"n_startup_trials": 10, "multivariate": False, "constant_liar": True},
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

    def __post_init__(self) -> None:
        for name in ("n_trials", "n_workers", "max_trials_per_worker", "max_failures", "heartbeat_interval",
                     "leaderboard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"hydra.sweeper.{name}={value!r}: use an integer >= 1")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise UserError(f"hydra.sweeper.grace_period={self.grace_period}: must be longer than "
                            f"heartbeat_interval={self.heartbeat_interval} (null: twice the interval)")
        if not self.objectives or len(self.objectives) != len(self.directions) or \
                not set(self.directions) <= {"maximize", "minimize"}:
            raise UserError(f"hydra.sweeper.objectives={list(self.objectives)} with directions="
                            f"{list(self.directions)}: give one direction (maximize or minimize) per objective")

    @property
    def grace(self) -> int:
        """Seconds without a heartbeat after which a running trial is taken for dead (Optuna's default: 2x)."""
        return self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
