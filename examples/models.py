"""A user's model, given to the harness by config: `model=cnn` (examples/conf/model/cnn.yaml) names this
function as `_target_`; the harness calls it with the model config, the input size and the class count.

    python -m src.train --config-dir examples/conf model=cnn model.filters=16
"""
from __future__ import annotations

from typing import Any

import keras


def small_cnn(cfg: Any, n_inputs: int, n_classes: int) -> keras.Model:
    """The 784 pixels back to 28x28, one convolution and pooling, then the softmax."""
    side = int(n_inputs ** 0.5)
    return keras.Sequential([
        keras.Input(shape=(n_inputs,)),
        keras.layers.Reshape((side, side, 1)),
        keras.layers.Conv2D(cfg.filters, kernel_size=3, activation=cfg.activation),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(cfg.dropout),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])
