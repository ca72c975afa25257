"""One training run, as the lesson does it: seed, build, compile, fit, evaluate; then its result files.

It imports Keras (and so TensorFlow or JAX), so entry points import it inside their task, never at start-up.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from .backend import load_keras

keras = load_keras()
from hydra.utils import instantiate  # noqa: E402

from .config import check as check_config  # noqa: E402
from .data import check_classes, load  # noqa: E402
from .model import build_loss, build_metrics, build_model, build_optimizer  # noqa: E402
from .files import write_csv, write_json  # noqa: E402
from .metrics import diverged, history_table, run_metrics, stamp  # noqa: E402

log = logging.getLogger(__name__)

# Called after each epoch with (epoch number from 1, that epoch's logs); returns True to stop training.
EpochHook = Callable[[int, dict[str, float]], bool]


def run(cfg: Any, out_dir: str | os.PathLike, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train the network `cfg` describes, write `history.csv` and `metrics.json` to `out_dir`, return the metrics.
    With `trainer.program` (a batched sweep trial's replay line sets it), train it in that batched program."""
    if cfg.trainer.get("program"):
        from .batch_training import replay

        return replay(cfg, out_dir)
    start = time.perf_counter()
    check_config(cfg)
    out_dir = Path(out_dir)
    keras.backend.clear_session(free_memory=False)  # drop the previous run's models; no full gc per run
    keras.utils.set_random_seed(cfg.trainer.seed)
    model = build_model(cfg.model, n_inputs=28 * 28, n_classes=len(check_classes(cfg.data.classes)))
    data = load(cfg.data)
    total_steps = cfg.trainer.epochs * math.ceil(len(data.x_train) / cfg.trainer.batch_size)
    optimizer = build_optimizer(cfg.optimizer, cfg.trainer.get("lr_schedule", "constant"), total_steps)
    loss = build_loss(cfg.trainer.loss)
    model.compile(optimizer=optimizer, loss=loss, metrics=build_metrics(cfg.trainer.metrics),
                  steps_per_execution=steps_per_execution(cfg.trainer, len(data.x_train)))
    scorer = Scorer(loss, build_metrics(cfg.trainer.metrics), cfg.trainer.eval_batch_size)

    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(),
                                                 _Validate(scorer, data.x_val, data.y_val)]
    if cfg.trainer.get("tensorboard"):  # after _Validate: val_* reach the event files
        from .tracking import tensorboard_callbacks
        callbacks += tensorboard_callbacks(cfg, out_dir, session=on_epoch is None)  # a sweep's: once told
    callbacks += [instantiate(block) for block in cfg.trainer.get("callbacks") or []]  # e.g. EarlyStopping
    if on_epoch is not None:
        callbacks.append(_StopWhen(on_epoch))
    fit = model.fit(data.x_train, data.y_train, epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
                    verbose=cfg.trainer.verbose, callbacks=callbacks)
    history = history_table(fit.history)
    write_csv(out_dir / "history.csv", history)

    metrics = run_metrics(history, param_count=model.count_params(), seed=cfg.trainer.seed,
                          n_train=len(data.x_train), n_val=len(data.x_val))
    last = history.iloc[-1]
    if not math.isfinite(metrics["train_loss"]) or not math.isfinite(metrics["val_loss"]):
        write_json(out_dir / "metrics.json", {**stamp(metrics, time.perf_counter() - start), "error": "diverged"})
        raise diverged(cfg, len(history))
    metrics.update({f"val_{name}": float(last[f"val_{name}"]) for name in scorer.names if name != "accuracy"})
    if cfg.trainer.test:
        tested = scorer(model, data.x_test, data.y_test)
        metrics.update({f"test_{name}": round(value, 6) for name, value in tested.items()})
        log.info(f"Test loss: {metrics['test_loss']:.3f} - test accuracy: {metrics['test_accuracy']:.1%} "
                 f"({len(data.x_test)} test images)")
    if cfg.trainer.get("save_model"):
        model.save(out_dir / "model.keras")
    write_json(out_dir / "metrics.json", stamp(metrics, time.perf_counter() - start))
    log.info(f"val_accuracy {metrics['val_accuracy']:.4f} after {metrics['epochs']} epochs, "
             f"{metrics['param_count']} parameters, {metrics['seconds']:.1f}s; results in {out_dir}")
    return metrics


