"""`hydra.sweeper.batch_trials`: K trials of a worker trained at once, written and told as if alone; the
replay line reproduces each trial exactly; a config the batched path cannot express trains alone."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf

from conftest import error_lines, run_cli
from src.data import load

# 8 small trials of two structures (1 or 2 layers), batched 4 at a time, with pruning and confirmation (the
# top 2 retrained with one more seed, both runs trained together).
SMALL = ["hydra.sweeper.params=null", "data.n_train=3000", "trainer.epochs=3", "model.units=int(interval(8,64))",
         "model.layers=range(1,3)", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.n_trials=8",
         "hydra.sweeper.pruner=median", "hydra.sweeper.pruners.median.n_startup_trials=2",
         "hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seeds=1", "hydra.sweeper.batch_trials=4"]


def test_batched_trials_are_written_and_told_as_if_alone(tmp_path, data_dir):
    out = tmp_path / "batched"
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *SMALL)
    assert "trains alone" not in result.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert trials["number"].tolist() == list(range(8)) and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert set(trials["model.layers"]) == {1, 2}  # both structures drawn
    for _, row in trials.iterrows():
        folder = out / "trials" / str(row["number"])
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        history = pd.read_csv(folder / "history.csv")
        assert config["model"]["units"] == row["model.units"] and config["model"]["layers"] == row["model.layers"]
        assert metrics["val_accuracy"] == row["val_accuracy"] == history["val_accuracy"].iloc[-1]
        widths = [row["model.units"]] * row["model.layers"]
        sizes = [784, *widths, 3]
        assert metrics["param_count"] == sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))  # the narrow net's
        if row["state"] == "PRUNED":  # stopped at the epoch its pruner said so; no model kept
            assert len(history) == metrics["epochs"] <= 3 and not (folder / "model.keras").exists()
            assert row["value"] == history["val_accuracy"].iloc[-1]  # its last report, rounded as the tables are
        else:
            assert len(history) == 3 and row["value"] == metrics["val_accuracy"]

    # The confirmation runs, trained together: each folder as a trial's, with its own seed and model.
    runs = pd.read_csv(out / "confirm.csv")
    retrained = runs[runs["run"] == "confirm"]
    assert len(retrained) == 2 and (retrained["state"] == "COMPLETE").all()
    for _, run in retrained.iterrows():
        config = yaml.safe_load((Path(run["run_dir"]) / ".hydra" / "config.yaml").read_text())
        metrics = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())
        searched = trials.set_index("number").loc[run["config"]]
        assert config["trainer"]["seed"] == run["seed"] != 0 and config["model"]["units"] == searched["model.units"]
        assert metrics["val_accuracy"] == run["val_accuracy"] and (Path(run["run_dir"]) / "model.keras").is_file()

    # A complete trial's saved model is the network Keras builds, with the trained weights: same val accuracy.
    done = trials[trials["state"] == "COMPLETE"].iloc[0]
    cfg = OmegaConf.load(out / "trials" / str(done["number"]) / ".hydra" / "config.yaml")
    cfg.data.path = str(data_dir)
    data = load(cfg.data)
    model = keras.models.load_model(out / "trials" / str(done["number"]) / "model.keras", compile=False)
    accuracy = float(np.mean(model.predict(data.x_val, verbose=0).argmax(1) == data.y_val.argmax(1)))
    assert abs(accuracy - done["val_accuracy"]) <= 1 / len(data.x_val)

    # Every replay line reproduces its trial exactly: it trains the trial alone in the program it trained in with
    # the others of its batch (trainer.program): the same initial weights, batches, dropout masks and arithmetic.
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "trainer.program=" in best["command"]
    replays = {best["trial"]: shlex.split(best["command"])[3:]}
    for _, row in trials[trials["state"] == "COMPLETE"].groupby("model.layers").head(1).iterrows():  # both structures
        folder = out / "trials" / str(row["number"])
        program = json.loads((folder / "metrics.json").read_text())["program"]
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        replays.setdefault(int(row["number"]), [*overrides, f"trainer.program={program}"])
    for number, replay in replays.items():
        run_cli("train", *replay, "trainer.verbose=0", f"hydra.run.dir={tmp_path / f'replay{number}'}")
        replayed = json.loads((tmp_path / f"replay{number}" / "metrics.json").read_text())
        searched = json.loads((out / "trials" / str(number) / "metrics.json").read_text())
        keys = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "param_count", "program")
        assert {k: replayed[k] for k in keys} == {k: searched[k] for k in keys}, number


def test_one_at_a_time_replays_exactly(tmp_path, data_dir):
    out = tmp_path / "alone"
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *SMALL[:7], "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none",
            "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.batch_trials=1")
    best = yaml.safe_load((out / "best.yaml").read_text())
    run_cli("train", *shlex.split(best["command"])[3:], f"hydra.run.dir={tmp_path / 'replay'}")
    assert json.loads((tmp_path / "replay" / "metrics.json").read_text())["val_accuracy"] == best["val_accuracy"]


def test_a_config_the_batched_path_cannot_express_trains_alone(tmp_path, data_dir):
    out = tmp_path / "alone"
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", "hydra.sweeper.params=null", "data.n_train=600",
                     "trainer.epochs=1", "model.units=8,16", "optimizer.name=adamax", "hydra.sweeper.n_trials=4",
                     "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.batch_trials=2")
    assert result.stdout.count("trains alone: the batched path trains dense networks with adam") == 1
    trials = pd.read_csv(out / "trials.csv", parse_dates=["datetime_start", "datetime_complete"]).sort_values("number")
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 4
    # the first claim (trials 0 and 1) trained none together: from then on one trial is asked at a time
    assert trials["datetime_start"].iloc[3] >= trials["datetime_complete"].iloc[2]
    assert (out / "trials" / "0" / ".hydra" / "hydra.yaml").is_file()  # a Hydra job of its own


# sweep=fashion10's kind of trial, small: batch norm, input dropout on and off, label smoothing, AdamW.
NORMED = ["hydra.sweeper.params=null", "data.n_train=1200", "trainer.epochs=2", "model.batch_norm=true",
          "model.input_dropout=choice(0.0,0.1)", "model.units=int(interval(8,32))", "optimizer=adamw",
          "trainer.loss={_target_: keras.losses.CategoricalCrossentropy, label_smoothing: 0.1}",
          "hydra.sweeper.n_trials=4", "hydra.sweeper.batch_trials=4", "hydra.sweeper.pruner=none",
          "hydra.sweeper.confirm.top_k=0", "trainer.save_model=true"]


def test_batch_norm_trials_train_batched_and_replay_exactly(tmp_path, data_dir):
    out = tmp_path / "normed"
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *NORMED)
    assert "trains alone" not in result.stdout  # no fallback: batch norm, input dropout and smoothing batch
    trials = pd.read_csv(out / "trials.csv")
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 4
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "trainer.program=" in best["command"]
    run_cli("train", *shlex.split(best["command"])[3:], "trainer.verbose=0", f"hydra.run.dir={tmp_path / 'replay'}")
    replayed = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    searched = json.loads((out / "trials" / str(best["trial"]) / "metrics.json").read_text())
    keys = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "param_count", "program")
    assert {k: replayed[k] for k in keys} == {k: searched[k] for k in keys}
    # its saved model is Keras's network (Dense, BatchNormalization with its moving statistics): the same accuracy
    cfg = OmegaConf.load(out / "trials" / str(best["trial"]) / ".hydra" / "config.yaml")
    cfg.data.path = str(data_dir)
    data = load(cfg.data)
    model = keras.models.load_model(out / "trials" / str(best["trial"]) / "model.keras", compile=False)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    accuracy = float(np.mean(model.predict(data.x_val, verbose=0).argmax(1) == data.y_val.argmax(1)))
    assert abs(accuracy - best["val_accuracy"]) <= 1 / len(data.x_val)


def test_a_jax_sweep_loads_no_tensorflow_in_its_workers_and_compiles_each_program_once_per_machine(tmp_path, data_dir):
    """No TensorFlow in a JAX worker; its compiled programs go to JAX's persistent cache in the user's cache folder,
    and the next sweep loads them from there (no new entry) to the same metrics. Every program is cached here
    (minimum compile time 0): with the product's 0.2 s, which programs are cached depends on the machine's load."""
    probes, cache = tmp_path / "probes", tmp_path / "cache"
    probes.mkdir()
    runs = {}
    for run in ("first", "again"):
        run_cli("sweep", "-m", f"hydra.sweep.dir={tmp_path / run}", *SMALL[:7], "hydra.sweeper.n_trials=3",
                "hydra.sweeper.pruner=none", "hydra.sweeper.confirm.top_k=0", "trainer.backend=jax",
                "hydra.sweeper.worker_init=tests.worker_probe.record_modules",
                env={"WORKER_PROBE_DIR": str(probes), "XDG_CACHE_HOME": str(cache),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
        trials = pd.read_csv(tmp_path / run / "trials.csv")
        assert (trials["state"] == "COMPLETE").all()
        runs[run] = (trials["value"].tolist(), sorted(p.name for p in (cache / "keras_sweep" / "jax").glob("*-cache*")))
    seen = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    assert seen and all(s["jax"] and s["keras"] and not s["tensorflow"] and not s["matplotlib"] for s in seen), seen
    assert runs["first"][1], "nothing compiled went to the cache"
    assert runs["again"] == runs["first"]


MINE = """# @package _global_
defaults:
  - override /optimizer: adamw
