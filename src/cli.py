"""What the entry points share: the installed package's `keras-sweep` command, and Hydra's composition errors
(a mistyped key, a missing config option, a value of the wrong type, an override that does not parse) as one
`error:` line naming the bad value, what is allowed and the closest name, instead of Hydra's multi-line report."""
from __future__ import annotations

import difflib
import os
import runpy
import sys
from typing import Any, Callable

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from . import PACKAGE

COMMANDS = {"train": "train one network", "sweep": "run a sweep (with -m)", "analyze": "analyse sweep folders",
            "bench": "measure speed"}


def main() -> None:
    """`keras-sweep COMMAND [args]`, the installed package's console script: runs `python -m keras_sweep.COMMAND
    [args]` in this process, as Python's -m does (runpy)."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        asked = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] not in ("-h", "--help") else None
        given = f"{asked}: no such command{_closest(asked, list(COMMANDS))}; " if asked else ""
        print(f"usage: keras-sweep COMMAND [args]; {given}commands: "
              + "; ".join(f"{name} ({what})" for name, what in COMMANDS.items()), file=sys.stderr)
        sys.exit(0 if given == "" and len(sys.argv) > 1 else 2)
    name = sys.argv.pop(1)
    sys.argv[0] = f"keras-sweep {name}"
    runpy.run_module(f"{PACKAGE}.{name}", run_name="__main__", alter_sys=True)


def one_line_errors() -> None:
    """Report composition errors of the coming `@hydra.main` run in one line, exit status 2 (as for any bad
    input); every other error goes Hydra's way. Hydra has no hook for this: its `run_and_report`, which prints
    them, is wrapped (HYDRA_FULL_ERROR=1 still shows Hydra's own report)."""
    import hydra._internal.utils as hydra_utils

    report = hydra_utils.run_and_report
    if getattr(report, "one_line", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def composed() -> Any:
            try:
                return func()
            except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"error: {composition_error(e)}", file=sys.stderr, flush=True)
                sys.exit(2)
        return report(composed)

    run_and_report.one_line = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def composition_error(error: Exception) -> str:
    """One line for a Hydra composition error: what was given, what is allowed, the closest name."""
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; allowed: {', '.join(error.options)}{_closest(option, error.options)}"
    cause = error.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and cause.parent_node is not None:
        where, _, key = str(cause.full_key).rpartition(".")
        keys = [str(k) for k in cause.parent_node.keys()]
        return (f"{cause.full_key}: no key {key!r} in {where or 'the config'}{_closest(key, keys, where)}; "
                f"its keys: {', '.join(keys)}")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {_lines(str(getattr(cause, 'msg', '') or cause).splitlines()[0])}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: {_lines(error.message)}"
    return _lines(str(error))


def _closest(name: str, names: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {f'{prefix}.' if prefix else ''}{match[0]}?)" if match else ""


def _lines(text: str) -> str:
    """A multi-line message as one line, Hydra's advice about HYDRA_FULL_ERROR dropped."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return "; ".join(lines)
