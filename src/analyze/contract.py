"""The CSV contract of a sweep folder, in one place: what trials.csv's columns are, which column is the
objective, how trials rank, which columns are params, the Pareto front, and the per-parameter summary.

The sweep writes its tables with these functions and analysis reads them with the same ones, so the two
cannot drift apart. Only pandas: no Optuna, no TensorFlow.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..metrics import RUN_METRICS, SETUP

# trials.csv, in this order: number, state, the objective (`value`, or `value_<metric>` per objective and a
# `pareto` flag), every param, the training metrics, then the bookkeeping columns.
TRIAL_METRICS = tuple(m for m in RUN_METRICS if m not in SETUP and not m.startswith("test_"))
BOOKKEEPING = ("sweep", "number", "state", "pareto", "datetime_start", "datetime_complete", "run_dir", "error")
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def value_column(columns: Iterable[str]) -> str | None:
    """`value`, or on a multi-objective sweep the first objective's `value_<metric>` column."""
    columns = list(columns)
    if "value" in columns:
        return "value"
    return next((c for c in columns if c.startswith("value_")), None)


def param_columns(trials: pd.DataFrame, searched: Iterable[str] | None = None) -> list[str]:
    """The params: the keys the sweep searched (study.yaml), else every column that is no objective,
    metric or bookkeeping (a hand-written CSV); columns empty in every row are left out."""
    if searched is not None:
        candidates = [c for c in searched if c in trials]
    else:
        known = set(BOOKKEEPING) | set(TRIAL_METRICS)
        candidates = [c for c in trials.columns if c not in known and c != "value" and not c.startswith("value_")]
    return [c for c in candidates if not trials[c].isna().all()]


def rank(trials: pd.DataFrame, value: str, maximize: bool) -> pd.DataFrame:
    """Complete trials, best first by `value`; among equals the earlier trial first (as the sweep's best)."""
    done = trials[(trials["state"] == "COMPLETE") & trials[value].notna()]
    return done.sort_values([value, "number"], ascending=[not maximize, True])


def leaderboard(trials: pd.DataFrame, value: str, maximize: bool, size: int) -> pd.DataFrame:
    """leaderboard.csv: the top `size` ranked trials (multi-objective: of the Pareto front) with a `rank`."""
    top = rank(trials[trials["pareto"]] if "pareto" in trials else trials, value, maximize).head(size)
    top = top.drop(columns=[c for c in ("state", "datetime_start", "datetime_complete", "error", "pareto") if c in top])
    top.insert(0, "rank", range(1, len(top) + 1))
    return top


def pareto_front(done: pd.DataFrame, value: str, maximize: bool = True, size: str = "param_count") -> pd.DataFrame:
    """The trials no other beats on both the objective and the model size (smaller is better)."""
    ordered = done.sort_values([size, value], ascending=[True, not maximize])
    best, keep = -np.inf, []
    for index, score in ordered[value].items():
        score = score if maximize else -score
        if score > best:
            best = score
            keep.append(index)
    return ordered.loc[keep]


def params_summary(trials: pd.DataFrame, params: list[str], value: str, bins: int = 5) -> pd.DataFrame:
    """params_summary.csv: for each param, the objective of complete trials by value (categorical) or by
    quantile bin (numeric, labelled by the range its trials cover): `param, value, count, mean, max`."""
    done = trials[trials["state"] == "COMPLETE"]
    parts = []
    for p in params:
        if p not in done or done[p].isna().all():
            continue
        column = done[p]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        key = pd.qcut(column, q=bins, labels=False, duplicates="drop") if numeric and column.nunique() > bins else column
        grouped = done.groupby(key, sort=True).agg(low=(p, "min"), high=(p, "max"), count=(value, "count"),
                                                   mean=(value, "mean"), max=(value, "max")).reset_index(drop=True)
        label = (lambda r: f"{r.low:.4g}" if r.low == r.high else f"{r.low:.4g} to {r.high:.4g}") if numeric \
            else (lambda r: str(r.low))
        grouped["mean"] = grouped["mean"].round(6)  # as the scores it averages: more digits are noise
        grouped.insert(0, "value", grouped.apply(label, axis=1))
        grouped.insert(0, "param", p)
        parts.append(grouped.drop(columns=["low", "high"]))
    if not parts:
        return pd.DataFrame(columns=["param", "value", "count", "mean", "max"])
    return pd.concat(parts, ignore_index=True)
