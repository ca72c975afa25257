"""`python -m src.train` end to end on the real data, through the CLI as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, error_lines, run_cli

from src.backend import cache_compilations
from src.metrics import RUN_METRICS

METRICS = {"val_accuracy", "val_loss", "best_val_accuracy", "best_epoch", "train_accuracy", "train_loss",
           "test_accuracy", "test_loss", "epochs", "param_count", "seconds", "seed", "n_train", "n_val",
           "peak_rss_mb"}


def train(tmp_path, *overrides, name="run", expect=0):
    flags = [o for o in overrides if o.startswith("--")]  # Hydra's flags go before the overrides
    result = run_cli("train", *flags, f"hydra.run.dir={tmp_path / name}", *(o for o in overrides if o not in flags),
                     expect=expect)
    return result, tmp_path / name


def test_lesson_run_writes_metrics_and_history(tmp_path, data_dir):
    result, out = train(tmp_path, "trainer.verbose=2")
    assert "Epoch 3/3" in result.stdout and "val_accuracy" in result.stdout
    assert "Test loss: " in result.stderr + result.stdout and "test accuracy: " in result.stderr + result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS == set(RUN_METRICS)  # the one contract both training paths build from
    assert (metrics["epochs"], metrics["n_train"], metrics["n_val"]) == (3, 40, 10)
    assert metrics["param_count"] == 784 * 10 + 10 + 10 * 10 + 10 + 10 * 3 + 3
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["val_accuracy"].iloc[-1] == metrics["val_accuracy"]
    assert (out / ".hydra" / "config.yaml").is_file()


def test_same_seed_same_metrics(tmp_path, data_dir):
    runs = [json.loads((train(tmp_path, "trainer.verbose=0", "data.n_train=600", f"trainer.seed={seed}",
                              name=f"{name}")[1] / "metrics.json").read_text())
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    keys = ["val_accuracy", "val_loss", "train_loss", "test_loss", "test_accuracy"]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert [runs[0][k] for k in keys] != [runs[2][k] for k in keys]


def test_all_images_of_three_classes_reach_090(tmp_path, data_dir):
    _, out = train(tmp_path, "data.n_train=null", "trainer.verbose=0")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 18000
    assert metrics["val_accuracy"] > 0.90, metrics


def test_issue_examples_run(tmp_path, data_dir):
    _, out = train(tmp_path, "model.layers=3", "model.activation=tanh", "optimizer=sgd", "optimizer.lr=0.05",
                   "trainer.verbose=0", name="tanh")
    assert json.loads((out / "metrics.json").read_text())["param_count"] == 784 * 10 + 10 + 2 * 110 + 33
    _, out = train(tmp_path, "data=fashion_mnist_10", "data.n_train=2000", "trainer.epochs=2",
                   "trainer.verbose=0", name="ten")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 2000 and metrics["param_count"] == 784 * 10 + 10 + 110 + 110


def test_bad_inputs_give_one_line_errors(tmp_path, data_dir):
    cases = {
        "model.activation=relux": "model.activation='relux' is not a Keras activation; allowed:",
        "data.classes=[0,12]": "12 is not a Fashion-MNIST class; allowed ids are 0-9",
        "data.classes=[1,1]": "1 is listed more than once",
        "data.n_train=20000": "data.n_train=20000: only 18000 training images",
        "data.n_train=4": "data.n_train=4 with validation_split=0.2 is too small",
        f"data.path={tmp_path / 'nowhere'}": "data folder not found",
        "trainer.steps_per_execution=0": "trainer.steps_per_execution=0: use epoch or an integer >= 1",
        "trainer.eval_batch_size=0": "trainer.eval_batch_size=0: use an integer >= 1",
        "trainer.backend=torch": "trainer.backend='torch'; allowed: tensorflow, jax",
        "trainer.program=mixed/8/relu/noxla": "trainer.program='mixed/8/relu/noxla': the network (widths [10, 10], relu) "
                                             "does not fit that layout",
    }
    for i, (override, message) in enumerate(cases.items()):
        result, _ = train(tmp_path, override, name=f"bad{i}", expect=2)
        lines = error_lines(result)
        assert len(lines) == 1 and message in lines[0], (override, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override, line", [
    ("model.unitz=3", "error: model.unitz: no key 'unitz' in model (did you mean model.units?); its keys: units, layers,"),
    ("trainer.epoch=3", "error: trainer.epoch: no key 'epoch' in trainer (did you mean trainer.epochs?); its keys: epochs,"),
    ("optimizer=adamx", "error: optimizer=adamx: no such option; allowed: adam, adamw, rmsprop, sgd (did you mean adam?)"),
    ("model.units=abc", "error: model.units: Value 'abc' of type 'str' could not be converted to Integer"),
    ("model.units=[1", "error: model.units=[1: no viable alternative at input '[1'"),
])
def test_a_wrong_override_is_one_line_with_the_closest_name(tmp_path, override, line):
    result, _ = train(tmp_path, override, expect=2)
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_diverging_loss_fails_clearly_and_keeps_history(tmp_path, data_dir):
    result, out = train(tmp_path, "optimizer=sgd", "optimizer.lr=1e12", "trainer.verbose=0", expect=2)
    assert "diverged: the loss became NaN" in error_lines(result)[0]
    assert (out / "history.csv").is_file()
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert metrics["error"] == "diverged" and metrics["train_loss"] is None  # NaN written as JSON's null


def test_cfg_and_help_do_not_import_tensorflow():
    for flag, shown in (("--cfg", "activation: relu"), ("--help", "train one Keras dense network")):
        args = [sys.executable, "-X", "importtime", "-m", "src.train", flag] + (["job"] if flag == "--cfg" else [])
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and shown in result.stdout, result.stderr[-2000:]
        imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
        assert "optuna" not in imported and not any(m.split(".")[0] in ("tensorflow", "keras") for m in imported)


def test_training_loads_keras_without_matplotlib_or_jax_and_both_still_load_after():
    """Keras imports pyplot at start-up only for `keras.visualization` (~0.5 s per process), and TensorFlow imports
    JAX only for TensorFlow Lite's converter (~0.5 s): training on TensorFlow leaves both out."""
    script = ("import sys, src.training; print('matplotlib' in sys.modules, 'jax' in sys.modules); "
              "import matplotlib.pyplot, jax.numpy; print(matplotlib.pyplot.__name__, jax.numpy.__name__)")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False", "matplotlib.pyplot", "jax.numpy"]


