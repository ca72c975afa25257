"""A real PostgreSQL server for the test session, from the binaries that the `pgserver` wheel ships.

`start_postgres(base_dir)` runs `initdb`, then `postgres` (a child of this process) on 127.0.0.1
at a free port, with scram-sha-256 password auth over TCP (no Unix socket), and creates the role `sweeper` (LOGIN,
CREATEDB, with a password) and its database `sweeps`. `PostgresServer.new_database(name)` makes a
fresh database owned by `sweeper` and returns its SQLAlchemy URL; `.stop()` stops the server.

PostgreSQL refuses to run as root: under euid 0 the server binaries run as the unprivileged system
user `pgtest` (made with `useradd` on first use; `nobody` when that fails), the server's folder is
chowned to it, and the folders above it get the traverse bit for others (o+x, never read) so it
can reach it. When that user cannot run the binaries where the wheel put them (a venv under a
private folder), they are copied next to the data folder first.

The session fixture `postgres` (import it in conftest.py) starts one server under
tmp_path_factory and stops it at teardown; when the server cannot start it fails the tests with the
server's log tail, never skips them.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "sweeper"
DATABASE = "sweeps"
SUPERUSER = "postgres"
PG_SYSTEM_USER = "pgtest"
START_TIMEOUT = 60  # seconds to wait for the server to accept connections
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStartError(RuntimeError):
    """The server could not be set up or started; the message ends with the server's log tail."""


@dataclass
class PostgresServer:
    """A running server. Neither password appears in repr()."""

    port: int
    password: str = field(repr=False)
    data_dir: Path
    log_path: Path
    bin_dir: Path
    run_as: str | None = None  # the system user running the server (None: the current user)
    host: str = "127.0.0.1"
    user: str = USER
    database: str = DATABASE
    superuser_password: str = field(default="", repr=False)
    _stopped: bool = field(default=False, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `sweeps` database, password included."""
        return self.url_for(self.database)

    def url_for(self, database: str, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg2://{self.user}:{pw}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None, password: str | None = None, **kwargs):
        """A psycopg2 connection as `sweeper` (wrong `password` on purpose to test auth)."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password if password is None else password,
                                dbname=database or self.database, connect_timeout=10, **kwargs)

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database owned by `sweeper`; return its URL. Default name: unique."""
        name = name or f"db_{secrets.token_hex(6)}"
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _ (max 63)")
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        finally:
            conn.close()
        return self.url_for(name)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open client connections are cut) and reap it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self.process
        if proc is None:
            return
        # SIGINT: fast shutdown; SIGQUIT: immediate shutdown; SIGKILL: last resort.
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        if proc.poll() is None:
            proc.wait(timeout=10)


def start_postgres(base_dir: Path, password: str | None = None) -> PostgresServer:
    """initdb + start a server in base_dir/pg on 127.0.0.1:<free port>; raise PostgresStartError."""
    base_dir = Path(base_dir).resolve()
    password = password or f"s3cret-pw-{secrets.token_hex(8)}"
    superuser_password = secrets.token_hex(16)
    run_as = _server_user() if os.geteuid() == 0 else None
    root = base_dir / "pg"
    root.mkdir(parents=True, exist_ok=False)
    if run_as:
        _make_traversable(root)
        _chown(root, run_as)
    root.chmod(0o700)
    log_path = root / "server.log"
    bin_dir = _bin_dir(root, run_as)
    data_dir = root / "data"

    pwfile = root / "superuser.pw"
    pwfile.write_text(superuser_password + "\n")
    pwfile.chmod(0o600)
    if run_as:
        _chown(pwfile, run_as)
    try:
        result = _run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                       "--no-sync", "--no-instructions"], run_as, check=False, timeout=120)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresStartError(f"initdb failed (exit {result.returncode}):\n{result.output[-3000:]}")

    server = None
    for attempt in range(3):  # a port picked as free may be taken before the server binds it
        port = _free_port()
        server = PostgresServer(port=port, password=password, data_dir=data_dir, log_path=log_path,
                                bin_dir=bin_dir, run_as=run_as, superuser_password=superuser_password)
        server.process = _spawn_server(server)
        problem = _wait_ready(server, START_TIMEOUT)
        if problem is None:
            break
        server.stop()
        if "already in use" not in _tail(log_path, 20) or attempt == 2:
            raise PostgresStartError(f"the server did not start: {problem}\n"
                                     f"--- {log_path} (tail) ---\n{_tail(log_path, 40)}")
    assert server is not None
    atexit.register(server.stop)  # in case the fixture's teardown never runs
    try:
        _create_role_and_database(server)
    except Exception as err:
        server.stop()
        raise PostgresStartError(f"setting up role {USER} / database {DATABASE} failed: "
                                 f"{type(err).__name__}: {err}\n--- {log_path} (tail) ---\n{_tail(log_path, 40)}") from err
    return server


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> PostgresServer:
    """A real PostgreSQL 16 on 127.0.0.1 for the session; fails (never skips) when it can't start."""
    problem = None
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except Exception as err:  # noqa: BLE001 - every cause must show, with the log tail
        problem = f"could not start PostgreSQL: {type(err).__name__}: {err}"
    if problem:  # outside the except block, so the message shows once
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------

