"""`hydra.sweeper.wandb`, an optional extra: each finished search trial (COMPLETE, PRUNED, FAIL) as a Weights &
Biases run, grouped by study. A run holds the trial's whole config (its `.hydra/config.yaml`) with `optuna.*`
keys (study, trial, state, params), its per-epoch history (history.csv, step = epoch), its final metrics as the
summary, and its state as a tag. Written by the worker that told the trial, through `wandb.init`; W&B loads only
when the key is set. Offline (`mode: offline`), runs go to `<sweep folder>/wandb/` for `wandb sync`.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..errors import UserError, first_line
from .outcome import RESERVED
from .settings import WandbSettings

MODES = ("online", "offline", "disabled")


class WandbLogger:
    """Called with (study, trial) after each search trial is told."""

    def __init__(self, settings: WandbSettings, folder: Path) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise UserError("hydra.sweeper.wandb needs Weights & Biases: pip install -e '.[wandb]'")
        if settings.mode not in (None, *MODES):
            raise UserError(f"hydra.sweeper.wandb.mode={settings.mode!r}: allowed: {', '.join(MODES)} (null: W&B's default)")
        self.settings, self.dir = settings, Path(settings.dir or folder)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log `trial`; W&B failing is a one-line warning (the study has the result)."""
        try:
            self.log(study.study_name, trial)
        except Exception as e:  # noqa: BLE001 - no network, a bad key, a full disk
            print(f"warning: trial {trial.number} not logged to W&B: {first_line(e)}", flush=True)

    def log(self, study_name: str, trial: FrozenTrial) -> None:
        import pandas as pd
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # no banner per trial in the sweep's output
        folder = Path(str(trial.user_attrs.get("run_dir", "")))
        config = _config(folder / ".hydra" / "config.yaml")
        config["optuna"] = {"study": study_name, "trial": trial.number, "state": trial.state.name, "params": trial.params}
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        # no metadata: W&B would record the command line (a storage URL's password), the git state, pip freeze
        quiet = wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, x_save_requirements=False,
                               disable_git=True, save_code=False)
        run = wandb.init(project=s.project, entity=s.entity, mode=s.mode, dir=str(self.dir), group=study_name,
                         job_type="trial", name=f"trial {trial.number}", tags=[trial.state.name], config=config,
                         reinit="create_new", settings=quiet)
        history = folder / "history.csv"
        if history.is_file():
            for row in pd.read_csv(history).to_dict("records"):
                run.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        run.summary.update({k: v for k, v in trial.user_attrs.items() if k not in RESERVED
                            and isinstance(v, (int, float, str)) and not isinstance(v, bool)})
        run.finish(exit_code=1 if trial.state.name == "FAIL" else 0)


def _config(path: Path) -> dict[str, Any]:
    """The trial's config as Hydra saved it, resolved where it can be (`data.path` from the environment)."""
    from omegaconf import OmegaConf

    if not path.is_file():
        return {}
    config = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation this process cannot resolve: as saved
        return OmegaConf.to_container(config)
