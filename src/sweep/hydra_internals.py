"""Adapter: every private Hydra API the sweeper uses, and why, in one file (a Hydra upgrade reads this one).

A sweeper plugin runs its jobs through `hydra.core.utils.run_job` as Hydra's own launchers do; reading what
the task returned, and setting plain values on a composed config the way Hydra's loader does, have no
public API in Hydra 1.3. One more lives with the entry points, which run before any sweep: `src/cli.py` wraps
`hydra._internal.utils.run_and_report` to print composition errors in one line.
"""
from __future__ import annotations

from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, configure_log, run_job
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


def apply_overrides(overrides: list[Override], cfg: DictConfig) -> None:
    """Set parsed value overrides on a composed config exactly as Hydra's loader does (types checked)."""
    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def overrides_dirname(task: list[Override], dirname: Any) -> str:
    """`hydra.job.override_dirname` for the task overrides, with the job config's separators and exclusions."""
    return get_overrides_dirname(overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep,
                                 exclude_keys=dirname.exclude_keys)


def run_task(hydra_context: HydraContext, task_function: TaskFunction, job: DictConfig, master: DictConfig) -> Any:
    """Run the task as Hydra job `job` (its folder, its logs, its .hydra files), as Hydra's basic launcher does:
    what the task returned, or the exception it raised (Hydra keeps it as the return value)."""
    ret: JobReturn = run_job(hydra_context=hydra_context, task_function=task_function, config=job,
                             job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    configure_log(master.hydra.hydra_logging, master.hydra.verbose)  # as Hydra's launcher does
    return returned(ret)


def returned(ret: JobReturn) -> Any:
    """What a job's task returned, or the exception it raised (`ret.return_value` would raise it)."""
    return ret._return_value