def test_jax_backend_trains_the_same_network(tmp_path, data_dir):
    _, out = train(tmp_path, "trainer.backend=jax", "data.n_train=3000", "trainer.verbose=0", name="jax")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["param_count"] == 7993 and metrics["val_accuracy"] > 0.85 and metrics["test_accuracy"] > 0.85


def test_jax_compiles_into_the_users_cache_folder_unless_jax_is_told_where(tmp_path, monkeypatch):
    class Config:  # jax.config's two calls the project makes
        def __init__(self, folder: str | None) -> None:
            self.jax_compilation_cache_dir, self.updates = folder, {}

        def update(self, name: str, value: object) -> None:
            self.updates[name] = value

    class Jax:
        def __init__(self, folder: str | None) -> None:
            self.config = Config(folder)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    jax = Jax(None)
    cache_compilations(jax)
    assert jax.config.updates["jax_compilation_cache_dir"] == str(tmp_path / "keras_sweep" / "jax")
    assert jax.config.updates["jax_compilation_cache_max_size"] == 2**30
    jax = Jax("/somewhere/the/user/chose")  # JAX_COMPILATION_CACHE_DIR, or set in code: left as is
    cache_compilations(jax)
    assert jax.config.updates == {}


def test_any_keras_optimizer_by_name_or_target(tmp_path, data_dir):
    _, out = train(tmp_path, "optimizer.name=nadam", "data.n_train=600", "trainer.verbose=0", name="nadam")
    assert json.loads((out / "metrics.json").read_text())["val_accuracy"] > 0.5
    _, out = train(tmp_path, "+optimizer._target_=keras.optimizers.AdamW", "+optimizer.weight_decay=0.001",
                   "data.n_train=600", "trainer.verbose=0", name="adamw")
    assert json.loads((out / "metrics.json").read_text())["val_accuracy"] > 0.5
    result, _ = train(tmp_path, "optimizer.name=adamm", name="bad", expect=2)
    assert "optimizer.name='adamm'; allowed: adadelta, adafactor" in error_lines(result)[0]


