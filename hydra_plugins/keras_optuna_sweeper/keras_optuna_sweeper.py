"""The Hydra sweeper plugin `keras_optuna`: registers the settings schema and the `Sweeper` Hydra instantiates.

Hydra imports every module under `hydra_plugins` at start-up, so this one stays light: Optuna and the
engine (`src/sweep/engine.py`) load only when a sweep runs.
"""

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, List

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from . import ours

_settings = ours("sweep.settings")
SAMPLER_OPTIONS, SweeperSettings, sampler_option = _settings.SAMPLER_OPTIONS, _settings.SweeperSettings, _settings.sampler_option

ConfigStore.instance().store(group="hydra/sweeper", name="keras_optuna", node=SweeperSettings,
                             provider="keras_optuna_sweeper")
# the sweep folder: outputs/sweeps/<study_name>, or for `study_name: null` (a fresh study per run) <sweep>-<time>
OmegaConf.register_new_resolver("study_folder", lambda name, fresh: fresh if name is None else name, replace=True)
for _name in SAMPLER_OPTIONS:  # hydra-optuna-sweeper's group: `override hydra/sweeper/sampler: nsgaii`
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name,
                                 node=OmegaConf.create(sampler_option(_name), flags={"struct": False}),
                                 provider="keras_optuna_sweeper")


class KerasOptunaSweeper(Sweeper):
    """Runs an Optuna study as a loop of workers (ask, compose, run the task in-process, tell)."""

    def __init__(self, **settings: Any) -> None:
        self.raw = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                    for k, v in settings.items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: List[str]) -> None:
        errors, engine = ours("errors"), ours("sweep.engine")
        try:
            engine.run(SweeperSettings(**self.raw), self.hydra_context, self.task_function, self.config, arguments)
        except errors.UserError as e:
            _remove_if_empty(Path(self.config.hydra.sweep.dir))
            errors.exit_with(e)


def _remove_if_empty(folder: Path) -> None:
    """A command refused before it wrote anything leaves no empty sweep folder behind (Hydra made it)."""
    try:
        folder.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass



HOS_CLASS = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class OptunaSweeper(KerasOptunaSweeper):
    """hydra-optuna-sweeper's class, as configs name it in `hydra.sweeper._target_` (lightning-hydra-template
    does): runs this sweeper, with a note."""

    def __init__(self, **settings: Any) -> None:
        print(f"note: hydra.sweeper._target_={HOS_CLASS} runs as keras_optuna (this project's sweeper); "
              f"drop the _target_ line to silence this", flush=True)
        super().__init__(**settings)


def _alias_hos_class() -> None:
    """While hydra-optuna-sweeper is not installed, its class name resolves to `OptunaSweeper` above: Hydra
    registers plugins by `__module__`, and instantiates by importing that module, so both are given the
    name (an entry in `sys.modules`, no file that another package could own)."""
    module_name = HOS_CLASS.rsplit(".", 1)[0]
    if importlib.util.find_spec(module_name.rsplit(".", 1)[0]) is not None:
        return
    for name in (module_name.rsplit(".", 1)[0], module_name):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[module_name].OptunaSweeper = OptunaSweeper  # type: ignore[attr-defined]
    OptunaSweeper.__module__ = module_name


_alias_hos_class()
