"""Analysis of sweep folders from their files alone (no storage, no TensorFlow, no Optuna), so folders
copied off another machine work as they are:

    from . import load_trials
    trials = load_trials(["outputs/sweeps/default"])          # one tidy DataFrame, a `sweep` column
    trials.groupby("model.activation")["value"].max()

    contract.py  the CSV contract (shared with the sweep that writes it)   record.py  a sweep folder read once
    tables.py    leaderboard, counts, effects   plots.py  PNG plots   report.py  report.md / .html   cli.py
"""
from .record import SweepRecord, load_trials, read

__all__ = ["SweepRecord", "load_trials", "read"]
