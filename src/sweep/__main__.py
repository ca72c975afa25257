"""`python -m src.sweep -m [sweep=NAME] [overrides]`: an Optuna search over the training config.

The search is the `keras_optuna` Hydra sweeper (hydra_plugins/, engine in src/sweep/engine.py); each
trial runs `src.sweep.task.run` on its composed config.
"""
from __future__ import annotations

import gc
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from .. import CONFIG_DIR, command
from ..cli import one_line_errors
from ..schema import register
from . import task

register()  # the config groups' typed schemas, before Hydra composes
one_line_errors()  # a mistyped key or option: one line with the closest name, not Hydra's report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sweep")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Train the trial's network; return all its metrics (the sweeper picks the objectives)."""
    return task.run(cfg)


def needs_multirun(argv: list[str]) -> bool:
    """A search runs only in Hydra's multirun mode; without `-m` (and without a help or --cfg flag) Hydra
    would train the default config once, which is never what `src.sweep` is asked for."""
    multirun = any(a in ("-m", "--multirun") or a.startswith("hydra.mode=") for a in argv)
    return not multirun and not any(a.startswith("-") for a in argv)


def without_multirun_for_info(argv: list[str]) -> list[str]:
    """`-m --cfg job` as the help's "-m is required" suggests: Hydra takes one of -m, --cfg, --info, so -m goes
    when an info flag is given (Hydra would raise "Only one of --run, --multirun, --cfg ... can be specified")."""
    info = any(a in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc") or a.startswith(("--cfg=", "--info="))
               for a in argv)
    return [a for a in argv if a not in ("-m", "--multirun")] if info else argv


if __name__ == "__main__":
    sys.argv[1:] = without_multirun_for_info(sys.argv[1:])
    if needs_multirun(sys.argv[1:]):
        print(f"error: {command('sweep')} searches only with -m: {command('sweep')} -m [sweep=NAME] [overrides] "
              f"(to train one network: {command('train')} [overrides])", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # before the command's own handlers (its first seconds): nothing runs yet
        print("interrupted by Ctrl-C while the sweep started: no trial ran; run the same command again to start or "
              "resume it", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        gc.freeze()  # no collection over Hydra's, Optuna's and pandas's objects as Python exits
