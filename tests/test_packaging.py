"""A non-editable install (`pip install .`, a wheel) trains and sweeps from any folder: conf/ ships in the wheel
next to src/ (pyproject.toml), where Hydra looks for it (`config_path="../conf"` from src/train.py)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

# What `pip install .` must not see or write in the shared working tree: the build runs on a copy.
NOT_BUILT = {".git", ".venv", "outputs", "multirun", "build", "dist", ".pytest_cache", "__pycache__"}
SITE_PACKAGES = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, (
        f"{' '.join(args)}: exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and installed, without dependencies, into a folder of its own."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in NOT_BUILT or n.endswith(".egg-info")])
    # No build isolation and no index: the venv's setuptools builds it, offline; TensorFlow is not reinstalled.
    built = run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                str(tmp / "wheels"), str(source), cwd=tmp)
    said = built.stdout + built.stderr  # a quiet install: every config group is a package (setuptools 65 to 84's words)
    assert "is absent from the `packages` configuration" not in said and "as data is deprecated" not in said
    wheels = list((tmp / "wheels").glob("keras_sweep-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp / "target"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheels[0]), cwd=tmp)
    return target


def user_env(target: Path, data_dir: Path) -> dict[str, str]:
    """The environment of `python -S` (see `python`) seeing the installed wheel first, then the venv's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_MAIN_MODULE")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(target), *SITE_PACKAGES]), "FASHION_MNIST_DIR": str(data_dir)}


def python(target: Path, data_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the venv's python as a user of the wheel would, from `cwd` (not the repository). `-S` skips the
    site module, so the venv's .pth files do not run, among them the editable install's, whose finder would
    import `src` from the repository; PYTHONPATH then puts the wheel's folder first and the venv's
    site-packages (TensorFlow, Hydra, ...) after it."""
    return run(sys.executable, "-S", *args, cwd=cwd, env=user_env(target, data_dir))


def test_wheel_holds_the_configs_and_its_code_is_the_one_imported(installed, data_dir, tmp_path):
    def configs(conf: Path) -> set[str]:   # following links: conf/sweep links to sweeps/ in the repository
        return {str(Path(d, f).relative_to(conf)) for d, _, files in os.walk(conf, followlinks=True) for f in files
                if f.endswith(".yaml")}

    assert {"config.yaml", "sweep.yaml", "sweep/quick.yaml"} <= configs(ROOT / "conf") == configs(installed / "conf")
    assert not any(p.is_symlink() for p in (installed / "conf").rglob("*"))   # the wheel holds the files
    result = python(installed, data_dir, tmp_path, "-c",
                    "import src, conf, hydra_plugins.keras_optuna_sweeper as p; print(src.__file__); "
                    "print(*conf.__path__); print(p.__file__)")
    for line in result.stdout.split():
        assert Path(line).is_relative_to(installed), (line, installed)


def test_train_from_another_folder(installed, data_dir, tmp_path):
    python(installed, data_dir, tmp_path, "-m", "src.train", "trainer.epochs=1", "trainer.verbose=0", "trainer.test=false")
    runs = list(tmp_path.glob("outputs/runs/*/metrics.json"))   # Hydra's run dir is under the current directory
    assert len(runs) == 1, list(tmp_path.rglob("*"))
    assert not (installed / "outputs").exists()


def test_sweep_from_another_folder(installed, data_dir, tmp_path):
    result = python(installed, data_dir, tmp_path, "-m", "src.sweep", "-m", "sweep=quick", "hydra.sweeper.n_trials=2",
                    "data.n_train=200", "trainer.epochs=1")
    assert "best trial #" in result.stdout
    with open(tmp_path / "outputs" / "sweeps" / "quick" / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"], trials
