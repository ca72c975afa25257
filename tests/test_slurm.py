"""The sweep's workers as SLURM jobs (hydra/launcher=submitit_slurm) on a real single-node SLURM cluster started
by the tests: 12 trials over 3 jobs on PostgreSQL, a job cancelled by the engine mid-trial, a job warned of its
time limit (submitit's --signal USR2, sent by SLURM) and one requeued, Ctrl-C of the command, and no password in
any file the launcher, the jobs or the daemons' logs wrote."""
from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

import optuna
from optuna.trial import TrialState

from engines import check_exact, files_holding, retried, slots, start, states, trials_of, wait_running, young

# 12 short trials, 2 at a time per worker, 3 one-CPU SLURM jobs; dead workers found in seconds.
ON_SLURM = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=1200", "trainer.epochs=3",
            "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=none",
            "hydra.sweeper.n_trials=12", "hydra.sweeper.batch_trials=2", "hydra.sweeper.n_workers=3",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.study_name=slurm",
            "hydra.sweeper.test_overrides=[]", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20"]


def pid_of(trial) -> int:
    """The process id of the worker that runs `trial` (its owner id ends with it)."""
    return int(trial.user_attrs["worker"].split("/")[-1])


def job_of(trial) -> str:
    """The SLURM job (`<array job>_<task>`: submitit submits an array) whose worker runs `trial` ("" if gone)."""
    try:
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid_of(trial)}/environ").read_text().split("\0") if "=" in v)
    except OSError:
        return ""
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def pending(pid: int) -> set[int]:
    """The signals waiting for process `pid` (sent to it or to one of its threads), from /proc; none once it ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    mask = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def given_back(url: str) -> set[str]:
    """Why the study's trials given back by their workers were given back."""
    return {t.user_attrs["error"] for t in trials_of(url, "slurm") if t.user_attrs.get("interrupted")}


