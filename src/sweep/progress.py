"""What a sweep prints: a start line, one line per trial, and the summary at the end."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import results
from .budget import FINISHED, slots_used, uses_slot
from .study import sign


def print_start(name: str, budget: int, settings: Any, n_workers: int, folder: Any, storage: str,
                launcher: str = "basic") -> None:
    workers = f"{n_workers} worker(s)" if launcher == "basic" else f"{n_workers} job(s) of hydra/launcher={launcher}"
    trials = f"{budget} trials"
    if budget < settings.n_trials:  # a grid with fewer points than asked
        trials += f" (the whole grid; hydra.sweeper.n_trials={settings.n_trials} asks more)"
    pruner = settings.pruner_name if settings.pruning else "none"  # a multi-objective study prunes nothing
    print(f"sweep {name!r}: {trials}, sampler {settings.sampler_name}, pruner {pruner}, {workers}; study in {storage}; "
          f"results in {folder}", flush=True)


def live_line(number: int, metric: str) -> Callable[[int, int | None, dict[str, float]], None]:
    """For a terminal: a line rewritten in place after each epoch of trial `number` (the trial's own line
    replaces it when it ends)."""
    start = time.perf_counter()

    def show(epoch: int, epochs: int | None, logs: dict[str, float]) -> None:
        value = f" {metric}={logs[metric]:.4f}" if metric in logs else ""
        print(f"{REWRITE}trial {number}: epoch {epoch}/{epochs or '?'}{value} {time.perf_counter() - start:.0f}s",
              end="", flush=True)

    return show


REWRITE = "\r\033[K"  # back to the line's start, erase it


def print_trial(study: optuna.Study, seen: Sequence[FrozenTrial], number: int, budget: int, metric: str,
                started: datetime, live: bool = False, later: frozenset[int] = frozenset()) -> None:
    """`trial 3 COMPLETE val_accuracy=0.9517 best=0.9583 (#1) 4/20 done 12s elapsed ~1m left` (3 is the
    trial's number in the study; 4/20 counts the study's trials `seen`, every worker's). A batch prints its trials
    in turn: each line counts and ranks as if the batch's `later` trials, whose lines follow, were not done yet."""
    trials = [x for x in seen if x.number not in later]
    t = next(x for x in trials if x.number == number)
    line = f"trial {number} {t.state.name}"
    value = t.user_attrs.get(metric)
    if value is not None:
        line += f" {metric}={value:.4f}"
    if t.state == TrialState.PRUNED:
        line += f" at epoch {t.last_step}"
    if t.state == TrialState.FAIL:
        line += f" ({t.user_attrs.get('error')})"
    complete = [x for x in trials if x.state == TrialState.COMPLETE and x.values]
    best = max(complete, key=lambda x: (sign(study) * x.values[0], -x.number)) if complete else None
    if best is not None:
        line += f" best={best.values[0]:.4f} (#{best.number})"
    elapsed = (datetime.now() - started).total_seconds()
    ran = sum(1 for x in trials if x.state in FINISHED and x.datetime_start and x.datetime_start >= started)
    done = sum(1 for x in trials if uses_slot(x) and x.state in FINISHED)
    left = elapsed / max(ran, 1) * max(budget - slots_used(trials), 0)
    print(f"{REWRITE if live else ''}{line} {done}/{budget} done {_duration(elapsed)} elapsed "
          f"~{_duration(left)} left", flush=True)


def print_run(kind: str, run: FrozenTrial, queue: optuna.Study, total: int, metric: str) -> None:
    """`confirm run: trial #3 seed 1 val_accuracy=0.9617 (1/4 done)` for a finished confirmation or test run."""
    where = f"{kind} run: trial #{run.params['config']} seed {run.params['seed']}"
    if run.state != TrialState.COMPLETE:
        print(f"{where} FAILED: {run.user_attrs.get('error')}", flush=True)
        return
    done = sum(1 for t in queue.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE)
    shown = f"test_accuracy={run.user_attrs['test_accuracy']:.4f}" if kind == "test" else f"{metric}={run.values[0]:.4f}"
    print(f"{where} {shown} ({done}/{total} done)", flush=True)


def print_summary(study: optuna.Study, storage: str, folder: Any, metrics: list[str],
                  best: optuna.trial.FrozenTrial | None, test: dict[str, Any] | None, replay: list[str],
                  confirmed: dict[str, Any] | None = None) -> None:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(1 for t in trials if t.state == s) for s in (*FINISHED, TrialState.RUNNING)}
    print(f"study {study.study_name!r}: {len(trials)} trials "
          f"({', '.join(f'{n} {k.lower()}' for k, n in states.items() if n)}) in {storage}")
    if best is None:
        print("no trial completed")
    else:
        values = ", ".join(f"{m}={v:.4f}" for m, v in zip(metrics, best.values))
        print(f"best trial #{best.number}: {values}")
        print("  params: " + " ".join(f"{k}={v}" for k, v in best.params.items()))
        if test and test.get("test_accuracy") is not None and not confirmed:
            print(f"  test accuracy {test['test_accuracy']:.4f}, test loss {test['test_loss']:.4f} "
                  f"(replayed once after the search; val_accuracy {test['val_accuracy']:.4f})")
        if confirmed and confirmed["winner"] is not None:
            print_confirmed(confirmed)
        print(f"  replay: {' '.join(results.shell_quote(replay))}")
    print(f"tables: {folder}/{{trials,leaderboard,params_summary,importance}}.csv" + (" and best.yaml" if best else ""),
          flush=True)


def print_confirmed(confirmed: dict[str, Any]) -> None:
    """The top k's means over seeds, whether the single-run ranking held, and the winner's test score."""
    metric, configs = confirmed["metric"], confirmed["configs"]
    n = len(configs[confirmed["winner"]]["values"])
    held = "held" if confirmed["held"] else f"changed: the best single run was #{confirmed['single_best']}"
    print(f"  confirmed over {n} seeds, winner by mean {metric} (single-run ranking {held}):")
    for number, c in configs.items():
        values = " ".join(f"{v:.4f}" for v in c["values"])
        mark = "*" if number == confirmed["winner"] else " "
        print(f"   {mark}#{number}: {c['mean']:.4f} +- {c['std']:.4f} ({values})")
    test = confirmed.get("test")
    if test:
        print(f"  test accuracy {test['mean']:.4f} +- {test['std']:.4f} over {len(test['values'])} seeds "
              f"(the winner only, after the search)")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
