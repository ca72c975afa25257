"""`python -m src.sweep -m [sweep=NAME] [overrides]`: an Optuna search over the training config.

The search is the `keras_optuna` Hydra sweeper (hydra_plugins/, engine in src/sweep/engine.py); each
trial runs `src.sweep.task.run` on its composed config.
"""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from src.sweep import task


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sweep")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Train the trial's network; return all its metrics (the sweeper picks the objectives)."""
    return task.run(cfg)


if __name__ == "__main__":
    main()
