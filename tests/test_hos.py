"""Coming from hydra-optuna-sweeper: its sweeper blocks run unchanged (sampler and pruner as `_target_`
blocks, direction, n_jobs, max_failure_rate, params, custom_search_space), and a task returning a float."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import yaml

from conftest import ROOT, run_cli


def test_a_hos_sweep_file_runs_with_a_conditional_custom_space(tmp_path, data_dir):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "hos_sweep.yaml", tmp_path / "conf" / "sweep" / "hos_sweep.yaml")
    out = tmp_path / "hos"
    run_cli("sweep", "-m", f"--config-dir={tmp_path / 'conf'}", "sweep=hos_sweep", f"hydra.sweep.dir={out}",
            "data.n_train=600", "trainer.epochs=1", "hydra.sweeper.n_trials=6")
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and set(trials["model.units"]) <= set(range(8, 65, 8))
    sgd, adam = trials[trials["optimizer"] == "sgd"], trials[trials["optimizer"] == "adam"]
    assert len(sgd) and len(adam)  # TPE with seed 123 draws both
    assert sgd["optimizer.momentum"].notna().all() and adam["optimizer.momentum"].isna().all()
    assert adam["optimizer.beta_1"].between(0.8, 0.99).all() and sgd["optimizer.beta_1"].isna().all()
    info = yaml.safe_load((out / "study.yaml").read_text())
    assert info["sampler"] == "TPESampler" and info["sampler_settings"]["seed"] == 123
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["config"]["optimizer"]["name"] == best["params"]["optimizer"]


def test_nsga2_on_two_objectives_from_a_target_block(tmp_path, data_dir):
    out = tmp_path / "nsga"
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", "hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=600",
            "trainer.epochs=1", "model.units=int(interval(4,64))", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.sampler={_target_:optuna.samplers.NSGAIISampler,population_size:2,seed:3}",
            "hydra.sweeper.objectives=[val_accuracy,param_count]", "hydra.sweeper.direction=[maximize,minimize]")
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and {"value_val_accuracy", "value_param_count", "pareto"} <= set(trials.columns)
    assert trials["pareto"].any()


def test_a_hos_app_whose_task_returns_a_float(tmp_path):
    out = tmp_path / "sphere"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "apps" / "hos_app.py"), "-m",
                             f"hydra.sweep.dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and (trials["state"] == "COMPLETE").all()
    expected = (trials["x"] - 2) ** 2 + (trials["y"] + 1) ** 2
    assert (trials["value"] - expected).abs().max() < 1e-9
    assert trials["y"].isin([-5, 0, 5]).all() and "best trial #" in result.stdout
