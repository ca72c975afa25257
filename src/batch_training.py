"""K dense networks of one structure trained at once, as one compiled program.

A small trial spends most of its time building and tracing a new Keras model, not on its arithmetic.
Here trials that share a structure (depth, activation, batch size, classes, dropout and input dropout on
or off, batch norm, optimizer, data) share one compiled *epoch program*, and K of them train in it at once: every weight
carries a leading trial axis ([K, in, out] kernels, [K, out] biases) and each layer is one batched
matmul. Hidden widths are padded up to a bucket (the next power of two, at least 8; for long trials,
whose arithmetic outweighs a trace, the next multiple of 8), with a 0/1 unit mask per trial, so trials
of different widths share a program while each trains exactly its own, narrower network: the padded
units are multiplied by 0, get zero gradients and stay exactly 0. Where a group is cheap (its trace
would cost more than its arithmetic), depth and activation are runtime values too: one *mixed* program
per coarse structure has the deepest layout seen, each trial picks its activation and skips the layers
past its depth (they pass its activations through unchanged).

Everything that differs between trials is a runtime tensor, never a Python constant baked into the
trace: weights, learning rate, Adam's betas and epsilon, SGD's and RMSprop's momentum, RMSprop's rho, weight
decay, label smoothing, dropout rates, batch norm's moving statistics, unit masks,
shuffling orders, dropout keys, which trials are still training (in a mixed program, depth and
activation too). So a new structure costs one trace
and the same structure again costs none (`BatchTrainer` owns the cache of programs).

Each trial's randomness comes from its own seed only (weights, each epoch's order, dropout masks), so a
trial trains the same way whatever else is in its batch. A trial past its epochs, pruned by the hook,
or whose loss became NaN is frozen: its weights and optimizer state stop changing and it reports no
more epochs; NaN in one trial never reaches the others (their weights are separate slices).

The arithmetic is Keras's: `keras.ops` everywhere, glorot-uniform kernels and zero biases like
`keras.layers.Dense`, `keras.layers.BatchNormalization` per trial (its batch statistics in training, its moving
ones for validation and test), Adam, AdamW, Nadam, SGD and RMSprop exactly as `keras.optimizers` update (decoupled
weight decay included), label smoothing as `keras.losses.CategoricalCrossentropy`, the cosine schedule as
`keras.optimizers.schedules.CosineDecay`, per-epoch loss and accuracy as `fit` logs them (the mean over
the epoch's samples, with dropout on, before each batch's update). Two small functions are backend
specific: `compile_program` (one `tf.function` or `jax.jit`) and `value_and_grad` (`tf.GradientTape`
or `jax.value_and_grad`). Differences from `src.training.run` that remain: the loss is computed from
logits with `log_softmax` (Keras clips softmax outputs at 1e-7, which only matters for a loss above
~16), and the random draws differ, so results agree within seed noise, not bit for bit. Given the same
initial weights and batches, the weights match a Keras `fit` to 1e-6 (tests/test_batch_training.py).
A trial's replay trains it alone in the program it trained in (`trainer.program`, see `replay`): its numbers.

    trainer = BatchTrainer()                     # one per worker process: it keeps the compiled programs
    for members, program in trainer.groups(cfgs):  # cfgs whose group_key is not None
        results = trainer.train_group([cfgs[i] for i in members], on_epoch=hook, program=program)
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

from .backend import load_keras

keras = load_keras()
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from keras import ops  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .config import check as check_config  # noqa: E402
from .data import Splits, check_classes, load  # noqa: E402
from .errors import UserError  # noqa: E402
from .metrics import diverged, history_table, run_metrics, stamp  # noqa: E402
from .model import dense_net, hidden_widths  # noqa: E402

log = logging.getLogger(__name__)

N_INPUTS = 28 * 28
MIN_BUCKET = 8
EVAL_ROWS = 4096  # validation rows scored per batched forward pass: bounds memory at K x 4096 x width

# The dense model's keys the batched path implements; any other key (e.g. input_dropout) set to a value
# other than 0, false or null sends the trial to one-at-a-time training, so a new model option is never ignored.
MODEL_KEYS = {"units", "layers", "widths", "activation", "dropout", "input_dropout", "batch_norm"}
# Optimizers the batched path implements, with the config keys each may carry besides name and lr (every one
# takes Keras's decoupled `weight_decay`; AdamW is Adam whose weight_decay defaults to 0.004).
ADAM_KNOBS = {"beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"}
OPTIMIZER_KNOBS = {"adam": ADAM_KNOBS, "adamw": ADAM_KNOBS, "nadam": ADAM_KNOBS - {"amsgrad"},
                   "sgd": {"momentum", "nesterov", "weight_decay"},
                   "rmsprop": {"rho", "momentum", "epsilon", "centered", "weight_decay"}}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.004}  # Keras's defaults where not 0
# Categorical cross-entropy as trainer.loss may give it: by name, or a _target_ block of the class (label smoothing).
CROSSENTROPY = ("keras.losses.CategoricalCrossentropy",)
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3  # keras.layers.BatchNormalization's defaults, as src.model builds it
# Hidden activations that act on each unit alone: a padded unit cannot change a real unit's value.
ELEMENTWISE = {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish", "tanh",
               "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "softplus", "softsign", "exponential", "linear"}
# Those a cheap program may pick per trial at run time (each computed, one kept): all that cannot overflow,
# since an unpicked inf would still turn the picked one's gradient into NaN.
MIXABLE = ELEMENTWISE - {"exponential"}
MAX_LAYERS = 1024  # dropout counters step by this per batch, so a layer's masks do not depend on the program's depth

# Called after each epoch of each training trial with (trial index in the group, epoch from 1, that
# epoch's logs: loss, accuracy, val_loss, val_accuracy); returns True to prune (freeze) that trial.
GroupEpochHook = Callable[[int, int, dict[str, float]], bool]


# --- Which trials can share a program ------------------------------------------------------------

def bucket(width: int) -> int:
    """The padded width a hidden layer of `width` units trains at: the next power of two, at least 8."""
    return max(MIN_BUCKET, 1 << (int(width) - 1).bit_length())


def fine_bucket(width: int) -> int:
    """The padded width of a long trial's layer: the next multiple of 8. Its arithmetic outweighs a trace,
    so it pads little (a power of two would add up to 2x per layer) and shares a program less often."""
    return max(MIN_BUCKET, -(-int(width) // 8) * 8)


class GroupKey(NamedTuple):
    """The structure trials share to train in one program (hashable: a dict key). The number of hidden
    layers is len(buckets); learning rate, optimizer knobs, dropout rate, epochs and seed are runtime
    values and are not part of it."""

    backend: str
    buckets: tuple[int, ...]  # padded width of each hidden layer
    activation: str
    dropout: bool  # on or off; the rate is a runtime value
    input_dropout: bool  # on or off; the rate is a runtime value
    batch_norm: bool
    batch_size: int
    n_classes: int
    data: tuple  # path, classes, n_train, validation_split, seed: trials of a group share one data set
    loss: str
    lr_schedule: str
    optimizer: str


def group_key(cfg: Any) -> GroupKey | None:
    """What `cfg` must share with other trials to train in one program with them, or None when the batched
    path cannot express it (a user model, another loss or optimizer, callbacks, ...): such a trial trains
    alone through `src.training.run`. Hidden widths enter only as their buckets."""
    model, trainer, optimizer, data = cfg.model, cfg.trainer, cfg.optimizer, cfg.data
    if "_target_" in model or "_target_" in optimizer:
        return None
    if any(model[k] for k in set(model) - MODEL_KEYS):
        return None
    name = str(optimizer.get("name", "")).lower()
    if name not in OPTIMIZER_KNOBS or set(optimizer) - {"name", "lr"} - OPTIMIZER_KNOBS[name]:
        return None
    if optimizer.get("amsgrad") or optimizer.get("centered"):
        return None
    if label_smoothing(trainer.loss) is None or any(m not in ("accuracy", "acc") for m in trainer.metrics or []):
        return None
    if not all(map(early_stopping, trainer.get("callbacks") or [])):
        return None
    if trainer.get("lr_schedule", "constant") not in ("constant", "cosine") or model.activation not in ELEMENTWISE:
        return None
    try:
        widths = hidden_widths(model.units, model.layers, model.widths)
        classes = check_classes(data.classes)
    except UserError:
        return None  # a bad config: training it alone gives the one-line error
    return GroupKey(backend=trainer.backend, buckets=tuple(bucket(w) for w in widths), activation=model.activation,
                    dropout=model.dropout > 0, input_dropout=bool(model.get("input_dropout")),
                    batch_norm=bool(model.get("batch_norm")), batch_size=trainer.batch_size, n_classes=len(classes),
                    data=(data.path, classes, data.n_train, data.validation_split, data.seed),
                    loss="categorical_crossentropy", lr_schedule=trainer.get("lr_schedule", "constant"), optimizer=name)


def label_smoothing(loss: Any) -> float | None:
    """The label smoothing of `trainer.loss` when it is categorical cross-entropy on probabilities (0 by name), else
    None: the batched path computes no other loss."""
    if isinstance(loss, str):
        return 0.0 if loss == "categorical_crossentropy" else None
    block = OmegaConf.to_container(loss) if isinstance(loss, DictConfig) else dict(loss)
    if block.pop("_target_", None) not in CROSSENTROPY or block.pop("from_logits", False):
        return None
    smoothing = block.pop("label_smoothing", 0.0)
    return None if block or not isinstance(smoothing, (int, float)) else float(smoothing)


def early_stopping(block: Any) -> bool:
    """Whether a `trainer.callbacks` block is a Keras EarlyStopping the batched path drives per trial: on a metric
    it logs, without restore_best_weights (which would keep a copy of each trial's weights)."""
    return isinstance(block, (dict, DictConfig)) and block.get("_target_") == "keras.callbacks.EarlyStopping" and \
        block.get("monitor", "val_loss") in ("loss", "accuracy", "val_loss", "val_accuracy") and \
        not block.get("restore_best_weights", False)


class _Stopper:
    """Keras's own EarlyStopping callbacks of one trial, fed its epoch logs; `stop_training` as `fit` reads it."""

    def __init__(self, blocks: Sequence[Any]) -> None:
        from hydra.utils import instantiate

        self.stop_training = False
        self.callbacks = [instantiate(block) for block in blocks]
        for callback in self.callbacks:
            callback.set_model(self)
            callback.on_train_begin()
            if callback.mode == "auto" and callback.monitor.removeprefix("val_") == "accuracy":
                callback.monitor_op = ops.greater  # as Keras finds it from the compiled accuracy metric's direction

    def stops(self, epoch: int, logs: dict[str, float]) -> bool:
        """After epoch `epoch` (from 1): whether a callback stopped the trial."""
        for callback in self.callbacks:
            callback.on_epoch_end(epoch - 1, dict(logs))
        return self.stop_training


def common_key(keys: Sequence[GroupKey | None]) -> GroupKey:
    """The one exact structure trials of these group keys train in: equal keys but for the width buckets,
    each layer padded to the widest bucket among them."""
    if None in keys or len({k._replace(buckets=len(k.buckets)) for k in keys}) > 1:
        raise UserError("train_group: the configs do not share one batchable structure (see group_key); "
                        "train such trials one at a time with src.training.run")
    return keys[0]._replace(buckets=tuple(max(b) for b in zip(*(k.buckets for k in keys))))


def coarse(key: GroupKey) -> GroupKey:
    """What cheap trials must share to train in one program: their key without widths, depth and (mixable)
    activation, which such a program takes per trial (see `Program`)."""
    return key._replace(buckets=(), activation="" if key.activation in MIXABLE else key.activation)


MIX_MACS = 1e9  # most forward multiply-adds of a trial in a mixed program (over its epochs): ~ a trace's time


class Program(NamedTuple):
    """One compiled epoch program's static layout. An exact program (long groups) trains one depth and one
    activation at per-layer buckets. A mixed one (cheap groups: a trace costs more than their arithmetic)
    has `len(buckets)` layers of one width and `activations` to pick from: trial k uses its own activation
    and its first depth[k] layers; the layers past them pass its activations through unchanged."""

    structure: GroupKey  # the trials' shared key, buckets () (and activation "" when mixed)
    buckets: tuple[int, ...]
    activations: tuple[str, ...]
    mixed: bool

    def macs(self) -> int:
        """Multiply-adds of one sample's forward pass (per trial)."""
        sizes = [N_INPUTS, *self.buckets, self.structure.n_classes]
        return sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))

    def spec(self, xla: bool) -> str:
        """The layout as `trainer.program` takes it (e.g. `mixed/64.64/relu.tanh/noxla`): the replay of a trial
        trained here trains in this layout again, so its arithmetic, and its numbers, are the same."""
        return "/".join(["mixed" if self.mixed else "exact", ".".join(map(str, self.buckets)),
                         ".".join(self.activations), "xla" if xla else "noxla"])


