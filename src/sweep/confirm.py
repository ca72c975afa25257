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

import math
import shutil
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from hydra.errors import HydraException
from optuna.trial import FrozenTrial, TrialState

from src.errors import UserError
from src.files import write_csv
from src.sweep import study as studies
from src.sweep import task, workers
from src.sweep.runner import SAVE_MODEL, task_config

if TYPE_CHECKING:  # engine imports this module
    from src.sweep.batch import Batcher
    from src.sweep.engine import Sweep

SEED_KEYS = ("trainer.seed=", "data.seed=")
SCORING_ONLY = {"trainer.test", "trainer.save_model", "trainer.verbose", "trainer.eval_batch_size"}  # test overrides


@dataclass(frozen=True)
class Run:
    """One confirmation run: search trial `config` retrained with `seed` (on the test set when `test`)."""

    config: int
    seed: int
    test: bool = False


def top(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best complete search trials by the first objective (ties: the earlier trial)."""
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (-sign * t.values[0], t.number))[:k]


def seeds_of(sweep: Sweep, trial: FrozenTrial) -> tuple[int, int]:
    """The trial's own training seed and data seed (the data split stays fixed across confirmation runs)."""
    cfg = sweep.runner.compose(trial.params)
    return int(cfg["trainer"]["seed"]), int(cfg["data"]["seed"])


def overrides(sweep: Sweep, trial: FrozenTrial, run: Run) -> list[str]:
    """The trial's overrides with another training seed and its own data seed."""
    _, data_seed = seeds_of(sweep, trial)
    base = [o for o in sweep.space.overrides(trial.params) if not o.startswith(SEED_KEYS)]
    extra = list(sweep.settings.test_overrides) if run.test else [SAVE_MODEL]  # the winner's are scored later
    return base + [f"trainer.seed={run.seed}", f"data.seed={data_seed}"] + extra


def finished(sweep: Sweep) -> bool:
    """Whether the winner's test runs have all ended (then nothing is left to confirm)."""
    storage = sweep.storage.connect()
    try:
        _, test = studies_of(sweep, storage)
        trials = test.get_trials(deepcopy=False) if test else []
    finally:
        studies.close(storage)  # asked before the workers fork: no connection may cross it
    return bool(trials) and all(t.state.is_finished() for t in trials)


def work(sweep: Sweep, slot: int, owner: str, batcher: Batcher | None = None) -> None:
    """This worker's share of the confirmation runs (K at a time with a `batcher`, as the search's trials),
    then of the winner's test runs; returns when both are done."""
    search = sweep.open()
    k, r = sweep.settings.confirm.top_k, sweep.settings.confirm.seeds
    best = top(search, k)
    if not best:
        return
    runs = [Run(t.number, seeds_of(sweep, t)[0] + i) for t in best for i in range(1, r + 1)]
    confirm = _queue(sweep, f"{sweep.name}:confirm", runs)
    _drain(sweep, search, confirm, owner, "confirm", len(runs), batcher)
    winner = summary(search, confirm, None, sweep.objectives[0])["winner"]
    if winner is None:  # every confirmation run failed: nothing to test
        return
    base = seeds_of(sweep, _trial(search, winner))[0]
    tests = [Run(winner, base + i, test=True) for i in range(r + 1)]
    test = _queue(sweep, f"{sweep.name}:test", tests)
    _drain(sweep, search, test, owner, "test", len(tests))


def finish(sweep: Sweep, search: optuna.Study) -> dict[str, Any] | None:
    """confirm.csv and the confirmation's summary, or None where it has not started."""
    confirm, test = studies_of(sweep)
    if confirm is None:
        return None
    write(sweep, search)
    return summary(search, confirm, test, sweep.objectives[0])


def test_score(sweep: Sweep, confirmed: dict[str, Any]) -> dict[str, Any] | None:
    """best.yaml's `test` for a confirmed winner: as a single replay's, with means over seeds and their spread."""
    test, winner = confirmed["test"], confirmed["configs"][confirmed["winner"]]
    if not test:
        return None
    return {"trial": confirmed["winner"], "test_accuracy": test["mean"], "test_accuracy_std": test["std"],
            "test_loss": statistics.fmean(test["losses"]), f"{confirmed['metric']}": winner["mean"],
            f"{confirmed['metric']}_std": winner["std"], "seeds": len(test["values"]), "run_dir": f"{sweep.folder}/best"}


def studies_of(sweep: Sweep, storage: Any = None) -> tuple[optuna.Study | None, optuna.Study | None]:
    """The confirm and test queue studies, where they exist."""
    storage = storage or sweep.storage.connect()
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    found = [optuna.load_study(study_name=n, storage=storage) if n in names else None
             for n in (f"{sweep.name}:confirm", f"{sweep.name}:test")]
    return found[0], found[1]


def summary(search: optuna.Study, confirm: optuna.Study | None, test: optuna.Study | None, metric: str) -> dict[str, Any]:
    """Per confirmed configuration: its values over seeds (the search run first), mean and std; the winner by
    mean; the winner's test accuracies; and whether the single-run ranking held (the winner was the best run)."""
    sign = 1 if search.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    values: dict[int, list[float]] = {}
    for t in (confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if confirm else []):
        config = t.params["config"]
        values.setdefault(config, [_trial(search, config).values[0]]).append(t.values[0])
    configs = {n: {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
               for n, v in values.items()}
    out: dict[str, Any] = {"metric": metric, "configs": configs, "winner": None, "test": None, "held": None}
    if not configs:
        return out
    winner = max(configs, key=lambda n: (sign * configs[n]["mean"], -n))
    single = max(configs, key=lambda n: (sign * configs[n]["values"][0], -n))
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
            if "config" not in t.params or not studies.counts(t):
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


def _queue(sweep: Sweep, name: str, runs: list[Run]) -> optuna.Study:
    """The queue study `name` holding `runs`: created and filled by one command, joined by the others."""
    storage = sweep.storage.connect()
    direction = sweep.settings.directions[0]
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=storage), False
    if created:
        _fill(study, runs)
    else:  # the creator fills it within milliseconds; if it died meanwhile, fill what is missing
        deadline = time.monotonic() + sweep.settings.grace
        while len(study.get_trials(deepcopy=False)) < len(runs) and time.monotonic() < deadline:
            time.sleep(0.2)
        _fill(study, runs)
    return study


def _fill(study: optuna.Study, runs: list[Run]) -> None:
    for run in runs:
        study.enqueue_trial({"config": run.config, "seed": run.seed}, skip_if_exists=True)


def _drain(sweep: Sweep, search: optuna.Study, queue: optuna.Study, owner: str, kind: str, total: int,
           batcher: Batcher | None = None) -> None:
    """Run queued runs until none is waiting, then wait for the other workers' runs to end. With a `batcher`,
    a worker claims up to batch_trials runs at once (its even share of those waiting) and trains them together."""
    unclaimed = studies.Unclaimed(sweep.settings.grace)
    patience = studies.Patience(sweep.settings.heartbeat_interval)
    while True:
        studies.fail_stale_trials(queue)
        unclaimed.give_back(queue, queue.get_trials(deepcopy=False))
        trials = queue.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if not waiting:
            if any(t.state == TrialState.RUNNING for t in trials):
                patience.pause()
                continue
            return
        share = math.ceil(waiting / sweep.settings.n_workers)
        n = 1 if batcher is None or kind == "test" else min(sweep.settings.batch_trials, share)  # tests train nothing
        with ExitStack() as claimed:
            asked: list[optuna.Trial] = []
            runs: list[tuple[optuna.Trial, Run]] = []
            try:
                for _ in range(n):
                    with workers.signals_held():  # created, beating and owned at once, as in the search
                        trial = queue.ask()
                        claimed.enter_context(studies.heartbeat(queue, trial))
                        trial.set_user_attr("worker", owner)
                        asked.append(trial)
                    fixed = studies.frozen(queue, trial).system_attrs.get("fixed_params")
                    if not fixed:  # a waiting run was taken by another worker between our look and our ask
                        studies.give_back(queue, studies.frozen(queue, trial), "not run: no queued run left", retry=False)
                        break
                    trial.suggest_int("config", 0, 2**31 - 1)
                    trial.suggest_int("seed", -2**31, 2**31 - 1)
                    runs.append((trial, Run(int(fixed["config"]), int(fixed["seed"]), kind == "test")))
                if batcher is not None and kind != "test" and runs:  # one run too: it reuses the search's programs
                    _run_batch(sweep, search, queue, runs, kind, total, batcher)
                elif runs:
                    _run_one(sweep, search, queue, *runs[0], kind, total)
            except KeyboardInterrupt as e:  # queued again from their fixed params, drawn or not (a no-op once told)
                claimed.close()  # heartbeats first, as in the search
                for trial in asked:
                    studies.give_back(queue, studies.frozen(queue, trial), str(e) or "interrupted by Ctrl-C")
                raise


def _run_one(sweep: Sweep, search: optuna.Study, queue: optuna.Study, trial: optuna.Trial, run: Run,
             kind: str, total: int) -> None:
    searched = _trial(search, run.config)
    subdir = "best" if run.test and run.seed == seeds_of(sweep, searched)[0] else f"{kind}/{trial.number}"
    trial.set_user_attr("run_dir", f"{sweep.folder}/{subdir}")
    trained = _trained(sweep, search, run) if run.test else None
    outcome = _test_saved(sweep, run, searched, trained, subdir) if trained else None
    if outcome is None or isinstance(outcome, BaseException):  # no saved model here, or one Keras cannot load
        if outcome is not None:
            print(f"note: the saved model in {trained} cannot be scored ({outcome}); training it again", flush=True)
        outcome = sweep.runner.run_job(overrides(sweep, searched, run), trial.number, subdir=subdir)
    _record(sweep, search, queue, trial, run, kind, total, outcome)


def _run_batch(sweep: Sweep, search: optuna.Study, queue: optuna.Study, runs: list[tuple[optuna.Trial, Run]],
               kind: str, total: int, batcher: Batcher) -> None:
    """Confirmation runs trained together, as the search's batched trials; each written and told as if alone."""
    jobs, claimed = [], []
    for trial, run in runs:
        subdir = f"{kind}/{trial.number}"
        trial.set_user_attr("run_dir", f"{sweep.folder}/{subdir}")
        run_overrides = overrides(sweep, _trial(search, run.config), run)
        try:
            jobs.append(sweep.runner.job_config(run_overrides, trial.number, subdir))
        except HydraException as e:
            _record(sweep, search, queue, trial, run, kind, total, UserError(f"cannot compose {' '.join(run_overrides)}: {e}"))
            continue
        claimed.append((trial, run))
    batcher.train(jobs, lambda i, outcome: _record(sweep, search, queue, *claimed[i], kind, total, outcome), [None] * len(jobs))


def _record(sweep: Sweep, search: optuna.Study, queue: optuna.Study, trial: optuna.Trial, run: Run, kind: str,
            total: int, outcome: Any) -> None:
    """Tell the queue what a run's task returned or raised, print its line, rewrite confirm.csv."""
    metric = sweep.objectives[0]
    if isinstance(outcome, BaseException) or not isinstance(outcome, dict) or outcome.get(metric) is None:
        message = str(outcome).splitlines()[0] if isinstance(outcome, BaseException) and str(outcome) else repr(outcome)
        with workers.signals_held():  # told whole, as a search trial
            trial.set_user_attr("error", message)
            queue.tell(trial, state=TrialState.FAIL)
        print(f"{kind} run: trial #{run.config} seed {run.seed} FAILED: {message}", flush=True)
        return
    with workers.signals_held():
        for key in (metric, "test_accuracy", "test_loss", "val_loss"):
            if isinstance(outcome.get(key), (int, float)):
                trial.set_user_attr(key, outcome[key])
        queue.tell(trial, outcome[metric])
    done = sum(1 for t in queue.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
    shown = f"test_accuracy={outcome['test_accuracy']:.4f}" if run.test else f"{metric}={outcome[metric]:.4f}"
    print(f"{kind} run: trial #{run.config} seed {run.seed} {shown} ({done}/{total} done)", flush=True)
    write(sweep, search)


def _trained(sweep: Sweep, search: optuna.Study, run: Run) -> Path | None:
    """The folder where this configuration and seed was trained already and its model saved (the search
    trial for its own seed, else the confirmation run), if it is on this machine."""
    if run.seed == seeds_of(sweep, _trial(search, run.config))[0]:
        run_dir = _trial(search, run.config).user_attrs.get("run_dir")
    else:
        confirm, _ = studies_of(sweep)
        done = [t for t in (confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if confirm else [])
                if t.params == {"config": run.config, "seed": run.seed}]
        run_dir = done[0].user_attrs.get("run_dir") if done else None
    return Path(run_dir) if run_dir and (Path(run_dir) / "model.keras").is_file() else None


def _test_saved(sweep: Sweep, run: Run, searched: FrozenTrial, trained: Path, subdir: str) -> dict | BaseException | None:
    """The winner's test scores for one seed from the model that run saved: the same network, not trained
    twice. None when a test override changes more than scoring (then the run trains again with it)."""
    if any(o.lstrip("+").split("=")[0] not in SCORING_ONLY for o in sweep.settings.test_overrides):
        return None
    try:
        cfg = task_config(sweep.runner.load(overrides(sweep, searched, run)))
        metrics = task.test_saved(cfg, str(trained), str(sweep.folder / subdir))
        if subdir == "best":  # the winner's model where a sweep without confirmation puts it
            shutil.copyfile(trained / "model.keras", sweep.folder / subdir / "model.keras")
    except Exception as e:  # noqa: BLE001 - trained again instead, with a note
        return e
    return metrics


def write(sweep: Sweep, search: optuna.Study) -> None:
    """confirm.csv, rewritten atomically after each run."""
    confirm, test = studies_of(sweep)
    rows = table(search, confirm, test, sweep.objectives[0])
    for row in rows:
        if row["run"] == "search":
            row["seed"] = seeds_of(sweep, _trial(search, row["config"]))[0]
    write_csv(sweep.folder / "confirm.csv", pd.DataFrame(rows))


def check(sweep_config: Any) -> None:
    """Confirmation retrains with other seeds: the task's config needs trainer.seed and data.seed."""
    if "trainer" not in sweep_config or "seed" not in sweep_config.get("data", {}):
        raise UserError("hydra.sweeper.confirm.top_k needs trainer.seed and data.seed in the task's config; "
                        "set hydra.sweeper.confirm.top_k=0")
