"""The lesson's network as config: 784 inputs -> hidden Dense layers -> one softmax unit per class."""
from __future__ import annotations

from typing import Any

import keras

from .errors import UserError

# Every Keras optimizer by its lower-case class name: adam, adamw, nadam, sgd, rmsprop, lion, ...
OPTIMIZERS = {name.lower(): cls for name, cls in vars(keras.optimizers).items()
              if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)
              and name not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")}


def hidden_widths(units: int, layers: int, widths: list[int] | None) -> list[int]:
    """Width of each hidden layer: `widths` when given, else `layers` layers of `units`."""
    chosen = list(widths) if widths is not None else [units] * layers
    if not chosen or any(int(w) < 1 for w in chosen):
        raise UserError(f"model: hidden widths {chosen} (units={units}, layers={layers}, widths={widths}); "
                        f"need at least one hidden layer and every width >= 1")
    return [int(w) for w in chosen]


def check_activation(name: str) -> str:
    """`name` if Keras knows it as an activation, else an error listing the names it knows."""
    try:
        keras.activations.get(name)
    except ValueError:
        known = sorted(n for n in dir(keras.activations)
                       if not n.startswith("_") and n not in {"get", "serialize", "deserialize"})
        raise UserError(f"model.activation={name!r} is not a Keras activation; "
                        f"allowed: {', '.join(known)}") from None
    return name


def build_model(model: Any, n_inputs: int, n_classes: int) -> keras.Model:
    """The network `model` describes: a user's `_target_` function `(cfg, n_inputs, n_classes) -> keras.Model`
    called with the model config, else the lesson's dense net."""
    if "_target_" not in model:
        return dense_net(model, n_inputs, n_classes)
    from hydra.utils import get_method

    try:
        built = get_method(model._target_)(model, n_inputs, n_classes)
    except ImportError as e:  # hydra's message: "Error loading 'x':", then the import error
        raise UserError(f"model._target_={model._target_!r} cannot be imported: {str(e).splitlines()[-2:][0]}") from None
    if not isinstance(built, keras.Model):
        raise UserError(f"model._target_={model._target_!r} returned {type(built).__name__}; it must return a keras.Model")
    return built


def dense_net(model: Any, n_inputs: int, n_classes: int) -> keras.Sequential:
    """The `Sequential` network the lesson builds, with widths, activation and dropout from `model`."""
    widths = hidden_widths(model.units, model.layers, model.widths)
    activation = check_activation(model.activation)
    if not 0.0 <= model.dropout < 1.0:
        raise UserError(f"model.dropout={model.dropout}: must be in [0, 1)")
    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_inputs,))]
    if model.get("input_dropout"):  # drop pixels: the dropout paper's regulariser for dense nets on images
        layers.append(keras.layers.Dropout(model.input_dropout))
    for width in widths:
        if model.get("batch_norm"):  # Dense, then normalise, then the activation
            layers += [keras.layers.Dense(width, use_bias=False), keras.layers.BatchNormalization(),
                       keras.layers.Activation(activation)]
        else:
            layers.append(keras.layers.Dense(width, activation=activation))
        if model.dropout > 0:
            layers.append(keras.layers.Dropout(model.dropout))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    return keras.Sequential(layers)


def build_optimizer(optimizer: Any, schedule: str = "constant", total_steps: int = 1) -> keras.optimizers.Optimizer:
    """The Keras optimizer `optimizer.name` (any Keras optimizer, by lower-case class name) or `_target_` (any
    optimizer class, a user's too), with `lr` as its learning rate (`schedule` cosine: decayed to 0 over
    `total_steps` batches) and the other keys as its knobs."""
    knobs = {k: v for k, v in optimizer.items() if k not in {"name", "lr", "_target_"}}
    if "_target_" in optimizer:
        from hydra.utils import get_class

        make = get_class(optimizer["_target_"])
    elif str(optimizer.name).lower() in OPTIMIZERS:
        make = OPTIMIZERS[str(optimizer.name).lower()]
    else:
        raise UserError(f"optimizer.name={optimizer.name!r}; allowed: {', '.join(sorted(OPTIMIZERS))}, "
                        f"or optimizer._target_=CLASS")
    lr = optimizer.lr
    if schedule == "cosine":  # any other value is refused by src.config.check
        lr = keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=max(total_steps, 1))
    try:
        return make(learning_rate=lr, **knobs)
    except (TypeError, ValueError) as e:
        raise UserError(f"optimizer {optimizer.get('_target_', optimizer.name)}: {str(e).splitlines()[0]}") from None


def build_loss(loss: Any) -> Any:
    """`trainer.loss`: a Keras loss name (categorical_crossentropy, the lesson's) or a `_target_` block,
    e.g. `{_target_: keras.losses.CategoricalCrossentropy, label_smoothing: 0.1}`."""
    if not isinstance(loss, str):
        return _instantiate("trainer.loss", loss)
    try:
        return keras.losses.get(loss)
    except ValueError:
        raise UserError(f"trainer.loss={loss!r} is not a Keras loss; use a name such as categorical_crossentropy "
                        f"or a _target_ block") from None


def build_metrics(names: Any) -> list[keras.metrics.Metric]:
    """`trainer.metrics` as fresh metric objects, accuracy first and always (the sweep scores val_accuracy):
    names (`accuracy` is categorical accuracy, as Keras's compile reads it for one-hot labels) or `_target_` blocks."""
    metrics: list[keras.metrics.Metric] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    for spec in names or []:
        if spec in ("accuracy", "acc"):
            continue
        if not isinstance(spec, str):
            metrics.append(_instantiate("trainer.metrics", spec))
            continue
        try:
            found = keras.metrics.get(spec)
        except ValueError:
            raise UserError(f"trainer.metrics: {spec!r} is not a Keras metric") from None
        metrics.append(found if isinstance(found, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(found, name=spec))
    return metrics


def _instantiate(key: str, block: Any) -> Any:
    """A `_target_` block made by Hydra, its errors as one line naming the key."""
    from hydra.utils import instantiate

    try:
        return instantiate(block)
    except Exception as e:  # Hydra wraps import and constructor errors alike
        raise UserError(f"{key}: cannot make {dict(block)}: {str(e).splitlines()[0]}") from None