def parse_program(spec: str, cfg: Any) -> tuple[Program, bool]:
    """`trainer.program` (what `Program.spec` wrote) as the program and XLA flag to train `cfg` in."""
    allowed = "give the value a sweep's replay line printed, e.g. mixed/64.64/relu.tanh/noxla, or null"
    try:
        kind, buckets, activations, xla = str(spec).split("/")
        layout = tuple(int(b) for b in buckets.split("."))
    except ValueError:
        raise UserError(f"trainer.program={spec!r}: not a program layout; {allowed}") from None
    key = group_key(cfg)
    if kind not in ("mixed", "exact") or xla not in ("xla", "noxla") or key is None:
        raise UserError(f"trainer.program={spec!r}: not a layout this config trains in; {allowed}")
    widths = hidden_widths(cfg.model.units, cfg.model.layers, cfg.model.widths)
    fits = len(widths) <= len(layout) if kind == "mixed" else len(widths) == len(layout)
    if not fits or any(w > b for w, b in zip(widths, layout)) or cfg.model.activation not in activations.split("."):
        raise UserError(f"trainer.program={spec!r}: the network (widths {widths}, {cfg.model.activation}) does not fit "
                        f"that layout; {allowed}")
    structure = coarse(key) if kind == "mixed" else key._replace(buckets=())
    return Program(structure, layout, tuple(activations.split(".")), mixed=kind == "mixed"), xla == "xla"


