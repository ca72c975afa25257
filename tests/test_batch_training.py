"""K trials trained at once (`src.batch_training`) against one trial at a time, on the real data.

Small settings (3 classes, data.n_train=3000 or fewer) keep each test well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT

from src.metrics import RUN_METRICS
from src.schema import register

register()


METRICS = set(RUN_METRICS)  # what src.training.run writes too (tests/test_train.py checks the list itself)


def make_cfg(data_dir, *overrides: str):
    """The training config with the test's base settings (3000 images, one fixed data split, no test set)."""
    base = [f"data.path={data_dir}", "data.n_train=3000", "data.seed=0", "trainer.test=false", "trainer.verbose=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*base, *overrides])


@pytest.fixture(scope="module")
def bt():
    from src import batch_training

    return batch_training


def test_group_key_batches_what_it_can_express(data_dir, bt):
    key = bt.group_key(make_cfg(data_dir, "model.units=20"))
    assert key == bt.group_key(make_cfg(data_dir, "model.units=30", "optimizer.lr=0.01", "trainer.seed=5",
                                        "trainer.epochs=7"))  # bucket 32; runtime values are not structure
    assert key != bt.group_key(make_cfg(data_dir, "model.units=40"))  # bucket 64
    assert key != bt.group_key(make_cfg(data_dir, "model.activation=tanh"))
    assert key != bt.group_key(make_cfg(data_dir, "model.dropout=0.1"))
    assert key != bt.group_key(make_cfg(data_dir, "trainer.batch_size=64"))
    assert key != bt.group_key(make_cfg(data_dir, "data.n_train=600"))
    assert bt.group_key(make_cfg(data_dir, "optimizer=sgd")) is not None
    assert bt.group_key(make_cfg(data_dir, "model.batch_norm=true")) not in (None, key)  # batch norm: a structure
    for refused in ("optimizer.name=lion", "trainer.loss=mse", "model.activation=softmax", "+optimizer.amsgrad=true",
                    "trainer.loss={_target_: keras.losses.CategoricalCrossentropy, from_logits: true}",
                    "trainer.loss={_target_: keras.losses.categorical_crossentropy, label_smoothing: 0.1}",
                    "+optimizer.clipnorm=1.0", "trainer.callbacks=[{_target_: x}]"):
        assert bt.group_key(make_cfg(data_dir, refused)) is None, refused
    user_model = OmegaConf.create(OmegaConf.to_container(make_cfg(data_dir)))
    user_model.model = {"_target_": "examples.models.small_cnn", "filters": 8, "activation": "relu", "dropout": 0.0}
    assert bt.group_key(user_model) is None
    new_option = OmegaConf.create(OmegaConf.to_container(make_cfg(data_dir)))
    new_option.model.pooling = 0  # a model option the batched path does not know: fine while off
    assert bt.group_key(new_option) == bt.group_key(make_cfg(data_dir))
    new_option.model.pooling = 2  # on: trained one at a time, never silently ignored
    assert bt.group_key(new_option) is None


def test_padded_units_stay_zero_and_param_count_is_the_real_networks(data_dir, bt):
    """Widths 10, 24, 32 train in one program padded to 32. Sigmoid (0.5 at 0) and dropout make the mask
    do the work: without it the padded units would output 0.5 and their weights would train. XLA-compiled
    here (the other TensorFlow tests run the plain trace that small groups get)."""
    from src.model import build_model

    widths = [10, 24, 32]
    cfgs = [make_cfg(data_dir, f"model.units={w}", "model.activation=sigmoid", "model.dropout=0.2", "trainer.epochs=2",
                     f"trainer.seed={seed}") for seed, w in enumerate(widths)]
    trainer = bt.BatchTrainer(xla=True)
    results = trainer.train_group(cfgs)
    kernels, biases = trainer.last_weights[0::2], trainer.last_weights[1::2]
    assert [k.shape for k in kernels] == [(3, 784, 32), (3, 32, 32), (3, 32, 3)]
    for k, (cfg, width, result) in enumerate(zip(cfgs, widths, results)):
        assert not kernels[0][k, :, width:].any() and not biases[0][k, width:].any()
        assert not kernels[1][k, width:, :].any() and not kernels[1][k, :, width:].any() and not biases[1][k, width:].any()
        assert not kernels[2][k, width:, :].any()
        assert np.count_nonzero(kernels[1][k, :width, :width]) == width * width  # the real units did train
        assert result["param_count"] == build_model(cfg.model, 784, 3).count_params()
        assert 0.8 < result["val_accuracy"] <= 1 and "error" not in result
        assert set(result) == METRICS | {"history", "program"}  # src.training.run's metrics.json keys, and the layout
        assert result["program"] == "mixed/32.32/sigmoid/xla"  # what the trial's replay line passes as trainer.program
        assert list(result["history"].columns) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]

    # Initial weights: glorot-uniform limits of the real fan-in/fan-out, zero padding and biases.
    init = bt.init_weights(7, [10, 24], [32, 32], 3)
    for kernel, (fan_in, fan_out) in zip(init[0::2], [(784, 10), (10, 24), (24, 3)]):
        limit = math.sqrt(6 / (fan_in + fan_out))
        real = kernel[:fan_in, :fan_out]
        assert np.abs(real).max() <= limit and np.abs(real).max() > 0.9 * limit
        assert np.count_nonzero(kernel) == real.size
    assert not any(b.any() for b in init[1::2])


