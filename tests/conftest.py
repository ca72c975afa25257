"""Shared fixtures: the real data (required: a missing folder fails, never skips) and a CLI runner; the `slow`
marker on every test that runs a command, trains a network or starts a server (`pytest -m "not slow"` runs
the rules in-process in under two minutes; plain `pytest` runs everything)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from postgres import postgres  # noqa: F401  (a real PostgreSQL server for the session)
from slurm import slurm  # noqa: F401  (a real single-node SLURM cluster for the session)
from dask_cluster import dask_cluster  # noqa: F401  (a real Dask scheduler and workers for the session)
from ray_cluster import ray_cluster  # noqa: F401  (a real two-node Ray cluster for the session)

ROOT = Path(__file__).resolve().parents[1]
# Modules whose every test runs the CLI or trains; elsewhere a test is slow when it uses a slow fixture.
SLOW_MODULES = {"test_batch_sweep", "test_batch_training", "test_bench_results", "test_confirm", "test_coordination",
                "test_dask", "test_dashboard", "test_hos", "test_launchers", "test_packaging", "test_postgres_fixture",
                "test_readme", "test_slurm", "test_sweep", "test_train"}
SLOW_FIXTURES = {"quick_sweep", "postgres", "slurm", "dask_cluster", "ray_cluster"}
# pytest-xdist runs the tests in two processes (pyproject's addopts: -n 2 --dist loadgroup); each process has its
# own session fixtures, so the tests of an expensive one share a process: it starts once.
ENGINES = {"postgres", "slurm", "dask_cluster", "ray_cluster"}
DATA_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.module.__name__ in SLOW_MODULES or SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if ENGINES & fixtures:
            item.add_marker(pytest.mark.xdist_group("engines"))
        elif "quick_sweep" in fixtures:
            item.add_marker(pytest.mark.xdist_group("quick_sweep"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real Fashion-MNIST folder from FASHION_MNIST_DIR; the test fails when it is missing."""
    folder = os.environ.get("FASHION_MNIST_DIR")
    if not folder:
        pytest.fail("FASHION_MNIST_DIR is not set: point it at the folder with the four Fashion-MNIST .gz files")
    missing = [f for f in DATA_FILES if not (Path(folder) / f).is_file()]
    if missing:
        pytest.fail(f"FASHION_MNIST_DIR={folder} lacks {', '.join(missing)}")
    return Path(folder)


@pytest.fixture(scope="session")
def quick_sweep(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `python -m src.sweep -m sweep=quick` run, shared by the sweep and analysis tests."""
    folder = tmp_path_factory.mktemp("sweeps") / "quick"
    return folder, run_cli("sweep", "-m", "sweep=quick", f"hydra.sweep.dir={folder}")


def run_cli(module: str, *overrides: str, expect: int = 0, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m src.<module> overrides...` from the repository root; assert its exit status."""
    result = subprocess.run([sys.executable, "-m", f"src.{module}", *overrides], cwd=ROOT, text=True,
                            capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert result.returncode == expect, (
        f"exit {result.returncode}, expected {expect}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-4000:]}")
    return result


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The `error: ...` lines a run printed (stdout or stderr)."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
