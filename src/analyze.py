"""`python -m src.analyze SWEEP [SWEEP ...]`: answers from sweep tables, needing only the CSV files.

    from src.analyze import load_trials
    trials = load_trials(["outputs/sweeps/default"])          # one tidy DataFrame, a `sweep` column
    trials.groupby("model.activation")["value"].max()

No storage, no TensorFlow, no Optuna: folders copied off another machine work as they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

from src.errors import UserError, exit_with
from src.sweep.results import TRIAL_METRICS, params_summary

REQUIRED = ("number", "state")
NOT_PARAMS = {"sweep", "number", "state", "value", "pareto", "datetime_start", "datetime_complete",
              "run_dir", "error", *TRIAL_METRICS}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def load_trials(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every `trials.csv` under `paths` (sweep folders or the CSV files) in one DataFrame, `sweep` first."""
    frames = []
    for path in paths:
        csv = Path(path) / "trials.csv" if Path(path).is_dir() else Path(path)
        if not csv.is_file():
            raise UserError(f"{path}: no trials.csv there; give a sweep folder such as outputs/sweeps/default")
        try:
            frame = pd.read_csv(csv)
        except pd.errors.EmptyDataError:
            raise UserError(f"{csv}: empty file, no header and no trials") from None
        except pd.errors.ParserError as e:
            raise UserError(f"{csv}: malformed CSV ({str(e).strip()})") from None
        missing = [c for c in REQUIRED if c not in frame]
        if missing or value_column(frame) is None:
            raise UserError(f"{csv}: not a sweep's trials.csv (missing column {(missing or ['value'])[0]!r})")
        frame.insert(0, "sweep", sweep_name(csv.parent))
        frames.append(frame)
    if not frames:
        raise UserError("no sweep given: python -m src.analyze outputs/sweeps/NAME")
    return pd.concat(frames, ignore_index=True)


def sweep_name(folder: Path) -> str:
    """A sweep's label in the tables: its folder's name (`default` for outputs/sweeps/default)."""
    return folder.name if folder.name not in ("", ".") else folder.resolve().name


def value_column(trials: pd.DataFrame) -> str | None:
    """`value`, or on a multi-objective sweep the first `value_<metric>` column."""
    if "value" in trials:
        return "value"
    return next((c for c in trials.columns if c.startswith("value_")), None)


def param_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c not in NOT_PARAMS and not c.startswith("value_")
            and not trials[c].isna().all()]


def study_info(folder: Path) -> dict:
    """study.yaml (the question) and best.yaml (the answer) of a sweep folder, where present."""
    info = {}
    for name in ("study", "best"):
        path = folder / f"{name}.yaml"
        info[name] = yaml.safe_load(path.read_text()) if path.is_file() else None
    return info


def objective(folder: Path) -> str:
    """The name of the (first) objective, e.g. val_accuracy."""
    return next(iter((study_info(folder)["study"] or {}).get("objectives") or {"value": 0}))


def log_scaled(folder: Path) -> set[str]:
    """Parameters the sweep searched on a log scale."""
    space = (study_info(folder)["study"] or {}).get("search_space") or {}
    return {p for p, d in space.items() if str(d).endswith(", log") or ", log," in str(d)}


def maximize(folder: Path) -> bool:
    study = study_info(folder)["study"] or {}
    return next(iter((study.get("objectives") or {"v": "maximize"}).values())) == "maximize"


def top_trials(trials: pd.DataFrame, n: int, maximize_value: bool = True) -> pd.DataFrame:
    """The best `n` complete trials by value, with their params and metrics."""
    value = value_column(trials)
    done = trials[trials["state"] == "COMPLETE"]
    columns = ["sweep", "number", value, *param_columns(trials),
               *[c for c in ("val_loss", "epochs", "param_count", "seconds") if c in trials]]
    return done.sort_values([value, "number"], ascending=[not maximize_value, True]).head(n)[columns]


