"""What the tests of the sweep on an engine (launchers on this machine, SLURM, Dask) share: a sweep command started
in the background, the study read back, the exact-budget check, and the files that hold a secret."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import optuna
import pandas as pd
from optuna.trial import TrialState

from conftest import ROOT

from src.sweep.budget import uses_slot


def start(folder: Path, args: list[str], env: dict[str, str] | None = None, python: str = sys.executable) -> subprocess.Popen:
    """`python -m src.sweep -m hydra.sweep.dir=FOLDER ARGS` in its own session (Ctrl-C reaches it alone)."""
    return subprocess.Popen([python, "-m", "src.sweep", "-m", f"hydra.sweep.dir={folder}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # noqa: BLE001 - not created yet
        return []


def young(trial: optuna.trial.FrozenTrial, epochs: int = 3) -> bool:
    """Running, its params drawn, its worker's claim set (after the ask), and fewer than `epochs` epochs reported:
    a trial a test can still cut short, however loaded the machine, before it ends by itself."""
    return (trial.state == TrialState.RUNNING and bool(trial.params) and "worker" in trial.user_attrs
            and len(trial.intermediate_values) < epochs)


def wait_running(storage: str, name: str, deadline: float = 240) -> list[optuna.trial.FrozenTrial]:
    """The study's young running trials (see `young`), once there is one."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        running = [t for t in trials_of(storage, name) if young(t)]
        if running:
            return running
        time.sleep(0.2)
    raise AssertionError("no trial ran within the deadline")


def check_exact(folder: Path, storage: str, name: str, n_trials: int, output: str = "") -> list[optuna.trial.FrozenTrial]:
    """Exactly n_trials counted and complete, none running, no params twice, trials.csv as the storage has it."""
    trials = trials_of(storage, name)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n_trials and sum(map(uses_slot, trials)) == n_trials, f"{states(trials)}\n{output[-3000:]}"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({tuple(sorted(t.params.items())) for t in done}) == n_trials  # no params twice
    table = pd.read_csv(folder / "trials.csv")
    assert sorted(table[table["state"] == "COMPLETE"]["number"]) == sorted(t.number for t in done)
    return trials


def states(trials: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    """What an assertion on a study's trials prints: number, state, params, error and worker of each."""
    return [(t.number, t.state.name, t.params, t.user_attrs.get("error"), t.user_attrs.get("worker")) for t in trials]


def slots(trials: list[optuna.trial.FrozenTrial]) -> set[str]:
    """The job slots whose workers claimed trials (a worker's owner id: command/slot/host/pid)."""
    return {t.user_attrs["worker"].split("/")[1] for t in trials if "worker" in t.user_attrs}


def retried(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Every trial cut short gave its slot back and its params ran again to the end (those it had drawn: one cut
    between two draws is retried with those and draws the rest)."""
    cut = [t for t in trials if t.state == TrialState.FAIL]
    return bool(cut) and all(not uses_slot(t) for t in cut) and all(
        any(t.params.items() <= d.params.items() and d.state == TrialState.COMPLETE for d in trials) for t in cut if t.params)


def files_holding(secret: str, places: Iterable[Path]) -> list[Path]:
    """Every file under `places` (folders or files) whose bytes hold `secret`."""
    found = []
    for place in places:
        for path in ([place] if place.is_file() else place.rglob("*")):
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(path)
    return found
