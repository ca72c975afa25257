"""`python -m src.sweep -m [sweep=NAME] [overrides]`: an Optuna search over the training config.

The search itself is the `keras_optuna` Hydra sweeper (hydra_plugins/, engine in src/sweeper.py);
this is the task each trial runs: train one network, reporting each epoch so the pruner can stop it.
"""
from __future__ import annotations

import gc
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.backend import use_backend


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Train the trial's network; return all its metrics (the sweeper picks the objectives)."""
    use_backend(cfg.trainer.backend)
    from src import sweeper, training  # TensorFlow loads here, once per worker process

    return training.run(cfg, HydraConfig.get().runtime.output_dir, on_epoch=sweeper.epoch_hook())


def warm_up(cfg: DictConfig) -> None:
    """Once per worker process, before its first trial: choose the backend, load Keras, read the data."""
    use_backend(cfg.trainer.backend)
    from src.data import load

    load(cfg.data)
    from src import training  # noqa: F401

    gc.freeze()  # the ~450,000 objects loaded so far live as long as the worker: the collector skips them


if __name__ == "__main__":
    main()