def state_counts(trials: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    counts = trials.groupby(by + ["state"]).size().unstack("state", fill_value=0)
    counts = counts.reindex(columns=[s for s in STATES if s in counts.columns])
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def effects(trials: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Per parameter, validation accuracy by value (categorical) or quantile bin (numeric)."""
    value = value_column(trials)
    groups = trials.groupby(by) if by else [(None, trials)]
    parts = []
    for key, group in groups:
        part = params_summary(group, [p for p in param_columns(trials) if p != by], value)
        if by:
            part.insert(0, by, key)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def compare_bests(trials: pd.DataFrame, folders: dict[str, Path]) -> pd.DataFrame:
    """One row per sweep: its best trial, value, test score and trial counts, side by side."""
    rows = []
    value = value_column(trials)
    for sweep, group in trials.groupby("sweep", sort=False):
        best = top_trials(group, 1, maximize(folders[sweep]))
        info = study_info(folders[sweep])["best"] or {}
        row = {"sweep": sweep, "trials": len(group), "complete": int((group["state"] == "COMPLETE").sum())}
        if not best.empty:
            row |= {"best_trial": int(best["number"].iloc[0]), value: best[value].iloc[0],
                    "test_accuracy": (info.get("test") or {}).get("test_accuracy")}
            row |= {p: best[p].iloc[0] for p in param_columns(group)}
        rows.append(row)
    return pd.DataFrame(rows)


def render(title: str, table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return f"# {title}\n{table.to_csv(index=False)}"
    if fmt == "markdown":
        return f"## {title}\n\n{_markdown(table)}\n"
    return f"{title}\n{table.to_string(index=False, na_rep='', float_format=lambda x: f'{x:.4g}')}\n"


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub table without the optional `tabulate` dependency."""
    cells = table.astype(object).where(table.notna(), "").map(lambda x: f"{x:.4g}" if isinstance(x, float) else str(x))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def summary(trials: pd.DataFrame, folders: dict[str, Path], top: int, by: str | None, fmt: str) -> str:
    """The terminal answer: leaderboard, counts by state, each parameter's effect; bests side by side."""
    sections = []
    if len(folders) > 1:
        sections.append(render("Best of each sweep", compare_bests(trials, folders), fmt))
    for sweep, group in trials.groupby("sweep", sort=False):
        folder = folders[sweep]
        info = study_info(folder)["best"] or {}
        up = maximize(folder)
        board = (group.groupby(by, group_keys=False).apply(lambda g, up=up: top_trials(g, top, up))
                 if by else top_trials(group, top, up))
        if info.get("test") and "number" in board:
            board = board.assign(test_accuracy=board["number"].map({info["trial"]: info["test"]["test_accuracy"]}))
        sections.append(render(f"{sweep}: top {top} trials" + (f" by {by}" if by else ""), board, fmt))
        sections.append(render(f"{sweep}: trials by state", state_counts(group, [by] if by else ["sweep"]), fmt))
        sections.append(render(f"{sweep}: validation accuracy by parameter", effects(group, by), fmt))
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.analyze", description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders (holding trials.csv) or trials.csv files")
    parser.add_argument("--top", type=int, default=5, help="leaderboard size (default 5)")
    parser.add_argument("--by", help="group every table by this parameter, e.g. model.activation")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    parser.add_argument("--plots", action="store_true", help="write the PNG plots into each sweep folder")
    parser.add_argument("--report", action="store_true", help="write plots, report.html and report.md")
    args = parser.parse_args(argv)
    try:
        trials = load_trials(args.sweeps)
        folders = {sweep_name(Path(p) if Path(p).is_dir() else Path(p).parent): Path(p) if Path(p).is_dir()
                   else Path(p).parent for p in args.sweeps}
        if args.by and args.by not in trials:
            raise UserError(f"--by {args.by}: no such column; parameters: {', '.join(param_columns(trials))}")
        print(summary(trials, folders, args.top, args.by, args.format))
        if args.plots or args.report:
            from src import plots, report

            for sweep, folder in folders.items():
                written = plots.write_all(trials[trials["sweep"] == sweep], folder)
                if args.report:
                    written += report.write(trials[trials["sweep"] == sweep], folder, written)
                print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    except UserError as e:
        exit_with(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
