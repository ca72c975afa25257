"""The sweep's workers as SLURM jobs (hydra/launcher=submitit_slurm) on a real single-node SLURM cluster started
by the tests: 12 trials over 3 jobs on PostgreSQL, a job cancelled by the engine mid-trial, Ctrl-C of the command,
and no password in any file the launcher, the jobs or the daemons' logs wrote."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from conftest import ROOT

from src.sweep.budget import uses_slot

# 12 short trials, 2 at a time per worker, 3 one-CPU SLURM jobs; dead workers found in seconds.
ON_SLURM = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=1200", "trainer.epochs=3",
            "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=none",
            "hydra.sweeper.n_trials=12", "hydra.sweeper.batch_trials=2", "hydra.sweeper.n_workers=3",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.study_name=slurm",
            "hydra.sweeper.test_overrides=[]", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20"]


def start(folder: Path, slurm, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={folder}", *ON_SLURM,
                             f"hydra.sweeper.storage={storage}", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, **slurm.env})


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="slurm", storage=storage).get_trials()
    except Exception:  # noqa: BLE001 - not created yet
        return []


def wait_running(storage: str, deadline: float = 240) -> list[optuna.trial.FrozenTrial]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        running = [t for t in trials_of(storage) if t.state == TrialState.RUNNING and t.params]
        if running:
            return running
        time.sleep(0.3)
    raise AssertionError("no trial ran within the deadline")


def check_exact(folder: Path, storage: str, output: str = "") -> list[optuna.trial.FrozenTrial]:
    trials = trials_of(storage)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    states = [(t.number, t.state.name, t.user_attrs.get("error"), t.user_attrs.get("worker")) for t in trials]
    assert len(done) == 12 and sum(map(uses_slot, trials)) == 12, f"{states}\n{output[-3000:]}"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({tuple(sorted(t.params.items())) for t in done}) == 12  # no params twice
    table = pd.read_csv(folder / "trials.csv")
    assert sorted(table[table["state"] == "COMPLETE"]["number"]) == sorted(t.number for t in done)
    return trials


def test_twelve_trials_over_three_slurm_jobs_on_postgresql(tmp_path, data_dir, postgres, slurm):
    out, url = tmp_path / "slurm", postgres.new_database()
    proc = start(out, slurm, url)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "3 job(s) of hydra/launcher=submitit_slurm" in stdout
    trials = check_exact(out, url)
    assert {t.user_attrs["worker"].split("/")[1] for t in trials if t.state == TrialState.COMPLETE} == {"0", "1", "2"}
    assert len([line for line in stdout.splitlines() if line.startswith("trial ")]) >= 12
    assert slurm.jobs() == []
    # the password reached the jobs by environment only: no file the launcher, the jobs or the daemons wrote holds it
    assert postgres.password not in stdout + stderr
    files = [*out.rglob("*"), *slurm.base.glob("*.log")]
    assert [p for p in files if p.is_file() and postgres.password.encode() in p.read_bytes()] == []
    assert list(out.rglob("*.pkl")) and list(out.rglob("*.sh"))  # submitit's pickles and sbatch scripts were read


def test_a_job_cancelled_by_slurm_gives_its_trials_back_and_the_study_ends_exact(tmp_path, data_dir, postgres, slurm):
    out, url = tmp_path / "cancelled", postgres.new_database()
    proc = start(out, slurm, url, "trainer.epochs=6")
    victim = wait_running(url)[0]
    job = next(j for j in slurm.jobs() if j)  # any of the command's jobs, through the engine
    running_in = {t.user_attrs["worker"] for t in wait_running(url)}
    assert slurm.run("scancel", job).returncode == 0
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    trials = check_exact(out, url, stdout + stderr)
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert cut and all(not uses_slot(t) for t in cut) and running_in and victim.params
    assert all(any(d.params == t.params and d.state == TrialState.COMPLETE for d in trials) for t in cut if t.params)
    assert slurm.jobs() == []


def test_ctrl_c_cancels_the_slurm_jobs_and_gives_their_trials_back(tmp_path, data_dir, postgres, slurm):
    out, url = tmp_path / "interrupted", postgres.new_database()
    proc = start(out, slurm, url, "trainer.epochs=6")
    wait_running(url)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 60
    while slurm.jobs() and time.monotonic() < deadline:  # SLURM takes a moment to forget ended jobs
        time.sleep(0.5)
    assert slurm.jobs() == []
    trials = trials_of(url)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)
