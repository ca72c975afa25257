"""Checks of a composed training config that need no TensorFlow: settings that could only fail, refused
before any training (by `src.train` and by the sweeper for every value its search can choose)."""
from __future__ import annotations

import importlib.util
from typing import Any

from .backend import BACKENDS
from .data import check_classes
from .errors import UserError
from .schema import check_keys

LR_SCHEDULES = ("constant", "cosine")


def check(cfg: Any) -> None:
    """Raise a one-line `UserError` naming the first bad value and what is allowed."""
    check_keys(cfg)
    for key in ("epochs", "batch_size", "eval_batch_size"):
        _positive_int(f"trainer.{key}", cfg.trainer[key])
    spe = cfg.trainer.steps_per_execution
    if spe != "epoch":
        _positive_int("trainer.steps_per_execution", spe, "use epoch or an integer >= 1")
    if cfg.trainer.backend not in BACKENDS:
        raise UserError(f"trainer.backend={cfg.trainer.backend!r}; allowed: {', '.join(BACKENDS)}")
    if cfg.trainer.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise UserError(f"trainer.lr_schedule={cfg.trainer.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
    lr = cfg.optimizer.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise UserError(f"optimizer.lr={lr!r}: the learning rate must be a number > 0")
    for key in ("dropout", "input_dropout"):  # a user's model (model._target_) may have neither
        rate = cfg.model.get(key, 0.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise UserError(f"model.{key}={rate!r}: must be in [0, 1)")
    check_classes(cfg.data.classes)
    if cfg.trainer.get("tensorboard") and importlib.util.find_spec("tensorboard") is None:
        raise UserError("trainer.tensorboard=true needs TensorBoard: pip install -e '.[tensorboard]'")


def _positive_int(key: str, value: Any, allowed: str = "use an integer >= 1") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value!r}: {allowed}")
