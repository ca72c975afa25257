"""The sweep's workers as jobs of hydra-ray-launcher on a real two-node Ray cluster that the tests start: the
launcher joins it out of the box, a job's worker process killed mid-trial has its trials retried and the study
ends exact, and Ctrl-C of the command ends its jobs and gives their trials back."""
from __future__ import annotations

import os
import signal
import time

from optuna.trial import TrialState

from engines import check_exact, retried, slots, start, states, trials_of, wait_running

ON_RAY = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=600", "trainer.epochs=2",
          "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.pruner=none",
          "hydra.sweeper.n_trials=6", "hydra.sweeper.batch_trials=2", "hydra.sweeper.n_workers=2",
          "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.study_name=ray",
          "hydra.sweeper.test_overrides=[]", "hydra/launcher=ray"]


def on_ray(ray_cluster, out, *extra: str):
    """The sweep command, run by the Ray venv's python, its jobs joining the cluster (only its address given)."""
    return start(out, [*ON_RAY, f"hydra.launcher.ray.init.address={ray_cluster.address}", *extra], env=ray_cluster.env,
                 python=str(ray_cluster.python))


def test_six_trials_over_two_ray_jobs_one_worker_process_killed_mid_trial(tmp_path, ray_cluster):
    out = tmp_path / "ray"
    proc = on_ray(ray_cluster, out, "trainer.epochs=30")  # long enough to be cut
    victim = wait_running(f"sqlite:///{out / 'study.db'}", "ray")[0]
    os.kill(int(victim.user_attrs["worker"].split("/")[-1]), signal.SIGKILL)  # the Ray worker process of a job
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 job(s) of hydra/launcher=ray" in stdout
    assert "object_store_memory must not be provided" not in stderr  # joined as given, no extra override needed
    trials = check_exact(out, f"sqlite:///{out / 'study.db'}", "ray", 6, stdout + stderr)
    assert retried(trials) and slots(trials) == {"0", "1"}, states(trials)
    assert ray_cluster.running_jobs() == []


def test_ctrl_c_ends_the_ray_jobs_and_gives_their_trials_back(tmp_path, ray_cluster):
    out = tmp_path / "interrupted"
    storage = f"sqlite:///{out / 'study.db'}"
    proc = on_ray(ray_cluster, out, "trainer.epochs=60")
    wait_running(storage, "ray")
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 60
    while ray_cluster.running_jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_cluster.running_jobs() == []
    trials = trials_of(storage, "ray")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)
