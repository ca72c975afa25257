"""The Hydra launcher plugin `dask`: each job of a multirun as a task of a Dask distributed cluster.

    python -m src.sweep -m hydra/launcher=dask hydra.launcher.address=tcp://HOST:8786 hydra.sweeper.n_workers=4

Like Hydra's joblib launcher, each task composes its job's config and runs it with `run_job`; unlike it,
the tasks run wherever the cluster's workers are. Dask has no launcher of Hydra's own, so this is ours
(`distributed.Client` does the work). A Dask worker runs tasks in threads: give each worker one thread
(`dask worker --nthreads 1`), since a Hydra job's config is process-wide. The sweep's storage and tracking
URLs travel with the tasks in memory when they hold a password (never in a file). Without an address, a
local cluster of one process per job is started for the launch and stopped after it.
"""

import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

SECRET_VARIABLES = ("KERAS_SWEEP_STORAGE", "KERAS_SWEEP_MLFLOW_URI")  # set by the sweep command (src/sweep/launch.py)


@dataclass
class DaskLauncherConf:
    _target_: str = "hydra_plugins.keras_optuna_sweeper.dask_launcher.DaskLauncher"
    address: Optional[str] = None   # the scheduler, e.g. tcp://127.0.0.1:8786; null: a local cluster for the launch
    name: str = "${hydra.job.name}"  # prefix of the tasks' keys, as the cluster's dashboard shows them


ConfigStore.instance().store(group="hydra/launcher", name="dask", node=DaskLauncherConf, provider="keras_optuna_sweeper")


def execute_job(idx: int, overrides: Sequence[str], hydra_context: HydraContext, config: DictConfig,
                task_function: TaskFunction, singleton_state: Dict[Any, Any], env: Dict[str, str]) -> JobReturn:
    """One job in a Dask worker: its config composed from the overrides, run as Hydra runs a job."""
    os.environ.update(env)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


class DaskLauncher(Launcher):
    def __init__(self, address: Optional[str] = None, name: str = "hydra") -> None:
        self.address, self.name = address, name
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from distributed import Client, LocalCluster

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        env = {k: os.environ[k] for k in SECRET_VARIABLES if k in os.environ}
        cluster = None if self.address else LocalCluster(n_workers=len(job_overrides), threads_per_worker=1,
                                                        processes=True, dashboard_address=None)
        client = Client(self.address or cluster)
        launch_id = uuid.uuid4().hex[:8]
        try:
            state = Singleton.get_state()
            futures: List[Any] = []
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                futures.append(client.submit(execute_job, idx, list(overrides),
                                             self.hydra_context, self.config, self.task_function, state, env,
                                             pure=False, key=f"{self.name}-{launch_id}-{idx}"))
            return client.gather(futures)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
