"""`hydra.sweeper.mlflow`, an optional extra: the sweep as one MLflow parent run, each finished trial (COMPLETE,
PRUNED, FAIL) as a child run of it.

The parent run (one per study, found again by a rerun or another command) holds what the sweep asks (its fixed
overrides, sampler, pruner, budget and search space as params) and, when a command finishes, the best trial,
its test score and the sweep's tables. A trial's run holds its params, its per-epoch history (history.csv:
loss, accuracy, val_loss, val_accuracy at steps 1..epochs), every other numeric metric it recorded
(param_count, seconds, ...), its run folder as artifacts (config, history, metrics, model when saved), and
tags: the study, the trial's number and state, its folder and error. The parent also gets the winner's model
(`model/model.keras`, from its replay on the test set), registered as a version of
`hydra.sweeper.mlflow.registered_model` when that is set. Written through `mlflow.MlflowClient` by the worker
that told the trial; MLflow loads only when the key is set.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from ..errors import UserError, first_line
from .outcome import RESERVED
from .settings import MlflowSettings
from .storage import retrying

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # MLflow's run statuses
SWEEP_ROLE = {"optuna.role": "sweep"}  # the tag of a study's parent run
# Run once per sweep command, in a process of its own: creates the store's tables, the experiment (a database
# store's artifacts beside the sweep folder, not in the current directory) and the study's parent run. A refused
# database login fails at once (MLflow's own engine retries would wait minutes).
PREPARE = ("import logging, sys; logging.disable(logging.WARNING); import mlflow.store.db.utils as db; "
           f"db.MAX_RETRY_COUNT = 2; from {__name__} import prepare_store; prepare_store(*sys.argv[1:])")


def prepare_store(experiment: str, study: str, artifacts: str) -> None:
    """The experiment and the study's parent run, made if missing (in PREPARE's process)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifacts or None)
    if parent_run(client, experiment_id, study) is None:
        client.create_run(experiment_id, run_name=f"sweep {study}", tags={**SWEEP_ROLE, "optuna.study": study})


