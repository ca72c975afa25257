"""The task each trial runs (train one network, reporting each epoch to the pruner), and a worker's warm-up."""
from __future__ import annotations

import gc
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..backend import keep_tensorflow_unloaded, use_backend


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train the trial's network; return all its metrics (the sweeper picks the objectives)."""
    use_backend(cfg.trainer.backend)
    from .. import training  # TensorFlow loads here, once per worker process
    from .pruning import current_hook

    hook = current_hook.get()
    if hook is not None:
        hook.epochs = cfg.trainer.epochs
    return training.run(cfg, HydraConfig.get().runtime.output_dir, on_epoch=hook)


def test_saved(cfg: DictConfig, source: str, out_dir: str) -> dict[str, Any]:
    """The test scores of the model a finished trial or confirmation run saved in `source` (no training)."""
    use_backend(cfg.trainer.backend)
    from .. import training

    return training.test_saved(cfg, source, out_dir)


def warm_up(cfg: DictConfig) -> None:
    """Once per worker process, before its first trial: choose the backend, load Keras, read the data."""
    use_backend(cfg.trainer.backend)
    from ..data import load

    load(cfg.data)
    from .. import training  # noqa: F401

    keep_tensorflow_unloaded()  # a JAX worker loads no TensorFlow, not even to save a model

    gc.freeze()  # the ~450,000 objects loaded so far live as long as the worker: the collector skips them
