"""A real single-node SLURM cluster for the test session, from Debian's `slurmctld`, `slurmd` and `slurm-client`.

`start_slurm(base_dir)` writes a slurm.conf (auth/none and cred/none: no munge daemon; proctrack/linuxproc,
task/none; state, spool and logs under `base_dir`; controller and node on 127.0.0.1 at free ports), starts
`slurmctld -D` and `slurmd -D` (children of this process) and waits for the node to be idle. The node
declares 4 CPUs whatever this machine has (`SlurmdParameters=config_overrides`), so that 3 one-CPU jobs
run at once on 2 cores. Commands reach it with `SLURM_CONF` in their environment (`cluster.env`).

The session fixture `slurm` (import it in conftest.py) starts one and stops both daemons by PID at
teardown; when SLURM is not installed or cannot start, it fails the tests with the daemons' log tails,
never skips them (`.ci/run` installs the packages).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine_fixture import descendants, serve

START_TIMEOUT = 60


class SlurmStartError(RuntimeError):
    """The daemons could not be started; the message ends with their log tails."""


@dataclass
class SlurmCluster:
    base: Path
    node: str
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})

    def jobs(self, name: str | None = None) -> list[str]:
        """Job ids in the queue (pending or running), of jobs named `name` if given."""
        args = ["squeue", "--noheader", "--format=%i"] + ([f"--name={name}"] if name else [])
        return self.run(*args).stdout.split()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                         for p in sorted(self.base.glob("*.log")))

    def stop(self) -> None:
        """Stop the daemons, then any job step they leave behind (slurmstepd and its processes outlive slurmd)."""
        steps = descendants([proc.pid for proc in self.processes])
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in steps:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_slurm(base: Path) -> SlurmCluster:
    for exe in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(exe) is None:
            raise SlurmStartError(f"{exe} is not installed (apt-get install slurmctld slurmd slurm-client)")
    node = socket.gethostname()
    ctld_port, slurmd_port = _free_ports(2)
    for folder in ("state", "spool"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(base, node)
    cluster.conf.write_text(f"""\
ClusterName=keras-sweep-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
MinJobAge=5
SlurmdParameters=config_overrides
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmdPidFile={base / 'slurmd.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdLogFile={base / 'slurmd.log'}
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, **cluster.env}
    for command in (["slurmctld", "-D", "-i", "-f", str(cluster.conf)], ["slurmd", "-D", "-N", node, "-f", str(cluster.conf)]):
        cluster.processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=open(base / f"{command[0]}.stderr.log", "w")))
        time.sleep(0.5)
    deadline = time.monotonic() + START_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.processes):
            break
        state = cluster.run("sinfo", "--noheader", "--format=%t").stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise SlurmStartError(f"the node did not become idle (state {state!r})\n{cluster.logs()}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A single-node SLURM on 127.0.0.1 for the session; fails (never skips) when it can't start."""
    yield from serve("SLURM", start_slurm, tmp_path_factory.mktemp("slurm"))