def _grow(program: Program | None, structure: GroupKey, keys: Sequence[GroupKey]) -> Program:
    """The mixed program of `structure` grown to fit `keys` too (deepest, widest, every activation)."""
    old = [] if program is None else [program.buckets]
    depth = max(len(b) for b in [*old, *(k.buckets for k in keys)])
    width = max(max(b) for b in [*old, *(k.buckets for k in keys)])
    activations = {k.activation for k in keys} | set(program.activations if program else ())
    return Program(structure, (width,) * depth, tuple(sorted(activations)), mixed=True)


def _exact(key: GroupKey) -> Program:
    """The program of exactly `key`'s structure."""
    return Program(key._replace(buckets=()), key.buckets, (key.activation,), mixed=False)


def param_count(widths: Sequence[int], n_classes: int, batch_norm: bool = False) -> int:
    """Weights of the real (unpadded) network, counted as Keras counts a Dense stack: in*out + out per layer;
    with batch norm, a hidden layer has no bias and 4 values per unit (gamma, beta, moving mean and variance)."""
    sizes = [N_INPUTS, *widths, n_classes]
    dense = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    return dense + 3 * sum(widths) if batch_norm else dense


# --- Each trial's randomness, from its own seed only (on the host, with NumPy) --------------------

def _rng(seed: int, *purpose: int) -> np.random.Generator:
    """A generator for one use (init, an epoch's order, dropout) of one trial's seed."""
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, *purpose])


def init_weights(seed: int, widths: Sequence[int], buckets: Sequence[int], n_classes: int,
                 batch_norm: bool = False) -> list[np.ndarray]:
    """[kernel, bias, kernel, bias, ...] padded to `buckets`: glorot-uniform kernels drawn at the real
    shape (limit sqrt(6 / (fan_in + fan_out)) of the real widths, as `keras.layers.Dense`), zero biases;
    the padded rows, columns and bias entries are 0. With more buckets than widths (a mixed program),
    the layers past the trial's depth are all 0 and the output layer comes last. With batch norm, each
    hidden layer's gamma (ones) and beta (zeros) follow, as `keras.layers.BatchNormalization` starts; its
    hidden biases stay 0 (Keras's Dense before batch norm has none)."""
    rng = _rng(seed, 0)
    real, padded = [N_INPUTS, *widths, n_classes], [N_INPUTS, *buckets, n_classes]
    slots = [*range(len(widths)), len(buckets)]  # where each real layer sits among the padded ones
    weights = [np.zeros(shape, np.float32) for i, o in zip(padded[:-1], padded[1:]) for shape in ((i, o), (o,))]
    for slot, fan_in, fan_out in zip(slots, real[:-1], real[1:]):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights[2 * slot][:fan_in, :fan_out] = rng.uniform(-limit, limit, (fan_in, fan_out))
    if batch_norm:
        weights += [np.full(b, value, np.float32) for b in buckets for value in (1.0, 0.0)]
    return weights


def init_moving(buckets: Sequence[int]) -> list[np.ndarray]:
    """Batch norm's moving [mean, variance, mean, variance, ...] per hidden layer, as Keras starts them: 0 and 1."""
    return [np.full(b, value, np.float32) for b in buckets for value in (0.0, 1.0)]


def epoch_order(seed: int, epoch: int, n: int, steps: int, batch_size: int) -> np.ndarray:
    """The training rows of one trial's epoch as [steps, batch_size] indices: a fresh shuffle per epoch,
    as `fit(shuffle=True)`; the last batch is padded with row 0, which `batch_weights` gives weight 0."""
    order = np.zeros(steps * batch_size, np.int32)
    order[:n] = _rng(seed, 1, epoch).permutation(n)
    return order.reshape(steps, batch_size)


def batch_weights(n: int, steps: int, batch_size: int) -> np.ndarray:
    """[steps, batch_size]: 1 for a real sample, 0 for the padding of the last batch."""
    return (np.arange(steps * batch_size) < n).astype(np.float32).reshape(steps, batch_size)


def dropout_key(seed: int) -> np.uint32:
    """One trial's 32-bit dropout key; the program hashes it with the step and layer into its masks."""
    return np.uint32(_rng(seed, 2).integers(0, 2**32))


# --- The network, K trials stacked (keras.ops only) ------------------------------------------------

