"""A worker_init for tests: records the environment a worker process sees (its GPUs, memory settings) in a file
named after its pid under RECORD_DIR, then warms the worker up as the sweep's default worker_init does."""
from __future__ import annotations

import json
import os
from pathlib import Path

from src.sweep.task import warm_up

KEYS = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")


def record(cfg) -> None:  # noqa: ANN001 - the task's composed config
    Path(os.environ["RECORD_DIR"], f"{os.getpid()}.json").write_text(json.dumps({k: os.environ.get(k) for k in KEYS}))
    warm_up(cfg)
