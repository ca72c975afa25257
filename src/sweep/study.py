"""The study in its storage: opened safely by many processes and machines, its budget, dead workers, the best.

Coordination is Optuna's own: the storage numbers trials, a heartbeat thread marks a running trial
alive, `fail_stale_trials` fails the ones whose worker stopped beating, and Optuna's retry callback
queues their params again. The budget rule needs no lock: a trial may run only if fewer than
`n_trials` trials with lower numbers count (see `counts`), which no later change can make false.
The few private Optuna attributes the project touches are in the adapter at the end of this file.
"""
from __future__ import annotations

import copy
import random
import re
import sqlite3
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from src.errors import UserError
from src.sweep.results import describe

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat API
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours to print

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
MAX_RETRY = 3  # a trial cut short is queued again at most this often
OPTUNA_TABLES = {"studies", "version_info", "study_directions", "study_user_attributes", "study_system_attributes",
                 "trials", "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values",
                 "trial_intermediate_values", "trial_heartbeats", "alembic_version"}


# --- where the study lives ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Storage:
    """A storage URL (RDB URL, `journal:PATH` or `grpc://HOST:PORT`) with its heartbeat settings.

    `display` is the URL with its password masked: the only form that is printed or written.
    """

    url: str
    heartbeat_interval: int
    grace_period: int

    @property
    def secrets(self) -> list[str]:
        """The password as written in the URL (user info or `password=` query) and decoded, longest first."""
        if self.url.startswith(("journal:", "grpc://")):
            return []
        from urllib.parse import quote, quote_plus, unquote, unquote_plus

        raw = []
        netloc = self.url.partition("://")[2].partition("/")[0]
        user_info = netloc.rpartition("@")[0]
        if ":" in user_info:
            raw.append(user_info.partition(":")[2])
        raw += re.findall(r"[?&]password=([^&]*)", self.url)
        forms = {f for r in raw if r for f in (r, unquote(r), unquote_plus(r), quote(unquote(r), safe=""),
                                              quote_plus(unquote(r)))}
        return sorted(forms, key=len, reverse=True)

    def mask(self, text: str) -> str:
        """`text` with this storage's password replaced by `***`, in any form the URL may hold it."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def display(self) -> str:
        return self.mask(self.url)

    def connect(self) -> BaseStorage:
        """A new connection to the storage; a second process creating the same storage at once is retried."""
        for attempt in range(6):
            try:
                return self._connect()
            except UserError:
                raise
            except ModuleNotFoundError as e:
                extra = " (pip install -e '.[postgres]')" if "psycopg" in str(e) else ""
                raise UserError(f"hydra.sweeper.storage={self.display}: {e}{extra}") from None
            except Exception as e:  # a creation race (duplicate table or version row, locked file), or a bad URL
                if attempt == 5 or _permanent(e):
                    raise UserError(f"hydra.sweeper.storage={self.display}: "
                                    f"{self.mask(_first_line(e))}") from None
                time.sleep(0.2 + random.random() * 0.5)
        raise AssertionError("unreachable")

    def _connect(self) -> BaseStorage:
        if self.url.startswith("journal:"):
            path = Path(self.url.removeprefix("journal:"))
            _check_journal_file(path)
            return JournalStorageWithHeartbeat(JournalFileBackend(str(path)), self.heartbeat_interval,
                                               self.grace_period, queue_again)
        if self.url.startswith("grpc://"):
            host, _, port = self.url.removeprefix("grpc://").rpartition(":")
            proxy = optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port))
            proxy.wait_server_ready(timeout=30)
            return proxy
        engine_kwargs = {}
        if self.url.startswith("sqlite:"):
            _check_sqlite_file(self.url)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(self.url, engine_kwargs=engine_kwargs,
                                          heartbeat_interval=self.heartbeat_interval,
                                          grace_period=self.grace_period, heartbeat_stale_trial_callback=queue_again)


def _permanent(error: Exception) -> bool:
    """Errors that another try cannot mend: a refused login, an unknown host or database, a bad URL."""
    text = str(error).lower()
    return any(s in text for s in ("password", "authentication", "does not exist", "could not translate",
                                   "could not parse", "not a database", "unknown database"))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _check_sqlite_file(url: str) -> None:
    """Refuse a SQLite file that is empty (0 bytes) or holds tables of something other than Optuna."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or not Path(database).exists():
        return
    path = Path(database)
    for _ in range(20):  # a process creating this storage right now fills the file within milliseconds
        if path.stat().st_size > 0:
            break
        time.sleep(0.1)
    else:
        raise UserError(f"storage file {path} is empty (0 bytes), not an Optuna study: restore it, or delete it "
                        f"to start over")
    if path.read_bytes()[:16] != b"SQLite format 3\0":
        raise UserError(f"storage file {path} is not a SQLite database; point hydra.sweeper.storage elsewhere")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    foreign = sorted(tables - OPTUNA_TABLES)
    if foreign:
        raise UserError(f"storage file {path} is a SQLite database of something else (tables {', '.join(foreign[:5])}), "
                        f"not an Optuna study; point hydra.sweeper.storage elsewhere")


