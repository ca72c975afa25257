"""metrics.json and history.csv: what one training run records, built in one place for the Keras path
(`src.training`) and the batched path (`src.batch_training`); the CSV contract (`src.analyze.contract`)
takes its metric columns from here. Only pandas (and the project's one error type)."""
from __future__ import annotations

import resource
from typing import Any

import pandas as pd

from .errors import UserError

# metrics.json's keys, in order (other val_<metric> columns and `error: diverged` may follow).
RUN_METRICS = ("val_accuracy", "val_loss", "best_val_accuracy", "best_epoch", "train_accuracy", "train_loss",
               "test_accuracy", "test_loss", "epochs", "param_count", "seed", "n_train", "n_val", "seconds",
               "peak_rss_mb")
SETUP = ("seed", "n_train", "n_val")  # what the run was given, not what it measured
DIGITS = 6  # scores are float32: more digits are noise


def rounded(value: float) -> float:
    """A score as every table and the study record it (a pruned trial's value is its last report)."""
    return round(float(value), DIGITS)


def history_table(logs: Any) -> pd.DataFrame:
    """history.csv: one row per epoch (`epoch`, then Keras's log columns), float32 noise rounded away."""
    history = pd.DataFrame(logs).astype("float64").round(DIGITS)
    history.insert(0, "epoch", range(1, len(history) + 1))
    return history


def run_metrics(history: pd.DataFrame, *, param_count: int, seed: int, n_train: int, n_val: int) -> dict[str, Any]:
    """A run's metrics from its history: the last epoch's scores, the best epoch by val_accuracy, its size and
    data; test scores None until scored, `seconds` and `peak_rss_mb` set by `stamp`."""
    last, best = history.iloc[-1], history.loc[history["val_accuracy"].fillna(-1.0).idxmax()]
    return {
        "val_accuracy": float(last["val_accuracy"]), "val_loss": float(last["val_loss"]),
        "best_val_accuracy": float(best["val_accuracy"]), "best_epoch": int(best["epoch"]),
        "train_accuracy": float(last["accuracy"]), "train_loss": float(last["loss"]),
        "test_accuracy": None, "test_loss": None,
        "epochs": len(history), "param_count": int(param_count), "seed": seed, "n_train": n_train, "n_val": n_val,
    }


def stamp(metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """`metrics` with the run's wall time and this process's peak memory so far."""
    metrics["seconds"] = round(seconds, 3)
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return metrics


def diverged(cfg: Any, epochs: int) -> UserError:
    """The one-line error of a run whose loss became NaN in epoch `epochs` (its files are written first)."""
    return UserError(f"diverged: the loss became NaN in epoch {epochs} (optimizer={cfg.optimizer.name}, "
                     f"lr={cfg.optimizer.lr}); try a lower optimizer.lr")