def keras_weights(padded: list[np.ndarray], moving: list[np.ndarray], width: int) -> list[np.ndarray]:
    """The weights of a 784-width-width-3 network in Keras's order (per hidden layer: kernel, then bias, or with
    batch norm gamma, beta, moving mean and variance; the output's kernel and bias), cut from the padded layout."""
    sizes, weights = [784, width, width, 3], []
    for layer in range(2):
        weights.append(padded[2 * layer][:sizes[layer], :width])
        weights += [padded[6 + 2 * layer][:width], padded[7 + 2 * layer][:width], moving[2 * layer][:width],
                    moving[2 * layer + 1][:width]] if moving else [padded[2 * layer + 1][:width]]
    return [*weights, padded[4][:width, :3], padded[5][:3]]


ADAM = ["optimizer.lr=3e-3"]
SGD = ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.nesterov=true", "trainer.lr_schedule=cosine"]
# Batch norm, label smoothing and decoupled weight decay: what sweep=fashion10 trains, on AdamW and RMSprop.
NORM = ["model.batch_norm=true", "trainer.loss={_target_: keras.losses.CategoricalCrossentropy, label_smoothing: 0.1}"]
ADAMW = [*NORM, "optimizer=adamw", "optimizer.lr=3e-3", "optimizer.weight_decay=0.05", "trainer.lr_schedule=cosine"]
RMSPROP = [*NORM, "optimizer=rmsprop", "optimizer.momentum=0.5", "+optimizer.weight_decay=0.01"]
NADAM = ["optimizer.name=nadam", "optimizer.lr=3e-3", "model.input_dropout=0.0"]


@pytest.mark.parametrize("optimizer, xla", [(ADAM, False), (ADAM, True), (SGD, False), (ADAMW, True), (RMSPROP, False),
                                               (NADAM, False)],
                         ids=["adam", "adam-xla", "sgd-cosine", "adamw-norm-smoothing-xla", "rmsprop-norm-smoothing", "nadam"])
