"""A real Ray cluster for the test session: a head and a second node (one CPU each) on 127.0.0.1, run by one
process of the Ray venv (`ray.cluster_utils.Cluster`), stopped by PID at teardown. The session fixture
`ray_cluster` (import it in conftest.py) fails the tests with the logs' tails when it cannot start, never skips.

hydra-ray-launcher pins cloudpickle<3 and Dask needs 3, so they cannot share a venv: Ray and its launcher live
in `.venv-ray/` beside `.venv/` (made here once, from the package registry, as `pip install` does), which sees
`.venv`'s packages after its own. Sweeps on Ray run with its python; the project comes from the repository."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine_fixture import descendants, serve

ROOT = Path(__file__).resolve().parents[1]
RAY_VENV = ROOT / ".venv-ray"
RAY_PACKAGES = ["hydra-ray-launcher==1.2.2", "cloudpickle<3"]
START_TIMEOUT = 120
# Ray swaps 127.0.0.1 for the machine's address (and then cannot reach a cluster bound to 127.0.0.1) unless told
# that the cluster is this machine alone; the cluster, the sweep command and the jobs all read it.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
HEAD = """
import signal, sys
from pathlib import Path
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "node_ip_address": "127.0.0.1"})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
signal.signal(signal.SIGTERM, lambda *_: (cluster.shutdown(), sys.exit(0)))
Path(sys.argv[1]).write_text(cluster.address)
signal.pause()
"""


def ray_python() -> Path:
    """The Ray venv's python, the venv made first if missing or half made (its `ready` file comes last: a venv's
    python exists long before pip has installed Ray into it, and a CI run once started the cluster then).
    `.ci/run` makes it before pytest starts, so no two test processes make it at once."""
    python = RAY_VENV / "bin" / "python"
    if not (RAY_VENV / "ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(RAY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *RAY_PACKAGES], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "keras-sweep-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        (RAY_VENV / "ready").write_text("")
    return python


@dataclass
class RayCluster:
    base: Path
    python: Path
    address: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    def running_jobs(self) -> list[int]:
        """PIDs of Ray worker processes running a launcher job now (Ray titles them `ray::_run_job`)."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if cmdline.read_bytes().startswith(b"ray::_run_job"):
                    found.append(int(cmdline.parent.name))
            except OSError:
                continue
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted(self.base.glob("*.log")))

    def stop(self) -> None:
        if self.process is None:
            return
        family = [self.process.pid, *descendants([self.process.pid])]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Cluster.shutdown(): every node's processes
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in family:  # whatever the shutdown left, by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def start_ray(base: Path) -> RayCluster:
    # Ray's session folder holds Unix sockets, whose paths must stay short: not under pytest's tmp folders
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp)}  # jobs import src from here
    cluster = RayCluster(base, ray_python(), env=env)
    address = base / "address"
    cluster.process = subprocess.Popen([str(cluster.python), "-c", HEAD, str(address)], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=open(base / "head.log", "w"))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and cluster.process.poll() is None:
        if address.exists() and address.read_text():
            cluster.address = address.read_text()
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"the Ray cluster did not come up\n{cluster.logs()}")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, data_dir) -> RayCluster:
    """The cluster, started with the data folder in its environment: Ray's jobs have the environment of the
    nodes they run on, not the sweep command's."""
    yield from serve("Ray", start_ray, tmp_path_factory.mktemp("ray"))
