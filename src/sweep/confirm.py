"""After the search: the top k configurations retrained with further seeds, the best mean wins, and only
the winner is evaluated on the test set, once per seed.

A winner picked from one run per configuration is partly luck. Each confirmation run is a trial of a
queue study next to the search's (`<name>:confirm`, then `<name>:test`), in the same storage: every
worker of every command takes runs from the queue, a dead worker's run is given back and queued again as
in the search, and a resumed sweep finds the finished runs there. The queues are filled by whichever
command creates the study (an atomic create); the runs are derived from the finished search alone, so
every command computes the same list.
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..files import write_csv
from . import budget, progress, task
from .budget import Step
from .context import Sweep
from .loop import drain
from .optuna_internals import close, frozen
from .outcome import TrialOutcome, tell
from .processes import COMMAND_STOPPED, Stopped
from .runner import SAVE_MODEL, task_config
from .study import sign

if TYPE_CHECKING:
    from .batch_runner import BatchRunner

SEED_KEYS = ("trainer.seed=", "data.seed=")
QUEUE_ROLES = {"confirm": "confirmation runs of the sweep's top configurations (not a search)",
               "test": "test-set runs of the sweep's confirmed winner (not a search)"}
SCORING_ONLY = {"trainer.test", "trainer.save_model", "trainer.verbose", "trainer.eval_batch_size"}  # test overrides


@dataclass(frozen=True)
class Run:
    """One confirmation run: search trial `config` retrained with `seed` (on the test set when `test`)."""

    config: int
    seed: int
    test: bool = False


def top(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best complete search trials by the first objective (ties: the earlier trial); on a multi-objective
    study, among the Pareto front (as `best_trial`): a dominated trial never wins."""
    done = study.best_trials if len(study.directions) > 1 else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (-sign(study) * t.values[0], t.number))[:k]


def summary(search: optuna.Study, confirm: optuna.Study | None, test: optuna.Study | None, metric: str) -> dict[str, Any]:
    """Per confirmed configuration, best mean first: its values over seeds (the search run first), mean and std;
    the winner by mean; the winner's test accuracies; and whether the single-run ranking held (the winner was the
    best run)."""
    better = sign(search)
    values: dict[int, list[float]] = {}
    for t in (confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if confirm else []):
        config = t.params["config"]
        values.setdefault(config, [_trial(search, config).values[0]]).append(t.values[0])
    configs = {n: {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
               for n, v in values.items()}
    configs = dict(sorted(configs.items(), key=lambda c: (-better * c[1]["mean"], c[0])))  # best mean first
    out: dict[str, Any] = {"metric": metric, "configs": configs, "winner": None, "test": None, "held": None}
    if not configs:
        return out
    winner = max(configs, key=lambda n: (better * configs[n]["mean"], -n))
    single = max(configs, key=lambda n: (better * configs[n]["values"][0], -n))
    out.update(winner=winner, held=winner == single, single_best=single)
    tested = [t.user_attrs for t in (test.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if test else [])
              if t.params["config"] == winner and t.user_attrs.get("test_accuracy") is not None]
    if tested:
        accuracies = [a["test_accuracy"] for a in tested]
        out["test"] = {"values": accuracies, "mean": statistics.fmean(accuracies),
                       "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                       "losses": [a.get("test_loss") for a in tested]}
    return out


def table(search: optuna.Study, confirm: optuna.Study | None, test: optuna.Study | None, metric: str) -> list[dict]:
    """confirm.csv's rows: per confirmed configuration the search run and each further seed, then the
    winner's test runs."""
    rows = []
    for kind, queue in (("confirm", confirm), ("test", test)):
        for t in (queue.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)) if queue else []):
            if "config" not in t.params or not budget.uses_slot(t):
                continue  # a run given back or found dead (it ran again), or a stray trial
            rows.append({"run": kind, "config": t.params["config"], "seed": t.params["seed"],
                         "state": t.state.name, metric: t.user_attrs.get(metric),
                         "test_accuracy": t.user_attrs.get("test_accuracy"), "test_loss": t.user_attrs.get("test_loss"),
                         "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error")})
    search_rows = [{"run": "search", "config": n, "seed": None, "state": "COMPLETE", metric: _trial(search, n).values[0],
                    "run_dir": _trial(search, n).user_attrs.get("run_dir")}
                   for n in sorted({r["config"] for r in rows})]
    return search_rows + rows


