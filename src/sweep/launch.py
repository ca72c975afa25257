"""The sweep's workers as jobs of any Hydra launcher (submitit_slurm, submitit_local, ray, joblib, dask ...).

The sweep command asks the launcher for `n_workers` jobs. Each runs `WorkerJob`: it makes the sweep's
context again (`prepare`) and runs the worker loop a local worker process runs (`worker.work`) against
the study's storage, so asynchronous scheduling, pruning, batching and confirmation are as on one machine.
Jobs and command share nothing but the storage:

- a job's watcher thread notes its worker alive in the study every heartbeat interval, and looks for its
  command's stop; the stop, SIGTERM (a cancel) or a cluster's warning signal (SIGUSR1/2) make the worker
  give back its trials at once and the job end;
- the command prints each finished trial from the storage while the jobs run, launches jobs again while
  work is left and none of its jobs is alive (cancelled, killed, timed out), and on Ctrl-C asks its jobs
  to stop, cancels those that never started, and gives back whatever they left running.

No password reaches a job file: a storage or tracking URL that holds one reaches the jobs through their
environment (`KERAS_SWEEP_STORAGE`, `KERAS_SWEEP_MLFLOW_URI`), never the configs a launcher pickles.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from optuna.trial import TrialState

from ..errors import UserError, first_line
from . import budget, gpus, progress
from .confirm import Confirmation
from .context import Sweep
from .hydra_internals import returned
from .optuna_internals import close, set_study_system_attr, study_system_attrs
from .prepare import prepare
from .processes import COMMAND_STOPPED, Exit, Stopped, raise_on_signals, restore_signals, stop_received
from .recovery import give_back
from .settings import SweeperSettings
from .space import override_key
from .storage import Storage, url_secrets
from .study import best_test, best_trial
from .worker import work

STORAGE_ENV, MLFLOW_ENV = "KERAS_SWEEP_STORAGE", "KERAS_SWEEP_MLFLOW_URI"
FROM_ENV = "<from the job's environment>"  # a URL with a password, in the settings a job is given
LOCAL_LAUNCHERS = ("basic", "joblib", "submitit_local")  # their jobs run on this machine, as its children


@dataclass
class WorkerJob:
    """The task a launcher runs in each job (pickled to it): the sweep's ingredients, no password."""

    settings: dict[str, Any]   # hydra.sweeper.*, a URL with a password replaced by FROM_ENV
    arguments: list[str]
    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig         # the sweep command's config, no password in it
    folder: str
    started: datetime
    command: str
    env: dict[str, str] = field(default_factory=dict)  # names of the variables that hold the URLs

    def __call__(self, cfg: DictConfig) -> str:
        slot = int(HydraConfig.get().job.num)
        owner = f"{self.command}/{slot}/{socket.gethostname()}/{os.getpid()}"
        sweep = self.sweep()
        if sweep.settings.gpus_per_worker:  # the engine assigned this job its devices: grow memory as needed
            os.environ.update(gpus.MEMORY_ENV)
        # a cancel (SIGTERM) or a cluster's warning signal stops the worker at once, where the job runs in a
        # process's main thread (SLURM, submitit, joblib, Ray); elsewhere (a Dask worker's thread) only the stop
        # its command asks for through the storage does, at the next epoch or claim
        main = threading.current_thread() is threading.main_thread()
        previous = raise_on_signals(once=True) if main else None
        try:
            with Watcher(sweep, owner, self.command):
                while work(sweep, slot, owner) == Exit.RETIRED:  # no fresh process to hand over to: go on
                    pass
        except Stopped as e:  # its trials were given back as the claim ended
            return f"worker {owner} {e}"
        finally:
            if main:
                restore_signals(previous)
        return f"worker {owner} done"

    def sweep(self) -> Sweep:
        """The sweep's context, made again in this job (its URLs read from the environment)."""
        raw = dict(self.settings)
        if raw.get("storage") == FROM_ENV:
            raw["storage"] = _from_env(STORAGE_ENV, "hydra.sweeper.storage")
        mlflow = dict(raw.get("mlflow") or {})
        if mlflow.get("tracking_uri") == FROM_ENV:
            raw["mlflow"] = {**mlflow, "tracking_uri": _from_env(MLFLOW_ENV, "hydra.sweeper.mlflow.tracking_uri")}
        settings = SweeperSettings(**raw)
        folder = Path(self.folder)
        storage = Storage(settings.storage or f"sqlite:///{folder / 'study.db'}", settings.heartbeat_interval,
                          settings.grace)
        sweep = prepare(settings, self.hydra_context, self.task_function, self.config, self.arguments, folder, storage)
        sweep.started = self.started  # failures are counted over the whole command
        sweep.quiet = True  # the command prints each trial's line
        return sweep


