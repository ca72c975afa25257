"""Adapter: every private Optuna API the sweeper uses, and why, in one file (an Optuna upgrade reads this one).

Optuna's public API tells a live `Trial`; a worker must also act on trials it knows only by their stored
record (give back a dead worker's trial, mark one interrupted), beat for trials it asked itself, and keep
a journal storage's trials alive the way an RDB storage's are.
"""
from __future__ import annotations

import copy
import json
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread, is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState


def set_user_attrs(study: optuna.Study, trial: FrozenTrial | optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set user attributes of a trial, live or known by its frozen record, in one transaction of an RDB storage
    (Optuna's setter commits each key: a told trial's dozen metrics were a dozen SQLite commits, ~1.5 ms each);
    one call per key on the other storages. Raises UpdateFinishedTrialError, and sets none, once it finished.
    On SQLite and PostgreSQL the keys after the first go in one multi-row upsert, Optuna's own statement for one
    key (it reads the trial again per key: 16 metrics took 20 ms on SQLite, 5 ms so)."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in its _CachedStorage
    if isinstance(backend, RDBStorage):
        from optuna.storages._rdb.models import TrialUserAttributeModel as Attr
        from optuna.storages._rdb.storage import _create_scoped_session

        items, insert = list(attrs.items()), _upsert(backend)
        with _create_scoped_session(backend.scoped_session, True) as session:
            for key, value in items if insert is None else items[:1]:  # Optuna's setter checks the trial runs
                backend._set_trial_attr_without_commit(session, Attr, trial._trial_id, key, value)
            if insert is not None and items[1:]:
                rows = insert(Attr).values([{"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
                                            for key, value in items[1:]])
                session.execute(rows.on_conflict_do_update(index_elements=[Attr.trial_id, Attr.key],
                                                           set_={"value_json": rows.excluded.value_json}))
    else:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
    if isinstance(trial, optuna.Trial):  # what Trial.set_user_attr keeps for its own reads
        trial._cached_frozen_trial.user_attrs.update(attrs)


def _upsert(backend: RDBStorage) -> Callable[..., Any] | None:
    """The dialect's INSERT that takes ON CONFLICT DO UPDATE, where Optuna itself upserts a trial's attribute."""
    if backend.engine.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        return insert
    if backend.engine.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
        return insert
    return None


def ask_waiting(study: optuna.Study, where: Callable[[FrozenTrial], bool]) -> optuna.Trial | None:
    """Optuna's `ask`, popping only a waiting trial that `where` admits (its `_pop_waiting_trial_id`, filtered), or
    None: a confirmation claim takes one searched trial's runs, not whichever run is first in the queue."""
    storage = study._storage
    study._thread_local.cached_all_trials = None
    for waiting in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if not where(waiting):
            continue
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):  # False: another took it
                return optuna.Trial(study, waiting._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


@contextmanager
def trials_read_once(study: optuna.Study) -> Iterator[None]:
    """Within the block, the study's trials are read from its storage once. A trial draws its params one at a
    time, and TPE with `constant_liar` reads the whole study for each (uncached: the running trials are its
    liars); nothing in the block changes them but the drawing trial's own params, which TPE leaves out. Sweep S:
    32 of a worker's 135 reads (its 10 TPE trials, 4 params each), ~3 ms each on SQLite."""
    storage, read = study._storage, study._storage.get_all_trials
    outer = vars(storage).get("get_all_trials")  # a block within another: the outer one's stays after
    snapshot: list[FrozenTrial] = []

    def get_all_trials(study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        if study_id != study._study_id:
            return read(study_id, deepcopy=deepcopy, states=states)
        if not snapshot:
            snapshot.extend(read(study_id, deepcopy=False))
        trials = snapshot if states is None else [t for t in snapshot if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    storage.get_all_trials = get_all_trials  # type: ignore[method-assign]
    try:
        yield
    finally:
        if outer is None:
            del storage.get_all_trials
        else:
            storage.get_all_trials = outer  # type: ignore[method-assign]


def set_system_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Note the sweeper's own state on a trial known by its frozen record (kept from dashboards' user attributes)."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def free_grid_point(study: optuna.Study, trial: FrozenTrial) -> None:
    """Let Optuna's GridSampler give another trial the grid point of one given back without a retry (asked past
    the budget): its sampler counts a finished trial's `grid_id` as visited, so the point would never run, and
    a later trial would evaluate another twice. A grid id outside the grid frees it."""
    if "grid_id" in trial.system_attrs:
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", -1)


def stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The running trials whose heartbeat stopped for the grace period, by the storage's own check (the first half
    of Optuna's `fail_stale_trials`, which fails them all before its retry callback queues any)."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    return [storage.get_trial(trial_id) for trial_id in storage._get_stale_trial_ids(study._study_id)]


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Set a running trial FAIL in the storage; False if another process finished it first (atomic)."""
    return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a live trial, as it is now."""
    return study._storage.get_trial(trial._trial_id)


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial,
              on_failure: Callable[[Exception], None] | None = None) -> Iterator[None]:
    """Beat for `trial` while the block runs (Optuna's own heartbeat thread, as `study.optimize` uses). With
    `on_failure`, a beat the storage does not take is handed to it and the next beat tries again; Optuna's
    thread would print a traceback and stop beating (one per trial: hundreds of lines when a server stops)."""
    storage = study._storage if on_failure is None else _TryingBeats(study._storage, on_failure)
    with get_heartbeat_thread(trial._trial_id, storage):
        yield


def storage_url(study: optuna.Study) -> str | None:
    """The URL of an RDB storage (to mask its password in a message), else None."""
    return getattr(getattr(study._storage, "_backend", study._storage), "url", None)


class _TryingBeats(BaseHeartbeat):
    """A storage's heartbeat whose failed beats go to `on_failure` instead of ending the beating thread."""

    def __init__(self, storage: Any, on_failure: Callable[[Exception], None]) -> None:
        self._storage, self._on_failure = storage, on_failure

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._storage.record_heartbeat(trial_id)
        except Exception as e:  # noqa: BLE001 - the storage down for a while: the next beat tries again
            self._on_failure(e)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._storage._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._storage.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._storage.get_heartbeat_stale_trial_callback()


def has_heartbeat(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether any process has beaten for `trial` (a journal keeps beats as system attributes, an RDB storage
    in a table of its own that only its session can read)."""
    if "heartbeat" in trial.system_attrs:
        return True
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        return False
    from optuna.storages._rdb import models

    with storage.scoped_session() as session:
        return session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial._trial_id).count() > 0


def close(study: optuna.Study | BaseStorage) -> None:
    """Drop the study's (or storage's) pooled connections, so that no socket is shared with a forked child."""
    storage = getattr(study, "_storage", study)
    storage = getattr(storage, "_backend", storage)  # RDB storages come wrapped in a cache
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


class JournalStorageWithHeartbeat(JournalStorage, BaseHeartbeat):
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


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes: the sweeper's own notes between processes (not shown by dashboards)."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)
