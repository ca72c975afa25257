"""A sweep's `hydra.sweeper.worker_init` for the tests: the default warm-up, then each worker process writes, as it
exits, which of the big libraries it had loaded (`$WORKER_PROBE_DIR/<pid>.json`)."""
from __future__ import annotations

import json
import multiprocessing.util
import os
import sys
from pathlib import Path
from typing import Any


def record_modules(task_config: Any) -> None:
    from src.sweep.task import warm_up

    warm_up(task_config)
    folder = Path(os.environ["WORKER_PROBE_DIR"])

    def write() -> None:
        loaded = {name: name in sys.modules for name in ("tensorflow", "jax", "keras", "matplotlib")}
        (folder / f"{os.getpid()}.json").write_text(json.dumps(loaded))

    multiprocessing.util.Finalize(None, write, exitpriority=100)  # run as the forked worker exits (atexit is not)
