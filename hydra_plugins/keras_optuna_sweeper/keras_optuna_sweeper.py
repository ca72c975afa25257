"""The Hydra sweeper plugin `keras_optuna`: registers the settings schema and the `Sweeper` Hydra instantiates.

Hydra imports every module under `hydra_plugins` at start-up, so this one stays light: Optuna and the
engine (`src.sweep.engine`) load only when a sweep runs.
"""

from pathlib import Path
from typing import Any, List

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from src.sweep.settings import SweeperSettings

ConfigStore.instance().store(group="hydra/sweeper", name="keras_optuna", node=SweeperSettings,
                             provider="keras_optuna_sweeper")


class KerasOptunaSweeper(Sweeper):
    """Runs an Optuna study as a loop of workers (ask, compose, run the task in-process, tell)."""

    def __init__(self, **settings: Any) -> None:
        self.raw = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                    for k, v in settings.items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: List[str]) -> None:
        from src.errors import UserError, exit_with
        from src.sweep import engine

        try:
            engine.run(SweeperSettings(**self.raw), self.hydra_context, self.task_function, self.config, arguments)
        except UserError as e:
            _remove_if_empty(Path(self.config.hydra.sweep.dir))
            exit_with(e)


def _remove_if_empty(folder: Path) -> None:
    """A command refused before it wrote anything leaves no empty sweep folder behind (Hydra made it)."""
    try:
        folder.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass
