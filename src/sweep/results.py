"""The sweep's tables, built from the study so they hold every worker's trials and survive resume:
trials.csv, leaderboard.csv, params_summary.csv, importance.csv, best.yaml and study.yaml."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..analyze.contract import TRIAL_METRICS, leaderboard, params_summary, value_column
from ..errors import UserError
from ..files import write_csv, write_text
from .space import describe


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """A full disk or an unwritable folder as one line, not a traceback (what was written stays)."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write the sweep's files in {folder}: {e.strerror or e}; free disk space or make the "
                        f"folder writable, then rerun the same command to resume") from None


def trials_table(trials: list[Any], metrics: list[str], pareto: set[int] | None = None) -> pd.DataFrame:
    """One row per trial that ran or runs: number, state, value(s), every param, its training metrics, times, folder, error."""
    rows = []
    for t in trials:
        if t.state.name == "WAITING" or (not t.params and t.user_attrs.get("interrupted")):
            continue  # queued, or asked past the budget and never run: no row
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        values = t.values if t.values is not None else [None] * len(metrics)
        if len(metrics) == 1:
            row["value"] = t.value if t.value is not None else (  # a running trial: its latest epoch's; a failed one: none
                t.intermediate_values[t.last_step] if t.state.name == "RUNNING" and t.last_step is not None else None)
        else:
            row.update({f"value_{m}": v for m, v in zip(metrics, values)})
            row["pareto"] = t.number in (pareto or set())
        row.update(t.params)
        row.update({m: t.user_attrs.get(m) for m in TRIAL_METRICS})
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        row["run_dir"] = t.user_attrs.get("run_dir")
        row["error"] = t.user_attrs.get("error") or (  # failed by the stale-trial check, which records nothing
            "its worker stopped: no heartbeat within the grace period" if t.state.name == "FAIL" else None)
        rows.append(row)
    return pd.DataFrame(rows)


def importance_table(study: Any) -> pd.DataFrame:
    """Optuna's parameter importance (fANOVA) for the first objective; empty while it cannot be computed."""
    import warnings

    import optuna

    target = None
    if len(study.directions) > 1:  # the evaluator ranks what makes the target low: flip a maximized one
        sign = -1 if study.directions[0].name == "MAXIMIZE" else 1
        target = lambda t: sign * t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few-trial warnings would repeat after every trial
            scores = optuna.importance.get_param_importances(study, target=target)
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials, or no variation yet
        scores = {}
    return pd.DataFrame({"param": list(scores), "importance": list(scores.values())})


def write_sweep_tables(folder: Path, study: Any, metrics: list[str], size: int, importance: bool) -> None:
    """Rewrite trials.csv, leaderboard.csv, params_summary.csv (and importance.csv) from the study."""
    trials = study.get_trials(deepcopy=False)
    pareto = {t.number for t in study.best_trials} if len(metrics) > 1 else None
    table = trials_table(trials, metrics, pareto)
    if table.empty:
        return
    maximize = study.directions[0].name == "MAXIMIZE"
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    value = value_column(table.columns)
    write_csv(folder / "trials.csv", table)
    write_csv(folder / "leaderboard.csv", leaderboard(table, value, maximize, size))
    write_csv(folder / "params_summary.csv", params_summary(table, params, value))
    if importance:
        write_csv(folder / "importance.csv", importance_table(study))


def write_best(path: Path, best: Any, metrics: list[str], command: list[str], config: dict[str, Any],
               test: dict[str, Any] | None, confirmed: dict[str, Any] | None = None) -> None:
    """best.yaml: the best trial (the confirmed winner, where confirmation ran), the command that replays it,
    its test score (mean and std over seeds, where confirmed) and its full composed config."""
    import yaml

    doc = {
        "trial": best.number,
        **{m: v for m, v in zip(metrics, best.values)},
        "params": dict(best.params),
        "command": " ".join(shell_quote(command)),
        "test": test,
        **({"confirmed": confirmed} if confirmed else {}),
        "run_dir": best.user_attrs.get("run_dir"),
        "config": config,
    }
    write_text(path, yaml.safe_dump(doc, sort_keys=False, width=1 << 20))  # the command on one line, to copy


def write_study_info(path: Path, name: str, storage: str, settings: Any, space: Any, budget: int) -> None:
    """study.yaml: the question a sweep asks (search space, fixed overrides, sampler, pruner, budget)."""
    import yaml

    doc = {
        "study_name": name, "storage": storage, "n_trials": budget,
        "objectives": dict(zip(settings.objectives, settings.directions)),
        "sampler": settings.sampler_name,
        "sampler_settings": settings.sampler if isinstance(settings.sampler, dict) else settings.samplers.get(settings.sampler) or {},
        "seed": settings.sampler.get("seed", settings.seed) if isinstance(settings.sampler, dict) else settings.seed,
        "pruner": settings.pruner_name,
        "pruner_settings": settings.pruner if isinstance(settings.pruner, dict) else settings.pruners.get(settings.pruner) or {},
        "search_space": {k: describe(d) for k, d in space.distributions.items()},
        "fixed": list(space.fixed),
    }
    write_text(path, yaml.safe_dump(doc, sort_keys=False))


def shell_quote(overrides: list[str]) -> list[str]:
    """Overrides quoted for a POSIX shell where they need it (brackets, spaces, quotes)."""
    import shlex

    return [shlex.quote(o) for o in overrides]