def _check_journal_file(path: Path) -> None:
    """Refuse a journal file whose first line is not one of Optuna's journal records."""
    import json

    if not path.exists() or path.stat().st_size == 0:  # Optuna creates it empty; it is new
        return
    with open(path, "rb") as f:
        first = f.readline()
    try:
        ok = "op_code" in json.loads(first)
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"storage file {path} is not an Optuna journal; point hydra.sweeper.storage elsewhere")


def open_study(storage: BaseStorage, name: str, directions: list[str], sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study or load it (two processes creating it at once both get it); directions must match."""
    for attempt in range(6):
        try:
            study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                        directions=directions, sampler=sampler, pruner=pruner)
            break
        except Exception as e:
            if attempt == 5 or isinstance(e, (UserError, ValueError)):
                raise UserError(f"cannot open study {name!r}: {_first_line(e)}") from None
            time.sleep(0.2 + random.random() * 0.5)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise UserError(f"study {name!r} was created with directions {stored}, not {directions}; "
                        f"set hydra.sweeper.study_name to start a new study")
    return study


def check_space(study: optuna.Study, space: dict[str, str], fixed: list[str]) -> None:
    """Refuse a search space that differs from the study's (a searched key added, dropped or changed),
    described as `describe` writes them; changed fixed overrides get a note. The first run records both."""
    stored = study.user_attrs.get("search_space")
    if stored is None:  # a study of an earlier version, or not yet asked: what its trials were drawn from
        drawn: dict[str, BaseDistribution] = {}
        for t in study.get_trials(deepcopy=False):
            drawn.update(t.distributions)
        stored = {key: describe(dist) for key, dist in drawn.items()} if drawn else None
    for key in sorted(set(stored or {}) | set(space)):
        old, new = (stored or {}).get(key), space.get(key)
        if stored is not None and old != new:
            raise UserError(f"study {study.study_name!r} searched {key} as {old or 'nothing (not searched)'}; "
                            f"this run asks {new or 'nothing (not searched)'}: set hydra.sweeper.study_name "
                            f"to start a new study")
    before = study.user_attrs.get("fixed")
    if before is not None and sorted(before) != sorted(fixed):
        print(f"note: study {study.study_name!r} ran with fixed overrides {sorted(before)}; this run has "
              f"{sorted(fixed)}", flush=True)
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", space)
        study.set_user_attr("fixed", fixed)


# --- the budget ---------------------------------------------------------------------------------------

def counts(t: FrozenTrial) -> bool:
    """Whether a trial uses one of the study's `n_trials` slots.

    Queued, running and finished ones do. A failed one counts only when the task itself failed (our
    code records its `error`); one cut short (Ctrl-C, SIGTERM, its worker died, or asked past the
    budget) gives its slot back. A trial never goes from not counting to counting.
    """
    if t.state == TrialState.FAIL:
        return "error" in t.user_attrs and not t.user_attrs.get("interrupted")
    return True


def next_step(trials: list[FrozenTrial], budget: int) -> Literal["ask", "wait", "done"]:
    """`ask` while a slot is free or a queued trial fits the budget; `wait` while others' running trials
    may still give slots back; `done` when every slot is used by a finished trial."""
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if sum(map(counts, trials)) < budget or any(within_budget(trials, t.number, budget) for t in waiting):
        return "ask"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) else "done"


def within_budget(trials: list[FrozenTrial], number: int, budget: int) -> bool:
    """Whether trial `number` may run: fewer than `budget` trials numbered below it count."""
    return sum(1 for t in trials if t.number < number and counts(t)) < budget


def failures_since(trials: list[FrozenTrial], started: Any) -> list[FrozenTrial]:
    """Counted failed trials that started at or after `started` (this run's failures)."""
    return [t for t in finished_since(trials, started) if t.state == TrialState.FAIL]


def finished_since(trials: list[FrozenTrial], started: Any) -> list[FrozenTrial]:
    """Counted finished trials that started at or after `started` (this run's)."""
    return [t for t in trials if t.state in FINISHED and counts(t) and t.datetime_start and t.datetime_start >= started]


def suggest(trial: optuna.Trial, distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Draw the trial's params (a queued retry keeps the params it already has)."""
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return dict(trial.params)


def queue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a cut-short trial's params as a new WAITING trial (Optuna's retry callback, at most MAX_RETRY
    times), without its owner or last heartbeat: those belong to the attempt that ended."""
    fresh = copy.deepcopy(trial)
    fresh.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "error", "interrupted")}
    fresh.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != "heartbeat"}
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, fresh)


def give_back(study: optuna.Study, trial: FrozenTrial, reason: str, retry: bool = True) -> bool:
    """Fail a running trial whose run was cut short so that it no longer counts, then queue its params again.

    Returns False when the trial had finished already (another worker or its own process got there first):
    only the process whose FAIL lands queues the retry, as with Optuna's stale-trial check.
    """
    try:
        set_user_attrs(study, trial, interrupted=True, error=reason)
        if not fail(study, trial):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if retry and (trial.params or "fixed_params" in trial.system_attrs):  # a queued trial cut short before it drew
        queue_again(study, trial)
    return True


def give_back_owned(study: optuna.Study, owner: str, reason: str) -> list[int]:
    """Give back the running trials of a worker process known to have ended; their numbers."""
    mine = [t for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == owner]
    return [t.number for t in mine if give_back(study, t, reason)]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial by the first objective (on a multi-objective study: among the Pareto front)."""
    candidates = study.best_trials if len(study.directions) > 1 else \
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not candidates:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(candidates, key=lambda t: (sign * t.values[0], -t.number))


def best_test(study: optuna.Study) -> dict[str, Any] | None:
    """The test score recorded by the best trial's replay, if the current best trial has been replayed."""
    best, test = best_trial(study), study.user_attrs.get("best_test")
    return test if best is not None and test and test.get("trial") == best.number else None


# --- adapter: the private Optuna attributes this project uses, and why ---------------------------------

def set_user_attrs(study: optuna.Study, trial: FrozenTrial | optuna.Trial, **attrs: Any) -> None:
    """Set user attributes of a trial known by its frozen record (Optuna's public setter needs a live Trial)."""
    for key, value in attrs.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Set a running trial FAIL in the storage; False if another process finished it first (atomic)."""
    return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a live trial, as it is now."""
    return study._storage.get_trial(trial._trial_id)


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for `trial` while the block runs (Optuna's own heartbeat thread, as `study.optimize` uses)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail running trials whose heartbeat stopped for the grace period; Optuna's retry callback queues them."""
    optuna.storages.fail_stale_trials(study)


def close(study: optuna.Study | BaseStorage) -> None:
    """Drop the study's (or storage's) pooled connections, so that no socket is shared with a forked child."""
    storage = getattr(study, "_storage", study)
    storage = getattr(storage, "_backend", storage)  # RDB storages come wrapped in a cache
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


class JournalStorageWithHeartbeat(JournalStorage, optuna.storages._heartbeat.BaseHeartbeat):
    """Optuna's journal storage with the heartbeat its RDB storage has (Optuna 5 has none for journals).

    A beat is a trial system attribute holding the wall-clock time (one journal record per beat); a running
    trial is stale when its last beat is older than the grace period (machines sharing a journal keep
    their clocks in sync).
    """

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int,
                 callback: Any) -> None:
        super().__init__(backend)
        self._interval, self._grace, self._callback = heartbeat_interval, grace_period, callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())
        except optuna.exceptions.UpdateFinishedTrialError:  # failed meanwhile: the runner says so
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if "heartbeat" in t.system_attrs and now - t.system_attrs["heartbeat"] > self._grace]

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._callback


class Patience:
    """Pauses while other workers' trials run: 50 ms at first, doubling up to 2 s (or the heartbeat interval,
    if shorter). A batch next door often ends within a second; a long wait should not query the storage many
    times a second."""

    def __init__(self, heartbeat_interval: float) -> None:
        self.longest = min(2.0, heartbeat_interval)
        self.reset()

    def reset(self) -> None:
        self.next = 0.05

    def pause(self) -> None:
        time.sleep(self.next)
        self.next = min(2 * self.next, self.longest)


class Unclaimed:
    """Running trials with neither an owner nor a heartbeat: their process died within milliseconds of
    creating them. Given back once this process has seen one unclaimed for the grace period (timed by
    this process's own clock, so no two machines' clocks are compared)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.seen: dict[int, float] = {}

    def give_back(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        now = time.monotonic()
        unclaimed = {t.number: t for t in trials if t.state == TrialState.RUNNING and "worker" not in t.user_attrs}
        self.seen = {n: self.seen.get(n, now) for n in unclaimed}
        for number, since in self.seen.items():
            if now - since > self.grace and not _has_heartbeat(study, unclaimed[number]):
                give_back(study, unclaimed[number], "its worker process died as it asked for the trial")


def _has_heartbeat(study: optuna.Study, trial: FrozenTrial) -> bool:
    if "heartbeat" in trial.system_attrs:
        return True
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        return False
    from optuna.storages._rdb import models

    with storage.scoped_session() as session:
        return session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial._trial_id).count() > 0