def test_callbacks_from_config_take_effect_and_the_model_is_saved(tmp_path, data_dir):
    log = tmp_path / "epochs.csv"
    callbacks = ("trainer.callbacks=[{_target_:keras.callbacks.EarlyStopping,monitor:val_loss,patience:0},"
                 f"{{_target_:keras.callbacks.CSVLogger,filename:'{log}'}}]")
    _, out = train(tmp_path, callbacks, "trainer.epochs=40", "data.n_train=600", "optimizer.lr=0.03",
                   "trainer.save_model=true", "trainer.verbose=0")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] < 40  # EarlyStopping stopped it
    assert len(pd.read_csv(log)) == metrics["epochs"] == len(pd.read_csv(out / "history.csv"))  # CSVLogger wrote
    assert (out / "model.keras").stat().st_size > 10_000


def test_unknown_keys_and_wrong_types_are_refused(tmp_path):
    result, _ = train(tmp_path, "+model.unit=32", name="plus", expect=2)  # Hydra appends it; the schema check refuses
    assert error_lines(result) == ["error: model.unit is not a model setting; allowed: units, layers, widths, activation, "
                                   "dropout, input_dropout, batch_norm"]
    result, _ = train(tmp_path, "trainer.epochs=abc", name="type", expect=2)  # refused by Hydra when composing
    assert result.stderr == "error: trainer.epochs: Value 'abc' of type 'str' could not be converted to Integer\n"


def test_a_users_model_by_target(tmp_path, data_dir):
    _, out = train(tmp_path, f"--config-dir={ROOT / 'examples' / 'conf'}", "model=cnn", "model.filters=4",
                   "data.n_train=600", "trainer.verbose=0", name="cnn")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["param_count"] == (3 * 3 * 4 + 4) + (13 * 13 * 4 * 3 + 3)  # conv, then pooled 13x13x4 -> dense 3
    assert metrics["val_accuracy"] > 0.5
    result, _ = train(tmp_path, f"--config-dir={ROOT / 'examples' / 'conf'}", "model=cnn",
                      "model._target_=examples.models.nope", name="bad", expect=2)
    assert "model._target_='examples.models.nope' cannot be imported" in error_lines(result)[0]


def test_loss_and_metrics_from_config(tmp_path, data_dir):
    _, out = train(tmp_path, "trainer.loss={_target_:keras.losses.CategoricalCrossentropy,label_smoothing:0.2}",
                   "trainer.metrics=[accuracy,top_k_categorical_accuracy]", "data.n_train=600", "trainer.verbose=0")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_top_k_categorical_accuracy"] == metrics["test_top_k_categorical_accuracy"] == 1.0  # top 5 of 3
    history = pd.read_csv(out / "history.csv")
    assert {"top_k_categorical_accuracy", "val_top_k_categorical_accuracy", "val_accuracy"} <= set(history.columns)
    # smoothed targets: even a perfect prediction keeps a loss above -(0.8+0.2/3) log(0.8+0.2/3) - ... > 0.4
    assert metrics["val_loss"] > 0.4 and metrics["val_accuracy"] > 0.7
    result, _ = train(tmp_path, "trainer.loss=crossentropyy", name="bad", expect=2)
    assert "trainer.loss='crossentropyy' is not a Keras loss" in error_lines(result)[0]


def test_regularisers_and_schedule_from_config(tmp_path, data_dir):
    _, out = train(tmp_path, "model.batch_norm=true", "model.input_dropout=0.2", "trainer.lr_schedule=cosine",
                   "data.n_train=600", "trainer.verbose=0")
    metrics = json.loads((out / "metrics.json").read_text())
    # Dense without bias, then BatchNormalization (gamma, beta, moving mean and variance) per hidden layer
    assert metrics["param_count"] == 784 * 10 + 4 * 10 + 10 * 10 + 4 * 10 + 10 * 3 + 3
    assert metrics["val_accuracy"] > 0.5
    result, _ = train(tmp_path, "trainer.lr_schedule=step", name="bad", expect=2)
    assert error_lines(result) == ["error: trainer.lr_schedule='step'; allowed: constant, cosine"]
