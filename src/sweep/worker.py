"""What one worker does, wherever it runs (a local process today): warm up, drain the search, then its share
of the confirmation runs, or, without confirmation, the best trial's one replay on the test set."""
from __future__ import annotations

import sys

from hydra.utils import get_method

from .. import PACKAGE
from ..errors import UserError
from .batch_runner import BatchRunner
from .confirm import Confirmation
from .context import Sweep
from .loop import drain
from .processes import Exit, stop_received
from .search import Search
from .storage import failure


def work(sweep: Sweep, slot: int, owner: str) -> Exit:
    """Returns DONE when the study has no trial left (slot 0 then replays the best trial on the test set), RETIRED
    after `max_trials_per_worker` trials trained alone or batched groups (a fresh process takes over).
    A storage fault leaves as a `UserError` naming its cause; any error after a stop signal, as the stop (a library
    the signal cut may have turned it into another error), wherever the worker runs."""
    try:
        return _work(sweep, slot, owner)
    except Exception as e:
        stop = stop_received()
        if stop is not None:
            raise stop from e
        reason = failure(e)
        if reason is None:
            raise
        raise UserError(sweep.storage.mask(reason)) from None


def _work(sweep: Sweep, slot: int, owner: str) -> Exit:
    s = sweep.settings
    warm_up(sweep)
    study = sweep.open()
    sweep.runner.live = s.n_workers == 1 and sys.stdout.isatty()
    batcher = BatchRunner(sweep.runner, sweep.task_config) if s.batch_trials > 1 and "trainer" in sweep.task_config else None
    if drain(study, Search(sweep, batcher), owner, s.grace, s.heartbeat_interval) == "retired":
        return Exit.RETIRED
    if s.confirm.top_k:  # the top k retrained with more seeds; the winner tested once per seed
        Confirmation(sweep).work(owner, batcher)
    elif slot == 0:  # retirement happens only for a trial to run: the replay needs no fresh process
        sweep.runner.test_best(study, list(s.test_overrides))
    return Exit.DONE


def warm_up(sweep: Sweep) -> None:
    """`worker_init` (this project's imports Keras and reads the data): once per process before its first trial,
    a second call finding everything loaded."""
    init = sweep.settings.worker_init
    if init:
        get_method(PACKAGE + init if init.startswith(".") else init)(sweep.task_config)
