"""Several sweep commands on one study, as on several machines: a real PostgreSQL server and a shared SQLite
file; one command killed with kill -9 mid-trial (in its own PID and UTS namespace where the OS allows)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import ROOT
from src.sweep.budget import uses_slot as counts

N_TRIALS = 6
# Short trials that report every epoch (a median pruner that never prunes: 100 start-up trials).
FAST = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.batch_trials=1",
        "data.n_train=600", "trainer.epochs=20",
        "model.units=int(interval(8,64))",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruners.median.n_startup_trials=100", "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=5", "hydra.sweeper.study_name=shared"]
OTHER_HOST = "other-machine"


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--pid", "--uts", "--fork", "true"], capture_output=True).returncode == 0


def start(folder: Path, storage: str, *extra: str, other_host: bool = False) -> subprocess.Popen:
    """`python -m src.sweep -m ...` as its own process group; with `other_host`, in its own PID and UTS
    namespace with another hostname (as another machine, or a container), where the OS allows."""
    cmd = [sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={folder}", f"hydra.sweeper.storage={storage}",
           f"hydra.sweeper.n_trials={N_TRIALS}", *FAST, *extra]
    if other_host and can_unshare():
        cmd = ["unshare", "--pid", "--uts", "--fork", "sh", "-c", f'hostname {OTHER_HOST} && "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    if storage.startswith("journal:"):
        path = storage.removeprefix("journal:")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    try:
        return optuna.load_study(study_name="shared", storage=storage).get_trials()
    except Exception:  # not created yet, or being created right now
        return []


def wait_until_training(storage: str, host: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first running trial of a worker on `host` that has reported an epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for t in trials_of(storage):
            if t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").startswith(host + "/") \
                    and t.intermediate_values:
                return t
        time.sleep(0.1)
    raise AssertionError(f"no trial of {host} started training within {timeout}s")


def kill_one_mid_trial(tmp_path: Path, storage: str) -> tuple[list, subprocess.CompletedProcess, str]:
    """Start two commands on one study, kill -9 the one on the 'other machine' mid-trial, let the other finish."""
    victim = start(tmp_path / "machine-a", storage, other_host=True)
    survivor = start(tmp_path / "machine-b", storage)
    host = OTHER_HOST if can_unshare() else socket.gethostname()
    killed = wait_until_training(storage, host)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole command: sweeper and worker, as a machine dies
    victim_out = "".join(victim.communicate(timeout=60))
    out, err = survivor.communicate(timeout=300)
    result = subprocess.CompletedProcess(survivor.args, survivor.returncode, out, err)
    assert survivor.returncode == 0, err[-3000:]
    trials = trials_of(storage)
    me = socket.gethostname() + "/"

    used = [t for t in trials if counts(t)]
    assert len(used) == N_TRIALS  # exactly n_trials: none short, none over
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in used)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in used}) == N_TRIALS  # no point drawn twice
    dead = next(t for t in trials if t.number == killed.number)
    assert dead.state == TrialState.FAIL and not counts(dead)  # the killed trial gave its slot back ...
    assert any(t.system_attrs.get("failed_trial") == killed.number and t.params == killed.params for t in used)
    table = pd.read_csv(tmp_path / "machine-b" / "trials.csv").set_index("number")
    assert table.loc[killed.number, "error"] == "its worker stopped: no heartbeat within the grace period"
    # ... and no trial the survivor ran was failed by anyone
    assert all(t.state != TrialState.FAIL or t.user_attrs.get("error", "").startswith("not run")
               for t in trials if t.user_attrs.get("worker", "").startswith(me))
    return trials, result, victim_out


def test_postgres_two_commands_one_killed(tmp_path, data_dir, postgres):
    url = postgres.new_database("killed")
    _, result, victim_out = kill_one_mid_trial(tmp_path, url)
    assert "***@127.0.0.1" in result.stdout  # the study's URL is shown masked
    # the password is in no output and no file of either command
    assert postgres.password not in result.stdout + result.stderr + victim_out
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20 and not [p for p in files if postgres.password.encode() in p.read_bytes()]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_file_storage_two_commands_one_killed(tmp_path, data_dir, kind):
    kill_one_mid_trial(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else
                       f"journal:{tmp_path / 'shared.log'}")


def test_two_commands_create_one_new_postgres_study_at_once(tmp_path, data_dir, postgres):
    url = postgres.new_database("created_at_once")
    commands = [start(tmp_path / f"m{i}", url, "hydra.sweeper.n_trials=2", "trainer.epochs=1") for i in range(2)]
    for proc in commands:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    trials = trials_of(url)
    assert sum(map(counts, trials)) == 2 and all(t.state == TrialState.COMPLETE for t in trials if counts(t))


@pytest.mark.parametrize("how", ["parent", "group"])
def test_sigterm_gives_the_trial_back_and_resume_completes(tmp_path, data_dir, how):
    """SIGTERM to the sweep command alone (its workers stop with it) or to its whole group (as a scheduler does)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = start(tmp_path, storage, "trainer.epochs=60", "hydra.sweeper.n_trials=2")  # 30 ended before the signal once
    wait_until_training(storage, socket.gethostname())
    if how == "parent":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM" in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker outlives its command
        os.killpg(proc.pid, 0)
    trials = trials_of(storage)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING] and not counts(trials[0])
    assert trials[0].user_attrs["error"].startswith("interrupted")
    proc = start(tmp_path, storage, "trainer.epochs=60", "hydra.sweeper.n_trials=2")  # the same command: a resume
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = trials_of(storage)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params  # the interrupted trial's params ran again


def test_killed_parent_takes_its_workers_and_their_trials_are_recovered(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = start(tmp_path, storage, "trainer.epochs=60", "hydra.sweeper.n_trials=2")
    wait_until_training(storage, socket.gethostname())
    os.kill(proc.pid, signal.SIGKILL)  # the sweeper process alone: its worker gets the parent-death signal
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("a worker outlived its killed sweep command")
    trials = trials_of(storage)
    assert trials[0].state == TrialState.FAIL  # its worker knew its command had died (not "interrupted by SIGTERM")
    assert trials[0].user_attrs["error"] == "interrupted: its sweep command died (killed?)"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
