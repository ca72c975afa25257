"""The sweep's workers as tasks of a real Dask cluster (hydra/launcher=dask, our launcher plugin) that the tests
start: 12 trials over 3 jobs on PostgreSQL, a worker process killed mid-trial, Ctrl-C of the command, and no
password in any file the workers wrote."""
from __future__ import annotations

import os
import signal
import time

from optuna.trial import TrialState

from engines import check_exact, files_holding, retried, slots, start, states, trials_of, wait_running

ON_DASK = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=1200", "trainer.epochs=3",
           "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=none",
           "hydra.sweeper.n_trials=12", "hydra.sweeper.batch_trials=2", "hydra.sweeper.n_workers=3",
           "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.study_name=dask",
           "hydra.sweeper.test_overrides=[]", "hydra/launcher=dask"]


def args(dask_cluster, url: str, *extra: str) -> list[str]:
    return [*ON_DASK, f"hydra.launcher.address={dask_cluster.address}", f"hydra.sweeper.storage={url}", *extra]


def test_twelve_trials_over_three_dask_tasks_one_worker_killed_mid_trial_on_postgresql(tmp_path, data_dir, postgres,
                                                                                         dask_cluster):
    out, url = tmp_path / "dask", postgres.new_database()
    proc = start(out, args(dask_cluster, url, "trainer.epochs=20"))  # long enough to be cut
    victim = wait_running(url, "dask")[0]
    os.kill(int(victim.user_attrs["worker"].split("/")[-1]), signal.SIGKILL)  # the worker process; its nanny restarts it
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    trials = check_exact(out, url, "dask", 12, stdout + stderr)
    assert retried(trials) and slots(trials) == {"0", "1", "2"}, states(trials)
    assert dask_cluster.processing() == []
    assert postgres.password not in stdout + stderr
    assert files_holding(postgres.password, [out, dask_cluster.base]) == []


def test_ctrl_c_stops_the_dask_tasks_and_gives_their_trials_back(tmp_path, data_dir, postgres, dask_cluster):
    out, url = tmp_path / "interrupted", postgres.new_database()
    proc = start(out, args(dask_cluster, url, "trainer.epochs=30"))
    wait_running(url, "dask")
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 60
    while dask_cluster.processing() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dask_cluster.processing() == []
    trials = trials_of(url, "dask")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)