def _hash32(x: Any) -> Any:
    """A 32-bit integer mixer (lowbias32): uint32 in, well-scrambled uint32 out. The same bits on every
    backend, so dropout needs no backend RNG and each trial's masks depend on its key only."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B, "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def dropout(h: Any, rate: Any, keys: Any, counter: Any) -> Any:
    """Keras's dropout of [K, B, H] activations: zero each unit with its trial's `rate` [K], scale the rest
    by 1 / (1 - rate). Uniform draws come from hashing (trial key, `counter`, unit position)."""
    _, b, width = h.shape  # K may be unknown: a program traced for groups of several sizes
    step_keys = _hash32(ops.bitwise_xor(keys, _hash32(ops.cast(counter, "uint32"))))  # [K]
    # unit j of row i: the same position whatever the padded width, so a trial's masks do not depend on its group
    position = ops.expand_dims(ops.arange(b, dtype="int32"), 1) * 65536 + ops.expand_dims(ops.arange(width, dtype="int32"), 0)
    position = ops.reshape(ops.cast(position, "uint32"), (1, b, width))
    bits = _hash32(ops.bitwise_xor(position, ops.reshape(step_keys, (-1, 1, 1))))
    uniform = ops.cast(ops.right_shift(bits, 8), "float32") * (1.0 / (1 << 24))
    rate = ops.reshape(rate, (-1, 1, 1))
    return ops.where(uniform >= rate, h / (1.0 - rate), 0.0)


class BatchNorm:
    """`keras.layers.BatchNormalization` of K trials' [K, B, H] pre-activations, one hidden layer at a time.
    Training (`sample_weight` [B] given): each trial's mean and (biased) variance over its own batch, the padding
    rows of a last batch weighted 0 as Keras's smaller last batch has none, and its moving statistics updated
    (`updated`); scoring: the moving statistics. Then gamma and beta, as `tf.nn.batch_normalization` applies them."""

    def __init__(self, moving: Sequence[Any], sample_weight: Any = None) -> None:
        self.moving, self.sample_weight = moving, sample_weight
        self.updated: list[Any] = []

    def __call__(self, z: Any, layer: int, gamma: Any, beta: Any) -> Any:
        moving_mean, moving_variance = self.moving[2 * layer], self.moving[2 * layer + 1]
        if self.sample_weight is None:
            mean, variance = moving_mean, moving_variance
        else:
            weight, n = ops.reshape(self.sample_weight, (1, -1, 1)), ops.sum(self.sample_weight)
            mean = ops.sum(z * weight, axis=1) / n
            variance = ops.sum(ops.square(z - ops.expand_dims(mean, 1)) * weight, axis=1) / n
            self.updated += [moving_mean * BN_MOMENTUM + mean * (1.0 - BN_MOMENTUM),
                             moving_variance * BN_MOMENTUM + variance * (1.0 - BN_MOMENTUM)]
        inv = ops.rsqrt(variance + BN_EPSILON) * gamma
        return z * ops.expand_dims(inv, 1) + ops.expand_dims(beta - mean * inv, 1)


def forward(weights: Sequence[Any], x: Any, masks: Sequence[Any], activation: Callable[[Any], Any],
            drop: Callable[[Any, int], Any] | None = None, depth: Any = None, norm: BatchNorm | None = None,
            drop_input: Callable[[Any], Any] | None = None) -> Any:
    """Logits [K, B, classes] of K stacked networks. `x` is [K, B, 784] (each trial its own batch) or
    [B, 784] (shared, for scoring); `drop_input` drops pixels when training. Each hidden layer: batched matmul,
    bias (or batch norm: `norm`), activation, then the trial's 0/1 unit mask, so padded units are exactly 0 and
    carry no gradient; then dropout when training. `depth` [K] (a mixed program): trial k's layers from
    depth[k] on pass h through unchanged. Weights: [kernel, bias] per layer, output last, then [gamma, beta]
    per hidden layer with batch norm."""
    h = x if len(x.shape) == 3 else ops.expand_dims(x, 0)
    if drop_input is not None:
        h = drop_input(h)
    n_hidden = len(masks)
    for layer, mask in enumerate(masks):
        z = ops.matmul(h, weights[2 * layer])
        if norm is None:
            z = z + ops.expand_dims(weights[2 * layer + 1], 1)
        else:
            z = norm(z, layer, *weights[2 * n_hidden + 2 + 2 * layer:2 * n_hidden + 4 + 2 * layer])
        new = activation(z) * ops.expand_dims(mask, 1)
        if drop is not None:
            new = drop(new, layer)
        h = new if depth is None or layer == 0 else ops.where(ops.reshape(depth > layer, (-1, 1, 1)), new, h)
    return ops.matmul(h, weights[2 * n_hidden]) + ops.expand_dims(weights[2 * n_hidden + 1], 1)


def activation_of(names: Sequence[str], index: Any) -> Callable[[Any], Any]:
    """The hidden activation of K trials: `names[index[k]]` for trial k (`index` [K]), or the one activation."""
    functions = [keras.activations.get(name) for name in names]
    if len(functions) == 1:
        return functions[0]

    def mixed(z: Any) -> Any:
        pick = ops.reshape(index, (-1, 1, 1))
        out = functions[0](z)
        for i, function in enumerate(functions[1:], 1):
            out = ops.where(ops.equal(pick, i), function(z), out)
        return out

    return mixed


def sample_losses(logits: Any, y: Any, smoothing: Any) -> tuple[Any, Any]:
    """Categorical cross-entropy and 0/1 correctness per sample, both [K, B]; `y` one-hot [K or 1, B, C], smoothed
    by each trial's label smoothing [K] as `keras.losses.CategoricalCrossentropy` does."""
    smoothing = ops.reshape(smoothing, (-1, 1, 1))
    smoothed = y * (1.0 - smoothing) + smoothing / y.shape[-1]
    losses = -ops.sum(smoothed * ops.log_softmax(logits, axis=-1), axis=-1)
    correct = ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.argmax(y, axis=-1)), "float32")
    return losses, correct


def score(weights: Sequence[Any], x: Any, y: Any, masks: Sequence[Any], activation: Callable[[Any], Any],
          smoothing: Any, depth: Any = None, moving: Sequence[Any] | None = None) -> tuple[Any, Any]:
    """Mean loss and accuracy [K] of every trial on the shared (x, y), in slices of EVAL_ROWS rows (inference:
    no dropout, batch norm by its `moving` statistics)."""
    loss_sum, correct_sum = 0.0, 0.0
    norm = None if moving is None else BatchNorm(moving)
    for start in range(0, x.shape[0], EVAL_ROWS):
        logits = forward(weights, x[start:start + EVAL_ROWS], masks, activation, depth=depth, norm=norm)
        losses, correct = sample_losses(logits, ops.expand_dims(y[start:start + EVAL_ROWS], 0), smoothing)
        loss_sum, correct_sum = loss_sum + ops.sum(losses, axis=1), correct_sum + ops.sum(correct, axis=1)
    return loss_sum / x.shape[0], correct_sum / x.shape[0]


# --- Optimizers, per trial (as keras.optimizers update) --------------------------------------------

def _per_trial(value: Any, like: Any) -> Any:
    """A [K] value shaped to broadcast against a stacked weight [K, ...]."""
    return ops.reshape(value, (-1,) + (1,) * (len(like.shape) - 1))


def learning_rate(hp: dict[str, Any], iterations: Any, schedule: str) -> Any:
    """Each trial's learning rate [K] at its step `iterations` (before this update, as Keras reads it):
    constant, or cosine decay to 0 over the trial's own total steps (`keras.optimizers.schedules.CosineDecay`)."""
    if schedule == "constant":
        return hp["lr"]
    fraction = ops.minimum(iterations, hp["decay_steps"]) / hp["decay_steps"]
    return hp["lr"] * 0.5 * (1.0 + ops.cos(math.pi * fraction))