def _from_env(name: str, key: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise UserError(f"{key} holds a password, which reaches launcher jobs only through their environment "
                        f"({name}) and this job's has none: use a launcher whose jobs inherit the sweep command's "
                        f"environment, or leave the password out of the URL (PGPASSWORD, ~/.pgpass)")
    return value


class Watcher(threading.Thread):
    """In a job: every heartbeat interval, notes the worker alive in the study and looks for its command's stop
    (then the worker stops at its next epoch or claim, giving its trials back). Its own storage connection."""

    def __init__(self, sweep: Sweep, owner: str, command: str) -> None:
        super().__init__(daemon=True, name="keras-sweep-watcher")
        self.sweep, self.owner, self.command = sweep, owner, command
        self.done = threading.Event()
        self.study = sweep.open()

    def __enter__(self) -> Watcher:
        if self.beat():  # a job that starts after its command's Ctrl-C (Ray reuses warm workers) claims nothing
            self.sweep.runner.stopping.set()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=5)
        try:
            set_study_system_attr(self.study, f"alive:{self.owner}", 0.0)  # gone
        except Exception:  # noqa: BLE001 - the command then waits for the grace period instead
            pass
        close(self.study)

    def beat(self) -> bool:
        """Note this worker alive; whether its command asked it to stop."""
        set_study_system_attr(self.study, f"alive:{self.owner}", time.time())
        return bool(study_system_attrs(self.study).get(f"stop:{self.command}"))

    def run(self) -> None:
        while not self.done.wait(self.sweep.settings.heartbeat_interval):
            try:
                stop = self.beat()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                continue
            if stop:  # the worker stops at its next epoch or claim, giving back its trials
                self.sweep.runner.stopping.set()
                return


def alive(study: optuna.Study, command: str, grace: float) -> list[str]:
    """The workers of `command` that noted themselves alive within the grace period."""
    now = time.time()
    return [k.removeprefix("alive:") for k, v in study_system_attrs(study).items()
            if k.startswith(f"alive:{command}/") and v and now - float(v) < grace]


def work_left(sweep: Sweep, study: optuna.Study) -> bool:
    """Whether a worker would still find something to do: search trials, confirmation runs or the replay."""
    if budget.next_step(study.get_trials(deepcopy=False), sweep.budget) != "done":
        return True
    if sweep.settings.confirm.top_k:
        return not Confirmation(sweep).finished()
    return bool(sweep.settings.test_overrides) and best_trial(study) is not None and best_test(study) is None