def _trial(study: optuna.Study, number: int) -> FrozenTrial:
    return study.get_trials(deepcopy=False)[number]  # numbers run from 0 without gaps within a study


class Confirmation:
    """The phase after the search, for one sweep: its queues, each worker's share of their runs, confirm.csv,
    and the confirmed winner's test score."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.metric = sweep.objectives[0]

    def seeds_of(self, trial: FrozenTrial) -> tuple[int, int]:
        """The trial's own training seed and data seed (the data split stays fixed across confirmation runs)."""
        cfg = self.sweep.runner.compose(trial.params)
        return int(cfg["trainer"]["seed"]), int(cfg["data"]["seed"])

    def overrides(self, trial: FrozenTrial, run: Run) -> list[str]:
        """The trial's overrides with another training seed and its own data seed."""
        _, data_seed = self.seeds_of(trial)
        base = [o for o in self.sweep.space.overrides(trial.params) if not o.startswith(SEED_KEYS)]
        extra = list(self.sweep.settings.test_overrides) if run.test else [SAVE_MODEL]  # the winner's are scored later
        return base + [f"trainer.seed={run.seed}", f"data.seed={data_seed}"] + extra

    def queues(self, storage: Any = None) -> tuple[optuna.Study | None, optuna.Study | None]:
        """The confirm and test queue studies, where they exist."""
        storage = storage or self.sweep.storage.connect(create=False)
        names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        found = [optuna.load_study(study_name=n, storage=storage) if n in names else None
                 for n in (f"{self.sweep.name}:confirm", f"{self.sweep.name}:test")]
        return found[0], found[1]

    def finished(self) -> bool:
        """Whether the winner's test runs have all ended (then nothing is left to confirm)."""
        storage = self.sweep.storage.connect(create=False)
        try:
            _, test = self.queues(storage)
            trials = test.get_trials(deepcopy=False) if test else []
        finally:
            close(storage)  # asked before the workers fork: no connection may cross it
        return bool(trials) and all(t.state.is_finished() for t in trials)

    def work(self, owner: str, batcher: BatchRunner | None = None) -> None:
        """This worker's share of the confirmation runs (K at a time with a `batcher`, as the search's trials),
        then of the winner's test runs; returns when both are done."""
        search = self.sweep.open()
        k, r = self.sweep.settings.confirm.top_k, self.sweep.settings.confirm.seeds
        best = top(search, k)
        if not best:
            return
        longest_first = sorted(best, key=lambda t: -float(t.user_attrs.get("seconds") or 0.0))  # the last claim is short
        runs = [Run(t.number, self.seeds_of(t)[0] + i) for t in longest_first for i in range(1, r + 1)]
        confirm = self._queue(f"{self.sweep.name}:confirm", runs)
        self._drain(confirm, RunQueue(self, search, "confirm", len(runs), batcher), owner)
        winner = summary(search, confirm, None, self.metric)["winner"]
        if winner is None:  # every confirmation run failed: nothing to test
            return
        base = self.seeds_of(_trial(search, winner))[0]
        tests = [Run(winner, base + i, test=True) for i in range(r + 1)]
        test = self._queue(f"{self.sweep.name}:test", tests)
        self._drain(test, RunQueue(self, search, "test", len(tests), None), owner)  # tests train nothing: one at a time

    def _drain(self, queue: optuna.Study, policy: RunQueue, owner: str) -> None:
        drain(queue, policy, owner, self.sweep.settings.grace, self.sweep.settings.heartbeat_interval)

    def _queue(self, name: str, runs: list[Run]) -> optuna.Study:
        """The queue study `name` holding `runs`: created and filled by one command, joined by the others."""
        storage = self.sweep.storage.connect(create=False)
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=self.sweep.settings.directions[0])
            study.set_metric_names([self.metric])  # what optuna-dashboard lists: a queue of the sweep, not a sweep
            study.set_user_attr("sweep", self.sweep.name)
            study.set_user_attr("role", QUEUE_ROLES[name.rpartition(":")[2]])
        except optuna.exceptions.DuplicatedStudyError:  # the creator fills it within milliseconds; if it died
            study = optuna.load_study(study_name=name, storage=storage)  # meanwhile, fill what is missing
            deadline = time.monotonic() + self.sweep.settings.grace
            while len(study.get_trials(deepcopy=False)) < len(runs) and time.monotonic() < deadline:
                time.sleep(0.2)
        for run in runs:
            study.enqueue_trial({"config": run.config, "seed": run.seed}, skip_if_exists=True)
        return study

    def results(self, search: optuna.Study) -> dict[str, Any] | None:
        """confirm.csv and the confirmation's summary, or None where it has not started."""
        confirm, test = self.queues()
        if confirm is None:
            return None
        self.write(search)
        return summary(search, confirm, test, self.metric)

    def test_score(self, confirmed: dict[str, Any]) -> dict[str, Any] | None:
        """best.yaml's `test` for a confirmed winner: as a single replay's, with means over seeds and their spread."""
        test, winner = confirmed["test"], confirmed["configs"][confirmed["winner"]]
        if not test:
            return None
        return {"trial": confirmed["winner"], "test_accuracy": test["mean"], "test_accuracy_std": test["std"],
                "test_loss": statistics.fmean(test["losses"]), f"{confirmed['metric']}": winner["mean"],
                f"{confirmed['metric']}_std": winner["std"], "seeds": len(test["values"]),
                "run_dir": f"{self.sweep.folder}/best"}

    def write(self, search: optuna.Study) -> None:
        """confirm.csv, rewritten atomically after each run."""
        confirm, test = self.queues()
        rows = table(search, confirm, test, self.metric)
        for row in rows:
            if row["run"] == "search":
                row["seed"] = self.seeds_of(_trial(search, row["config"]))[0]
        write_csv(self.sweep.folder / "confirm.csv", pd.DataFrame(rows))

    def trained(self, search: optuna.Study, run: Run) -> Path | None:
        """The folder where this configuration and seed was trained already and its model saved (the search
        trial for its own seed, else the confirmation run), if it is on this machine."""
        if run.seed == self.seeds_of(_trial(search, run.config))[0]:
            run_dir = _trial(search, run.config).user_attrs.get("run_dir")
        else:
            confirm, _ = self.queues()
            done = [t for t in (confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if confirm else [])
                    if t.params == {"config": run.config, "seed": run.seed}]
            run_dir = done[0].user_attrs.get("run_dir") if done else None
        return Path(run_dir) if run_dir and (Path(run_dir) / "model.keras").is_file() else None

    def test_saved(self, run: Run, searched: FrozenTrial, trained: Path, subdir: str) -> TrialOutcome | None:
        """The winner's test scores for one seed from the model that run saved: the same network, not trained
        twice. None when a test override changes more than scoring (then the run trains again with it)."""
        sweep = self.sweep
        if any(o.lstrip("+").split("=")[0] not in SCORING_ONLY for o in sweep.settings.test_overrides):
            return None
        try:
            cfg = task_config(sweep.runner.load(self.overrides(searched, run)))
            metrics = task.test_saved(cfg, str(trained), str(sweep.folder / subdir))
            if subdir == "best":  # the winner's model where a sweep without confirmation puts it
                shutil.copyfile(trained / "model.keras", sweep.folder / subdir / "model.keras")
        except Exception as e:  # noqa: BLE001 - trained again instead, with a note
            return TrialOutcome.failed(e)
        return TrialOutcome.of(metrics, [self.metric])


