"""The local worker processes of one sweep command: started, restarted when they retire or die, stopped with it.

The parent never loads TensorFlow, so forking is safe. A worker stops on SIGINT, SIGTERM or SIGHUP (and on
its parent's death, by the kernel's parent-death signal) after giving its running trial back; the parent
stops its workers on the same signals and gives back the trials of any worker that ended without doing so.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
import threading
import traceback
import uuid
from contextlib import contextmanager, suppress
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UserError, first_line
from . import gpus


class Exit(IntEnum):
    """How a worker process ended (its exit status)."""

    DONE = 0            # the study has no trial left to run
    USER_ERROR = 2      # bad settings or too many failed trials: the message went to the parent
    RETIRED = 75        # ran max_trials_per_worker trials: start a fresh process (keeps memory flat)
    INTERRUPTED = 130   # a signal stopped it; its running trial was given back


# SIGUSR1/SIGUSR2: a cluster's warning before it preempts or times out a job (SLURM's --signal, submitit's).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP", signal.SIGUSR1: "SIGUSR1",
                signal.SIGUSR2: "SIGUSR2"}
INTERRUPTED = "interrupted by Ctrl-C"  # a plain KeyboardInterrupt's reason (a `Stopped` names its signal)
COMMAND_STOPPED = "interrupted: its sweep command was stopped"
COMMAND_DIED = "interrupted: its sweep command died (killed?)"  # a worker's parent-death signal


class Stopped(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, ...) reached this process, or its sweep command asked its workers to stop
    (`reason`); `code` is the exit status to use."""

    def __init__(self, signum: int | None = None, reason: str | None = None) -> None:
        name = SIGNAL_NAMES.get(signum, signal.Signals(signum).name) if signum else ""
        super().__init__(reason or f"interrupted by {name}")
        self.signum, self.reason = signum, reason
        self.code = 128 + (signum or signal.SIGINT)


Handlers = dict[int, Any]


# The stops this process received from `raise_on_signals` to `restore_signals`: signals belong to the
# process, not to a layer.
_RECEIVED: list[Stopped] = []


def raise_on_signals(once: bool, parent: int | None = None) -> Handlers:
    """Turn the stop signals into `Stopped`; with `once`, later ones are ignored so that the clean-up (giving the
    trial back) is not cut short. A worker's `parent`: a signal that comes once it is gone is its parent-death
    signal, and says so. Returns the handlers they replace (for `restore_signals`)."""
    _RECEIVED.clear()

    def handler(signum: int, frame: Any) -> None:
        orphan = parent is not None and os.getppid() != parent
        _RECEIVED.append(Stopped(signum, COMMAND_DIED if orphan else None))
        if once:
            _ignore_signals()
        raise _RECEIVED[-1]

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    return previous


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold stop signals during the block and deliver them at its end, so that a step which must not be cut
    in two (creating a trial and claiming it, a storage transaction) is done whole or not at all.

    Masking the signal is not enough: the kernel hands a process's signal to any thread that does not mask it
    (TensorFlow's, a heartbeat's) and Python then runs the handler in the main thread, inside the block. So
    the block also swaps the handlers for one that only notes the signal, and calls the real ones after it.
    """
    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's alone
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return
    held = _Held()
    held.handlers = {s: signal.signal(s, held) for s in SIGNALS}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        held.open = False  # from here a signal goes through `held` to the real handler, after the held ones
        try:
            held.release()
        finally:
            for s, handler in held.handlers.items():
                if signal.getsignal(s) is held:  # not replaced meanwhile (a `once` handler ignores the rest)
                    signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class _Held:
    """The handler of every stop signal inside `signals_held`: notes them while the block runs."""

    def __init__(self) -> None:
        self.handlers: Handlers = {}
        self.arrived: list[int] = []
        self.open = True

    def __call__(self, signum: int, frame: Any) -> None:
        self.arrived.append(signum)
        if not self.open:  # the block ended: this one goes on now, unless one held in it is still to go first
            self.release()

    def release(self) -> None:
        """Hand the first signal that arrived to its real handler; the handlers' own `once` deals with the rest.
        A Ctrl-C held in the block stays first even when its command's SIGTERM comes as the block ends."""
        if self.arrived:
            first = self.arrived[0]
            self.arrived.clear()
            _deliver(self.handlers[first], first)


