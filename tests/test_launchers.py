"""The sweep's workers as jobs of Hydra launchers on this machine (joblib, submitit_local): the same worker loop
as local workers, against the study's storage; exact budgets, a job killed, Ctrl-C, no password in any file.
Cluster engines (SLURM) have tests of their own (test_slurm.py)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import error_lines, run_cli
from engines import check_exact, files_holding, retried, slots, start, states, wait_running

# Six one-epoch trials on few images, two at a time per worker, two workers; dead workers found in seconds.
LAUNCHED = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=600", "trainer.epochs=2",
            "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=none",
            "hydra.sweeper.n_trials=6", "hydra.sweeper.batch_trials=2", "hydra.sweeper.n_workers=2",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.study_name=launched",
            "hydra.sweeper.test_overrides=[]"]


def test_joblib_jobs_run_the_worker_loop_on_postgresql_and_no_password_is_written(tmp_path, data_dir, postgres):
    out, url = tmp_path / "joblib", postgres.new_database()
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *LAUNCHED, "hydra/launcher=joblib",
                     f"hydra.sweeper.storage={url}")
    assert "2 job(s) of hydra/launcher=joblib" in result.stdout
    trials = check_exact(out, url, "launched", 6, result.stdout + result.stderr)
    assert slots(trials) == {"0", "1"}  # both jobs claimed trials
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1]) for line in lines) == sorted(t.number for t in trials if t.state.is_finished()
                                                                    and t.params)  # one line per trial, by the command
    assert postgres.password not in result.stdout + result.stderr
    assert files_holding(postgres.password, [out]) == []


def test_an_in_memory_storage_is_refused_for_jobs_in_one_line(tmp_path, data_dir):
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={tmp_path / 'mem'}", *LAUNCHED, "hydra/launcher=submitit_local",
                     "hydra.sweeper.storage=sqlite:///:memory:", expect=2)
    assert error_lines(result) == [
        "error: hydra.sweeper.storage=sqlite:///:memory:: an in-memory study cannot be shared by the jobs of "
        "hydra/launcher=submitit_local; use sqlite:///PATH or journal:PATH on a shared file system, or "
        "postgresql+psycopg2://... / mysql+pymysql://..."]
    assert "Traceback" not in result.stderr


def job_processes(folder: Path) -> list[int]:
    """PIDs of processes whose command line names this sweep's folder (submitit's jobs do)."""
    found = subprocess.run(["pgrep", "-f", str(folder / ".submitit")], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_a_submitit_job_killed_mid_trial_has_its_trials_retried_and_the_study_ends_exact(tmp_path, data_dir):
    out = tmp_path / "killed"
    storage = f"sqlite:///{out / 'study.db'}"
    proc = start(out, [*LAUNCHED, "hydra/launcher=submitit_local", "trainer.epochs=30"])  # long enough to cut
    victim = wait_running(storage, "launched")[0]
    os.kill(int(victim.user_attrs["worker"].split("/")[-1]), signal.SIGKILL)  # the job's process, as an OOM kill
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    trials = check_exact(out, storage, "launched", 6, stdout + stderr)
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL and retried(trials), states(trials)  # failed as stale: its slot given back, its params rerun
    assert job_processes(out) == []


def test_ctrl_c_of_the_command_stops_its_jobs_gives_back_their_trials_and_a_rerun_resumes(tmp_path, data_dir):
    out = tmp_path / "stopped"
    storage = f"sqlite:///{out / 'study.db'}"
    proc = start(out, [*LAUNCHED, "hydra/launcher=submitit_local", "trainer.epochs=60"])
    wait_running(storage, "launched")
    os.kill(proc.pid, signal.SIGINT)  # the command alone: its jobs are stopped through the storage
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert job_processes(out) == []  # no job left
    trials = optuna.load_study(study_name="launched", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    given_back = [t for t in trials if t.state == TrialState.FAIL]
    assert given_back and all(t.user_attrs.get("interrupted") for t in given_back)
    again = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *LAUNCHED, "hydra/launcher=submitit_local",
                    "trainer.epochs=60")
    assert "study 'launched': " in again.stdout
    check_exact(out, storage, "launched", 6, again.stdout)
