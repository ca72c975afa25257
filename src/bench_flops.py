"""`python -m src.bench --arithmetic`: this machine's float32 matmul peak, and the arithmetic rate each training
path reaches, so that a trial's time reads against what the cores can do (docs/performance.md).

The peak is the best of square matmuls (512 to 2048) through the backend's own kernels, compiled. A training
path's rate counts the dense layers' multiply-adds only (activations, batch norm, dropout and the optimizer are
small beside them): per training sample, the forward pass (2 FLOP per multiply-add) and the backward pass
(the weights' gradients of every layer, the inputs' gradients of every layer but the first: the pixels need none);
per validation sample, the forward pass. The time is a steady epoch's (epochs 2 and on: the first one traces),
training and validation both, from one epoch-end hook to the next.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Callable

from . import CONFIG_DIR

# The paths measured, as config overrides: the reference trial (../shared/bench/README.md), and a trial of
# sweep=fashion10's winning shape (all 10 classes, 48,000 training images, 784-1024-1024-10, batch norm,
# input and hidden dropout, label smoothing, cosine schedule), run for 3 of its 25 epochs.
REFERENCE = ["data.n_train=null", "model.units=10", "model.layers=2", "optimizer.lr=0.001", "trainer.batch_size=32",
             "trainer.epochs=10", "trainer.verbose=0", "trainer.test=false"]
FASHION10 = ["data=fashion_mnist_10", "data.n_train=null", "model.units=1024", "model.layers=2", "model.batch_norm=true",
             "model.dropout=0.3", "model.input_dropout=0.1", "optimizer.lr=5e-4", "trainer.batch_size=128",
             "trainer.epochs=3", "trainer.lr_schedule=cosine", "trainer.verbose=0", "trainer.test=false",
             "trainer.loss={_target_: keras.losses.CategoricalCrossentropy, label_smoothing: 0.1}"]
BATCH = 16  # reference trials in one batched program (different learning rates)


def epoch_flops(widths: list[int], n_classes: int, n_train: int, n_val: int) -> float:
    """Dense-layer FLOP of one epoch: training (forward, backward) and validation (forward) of one trial."""
    sizes = [28 * 28, *widths, n_classes]
    macs = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    train = 2 * sum(macs) + 2 * (2 * sum(macs) - macs[0])
    return n_train * train + n_val * 2 * sum(macs)


def matmul_peak(backend: str) -> float:
    """GFLOP/s of the best square float32 matmul, compiled by the backend (XLA on JAX, a tf.function on TF)."""
    import numpy as np
    from keras import ops

    best = 0.0
    for n in (512, 1024, 2048):
        a, b = (ops.convert_to_tensor(np.random.default_rng(i).standard_normal((n, n), np.float32)) for i in (0, 1))
        if backend == "jax":
            import jax

            matmul: Callable[[Any, Any], Any] = jax.jit(ops.matmul)
        else:
            import tensorflow as tf

            matmul = tf.function(ops.matmul)
        ops.convert_to_numpy(matmul(a, b))  # compile
        reps = max(3, int(4e10 / (2 * n**3)))
        start = time.perf_counter()
        for _ in range(reps):
            c = matmul(a, b)
        ops.convert_to_numpy(c)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


class EpochClock:
    """Epoch-end times, from a training path's epoch hook (the batched path calls it once per trial)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __call__(self, *args: Any) -> bool:
        if len(args) == 2 or args[0] == 0:  # (epoch, logs) of a lone trial, or trial 0 of a group
            self.ends.append(time.perf_counter())
        return False

    def steady(self) -> float:
        """The median epoch after the first."""
        return statistics.median(b - a for a, b in zip(self.ends, self.ends[1:]))


def rates(backend: str) -> dict[str, object]:
    """The table's rows: peak, then each path's GFLOP/s and its share of the peak."""
    from hydra import compose, initialize_config_dir

    from .backend import use_backend
    from .schema import register

    register()
    use_backend(backend)
    from . import training
    from .batch_training import BatchTrainer
    from .data import load

    def config(overrides: list[str]) -> Any:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", [*overrides, f"trainer.backend={backend}"])

    peak = matmul_peak(backend)
    rows: dict[str, object] = {f"float32 matmul peak, {backend} (GFLOP/s)": round(peak, 1)}

    def row(name: str, cfg: Any, clock: EpochClock, trials: int = 1) -> None:
        data = load(cfg.data)
        flops = trials * epoch_flops([cfg.model.units] * cfg.model.layers, data.y_train.shape[1], len(data.x_train),
                                     len(data.x_val))
        rate = flops / clock.steady() / 1e9
        rows[f"{name}: s per epoch, GFLOP/s, share of peak"] = [round(clock.steady(), 2), round(rate, 1),
                                                                  f"{rate / peak:.0%}"]

    for name, overrides in (("reference trial, Keras fit", REFERENCE), ("fashion10 trial, Keras fit", FASHION10)):
        cfg, clock = config(overrides), EpochClock()
        load(cfg.data)
        with tempfile.TemporaryDirectory() as out:
            training.run(cfg, out, on_epoch=clock)
        row(name, cfg, clock)
    cfgs = [config([*REFERENCE, f"optimizer.lr={0.001 * (1 + k / BATCH)}"]) for k in range(BATCH)]
    clock = EpochClock()
    BatchTrainer().train_group(cfgs, on_epoch=clock)
    row(f"{BATCH} reference trials, batched", cfgs[0], clock, BATCH)
    cfg, clock = config(FASHION10), EpochClock()
    BatchTrainer(xla=True).train_group([cfg], on_epoch=clock)  # XLA: as its 25 epochs get it in a sweep
    row("fashion10 trial, batched (XLA)", cfg, clock)
    return rows
