"""Where a study lives: its URL (password masked wherever it is shown), a connection opened safely by many
processes at once, the checks that refuse a file that is no Optuna storage, and how storage errors are told
apart (a race another try mends, or a fault it cannot)."""
from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote, quote_plus, unquote, unquote_plus
from urllib.request import pathname2url

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend

from ..errors import UserError, first_line
from .optuna_internals import JournalStorageWithHeartbeat
from .recovery import queue_again

T = TypeVar("T")
TRIES = 6
GRPC_WAIT = 10  # seconds a gRPC storage proxy has to answer
OPTUNA_TABLES = {"studies", "version_info", "study_directions", "study_user_attributes", "study_system_attributes",
                 "trials", "trial_user_attributes", "trial_system_attributes", "trial_params", "trial_values",
                 "trial_intermediate_values", "trial_heartbeats", "alembic_version"}
# SQLSTATE classes no retry mends: invalid authorization (28), unknown database (3D).
PERMANENT_SQLSTATES = ("28", "3D")
# libpq reports a refused login or an unknown host while connecting, before any SQLSTATE exists.
PERMANENT_CONNECT = ("password", "authentication", "does not exist", "could not translate", "unknown database")


def retrying(action: Callable[[], T], transient: Callable[[Exception], bool], tries: int = TRIES) -> T:
    """`action()`, tried again after a short random pause while it fails with a `transient` error (another
    process creating the same storage, study or experiment at once); the last error is raised."""
    for attempt in range(tries):
        try:
            return action()
        except Exception as e:
            if attempt == tries - 1 or not transient(e):
                raise
            time.sleep(0.2 + random.random() * 0.5)
    raise AssertionError("unreachable")


def permanent(error: Exception) -> bool:
    """Whether another try cannot mend `error`: a bad URL, a refused login, an unknown host or database, a
    file that is not a database. Creation races (a duplicate table or row, a locked file) and lost
    connections are worth another try."""
    from sqlalchemy import exc

    if isinstance(error, (UserError, ModuleNotFoundError, exc.ArgumentError, exc.NoSuchModuleError)):
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    cause = error.orig
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    if code:
        return str(code)[:2] in PERMANENT_SQLSTATES
    if type(cause) is sqlite3.DatabaseError:  # "file is not a database" (its subclasses: races, locks)
        return True
    return isinstance(error, exc.OperationalError) and any(s in str(cause).lower() for s in PERMANENT_CONNECT)


def url_secrets(url: str) -> list[str]:
    """The password as a URL writes it (user info or `password=` query) and decoded, longest first."""
    if url.startswith(("journal:", "grpc://")):
        return []
    raw = []
    user_info = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    if ":" in user_info:
        raw.append(user_info.partition(":")[2])
    raw += re.findall(r"[?&]password=([^&]*)", url)
    forms = {f for r in raw if r for f in (r, unquote(r), unquote_plus(r), quote(unquote(r), safe=""),
                                          quote_plus(unquote(r)))}
    return sorted(forms, key=len, reverse=True)


def masking(*urls: str | None) -> Callable[[str], str]:
    """A function that replaces the passwords of `urls` (in any form a URL may hold them) by `***`."""
    secrets = sorted({s for url in urls if url for s in url_secrets(url)}, key=len, reverse=True)

    def mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return mask