def test_same_batches_same_weights_as_keras(data_dir, bt, optimizer, xla):
    """Given the same initial weights and the same batches, the batched program and a Keras model trained
    with `fit` end with the same weights and logs: the forward pass, the loss (label smoothing too), the
    optimizer (Adam's lr, betas, epsilon and bias correction; SGD's momentum, Nesterov and the cosine schedule;
    RMSprop's rho and momentum; Nadam's momentum cache; decoupled weight decay), batch norm (each batch's statistics in training, the
    last batch's smaller, the moving ones for validation) and the masking of a padded trial (width 10 in
    bucket 16) all agree with Keras. The weights differ by at most 1e-6 (measured); a learning rate 1.1x off
    moves them by 0.04."""
    from src.data import load
    from src.model import build_loss, build_model, build_optimizer

    cfgs = [make_cfg(data_dir, "data.n_train=200", f"model.units={w}", *optimizer, "trainer.epochs=2",
                     f"trainer.seed={seed}") for seed, w in ((3, 10), (4, 16))]
    assert bt.group_key(cfgs[0]) is not None  # trained batched
    data = load(cfgs[0].data)
    trainer = bt.BatchTrainer(xla=xla)
    results = trainer.train_group(cfgs, data)
    n, batch = len(data.x_train), 32
    steps = math.ceil(n / batch)
    norm = cfgs[0].model.batch_norm
    for k, cfg in enumerate(cfgs):
        width = cfg.model.units
        model = build_model(cfg.model, 784, 3)
        init = bt.init_weights(cfg.trainer.seed, [width] * 2, [16, 16], 3, norm)
        model.set_weights(keras_weights(init, bt.init_moving([16, 16]) if norm else [], width))
        model.compile(optimizer=build_optimizer(cfg.optimizer, cfg.trainer.lr_schedule, 2 * steps),
                      loss=build_loss(cfg.trainer.loss), metrics=["accuracy"])
        logs = []
        for epoch in (1, 2):
            order = bt.epoch_order(cfg.trainer.seed, epoch, n, steps, batch).reshape(-1)[:n]
            logs.append(model.fit(data.x_train[order], data.y_train[order], batch_size=batch, shuffle=False, verbose=0).history)
        batched = trainer.keras_model(k, cfg)  # what a batched trial's model.keras holds
        assert len(batched.get_weights()) == len(model.get_weights()) == (12 if norm else 6)
        for got, want in zip(batched.get_weights(), model.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-4)
        history = results[k]["history"]
        np.testing.assert_allclose(history["loss"], [h["loss"][0] for h in logs], rtol=1e-4)
        np.testing.assert_allclose(history["accuracy"], [h["accuracy"][0] for h in logs], atol=1e-6)
        val_loss, val_accuracy = model.evaluate(data.x_val, data.y_val, verbose=0)
        assert results[k]["val_loss"] == pytest.approx(val_loss, rel=1e-4)
        assert results[k]["val_accuracy"] == pytest.approx(val_accuracy, abs=1e-6)
        assert results[k]["param_count"] == model.count_params()


def seed_stats(single: list[dict], batched: list[dict]) -> dict[str, tuple[float, float, float]]:
    """Per statistic: (mean one at a time, mean batched, bound). The bound is 3 pooled standard deviations
    of the per-seed values (at least 0.01): the difference of two 4-seed means has a standard deviation of
    0.71 of one seed's, so 3 of them is ~4 standard errors, a false alarm about 1 in 200 with the spread
    estimated from 8 runs (Student's t, 6 degrees of freedom); the seeds are fixed, so the test is deterministic
    on one machine. Final val_accuracy is what the issue asks to match, but on this easy task Adam reaches
    it for any learning rate within 10x (measured), so the epoch-1 training loss, which falls with the
    learning rate and the initial weights' scale, is compared too."""
    stats = {}
    for name, value in (("val_accuracy", lambda r: r["val_accuracy"]), ("epoch1_loss", lambda r: r["epoch1_loss"])):
        a, b = np.array([value(r) for r in single]), np.array([value(r) for r in batched])
        pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        stats[name] = (float(a.mean()), float(b.mean()), max(3 * pooled, 0.01))
    return stats


SEED_NOISE_OVERRIDES = ["model.units=32", "model.layers=2", "model.activation=relu", "optimizer.lr=3e-3",
                        "trainer.epochs=3", "trainer.batch_size=32"]


