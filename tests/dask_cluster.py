"""A real Dask distributed cluster for the test session: `dask scheduler` and three `dask worker`s (one thread each,
under their nannies) on 127.0.0.1, children of this process, stopped by PID at teardown. The session fixture
`dask_cluster` (import it in conftest.py) fails the tests with the logs' tails when it cannot start, never skips."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine_fixture import serve

WORKERS = 3
START_TIMEOUT = 90
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DaskCluster:
    base: Path
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def client(self):  # noqa: ANN201 - distributed.Client, imported lazily
        from distributed import Client

        return Client(self.address, timeout=30)

    def processing(self) -> list[str]:
        """Keys of the tasks the workers run now."""
        with self.client() as client:
            return [key for keys in client.processing().values() for key in keys]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted(self.base.glob("*.log")))

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dask(base: Path) -> DaskCluster:
    port = _free_port()
    cluster = DaskCluster(base, f"tcp://127.0.0.1:{port}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    cluster.processes.append(subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                              stderr=open(base / "scheduler.log", "w")))
    for i in range(WORKERS):
        folder = base / f"worker{i}"
        folder.mkdir(parents=True, exist_ok=True)
        cluster.processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.address, "--nthreads", "1", "--no-dashboard",
             "--host", "127.0.0.1", "--local-directory", str(folder), "--name", f"w{i}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(base / f"worker{i}.log", "w")))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.processes):
            break
        try:
            with cluster.client() as client:
                if len(client.scheduler_info(n_workers=-1)["workers"]) == WORKERS:
                    return cluster
        except OSError:
            pass
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"the Dask cluster did not come up with {WORKERS} workers\n{cluster.logs()}")


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> DaskCluster:
    yield from serve("Dask", start_dask, tmp_path_factory.mktemp("dask"))
