"""GPUs for local workers (`hydra.sweeper.gpus_per_worker`): each worker process sees its own slice of this
machine's visible devices (`CUDA_VISIBLE_DEVICES`), and TensorFlow and JAX take GPU memory as they need it
instead of all of it at start. Launcher jobs keep the devices their engine assigns (SLURM's `--gres`)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

# Grow GPU memory as needed: two workers' frameworks would otherwise each try to take a whole device.
MEMORY_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def visible() -> list[str]:
    """The devices this process may use: CUDA_VISIBLE_DEVICES where set, else the NVIDIA driver's list."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def slices(per_worker: int, n_workers: int) -> list[list[str]]:
    """Each worker's devices, `per_worker` apiece, for at most `n_workers` workers (fewer, with a note, when
    the devices run out); a one-line error when there are not enough for one."""
    devices = visible()
    if len(devices) < per_worker:
        source = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ \
            else "the NVIDIA driver's list"
        raise UserError(f"hydra.sweeper.gpus_per_worker={per_worker}: this machine has {len(devices)} visible GPU(s) "
                        f"({source}); use a smaller value, or 0 for the CPU")
    n = min(n_workers, len(devices) // per_worker)
    if n < n_workers:
        print(f"note: hydra.sweeper.n_workers={n_workers} capped at {n}: {len(devices)} GPU(s), {per_worker} per worker",
              flush=True)
    return [devices[i * per_worker:(i + 1) * per_worker] for i in range(n)]


def use(devices: list[str]) -> None:
    """In a worker process, before any framework loads: these devices only, memory taken as needed."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    os.environ.update(MEMORY_ENV)