class RunQueue:
    """A confirmation or test queue's policy on the claim-and-drain loop: fixed runs, several claimed at once when
    a `batcher` trains them together, each told and printed. The queue holds each searched trial's runs side by
    side, longest trial first."""

    def __init__(self, phase: Confirmation, search: optuna.Study, kind: str, total: int,
                 batcher: BatchRunner | None) -> None:
        self.phase, self.sweep, self.search = phase, phase.sweep, search
        self.kind, self.total, self.batcher = kind, total, batcher

    def check(self, trials: Sequence[FrozenTrial]) -> None:
        if self.sweep.runner.stopping.is_set():
            raise Stopped(reason=COMMAND_STOPPED)

    def step(self, trials: Sequence[FrozenTrial]) -> Step:
        return budget.queue_step(trials)

    def claim_size(self, trials: Sequence[FrozenTrial]) -> int:
        if self.batcher is None:
            return 1
        settings, waiting = self.sweep.settings, sum(t.state == TrialState.WAITING for t in trials)
        if settings.n_workers > 1:  # one trial's seeds, which train as one group: another trial's runs in the
            return max(1, min(settings.batch_trials, settings.confirm.seeds, waiting))  # claim would wait behind them
        return max(1, min(settings.batch_trials, waiting))

    def admit(self, study: optuna.Study, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> str | None:
        if next(t for t in trials if t.number == trial.number).system_attrs.get("fixed_params"):
            return None
        return "not run: no queued run left"  # a waiting run was taken by another worker between our look and our ask

    def joins(self, study: optuna.Study, first: optuna.Trial) -> Callable[[FrozenTrial], bool] | None:
        """With several workers, only the same searched trial's runs (its seeds train as one group; another
        trial's would wait behind them while a worker idles): picked by config, not by the queue's next run,
        which two workers asking at once would take in turn."""
        if self.sweep.settings.n_workers == 1:
            return None
        config = frozen(study, first).system_attrs["fixed_params"]["config"]
        return lambda waiting: waiting.system_attrs.get("fixed_params", {}).get("config") == config

    def run(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        runs = []
        for trial in trials:
            fixed = frozen(study, trial).system_attrs["fixed_params"]
            trial.suggest_int("config", 0, 2**31 - 1)
            trial.suggest_int("seed", -2**31, 2**31 - 1)
            runs.append((trial, Run(int(fixed["config"]), int(fixed["seed"]), self.kind == "test")))
        if self.batcher is not None:  # one run too: it reuses the search's programs
            self._run_batch(study, runs)
        else:
            self._run_one(study, *runs[0])

    def after(self, study: optuna.Study, trials: list[optuna.Trial], completed: bool) -> None:
        pass

    def _run_one(self, queue: optuna.Study, trial: optuna.Trial, run: Run) -> None:
        searched = _trial(self.search, run.config)
        subdir = "best" if run.test and run.seed == self.phase.seeds_of(searched)[0] else f"{self.kind}/{trial.number}"
        trained = self.phase.trained(self.search, run) if run.test else None
        outcome = self.phase.test_saved(run, searched, trained, subdir) if trained else None
        if outcome is None or outcome.error is not None:  # no saved model here, or one Keras cannot load
            if outcome is not None:
                print(f"note: the saved model in {trained} cannot be scored ({outcome.error}); training it again", flush=True)
            outcome = self.sweep.runner.run_job(self.phase.overrides(searched, run), trial.number, subdir=subdir)
        self._record(queue, trial, run, subdir, outcome)

    def _run_batch(self, queue: optuna.Study, runs: list[tuple[optuna.Trial, Run]]) -> None:
        """Confirmation runs trained together, as the search's batched trials; each written and told as if alone."""
        jobs, claimed = [], []
        for trial, run in runs:
            subdir = f"{self.kind}/{trial.number}"
            try:
                jobs.append(self.sweep.runner.job_config(self.phase.overrides(_trial(self.search, run.config), run),
                                                         trial.number, subdir))
            except UserError as e:
                self._record(queue, trial, run, subdir, TrialOutcome.failed(e))
                continue
            claimed.append((trial, run, subdir))
        assert self.batcher is not None
        self.batcher.train(jobs, lambda i, outcome: self._record(queue, *claimed[i], outcome), [None] * len(jobs))

    def _record(self, queue: optuna.Study, trial: optuna.Trial, run: Run, subdir: str, outcome: TrialOutcome) -> None:
        """Tell the queue, print the run's line (unless the sweep command prints it), rewrite confirm.csv."""
        told = tell(queue, trial, outcome, [self.phase.metric], f"{self.sweep.folder}/{subdir}")
        if told is None:
            return
        if not self.sweep.quiet:
            progress.print_run(self.kind, told, queue, self.total, self.phase.metric)
        if told.state == TrialState.COMPLETE:
            self.phase.write(self.search)


def check(sweep_config: Any) -> None:
    """Confirmation retrains with other seeds: the task's config needs trainer.seed and data.seed."""
    if "trainer" not in sweep_config or "seed" not in sweep_config.get("data", {}):
        raise UserError("hydra.sweeper.confirm.top_k needs trainer.seed and data.seed in the task's config; "
                        "set hydra.sweeper.confirm.top_k=0")