def adam_update(weight: Any, grad: Any, m: Any, v: Any, lr: Any, iterations: Any, hp: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One step of `keras.optimizers.Adam.update_step`, per trial: (new weight, new m, new v)."""
    beta_1, beta_2 = _per_trial(hp["beta_1"], weight), _per_trial(hp["beta_2"], weight)
    step = _per_trial(iterations + 1.0, weight)
    alpha = _per_trial(lr, weight) * ops.sqrt(1.0 - ops.power(beta_2, step)) / (1.0 - ops.power(beta_1, step))
    m = m + (grad - m) * (1.0 - beta_1)
    v = v + (ops.square(grad) - v) * (1.0 - beta_2)
    return weight - m * alpha / (ops.sqrt(v) + _per_trial(hp["epsilon"], weight)), m, v


def sgd_update(weight: Any, grad: Any, m: Any, v: Any, lr: Any, iterations: Any, hp: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One step of `keras.optimizers.SGD.update_step`, per trial (momentum 0 gives plain SGD exactly)."""
    lr, momentum = _per_trial(lr, weight), _per_trial(hp["momentum"], weight)
    m = m * momentum - grad * lr
    nesterov = _per_trial(hp["nesterov"], weight) > 0
    return weight + ops.where(nesterov, m * momentum - grad * lr, m), m, v


def nadam_update(weight: Any, grad: Any, m: Any, v: Any, lr: Any, iterations: Any, hp: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One step of `keras.optimizers.Nadam.update_step`, per trial; `hp["u_product"]` is the trial's momentum-cache
    product with this step's factor in, as Keras's `_backend_update_step` keeps it."""
    beta_1, beta_2 = _per_trial(hp["beta_1"], weight), _per_trial(hp["beta_2"], weight)
    local_step, next_step = _per_trial(iterations + 1.0, weight), _per_trial(iterations + 2.0, weight)
    u_t = beta_1 * (1.0 - 0.5 * ops.power(0.96, local_step))
    u_t_1 = beta_1 * (1.0 - 0.5 * ops.power(0.96, next_step))
    u_product_t = _per_trial(hp["u_product"], weight)
    m = m + (grad - m) * (1 - beta_1)
    v = v + (ops.square(grad) - v) * (1 - beta_2)
    m_hat = u_t_1 * m / (1 - u_product_t * u_t_1) + (1 - u_t) * grad / (1 - u_product_t)
    v_hat = v / (1 - ops.power(beta_2, local_step))
    return weight - m_hat * _per_trial(lr, weight) / (ops.sqrt(v_hat) + _per_trial(hp["epsilon"], weight)), m, v


def rmsprop_update(weight: Any, grad: Any, m: Any, v: Any, lr: Any, iterations: Any, hp: dict[str, Any]) -> tuple[Any, Any, Any]:
    """One step of `keras.optimizers.RMSprop.update_step` (not centered), per trial: `v` the velocity, `m` the
    momentum (momentum 0 gives Keras's plain branch exactly)."""
    rho, momentum = _per_trial(hp["rho"], weight), _per_trial(hp["momentum"], weight)
    v = rho * v + (1.0 - rho) * ops.square(grad)
    increment = _per_trial(lr, weight) * grad / ops.sqrt(v + _per_trial(hp["epsilon"], weight))
    m = momentum * m + increment
    return weight - m, m, v


def decayed(weight: Any, lr: Any, hp: dict[str, Any]) -> Any:
    """Keras's decoupled weight decay before each update (`Optimizer._apply_weight_decay`): w - w * wd * lr."""
    return weight - weight * _per_trial(hp["weight_decay"], weight) * _per_trial(lr, weight)


UPDATES = {"adam": adam_update, "adamw": adam_update, "nadam": nadam_update, "sgd": sgd_update,
           "rmsprop": rmsprop_update}


# --- The two backend-specific pieces -----------------------------------------------------------------

def compile_program(fn: Callable[..., Any], xla: bool) -> Callable[..., Any]:
    """`fn` as one compiled program: a `jax.jit` (always XLA), or a `tf.function` (retraced only for new
    shapes; `reduce_retracing` generalises shapes that keep changing, e.g. K), XLA-compiled when `xla`."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # one trace per structure is by design, not a warning
    return tf.function(fn, reduce_retracing=True, autograph=False, jit_compile=xla)


def value_and_grad(loss_fn: Callable[..., tuple[Any, Any]], weights: list[Any], *args: Any) -> tuple[tuple[Any, Any], list[Any]]:
    """((loss, aux), d loss / d weights) of `loss_fn(weights, *args) -> (loss, aux)`."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.value_and_grad(loss_fn, has_aux=True)(weights, *args)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss, aux = loss_fn(weights, *args)
    return (loss, aux), tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # as JAX: 0, not None


# --- A batched trial's replay ------------------------------------------------------------------------

def replay(cfg: DictConfig, out_dir: Any) -> dict[str, Any]:
    """Train `cfg` alone in the program `trainer.program` names (the one a sweep trained it in, with the other
    trials of its batch): the same initial weights, batches, dropout masks and arithmetic, so the same
    metrics. Writes what `src.training.run` writes (history.csv, metrics.json, model.keras when asked)."""
    from pathlib import Path

    from .files import write_csv, write_json

    check_config(cfg)
    program, xla = parse_program(cfg.trainer.program, cfg)
    trainer, out = BatchTrainer(xla=xla), Path(out_dir)

    def show(k: int, epoch: int, logs: dict[str, float]) -> bool:
        if cfg.trainer.verbose not in (0, "0"):
            log.info(f"Epoch {epoch}/{cfg.trainer.epochs} - " + " - ".join(f"{n}: {v:.4f}" for n, v in logs.items()))
        return False

    (metrics,) = trainer.train_group([cfg], on_epoch=show, program=program)
    history = metrics.pop("history")
    write_csv(out / "history.csv", history)
    write_json(out / "metrics.json", metrics)
    if cfg.trainer.get("tensorboard"):  # what Keras's callbacks and src/tracking.py give a lone run
        from .tensorboard_logs import LOG_DIR, write_run, write_session
        from .tracking import hparams

        write_run(out / LOG_DIR, history, metrics["param_count"])
        write_session(out / LOG_DIR, hparams(cfg), group=out.name)
    if metrics.get("error") == "diverged":
        raise diverged(cfg, len(history))
    if cfg.trainer.test:
        log.info(f"Test loss: {metrics['test_loss']:.3f} - test accuracy: {metrics['test_accuracy']:.1%}")
    if cfg.trainer.get("save_model"):
        trainer.keras_model(0, cfg).save(out / "model.keras")
    log.info(f"val_accuracy {metrics['val_accuracy']:.4f} after {metrics['epochs']} epochs in program "
             f"{metrics['program']}, {metrics['param_count']} parameters; results in {out}")
    return metrics


# --- The trainer --------------------------------------------------------------------------------------

class BatchTrainer:
    """Trains groups of trials (configs with one `group_key`) as K-stacked networks, keeping one compiled
    epoch program per structure: a sweep worker holds one `BatchTrainer` for its life.

    `traces` counts how often a program was traced (compiled): the same structure again adds none.
    `last_weights` holds the padded, stacked weights of the last group trained (NumPy, [K, ...]).

    `xla` (TensorFlow backend only; JAX always compiles with XLA): XLA makes a step several times faster
    but compiling costs more than a plain trace (docs/performance.md). "auto" uses it for
    a group that runs at least `XLA_MIN_BATCHES` batches (steps per epoch x its most epochs), where it
    pays back even if the structure never comes again; True or False forces it."""

    XLA_MIN_BATCHES = 2000

    def __init__(self, xla: bool | str = "auto") -> None:
        if xla not in (True, False, "auto"):
            raise ValueError(f"xla={xla!r}: use True, False or 'auto'")
        self.xla = xla
        self.traces = 0
        self.last_weights: list[np.ndarray] = []
        self.last_moving: list[np.ndarray] = []  # batch norm's moving statistics of the last group, if it has any
        self._programs: dict[tuple[Program, bool], Callable[..., Any]] = {}
        self._device_data: tuple[Splits, dict[str, Any]] | None = None
        self._mixed: dict[GroupKey, Program] = {}  # per coarse structure: its mixed program so far (it only grows)
        self._stacked: dict[Program, int] = {}  # on JAX, per mixed program: the most trials it trained at once

    def groups(self, cfgs: Sequence[DictConfig]) -> list[tuple[list[int], Program]]:
        """Which of the batchable `cfgs` train together, and in which program. Cheap trials (fewer than
        XLA_MIN_BATCHES batches: a trace costs more than their arithmetic) of one coarse structure share its
        mixed program whatever their width, depth and activation, so a new one costs no trace (or one, when
        it grows the program), as long as padding stays cheap: each trial's forward passes in that program
        cost at most MIX_MACS multiply-adds. The others share only an exact structure, each width padded to a
        multiple of 8 (padding would cost arithmetic every epoch). The mixed programs are kept as grown."""
        exact: dict[GroupKey, list[int]] = {}
        mixed: dict[GroupKey, tuple[list[int], Program, int]] = {}  # members, program, their most samples
        for i, cfg in enumerate(cfgs):
            key, n_train = group_key(cfg), len(load(cfg.data).x_train)
            structure, samples = coarse(key), n_train * int(cfg.trainer.epochs)
            members, program, most = mixed.get(structure, ([], self._mixed.get(structure), 0))
            grown = _grow(program, structure, [key])
            if self._cheap(n_train, cfg) and max(most, samples) * grown.macs() <= MIX_MACS:
                mixed[structure] = ([*members, i], grown, max(most, samples))
            else:
                widths = hidden_widths(cfg.model.units, cfg.model.layers, cfg.model.widths)
                exact.setdefault(key._replace(buckets=tuple(map(fine_bucket, widths))), []).append(i)
        for structure, (_, program, _) in mixed.items():
            outgrown = self._mixed.get(structure)
            if outgrown is not None and outgrown != program:  # never chosen again: free its executables
                self._stacked.pop(outgrown, None)
                for xla in (False, True):
                    self._forget(outgrown, xla)
            self._mixed[structure] = program
        return [(members, program) for members, program, _ in mixed.values()] + [
            (members, _exact(key)) for key, members in exact.items()]

    def _stack_size(self, program: Program, n: int) -> int:
        """How many trials a group of `n` trains as: on JAX, a mixed program's groups are padded to the most
        trials it has trained at once, since `jax.jit` compiles (and keeps, ~30 MB) one executable per K and
        claims shrink at the end of a budget or a worker's life. Padding costs only cheap trials' arithmetic.
        Exact programs (long trials, whose arithmetic outweighs a compile) and TensorFlow, whose
        `tf.function` keeps K dynamic, train `n`."""
        if not program.mixed or keras.backend.backend() != "jax":
            return n
        if n > self._stacked.get(program, 0):  # a wider stack: the narrower executable is never called again
            self._stacked[program] = n
            self._forget(program, True)
        return self._stacked[program]

    def _cheap(self, n_train: int, cfg: DictConfig) -> bool:
        return math.ceil(n_train / cfg.trainer.batch_size) * cfg.trainer.epochs < self.XLA_MIN_BATCHES

    def train_group(self, cfgs: Sequence[DictConfig], data: Splits | None = None,
                    on_epoch: GroupEpochHook | None = None, program: Program | None = None) -> list[dict[str, Any]]:
        """Train every config of `cfgs` at once; return per trial the metrics `src.training.run` writes to
        metrics.json plus `history` (a DataFrame: epoch, accuracy, loss, val_accuracy, val_loss) and, for a
        trial whose loss became NaN, `error: diverged` (the others train on).

        `program` is the one `groups` chose for them; by default, the one it would choose (they must fit one:
        cheap trials of one coarse structure, or equal keys but for their width buckets, each layer then
        padded to the widest). `data` defaults to `load(cfgs[0].data)`. `seconds` is the group's wall time
        divided by K. `on_epoch(k, epoch, logs)` is called after each epoch of each trial still training
        (not one that diverged); True prunes (freezes) trial k."""
        start = time.perf_counter()
        if not cfgs:
            return []
        for cfg in cfgs:
            check_config(cfg)
        data = load(cfgs[0].data) if data is None else data
        if program is None:  # as `groups` would place them: one program, or the one-line error
            planned = self.groups(cfgs) if None not in map(group_key, cfgs) else []
            program = planned[0][1] if len(planned) == 1 else _exact(common_key(list(map(group_key, cfgs))))
        key = program.structure
        if key.backend != keras.backend.backend():
            raise UserError(f"trainer.backend={key.backend}: this process runs Keras on {keras.backend.backend()}")
        n = len(cfgs)
        cfgs = [*cfgs, *[cfgs[0]] * (self._stack_size(program, n) - n)]  # padding: copies that never train

        # The trials, stacked: per-trial weights from their own seeds, unit masks of their real widths.
        n_train, batch_size = len(data.x_train), key.batch_size
        steps = math.ceil(n_train / batch_size)
        widths = [hidden_widths(c.model.units, c.model.layers, c.model.widths) for c in cfgs]
        seeds, epochs = [int(c.trainer.seed) for c in cfgs], [int(c.trainer.epochs) for c in cfgs]
        weights = [ops.convert_to_tensor(np.stack(w)) for w in zip(
            *(init_weights(s, w, program.buckets, key.n_classes, key.batch_norm) for s, w in zip(seeds, widths)))]
        moving = [ops.convert_to_tensor(np.stack([m] * len(cfgs))) for m in init_moving(program.buckets)] \
            if key.batch_norm else []
        state = {"weights": weights, "m": [ops.zeros_like(w) for w in weights], "v": [ops.zeros_like(w) for w in weights],
                 "moving": moving, "iterations": ops.zeros((len(cfgs),), "float32"),
                 "u_product": ops.ones((len(cfgs),), "float32")}  # Nadam's momentum cache
        inputs = {
            **self._tensors(data),
            "masks": [ops.convert_to_tensor(np.stack([np.arange(b) < (w[layer] if layer < len(w) else 0) for w in widths])
                                            .astype(np.float32)) for layer, b in enumerate(program.buckets)],
            "depth": ops.convert_to_tensor(np.array([len(w) for w in widths], np.int32)),
            "activation": ops.convert_to_tensor(np.array([program.activations.index(c.model.activation) for c in cfgs],
                                                         np.int32)),
            "hp": self._hyperparameters(cfgs, steps),
            "keys": ops.convert_to_tensor(np.array([dropout_key(s) for s in seeds], np.uint32)),
            "batch_weights": ops.convert_to_tensor(batch_weights(n_train, steps, batch_size)),
        }
        xla = self._use_xla(steps * max(epochs))
        run_epoch = self._program(program, xla)

        # One program call per epoch for all trials; then each trial's logs, its hook and its state.
        status = ["training"] * n + ["padding"] * (len(cfgs) - n)  # -> done | pruned | diverged
        stoppers = [_Stopper(c.trainer.get("callbacks") or []) for c in cfgs]  # EarlyStopping, per trial
        rows: list[list[dict[str, float]]] = [[] for _ in cfgs]
        for epoch in range(1, max(epochs) + 1):
            active = [s == "training" and epoch <= e for s, e in zip(status, epochs)]
            if not any(active):
                break
            order = np.stack([epoch_order(s, epoch, n_train, steps, batch_size) if a else np.zeros((steps, batch_size), np.int32)
                              for s, a in zip(seeds, active)])
            state, logs = run_epoch(state, {**inputs, "order": ops.convert_to_tensor(order),
                                          "active": ops.convert_to_tensor(np.array(active, np.float32)),
                                          "epoch": ops.convert_to_tensor(epoch, "int32")})
            logs = {name: ops.convert_to_numpy(value).astype(np.float64) for name, value in logs.items()}
            for k in np.flatnonzero(active):
                row = {name: float(values[k]) for name, values in logs.items()}
                rows[k].append(row)
                if not all(math.isfinite(v) for v in row.values()):
                    status[k] = "diverged"
                    continue
                if epoch == epochs[k] or stoppers[k].stops(epoch, row):
                    status[k] = "done"
                if on_epoch is not None and on_epoch(int(k), epoch, dict(row)):
                    status[k] = "pruned"

        self.last_weights = [ops.convert_to_numpy(w) for w in state["weights"]]
        self.last_moving = [ops.convert_to_numpy(m) for m in state["moving"]]
        tested = self._test_scores(cfgs, state, inputs, data, program)
        seconds = round((time.perf_counter() - start) / n, 3)
        return [{**self._result(cfg, rows[k], status[k], widths[k], key, data,
                                {name: values[k] for name, values in tested.items()}, seconds),
                 "program": program.spec(xla)} for k, cfg in enumerate(cfgs[:n])]

    def keras_model(self, k: int, cfg: DictConfig) -> keras.Model:
        """Trial `k` of the last group trained as the network `src.model.dense_net` builds for `cfg`, with
        its trained weights (the padding cut away): what `src.training.run` saves, minus optimizer state."""
        widths = hidden_widths(cfg.model.units, cfg.model.layers, cfg.model.widths)
        n_hidden = len(self.last_moving) // 2 if self.last_moving else len(self.last_weights) // 2 - 1
        sizes = [N_INPUTS, *widths, self.last_weights[2 * n_hidden].shape[-1]]
        model = dense_net(cfg.model, N_INPUTS, sizes[-1])
        weights = []
        for layer, (i, o) in enumerate(zip(sizes[:-2], sizes[1:-1])):  # hidden: Dense (+ BatchNormalization)
            weights.append(self.last_weights[2 * layer][k, :i, :o])
            if self.last_moving:
                norm = self.last_weights[2 * n_hidden + 2 + 2 * layer:2 * n_hidden + 4 + 2 * layer]
                weights += [w[k, :o] for w in [*norm, *self.last_moving[2 * layer:2 * layer + 2]]]
            else:
                weights.append(self.last_weights[2 * layer + 1][k, :o])
        i, o = sizes[-2:]  # a mixed program's output layer is last
        model.set_weights([*weights, self.last_weights[2 * n_hidden][k, :i, :o], self.last_weights[2 * n_hidden + 1][k, :o]])
        return model

    def _tensors(self, data: Splits) -> dict[str, Any]:
        """The data's arrays as backend tensors, converted once and kept while the same `Splits` comes back."""
        if self._device_data is None or self._device_data[0] is not data:
            self._device_data = (data, {name: ops.convert_to_tensor(getattr(data, name))
                                        for name in ("x_train", "y_train", "x_val", "y_val")})
        return self._device_data[1]

    @staticmethod
    def _hyperparameters(cfgs: Sequence[DictConfig], steps: int) -> dict[str, Any]:
        """The per-trial runtime values [K]: learning rate, optimizer knobs, dropout rate, cosine decay steps."""
        def column(values: list[float]) -> Any:
            return ops.convert_to_tensor(np.array(values, np.float32))

        opt = [c.optimizer for c in cfgs]
        return {
            "lr": column([o.lr for o in opt]),
            "beta_1": column([o.get("beta_1", 0.9) for o in opt]),
            "beta_2": column([o.get("beta_2", 0.999) for o in opt]),
            "epsilon": column([o.get("epsilon", 1e-7) for o in opt]),
            "momentum": column([o.get("momentum", 0.0) for o in opt]),
            "nesterov": column([float(bool(o.get("nesterov", False))) for o in opt]),
            "rho": column([o.get("rho", 0.9) for o in opt]),
            "weight_decay": column([o.get("weight_decay") if o.get("weight_decay") is not None
                                    else DEFAULT_WEIGHT_DECAY.get(str(o.name).lower(), 0.0) for o in opt]),
            "dropout": column([c.model.dropout for c in cfgs]),
            "input_dropout": column([c.model.get("input_dropout") or 0.0 for c in cfgs]),
            "label_smoothing": column([label_smoothing(c.trainer.loss) for c in cfgs]),
            "decay_steps": column([max(c.trainer.epochs * steps, 1) for c in cfgs]),
        }

    def _use_xla(self, batches: int) -> bool:
        """Whether this group's program is XLA-compiled (see the class docstring)."""
        if keras.backend.backend() == "jax":
            return True
        return batches >= self.XLA_MIN_BATCHES if self.xla == "auto" else bool(self.xla)

    def _program(self, program: Program, xla: bool) -> Callable[..., Any]:
        """The compiled epoch program of one layout, built on first use and kept."""
        if (program, xla) not in self._programs:
            self._programs[program, xla] = compile_program(self._epoch_program(program), xla)
        return self._programs[program, xla]

    def _forget(self, program: Program, xla: bool) -> None:
        """Drop a compiled program no group will call again, and its executables (`jax.jit`'s cache)."""
        compiled = self._programs.pop((program, xla), None)
        if hasattr(compiled, "clear_cache"):
            compiled.clear_cache()

    def _epoch_program(self, program: Program) -> Callable[..., Any]:
        """`epoch(state, inputs) -> (state, logs)`: one epoch of K trials, then their validation scores.

        Static (in the trace): the layout (depth, activations), dropout on/off, optimizer, schedule; the
        shapes (K, buckets, batch size, steps). Everything else comes in `inputs` as tensors."""
        key, update = program.structure, UPDATES[program.structure.optimizer]
        input_layer = MAX_LAYERS - 1  # the input's dropout counter: past any hidden layer's

        def epoch(state: dict[str, Any], inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            self.traces += 1  # runs only while tracing
            hp, masks, active = inputs["hp"], inputs["masks"], inputs["active"]
            activation = activation_of(program.activations, inputs["activation"])
            depth = inputs["depth"] if program.mixed else None
            steps = inputs["order"].shape[1]

            def batch_loss(weights: list[Any], x: Any, y: Any, sample_weight: Any, step: Any,
                           moving: list[Any]) -> tuple[Any, Any]:
                """Sum over trials of each trial's mean loss on its batch (so each trial's gradient is its
                own); aux: (loss, correct count) per trial, and batch norm's moving statistics updated."""
                def counter(layer: int) -> Any:
                    return (inputs["epoch"] * steps + step) * MAX_LAYERS + layer

                def drop(h: Any, layer: int) -> Any:
                    return dropout(h, hp["dropout"], inputs["keys"], counter(layer))

                def drop_input(x: Any) -> Any:
                    return dropout(x, hp["input_dropout"], inputs["keys"], counter(input_layer))

                norm = BatchNorm(moving, sample_weight) if key.batch_norm else None
                logits = forward(weights, x, masks, activation, drop if key.dropout else None, depth, norm,
                                 drop_input if key.input_dropout else None)
                losses, correct = sample_losses(logits, y, hp["label_smoothing"])
                per_trial = ops.sum(losses * sample_weight, axis=1) / ops.sum(sample_weight)
                return ops.sum(per_trial), (per_trial, ops.sum(correct * sample_weight, axis=1),
                                            norm.updated if norm else [])

            def train_step(step: Any, carry: dict[str, Any]) -> dict[str, Any]:
                rows = ops.take(inputs["order"], step, axis=1)  # [K, B]
                sample_weight = ops.take(inputs["batch_weights"], step, axis=0)  # [B]
                x, y = ops.take(inputs["x_train"], rows, axis=0), ops.take(inputs["y_train"], rows, axis=0)
                (_, (loss, correct, moving)), grads = value_and_grad(batch_loss, carry["weights"], x, y, sample_weight,
                                                                     step, carry["moving"])
                alive = carry["alive"] * ops.cast(ops.isfinite(loss), "float32")  # a NaN freezes its trial
                lr = learning_rate(hp, carry["iterations"], key.lr_schedule)
                u_product = carry["u_product"]
                if key.optimizer == "nadam":  # before the variables' updates, as Keras's _backend_update_step
                    u_product = u_product * hp["beta_1"] * (1.0 - 0.5 * ops.power(0.96, carry["iterations"] + 1.0))
                step_hp = {**hp, "u_product": u_product}
                new: dict[str, list[Any]] = {"weights": [], "m": [], "v": []}
                for w, g, m, v in zip(carry["weights"], grads, carry["m"], carry["v"]):
                    updated = update(decayed(w, lr, hp), g, m, v, lr, carry["iterations"], step_hp)
                    keep = _per_trial(alive, w) > 0
                    for name, old, fresh in zip(("weights", "m", "v"), (w, m, v), updated):
                        new[name].append(ops.where(keep, fresh, old))
                new["moving"] = [ops.where(_per_trial(alive, old) > 0, fresh, old) for old, fresh in zip(carry["moving"], moving)]
                n = ops.sum(sample_weight)
                return {**new, "iterations": carry["iterations"] + alive, "alive": alive,
                        "u_product": ops.where(alive > 0, u_product, carry["u_product"]),
                        "loss_sum": carry["loss_sum"] + loss * n, "correct_sum": carry["correct_sum"] + correct}

            zeros = ops.zeros_like(active)
            carry = ops.fori_loop(0, steps, train_step, {**state, "alive": active, "loss_sum": zeros, "correct_sum": zeros})
            n_train = ops.sum(inputs["batch_weights"])
            val_loss, val_accuracy = score(carry["weights"], inputs["x_val"], inputs["y_val"], masks, activation,
                                           hp["label_smoothing"], depth, carry["moving"] if key.batch_norm else None)
            logs = {"accuracy": carry["correct_sum"] / n_train, "loss": carry["loss_sum"] / n_train,
                    "val_accuracy": val_accuracy, "val_loss": val_loss}
            return {name: carry[name] for name in ("weights", "m", "v", "moving", "iterations", "u_product")}, logs

        return epoch

    @staticmethod
    def _test_scores(cfgs: Sequence[DictConfig], state: dict[str, Any], inputs: dict[str, Any], data: Splits,
                     program: Program) -> dict[str, np.ndarray]:
        """Test loss and accuracy [K] when any trial asks for them (`trainer.test`), scored eagerly once."""
        if not any(c.trainer.test for c in cfgs):
            return {}
        loss, accuracy = score(state["weights"], ops.convert_to_tensor(data.x_test), ops.convert_to_tensor(data.y_test),
                               inputs["masks"], activation_of(program.activations, inputs["activation"]),
                               inputs["hp"]["label_smoothing"], inputs["depth"] if program.mixed else None,
                               state["moving"] if program.structure.batch_norm else None)
        return {"test_loss": ops.convert_to_numpy(loss), "test_accuracy": ops.convert_to_numpy(accuracy)}

    @staticmethod
    def _result(cfg: DictConfig, rows: list[dict[str, float]], status: str, widths: list[int], key: GroupKey,
                data: Splits, tested: dict[str, Any], seconds: float) -> dict[str, Any]:
        """One trial's metrics, in `src.training.run`'s keys and rounding, with its history."""
        history = history_table(pd.DataFrame(rows, columns=["accuracy", "loss", "val_accuracy", "val_loss"]))
        metrics = stamp(run_metrics(history, param_count=param_count(widths, key.n_classes, key.batch_norm), seed=cfg.trainer.seed,
                                    n_train=len(data.x_train), n_val=len(data.x_val)), seconds)  # seconds: the group's / K
        if status == "diverged":
            metrics["error"] = "diverged"
        elif cfg.trainer.test and tested:
            metrics.update({name: round(float(value), 6) for name, value in tested.items()})
        return {**metrics, "history": history}

