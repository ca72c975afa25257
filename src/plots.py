"""PNG plots of a sweep's trials (matplotlib, headless): history, parameters, importance, size, curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from src.analyze import log_scaled, maximize, objective, param_columns, top_trials, value_column  # noqa: E402

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:gray", "FAIL": "tab:red"}


def write_all(trials: pd.DataFrame, folder: Path) -> list[Path]:
    """Every plot the data allows, as PNG files in `folder`; returns their paths."""
    plotters = (history, parameters, importance, size, curves)
    written = []
    for plot in plotters:
        path = folder / f"{plot.__name__}.png"
        fig = plot(trials, folder)
        if fig is not None:
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


def history(trials: pd.DataFrame, folder: Path) -> plt.Figure:
    """Validation accuracy of each trial in order, and the running best."""
    value, up = value_column(trials), maximize(folder)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for state, group in trials.groupby("state"):
        ax.scatter(group["number"], group[value], s=22, label=state.lower(), color=STATE_COLORS.get(state, "k"))
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    running = done[value].cummax() if up else done[value].cummin()
    ax.step([*done["number"], trials["number"].max()], [*running, *running.tail(1)], where="post",
            color="tab:orange", label="best so far")
    ax.set(xlabel="trial", ylabel=objective(folder), title="Optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def parameters(trials: pd.DataFrame, folder: Path) -> plt.Figure | None:
    """Validation accuracy against each numeric parameter, coloured by activation where it varies."""
    value = value_column(trials)
    done = trials[trials["state"] == "COMPLETE"]
    numeric = [p for p in param_columns(trials) if pd.api.types.is_numeric_dtype(trials[p])
               and not pd.api.types.is_bool_dtype(trials[p]) and trials[p].nunique() > 1]
    if not numeric or done.empty:
        return None
    cols = min(3, len(numeric))
    rows = -(-len(numeric) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colour_by = "model.activation" if "model.activation" in done and done["model.activation"].nunique() > 1 else None
    for ax, param in zip(axes.flat, numeric):
        groups = done.groupby(colour_by) if colour_by else [(None, done)]
        for label, group in groups:
            ax.scatter(group[param], group[value], s=20, label=label, alpha=0.8)
        if param in log_scaled(folder):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=pd.api.types.is_integer_dtype(done[param])))
        ax.set(xlabel=param, ylabel=objective(folder))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(numeric):]:
        ax.axis("off")
    if colour_by:
        axes.flat[0].legend(title="activation", fontsize=8)
    fig.suptitle("Validation accuracy by parameter (complete trials)")
    fig.tight_layout()
    return fig


def importance(trials: pd.DataFrame, folder: Path) -> plt.Figure | None:
    """Optuna's parameter importance from importance.csv."""
    path = folder / "importance.csv"
    table = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()
    if table.empty:
        return None
    table = table.sort_values("importance")
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    ax.barh(table["param"], table["importance"], color="tab:blue")
    ax.set(xlabel="importance (share of the objective's variation)", title="Parameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig


def size(trials: pd.DataFrame, folder: Path) -> plt.Figure | None:
    """Validation accuracy against trainable parameter count, with the Pareto front (more accurate, smaller)."""
    value = value_column(trials)
    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=["param_count", value])
    if done.empty:
        return None
    front = pareto_front(done, value)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(done["param_count"], done[value], s=22, color="tab:blue", alpha=0.7, label="complete trials")
    ax.step(front["param_count"], front[value], where="post", color="tab:orange", marker="o", label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=objective(folder), title="Accuracy against model size")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def pareto_front(done: pd.DataFrame, value: str) -> pd.DataFrame:
    """The trials no other trial beats on both accuracy (higher) and parameter count (lower)."""
    ordered = done.sort_values(["param_count", value], ascending=[True, False])
    best, keep = -np.inf, []
    for index, row in ordered.iterrows():
        if row[value] > best:
            best = row[value]
            keep.append(index)
    return ordered.loc[keep]


def curves(trials: pd.DataFrame, folder: Path, n: int = 5) -> plt.Figure | None:
    """Per-epoch validation accuracy of the top trials, where their history.csv is reachable."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for _, row in top_trials(trials, n, maximize(folder)).iterrows():
        path = history_path(trials.loc[trials["number"] == row["number"]].iloc[0], folder)
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
