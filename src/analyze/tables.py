"""The tables analysis answers with (terminal, Markdown or CSV): leaderboard, trials by state, each
param's effect, and the bests of several sweeps side by side."""
from __future__ import annotations

import pandas as pd

from .contract import STATES, params_summary, rank
from .record import SweepRecord


def top_trials(record: SweepRecord, n: int, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """The best `n` complete trials (of `trials`, default all the record's), with their params and metrics."""
    trials = record.trials if trials is None else trials
    columns = ["sweep", "number", record.value, *record.params,
               *[c for c in ("val_loss", "epochs", "param_count", "seconds") if c in trials]]
    return rank(trials, record.value, record.maximize).head(n)[columns]


def seed_noise(record: SweepRecord) -> pd.DataFrame:
    """Each confirmed configuration's objective over seeds (the search run and the further ones): runs,
    mean, std, its single-run rank and its rank by mean; the winner is the best mean."""
    rows = record.confirm[(record.confirm["run"] != "test") & (record.confirm["state"] == "COMPLETE")]
    stats = rows.groupby("config")[record.objective].agg(["count", "mean", "std", "min", "max"]).reset_index()
    single = rows[rows["run"] == "search"].set_index("config")[record.objective]
    stats["single_run"] = stats["config"].map(single)
    stats["single_rank"] = stats["single_run"].rank(ascending=not record.maximize, method="first").astype(int)
    stats = stats.sort_values("mean", ascending=not record.maximize, kind="stable")
    stats.insert(0, "rank", range(1, len(stats) + 1))
    tested = record.confirm[record.confirm["run"] == "test"]
    if len(tested):
        test = tested.groupby("config")["test_accuracy"].agg(["mean", "std"])
        stats["test_mean"], stats["test_std"] = stats["config"].map(test["mean"]), stats["config"].map(test["std"])
    return stats.rename(columns={"config": "trial", "count": "runs"})


def noise(record: SweepRecord) -> float | None:
    """The seed noise of one run: the pooled standard deviation of the confirmed configurations."""
    if record.confirm is None:
        return None
    stds = seed_noise(record)["std"].dropna()
    return float((stds ** 2).mean() ** 0.5) if len(stds) else None


def flag_gaps(board: pd.DataFrame, value: str, sigma: float) -> pd.DataFrame:
    """The leaderboard with each trial's gap to the next and whether that gap is within one run's seed noise."""
    gap = (board[value] - board[value].shift(-1)).abs().round(6)  # of 6-digit scores: the rest is float noise
    return board.assign(gap_to_next=gap, within_noise=(gap < sigma).where(gap.notna()))


def state_counts(trials: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    counts = trials.groupby(by + ["state"]).size().unstack("state", fill_value=0)
    counts = counts.reindex(columns=[s for s in STATES if s in counts.columns])
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def effects(record: SweepRecord, by: str | None) -> pd.DataFrame:
    """Per param, the objective by value (categorical) or quantile bin (numeric), optionally per `by` group."""
    groups = record.trials.groupby(by) if by else [(None, record.trials)]
    parts = []
    for key, group in groups:
        part = params_summary(group, [p for p in record.params if p != by], record.value)
        if by:
            part.insert(0, by, key)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def compare_bests(records: list[SweepRecord]) -> pd.DataFrame:
    """One row per sweep: its winner (the trial best.yaml tested, the confirmed winner; else the best trial) with
    its value, test score and params, then its best single trial and value when that is another trial (a
    confirmation can pick another), and trial counts, side by side."""
    rows = []
    for record in records:
        best = top_trials(record, 1)
        row = {"sweep": record.name, "trials": len(record.trials),
               "complete": int((record.trials["state"] == "COMPLETE").sum())}
        if not best.empty:
            tested = record.trials[record.trials["number"] == record.test.get("trial")]
            winner = tested if len(tested) else best
            row |= {"winner": int(winner["number"].iloc[0]), record.value: winner[record.value].iloc[0],
                    "test_accuracy": record.test.get("test_accuracy") if len(tested) else None}
            row |= {p: winner[p].iloc[0] for p in record.params}
            row |= {"best_single": int(best["number"].iloc[0]), f"best_single_{record.value}": best[record.value].iloc[0]}
        rows.append(row)
    return pd.DataFrame(rows)


def cell(x: object) -> str:
    """A value as tables show it: whole numbers whole (8671, not 8.671e+03), others to 4 significant digits."""
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.4g}"
    return "" if x is None else str(x)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub table (without the optional `tabulate`); `|`, `<`, `>` and `&` in cells are escaped, so an
    error message or a param value cannot break the table or inject HTML."""
    def escape(text: str) -> str:
        return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
                .replace("\n", " "))

    cells = table.astype(object).where(table.notna(), None).map(cell)
    lines = ["| " + " | ".join(escape(str(c)) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def render(title: str, table: pd.DataFrame, fmt: str) -> str:
    if table.empty and fmt != "csv":  # e.g. a sweep whose every trial failed: no leaderboard, no effects
        return f"{'## ' if fmt == 'markdown' else ''}{title}\n(no complete trial)\n"
    if fmt == "csv":
        return f"# {title}\n{table.to_csv(index=False)}"
    if fmt == "markdown":
        return f"## {title}\n\n{markdown(table)}\n"
    shown = table.astype(object).where(table.notna(), None).map(cell)
    return f"{title}\n{shown.to_string(index=False)}\n"


def summary(records: list[SweepRecord], top: int, by: str | None, fmt: str) -> str:
    """The terminal answer: leaderboard, counts by state, each param's effect; bests side by side."""
    sections = []
    if len(records) > 1:
        sections.append(render("Best of each sweep", compare_bests(records), fmt))
    for record in records:
        group = record.trials
        board = (pd.concat([top_trials(record, top, g) for _, g in group.groupby(by)]) if by
                 else top_trials(record, top))
        if record.test.get("test_accuracy") is not None:
            board = board.assign(test_accuracy=board["number"].map({record.best["trial"]: record.test["test_accuracy"]}))
        sigma = noise(record)
        if sigma is not None and not by:
            board = flag_gaps(board, record.value, sigma)
        sections.append(render(f"{record.name}: top {top} trials" + (f" by {by}" if by else ""), board, fmt))
        if sigma is not None:
            sections.append(render(f"{record.name}: confirmed over seeds (seed noise of one run: std {sigma:.4f}; "
                                   f"gaps below it are luck)", seed_noise(record), fmt))
        sections.append(render(f"{record.name}: trials by state", state_counts(group, [by] if by else ["sweep"]), fmt))
        sections.append(render(f"{record.name}: {record.objective} by parameter", effects(record, by), fmt))
    return "\n".join(sections)