class _Result:
    def __init__(self, returncode: int, output: str):
        self.returncode, self.output = returncode, output


def _run(cmd: list[str], run_as: str | None, check: bool = True, timeout: float = 60) -> _Result:
    """Run a short command (as run_as when set), stdout+stderr together in a temp file."""
    env, kwargs = _child_env(run_as)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd="/", timeout=timeout, text=True, **kwargs)
        out.seek(0)
        result = _Result(proc.returncode, out.read())
    if check and result.returncode != 0:
        raise PostgresStartError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.output[-3000:]}")
    return result


def _spawn_server(server: PostgresServer) -> subprocess.Popen:
    """`postgres` as a child of this process (reaped here, never left a zombie), logging to
    server.log; it gets a fast-shutdown signal should this process die without stop()."""
    cmd = [str(server.bin_dir / "postgres"), "-D", str(server.data_dir), "-p", str(server.port),
           "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
           "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "max_connections=200"]
    env, kwargs = _child_env(server.run_as)
    with open(server.log_path, "ab") as log:
        if server.run_as:
            _chown(server.log_path, server.run_as)
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd="/", preexec_fn=_die_with_parent(), **kwargs)


def _die_with_parent():
    """preexec_fn: PR_SET_PDEATHSIG=SIGINT (fast shutdown) in the child, set after Popen dropped
    root (a credential change would clear it); None where libc's prctl is not to be had."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGINT), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _wait_ready(server: PostgresServer, timeout: float) -> str | None:
    """None once the superuser can log in over TCP; else what went wrong."""
    import psycopg2

    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        code = server.process.poll() if server.process else None
        if code is not None:
            return f"postgres exited with status {code}"
        try:
            psycopg2.connect(host=server.host, port=server.port, user=SUPERUSER,
                             password=server.superuser_password, dbname="postgres", connect_timeout=5).close()
            return None
        except psycopg2.OperationalError as err:
            last = str(err).strip()
        time.sleep(0.1)
    return f"not accepting connections after {timeout} s (last error: {last})"


def _child_env(run_as: str | None) -> tuple[dict, dict]:
    """Environment (no PG* variables, C locale) and Popen arguments that drop root to run_as."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    kwargs: dict = {}
    if run_as:
        pw = pwd.getpwnam(run_as)
        kwargs = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        env.update(HOME="/", USER=run_as, LOGNAME=run_as)
    return env, kwargs


def _server_user() -> str:
    """The unprivileged system user that runs the server under root: pgtest, made when missing."""
    for attempt in range(2):
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
            return PG_SYSTEM_USER
        except KeyError:
            if attempt == 0:  # a concurrent session may add it at the same time: check again after
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                "--shell", "/usr/sbin/nologin", "--user-group", PG_SYSTEM_USER],
                               stdin=subprocess.DEVNULL, capture_output=True, check=False)
    pwd.getpwnam("nobody")
    return "nobody"


def _chown(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _make_traversable(path: Path) -> None:
    """Give others the search bit (o+x, not read) on every folder above path that lacks it."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod((mode & 0o7777) | 0o001)


def _bin_dir(root: Path, run_as: str | None) -> Path:
    """pgserver's pginstall/bin; a copy under root when run_as cannot execute it in place."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresStartError("the pgserver package is not installed: pip install -e '.[test]'")
    package = Path(list(spec.submodule_search_locations)[0])
    bin_dir = package / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresStartError(f"{bin_dir} has no postgres binary")
    if run_as is None or _runs(bin_dir, run_as):
        return bin_dir
    # The binaries find libpq through RPATH $ORIGIN/../../../pgserver.libs: keep that layout.
    copy = root / "dist"
    shutil.copytree(package / "pginstall", copy / "pgserver" / "pginstall", symlinks=True)
    libs = package.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / "pgserver.libs", symlinks=True)
    for dirpath, dirnames, filenames in os.walk(copy):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            p.chmod(p.stat().st_mode | 0o055 if p.is_dir() or os.access(p, os.X_OK) else
                    p.stat().st_mode | 0o044)
    copy.chmod(0o755)
    bin_dir = copy / "pgserver" / "pginstall" / "bin"
    if not _runs(bin_dir, run_as):
        raise PostgresStartError(f"user {run_as} cannot run {bin_dir}/initdb or postgres")
    return bin_dir


def _runs(bin_dir: Path, run_as: str) -> bool:
    try:
        return all(_run([str(bin_dir / exe), "--version"], run_as, check=False, timeout=30).returncode == 0
                   for exe in ("initdb", "postgres"))
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_role_and_database(server: PostgresServer) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=server.host, port=server.port, user=SUPERUSER,
                            password=server.superuser_password, dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s").format(sql.Identifier(USER)),
                        (server.password,))
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE),
                                                                     sql.Identifier(USER)))
    finally:
        conn.close()


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable or missing)"