def parent_run(client: Any, experiment_id: str, study: str) -> Any:
    """The study's parent run in the experiment, or None (the first made, should two commands race)."""
    runs = client.search_runs([experiment_id], "tags.`optuna.role` = 'sweep'", order_by=["attributes.start_time ASC"],
                              max_results=1000)
    return next((r for r in runs if r.data.tags.get("optuna.study") == study), None)


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
        self.uri, self.experiment, self.study = str(settings.tracking_uri), settings.experiment or study_name, study_name
        self.registered_model = settings.registered_model
        self.mask = mask  # hides the passwords of the study's storage and of the tracking URI
        self.client: Any = None
        self.experiment_id = self.parent_id = ""

    def prepare(self, folder: Path) -> None:
        """Before any trial: create the store's tables and the experiment in a process of its own, so that
        workers starting together never race to migrate one SQLite file, no MLflow connection crosses
        their fork, and a bad URI or an unreachable server is one line. The URI goes by environment
        (`MLFLOW_TRACKING_URI`), never on a command line."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        try:
            artifacts = "" if re.match(r"(https?|databricks)", self.uri) else str(folder.parent / "mlartifacts")
            done = subprocess.run([sys.executable, "-c", PREPARE, self.experiment, self.study, artifacts], env=env,
                                  capture_output=True, text=True, timeout=300)
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
        """This process's client, the experiment's id and the parent run's (`prepare` made them; another command
        may be making them now)."""
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
        def open_experiment() -> tuple[Any, str, str]:
            client = MlflowClient(self.uri)
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
            parent = parent_run(client, experiment_id, self.study)
            return client, experiment_id, parent.info.run_id if parent else ""

        # another worker may be creating the store or the experiment at once
        self.client, self.experiment_id, self.parent_id = retrying(open_experiment, lambda e: True)

    def log(self, study_name: str, trial: FrozenTrial) -> None:
        """One MLflow run for `trial`, a child of the study's: started and ended when the trial was, its status from
        the trial's state, its history per epoch, its folder as artifacts."""
        from mlflow.entities import Metric, Param, RunTag

        if self.client is None:
            self.connect()
        start, end = (int(t.timestamp() * 1000) if t else None for t in (trial.datetime_start, trial.datetime_complete))
        end = end or int(time.time() * 1000)
        attrs, folder = trial.user_attrs, Path(str(trial.user_attrs.get("run_dir", "")))
        tags = {"optuna.study": study_name, "optuna.trial": str(trial.number), "optuna.state": trial.state.name,
                **{f"optuna.{k}": str(attrs[k])[:5000] for k in RESERVED if attrs.get(k) is not None},
                **({"mlflow.parentRunId": self.parent_id} if self.parent_id else {})}
        history = epoch_metrics(folder / "history.csv", start or end, end)
        logged = {m.key for m in history}
        metrics = history + [Metric(k, float(v), end, int(attrs.get("epochs") or 0)) for k, v in attrs.items()
                             if k not in RESERVED and k not in logged and _number(v)]
        run = self.client.create_run(self.experiment_id, start_time=start, run_name=f"trial {trial.number}")
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000],
                                  params=[Param(k, str(v)) for k, v in trial.params.items()] if i == 0 else [],
                                  tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
        if folder.is_dir() and attrs.get("run_dir"):
            self.client.log_artifacts(run.info.run_id, str(folder))
        self.client.set_terminated(run.info.run_id, STATUS.get(trial.state.name, "FINISHED"), end_time=end)

    def log_sweep(self, sweep: Any, best: FrozenTrial | None, test: dict[str, Any] | None) -> None:
        """The parent run, when a command finishes: what the sweep asks (params), the best trial and its test score
        (metrics and tags), the sweep's tables (artifacts). A tracking store that fails is a one-line warning."""
        from mlflow.entities import Metric, Param, RunTag

        try:
            if self.client is None:
                self.connect()
            if not self.parent_id:
                return
            now = int(time.time() * 1000)
            info = yaml_safe_load(sweep.folder / "study.yaml")
            params = {"n_trials": sweep.budget, "sampler": info.get("sampler"), "seed": info.get("seed"),
                      "pruner": info.get("pruner"), **{f"space.{k}": v for k, v in (info.get("search_space") or {}).items()},
                      **{f"fixed.{line.split('=', 1)[0]}": line.split("=", 1)[-1] for line in sweep.space.fixed}}
            existing = self.client.get_run(self.parent_id).data.params
            params = {k: str(v)[:6000] for k, v in params.items() if k not in existing}  # params are written once
            metrics = [Metric(f"best_{m}", float(v), now, 0) for m, v in zip(sweep.objectives, best.values or [])] if best else []
            metrics += [Metric(k, float(v), now, 0) for k, v in (test or {}).items()  # means over seeds, if confirmed
                        if k not in ("trial", "run_dir") and _number(v)]
            tags = {"optuna.best_trial": str(best.number)} if best else {}
            self.client.log_batch(self.parent_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            for name in ("trials.csv", "leaderboard.csv", "params_summary.csv", "importance.csv", "confirm.csv",
                         "best.yaml", "study.yaml"):
                if (sweep.folder / name).is_file():
                    self.client.log_artifact(self.parent_id, str(sweep.folder / name))
            model = sweep.folder / "best" / "model.keras"  # the winner's, saved by its replay on the test set
            if best is not None and model.is_file():
                self.client.log_artifact(self.parent_id, str(model), artifact_path="model")
                if self.registered_model:
                    self.register(best.number)
            self.client.set_terminated(self.parent_id, "FINISHED")
        except Exception as e:  # noqa: BLE001 - a server down, a full disk, a bad URI
            print(self.mask(f"warning: the sweep's MLflow run not updated ({self.uri}): {first_line(e)}"), flush=True)


    def register(self, trial: int) -> None:
        """A version of the registered model (made if missing) holding the parent run's `model/`, once per winner:
        a rerun of a finished sweep registers nothing again."""
        from mlflow.exceptions import MlflowException

        name = self.registered_model
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        done = self.client.search_model_versions(f"name='{name}' and run_id='{self.parent_id}'")
        if any(v.tags.get("optuna.trial") == str(trial) for v in done):
            return
        source = f"{self.client.get_run(self.parent_id).info.artifact_uri}/model"
        self.client.create_model_version(name, source, run_id=self.parent_id,
                                         tags={"optuna.study": self.study, "optuna.trial": str(trial)})


def epoch_metrics(history_csv: Path, start: int, end: int) -> list[Any]:
    """Each column of a run's history.csv as an MLflow metric history (step = epoch), timed evenly over the run."""
    from mlflow.entities import Metric

    if not history_csv.is_file():
        return []
    import pandas as pd

    history = pd.read_csv(history_csv)
    epochs = len(history)
    return [Metric(column, float(value), start + (end - start) * int(epoch) // max(epochs, 1), int(epoch))
            for column in history.columns if column != "epoch"
            for epoch, value in zip(history["epoch"], history[column]) if _number(value)]


def yaml_safe_load(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN
