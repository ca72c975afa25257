"""Typed schemas of the config groups (Hydra structured configs): a wrong type is refused when Hydra
composes, and `check_keys` refuses a key a group does not have (also one added with `+`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .errors import UserError


@dataclass
class Data:
    name: str = "fashion_mnist"
    path: Optional[str] = None
    classes: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_train: Optional[int] = 50
    validation_split: float = 0.2
    seed: int = 0


@dataclass
class DenseModel:
    units: int = 10
    layers: int = 2
    widths: Optional[list[int]] = None
    activation: str = "relu"
    dropout: float = 0.0
    input_dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class Trainer:
    epochs: int = 3
    batch_size: int = 32
    verbose: Any = "auto"               # auto, 0, 1 or 2
    seed: int = 0
    test: bool = True
    steps_per_execution: Any = "epoch"  # epoch or an int
    eval_batch_size: int = 1024
    backend: str = "tensorflow"
    lr_schedule: str = "constant"           # constant, or cosine (decays to 0 over the run)
    loss: Any = "categorical_crossentropy"  # a Keras loss name or a _target_ block
    metrics: list[Any] = field(default_factory=lambda: ["accuracy"])
    callbacks: list[Any] = field(default_factory=list)
    save_model: bool = False
    tensorboard: bool = False
    program: Optional[str] = None           # a batched sweep trial's layout (its replay line sets it): train in it


@dataclass
class Adam:
    name: str = "adam"
    lr: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass
class AdamW(Adam):
    name: str = "adamw"
    weight_decay: float = 0.004  # Keras's AdamW default: each step, w -= w * weight_decay * lr


@dataclass
class SGD:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class RMSprop:
    name: str = "rmsprop"
    lr: float = 0.001
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7


# group -> {schema name: dataclass}; a group's yaml names its schema first in its defaults list.
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"data": Data},
    "model": {"dense": DenseModel},
    "trainer": {"trainer": Trainer},
    "optimizer": {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop},
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore as `schema/<group>/<name>` (idempotent)."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def check_keys(cfg: Any) -> None:
    """Refuse a key that a group's schema lacks: Hydra lets `+model.unit=32` through (it opens the node
    to append), which would train the default model without a word."""
    for group in ("data", "model", "trainer"):
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if node is not None else None
        if schema is None or not dataclasses.is_dataclass(schema):
            continue  # a user's model given by _target_ has keys of its own
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in node:
            if key not in allowed:
                raise UserError(f"{group}.{key} is not a {group} setting; allowed: {', '.join(allowed)}")
