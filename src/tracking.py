"""TensorBoard logs of one run (`trainer.tensorboard: true`), an optional extra: per-epoch scalars and the
run's HParams summary under `<run dir>/tensorboard/`, so `tensorboard --logdir outputs/sweeps/<study>`
compares a sweep's trials in its HParams tab.

`src.training` imports this module only when the key is on (Keras is loaded by then); the sweep's MLflow
runs are `src.sweep.tracking`'s.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import keras
from omegaconf import OmegaConf

from .backend import quiet_native_start
from .errors import UserError
from .tensorboard_logs import LOG_DIR  # in the run's folder: train/ and validation/ (Keras's), the HParams summary

HPARAM_GROUPS = ("data", "model", "optimizer", "trainer")
NOT_HPARAMS = {"data.path"}  # a machine's folder, not a choice
HParamValue = bool | int | float | str


def tensorboard_callbacks(cfg: Any, out_dir: str | Path, session: bool = True) -> list[keras.callbacks.Callback]:
    """Keras's TensorBoard callback (per-epoch scalars `epoch_loss`, `epoch_accuracy` in `train/`, and the
    val_* ones in `validation/`) and the run's HParams summary, all under `<out_dir>/tensorboard/`. Without
    `session`, the summary's session (the run's settings) is left to the sweep, which writes a trial's once it
    knows its state (src/sweep/hparams.py).

    Place them after the callback that adds val_* to the epoch's logs: Keras calls callbacks in list order.
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("trainer.tensorboard=true needs TensorBoard: pip install -e '.[tensorboard]'")
    log_dir = Path(out_dir) / LOG_DIR
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False),
            HParams(log_dir, hparams(cfg) if session else None)]


def hparams(cfg: Any) -> dict[str, HParamValue]:
    """The run's settings as HParams values (`model.units: 32`, ...); lists and nulls as their YAML text."""
    flat: dict[str, HParamValue] = {}

    def walk(key: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{key}.{k}", v)
        elif key not in NOT_HPARAMS:
            flat[key] = node if isinstance(node, (bool, int, float, str)) else _yaml(node)

    for group in HPARAM_GROUPS:
        if group in cfg:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    return flat


def _yaml(value: Any) -> str:
    return OmegaConf.to_yaml({"v": value}).strip().removeprefix("v:").strip() if value is not None else "null"


def summary() -> Any:
    """TensorFlow's `tf.summary`: the event-file writer under either backend (TensorFlow is a dependency)."""
    with quiet_native_start():
        import tensorflow as tf
    return tf.summary


class HParams(keras.callbacks.Callback):
    """The HParams summary (the run's settings) when training starts, its final metrics as scalars (last
    epoch's loss, accuracy, val_loss, val_accuracy; best_val_accuracy, epochs, param_count) when it ends:
    what TensorBoard's HParams tab lists for each run, each sweep trial."""

    def __init__(self, log_dir: Path, values: dict[str, HParamValue] | None) -> None:
        super().__init__()
        self.log_dir, self.values = log_dir, values
        self.writer: Any = None
        self.last: dict[str, float] = {}
        self.best, self.epochs = -math.inf, 0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        from tensorboard.plugins.hparams import api as hp

        self.writer = summary().create_file_writer(str(self.log_dir))
        if self.values is not None:
            with self.writer.as_default():
                hp.hparams(self.values, trial_id=self.log_dir.parent.name, start_time_secs=int(time.time()))
            self.writer.flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.last, self.epochs = {k: float(v) for k, v in (logs or {}).items()}, epoch + 1
        self.best = max(self.best, self.last.get("val_accuracy", -math.inf))

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        final = {**self.last, "epochs": self.epochs, "param_count": self.model.count_params()}
        if math.isfinite(self.best):
            final["best_val_accuracy"] = self.best
        tf_summary = summary()
        with self.writer.as_default():
            for name, value in final.items():
                tf_summary.scalar(name, value, step=max(self.epochs - 1, 0))
        self.writer.close()
