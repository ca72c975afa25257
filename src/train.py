"""`python -m src.train [overrides]` (installed: `keras-sweep train`): compose the config with Hydra and train one network."""
from __future__ import annotations

import gc

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import CONFIG_DIR, TRAIN_CONFIG
from .backend import use_backend
from .cli import one_line_errors
from .config import check
from .errors import exit_on_user_error
from .schema import register

register()  # the config groups' typed schemas, before Hydra composes
one_line_errors()  # a mistyped key or option: one line with the closest name, not Hydra's report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=TRAIN_CONFIG)
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Train the composed network; return its validation accuracy (what a sweep optimizes)."""
    check(cfg)  # a value that can only fail is refused before the TensorFlow import (seconds)
    use_backend(cfg.trainer.backend)
    from . import training  # TensorFlow loads here, not for --help or --cfg

    return training.run(cfg, HydraConfig.get().runtime.output_dir)["val_accuracy"]


if __name__ == "__main__":
    try:
        main()
    finally:
        gc.freeze()  # no collection over TensorFlow's objects as Python exits (a second's pass, for nothing)