class Printer(threading.Thread):
    """The command's one line per finished search trial, confirmation and test run, read from the storage
    while the jobs run (the jobs' workers print none)."""

    def __init__(self, sweep: Sweep) -> None:
        super().__init__(daemon=True, name="keras-sweep-progress")
        self.sweep, self.done = sweep, threading.Event()
        self.study = sweep.open()
        self.printed = {("search", t.number) for t in self.study.get_trials(deepcopy=False) if t.state in budget.FINISHED}
        self.queues: dict[str, optuna.Study] = {}

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.print_new()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next look tries again
                continue

    def print_new(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state in budget.FINISHED and ("search", t.number) not in self.printed and t.params:
                self.printed.add(("search", t.number))
                progress.print_trial(self.study, trials, t.number, self.sweep.budget, self.sweep.objectives[0],
                                     self.sweep.started)
        s = self.sweep.settings
        if not s.confirm.top_k or budget.next_step(trials, self.sweep.budget) != "done":
            return
        if len(self.queues) < 2:
            found = zip(("confirm", "test"), Confirmation(self.sweep).queues())
            self.queues = {kind: queue for kind, queue in found if queue is not None}
        for kind, queue in self.queues.items():
            total = s.confirm.top_k * s.confirm.seeds if kind == "confirm" else s.confirm.seeds + 1
            for t in queue.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
                if (kind, t.number) not in self.printed and "config" in t.params and budget.uses_slot(t):
                    self.printed.add((kind, t.number))
                    progress.print_run(kind, t, queue, total, self.sweep.objectives[0])

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
        self.print_new()


@dataclass
class Launch:
    """One sweep command's jobs on a Hydra launcher."""

    sweep: Sweep
    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig
    arguments: list[str]
    settings: dict[str, Any]
    command: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def choice(self) -> str:
        return str(self.config.hydra.runtime.choices.get("hydra/launcher", "basic"))

    def run(self, n_workers: int) -> None:
        """Launch rounds of `n_workers` jobs until no work is left; a job that died is replaced by the next round."""
        job, config = self.job(n_workers)
        HydraConfig.instance().set_config(config)  # what launchers pickle with the jobs: no password
        for name in ("submitit", "distributed"):  # "Bypassing sacct error" on every poll; a cluster's comings and goings
            logging.getLogger(name).setLevel(logging.ERROR)
        launcher = Plugins.instance().instantiate_launcher(hydra_context=self.hydra_context, task_function=job,
                                                          config=config)
        study = self.sweep.open()
        printer = Printer(self.sweep)
        printer.start()
        raise_on_signals(once=False)
        try:
            for attempt in range(self.sweep.settings.max_failures + 1):
                self.round(launcher, n_workers, study, attempt)
                if not work_left(self.sweep, study):
                    if self.choice.startswith("submitit_slurm"):  # a job SLURM requeued after its worker returned
                        cancel(self.choice, f"keras-sweep-{self.command}")
                    return
                print(f"the jobs of hydra/launcher={self.choice} ended with work left (cancelled, killed or timed "
                      f"out?); launching {n_workers} more", file=sys.stderr, flush=True)
            raise UserError(f"jobs of hydra/launcher={self.choice} ended with work left "
                            f"{self.sweep.settings.max_failures + 1} times; see their logs in {self.sweep.folder}")
        except Stopped:
            self.stop(study)
            raise
        finally:
            restore_signals()
            printer.stop()
            close(study)

    def round(self, launcher: Any, n_workers: int, study: optuna.Study, attempt: int) -> None:
        """Launch the jobs and wait for them, and for any job still alive after the launcher returned."""
        overrides = [[f"hydra.sweep.subdir=workers/{self.command}-{attempt}-{i}"] for i in range(n_workers)]
        started = time.time()
        try:
            if self.choice.startswith("submitit_slurm"):
                returns = slurm_launch(lambda: launcher.launch(overrides, initial_job_idx=0),
                                       f"keras-sweep-{self.command}",
                                       lambda: not alive(study, self.command, self.sweep.settings.grace))
            else:
                returns = launcher.launch(overrides, initial_job_idx=0)
        except Stopped:
            raise
        except KeyboardInterrupt:  # Ray's `get` turns the handler's Stopped into a bare KeyboardInterrupt
            raise stop_received() or Stopped(signal.SIGINT) from None
        except Exception as e:  # noqa: BLE001 - a job the engine could not start, or one that died
            if not self.seen_alive(study, started):
                raise UserError(f"hydra/launcher={self.choice}: the jobs did not start: {first_line(e)}") from None
            print(f"a job of hydra/launcher={self.choice} ended abnormally ({first_line(e)})", file=sys.stderr, flush=True)
            returns = []
        for ret in returns:
            value = returned(ret)
            if isinstance(value, UserError):
                raise value
            if isinstance(value, BaseException):
                print(f"a job of hydra/launcher={self.choice} failed: {first_line(value)}", file=sys.stderr, flush=True)
        while alive(study, self.command, self.sweep.settings.grace):  # e.g. siblings of a job that died
            time.sleep(1.0)

    def seen_alive(self, study: optuna.Study, since: float) -> bool:
        return any(k.startswith(f"alive:{self.command}/") and (v == 0.0 or float(v) >= since)
                   for k, v in study_system_attrs(study).items())

    def job(self, n_workers: int) -> tuple[WorkerJob, DictConfig]:
        """The job and the config the launcher gets: URLs with a password go by environment."""
        raw = {**self.settings, "n_workers": n_workers}
        names = {}
        for env, key, url in ((STORAGE_ENV, "storage", self.sweep.settings.storage),
                              (MLFLOW_ENV, "mlflow.tracking_uri", self.sweep.settings.mlflow.tracking_uri)):
            if url and url_secrets(url):
                os.environ[env] = url  # the jobs of launchers on this machine or on SLURM inherit it
                names[key] = env
        if "storage" in names:
            raw["storage"] = FROM_ENV
        if "mlflow.tracking_uri" in names:
            raw["mlflow"] = {**dict(raw.get("mlflow") or {}), "tracking_uri": FROM_ENV}
        config = safe_config(self.config, names, self.sweep.runner.mask, f"keras-sweep-{self.command}")
        job = WorkerJob(raw, list(self.arguments), self.hydra_context, self.task_function, config,
                        str(self.sweep.folder), self.sweep.started, self.command, names)
        return job, config

    def stop(self, study: optuna.Study) -> None:
        """Ctrl-C: ask this command's jobs to stop, wait for them, cancel those that never started, and give back
        whatever trial they left running."""
        print(f"stopping the jobs of hydra/launcher={self.choice} ...", file=sys.stderr, flush=True)
        set_study_system_attr(study, f"stop:{self.command}", time.time())
        s = self.sweep.settings
        deadline = time.monotonic() + s.grace + 2 * s.heartbeat_interval
        while alive(study, self.command, s.grace) and time.monotonic() < deadline:
            time.sleep(0.5)
        cancel(self.choice, f"keras-sweep-{self.command}")
        for queue in [study, *(q for q in Confirmation(self.sweep).queues() if q is not None)]:
            for t in queue.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
                if str(t.user_attrs.get("worker", "")).startswith(f"{self.command}/"):
                    give_back(queue, t, COMMAND_STOPPED)


def safe_config(config: DictConfig, names: dict[str, str], mask: Any, job_name: str) -> DictConfig:
    """The command's config for the launcher: each URL with a password read from its environment variable
    (`${oc.env:NAME}`) in hydra.sweeper and in the recorded overrides, any other password masked, the jobs
    named after this command (engines list and cancel them by name); for hydra-ray-launcher, no object store
    size where it joins a running cluster (`ray.init` refuses it there) and the jobs' output left in Ray's logs."""
    cfg = copy.deepcopy(config)  # its types too: Hydra's singletons take only a typed hydra node
    with open_dict(cfg):
        if "storage" in names:
            cfg.hydra.sweeper.storage = f"${{oc.env:{names['storage']}}}"
        if "mlflow.tracking_uri" in names:
            cfg.hydra.sweeper.mlflow.tracking_uri = f"${{oc.env:{names['mlflow.tracking_uri']}}}"
        overrides = []
        for line in cfg.hydra.overrides.hydra:
            key = override_key(line)
            env = next((v for k, v in names.items() if key == f"hydra.sweeper.{k}"), None)
            overrides.append(f"{key}=${{oc.env:{env}}}" if env else mask(line))
        cfg.hydra.overrides.hydra = overrides
        if "name" in cfg.hydra.get("launcher", {}):
            cfg.hydra.launcher.name = job_name
        ray_init = cfg.hydra.get("launcher", {}).get("ray", {}).get("init", {})
        if ray_init.get("address"):  # joining a running Ray cluster, which refuses the launcher's default store size
            ray_init.object_store_memory = None
        if "ray" in cfg.hydra.get("launcher", {}) and "log_to_driver" not in ray_init:
            ray_init.log_to_driver = False  # the command prints each trial from the storage; the jobs' logs stay Ray's
    return cfg


def check_shareable(storage: Storage, choice: str) -> None:
    """Refuse, in one line, a storage that the workers cannot share: one in memory (each process would hold its own
    study: the command would find no trial), or a file in this machine's memory (tmpfs) where jobs may run on other
    machines. `choice` "basic": the command's own worker processes."""
    url = storage.url
    if url.startswith("sqlite") and (":memory:" in url or url.rstrip("/").endswith("sqlite:")):
        who = "the sweep's worker processes" if choice == "basic" else f"the jobs of hydra/launcher={choice}"
        raise UserError(f"hydra.sweeper.storage={storage.display}: an in-memory study cannot be shared by {who}; use "
                        f"sqlite:///PATH or journal:PATH on a shared file system, or postgresql+psycopg2://... / "
                        f"mysql+pymysql://...")
    if choice in LOCAL_LAUNCHERS or not url.startswith(("sqlite:", "journal:")):
        return
    path = Path(url.removeprefix("journal:") if url.startswith("journal:") else url.split("///", 1)[-1]).absolute()
    if _filesystem(path) in ("tmpfs", "ramfs"):
        raise UserError(f"hydra.sweeper.storage={storage.display}: {path} is in this machine's memory (tmpfs), which "
                        f"jobs of hydra/launcher={choice} on other machines cannot see; use a path on a shared file "
                        f"system, or postgresql+psycopg2://... / mysql+pymysql://...")


def _filesystem(path: Path) -> str:
    """The type of the file system that holds `path` (the longest mount point above it in /proc/mounts)."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and (str(path) + "/").startswith(parts[1].rstrip("/") + "/") and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


class JobsVanished(RuntimeError):
    """SLURM holds none of the command's jobs, no worker of them is alive, and submitit still waits for a result."""


def slurm_launch(launch: Callable[[], Sequence[Any]], job_name: str, none_alive: Callable[[], bool],
                 settle: float = 10.0) -> Sequence[Any]:
    """submitit's launch, which waits for each job's result file or for `sacct` to say the job ended. Where SLURM
    keeps no accounting (sacct fails), a job killed before it wrote its result (SIGKILL at the end of a cancel's
    KillWait, the kernel's OOM killer, a lost node) would be waited for forever. So the launch waits in a thread,
    and this one gives it up once SLURM's queue has held none of the jobs for `settle` seconds and no worker of
    them is alive: then nothing is left to wait for. Stop signals still reach this (the main) thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["returns"] = launch()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="keras-sweep-launch")
    thread.start()
    started, seen, empty_since = time.monotonic(), False, None
    while thread.is_alive():
        thread.join(timeout=5.0)  # squeue every 5 s: a sweep may run for hours on a shared controller
        queued = _queued(job_name) if thread.is_alive() else None
        now = time.monotonic()
        if queued is None or queued:
            seen, empty_since = seen or bool(queued), None
        elif not seen and now - started < 60:  # sbatch may not have submitted them yet
            continue
        elif empty_since is None:
            empty_since = now
        elif now - empty_since >= settle and none_alive():
            raise JobsVanished("a job left SLURM's queue without a result (killed?), and SLURM keeps no accounting "
                               "(sacct) to say how it ended")
    if "error" in box:
        raise box["error"]
    return box["returns"]


def _queued(job_name: str) -> list[str] | None:
    """The ids of the jobs named `job_name` in SLURM's queue (pending, running, requeued), or None if squeue failed."""
    try:
        found = subprocess.run(["squeue", "--noheader", "--format=%i", f"--name={job_name}"], capture_output=True,
                               text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.split()


def cancel(choice: str, job_name: str) -> None:
    """Cancel through the engine what this command's stop did not end: SLURM jobs by name (pending ones
    included); on this machine, the jobs' processes (this command's children)."""
    if choice.startswith("submitit_slurm"):
        subprocess.run(["scancel", f"--name={job_name}"], capture_output=True, timeout=60, check=False)
    elif choice in LOCAL_LAUNCHERS:
        for pid in _children(os.getpid()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _children(parent: int) -> list[int]:
    """This process's descendants (from /proc)."""
    found, frontier = [], [parent]
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    while frontier:
        kids = [pid for pid, ppid in stats.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found
