"""A sweep folder read once: trials.csv, study.yaml (the question) and best.yaml (the answer)."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from .contract import param_columns, value_column
from ..errors import UserError

REQUIRED = ("number", "state")


@dataclass
class SweepRecord:
    """What analysis knows of one sweep; the objective's name and direction come from its study."""

    name: str
    folder: Path
    trials: pd.DataFrame              # trials.csv, with a `sweep` column first
    study: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    confirm: pd.DataFrame | None = None   # confirm.csv: the top k retrained with further seeds

    @property
    def objectives(self) -> dict[str, str]:
        """Objective name -> direction, e.g. {'val_accuracy': 'maximize'}. Without study.yaml (CSV files copied
        off a machine): confirm.csv's objective column (the one after `state`), else `value`; maximized."""
        if self.study.get("objectives"):
            return dict(self.study["objectives"])
        columns = list(self.confirm.columns) if self.confirm is not None else []
        named = columns[columns.index("state") + 1] if "state" in columns[:-1] else "value"
        return {named: "maximize"}

    @property
    def objective(self) -> str:
        return next(iter(self.objectives))

    @property
    def maximize(self) -> bool:
        return next(iter(self.objectives.values())) == "maximize"

    @property
    def value(self) -> str:
        return value_column(self.trials.columns)

    @cached_property
    def params(self) -> list[str]:
        space = self.study.get("search_space")
        return param_columns(self.trials, list(space) if space else None)

    @cached_property
    def log_scaled(self) -> set[str]:
        """Params searched on a log scale (study.yaml writes them `..., log`), and choices of positive numbers that
        span 4x or more (`batch_size: choice(32, 64, 128, 256)` reads evenly on a log axis)."""
        space = self.study.get("search_space") or {}
        logged = {p for p, d in space.items() if str(d).endswith(", log") or ", log," in str(d)}
        for p, d in space.items():
            if str(d).startswith("choice(") and p in self.trials:
                values = pd.to_numeric(self.trials[p], errors="coerce").dropna()
                if len(values) and values.min() > 0 and values.max() >= 4 * values.min():
                    logged.add(p)
        return logged

    @property
    def test(self) -> dict:
        return self.best.get("test") or {}


def read(path: str | Path) -> SweepRecord:
    """A sweep folder (or its trials.csv), checked: one clear line for a file that is not a sweep's table."""
    path = Path(path)
    csv = path / "trials.csv" if path.is_dir() else path
    if not csv.is_file():
        raise UserError(f"{path}: no trials.csv there; give a sweep folder such as outputs/sweeps/default")
    try:
        trials = pd.read_csv(csv)
    except pd.errors.EmptyDataError:
        raise UserError(f"{csv}: empty file, no header and no trials") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{csv}: malformed CSV ({str(e).strip().splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{csv}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    missing = [c for c in REQUIRED if c not in trials]
    value = value_column(trials.columns)
    if missing or value is None:
        raise UserError(f"{csv}: not a sweep's trials.csv (missing column {(missing or ['value'])[0]!r})")
    if not pd.api.types.is_numeric_dtype(trials[value]):
        bad = next(v for v in trials[value].dropna() if not _number(v))
        raise UserError(f"{csv}: column {value!r} holds {bad!r}; it must hold numbers")
    folder = csv.parent
    name = folder.name if folder.name not in ("", ".") else folder.resolve().name
    trials.insert(0, "sweep", name)
    confirm = pd.read_csv(folder / "confirm.csv") if (folder / "confirm.csv").is_file() else None
    return SweepRecord(name, folder, trials, _yaml(folder / "study.yaml"), _yaml(folder / "best.yaml"), confirm)


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None


def _number(value: object) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def read_all(paths: list[str | Path]) -> list[SweepRecord]:
    """Each sweep folder given; among several (a glob such as outputs/sweeps/*), a folder where no trial ran
    (a sweep refused or stopped before its first trial, so no trials.csv) is skipped with a note."""
    if len(paths) == 1:
        return [read(paths[0])]
    records = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "trials.csv").exists():
            print(f"note: {path}: no trials.csv (no trial ran there); skipped", file=sys.stderr)
            continue
        records.append(read(path))
    if not records:
        raise UserError(f"no trials.csv in any of the {len(paths)} folders given; give a sweep folder such as "
                        f"outputs/sweeps/default")
    return records


def load_trials(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every `trials.csv` under `paths` (sweep folders or the CSV files) in one DataFrame, `sweep` first."""
    records = [read(p) for p in paths]
    if not records:
        raise UserError("no sweep given: python -m src.analyze outputs/sweeps/NAME")
    return pd.concat([r.trials for r in records], ignore_index=True)