def test_same_results_as_one_trial_at_a_time_within_seed_noise(data_dir, tmp_path, bt):
    from src import training

    cfgs = [make_cfg(data_dir, *SEED_NOISE_OVERRIDES, f"trainer.seed={seed}") for seed in range(4)]
    single = []
    for cfg in cfgs:
        metrics = training.run(cfg, tmp_path / str(cfg.trainer.seed))
        first = (tmp_path / str(cfg.trainer.seed) / "history.csv").read_text().splitlines()[1].split(",")
        single.append({**metrics, "epoch1_loss": float(first[2])})  # epoch,accuracy,loss,...
    batched = [{**r, "epoch1_loss": float(r["history"]["loss"].iloc[0])} for r in bt.BatchTrainer().train_group(cfgs)]
    assert [r["epochs"] for r in batched] == [3] * 4
    assert [r["param_count"] for r in batched] == [r["param_count"] for r in single]
    for name, (one, many, bound) in seed_stats(single, batched).items():
        assert abs(one - many) < bound, (name, one, many, bound)


def test_per_trial_epochs_pruning_and_divergence_leave_the_others_alone(data_dir, bt):
    trainer = bt.BatchTrainer()
    epochs = trainer.train_group([make_cfg(data_dir, f"trainer.epochs={e}", f"trainer.seed={e}", f"trainer.test={e == 3}")
                                  for e in (1, 2, 3)])
    assert [len(r["history"]) for r in epochs] == [1, 2, 3] and [r["epochs"] for r in epochs] == [1, 2, 3]
    assert epochs[0]["test_accuracy"] is None and 0.8 < epochs[2]["test_accuracy"] <= 1 and epochs[2]["test_loss"] > 0

    cfgs = [make_cfg(data_dir, f"model.units={w}", f"optimizer.lr={lr}", "trainer.epochs=3", f"trainer.seed={seed}")
            for seed, w, lr in ((0, 12, 1e-3), (1, 16, 3e-3), (2, 9, 1e35), (3, 14, 5e-3))]  # trial 2 diverges
    calls = []

    def prune_trial_0_after_epoch_1(k: int, epoch: int, logs: dict[str, float]) -> bool:
        calls.append((k, epoch))
        assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        return k == 0 and epoch == 1

    together = trainer.train_group(cfgs, on_epoch=prune_trial_0_after_epoch_1)
    alone = trainer.train_group([cfgs[1], cfgs[3]])
    assert len(together[0]["history"]) == 1 and together[0]["epochs"] == 1 and "error" not in together[0]
    assert together[2]["error"] == "diverged" and not math.isfinite(together[2]["train_loss"])
    assert sorted(calls) == [(0, 1), (1, 1), (1, 2), (1, 3), (3, 1), (3, 2), (3, 3)]  # none for the diverged trial
    for mine, reference in zip((together[1], together[3]), alone):
        np.testing.assert_allclose(mine["history"].to_numpy(), reference["history"].to_numpy(), atol=1e-6)
        assert mine["val_accuracy"] == pytest.approx(reference["val_accuracy"], abs=1e-6)
    one_trial = trainer.train_group([cfgs[0]])  # trial 0's first epoch does not depend on its batch-mates either
    np.testing.assert_allclose(together[0]["history"].to_numpy(), one_trial[0]["history"].iloc[:1].to_numpy(), atol=1e-6)


