"""`hydra.sweeper.mlflow`, an optional extra: each finished trial (COMPLETE, PRUNED, FAIL) as one MLflow run.

A run holds the trial's params, every numeric metric it recorded (val_accuracy, val_loss, param_count,
seconds, ...), and tags: the study, the trial's number and state, its run folder and error. It is written
through `mlflow.MlflowClient` by the worker that told the trial; MLflow loads only when the key is set.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from src.errors import UserError, first_line
from src.sweep.outcome import RESERVED
from src.sweep.settings import MlflowSettings
from src.sweep.storage import retrying

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # MLflow's run statuses
# Run once per sweep command, in a process of its own: creates the store's tables and the experiment. A refused
# database login fails at once (MLflow's own engine retries would wait minutes).
PREPARE = ("import logging, sys; logging.disable(logging.WARNING); import mlflow.store.db.utils as db; "
           "db.MAX_RETRY_COUNT = 2; from mlflow import MlflowClient; "
           "c = MlflowClient(); c.get_experiment_by_name(sys.argv[1]) or c.create_experiment(sys.argv[1])")


def error_line(stderr: str) -> str:
    """The line of a Python traceback that names the error (`Type: message`), not a footer after it such as
    SQLAlchemy's "(Background on this error at: ...)"."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line)]
    return (named or lines or [""])[-1][:300]


class MlflowLogger:
    """Called with (study, trial) after each trial is told. Made in the sweep command, before any trial;
    each worker process opens its own client at its first trial (no connection crosses the fork)."""

    def __init__(self, settings: MlflowSettings, study_name: str, mask: Callable[[str], str]) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise UserError("hydra.sweeper.mlflow needs MLflow: pip install -e '.[mlflow]'")
        self.uri, self.experiment = str(settings.tracking_uri), settings.experiment or study_name
        self.mask = mask  # hides the passwords of the study's storage and of the tracking URI
        self.client: Any = None
        self.experiment_id = ""

    def prepare(self) -> None:
        """Before any trial: create the store's tables and the experiment in a process of its own, so that
        workers starting together never race to migrate one SQLite file, no MLflow connection crosses
        their fork, and a bad URI or an unreachable server is one line. The URI goes by environment
        (`MLFLOW_TRACKING_URI`), never on a command line."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        try:
            done = subprocess.run([sys.executable, "-c", PREPARE, self.experiment], env=env, capture_output=True,
                                  text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise UserError(self.mask(f"hydra.sweeper.mlflow.tracking_uri={self.uri}: no answer in 300 s")) from None
        if done.returncode:
            raise UserError(self.mask(f"hydra.sweeper.mlflow.tracking_uri={self.uri}: "
                                      f"{error_line(done.stderr) or f'exit {done.returncode}'}"))

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log `trial`; a tracking store that fails is a one-line warning (the study has the result)."""
        try:
            self.log(study.study_name, trial)
        except Exception as e:  # noqa: BLE001 - a server down, a full disk, a bad URI
            print(self.mask(f"warning: trial {trial.number} not logged to MLflow ({self.uri}): {first_line(e)}"), flush=True)

    def connect(self) -> None:
        """This process's client and the experiment's id (`prepare` made it; another command may be making it now)."""
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
        def open_experiment() -> tuple[Any, str]:
            client = MlflowClient(self.uri)
            found = client.get_experiment_by_name(self.experiment)
            return client, found.experiment_id if found else client.create_experiment(self.experiment)

        # another worker may be creating the store or the experiment at once
        self.client, self.experiment_id = retrying(open_experiment, lambda e: True)

    def log(self, study_name: str, trial: FrozenTrial) -> None:
        """One MLflow run for `trial`: started and ended when the trial was, its status from the trial's state."""
        from mlflow.entities import Metric, Param, RunTag

        if self.client is None:
            self.connect()
        start, end = (int(t.timestamp() * 1000) if t else None for t in (trial.datetime_start, trial.datetime_complete))
        attrs = trial.user_attrs
        tags = {"optuna.study": study_name, "optuna.trial": str(trial.number), "optuna.state": trial.state.name,
                **{f"optuna.{k}": str(attrs[k])[:5000] for k in RESERVED if attrs.get(k) is not None}}
        metrics = [Metric(k, float(v), end or int(time.time() * 1000), 0) for k, v in attrs.items()
                   if k not in RESERVED and isinstance(v, (int, float)) and not isinstance(v, bool)]
        run = self.client.create_run(self.experiment_id, start_time=start, run_name=f"trial {trial.number}")
        self.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in trial.params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run.info.run_id, STATUS.get(trial.state.name, "FINISHED"), end_time=end)