def test_saved(cfg: Any, source: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Score the model a finished run saved in `source` on the test set instead of training it again: that
    run's metrics with test_* added, written to `out_dir`/metrics.json."""
    source, out_dir = Path(source), Path(out_dir)
    data = load(cfg.data)
    model = keras.models.load_model(source / "model.keras", compile=False)
    scorer = Scorer(build_loss(cfg.trainer.loss), build_metrics(cfg.trainer.metrics), cfg.trainer.eval_batch_size)
    metrics = json.loads((source / "metrics.json").read_text())
    metrics.update({f"test_{name}": round(value, 6) for name, value in scorer(model, data.x_test, data.y_test).items()})
    metrics["trained_in"] = str(source)
    write_json(out_dir / "metrics.json", metrics)
    log.info(f"Test loss: {metrics['test_loss']:.3f} - test accuracy: {metrics['test_accuracy']:.1%} "
             f"({len(data.x_test)} test images), the model trained in {source}")
    return metrics


def steps_per_execution(trainer: Any, n_train: int) -> int:
    """Batches Keras runs per call into its compiled step: `epoch` (default) means all of an epoch's.

    The same batches in the same order (identical metrics on the reference trial; dropout's random
    draws may differ), but Python and the framework are entered once per epoch instead of once per
    batch (docs/performance.md has the speed-up on the reference trial).
    """
    if trainer.steps_per_execution == "epoch":
        return max(1, math.ceil(n_train / trainer.batch_size))
    return trainer.steps_per_execution


class Scorer:
    """Loss and metrics of a model on (x, y), as Keras's evaluate computes them, but run eagerly in
    slices of `batch_size`: for networks this small, tracing a compiled evaluation step each trial
    costs more than the arithmetic."""

    def __init__(self, loss: Any, metrics: list[keras.metrics.Metric], batch_size: int) -> None:
        self.loss, self.metrics, self.batch_size = loss, metrics, batch_size
        self.names = [m.name for m in metrics]

    def __call__(self, model: keras.Model, x: Any, y: Any) -> dict[str, float]:
        """{"loss": ..., "accuracy": ..., other metric names: ...}; the loss includes weight penalties."""
        for metric in self.metrics:
            metric.reset_state()
        total = 0.0
        for start in range(0, len(x), self.batch_size):
            y_true, y_pred = y[start:start + self.batch_size], model(x[start:start + self.batch_size], training=False)
            total += float(keras.ops.mean(self.loss(y_true, y_pred))) * len(y_true)
            for metric in self.metrics:
                metric.update_state(y_true, y_pred)
        penalty = sum(float(p) for p in model.losses)
        return {"loss": total / len(x) + penalty, **{m.name: float(m.result()) for m in self.metrics}}


class _Validate(keras.callbacks.Callback):
    """Adds val_loss, val_accuracy and each other val_<metric> to each epoch's logs, before the pruning
    hook, History and the progress bar read them (Keras calls callbacks in list order, its own last)."""

    def __init__(self, scorer: Scorer, x: Any, y: Any) -> None:
        super().__init__()
        self.scorer, self.x, self.y = scorer, x, y

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            scores = self.scorer(self.model, self.x, self.y)
            logs.update({f"val_{name}": value for name, value in reversed(scores.items())})  # Keras's column order


class _StopWhen(keras.callbacks.Callback):
    """Hands each epoch's logs to a hook (the sweeper's pruner) and stops training when it says so."""

    def __init__(self, hook: EpochHook) -> None:
        super().__init__()
        self.hook = hook

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.hook(epoch + 1, dict(logs or {})):
            self.model.stop_training = True