def test_input_dropout_and_batch_norm_are_each_trials_own(data_dir, bt):
    """Input dropout drops each trial's pixels at its own rate (0 trains as without it); batch norm's statistics
    are each trial's own: a trial trains the same beside others as alone."""
    from keras import ops

    keys = ops.convert_to_tensor(np.array([bt.dropout_key(0), bt.dropout_key(1)], np.uint32))
    dropped = ops.convert_to_numpy(bt.dropout(ops.ones((2, 64, 784)), ops.convert_to_tensor([0.0, 0.2]), keys, 7))
    assert (dropped[0] == 1).all() and abs((dropped[1] == 0).mean() - 0.2) < 0.01
    assert np.allclose(dropped[1][dropped[1] != 0], 1 / 0.8)  # the kept pixels scaled up, as Keras's Dropout does

    trainer = bt.BatchTrainer()
    on, off = (make_cfg(data_dir, "data.n_train=600", "model.units=16", "trainer.epochs=2", "trainer.seed=5",
                        f"model.input_dropout={rate}") for rate in (0.2, 0.0))
    program, _ = bt.parse_program("exact/16.16/relu/noxla", on)
    assert program.structure.input_dropout and not bt.group_key(off).input_dropout
    at_zero, at_rate = trainer.train_group([off, on], program=program)
    (without,) = trainer.train_group([off])
    np.testing.assert_allclose(at_zero["history"].to_numpy(), without["history"].to_numpy(), atol=1e-6)
    assert at_rate["history"]["loss"].iloc[0] != pytest.approx(without["history"]["loss"].iloc[0], abs=1e-3)

    norm = [make_cfg(data_dir, "data.n_train=600", "model.batch_norm=true", f"model.units={w}", "trainer.epochs=2",
                     f"trainer.seed={seed}") for seed, w in ((1, 12), (2, 16))]
    together = trainer.train_group(norm)
    alone = trainer.train_group(norm[1:])
    np.testing.assert_allclose(together[1]["history"].to_numpy(), alone[0]["history"].to_numpy(), atol=1e-6)
    assert together[0]["param_count"] == bt.param_count([12, 12], 3, True) == 12 * 784 + 12 * 12 + 12 * 3 + 3 + 2 * 4 * 12


def test_early_stopping_stops_each_trial_where_keras_fit_stops(data_dir, bt):
    from hydra.utils import instantiate

    from src.data import load
    from src.model import build_model

    stop = "[{_target_: keras.callbacks.EarlyStopping, monitor: loss, min_delta: 10, patience: 0}]"  # stops after epoch 2
    cfgs = [make_cfg(data_dir, "data.n_train=600", "trainer.epochs=4", f"trainer.callbacks={stop}"),
            make_cfg(data_dir, "data.n_train=600", "trainer.epochs=4", "trainer.seed=1")]
    assert bt.group_key(cfgs[0]) == bt.group_key(cfgs[1])  # a callback is no structure: they train together
    trainer = bt.BatchTrainer()
    stopped, full = trainer.train_group(cfgs)
    assert len(stopped["history"]) == stopped["epochs"] == 2 and len(full["history"]) == full["epochs"] == 4
    (two,) = trainer.train_group([make_cfg(data_dir, "data.n_train=600", "trainer.epochs=2")])
    np.testing.assert_allclose(stopped["history"].to_numpy(), two["history"].to_numpy(), atol=1e-6)  # frozen at its stop
    data = load(cfgs[0].data)
    model = build_model(cfgs[0].model, 784, 3)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(data.x_train, data.y_train, epochs=4, verbose=0,
                        callbacks=[instantiate(cfgs[0].trainer.callbacks[0])]).history
    assert len(history["loss"]) == 2  # Keras's fit stops after the same epoch
    keeps = "[{_target_: keras.callbacks.EarlyStopping, restore_best_weights: true}]"
    assert bt.group_key(make_cfg(data_dir, f"trainer.callbacks={keeps}")) is None  # would keep each trial's best weights