data: {classes: [0, 2, 4, 6], n_train: 1200}
model: {layers: 1, batch_norm: true}
trainer:
  epochs: 2
  loss: {_target_: keras.losses.CategoricalCrossentropy, label_smoothing: 0.1}
hydra:
  sweeper:
    n_trials: 2
    pruner: none
    confirm: {top_k: 0}
    params:
      model.units: int(interval(8, 32))
"""


def test_what_a_sweep_definition_sets_outside_its_params_is_in_the_replay_line(tmp_path, data_dir):
    """A sweep definition's own settings (a group choice, values, a dict) apply to every trial; `src.train` knows
    no sweep definition, so the replay line spells them out (fashion10's line trained 3 classes, no batch norm)."""
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text(MINE)
    out = tmp_path / "mine"
    run_cli("sweep", "-m", f"--config-dir={tmp_path / 'conf'}", "sweep=mine", f"hydra.sweep.dir={out}")
    best = yaml.safe_load((out / "best.yaml").read_text())
    command = shlex.split(best["command"])
    assert {"optimizer=adamw", "model.batch_norm=true", "data.classes=[0,2,4,6]", "model.layers=1"} <= set(command)
    run_cli("train", *command[3:], "trainer.verbose=0", f"hydra.run.dir={tmp_path / 'replay'}")
    replayed = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    searched = json.loads((out / "trials" / str(best["trial"]) / "metrics.json").read_text())
    keys = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "param_count", "n_train", "program")
    assert {k: replayed[k] for k in keys} == {k: searched[k] for k in keys}

    # the definition edited, then its study rerun: refused, as a changed fixed override is (trials would mix questions)
    (tmp_path / "conf" / "sweep" / "mine.yaml").write_text(MINE.replace("layers: 1", "layers: 2"))
    result = run_cli("sweep", "-m", f"--config-dir={tmp_path / 'conf'}", "sweep=mine", f"hydra.sweep.dir={out}",
                     "hydra.sweeper.n_trials=3", expect=2)
    assert error_lines(result) == ["error: study 'mine' ran with model.layers=1 from its sweep definition; this run has "
                                   "no model.layers setting: rerun with the study's definition, or set "
                                   "hydra.sweeper.study_name to start a new study"]
