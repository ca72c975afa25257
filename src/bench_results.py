"""The README's Results table, regenerated: `python -m src.bench --results [ROW,...]` runs each row's command
as written (in a temporary folder), times the whole process and prints the table in the README's form, with
the date, the machine (cores, load) and the commit measured.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import PACKAGE, command
from .errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# Row name -> (what it is, the command and its arguments as the README writes them).
ROWS = {
    "lesson": ("the lesson", ["train"]),
    "quick": ("3 classes, quick", ["sweep", "-m", "sweep=quick"]),
    "default": ("3 classes", ["sweep", "-m"]),
    "fashion10": ("10 classes", ["sweep", "-m", "sweep=fashion10"]),
}


def measure(name: str, folder: Path) -> dict[str, str]:
    """Run one row's command whole, its outputs under `folder`; its cells of the table."""
    what, (program, *args) = ROWS[name]
    out = folder / name
    where = f"hydra.run.dir={out}" if program == "train" else f"hydra.sweep.dir={out}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"{PACKAGE}.{program}", *args, where], cwd=ROOT, check=True, capture_output=True,
                   text=True)
    seconds = time.perf_counter() - start
    row = {"run": what, "command": f"`{' '.join([command(program), *args])}`", "wall time": _duration(seconds)}
    if program == "train":
        metrics = yaml.safe_load((out / "metrics.json").read_text())  # JSON is YAML
        row["winner, val accuracy"] = f"{metrics['val_accuracy']:.3f} ({metrics['n_val']} images)"
        row["test accuracy"] = f"{metrics['test_accuracy']:.3f}"
        return row
    best = yaml.safe_load((out / "best.yaml").read_text())
    confirmed, test = best.get("confirmed") or {}, best.get("test") or {}
    winner = (confirmed.get("configs") or {}).get(best["trial"])
    val = f"{winner['mean']:.4f} +- {winner['std']:.4f}" if winner else f"{best['val_accuracy']:.4f}"
    row["winner, val accuracy"] = f"#{best['trial']}: {val}"
    row["test accuracy"] = (f"{test['test_accuracy']:.4f} +- {test.get('test_accuracy_std', 0):.4f}"
                            if test.get("test_accuracy") is not None else "-")
    return row


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def table(names: list[str]) -> str:
    """The Results table of `names` (keys of ROWS), measured now, under a line saying when, where and on what."""
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"--results {','.join(unknown)}: unknown row; allowed: {', '.join(ROWS)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in names]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    header = list(rows[0])
    lines = [f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end, "
             f"commit {commit.strip() or '?'}, `{command('bench')} --results {','.join(names)}`:", "",
             "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return "\n".join(lines)
