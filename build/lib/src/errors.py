"""The one exception type for bad input, and the entry points' way of reporting it in one line."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad config, data or search space; the message names the bad value and what is allowed."""


def exit_on_user_error(task: Callable[..., T]) -> Callable[..., T]:
    """Turn a `UserError` from `task` into a one-line `error: ...` and exit status 2, no traceback."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as e:
            exit_with(e)

    return wrapper


def exit_with(error: UserError) -> None:
    """Print `error: <message>` on one line to stderr and exit with status 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)


def first_line(error: BaseException, typed: bool = True) -> str:
    """An exception as one line: `Type: first line of its message` (just the line when not `typed`, and for a
    `UserError`, whose message is already written for the user)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if isinstance(error, UserError) or not typed:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
