"""The wheel installs beside any project: its one import package is `keras_sweep` (the repository's src/, with
conf/ inside it), it ships no top-level `src` or `conf`, and `keras-sweep train|sweep|analyze` runs from a
project that has its own `src` package, beside another distribution that ships one."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
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


def build(source: Path, wheels: Path) -> Path:
    """`source` built as a wheel by the venv's setuptools: no build isolation and no index (offline)."""
    built = run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                str(wheels), str(source), cwd=wheels.parent)
    said = built.stdout + built.stderr  # a quiet install: every config group is a package (setuptools' words)
    assert "is absent from the `packages` configuration" not in said and "as data is deprecated" not in said
    return max(wheels.glob("*.whl"), key=os.path.getmtime)


def another_src_distribution(tmp: Path) -> Path:
    """A wheel of another distribution that ships a top-level `src` package, as some do."""
    source = tmp / "other"
    (source / "src").mkdir(parents=True)
    (source / "src" / "__init__.py").write_text("OTHER = True\n")
    (source / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "other-src"
        version = "1.0"
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [tool.setuptools]
        packages = ["src"]
        """))
    return build(source, tmp / "other-wheels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in NOT_BUILT or n.endswith(".egg-info")])
    return build(source, tmp / "wheels")


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed, without dependencies, into a folder of its own, and beside it another distribution
    that ships `src`."""
    tmp = wheel.parents[1]
    target = tmp / "target"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp)
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
        str(another_src_distribution(tmp)), cwd=tmp)
    assert (target / "src" / "__init__.py").read_text() == "OTHER = True\n"
    return target


@pytest.fixture()
def project(tmp_path) -> Path:
    """A user's project with its own `src` package (src-layout, lightning-hydra-template)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "train.py").write_text('print("the project\'s own src.train")\n')
    return tmp_path


def user_env(target: Path, data_dir: Path) -> dict[str, str]:
    """The environment of `python -S` (see `python`) seeing the installed wheel first, then the venv's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_MAIN_MODULE")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(target), *SITE_PACKAGES]), "FASHION_MNIST_DIR": str(data_dir)}


def keras_sweep(target: Path, data_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, run as a user of the wheel would, from `cwd`. `-S` skips the site module,
    so the venv's .pth files do not run, among them the editable install's, whose finder would import
    `keras_sweep` from the repository; PYTHONPATH puts the wheel's folder first and the venv's site-packages
    (TensorFlow, Hydra, ...) after it."""
    return run(sys.executable, "-S", str(target / "bin" / "keras-sweep"), *args, cwd=cwd, env=user_env(target, data_dir))


def test_the_wheel_ships_one_package_of_a_unique_name_with_its_configs_and_metadata(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"keras_sweep", "hydra_plugins", wheel.name.split("-py3")[0] + ".dist-info"}
    configs = {n.removeprefix("keras_sweep/conf/") for n in names if n.startswith("keras_sweep/conf/") and n.endswith(".yaml")}
    in_repo = {str(Path(d, f).relative_to(ROOT / "conf")) for d, _, files in os.walk(ROOT / "conf", followlinks=True)
               for f in files if f.endswith(".yaml")}   # following conf/sweep, a link to sweeps/
    assert {"config.yaml", "sweep.yaml", "sweep/quick.yaml"} <= in_repo == configs
    dist_info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(dist_info).decode()
    for field in ("License-Expression: MIT", "Author: The keras-sweep developers", "Requires-Python: >=3.11",
                  "Classifier: Framework :: Hydra", "Provides-Extra: postgres"):
        assert field in metadata, field
    entry_points = zipfile.ZipFile(wheel).read(dist_info.replace("METADATA", "entry_points.txt")).decode()
    assert "keras-sweep = keras_sweep.cli:main" in entry_points


def test_train_sweep_replay_and_analyze_from_a_project_with_its_own_src(installed, data_dir, project):
    keras_sweep(installed, data_dir, project, "train", "trainer.epochs=1", "trainer.verbose=0", "trainer.test=false")
    assert len(list(project.glob("outputs/runs/*/metrics.json"))) == 1, list(project.rglob("*"))

    result = keras_sweep(installed, data_dir, project, "sweep", "-m", "sweep=quick", "hydra.sweeper.n_trials=2",
                         "hydra.sweeper.confirm.top_k=0", "data.n_train=200", "trainer.epochs=1")
    with open(project / "outputs" / "sweeps" / "quick" / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"], trials
    replay = next(line.split("replay: ", 1)[1] for line in result.stdout.splitlines() if "replay: " in line)
    assert replay.startswith("keras-sweep train "), replay   # the installed command, not `python -m src.train`

    keras_sweep(installed, data_dir, project, *replay.split()[1:], "trainer.verbose=0", "hydra.run.dir=replay")
    best = max(trials, key=lambda t: float(t["value"]))
    replayed = json.loads((project / "replay" / "metrics.json").read_text())
    assert (replayed["val_accuracy"], replayed["val_loss"]) == (float(best["val_accuracy"]), float(best["val_loss"]))

    analysed = keras_sweep(installed, data_dir, project, "analyze", "outputs/sweeps/quick")
    assert "model.units" in analysed.stdout
    assert "Installed as a package: keras-sweep sweep -m" in keras_sweep(installed, data_dir, project, "sweep", "--help").stdout
    assert not (installed / "outputs").exists() and (project / "src" / "train.py").is_file()


def test_a_mistyped_command_is_one_line(installed, data_dir, project):
    result = subprocess.run([sys.executable, "-S", str(installed / "bin" / "keras-sweep"), "swep"], cwd=project,
                            env=user_env(installed, data_dir), text=True, capture_output=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "swep: no such command (did you mean sweep?)" in result.stderr
