"""Every config option composes, the defaults are the lesson, and the model they build has the right shape."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from src.errors import UserError
from src.schema import register

register()

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
           for group in ("data", "model", "optimizer", "trainer", "sweep")}


def compose_config(name: str = "config", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [], return_hydra_config=name == "sweep")


def test_defaults_are_the_lesson():
    cfg = compose_config()
    assert list(cfg.data.classes) == [0, 1, 2] and cfg.data.n_train == 50 and cfg.data.validation_split == 0.2
    assert (cfg.model.units, cfg.model.layers, cfg.model.activation, cfg.model.dropout) == (10, 2, "relu", 0.0)
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.001
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (3, 32)


@pytest.mark.parametrize("group, option", [(g, o) for g, options in OPTIONS.items() if g != "sweep" for o in options])
def test_every_option_composes(group, option):
    cfg = compose_config(overrides=[f"{group}={option}"])
    assert cfg[group] is not None
    if group == "optimizer":
        assert cfg.optimizer.name == option and cfg.optimizer.lr > 0


@pytest.mark.parametrize("sweep", OPTIONS["sweep"])
def test_every_sweep_composes(sweep):
    cfg = compose_config("sweep", [f"sweep={sweep}"])
    assert cfg.hydra.sweeper.params and cfg.hydra.sweeper.n_trials > 0
    assert cfg.trainer.verbose == 0 and cfg.trainer.test is False


def test_ten_classes_option():
    cfg = compose_config(overrides=["data=fashion_mnist_10"])
    assert list(cfg.data.classes) == list(range(10)) and cfg.data.n_train is None


def test_units_32_gives_the_expected_network():
    from src.model import build_model

    cfg = compose_config(overrides=["model.units=32"])
    model = build_model(cfg.model, 784, 3)
    assert [layer.units for layer in model.layers] == [32, 32, 3]
    assert model.count_params() == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3
    assert model.layers[-1].activation.__name__ == "softmax"


def test_widths_dropout_and_optimizers():
    from src.model import build_model, build_optimizer

    cfg = compose_config(overrides=["model.widths=[64,16,8]", "model.dropout=0.2", "model.activation=tanh"])
    model = build_model(cfg.model, 784, 10)
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Dropout"] * 3 + ["Dense"]
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [64, 16, 8, 10]
    for name in OPTIONS["optimizer"]:
        opt = build_optimizer(compose_config(overrides=[f"optimizer={name}", "optimizer.lr=0.05"]).optimizer)
        assert float(opt.learning_rate) == pytest.approx(0.05)


def test_bad_model_settings():
    from src.model import build_model

    with pytest.raises(UserError, match="model.activation='relux' is not a Keras activation; allowed: .*relu"):
        build_model(compose_config(overrides=["model.activation=relux"]).model, 784, 3)
    with pytest.raises(UserError, match="every width >= 1"):
        build_model(compose_config(overrides=["model.units=0"]).model, 784, 3)
    with pytest.raises(UserError, match=r"model.dropout=1.0: must be in \[0, 1\)"):
        build_model(compose_config(overrides=["model.dropout=1.0"]).model, 784, 3)
