"""Coming from hydra-optuna-sweeper: its sweeper blocks run unchanged (sampler and pruner as `_target_`
blocks, direction, n_jobs, max_failure_rate, params, custom_search_space), the sampler group, search_space, a
fresh study for study_name: null, HOS's class name, and tasks returning a float or a tuple."""
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
    assert info["sampler"] == "tpe" and info["seed"] == 123 and info["sampler_settings"]["n_startup_trials"] == 4
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


def run_app(app: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """A foreign Hydra app of tests/apps, as its user runs it (`python app.py -m ...`), from `tmp_path`."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "apps" / app), "-m", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_hos_multi_objective_example_runs_unchanged(tmp_path):
    """Its config picks `override hydra/sweeper/sampler: nsgaii` and `sampler: {seed: 123}`; its task returns a
    tuple. HOS's own example, with the sweeper's name changed (tests/apps/hos_mo.*)."""
    out = tmp_path / "mo"
    result = run_app("hos_mo.py", tmp_path, f"hydra.sweep.dir={out}", "hydra.sweeper.n_trials=8")
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8 and (trials["state"] == "COMPLETE").all() and trials["pareto"].any()
    assert ((trials["value_v0"] - 4 * (trials["x"] ** 2 + trials["y"] ** 2)).abs() < 1e-9).all()
    assert ((trials["value_v1"] - ((trials["x"] - 5) ** 2 + (trials["y"] - 5) ** 2)).abs() < 1e-9).all()
    info = yaml.safe_load((out / "study.yaml").read_text())
    assert info["sampler"] == "nsgaii" and info["seed"] == 123
    assert info["objectives"] == {"v0": "minimize", "v1": "minimize"}
    replay = next(line for line in result.stdout.splitlines() if line.strip().startswith("replay:"))
    assert replay.split()[1:3] == ["python", str(ROOT / "tests" / "apps" / "hos_mo.py")] and "src.train" not in replay
    assert yaml.safe_load((out / "best.yaml").read_text())["command"] == replay.split("replay: ")[1]


def test_a_task_returning_the_wrong_number_of_values_fails_its_trials_with_one_line(tmp_path):
    out = tmp_path / "mo3"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "apps" / "hos_mo.py"), "-m", f"hydra.sweep.dir={out}",
                             "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=[minimize,minimize,maximize]"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    trials = pd.read_csv(out / "trials.csv")
    assert (trials["state"] == "FAIL").all()
    assert trials["error"].str.contains(r"the task returned 2 values for 3 objectives \['v0', 'v1', 'v2'\]").all()
    assert "Traceback" not in result.stdout + result.stderr


def test_lightning_template_search_file_runs_with_notes_and_a_fresh_study_per_run(tmp_path):
    """lightning-hydra-template's file keeps HOS's `_target_` class and `study_name: null`: it runs as ours with a
    note, and each run is a fresh study in Hydra's timestamped folder (HOS's meaning), with how to resume it."""
    import time

    first = run_app("hos_app.py", tmp_path, "--config-name=hos_lightning")
    time.sleep(1.1)  # Hydra's folders are named to the second
    second = run_app("hos_app.py", tmp_path, "--config-name=hos_lightning")
    for result in (first, second):
        assert "note: hydra.sweeper._target_=hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper runs " \
               "as keras_optuna" in result.stdout
        assert "note: hydra.sweeper.study_name is null: a fresh study 'hos_app-" in result.stdout
    folders = sorted(p.parent for p in tmp_path.glob("multirun/*/*/trials.csv"))
    assert len(folders) == 2
    names = [yaml.safe_load((f / "study.yaml").read_text())["study_name"] for f in folders]
    assert names[0] != names[1] and all(n == f"hos_app-{f.parent.name}-{f.name}" for n, f in zip(names, folders))
    assert all(len(pd.read_csv(f / "trials.csv")) == 6 for f in folders)  # each run a whole fresh study
    assert f"hydra.sweeper.study_name={names[0]} hydra.sweep.dir={folders[0]}" in first.stdout


def test_deprecated_search_space_and_no_direction_mean_what_they_mean_in_hos(tmp_path):
    out = tmp_path / "old"
    result = run_app("hos_app.py", tmp_path, "--config-name=hos_search_space", f"hydra.sweep.dir={out}")
    assert "note: no hydra.sweeper.direction: the task's value is minimized" in result.stdout
    assert "note: hydra.sweeper.search_space is deprecated (hydra-optuna-sweeper 1.2): read as params: " \
           "x: range(-5.5, 5.75, 0.5), y: choice(-5, 0, 5)" in result.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert trials["x"].isin([i / 2 for i in range(-11, 12)]).all() and trials["y"].isin([-5, 0, 5]).all()
    assert "value=" in result.stdout and "val_accuracy" not in result.stdout
    info = yaml.safe_load((out / "study.yaml").read_text())
    assert info["objectives"] == {"value": "minimize"} and info["seed"] == 123


def test_the_sampler_group_and_a_sampler_seed_on_the_command_line(tmp_path, data_dir):
    out = tmp_path / "group"
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", "sweep=quick", "hydra/sweeper/sampler=random",
            "hydra.sweeper.sampler.seed=7", "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top_k=0",
            "data.n_train=600", "trainer.epochs=1")
    info = yaml.safe_load((out / "study.yaml").read_text())
    assert info["sampler"] == "random" and info["seed"] == 7 and info["objectives"] == {"val_accuracy": "maximize"}
    assert len(pd.read_csv(out / "trials.csv")) == 2