def _deliver(handler: Any, signum: int) -> None:
    """What `handler` (as `signal.getsignal` returns it) would have done on `signum`."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def stop_received() -> Stopped | None:
    """The stop a signal asked for, if one came: the library a `Stopped` cut may have turned it into another error
    (TensorFlow did: SystemError, then AssertionError, in a SLURM job cancelled mid-epoch), which must not be told
    as the trial's failure."""
    return Stopped(_RECEIVED[0].signum, _RECEIVED[0].reason) if _RECEIVED else None


def restore_signals(previous: Handlers | None = None) -> None:
    """The handlers `raise_on_signals` replaced, or Python's own (Ctrl-C raises KeyboardInterrupt, the others
    end the process); the stops received so far are handled, and forgotten."""
    _RECEIVED.clear()
    for s in SIGNALS:
        default = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
        handler = (previous or {}).get(s, default)
        signal.signal(s, handler if handler is not None else default)


def _ignore_signals() -> None:
    """Let further stop signals pass with no effect. A Python no-op handler rather than SIG_IGN: a signal
    that arrived together with the first would otherwise raise "Signal N ignored due to race condition"."""
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: None)


Work = Callable[[int, str], Exit]  # (slot, owner id) -> how the worker ended


class Pool:
    """The worker processes of one command, by slot, with their owner ids. Used as a context manager: workers
    started early (`warm_up`) and never put to work are stopped as it ends."""

    def __init__(self, work: Work, give_back: Callable[[str, str], None], max_deaths: int,
                 gpus: list[list[str]] | None = None) -> None:
        """`give_back(owner, reason)` runs after a worker ended abnormally, for the trials it left running.
        `gpus`: each slot's devices (`src.sweep.gpus`), where workers get GPUs."""
        self.work, self.give_back, self.max_deaths, self.gpus = work, give_back, max_deaths, gpus
        self.context = multiprocessing.get_context("fork")
        self.errors = self.context.Queue()
        self.n_workers = 0
        self.running: dict[int, tuple[Any, str]] = {}
        self.warm: dict[int, tuple[Any, str, Any]] = {}  # started early, waiting for `run`: process, owner, go-ahead
        self.deaths = 0
        self.failure: str | None = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def warm_up(self, n_workers: int, warm: Callable[[], None]) -> None:
        """Start the workers of `run(n_workers)` now: each runs `warm` (imports, data) while this process still
        checks the sweep, then waits for `run` to put it to work."""
        self.n_workers = n_workers
        for slot in range(n_workers):
            go, send = self.context.Pipe(duplex=False)
            with signals_held():  # see `start`
                proc, owner = self._fork(slot, _warm_then_work(warm, go, self.work))
                self.warm[slot] = (proc, owner, send)

    def discard(self) -> None:
        """Stop the workers started early that `run` did not take (they hold no trial)."""
        for proc, _, _ in self.warm.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, _, _ in self.warm.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.warm.clear()

    def run(self, n_workers: int) -> None:
        """Keep `n_workers` workers running `work` until each is DONE; restart retired and dead ones. Raises
        `UserError` (a worker's message, or too many deaths) or `Stopped` (a signal), always after every worker
        has exited."""
        raise_on_signals(once=False)
        try:
            if n_workers != self.n_workers:  # those started early are pinned to a share of cores for another count
                self.discard()
            self.n_workers = n_workers
            for slot in range(n_workers):
                if slot in self.warm:
                    proc, owner, send = self.warm.pop(slot)
                    with suppress(BrokenPipeError):  # it died warming up: the wait below sees its exit status
                        send.send(True)
                    self.running[slot] = (proc, owner)
                else:
                    self.start(slot)
            while self.running:
                multiprocessing.connection.wait([p.sentinel for p, _ in self.running.values()])
                for slot, (proc, owner) in list(self.running.items()):
                    if proc.exitcode is not None:
                        del self.running[slot]
                        self.ended(slot, proc.exitcode, owner)
        except Stopped:
            _stop(self.running, self.give_back)
            raise
        finally:
            restore_signals()
        if self.failure is not None:
            raise UserError(self.failure)

    def start(self, slot: int) -> None:
        # Forked with stop signals blocked, which the child inherits: it unblocks them once its own handlers
        # are in place, so no signal finds it half set up. Here, a stop waits until the worker is on record.
        with signals_held():
            self.running[slot] = self._fork(slot, self.work)

    def _fork(self, slot: int, work: Work) -> tuple[Any, str]:
        owner = f"{socket.gethostname()}/{uuid.uuid4().hex[:12]}"
        devices = self.gpus[slot] if self.gpus else None
        proc = self.context.Process(target=_worker_main, args=(work, slot, self.n_workers, owner, self.errors,
                                                               os.getpid(), devices))
        proc.start()
        return proc, owner

    def ended(self, slot: int, code: int, owner: str) -> None:
        """A worker exited with `code`: start another in its slot, or stop them all."""
        if code == Exit.DONE:
            return
        if code == Exit.RETIRED:
            if self.failure is None:
                self.start(slot)
            return
        if code == Exit.USER_ERROR:
            self.failure = self.failure or _message(self.errors)
            _signal_all(self.running)  # the others stop too; their running trials are given back
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        self.give_back(owner, f"its worker process died ({how})")
        if code < 128:  # died, rather than stopped cleanly by a signal sent to it alone
            self.deaths += 1
        if self.deaths > self.max_deaths:
            self.failure = self.failure or f"worker processes died {self.deaths} times (last: {how}); see the trial logs"
            _signal_all(self.running)
        elif self.failure is None:
            print(f"a worker process ended ({how}); its trial is given back; starting another", file=sys.stderr, flush=True)
            self.start(slot)


