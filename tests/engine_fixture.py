"""What the session fixtures of real engines (SLURM, Dask, Ray) share: started once, failing the tests (never
skipping them) with the cause when the engine cannot start, stopped at the end; and the processes an engine
left, found from /proc to be stopped by PID."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


def serve(name: str, start: Callable[..., Any], *args: Any) -> Iterator[Any]:
    """The body of a session fixture: `start(*args)`'s cluster, stopped (its `stop()`) after the session."""
    problem = None
    try:
        cluster = start(*args)
    except Exception as err:  # noqa: BLE001 - every cause must show, with the log tails
        problem = f"could not start {name}: {type(err).__name__}: {err}"
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def descendants(parents: list[int]) -> list[int]:
    """Every process under `parents` (from /proc)."""
    ppid = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], list(parents)
    while frontier:
        frontier = [pid for pid, parent in ppid.items() if parent in frontier]
        found += frontier
    return found
