"""The worker processes of a command: stop signals held around a storage step, whichever thread the kernel hands
them to; workers started early warm up while the command checks the sweep, then work, or are sent away."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from src.sweep.processes import Exit, Pool, Stopped, _Held, raise_on_signals, restore_signals, signals_held


def test_a_signal_another_thread_receives_waits_for_the_end_of_the_held_block():
    """TensorFlow's and the heartbeat's threads do not mask the stop signals; a Ctrl-C the kernel gives one of
    them must still not cut a storage transaction in two (it left SQLite locked and the worker hung a minute)."""
    done = threading.Event()
    other = threading.Thread(target=done.wait)  # started before the block, so it does not mask the signals
    other.start()
    previous = raise_on_signals(once=False)
    handler = signal.getsignal(signal.SIGINT)
    finished = []
    try:
        with pytest.raises(Stopped, match="^interrupted by Ctrl-C$"):
            with signals_held():
                signal.pthread_kill(other.ident, signal.SIGINT)
                for _ in range(200):  # Python would run the handler at any of these steps
                    time.sleep(0.001)
                finished.append("the held block")
        assert finished == ["the held block"]
        assert signal.getsignal(signal.SIGINT) is handler  # and the next signal stops at once again
        with pytest.raises(Stopped, match="^interrupted by SIGTERM$"):
            signal.pthread_kill(other.ident, signal.SIGTERM)
            for _ in range(200):
                time.sleep(0.001)
    finally:
        done.set()
        other.join()
        restore_signals(previous)


def test_a_ctrl_c_held_in_the_block_goes_first_when_the_commands_sigterm_comes_as_the_block_ends():
    """Ctrl-C reaches a worker and its command at once; the command then sends its workers SIGTERM. A worker that
    held the Ctrl-C in a storage step must report Ctrl-C even when the SIGTERM lands in the moment the block ends
    (seen once on a loaded machine: the trial said "interrupted by SIGTERM")."""
    previous = raise_on_signals(once=True)
    try:
        held = _Held()
        held.handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        held(signal.SIGINT, None)  # in the block: noted
        held.open = False          # the block ends, and before the held Ctrl-C is handed on the SIGTERM comes
        with pytest.raises(Stopped, match="^interrupted by Ctrl-C$"):
            held(signal.SIGTERM, None)
        assert held.arrived == []
    finally:
        restore_signals(previous)


def test_a_stop_the_interrupted_library_turned_into_another_error_is_never_told_as_a_failed_trial():
    """CI, 2026-12-06: a SLURM job cancelled mid-epoch; TensorFlow's nest_util turned the handler's `Stopped` into
    SystemError, then AssertionError, and the trial was told FAIL (counted) instead of given back."""
    import optuna
    from optuna.trial import TrialState

    from src.sweep.outcome import TrialOutcome, tell

    study = optuna.create_study()
    trial = study.ask()
    previous = raise_on_signals(once=True)
    try:
        try:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except KeyboardInterrupt:
                raise AssertionError from None  # what the library made of it
        except AssertionError as e:
            outcome = TrialOutcome.failed(e)
        with pytest.raises(Stopped, match="interrupted by SIGTERM"):
            tell(study, trial, outcome, ["value"], "nowhere")
    finally:
        restore_signals(previous)
    assert study.trials[0].state == TrialState.RUNNING  # not FAIL: the claim gives it back, not counted
    later = study.ask()  # once the handlers are restored the stop is handled: a later failure is told as one
    assert tell(study, later, TrialOutcome.failed(ValueError("boom")), ["value"], "nowhere").state == TrialState.FAIL


def _note(folder: Path, what: str) -> None:
    (folder / f"{what}-{os.getpid()}").write_text(json.dumps(sorted(os.sched_getaffinity(0))))


def _pids(folder: Path, what: str) -> set[int]:
    return {int(p.name.rsplit("-", 1)[1]) for p in folder.glob(f"{what}-*")}


def test_workers_started_early_warm_up_then_do_the_work(tmp_path):
    """The command's workers import Keras and read the data while it still checks the sweep and opens the study;
    the same processes then work, each once, and end DONE."""
    def work(slot: int, owner: str) -> Exit:
        _note(tmp_path, "work")
        return Exit.DONE

    with Pool(work, lambda owner, reason: None, max_deaths=0) as pool:
        pool.warm_up(2, lambda: _note(tmp_path, "warm"))
        pool.run(2)
    assert len(_pids(tmp_path, "warm")) == 2
    assert _pids(tmp_path, "work") == _pids(tmp_path, "warm")


def test_workers_started_early_for_another_count_are_sent_away(tmp_path):
    """Pinned to half the cores each for two workers, they would leave a core idle when the study has one trial
    left: the command stops them and starts the one it needs; and a command that ends before its workers are
    needed (a refused sweep) leaves none running."""
    def work(slot: int, owner: str) -> Exit:
        _note(tmp_path, "work")
        return Exit.DONE

    with Pool(work, lambda owner, reason: None, max_deaths=0) as pool:
        pool.warm_up(2, lambda: _note(tmp_path, "warm"))
        warm = [proc for proc, _, _ in pool.warm.values()]
        pool.run(1)
    assert all(proc.exitcode is not None for proc in warm)
    assert len(_pids(tmp_path, "work")) == 1 and not _pids(tmp_path, "work") & _pids(tmp_path, "warm")
    assert json.loads(next(tmp_path.glob("work-*")).read_text()) == sorted(os.sched_getaffinity(0))

    with pytest.raises(RuntimeError, match="the sweep was refused"):
        with Pool(work, lambda owner, reason: None, max_deaths=0) as pool:
            pool.warm_up(1, lambda: time.sleep(30))  # still warming up when the command gives up
            warm = [proc for proc, _, _ in pool.warm.values()]
            raise RuntimeError("the sweep was refused")
    assert all(proc.exitcode is not None for proc in warm)
    assert len(_pids(tmp_path, "work")) == 1


def test_a_worker_stopped_while_it_warms_up_exits_even_when_the_import_turned_the_stop_into_another_error():
    """A refused sweep stops its workers while they import TensorFlow, which can turn the stop into SystemError;
    the worker must still exit on that one signal (it ignores later ones), not wait for work that never comes."""
    def import_that_converts_a_stop() -> None:
        try:
            time.sleep(30)
        except KeyboardInterrupt as e:
            raise SystemError("error return without exception set") from e  # as TensorFlow did mid-import

    with pytest.raises(RuntimeError, match="the sweep was refused"):
        with Pool(lambda slot, owner: Exit.DONE, lambda owner, reason: None, max_deaths=0) as pool:
            pool.warm_up(1, import_that_converts_a_stop)
            warm = [proc for proc, _, _ in pool.warm.values()]
            time.sleep(0.5)  # the worker is in its import
            raise RuntimeError("the sweep was refused")
    assert [proc.exitcode for proc in warm] == [128 + signal.SIGTERM]  # its own exit, not killed after a minute


def test_workers_stopped_the_moment_they_start_exit_through_their_own_handler_with_no_traceback(capfd):
    """A refused sweep stops the workers it started early within milliseconds. A signal that came while a worker
    set itself up (before its try) printed multiprocessing's "Process ForkProcess-1: Traceback" (seen in CI on a
    refused sweep); one that came before its handlers killed it outright. Each now exits through its handler."""
    codes = []
    for _ in range(60):
        with Pool(lambda slot, owner: Exit.DONE, lambda owner, reason: None, max_deaths=0) as pool:
            pool.warm_up(2, lambda: None)
            warm = [proc for proc, _, _ in pool.warm.values()]
        codes += [proc.exitcode for proc in warm]
    assert "Traceback" not in capfd.readouterr().err
    assert codes == [128 + signal.SIGTERM] * 120