def _warm_then_work(warm: Callable[[], None], go: Any, work: Work) -> Work:
    """A worker started early: `warm`, then `work` once its command says go (or exit, if it says no or is gone)."""
    def early(slot: int, owner: str) -> Exit:
        try:
            warm()
        except Exception:  # noqa: BLE001 - the worker's own warm-up meets it again and reports it, once the sweep is checked
            pass
        stop = stop_received()  # a stop the import swallowed or turned into another error: later ones are ignored
        if stop is not None:
            raise stop
        try:
            ahead = go.recv()
        except EOFError:  # the command ended without a word
            ahead = False
        return work(slot, owner) if ahead else Exit.DONE
    return early


def _message(errors: Any) -> str:
    try:
        return errors.get(timeout=5)
    except queue.Empty:
        return "a worker process failed"


def _signal_all(running: dict[int, tuple[Any, str]]) -> None:
    for proc, _ in running.values():
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _stop(running: dict[int, tuple[Any, str]], give_back: Callable[[str, str], None]) -> None:
    """Ask every worker to stop (SIGTERM; one already stopping ignores it), wait, give back what is left.
    A worker whose clean-up hangs (a storage that does not answer) is killed after a minute; its trial
    is then recovered by the heartbeat check."""
    _ignore_signals()
    _signal_all(running)
    for proc, owner in running.values():
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
        give_back(owner, COMMAND_STOPPED)


def _worker_main(work: Work, slot: int, n_workers: int, owner: str, errors: Any, parent: int,
                 devices: list[str] | None = None) -> None:
    """A worker process: dies with its parent, stops cleanly on signals, pins itself to its share of cores
    and, where it has GPUs, sees only its own devices. Whatever stops it, it exits with a status and no
    traceback: its stop signals were blocked from the fork (`Pool.start`) until its handlers are in place."""
    try:
        try:
            raise_on_signals(once=True, parent=parent)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # one that came since the fork is raised here
            _die_with_parent(parent)
            if devices is not None:
                gpus.use(devices)
            cores = sorted(os.sched_getaffinity(0))
            if n_workers > 1 and len(cores) >= n_workers:
                os.sched_setaffinity(0, cores[slot::n_workers])
                for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
                    os.environ[var] = str(max(1, len(cores) // n_workers))
            code = work(slot, owner)
        finally:  # its work is over, or cut: a later stop has nothing to give back, and the report must go whole
            _ignore_signals()
    except Stopped as e:
        code = Exit.INTERRUPTED if e.code == 128 + signal.SIGINT else e.code
    except Exception as e:  # a UserError, or the storage or disk failing: one line, via the parent
        errors.put(str(e) if isinstance(e, UserError) else f"{first_line(e)}{_where(e)}")
        errors.close()
        errors.join_thread()
        code = Exit.USER_ERROR
    sys.exit(code)


def _where(error: Exception) -> str:
    """` (at <file>:<line>)`: the innermost frame of this project's code an unexpected error came through."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if f"{os.sep}src{os.sep}" in f.filename] or frames
    return f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno})" if ours else ""


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG), so no worker outlives it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the parent's signal handlers still stop its workers
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(Exit.INTERRUPTED)
