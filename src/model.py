"""The lesson's network as config: 784 inputs -> hidden Dense layers -> one softmax unit per class."""
from __future__ import annotations

from typing import Any

import keras

from src.errors import UserError

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


def build_model(model: Any, n_inputs: int, n_classes: int) -> keras.Sequential:
    """The `Sequential` network the lesson builds, with widths, activation and dropout from `model`."""
    widths = hidden_widths(model.units, model.layers, model.widths)
    activation = check_activation(model.activation)
    if not 0.0 <= model.dropout < 1.0:
        raise UserError(f"model.dropout={model.dropout}: must be in [0, 1)")
    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_inputs,))]
    for width in widths:
        layers.append(keras.layers.Dense(width, activation=activation))
        if model.dropout > 0:
            layers.append(keras.layers.Dropout(model.dropout))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    return keras.Sequential(layers)


def build_optimizer(optimizer: Any) -> keras.optimizers.Optimizer:
    """The Keras optimizer `optimizer.name` (any Keras optimizer, by lower-case class name) or `_target_` (any
    optimizer class, a user's too), with `lr` as its learning rate and the other keys as its knobs."""
    knobs = {k: v for k, v in optimizer.items() if k not in {"name", "lr", "_target_"}}
    if "_target_" in optimizer:
        from hydra.utils import get_class

        make = get_class(optimizer["_target_"])
    elif str(optimizer.name).lower() in OPTIMIZERS:
        make = OPTIMIZERS[str(optimizer.name).lower()]
    else:
        raise UserError(f"optimizer.name={optimizer.name!r}; allowed: {', '.join(sorted(OPTIMIZERS))}, "
                        f"or optimizer._target_=CLASS")
    try:
        return make(learning_rate=optimizer.lr, **knobs)
    except (TypeError, ValueError) as e:
        raise UserError(f"optimizer {optimizer.get('_target_', optimizer.name)}: {str(e).splitlines()[0]}") from None
