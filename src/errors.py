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
