"""A `custom_search_space` function, as hydra-optuna-sweeper takes it: (config, trial) -> None.

It runs after the declared params are drawn and may suggest more, e.g. knobs that only exist for one
choice. Use it with: hydra.sweeper.custom_search_space=examples.custom_space.optimizer_knobs
"""
from __future__ import annotations

import optuna
from omegaconf import DictConfig


def optimizer_knobs(cfg: DictConfig, trial: optuna.Trial) -> None:
    """SGD's momentum is searched only in trials that chose SGD; Adam's beta_1 only with Adam."""
    if trial.params.get("optimizer") == "sgd":
        trial.suggest_float("optimizer.momentum", 0.0, 0.95)
    elif trial.params.get("optimizer") == "adam":
        trial.suggest_float("optimizer.beta_1", 0.8, 0.99)
