"""The sweep engine behind the Hydra plugin: workers that ask Optuna for a trial, run it, tell the result.

A worker composes the trial's config with Hydra, runs the task in-process (so it imports TensorFlow
once), tells the study, and rewrites the result tables. Workers share nothing but the study storage,
so any number of them, in processes here or on other machines, can work on one study.
"""
from __future__ import annotations

import fcntl
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import optuna
from hydra.core.utils import JobReturn, configure_log, run_job
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from src import results
from src.errors import UserError
from src.samplers import grid_size, make_pruner, make_sampler
from src.search_space import SearchSpace, parse

if TYPE_CHECKING:  # the settings schema lives with the plugin Hydra registers
    from hydra_plugins.keras_optuna_sweeper.keras_optuna_sweeper import KerasOptunaSweeperConf as Settings

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours to print
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED = "interrupted by Ctrl-C"


# The epoch hook of the trial this process is running, for the task to pass to training.
_current_hook: "PruningHook | None" = None


def epoch_hook() -> "PruningHook | None":
    """What the sweep task hands to `training.run(on_epoch=...)`: reports epochs, says when to prune."""
    return _current_hook


class PruningHook:
    """Reports the objective after each epoch to the trial and asks its pruner whether to stop."""

    def __init__(self, trial: optuna.Trial, metric: str, enabled: bool) -> None:
        self.trial, self.metric, self.enabled = trial, metric, enabled
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, logs: dict[str, float]) -> bool:
        if not self.enabled or self.metric not in logs:
            return False
        self.trial.report(float(logs[self.metric]), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            return True
        return False


class Sweep:
    """One run of `python -m src.sweep -m`: its settings, search space, study storage and folder."""

    def __init__(self, settings: Settings, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig, arguments: list[str]) -> None:
        self.settings, self.hydra_context, self.task_function, self.config = settings, hydra_context, task_function, config
        self.space: SearchSpace = parse(settings.params, arguments)
        self.dir = Path(config.hydra.sweep.dir).absolute()
        self.study_name = settings.study_name or "sweep"
        self.storage_url = settings.storage or f"sqlite:///{self.dir / 'study.db'}"
        self.metrics, self.directions = list(settings.objectives), list(settings.directions)
        if not self.metrics or len(self.metrics) != len(self.directions) or \
                not set(self.directions) <= {"maximize", "minimize"}:
            raise UserError(f"hydra.sweeper.objectives={self.metrics} with directions={self.directions}: "
                            f"give one direction (maximize or minimize) per objective")
        self.pruning = settings.pruner != "none" and len(self.metrics) == 1
        if settings.pruner != "none" and not self.pruning:
            log.warning("pruning is off: Optuna cannot prune multi-objective studies")
        self.budget = settings.n_trials
        if settings.sampler == "grid":
            self.budget = min(self.budget, grid_size(self.space))
        self.started = datetime.now()
        self.make_pruner()  # fail on a bad pruner before any trial

    # --- the study -------------------------------------------------------------------------------
    def open_study(self, worker: int = 0) -> optuna.Study:
        """Create or load the study; each process opens its own connection (never shared across fork)."""
        existing = 0
        storage = self.storage()
        try:
            existing = len(optuna.load_study(study_name=self.study_name, storage=storage).get_trials(deepcopy=False))
        except KeyError:
            pass
        seed = self.settings.seed
        if seed is not None and self.settings.sampler != "grid":  # a grid's seed orders its points: keep it
            seed += 1000 * worker + existing  # so that workers and resumed runs do not draw the same points
        directions = self.directions
        sampler = make_sampler(self.settings.sampler, seed, self.settings.samplers.get(self.settings.sampler) or {},
                               self.space)
        study = optuna.create_study(storage=storage, study_name=self.study_name, load_if_exists=True,
                                    directions=directions, sampler=sampler, pruner=self.make_pruner())
        if [d.name.lower() for d in study.directions] != directions:
            raise UserError(f"study {self.study_name!r} in {self.storage_url} was created with directions "
                            f"{[d.name.lower() for d in study.directions]}, not {directions}; "
                            f"set hydra.sweeper.study_name to start a new study")
        return study

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.settings.pruner, self.settings.pruners.get(self.settings.pruner) or {})

    def storage(self) -> optuna.storages.BaseStorage:
        """The storage behind `storage_url`: `journal:PATH` for Optuna's journal file, else an RDB URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.storage_url.startswith("journal:"):
            path = self.storage_url.removeprefix("journal:")
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        engine_kwargs = {"connect_args": {"timeout": 60}} if self.storage_url.startswith("sqlite") else {}
        try:
            return optuna.storages.RDBStorage(self.storage_url, engine_kwargs=engine_kwargs)
        except Exception as e:
            raise UserError(f"hydra.sweeper.storage={self.storage_url!r}: {e}") from None

    # --- one trial -------------------------------------------------------------------------------
    def next_trial(self, study: optuna.Study) -> optuna.Trial | None:
        """Ask for a trial while the study has fewer than `n_trials` finished or running; None when done."""
        with self._ask_lock():
            trials = study.get_trials(deepcopy=False)
            self._fail_orphans(study, trials)
            failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")
                      and t.datetime_start and t.datetime_start >= self.started]
            if len(failed) >= self.settings.max_failures:
                raise UserError(f"stopped after {len(failed)} failed trials (hydra.sweeper.max_failures="
                                f"{self.settings.max_failures}); last error: {failed[-1].user_attrs.get('error')}")
            if counted(trials) >= self.budget:
                return None
            trial = study.ask(self.space.distributions)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            return trial

    @contextmanager
    def _ask_lock(self) -> Iterator[None]:
        """Serialize count-then-ask between this machine's workers, so no trial beyond the budget starts."""
        with open(self.dir / ".ask.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _fail_orphans(study: optuna.Study, trials: list[optuna.trial.FrozenTrial],
                      reason: str = "interrupted: its worker process ended") -> None:
        """Mark FAIL the RUNNING trials whose worker on this machine no longer exists (killed, crashed)."""
        host = socket.gethostname()
        for t in trials:
            owner = t.user_attrs.get("worker", "")
            if t.state == TrialState.RUNNING and owner.startswith(host + ":") and not _alive(int(owner.split(":")[1])):
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study._storage.set_trial_user_attr(t._trial_id, "error", reason)
                study.tell(t.number, state=TrialState.FAIL)

    def run_trial(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Compose the trial's config, run the task in this process, tell the study what happened."""
        global _current_hook
        _current_hook = hook = PruningHook(trial, self.metrics[0], self.pruning)
        try:
            outcome = self.run_task(self.space.overrides(trial.params), trial.number)
        except KeyboardInterrupt:
            try:
                trial.set_user_attr("interrupted", True)
                trial.set_user_attr("error", INTERRUPTED)
                _tell(study, trial, state=TrialState.FAIL)
            except Exception:  # Ctrl-C landed inside a storage call: the sweeper process marks the trial
                pass
            raise
        finally:
            _current_hook = None
        trial.set_user_attr("run_dir", str(self.dir / "trials" / str(trial.number)))
        if isinstance(outcome, BaseException):
            message = str(outcome) if isinstance(outcome, UserError) else f"{type(outcome).__name__}: {outcome}"
            trial.set_user_attr("error", message.splitlines()[0] if message else type(outcome).__name__)
            _tell(study, trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("metrics", {k: v for k, v in outcome.items() if _plain(v)})
        if hook.pruned_at is not None:
            _tell(study, trial, state=TrialState.PRUNED)
            return
        values = [outcome.get(m) for m in self.metrics]
        if any(v is None or not math.isfinite(v) for v in values):
            trial.set_user_attr("error", f"objective {self.metrics} not in the task's metrics or not finite: {values}")
            _tell(study, trial, state=TrialState.FAIL)
            return
        _tell(study, trial, values=values)

    def run_task(self, overrides: list[str], number: int, subdir: str | None = None) -> Any:
        """Run the task on `overrides` as Hydra job `number`: its metrics, or the exception it raised."""
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except HydraException as e:
            return UserError(f"cannot compose {' '.join(overrides)}: {e}")
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = number
            if subdir is not None:
                cfg.hydra.sweep.subdir = subdir
        ret: JobReturn = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                 config=cfg, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # as Hydra's launcher does
        return ret._return_value

    def replay(self, params: dict[str, Any]) -> list[str]:
        """The overrides that replay a trial with `python -m src.train` (the sweep definition's choice dropped)."""
        return [o for o in self.space.overrides(params) if not o.startswith("sweep=")]

    # --- the whole sweep -------------------------------------------------------------------------
    def work(self, worker: int = 0) -> bool:
        """One worker process's loop: warm up, then ask, run, tell, rewrite the tables, print a progress line.

        Returns True when the budget is met, False after `max_trials_per_worker` trials (a fresh process
        takes over: TensorFlow keeps a little memory per model, so recycling keeps memory flat).
        """
        if self.settings.worker_init:
            get_method(self.settings.worker_init)(self.task_config)
        study = self.open_study(worker)
        for _ in range(self.settings.max_trials_per_worker):
            trial = self.next_trial(study)
            if trial is None:
                with self._ask_lock():  # one replay, by a worker that has TensorFlow loaded already
                    self.test_best(study)
                return True
            try:
                self.run_trial(study, trial)
            finally:
                self.write_tables(study)
            self.print_progress(study, trial.number)
        return False

    def print_progress(self, study: optuna.Study, number: int) -> None:
        trials = study.get_trials(deepcopy=False)
        t = trials[number]
        done, line = counted(trials), f"trial {number}/{self.budget} {t.state.name}"
        metric = self.metrics[0]
        value = (t.user_attrs.get("metrics") or {}).get(metric)
        if value is not None:
            line += f" {metric}={value:.4f}"
        if t.state == TrialState.PRUNED:
            line += f" at epoch {t.last_step}"
        if t.state == TrialState.FAIL:
            line += f" ({t.user_attrs.get('error')})"
        best = best_trial(study)
        if best is not None:
            line += f" best={best.values[0]:.4f} (#{best.number})"
        elapsed = (datetime.now() - self.started).total_seconds()
        ran = sum(1 for x in trials if x.state in FINISHED and x.datetime_start and x.datetime_start >= self.started)
        left = elapsed / max(ran, 1) * max(self.budget - done, 0)
        print(f"{line} {_duration(elapsed)} elapsed ~{_duration(left)} left", flush=True)

    def write_tables(self, study: optuna.Study, importance: bool = False) -> None:
        results.write_sweep_tables(self.dir, study, self.metrics, self.settings.leaderboard_size, importance)

    def validate(self) -> None:
        """Compose one trial's config before any trial runs, so a bad key fails at once; keep it for warm-up."""
        sample = {k: (d.choices[0] if isinstance(d, optuna.distributions.CategoricalDistribution) else d.low)
                  for k, d in self.space.distributions.items()}
        try:
            self.task_config = self.compose(sample, resolve=False)
        except HydraException as e:
            raise UserError(f"{str(e).splitlines()[0]}") from None

    def test_best(self, study: optuna.Study) -> dict[str, Any] | None:
        """Replay the best trial once with `test_overrides` (e.g. trainer.test=true); the test set never chooses."""
        best = best_trial(study)
        if best is None or not self.settings.test_overrides:
            return None
        done = study.user_attrs.get("best_test")
        if done and done.get("trial") == best.number:
            return done
        overrides = self.space.overrides(best.params) + list(self.settings.test_overrides)
        print(f"replaying best trial #{best.number} on the test set: {' '.join(overrides)}", flush=True)
        outcome = self.run_task(overrides, best.number, subdir="best")
        if isinstance(outcome, BaseException):
            log.error(f"error: the best trial's replay failed: {outcome}")
            return None
        test = {"trial": best.number, **{k: outcome.get(k) for k in
                                         ("test_accuracy", "test_loss", "val_accuracy", "val_loss")},
                "run_dir": str(self.dir / "best")}
        study.set_user_attr("best_test", test)
        return test

    def finish(self) -> None:
        """After the workers: final tables with importance, the best trial's test score, best.yaml, a summary."""
        study = self.open_study()
        self._fail_orphans(study, study.get_trials(deepcopy=False))  # trials of a worker that died
        best = best_trial(study)
        test = study.user_attrs.get("best_test")
        test = test if best is not None and test and test.get("trial") == best.number else None
        self.write_tables(study, importance=True)
        if best is not None:
            results.write_best(self.dir / "best.yaml", best, self.metrics, self.replay(best.params),
                               self.compose(best.params), test)
        self.print_summary(study, best, test)

    def compose(self, params: dict[str, Any], resolve: bool = True) -> Any:
        """The task's config for `params` (without the hydra node): a plain dict, or a DictConfig unresolved."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, self.space.overrides(params))
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True) if resolve else cfg

    def print_summary(self, study: optuna.Study, best: optuna.trial.FrozenTrial | None,
                      test: dict[str, Any] | None) -> None:
        trials = study.get_trials(deepcopy=False)
        states = {s.name: sum(1 for t in trials if t.state == s) for s in (*FINISHED, TrialState.RUNNING)}
        print(f"study {self.study_name!r}: {len(trials)} trials "
              f"({', '.join(f'{n} {k.lower()}' for k, n in states.items() if n)}) in {self.storage_url}")
        if best is None:
            print("no trial completed")
        else:
            values = ", ".join(f"{m}={v:.4f}" for m, v in zip(self.metrics, best.values))
            print(f"best trial #{best.number}: {values}")
            print("  params: " + " ".join(f"{k}={v}" for k, v in best.params.items()))
            if test and test.get("test_accuracy") is not None:
                print(f"  test accuracy {test['test_accuracy']:.4f}, test loss {test['test_loss']:.4f} "
                      f"(replayed once after the search; val_accuracy {test['val_accuracy']:.4f})")
            print(f"  replay: python -m src.train {' '.join(results.shell_quote(self.replay(best.params)))}")
        print(f"tables: {self.dir}/{{trials,leaderboard,params_summary,importance}}.csv and best.yaml")


def run(settings: Settings, hydra_context: HydraContext, task_function: TaskFunction,
        config: DictConfig, arguments: list[str]) -> None:
    """The whole sweep: check the space, run `n_workers` workers to the budget, then finish."""
    sweep = Sweep(settings, hydra_context, task_function, config, arguments)
    sweep.validate()
    sweep.open_study()  # create it once here, before workers race to
    results.write_study_info(sweep.dir / "study.yaml", sweep.study_name, sweep.storage_url, settings,
                             sweep.space, sweep.budget)
    print(f"sweep {sweep.study_name!r}: {sweep.budget} trials, sampler {settings.sampler}, pruner {settings.pruner}, "
          f"{settings.n_workers} worker(s); results in {sweep.dir}", flush=True)
    try:
        _run_workers(sweep, max(1, settings.n_workers))
    except KeyboardInterrupt:
        study = sweep.open_study()
        sweep._fail_orphans(study, study.get_trials(deepcopy=False), reason=INTERRUPTED)  # workers have exited
        sweep.write_tables(study, importance=True)
        print(f"interrupted: the running trial is marked FAIL; tables are in {sweep.dir}; "
              f"run the same command again to resume", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except UserError:
        sweep.finish()
        raise
    sweep.finish()


def _run_workers(sweep: Sweep, n_workers: int) -> None:
    """Keep `n_workers` worker processes busy until the budget is met, forking a fresh one when a worker
    retires after `max_trials_per_worker` trials. Forking is safe: this process never loads TensorFlow."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    running = {}
    for slot in range(n_workers):
        running[slot] = _start_worker(context, sweep, slot, n_workers, errors)
    try:
        while running:
            ready = multiprocessing.connection.wait([p.sentinel for p in running.values()])
            for slot, proc in list(running.items()):
                if proc.sentinel not in ready:
                    continue
                proc.join()
                del running[slot]
                if proc.exitcode == RETIRED:
                    running[slot] = _start_worker(context, sweep, slot, n_workers, errors)
                elif proc.exitcode == 2:
                    for other in running.values():
                        other.join()
                    raise UserError(errors.get())
                elif proc.exitcode == 130:
                    raise KeyboardInterrupt
                elif proc.exitcode != 0:
                    raise UserError(f"a worker process died (exit status {proc.exitcode}); its running trial "
                                    f"is marked FAIL, the tables are written; rerun to resume")
    except KeyboardInterrupt:
        for proc in running.values():
            proc.join()
        raise


RETIRED = 75  # a worker's exit status after max_trials_per_worker trials: start a fresh one


def _start_worker(context: Any, sweep: Sweep, slot: int, n_workers: int, errors: Any) -> Any:
    proc = context.Process(target=_worker_main, args=(sweep, slot, n_workers, errors))
    proc.start()
    return proc


def _worker_main(sweep: Sweep, slot: int, n_workers: int, errors: Any) -> None:
    """A worker process: with several workers, each pins itself to its own cores and thread pool."""
    cores = sorted(os.sched_getaffinity(0))
    if n_workers > 1 and len(cores) >= n_workers:
        os.sched_setaffinity(0, cores[slot::n_workers])
        for var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ[var] = str(max(1, len(cores) // n_workers))
    try:
        done = sweep.work(slot)
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError as e:
        errors.put(str(e))
        sys.exit(2)
    sys.exit(0 if done else RETIRED)


def _tell(study: optuna.Study, trial: optuna.Trial, **result: Any) -> None:
    """`study.tell`, minus the grid sampler's `study.stop()` on its last point, which ask-and-tell forbids
    (Optuna stores the result before that call; our budget already ends the sweep)."""
    try:
        study.tell(trial, **result)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use the budget: finished ones (an interrupted one does not count) and running ones."""
    return sum(1 for t in trials if (t.state in FINISHED and not t.user_attrs.get("interrupted"))
               or t.state == TrialState.RUNNING)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial by the first objective (on a multi-objective study: among the Pareto front)."""
    candidates = study.best_trials if len(study.directions) > 1 else [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not candidates:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(candidates, key=lambda t: (sign * t.values[0], -t.number))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
