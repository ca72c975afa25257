"""PNG plots of a sweep (matplotlib, headless): history, parameters, importance, size, curves; each drawn
from its `SweepRecord`, each skipped when the data cannot make it (e.g. no trial completed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from .contract import pareto_front  # noqa: E402
from .record import SweepRecord  # noqa: E402
from .tables import top_trials  # noqa: E402

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:gray", "FAIL": "tab:red"}


def write_all(record: SweepRecord) -> list[Path]:
    """Every plot the data allows, as PNG files in the sweep's folder; returns their paths."""
    plotters = (history, parameters, importance, size, curves)
    written = []
    for plot in plotters:
        path = record.folder / f"{plot.__name__}.png"
        fig = plot(record)
        if fig is not None:
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


def history(record: SweepRecord) -> plt.Figure | None:
    """The objective of each trial in order, and the running best."""
    trials, value = record.trials, record.value
    scored = trials[trials[value].notna()]
    if scored.empty:  # every trial failed: the report lists the failures instead
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for state, group in scored.groupby("state"):
        ax.scatter(group["number"], group[value], s=22, label=state.lower(), color=STATE_COLORS.get(state, "k"))
    done = scored[scored["state"] == "COMPLETE"].sort_values("number")
    if not done.empty:
        running = done[value].cummax() if record.maximize else done[value].cummin()
        ax.step([*done["number"], trials["number"].max()], [*running, *running.tail(1)], where="post",
                color="tab:orange", label="best so far")
    ax.set(xlabel="trial", ylabel=record.objective, title="Optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def parameters(record: SweepRecord) -> plt.Figure | None:
    """The objective against each numeric parameter, coloured by activation where it varies."""
    trials, value = record.trials, record.value
    done = trials[trials["state"] == "COMPLETE"]
    numeric = [p for p in record.params if pd.api.types.is_numeric_dtype(trials[p])
               and not pd.api.types.is_bool_dtype(trials[p]) and trials[p].nunique() > 1]
    if not numeric or done.empty:
        return None
    cols = min(2, len(numeric))  # two panels a row stay readable at the report's page width
    rows = -(-len(numeric) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    colour_by = "model.activation" if "model.activation" in done and done["model.activation"].nunique() > 1 else None
    for ax, param in zip(axes.flat, numeric):
        groups = done.groupby(colour_by) if colour_by else [(None, done)]
        for label, group in groups:
            ax.scatter(group[param], group[value], s=20, label=label, alpha=0.8)
        if param in record.log_scaled:
            values = sorted(done[param].dropna().unique())
            log_axis(ax.xaxis, values if len(values) <= 8 else None)  # a few choices: a tick at each
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=pd.api.types.is_integer_dtype(done[param])))
        ax.set(xlabel=param, ylabel=record.objective)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(numeric):]:
        ax.axis("off")
    if colour_by:
        axes.flat[0].legend(title="activation", fontsize=8)
    fig.suptitle(f"{record.objective} by parameter (complete trials)")
    fig.tight_layout()
    return fig


def log_axis(axis: Any, ticks: list[float] | None = None) -> None:
    """A log axis labelled in plain numbers at `ticks`, or at 1, 2 and 5 of each decade (matplotlib's default labels
    only powers of ten, so a range within one decade, e.g. 20,000-60,000 parameters, had no label at all)."""
    axis.axes.set_xscale("log")
    axis.set_major_locator(FixedLocator(ticks) if ticks else LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def importance(record: SweepRecord) -> plt.Figure | None:
    """Optuna's parameter importance from importance.csv, with a caveat when few trials completed."""
    path = record.folder / "importance.csv"
    table = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()
    if table.empty:
        return None
    table = table.sort_values("importance")
    complete = int((record.trials["state"] == "COMPLETE").sum())
    caveat = f"\nfrom only {complete} complete trials: a rough guide" if complete < 20 else ""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    ax.barh(table["param"], table["importance"], color="tab:blue")
    ax.set(xlabel="importance (share of the objective's variation)", title="Parameter importance" + caveat)
    ax.grid(axis="x", alpha=0.3)
    return fig


def size(record: SweepRecord) -> plt.Figure | None:
    """The objective against trainable parameter count, with the Pareto front (better and smaller)."""
    trials, value = record.trials, record.value
    if "param_count" not in trials:
        return None
    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=["param_count", value])
    if done.empty:
        return None
    front = pareto_front(done, value, record.maximize)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(done["param_count"], done[value], s=22, color="tab:blue", alpha=0.7, label="complete trials")
    ax.step(front["param_count"], front[value], where="post", color="tab:orange", marker="o", label="Pareto front")
    log_axis(ax.xaxis)
    ax.set(xlabel="trainable parameters", ylabel=record.objective, title=f"{record.objective} against model size")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def curves(record: SweepRecord, n: int = 5) -> plt.Figure | None:
    """Per-epoch validation accuracy of the top trials, where their history.csv is reachable."""
    trials = record.trials
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for _, row in top_trials(record, n).iterrows():
        path = history_path(trials.loc[trials["number"] == row["number"]].iloc[0], record.folder)
        if path is None:
            continue
        epochs = pd.read_csv(path)
        ax.plot(epochs["epoch"], epochs["val_accuracy"], marker=".", label=f"#{row['number']}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="epoch", ylabel="val_accuracy", title=f"Validation curves of the top {drawn} trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def history_path(trial: pd.Series, folder: Path) -> Path | None:
    """A trial's history.csv: where it ran, or inside this sweep folder when it was copied elsewhere."""
    candidates = [folder / "trials" / str(trial["number"]) / "history.csv"]
    if isinstance(trial.get("run_dir"), str):
        candidates.insert(0, Path(trial["run_dir"]) / "history.csv")
    return next((p for p in candidates if p.is_file()), None)