def test_same_structure_again_costs_no_trace(data_dir, bt):
    trainer = bt.BatchTrainer()
    first = [make_cfg(data_dir, "model.units=20", "model.dropout=0.1", f"optimizer.lr={lr}", f"trainer.seed={s}", "trainer.epochs=1")
             for s, lr in ((0, 1e-3), (1, 2e-3))]
    second = [make_cfg(data_dir, "model.units=30", "model.dropout=0.3", f"optimizer.lr={lr}", f"trainer.seed={s}", "trainer.epochs=2")
              for s, lr in ((5, 4e-3), (6, 5e-4))]  # other widths in the bucket, rates, seeds, epochs
    trainer.train_group(first)
    assert trainer.traces == 1
    results = trainer.train_group(second)
    assert trainer.traces == 1
    assert results[0]["history"]["loss"].iloc[0] != results[1]["history"]["loss"].iloc[0]  # the runtime values did arrive
    trainer.train_group([make_cfg(data_dir, "model.units=20", "model.layers=3", "trainer.epochs=1")])
    assert trainer.traces == 2  # a new structure: one trace
    # groups of one structure but other sizes K (a sweep's batches): TensorFlow generalises K, dropout included
    for k in (3, 1, 4):
        group = [make_cfg(data_dir, "model.units=20", "model.dropout=0.2", f"trainer.seed={s}", "trainer.epochs=1")
                 for s in range(k)]
        assert [r.get("error") for r in trainer.train_group(group)] == [None] * k


# A script run on Keras's JAX backend (one backend per process): `cfg(*overrides)` composes the test's config.
JAX_PRELUDE = textwrap.dedent("""
    import json, sys, tempfile
    from hydra import compose, initialize_config_dir
    from src.schema import register
    register()
    base = json.loads(sys.argv[1])
    def cfg(*o):
        with initialize_config_dir(config_dir=base["conf"], version_base="1.3"):
            return compose(config_name="config", overrides=[*base["overrides"], *o])
""")


def on_jax(script: str, overrides: list[str]) -> dict:
    """Run JAX_PRELUDE + `script` in a subprocess; the JSON line it printed last."""
    base = json.dumps({"conf": str(ROOT / "conf"), "overrides": overrides})
    result = subprocess.run([sys.executable, "-c", JAX_PRELUDE + script, base], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


JAX_CHECK = textwrap.dedent("""
    from src import batch_training, training
    import keras
    cfgs = [cfg(f"trainer.seed={s}") for s in range(4)]
    single = []
    for c in cfgs:
        m = training.run(c, tempfile.mkdtemp())
        single.append({"val_accuracy": m["val_accuracy"], "param_count": m["param_count"]})
    trainer = batch_training.BatchTrainer()
    trainer.train_group(cfgs)
    batched = [{"val_accuracy": r["val_accuracy"], "param_count": r["param_count"],
                "losses": r["history"][["loss", "val_loss"]].values.tolist()} for r in trainer.train_group(cfgs)]
    print(json.dumps({"backend": keras.backend.backend(), "traces": trainer.traces, "single": single, "batched": batched}))
""")


def test_jax_backend_matches_one_at_a_time_and_the_tensorflow_batch(data_dir, bt):
    """The JAX backend in a subprocess (one backend per process): the seed-noise check on val_accuracy, one
    compiled program for two calls, and, since init, shuffles and dropout bits come from NumPy and a
    backend-free hash, the same per-trial losses as the TensorFlow batch up to float rounding (measured: 6e-6
    relative)."""
    overrides = [f"data.path={data_dir}", "data.n_train=3000", "data.seed=0", "trainer.test=false", "trainer.verbose=0",
                 "trainer.backend=jax", *SEED_NOISE_OVERRIDES]
    out = on_jax(JAX_CHECK, overrides)
    assert out["backend"] == "jax" and out["traces"] == 1
    single, batched = out["single"], out["batched"]
    a, b = np.array([r["val_accuracy"] for r in single]), np.array([r["val_accuracy"] for r in batched])
    assert abs(a.mean() - b.mean()) < max(3 * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2), 0.01)
    assert [r["param_count"] for r in batched] == [r["param_count"] for r in single]

    tf_batch = bt.BatchTrainer().train_group([make_cfg(data_dir, *SEED_NOISE_OVERRIDES, f"trainer.seed={s}") for s in range(4)])
    tf_losses = [r["history"][["loss", "val_loss"]].values for r in tf_batch]
    np.testing.assert_allclose([r["losses"] for r in batched], tf_losses, rtol=1e-4)