@dataclass(frozen=True)
class Storage:
    """A storage URL (RDB URL, `journal:PATH` or `grpc://HOST:PORT`) with its heartbeat settings.

    `display` is the URL with its password masked: the only form that is printed or written.
    """

    url: str
    heartbeat_interval: int
    grace_period: int

    def mask(self, text: str) -> str:
        """`text` with this storage's password replaced by `***`, in any form the URL may hold it."""
        return masking(self.url)(text)

    @property
    def display(self) -> str:
        return self.mask(self.url)

    def connect(self, create: bool = True) -> BaseStorage:
        """A new connection to the storage; a second process creating the same storage at once is retried.
        Without `create` (every connection after the sweep command's first), a SQLite file that is gone is an
        error: made again it would be an empty study that the finish step reports and tables overwrite."""
        try:
            return retrying(lambda: self._connect(create), lambda e: not permanent(e))
        except UserError:
            raise
        except ModuleNotFoundError as e:
            extra = " (pip install -e '.[postgres]')" if "psycopg" in str(e) else ""
            raise UserError(f"hydra.sweeper.storage={self.display}: {e}{extra}") from None
        except Exception as e:  # noqa: BLE001 - a bad URL, a refused login, or a race that outlasted the tries
            raise UserError(f"hydra.sweeper.storage={self.display}: {self.mask(first_line(e))}") from None

    def _connect(self, create: bool) -> BaseStorage:
        if self.url.startswith("journal:"):
            path = Path(self.url.removeprefix("journal:"))
            _check_journal_file(path)
            return JournalStorageWithHeartbeat(JournalFileBackend(str(path)), self.heartbeat_interval,
                                               self.grace_period, queue_again)
        if self.url.startswith("grpc://"):
            host, _, port = self.url.removeprefix("grpc://").rpartition(":")
            proxy = optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port))
            try:
                proxy.wait_server_ready(timeout=GRPC_WAIT)
            except ConnectionError:  # waited already: no retry (six tries were three silent minutes)
                raise UserError(f"hydra.sweeper.storage={self.display}: no gRPC storage proxy answered at "
                                f"{host or 'localhost'}:{port} within {GRPC_WAIT} s; start one "
                                f"(optuna.storages.run_grpc_proxy_server) or fix the address") from None
            return proxy
        engine_kwargs = {}
        file = _sqlite_file(self.url)
        if file is not None:
            if not create and not file.exists():
                raise StorageGone(file)
            _check_sqlite_file(file)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        storage = optuna.storages.RDBStorage(self.url, engine_kwargs=engine_kwargs,
                                             heartbeat_interval=self.heartbeat_interval,
                                             grace_period=self.grace_period, heartbeat_stale_trial_callback=queue_again)
        if file is not None:
            _guard_sqlite_file(storage.engine, file)
        return storage


def failure(error: BaseException) -> str | None:
    """A storage fault as one line in its driver's words (file read-only, disk full, connection refused or
    lost), not Optuna's wrapper ("... e.g. exceeding max length"); None when `error` is no storage fault."""
    from sqlalchemy import exc

    if not isinstance(error, (optuna.exceptions.StorageInternalError, exc.SQLAlchemyError)):
        return None
    return f"the study's storage failed: {cause(error)}; rerun the same command to resume"


def cause(error: BaseException) -> str:
    """The first line of the database driver's error behind `error` (Optuna's and SQLAlchemy's wrappers off)."""
    from sqlalchemy import exc

    inner: BaseException = error
    while isinstance(inner, optuna.exceptions.StorageInternalError) and inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, exc.DBAPIError) and inner.orig is not None:
        inner = inner.orig
    return first_line(inner)


class StorageGone(UserError):
    """The study's SQLite file was deleted or replaced after the sweep opened it."""

    def __init__(self, file: Path) -> None:
        super().__init__(f"the study's storage {file} is gone (deleted or replaced while the sweep ran): restore "
                         f"the file and rerun the same command to resume")


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other storages and in-memory SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database).absolute() if database and database != ":memory:" else None


def _guard_sqlite_file(engine: Any, file: Path) -> None:
    """Two rules for every later connection to a SQLite study, through SQLAlchemy's engine events:

    - The file is opened, never created (`mode=rw`), and each transaction first checks that it is still the
      file the connection opened: an open connection to a deleted file writes on into a file nobody will read.
    - Every transaction takes the write lock at its start (`BEGIN IMMEDIATE`, SQLAlchemy's recipe for pysqlite).
      Left to itself pysqlite begins a transaction only at the first write, so the read that checks a queued
      trial is still WAITING and the write that claims it were two transactions, and two workers could claim
      the same trial (PostgreSQL's `SELECT ... FOR UPDATE` does this there).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _open_never_create(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs[0] = f"file:{pathname2url(str(file))}?mode=rw"
        cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below says when a transaction starts
        record.info["file_id"] = _file_id(file)

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        if _file_id(file) != connection.info.get("file_id"):
            raise StorageGone(file)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections Optuna opened before the listeners existed


def _file_id(file: Path) -> tuple[int, int] | None:
    try:
        stat = file.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _check_sqlite_file(path: Path) -> None:
    """Refuse a SQLite file that is empty (0 bytes) or holds tables of something other than Optuna."""
    if not path.exists():
        return
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