def young_in_another_job(url: str, job: str, deadline: float = 120, epochs: int = 3) -> optuna.trial.FrozenTrial:
    """A young running trial (see `young`: fewer than `epochs` epochs reported) of a job other than `job`, once
    there is one."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        others = [t for t in trials_of(url, "slurm") if young(t, epochs) and job_of(t) not in ("", job)]
        if others:
            return others[0]
        time.sleep(0.3)
    raise AssertionError(f"no young trial of a job other than {job} within {deadline} s")


def test_twelve_trials_over_three_slurm_jobs_one_cancelled_one_killed_mid_trial_on_postgresql(tmp_path, data_dir,
                                                                                             postgres, slurm):
    """One job cancelled (scancel: SIGTERM, its worker gives its trial back) and another's worker killed (SIGKILL, as
    the OOM killer would: no result file, and this SLURM keeps no accounting for submitit to learn how it ended)."""
    out, url = tmp_path / "slurm", postgres.new_database()
    proc = start(out, [*ON_SLURM, f"hydra.sweeper.storage={url}", "trainer.epochs=20"], slurm.env)  # long enough to cut
    cancelled = job_of(wait_running(url, "slurm")[0])
    assert cancelled in slurm.jobs() and slurm.run("scancel", cancelled).returncode == 0  # the job running that trial
    os.kill(pid_of(young_in_another_job(url, cancelled, epochs=10)), signal.SIGKILL)  # 10 of its 20 epochs left
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "3 job(s) of hydra/launcher=submitit_slurm" in stdout
    trials = check_exact(out, url, "slurm", 12, stdout + stderr)
    assert retried(trials) and slots(trials) == {"0", "1", "2"}, states(trials)  # every job claimed trials
    assert len([line for line in stdout.splitlines() if line.startswith("trial ")]) >= 12
    assert slurm.jobs() == []
    # the password reached the jobs by environment only: no file the launcher, the jobs or the daemons' logs hold it
    assert postgres.password not in stdout + stderr
    assert files_holding(postgres.password, [out, *slurm.base.glob("*.log")]) == []
    assert list(out.rglob("*.pkl")) and list(out.rglob("*.sh"))  # submitit's pickles and sbatch scripts were read
    assert "without a result" in stderr  # the killed job, which submitit alone would wait for forever


def test_the_warning_signal_gives_a_jobs_trials_back_at_once_and_a_requeued_job_runs_again(tmp_path, data_dir,
                                                                                         postgres, slurm):
    """SLURM's warning before a job's time limit (submitit's `--signal=USR2@120`), sent by SLURM itself: a running
    job's limit is cut to two minutes (`scontrol update TimeLimit=2`), and at its next check (every 30 s) SLURM
    warns it. Its worker is held (SIGSTOP) until the warning is pending, so that however fast the machine trains,
    the trial is still running when the warning comes; let go, the worker gives back its trials itself, at once.
    A job the engine requeues (`scontrol requeue`) is stopped, gives back its trials, and runs the worker loop
    again when SLURM restarts it. The study ends exact."""
    out, url = tmp_path / "warned", postgres.new_database()
    proc = start(out, [*ON_SLURM, f"hydra.sweeper.storage={url}", "trainer.epochs=150", "hydra.sweeper.grace_period=600"],
                 slurm.env)  # no dead-worker recovery within the test: every trial given back was given back by its job
    trial = wait_running(url, "slurm")[0]
    worker, warned = pid_of(trial), job_of(trial)
    os.kill(worker, signal.SIGSTOP)
    try:
        assert slurm.run("scontrol", "update", f"jobid={warned}", "TimeLimit=2").returncode == 0
        deadline = time.monotonic() + 90  # the warning is pending (or was let through, should SLURM continue it)
        while time.monotonic() < deadline and signal.SIGUSR2 not in pending(worker) and not given_back(url):
            time.sleep(0.3)
    finally:
        with suppress(ProcessLookupError):  # SLURM may continue it itself as it warns it, and the job end
            os.kill(worker, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not given_back(url):
        time.sleep(0.3)
    given = given_back(url)
    assert given and all("SIGUSR2" in e for e in given), given  # the job's worker said why, it was not found dead
    requeued = job_of(young_in_another_job(url, warned, epochs=50))  # 100 epochs left: still running when cut
    assert slurm.run("scontrol", "requeue", requeued).returncode == 0
    for _ in range(60):  # a requeued job waits ~2 minutes before it may start again: let it start now
        if slurm.run("scontrol", "update", f"jobid={requeued}", "StartTime=now").returncode == 0:
            break
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    trials = check_exact(out, url, "slurm", 12, stdout + stderr)
    reasons = [t.user_attrs.get("error") for t in trials if t.state == TrialState.FAIL]
    assert retried(trials) and all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL), \
        states(trials)
    assert any("SIGTERM" in r for r in reasons), reasons  # the requeue stopped its job's worker
    deadline = time.monotonic() + 60
    while slurm.jobs() and time.monotonic() < deadline:  # the requeued job, cancelled once no work is left
        time.sleep(0.5)
    assert slurm.jobs() == []


def test_ctrl_c_cancels_the_slurm_jobs_and_gives_their_trials_back(tmp_path, data_dir, postgres, slurm):
    out, url = tmp_path / "interrupted", postgres.new_database()
    proc = start(out, [*ON_SLURM, f"hydra.sweeper.storage={url}", "trainer.epochs=30"], slurm.env)
    wait_running(url, "slurm")
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 60
    while slurm.jobs() and time.monotonic() < deadline:  # SLURM takes a moment to forget ended jobs
        time.sleep(0.5)
    assert slurm.jobs() == []
    trials = trials_of(url, "slurm")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)


def test_jobs_the_engine_cannot_start_are_one_line(tmp_path, data_dir, slurm):
    out = tmp_path / "nowhere"
    proc = start(out, [*ON_SLURM, "hydra.launcher.partition=nowhere"], slurm.env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: hydra/launcher=submitit_slurm: the jobs did not start: ")
    assert "nowhere" in errors[0] or "partition" in errors[0].lower(), errors
    assert "Traceback" not in stderr and slurm.jobs() == []