JAX_PADDED = textwrap.dedent("""
    from src import batch_training
    cfgs = [cfg(f"trainer.seed={s}", f"model.units={8 + 8 * s}") for s in range(4)]
    trainer = batch_training.BatchTrainer()
    [(_, program)] = trainer.groups(cfgs)
    runs = [trainer.train_group(part, program=program) for part in (cfgs, cfgs[1:3], cfgs[3:])]
    lone = batch_training.BatchTrainer()
    alone = [lone.train_group([c], program=program)[0] for c in cfgs[1:]]
    scores = lambda results: [[r["val_accuracy"], r["val_loss"]] for r in results]
    print(json.dumps({"mixed": program.mixed, "traces": trainer.traces, "executables": trainer._programs[program, True]._cache_size(),
                      "sizes": [len(r) for r in runs], "in_4": scores(runs[0][1:]), "padded": scores(runs[1] + runs[2]),
                      "alone": scores(alone)}))
""")


def test_a_jax_program_trains_smaller_groups_padded_in_its_one_executable(data_dir):
    """On JAX a mixed program's groups of 2 and 1 after one of 4 are padded to 4: one trace and one executable
    (jax.jit keeps ~30 MB per batch size), and each trial's scores are those it gets in the group of 4 and alone."""
    overrides = [f"data.path={data_dir}", "data.n_train=600", "data.seed=0", "trainer.test=false", "trainer.verbose=0",
                 "trainer.backend=jax", "trainer.epochs=2", "model.layers=2"]
    out = on_jax(JAX_PADDED, overrides)
    assert out["mixed"] and out["sizes"] == [4, 2, 1]
    assert (out["traces"], out["executables"]) == (1, 1)
    assert len({loss for _, loss in out["alone"]}) == 3  # three different trials
    np.testing.assert_allclose(out["padded"], out["in_4"], atol=1e-6)
    np.testing.assert_allclose(out["padded"], out["alone"], atol=1e-6)


def test_one_program_mixes_depths_widths_and_activations(data_dir, bt):
    """Cheap trials of any depth, width and activation train in one mixed program (one trace), each exactly as
    it trains alone, dropout included (its masks do not depend on the padding), and each comes out as its own
    Keras network."""
    import keras

    from src.data import load

    cfgs = [make_cfg(data_dir, f"model.units={w}", f"model.layers={n}", f"model.activation={a}", "model.dropout=0.2",
                     "trainer.epochs=2", f"trainer.seed={seed}")
            for seed, (w, n, a) in enumerate([(10, 1, "relu"), (24, 2, "tanh"), (40, 3, "sigmoid"), (9, 2, "relu")])]
    trainer = bt.BatchTrainer()
    together = trainer.train_group(cfgs)
    assert trainer.traces == 1 and [w.shape[1:] for w in trainer.last_weights[0::2]] == [(784, 64), (64, 64), (64, 64), (64, 3)]
    data = load(cfgs[0].data)
    for k, cfg in enumerate(cfgs):
        model = trainer.keras_model(k, cfg)
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert model.count_params() == together[k]["param_count"] and len(dense) == cfg.model.layers + 1
        predicted = np.argmax(model.predict(data.x_val, verbose=0), axis=1)
        accuracy = np.mean(predicted == np.argmax(data.y_val, axis=1))
        assert accuracy == pytest.approx(together[k]["val_accuracy"], abs=1.5 / len(data.x_val))
    for k, cfg in enumerate(cfgs):
        alone = bt.BatchTrainer().train_group([cfg])[0]
        np.testing.assert_allclose(together[k]["history"].to_numpy(), alone["history"].to_numpy(), atol=1e-5)
    assert keras.backend.backend() == "tensorflow"
